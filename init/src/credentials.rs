//! The node's credentials on disk, from its machine configuration: the cluster CA, and the
//! kubeconfigs its services use. Control-plane nodes issue what they need from the cluster
//! CA (the API server's serving and kubelet-client certificates, the admin identity, and their
//! own node identity when the configuration carries none).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use baton_pki::{CertAndKey, ClusterCa, Kubeconfig, render_kubeconfig, write_file};

use crate::machine_config::{MachineConfig, Role};

/// Where a node's credentials live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialPaths {
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// The kubeconfig of the kubelet, the proxy and DNS (the node identity).
    pub node_kubeconfig: PathBuf,
    /// Control plane only: the API server's serving certificate and key.
    pub apiserver_cert: PathBuf,
    /// See `apiserver_cert`.
    pub apiserver_key: PathBuf,
    /// Control plane only: the API server's client certificate and key for kubelets.
    pub kubelet_client_cert: PathBuf,
    /// See `kubelet_client_cert`.
    pub kubelet_client_key: PathBuf,
    /// Control plane only: the admin kubeconfig (scheduler, controller manager, and what the
    /// node API hands out).
    pub admin_kubeconfig: PathBuf,
    /// Control plane only, when the configuration carries one: the service account token
    /// signing key (kubeadm's `sa.key`).
    pub service_account_key: PathBuf,
    /// Its public key (`sa.pub`).
    pub service_account_pub: PathBuf,
}

impl CredentialPaths {
    /// The paths under `dir` (`/etc/kubernetes` on a node).
    pub fn under(dir: &Path) -> Self {
        let pki = dir.join("pki");
        CredentialPaths {
            ca_cert: pki.join("ca.crt"),
            node_kubeconfig: dir.join("node.kubeconfig"),
            apiserver_cert: pki.join("apiserver.crt"),
            apiserver_key: pki.join("apiserver.key"),
            kubelet_client_cert: pki.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: pki.join("apiserver-kubelet-client.key"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            service_account_key: pki.join("sa.key"),
            service_account_pub: pki.join("sa.pub"),
        }
    }
}

/// Why the node's credentials could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteCredentialsError {
    /// Issuing or writing a certificate or kubeconfig failed.
    #[error("writing the node's credentials")]
    Pki(#[from] baton_pki::PkiError),
    /// Neither machine.identity nor cluster.ca.key is given.
    #[error("the node has no identity: machine.identity and cluster.ca.key are both missing")]
    NoIdentity,
}

/// The API server URL the node's own services use: the local API server on a control-plane
/// node, the local endpoint to every control-plane node's on a worker
/// ([`crate::api_balancer`]).
pub fn local_server(config: &MachineConfig, secure_port: u16) -> String {
    match config.machine.role {
        Role::ControlPlane => format!("https://127.0.0.1:{secure_port}"),
        Role::Worker => crate::api_balancer::local_endpoint(),
    }
}

/// Writes the credentials `config` calls for under `dir`; `node_ip` goes into the API server's
/// certificate.
pub fn write_credentials(
    config: &MachineConfig,
    dir: &Path,
    node_ip: Option<Ipv4Addr>,
    secure_port: u16,
) -> Result<CredentialPaths, WriteCredentialsError> {
    let paths = CredentialPaths::under(dir);
    let cluster = &config.cluster;
    let hostname = &config.machine.hostname;
    let server = local_server(config, secure_port);
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(|source| baton_pki::PkiError::Io {
        path: pki_dir,
        source,
    })?;
    write_file(&paths.ca_cert, &cluster.ca.cert, 0o644)?;
    let node_identity = match (&config.machine.identity, &cluster.ca.key) {
        (Some(identity), _) => CertAndKey {
            cert_pem: identity.cert.clone(),
            key_pem: identity.key.clone(),
        },
        (None, Some(key)) => ClusterCa::from_pem(&cluster.ca.cert, key)?
            .issue_client(&format!("system:node:{hostname}"), Some("system:nodes"))?,
        (None, None) => return Err(WriteCredentialsError::NoIdentity),
    };
    write_kubeconfig(
        &paths.node_kubeconfig,
        &cluster.name,
        &server,
        &cluster.ca.cert,
        &format!("system:node:{hostname}"),
        &node_identity,
    )?;
    if let (Role::ControlPlane, Some(key)) = (config.machine.role, &cluster.ca.key) {
        let ca = ClusterCa::from_pem(&cluster.ca.cert, key)?;
        let mut sans: Vec<String> = vec![
            "127.0.0.1".into(),
            "localhost".into(),
            hostname.clone(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{}", cluster.dns.domain),
            first_service_ip(config).to_string(),
            baton_pki::server_host(&cluster.endpoint)?,
        ];
        sans.extend(node_ip.map(|ip| ip.to_string()));
        sans.sort();
        sans.dedup();
        let serving = ca.issue_server("kube-apiserver", &sans)?;
        write_file(&paths.apiserver_cert, &serving.cert_pem, 0o644)?;
        write_file(&paths.apiserver_key, &serving.key_pem, 0o600)?;
        let kubelet_client =
            ca.issue_client(baton_pki::KUBELET_CLIENT_USER, Some(baton_pki::ADMIN_GROUP))?;
        write_file(&paths.kubelet_client_cert, &kubelet_client.cert_pem, 0o644)?;
        write_file(&paths.kubelet_client_key, &kubelet_client.key_pem, 0o600)?;
        if let Some(key) = &cluster.service_account_key {
            let service_account = baton_pki::ServiceAccountKey::from_private_pem(key)?;
            write_file(&paths.service_account_key, &service_account.key_pem, 0o600)?;
            write_file(
                &paths.service_account_pub,
                &service_account.public_pem,
                0o644,
            )?;
        }
        let admin = ca.issue_client(baton_pki::ADMIN_USER, Some(baton_pki::ADMIN_GROUP))?;
        write_kubeconfig(
            &paths.admin_kubeconfig,
            &cluster.name,
            &server,
            &cluster.ca.cert,
            baton_pki::ADMIN_USER,
            &admin,
        )?;
    }
    Ok(paths)
}

/// The admin kubeconfig a control-plane node hands out: the cluster endpoint, a fresh admin
/// client certificate.
pub fn admin_kubeconfig(config: &MachineConfig) -> Result<Option<String>, WriteCredentialsError> {
    let cluster = &config.cluster;
    let Some(key) = &cluster.ca.key else {
        return Ok(None);
    };
    let ca = ClusterCa::from_pem(&cluster.ca.cert, key)?;
    let admin = ca.issue_client(baton_pki::ADMIN_USER, Some(baton_pki::ADMIN_GROUP))?;
    Ok(Some(render_kubeconfig(&Kubeconfig {
        cluster: &cluster.name,
        server: &cluster.endpoint,
        ca_pem: &cluster.ca.cert,
        user: baton_pki::ADMIN_USER,
        client: &admin,
    })))
}

/// The first address of the Service range: the `kubernetes` Service's ClusterIP.
pub fn first_service_ip(config: &MachineConfig) -> Ipv4Addr {
    let network = u32::from(config.cluster.service_cidr.network());
    Ipv4Addr::from(network + 1)
}

fn write_kubeconfig(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &CertAndKey,
) -> Result<(), baton_pki::PkiError> {
    let kubeconfig = render_kubeconfig(&Kubeconfig {
        cluster,
        server,
        ca_pem,
        user,
        client,
    });
    write_file(path, &kubeconfig, 0o600)
}
