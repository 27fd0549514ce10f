//! Pushing an image of an OCI layout directory to a registry with `oci-client`: blobs the
//! registry lacks, then the manifest's exact bytes (so its digest stays the layout's).

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::oci_layout::{OciLayout, ReadLayoutError};

/// Errors pushing an image to a registry.
#[derive(Debug, thiserror::Error)]
pub enum PushImageError {
    /// The target reference does not parse.
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::ParseError,
    },
    /// The layout does not hold the image or one of its blobs.
    #[error("reading the image layout")]
    Layout(#[from] ReadLayoutError),
    /// The manifest has a media type the registry cannot be told about.
    #[error("manifest {digest} has an unusable media type {media_type:?}")]
    MediaType {
        /// The manifest digest.
        digest: String,
        /// The media type.
        media_type: String,
    },
    /// The registry refused or failed a request.
    #[error("pushing {what} to {reference}")]
    Registry {
        /// What was being pushed.
        what: String,
        /// The target reference.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
}

/// Pushes the image of `layout_dir` to `reference` and returns the manifest digest. The
/// image is the index entry whose `org.opencontainers.image.ref.name` is `reference`, or the
/// layout's only image. With `insecure`, the registry is spoken to over plain HTTP.
///
/// Installs rustls' ring provider as the process default when none is installed yet.
pub async fn push_layout(
    layout_dir: &Path,
    reference: &str,
    insecure: bool,
) -> Result<String, PushImageError> {
    push_layout_with_credentials(layout_dir, reference, insecure, None).await
}

/// [`push_layout`] authenticating with HTTP basic credentials (`username`, `password`).
pub async fn push_layout_with_credentials(
    layout_dir: &Path,
    reference: &str,
    insecure: bool,
    credentials: Option<(&str, &str)>,
) -> Result<String, PushImageError> {
    let target: Reference =
        reference
            .parse()
            .map_err(|source| PushImageError::InvalidReference {
                reference: reference.to_string(),
                source,
            })?;
    let layout = OciLayout::open(layout_dir)?;
    let entry = match layout.find_image(Some(reference)) {
        Ok(entry) => entry,
        Err(ReadLayoutError::ImageNotFound { .. }) => layout.find_image(None)?,
        Err(e) => return Err(e.into()),
    };
    let manifest_bytes = layout.read_blob(&entry.digest)?;
    let manifest = layout.read_manifest(&entry.digest)?;
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| entry.media_type.clone());
    let content_type =
        http::HeaderValue::from_str(&media_type).map_err(|_| PushImageError::MediaType {
            digest: entry.digest.clone(),
            media_type: media_type.clone(),
        })?;

    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let protocol = if insecure {
        ClientProtocol::HttpsExcept(vec![target.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = match credentials {
        Some((username, password)) => RegistryAuth::Basic(username.into(), password.into()),
        None => RegistryAuth::Anonymous,
    };
    client
        .store_auth_if_needed(target.resolve_registry(), &auth)
        .await;
    let registry_error = |what: &str| {
        let what = what.to_string();
        let reference = reference.to_string();
        move |source| PushImageError::Registry {
            what,
            reference,
            source,
        }
    };

    let blobs = std::iter::once(&manifest.config).chain(&manifest.layers);
    for blob in blobs {
        let exists = client
            .blob_exists(&target, &blob.digest)
            .await
            .map_err(registry_error(&format!("blob {}", blob.digest)))?;
        if exists {
            tracing::debug!(digest = %blob.digest, "blob already in the registry");
            continue;
        }
        let data = layout.read_blob(&blob.digest)?;
        client
            .push_blob(&target, data, &blob.digest)
            .await
            .map_err(registry_error(&format!("blob {}", blob.digest)))?;
    }
    client
        .push_manifest_raw(&target, manifest_bytes, content_type)
        .await
        .map_err(registry_error("the manifest"))?;
    tracing::info!(reference, digest = %entry.digest, "pushed image");
    Ok(entry.digest)
}
