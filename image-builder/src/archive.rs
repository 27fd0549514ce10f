//! The two archive formats users import images from, written from an OCI layout directory:
//! an OCI layout tar (the directory as a tarball) and a `docker save` tar (manifest.json,
//! `<config hex>.json`, `<diff ID hex>/layer.tar` uncompressed, `repositories`).
//!
//! Both are reproducible: sorted entries, owner 0:0, mtime 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::layer::sha256_digest;
use crate::oci_layout::{MEDIA_TYPE_INDEX, OciLayout, ReadLayoutError, digest_hex};

/// Errors writing an image archive.
#[derive(Debug, thiserror::Error)]
pub enum WriteArchiveError {
    /// The layout could not be read.
    #[error("reading the image layout")]
    Layout(#[from] ReadLayoutError),
    /// An index entry is an image index (multi-platform), which `docker save` cannot hold.
    #[error("index entry {digest} is an image index; docker archives hold single images")]
    NestedIndex {
        /// The entry's digest.
        digest: String,
    },
    /// A layer blob could not be decompressed.
    #[error("decompressing layer {digest}")]
    Decompress {
        /// The layer's digest.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive failed.
    #[error("writing {path}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the OCI layout `layout_dir` as a tar archive at `out`.
pub fn write_oci_archive(layout_dir: &Path, out: &Path) -> Result<(), WriteArchiveError> {
    let layout = OciLayout::open(layout_dir)?;
    let read =
        |path: PathBuf| std::fs::read(&path).map_err(|source| ReadLayoutError::Io { path, source });
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("oci-layout".into(), read(layout_dir.join("oci-layout"))?);
    files.insert("index.json".into(), read(layout_dir.join("index.json"))?);
    let blobs = layout_dir.join("blobs").join("sha256");
    let listing = std::fs::read_dir(&blobs).map_err(|source| ReadLayoutError::Io {
        path: blobs.clone(),
        source,
    })?;
    for entry in listing {
        let entry = entry.map_err(|source| ReadLayoutError::Io {
            path: blobs.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only finished blobs (temporary files of an interrupted write are skipped).
        if digest_hex(&format!("sha256:{name}")).is_ok() {
            files.insert(
                format!("blobs/sha256/{name}"),
                layout.read_blob(&format!("sha256:{name}"))?,
            );
        }
    }
    write_tar(out, &["blobs", "blobs/sha256"], &files)
}

/// Writes the images of the OCI layout `layout_dir` as a `docker save` archive at `out`.
/// Names come from the index's `org.opencontainers.image.ref.name` annotations, written in
/// Docker's short form (`busybox:latest` for `docker.io/library/busybox:latest`).
pub fn write_docker_archive(layout_dir: &Path, out: &Path) -> Result<(), WriteArchiveError> {
    let layout = OciLayout::open(layout_dir)?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for entry in layout.index()?.manifests {
        if entry.media_type == MEDIA_TYPE_INDEX {
            return Err(WriteArchiveError::NestedIndex {
                digest: entry.digest,
            });
        }
        let image = layout.read_manifest(&entry.digest)?;
        let config_name = format!("{}.json", digest_hex(&image.config.digest)?);
        files.insert(config_name.clone(), layout.read_blob(&image.config.digest)?);
        let mut layers = Vec::new();
        for layer in &image.layers {
            let tar = uncompressed(&layout.read_blob(&layer.digest)?).map_err(|source| {
                WriteArchiveError::Decompress {
                    digest: layer.digest.clone(),
                    source,
                }
            })?;
            let diff_id = sha256_digest(&tar);
            let dir = digest_hex(&diff_id)?.to_string();
            files.insert(format!("{dir}/VERSION"), b"1.0".to_vec());
            files.insert(format!("{dir}/layer.tar"), tar);
            layers.push(format!("{dir}/layer.tar"));
            dirs.insert(dir);
        }
        let tags: Vec<String> = entry
            .ref_name()
            .and_then(docker_short_name)
            .into_iter()
            .collect();
        if let (Some(tag), Some(top)) = (tags.first(), layers.last()) {
            let (repo, tag) = tag.rsplit_once(':').expect("short names carry a tag");
            let top = top.trim_end_matches("/layer.tar").to_string();
            repositories
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string(), top);
        }
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layers}));
    }
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("a manifest serialises"),
    );
    files.insert(
        "repositories".into(),
        serde_json::to_vec(&repositories).expect("repositories serialise"),
    );
    let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    write_tar(out, &dirs, &files)
}

/// `name:tag` as `docker save` writes it (no `docker.io/library/`); `None` without a tag.
fn docker_short_name(reference: &str) -> Option<String> {
    let parsed: oci_client::Reference = reference.parse().ok()?;
    let tag = parsed.tag()?;
    let repository = parsed.repository();
    let name = match parsed.registry() {
        "docker.io" => repository
            .strip_prefix("library/")
            .unwrap_or(repository)
            .to_string(),
        registry => format!("{registry}/{repository}"),
    };
    Some(format!("{name}:{tag}"))
}

/// The tar inside `blob`, which may be gzip-compressed.
fn uncompressed(blob: &[u8]) -> std::io::Result<Vec<u8>> {
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob).read_to_end(&mut tar)?;
        Ok(tar)
    } else {
        Ok(blob.to_vec())
    }
}

/// Writes `dirs` and `files` (sorted by path) as a tar at `out`, through a temporary file.
fn write_tar(
    out: &Path,
    dirs: &[&str],
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(), WriteArchiveError> {
    let io = |source| WriteArchiveError::Write {
        path: out.to_path_buf(),
        source,
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
    let mut entries: BTreeMap<String, Option<&[u8]>> = BTreeMap::new();
    for dir in dirs {
        entries.insert(format!("{dir}/"), None);
    }
    for (path, data) in files {
        entries.insert(path.clone(), Some(data));
    }
    let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    for (path, data) in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match data {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .map_err(io)?;
            }
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).map_err(io)?;
            }
        }
    }
    let mut writer = builder.into_inner().map_err(io)?;
    writer.flush().map_err(io)?;
    drop(writer);
    tmp.as_file().sync_all().map_err(io)?;
    let file = tmp.persist(out).map_err(|e| io(e.error))?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerBuilder;
    use crate::oci_layout::{ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP};

    fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), data)
            })
            .collect()
    }

    /// A one-layer layout named `docker.io/library/tiny:1`.
    fn tiny_layout(dir: &Path) -> (String, String) {
        let layout = OciLayout::create(dir).unwrap();
        let mut layer = LayerBuilder::new(0);
        layer.file("hello", 0o644, "hi\n").unwrap();
        let layer = layer.build().unwrap();
        let layer_desc = layout
            .write_blob(MEDIA_TYPE_LAYER_GZIP, &layer.gzip)
            .unwrap();
        let config = layout
            .write_blob(MEDIA_TYPE_CONFIG, b"{\"rootfs\":{}}")
            .unwrap();
        let manifest = json!({"schemaVersion": 2, "config": config, "layers": [layer_desc]});
        let mut entry = layout
            .write_blob(
                crate::oci_layout::MEDIA_TYPE_MANIFEST,
                &serde_json::to_vec(&manifest).unwrap(),
            )
            .unwrap();
        entry.annotations = Some(BTreeMap::from([(
            ANNOTATION_REF_NAME.to_string(),
            "docker.io/library/tiny:1".to_string(),
        )]));
        layout.add_to_index(entry).unwrap();
        (config.digest, layer.diff_id)
    }

    #[test]
    fn oci_archive_holds_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        tiny_layout(&dir.path().join("layout"));
        let out = dir.path().join("oci.tar");
        write_oci_archive(&dir.path().join("layout"), &out).unwrap();
        let files = tar_files(&out);
        assert!(files.contains_key("oci-layout"));
        assert!(files.contains_key("index.json"));
        assert_eq!(
            files
                .keys()
                .filter(|k| k.starts_with("blobs/sha256/"))
                .count(),
            4
        );
        let again = dir.path().join("again.tar");
        write_oci_archive(&dir.path().join("layout"), &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn docker_archive_has_manifest_config_and_uncompressed_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (config, diff_id) = tiny_layout(&dir.path().join("layout"));
        let out = dir.path().join("docker.tar");
        write_docker_archive(&dir.path().join("layout"), &out).unwrap();
        let files = tar_files(&out);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let config_name = format!("{}.json", digest_hex(&config).unwrap());
        let layer_name = format!("{}/layer.tar", digest_hex(&diff_id).unwrap());
        assert_eq!(manifest[0]["Config"], config_name.as_str());
        assert_eq!(manifest[0]["RepoTags"], json!(["tiny:1"]));
        assert_eq!(manifest[0]["Layers"], json!([layer_name]));
        assert_eq!(sha256_digest(&files[&layer_name]), diff_id);
        assert!(files.contains_key(&config_name));
        let repositories: serde_json::Value =
            serde_json::from_slice(&files["repositories"]).unwrap();
        assert!(repositories["tiny"]["1"].is_string());
    }

    #[test]
    fn short_names_follow_docker() {
        assert_eq!(
            docker_short_name("docker.io/library/busybox:latest").as_deref(),
            Some("busybox:latest")
        );
        assert_eq!(
            docker_short_name("localhost:5000/x/y:1").as_deref(),
            Some("localhost:5000/x/y:1")
        );
        assert_eq!(
            docker_short_name("busybox").as_deref(),
            Some("busybox:latest")
        );
    }
}
