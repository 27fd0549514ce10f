//! The sync loop: Services and EndpointSlices are watched; each change marks the dataplane
//! dirty, and a sync (no sooner than --min-sync-period after the last) renders the rules from
//! everything known and applies the difference.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::Informer;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::args::{InvalidProxyFlagError, ProxyArgs};
use crate::dataplane::Dataplane;
use crate::metrics::{ProxyMetrics, serve};
use crate::nftables_rules::RuleSettings;
use crate::service_model::{WATCH_LABEL_SELECTOR, build_state};

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
    let mark_dirty = {
        let metrics = metrics.clone();
        move || {
            let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
            m.pending_since.get_or_insert_with(Instant::now);
            dirty.send_replace(());
        }
    };
    let on_service = mark_dirty.clone();
    services.on_event(move |_| on_service());
    slices.on_event(move |_| mark_dirty());
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
    let mut proxier = Some(proxier);
    tracing::info!(mode = ?mode, node = %settings.node_name, "proxy running");
    loop {
        if let Some(at) = last_sync.map(|t| t + args.min_sync_period) {
            tokio::time::sleep_until(at.into()).await;
        }
        changed.borrow_and_update();
        let state = build_state(&services.store().state(), &slices.store().state());
        let started = Instant::now();
        let mut dataplane = proxier.take().expect("the proxier is back after each sync");
        let sync_settings = settings.clone();
        let sync_state = state.clone();
        let (dataplane, result) = tokio::task::spawn_blocking(move || {
            let result = dataplane.sync(&sync_state, &sync_settings);
            (dataplane, result)
        })
        .await
        .expect("the sync task does not panic");
        proxier = Some(dataplane);
        let took = started.elapsed();
        last_sync = Some(Instant::now());
        let ok = result.is_ok();
        {
            let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok((stats, rules)) => {
                    m.record(took, true, stats.full, *rules, state.services.len())
                }
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
                tracing::warn!(err = %error_chain(&err), "syncing proxy rules; retrying with a full sync");
            }
        }
        if ok {
            if changed.changed().await.is_err() {
                return Ok(());
            }
        } else {
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
