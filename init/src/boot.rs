//! Init's main line: the boot phases, then the services under the supervisor until a power
//! request, then the shutdown. An invalid or missing machine configuration leaves the node in
//! maintenance mode: the problems on the console, nothing applied, waiting to be fixed.

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::sync::mpsc;

use crate::bootstrap_network::BootstrapNetwork;
use crate::cgroups::{parse_proc_cgroup, setup_cgroups};
use crate::config_fetch::{FETCH_WAIT, fetch_config};
use crate::config_source::{find_config, initramfs_unpacking_failure};
use crate::credentials::{CredentialPaths, write_credentials};
use crate::environment::Environment;
use crate::machine_config::MachineConfig;
use crate::modules::load_modules;
use crate::mounts::{early_mounts, mount_all, populate_sandbox_dev};
use crate::network_setup::{DHCP_WAIT, configure_network};
use crate::node_api::{self, AppliedConfig, Maintenance, NodeApiServer, NodeApiTls, NodeState};
use crate::node_services::{NodeLayout, SECURE_PORT, node_services};
use baton_client::error_chain;

use crate::phases::BootTimeline;
use crate::power::{PowerAction, finish};
use crate::preload::{PRELOADED_IMAGES, preload_images};
use crate::supervisor::{ReapMode, Supervisor, SupervisorOptions};
use crate::sysctls::apply_sysctls;

/// Where the bundled etcd is in the image.
pub const ETCD_PATH: &str = "/usr/bin/etcd";
/// Where the image links each role's name to /init.
pub const BIN_DIR: &str = "/usr/bin";
/// Where the node's credentials are written.
pub const CREDENTIALS_DIR: &str = "/etc/kubernetes";

/// Runs init as PID 1 and returns its exit code (in a sandbox; on a machine it never returns).
pub fn run_init() -> u8 {
    // A parent may have left signals blocked (a sandbox's creator blocks the ones it waits
    // for); PID 1 needs SIGCHLD to reap and SIGTERM to shut down, and its services inherit
    // this mask.
    if let Err(err) = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    ) {
        eprintln!("baton init: cannot unblock signals: {err}");
    }
    let environment = Environment::detect();
    install_panic_hook(environment);
    tracing::info!(
        environment = ?environment,
        version = env!("CARGO_PKG_VERSION"),
        "baton init starting"
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start init's runtime");
            return finish(environment, PowerAction::Reboot);
        }
    };
    let action = runtime.block_on(boot(environment));
    // Not a plain drop, which would wait for a blocking phase still running (a configuration
    // fetch that a power request cut short).
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    finish(environment, action)
}

/// A panic in PID 1 flushes what it can and reboots the machine (in a sandbox the process
/// simply ends, and its creator sees why).
/// How long init's runtime waits for blocking phases still running when boot ends.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a machine with no configuration elsewhere waits for a `BATON-CONFIG` partition.
const CONFIG_PARTITION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn install_panic_hook(environment: Environment) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if environment == Environment::Machine {
            eprintln!("baton init panicked: rebooting");
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        }
    }));
}

/// Boot's working state: the timeline, the power requests, and the node API with the state it
/// reports.
struct Boot {
    environment: Environment,
    timeline: BootTimeline,
    power: PowerSignals,
    applied: mpsc::UnboundedReceiver<AppliedConfig>,
    state: Arc<NodeState>,
    api: Option<NodeApiServer>,
    /// The DHCP lease a configuration was fetched through, given back before the
    /// configuration's network is applied.
    bootstrap_lease: Arc<Mutex<Option<BootstrapNetwork>>>,
}

/// How maintenance mode ended.
enum MaintenanceEnd {
    /// A power request.
    Power(PowerAction),
    /// A corrected configuration, applied through the node API.
    Applied(Box<AppliedConfig>),
}

async fn boot(environment: Environment) -> PowerAction {
    let (state, receivers) = NodeState::new(environment, PathBuf::from("/"));
    let mut boot = Boot {
        environment,
        timeline: BootTimeline::default(),
        power: PowerSignals::listen(receivers.power),
        applied: receivers.applied,
        state,
        api: None,
        bootstrap_lease: Arc::default(),
    };
    let action = boot.run().await;
    if let Some(api) = boot.api.take() {
        api.stop().await;
    }
    action
}

impl Boot {
    async fn run(&mut self) -> PowerAction {
        let prepared = self.prepare_machine();
        if self.environment == Environment::Machine {
            // After the modules phase: Debian's kernel has the vsock core as a module.
            let power = self.state.clone();
            crate::vsock_power::listen(move |action| {
                power.request_power(action);
            });
            node_api::vsock_relay::listen(node_api::listen_address());
        }
        if let Err(problem) = prepared {
            return self.stay_in_maintenance(vec![problem]).await;
        }
        // A power request (SIGTERM, the VMM's vsock shutdown) ends a long wait for a
        // configuration from a metadata endpoint.
        let loaded = tokio::select! {
            loaded = load_config(&mut self.timeline, self.environment, self.bootstrap_lease.clone()) => loaded,
            action = self.power.request() => return action,
        };
        let (config, source) = match loaded {
            Ok(found) => found,
            Err(problems) => match self.maintenance(problems, true).await {
                MaintenanceEnd::Power(action) => return action,
                MaintenanceEnd::Applied(applied) => (applied.config, applied.source),
            },
        };
        tracing::info!(
            role = config.machine.role.as_str(),
            hostname = %config.machine.hostname,
            source = %source,
            "machine configuration loaded"
        );
        self.state.set_config(&config, &source);
        self.serve_api(Some(&config)).await;
        let (node_ip, layout) = match self.configure(&config).await {
            Ok(done) => done,
            Err(problem) => return self.stay_in_maintenance(vec![problem]).await,
        };
        self.run_services(&config, node_ip, &layout).await
    }

    /// Mounts, the sandbox's /dev, cgroups and modules: what comes before the configuration.
    fn prepare_machine(&mut self) -> Result<(), String> {
        let root = Path::new("/");
        let environment = self.environment;
        let timeline = &mut self.timeline;
        timeline
            .run("mounts", || mount_all(root, &early_mounts(environment)))
            .map_err(|err| error_chain(&err))?;
        if environment.is_sandbox() {
            timeline
                .run("dev", || populate_sandbox_dev(root))
                .map_err(|err| error_chain(&err))?;
        }
        let hierarchies =
            parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
        let summary = timeline
            .run("cgroups", || {
                setup_cgroups(Path::new("/sys/fs/cgroup"), &hierarchies)
            })
            .map_err(|err| error_chain(&err))?;
        tracing::info!("{summary}");
        match environment {
            Environment::Machine => {
                let release = nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default();
                let modules = PathBuf::from("/lib/modules").join(release);
                timeline
                    .run("modules", || load_modules(&modules))
                    .map_err(|err| error_chain(&err))?;
            }
            Environment::Sandbox => timeline.skip("modules", "a sandbox runs on the host's kernel"),
        }
        Ok(())
    }
}

/// Finds and validates the machine configuration; every problem when there is none usable. A
/// DHCP lease it was fetched through is left in `lease`.
async fn load_config(
    timeline: &mut BootTimeline,
    environment: Environment,
    lease: Arc<Mutex<Option<BootstrapNetwork>>>,
) -> Result<(MachineConfig, String), Vec<String>> {
    // A sandbox's /proc/cmdline is the host's: not this node's.
    let cmdline = match environment {
        Environment::Machine => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        Environment::Sandbox => String::new(),
    };
    // On a machine a configuration disk may still be probing when nothing else gives a
    // configuration; a sandbox has no disks of its own.
    let config_partition_wait = match environment {
        Environment::Machine => CONFIG_PARTITION_WAIT,
        Environment::Sandbox => std::time::Duration::ZERO,
    };
    // On a blocking thread: a metadata endpoint is fetched with retries.
    let found = match timeline
        .run_blocking("machine-config", move || {
            let lease = lease;
            find_config(
                Path::new("/"),
                &cmdline,
                config_partition_wait,
                |endpoint| fetch_config(endpoint, DHCP_WAIT, FETCH_WAIT, &lease),
            )
        })
        .await
    {
        Ok(Some(found)) => found,
        Ok(None) => {
            let mut problems = vec![
                "no machine configuration: none applied through the node API, on the kernel command line, in /etc/baton, or on a BATON-CONFIG partition".to_string(),
            ];
            if environment == Environment::Machine
                && let Some(failure) = initramfs_unpacking_failure(kernel_log())
            {
                problems.push(format!(
                    "the kernel did not unpack the whole initramfs ({failure}): a configuration archive appended to it is lost; too little memory for the image?"
                ));
            }
            return Err(problems);
        }
        Err(err) => return Err(vec![error_chain(&err)]),
    };
    match MachineConfig::parse(&found.yaml, &found.source) {
        Ok(config) => Ok((config, found.source)),
        Err(err) => {
            let mut problems = vec![err.to_string()];
            problems.extend(err.problems());
            Err(problems)
        }
    }
}

/// Takes the DHCP lease a configuration was fetched through (if any) off its interface.
fn give_back_bootstrap_lease(lease: &Mutex<Option<BootstrapNetwork>>) {
    let taken = lease
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(lease) = taken {
        let interface = lease.interface.clone();
        if let Err(err) = lease.tear_down() {
            tracing::warn!(%interface, "giving back the DHCP lease the configuration was fetched through: {}", error_chain(&err));
        }
    }
}

impl Boot {
    /// Serves the node API with TLS for `config` (mutual TLS against its CA), or for a node
    /// without a usable configuration; replaces the server already running.
    async fn serve_api(&mut self, config: Option<&MachineConfig>) {
        let tls = match config {
            Some(config) => NodeApiTls::for_config(config, &config_addresses(config)),
            None => NodeApiTls::maintenance(),
        };
        let tls = match tls {
            Ok(tls) => tls,
            Err(err) => {
                tracing::error!("the node API cannot serve: {}", error_chain(&err));
                return;
            }
        };
        if let Some(previous) = self.api.take() {
            previous.stop().await;
        }
        self.api = Some(NodeApiServer::start(
            self.state.clone(),
            &tls,
            node_api::listen_address(),
        ));
    }

    /// Hostname, sysctls, state, network, credentials and images: applying `config`.
    async fn configure(
        &mut self,
        config: &MachineConfig,
    ) -> Result<(std::net::Ipv4Addr, NodeLayout), String> {
        let root = Path::new("/");
        let environment = self.environment;
        let timeline = &mut self.timeline;
        timeline
            .run("hostname", || {
                nix::unistd::sethostname(&config.machine.hostname)
            })
            .map_err(|err| format!("setting the hostname: {err}"))?;
        timeline
            .run("sysctls", || {
                apply_sysctls(Path::new("/proc/sys"), environment, &config.machine.sysctls)
            })
            .map_err(|err| error_chain(&err))?;
        match (environment, &config.machine.data_disk) {
            (Environment::Sandbox, _) => timeline.skip(
                "state",
                "the sandbox's root directory keeps /var across restarts",
            ),
            (Environment::Machine, Some(disk)) => {
                let disk = PathBuf::from(disk);
                let var = Path::new("/var");
                let device = disk.clone();
                timeline
                    .run_blocking("state", move || {
                        crate::data_disk::mount_data_disk(
                            &device,
                            Path::new("/var"),
                            crate::data_disk::DEVICE_WAIT,
                        )
                    })
                    .await
                    .map_err(|err| error_chain(&err))?;
                if let Some(free) = crate::data_disk::low_space(var) {
                    tracing::warn!(
                        "machine.dataDisk {} is nearly full: {} MiB free on /var",
                        disk.display(),
                        free >> 20
                    );
                }
            }
            (Environment::Machine, None) => {
                timeline
                    .run("state", || {
                        mount_all(
                            root,
                            &[crate::mounts::MountSpec {
                                target: "/var",
                                fstype: "tmpfs",
                                flags: nix::mount::MsFlags::MS_NOSUID
                                    | nix::mount::MsFlags::MS_NODEV,
                                data: "mode=0755",
                            }],
                        )
                    })
                    .map_err(|err| error_chain(&err))?;
            }
        }
        if environment.is_sandbox() {
            timeline.skip("entropy", "the host's kernel keeps its own random pool");
        } else {
            // Not worth maintenance mode: the kernel credits the virtio RNG (and RDRAND where
            // the CPU has it) on its own.
            let seeded = timeline
                .run_blocking("entropy", || {
                    crate::entropy::seed_entropy(
                        Path::new(crate::entropy::SEED_FILE),
                        Path::new("/dev/urandom"),
                    )
                })
                .await;
            if let Ok(crate::entropy::Seeded::Mixed(bytes)) = seeded {
                tracing::info!(
                    bytes,
                    "mixed the random seed saved by the last boot into the pool"
                );
            }
        }
        give_back_bootstrap_lease(&self.bootstrap_lease);
        let network = config.machine.network.clone();
        let configured = timeline
            .run_blocking("network", move || {
                configure_network(&network, Path::new("/etc/resolv.conf"), DHCP_WAIT)
            })
            .await
            .map_err(|err| error_chain(&err))?;
        let node_ip = configured.node_ip;
        for lease in configured.leases {
            if let Err(err) = lease.keep() {
                tracing::error!(%err, "starting the thread that keeps a DHCP lease");
            }
        }
        let node_ip = node_ip
            .or_else(|| {
                config
                    .cluster
                    .control_plane
                    .iter()
                    .find(|m| m.name == config.machine.hostname)
                    .map(|m| m.address)
            })
            .ok_or_else(|| {
                "machine.network.interfaces: no address for the node (none configured, and the node is not in cluster.controlPlane)".to_string()
            })?;
        match environment {
            Environment::Sandbox => timeline.skip("clock", "a sandbox shares the host's clock"),
            Environment::Machine if config.machine.time.servers.is_empty() => timeline.skip(
                "clock",
                "no machine.time.servers: the kernel keeps the clock (kvmclock or the RTC)",
            ),
            Environment::Machine => {
                let servers = config.machine.time.servers.clone();
                let set = timeline
                    .run_blocking("clock", move || crate::time_sync::set_clock(&servers))
                    .await;
                // Not fatal: the node runs on the kernel's clock, and the thread tries again.
                if let Err(err) = set {
                    tracing::warn!("{}", error_chain(&err));
                }
                if let Err(err) = crate::time_sync::keep_clock(config.machine.time.servers.clone())
                {
                    tracing::warn!(%err, "starting the thread that keeps the clock");
                }
            }
        }
        let credentials = timeline
            .run("credentials", || {
                write_credentials(
                    config,
                    Path::new(CREDENTIALS_DIR),
                    Some(node_ip),
                    SECURE_PORT,
                )
            })
            .map_err(|err| error_chain(&err))?;
        let layout = NodeLayout {
            bin_dir: PathBuf::from(BIN_DIR),
            etcd: PathBuf::from(ETCD_PATH),
            state_dir: PathBuf::from("/var/lib"),
            credentials,
        };
        let started = std::time::Instant::now();
        let store = layout.state_dir.join(crate::node_services::IMAGE_STORE);
        let preloaded = preload_images(Path::new(PRELOADED_IMAGES), &store).await;
        self.timeline
            .record("images", started.elapsed(), &preloaded);
        let names = preloaded.map_err(|err| error_chain(&err))?;
        tracing::info!(images = ?names, "preloaded images imported");
        Ok((node_ip, layout))
    }

    async fn run_services(
        &mut self,
        config: &MachineConfig,
        node_ip: std::net::Ipv4Addr,
        layout: &NodeLayout,
    ) -> PowerAction {
        // A worker's services reach the API servers through the local endpoint.
        let balancer = if config.machine.role == crate::machine_config::Role::Worker {
            match crate::api_balancer::start(&config.cluster).await {
                Ok(task) => Some(task),
                Err(err) => {
                    let problem = format!("the local API endpoint: {}", error_chain(&err));
                    return self.stay_in_maintenance(vec![problem]).await;
                }
            }
        } else {
            None
        };
        let specs = node_services(config, node_ip, layout);
        let options = SupervisorOptions {
            reap: ReapMode::AnyChild,
            ..SupervisorOptions::default()
        };
        let (supervisor, handle) = match Supervisor::new(specs, options) {
            Ok(pair) => pair,
            Err(err) => return self.stay_in_maintenance(vec![err.to_string()]).await,
        };
        tracing::info!(
            ms = self.timeline.since_start().as_secs_f64() * 1e3,
            "boot phases done; starting services"
        );
        self.state.set_phases(self.timeline.phases());
        self.state.set_supervisor(handle.clone());
        let supervisor = tokio::spawn(supervisor.run());
        let action = self.power.request().await;
        tracing::info!(?action, "shutting down: stopping services");
        handle.shutdown();
        match supervisor.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%err, "the supervisor failed"),
            Err(err) => tracing::error!(%err, "the supervisor task failed"),
        }
        if let Some(balancer) = balancer {
            balancer.abort();
        }
        action
    }

    /// Maintenance mode after part of the configuration was applied: only a power request
    /// ends it (a configuration applied through the API is staged for the next boot).
    async fn stay_in_maintenance(&mut self, problems: Vec<String>) -> PowerAction {
        match self.maintenance(problems, false).await {
            MaintenanceEnd::Power(action) => action,
            MaintenanceEnd::Applied(_) => unreachable!("only recoverable maintenance hands over"),
        }
    }

    /// Maintenance mode: reports every problem on the console and through the node API, and
    /// waits for a power request or, when `recoverable`, a corrected configuration.
    async fn maintenance(&mut self, problems: Vec<String>, recoverable: bool) -> MaintenanceEnd {
        tracing::error!("maintenance mode: nothing of the machine configuration is applied");
        for problem in &problems {
            tracing::error!("maintenance: {problem}");
        }
        self.state.set_phases(self.timeline.phases());
        self.state.enter_maintenance(Maintenance {
            problems,
            recoverable,
        });
        if self.api.is_none() {
            self.serve_api(None).await;
        }
        loop {
            tokio::select! {
                action = self.power.request() => return MaintenanceEnd::Power(action),
                Some(applied) = self.applied.recv() => {
                    if recoverable {
                        self.state.leave_maintenance();
                        return MaintenanceEnd::Applied(Box::new(applied));
                    }
                }
            }
        }
    }
}

/// The node's addresses that its configuration names (for the node API's certificate).
fn config_addresses(config: &MachineConfig) -> Vec<std::net::Ipv4Addr> {
    let mut addresses: Vec<std::net::Ipv4Addr> = config
        .machine
        .network
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
        .collect();
    addresses.extend(
        config
            .cluster
            .control_plane
            .iter()
            .filter(|m| m.name == config.machine.hostname)
            .map(|m| m.address),
    );
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The power requests init listens for from its first moment: SIGTERM or SIGINT power off;
/// SIGRTMIN+5 reboots (systemd's signal for it); and the node API's reboot and shutdown (and,
/// on a machine with a vsock device, the VMM's: [`crate::vsock_power`]). A
/// request that comes while the node still boots is kept (PID 1 of a PID namespace is sent
/// only the signals it has handlers for, so the handlers must be there from the start).
struct PowerSignals {
    streams: Option<(SignalStream, SignalStream, SignalStream)>,
    api: mpsc::UnboundedReceiver<PowerAction>,
}

impl PowerSignals {
    fn listen(api: mpsc::UnboundedReceiver<PowerAction>) -> Self {
        let streams = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::from_raw(libc::SIGRTMIN() + 5)),
        );
        match streams {
            (Ok(term), Ok(int), Ok(reboot)) => PowerSignals {
                streams: Some((term, int, reboot)),
                api,
            },
            _ => {
                tracing::error!("cannot listen for power signals");
                PowerSignals { streams: None, api }
            }
        }
    }

    /// Waits for the next power request.
    async fn request(&mut self) -> PowerAction {
        let signals = async {
            match &mut self.streams {
                Some((term, int, reboot)) => tokio::select! {
                    _ = term.recv() => PowerAction::PowerOff,
                    _ = int.recv() => PowerAction::PowerOff,
                    _ = reboot.recv() => PowerAction::Reboot,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            action = signals => action,
            Some(action) = self.api.recv() => action,
        }
    }
}

/// The credentials' paths on a node (for tools that read them).
pub fn node_credentials() -> CredentialPaths {
    CredentialPaths::under(Path::new(CREDENTIALS_DIR))
}

/// The kernel's log records so far (none where /dev/kmsg cannot be read).
fn kernel_log() -> Vec<String> {
    let Ok(mut kmsg) = node_api::facts::open_kmsg(false) else {
        return Vec::new();
    };
    std::iter::from_fn(|| node_api::facts::read_kmsg_record(&mut kmsg)).collect()
}
