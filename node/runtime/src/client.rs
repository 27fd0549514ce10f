//! The kubelet's side: [`RuntimeClient`] sends requests to one or more runtime processes, one
//! at a time to each (from a thread of its own per process), starting a process (`<program>
//! runtime --root DIR`) when none answers, and waits for container exits on pidfds in the async
//! runtime.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

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

/// The kubelet's client of its runtime processes. Each runtime process is single-threaded, so
/// a node runs several (`with_processes`) to use more than one core: the first under `root`,
/// the others under `root/processes/<n>`. A pod's sandbox and containers go to one process,
/// chosen from the sandbox id (a container id's part before its first `_`, the kubelet's pod
/// uid), and stay with it: calls about an existing sandbox or container go to the process
/// whose directory holds it, even after the number of processes changed.
#[derive(Clone, Debug)]
pub struct RuntimeClient {
    lines: Arc<[ProcessLine]>,
    /// How many of `lines` take new sandboxes and containers; the rest (found on disk) only
    /// hold what an earlier configuration put there.
    spread: usize,
    /// Which process ran each exec whose end has not been asked for yet.
    exec_lines: Arc<Mutex<ExecLines>>,
}

/// The directory of runtime process `index` under the client's root.
pub fn process_root(root: &Path, index: usize) -> PathBuf {
    match index {
        0 => root.to_owned(),
        n => root.join(PROCESSES_DIR).join(n.to_string()),
    }
}

/// Where the runtime processes after the first keep their directories.
const PROCESSES_DIR: &str = "processes";

/// How many runtime processes have directories under `root` (at least 1).
pub fn process_count_on_disk(root: &Path) -> usize {
    let mut count = 1;
    while process_root(root, count).is_dir() {
        count += 1;
    }
    count
}

impl RuntimeClient {
    /// A client that gives new pods to the runtime process under `root` (and reaches any
    /// others that earlier runs left under it), started from `program` (the `baton` binary)
    /// when it is not running.
    pub fn new(root: impl Into<PathBuf>, program: impl Into<PathBuf>) -> Self {
        Self::with_processes(root, program, 1)
    }

    /// A client of exactly the one runtime process under `root`, whatever else is under it.
    pub fn of_process(root: impl Into<PathBuf>, program: impl Into<PathBuf>) -> Self {
        Self {
            lines: Arc::new([ProcessLine::new(root.into(), program.into())]),
            spread: 1,
            exec_lines: Arc::default(),
        }
    }

    /// A client that spreads pods over `processes` runtime processes under `root` (and keeps
    /// reaching any more that earlier runs left there).
    pub fn with_processes(
        root: impl Into<PathBuf>,
        program: impl Into<PathBuf>,
        processes: usize,
    ) -> Self {
        let root = root.into();
        let program = program.into();
        let spread = processes.max(1);
        // Processes beyond `spread` that an earlier run left are reached while they run or
        // hold sandboxes or containers (none is started just to sit idle, and a running one
        // can still be shut down).
        let lines: Arc<[ProcessLine]> = (0..spread.max(process_count_on_disk(&root)))
            .map(|index| process_root(&root, index))
            .enumerate()
            .filter(|(index, dir)| {
                *index < spread
                    || crate::server::holds_anything(dir)
                    || UnixStream::connect(dir.join(SOCKET_NAME)).is_ok()
            })
            .map(|(_, dir)| ProcessLine::new(dir, program.clone()))
            .collect();
        Self {
            lines,
            spread,
            exec_lines: Arc::default(),
        }
    }

    /// The root directories of the runtime processes.
    pub fn roots(&self) -> impl Iterator<Item = &Path> {
        self.lines.iter().map(|line| line.root.as_path())
    }

    /// The root directory of the process that holds (or would hold) sandbox `id`.
    pub fn sandbox_root(&self, id: &str) -> &Path {
        &self.lines[self.sandbox_line(id)].root
    }

    /// The root directory of the process that holds (or would hold) container `id`.
    pub fn container_root(&self, id: &str) -> &Path {
        &self.lines[self.container_line(id)].root
    }

    /// Connects to every runtime process now (starting those not running) and returns their
    /// pids.
    pub async fn connect(&self) -> Result<Vec<i32>, RuntimeCallError> {
        let mut pids = Vec::with_capacity(self.lines.len());
        for line in self.lines.iter() {
            match line.call(Request::Ping, Vec::new()).await? {
                Response::Pong { pid } => pids.push(pid),
                _ => return Err(RuntimeCallError::Protocol("ping")),
            }
        }
        Ok(pids)
    }

    /// Kills every container, removes every sandbox, and stops every runtime process (each
    /// one even when another fails; the first failure is returned).
    pub async fn shutdown(&self) -> Result<(), RuntimeCallError> {
        let mut first_error = None;
        for line in self.lines.iter() {
            let result = match line.call(Request::Shutdown, Vec::new()).await {
                Ok(Response::Done) => continue,
                Ok(_) => RuntimeCallError::Protocol("shutdown"),
                Err(err) => err,
            };
            first_error.get_or_insert(result);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The process of the first directory `holds` says has `id`, else the one `id` spreads
    /// to.
    fn line_for(&self, id: &str, holds: impl Fn(&Path) -> bool) -> usize {
        if self.lines.len() == 1 {
            return 0;
        }
        self.lines
            .iter()
            .position(|line| holds(&line.root))
            .unwrap_or_else(|| spread_index(id, self.spread))
    }

    fn sandbox_line(&self, id: &str) -> usize {
        self.line_for(id, |root| crate::server::sandbox_exists(root, id))
    }

    /// A container not on disk yet goes where its pod's sandbox is.
    fn container_line(&self, id: &str) -> usize {
        if self.lines.len() == 1 {
            return 0;
        }
        self.lines
            .iter()
            .position(|line| crate::server::container_exists(&line.root, id))
            .unwrap_or_else(|| self.sandbox_line(sandbox_of(id)))
    }

    fn exec_lines(&self) -> std::sync::MutexGuard<'_, ExecLines> {
        self.exec_lines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    async fn call_line(
        &self,
        line: usize,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<Response, RuntimeCallError> {
        self.lines[line].call(request, fds).await
    }
}

/// Which process ran each recent exec, so that its end is asked of that process; the oldest
/// are forgotten beyond [`MAX_EXEC_LINES`] (their callers stopped asking long ago).
#[derive(Debug, Default)]
struct ExecLines {
    lines: HashMap<i32, usize>,
    order: VecDeque<i32>,
}

/// How many execs' processes [`ExecLines`] remembers.
const MAX_EXEC_LINES: usize = 1024;

impl ExecLines {
    fn insert(&mut self, pid: i32, line: usize) {
        if self.lines.insert(pid, line).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > MAX_EXEC_LINES {
            if let Some(oldest) = self.order.pop_front() {
                self.lines.remove(&oldest);
            }
        }
    }

    /// The process exec `pid` ran in (the first, for one not known).
    fn line_of(&self, pid: i32) -> usize {
        self.lines.get(&pid).copied().unwrap_or(0)
    }

    fn remove(&mut self, pid: i32) {
        if self.lines.remove(&pid).is_some() {
            self.order.retain(|known| *known != pid);
        }
    }
}

/// The sandbox a container id belongs to: its part before the first `_` (the kubelet's
/// `<pod uid>_<name>_<attempt>`).
fn sandbox_of(id: &str) -> &str {
    id.split('_').next().unwrap_or(id)
}

/// The process (of `count`) that new sandbox or container `id` goes to: FNV-1a of its
/// sandbox's id (stable across builds, unlike std's hasher).
fn spread_index(id: &str, count: usize) -> usize {
    let group = sandbox_of(id);
    let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % count.max(1) as u64) as usize
}

/// One runtime process: requests go, one at a time, through one thread of the client's own
/// that holds the connection (blocking socket I/O never occupies the async runtime's threads).
#[derive(Debug)]
struct ProcessLine {
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

impl ProcessLine {
    fn new(root: PathBuf, program: PathBuf) -> Self {
        let (requests, jobs) = mpsc::channel::<Job>();
        let mut connection = Connection {
            root: root.clone(),
            program,
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
        let line = self.sandbox_line(&config.id);
        match self
            .call_line(line, Request::CreateSandbox(config), Vec::new())
            .await?
        {
            Response::Sandbox(sandbox) => Ok(sandbox),
            _ => Err(RuntimeCallError::Protocol("create sandbox")),
        }
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::RemoveSandbox { id: id.to_owned() };
        match self
            .call_line(self.sandbox_line(id), request, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("remove sandbox")),
        }
    }

    async fn create_container(&self, config: ContainerConfig) -> Result<i32, RuntimeCallError> {
        let line = self.container_line(&config.id);
        match self
            .call_line(line, Request::CreateContainer(config), Vec::new())
            .await?
        {
            Response::Created { pid } => Ok(pid),
            _ => Err(RuntimeCallError::Protocol("create container")),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::StartContainer { id: id.to_owned() };
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("start container")),
        }
    }

    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), RuntimeCallError> {
        let request = Request::SignalContainer {
            id: id.to_owned(),
            signal,
        };
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("signal container")),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::RemoveContainer { id: id.to_owned() };
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("remove container")),
        }
    }

    async fn close_stdin(&self, id: &str) -> Result<(), RuntimeCallError> {
        let request = Request::CloseStdin { id: id.to_owned() };
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
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
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(RuntimeCallError::Protocol("resize terminal")),
        }
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeCallError> {
        let request = Request::ContainerStatus { id: id.to_owned() };
        match self
            .call_line(self.container_line(id), request, Vec::new())
            .await?
        {
            Response::Status(status) => Ok(status),
            _ => Err(RuntimeCallError::Protocol("container status")),
        }
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeCallError> {
        let mut all = Vec::new();
        for line in 0..self.lines.len() {
            match self
                .call_line(line, Request::ListContainers, Vec::new())
                .await?
            {
                Response::List(list) => all.extend(list),
                _ => return Err(RuntimeCallError::Protocol("list containers")),
            }
        }
        Ok(all)
    }

    async fn exec(&self, config: ExecConfig, stdio: [OwnedFd; 3]) -> Result<i32, RuntimeCallError> {
        let line = self.container_line(&config.container_id);
        match self
            .call_line(line, Request::Exec(config), stdio.into())
            .await?
        {
            Response::ExecStarted { pid } => {
                if self.lines.len() > 1 {
                    self.exec_lines().insert(pid, line);
                }
                Ok(pid)
            }
            _ => Err(RuntimeCallError::Protocol("exec")),
        }
    }

    async fn exec_status(&self, pid: i32) -> Result<Option<ExitStatus>, RuntimeCallError> {
        let line = self.exec_lines().line_of(pid);
        let answer = self
            .call_line(line, Request::ExecStatus { pid }, Vec::new())
            .await;
        match answer {
            Ok(Response::ExecStatus(None)) => Ok(None),
            Ok(Response::ExecStatus(Some(exit))) => {
                self.exec_lines().remove(pid);
                Ok(Some(exit))
            }
            Ok(_) => {
                self.exec_lines().remove(pid);
                Err(RuntimeCallError::Protocol("exec status"))
            }
            Err(err) => {
                self.exec_lines().remove(pid);
                Err(err)
            }
        }
    }
}
