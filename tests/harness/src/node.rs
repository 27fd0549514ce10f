//! A real `baton kubelet` on this machine as a test node: in a network namespace of its own on
//! a [`Lab`](crate::Lab)'s network, its state, logs, images and runtime under a temporary
//! directory, its pods' cgroups under a cgroup of its own. Dropping it kills
//! the kubelet, every container and sandbox (through the runtime process's shutdown), unmounts
//! what it mounted and removes its cgroups and files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::{ApiServer, Binary, Component, LabNode, TempDir, wait_until};

/// A kubelet node and everything it made.
#[derive(Debug)]
pub struct KubeletNode {
    /// The node's name.
    pub name: String,
    /// Its address on the lab network (its InternalIP).
    pub ip: std::net::Ipv4Addr,
    /// Its network namespace.
    pub netns: std::sync::Arc<baton_network::NetNs>,
    kubelet: Option<Component>,
    /// What runs beside the kubelet (`proxy`, `dns`), by role.
    addons: Vec<(String, Component)>,
    binary: Binary,
    dir: TempDir,
    cgroup_root: String,
}

impl KubeletNode {
    /// Starts a kubelet named `name` in the lab node `host` against `server` and waits until
    /// its Node is Ready (which takes a pod CIDR: from a controller manager, or `--pod-cidr`
    /// in `extra`).
    pub async fn start(
        binary: &Binary,
        server: &ApiServer,
        host: &LabNode,
        name: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = TempDir::new("kubelet")?;
        let cgroup_root = format!("/baton-test-{}-{name}", std::process::id());
        let path = |leaf: &str| dir.path().join(leaf).display().to_string();
        // The runtime's root on a tmpfs of its own, as under a node's /run.
        let runtime_root = dir.path().join("runtime");
        std::fs::create_dir_all(&runtime_root)?;
        nix::mount::mount(
            Some("tmpfs"),
            &runtime_root,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700,size=256m"),
        )
        .with_context(|| format!("mounting a tmpfs on {}", runtime_root.display()))?;
        let mut args = vec![
            format!("--hostname-override={name}"),
            format!("--node-ip={}", host.ip),
            format!("--root-dir={}", path("root")),
            format!("--pod-logs-dir={}", path("logs")),
            format!("--runtime-root={}", path("runtime")),
            format!("--image-store={}", path("images")),
            format!("--cgroup-root={cgroup_root}"),
            format!(
                "--client-ca-file={}",
                server.pki_dir().join("ca.crt").display()
            ),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let kubelet = Component::start_in(
            Some(host.namespace.clone()),
            binary,
            server,
            &dir,
            "kubelet",
            "kubelet",
            &args,
        )
        .inspect_err(|_| unmount_below(dir.path()))?;
        let node = KubeletNode {
            name: name.to_owned(),
            ip: host.ip,
            netns: host.namespace.clone(),
            kubelet: Some(kubelet),
            addons: Vec::new(),
            binary: binary.clone(),
            dir,
            cgroup_root,
        };
        let nodes: Api<Node> = Api::all(server.client().await?);
        let ready = wait_until(
            "the kubelet's node to be Ready",
            Duration::from_secs(60),
            || async {
                let node = nodes.get_opt(name).await.ok()??;
                node.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
        if let Err(err) = ready {
            anyhow::bail!("{err}\nkubelet log:\n{}", node.log());
        }
        Ok(node)
    }

    /// Starts `baton proxy` (nftables mode unless `extra` says otherwise) in the node's
    /// namespace, with the cluster CIDR of the controller manager's default.
    pub fn start_proxy(&mut self, server: &ApiServer, extra: &[&str]) -> Result<()> {
        let mut args = vec![
            format!("--hostname-override={}", self.name),
            "--cluster-cidr=10.244.0.0/16".to_string(),
            format!("--healthz-bind-address={}:10256", self.ip),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start_addon(server, "proxy", &args)
    }

    /// Starts `baton dns` in the node's namespace on port 53, registered as this node's
    /// kube-dns endpoint, forwarding other names to `upstream`.
    pub fn start_dns(&mut self, server: &ApiServer, upstream: std::net::SocketAddr) -> Result<()> {
        let args = vec![
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", self.ip),
            format!("--upstream={upstream}"),
        ];
        self.start_addon(server, "dns", &args)
    }

    fn start_addon(&mut self, server: &ApiServer, role: &str, args: &[String]) -> Result<()> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let component = Component::start_in(
            Some(self.netns.clone()),
            &self.binary,
            server,
            &self.dir,
            role,
            role,
            &args,
        )?;
        self.addons.push((role.to_owned(), component));
        Ok(())
    }

    /// The log so far of the addon `role` (`proxy`, `dns`).
    pub fn addon_log(&self, role: &str) -> String {
        self.addons
            .iter()
            .filter(|(r, _)| r == role)
            .map(|(_, c)| c.log())
            .collect()
    }

    /// The proxy's log so far.
    pub fn proxy_log(&self) -> String {
        self.addon_log("proxy")
    }

    /// The kubelet's log so far.
    pub fn log(&self) -> String {
        self.kubelet
            .as_ref()
            .map(Component::log)
            .unwrap_or_default()
    }

    /// Where the kubelet writes pod logs.
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The kubelet's --root-dir.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The runtime processes' root directory (a tmpfs, as under a node's /run).
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    /// The kubelet's process id, while it runs.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().and_then(Component::pid)
    }

    /// The kubelet process (to kill or restart it).
    pub fn kubelet(&mut self) -> &mut Component {
        self.kubelet.as_mut().expect("kubelet")
    }

    /// Kills every container and sandbox by shutting the runtime process down.
    fn shut_down_runtime(&self) {
        // With the real binary: if the runtime process died, a new one adopts the containers
        // left behind, so that they are killed too.
        let client = baton_runtime::RuntimeClient::new(self.runtime_root(), &self.binary.0);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(client.shutdown())
                .map_err(std::io::Error::other)
        })
        .join();
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        for (_, mut addon) in self.addons.drain(..) {
            addon.stop();
        }
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        self.shut_down_runtime();
        unmount_below(self.dir.path());
        remove_cgroups(&self.cgroup_root);
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup `root` and everything below it in every hierarchy.
fn remove_cgroups(root: &str) {
    let relative = root.trim_start_matches('/');
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    hierarchies.extend(
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path()),
    );
    for hierarchy in hierarchies {
        remove_cgroup_tree(&hierarchy.join(relative));
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
