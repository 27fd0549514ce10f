//! `baton kubelet`: registers the node, keeps its status and Lease, watches the pods bound to
//! it (fieldSelector spec.nodeName) and gives each its own worker; at start it removes what
//! the runtime still has of pods that are gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use baton_client::{Informer, InformerEvent};
use baton_images::ImageStore;
use baton_runtime::{ContainerRuntime, RuntimeClient};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::args::{InvalidFlagError, KubeletArgs, parse_labels, parse_reserved, parse_taints};
use crate::container_start::parse_container_id;
use crate::context::KubeletContext;
use crate::machine::{Machine, default_node_ip};
use crate::node_status::{NodeIdentity, NodeStatusReporter, RegisterNodeError};
use crate::pod_dirs::DnsSettings;
use crate::pod_network::{NetworkState, PodNetwork};
use crate::pod_worker::{PodUpdate, PodWorker};

/// The most API requests (watches aside) the kubelet has in flight: a burst of pod starts
/// queues its status writes, token requests and reads on this many connections instead of
/// opening one per request (see `baton_client::request_limit`).
const API_REQUESTS_IN_FLIGHT: usize = 8;

/// How long a heartbeat request (node status, Lease) may wait for its answer: upstream's
/// heartbeat client timeout (the node status update frequency, within the Lease's 40 s).
const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the kubelet could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunKubeletError {
    #[error(transparent)]
    Flag(#[from] InvalidFlagError),
    #[error("connect to the API server")]
    Connect(#[from] baton_client::ConnectError),
    #[error("prepare {path}")]
    Prepare {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the container runtime")]
    Runtime(#[from] baton_runtime::RuntimeCallError),
    #[error("open the image store")]
    Images(#[from] baton_images::OpenStoreError),
    #[error("serve the kubelet API")]
    Serve(#[from] crate::server::ServeKubeletError),
}

/// Runs the kubelet until it is killed.
pub async fn run(args: KubeletArgs) -> Result<(), RunKubeletError> {
    args.validate()?;
    // oci-client's TLS (rustls) is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let node_name = args.node_name();
    for dir in [&args.root_dir, &args.pod_logs_dir] {
        std::fs::create_dir_all(dir).map_err(|source| RunKubeletError::Prepare {
            path: dir.clone(),
            source,
        })?;
    }
    // The node's registration, status and Lease go through a client of their own, as with
    // upstream's kubelet's heartbeat client: a burst of pod work does not queue ahead of the
    // heartbeat, and a request stuck on a dead connection fails after upstream's 10 s. Both
    // connect at once, so that an API server not up yet delays the start by one wait only.
    let (client, heartbeat_client) = tokio::join!(
        baton_client::connect_with_request_limit(
            Some(&args.kubeconfig),
            "kubelet",
            API_REQUESTS_IN_FLIGHT,
        ),
        baton_client::connect_with_request_timeout(
            Some(&args.kubeconfig),
            "kubelet",
            HEARTBEAT_TIMEOUT,
        ),
    );
    let (client, heartbeat_client) = (client?, heartbeat_client?);
    let program = std::env::current_exe().map_err(|source| RunKubeletError::Prepare {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let processes = args.runtime_processes.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(4)
        },
        usize::from,
    );
    let runtime = RuntimeClient::with_processes(&args.runtime_root, program, processes);
    let runtime_pids = runtime.connect().await?;
    tracing::info!(?runtime_pids, "container runtime ready");
    let images = ImageStore::open(&args.image_store)?;
    let machine = Machine::read(&args.root_dir);
    let node_ip = args.node_ip.unwrap_or_else(default_node_ip);
    let mut reserved: Vec<(String, String)> =
        parse_reserved("system-reserved", &args.system_reserved)?
            .into_iter()
            .collect();
    reserved.extend(parse_reserved("kube-reserved", &args.kube_reserved)?);
    let identity = NodeIdentity {
        name: node_name.clone(),
        ip: node_ip,
        labels: parse_labels(&args.node_labels)?,
        taints: parse_taints(&args.register_with_taints)?,
        machine: machine.clone(),
        max_pods: args.max_pods,
        reserved,
        root_dir: args.root_dir.clone(),
        port: args.port,
    };
    let allocatable = identity.allocatable();
    let network = Arc::new(match args.network_plugin.as_str() {
        "cni" => PodNetwork::with_cni(
            &args.root_dir,
            node_ip,
            baton_network::cni::CniPlugins {
                conf_dir: args.cni_conf_dir.clone(),
                bin_dirs: args.cni_bin_dir.clone(),
                cache_dir: args
                    .cni_cache_dir
                    .clone()
                    .unwrap_or_else(|| args.root_dir.join("cni-cache")),
            },
        ),
        _ => PodNetwork::new(&args.root_dir, node_ip),
    });
    let reporter = register_until_done(&heartbeat_client, identity, &network, args.pod_cidr).await;
    let ctx = Arc::new(KubeletContext {
        tokens: Arc::default(),
        client: client.clone(),
        runtime: runtime.clone(),
        images,
        node_name: node_name.clone(),
        node_ip,
        machine,
        allocatable,
        root_dir: args.root_dir.clone(),
        pod_logs_dir: args.pod_logs_dir.clone(),
        insecure_registries: args.insecure_registries.clone(),
        log_max_size: args.log_max_size(),
        log_max_files: args.container_log_max_files,
        dns: DnsSettings {
            cluster_dns: args.cluster_dns.clone(),
            cluster_domain: args.cluster_domain.clone(),
            host_resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            node_hostname: node_name.clone(),
        },
        cgroup_root: args.cgroup_root.clone(),
        cgroup_v2: std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        events: crate::events::EventSink::new(client.clone(), &node_name),
        network: network.clone(),
    });
    if network.cni().is_some() {
        let watched = network.clone();
        tokio::spawn(async move {
            if let Some(cni) = watched.cni() {
                cni.watch_config(&watched).await;
            }
        });
    } else {
        tokio::spawn(crate::node_network::run(
            client.clone(),
            node_name.clone(),
            network.clone(),
            args.pod_cidr,
        ));
    }
    let status_runtime = runtime.clone();
    tokio::spawn(reporter.run(
        args.node_status_update_frequency,
        move || {
            let runtime = status_runtime.clone();
            Box::pin(async move { runtime.connect().await.is_ok() })
        },
        network.subscribe(),
    ));

    let pods: Api<Pod> = Api::all(client);
    let informer = Arc::new(Informer::new(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
    ));
    let server = crate::server::serve(
        ctx.clone(),
        informer.store(),
        crate::server::ServerSettings {
            address: std::net::SocketAddr::new(args.address, args.port),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_private_key_file.clone(),
            client_ca_file: args.client_ca_file.clone(),
        },
    )
    .await?;
    tokio::spawn(server);
    tokio::spawn(crate::image_gc::run(
        ctx.clone(),
        informer.store(),
        args.image_gc_high_threshold,
        args.image_gc_low_threshold,
        args.minimum_image_ttl_duration,
    ));
    // What the runtime has from before this kubelet started, listed once and handed to each
    // pod's worker (listing per worker would cost O(pods²) state reads).
    let mut existing: HashMap<String, Vec<baton_runtime::ContainerStatus>> = HashMap::new();
    for status in runtime.list_containers().await? {
        if let Some((uid, _, _)) = parse_container_id(&status.id) {
            existing.entry(uid.to_owned()).or_default().push(status);
        }
    }
    let workers = PodWorkers::new(ctx.clone(), informer.store(), existing);
    informer.on_event(move |event| workers.dispatch(event));
    let cleaner = informer.clone();
    tokio::spawn(async move {
        cleaner.wait_until_ready().await;
        let known: HashSet<String> = cleaner
            .store()
            .state()
            .iter()
            .filter_map(|p| p.uid())
            .collect();
        remove_orphans(&ctx, &known).await;
        // Addresses of pods that died while the kubelet was down, once the bridge is up (CNI
        // plugins are given what their cache holds).
        let mut ready = ctx.network.subscribe();
        if ctx.network.cni().is_some() || ready.wait_for(NetworkState::is_ready).await.is_ok() {
            let store = cleaner.store();
            ctx.network
                .release_orphans(move || store.state().iter().filter_map(|p| p.uid()).collect())
                .await;
        }
    });
    tracing::info!(node = %node_name, "kubelet running");
    informer.run().await;
    Ok(())
}

/// The workers of the pods on this node, by uid.
#[derive(Debug, Clone)]
struct PodWorkers {
    ctx: Arc<KubeletContext>,
    /// The informer's cache, whose copy of a pod the pod's worker shares.
    pods: Store<Pod>,
    workers: Arc<Mutex<HashMap<String, watch::Sender<PodUpdate>>>>,
    /// Containers found at start, by pod uid, until that pod's worker takes them.
    existing: Arc<Mutex<HashMap<String, Vec<baton_runtime::ContainerStatus>>>>,
}

impl PodWorkers {
    fn new(
        ctx: Arc<KubeletContext>,
        pods: Store<Pod>,
        existing: HashMap<String, Vec<baton_runtime::ContainerStatus>>,
    ) -> Self {
        Self {
            ctx,
            pods,
            workers: Arc::default(),
            existing: Arc::new(Mutex::new(existing)),
        }
    }

    /// Passes a pod change to its worker, starting one for a new pod.
    fn dispatch(&self, event: &InformerEvent<'_, Pod>) {
        let mut workers = self.workers.lock().expect("pod workers");
        match event {
            InformerEvent::Applied { new, .. } => {
                let Some(uid) = new.uid() else { return };
                // The cache holds the pod already (it is updated before handlers hear of a
                // change): one copy of each pod, not two.
                let pod = self
                    .pods
                    .get(&ObjectRef::from_obj(*new))
                    .unwrap_or_else(|| Arc::new((*new).clone()));
                let update = PodUpdate::Present(pod.clone());
                if let Some(sender) = workers.get(&uid)
                    && sender.send(update.clone()).is_ok()
                {
                    return;
                }
                let (sender, receiver) = watch::channel(update);
                workers.insert(uid.clone(), sender);
                let ctx = self.ctx.clone();
                let existing = self
                    .existing
                    .lock()
                    .expect("existing containers")
                    .remove(&uid)
                    .unwrap_or_default();
                tokio::spawn(async move {
                    // Boxed, so that a worker waiting for changes (most of its life) does not
                    // keep the space of its start-up in its task.
                    let worker = Box::pin(PodWorker::new(ctx, &pod, existing)).await;
                    drop(pod);
                    worker.run(receiver).await;
                });
            }
            InformerEvent::Deleted(old) => {
                if let Some(sender) = old.uid().and_then(|uid| workers.remove(&uid)) {
                    let _ = sender.send(PodUpdate::Gone);
                }
            }
        }
    }
}

/// Removes containers and sandboxes the runtime has for pods not bound here any more.
async fn remove_orphans(ctx: &KubeletContext, known: &HashSet<String>) {
    let Ok(containers) = ctx.runtime.list_containers().await else {
        return;
    };
    let mut orphans = HashSet::new();
    for status in containers {
        let Some((uid, name, attempt)) = parse_container_id(&status.id) else {
            continue;
        };
        if known.contains(uid) {
            continue;
        }
        tracing::info!(container = %status.id, "removing a container of a pod that is gone");
        let _ = ctx.runtime.remove_container(&status.id).await;
        let bundle = ctx
            .root_dir
            .join("pods")
            .join(uid)
            .join("containers")
            .join(name)
            .join(attempt.to_string());
        let _ = baton_images::unmount_overlay(&bundle);
        orphans.insert(uid.to_owned());
    }
    for uid in orphans {
        ctx.network.detach(&uid).await;
        let _ = ctx.runtime.remove_sandbox(&uid).await;
        let dir = ctx.root_dir.join("pods").join(&uid);
        crate::volumes::tear_down(&crate::pod_dirs::PodDirs {
            dir: dir.clone(),
            logs: std::path::PathBuf::new(),
        });
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Registers the node and posts its first status, retrying with backoff (100 ms doubling to
/// 7 s, as upstream's kubelet) while the API server cannot take it: a node often starts before
/// its control plane does. A restarted kubelet's Node has its pod CIDR already: the bridge
/// network is set up from it before the first status, which then says Ready rather than
/// NotReady for the moment until the node network loop would have done it.
async fn register_until_done(
    client: &kube::Client,
    identity: NodeIdentity,
    network: &PodNetwork,
    fallback_cidr: Option<ipnet::Ipv4Net>,
) -> NodeStatusReporter {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let registered = async {
            let (mut reporter, node) =
                NodeStatusReporter::register(client.clone(), identity.clone()).await?;
            if network.cni().is_none()
                && let Some(cidr) = crate::node_network::pod_cidr(&node).or(fallback_cidr)
                && let Err(err) = network.set_up(cidr).await
            {
                // The node network loop tries again.
                tracing::warn!(%err, "setting up the pod network");
            }
            let not_ready = network.subscribe().borrow().not_ready_message();
            reporter.post_first(true, not_ready).await?;
            Ok::<_, RegisterNodeError>(reporter)
        };
        match registered.await {
            Ok(reporter) => return reporter,
            Err(err) => {
                tracing::warn!(
                    err = %baton_client::error_chain(&err),
                    retry_in_ms = delay.as_millis() as u64,
                    "registering the node; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REGISTER_BACKOFF_MAX);
            }
        }
    }
}

/// The longest wait between attempts to register the node.
const REGISTER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(7);
