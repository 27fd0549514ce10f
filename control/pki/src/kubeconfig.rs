//! Rendering kubeconfig files (the `clientcmd` v1 Config format) with embedded credentials.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::CertAndKey;

/// The parts of a single-cluster, single-user kubeconfig.
#[derive(Debug)]
pub struct Kubeconfig<'a> {
    /// The cluster (and context) name.
    pub cluster: &'a str,
    /// The API server URL.
    pub server: &'a str,
    /// The cluster CA certificate, PEM.
    pub ca_pem: &'a str,
    /// The user name in the file.
    pub user: &'a str,
    /// The client certificate and key.
    pub client: &'a CertAndKey,
}

/// Renders a kubeconfig with the certificates inlined as base64 data, as kubeadm writes it.
pub fn render_kubeconfig(cfg: &Kubeconfig<'_>) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let context = format!("{}@{}", cfg.user, cfg.cluster);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user}
current-context: {context}
preferences: {{}}
",
        cluster = cfg.cluster,
        server = cfg.server,
        ca = b64(cfg.ca_pem),
        user = cfg.user,
        cert = b64(&cfg.client.cert_pem),
        key = b64(&cfg.client.key_pem),
    )
}
