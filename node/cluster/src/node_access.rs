//! Reaching a cluster's nodes through their node API: `baton node --cluster NAME --node NODE`
//! connects from inside the cluster's network namespace with the admin identity that
//! `create` wrote beside the cluster's state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baton_node_api::{ClientCredentials, NODE_API_PORT, NodeTarget};
use baton_pki::CertAndKey;

use crate::state::{ClusterState, ClusterStateError, cluster_dir};

/// The PEM files of the admin identity for the node API, in a cluster's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeApiCredentialFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// The admin client certificate (group `system:masters`).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl NodeApiCredentialFiles {
    /// The files in cluster directory `dir`.
    pub fn under(dir: &Path) -> Self {
        NodeApiCredentialFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("admin.crt"),
            key: dir.join("admin.key"),
        }
    }

    /// Writes the CA certificate and the admin identity (the key readable by root only).
    pub fn write(&self, ca_pem: &str, admin: &CertAndKey) -> Result<(), baton_pki::PkiError> {
        baton_pki::write_file(&self.ca, ca_pem, 0o644)?;
        baton_pki::write_file(&self.cert, &admin.cert_pem, 0o644)?;
        baton_pki::write_file(&self.key, &admin.key_pem, 0o600)
    }

    /// Reads them back as client credentials.
    pub fn read(&self) -> Result<ClientCredentials, NodeAccessError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| NodeAccessError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(ClientCredentials {
            ca_pem: Some(read(&self.ca)?),
            client: Some((read(&self.cert)?, read(&self.key)?)),
        })
    }
}

/// Why a cluster's node could not be addressed.
#[derive(Debug, thiserror::Error)]
pub enum NodeAccessError {
    /// The cluster's state could not be read.
    #[error("cluster {0}")]
    State(String, #[source] ClusterStateError),
    /// The cluster has no node of that name.
    #[error("cluster {cluster} has no node {node} (its nodes: {known})")]
    NoNode {
        /// The cluster.
        cluster: String,
        /// The name asked for.
        node: String,
        /// The nodes it has.
        known: String,
    },
    /// A credential file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The node API target and credentials of node `node` of cluster `cluster`.
pub fn node_access(
    cluster: &str,
    node: &str,
) -> Result<(NodeTarget, ClientCredentials), NodeAccessError> {
    let dir = cluster_dir(cluster);
    let state =
        ClusterState::load(&dir).map_err(|err| NodeAccessError::State(cluster.into(), err))?;
    let found =
        state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| NodeAccessError::NoNode {
                cluster: cluster.into(),
                node: node.into(),
                known: state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    let target = NodeTarget::Tcp {
        address: SocketAddr::from((found.ip, NODE_API_PORT)),
        netns: Some(state.netns.clone()),
    };
    Ok((target, NodeApiCredentialFiles::under(&dir).read()?))
}
