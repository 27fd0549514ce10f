//! Image garbage collection with the kubelet's rules, and disk usage of the store.
//!
//! When the filesystem holding the store is used at or above the high threshold (percent), the
//! least recently used images that no container uses are removed until the usage would be
//! below the low threshold, counting each image's size as the kubelet does. Content left
//! behind by interrupted pulls (blobs and layers no image references, older than an hour) is
//! swept at the same time.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::image::Image;
use crate::index::ImageIndexError;
use crate::store::ImageStore;

/// Unreferenced content younger than this may belong to a pull in progress in another
/// process; it is left alone.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(3600);

/// Errors of an image garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum GarbageCollectError {
    /// The thresholds are not `0 <= low < high <= 100`.
    #[error("invalid image GC thresholds: low {low}%, high {high}%")]
    InvalidThresholds {
        /// The low threshold.
        low: u8,
        /// The high threshold.
        high: u8,
    },
    /// The filesystem's usage could not be read.
    #[error("reading the usage of the filesystem of {path}")]
    FsStats {
        /// The store root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index could not be updated.
    #[error("removing images from the index")]
    Index(#[source] ImageIndexError),
    /// Not enough unused images to reach the low threshold (the ones found were removed).
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free."
    )]
    NotEnoughFreed {
        /// Bytes that had to be freed.
        wanted: u64,
        /// Bytes freed.
        freed: u64,
        /// The removed images.
        removed: Vec<String>,
    },
}

/// Errors measuring the store's disk usage.
#[derive(Debug, thiserror::Error)]
#[error("measuring the disk usage of {path}")]
pub struct DiskUsageError {
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Filesystem usage before, in percent.
    pub usage_percent: u8,
    /// Bytes that had to be freed (0 below the high threshold).
    pub wanted_bytes: u64,
    /// Sizes of the removed images.
    pub freed_bytes: u64,
    /// IDs of the removed images.
    pub removed: Vec<String>,
}

/// Disk usage of the store and its filesystem (the kubelet's imageFs statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes used by blobs, layers and the index.
    pub used_bytes: u64,
    /// Inodes used by them.
    pub inodes_used: u64,
    /// Size of the filesystem.
    pub capacity_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Bytes free (the root-reserved blocks included).
    pub free_bytes: u64,
    /// Inodes of the filesystem.
    pub inodes: u64,
    /// Free inodes.
    pub inodes_free: u64,
}

impl ImageStore {
    /// Garbage-collects images as the kubelet does: when the filesystem of the store is used
    /// at or above `high_percent`, removes the least recently used images not in `in_use`
    /// (image IDs) until usage drops below `low_percent`.
    pub async fn garbage_collect(
        &self,
        in_use: &HashSet<String>,
        high_percent: u8,
        low_percent: u8,
    ) -> Result<GcReport, GarbageCollectError> {
        if low_percent >= high_percent || high_percent > 100 {
            return Err(GarbageCollectError::InvalidThresholds {
                low: low_percent,
                high: high_percent,
            });
        }
        let _exclusive = self.inner.content.write().await;
        let store = self.clone();
        let in_use = in_use.clone();
        tokio::task::spawn_blocking(move || store.collect(&in_use, high_percent, low_percent))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn collect(
        &self,
        in_use: &HashSet<String>,
        high: u8,
        low: u8,
    ) -> Result<GcReport, GarbageCollectError> {
        let root = self.root().to_path_buf();
        let stats =
            nix::sys::statvfs::statvfs(&root).map_err(|e| GarbageCollectError::FsStats {
                path: root.clone(),
                source: e.into(),
            })?;
        let fragment = stats.fragment_size();
        let capacity = stats.blocks() * fragment;
        let available = stats.blocks_available() * fragment;
        let usage = usage_percent(capacity, available);
        let mut report = GcReport {
            usage_percent: usage,
            ..GcReport::default()
        };
        if usage >= high {
            report.wanted_bytes = amount_to_free(capacity, available, low);
            let (removed, remaining) = self
                .index()
                .update(|images| {
                    let ids = select_for_removal(images, in_use, report.wanted_bytes);
                    let removed: Vec<Image> =
                        ids.iter().filter_map(|id| images.remove(id)).collect();
                    let changed = !removed.is_empty();
                    ((removed, images.clone()), changed)
                })
                .map_err(GarbageCollectError::Index)?;
            self.delete_content(&removed, &remaining);
            report.freed_bytes = removed.iter().map(|i| i.size).sum();
            report.removed = removed.iter().map(|i| i.id.clone()).collect();
            for image in &removed {
                tracing::info!(id = %image.id, tags = ?image.repo_tags, size = image.size, "image garbage-collected");
            }
        }
        self.sweep_orphans();
        if report.freed_bytes < report.wanted_bytes {
            return Err(GarbageCollectError::NotEnoughFreed {
                wanted: report.wanted_bytes,
                freed: report.freed_bytes,
                removed: report.removed,
            });
        }
        Ok(report)
    }

    /// Removes blobs and layers that no image references and that are older than
    /// [`ORPHAN_MIN_AGE`] (left by pulls interrupted after fetching).
    fn sweep_orphans(&self) {
        let (blobs, layers) = {
            let index = self.index();
            let mut blobs = HashSet::new();
            let mut layers = HashSet::new();
            for image in index.images().values() {
                blobs.insert(image.id.clone());
                blobs.insert(image.manifest_digest.clone());
                for layer in &image.layers {
                    blobs.insert(layer.digest.clone());
                    layers.insert(layer.chain_id.clone());
                }
            }
            (blobs, layers)
        };
        let old = |modified: SystemTime| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age >= ORPHAN_MIN_AGE)
        };
        if let Ok(present) = self.inner.blobs.list() {
            for (digest, modified) in present {
                if !blobs.contains(&digest) && old(modified) {
                    tracing::info!(%digest, "removing unreferenced blob");
                    let _ = self.inner.blobs.remove(&digest);
                }
            }
        }
        if let Ok(present) = self.inner.layers.list() {
            for (chain_id, modified) in present {
                if !layers.contains(&chain_id) && old(modified) {
                    tracing::info!(%chain_id, "removing unreferenced layer");
                    let _ = self.inner.layers.remove(&chain_id);
                }
            }
        }
    }

    /// Bytes and inodes the store uses (walks the blobs and layers; call it from a blocking
    /// context), and the size of its filesystem.
    pub fn disk_usage(&self) -> Result<DiskUsage, DiskUsageError> {
        let root = self.root();
        let mut usage = DiskUsage::of_filesystem(root)?;
        let mut seen = HashSet::new();
        for dir in [root.join("blobs"), root.join("layers")] {
            walk(&dir, &mut seen, &mut usage)?;
        }
        if let Ok(meta) = std::fs::metadata(root.join("images.json")) {
            usage.used_bytes += meta.blocks() * 512;
            usage.inodes_used += 1;
        }
        Ok(usage)
    }
}

impl DiskUsage {
    /// The size and free space of the filesystem holding `path`, with nothing counted as used.
    pub fn of_filesystem(path: &Path) -> Result<Self, DiskUsageError> {
        let stats = nix::sys::statvfs::statvfs(path).map_err(|e| DiskUsageError {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let fragment = stats.fragment_size();
        Ok(Self {
            capacity_bytes: stats.blocks() * fragment,
            available_bytes: stats.blocks_available() * fragment,
            free_bytes: stats.blocks_free() * fragment,
            inodes: stats.files(),
            inodes_free: stats.files_free(),
            ..Self::default()
        })
    }

    /// Counts the blocks and inodes under `dir` as used (each hardlinked inode once), as `du`
    /// does; call it from a blocking context. Entries that vanish during the walk (a file
    /// removed meanwhile) are skipped; the directory itself must exist.
    pub fn add_directory(&mut self, dir: &Path) -> Result<(), DiskUsageError> {
        walk(dir, &mut HashSet::new(), self)
    }
}

/// Adds the blocks and inodes under `dir` (each hardlinked inode once).
fn walk(
    dir: &Path,
    seen: &mut HashSet<(u64, u64)>,
    usage: &mut DiskUsage,
) -> Result<(), DiskUsageError> {
    let error = |source| DiskUsageError {
        path: dir.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(error)?;
    usage.used_bytes += meta.blocks() * 512;
    usage.inodes_used += 1;
    let gone = |err: &std::io::Error| err.kind() == std::io::ErrorKind::NotFound;
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let entry = entry.map_err(error)?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(err) if gone(&err) => continue,
            Err(err) => return Err(error(err)),
        };
        if meta.is_dir() {
            match walk(&entry.path(), seen, usage) {
                Err(err) if gone(&err.source) => {}
                other => other?,
            }
        } else if meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())) {
            usage.used_bytes += meta.blocks() * 512;
            usage.inodes_used += 1;
        }
    }
    Ok(())
}

/// Usage in percent as the kubelet computes it: `100 - available * 100 / capacity`.
pub(crate) fn usage_percent(capacity: u64, available: u64) -> u8 {
    if capacity == 0 {
        return 0;
    }
    let free = (u128::from(available) * 100 / u128::from(capacity)).min(100) as u8;
    100 - free
}

/// Bytes to free to get below `low` percent: `capacity * (100 - low) / 100 - available`.
pub(crate) fn amount_to_free(capacity: u64, available: u64, low: u8) -> u64 {
    let target_available = u128::from(capacity) * u128::from(100 - low.min(100)) / 100;
    target_available.saturating_sub(u128::from(available)) as u64
}

/// IDs of the images to remove to free `wanted` bytes: unused ones, least recently used
/// first (ties broken by ID, for a stable order), until their sizes add up to `wanted`.
pub(crate) fn select_for_removal(
    images: &BTreeMap<String, Image>,
    in_use: &HashSet<String>,
    wanted: u64,
) -> Vec<String> {
    let mut candidates: Vec<&Image> = images
        .values()
        .filter(|i| !in_use.contains(&i.id))
        .collect();
    candidates.sort_by(|a, b| a.last_used.cmp(&b.last_used).then_with(|| a.id.cmp(&b.id)));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for image in candidates {
        if freed >= wanted {
            break;
        }
        freed += image.size;
        out.push(image.id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(id: &str, last_used: u64, size: u64) -> Image {
        Image {
            id: id.to_string(),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: String::new(),
            size,
            config: ImageConfig::default(),
            layers: vec![],
            last_used,
        }
    }

    #[test]
    fn removes_least_recently_used_unused_images_first() {
        let images: BTreeMap<String, Image> = [
            image("new", 300, 100),
            image("old", 100, 100),
            image("older-but-used", 50, 100),
            image("middle", 200, 100),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
        let in_use = HashSet::from(["older-but-used".to_string()]);
        assert_eq!(select_for_removal(&images, &in_use, 150), ["old", "middle"]);
        assert_eq!(select_for_removal(&images, &in_use, 1), ["old"]);
        assert!(select_for_removal(&images, &in_use, 0).is_empty());
        assert_eq!(
            select_for_removal(&images, &in_use, 10_000),
            ["old", "middle", "new"]
        );
    }

    #[test]
    fn thresholds_follow_the_kubelet() {
        assert_eq!(usage_percent(1000, 150), 85);
        assert_eq!(usage_percent(1000, 0), 100);
        assert_eq!(usage_percent(0, 0), 0);
        // 85% used, low 80%: free until 20% is available.
        assert_eq!(amount_to_free(1000, 150, 80), 50);
        assert_eq!(amount_to_free(1000, 500, 80), 0);
    }

    #[tokio::test]
    async fn below_the_high_threshold_nothing_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let report = store.garbage_collect(&HashSet::new(), 100, 99).await;
        // The test filesystem is not 100% full.
        let report = report.unwrap();
        assert!(report.removed.is_empty());
        assert!(matches!(
            store.garbage_collect(&HashSet::new(), 50, 60).await,
            Err(GarbageCollectError::InvalidThresholds { .. })
        ));
        let usage = store.disk_usage().unwrap();
        assert!(
            usage.capacity_bytes > 0 && usage.inodes_used >= 2,
            "{usage:?}"
        );
    }

    #[tokio::test]
    async fn at_the_high_threshold_unused_images_go_oldest_first() {
        use crate::digest::sha256_digest;
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        // Two images with a config blob each (no layers); a threshold of 1% is always passed.
        let mut ids = Vec::new();
        for (n, last_used) in [(1u8, 10u64), (2, 20)] {
            let config = format!("{{\"n\":{n}}}");
            let id = sha256_digest(config.as_bytes());
            store
                .inner
                .blobs
                .write(&id, None, config.as_bytes())
                .unwrap();
            let mut record = image(&id, 0, 1);
            record.manifest_digest = id.clone();
            store.commit(record).unwrap();
            store
                .index()
                .update(|images| {
                    images.get_mut(&id).unwrap().last_used = last_used;
                    ((), true)
                })
                .unwrap();
            ids.push(id);
        }
        let in_use = HashSet::from([ids[1].clone()]);
        let err = store.garbage_collect(&in_use, 1, 0).await.unwrap_err();
        match err {
            GarbageCollectError::NotEnoughFreed { removed, freed, .. } => {
                assert_eq!(removed, [ids[0].clone()]);
                assert_eq!(freed, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(store.get(&ids[0]).is_none());
        assert!(store.get(&ids[1]).is_some());
        assert!(!store.inner.blobs.contains(&ids[0], None));
    }
}
