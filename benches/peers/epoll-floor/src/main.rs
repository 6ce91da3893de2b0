//! epoll-floor: roughly the least work a server can do per request, so
//! mostly what the kernel costs. No parsing and no routing: it counts the
//! `\r\n\r\n` request terminators in what it reads and writes that many copies
//! of one fixed, pre-rendered response (/json with a Date fixed at startup)
//! in a single write(). The path is ignored.
//!
//! Usage: epoll-floor --listen 127.0.0.1:8080
//!
//! Level-triggered epoll: one read() per readiness and no drain-to-EAGAIN
//! loop, so a readable event costs exactly one read(). With edge triggering
//! every event would need a second read() to hit EAGAIN, one extra syscall per
//! batch. If a write is short (the socket buffer is full), the rest is kept and
//! the fd waits for EPOLLOUT instead of EPOLLIN until it drains (back-pressure).
use std::net::SocketAddrV4;

const TERM: &[u8; 4] = b"\r\n\r\n";
const BUF: usize = 64 * 1024;

fn http_date(secs: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{wd}, {d:02} {} {y} {:02}:{:02}:{:02} GMT", mon[m as usize - 1], rem / 3600, rem / 60 % 60, rem % 60)
}

fn parse_listen() -> SocketAddrV4 {
    let a: Vec<String> = std::env::args().collect();
    match (a.get(1).map(String::as_str), a.get(2), a.len()) {
        (Some("--listen"), Some(v), 3) => v.parse().unwrap_or_else(|e| {
            eprintln!("epoll-floor: bad --listen {v:?}: {e} (IPv4 ADDR:PORT)");
            std::process::exit(2)
        }),
        _ => {
            eprintln!("usage: epoll-floor --listen ADDR:PORT");
            std::process::exit(2)
        }
    }
}

fn ck(r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        eprintln!("epoll-floor: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    r
}

struct Conn { tail: [u8; 3], tail_len: usize, out: Vec<u8> }

fn main() {
    let addr = parse_listen();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let body = br#"{"message":"Hello, World!"}"#;
    let resp = format!(
        "HTTP/1.1 200 OK\r\nServer: epoll-floor\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        http_date(now), body.len(), std::str::from_utf8(body).unwrap()
    ).into_bytes();
    unsafe {
        let lfd = ck(libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0), "socket");
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        ck(libc::setsockopt(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const _, sz), "SO_REUSEADDR");
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
        ck(libc::bind(lfd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as libc::socklen_t), "bind");
        ck(libc::listen(lfd, 4096), "listen");
        let ep = ck(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1");
        let ctl = |op, fd: i32, ev: u32| {
            let mut e = libc::epoll_event { events: ev, u64: fd as u64 };
            libc::epoll_ctl(ep, op, fd, &mut e)
        };
        ck(ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32), "epoll_ctl");
        eprintln!("epoll-floor listening on {addr}");
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut buf = vec![0u8; BUF + 3];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
            if n < 0 { continue; } // EINTR
            for ev in &events[..n as usize] {
                let fd = ev.u64 as i32;
                if fd == lfd {
                    loop {
                        let c = libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
                        if c < 0 { break; } // EAGAIN (or a transient error): wait for the next event
                        libc::setsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, sz);
                        if conns.len() <= c as usize { conns.resize_with(c as usize + 1, || None); }
                        conns[c as usize] = Some(Conn { tail: [0; 3], tail_len: 0, out: Vec::new() });
                        ctl(libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32);
                    }
                    continue;
                }
                let Some(conn) = conns[fd as usize].as_mut() else { continue };
                let mut close = false;
                if conn.out.is_empty() {
                    // Readable: prepend the carried tail, read, count terminators.
                    let t = conn.tail_len;
                    buf[..t].copy_from_slice(&conn.tail[..t]);
                    let r = libc::read(fd, buf[t..].as_mut_ptr() as *mut _, BUF);
                    if r <= 0 {
                        close = r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN);
                    } else {
                        let data = &buf[..t + r as usize];
                        let reqs = data.windows(4).filter(|w| *w == TERM).count();
                        let keep = data.len().min(3);
                        conn.tail[..keep].copy_from_slice(&data[data.len() - keep..]);
                        conn.tail_len = keep;
                        for _ in 0..reqs { conn.out.extend_from_slice(&resp); }
                    }
                }
                if !close && !conn.out.is_empty() {
                    let w = libc::write(fd, conn.out.as_ptr() as *const _, conn.out.len());
                    if w < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                        close = true;
                    } else {
                        conn.out.drain(..w.max(0) as usize);
                        let want = if conn.out.is_empty() { libc::EPOLLIN } else { libc::EPOLLOUT };
                        if (ev.events & want as u32) == 0 { ctl(libc::EPOLL_CTL_MOD, fd, want as u32); }
                    }
                }
                if close {
                    conns[fd as usize] = None;
                    libc::close(fd); // close() also drops the fd from the epoll set
                }
            }
        }
    }
}
