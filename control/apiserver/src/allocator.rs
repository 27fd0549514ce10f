//! Service ClusterIP and NodePort allocation. Each allocated address or port is a key in the
//! store (`/registry/ranges/...`) claimed with a create-if-absent transaction, so no two
//! Services ever get the same one, and deleting a Service releases its keys.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use baton_store::{Store, StoreError};
use bytes::Bytes;
use ipnet::IpNet;

use crate::status::{FieldCause, StatusError};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// Allocates from the configured Service ranges.
#[derive(Debug, Clone)]
pub struct ServiceAllocator {
    range: IpNet,
    ports: (u16, u16),
}

fn ipv4_range(net: &IpNet) -> Option<(u32, u32)> {
    match net {
        IpNet::V4(v4) => Some((u32::from(v4.network()), u32::from(v4.broadcast()))),
        IpNet::V6(_) => None,
    }
}

fn random_u64() -> u64 {
    // A v4 UUID's random bits are a fine source for picking where to start looking.
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

impl ServiceAllocator {
    /// An allocator for the given ClusterIP range and NodePort range.
    pub fn new(range: IpNet, ports: (u16, u16)) -> Self {
        Self { range, ports }
    }

    /// The first address of the range: the `kubernetes` Service's.
    pub fn first_ip(&self) -> IpAddr {
        match ipv4_range(&self.range) {
            Some((net, _)) => IpAddr::V4(Ipv4Addr::from(net + 1)),
            None => self.range.network(),
        }
    }

    /// Claims `ip` (as given by the user) or a free one.
    pub async fn claim_ip<S: Store>(
        &self,
        store: &Arc<S>,
        wanted: Option<&str>,
        owner: &str,
    ) -> Result<String, StatusError> {
        if let Some(ip) = wanted {
            let addr: IpAddr = ip.parse().map_err(|_| {
                StatusError::bad_request(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: must be a valid IP address"
                ))
            })?;
            if !self.range.contains(&addr) {
                return Err(invalid_ip(
                    ip,
                    &format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}",
                        self.range
                    ),
                ));
            }
            return match store
                .create(&format!("{IP_PREFIX}{ip}"), Bytes::from(owner.to_string()))
                .await
            {
                Ok(_) => Ok(ip.to_string()),
                Err(StoreError::AlreadyExists { .. }) => Err(invalid_ip(
                    ip,
                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                )),
                Err(e) => Err(unavailable(e)),
            };
        }
        let (net, broadcast) = ipv4_range(&self.range)
            .ok_or_else(|| StatusError::internal("IPv6 service ranges are not supported yet"))?;
        // Skip the network address, the first address (kubernetes) and the broadcast address.
        let size = u64::from(broadcast - net).saturating_sub(2).max(1);
        let start = random_u64() % size;
        for step in 0..size.min(4096) {
            let offset = 2 + (start + step) % size;
            let ip = Ipv4Addr::from(net + offset as u32).to_string();
            match store
                .create(&format!("{IP_PREFIX}{ip}"), Bytes::from(owner.to_string()))
                .await
            {
                Ok(_) => return Ok(ip),
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StatusError::internal(format!(
            "failed to allocate a serviceIP: range {} is full",
            self.range
        )))
    }

    /// Claims a NodePort (the given one, or a free one).
    pub async fn claim_port<S: Store>(
        &self,
        store: &Arc<S>,
        wanted: Option<i64>,
        owner: &str,
        field: &str,
    ) -> Result<i64, StatusError> {
        let (lo, hi) = (i64::from(self.ports.0), i64::from(self.ports.1));
        if let Some(port) = wanted {
            if !(lo..=hi).contains(&port) {
                return Err(invalid_port(
                    field,
                    port,
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                    ),
                ));
            }
            return match store
                .create(
                    &format!("{PORT_PREFIX}{port}"),
                    Bytes::from(owner.to_string()),
                )
                .await
            {
                Ok(_) => Ok(port),
                Err(StoreError::AlreadyExists { .. }) => Err(invalid_port(
                    field,
                    port,
                    "provided port is already allocated",
                )),
                Err(e) => Err(unavailable(e)),
            };
        }
        let size = (hi - lo + 1) as u64;
        let start = random_u64() % size;
        for step in 0..size {
            let port = lo + ((start + step) % size) as i64;
            match store
                .create(
                    &format!("{PORT_PREFIX}{port}"),
                    Bytes::from(owner.to_string()),
                )
                .await
            {
                Ok(_) => return Ok(port),
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StatusError::internal(
            "failed to allocate a nodePort: range is full",
        ))
    }

    /// Releases an address.
    pub async fn release_ip<S: Store>(&self, store: &Arc<S>, ip: &str) {
        if let Err(e) = store.delete(&format!("{IP_PREFIX}{ip}"), None).await
            && !matches!(e, StoreError::NotFound { .. })
        {
            tracing::warn!(ip, error = %e, "releasing service IP");
        }
    }

    /// Releases a port.
    pub async fn release_port<S: Store>(&self, store: &Arc<S>, port: i64) {
        if let Err(e) = store.delete(&format!("{PORT_PREFIX}{port}"), None).await
            && !matches!(e, StoreError::NotFound { .. })
        {
            tracing::warn!(port, error = %e, "releasing node port");
        }
    }
}

fn unavailable(e: StoreError) -> StatusError {
    tracing::warn!(error = %e, "allocator storage error");
    StatusError::unavailable("storage is unavailable, please retry")
}

fn invalid_ip(ip: &str, detail: &str) -> StatusError {
    let subject = crate::status::Subject {
        group: "",
        resource: "services",
        kind: "Service",
    };
    let mut err = StatusError::invalid(
        &subject,
        "",
        vec![FieldCause::invalid(
            "spec.clusterIPs",
            &serde_json::json!([ip]),
            detail,
        )],
    );
    err.message = format!(
        "Service \"\" is invalid: spec.clusterIPs: Invalid value: []string{{{ip:?}}}: {detail}"
    );
    err
}

fn invalid_port(field: &str, port: i64, detail: &str) -> StatusError {
    let subject = crate::status::Subject {
        group: "",
        resource: "services",
        kind: "Service",
    };
    StatusError::invalid(
        &subject,
        "",
        vec![FieldCause::invalid(field, &serde_json::json!(port), detail)],
    )
}

/// The addresses and ports a Service holds.
pub fn held(svc: &serde_json::Value) -> (Vec<String>, Vec<i64>) {
    let spec = &svc["spec"];
    let mut ips: Vec<String> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if ips.is_empty()
        && let Some(ip) = spec["clusterIP"].as_str()
    {
        ips.push(ip.to_string());
    }
    ips.retain(|ip| ip != "None" && !ip.is_empty());
    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_i64())
        .chain(spec["healthCheckNodePort"].as_i64())
        .filter(|p| *p != 0)
        .collect();
    (ips, ports)
}
