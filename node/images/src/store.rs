//! The image store: its directory layout, lookups, use tracking, removal, and the shared steps
//! of import and pull (storing blobs, unpacking layers once, committing an image).
//!
//! Layout under the root (default `/var/lib/baton/images`):
//! `blobs/sha256/<hex>` (manifests, configs and layer blobs as distributed),
//! `layers/<chain ID hex>/` (each layer unpacked once, an overlayfs lower directory),
//! `images.json` (the index), `images.lock`, and `tmp/` (temporary files and directories, on
//! the same filesystem so that finished content is renamed into place).
//!
//! Concurrency: the store is shared by cloning it. Blob fetches and layer unpacks are
//! serialised per digest and chain ID; imports and pulls hold the content lock shared and
//! removals hold it exclusively, so a removal never deletes content an ongoing pull is about to
//! reference.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::blobs::{BlobStore, blobs_dir};
use crate::digest::is_hex64;
use crate::image::{Image, ImageLayer};
use crate::index::{ImageIndexError, Index, upsert};
use crate::layers::LayerStore;
use crate::locks::KeyedLocks;
use crate::reference::ImageReference;
use crate::unpack::UnpackLayerError;

/// Where the kubelet keeps its images.
pub const DEFAULT_ROOT: &str = "/var/lib/baton/images";

/// Errors opening an image store.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// A directory of the store could not be created.
    #[error("creating image store directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Leftovers of an interrupted operation could not be removed.
    #[error("cleaning up {path}")]
    CleanUp {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index could not be read.
    #[error("loading the image index")]
    Index(#[from] ImageIndexError),
}

/// Errors removing an image.
#[derive(Debug, thiserror::Error)]
pub enum RemoveImageError {
    /// No image is known by that reference.
    #[error("image {reference:?} not found")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The index could not be updated.
    #[error("removing image {reference:?} from the index")]
    Index {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: ImageIndexError,
    },
}

/// The node's content-addressed OCI image store. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub root: PathBuf,
    pub blobs: BlobStore,
    pub layers: LayerStore,
    index: Mutex<Index>,
    /// Shared by imports and pulls, exclusive for removals.
    pub content: tokio::sync::RwLock<()>,
    pub blob_locks: KeyedLocks,
    layer_locks: KeyedLocks,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, removes leftovers of interrupted
    /// operations, and drops index records whose content is missing.
    pub fn open(root: &Path) -> Result<Self, OpenStoreError> {
        let tmp = root.join("tmp");
        for dir in [
            root.to_path_buf(),
            blobs_dir(root),
            root.join("layers"),
            tmp.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| OpenStoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        clean_dir(&tmp).map_err(|source| OpenStoreError::CleanUp {
            path: tmp.clone(),
            source,
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                blobs: BlobStore::new(blobs_dir(root), tmp.clone()),
                layers: LayerStore::new(root.join("layers"), tmp),
                index: Mutex::new(Index::open(root)?),
                content: tokio::sync::RwLock::new(()),
                blob_locks: KeyedLocks::default(),
                layer_locks: KeyedLocks::default(),
            }),
        };
        store.drop_incomplete()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The image known by `reference`: an image ID (`sha256:…`, its hex, or a unique hex
    /// prefix of at least 12 digits), `name:tag` or `name@digest` (normalised first, so
    /// `busybox` finds `docker.io/library/busybox:latest`).
    pub fn get(&self, reference: &str) -> Option<Image> {
        let index = self.index();
        find(index.images(), reference).cloned()
    }

    /// Every image, by ID.
    pub fn list(&self) -> Vec<Image> {
        self.index().images().values().cloned().collect()
    }

    /// Records that a container uses image `id` now (image garbage collection removes the
    /// least recently used images first). Unknown IDs are ignored, and the index is written
    /// (with an fsync) only when the second changed: a burst of containers of one image
    /// writes it once.
    pub fn mark_used(&self, id: &str) -> Result<(), ImageIndexError> {
        let now = now_secs();
        self.index().update(|images| match images.get_mut(id) {
            Some(image) if image.last_used != now => {
                image.last_used = now;
                ((), true)
            }
            _ => ((), false),
        })
    }

    /// The unpacked layer directories of `image`, top layer first (the order of overlayfs'
    /// `lowerdir`).
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        let layers = self.inner.root.join("layers");
        image
            .layers
            .iter()
            .rev()
            .map(|l| layers.join(l.chain_id.strip_prefix("sha256:").unwrap_or(&l.chain_id)))
            .collect()
    }

    /// Removes the image known by `reference` (all its names), and the blobs and layers no
    /// other image uses. Returns the removed image. The caller makes sure no container's
    /// rootfs is mounted on its layers (the kubelet removes only unused images).
    pub async fn remove(&self, reference: &str) -> Result<Image, RemoveImageError> {
        let _exclusive = self.inner.content.write().await;
        let store = self.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || {
            let (removed, remaining) = store
                .index()
                .update(|images| {
                    let Some(id) = find(images, &reference).map(|i| i.id.clone()) else {
                        return ((None, BTreeMap::new()), false);
                    };
                    let removed = images.remove(&id);
                    ((removed, images.clone()), true)
                })
                .map_err(|source| RemoveImageError::Index {
                    reference: reference.clone(),
                    source,
                })?;
            let removed = removed.ok_or_else(|| RemoveImageError::NotFound {
                reference: reference.clone(),
            })?;
            store.delete_content(std::slice::from_ref(&removed), &remaining);
            tracing::info!(id = %removed.id, tags = ?removed.repo_tags, "removed image");
            Ok(removed)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Deletes the blobs and layers of `removed` that no image of `remaining` uses. Failures
    /// are logged: leftover content is harmless and removed by a later garbage collection.
    pub(crate) fn delete_content(&self, removed: &[Image], remaining: &BTreeMap<String, Image>) {
        let (blobs_in_use, layers_in_use) = referenced(remaining.values());
        let (blobs, layers) = referenced(removed.iter());
        for digest in blobs.difference(&blobs_in_use) {
            if let Err(e) = self.inner.blobs.remove(digest) {
                tracing::warn!(%digest, error = %e, "could not remove blob");
            }
        }
        for chain_id in layers.difference(&layers_in_use) {
            if let Err(e) = self.inner.layers.remove(chain_id) {
                tracing::warn!(%chain_id, error = %e, "could not remove layer");
            }
        }
    }

    /// Unpacks `layer` from its blob unless it is unpacked already; concurrent calls for one
    /// chain ID unpack once.
    pub(crate) async fn ensure_layer(&self, layer: &ImageLayer) -> Result<(), UnpackLayerError> {
        let lock = self.inner.layer_locks.get(&layer.chain_id);
        let _guard = lock.lock().await;
        if self.inner.layers.contains(&layer.chain_id) {
            tracing::debug!(chain_id = %layer.chain_id, "layer already unpacked");
            return Ok(());
        }
        let blob = self
            .inner
            .blobs
            .path(&layer.digest)
            .map_err(|e| UnpackLayerError::Store {
                path: self.inner.root.join("blobs"),
                source: std::io::Error::other(e),
            })?;
        let layers = self.inner.layers.clone();
        let (chain_id, diff_id) = (layer.chain_id.clone(), layer.diff_id.clone());
        tokio::task::spawn_blocking(move || layers.unpack(&chain_id, &diff_id, &blob))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Adds `image` to the index (merging names with an existing record of the same ID and
    /// taking its tags from other images).
    pub(crate) fn commit(&self, mut image: Image) -> Result<Image, ImageIndexError> {
        image.last_used = now_secs();
        let image = self
            .index()
            .update(|images| (upsert(images, image), true))?;
        tracing::info!(id = %image.id, tags = ?image.repo_tags, "stored image");
        Ok(image)
    }

    /// The index, refreshed from disk if another process changed it.
    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        let mut index = self.inner.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = index.refresh() {
            tracing::warn!(error = %e, "could not re-read the image index; using the cached one");
        }
        index
    }

    /// Drops index records whose blobs or layers are missing (removed by hand, or never
    /// completed by an older version).
    fn drop_incomplete(&self) -> Result<(), ImageIndexError> {
        let blobs = &self.inner.blobs;
        let layers = &self.inner.layers;
        self.index().update(|images| {
            let before = images.len();
            images.retain(|id, image| {
                let complete = blobs.contains(&image.id, None)
                    && image.layers.iter().all(|l| {
                        blobs.contains(&l.digest, Some(l.size)) && layers.contains(&l.chain_id)
                    });
                if !complete {
                    tracing::warn!(%id, "dropping image whose content is incomplete");
                }
                complete
            });
            ((), images.len() != before)
        })
    }
}

/// The image of `images` known by `reference` (see [`ImageStore::get`]).
pub(crate) fn find<'a>(images: &'a BTreeMap<String, Image>, reference: &str) -> Option<&'a Image> {
    if let Some(image) = images.get(reference) {
        return Some(image);
    }
    if is_hex64(reference) {
        return images.get(&format!("sha256:{reference}"));
    }
    if let Ok(parsed) = ImageReference::parse(reference) {
        let key = match parsed.digested() {
            Some(digested) => digested,
            None => parsed.to_string(),
        };
        if let Some(image) = images.values().find(|i| i.has_reference(&key)) {
            return Some(image);
        }
    }
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
    if prefix.len() >= 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut matches = images.values().filter(|i| {
            i.id.strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(prefix))
        });
        if let (Some(image), None) = (matches.next(), matches.next()) {
            return Some(image);
        }
    }
    None
}

/// The blob digests and layer chain IDs `images` use.
fn referenced<'a>(images: impl Iterator<Item = &'a Image>) -> (HashSet<String>, HashSet<String>) {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for image in images {
        blobs.insert(image.id.clone());
        blobs.insert(image.manifest_digest.clone());
        for layer in &image.layers {
            blobs.insert(layer.digest.clone());
            layers.insert(layer.chain_id.clone());
        }
    }
    (blobs, layers)
}

/// Removes everything inside `dir`.
fn clean_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(n: u8, tags: &[&str], digests: &[&str]) -> Image {
        Image {
            id: format!("sha256:{}", hex::encode([n; 32])),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: digests.iter().map(|t| t.to_string()).collect(),
            manifest_digest: String::new(),
            size: 0,
            config: ImageConfig::default(),
            layers: vec![],
            last_used: 0,
        }
    }

    #[test]
    fn finds_images_by_id_name_and_digest() {
        let digest = format!("sha256:{}", hex::encode([9u8; 32]));
        let images: BTreeMap<String, Image> = [
            image(1, &["docker.io/library/busybox:latest"], &[]),
            image(
                2,
                &["localhost:5000/app:1"],
                &[&format!("localhost:5000/app@{digest}")],
            ),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
        let id1 = format!("sha256:{}", hex::encode([1u8; 32]));
        let id2 = format!("sha256:{}", hex::encode([2u8; 32]));
        let found = |r: &str| find(&images, r).map(|i| i.id.clone());
        assert_eq!(found("busybox").as_deref(), Some(id1.as_str()));
        assert_eq!(found("busybox:latest").as_deref(), Some(id1.as_str()));
        assert_eq!(found(&id1).as_deref(), Some(id1.as_str()));
        assert_eq!(found(&id1[7..]).as_deref(), Some(id1.as_str()));
        assert_eq!(found(&id2[7..20]).as_deref(), Some(id2.as_str()));
        assert_eq!(found("localhost:5000/app:1").as_deref(), Some(id2.as_str()));
        assert_eq!(
            found(&format!("localhost:5000/app@{digest}")).as_deref(),
            Some(id2.as_str())
        );
        assert_eq!(found("busybox:1.0"), None);
        assert_eq!(found("localhost:5000/app:2"), None);
    }

    #[tokio::test]
    async fn open_creates_the_layout_and_cleans_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        ImageStore::open(&root).unwrap();
        std::fs::write(root.join("tmp/blob-half"), b"partial").unwrap();
        std::fs::create_dir(root.join("tmp/layer-half")).unwrap();
        let store = ImageStore::open(&root).unwrap();
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(root.join("blobs/sha256").is_dir());
        assert!(root.join("layers").is_dir());
        assert!(store.list().is_empty());
        let err = store.remove("busybox").await.unwrap_err();
        assert!(matches!(err, RemoveImageError::NotFound { .. }), "{err:?}");
    }
}
