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
        addresses.sort();
        addresses.dedup();
        self.write_kubernetes_endpoints(&addresses, advertise.port())
            .await
    }
}

/// Runs the reconciler forever, every interval (the first reconciliation is the caller's,
/// before the server serves).
pub async fn run<S: Store>(server: Arc<ApiServer<S>>) {
    loop {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        if let Err(err) = server.reconcile_master_leases().await {
            tracing::warn!(error = %err.message, "reconciling the kubernetes endpoints");
        }
    }
}
