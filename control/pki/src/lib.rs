//! Cluster PKI: a cluster CA, the API server's serving certificate, client certificates
//! (CN = user, O = groups) and kubeconfig files that embed them.
//!
//! File names follow kubeadm's (`ca.crt`, `ca.key`, `apiserver.crt`, `apiserver.key`), plus
//! `admin.kubeconfig` for the cluster administrator (user `kubernetes-admin`, group
//! `system:masters`).

mod kubeconfig;

pub use kubeconfig::{Kubeconfig, render_kubeconfig};

pub mod tls;

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The default API server URL written into kubeconfigs.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";
/// The administrator's user name, as kubeadm names it.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The group that upstream's RBAC binds to cluster-admin.
pub const ADMIN_GROUP: &str = "system:masters";
/// The user the API server acts as toward kubelets (kubeadm names it so).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// How long a CA certificate is valid (kubeadm: 10 years).
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a leaf certificate is valid (kubeadm: 1 year).
const LEAF_VALIDITY: Duration = Duration::days(365);

/// A failure to create or load the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or certificate could not be generated or parsed.
    #[error("{what}")]
    Crypto {
        /// What was being done.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
    /// A service account key is not an ECDSA P-256 key in PKCS#8 PEM (all Baton signs with).
    #[error(
        "the service account key is not an ECDSA P-256 private key in PKCS#8 PEM (\"BEGIN PRIVATE KEY\")"
    )]
    ServiceAccountKey,
    /// The `--server` URL is not an https URL.
    #[error("--server: {0:?} is not an https://HOST:PORT URL")]
    InvalidServer(String),
}

/// A service account signing key: the ECDSA P-256 private key (PEM, PKCS#8) the API server
/// signs tokens with, and its public key (PEM, SubjectPublicKeyInfo) that verifies them.
#[derive(Clone)]
pub struct ServiceAccountKey {
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The public key, PEM.
    pub public_pem: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Makes a new key.
    pub fn generate() -> Result<Self, PkiError> {
        let key =
            KeyPair::generate().map_err(crypto("generating the service account signing key"))?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }

    /// The public half of a PEM private key, which must be ECDSA P-256 in PKCS#8.
    pub fn from_private_pem(key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .ok()
            .filter(|key| {
                key_pem.contains("-----BEGIN PRIVATE KEY-----")
                    && key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256
            })
            .ok_or(PkiError::ServiceAccountKey)?;
        Ok(Self {
            key_pem: key_pem.to_string(),
            public_pem: key.public_key_pem(),
        })
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertAndKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The cluster's certificate authority, able to sign certificates.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Crypto {
        what: what.to_string(),
        source,
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // Back-date a little so that clocks that disagree by a few minutes still accept it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + lifetime;
}

impl ClusterCa {
    /// Makes a new self-signed CA named `name`.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(crypto("signing the CA certificate"))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(crypto("parsing the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(crypto("parsing the CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join("ca.crt"))?;
        let key = read(&dir.join("ca.key"))?;
        Self::from_pem(&cert, &key)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a serving certificate for `common_name` valid for the given DNS names and IPs.
    pub fn issue_server(&self, common_name: &str, sans: &[String]) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => san
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(crypto("encoding a DNS name")),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY);
        self.sign(params, "signing a serving certificate")
    }

    /// Issues a client certificate for `user` (CN) in `group` (O), the way Kubernetes reads
    /// client certificates. One group at most: rcgen's distinguished names hold one value per
    /// attribute type, and every Kubernetes component needs at most one
    /// (`system:masters`, `system:nodes` ...).
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        if let Some(group) = group {
            dn.push(DnType::OrganizationName, group);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY);
        self.sign(params, "signing a client certificate")
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<CertAndKey, PkiError> {
        let key = KeyPair::generate().map_err(crypto("generating a key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto(what))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What `baton pki init` is asked to make.
#[derive(Debug, Clone)]
pub struct PkiInitOptions {
    /// The directory to write into (created if missing).
    pub dir: PathBuf,
    /// The API server URL written into the admin kubeconfig.
    pub server: String,
    /// Extra DNS names and IP addresses for the serving certificate.
    pub sans: Vec<String>,
}

/// The files `init` wrote.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// ca.crt
    pub ca_cert: PathBuf,
    /// ca.key
    pub ca_key: PathBuf,
    /// apiserver.crt
    pub apiserver_cert: PathBuf,
    /// apiserver.key
    pub apiserver_key: PathBuf,
    /// admin.kubeconfig
    pub admin_kubeconfig: PathBuf,
    /// apiserver-kubelet-client.crt: the API server's client certificate for kubelets
    /// (pods/log, pods/exec ...).
    pub apiserver_kubelet_client_cert: PathBuf,
    /// apiserver-kubelet-client.key
    pub apiserver_kubelet_client_key: PathBuf,
    /// sa.key: the service account token signing key (kubeadm's name).
    pub service_account_key: PathBuf,
    /// sa.pub: its public key, which verifies the tokens.
    pub service_account_pub: PathBuf,
    /// Whether an existing CA in the directory was reused.
    pub reused_ca: bool,
}

/// Returns the host part of an `https://HOST:PORT` URL, or an error naming `--server`.
pub fn server_host(server: &str) -> Result<String, PkiError> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| PkiError::InvalidServer(server.to_string()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    };
    if host.is_empty() {
        return Err(PkiError::InvalidServer(server.to_string()));
    }
    Ok(host)
}

/// Makes (or completes) the cluster PKI in `opts.dir`: a CA (reused when `ca.crt` and `ca.key`
/// exist), the API server's serving certificate, the admin kubeconfig, and the service account
/// signing key (reused when `sa.key` exists, so tokens already issued stay valid).
///
/// Every file is written to a temporary name and renamed, so an interrupted run never leaves
/// a half-written file; all inputs are checked before anything is written.
pub fn init(opts: &PkiInitOptions) -> Result<PkiFiles, PkiError> {
    let host = server_host(&opts.server)?;
    let mut sans: Vec<String> = vec![
        "127.0.0.1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        host,
    ];
    for san in &opts.sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    sans.dedup();

    let dir = &opts.dir;
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let reused_ca = ca_cert.exists() && ca_key.exists();
    let ca = if reused_ca {
        ClusterCa::load(dir)?
    } else {
        ClusterCa::generate("kubernetes")?
    };
    let sa_key_path = dir.join("sa.key");
    let service_account = if sa_key_path.exists() {
        ServiceAccountKey::from_private_pem(&read(&sa_key_path)?)?
    } else {
        ServiceAccountKey::generate()?
    };
    let serving = ca.issue_server("kube-apiserver", &sans)?;
    let admin = ca.issue_client(ADMIN_USER, Some(ADMIN_GROUP))?;
    let kubelet_client = ca.issue_client(KUBELET_CLIENT_USER, Some(ADMIN_GROUP))?;
    let kubeconfig = render_kubeconfig(&Kubeconfig {
        cluster: "baton",
        server: &opts.server,
        ca_pem: ca.cert_pem(),
        user: ADMIN_USER,
        client: &admin,
    });

    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.clone(),
        source,
    })?;
    if !reused_ca {
        write_file(&ca_cert, ca.cert_pem(), 0o644)?;
        write_file(&ca_key, ca.key_pem(), 0o600)?;
    }
    let files = PkiFiles {
        apiserver_cert: dir.join("apiserver.crt"),
        apiserver_key: dir.join("apiserver.key"),
        admin_kubeconfig: dir.join("admin.kubeconfig"),
        apiserver_kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        apiserver_kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        service_account_pub: dir.join("sa.pub"),
        service_account_key: sa_key_path,
        ca_cert,
        ca_key,
        reused_ca,
    };
    write_file(&files.apiserver_cert, &serving.cert_pem, 0o644)?;
    write_file(&files.apiserver_key, &serving.key_pem, 0o600)?;
    write_file(&files.admin_kubeconfig, &kubeconfig, 0o600)?;
    write_file(
        &files.apiserver_kubelet_client_cert,
        &kubelet_client.cert_pem,
        0o644,
    )?;
    write_file(
        &files.apiserver_kubelet_client_key,
        &kubelet_client.key_pem,
        0o600,
    )?;
    write_file(&files.service_account_key, &service_account.key_pem, 0o600)?;
    write_file(
        &files.service_account_pub,
        &service_account.public_pem,
        0o644,
    )?;
    tracing::info!(dir = %dir.display(), reused_ca, "cluster PKI written");
    Ok(files)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with `mode` through a temporary file and a rename.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem_text: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("pem");
        pem.contents
    }

    #[test]
    fn client_certificate_carries_user_and_groups() {
        let ca = ClusterCa::generate("test-ca").unwrap();
        let client = ca.issue_client("alice", Some("dev")).unwrap();
        let der = parse(&client.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["alice"]);
        assert_eq!(orgs, ["dev"]);
        assert_eq!(
            cert.issuer()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "test-ca"
        );
    }

    #[test]
    fn init_writes_kubeadm_file_names_and_reuses_the_ca() {
        /// Removes the directory however the test ends.
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("baton-pki-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let _cleanup = Cleanup(dir.clone());
        let opts = PkiInitOptions {
            dir: dir.clone(),
            server: "https://10.0.0.1:6443".into(),
            sans: vec!["api.example".into()],
        };
        let first = init(&opts).unwrap();
        assert!(!first.reused_ca);
        let ca_before = fs::read_to_string(&first.ca_cert).unwrap();
        let sa_before = fs::read_to_string(&first.service_account_key).unwrap();
        let second = init(&opts).unwrap();
        assert!(second.reused_ca);
        assert_eq!(ca_before, fs::read_to_string(&second.ca_cert).unwrap());
        assert_eq!(
            sa_before,
            fs::read_to_string(&second.service_account_key).unwrap(),
            "the service account key is kept, so issued tokens stay valid"
        );
        let public = fs::read_to_string(&second.service_account_pub).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        assert_eq!(
            ServiceAccountKey::from_private_pem(&sa_before)
                .unwrap()
                .public_pem,
            public
        );

        let serving = fs::read_to_string(&second.apiserver_cert).unwrap();
        let der = parse(&serving);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(names.contains(&GeneralName::DNSName("localhost")));
        assert!(names.contains(&GeneralName::DNSName("api.example")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(
            names.contains(&GeneralName::IPAddress(&[10, 0, 0, 1])),
            "host of --server"
        );
        let kubeconfig = fs::read_to_string(&second.admin_kubeconfig).unwrap();
        assert!(kubeconfig.contains("server: https://10.0.0.1:6443"));
    }

    #[test]
    fn server_url_must_be_https() {
        assert!(matches!(
            server_host("http://x:1"),
            Err(PkiError::InvalidServer(_))
        ));
        assert_eq!(server_host("https://[::1]:6443").unwrap(), "::1");
        assert_eq!(server_host("https://api.local:6443").unwrap(), "api.local");
    }
}
