//! The VMM's API socket (`--api-sock PATH`): a Unix socket taking one request per
//! connection, a line in and a JSON line out.
//!
//! | request | what it does |
//! |---|---|
//! | `status` | state (running or paused), vCPUs, memory, uptime, the virtio devices |
//! | `pause` / `resume` | parks every vCPU between two KVM_RUNs (kicked out of KVM_RUN), or lets them go |
//! | `metrics` | vCPU exits by reason; each device's counters |
//! | `shutdown [SECONDS]` | asks the guest to power off, then stops the VM (exit code 5) if it has not ended after SECONDS (default 10) |
//!
//! `shutdown` asks the guest through the vsock device when there is one, without ACPI: it
//! connects to guest port [`SHUTDOWN_PORT`] and sends `shutdown\n`. A guest without a
//! vsock device, or not listening there, is stopped when the time is up.
//!
//! `baton vmm api SOCKET REQUEST` sends a request and prints the answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::MmioTransport;
use crate::exit::{VmEvent, VmExit};
use crate::seccomp::{ThreadFilters, ThreadKind, spawn_filtered};
use crate::stoppable_thread::StoppableThread;
use crate::unix_socket::BoundSocket;
use crate::vstate::control::VcpuControl;

/// The guest vsock port `shutdown` asks on.
pub const SHUTDOWN_PORT: u32 = 1024;
/// How long `shutdown` waits for the guest by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request line.
const MAX_REQUEST: usize = 256;

const LISTENER: u64 = 0;
const STOP: u64 = 1;

/// A virtio device as the API shows it.
#[derive(Debug, Clone)]
pub struct ApiDevice {
    /// `virtio-blk`, `virtio-net` ...
    pub kind: &'static str,
    /// Its registers' address.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
    /// The device, for its counters.
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What the API serves.
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory.
    pub memory_mib: u64,
    /// When the VMM started.
    pub started: Instant,
    /// The devices.
    pub devices: Vec<ApiDevice>,
    /// The pause gate and exit counters.
    pub control: Arc<VcpuControl>,
    /// The run loop's events (pause, resume, stop).
    pub events: Sender<VmEvent>,
    /// The vsock device's socket, to ask the guest to shut down.
    pub vsock_socket: Option<PathBuf>,
}

/// The API thread; dropping it stops the thread and removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    _thread: StoppableThread,
    _socket: BoundSocket,
}

impl ApiServer {
    /// Serves `context` on `socket`.
    pub fn spawn(
        socket: BoundSocket,
        context: ApiContext,
        filters: &ThreadFilters,
    ) -> std::io::Result<Self> {
        let listener = socket.listener().try_clone()?;
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let mut server = Server {
            context,
            deadline: None,
        };
        let thread = spawn_filtered("api".into(), filters, ThreadKind::Api, move || {
            let mut events = [EpollEvent::default(); 2];
            loop {
                let timeout = server.deadline.map_or(-1, |deadline| {
                    deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                        .min(i32::MAX as u128) as i32
                });
                let Some(ready) = crate::stoppable_thread::wait_events(
                    &epoll,
                    timeout,
                    &mut events,
                    "the VMM API",
                ) else {
                    return;
                };
                if server.deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!("the guest did not shut down in time: stopping the VM");
                    server.deadline = None;
                    let _ = server.context.events.send(VmEvent::Exit(VmExit::Stopped));
                }
                for event in &events[..ready] {
                    if event.data() == STOP {
                        return;
                    }
                    while let Ok((stream, _)) = listener.accept() {
                        server.serve(stream);
                    }
                }
            }
        })?;
        Ok(Self {
            _thread: StoppableThread::new("api", stop, thread),
            _socket: socket,
        })
    }
}

struct Server {
    context: ApiContext,
    /// When a requested shutdown turns into a stop.
    deadline: Option<Instant>,
}

impl Server {
    fn serve(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err()
            || stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err()
        {
            return;
        }
        let mut line = String::new();
        let mut reader = BufReader::new(&stream).take(MAX_REQUEST as u64);
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let answer = self.answer(line.trim());
        let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
    }

    fn answer(&mut self, request: &str) -> Value {
        let mut words = request.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => self.status(),
            (Some("pause"), None, _) => self.pause(true),
            (Some("resume"), None, _) => self.pause(false),
            (Some("metrics"), None, _) => self.metrics(),
            (Some("shutdown"), seconds, None) => match seconds.map(str::parse::<f64>) {
                None => self.shutdown(DEFAULT_SHUTDOWN_TIMEOUT),
                Some(Ok(s)) if s.is_finite() && (0.0..=3600.0).contains(&s) => {
                    self.shutdown(Duration::from_secs_f64(s))
                }
                Some(_) => json!({"error": "shutdown SECONDS: a number from 0 to 3600"}),
            },
            _ => json!({
                "error": format!("unknown request {request:?}: expected status, pause, resume, metrics or shutdown [SECONDS]")
            }),
        }
    }

    fn state(&self) -> &'static str {
        if self.context.control.gate.is_paused() {
            "paused"
        } else {
            "running"
        }
    }

    fn status(&self) -> Value {
        let devices: Vec<Value> = self
            .context
            .devices
            .iter()
            .map(|d| json!({"type": d.kind, "address": format!("{:#x}", d.base), "irq": d.irq}))
            .collect();
        json!({
            "state": self.state(),
            "cpus": self.context.cpus,
            "memory_mib": self.context.memory_mib,
            "uptime_ms": self.context.started.elapsed().as_millis() as u64,
            "pid": std::process::id(),
            "devices": devices,
            "shutdown_requested": self.deadline.is_some(),
        })
    }

    fn pause(&self, pause: bool) -> Value {
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        if self
            .context
            .events
            .send(VmEvent::Pause {
                pause,
                done: done_tx,
            })
            .is_err()
            || done.recv_timeout(Duration::from_secs(10)).is_err()
        {
            return json!({"error": "the VM is stopping"});
        }
        json!({"state": self.state()})
    }

    fn metrics(&self) -> Value {
        let exits: serde_json::Map<String, Value> = self
            .context
            .control
            .exits
            .snapshot()
            .into_iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect();
        let devices: Vec<Value> = self
            .context
            .devices
            .iter()
            .map(|d| {
                let mut entry = serde_json::Map::new();
                entry.insert("type".into(), json!(d.kind));
                entry.insert("address".into(), json!(format!("{:#x}", d.base)));
                let counters = d
                    .transport
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .metrics();
                for (name, value) in counters {
                    entry.insert(name.into(), json!(value));
                }
                Value::Object(entry)
            })
            .collect();
        json!({"exits": exits, "devices": devices})
    }

    fn shutdown(&mut self, timeout: Duration) -> Value {
        let guest_asked = self
            .context
            .vsock_socket
            .as_deref()
            .is_some_and(ask_guest_to_shut_down);
        self.deadline = Some(Instant::now() + timeout);
        json!({
            "shutdown": "requested",
            "guest_asked": guest_asked,
            "stop_after_ms": timeout.as_millis() as u64,
        })
    }
}

/// Asks the guest over vsock: `CONNECT SHUTDOWN_PORT`, then `shutdown`; true if the guest
/// accepted the connection.
fn ask_guest_to_shut_down(vsock_socket: &Path) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut stream = UnixStream::connect(vsock_socket)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.write_all(format!("CONNECT {SHUTDOWN_PORT}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        if !line.starts_with("OK ") {
            return Ok(false);
        }
        stream.write_all(b"shutdown\n")?;
        Ok(true)
    };
    ask().unwrap_or(false)
}

/// Sends `request` to the API at `socket` and returns the answer line.
pub fn request(socket: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}
