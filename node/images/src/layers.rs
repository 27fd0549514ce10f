//! Unpacked layers: `layers/<chain ID hex>/`, each unpacked once into a temporary directory of
//! the store's `tmp/` (same filesystem), checked against its diff ID, and renamed into place;
//! a layer directory is therefore either complete or absent. Removal renames the directory
//! away first for the same reason.

use std::path::{Path, PathBuf};

use crate::digest::{InvalidDigestError, changed_at, digest_hex};
use crate::unpack::{UnpackLayerError, unpack_layer};

/// The unpacked layers of a store.
#[derive(Debug, Clone)]
pub(crate) struct LayerStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl LayerStore {
    /// Layers under `dir`, temporary directories under `tmp` (same filesystem).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    /// The directory of the layer with chain ID `chain_id`.
    pub fn path(&self, chain_id: &str) -> Result<PathBuf, InvalidDigestError> {
        Ok(self.dir.join(digest_hex(chain_id)?))
    }

    /// Whether the layer is unpacked.
    pub fn contains(&self, chain_id: &str) -> bool {
        self.path(chain_id).is_ok_and(|p| p.is_dir())
    }

    /// Unpacks the layer blob at `blob` as chain ID `chain_id`, checking that its content is
    /// `diff_id`. The caller serialises calls for one chain ID; an already unpacked layer is
    /// left as it is.
    pub fn unpack(
        &self,
        chain_id: &str,
        diff_id: &str,
        blob: &Path,
    ) -> Result<(), UnpackLayerError> {
        let target = self.path(chain_id).map_err(|e| UnpackLayerError::Store {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        if target.is_dir() {
            return Ok(());
        }
        let io = |source| UnpackLayerError::Store {
            path: target.clone(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&self.tmp)
            .map_err(io)?;
        let file = std::fs::File::open(blob).map_err(io)?;
        let started = std::time::Instant::now();
        let unpacked = unpack_layer(file, tmp.path())?;
        if unpacked.diff_id != diff_id {
            return Err(UnpackLayerError::DiffIdMismatch {
                expected: diff_id.to_string(),
                actual: unpacked.diff_id,
            });
        }
        // tempfile makes the directory 0700; a layer root is an ordinary 0755 directory
        // unless the tarball said otherwise.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path())
            .map_err(io)?
            .permissions()
            .mode()
            & 0o7777;
        if mode == 0o700 {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(io)?;
        }
        let tmp_path = tmp.keep();
        if let Err(source) = std::fs::rename(&tmp_path, &target) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(io(source));
        }
        tracing::debug!(
            chain_id,
            entries = unpacked.entries,
            elapsed = ?started.elapsed(),
            "unpacked layer"
        );
        Ok(())
    }

    /// Removes the layer (absent is fine): renamed into `tmp/` first, so no half-removed
    /// layer is ever visible under `layers/`.
    pub fn remove(&self, chain_id: &str) -> std::io::Result<()> {
        let path = self.path(chain_id).map_err(std::io::Error::other)?;
        let doomed = tempfile::Builder::new()
            .prefix("removing-")
            .tempdir_in(&self.tmp)?;
        let doomed_path = doomed.path().join("layer");
        match std::fs::rename(&path, &doomed_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // Dropping the temporary directory removes it with the layer inside.
        doomed.close()
    }

    /// Chain IDs of the layers present, with when each was stored (inode change time: the
    /// rename into place; a layer's mtime is whatever its tarball said).
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::tests::TarBuilder;

    #[test]
    fn unpacks_once_and_removes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["layers", "tmp", "blobs"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let store = LayerStore::new(dir.path().join("layers"), dir.path().join("tmp"));
        let tar = TarBuilder::new().file("hello", "world").tar();
        let blob = dir.path().join("blobs/layer");
        std::fs::write(&blob, &tar).unwrap();
        let diff_id = crate::digest::sha256_digest(&tar);

        store.unpack(&diff_id, &diff_id, &blob).unwrap();
        let path = store.path(&diff_id).unwrap();
        assert_eq!(std::fs::read(path.join("hello")).unwrap(), b"world");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o755);
        let inode = std::fs::metadata(path.join("hello")).unwrap().ino();
        store.unpack(&diff_id, &diff_id, &blob).unwrap();
        assert_eq!(std::fs::metadata(path.join("hello")).unwrap().ino(), inode);
        assert_eq!(store.list().unwrap().len(), 1);

        store.remove(&diff_id).unwrap();
        assert!(!store.contains(&diff_id));
        store.remove(&diff_id).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_wrong_diff_id_leaves_no_layer() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["layers", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let store = LayerStore::new(dir.path().join("layers"), dir.path().join("tmp"));
        let blob = dir.path().join("layer.tar");
        std::fs::write(&blob, TarBuilder::new().file("a", "b").tar()).unwrap();
        let claimed = crate::digest::sha256_digest(b"something else");
        let err = store.unpack(&claimed, &claimed, &blob).unwrap_err();
        assert!(
            matches!(err, UnpackLayerError::DiffIdMismatch { .. }),
            "{err:?}"
        );
        assert!(!store.contains(&claimed));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
