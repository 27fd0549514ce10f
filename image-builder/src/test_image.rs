//! The test images, built from Debian's busybox-static: `busybox` (one layer: the binary, a
//! symlink per applet, /etc/passwd and /etc/group, /tmp, /root, /home) and `layered` (the same
//! layer plus one that deletes /etc/os-release through a whiteout and adds /etc/motd).
//!
//! Builds are reproducible: the same busybox binary, reference and `SOURCE_DATE_EPOCH` give
//! byte-identical blobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::layer::{BuildLayerError, BuiltLayerBlob, LayerBuilder};
use crate::oci_layout::{
    ANNOTATION_REF_NAME, Descriptor, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
    OciLayout, Platform, WriteLayoutError,
};

/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/usr/bin/busybox";

/// The PATH of the images' config (the usual Linux default of container images).
pub const IMAGE_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applets the tests rely on; the build fails if the busybox binary lacks one.
pub const REQUIRED_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "env", "id", "hostname", "wget", "nc",
    "httpd", "mkdir", "touch", "rm", "ps", "kill", "head", "tail", "grep", "wc", "date", "dd",
    "mount", "test", "[", "printf", "seq", "yes", "top", "whoami", "pidof", "cut", "tr", "sed",
    "awk",
];

/// The file the layered image's second layer deletes.
pub const LAYERED_DELETED_FILE: &str = "etc/os-release";
/// The file the layered image's second layer adds.
pub const LAYERED_ADDED_FILE: &str = "etc/motd";
/// Content of [`LAYERED_ADDED_FILE`].
pub const LAYERED_MOTD: &str = "Welcome to the Baton layered test image.\n";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
const OS_RELEASE: &str =
    "NAME=\"Baton test image\"\nID=baton-test\nPRETTY_NAME=\"Baton test image (busybox)\"\n";

/// Errors building a test image.
#[derive(Debug, thiserror::Error)]
pub enum BuildImageError {
    /// The busybox binary could not be read.
    #[error("reading busybox binary {path}")]
    ReadBusybox {
        /// The binary.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `busybox --list` could not be run or failed.
    #[error("listing the applets of {path} (busybox --list): {detail}")]
    ListApplets {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The busybox binary lacks an applet the tests use.
    #[error("{path} has no applet {applet:?}")]
    MissingApplet {
        /// The binary.
        path: PathBuf,
        /// The applet.
        applet: String,
    },
    /// `SOURCE_DATE_EPOCH` is set but is not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")]
    SourceDateEpoch {
        /// The value.
        value: String,
    },
    /// Writing a layer failed.
    #[error("building a layer")]
    Layer(#[from] BuildLayerError),
    /// Writing the layout failed.
    #[error("writing the image layout")]
    Layout(#[from] WriteLayoutError),
}

/// A layer of a built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// Digest of the compressed blob.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Size of the compressed blob.
    pub size: u64,
}

/// An image written to an OCI layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The layout directory.
    pub layout_dir: PathBuf,
    /// The name in the index (`org.opencontainers.image.ref.name`).
    pub reference: String,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Digest of the config (the image ID).
    pub config_digest: String,
    /// The layers, base first.
    pub layers: Vec<BuiltLayer>,
}

/// Builds the one-layer busybox image from `busybox` (Debian's busybox-static binary) into
/// the OCI layout `out_layout_dir` under the name `reference`.
pub fn build_busybox_image(
    busybox: &Path,
    out_layout_dir: &Path,
    reference: &str,
) -> Result<BuiltImage, BuildImageError> {
    let epoch = source_date_epoch()?;
    let base = busybox_layer(busybox, epoch)?;
    write_image(
        out_layout_dir,
        reference,
        epoch,
        &[(
            base,
            "busybox: /bin/busybox, applet links, /etc/passwd, /etc/group",
        )],
    )
}

/// Builds the two-layer test image: the busybox layer of [`build_busybox_image`] (the same
/// blob) and a layer that whites out [`LAYERED_DELETED_FILE`] and adds
/// [`LAYERED_ADDED_FILE`].
pub fn build_layered_test_image(
    busybox: &Path,
    out_layout_dir: &Path,
    reference: &str,
) -> Result<BuiltImage, BuildImageError> {
    let epoch = source_date_epoch()?;
    let base = busybox_layer(busybox, epoch)?;
    let mut top = LayerBuilder::new(epoch);
    top.dir("etc", 0o755)?;
    top.whiteout(LAYERED_DELETED_FILE)?;
    top.file(LAYERED_ADDED_FILE, 0o644, LAYERED_MOTD)?;
    write_image(
        out_layout_dir,
        reference,
        epoch,
        &[
            (
                base,
                "busybox: /bin/busybox, applet links, /etc/passwd, /etc/group",
            ),
            (top.build()?, "delete /etc/os-release, add /etc/motd"),
        ],
    )
}

/// The busybox layer.
fn busybox_layer(busybox: &Path, epoch: u64) -> Result<BuiltLayerBlob, BuildImageError> {
    let binary = std::fs::read(busybox).map_err(|source| BuildImageError::ReadBusybox {
        path: busybox.to_path_buf(),
        source,
    })?;
    let applets = list_applets(busybox)?;
    if let Some(missing) = REQUIRED_APPLETS.iter().find(|a| !applets.contains(**a)) {
        return Err(BuildImageError::MissingApplet {
            path: busybox.to_path_buf(),
            applet: missing.to_string(),
        });
    }
    let mut layer = LayerBuilder::new(epoch);
    layer.dir("bin", 0o755)?;
    layer.file("bin/busybox", 0o755, binary)?;
    for applet in applets.iter().filter(|a| *a != "busybox") {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.dir("etc", 0o755)?;
    layer.file("etc/passwd", 0o644, PASSWD)?;
    layer.file("etc/group", 0o644, GROUP)?;
    layer.file("etc/os-release", 0o644, OS_RELEASE)?;
    layer.dir("home", 0o755)?;
    layer.dir("root", 0o700)?;
    layer.dir("tmp", 0o1777)?;
    Ok(layer.build()?)
}

/// The applets `busybox --list` reports (sorted, so the layer does not depend on its order).
fn list_applets(busybox: &Path) -> Result<std::collections::BTreeSet<String>, BuildImageError> {
    let fail = |detail: String| BuildImageError::ListApplets {
        path: busybox.to_path_buf(),
        detail,
    };
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8(output.stdout).map_err(|e| fail(e.to_string()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_string)
        .collect())
}

/// `SOURCE_DATE_EPOCH` or 0.
/// SOURCE_DATE_EPOCH from the environment (0 when unset); a value that is not a number is an
/// error naming it.
pub fn source_date_epoch() -> Result<u64, BuildImageError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| BuildImageError::SourceDateEpoch { value }),
        Err(_) => Ok(0),
    }
}

/// Writes the layers, the config and the manifest, and names the manifest in index.json.
fn write_image(
    dir: &Path,
    reference: &str,
    epoch: u64,
    layers: &[(BuiltLayerBlob, &str)],
) -> Result<BuiltImage, BuildImageError> {
    let layout = OciLayout::create(dir)?;
    let created = jiff::Timestamp::from_second(epoch.try_into().unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string();
    let mut descriptors = Vec::new();
    for (layer, _) in layers {
        descriptors.push(layout.write_blob(MEDIA_TYPE_LAYER_GZIP, &layer.gzip)?);
    }
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [IMAGE_PATH_ENV],
            "Cmd": ["sh"],
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(l, _)| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": layers
            .iter()
            .map(|(_, what)| json!({"created": created, "created_by": format!("baton-image-builder: {what}")}))
            .collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).expect("a config serialises");
    let config = layout.write_blob(MEDIA_TYPE_CONFIG, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config,
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let mut entry = layout.write_blob(MEDIA_TYPE_MANIFEST, &manifest)?;
    entry.platform = Some(Platform {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
    });
    entry.annotations = Some(BTreeMap::from([(
        ANNOTATION_REF_NAME.to_string(),
        reference.to_string(),
    )]));
    let manifest_digest = entry.digest.clone();
    layout.add_to_index(entry)?;
    tracing::debug!(reference, %manifest_digest, "built test image");
    Ok(BuiltImage {
        layout_dir: dir.to_path_buf(),
        reference: reference.to_string(),
        manifest_digest,
        config_digest: config.digest,
        layers: layers
            .iter()
            .zip(&descriptors)
            .map(
                |((layer, _), d): (&(BuiltLayerBlob, &str), &Descriptor)| BuiltLayer {
                    digest: d.digest.clone(),
                    diff_id: layer.diff_id.clone(),
                    size: d.size,
                },
            )
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci_layout::Manifest;

    fn busybox() -> PathBuf {
        let path = PathBuf::from(DEFAULT_BUSYBOX);
        assert!(
            path.exists(),
            "{DEFAULT_BUSYBOX} is missing (scripts/setup installs busybox-static)"
        );
        path
    }

    fn layer_entries(layout: &OciLayout, digest: &str) -> BTreeMap<String, tar::EntryType> {
        let blob = layout.read_blob(digest).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn busybox_image_is_reproducible() {
        let busybox = busybox();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = build_busybox_image(&busybox, a.path(), "busybox:test").unwrap();
        let second = build_busybox_image(&busybox, b.path(), "busybox:test").unwrap();
        assert_eq!(first.manifest_digest, second.manifest_digest);
        assert_eq!(first.config_digest, second.config_digest);
        assert_eq!(first.layers, second.layers);
        assert_eq!(
            std::fs::read(a.path().join("index.json")).unwrap(),
            std::fs::read(b.path().join("index.json")).unwrap()
        );
    }

    #[test]
    fn busybox_image_has_the_binary_links_and_config() {
        let busybox = busybox();
        let dir = tempfile::tempdir().unwrap();
        let built = build_busybox_image(&busybox, dir.path(), "localhost:5000/busybox:1").unwrap();
        let layout = OciLayout::open(dir.path()).unwrap();
        let entry = layout.find_image(Some("localhost:5000/busybox:1")).unwrap();
        assert_eq!(entry.digest, built.manifest_digest);
        let manifest: Manifest = layout.read_manifest(&entry.digest).unwrap();
        assert_eq!(manifest.layers.len(), 1);
        let entries = layer_entries(&layout, &manifest.layers[0].digest);
        assert_eq!(entries["bin/busybox"], tar::EntryType::Regular);
        for applet in REQUIRED_APPLETS {
            assert_eq!(
                entries[&format!("bin/{applet}")],
                tar::EntryType::Symlink,
                "{applet}"
            );
        }
        for path in ["etc/passwd", "etc/group", "tmp/", "root/", "home/"] {
            assert!(entries.contains_key(path), "{path}");
        }
        let config: serde_json::Value =
            serde_json::from_slice(&layout.read_blob(&manifest.config.digest).unwrap()).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        assert_eq!(config["config"]["Env"], json!([IMAGE_PATH_ENV]));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            built.layers[0].diff_id.as_str()
        );
    }

    #[test]
    fn layered_image_shares_the_base_layer_and_whites_out() {
        let busybox = busybox();
        let dir = tempfile::tempdir().unwrap();
        let plain = build_busybox_image(&busybox, dir.path(), "busybox:1").unwrap();
        let layered = build_layered_test_image(&busybox, dir.path(), "layered:1").unwrap();
        assert_eq!(layered.layers.len(), 2);
        assert_eq!(layered.layers[0], plain.layers[0]);
        let layout = OciLayout::open(dir.path()).unwrap();
        assert_eq!(layout.index().unwrap().manifests.len(), 2);
        let top = layer_entries(&layout, &layered.layers[1].digest);
        assert!(top.contains_key("etc/.wh.os-release"));
        assert!(top.contains_key(LAYERED_ADDED_FILE));
    }

    #[test]
    fn missing_busybox_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            build_busybox_image(Path::new("/nonexistent/busybox"), dir.path(), "x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/busybox"), "{err}");
    }
}
