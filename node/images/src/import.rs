//! Import of images from files: an OCI image layout directory, an OCI layout tar archive, or
//! a `docker save` archive (manifest.json with Config, RepoTags and Layers), optionally
//! gzip-compressed. Every blob is verified (or, for `docker save` layers that carry no digest,
//! hashed) while it is copied into the store, and every layer is checked against the config's
//! diff IDs while it is unpacked.
//!
//! Names come from the `io.containerd.image.name` annotation, else
//! `org.opencontainers.image.ref.name`, else `RepoTags`, normalised (`busybox:1` ->
//! `docker.io/library/busybox:1`). An image without a usable name is imported by ID only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::blobs::WriteBlobError;
use crate::digest::{digest_hex, sha256_digest};
use crate::image::Image;
use crate::index::ImageIndexError;
use crate::manifest::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_MANIFEST, InvalidImageError,
    ManifestOrIndex, assemble_image,
};
use crate::reference::ImageReference;
use crate::source::{DirSource, Source, TarSource};
use crate::store::ImageStore;
use crate::unpack::UnpackLayerError;

/// Annotation containerd writes with the full image name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation naming an image in an index.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors importing images.
#[derive(Debug, thiserror::Error)]
pub enum ImportImageError {
    /// The file or directory could not be opened or indexed.
    #[error("opening image archive {path}")]
    Open {
        /// The archive or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It has neither `index.json` nor `manifest.json`.
    #[error("{path} is neither an OCI image layout nor a docker save archive")]
    UnknownFormat {
        /// The archive or directory.
        path: PathBuf,
    },
    /// A member could not be read.
    #[error("reading {member} from {path}")]
    Read {
        /// The archive or directory.
        path: PathBuf,
        /// The member.
        member: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `index.json` or `manifest.json` is not valid.
    #[error("parsing {member} of {path}")]
    Parse {
        /// The archive or directory.
        path: PathBuf,
        /// The member.
        member: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest, config or layer list is not usable.
    #[error("importing from {path}")]
    InvalidImage {
        /// The archive or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: InvalidImageError,
    },
    /// A blob could not be stored (including content that does not match its digest).
    #[error("storing {member} of {path}")]
    WriteBlob {
        /// The archive or directory.
        path: PathBuf,
        /// The member.
        member: String,
        /// The cause.
        #[source]
        source: WriteBlobError,
    },
    /// A layer could not be unpacked.
    #[error("unpacking layer {digest} of {path}")]
    UnpackLayer {
        /// The archive or directory.
        path: PathBuf,
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: UnpackLayerError,
    },
    /// The index could not be updated.
    #[error("recording the images of {path}")]
    Index {
        /// The archive or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ImageIndexError,
    },
}

/// An image whose blobs are in the store, waiting for its layers and its index record.
#[derive(Debug)]
struct Staged {
    image: Image,
}

/// One entry of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports every image of `path`: an OCI image layout directory, an OCI layout tar
    /// archive, or a `docker save` archive (tar or tar.gz, or its extracted directory).
    /// Returns the stored images.
    pub async fn import(&self, path: &Path) -> Result<Vec<Image>, ImportImageError> {
        let _shared = self.inner.content.read().await;
        let store = self.clone();
        let archive = path.to_path_buf();
        let staged = tokio::task::spawn_blocking(move || store.stage_import(&archive))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let mut images = Vec::new();
        for Staged { image } in staged {
            for layer in &image.layers {
                self.ensure_layer(layer)
                    .await
                    .map_err(|source| ImportImageError::UnpackLayer {
                        path: path.to_path_buf(),
                        digest: layer.digest.clone(),
                        source,
                    })?;
            }
            let image = self
                .commit(image)
                .map_err(|source| ImportImageError::Index {
                    path: path.to_path_buf(),
                    source,
                })?;
            images.push(image);
        }
        Ok(images)
    }

    /// Opens the source and copies the blobs of its images into the store.
    fn stage_import(&self, path: &Path) -> Result<Vec<Staged>, ImportImageError> {
        let open_error = |source| ImportImageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_error)?;
        // A gzip-compressed archive is decompressed into the store's tmp/ first (tar members
        // are read by seeking); the temporary file goes away when the import ends.
        let mut _decompressed = None;
        let source: Arc<dyn Source> = if meta.is_dir() {
            Arc::new(DirSource::new(path))
        } else {
            let mut magic = [0u8; 2];
            let mut file = std::fs::File::open(path).map_err(open_error)?;
            let n = file.read(&mut magic).map_err(open_error)?;
            if n == 2 && magic == [0x1f, 0x8b] {
                let mut tmp = tempfile::Builder::new()
                    .prefix("import-")
                    .tempfile_in(self.inner.root.join("tmp"))
                    .map_err(open_error)?;
                let mut gz = flate2::read::MultiGzDecoder::new(
                    std::fs::File::open(path).map_err(open_error)?,
                );
                std::io::copy(&mut gz, &mut tmp).map_err(open_error)?;
                let source = TarSource::open(tmp.path()).map_err(open_error)?;
                _decompressed = Some(tmp);
                Arc::new(source)
            } else {
                Arc::new(TarSource::open(path).map_err(open_error)?)
            }
        };
        let importer = Importer {
            store: self,
            path,
            source: source.as_ref(),
        };
        if source.exists("manifest.json") {
            importer.docker()
        } else if source.exists("index.json") {
            importer.oci()
        } else {
            Err(ImportImageError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    }
}

/// One import's source and destination.
struct Importer<'a> {
    store: &'a ImageStore,
    path: &'a Path,
    source: &'a dyn Source,
}

impl Importer<'_> {
    /// Images of an OCI layout (`index.json`, `blobs/<alg>/<hex>`).
    fn oci(&self) -> Result<Vec<Staged>, ImportImageError> {
        let index_bytes = self.read("index.json")?;
        let index: ManifestOrIndex = self.parse("index.json", &index_bytes)?;
        let mut staged = Vec::new();
        for entry in index.manifests.as_deref().unwrap_or_default() {
            let names = entry
                .annotation(ANNOTATION_IMAGE_NAME)
                .or_else(|| entry.annotation(ANNOTATION_REF_NAME))
                .and_then(|name| self.name(name))
                .into_iter()
                .collect::<Vec<_>>();
            let mut data = self.oci_blob(&entry.digest, entry.size())?;
            let mut manifest_digest = entry.digest.clone();
            let mut manifest =
                ManifestOrIndex::parse(&data, &manifest_digest).map_err(|e| self.invalid(e))?;
            if manifest.is_index() {
                let chosen = manifest
                    .select_platform(&manifest_digest)
                    .map_err(|e| self.invalid(e))?
                    .clone();
                data = self.oci_blob(&chosen.digest, chosen.size())?;
                manifest_digest = chosen.digest.clone();
                manifest =
                    ManifestOrIndex::parse(&data, &manifest_digest).map_err(|e| self.invalid(e))?;
            }
            manifest
                .check_image(&manifest_digest)
                .map_err(|e| self.invalid(e))?;
            let config = manifest
                .config(&manifest_digest)
                .map_err(|e| self.invalid(e))?;
            let config_bytes = self.oci_blob(&config.digest, config.size())?;
            let mut layers = Vec::new();
            for layer in &manifest.layers {
                self.oci_blob_stream(&layer.digest, layer.size())?;
                let size = layer.size().unwrap_or_default();
                layers.push((layer.digest.clone(), layer.media_type.clone(), size));
            }
            let mut image =
                assemble_image(&config_bytes, &config.digest, &manifest_digest, &layers)
                    .map_err(|e| self.invalid(e))?;
            // The digest the image was named by: the index entry's (which may be a
            // multi-platform index).
            set_names(&mut image, &names, Some(&entry.digest));
            staged.push(Staged { image });
        }
        Ok(staged)
    }

    /// Images of a `docker save` archive.
    fn docker(&self) -> Result<Vec<Staged>, ImportImageError> {
        let listing = self.read("manifest.json")?;
        let entries: Vec<DockerManifestEntry> = self.parse("manifest.json", &listing)?;
        let mut staged = Vec::new();
        for entry in entries {
            let config_bytes = self.read(&entry.config)?;
            let config_digest = sha256_digest(&config_bytes);
            self.store_blob(&entry.config, &config_digest, &config_bytes[..])?;
            let mut layers = Vec::new();
            for member in &entry.layers {
                let reader = self.open(member)?;
                let (digest, size) = self
                    .store
                    .inner
                    .blobs
                    .write_unknown(reader)
                    .map_err(|source| self.blob_error(member, source))?;
                let gzip = self
                    .store
                    .inner
                    .blobs
                    .path(&digest)
                    .ok()
                    .and_then(|p| std::fs::File::open(p).ok())
                    .and_then(|mut f| {
                        let mut magic = [0u8; 2];
                        f.read_exact(&mut magic).ok().map(|_| magic == [0x1f, 0x8b])
                    })
                    .unwrap_or(false);
                let media_type = if gzip {
                    DOCKER_LAYER_GZIP
                } else {
                    DOCKER_LAYER_TAR
                };
                layers.push((digest, media_type.to_string(), size));
            }
            // docker save keeps no manifest; store an equivalent Docker schema 2 manifest so
            // the image has one like any other.
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": config_bytes.len()},
                "layers": layers.iter().map(|(digest, media_type, size)| {
                    json!({"mediaType": media_type, "digest": digest, "size": size})
                }).collect::<Vec<_>>(),
            });
            let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
            let manifest_digest = sha256_digest(&manifest);
            self.store_blob("manifest.json", &manifest_digest, &manifest[..])?;
            let mut image =
                assemble_image(&config_bytes, &config_digest, &manifest_digest, &layers)
                    .map_err(|e| self.invalid(e))?;
            let names: Vec<ImageReference> = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| self.name(t))
                .collect();
            set_names(&mut image, &names, None);
            staged.push(Staged { image });
        }
        Ok(staged)
    }

    /// Reads and stores OCI layout blob `digest` (verified), returning its content.
    fn oci_blob(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, ImportImageError> {
        let member = self.blob_member(digest)?;
        let data = self.read(&member)?;
        if let Some(expected) = size
            && expected != data.len() as u64
        {
            return Err(self.blob_error(
                &member,
                WriteBlobError::SizeMismatch {
                    digest: digest.to_string(),
                    expected,
                    actual: data.len() as u64,
                },
            ));
        }
        self.store_blob(&member, digest, &data[..])?;
        Ok(data)
    }

    /// Stores OCI layout blob `digest` (verified) without holding it in memory.
    fn oci_blob_stream(&self, digest: &str, size: Option<u64>) -> Result<(), ImportImageError> {
        let member = self.blob_member(digest)?;
        let lock = self.store.inner.blob_locks.get(digest);
        let _guard = lock.blocking_lock();
        if self.store.inner.blobs.contains(digest, size) {
            return Ok(());
        }
        let reader = self.open(&member)?;
        self.store
            .inner
            .blobs
            .write(digest, size, reader)
            .map_err(|source| self.blob_error(&member, source))?;
        Ok(())
    }

    /// Stores `data` as blob `digest` unless present.
    fn store_blob(&self, member: &str, digest: &str, data: &[u8]) -> Result<(), ImportImageError> {
        let lock = self.store.inner.blob_locks.get(digest);
        let _guard = lock.blocking_lock();
        if self
            .store
            .inner
            .blobs
            .contains(digest, Some(data.len() as u64))
        {
            return Ok(());
        }
        self.store
            .inner
            .blobs
            .write(digest, Some(data.len() as u64), data)
            .map_err(|source| self.blob_error(member, source))?;
        Ok(())
    }

    fn blob_member(&self, digest: &str) -> Result<String, ImportImageError> {
        let hex = digest_hex(digest)
            .map_err(|e| self.blob_error(digest, WriteBlobError::InvalidDigest(e)))?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    fn open(&self, member: &str) -> Result<Box<dyn Read + Send + '_>, ImportImageError> {
        self.source
            .open(member)
            .map_err(|source| ImportImageError::Read {
                path: self.path.to_path_buf(),
                member: member.to_string(),
                source,
            })
    }

    fn read(&self, member: &str) -> Result<Vec<u8>, ImportImageError> {
        self.source
            .read(member)
            .map_err(|source| ImportImageError::Read {
                path: self.path.to_path_buf(),
                member: member.to_string(),
                source,
            })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        member: &str,
        data: &[u8],
    ) -> Result<T, ImportImageError> {
        serde_json::from_slice(data).map_err(|source| ImportImageError::Parse {
            path: self.path.to_path_buf(),
            member: member.to_string(),
            source,
        })
    }

    /// A name to give the image, or `None` (with a warning) if it does not parse.
    fn name(&self, name: &str) -> Option<ImageReference> {
        match ImageReference::parse(name) {
            Ok(reference) => Some(reference),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "importing image without this name");
                None
            }
        }
    }

    fn invalid(&self, source: InvalidImageError) -> ImportImageError {
        ImportImageError::InvalidImage {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn blob_error(&self, member: &str, source: WriteBlobError) -> ImportImageError {
        ImportImageError::WriteBlob {
            path: self.path.to_path_buf(),
            member: member.to_string(),
            source,
        }
    }
}

/// Gives `image` the tags of `names`, and `name@digest` for each name when the image was
/// named by a content digest.
fn set_names(image: &mut Image, names: &[ImageReference], digest: Option<&str>) {
    for name in names {
        if let Some(tagged) = name.tagged() {
            image.repo_tags.push(tagged);
        }
        let digested = match (name.digest(), digest) {
            (Some(_), _) => name.digested(),
            (None, Some(d)) => name.with_digest(d).digested(),
            (None, None) => None,
        };
        if let Some(digested) = digested
            && !image.repo_digests.contains(&digested)
        {
            image.repo_digests.push(digested);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::tests::TarBuilder;
    use std::collections::BTreeMap;

    /// Test content: two layers (the second deletes a file of the first), a config, a
    /// manifest.
    struct TestImage {
        layers: Vec<Vec<u8>>,
        diff_ids: Vec<String>,
        config: Vec<u8>,
    }

    fn test_image() -> TestImage {
        let base = TarBuilder::new()
            .dir("bin/", 0o755)
            .file("bin/tool", "tool")
            .file("etc/old", "old")
            .tar();
        let top = TarBuilder::new()
            .file("etc/.wh.old", "")
            .file("etc/new", "new")
            .tar();
        let diff_ids = vec![sha256_digest(&base), sha256_digest(&top)];
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["tool"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        TestImage {
            layers: vec![base, top],
            diff_ids,
            config,
        }
    }

    /// Writes `image` as an OCI layout (gzip layers) under `dir` named `name`.
    fn write_oci_layout(image: &TestImage, dir: &Path, name: &str) -> String {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let digest = sha256_digest(data);
            std::fs::write(blobs.join(digest_hex(&digest).unwrap()), data).unwrap();
            json!({"digest": digest, "size": data.len()})
        };
        let mut layers = Vec::new();
        for layer in &image.layers {
            let gz = gzip(layer);
            let mut d = put(&gz);
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
            layers.push(d);
        }
        let mut config = put(&image.config);
        config["mediaType"] = crate::manifest::OCI_CONFIG.into();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": crate::manifest::OCI_MANIFEST,
            "config": config, "layers": layers,
        }))
        .unwrap();
        let mut entry = put(&manifest);
        entry["mediaType"] = crate::manifest::OCI_MANIFEST.into();
        entry["annotations"] = json!({ANNOTATION_REF_NAME: name});
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
        )
        .unwrap();
        entry["digest"].as_str().unwrap().to_string()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// Tars up a directory's files (relative paths, sorted).
    fn tar_dir(dir: &Path, out: &Path) {
        let mut files = BTreeMap::new();
        for entry in walk(dir) {
            let rel = entry
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(rel, std::fs::read(&entry).unwrap());
        }
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            builder.append_data(&mut h, path, data.as_slice()).unwrap();
        }
        std::fs::write(out, builder.into_inner().unwrap()).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    fn check_layers(store: &ImageStore, image: &Image) {
        let dirs = store.layer_dirs(image);
        assert_eq!(dirs.len(), 2);
        // Top first: the top layer holds the whiteout and the new file.
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let whiteout = std::fs::symlink_metadata(dirs[0].join("etc/old")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert_eq!(std::fs::read(dirs[0].join("etc/new")).unwrap(), b"new");
        assert_eq!(std::fs::read(dirs[1].join("bin/tool")).unwrap(), b"tool");
    }

    #[tokio::test]
    async fn imports_an_oci_layout_directory_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let image = test_image();
        let layout = dir.path().join("layout");
        let manifest_digest = write_oci_layout(&image, &layout, "example.com/app:1");
        let store = ImageStore::open(&dir.path().join("store")).unwrap();

        let imported = store.import(&layout).await.unwrap();
        assert_eq!(imported.len(), 1);
        let got = &imported[0];
        assert_eq!(got.id, sha256_digest(&image.config));
        assert_eq!(got.repo_tags, ["example.com/app:1"]);
        assert_eq!(
            got.repo_digests,
            [format!("example.com/app@{manifest_digest}")]
        );
        assert_eq!(got.config.cmd, ["tool"]);
        assert_eq!(
            got.layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>(),
            image.diff_ids
        );
        check_layers(&store, got);
        assert_eq!(store.get("example.com/app:1").unwrap().id, got.id);

        // The same layout as a tar archive, under another name: same image, both names.
        let archive = dir.path().join("layout.tar");
        write_oci_layout(&image, &layout, "example.com/app:2");
        tar_dir(&layout, &archive);
        let again = store.import(&archive).await.unwrap();
        assert_eq!(again[0].id, got.id);
        assert_eq!(
            again[0].repo_tags,
            ["example.com/app:1", "example.com/app:2"]
        );
        assert_eq!(store.list().len(), 1);
    }

    #[tokio::test]
    async fn imports_a_docker_save_archive() {
        let dir = tempfile::tempdir().unwrap();
        let image = test_image();
        let src = dir.path().join("docker");
        std::fs::create_dir_all(&src).unwrap();
        let config_name = format!(
            "{}.json",
            digest_hex(&sha256_digest(&image.config)).unwrap()
        );
        std::fs::write(src.join(&config_name), &image.config).unwrap();
        let mut layer_paths = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let path = format!("layer{i}/layer.tar");
            std::fs::create_dir_all(src.join(format!("layer{i}"))).unwrap();
            // The first layer uncompressed (as docker save writes), the second gzip'd.
            let data = if i == 0 { layer.clone() } else { gzip(layer) };
            std::fs::write(src.join(&path), data).unwrap();
            layer_paths.push(path);
        }
        std::fs::write(
            src.join("manifest.json"),
            serde_json::to_vec(&json!([{
                "Config": config_name,
                "RepoTags": ["busybox:latest", "localhost:5000/tools:1"],
                "Layers": layer_paths,
            }]))
            .unwrap(),
        )
        .unwrap();
        let archive = dir.path().join("saved.tar");
        tar_dir(&src, &archive);
        let gz_archive = dir.path().join("saved.tar.gz");
        std::fs::write(&gz_archive, gzip(&std::fs::read(&archive).unwrap())).unwrap();

        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        for path in [&archive, &gz_archive] {
            let imported = store.import(path).await.unwrap();
            assert_eq!(imported.len(), 1);
            let got = &imported[0];
            assert_eq!(got.id, sha256_digest(&image.config));
            assert_eq!(
                got.repo_tags,
                ["docker.io/library/busybox:latest", "localhost:5000/tools:1"]
            );
            assert!(got.repo_digests.is_empty());
            assert_eq!(got.layers[0].media_type, DOCKER_LAYER_TAR);
            assert_eq!(got.layers[1].media_type, DOCKER_LAYER_GZIP);
            check_layers(&store, got);
        }
        assert_eq!(store.get("busybox").unwrap().config.env, ["PATH=/bin"]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn a_tampered_blob_fails_the_import_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let image = test_image();
        let layout = dir.path().join("layout");
        write_oci_layout(&image, &layout, "example.com/app:1");
        let config_path = layout
            .join("blobs/sha256")
            .join(digest_hex(&sha256_digest(&image.config)).unwrap());
        // Same size, different content.
        let mut tampered = image.config.clone();
        let last = tampered.len() - 1;
        tampered[last] = b' ';
        std::fs::write(&config_path, tampered).unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let err = store.import(&layout).await.unwrap_err();
        assert!(
            matches!(
                err,
                ImportImageError::WriteBlob {
                    source: WriteBlobError::DigestMismatch { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(store.list().is_empty());
    }

    #[tokio::test]
    async fn unknown_formats_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = store.import(&empty).await.unwrap_err();
        assert!(
            matches!(err, ImportImageError::UnknownFormat { .. }),
            "{err}"
        );
        let err = store
            .import(&dir.path().join("missing.tar"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing.tar"), "{err}");
    }
}
