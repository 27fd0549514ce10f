//! OCI and Docker manifests and indexes as the store reads them (leniently: unknown fields are
//! ignored), the media types it accepts, platform selection (linux/amd64), and the assembly of
//! an image record from a manifest and its config.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::chain_ids;
use crate::image::{ConfigFile, Image, ImageLayer};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed Docker layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Gzip-compressed Docker layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Media types of layers the store can unpack (tar, gzip; OCI, Docker, non-distributable).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    DOCKER_LAYER_TAR,
    DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Media types of manifests and indexes the store asks registries for.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Whether the store can unpack layers of `media_type`.
pub fn is_layer_type(media_type: &str) -> bool {
    LAYER_TYPES.contains(&media_type)
}

/// Whether `media_type` is an image config (or unset, as in some old manifests).
pub fn is_config_type(media_type: &str) -> bool {
    media_type.is_empty() || media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

/// An image that cannot be assembled from its manifest and config.
#[derive(Debug, thiserror::Error)]
pub enum InvalidImageError {
    /// A manifest or index is not valid JSON of the expected shape.
    #[error("invalid manifest {digest}")]
    Manifest {
        /// Its digest.
        digest: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The config is not valid JSON.
    #[error("invalid image config {digest}")]
    Config {
        /// Its digest.
        digest: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The config is not an image config (an artifact, a Helm chart, ...).
    #[error("{digest} is not a container image: config media type {media_type:?}")]
    NotAnImage {
        /// The manifest digest.
        digest: String,
        /// The config media type.
        media_type: String,
    },
    /// A layer has a media type the store cannot unpack.
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// The layer digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// The manifest and the config disagree on the number of layers.
    #[error("manifest {digest} has {layers} layers but its config lists {diff_ids} diff IDs")]
    LayerCount {
        /// The manifest digest.
        digest: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// An image index has no image for linux/amd64.
    #[error("no match for platform linux/amd64 in image index {digest}")]
    NoMatchingPlatform {
        /// The index digest.
        digest: String,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The size, when the descriptor gives a valid one.
    pub fn size(&self) -> Option<u64> {
        u64::try_from(self.size).ok().filter(|s| *s > 0)
    }

    /// An annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A platform of an index entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// A manifest or an index: which one is told by the media type or by the fields present.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestOrIndex {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestOrIndex {
    /// Parses manifest or index `digest`.
    pub fn parse(data: &[u8], digest: &str) -> Result<Self, InvalidImageError> {
        serde_json::from_slice(data).map_err(|source| InvalidImageError::Manifest {
            digest: digest.to_string(),
            source,
        })
    }

    /// Whether this is an index (manifest list).
    pub fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            _ => self.manifests.is_some() && self.config.is_none(),
        }
    }

    /// The linux/amd64 entry of an index (or its only entry if that has no platform).
    pub fn select_platform(&self, digest: &str) -> Result<&Descriptor, InvalidImageError> {
        let entries = self.manifests.as_deref().unwrap_or_default();
        let linux_amd64 = entries.iter().find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        });
        let only = match entries {
            [one] if one.platform.is_none() => Some(one),
            _ => None,
        };
        linux_amd64
            .or(only)
            .ok_or_else(|| InvalidImageError::NoMatchingPlatform {
                digest: digest.to_string(),
            })
    }

    /// The config descriptor of a manifest.
    pub fn config(&self, digest: &str) -> Result<&Descriptor, InvalidImageError> {
        self.config
            .as_ref()
            .ok_or_else(|| InvalidImageError::NotAnImage {
                digest: digest.to_string(),
                media_type: String::new(),
            })
    }

    /// Checks that a manifest describes a container image the store can unpack.
    pub fn check_image(&self, digest: &str) -> Result<(), InvalidImageError> {
        let config = self.config(digest)?;
        if !is_config_type(&config.media_type) {
            return Err(InvalidImageError::NotAnImage {
                digest: digest.to_string(),
                media_type: config.media_type.clone(),
            });
        }
        if let Some(layer) = self.layers.iter().find(|l| !is_layer_type(&l.media_type)) {
            return Err(InvalidImageError::UnsupportedLayer {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
        Ok(())
    }
}

/// The record of an image with config `config` (whose digest is the image ID), manifest
/// `manifest_digest`, and `layers` (digest, media type, size of each blob, base first).
/// Names are added by the caller.
pub fn assemble_image(
    config: &[u8],
    config_digest: &str,
    manifest_digest: &str,
    layers: &[(String, String, u64)],
) -> Result<Image, InvalidImageError> {
    let parsed = ConfigFile::parse(config).map_err(|source| InvalidImageError::Config {
        digest: config_digest.to_string(),
        source,
    })?;
    let diff_ids = &parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(InvalidImageError::LayerCount {
            digest: manifest_digest.to_string(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    if let Some(bad) = diff_ids
        .iter()
        .find(|d| crate::digest::digest_hex(d).is_err())
    {
        return Err(InvalidImageError::Config {
            digest: config_digest.to_string(),
            source: serde::de::Error::custom(format!("unsupported diff ID {bad:?}")),
        });
    }
    let chains = chain_ids(diff_ids);
    let image_layers = layers
        .iter()
        .zip(diff_ids)
        .zip(chains)
        .map(
            |(((digest, media_type, size), diff_id), chain_id)| ImageLayer {
                digest: digest.clone(),
                media_type: media_type.clone(),
                size: *size,
                diff_id: diff_id.clone(),
                chain_id,
            },
        )
        .collect();
    Ok(Image {
        id: config_digest.to_string(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        manifest_digest: manifest_digest.to_string(),
        size: config.len() as u64 + layers.iter().map(|l| l.2).sum::<u64>(),
        config: parsed.image_config(),
        layers: image_layers,
        last_used: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    #[test]
    fn selects_linux_amd64_from_an_index() {
        let index = ManifestOrIndex::parse(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
                "manifests":[
                  {"mediaType":"x","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux"}},
                  {"mediaType":"x","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux","variant":"v2"}}]}"#,
            "sha256:idx",
        )
        .unwrap();
        assert!(index.is_index());
        assert_eq!(index.select_platform("i").unwrap().digest, "sha256:amd");
        let arm_only = ManifestOrIndex::parse(
            br#"{"manifests":[{"digest":"sha256:arm","platform":{"architecture":"arm64","os":"linux"}}]}"#,
            "sha256:idx",
        )
        .unwrap();
        assert!(arm_only.is_index());
        let err = arm_only.select_platform("sha256:idx").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no match for platform linux/amd64 in image index sha256:idx"
        );
    }

    #[test]
    fn refuses_artifacts_and_unknown_layers() {
        let artifact = ManifestOrIndex::parse(
            br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:c","size":1},"layers":[]}"#,
            "m",
        )
        .unwrap();
        assert!(matches!(
            artifact.check_image("m"),
            Err(InvalidImageError::NotAnImage { .. })
        ));
        let zstd = ManifestOrIndex::parse(
            br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":1},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:l","size":1}]}"#,
            "m",
        )
        .unwrap();
        assert!(!zstd.is_index());
        assert!(matches!(
            zstd.check_image("m"),
            Err(InvalidImageError::UnsupportedLayer { .. })
        ));
    }

    #[test]
    fn assembles_layers_with_chain_ids_and_size() {
        let (a, b) = (sha256_digest(b"a"), sha256_digest(b"b"));
        let config = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{a}","{b}"]}},"config":{{"Cmd":["sh"]}}}}"#
        );
        let layers = vec![
            ("sha256:l1".to_string(), DOCKER_LAYER_GZIP.to_string(), 10),
            ("sha256:l2".to_string(), DOCKER_LAYER_GZIP.to_string(), 20),
        ];
        let image = assemble_image(config.as_bytes(), "sha256:cfg", "sha256:m", &layers).unwrap();
        assert_eq!(image.size, 30 + config.len() as u64);
        assert_eq!(image.layers[1].chain_id, chain_ids(&[a.clone(), b])[1]);
        assert_eq!(image.layers[0].chain_id, a);
        assert_eq!(image.config.cmd, ["sh"]);
        let err =
            assemble_image(config.as_bytes(), "sha256:cfg", "sha256:m", &layers[..1]).unwrap_err();
        assert!(matches!(
            err,
            InvalidImageError::LayerCount {
                layers: 1,
                diff_ids: 2,
                ..
            }
        ));
    }
}
