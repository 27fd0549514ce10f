//! The kube-rs plumbing that Baton's API clients (scheduler, controller manager, simulated
//! nodes, later the kubelet and proxy) share: a client from a kubeconfig file, and shared
//! informers, so that one watch and one cache of a resource serve every controller in a process.

pub mod informer;

use std::path::Path;

pub use informer::{Informer, InformerEvent};

/// Connecting to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading client configuration")]
    Config(#[source] kube::config::KubeconfigError),
    #[error("inferring client configuration (no --kubeconfig given)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the client")]
    Client(#[source] kube::Error),
}

/// A client for the cluster `kubeconfig` points at (or the usual inference: $KUBECONFIG,
/// ~/.kube/config, in-cluster), with `user_agent` sent on every request.
pub async fn connect(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Client, ConnectError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::ReadKubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(ConnectError::Config)?
        }
        None => kube::Config::infer().await.map_err(ConnectError::Infer)?,
    };
    if let Ok(value) = http::HeaderValue::from_str(user_agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    kube::Client::try_from(config).map_err(ConnectError::Client)
}
