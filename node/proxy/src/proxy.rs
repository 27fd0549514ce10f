//! The sync loop: Services and EndpointSlices are watched; each change marks the dataplane
//! dirty, and a sync (no sooner than --min-sync-period after the last, and at the latest
//! --sync-period after it) renders the rules from everything known and applies the
//! difference.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::Informer;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::args::{InvalidProxyFlagError, ProxyArgs, ProxyMode};
use crate::dataplane::Dataplane;
use crate::health_check::HealthCheckServers;
use crate::metrics::{ProxyMetrics, serve};
use crate::nftables_rules::RuleSettings;
use crate::service_model::{ProxyState, WATCH_LABEL_SELECTOR, build_state, slice_service};
use crate::stale_flows::{StaleUdpFlows, remove_stale_flows};

/// How long a failed sync waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunProxyError {
    /// A flag was wrong.
    #[error(transparent)]
    Flag(#[from] InvalidProxyFlagError),
    /// The API server could not be reached.
    #[error("connect to the API server")]
    Connect(#[from] baton_client::ConnectError),
    /// The dataplane could not be opened or cleaned.
    #[error("open the dataplane")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    /// A server could not listen.
    #[error("serve {address}")]
    Serve {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the proxy until it is killed (or, with --cleanup, removes its rules and returns).
pub async fn run(args: ProxyArgs) -> Result<(), RunProxyError> {
    let mode = args.mode()?;
    let mut proxier = Dataplane::open(mode)?;
    if args.cleanup {
        proxier.clean_up()?;
        proxier.clean_up_other_modes();
        tracing::info!("removed the proxy's rules");
        return Ok(());
    }
    proxier.clean_up_other_modes();
    let client = baton_client::connect(Some(&args.kubeconfig), "proxy").await?;
    let metrics = Arc::new(Mutex::new(ProxyMetrics::default()));
    for address in [args.metrics_bind_address, args.healthz_bind_address] {
        serve(address, metrics.clone())
            .await
            .map_err(|source| RunProxyError::Serve { address, source })?;
    }
    let config = watcher::Config::default().labels(WATCH_LABEL_SELECTOR);
    let services = Arc::new(Informer::new(
        Api::<Service>::all(client.clone()),
        config.clone(),
    ));
    let slices = Arc::new(Informer::new(Api::<EndpointSlice>::all(client), config));
    let (dirty, mut changed) = watch::channel(());
    // The Services whose ports must be built again: only those change in the state kept
    // between syncs (upstream's change trackers).
    let touched: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let mark_dirty = {
        let metrics = metrics.clone();
        let touched = touched.clone();
        move |keys: Vec<(String, String)>| {
            touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(keys);
            let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
            m.pending_since.get_or_insert_with(Instant::now);
            dirty.send_replace(());
        }
    };
    let on_service = mark_dirty.clone();
    services.on_event(move |event| {
        let keys = event
            .objects()
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        on_service(keys);
    });
    slices.on_event(move |event| mark_dirty(event.objects().filter_map(slice_service).collect()));
    let runner = services.clone();
    tokio::spawn(async move { runner.run().await });
    let runner = slices.clone();
    tokio::spawn(async move { runner.run().await });
    services.wait_until_ready().await;
    slices.wait_until_ready().await;

    let settings = RuleSettings {
        node_name: args.node_name(),
        cluster_cidr: args.cluster_cidr,
    };
    let mut last_sync: Option<Instant> = None;
    // The desired state, kept between syncs and updated for the Services that changed.
    let mut state: Option<ProxyState> = None;
    let mut proxier = Some(proxier);
    let mut stale_flows = StaleUdpFlows::default();
    let mut health_checks =
        HealthCheckServers::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), metrics.clone());
    tracing::info!(mode = ?mode, node = %settings.node_name, "proxy running");
    loop {
        if let Some(at) = last_sync.map(|t| t + args.min_sync_period) {
            tokio::time::sleep_until(at.into()).await;
        }
        changed.borrow_and_update();
        let keys: Vec<(String, String)> = touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let mut current = match state.take() {
            None => build_state(&services.store().state(), &slices.store().state()),
            Some(mut current) => {
                update_state(&mut current, &keys, &services.store(), &slices.store());
                current
            }
        };
        // Health check ports the Services gave up stop before the sync (one may become a
        // node port); new ones start once the rules that take their traffic are in.
        let health_ports = crate::health_check::health_checks(&current, &settings.node_name);
        health_checks.keep_only(&health_ports.keys().copied().collect());
        let started = Instant::now();
        let mut dataplane = proxier.take().expect("the proxier is back after each sync");
        let sync_settings = settings.clone();
        let (dataplane, synced, result) = tokio::task::spawn_blocking(move || {
            let result = dataplane.sync(&current, &sync_settings);
            (dataplane, current, result)
        })
        .await
        .expect("the sync task does not panic");
        current = synced;
        if result.is_ok() {
            // Later updates are tracked from here, so the next sync looks only at them.
            current.mark_applied();
            // The userspace mode translates nothing: its UDP flows follow each datagram.
            if mode != ProxyMode::Userspace
                && let Some(ports) = stale_flows.due(&current)
            {
                let (ports, cleaned) = tokio::task::spawn_blocking(move || {
                    let cleaned = remove_stale_flows(&ports);
                    (ports, cleaned)
                })
                .await
                .expect("the flow clean-up does not panic");
                match cleaned {
                    Ok(done) => {
                        if done.failed == 0 {
                            stale_flows.cleaned(&ports);
                        }
                        tracing::debug!(
                            removed = done.removed,
                            failed = done.failed,
                            "removed stale UDP flows"
                        );
                    }
                    Err(err) => tracing::warn!(
                        err = %baton_client::error_chain(&err),
                        "removing stale UDP flows"
                    ),
                }
            }
        }
        let service_ports = current.services.len();
        if result.is_ok() {
            health_checks.update(health_ports).await;
        }
        state = Some(current);
        let userspace_backends = dataplane.userspace_backends();
        proxier = Some(dataplane);
        let took = started.elapsed();
        last_sync = Some(Instant::now());
        let ok = result.is_ok();
        {
            let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(backends) = userspace_backends {
                m.userspace_backends = backends;
            }
            match &result {
                Ok((stats, rules)) => m.record(took, true, stats.full, *rules, service_ports),
                Err(_) => m.record(took, false, false, 0, 0),
            }
        }
        match result {
            Ok((stats, _)) => {
                tracing::debug!(
                    ?took,
                    changes = stats.changes,
                    full = stats.full,
                    "synced proxy rules"
                );
            }
            Err(err) => {
                tracing::warn!(err = %baton_client::error_chain(&err), "syncing proxy rules; retrying with a full sync");
            }
        }
        if ok {
            // The next change, or at the latest the sync period (upstream's --sync-period).
            if let Ok(Err(_)) = tokio::time::timeout(args.sync_period, changed.changed()).await {
                return Ok(());
            }
        } else {
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

/// Builds the ports of the Services `keys` (namespace, name) again from the caches.
fn update_state(
    state: &mut ProxyState,
    keys: &[(String, String)],
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) {
    if keys.is_empty() {
        return;
    }
    let wanted: HashSet<&(String, String)> = keys.iter().collect();
    let mut by_service: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in slices.state() {
        if let Some(owner) = slice_service(&slice)
            && wanted.contains(&owner)
        {
            by_service.entry(owner).or_default().push(slice);
        }
    }
    for key in keys {
        let (namespace, name) = key;
        let service = services.get(&ObjectRef::new(name).within(namespace));
        let owned = by_service.remove(key).unwrap_or_default();
        let slices: Vec<&EndpointSlice> = owned.iter().map(|s| s.as_ref()).collect();
        state.update_service(namespace, name, service.as_deref(), &slices);
    }
}
