//! What the store knows about an image: its ID (the config digest), names, layers, and the
//! parts of the OCI image config the kubelet applies to containers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image ID: the digest of its config (`sha256:…`).
    pub id: String,
    /// Normalised `name:tag` references (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Normalised `name@digest` references (the digest the image was pulled or imported by).
    pub repo_digests: Vec<String>,
    /// Digest of the (platform-specific) image manifest.
    pub manifest_digest: String,
    /// Size in bytes: the config plus the layer blobs as distributed (compressed).
    pub size: u64,
    /// The config applied to containers.
    pub config: ImageConfig,
    /// The layers, base first.
    pub layers: Vec<ImageLayer>,
    /// When a container last used the image (or it was pulled or imported), in seconds since
    /// the epoch; image garbage collection removes the least recently used images first.
    pub last_used: u64,
}

impl Image {
    /// The chain IDs of the layers, base first.
    pub fn chain_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }

    /// Whether the image is known by `reference` (an ID, a full normalised `name:tag` or
    /// `name@digest`).
    pub(crate) fn has_reference(&self, reference: &str) -> bool {
        self.id == reference
            || self.repo_tags.iter().any(|t| t == reference)
            || self.repo_digests.iter().any(|d| d == reference)
    }
}

/// A layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    /// Digest of the blob as distributed (usually gzip-compressed).
    pub digest: String,
    /// Media type of the blob.
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Chain ID: names the unpacked directory of this layer on top of those below it.
    pub chain_id: String,
}

/// The execution defaults of an image (the `config` object of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Entrypoint (empty when unset).
    pub entrypoint: Vec<String>,
    /// Default arguments (empty when unset).
    pub cmd: Vec<String>,
    /// `NAME=value` environment entries.
    pub env: Vec<String>,
    /// Working directory (empty when unset).
    pub working_dir: String,
    /// User (`uid`, `user`, `uid:gid`, ...; empty when unset).
    pub user: String,
    /// Exposed ports (`80/tcp`), sorted.
    pub exposed_ports: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Signal that stops the container (e.g. `SIGQUIT`), if the image sets one.
    pub stop_signal: Option<String>,
    /// Architecture the image was built for (`amd64`).
    pub architecture: String,
    /// Operating system the image was built for (`linux`).
    pub os: String,
}

/// The parts of an OCI (or Docker) image config file the store reads. Lenient: unknown
/// fields are ignored and missing ones are empty.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// Parses an image config blob.
    pub fn parse(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }

    /// The execution defaults.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            architecture: self.architecture.clone(),
            os: self.os.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_execution_defaults_leniently() {
        let config = ConfigFile::parse(
            br#"{"architecture":"amd64","os":"linux","created":"x",
                "config":{"Entrypoint":["/init"],"Cmd":null,"Env":["A=1"],"WorkingDir":"/w",
                          "User":"65534","ExposedPorts":{"80/tcp":{},"53/udp":{}},
                          "Labels":{"k":"v"},"StopSignal":"SIGQUIT","Unknown":1},
                "rootfs":{"type":"layers","diff_ids":["sha256:a"]}}"#,
        )
        .unwrap();
        let c = config.image_config();
        assert_eq!(c.entrypoint, ["/init"]);
        assert!(c.cmd.is_empty());
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.user, "65534");
        assert_eq!(c.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(c.labels["k"], "v");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(config.rootfs.diff_ids, ["sha256:a"]);
        let empty = ConfigFile::parse(b"{}").unwrap().image_config();
        assert_eq!(empty, ImageConfig::default());
    }
}
