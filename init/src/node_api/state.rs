//! What the node API reports and acts on. Boot fills it in as the node comes up (phases, the
//! configuration, maintenance problems, the supervisor); the API's power and apply requests go
//! back to boot through channels.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::environment::Environment;
use crate::machine_config::MachineConfig;
use crate::phases::PhaseRecord;
use crate::power::PowerAction;
use crate::supervisor::SupervisorHandle;

/// Why the node is in maintenance mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maintenance {
    /// Each problem, naming its field or phase.
    pub problems: Vec<String>,
    /// Nothing of the configuration was applied yet, so a corrected one applied through the
    /// API lets the boot go on; otherwise it is staged for the next boot.
    pub recoverable: bool,
}

/// A configuration applied through the API to a node in recoverable maintenance.
#[derive(Clone, Debug)]
pub struct AppliedConfig {
    /// The validated configuration.
    pub config: MachineConfig,
    /// Where it was kept.
    pub source: String,
}

/// The node's state as the API sees it.
#[derive(Debug)]
pub struct NodeState {
    /// Where init runs.
    pub environment: Environment,
    /// The root under which a configuration is staged (`/` on a node).
    pub root: PathBuf,
    started: Instant,
    inner: Mutex<Inner>,
    power: mpsc::UnboundedSender<PowerAction>,
    applied: mpsc::UnboundedSender<AppliedConfig>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) phases: Vec<PhaseRecord>,
    pub(super) config: Option<MachineConfig>,
    pub(super) config_source: String,
    pub(super) maintenance: Option<Maintenance>,
    pub(super) supervisor: Option<SupervisorHandle>,
    pub(super) staged: bool,
}

/// Boot's ends of the API's requests.
#[derive(Debug)]
pub struct NodeStateReceivers {
    /// Reboot and shutdown requests.
    pub power: mpsc::UnboundedReceiver<PowerAction>,
    /// Configurations applied to a node in recoverable maintenance.
    pub applied: mpsc::UnboundedReceiver<AppliedConfig>,
}

impl NodeState {
    /// A fresh state for a node booting in `environment`, staging configurations under `root`.
    pub fn new(environment: Environment, root: PathBuf) -> (Arc<Self>, NodeStateReceivers) {
        let (power, power_rx) = mpsc::unbounded_channel();
        let (applied, applied_rx) = mpsc::unbounded_channel();
        let state = NodeState {
            environment,
            root,
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
            power,
            applied,
        };
        (
            Arc::new(state),
            NodeStateReceivers {
                power: power_rx,
                applied: applied_rx,
            },
        )
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("node state lock")
    }

    /// Time since init started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The boot phases so far.
    pub fn set_phases(&self, phases: &[PhaseRecord]) {
        self.lock().phases = phases.to_vec();
    }

    /// The configuration in use and where it came from.
    pub fn set_config(&self, config: &MachineConfig, source: &str) {
        let mut inner = self.lock();
        inner.config = Some(config.clone());
        inner.config_source = source.to_string();
    }

    /// The node is in maintenance mode.
    pub fn enter_maintenance(&self, maintenance: Maintenance) {
        self.lock().maintenance = Some(maintenance);
    }

    /// The node left maintenance mode (a corrected configuration was applied).
    pub fn leave_maintenance(&self) {
        self.lock().maintenance = None;
    }

    /// The services' supervisor, once they run.
    pub fn set_supervisor(&self, supervisor: SupervisorHandle) {
        self.lock().supervisor = Some(supervisor);
    }

    /// Hands a power request to boot (the node API's, or one over vsock); false once boot no
    /// longer takes them.
    pub fn request_power(&self, action: PowerAction) -> bool {
        self.power.send(action).is_ok()
    }

    pub(super) fn hand_over(&self, applied: AppliedConfig) -> bool {
        self.applied.send(applied).is_ok()
    }
}
