//! The runtime process (`baton runtime --root DIR`): a single-threaded server that owns every
//! libcontainer call, because libcontainer is not safe in a multi-threaded process (it forks
//! and runs Rust code in the child, changes the process's working directory, and rewrites its
//! oom_score_adj and dumpable flag). It answers one request at a time on `runtime.sock`,
//! reaps the containers it created through pidfds, records their exits, and copies their
//! output into CRI log files. It outlives a kubelet restart; a new one adopts the containers
//! the last one left running.

mod containers;
mod cri_log;
mod sandbox;

pub use sandbox::{PID_HOLDER_COMMAND, pid_namespace_alive};
mod terminal;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions, pidfd_open, waitid};

use crate::protocol::{Request, Response, recv_frame, send_frame};
use crate::types::{ContainerState, ContainerStatus, ExitStatus};
use containers::{Containers, Output, oom_kills, unknown_exit};
use cri_log::{CriLogWriter, Stream};
use sandbox::HomeNamespaces;

/// Name of the socket the runtime process listens on, inside its root directory.
pub const SOCKET_NAME: &str = "runtime.sock";

/// Where under its root the runtime process keeps its sandboxes.
const SANDBOXES_DIR: &str = "sandboxes";

/// Whether the runtime process under `root` holds sandbox `id`.
pub(crate) fn sandbox_exists(root: &Path, id: &str) -> bool {
    check_id(id).is_ok() && sandbox::sandbox_dir(&root.join(SANDBOXES_DIR), id).exists()
}

/// Whether the runtime process under `root` holds any sandbox or container.
pub(crate) fn holds_anything(root: &Path) -> bool {
    [root.join(SANDBOXES_DIR), root.join(containers::STATE_DIR)]
        .iter()
        .any(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()))
}

/// Whether the runtime process under `root` holds container `id`.
pub(crate) fn container_exists(root: &Path, id: &str) -> bool {
    check_id(id).is_ok() && root.join(containers::STATE_DIR).join(id).exists()
}
/// Most exits of exec'd processes kept for `ExecStatus`.
const MAX_EXEC_EXITS: usize = 1024;
/// oom_score_adj of the runtime process, as the kubelet's own (-999): the last to be killed.
const OOM_SCORE_ADJ: &str = "-999";

/// Why the runtime process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeRuntimeError {
    /// The root directory, socket or namespaces could not be set up.
    #[error("prepare runtime root {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Waiting for work failed.
    #[error("wait for requests")]
    Poll(#[source] io::Error),
}

/// A container or exec'd process the runtime waits for.
#[derive(Debug)]
struct Watched {
    pidfd: OwnedFd,
    /// A child of this process (its exit status can be read), not one adopted from a
    /// runtime process that ran before.
    child: bool,
}

/// A container's output being copied into its log.
#[derive(Debug)]
struct LogPump {
    writer: CriLogWriter,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// How long removing a sandbox waits for its killed PID namespace holder to end.
const PID_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Everything the server holds.
#[derive(Debug)]
struct Server {
    root: PathBuf,
    sandboxes: PathBuf,
    containers: Containers,
    home: HomeNamespaces,
    listener: UnixListener,
    clients: Vec<UnixStream>,
    watched: HashMap<String, Watched>,
    execs: HashMap<i32, Watched>,
    exec_exits: HashMap<i32, ExitStatus>,
    /// The pids of `exec_exits`, oldest first.
    exec_exit_order: std::collections::VecDeque<i32>,
    pumps: HashMap<String, LogPump>,
    /// The terminals of the containers that have one.
    terminals: HashMap<String, terminal::Terminal>,
    /// The runtime's writers of containers' stdin FIFOs.
    stdin_writers: HashMap<String, OwnedFd>,
    /// pidfds of killed PID namespace holders (of removed sandboxes, or replaced in renewed
    /// ones), reaped once they are gone (a holder ends only once the processes of its
    /// namespace are reaped, some of them by this process, so it is never waited for long).
    pid_holders: Vec<OwnedFd>,
    shutting_down: bool,
}

/// Serves requests under `root` until a Shutdown request. `ready` (when given) receives one
/// line, "ready", once the socket accepts connections, and is closed.
pub fn serve(root: &Path, ready: Option<OwnedFd>) -> Result<(), ServeRuntimeError> {
    let prepare = |source| ServeRuntimeError::Prepare {
        path: root.to_owned(),
        source,
    };
    fs::create_dir_all(root).map_err(prepare)?;
    let _ = fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ);
    let sandboxes = root.join(SANDBOXES_DIR);
    fs::create_dir_all(&sandboxes).map_err(prepare)?;
    terminal::remove_stale_sockets(root);
    let socket = root.join(SOCKET_NAME);
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(prepare)?;
    let mut server = Server {
        root: root.to_owned(),
        sandboxes,
        containers: Containers::new(root).map_err(prepare)?,
        home: HomeNamespaces::open().map_err(prepare)?,
        listener,
        clients: Vec::new(),
        watched: HashMap::new(),
        execs: HashMap::new(),
        pid_holders: Vec::new(),
        exec_exits: HashMap::new(),
        exec_exit_order: std::collections::VecDeque::new(),
        pumps: HashMap::new(),
        terminals: HashMap::new(),
        stdin_writers: HashMap::new(),
        shutting_down: false,
    };
    server.adopt();
    fs::write(root.join("runtime.pid"), std::process::id().to_string()).map_err(prepare)?;
    if let Some(ready) = ready {
        let mut ready = fs::File::from(ready);
        let _ = ready.write_all(b"ready\n");
    }
    tracing::info!(root = %root.display(), containers = server.watched.len(), "runtime process serving");
    while !server.shutting_down {
        server.turn().map_err(ServeRuntimeError::Poll)?;
    }
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(root.join("runtime.pid"));
    Ok(())
}

/// What a readable descriptor belongs to.
enum Source {
    Listener,
    Client(usize),
    Container(String),
    Exec(i32),
    Log(String, Stream),
    /// A terminal's stdin FIFO.
    Input(String),
}

impl Server {
    /// Takes over the containers a previous runtime process left: watches their processes and
    /// copies their output again.
    fn adopt(&mut self) {
        for id in self.containers.ids() {
            let Ok(status) = self.containers.status(&id) else {
                continue;
            };
            let Some(pid) = status.pid else {
                continue;
            };
            match Pid::from_raw(pid).map(|pid| pidfd_open(pid, PidfdFlags::empty())) {
                Some(Ok(pidfd)) => {
                    self.watched.insert(
                        id.clone(),
                        Watched {
                            pidfd,
                            child: false,
                        },
                    );
                }
                _ => {
                    // Gone between the status read and now: its exit was not seen.
                    if self.containers.read_meta(&id).exit.is_none() {
                        self.containers.record_exit(&id, unknown_exit());
                    }
                    continue;
                }
            }
            match self.containers.reopen_output(&id) {
                Ok(output) => self.pump(&id, output),
                Err(err) => tracing::warn!(container = %id, %err, "reopening a container's output"),
            }
        }
    }

    /// Waits for one batch of readable descriptors and handles it.
    fn turn(&mut self) -> io::Result<()> {
        let mut sources = vec![Source::Listener];
        let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
        for (index, client) in self.clients.iter().enumerate() {
            sources.push(Source::Client(index));
            fds.push(PollFd::new(client, PollFlags::IN));
        }
        for (id, watched) in &self.watched {
            sources.push(Source::Container(id.clone()));
            fds.push(PollFd::new(&watched.pidfd, PollFlags::IN));
        }
        for (pid, watched) in &self.execs {
            sources.push(Source::Exec(*pid));
            fds.push(PollFd::new(&watched.pidfd, PollFlags::IN));
        }
        for (id, pump) in &self.pumps {
            for (stream, fd) in [
                (Stream::Stdout, &pump.stdout),
                (Stream::Stderr, &pump.stderr),
            ] {
                if let Some(fd) = fd {
                    sources.push(Source::Log(id.clone(), stream));
                    fds.push(PollFd::new(fd, PollFlags::IN));
                }
            }
        }
        for (id, terminal) in &self.terminals {
            if let Some(input) = &terminal.input {
                sources.push(Source::Input(id.clone()));
                fds.push(PollFd::new(input, PollFlags::IN));
            }
        }
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let ready: Vec<Source> = fds
            .iter()
            .zip(sources)
            .filter(|(fd, _)| !fd.revents().is_empty())
            .map(|(_, source)| source)
            .collect();
        drop(fds);
        // Output first, so that a container's last lines are in its log before its exit is.
        let mut closed_clients = Vec::new();
        for source in &ready {
            if let Source::Log(id, stream) = source {
                self.copy_output(id, *stream);
            }
        }
        for source in ready {
            match source {
                Source::Listener => {
                    if let Ok((client, _)) = self.listener.accept() {
                        self.clients.push(client);
                    }
                }
                Source::Client(index) => {
                    if !self.answer(index) {
                        closed_clients.push(index);
                    }
                }
                Source::Container(id) => self.reap_container(&id),
                Source::Exec(pid) => self.reap_exec(pid),
                Source::Input(id) => {
                    if let Some(terminal) = self.terminals.get_mut(&id) {
                        terminal.forward_input(&id);
                    }
                }
                Source::Log(..) => {}
            }
        }
        for index in closed_clients.into_iter().rev() {
            self.clients.remove(index);
        }
        Ok(())
    }

    /// Reads and answers one request of client `index`; false when the client is gone.
    fn answer(&mut self, index: usize) -> bool {
        let request = match recv_frame::<Request>(&mut self.clients[index]) {
            Ok(Some(request)) => request,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(%err, "reading a request");
                return false;
            }
        };
        let (request, fds) = request;
        let started = std::time::Instant::now();
        let kind = request.kind();
        let response = self.handle(request, fds);
        restore_process_state();
        tracing::debug!(
            request = kind,
            took_us = started.elapsed().as_micros() as u64,
            "answered"
        );
        if let Err(err) = send_frame(&mut self.clients[index], &response, &[]) {
            tracing::warn!(%err, "answering a request");
            return false;
        }
        true
    }

    fn handle(&mut self, request: Request, fds: Vec<OwnedFd>) -> Response {
        // Exits that happened before this request are recorded before it is answered.
        self.reap_ready();
        let result = match request {
            Request::Ping => Ok(Response::Pong {
                pid: std::process::id() as i32,
            }),
            Request::CreateSandbox(config) => {
                sandbox::create(&self.sandboxes, &config, &self.home, &mut self.pid_holders)
                    .map(Response::Sandbox)
            }
            Request::RemoveSandbox { id } => {
                let earlier = self.pid_holders.len();
                let removed = sandbox::remove(&self.sandboxes, &id, &mut self.pid_holders);
                // Its containers were stopped and reaped before: its holder ends at once.
                self.wait_for_pid_holders(earlier);
                self.reap_pid_holders();
                removed.map(|()| Response::Done)
            }
            Request::CreateContainer(config) => {
                self.containers.create(&config).and_then(|(pid, output)| {
                    let pidfd = open_pidfd(pid).map_err(|err| {
                        format!("watch container {} (pid {pid}): {err}", config.id)
                    })?;
                    self.watched
                        .insert(config.id.clone(), Watched { pidfd, child: true });
                    self.pump(&config.id, output);
                    Ok(Response::Created { pid })
                })
            }
            Request::StartContainer { id } => self.containers.start(&id).map(|()| Response::Done),
            Request::SignalContainer { id, signal } => {
                self.containers.signal(&id, signal).map(|()| Response::Done)
            }
            Request::RemoveContainer { id } => {
                let removed = self.containers.remove(&id);
                if removed.is_ok() {
                    // A running one was SIGKILLed by the removal: reap it, or it would stay a
                    // zombie of this process.
                    if let Some(watched) = self.watched.remove(&id)
                        && watched.child
                    {
                        let _ = waitid(WaitId::PidFd(watched.pidfd.as_fd()), WaitIdOptions::EXITED);
                    }
                    self.pumps.remove(&id);
                    self.terminals.remove(&id);
                    self.stdin_writers.remove(&id);
                }
                removed.map(|()| Response::Done)
            }
            Request::CloseStdin { id } => {
                if self.stdin_writers.remove(&id).is_some() {
                    self.containers.record_stdin_closed(&id);
                }
                Ok(Response::Done)
            }
            Request::ResizeTerminal { id, width, height } => match self.terminals.get(&id) {
                Some(terminal) => terminal
                    .resize(width, height)
                    .map(|()| Response::Done)
                    .map_err(|err| format!("resize the terminal of container {id}: {err}")),
                None => Err(format!("container {id} has no terminal")),
            },
            Request::ContainerStatus { id } => self.container_status(&id).map(Response::Status),
            Request::ListContainers => Ok(Response::List(
                self.containers
                    .ids()
                    .iter()
                    .filter_map(|id| self.container_status(id).ok())
                    .collect(),
            )),
            Request::Exec(config) => self.containers.exec(&config, fds).and_then(|pid| {
                let pidfd =
                    open_pidfd(pid).map_err(|err| format!("watch exec'd process {pid}: {err}"))?;
                self.execs.insert(pid, Watched { pidfd, child: true });
                Ok(Response::ExecStarted { pid })
            }),
            Request::ExecStatus { pid } => {
                if self.execs.contains_key(&pid) {
                    Ok(Response::ExecStatus(None))
                } else {
                    match self.exec_exits.remove(&pid) {
                        Some(exit) => Ok(Response::ExecStatus(Some(exit))),
                        None => Err(format!("no exec'd process {pid}")),
                    }
                }
            }
            Request::Shutdown => {
                self.shut_down();
                Ok(Response::Done)
            }
        };
        result.unwrap_or_else(Response::Failed)
    }

    /// A container's status. A container that exited after this request's exits were recorded
    /// is reaped now, so that its exit code and OOM kill are reported rather than "unknown".
    fn container_status(&mut self, id: &str) -> Result<ContainerStatus, String> {
        let status = self.containers.status(id)?;
        if status.state == ContainerState::Exited && self.watched.contains_key(id) {
            self.reap_container(id);
            return self.containers.status(id);
        }
        Ok(status)
    }

    /// Starts copying a container's output into its log file.
    fn pump(&mut self, id: &str, output: Output) {
        if let Some(terminal) = output.terminal {
            self.terminals.insert(id.to_owned(), terminal);
        }
        if let Some(writer) = output.stdin_writer {
            self.stdin_writers.insert(id.to_owned(), writer);
        }
        let meta = self.containers.read_meta(id);
        match CriLogWriter::open(&meta.log_path, meta.log_max_size, meta.log_max_files) {
            Ok(writer) => {
                self.pumps.insert(
                    id.to_owned(),
                    LogPump {
                        writer,
                        stdout: Some(output.stdout),
                        stderr: output.stderr,
                    },
                );
            }
            Err(err) => {
                tracing::warn!(container = %id, log = %meta.log_path.display(), %err, "opening a container's log; its output is dropped");
            }
        }
    }

    /// Copies what `stream` of container `id` has ready into its log.
    fn copy_output(&mut self, id: &str, stream: Stream) {
        let Some(pump) = self.pumps.get_mut(id) else {
            return;
        };
        let slot = match stream {
            Stream::Stdout => &mut pump.stdout,
            Stream::Stderr => &mut pump.stderr,
        };
        let Some(fd) = slot else {
            return;
        };
        let mut buffer = [0u8; 64 * 1024];
        match rustix::io::read(fd.as_fd(), &mut buffer) {
            // A terminal's master reads EIO once the container's side is closed: its end.
            Ok(0) | Err(rustix::io::Errno::IO) => {
                *slot = None;
                let _ = pump.writer.finish(stream);
            }
            Ok(count) => {
                if let Err(err) = pump.writer.write(stream, &buffer[..count]) {
                    tracing::warn!(container = %id, %err, "writing a container's log");
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(err) => {
                tracing::warn!(container = %id, %err, "reading a container's output");
                *slot = None;
            }
        }
        if pump.stdout.is_none() && pump.stderr.is_none() {
            self.pumps.remove(id);
        }
    }

    /// Records the exits of every watched process that has exited.
    fn reap_ready(&mut self) {
        let exited: Vec<String> = self
            .watched
            .iter()
            .filter(|(_, watched)| has_exited(&watched.pidfd))
            .map(|(id, _)| id.clone())
            .collect();
        for id in exited {
            self.reap_container(&id);
        }
        let exited: Vec<i32> = self
            .execs
            .iter()
            .filter(|(_, watched)| has_exited(&watched.pidfd))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in exited {
            self.reap_exec(pid);
        }
        self.reap_pid_holders();
    }

    /// Waits up to [`PID_HOLDER_WAIT`] for each PID namespace holder killed since there were
    /// `earlier` (a killed holder ends as soon as the last process of its namespace is reaped).
    fn wait_for_pid_holders(&self, earlier: usize) {
        let timeout = rustix::event::Timespec {
            tv_sec: PID_HOLDER_WAIT.as_secs() as i64,
            tv_nsec: i64::from(PID_HOLDER_WAIT.subsec_nanos()),
        };
        for pidfd in self.pid_holders.iter().skip(earlier) {
            let _ = poll(&mut [PollFd::new(pidfd, PollFlags::IN)], Some(&timeout));
        }
    }

    /// Reaps the killed PID namespace holders that are gone (and forgets those that are not
    /// this process's children: their parent reaps them).
    fn reap_pid_holders(&mut self) {
        self.pid_holders.retain(|pidfd| {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            matches!(waitid(WaitId::PidFd(pidfd.as_fd()), options), Ok(None))
        });
    }

    fn reap_container(&mut self, id: &str) {
        let Some(watched) = self.watched.remove(id) else {
            return;
        };
        let mut exit = exit_of(&watched);
        if exit.signal == Some(libc::SIGKILL)
            && let Some(cgroup) = self.containers.cgroup_path(id)
        {
            exit.oom_killed = oom_kills(&cgroup) > 0;
        }
        tracing::debug!(container = %id, code = exit.exit_code, "container exited");
        self.containers.record_exit(id, exit);
    }

    fn reap_exec(&mut self, pid: i32) {
        if let Some(watched) = self.execs.remove(&pid) {
            // Exits nobody asked for (a client that went away) are forgotten, oldest first.
            if self.exec_exit_order.len() >= MAX_EXEC_EXITS
                && let Some(oldest) = self.exec_exit_order.pop_front()
            {
                self.exec_exits.remove(&oldest);
            }
            self.exec_exit_order.push_back(pid);
            self.exec_exits.insert(pid, exit_of(&watched));
        }
    }

    /// Kills and removes every container and sandbox (Shutdown).
    fn shut_down(&mut self) {
        for id in self.containers.ids() {
            if let Err(err) = self.containers.remove(&id) {
                tracing::warn!(%err, "shutting down");
            }
        }
        for id in sandbox::list(&self.sandboxes) {
            if let Err(err) = sandbox::remove(&self.sandboxes, &id, &mut self.pid_holders) {
                tracing::warn!(%err, "shutting down");
            }
        }
        self.watched.clear();
        self.pumps.clear();
        self.terminals.clear();
        self.stdin_writers.clear();
        self.shutting_down = true;
        tracing::info!(root = %self.root.display(), "runtime process shut down");
    }
}

fn open_pidfd(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("pid 0"))?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Whether the process behind `pidfd` has exited (its pidfd polls readable).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

/// Reaps the exited process and tells how it ended.
fn exit_of(watched: &Watched) -> ExitStatus {
    if !watched.child {
        return unknown_exit();
    }
    let status = waitid(WaitId::PidFd(watched.pidfd.as_fd()), WaitIdOptions::EXITED);
    let finished_at = jiff::Timestamp::now().to_string();
    match status {
        Ok(Some(status)) => {
            let signal = status.terminating_signal();
            ExitStatus {
                exit_code: status
                    .exit_status()
                    .unwrap_or_else(|| 128 + signal.unwrap_or(0)),
                signal,
                oom_killed: false,
                finished_at,
                unknown: false,
            }
        }
        _ => unknown_exit(),
    }
}

/// Undoes what libcontainer changes in the calling process: working directory, oom_score_adj,
/// dumpable flag.
fn restore_process_state() {
    let _ = std::env::set_current_dir("/");
    let _ = fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ);
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable);
}

/// Refuses ids that are not safe as one file name.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid id {id:?}: letters, digits, '_', '+', '-', '.' only"
        ))
    }
}

/// An error and its sources as one line, each message once.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = next.source();
    }
    parts.join(": ")
}
