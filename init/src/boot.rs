//! Init's main line: the boot phases, then the services under the supervisor until a power
//! request, then the shutdown. An invalid or missing machine configuration leaves the node in
//! maintenance mode: the problems on the console, nothing applied, waiting to be fixed.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};

use crate::cgroups::{parse_proc_cgroup, setup_cgroups};
use crate::config_source::find_config;
use crate::credentials::{CredentialPaths, write_credentials};
use crate::environment::Environment;
use crate::machine_config::MachineConfig;
use crate::modules::load_modules;
use crate::mounts::{early_mounts, mount_all, populate_sandbox_dev};
use crate::network_setup::configure_network;
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
    drop(runtime);
    finish(environment, action)
}

/// A panic in PID 1 flushes what it can and reboots the machine (in a sandbox the process
/// simply ends, and its creator sees why).
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

async fn boot(environment: Environment) -> PowerAction {
    let mut power = PowerSignals::listen();
    let mut timeline = BootTimeline::default();
    let root = Path::new("/");
    let mounted = timeline.run("mounts", || mount_all(root, &early_mounts(environment)));
    if let Err(err) = mounted {
        return maintenance(vec![error_chain(&err)], &mut power).await;
    }
    if environment.is_sandbox()
        && let Err(err) = timeline.run("dev", || populate_sandbox_dev(root))
    {
        return maintenance(vec![error_chain(&err)], &mut power).await;
    }
    let hierarchies =
        parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    match timeline.run("cgroups", || {
        setup_cgroups(Path::new("/sys/fs/cgroup"), &hierarchies)
    }) {
        Ok(summary) => tracing::info!("{summary}"),
        Err(err) => return maintenance(vec![error_chain(&err)], &mut power).await,
    }
    match environment {
        Environment::Machine => {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            let modules = PathBuf::from("/lib/modules").join(release);
            if let Err(err) = timeline.run("modules", || load_modules(&modules)) {
                return maintenance(vec![error_chain(&err)], &mut power).await;
            }
        }
        Environment::Sandbox => timeline.skip("modules", "a sandbox runs on the host's kernel"),
    }
    // A sandbox's /proc/cmdline is the host's: not this node's.
    let cmdline = match environment {
        Environment::Machine => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        Environment::Sandbox => String::new(),
    };
    let found = match timeline.run("machine-config", || find_config(root, &cmdline)) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return maintenance(vec![
                "no machine configuration: none on the kernel command line, in /etc/baton, or on a BATON-CONFIG partition".into(),
            ], &mut power).await;
        }
        Err(err) => return maintenance(vec![error_chain(&err)], &mut power).await,
    };
    let config = match MachineConfig::parse(&found.yaml, &found.source) {
        Ok(config) => config,
        Err(err) => {
            let mut problems = vec![err.to_string()];
            problems.extend(err.problems());
            return maintenance(problems, &mut power).await;
        }
    };
    tracing::info!(
        role = config.machine.role.as_str(),
        hostname = %config.machine.hostname,
        source = %found.source,
        "machine configuration loaded"
    );
    if let Err(err) = timeline.run("hostname", || {
        nix::unistd::sethostname(&config.machine.hostname)
    }) {
        return maintenance(vec![format!("setting the hostname: {err}")], &mut power).await;
    }
    if let Err(err) = timeline.run("sysctls", || {
        apply_sysctls(Path::new("/proc/sys"), environment, &config.machine.sysctls)
    }) {
        return maintenance(vec![error_chain(&err)], &mut power).await;
    }
    match (environment, &config.machine.data_disk) {
        (Environment::Sandbox, _) => timeline.skip(
            "state",
            "the sandbox's root directory keeps /var across restarts",
        ),
        (Environment::Machine, Some(disk)) => {
            return maintenance(
                vec![format!(
                    "machine.dataDisk {disk}: formatting and mounting a data disk is not built yet"
                )],
                &mut power,
            )
            .await;
        }
        (Environment::Machine, None) => {
            let mounted = timeline.run("state", || {
                mount_all(
                    root,
                    &[crate::mounts::MountSpec {
                        target: "/var",
                        fstype: "tmpfs",
                        flags: nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                        data: "mode=0755",
                    }],
                )
            });
            if let Err(err) = mounted {
                return maintenance(vec![error_chain(&err)], &mut power).await;
            }
        }
    }
    let address = match timeline.run("network", || {
        configure_network(&config.machine.network, Path::new("/etc/resolv.conf"))
    }) {
        Ok(address) => address,
        Err(err) => return maintenance(vec![error_chain(&err)], &mut power).await,
    };
    let node_ip = address.or_else(|| {
        config
            .cluster
            .control_plane
            .iter()
            .find(|m| m.name == config.machine.hostname)
            .map(|m| m.address)
    });
    let Some(node_ip) = node_ip else {
        return maintenance(vec![
            "machine.network.interfaces: no address for the node (none configured, and the node is not in cluster.controlPlane)".into(),
        ], &mut power).await;
    };
    timeline.skip("clock", "the kernel keeps the clock (kvmclock or the RTC)");
    let credentials = match timeline.run("credentials", || {
        write_credentials(
            &config,
            Path::new(CREDENTIALS_DIR),
            Some(node_ip),
            SECURE_PORT,
        )
    }) {
        Ok(paths) => paths,
        Err(err) => return maintenance(vec![error_chain(&err)], &mut power).await,
    };
    let layout = NodeLayout {
        bin_dir: PathBuf::from(BIN_DIR),
        etcd: PathBuf::from(ETCD_PATH),
        state_dir: PathBuf::from("/var/lib"),
        credentials,
    };
    let started = std::time::Instant::now();
    let store = layout.state_dir.join(crate::node_services::IMAGE_STORE);
    let preloaded = preload_images(Path::new(PRELOADED_IMAGES), &store).await;
    timeline.record("images", started.elapsed(), &preloaded);
    match preloaded {
        Ok(names) => tracing::info!(images = ?names, "preloaded images imported"),
        Err(err) => return maintenance(vec![error_chain(&err)], &mut power).await,
    }
    run_services(&config, node_ip, &layout, &timeline, &mut power).await
}

async fn run_services(
    config: &MachineConfig,
    node_ip: std::net::Ipv4Addr,
    layout: &NodeLayout,
    timeline: &BootTimeline,
    power: &mut PowerSignals,
) -> PowerAction {
    let specs = node_services(config, node_ip, layout);
    let options = SupervisorOptions {
        reap: ReapMode::AnyChild,
        ..SupervisorOptions::default()
    };
    let (supervisor, handle) = match Supervisor::new(specs, options) {
        Ok(pair) => pair,
        Err(err) => return maintenance(vec![err.to_string()], power).await,
    };
    tracing::info!(
        ms = timeline.since_start().as_secs_f64() * 1e3,
        "boot phases done; starting services"
    );
    let supervisor = tokio::spawn(supervisor.run());
    let action = power.request().await;
    tracing::info!(?action, "shutting down: stopping services");
    handle.shutdown();
    match supervisor.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(%err, "the supervisor failed"),
        Err(err) => tracing::error!(%err, "the supervisor task failed"),
    }
    action
}

/// The power requests init listens for from its first moment: SIGTERM or SIGINT power off;
/// SIGRTMIN+5 reboots (systemd's signal for it). A request that comes while the node still
/// boots is kept (PID 1 of a PID namespace is sent only the signals it has handlers for, so
/// the handlers must be there from the start).
struct PowerSignals {
    streams: Option<(SignalStream, SignalStream, SignalStream)>,
}

impl PowerSignals {
    fn listen() -> Self {
        let streams = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::from_raw(libc::SIGRTMIN() + 5)),
        );
        match streams {
            (Ok(term), Ok(int), Ok(reboot)) => PowerSignals {
                streams: Some((term, int, reboot)),
            },
            _ => {
                tracing::error!("cannot listen for power signals");
                PowerSignals { streams: None }
            }
        }
    }

    /// Waits for the next power request.
    async fn request(&mut self) -> PowerAction {
        let Some((term, int, reboot)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => PowerAction::PowerOff,
            _ = int.recv() => PowerAction::PowerOff,
            _ = reboot.recv() => PowerAction::Reboot,
        }
    }
}

/// Maintenance mode: reports every problem on the console and waits for a power request.
async fn maintenance(problems: Vec<String>, power: &mut PowerSignals) -> PowerAction {
    tracing::error!("maintenance mode: nothing of the machine configuration is applied");
    for problem in &problems {
        tracing::error!("maintenance: {problem}");
    }
    power.request().await
}

/// The credentials' paths on a node (for tools that read them).
pub fn node_credentials() -> CredentialPaths {
    CredentialPaths::under(Path::new(CREDENTIALS_DIR))
}
