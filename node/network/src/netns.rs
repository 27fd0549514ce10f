//! Network namespaces held by file descriptors: open one, make one, and run code inside one on
//! a thread of its own (a thread's namespace is its own; the process's other threads never
//! move).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns, unshare};

use crate::netlink::RouteSocket;

/// An operation on a network namespace failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}")]
pub struct NetNsError {
    /// What was attempted.
    pub operation: String,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

fn fail(operation: impl Into<String>) -> impl FnOnce(io::Error) -> NetNsError {
    let operation = operation.into();
    move |source| NetNsError { operation, source }
}

/// A network namespace, alive while this handle (or anything else in it) is.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Opens the namespace file at `path` (a bind mount such as a pod sandbox's `net`, or
    /// `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetNsError> {
        let file =
            File::open(path).map_err(fail(format!("open network namespace {}", path.display())))?;
        Ok(Self { file })
    }

    /// The calling thread's namespace.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Makes a new namespace with its loopback interface up.
    pub fn create() -> Result<Self, NetNsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    unshare(CloneFlags::CLONE_NEWNET)
                        .map_err(|errno| fail("unshare a network namespace")(errno.into()))?;
                    let namespace = Self::current()?;
                    RouteSocket::open()
                        .and_then(|mut socket| socket.set_link(LOOPBACK_INDEX, None, None))
                        .map_err(|err| NetNsError {
                            operation: "bring loopback up in a new network namespace".into(),
                            source: io::Error::other(err),
                        })?;
                    Ok(namespace)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(fail("create a network namespace")(io::Error::other(
                        "thread panicked",
                    )))
                })
        })
    }

    /// Makes a new namespace (loopback up) pinned at `path` by a bind mount of its file, as
    /// `ip netns add` does under /run/netns, so that it outlives this process.
    pub fn create_pinned(path: &Path) -> Result<Self, NetNsError> {
        use std::os::fd::AsRawFd;
        let namespace = Self::create()?;
        let pin = || format!("pin network namespace at {}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail(pin()))?;
        }
        // An existing pin is someone else's namespace: refused, never stacked over.
        File::create_new(path).map_err(fail(pin()))?;
        let source = format!("/proc/self/fd/{}", namespace.file.as_raw_fd());
        let bound = nix::mount::mount(
            Some(source.as_str()),
            path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(errno) = bound {
            let _ = std::fs::remove_file(path);
            return Err(fail(pin())(errno.into()));
        }
        Ok(namespace)
    }

    /// Unpins the namespace pinned at `path` (unmounts and removes the file); it ends once
    /// nothing else holds it. A missing pin is not an error.
    pub fn unpin(path: &Path) -> Result<(), NetNsError> {
        if !path.exists() {
            return Ok(());
        }
        let unpin = || format!("unpin network namespace at {}", path.display());
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(errno) => return Err(fail(unpin())(errno.into())),
        }
        std::fs::remove_file(path).map_err(fail(unpin()))
    }

    /// Moves the calling thread into this namespace. Only for a thread that owns its
    /// namespace for good (a test's thread, a thread made for the purpose).
    pub fn enter(&self) -> Result<(), NetNsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|errno| fail("enter a network namespace")(errno.into()))
    }

    /// Runs `work` on a new thread inside this namespace and returns its result. Sockets that
    /// `work` opens stay in the namespace; so do processes it spawns.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(fail("run in a network namespace")(io::Error::other(
                        "thread panicked",
                    )))
                })
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Interface index of `lo` in every network namespace.
pub const LOOPBACK_INDEX: u32 = 1;
