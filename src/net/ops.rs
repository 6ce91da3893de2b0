//! The io_uring entries both sides of the network build, each with what must outlive it, and the socket options they share.
//!
//! Building an entry is safe; pushing it ([`super::ring::Ring::push`]) is
//! not. Each function says what the pusher must keep valid: the
//! "Contract" section lists what the entry points to, which must stay
//! valid until its completion (the last one, for a multishot operation).
//! Every descriptor named must stay open until then.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

/// Sets `TCP_NODELAY`: requests and responses go out as soon as they are written.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int of the length given; a bad
    // descriptor only makes setsockopt fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPU whose softirq took the connection's packets (`SO_INCOMING_CPU`), if the kernel says.
#[inline]
pub fn incoming_cpu(fd: RawFd) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: cpu and len are valid for writes of the sizes given; a bad
    // descriptor only makes getsockopt fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        usize::try_from(cpu).ok()
    } else {
        None
    }
}

/// A multishot receive on `fd` into buffers the kernel picks from `group`.
///
/// Each completion with a result > 0 carries the buffer id
/// (`cqueue::buffer_select`), to be recycled into the group once read.
///
/// Contract: the buffer group's ring (a [`super::bufring::BufRing`]) stays
/// registered and mapped until the completion without `IORING_CQE_F_MORE`.
pub fn recv_multi(fd: RawFd, group: u16, user_data: u64) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), group)
        .build()
        .user_data(user_data)
}

/// A send of `buf` on `fd` with `MSG_NOSIGNAL` (a closed peer is an error, not SIGPIPE).
/// It may send less than all of `buf`: the result says how much.
///
/// Contract: `buf`'s bytes stay valid and unmoved until the completion.
pub fn send(fd: RawFd, buf: &[u8], user_data: u64) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), buf.as_ptr(), send_len(buf))
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data)
}

/// A send of all of `buf` (`MSG_WAITALL`) that posts a completion only if
/// it fails (`IOSQE_CQE_SKIP_SUCCESS`); the result of a failed one may
/// count the bytes that went out before it failed.
///
/// Contract: `buf`'s bytes stay valid and unmoved until the kernel is done
/// with them, which on success nothing reports: the pusher must know it
/// otherwise (for a request, every response to it has arrived) or keep the
/// bytes valid until the ring is dropped.
pub fn send_all_quiet(fd: RawFd, buf: &[u8], user_data: u64) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), buf.as_ptr(), send_len(buf))
        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(user_data)
}

/// Cancels the operation(s) submitted with `target` as their `user_data`.
/// It completes with `user_data` (0, -ENOENT or -EALREADY); the target
/// completes too, usually with -ECANCELED.
///
/// Contract: none; it points to no memory.
pub fn cancel(target: u64, user_data: u64) -> squeue::Entry {
    opcode::AsyncCancel::new(target)
        .build()
        .user_data(user_data)
}

/// A read of an eventfd's counter into `counter` (8 bytes; the result is 8).
///
/// Contract: `counter` stays valid, unmoved and untouched until the
/// completion (box it).
pub fn read_eventfd(fd: RawFd, counter: &mut u64, user_data: u64) -> squeue::Entry {
    opcode::Read::new(types::Fd(fd), (counter as *mut u64).cast(), 8)
        .build()
        .user_data(user_data)
}

/// A multishot accept on listener `fd`; every accepted socket is
/// non-blocking (so io_uring polls it rather than parking a kernel worker)
/// and close-on-exec. Each completion's result is the new descriptor.
///
/// Contract: none beyond the listener staying open.
pub fn accept_multi(fd: RawFd, user_data: u64) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
        .build()
        .user_data(user_data)
}

/// A connect of socket `fd` to `addr`.
///
/// Contract: `addr` stays valid and unmoved until the completion (box it).
pub fn connect(fd: RawFd, addr: &socket2::SockAddr, user_data: u64) -> squeue::Entry {
    opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len())
        .build()
        .user_data(user_data)
}

/// A send length the kernel takes (`u32`): longer buffers go out in more than one send.
fn send_len(buf: &[u8]) -> u32 {
    buf.len().min(u32::MAX as usize) as u32
}
