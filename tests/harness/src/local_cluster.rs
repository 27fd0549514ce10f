//! A cluster that a test makes with `baton cluster create`: its own data directory
//! (BATON_HOME) and kubeconfig, the `baton` and `kubectl` commands pointed at them, and a
//! `cluster destroy` on drop (also when the test fails).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test's cluster; see the module documentation.
#[derive(Debug)]
pub struct LocalCluster {
    /// The cluster's name.
    pub name: String,
    /// Its data directory.
    pub home: tempfile::TempDir,
    /// The kubeconfig its context is merged into.
    pub kubeconfig: PathBuf,
    /// Set once `cluster destroy` succeeded: nothing is left to remove on drop.
    pub destroyed: bool,
    baton: PathBuf,
}

impl LocalCluster {
    /// A cluster named `name` to be made by the `baton` binary at `baton` (nothing is made yet).
    pub fn new(baton: &Path, name: &str) -> Self {
        let home = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = home.path().join("kubeconfig");
        LocalCluster {
            name: name.to_string(),
            home,
            kubeconfig,
            destroyed: false,
            baton: baton.to_path_buf(),
        }
    }

    /// Runs `baton ARGS` with the cluster's data directory.
    pub fn baton(&self, args: &[&str]) -> Output {
        Command::new(&self.baton)
            .args(args)
            .env("BATON_HOME", self.home.path())
            .output()
            .expect("run baton")
    }

    /// Runs `baton cluster destroy NAME`, panics with its output unless it succeeded, and
    /// marks the cluster destroyed (the drop then leaves it alone).
    pub fn destroy(&mut self) {
        let out = self.baton(&["cluster", "destroy", &self.name]);
        assert!(
            out.status.success(),
            "baton cluster destroy {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        self.destroyed = true;
    }

    /// Runs `baton cluster create --name NAME --provider PROVIDER --kubeconfig KUBECONFIG
    /// FLAGS` (the test's cluster, its context merged into the test's own kubeconfig).
    pub fn create(&self, provider: &str, flags: &[&str]) -> Output {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut args = vec![
            "cluster",
            "create",
            "--name",
            self.name.as_str(),
            "--provider",
            provider,
            "--kubeconfig",
            kubeconfig.as_str(),
        ];
        args.extend_from_slice(flags);
        self.baton(&args)
    }

    /// Runs `kubectl --kubeconfig KUBECONFIG ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs `baton node --cluster NAME --node NODE ARGS`: (success, stdout, stderr).
    pub fn node_api(&self, node: &str, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["node", "--cluster", self.name.as_str(), "--node", node];
        all.extend_from_slice(args);
        let out = self.baton(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A node's directory (its console.log, its machine configuration).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.home
            .path()
            .join("clusters")
            .join(&self.name)
            .join("nodes")
            .join(node)
    }

    /// The cluster's state file (`cluster.json`: its nodes, their processes, cgroups and
    /// namespaces, the forwarder), as `baton cluster` last wrote it.
    pub fn state(&self) -> serde_json::Value {
        let path = self
            .home
            .path()
            .join("clusters")
            .join(&self.name)
            .join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    /// The last `lines` lines of each of `nodes`' consoles, for failure messages.
    pub fn console_tails(&self, nodes: &[&str], lines: usize) -> String {
        let mut out = String::new();
        for node in nodes {
            let text = std::fs::read_to_string(self.node_dir(node).join("console.log"))
                .unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- console of {node} (last lines)\n"));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.destroyed {
            let out = self.baton(&["cluster", "destroy", &self.name]);
            eprintln!(
                "cleanup: baton cluster destroy {}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Checks a `baton node services` table: each of `services` is Running and ready. The error
/// names the first that is not, with the table.
pub fn services_running_and_ready(table: &str, services: &[&str]) -> Result<(), String> {
    for service in services {
        let ok = table.lines().any(|l| {
            l.split_whitespace()
                .take(3)
                .eq([*service, "Running", "true"])
        });
        if !ok {
            return Err(format!("{service} is not running and ready:\n{table}"));
        }
    }
    Ok(())
}

/// Every service of a control-plane node, in start order.
pub const CONTROL_PLANE_SERVICES: &[&str] = &[
    "etcd",
    "apiserver",
    "scheduler",
    "controller-manager",
    "kubelet",
    "proxy",
    "dns",
];
