//! The node API server (proto in the baton-node-api crate): init serves it on TCP port 50000
//! from the moment its machine configuration is known, and in maintenance mode, so that a node
//! can always be inspected and fixed. Callers are authenticated by mutual TLS against the
//! cluster CA and must be in group `system:masters`. A node in maintenance mode without a
//! usable configuration has no CA to check callers against: it serves a self-signed
//! certificate, asks for none, and answers only version, status, apply-config, reboot and
//! shutdown (as Talos's maintenance mode does).

pub(crate) mod facts;
mod service;
mod state;
pub mod vsock_relay;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use baton_node_api::NODE_API_PORT;
use baton_node_api::proto::node_server::NodeServer;
use baton_pki::{CertAndKey, ClusterCa};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::machine_config::{MachineConfig, Role};

pub use state::{AppliedConfig, Maintenance, NodeState, NodeStateReceivers};

/// How long a stopping server waits for open calls (a followed log) before they are cut.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The address the node API listens on: every address of the node.
pub fn listen_address() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], NODE_API_PORT))
}

/// The node API's TLS: the certificate it serves, and the CA its callers' certificates must
/// chain to (none in maintenance mode without a usable configuration).
#[derive(Clone)]
pub struct NodeApiTls {
    serving: CertAndKey,
    client_ca: Option<String>,
}

impl std::fmt::Debug for NodeApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApiTls")
            .field("authenticates_callers", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the node API's certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodeApiTlsError {
    /// Issuing a certificate failed.
    #[error("issuing the node API's certificate")]
    Issue(#[from] baton_pki::PkiError),
}

impl NodeApiTls {
    /// TLS for a node with a valid configuration: `machine.apiCertificate`, or one issued from
    /// the cluster CA key (control-plane nodes), or a self-signed one (a worker without one);
    /// callers are checked against the cluster CA. `addresses` go into an issued certificate.
    pub fn for_config(
        config: &MachineConfig,
        addresses: &[Ipv4Addr],
    ) -> Result<Self, NodeApiTlsError> {
        let hostname = &config.machine.hostname;
        let serving = match (&config.machine.api_certificate, &config.cluster.ca.key) {
            (Some(given), _) => CertAndKey {
                cert_pem: given.cert.clone(),
                key_pem: given.key.clone(),
            },
            (None, Some(key)) if config.machine.role == Role::ControlPlane => {
                ClusterCa::from_pem(&config.cluster.ca.cert, key)?
                    .issue_server(hostname, &serving_names(hostname, addresses))?
            }
            _ => self_signed(hostname, addresses)?,
        };
        Ok(NodeApiTls {
            serving,
            client_ca: Some(config.cluster.ca.cert.clone()),
        })
    }

    /// TLS with a given serving certificate, callers checked against `client_ca`.
    pub fn with_certificate(serving: CertAndKey, client_ca: String) -> Self {
        NodeApiTls {
            serving,
            client_ca: Some(client_ca),
        }
    }

    /// TLS for a node in maintenance mode without a usable configuration: a self-signed
    /// certificate and no client authentication.
    pub fn maintenance() -> Result<Self, NodeApiTlsError> {
        Ok(NodeApiTls {
            serving: self_signed("baton-node", &[])?,
            client_ca: None,
        })
    }

    /// Whether callers are authenticated.
    pub fn authenticates_callers(&self) -> bool {
        self.client_ca.is_some()
    }
}

fn serving_names(hostname: &str, addresses: &[Ipv4Addr]) -> Vec<String> {
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.extend(addresses.iter().map(ToString::to_string));
    names.dedup();
    names
}

fn self_signed(hostname: &str, addresses: &[Ipv4Addr]) -> Result<CertAndKey, baton_pki::PkiError> {
    ClusterCa::generate(&format!("{hostname} node API (self-signed)"))?
        .issue_server(hostname, &serving_names(hostname, addresses))
}

/// A running node API server.
#[derive(Debug)]
pub struct NodeApiServer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl NodeApiServer {
    /// Serves the node API for `state` on `address` with `tls`. Failures (the port taken) are
    /// logged: the node goes on without its API rather than not at all.
    pub fn start(state: Arc<NodeState>, tls: &NodeApiTls, address: SocketAddr) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            &tls.serving.cert_pem,
            &tls.serving.key_pem,
        ));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        let service = service::NodeApi::new(state, tls.authenticates_callers());
        let authenticated = tls.authenticates_callers();
        let task = tokio::spawn(async move {
            let mut server = match Server::builder().tls_config(config) {
                Ok(server) => server,
                Err(err) => {
                    tracing::error!(%err, "the node API's TLS configuration is refused");
                    return;
                }
            };
            tracing::info!(%address, authenticated, "node API serving");
            let served = server
                .add_service(NodeServer::new(service))
                .serve_with_shutdown(address, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(%address, "node API stopped: {}", baton_client::error_chain(&err));
            }
        });
        NodeApiServer {
            stop: Some(stop),
            task,
        }
    }

    /// Stops serving (open calls get a short grace) and frees the port.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}
