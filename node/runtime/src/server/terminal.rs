//! Containers with a terminal (`process.terminal` in their spec, a pod's `tty: true`):
//! libcontainer makes the pseudo-terminal inside the container (its /dev/pts), makes the slave
//! the process's controlling terminal and stdio, and sends the master over a "console socket"
//! the caller listens on. The runtime process keeps the master: it copies the terminal's output
//! into the container's log (as stdout), writes what arrives on the container's stdin FIFO into
//! it, and sets its window size. A restarted runtime process cannot get the master back, so an
//! adopted container's terminal has no output or input any more.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// How long a container's init may take to send its terminal once it was created (it sends it
/// before libcontainer's create returns, so this only bounds a broken init).
pub(crate) const MASTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The file name prefix of console sockets in the runtime's root.
const SOCKET_PREFIX: &str = "console-";

/// Numbers the console sockets of this process (their paths must stay short: a Unix socket
/// path has at most 107 bytes).
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

/// A listening socket libcontainer's init connects to and sends the terminal's master over.
/// Its file is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on a fresh socket under `dir`.
    pub(crate) fn bind(dir: &Path) -> io::Result<Self> {
        let number = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{SOCKET_PREFIX}{}-{number}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    /// The socket's path, for the builder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the init's connection and receives the master it sends, waiting at most
    /// `timeout` for each.
    pub(crate) fn receive_master(&self, timeout: Duration) -> io::Result<OwnedFd> {
        wait_readable(
            &self.listener,
            timeout,
            "the container's terminal connection",
        )?;
        let (stream, _) = self.listener.accept()?;
        wait_readable(&stream, timeout, "the container's terminal")?;
        let mut name = [0u8; 256];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        rustix::net::recvmsg(
            stream.as_fd(),
            &mut [io::IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let master = control
            .drain()
            .find_map(|message| match message {
                RecvAncillaryMessage::ScmRights(mut rights) => rights.next(),
                _ => None,
            })
            .ok_or_else(|| io::Error::other("the container sent no terminal"))?;
        rustix::io::ioctl_fionbio(&master, true)?;
        Ok(master)
    }
}

/// Removes the console sockets a runtime process that died left in `dir`.
pub(crate) fn remove_stale_sockets(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SOCKET_PREFIX) && name.ends_with(".sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn wait_readable(fd: &impl AsFd, timeout: Duration, what: &str) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out waiting for {what}"),
            ));
        }
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let timeout = rustix::event::Timespec::try_from(left).map_err(io::Error::other)?;
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// A container's terminal as the runtime process holds it.
#[derive(Debug)]
pub(crate) struct Terminal {
    /// The master, for input and window sizes (output is read through a duplicate).
    pub master: OwnedFd,
    /// The reading end of the container's stdin FIFO, whose bytes go into the terminal;
    /// `None` for a container without stdin, or once every writer is gone.
    pub input: Option<OwnedFd>,
    /// Whether dropped input was reported already (once per terminal).
    pub dropped_reported: bool,
}

impl Terminal {
    /// Moves what is waiting on the stdin FIFO into the terminal. Input the terminal cannot
    /// take now (its buffer is full: the container does not read) is dropped, so that one
    /// container cannot stall the runtime process.
    pub(crate) fn forward_input(&mut self, id: &str) {
        let Some(input) = &self.input else {
            return;
        };
        let mut buffer = [0u8; 4096];
        let count = match rustix::io::read(input, &mut buffer) {
            // Every writer is gone (the runtime let go of stdin): nothing more comes.
            Ok(0) => {
                self.input = None;
                return;
            }
            Ok(count) => count,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
            Err(err) => {
                tracing::warn!(container = %id, %err, "reading a container's stdin");
                self.input = None;
                return;
            }
        };
        let mut written = 0;
        while written < count {
            match rustix::io::write(&self.master, &buffer[written..count]) {
                Ok(n) => written += n,
                Err(rustix::io::Errno::INTR) => {}
                // The container's side is closed (it exited): no more input.
                Err(rustix::io::Errno::IO) => {
                    self.input = None;
                    return;
                }
                Err(err) => {
                    if !self.dropped_reported {
                        self.dropped_reported = true;
                        tracing::warn!(container = %id, %err, dropped = count - written, "writing to a container's terminal (input it cannot take is dropped; reported once)");
                    }
                    return;
                }
            }
        }
    }

    /// Sets the terminal's window size.
    pub(crate) fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        crate::set_window_size(&self.master, width, height)
    }
}
