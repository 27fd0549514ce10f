//! Connections from the host over vsock: a listener on one of this machine's vsock ports and a
//! thread that takes each connection from the host (CID 2) and hands it on. Under Baton's VMM
//! (and Firecracker) the host reaches guest port P by connecting to the vsock device's Unix
//! socket and writing `CONNECT P\n`. Power requests (`vsock_power.rs`) and the node API
//! (`node_api/vsock_relay.rs`) are served this way.

use std::time::Duration;

use vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockListener, VsockStream};

/// After a failed accept (out of file descriptors), how long the listener waits before the
/// next, rather than spinning on the waiting connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A vsock stream whose reads all end by one deadline (a peer that trickles bytes is cut off).
#[derive(Debug)]
pub struct ReadByDeadline<'a> {
    stream: &'a mut VsockStream,
    deadline: std::time::Instant,
}

impl<'a> ReadByDeadline<'a> {
    /// Reads of `stream` that end `within` from now.
    pub fn new(stream: &'a mut VsockStream, within: Duration) -> Self {
        Self {
            stream,
            deadline: std::time::Instant::now() + within,
        }
    }
}

impl std::io::Read for ReadByDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Listens on vsock port `port` of this machine.
pub fn bind(port: u32) -> std::io::Result<VsockListener> {
    VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port)
}

/// Takes connections from the host on `listener` on a thread named `name`, handing each to
/// `connection` (on that thread: a handler that takes long spawns its own); connections from
/// other CIDs are closed. `what` names the service in logs.
pub fn serve_host_connections(
    listener: VsockListener,
    name: &str,
    what: &'static str,
    connection: impl Fn(VsockStream) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                let (stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "accepting a vsock connection for {what}");
                        std::thread::sleep(ACCEPT_BACKOFF);
                        continue;
                    }
                };
                if peer.cid() != VMADDR_CID_HOST {
                    tracing::warn!(
                        cid = peer.cid(),
                        "a vsock connection for {what} not from the host"
                    );
                    continue;
                }
                connection(stream);
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_binds_where_the_machine_has_vsock() {
        // This host's kernel has vsock (with no transport to connect through, so the VMM's end
        // to end path needs a Linux guest under the VMM: hardware KVM); a kernel without it
        // refuses the socket.
        let port = 40_000 + std::process::id() % 20_000;
        let bound = bind(port);
        if std::path::Path::new("/dev/vsock").exists() {
            let listener = bound.expect("bind a vsock port");
            assert_eq!(listener.local_addr().unwrap().port(), port);
        } else {
            assert!(bound.is_err());
        }
    }
}
