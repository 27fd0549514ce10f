//! Running the vCPUs, each on its own thread, until the first of them or a device ends the VM;
//! then every vCPU thread is kicked out of KVM_RUN and joined.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use super::control::{ExitCounters, VcpuControl};
use super::kick::{KickError, KickTarget, install_kick_handler, kick};
use super::vcpu::Vcpu;
use crate::devices::Buses;
use crate::exit::{ResetCause, VmEvent, VmExit};
use crate::seccomp::{ThreadFilters, ThreadKind};

/// vCPU threads cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum StartVcpusError {
    /// The kick signal cannot be set up.
    #[error(transparent)]
    Kick(#[from] KickError),
    /// The main thread's seccomp filter cannot be installed.
    #[error(transparent)]
    MainFilter(#[from] crate::seccomp::SeccompError),
    /// The thread cannot be spawned.
    #[error("cannot spawn the thread of vCPU {index}")]
    Spawn {
        /// The vCPU.
        index: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How a VM run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Why the VM stopped.
    pub exit: VmExit,
    /// From `started` to vCPU 0's first KVM_RUN.
    pub first_entry: Option<Duration>,
}

/// Runs `vcpus` against `buses` until a [`VmExit`] arrives on `exits` (from a vCPU or a
/// device holding `exits_tx`), then stops and joins them all. `started` is when the VMM
/// began, for the time-to-first-entry figure.
pub fn run_vcpus(
    vcpus: Vec<Vcpu>,
    buses: Arc<Buses>,
    exits_tx: Sender<VmEvent>,
    exits: Receiver<VmEvent>,
    started: Instant,
    filters: &ThreadFilters,
    control: Arc<VcpuControl>,
) -> Result<RunOutcome, StartVcpusError> {
    install_kick_handler()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for vcpu in vcpus {
        let index = vcpu.index();
        let runner = VcpuRunner {
            vcpu,
            buses: buses.clone(),
            exits: exits_tx.clone(),
            stop: stop.clone(),
            entered: (index == 0).then(|| entered_tx.clone()),
            filters: filters.clone(),
            control: control.clone(),
        };
        match std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || runner.run())
        {
            Ok(handle) => threads.push(handle),
            Err(source) => {
                spawn_error = Some(StartVcpusError::Spawn { index, source });
                break;
            }
        }
    }
    drop(entered_tx);
    drop(exits_tx);
    // From here the main thread only waits, kicks, joins and cleans up.
    if spawn_error.is_none()
        && let Err(error) = filters.install_on_main_thread()
    {
        spawn_error = Some(StartVcpusError::MainFilter(error));
    }

    let exit = match spawn_error {
        Some(_) => None,
        // Every vCPU thread holds a sender, so this returns once one of them or a device has
        // sent; it fails only if all vCPU threads ended without a word, which they do not.
        None => loop {
            match exits.recv() {
                Ok(VmEvent::Exit(exit)) => break Some(exit),
                Ok(VmEvent::Pause { pause, done }) => {
                    control.gate.set_paused(pause);
                    if pause {
                        for thread in &threads {
                            if let Err(error) = kick(thread) {
                                tracing::warn!(%error, "vCPU thread not kicked");
                            }
                        }
                        if !control
                            .gate
                            .wait_parked(threads.len(), Duration::from_secs(5))
                        {
                            tracing::warn!("not every vCPU paused within 5 s");
                        }
                    }
                    let _ = done.send(());
                }
                Err(_) => break None,
            }
        },
    };
    stop.store(true, Ordering::SeqCst);
    control.gate.release();
    for thread in &threads {
        if let Err(error) = kick(thread) {
            tracing::warn!(%error, "vCPU thread not kicked");
        }
    }
    for thread in threads {
        if thread.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
    if let Some(error) = spawn_error {
        return Err(error);
    }
    let first_entry = entered.try_recv().ok().map(|at: Instant| at - started);
    let exit = exit.unwrap_or_else(|| VmExit::VcpuFault {
        vcpu: 0,
        reason: "all vCPU threads ended".into(),
    });
    tracing::info!(%exit, exit_code = exit.exit_code(), ?first_entry, "VM stopped");
    Ok(RunOutcome { exit, first_entry })
}

/// One vCPU thread's state.
struct VcpuRunner {
    vcpu: Vcpu,
    buses: Arc<Buses>,
    exits: Sender<VmEvent>,
    stop: Arc<AtomicBool>,
    entered: Option<Sender<Instant>>,
    filters: ThreadFilters,
    control: Arc<VcpuControl>,
}

/// What to do after handling one exit.
enum Next {
    Continue,
    Stop(VmExit),
}

impl VcpuRunner {
    fn run(mut self) {
        let index = self.vcpu.index();
        let target = match KickTarget::register(self.vcpu.fd_mut()) {
            Ok(target) => target,
            Err(error) => {
                let _ = self.exits.send(VmEvent::Exit(VmExit::VcpuFault {
                    vcpu: index,
                    reason: error.to_string(),
                }));
                return;
            }
        };
        if let Err(error) = self.filters.install(ThreadKind::Vcpu) {
            let _ = self.exits.send(VmEvent::Exit(VmExit::VcpuFault {
                vcpu: index,
                reason: error.to_string(),
            }));
            return;
        }
        if let Some(entered) = self.entered.take() {
            let _ = entered.send(Instant::now());
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.control.gate.wait_while_paused();
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            match self.run_once() {
                Next::Continue => {}
                Next::Stop(exit) => {
                    tracing::debug!(vcpu = index, %exit, "vCPU ends the VM");
                    let _ = self.exits.send(VmEvent::Exit(exit));
                    break;
                }
            }
        }
        drop(target);
    }

    fn run_once(&mut self) -> Next {
        let index = self.vcpu.index();
        let fault = |reason: String| {
            Next::Stop(VmExit::VcpuFault {
                vcpu: index,
                reason,
            })
        };
        let buses = &self.buses;
        let counters: &ExitCounters = &self.control.exits;
        let result = self.vcpu.fd_mut().run();
        ExitCounters::count(match &result {
            Ok(VcpuExit::IoIn(..)) => &counters.io_in,
            Ok(VcpuExit::IoOut(..)) => &counters.io_out,
            Ok(VcpuExit::MmioRead(..)) => &counters.mmio_read,
            Ok(VcpuExit::MmioWrite(..)) => &counters.mmio_write,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                &counters.interrupted
            }
            _ => &counters.other,
        });
        match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    tracing::trace!(port, "read of an unassigned port");
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !buses.pio.write(u64::from(port), data) {
                    tracing::trace!(port, "write to an unassigned port");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !buses.mmio.read(addr, data) {
                    tracing::trace!(addr, "read of unassigned MMIO");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !buses.mmio.write(addr, data) {
                    tracing::trace!(addr, "write to unassigned MMIO");
                }
                Next::Continue
            }
            Ok(VcpuExit::Shutdown) => Next::Stop(VmExit::Reset(ResetCause::TripleFault)),
            Ok(VcpuExit::SystemEvent(kind, data)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Next::Stop(VmExit::Reset(ResetCause::SystemEvent)),
                KVM_SYSTEM_EVENT_CRASH => fault("guest crash system event".into()),
                _ => fault(format!("system event {kind} {data:?}")),
            },
            Ok(VcpuExit::InternalError) => {
                let rip = self.vcpu.fd().get_regs().map(|r| r.rip).unwrap_or_default();
                fault(format!("KVM internal error at rip {rip:#x}"))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => fault(format!(
                "entry failed, hardware reason {reason:#x} on host CPU {cpu}"
            )),
            Ok(VcpuExit::Hlt) => fault("halted outside the in-kernel irqchip".into()),
            Ok(exit) => fault(format!("unexpected exit {exit:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.fd_mut().set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => fault(format!("KVM_RUN failed: {e}")),
        }
    }
}
