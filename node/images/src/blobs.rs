//! The blob store: `blobs/sha256/<hex>`, each blob verified against its digest while it is
//! written to a temporary file of the store's `tmp/` (same filesystem) and renamed into place
//! only when complete and correct. An interrupted or corrupt write leaves nothing under
//! `blobs/`; the temporary file is removed when the write is dropped, and by `ImageStore::open`
//! after a crash.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::{InvalidDigestError, changed_at, digest_hex};

/// Errors writing a blob.
#[derive(Debug, thiserror::Error)]
pub enum WriteBlobError {
    /// The digest cannot name a blob.
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigestError),
    /// The content does not hash to the expected digest.
    #[error("blob digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The expected digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// The content does not have the expected size.
    #[error("blob {digest} size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The expected size.
        expected: u64,
        /// The received size.
        actual: u64,
    },
    /// Reading the source failed.
    #[error("reading the content of blob {digest}")]
    Read {
        /// The blob.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the blob failed.
    #[error("writing blob {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The blobs of a store.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Blobs under `dir`, temporary files under `tmp` (same filesystem).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    /// The path of blob `digest`.
    pub fn path(&self, digest: &str) -> Result<PathBuf, InvalidDigestError> {
        Ok(self.dir.join(digest_hex(digest)?))
    }

    /// Whether blob `digest` is present (with `size`, when given).
    pub fn contains(&self, digest: &str, size: Option<u64>) -> bool {
        let Ok(path) = self.path(digest) else {
            return false;
        };
        match std::fs::metadata(path) {
            Ok(meta) => meta.is_file() && size.is_none_or(|s| s == meta.len()),
            Err(_) => false,
        }
    }

    /// Reads blob `digest` whole (for manifests and configs).
    pub fn read(&self, digest: &str) -> std::io::Result<Vec<u8>> {
        let path = self.path(digest).map_err(std::io::Error::other)?;
        std::fs::read(path)
    }

    /// Writes blob `digest` from `source`, verifying digest (and `size`, when given).
    pub fn write(
        &self,
        digest: &str,
        size: Option<u64>,
        source: impl Read,
    ) -> Result<PathBuf, WriteBlobError> {
        let target = self.path(digest)?;
        let (mut tmp, _) = self.temp_file()?;
        let mut hasher = Sha256::new();
        let mut count = 0u64;
        let mut source = source;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteBlobError::Read {
                        digest: digest.to_string(),
                        source,
                    });
                }
            };
            hasher.update(&buf[..n]);
            count += n as u64;
            tmp.write_all(&buf[..n])
                .map_err(|source| self.write_error(source))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        check(digest, size, &actual, count)?;
        tmp.as_file()
            .sync_all()
            .map_err(|source| self.write_error(source))?;
        tmp.persist(&target).map_err(|e| WriteBlobError::Write {
            path: target.clone(),
            source: e.error,
        })?;
        Ok(target)
    }

    /// Writes a blob whose digest is not known in advance; returns its digest and size.
    pub fn write_unknown(&self, source: impl Read) -> Result<(String, u64), WriteBlobError> {
        let (mut tmp, _) = self.temp_file()?;
        let mut source = crate::digest::HashingReader::new(source);
        std::io::copy(&mut source, &mut tmp).map_err(|e| WriteBlobError::Read {
            digest: "(unknown)".to_string(),
            source: e,
        })?;
        let size = source.count();
        let digest = source.digest();
        let target = self.path(&digest)?;
        tmp.as_file()
            .sync_all()
            .map_err(|source| self.write_error(source))?;
        tmp.persist(&target).map_err(|e| WriteBlobError::Write {
            path: target.clone(),
            source: e.error,
        })?;
        Ok((digest, size))
    }

    /// Starts an asynchronous write of blob `digest` (for registry downloads).
    pub fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter, WriteBlobError> {
        let target = self.path(digest)?;
        let (tmp, file) = self.temp_file()?;
        Ok(BlobWriter {
            target,
            digest: digest.to_string(),
            size,
            file: tokio::fs::File::from_std(file),
            tmp,
            hasher: Sha256::new(),
            count: 0,
        })
    }

    /// Removes blob `digest` (absent is fine).
    pub fn remove(&self, digest: &str) -> std::io::Result<()> {
        let path = self.path(digest).map_err(std::io::Error::other)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Digests of the blobs present, with when each was stored (inode change time).
    pub fn list(&self) -> std::io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if crate::digest::is_hex64(&name) {
                let modified = changed_at(&entry.metadata()?);
                out.push((format!("sha256:{name}"), modified));
            }
        }
        Ok(out)
    }

    /// A temporary file in `tmp/` and a second handle to it for writing.
    fn temp_file(&self) -> Result<(tempfile::NamedTempFile, std::fs::File), WriteBlobError> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)
            .map_err(|source| self.write_error(source))?;
        let file = tmp.reopen().map_err(|source| self.write_error(source))?;
        Ok((tmp, file))
    }

    fn write_error(&self, source: std::io::Error) -> WriteBlobError {
        WriteBlobError::Write {
            path: self.tmp.clone(),
            source,
        }
    }
}

/// Verifies a finished write.
fn check(digest: &str, size: Option<u64>, actual: &str, count: u64) -> Result<(), WriteBlobError> {
    if actual != digest {
        return Err(WriteBlobError::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    match size {
        Some(expected) if expected != count => Err(WriteBlobError::SizeMismatch {
            digest: digest.to_string(),
            expected,
            actual: count,
        }),
        _ => Ok(()),
    }
}

/// A blob being written from an asynchronous source. Dropping it without [`commit`] removes
/// the temporary file.
///
/// [`commit`]: BlobWriter::commit
#[derive(Debug)]
pub(crate) struct BlobWriter {
    target: PathBuf,
    digest: String,
    size: Option<u64>,
    file: tokio::fs::File,
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    count: u64,
}

impl BlobWriter {
    /// Appends `chunk`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), WriteBlobError> {
        self.hasher.update(chunk);
        self.count += chunk.len() as u64;
        if let Some(expected) = self.size
            && self.count > expected
        {
            return Err(WriteBlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.count,
            });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(|source| WriteBlobError::Write {
                path: self.tmp.path().to_path_buf(),
                source,
            })
    }

    /// Verifies the content and moves the blob into place.
    pub async fn commit(mut self) -> Result<PathBuf, WriteBlobError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        check(&self.digest, self.size, &actual, self.count)?;
        let io = |source| WriteBlobError::Write {
            path: self.target.clone(),
            source,
        };
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let target = self.target.clone();
        self.tmp
            .persist(&target)
            .map_err(|e| WriteBlobError::Write {
                path: target.clone(),
                source: e.error,
            })?;
        Ok(target)
    }
}

/// The directory of blobs within a store root.
pub(crate) fn blobs_dir(root: &Path) -> PathBuf {
    root.join("blobs").join("sha256")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(blobs_dir(dir.path())).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let store = BlobStore::new(blobs_dir(dir.path()), dir.path().join("tmp"));
        (dir, store)
    }

    fn leftovers(dir: &Path) -> usize {
        std::fs::read_dir(blobs_dir(dir)).unwrap().count()
            + std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    /// Yields some bytes, then fails, like a connection dropped mid-download.
    struct Interrupted(usize);

    impl Read for Interrupted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset",
                ));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn writes_verified_blobs() {
        let (dir, store) = store();
        let digest = sha256_digest(b"content");
        let path = store.write(&digest, Some(7), &b"content"[..]).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"content");
        assert!(store.contains(&digest, Some(7)));
        assert!(!store.contains(&digest, Some(8)));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn an_interrupted_write_leaves_nothing_behind() {
        let (dir, store) = store();
        let digest = sha256_digest(&[b'x'; 100_000]);
        let err = store.write(&digest, None, Interrupted(70_000)).unwrap_err();
        assert!(matches!(err, WriteBlobError::Read { .. }), "{err:?}");
        assert!(!store.contains(&digest, None));
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[test]
    fn corrupt_content_is_refused() {
        let (dir, store) = store();
        let digest = sha256_digest(b"expected");
        let err = store.write(&digest, None, &b"tampered"[..]).unwrap_err();
        assert!(
            matches!(err, WriteBlobError::DigestMismatch { .. }),
            "{err:?}"
        );
        let err = store.write(&digest, Some(3), &b"expected"[..]).unwrap_err();
        assert!(
            matches!(err, WriteBlobError::SizeMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn an_abandoned_async_write_leaves_nothing_behind() {
        let (dir, store) = store();
        let digest = sha256_digest(b"abcdef");
        let mut writer = store.writer(&digest, Some(6)).unwrap();
        writer.write(b"abc").await.unwrap();
        drop(writer);
        assert_eq!(leftovers(dir.path()), 0);
        let mut writer = store.writer(&digest, Some(6)).unwrap();
        writer.write(b"abc").await.unwrap();
        writer.write(b"def").await.unwrap();
        writer.commit().await.unwrap();
        assert!(store.contains(&digest, Some(6)));
    }

    #[test]
    fn unknown_digests_are_computed() {
        let (_dir, store) = store();
        let (digest, size) = store.write_unknown(&b"layer"[..]).unwrap();
        assert_eq!(digest, sha256_digest(b"layer"));
        assert_eq!(size, 5);
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
