//! The service supervisor: starts services in dependency order once what they depend on is
//! ready, captures their output into per-service log rings (and the console), restarts them
//! with backoff when they exit, reaps every child (orphans too, as PID 1), and stops them in
//! reverse order on shutdown: SIGTERM, then SIGKILL after the service's stop timeout.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::log_ring::LogRing;
use crate::readiness;
use crate::service::{Backoff, OrderServicesError, RestartPolicy, ServiceSpec, start_order};

/// How often a readiness check is tried while a service is not ready yet.
const READINESS_INTERVAL: Duration = Duration::from_millis(100);
/// How long a service killed with SIGKILL may take to be reaped before the supervisor moves on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Which children the supervisor reaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReapMode {
    /// Every child, orphans included: PID 1 (or a child subreaper) does this.
    AnyChild,
    /// Only the services' own processes: for a supervisor inside a process with other children.
    OwnChildren,
}

/// How the supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// Which children to reap.
    pub reap: ReapMode,
    /// Restart backoff.
    pub backoff: Backoff,
    /// Bytes of output kept per service.
    pub log_capacity: usize,
    /// Copy every output line to stderr as `[service] line`.
    pub console: bool,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            reap: ReapMode::OwnChildren,
            backoff: Backoff::default(),
            log_capacity: 1 << 20,
            console: true,
        }
    }
}

/// Where a service is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Waiting for its dependencies.
    Waiting,
    /// Its process runs.
    Running,
    /// It exited and will be started again after a delay.
    BackingOff,
    /// It exited and stays so (its restart policy says so).
    Exited,
    /// Stopped by the supervisor.
    Stopped,
}

impl ServiceState {
    /// The name shown by the node API.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Waiting => "Waiting",
            ServiceState::Running => "Running",
            ServiceState::BackingOff => "BackingOff",
            ServiceState::Exited => "Exited",
            ServiceState::Stopped => "Stopped",
        }
    }
}

/// What the supervisor reports about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Where it is.
    pub state: ServiceState,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// Whether its readiness check passed since it last started.
    pub ready: bool,
    /// How many times it was started again.
    pub restarts: u32,
    /// How its last run ended (`exited with status 1`, `killed by signal SIGKILL`, or why it
    /// could not start).
    pub last_exit: Option<String>,
    /// How long the current run took to become ready.
    pub ready_after: Option<Duration>,
}

/// Why a service restart was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestartServiceError {
    /// No service has that name.
    #[error("no service named {0}")]
    Unknown(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

enum Command {
    Restart(String, oneshot::Sender<Result<(), RestartServiceError>>),
    Shutdown,
}

enum Event {
    Ready {
        index: usize,
        generation: u64,
    },
    RestartDue {
        index: usize,
        generation: u64,
    },
    /// A service asked to restart had its stop timeout to end after SIGTERM.
    StopTimedOut {
        index: usize,
        generation: u64,
    },
}

/// Talks to a running supervisor: status, logs, restarts and shutdown.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Vec<ServiceStatus>>,
    logs: Arc<BTreeMap<String, Arc<LogRing>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Restart(name, _) => write!(f, "Restart({name})"),
            Command::Shutdown => write!(f, "Shutdown"),
        }
    }
}

impl SupervisorHandle {
    /// Every service's status, in start order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Vec<ServiceStatus>> {
        self.status.clone()
    }

    /// The log ring of the service `name`.
    pub fn logs(&self, name: &str) -> Option<Arc<LogRing>> {
        self.logs.get(name).cloned()
    }

    /// Restarts the service `name` (stops it first when it runs).
    pub async fn restart(&self, name: &str) -> Result<(), RestartServiceError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Restart(name.to_string(), reply))
            .map_err(|_| RestartServiceError::ShuttingDown)?;
        answer
            .await
            .unwrap_or(Err(RestartServiceError::ShuttingDown))
    }

    /// Asks the supervisor to stop every service and return from [`Supervisor::run`].
    pub fn shutdown(&self) {
        // A supervisor that has already returned has nothing left to stop.
        let _ = self.commands.send(Command::Shutdown);
    }
}

struct Runtime {
    state: ServiceState,
    pid: Option<Pid>,
    started_at: Option<Instant>,
    ready_after: Option<Duration>,
    restarts: u32,
    last_delay: Option<Duration>,
    last_exit: Option<String>,
    generation: u64,
    restart_requested: bool,
    readiness: Option<JoinHandle<()>>,
}

/// Supervises a node's services; see the module documentation.
pub struct Supervisor {
    specs: Vec<ServiceSpec>,
    order: Vec<usize>,
    services: Vec<Runtime>,
    logs: Arc<BTreeMap<String, Arc<LogRing>>>,
    options: SupervisorOptions,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    status: watch::Sender<Vec<ServiceStatus>>,
    shutting_down: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.order.len())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor for `specs` (checked for unknown dependencies and cycles) and its handle.
    pub fn new(
        specs: Vec<ServiceSpec>,
        options: SupervisorOptions,
    ) -> Result<(Self, SupervisorHandle), OrderServicesError> {
        let order = start_order(&specs)?;
        let logs: BTreeMap<String, Arc<LogRing>> = specs
            .iter()
            .map(|s| (s.name.clone(), Arc::new(LogRing::new(options.log_capacity))))
            .collect();
        let logs = Arc::new(logs);
        let services = specs
            .iter()
            .map(|_| Runtime {
                state: ServiceState::Waiting,
                pid: None,
                started_at: None,
                ready_after: None,
                restarts: 0,
                last_delay: None,
                last_exit: None,
                generation: 0,
                restart_requested: false,
                readiness: None,
            })
            .collect();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (status, status_rx) = watch::channel(Vec::new());
        let supervisor = Supervisor {
            specs,
            order,
            services,
            logs: logs.clone(),
            options,
            events_tx,
            events,
            commands,
            status,
            shutting_down: false,
        };
        supervisor.publish();
        let handle = SupervisorHandle {
            commands: commands_tx,
            status: status_rx,
            logs,
        };
        Ok((supervisor, handle))
    }

    /// Runs the services until [`SupervisorHandle::shutdown`], then stops them in reverse
    /// order and returns. Must run inside a Tokio runtime with signal handling.
    pub async fn run(mut self) -> std::io::Result<()> {
        // Listen for SIGCHLD before the first child exists, so no exit is missed.
        let mut children = signal(SignalKind::child())?;
        self.start_eligible();
        loop {
            tokio::select! {
                _ = children.recv() => self.reap(),
                Some(event) = self.events.recv() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Restart(name, reply)) => {
                        let _ = reply.send(self.request_restart(&name));
                    }
                    Some(Command::Shutdown) | None => break,
                },
            }
        }
        self.stop_all(&mut children).await;
        Ok(())
    }

    fn start_eligible(&mut self) {
        if self.shutting_down {
            return;
        }
        for position in 0..self.order.len() {
            let index = self.order[position];
            if self.services[index].state != ServiceState::Waiting {
                continue;
            }
            let dependencies_ready = self.specs[index].depends_on.iter().all(|dependency| {
                self.specs
                    .iter()
                    .position(|s| &s.name == dependency)
                    .is_some_and(|d| {
                        let d = &self.services[d];
                        d.state == ServiceState::Running && d.ready_after.is_some()
                    })
            });
            if dependencies_ready {
                self.start(index);
            }
        }
        self.publish();
    }

    fn start(&mut self, index: usize) {
        let spec = &self.specs[index];
        let mut command = std::process::Command::new(&spec.command);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let runtime = &mut self.services[index];
        runtime.generation += 1;
        runtime.ready_after = None;
        match command.spawn() {
            Ok(mut child) => {
                let pid = Pid::from_raw(child.id() as i32);
                tracing::info!(service = %spec.name, pid = pid.as_raw(), "service started");
                let ring = self.logs[&spec.name].clone();
                for stream in [
                    child.stdout.take().map(OwnedFd::from),
                    child.stderr.take().map(OwnedFd::from),
                ]
                .into_iter()
                .flatten()
                {
                    pump_output(&spec.name, stream, ring.clone(), self.options.console);
                }
                // The supervisor reaps by pid; the std handle is not waited on.
                drop(child);
                runtime.state = ServiceState::Running;
                runtime.pid = Some(pid);
                runtime.started_at = Some(Instant::now());
                let readiness = spec.readiness.clone();
                let events = self.events_tx.clone();
                let generation = runtime.generation;
                runtime.readiness = Some(tokio::spawn(async move {
                    while !readiness::check(&readiness).await {
                        tokio::time::sleep(READINESS_INTERVAL).await;
                    }
                    let _ = events.send(Event::Ready { index, generation });
                }));
            }
            Err(err) => {
                let reason = format!("could not start {}: {err}", spec.command.display());
                tracing::error!(service = %spec.name, "{reason}");
                self.logs[&spec.name].push(reason.clone());
                runtime.started_at = Some(Instant::now());
                self.after_exit(index, reason, true);
            }
        }
    }

    fn reap(&mut self) {
        match self.options.reap {
            ReapMode::AnyChild => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Err(Errno::EINTR) => continue,
                    Err(err) => {
                        tracing::warn!(%err, "waitpid failed");
                        break;
                    }
                    Ok(status) => self.on_wait_status(status),
                }
            },
            ReapMode::OwnChildren => {
                let pids: Vec<Pid> = self.services.iter().filter_map(|s| s.pid).collect();
                for pid in pids {
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => {}
                        Ok(status) => self.on_wait_status(status),
                        Err(err) => tracing::warn!(%err, pid = pid.as_raw(), "waitpid failed"),
                    }
                }
            }
        }
        self.start_eligible();
    }

    fn on_wait_status(&mut self, status: WaitStatus) {
        let (pid, how, failed) = match status {
            WaitStatus::Exited(pid, code) => (pid, format!("exited with status {code}"), code != 0),
            WaitStatus::Signaled(pid, signal, _) => {
                (pid, format!("killed by signal {}", signal.as_str()), true)
            }
            // Stops and continues are not exits.
            _ => return,
        };
        let Some(index) = self.services.iter().position(|s| s.pid == Some(pid)) else {
            tracing::debug!(pid = pid.as_raw(), "reaped an orphan");
            return;
        };
        let runtime = &mut self.services[index];
        runtime.pid = None;
        if let Some(task) = runtime.readiness.take() {
            task.abort();
        }
        let name = &self.specs[index].name;
        if self.shutting_down {
            tracing::info!(service = %name, "service stopped: {how}");
            runtime.state = ServiceState::Stopped;
            runtime.last_exit = Some(how);
            return;
        }
        if runtime.restart_requested {
            runtime.restart_requested = false;
            runtime.restarts += 1;
            runtime.last_exit = Some(how);
            tracing::info!(service = %name, "restarting service on request");
            self.start(index);
            return;
        }
        tracing::warn!(service = %name, "service {how}");
        self.after_exit(index, how, failed);
    }

    /// Applies the restart policy to service `index`, which just ended (`how`).
    fn after_exit(&mut self, index: usize, how: String, failed: bool) {
        let spec = &self.specs[index];
        let runtime = &mut self.services[index];
        runtime.last_exit = Some(how);
        runtime.pid = None;
        let restart = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            runtime.state = ServiceState::Exited;
            return;
        }
        let ran = runtime.started_at.map(|t| t.elapsed()).unwrap_or_default();
        let delay = self.options.backoff.next(runtime.last_delay, ran);
        runtime.last_delay = Some(delay);
        runtime.state = ServiceState::BackingOff;
        runtime.generation += 1;
        let generation = runtime.generation;
        tracing::info!(service = %spec.name, delay_ms = delay.as_millis() as u64, "service restarts after backoff");
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { index, generation });
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready { index, generation } => {
                let runtime = &mut self.services[index];
                if runtime.generation == generation && runtime.state == ServiceState::Running {
                    let after = runtime.started_at.map(|t| t.elapsed()).unwrap_or_default();
                    runtime.ready_after = Some(after);
                    tracing::info!(
                        service = %self.specs[index].name,
                        ready_after_ms = after.as_millis() as u64,
                        "service ready"
                    );
                }
            }
            Event::StopTimedOut { index, generation } => {
                let runtime = &self.services[index];
                if runtime.generation == generation
                    && runtime.restart_requested
                    && let Some(pid) = runtime.pid
                {
                    let name = &self.specs[index].name;
                    tracing::warn!(service = %name, "service did not stop for its restart: SIGKILL");
                    signal_group(name, pid, Signal::SIGKILL);
                }
            }
            Event::RestartDue { index, generation } => {
                let runtime = &mut self.services[index];
                if runtime.generation == generation
                    && runtime.state == ServiceState::BackingOff
                    && !self.shutting_down
                {
                    runtime.restarts += 1;
                    self.start(index);
                }
            }
        }
        self.start_eligible();
    }

    fn request_restart(&mut self, name: &str) -> Result<(), RestartServiceError> {
        if self.shutting_down {
            return Err(RestartServiceError::ShuttingDown);
        }
        let index = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| RestartServiceError::Unknown(name.to_string()))?;
        let runtime = &mut self.services[index];
        match (runtime.state, runtime.pid) {
            (ServiceState::Running, Some(pid)) => {
                runtime.restart_requested = true;
                signal_group(&self.specs[index].name, pid, Signal::SIGTERM);
                let (events, generation) = (self.events_tx.clone(), runtime.generation);
                let timeout = self.specs[index].stop_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = events.send(Event::StopTimedOut { index, generation });
                });
            }
            // A service still waiting for its dependencies starts when they are ready.
            (ServiceState::Waiting, _) => {}
            _ => {
                runtime.restarts += 1;
                runtime.last_delay = None;
                self.start(index);
            }
        }
        self.publish();
        Ok(())
    }

    /// Stops every running service, dependents before what they depend on.
    async fn stop_all(&mut self, children: &mut SignalStream) {
        self.shutting_down = true;
        for position in (0..self.order.len()).rev() {
            let index = self.order[position];
            let Some(pid) = self.services[index].pid else {
                if self.services[index].state != ServiceState::Exited {
                    self.services[index].state = ServiceState::Stopped;
                }
                continue;
            };
            let spec = &self.specs[index];
            let (name, timeout) = (spec.name.clone(), spec.stop_timeout);
            tracing::info!(service = %name, "stopping service");
            signal_group(&name, pid, Signal::SIGTERM);
            if !self.wait_gone(index, timeout, children).await {
                tracing::warn!(service = %name, "service did not stop in {timeout:?}: SIGKILL");
                signal_group(&name, pid, Signal::SIGKILL);
                self.wait_gone(index, KILL_WAIT, children).await;
            }
            self.publish();
        }
        self.publish();
    }

    async fn wait_gone(
        &mut self,
        index: usize,
        timeout: Duration,
        children: &mut SignalStream,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.reap();
            if self.services[index].pid.is_none() {
                return true;
            }
            tokio::select! {
                _ = children.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    self.reap();
                    return self.services[index].pid.is_none();
                }
            }
        }
    }

    fn publish(&self) {
        let statuses = self
            .order
            .iter()
            .map(|&index| {
                let runtime = &self.services[index];
                ServiceStatus {
                    name: self.specs[index].name.clone(),
                    state: runtime.state,
                    pid: runtime.pid.map(|p| p.as_raw() as u32),
                    ready: runtime.ready_after.is_some() && runtime.state == ServiceState::Running,
                    restarts: runtime.restarts,
                    last_exit: runtime.last_exit.clone(),
                    ready_after: runtime.ready_after,
                }
            })
            .collect();
        self.status.send_replace(statuses);
    }
}

/// Sends `signal` to the process group the service leads (it and the children it did not move).
fn signal_group(name: &str, pid: Pid, signal: Signal) {
    if let Err(err) = killpg(pid, signal) {
        tracing::debug!(service = %name, %err, "signalling the service's process group");
    }
}

/// Copies each line of `stream` into `ring` (and to stderr when `console`).
fn pump_output(name: &str, stream: OwnedFd, ring: Arc<LogRing>, console: bool) {
    let receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(stream) {
        Ok(receiver) => receiver,
        Err(err) => {
            tracing::warn!(service = %name, %err, "cannot read the service's output");
            return;
        }
    };
    let name = name.to_string();
    tokio::spawn(async move {
        let mut reader = BufReader::new(receiver);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if console {
                        eprintln!("[{name}] {text}");
                    }
                    ring.push(text);
                }
            }
        }
    });
}
