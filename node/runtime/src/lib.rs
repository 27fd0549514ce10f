//! Baton's container runtime. youki's libcontainer is not safe to call from a multi-threaded
//! process, so every container operation runs in a separate single-threaded *runtime process*
//! ([`serve`], `baton runtime --root DIR`), and the kubelet talks to it through
//! [`RuntimeClient`], one request at a time over a Unix socket. A node runs several such
//! processes side by side (each with its own root directory), so that pods start on more
//! than one core; the client gives each pod to one of them. [`ContainerRuntime`] is the
//! operations as a trait, [`RuntimeClient`] its real implementation (the kubelet holds the
//! client itself for now; a fake behind the trait is for unit tests to come).
//!
//! Pod sandboxes are namespaces bind-mounted onto files (no pause container); containers are
//! OCI bundles the kubelet prepares; their output lands in CRI-format log files; their exits
//! are seen through pidfds.

mod client;
mod pid_holder;
mod protocol;
mod server;
mod types;

use std::future::Future;
use std::os::fd::OwnedFd;

pub use client::{
    RuntimeCallError, RuntimeClient, process_count_on_disk, process_root, wait_for_exit,
};

/// The FIFO the stdin of container `id` reads from, under the runtime's root directory, when
/// its [`ContainerConfig::stdin`] was set.
pub fn stdin_path(root: &std::path::Path, id: &str) -> std::path::PathBuf {
    root.join("io").join(id).join("stdin")
}

/// Sets the window size of the terminal whose master (or slave) is `terminal`.
pub fn set_window_size(
    terminal: impl std::os::fd::AsFd,
    width: u16,
    height: u16,
) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        terminal,
        rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// The bind-mounted network namespace of sandbox `id` (a pod's uid) under the runtime's root
/// directory; it exists unless the pod uses the host's network.
pub fn sandbox_network_path(root: &std::path::Path, id: &str) -> std::path::PathBuf {
    root.join("sandboxes").join(id).join("net")
}
pub use pid_holder::run_pid_holder;
pub use server::{PID_HOLDER_COMMAND, SOCKET_NAME, ServeRuntimeError, pid_namespace_alive, serve};
pub use types::{
    ContainerConfig, ContainerState, ContainerStatus, ExecConfig, ExitStatus, Sandbox,
    SandboxConfig,
};

/// What the kubelet needs of a container runtime.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates the pod sandbox (idempotent: an existing one is returned).
    fn create_sandbox(
        &self,
        config: SandboxConfig,
    ) -> impl Future<Output = Result<Sandbox, RuntimeCallError>> + Send;
    /// Removes the pod sandbox; a missing one is not an error.
    fn remove_sandbox(&self, id: &str)
    -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// Creates a container from its bundle; returns the pid of its (waiting) process.
    fn create_container(
        &self,
        config: ContainerConfig,
    ) -> impl Future<Output = Result<i32, RuntimeCallError>> + Send;
    /// Starts a created container.
    fn start_container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// Sends a signal to a container's init process (nothing if it has exited).
    fn signal_container(
        &self,
        id: &str,
        signal: i32,
    ) -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// Kills what is left of a container and removes it; a missing one is not an error.
    fn remove_container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// Closes the runtime's own hold on a container's stdin (`stdinOnce`): once the writers
    /// attached now are gone too, the container reads end-of-file.
    fn close_stdin(&self, id: &str) -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// Sets the window size of a container's terminal (`tty: true`).
    fn resize_terminal(
        &self,
        id: &str,
        width: u16,
        height: u16,
    ) -> impl Future<Output = Result<(), RuntimeCallError>> + Send;
    /// A container's status.
    fn container_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerStatus, RuntimeCallError>> + Send;
    /// Every container the runtime has.
    fn list_containers(
        &self,
    ) -> impl Future<Output = Result<Vec<ContainerStatus>, RuntimeCallError>> + Send;
    /// Runs a process in a running container with the given stdin, stdout and stderr; returns
    /// its pid.
    fn exec(
        &self,
        config: ExecConfig,
        stdio: [OwnedFd; 3],
    ) -> impl Future<Output = Result<i32, RuntimeCallError>> + Send;
    /// How an exec'd process ended (`None` while it runs).
    fn exec_status(
        &self,
        pid: i32,
    ) -> impl Future<Output = Result<Option<ExitStatus>, RuntimeCallError>> + Send;
}
