//! The API clients of a control plane as real processes: `baton scheduler`,
//! `baton controller-manager` and `baton sim-nodes`, each with its own log, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use baton_network::NetNs;

use crate::{ApiServer, Binary, Etcd, TempDir, die_with_parent, in_netns, kill, wait_until};

/// One `baton <role>` process talking to an API server through its admin kubeconfig.
#[derive(Debug)]
pub struct Component {
    child: Option<Child>,
    binary: Binary,
    role: String,
    args: Vec<String>,
    log: PathBuf,
    /// The network namespace it runs in (the spawning thread's when `None`).
    netns: Option<Arc<NetNs>>,
}

impl Component {
    /// Starts `baton <role> --kubeconfig <admin> <args...>`, logging to `<dir>/<label>.log`.
    pub fn start(
        binary: &Binary,
        server: &ApiServer,
        dir: &TempDir,
        label: &str,
        role: &str,
        args: &[&str],
    ) -> Result<Self> {
        Self::start_in(None, binary, server, dir, label, role, args)
    }

    /// As [`Component::start`], in the network namespace `netns` when given.
    pub fn start_in(
        netns: Option<Arc<NetNs>>,
        binary: &Binary,
        server: &ApiServer,
        dir: &TempDir,
        label: &str,
        role: &str,
        args: &[&str],
    ) -> Result<Self> {
        let mut all = vec![format!("--kubeconfig={}", server.kubeconfig().display())];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut component = Component {
            child: None,
            binary: binary.clone(),
            role: role.to_string(),
            args: all,
            log: dir.path().join(format!("{label}.log")),
            netns,
        };
        component.launch()?;
        Ok(component)
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.binary.0);
        if let Some(netns) = &self.netns {
            in_netns(&mut command, netns);
        }
        let child = die_with_parent(&mut command)
            .arg(&self.role)
            .args(&self.args)
            // BATON_TEST_LOG sets the components' log filter for a closer look.
            .env(
                "BATON_LOG",
                std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting baton {}", self.role))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it (as a crash would: no clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd, the API server, the scheduler, the controller manager and simulated nodes: a
/// whole control plane with nodes that exist in name only.
#[derive(Debug)]
pub struct ControlPlane {
    // Drop order: clients first, then the API server, then etcd.
    pub sim_nodes: Vec<Component>,
    pub scheduler: Component,
    pub controller_manager: Component,
    pub apiserver: ApiServer,
    pub etcd: Etcd,
    pub dir: TempDir,
    binary: Binary,
}

impl ControlPlane {
    /// Starts everything, with `nodes` simulated nodes named `sim-node-0...`, and waits until
    /// they are registered. `controller_args` are extra controller-manager flags.
    pub async fn start(binary: &Binary, nodes: usize, controller_args: &[&str]) -> Result<Self> {
        let etcd = Etcd::start().await?;
        let apiserver = ApiServer::start(binary, &etcd.url(), &[]).await?;
        let dir = TempDir::new("control-plane")?;
        let scheduler = Component::start(binary, &apiserver, &dir, "scheduler", "scheduler", &[])?;
        let mut cm_args = vec!["--node-monitor-period=1s"];
        cm_args.extend_from_slice(controller_args);
        let controller_manager = Component::start(
            binary,
            &apiserver,
            &dir,
            "controller-manager",
            "controller-manager",
            &cm_args,
        )?;
        let mut plane = ControlPlane {
            sim_nodes: Vec::new(),
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            dir,
            binary: binary.clone(),
        };
        if nodes > 0 {
            plane
                .add_sim_nodes("sim-nodes", nodes, "sim-node-", &[])
                .await?;
        }
        Ok(plane)
    }

    /// Starts another `baton sim-nodes` process with `count` nodes named `<prefix>N` and waits
    /// until all of them are Ready.
    pub async fn add_sim_nodes(
        &mut self,
        label: &str,
        count: usize,
        prefix: &str,
        extra: &[&str],
    ) -> Result<()> {
        let count_arg = format!("--count={count}");
        let prefix_arg = format!("--name-prefix={prefix}");
        let mut args = vec![count_arg.as_str(), prefix_arg.as_str()];
        args.extend_from_slice(extra);
        let component = Component::start(
            &self.binary,
            &self.apiserver,
            &self.dir,
            label,
            "sim-nodes",
            &args,
        )?;
        self.sim_nodes.push(component);
        let client = self.apiserver.client().await?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        let prefix = prefix.to_string();
        wait_until("simulated nodes Ready", Duration::from_secs(60), || {
            let nodes = nodes.clone();
            let prefix = prefix.clone();
            async move {
                let list = nodes.list(&Default::default()).await.ok()?;
                let ready = list
                    .items
                    .iter()
                    .filter(|n| {
                        n.metadata
                            .name
                            .as_deref()
                            .is_some_and(|name| name.starts_with(&prefix))
                    })
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                (ready >= count).then_some(())
            }
        })
        .await
    }

    /// Every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, log) in [
            ("scheduler", self.scheduler.log()),
            ("controller-manager", self.controller_manager.log()),
        ]
        .into_iter()
        .chain(self.sim_nodes.iter().map(|s| ("sim-nodes", s.log())))
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Runs kubectl against the plane's API server and requires success (the failure message
/// carries the components' logs); returns standard output.
pub fn kubectl_ok(plane: &ControlPlane, kubectl: &std::path::Path, args: &[&str]) -> String {
    let out = plane.apiserver.kubectl(kubectl, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        plane.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply -f -` of `manifest`, required to succeed.
pub fn kubectl_apply(plane: &ControlPlane, kubectl: &std::path::Path, manifest: &str) {
    let out = plane
        .apiserver
        .kubectl_with_input(kubectl, &["apply", "-f", "-"], Some(manifest));
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
