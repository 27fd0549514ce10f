//! A Unix socket the VMM listens on (the vsock device's, the API's): made when bound,
//! removed when dropped (by the jail's outer process instead when the VMM is jailed: the
//! user the VMM dropped to may not write the socket's directory).

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A listening Unix socket whose file goes when this is dropped.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    remove_on_drop: bool,
}

impl BoundSocket {
    /// Listens at `path`, which must be free; the file is removed on drop when
    /// `remove_on_drop`.
    pub fn bind(path: PathBuf, remove_on_drop: bool) -> std::io::Result<Self> {
        let listener = UnixListener::bind(&path)?;
        Ok(Self {
            listener,
            path,
            remove_on_drop,
        })
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
        if !self.remove_on_drop {
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "socket file not removed");
        }
    }
}
