//! Pulling images from OCI registries with `oci-client`: the manifest (an index is resolved
//! to its linux/amd64 image; a reference pinned by digest must match it), the config, and the
//! layers (up to three at a time), each blob fetched only if the store lacks it and each layer
//! unpacked only if it is not unpacked yet.
//!
//! Errors read like containerd's, which is what users see in the kubelet's ErrImagePull
//! messages: `failed to pull and unpack image "docker.io/library/busybox:nope": failed to
//! resolve reference "docker.io/library/busybox:nope": docker.io/library/busybox:nope: not
//! found`.

use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::blobs::WriteBlobError;
use crate::image::{Image, ImageLayer};
use crate::index::ImageIndexError;
use crate::manifest::{InvalidImageError, MANIFEST_TYPES, ManifestOrIndex, assemble_image};
use crate::reference::{ImageReference, ParseReferenceError};
use crate::store::ImageStore;
use crate::unpack::UnpackLayerError;

/// Layers fetched and unpacked at the same time (containerd's default is 3 too).
const CONCURRENT_LAYERS: usize = 3;

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// HTTP basic authentication (also used to obtain a bearer token when the registry asks
    /// for one).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token.
    Bearer {
        /// The token.
        token: String,
    },
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host:port`, as in the reference) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials; anonymous when `None`.
    pub auth: Option<RegistryCredentials>,
}

/// Errors pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum PullImageError {
    /// The reference is not a valid image name.
    #[error(transparent)]
    InvalidReference(#[from] ParseReferenceError),
    /// The registry has no such manifest (tag or digest) or repository.
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to resolve reference \"{reference}\": {reference}: not found"
    )]
    NotFound {
        /// The normalised reference.
        reference: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to resolve reference \"{reference}\": pull access denied, repository does not exist or may require authorization: {detail}"
    )]
    Unauthorized {
        /// The normalised reference.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry could not be reached (connection refused, timeout, name resolution, TLS).
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to resolve reference \"{reference}\": failed to do request: {registry}: {cause}"
    )]
    Unreachable {
        /// The normalised reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// Why (`connection refused`, ...).
        cause: String,
    },
    /// Content did not match its digest: the manifest against a pinned digest, or a blob.
    #[error(
        "failed to pull and unpack image \"{reference}\": {what} digest mismatch: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        /// The normalised reference.
        reference: String,
        /// Which content (`manifest`, `blob sha256:…`, `layer sha256:… content`).
        what: String,
        /// The expected digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// Any other failure of the registry or of the protocol.
    #[error("failed to pull and unpack image \"{reference}\": {message}")]
    Registry {
        /// The normalised reference.
        reference: String,
        /// What failed.
        message: String,
    },
    /// The manifest or config does not describe a usable linux/amd64 image.
    #[error("failed to pull and unpack image \"{reference}\"")]
    InvalidImage {
        /// The normalised reference.
        reference: String,
        /// The cause.
        #[source]
        source: InvalidImageError,
    },
    /// A blob could not be stored.
    #[error("failed to pull and unpack image \"{reference}\": storing a blob")]
    WriteBlob {
        /// The normalised reference.
        reference: String,
        /// The cause.
        #[source]
        source: WriteBlobError,
    },
    /// A layer could not be unpacked.
    #[error("failed to pull and unpack image \"{reference}\": unpacking layer {digest}")]
    UnpackLayer {
        /// The normalised reference.
        reference: String,
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: UnpackLayerError,
    },
    /// The index could not be updated.
    #[error("failed to pull and unpack image \"{reference}\": recording the image")]
    Index {
        /// The normalised reference.
        reference: String,
        /// The cause.
        #[source]
        source: ImageIndexError,
    },
}

/// What a registry request was for (a missing manifest is "not found"; a missing blob is a
/// broken image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Manifest,
    Blob,
}

impl ImageStore {
    /// Pulls `reference` (normalised first: `busybox` is `docker.io/library/busybox:latest`)
    /// and returns the stored image. A reference pinned by digest (`name@sha256:…`) is
    /// verified against the manifest received. Blobs already present are not fetched again and
    /// layers already unpacked are not unpacked again.
    ///
    /// Installs rustls' ring provider as the process default when none is installed yet.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<Image, PullImageError> {
        let parsed = ImageReference::parse(reference)?;
        let pull = Pull {
            store: self,
            name: parsed.to_string(),
            client: client(options, &parsed)?,
            target: parsed.to_oci(),
            parsed,
        };
        let _shared = self.inner.content.read().await;
        let auth = match &options.auth {
            None => RegistryAuth::Anonymous,
            Some(RegistryCredentials::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(RegistryCredentials::Bearer { token }) => RegistryAuth::Bearer(token.clone()),
        };
        let started = std::time::Instant::now();
        let image = pull.run(&auth).await?;
        tracing::info!(reference = %pull.name, id = %image.id, elapsed = ?started.elapsed(), "pulled image");
        Ok(image)
    }
}

/// One pull.
struct Pull<'a> {
    store: &'a ImageStore,
    /// The normalised reference, as errors name it.
    name: String,
    parsed: ImageReference,
    client: Client,
    target: Reference,
}

impl Pull<'_> {
    async fn run(&self, auth: &RegistryAuth) -> Result<Image, PullImageError> {
        self.client
            .store_auth_if_needed(self.target.resolve_registry(), auth)
            .await;
        let (top_bytes, top_digest) = self
            .client
            .pull_manifest_raw(&self.target, auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.classify(e, Stage::Manifest, "manifest"))?;
        if let Some(pinned) = self.parsed.digest()
            && pinned != top_digest
        {
            return Err(self.mismatch("manifest", pinned, &top_digest));
        }
        let mut manifest =
            ManifestOrIndex::parse(&top_bytes, &top_digest).map_err(|e| self.invalid(e))?;
        let (manifest_bytes, manifest_digest) = if manifest.is_index() {
            let entry = manifest
                .select_platform(&top_digest)
                .map_err(|e| self.invalid(e))?;
            let platform_ref = self.target.clone_with_digest(entry.digest.clone());
            let (bytes, digest) = self
                .client
                .pull_manifest_raw(&platform_ref, auth, MANIFEST_TYPES)
                .await
                .map_err(|e| self.classify(e, Stage::Blob, "manifest"))?;
            manifest = ManifestOrIndex::parse(&bytes, &digest).map_err(|e| self.invalid(e))?;
            (bytes, digest)
        } else {
            (top_bytes, top_digest.clone())
        };
        manifest
            .check_image(&manifest_digest)
            .map_err(|e| self.invalid(e))?;
        self.store_manifest(&manifest_digest, &manifest_bytes)?;

        let config = manifest
            .config(&manifest_digest)
            .map_err(|e| self.invalid(e))?;
        self.fetch_blob(&config.digest, config.size()).await?;
        let config_bytes = self
            .store
            .inner
            .blobs
            .read(&config.digest)
            .map_err(|source| {
                self.write_error(WriteBlobError::Write {
                    path: self.store.root().join("blobs"),
                    source,
                })
            })?;
        let layers: Vec<(String, String, u64)> = manifest
            .layers
            .iter()
            .map(|l| {
                (
                    l.digest.clone(),
                    l.media_type.clone(),
                    l.size().unwrap_or_default(),
                )
            })
            .collect();
        let mut image = assemble_image(&config_bytes, &config.digest, &manifest_digest, &layers)
            .map_err(|e| self.invalid(e))?;

        // After the first failure no further layer starts, but the ones under way are awaited:
        // an unpack runs on a blocking thread that dropping its future would not stop, and the
        // pull must not return while it still writes into the store's tmp directory.
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<Result<(), PullImageError>> = futures::stream::iter(image.layers.clone())
            .map(|layer| {
                let failed = &failed;
                async move {
                    if failed.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(());
                    }
                    let result = self.fetch_and_unpack(&layer).await;
                    if result.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                }
            })
            .buffer_unordered(CONCURRENT_LAYERS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;

        if let Some(tagged) = self.parsed.tagged() {
            image.repo_tags.push(tagged);
        }
        if let Some(digested) = self.parsed.with_digest(&top_digest).digested() {
            image.repo_digests.push(digested);
        }
        self.store
            .commit(image)
            .map_err(|source| PullImageError::Index {
                reference: self.name.clone(),
                source,
            })
    }

    async fn fetch_and_unpack(&self, layer: &ImageLayer) -> Result<(), PullImageError> {
        if !self.store.inner.layers.contains(&layer.chain_id)
            || !self
                .store
                .inner
                .blobs
                .contains(&layer.digest, Some(layer.size))
        {
            self.fetch_blob(&layer.digest, Some(layer.size).filter(|s| *s > 0))
                .await?;
        }
        self.store
            .ensure_layer(layer)
            .await
            .map_err(|source| match source {
                UnpackLayerError::DiffIdMismatch { expected, actual } => {
                    PullImageError::DigestMismatch {
                        reference: self.name.clone(),
                        what: format!("layer {} content", layer.digest),
                        expected,
                        actual,
                    }
                }
                source => PullImageError::UnpackLayer {
                    reference: self.name.clone(),
                    digest: layer.digest.clone(),
                    source,
                },
            })
    }

    /// Downloads blob `digest` into the store unless it is there.
    async fn fetch_blob(&self, digest: &str, size: Option<u64>) -> Result<(), PullImageError> {
        let lock = self.store.inner.blob_locks.get(digest);
        let _guard = lock.lock().await;
        if self.store.inner.blobs.contains(digest, size) {
            tracing::debug!(digest, "blob already present");
            return Ok(());
        }
        let what = format!("blob {digest}");
        let mut writer = self
            .store
            .inner
            .blobs
            .writer(digest, size)
            .map_err(|e| self.write_error(e))?;
        let mut stream = self
            .client
            .pull_blob_stream(&self.target, digest)
            .await
            .map_err(|e| self.classify(e, Stage::Blob, &what))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(e, &what))?;
            writer
                .write(&chunk)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        writer.commit().await.map_err(|e| self.write_error(e))?;
        tracing::debug!(digest, "fetched blob");
        Ok(())
    }

    fn store_manifest(&self, digest: &str, bytes: &[u8]) -> Result<(), PullImageError> {
        let blobs = &self.store.inner.blobs;
        if blobs.contains(digest, Some(bytes.len() as u64)) {
            return Ok(());
        }
        blobs
            .write(digest, Some(bytes.len() as u64), bytes)
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }

    /// An oci-client error in the words users recognise.
    fn classify(&self, error: OciDistributionError, stage: Stage, what: &str) -> PullImageError {
        let reference = self.name.clone();
        let not_found = |reference: String| match stage {
            Stage::Manifest => PullImageError::NotFound { reference },
            Stage::Blob => PullImageError::Registry {
                reference,
                message: format!("failed to copy {what}: not found"),
            },
        };
        match error {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .filter(|m| !m.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(reference)
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    PullImageError::Unauthorized {
                        reference,
                        detail: message,
                    }
                } else {
                    PullImageError::Registry {
                        reference,
                        message: format!("fetching {what}: {message}"),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => not_found(reference),
            OciDistributionError::ServerError {
                code: code @ (401 | 403),
                message,
                ..
            } => PullImageError::Unauthorized {
                reference,
                detail: format!("{code}: {}", message.trim()),
            },
            OciDistributionError::UnauthorizedError { .. } => PullImageError::Unauthorized {
                reference,
                detail: "authorization failed".to_string(),
            },
            OciDistributionError::AuthenticationFailure(message) => PullImageError::Unauthorized {
                reference,
                detail: message.trim().to_string(),
            },
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => self.mismatch(what, &expected, &actual),
            OciDistributionError::RequestError(e) => PullImageError::Unreachable {
                reference,
                registry: self.parsed.registry().to_string(),
                cause: transport_cause(&e),
            },
            other => PullImageError::Registry {
                reference,
                message: format!("fetching {what}: {other}"),
            },
        }
    }

    /// An error while streaming a blob: a digest check of oci-client, or the transport.
    fn stream_error(&self, error: std::io::Error, what: &str) -> PullImageError {
        if let Some(DigestError::VerificationError { expected, actual }) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<DigestError>())
        {
            return self.mismatch(what, expected, actual);
        }
        PullImageError::Registry {
            reference: self.name.clone(),
            message: format!("reading {what}: {}", transport_cause(&error)),
        }
    }

    fn mismatch(&self, what: &str, expected: &str, actual: &str) -> PullImageError {
        PullImageError::DigestMismatch {
            reference: self.name.clone(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    fn write_error(&self, error: WriteBlobError) -> PullImageError {
        match error {
            WriteBlobError::DigestMismatch { expected, actual } => {
                self.mismatch(&format!("blob {expected}"), &expected, &actual)
            }
            source => PullImageError::WriteBlob {
                reference: self.name.clone(),
                source,
            },
        }
    }

    fn invalid(&self, source: InvalidImageError) -> PullImageError {
        PullImageError::InvalidImage {
            reference: self.name.clone(),
            source,
        }
    }
}

/// The oci-client for a pull: plain HTTP for the insecure registries, bounded connect time.
fn client(options: &PullOptions, reference: &ImageReference) -> Result<Client, PullImageError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut insecure = options.insecure_registries.clone();
    if insecure.iter().any(|r| r == "docker.io") {
        insecure.push("index.docker.io".to_string());
    }
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| PullImageError::Registry {
        reference: reference.to_string(),
        message: format!("setting up the registry client: {e}"),
    })
}

/// The innermost cause of a transport error, in words (`connection refused`).
fn transport_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | NotConnected
            ) {
                return io.kind().to_string();
            }
        }
        match current.source() {
            Some(next) => current = next,
            None => return current.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let basic = RegistryCredentials::Basic {
            username: "me".into(),
            password: "secret".into(),
        };
        let bearer = RegistryCredentials::Bearer {
            token: "s3cr3t".into(),
        };
        let text = format!(
            "{:?}",
            PullOptions {
                insecure_registries: vec![],
                auth: Some(basic),
            }
        );
        assert!(text.contains("me") && !text.contains("secret"), "{text}");
        assert!(!format!("{bearer:?}").contains("s3cr3t"));
    }

    #[test]
    fn messages_read_like_containerd() {
        let err = PullImageError::NotFound {
            reference: "localhost:5000/busybox:nope".into(),
        };
        assert_eq!(
            err.to_string(),
            "failed to pull and unpack image \"localhost:5000/busybox:nope\": failed to resolve reference \"localhost:5000/busybox:nope\": localhost:5000/busybox:nope: not found"
        );
    }

    #[test]
    fn transport_causes_are_named_by_kind() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = std::io::Error::other(io);
        assert_eq!(transport_cause(&wrapped), "connection refused");
        let plain = std::io::Error::other("tls handshake failed");
        assert_eq!(transport_cause(&plain), "tls handshake failed");
    }
}
