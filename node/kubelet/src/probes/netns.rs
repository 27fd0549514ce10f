//! Connecting to a pod from inside its network namespace. Pods have no routable address yet,
//! so network probes and hooks reach a pod where it listens: in its own network namespace. A
//! socket belongs to the namespace of the thread that created it, so the connect runs on a
//! dedicated, short-lived thread that first joins the pod's namespace (setns on the sandbox's
//! bind-mounted namespace file) and then hands the connected socket back to the async side. A
//! tokio worker or blocking-pool thread never changes namespace: those threads run other work
//! afterwards. Without a namespace file (hostNetwork pods, tests) the connect is an ordinary
//! async one in the kubelet's own namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::net::TcpStream;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The pod's network namespace could not be joined.
    #[error("enter network namespace {path}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The connecting thread could not be started or went away.
    #[error("run the connecting thread")]
    Thread(#[source] io::Error),
    /// The peer did not answer within the timeout.
    #[error("i/o timeout")]
    TimedOut,
    /// The connect failed (refused, unreachable, ...).
    #[error("connect")]
    Connect(#[source] io::Error),
}

/// Connects to `addr` from inside the network namespace whose file is `netns` (`None`: the
/// kubelet's own), giving up after `timeout`.
pub async fn connect(
    netns: Option<&Path>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let Some(netns) = netns else {
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(classify(err)),
            Err(_) => Err(ConnectError::TimedOut),
        };
    };
    let path = netns.to_path_buf();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let _ = sender.send(connect_in(&path, addr, timeout));
        })
        .map_err(ConnectError::Thread)?;
    let stream = receiver
        .await
        .map_err(|_| ConnectError::Thread(io::Error::other("the connecting thread ended")))??;
    stream
        .set_nonblocking(true)
        .map_err(ConnectError::Connect)?;
    TcpStream::from_std(stream).map_err(ConnectError::Connect)
}

/// Runs on the dedicated thread: joins the namespace, then connects (blocking, bounded by
/// `timeout`). The thread ends right after, so its namespace never matters to anything else.
fn connect_in(
    path: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, ConnectError> {
    let namespace = |source| ConnectError::Namespace {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(namespace)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| namespace(errno.into()))?;
    std::net::TcpStream::connect_timeout(&addr, timeout).map_err(classify)
}

fn classify(err: io::Error) -> ConnectError {
    if err.kind() == io::ErrorKind::TimedOut {
        ConnectError::TimedOut
    } else {
        ConnectError::Connect(err)
    }
}

/// The error as Go's dialer words it, which upstream's probe messages carry:
/// `dial tcp 10.0.0.1:80: connect: connection refused`, `dial tcp 10.0.0.1:80: i/o timeout`.
pub fn dial_message(addr: SocketAddr, err: &ConnectError) -> String {
    match err {
        ConnectError::TimedOut => format!("dial tcp {addr}: i/o timeout"),
        ConnectError::Connect(source) => format!("dial tcp {addr}: connect: {}", os_text(source)),
        ConnectError::Namespace { path, source } => format!(
            "dial tcp {addr}: enter network namespace {}: {}",
            path.display(),
            os_text(source)
        ),
        ConnectError::Thread(source) => format!("dial tcp {addr}: {}", os_text(source)),
    }
}

/// An OS error as Go prints it: the lower-case strerror text without "(os error N)".
pub fn os_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_in_the_own_namespace_and_words_errors_as_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        connect(None, addr, Duration::from_secs(5)).await.unwrap();
        drop(listener);
        let err = connect(None, addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            dial_message(addr, &err),
            format!("dial tcp {addr}: connect: connection refused")
        );
    }

    #[tokio::test]
    async fn connects_from_a_thread_that_joined_the_namespace() {
        if !nix::unistd::geteuid().is_root() {
            return; // setns needs CAP_SYS_ADMIN
        }
        // The kubelet's own namespace, joined through its file: the thread path end to end.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let netns = Path::new("/proc/self/ns/net");
        let stream = connect(Some(netns), addr, Duration::from_secs(5))
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
        drop(accepted);
    }

    #[tokio::test]
    async fn a_missing_namespace_file_is_named() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let path = Path::new("/nonexistent/netns");
        let err = connect(Some(path), addr, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Namespace { .. }), "{err:?}");
        assert_eq!(
            dial_message(addr, &err),
            "dial tcp 127.0.0.1:9: enter network namespace /nonexistent/netns: no such file or directory"
        );
    }
}
