//! Server TLS from PEM files, for the API server's and the kubelet's HTTPS listeners: rustls on
//! ring with the serving certificate, and client certificates verified against
//! `--client-ca-file` (optional for the API server, whose handler answers anonymous requests
//! 401; required by the kubelet); and the client-side verifier for servers whose certificate
//! cannot be checked ([`AnyServerCertificate`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A failure to set up the TLS listener, naming the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{flag} {path}: {detail}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("--client-ca-file: {0}")]
    ClientCa(String),
}

fn file_err(flag: &'static str, path: &Path, detail: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        flag,
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads all certificates in a PEM file.
pub fn read_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let data = std::fs::read(path).map_err(|e| file_err(flag, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_err(flag, path, "no PEM certificate in file"));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let data = std::fs::read(path).map_err(|e| file_err(flag, path, e))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| file_err(flag, path, e))
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified when presented; a client without one is let through (anonymous).
    Optional,
    /// A connection without a valid client certificate is refused.
    Required,
}

/// Builds the server TLS configuration: `cert_file`/`key_file` serve, clients are verified
/// against `client_ca_file` when given (`client_auth` says whether they must present one).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("--tls-cert-file", cert_file)?;
    let key = read_key("--tls-private-key-file", key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_file {
        Some(client_ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs("--client-ca-file", client_ca_file)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            }
            .build()
            .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::General(msg) => file_err("--tls-private-key-file", key_file, msg),
        other => TlsSetupError::Rustls(other),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
/// A client's verifier that accepts whatever certificate the server shows, checking only the
/// handshake's signatures: what kube-apiserver does with kubelets without
/// --kubelet-certificate-authority, and `baton node --insecure` with a node in maintenance
/// mode. Only for servers with no certificate a client could check.
#[derive(Debug)]
pub struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyServerCertificate {
    /// The verifier, checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        AnyServerCertificate(provider)
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
