//! One `SO_REUSEPORT` listener per io core, so the kernel spreads connections across cores.

use std::io;
use std::net::SocketAddr;

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
