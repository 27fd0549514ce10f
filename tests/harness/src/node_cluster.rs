//! A cluster for kubelet tests, inside a [`Lab`]: etcd, the API server, a controller manager
//! giving nodes their pod CIDRs, Debian's docker-registry serving the busybox test image (built
//! from busybox-static by baton-image-builder), and one or more `baton kubelet`s, each in a
//! network namespace of its own on the lab's network. Pods are bound by setting spec.nodeName
//! (no scheduler).

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::registry::Registry;
use crate::{ApiServer, Binary, Component, Etcd, KubeletNode, Lab, TempDir, wait_until};

/// etcd, the API server, a registry with the busybox image, and kubelet nodes. Fields drop in
/// order: the nodes (their containers) before the servers they talk to, the lab last.
pub struct NodeCluster {
    /// The first node.
    pub node: KubeletNode,
    /// The other nodes.
    pub others: Vec<KubeletNode>,
    pub client: Client,
    /// The busybox image's reference in the registry.
    pub image: String,
    pub server: ApiServer,
    pub registry: Registry,
    /// The scheduler, when the cluster was started with one.
    _scheduler: Option<Component>,
    _controller_manager: Component,
    _etcd: Etcd,
    _images: TempDir,
    _dir: TempDir,
    _lab: Lab,
}

impl std::fmt::Debug for NodeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCluster")
            .field("node", &self.node.name)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl NodeCluster {
    /// Starts everything with one node `name`; `extra` are further kubelet flags.
    pub async fn start(binary: &Binary, name: &str, extra: &[&str]) -> Result<Self> {
        Self::start_nodes(binary, &[name], extra).await
    }

    /// Starts everything with a node for each of `names`; `extra` are further kubelet flags.
    /// The calling thread enters the cluster's lab until the cluster is dropped.
    pub async fn start_nodes(binary: &Binary, names: &[&str], extra: &[&str]) -> Result<Self> {
        Self::start_with(binary, names, extra, false).await
    }

    /// As [`NodeCluster::start_nodes`]; with `storage`, also a scheduler and the volume binder
    /// with its local-path provisioner (volumes under the cluster's temporary directory,
    /// default StorageClass `standard`).
    pub async fn start_with(
        binary: &Binary,
        names: &[&str],
        extra: &[&str],
        storage: bool,
    ) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut lab = Lab::enter()?;
        let etcd = Etcd::start().await?;
        let server = ApiServer::start_at(binary, &etcd.url(), Lab::gateway(), &[]).await?;
        let dir = TempDir::new("node-cluster")?;
        // Pods mount their service account's token and the cluster CA: the accounts and the
        // kube-root-ca.crt ConfigMaps must exist.
        let mut controllers = "--controllers=node-ipam-controller,endpointslice-controller,serviceaccount-controller,root-ca-certificate-publisher-controller".to_string();
        let local_path_root = format!(
            "--local-path-root={}",
            dir.path().join("local-path").display()
        );
        let mut controller_flags = vec![];
        if storage {
            controllers.push_str(",persistentvolume-binder-controller");
            controller_flags.push(local_path_root.as_str());
            controller_flags.push("--default-storage-class=standard");
        }
        controller_flags.push(controllers.as_str());
        let controller_manager = Component::start(
            binary,
            &server,
            &dir,
            "controller-manager",
            "controller-manager",
            &controller_flags,
        )?;
        let scheduler = if storage {
            Some(Component::start(
                binary,
                &server,
                &dir,
                "scheduler",
                "scheduler",
                &[],
            )?)
        } else {
            None
        };
        let registry = Registry::start_at(Lab::gateway()).await?;
        let images = TempDir::new("images")?;
        let image = format!("{}/busybox:1.35", registry.host());
        let built = baton_image_builder::build_busybox_image(
            std::path::Path::new(baton_image_builder::DEFAULT_BUSYBOX),
            &images.path().join("busybox"),
            &image,
        )?;
        baton_image_builder::push_layout(&built.layout_dir, &image, true).await?;
        let insecure = format!("--insecure-registry={}", registry.host());
        let mut flags = vec![insecure.as_str()];
        flags.extend_from_slice(extra);
        let mut nodes = Vec::new();
        for name in names {
            let host = lab.add_node()?;
            nodes.push(KubeletNode::start(binary, &server, &host, name, &flags).await?);
        }
        let mut nodes = nodes.into_iter();
        let node = nodes.next().context("a node cluster needs a node")?;
        let client = server.client().await?;
        Ok(Self {
            node,
            others: nodes.collect(),
            client,
            image,
            server,
            registry,
            _scheduler: scheduler,
            _controller_manager: controller_manager,
            _etcd: etcd,
            _images: images,
            _dir: dir,
            _lab: lab,
        })
    }

    /// Runs the first kubectl against the API server and requires success (the failure
    /// message carries kubectl's errors and the kubelet's log); returns its trimmed output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.server.kubectl(&crate::kubectl_binaries()[0], args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\nkubelet log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.node.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Pods of the default namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates a pod bound to the node with one container `main` running busybox
    /// `sh -c command`; `extra` is merged into the manifest (objects key by key, other values
    /// replaced: a `containers` list given there replaces the default one).
    pub async fn create_pod(
        &self,
        name: &str,
        command: &str,
        extra: serde_json::Value,
    ) -> Result<Pod> {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name },
            "spec": {
                "nodeName": self.node.name,
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "main",
                    "image": self.image,
                    "command": ["sh", "-c", command],
                }],
            },
        });
        merge_json(&mut pod, extra);
        Ok(self
            .pods()
            .create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?)
    }

    /// Waits (90 s at most) until `check` accepts pod `name`; on timeout panics with the pod's
    /// status and the kubelet's log.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        name: &str,
        check: impl Fn(&Pod) -> Option<T>,
    ) -> T {
        let pods = self.pods();
        let result = wait_until(what, Duration::from_secs(90), || async {
            let pod = pods.get_opt(name).await.ok()??;
            check(&pod)
        })
        .await;
        match result {
            Ok(value) => value,
            Err(err) => {
                let pod = pods.get_opt(name).await.ok().flatten();
                panic!(
                    "{err}\npod status: {:#?}\nkubelet log:\n{}",
                    pod.and_then(|p| p.status),
                    self.node.log()
                )
            }
        }
    }
}

/// Merges `patch` into `target`: objects key by key, anything else replaced.
pub fn merge_json(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                merge_json(target.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

impl NodeCluster {
    /// The messages (notes) of the events with `reason` about pod `pod`.
    pub async fn event_notes(&self, pod: &str, reason: &str) -> Vec<String> {
        use k8s_openapi::api::events::v1::Event;
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let Ok(list) = events.list(&kube::api::ListParams::default()).await else {
            return Vec::new();
        };
        list.items
            .into_iter()
            .filter(|event| {
                event.reason.as_deref() == Some(reason)
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
            .map(|event| event.note.unwrap_or_default())
            .collect()
    }

    /// The text of each stdout line container `main` of `pod` wrote in its first attempt (from
    /// its CRI log, `<time> stdout F <text>`).
    pub fn stdout_lines(&self, pod: &Pod) -> Vec<String> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let path = self
            .node
            .pod_logs_dir()
            .join(format!("default_{name}_{uid}/main/0.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(4, ' ');
                let (_time, stream, _tag) = (parts.next()?, parts.next()?, parts.next()?);
                (stream == "stdout").then(|| parts.next().unwrap_or_default().to_owned())
            })
            .collect()
    }
}

/// The status of the pod's first container.
pub fn main_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

/// The pod's phase.
pub fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// The waiting reason of the pod's first container.
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    main_status(pod)?.state?.waiting?.reason
}
