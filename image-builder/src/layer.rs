//! Reproducible layer tarballs: entries sorted by path, owned by 0:0, one fixed mtime, and a
//! gzip stream with a zeroed header time and a fixed compression level, so the same entries
//! always give the same bytes and therefore the same digests.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::Compression;
use flate2::GzBuilder;
use sha2::{Digest, Sha256};

/// The gzip level of every layer (a fixed level is part of reproducibility).
const GZIP_LEVEL: u32 = 9;

/// Prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Errors writing a layer tarball.
#[derive(Debug, thiserror::Error)]
pub enum BuildLayerError {
    /// A path is empty, absolute, or has `.`/`..` components.
    #[error("invalid layer path {path:?}")]
    InvalidPath {
        /// The path.
        path: String,
    },
    /// Writing the tar or gzip stream failed.
    #[error("writing the layer tarball")]
    Write(#[source] std::io::Error),
}

#[derive(Debug, Clone)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// A layer under construction; entries are kept sorted by path.
#[derive(Debug, Clone)]
pub struct LayerBuilder {
    entries: BTreeMap<String, Entry>,
    mtime: u64,
}

/// A finished layer: the uncompressed tar's digest (the diff ID) and the gzip blob.
#[derive(Debug, Clone)]
pub struct BuiltLayerBlob {
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:` digest of the gzip blob.
    pub digest: String,
    /// The gzip-compressed tar.
    pub gzip: Vec<u8>,
}

impl LayerBuilder {
    /// An empty layer whose entries all get `mtime` (seconds since the epoch).
    pub fn new(mtime: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    /// Adds a directory (and any missing parents, mode 0755).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, BuildLayerError> {
        let path = check_path(path)?;
        self.parents(&path);
        self.entries.insert(path, Entry::Dir { mode });
        Ok(self)
    }

    /// Adds a regular file.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, BuildLayerError> {
        let path = check_path(path)?;
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                mode,
                data: data.into(),
            },
        );
        Ok(self)
    }

    /// Adds a symbolic link to `target` (stored verbatim).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, BuildLayerError> {
        let path = check_path(path)?;
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
        Ok(self)
    }

    /// Adds an OCI whiteout that deletes `path` of the layers below.
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self, BuildLayerError> {
        let path = check_path(path)?;
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), path.as_str()),
        };
        self.file(
            &format!("{parent}{WHITEOUT_PREFIX}{name}"),
            0o644,
            Vec::new(),
        )
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(Entry::Dir { mode: 0o755 });
            end += 1;
        }
    }

    /// Writes the tar (sorted entries, 0:0, fixed mtime) and its gzip blob.
    pub fn build(&self) -> Result<BuiltLayerBlob, BuildLayerError> {
        let tar = self.tar().map_err(BuildLayerError::Write)?;
        let mut gz = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), Compression::new(GZIP_LEVEL));
        gz.write_all(&tar).map_err(BuildLayerError::Write)?;
        let gzip = gz.finish().map_err(BuildLayerError::Write)?;
        Ok(BuiltLayerBlob {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&gzip),
            gzip,
        })
    }

    fn tar(&self) -> std::io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(self.mtime);
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
            }
        }
        builder.into_inner()
    }
}

fn check_path(path: &str) -> Result<String, BuildLayerError> {
    let trimmed = path.trim_end_matches('/');
    let valid = !trimmed.is_empty()
        && !trimmed.starts_with('/')
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(BuildLayerError::InvalidPath {
            path: path.to_string(),
        })
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layer: &BuiltLayerBlob) -> Vec<(String, tar::EntryType, u64, u64)> {
        let tar = flate2::read::GzDecoder::new(layer.gzip.as_slice());
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_with_parents_and_fixed_metadata() {
        let mut layer = LayerBuilder::new(7);
        layer.file("usr/bin/z", 0o755, "z").unwrap();
        layer.symlink("bin", "usr/bin").unwrap();
        layer.whiteout("etc/old").unwrap();
        let built = layer.build().unwrap();
        let entries = names(&built);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "etc/",
                "etc/.wh.old",
                "usr/",
                "usr/bin/",
                "usr/bin/z"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 7 && e.3 == 0));
        assert_eq!(entries[0].1, tar::EntryType::Symlink);
    }

    #[test]
    fn same_entries_give_the_same_digests() {
        let build = || {
            let mut layer = LayerBuilder::new(0);
            layer.dir("tmp", 0o1777).unwrap();
            layer
                .file("etc/passwd", 0o644, "root:x:0:0::/:/bin/sh\n")
                .unwrap();
            layer.build().unwrap()
        };
        let (a, b) = (build(), build());
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_ne!(a.digest, a.diff_id);
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut layer = LayerBuilder::new(0);
        assert!(layer.file("../x", 0o644, "").is_err());
        assert!(layer.file("/etc/x", 0o644, "").is_err());
        assert!(layer.dir("a/./b", 0o755).is_err());
    }
}
