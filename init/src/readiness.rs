//! Readiness checks of services: one attempt each, bounded in time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::service::Readiness;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `readiness` passes now.
pub async fn check(readiness: &Readiness) -> bool {
    let attempt = async {
        match readiness {
            Readiness::Started => true,
            Readiness::TcpConnect(address) => TcpStream::connect(address).await.is_ok(),
            Readiness::HttpGet { address, path } => http_get_ok(*address, path).await,
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .unwrap_or(false)
}

/// Sends `GET path` over plain HTTP/1.1 and reports whether the status is 200.
async fn http_get_ok(address: std::net::SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200" or "HTTP/1.0 200".
    head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200"
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            }
        });
        address
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_readiness_needs_a_200() {
        let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let failing = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let get = |address| Readiness::HttpGet {
            address,
            path: "/health".into(),
        };
        assert!(check(&get(ok)).await);
        assert!(!check(&get(failing)).await);
        assert!(check(&Readiness::TcpConnect(failing)).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_listening_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        assert!(!check(&Readiness::TcpConnect(address)).await);
    }
}
