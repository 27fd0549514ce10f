//! Which API servers the `kubernetes` Service reaches, as upstream's lease endpoint reconciler
//! (`--endpoint-reconciler-type=lease`, its default) keeps it: every API server writes its
//! advertised address under `/registry/masterleases/<ip>` with a time to live, again every
//! interval, and sets the `kubernetes` Endpoints and EndpointSlice to every address whose
//! record has not expired. So with several control-plane nodes the Service reaches each of
//! them, and one that stops drops out within the time to live (upstream's figures: a 15 s time
//! to live, renewed every 10 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_store::{ListOptions, Store};
use bytes::Bytes;

use crate::ApiServer;
use crate::status::StatusError;

/// Where the records are kept (upstream's key).
pub const LEASE_PREFIX: &str = "/registry/masterleases/";
/// How often each API server renews its record and reconciles the endpoints.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a record outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// Which endpoint reconciler runs (`--endpoint-reconciler-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointReconcilerType {
    /// Every API server's address while its lease lives.
    Lease,
    /// No reconciliation: the endpoints are left as they are.
    None,
}

impl<S: Store> ApiServer<S> {
    /// Renews this server's record and sets the `kubernetes` endpoints to every live record's
    /// address.
    pub async fn reconcile_master_leases(&self) -> Result<(), StatusError> {
        let Ok(advertise) = self.advertise.parse::<SocketAddr>() else {
            return Ok(());
        };
        let key = format!("{LEASE_PREFIX}{}", advertise.ip());
        let record =
            serde_json::json!({ "address": advertise.ip().to_string(), "port": advertise.port() });
        self.store
            .put_with_ttl(&key, Bytes::from(record.to_string()), LEASE_TTL)
            .await
            .map_err(|e| StatusError::internal(format!("renewing {key}: {e}")))?;
        self.write_live_endpoints(advertise).await
    }

    /// Sets the `kubernetes` endpoints to the address of every live record, in upstream's
    /// order (as strings).
    async fn write_live_endpoints(&self, advertise: SocketAddr) -> Result<(), StatusError> {
        let page = self
            .store
            .list(LEASE_PREFIX, ListOptions::default())
            .await
            .map_err(|e| StatusError::internal(format!("listing {LEASE_PREFIX}: {e}")))?;
        let mut addresses: Vec<std::net::IpAddr> = page
            .items
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(LEASE_PREFIX)?.parse().ok())
            .collect();
        addresses.sort_by_key(ToString::to_string);
        addresses.dedup();
        self.write_kubernetes_endpoints(&addresses, advertise.ip(), advertise.port())
            .await
    }

    /// Removes this server's record and reconciles once more, so that the `kubernetes`
    /// Service stops sending traffic here before the server goes (upstream does the same at
    /// shutdown).
    pub async fn remove_master_lease(&self) -> Result<(), StatusError> {
        let Ok(advertise) = self.advertise.parse::<SocketAddr>() else {
            return Ok(());
        };
        let key = format!("{LEASE_PREFIX}{}", advertise.ip());
        match self.store.delete(&key, None).await {
            Ok(_) | Err(baton_store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(StatusError::internal(format!("removing {key}: {e}"))),
        }
        self.write_live_endpoints(advertise).await
    }
}

/// Runs the reconciler every interval after the first (which the caller runs before serving;
/// a late round does not shorten the next), until SIGTERM or SIGINT; then removes this
/// server's record and ends the process.
pub async fn run<S: Store>(server: Arc<ApiServer<S>>) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + RECONCILE_INTERVAL,
        RECONCILE_INTERVAL,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Err(err) = server.reconcile_master_leases().await {
                    tracing::warn!(error = %err.message, "reconciling the kubernetes endpoints");
                }
            }
            _ = recv(&mut terminate) => break,
            _ = recv(&mut interrupt) => break,
        }
    }
    tracing::info!("stopping: removing this server from the kubernetes endpoints");
    match tokio::time::timeout(Duration::from_secs(5), server.remove_master_lease()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err.message, "removing this server's record"),
        Err(_) => tracing::warn!("removing this server's record took too long"),
    }
    std::process::exit(0);
}

/// The next signal, or never when the handler could not be installed.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
