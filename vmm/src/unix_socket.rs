//! A Unix socket the VMM listens on (the vsock device's, the API's): made when bound,
//! removed when dropped.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A listening Unix socket whose file goes when this is dropped.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl BoundSocket {
    /// Listens at `path`, which must be free.
    pub fn bind(path: PathBuf) -> std::io::Result<Self> {
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "socket file not removed");
        }
    }
}
