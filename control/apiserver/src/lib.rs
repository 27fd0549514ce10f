//! Baton's Kubernetes API server: HTTPS with client-certificate authentication, the REST
//! resources of Kubernetes v1.33 stored in etcd through the [`baton_store::Store`] seam, watch
//! caches, discovery, Tables for kubectl, and metrics.

pub mod allocator;
pub mod apply;
pub mod authn;
pub mod authz;
pub mod body;
pub mod compactor;
pub mod config;
pub mod discovery;
pub mod ephemeral_containers;
pub mod handlers;
pub mod impersonation;
pub mod managed_fields;
pub mod master_leases;
pub mod metrics;
pub mod namespaces;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod priority_admission;
pub mod priority_classes;
pub mod protobuf;
pub mod request;
pub mod resource_metrics;
pub mod resources;
pub mod selectors;
mod server;
pub mod service_accounts;
pub mod services;
pub mod status;
pub mod storage_classes;
pub mod tokens;
pub mod watch_cache;
pub mod watched_map;

use std::sync::Arc;

use baton_store::{EtcdStore, EtcdTls, Store, StoreError};
use serde_json::{Value, json};

pub use config::ApiServerArgs;
pub use server::serve;

use crate::allocator::ServiceAllocator;
use crate::master_leases::EndpointReconcilerType;
use crate::metrics::Metrics;
use crate::resources::defaults::DefaultingConfig;
use crate::services::{Allocated, PortPool};
use crate::status::StatusError;
use crate::watch_cache::WatchCaches;

/// A failure to start the API server.
#[derive(Debug, thiserror::Error)]
pub enum StartApiServerError {
    /// TLS files are missing or unusable.
    #[error(transparent)]
    Tls(#[from] baton_pki::tls::TlsSetupError),
    /// etcd could not be reached.
    #[error("connecting to etcd at {endpoints}")]
    Etcd {
        /// The `--etcd-servers` value.
        endpoints: String,
        /// The cause.
        source: StoreError,
    },
    /// The listening socket could not be opened.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The kubelet client certificate or CA is unusable.
    #[error(transparent)]
    KubeletClient(#[from] node_proxy::KubeletClientError),
    /// A service account key file is unusable.
    #[error(transparent)]
    ServiceAccountKey(#[from] tokens::jwt::LoadKeyError),
    /// The system objects could not be created.
    #[error("creating the system namespaces, PriorityClasses and the kubernetes Service: {0}")]
    Bootstrap(String),
}

/// The shared state of the API server.
pub struct ApiServer<S> {
    /// The store (etcd).
    pub store: Arc<S>,
    /// One watch cache per resource.
    pub caches: Arc<WatchCaches<S>>,
    /// Namespaces known from their watch cache.
    pub namespaces: namespaces::NamespaceCache,
    /// PriorityClasses known from their watch cache, for Priority admission.
    pub priority_classes: priority_classes::PriorityClassCache,
    /// Service accounts' image pull secrets, for ServiceAccount admission.
    pub service_accounts: service_accounts::ServiceAccountCache,
    /// Defaulting settings.
    pub defaulting: DefaultingConfig,
    /// ClusterIP and NodePort allocation.
    pub allocator: ServiceAllocator,
    /// Request metrics.
    pub metrics: Metrics,
    /// The address clients are told to use (`host:port`).
    pub advertise: String,
    /// How pods/log, pods/exec ... reach kubelets.
    pub kubelet_client: node_proxy::KubeletClient,
    /// Service account tokens: `None` when no key is configured (none issued or accepted).
    pub tokens: Option<tokens::TokenIssuer>,
}

impl<S> std::fmt::Debug for ApiServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl<S: Store> ApiServer<S> {
    /// Reads `key`, applies `change` and writes the result with compare-and-swap
    /// ([`objects::guaranteed_update`]), starting from the watch cache's newest copy of the
    /// object when it has one.
    pub async fn guaranteed_update(
        &self,
        resource: &'static resources::Resource,
        key: &str,
        name: &str,
        change: impl FnMut(&serde_json::Value) -> Result<objects::Decision, status::StatusError>,
    ) -> Result<objects::Updated, status::StatusError> {
        let cached = match self.caches.get(resource).await {
            Ok(cache) => cache.latest(key),
            Err(_) => None,
        };
        objects::guaranteed_update(&self.store, resource, key, name, cached, change).await
    }

    /// Assembles the server state.
    pub fn new(
        store: Arc<S>,
        args: &ApiServerArgs,
        advertise: String,
        kubelet_client: node_proxy::KubeletClient,
        tokens: Option<tokens::TokenIssuer>,
    ) -> Self {
        Self {
            caches: Arc::new(WatchCaches::new(store.clone())),
            namespaces: namespaces::NamespaceCache::default(),
            priority_classes: priority_classes::PriorityClassCache::default(),
            service_accounts: service_accounts::ServiceAccountCache::default(),
            store,
            defaulting: DefaultingConfig {
                not_ready_toleration_seconds: args.default_not_ready_toleration_seconds,
                unreachable_toleration_seconds: args.default_unreachable_toleration_seconds,
            },
            allocator: ServiceAllocator::new(
                args.service_cluster_ip_range,
                args.service_node_port_range,
            ),
            metrics: Metrics::default(),
            advertise,
            kubelet_client,
            tokens,
        }
    }

    /// Claims the ClusterIP, NodePorts and health check node port of a new Service.
    pub async fn allocate_service(&self, svc: &mut Value) -> Result<Allocated, StatusError> {
        let mut allocated = Allocated::default();
        let owner = format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap_or_default(),
            svc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let spec = &mut svc["spec"];
        if spec["type"] != "ExternalName" && spec["clusterIP"] != "None" {
            let wanted = spec["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let ip = self
                .allocator
                .claim_ip(&self.store, wanted.as_deref(), &owner)
                .await?;
            allocated.ips.push(ip.clone());
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        } else if spec["clusterIP"] == "None" {
            spec["clusterIPs"] = json!(["None"]);
        }
        // The NodePorts and health check node port it needs: those it names are claimed
        // before any is picked for it, so that a pick never takes one it names.
        let mut slots: Vec<(Option<usize>, String, Option<i64>)> = Vec::new();
        if services::needs_node_ports(spec) {
            let count = spec["ports"].as_array().map_or(0, Vec::len);
            for i in 0..count {
                let wanted = spec["ports"][i]["nodePort"].as_i64().filter(|p| *p != 0);
                slots.push((Some(i), format!("spec.ports[{i}].nodePort"), wanted));
            }
        }
        if services::needs_health_check_port(spec) {
            let wanted = Some(services::health_check_port(spec)).filter(|p| *p != 0);
            slots.push((None, "spec.healthCheckNodePort".into(), wanted));
        }
        slots.sort_by_key(|(_, _, wanted)| wanted.is_none());
        for (index, field, wanted) in slots {
            match self
                .allocator
                .claim_port(&self.store, wanted, &owner, &field)
                .await
            {
                Ok(port) => {
                    allocated.ports.push(port);
                    match index {
                        Some(i) => spec["ports"][i]["nodePort"] = json!(port),
                        None => spec["healthCheckNodePort"] = json!(port),
                    }
                }
                Err(e) => {
                    self.release(&allocated).await;
                    return Err(e);
                }
            }
        }
        Ok(allocated)
    }

    /// Releases claimed addresses and ports.
    pub async fn release(&self, allocated: &Allocated) {
        for ip in &allocated.ips {
            self.allocator.release_ip(&self.store, ip).await;
        }
        for port in &allocated.ports {
            self.allocator.release_port(&self.store, *port).await;
        }
    }

    /// Releases what a removed Service held.
    pub async fn release_held(&self, svc: &Value) {
        let (ips, ports) = allocator::held(svc);
        self.release(&Allocated { ips, ports }).await;
    }

    /// Claims the NodePorts (and health check node port) an update of a Service will need.
    pub async fn preallocate_for_update(
        &self,
        call: &handlers::Call<'_>,
        current: &Value,
        next: &Value,
    ) -> Result<PortPool, StatusError> {
        let mut merged = next.clone();
        services::keep_allocations(current, &mut merged);
        let missing = services::missing_node_ports(&merged);
        let owner = format!("{}/{}", call.namespace().unwrap_or_default(), call.name());
        // NodePorts the update names that the Service does not hold yet are claimed too (and
        // refused when taken or out of range), so no two Services share one.
        let (_, held_now) = allocator::held(current);
        let mut explicit = vec![];
        let mut named: Vec<(String, i64)> = vec![];
        if services::needs_node_ports(&merged["spec"]) {
            let ports = merged["spec"]["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (i, p) in ports.iter().enumerate() {
                if let Some(port) = p["nodePort"].as_i64().filter(|n| *n != 0) {
                    named.push((format!("spec.ports[{i}].nodePort"), port));
                }
            }
        }
        if services::needs_health_check_port(&merged["spec"]) {
            let port = services::health_check_port(&merged["spec"]);
            if port != 0 {
                named.push(("spec.healthCheckNodePort".into(), port));
            }
        }
        for (field, port) in named {
            if held_now.contains(&port) || explicit.contains(&port) {
                continue;
            }
            match self
                .allocator
                .claim_port(&self.store, Some(port), &owner, &field)
                .await
            {
                Ok(p) => explicit.push(p),
                Err(e) => {
                    self.release(&Allocated {
                        ips: vec![],
                        ports: explicit,
                    })
                    .await;
                    return Err(e);
                }
            }
        }
        let mut ports = vec![];
        for _ in 0..missing {
            match self
                .allocator
                .claim_port(&self.store, None, &owner, "spec.ports.nodePort")
                .await
            {
                Ok(p) => ports.push(p),
                Err(e) => {
                    ports.extend(explicit);
                    self.release(&Allocated { ips: vec![], ports }).await;
                    return Err(e);
                }
            }
        }
        Ok(PortPool::new(ports).with_explicit(explicit))
    }

    /// After a Service update: releases pool ports it did not use and what it gave up.
    pub async fn release_unused(
        &self,
        previous: &Value,
        now: &Value,
        pool: &PortPool,
        written: bool,
    ) {
        let (now_ips, now_ports) = allocator::held(now);
        let (old_ips, old_ports) = allocator::held(previous);
        let mut release = Allocated::default();
        for p in pool.claimed().ports {
            if !written || !now_ports.contains(&p) {
                release.ports.push(p);
            }
        }
        if written {
            release
                .ips
                .extend(old_ips.into_iter().filter(|ip| !now_ips.contains(ip)));
            release
                .ports
                .extend(old_ports.into_iter().filter(|p| !now_ports.contains(p)));
        }
        self.release(&release).await;
    }

    /// Creates upstream's system PriorityClasses that do not exist yet.
    async fn bootstrap_priority_classes(&self) -> Result<(), StatusError> {
        let pc = resources::find("scheduling.k8s.io", "v1", "priorityclasses").expect("served");
        for class in priority_admission::SYSTEM_CLASSES {
            let key = pc.key(None, class.name);
            if self
                .store
                .get(&key)
                .await
                .map_err(|e| objects::store_error(pc, class.name, e))?
                .is_some()
            {
                continue;
            }
            let mut obj = class.object();
            obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            obj["metadata"]["creationTimestamp"] = json!(handlers::now());
            resources::defaults::apply(pc.group, pc.kind, &mut obj, &self.defaulting, true);
            match self.store.create(&key, objects::encode(&obj)).await {
                Ok(_) => {
                    tracing::info!(
                        name = class.name,
                        value = class.value,
                        "created PriorityClass"
                    )
                }
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(objects::store_error(pc, class.name, e)),
            }
        }
        Ok(())
    }

    /// Creates what every cluster has: the system namespaces, the system PriorityClasses, the
    /// `cluster-admin` ClusterRole bound to `system:masters`, and the `kubernetes` Service.
    pub async fn bootstrap(&self) -> Result<(), StatusError> {
        let ns = resources::find("", "v1", "namespaces").expect("served");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let key = ns.key(None, name);
            if self
                .store
                .get(&key)
                .await
                .map_err(|e| objects::store_error(ns, name, e))?
                .is_some()
            {
                continue;
            }
            let mut obj =
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
            obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            obj["metadata"]["creationTimestamp"] = json!(handlers::now());
            resources::defaults::apply("", "Namespace", &mut obj, &self.defaulting, true);
            match self.store.create(&key, objects::encode(&obj)).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(objects::store_error(ns, name, e)),
            }
        }
        self.bootstrap_priority_classes().await?;
        self.bootstrap_cluster_admin().await?;
        let svc = resources::find("", "v1", "services").expect("served");
        let key = svc.key(Some("default"), "kubernetes");
        if self
            .store
            .get(&key)
            .await
            .map_err(|e| objects::store_error(svc, "kubernetes", e))?
            .is_none()
        {
            let port: i64 = self
                .advertise
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(6443);
            let mut obj = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "kubernetes", "namespace": "default",
                    "labels": { "component": "apiserver", "provider": "kubernetes" },
                    "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": handlers::now() },
                "spec": { "type": "ClusterIP", "clusterIP": self.allocator.first_ip().to_string(),
                    "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }] },
            });
            resources::defaults::apply("", "Service", &mut obj, &self.defaulting, true);
            let allocated = self.allocate_service(&mut obj).await?;
            if let Err(e) = self.store.create(&key, objects::encode(&obj)).await {
                self.release(&allocated).await;
                if !matches!(e, StoreError::AlreadyExists { .. }) {
                    return Err(objects::store_error(svc, "kubernetes", e));
                }
            }
        }
        Ok(())
    }

    /// Upstream's `cluster-admin` ClusterRole and its binding to `system:masters` (the only
    /// bootstrap roles Baton makes: without an authorizer they document, not grant).
    async fn bootstrap_cluster_admin(&self) -> Result<(), StatusError> {
        let group = "rbac.authorization.k8s.io";
        let metadata = json!({
            "name": "cluster-admin",
            "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" },
            "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
        });
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": metadata,
            "rules": [
                { "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] },
                { "nonResourceURLs": ["*"], "verbs": ["*"] },
            ],
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": metadata,
            "roleRef": { "apiGroup": group, "kind": "ClusterRole", "name": "cluster-admin" },
            "subjects": [{ "apiGroup": group, "kind": "Group", "name": baton_pki::ADMIN_GROUP }],
        });
        for (plural, obj) in [("clusterroles", role), ("clusterrolebindings", binding)] {
            let resource = resources::find(group, "v1", plural).expect("served");
            self.ensure_system_object(resource, obj).await?;
        }
        Ok(())
    }

    /// Sets the `kubernetes` Endpoints and EndpointSlice to `addresses` (the API servers) on
    /// `port`, writing only what changed (the endpoint controllers leave this Service alone).
    /// The EndpointSlice holds the addresses of `family`'s (this server's) address family, as
    /// upstream keeps one slice per family.
    pub(crate) async fn write_kubernetes_endpoints(
        &self,
        addresses: &[std::net::IpAddr],
        family: std::net::IpAddr,
        port: u16,
    ) -> Result<(), StatusError> {
        if addresses.is_empty() {
            return Ok(());
        }
        let address_type = if family.is_ipv4() { "IPv4" } else { "IPv6" };
        let port_entry = json!({ "name": "https", "port": port, "protocol": "TCP" });
        let subset_addresses: Vec<Value> = addresses
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let slice_endpoints: Vec<Value> = addresses
            .iter()
            .filter(|ip| ip.is_ipv4() == family.is_ipv4())
            .map(|ip| json!({ "addresses": [ip.to_string()], "conditions": { "ready": true } }))
            .collect();
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": { "name": "kubernetes", "namespace": "default",
                "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" } },
            "subsets": [{ "addresses": subset_addresses, "ports": [port_entry] }],
        });
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "kubernetes", "namespace": "default",
                "labels": { "kubernetes.io/service-name": "kubernetes" } },
            "addressType": address_type,
            "endpoints": slice_endpoints,
            "ports": [port_entry],
        });
        for (group, version, plural, obj) in [
            ("", "v1", "endpoints", endpoints),
            ("discovery.k8s.io", "v1", "endpointslices", slice),
        ] {
            let resource = resources::find(group, version, plural).expect("served");
            self.ensure_system_object(resource, obj).await?;
        }
        Ok(())
    }

    /// Writes `desired` (an object of `resource`) unless it is stored already with
    /// the same content outside metadata; keeps the stored uid and creation time.
    async fn ensure_system_object(
        &self,
        resource: &'static resources::Resource,
        mut desired: Value,
    ) -> Result<(), StatusError> {
        let name = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = desired["metadata"]["namespace"]
            .as_str()
            .map(str::to_string);
        let key = resource.key(namespace.as_deref(), &name);
        let stored = self
            .store
            .get(&key)
            .await
            .map_err(|e| objects::store_error(resource, &name, e))?;
        let current = stored.as_ref().map(objects::decode).transpose()?;
        let content = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
            }
            v
        };
        if let Some(current) = &current
            && content(current) == content(&desired)
            && current["metadata"]["labels"] == desired["metadata"]["labels"]
        {
            return Ok(());
        }
        let (uid, created) = match &current {
            Some(c) => (
                c["metadata"]["uid"].clone(),
                c["metadata"]["creationTimestamp"].clone(),
            ),
            None => (
                json!(uuid::Uuid::new_v4().to_string()),
                json!(handlers::now()),
            ),
        };
        desired["metadata"]["uid"] = uid;
        desired["metadata"]["creationTimestamp"] = created;
        let result = match stored {
            Some(kv) => self
                .store
                .update(&key, objects::encode(&desired), kv.mod_revision)
                .await
                .map(|_| ()),
            None => self
                .store
                .create(&key, objects::encode(&desired))
                .await
                .map(|_| ()),
        };
        match result {
            // Another API server wrote it at the same moment: its content is as good as ours.
            Ok(()) | Err(StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(objects::store_error(resource, &name, e)),
        }
    }
}

/// How long startup waits for etcd to answer (it may be starting beside the API server).
const ETCD_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Connects to etcd, retrying while it starts, and fails naming the endpoints after a minute.
async fn connect_etcd(
    endpoints: &[String],
    tls: &EtcdTls,
) -> Result<EtcdStore, StartApiServerError> {
    let deadline = tokio::time::Instant::now() + ETCD_STARTUP_WAIT;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let attempt = async {
            let store = EtcdStore::connect(endpoints, tls).await?;
            store.current_revision().await?;
            Ok::<_, StoreError>(store)
        };
        match attempt.await {
            Ok(store) => return Ok(store),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(StartApiServerError::Etcd {
                    endpoints: endpoints.join(","),
                    source,
                });
            }
            Err(e) => {
                tracing::info!(error = %e, "waiting for etcd");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// Runs `baton apiserver` until the process is stopped.
pub async fn run(args: ApiServerArgs) -> Result<(), StartApiServerError> {
    let tls = baton_pki::tls::server_config(
        &args.tls_cert_file,
        &args.tls_private_key_file,
        Some(&args.client_ca_file),
        baton_pki::tls::ClientAuth::Optional,
    )?;
    let tokens = tokens::TokenIssuer::from_args(&args)?;
    let etcd_tls = EtcdTls {
        ca_file: args.etcd_cafile.clone(),
        cert_file: args.etcd_certfile.clone(),
        key_file: args.etcd_keyfile.clone(),
    };
    let store = connect_etcd(&args.etcd_servers, &etcd_tls).await?;
    let addr = std::net::SocketAddr::new(args.bind_address, args.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartApiServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartApiServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let advertise_ip = args
        .advertise_address
        .unwrap_or(if args.bind_address.is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            args.bind_address
        });
    let advertise = std::net::SocketAddr::new(advertise_ip, bound.port()).to_string();
    let kubelet_client = node_proxy::KubeletClient::new(
        args.kubelet_client_certificate.as_deref(),
        args.kubelet_client_key.as_deref(),
        args.kubelet_certificate_authority.as_deref(),
    )?;
    let server = Arc::new(ApiServer::new(
        Arc::new(store),
        &args,
        advertise,
        kubelet_client,
        tokens,
    ));
    server
        .bootstrap()
        .await
        .map_err(|e| StartApiServerError::Bootstrap(e.message))?;
    // Every resource's watch cache starts now, so that watches from any resourceVersion since
    // this server started are served from memory.
    for resource in resources::CATALOG {
        server
            .caches
            .get(resource)
            .await
            .map_err(|source| StartApiServerError::Etcd {
                endpoints: args.etcd_servers.join(","),
                source,
            })?;
    }
    if !args.etcd_compaction_interval.is_zero() {
        tokio::spawn(compactor::run(
            server.store.clone(),
            server.caches.clone(),
            args.etcd_compaction_interval,
        ));
    }
    if args.endpoint_reconciler_type == EndpointReconcilerType::Lease {
        // The first round runs before the port is reported, so that a client of a started
        // server finds the kubernetes Endpoints; later rounds run in the background.
        if let Err(err) = server.reconcile_master_leases().await {
            tracing::warn!(error = %err.message, "reconciling the kubernetes endpoints");
        }
        tokio::spawn(master_leases::run(server.clone()));
    }
    let ns_resource = resources::find("", "v1", "namespaces").expect("namespaces are served");
    tokio::spawn(server.namespaces.clone().run(
        server.store.clone(),
        server.caches.clone(),
        ns_resource,
    ));
    tokio::spawn(
        server
            .priority_classes
            .clone()
            .run(server.store.clone(), server.caches.clone()),
    );
    tokio::spawn(
        server
            .service_accounts
            .clone()
            .run(server.store.clone(), server.caches.clone()),
    );
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.port().to_string())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| StartApiServerError::Listen {
                addr: path.display().to_string(),
                source,
            })?;
    }
    tracing::info!(address = %bound, "serving the Kubernetes API");
    serve(server, listener, tls).await;
    Ok(())
}
