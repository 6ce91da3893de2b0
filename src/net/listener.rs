//! One `SO_REUSEPORT` listener per io core, so the kernel spreads connections across cores, steered by CPU when asked.
//!
//! By default the kernel picks a group's listener by a hash of the
//! connection's addresses. [`steer_by_cpu`] attaches a classic BPF program
//! to the group instead (`SO_ATTACH_REUSEPORT_CBPF`, no toolchain needed)
//! that reads the CPU whose softirq took the SYN and returns the index of
//! the listener whose io core runs there: the connection's packets and its
//! io core then share a CPU. [`super::ops::incoming_cpu`] tells, per accepted socket,
//! where its packets arrived, so the io core can count connections that
//! landed elsewhere.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel may queue per listener before the core accepts them.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `count` listeners to the same address. With port 0, the first
/// listener picks the port and the rest join it.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<(Vec<Socket>, SocketAddr)> {
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no socket address"))?;
        }
        listeners.push(socket);
    }
    Ok((listeners, bound))
}

/// `SKF_AD_OFF + SKF_AD_CPU`: a classic BPF load from this offset reads the CPU running the program.
const LOAD_CPU: u32 = (-0x1000i32 + 36) as u32;
/// A classic BPF program is at most this long (the kernel's `BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;
/// `BPF_LD | BPF_W | BPF_ABS`: A = the word at k.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`: if A == k skip jt instructions, else jf.
const BPF_JMP_JEQ_K: u16 = 0x15;
/// `BPF_RET | BPF_K`: return k.
const BPF_RET_K: u16 = 0x06;
/// Any index past the group's end: the kernel then picks a listener by the connection's hash.
const BY_HASH: u32 = u32::MAX;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The classic BPF program that picks, for a connection whose SYN CPU `c`
/// took, the listener of the io core on `c`: listener `i` joined the group
/// `i`-th and serves the io core on `cpus[i]`. A SYN taken on a CPU no io
/// core runs on returns an index past the group, so the kernel falls back
/// to spreading by hash, as without a program. `None` if `cpus` names a CPU
/// twice (two cores on one CPU cannot both be "the" core there) or is too
/// long for one program.
pub fn steering_program(cpus: &[usize]) -> Option<Vec<libc::sock_filter>> {
    let mut seen = std::collections::HashSet::with_capacity(cpus.len());
    if !cpus.iter().all(|cpu| seen.insert(*cpu)) || 2 * cpus.len() + 2 > MAX_INSNS {
        return None;
    }
    let mut program = Vec::with_capacity(2 * cpus.len() + 2);
    program.push(insn(BPF_LD_W_ABS, 0, 0, LOAD_CPU));
    for (index, &cpu) in cpus.iter().enumerate() {
        // if A == cpu: return index; else skip the return.
        program.push(insn(BPF_JMP_JEQ_K, 0, 1, u32::try_from(cpu).ok()?));
        program.push(insn(BPF_RET_K, 0, 0, index as u32));
    }
    program.push(insn(BPF_RET_K, 0, 0, BY_HASH));
    Some(program)
}

/// Attaches [`steering_program`] to the reuseport group of `listeners`
/// (bound in core order by [`bind_reuseport`], listening), so the kernel
/// hands a new connection to the listener of the io core on the CPU that
/// took its SYN. `cpus[i]` is the CPU of the core that owns `listeners[i]`.
pub fn steer_by_cpu(listeners: &[Socket], cpus: &[usize]) -> io::Result<()> {
    let Some(first) = listeners.first() else {
        return Ok(());
    };
    if listeners.len() != cpus.len() {
        return Err(io::Error::other("one CPU per listener is needed"));
    }
    let mut program = steering_program(cpus).ok_or_else(|| {
        io::Error::other("io cores share a CPU, or there are too many for one program")
    })?;
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: fprog points at `program`, alive and unmoved for the call; the
    // kernel copies the instructions and validates them before attaching.
    let rc = unsafe {
        libc::setsockopt(
            first.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes any program from the reuseport group of `listener`, so the
/// kernel spreads by hash again: a node that inherited a steered group
/// ([`crate::runtime::handover`]) and runs with `--steer off`.
pub fn unsteer(listener: &Socket) {
    let zero: libc::c_int = 0;
    // SAFETY: the option value is a valid int for the call; without a
    // program the kernel answers ENOENT, which changes nothing.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_maps_each_cpu_to_its_core_and_the_rest_to_the_hash() {
        let program = steering_program(&[3, 1]).unwrap();
        assert_eq!(program.len(), 6);
        assert_eq!((program[0].code, program[0].k), (BPF_LD_W_ABS, LOAD_CPU));
        assert_eq!((program[1].k, program[2].k), (3, 0));
        assert_eq!((program[3].k, program[4].k), (1, 1));
        assert_eq!(program[5].k, BY_HASH);
        assert!(steering_program(&[0, 0]).is_none());
    }

    #[test]
    fn a_group_takes_the_program_and_sockets_report_their_cpu() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (listeners, bound) = bind_reuseport(addr, 2).unwrap();
        steer_by_cpu(&listeners, &[0, 1]).unwrap();
        let client = std::net::TcpStream::connect(bound).unwrap();
        assert!(crate::net::ops::incoming_cpu(client.as_raw_fd()).is_some());
    }
}
