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
    /// `remove_on_drop`. The file appears only once the socket listens (it is bound under a
    /// temporary name beside it and renamed, never over an existing file), so a client that
    /// sees it can connect at once.
    pub fn bind(path: PathBuf, remove_on_drop: bool) -> std::io::Result<Self> {
        let listener = listen_then_name(&path)?;
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

/// Binds and listens under a temporary name in `path`'s directory, then renames it to
/// `path` (failing, and removing it, if something is there). A path too long for a longer
/// temporary name is bound in place.
fn listen_then_name(path: &Path) -> std::io::Result<UnixListener> {
    let Some(name) = path.file_name() else {
        return UnixListener::bind(path);
    };
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".new");
    let temporary = path.with_file_name(temporary_name);
    if temporary.as_os_str().len() > MAX_SOCKET_PATH {
        return UnixListener::bind(path);
    }
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let renamed = nix::fcntl::renameat2(
        None,
        &temporary,
        None,
        path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    if let Err(errno) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(errno.into());
    }
    Ok(listener)
}

/// The longest path a Unix socket address holds (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

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
