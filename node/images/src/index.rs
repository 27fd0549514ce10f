//! The images index, `images.json`: every image's record (ID, names, manifest, layers, config,
//! size, last use). It is written atomically (temporary file, fsync, rename), changed only
//! under an exclusive `flock` of `images.lock` after re-reading it, and re-read whenever
//! another process (`baton image import` beside a running kubelet) replaced it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::Image;

/// Errors reading or writing the images index.
#[derive(Debug, thiserror::Error)]
pub enum ImageIndexError {
    /// The index file could not be read.
    #[error("reading the images index {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index file is not valid.
    #[error("parsing the images index {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The index file could not be written or locked.
    #[error("writing the images index {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: Vec<Image>,
}

/// Identity of the index file as last read or written: a rename gives it a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
    len: u64,
}

/// The in-memory index and its file.
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    lock_path: PathBuf,
    images: BTreeMap<String, Image>,
    stamp: Option<Stamp>,
}

impl Index {
    /// Loads the index of the store at `root` (empty when there is none yet).
    pub fn open(root: &Path) -> Result<Self, ImageIndexError> {
        let mut index = Self {
            path: root.join("images.json"),
            lock_path: root.join("images.lock"),
            images: BTreeMap::new(),
            stamp: None,
        };
        index.reload()?;
        Ok(index)
    }

    /// Re-reads the file if another process replaced it since it was last read.
    pub fn refresh(&mut self) -> Result<(), ImageIndexError> {
        if self.current_stamp() != self.stamp {
            self.reload()?;
        }
        Ok(())
    }

    /// All images, by ID.
    pub fn images(&self) -> &BTreeMap<String, Image> {
        &self.images
    }

    /// Changes the index under the file lock: re-reads the file, applies `change`, and saves
    /// the result if `change` reports a change.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut BTreeMap<String, Image>) -> (T, bool),
    ) -> Result<T, ImageIndexError> {
        let write_error = |source| ImageIndexError::Write {
            path: self.lock_path.clone(),
            source,
        };
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(write_error)?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| write_error(errno.into()))?;
        self.refresh()?;
        let (result, changed) = change(&mut self.images);
        if changed {
            self.save()?;
        }
        Ok(result)
    }

    fn current_stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            len: meta.len(),
        })
    }

    fn reload(&mut self) -> Result<(), ImageIndexError> {
        let stamp = self.current_stamp();
        let data = match std::fs::read(&self.path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.images.clear();
                self.stamp = None;
                return Ok(());
            }
            Err(source) => {
                return Err(ImageIndexError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: IndexFile =
            serde_json::from_slice(&data).map_err(|source| ImageIndexError::Parse {
                path: self.path.clone(),
                source,
            })?;
        self.images = file
            .images
            .into_iter()
            .map(|image| (image.id.clone(), image))
            .collect();
        self.stamp = stamp;
        Ok(())
    }

    fn save(&mut self) -> Result<(), ImageIndexError> {
        let io = |source| ImageIndexError::Write {
            path: self.path.clone(),
            source,
        };
        let file = IndexFile {
            images: self.images.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("the index serialises");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".images.json-")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        self.stamp = self.current_stamp();
        Ok(())
    }
}

/// Adds `image` to `images`, or merges its names into the record with the same ID; names it
/// carries are taken from any other image (a tag names one image).
pub(crate) fn upsert(images: &mut BTreeMap<String, Image>, image: Image) -> Image {
    for other in images.values_mut().filter(|i| i.id != image.id) {
        other.repo_tags.retain(|t| !image.repo_tags.contains(t));
    }
    let merged = match images.remove(&image.id) {
        Some(mut existing) => {
            for tag in image.repo_tags {
                if !existing.repo_tags.contains(&tag) {
                    existing.repo_tags.push(tag);
                }
            }
            for digest in image.repo_digests {
                if !existing.repo_digests.contains(&digest) {
                    existing.repo_digests.push(digest);
                }
            }
            existing.last_used = existing.last_used.max(image.last_used);
            existing
        }
        None => image,
    };
    images.insert(merged.id.clone(), merged.clone());
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(id: &str, tags: &[&str]) -> Image {
        Image {
            id: id.to_string(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![],
            manifest_digest: format!("m-{id}"),
            size: 1,
            config: ImageConfig::default(),
            layers: vec![],
            last_used: 0,
        }
    }

    #[test]
    fn a_tag_moves_to_the_newest_image() {
        let mut images = BTreeMap::new();
        upsert(&mut images, image("a", &["x:1", "x:latest"]));
        let merged = upsert(&mut images, image("b", &["x:latest"]));
        assert_eq!(merged.repo_tags, ["x:latest"]);
        assert_eq!(images["a"].repo_tags, ["x:1"]);
        let merged = upsert(&mut images, image("a", &["x:2"]));
        assert_eq!(merged.repo_tags, ["x:1", "x:2"]);
    }

    #[test]
    fn saves_atomically_and_sees_other_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Index::open(dir.path()).unwrap();
        let mut second = Index::open(dir.path()).unwrap();
        first
            .update(|images| (upsert(images, image("a", &["x:1"])), true))
            .unwrap();
        second.refresh().unwrap();
        assert!(second.images().contains_key("a"));
        second
            .update(|images| (upsert(images, image("b", &["y:1"])), true))
            .unwrap();
        first.refresh().unwrap();
        assert_eq!(first.images().len(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".images.json-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_index_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("images.json"), b"{not json").unwrap();
        let err = Index::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("images.json"), "{err}");
    }
}
