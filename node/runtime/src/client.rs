//! The kubelet's side: [`RuntimeClient`] sends one request at a time to the runtime process
//! (from a thread of its own), starting it (`<program> runtime --root DIR`) when none answers,
//! and waits for container exits on pidfds in the async runtime.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use tokio::sync::oneshot;

use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::io::unix::AsyncFd;

use crate::ContainerRuntime;
use crate::protocol::{Request, Response, recv_frame, send_frame};
use crate::server::SOCKET_NAME;
use crate::types::{
    ContainerConfig, ContainerStatus, ExecConfig, ExitStatus, Sandbox, SandboxConfig,
};

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeCallError {
    /// The runtime process could not be reached or started.
    #[error("runtime process under {root} unavailable: {message}")]
    Unavailable { root: PathBuf, message: String },
    /// The runtime process refused or failed the request; the message names what and why.
    #[error("{0}")]
    Failed(String),
    /// The runtime process answered something that does not fit the request.
    #[error("unexpected answer from the runtime process to {0}")]
    Protocol(&'static str),
}

/// A connection to the runtime process under one root directory. Requests go, one at a time,
/// through one thread of the client's own that holds the connection (blocking socket I/O never
/// occupies the async runtime's threads).
#[derive(Clone, Debug)]
pub struct RuntimeClient {
    root: PathBuf,
    requests: mpsc::Sender<Job>,
}

/// One request for the connection's thread, and where its answer goes.
#[derive(Debug)]
struct Job {
    request: Request,
    fds: Vec<OwnedFd>,
    reply: oneshot::Sender<Result<Response, RuntimeCallError>>,
}

impl RuntimeClient {
    /// A client of the runtime process under `root`, started from `program` (the `baton`
    /// binary) when it is not running.
    pub fn new(root: impl Into<PathBuf>, program: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let (requests, jobs) = mpsc::channel::<Job>();
        let mut connection = Connection {
            root: root.clone(),
            program: program.into(),
            stream: None,
        };
        // The thread ends when the last clone of the client is dropped.
        let spawned = std::thread::Builder::new()
            .name("runtime-client".into())
            .spawn(move || {
                for job in jobs {
                    let answer = connection.exchange(&job.request, &job.fds);
                    let _ = job.reply.send(answer);
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "starting the runtime client's thread");
        }
        Self { root, requests }
    }

    /// The runtime's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Connects now (starting the runtime process if needed) and returns its pid.
    pub async fn connect(&self) -> Result<i32, RuntimeCallError> {
        match self.call(Request::Ping, Vec::new()).await? {
            Response::Pong { pid } => Ok(pid),
            _ => Err(RuntimeCallError::Protocol("ping")),
        }
    }

    /// Kills every container, removes every sandbox, and stops the runtime process.
    pub async fn shutdown(&self) -> Result<(), RuntimeCallError> {
        match self.call(Request::Shutdown, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("shutdown")),
        }
    }

    async fn call(
        &self,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<Response, RuntimeCallError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            fds,
            reply,
        };
        let gone = || unavailable(&self.root, "the runtime client's thread is gone".into());
        self.requests.send(job).map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())?? {
            Response::Failed(message) => Err(RuntimeCallError::Failed(message)),
            response => Ok(response),
        }
    }
}

/// The connection, owned by the client's thread.
#[derive(Debug)]
struct Connection {
    root: PathBuf,
    program: PathBuf,
    stream: Option<UnixStream>,
}

impl Connection {
    /// Sends one request and reads its answer, connecting (or starting the runtime process)
    /// first when needed.
    fn exchange(
        &mut self,
        request: &Request,
        fds: &[OwnedFd],
    ) -> Result<Response, RuntimeCallError> {
        if self.stream.is_none() {
            self.stream = Some(self.connect_or_start()?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let exchanged = send_frame(stream, request, fds).and_then(|()| recv_frame(stream));
        match exchanged {
            Ok(Some((response, _))) => {
                if matches!(request, Request::Shutdown) {
                    self.stream = None;
                }
                Ok(response)
            }
            Ok(None) => {
                self.stream = None;
                Err(unavailable(
                    &self.root,
                    "the runtime process closed the connection".into(),
                ))
            }
            Err(err) => {
                self.stream = None;
                Err(unavailable(&self.root, err.to_string()))
            }
        }
    }

    /// Connects to the running runtime process, or starts one and connects to it.
    fn connect_or_start(&self) -> Result<UnixStream, RuntimeCallError> {
        let socket = self.root.join(SOCKET_NAME);
        if let Ok(stream) = UnixStream::connect(&socket) {
            return Ok(stream);
        }
        let mut child = Command::new(&self.program)
            .arg("runtime")
            .arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a signal to the kubelet's group does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|err| {
                unavailable(
                    &self.root,
                    format!("start {}: {err}", self.program.display()),
                )
            })?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        // Reap it whenever it ends, so that it never lingers as a zombie of the kubelet.
        std::thread::spawn(move || child.wait());
        if line.trim() != "ready" {
            return Err(unavailable(
                &self.root,
                "the runtime process exited before it was ready (see its log)".into(),
            ));
        }
        tracing::info!(root = %self.root.display(), "started the runtime process");
        UnixStream::connect(&socket).map_err(|err| unavailable(&self.root, err.to_string()))
    }
}

fn unavailable(root: &Path, message: String) -> RuntimeCallError {
    RuntimeCallError::Unavailable {
        root: root.to_owned(),
        message,
    }
}

/// Waits until process `pid` has exited (at once if there is no such process).
#[allow(unsafe_code)]
pub async fn wait_for_exit(pid: i32) -> std::io::Result<()> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Ok(());
    };
    let pidfd = match pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    // SAFETY: the AsyncFd owns the pidfd, so the descriptor stays open and the same until it
    // is dropped.
    let watched = unsafe { AsyncFd::register(pidfd) }.map_err(std::io::Error::from)?;
    let _ready = watched.readable().await?;
    Ok(())
}

impl ContainerRuntime for RuntimeClient {
    async fn create_sandbox(&self, config: SandboxConfig) -> Result<Sandbox, RuntimeCallError> {
        match self
            .call(Request::CreateSandbox(config), Vec::new())
            .await?
        {
            Response::Sandbox(sandbox) => Ok(sandbox),
            _ => Err(RuntimeCallError::Protocol("create sandbox")),
        }
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::RemoveSandbox { id: id.to_owned() };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("remove sandbox")),
        }
    }

    async fn create_container(&self, config: ContainerConfig) -> Result<i32, RuntimeCallError> {
        match self
            .call(Request::CreateContainer(config), Vec::new())
            .await?
        {
            Response::Created { pid } => Ok(pid),
            _ => Err(RuntimeCallError::Protocol("create container")),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::StartContainer { id: id.to_owned() };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("start container")),
        }
    }

    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), RuntimeCallError> {
        let request = Request::SignalContainer {
            id: id.to_owned(),
            signal,
        };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("signal container")),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::RemoveContainer { id: id.to_owned() };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("remove container")),
        }
    }

    async fn close_stdin(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::CloseStdin { id: id.to_owned() };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("close stdin")),
        }
    }

    async fn resize_terminal(
        &self,
        id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), RuntimeCallError> {
        let request = Request::ResizeTerminal {
            id: id.to_owned(),
            width,
            height,
        };
        match self.call(request, Vec::new()).await? {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("resize terminal")),
        }
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeCallError> {
        let request = Request::ContainerStatus { id: id.to_owned() };
        match self.call(request, Vec::new()).await? {
            Response::Status(status) => Ok(status),
            _ => Err(RuntimeCallError::Protocol("container status")),
        }
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeCallError> {
        match self.call(Request::ListContainers, Vec::new()).await? {
            Response::List(list) => Ok(list),
            _ => Err(RuntimeCallError::Protocol("list containers")),
        }
    }

    async fn exec(&self, config: ExecConfig, stdio: [OwnedFd; 3]) -> Result<i32, RuntimeCallError> {
        match self.call(Request::Exec(config), stdio.into()).await? {
            Response::ExecStarted { pid } => Ok(pid),
            _ => Err(RuntimeCallError::Protocol("exec")),
        }
    }

    async fn exec_status(&self, pid: i32) -> Result<Option<ExitStatus>, RuntimeCallError> {
        match self.call(Request::ExecStatus { pid }, Vec::new()).await? {
            Response::ExecStatus(exit) => Ok(exit),
            _ => Err(RuntimeCallError::Protocol("exec status")),
        }
    }
}
