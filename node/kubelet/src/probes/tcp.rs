//! tcpSocket probes: the probe succeeds when a TCP connection to the port opens within the
//! timeout; the connection is closed at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::ProbeOutput;
use super::netns::{connect, dial_message};

/// Probes `addr` from inside the network namespace `netns` (`None`: the kubelet's own).
pub async fn probe(netns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> ProbeOutput {
    match connect(netns, addr, timeout).await {
        Ok(stream) => {
            drop(stream);
            ProbeOutput::Success
        }
        Err(err) => ProbeOutput::Failure(dial_message(addr, &err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_port_succeeds_and_a_closed_one_fails_with_the_dial_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            probe(None, addr, Duration::from_secs(5)).await,
            ProbeOutput::Success
        );
        drop(listener);
        assert_eq!(
            probe(None, addr, Duration::from_secs(5)).await,
            ProbeOutput::Failure(format!("dial tcp {addr}: connect: connection refused"))
        );
    }
}
