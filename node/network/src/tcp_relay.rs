//! A TCP relay to the first reachable of several backends: every accepted connection goes to
//! the backend that took the last one, or, when that one does not accept within the connect
//! timeout, to the next that does. What the host's forwarder into a cluster and each worker's
//! local API endpoint (Talos's KubePrism, k3s's agent load balancer) need: the API servers of
//! every control-plane node behind one address, so that losing one loses nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The backends of a relay, and which one took the last connection.
#[derive(Debug)]
pub struct RelayBackends {
    backends: Vec<SocketAddr>,
    preferred: AtomicUsize,
    connect_timeout: Duration,
}

impl RelayBackends {
    /// `backends` in the order they are tried first; each gets `connect_timeout` to accept.
    pub fn new(backends: Vec<SocketAddr>, connect_timeout: Duration) -> Self {
        RelayBackends {
            backends,
            preferred: AtomicUsize::new(0),
            connect_timeout,
        }
    }

    /// Connects to the preferred backend, else to the next that accepts (which becomes the
    /// preferred one). `None` when none does.
    pub async fn connect(&self) -> Option<(TcpStream, SocketAddr)> {
        let count = self.backends.len();
        let first = self.preferred.load(Ordering::Relaxed);
        for offset in 0..count {
            let index = (first + offset) % count;
            let backend = self.backends[index];
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(backend)).await {
                Ok(Ok(stream)) => {
                    if index != first {
                        tracing::info!(%backend, "relaying to another backend");
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    let _ = stream.set_nodelay(true);
                    keep_alive(&stream);
                    return Some((stream, backend));
                }
                Ok(Err(err)) => tracing::debug!(%backend, %err, "backend refused"),
                Err(_) => tracing::debug!(%backend, "backend did not accept in time"),
            }
        }
        None
    }
}

/// Probes an idle connection after 10 s, every 5 s, and gives up after 3 unanswered probes:
/// a backend that vanished without closing its connections (a machine powered off, a VM
/// killed) ends them within 25 s, so that the client on the other side reconnects (through
/// the relay, to a backend that answers) instead of waiting on a dead peer.
fn keep_alive(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &5);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

/// Relays every connection `listener` accepts to `backends`, until the task is dropped.
pub async fn relay(listener: TcpListener, backends: Arc<RelayBackends>) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, say: wait for connections to close.
                tracing::warn!(%err, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = inbound.set_nodelay(true);
        let backends = backends.clone();
        tokio::spawn(async move {
            match backends.connect().await {
                Some((mut outbound, _)) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                None => tracing::warn!(
                    %peer,
                    backends = ?backends.backends,
                    "no backend accepts the connection"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers each connection with `name` and closes it.
    async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        (address, task)
    }

    async fn answer(relay: SocketAddr) -> String {
        let mut stream = TcpStream::connect(relay).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn connections_go_to_the_first_backend_that_accepts_and_stay_there() {
        // A port nothing listens on: refused at once.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let (second, second_task) = backend("second").await;
        let (third, _third_task) = backend("third").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let backends = Arc::new(RelayBackends::new(
            vec![gone, second, third],
            Duration::from_secs(1),
        ));
        tokio::spawn(relay(listener, backends.clone()));
        assert_eq!(answer(address).await, "second");
        assert_eq!(answer(address).await, "second");
        // The second goes away: the third takes over, and keeps the connections after it.
        second_task.abort();
        let _ = second_task.await;
        assert_eq!(answer(address).await, "third");
        assert_eq!(backends.preferred.load(Ordering::Relaxed), 2);
        assert_eq!(answer(address).await, "third");
    }

    #[tokio::test]
    async fn without_any_backend_the_connection_is_closed() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let backends = Arc::new(RelayBackends::new(vec![gone], Duration::from_secs(1)));
        tokio::spawn(relay(listener, backends));
        assert_eq!(answer(address).await, "");
    }
}
