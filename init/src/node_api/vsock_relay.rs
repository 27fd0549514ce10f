//! The node API on vsock: each connection from the host to vsock port [`NODE_API_PORT`] is
//! relayed, byte for byte, to the node API's TCP listener on loopback. TLS and the gRPC calls
//! pass through untouched, so the caller proves itself with its client certificate exactly as
//! over the network. This is how a microVM's node is managed with no network at all:
//! `baton node --endpoint vsock:UDS_PATH` on the host connects through the VMM's vsock device.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use vsock::VsockStream;

use super::NODE_API_PORT;
use crate::vsock_host::{bind, serve_host_connections};

/// A stream a relay can copy in both directions at once: one handle per direction, and the
/// writing half closed when its source ends.
pub trait RelayStream: Read + Write + Send + Sized + 'static {
    /// A second handle on the same connection.
    fn try_clone(&self) -> std::io::Result<Self>;
    /// No more writes (the peer reads the end of the stream).
    fn shutdown_write(&self);
}

impl RelayStream for TcpStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl RelayStream for VsockStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        VsockStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl RelayStream for std::os::unix::net::UnixStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended (the second on a thread
/// of its own); each end's writing half is closed when the other's reading half ends.
pub fn relay(a: impl RelayStream, b: impl RelayStream) -> std::io::Result<()> {
    let (mut a_read, mut b_write) = (a.try_clone()?, b.try_clone()?);
    let forward = std::thread::Builder::new()
        .name("node-api-relay".into())
        .spawn(move || {
            let _ = std::io::copy(&mut a_read, &mut b_write);
            b_write.shutdown_write();
        })?;
    let (mut b_read, mut a_write) = (b, a);
    let _ = std::io::copy(&mut b_read, &mut a_write);
    a_write.shutdown_write();
    let _ = forward.join();
    Ok(())
}

/// On a machine whose kernel has vsock: relays vsock port [`NODE_API_PORT`] to the node API
/// on `tcp`'s port on loopback from now on.
pub fn listen(tcp: SocketAddr) {
    let target = SocketAddr::from(([127, 0, 0, 1], tcp.port()));
    let served = bind(u32::from(NODE_API_PORT)).and_then(|listener| {
        serve_host_connections(listener, "node-api-vsock", "the node API", move |stream| {
            let spawned = std::thread::Builder::new()
                .name("node-api-vsock-conn".into())
                .spawn(move || {
                    let relayed = TcpStream::connect(target).and_then(|tcp| relay(stream, tcp));
                    if let Err(err) = relayed {
                        tracing::warn!(%err, "relaying a node API connection from vsock");
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(%err, "no thread for a node API connection from vsock");
            }
        })
    });
    match served {
        Ok(()) => tracing::info!(port = NODE_API_PORT, "node API on vsock"),
        Err(err) => tracing::info!(%err, "no node API on vsock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_relay_carries_both_directions_and_their_ends() {
        // A server that answers what it read, in capitals, once the caller has finished.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let answering = std::thread::spawn(move || {
            let (mut stream, _) = server.accept().unwrap();
            let mut request = String::new();
            stream.read_to_string(&mut request).unwrap();
            stream.write_all(request.to_uppercase().as_bytes()).unwrap();
        });
        let (mut host, guest) = UnixStream::pair().unwrap();
        let relaying = std::thread::spawn(move || {
            relay(guest, TcpStream::connect(address).unwrap()).unwrap();
        });
        host.write_all(b"status please").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "STATUS PLEASE");
        answering.join().unwrap();
        relaying.join().unwrap();
    }
}
