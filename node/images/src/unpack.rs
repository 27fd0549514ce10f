//! Unpacking one layer tarball into its own directory, in the form overlayfs expects of a
//! lower directory: OCI whiteouts (`.wh.<name>`) become whiteout character devices (0/0), and
//! opaque markers (`.wh..wh..opq`) become the `trusted.overlay.opaque=y` xattr on their
//! directory, so stacking layer directories as lowerdirs gives the image's filesystem.
//!
//! Entries keep their mode, owner, mtime and xattrs; symlinks, hardlinks (within the layer),
//! device nodes and FIFOs are created as such (the store runs as root). An entry whose path
//! leaves the layer (`..`), or that would be written through a symlink, is refused with an
//! error naming it. The uncompressed stream is hashed while it is read, so the caller can check
//! the diff ID.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};

use crate::digest::HashingReader;

/// Prefix of OCI whiteout files.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of whiteout-namespace metadata files (aufs); the opaque marker is one of them.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The opaque-directory marker.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Errors unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackLayerError {
    /// The layer is compressed with something other than gzip.
    #[error("unsupported layer compression {compression}")]
    UnsupportedCompression {
        /// The compression (`zstd`).
        compression: &'static str,
    },
    /// The tar stream (or its compression) is corrupt or truncated.
    #[error("reading the layer tarball")]
    Read(#[source] std::io::Error),
    /// An entry's path leaves the layer root.
    #[error("layer entry {entry:?} escapes the layer root")]
    PathEscapes {
        /// The entry's path in the tarball.
        entry: String,
    },
    /// An entry would be written through a symlink (or a non-directory) of the layer.
    #[error("layer entry {entry:?} goes through {component:?}, which is not a directory")]
    NotADirectory {
        /// The entry's path in the tarball.
        entry: String,
        /// The offending component.
        component: String,
    },
    /// A hardlink points at a path outside the layer, or at nothing unpacked before it.
    #[error("layer entry {entry:?} links to {target:?}, which is not in the layer")]
    BadHardlink {
        /// The entry's path in the tarball.
        entry: String,
        /// The link target.
        target: String,
    },
    /// Creating an entry or setting its metadata failed.
    #[error("unpacking layer entry {entry:?}")]
    Entry {
        /// The entry's path in the tarball.
        entry: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Preparing, opening or moving the layer's files in the store failed.
    #[error("storing the layer at {path}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The uncompressed content does not match the diff ID of the image config.
    #[error("layer content digest mismatch: expected diff ID {expected}, got {actual}")]
    DiffIdMismatch {
        /// The diff ID in the image config.
        expected: String,
        /// The digest of the unpacked tar.
        actual: String,
    },
}

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnpackedLayer {
    /// `sha256:` digest of the uncompressed tar (the diff ID).
    pub diff_id: String,
    /// Entries unpacked.
    pub entries: u64,
}

/// Unpacks the (possibly gzip-compressed) layer tarball `source` into the empty directory
/// `dest`.
pub(crate) fn unpack_layer(
    source: impl Read,
    dest: &Path,
) -> Result<UnpackedLayer, UnpackLayerError> {
    let mut buffered = BufReader::with_capacity(64 * 1024, source);
    let magic = buffered.fill_buf().map_err(UnpackLayerError::Read)?;
    let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(UnpackLayerError::UnsupportedCompression {
            compression: "zstd",
        });
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader::new(stream);
    let mut unpacker = Unpacker {
        root: dest.to_path_buf(),
        whiteouts: HashSet::new(),
        dirs: Vec::new(),
        entries: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(UnpackLayerError::Read)? {
            let entry = entry.map_err(UnpackLayerError::Read)?;
            unpacker.entry(entry)?;
        }
    }
    // The end-of-archive blocks and any padding belong to the diff ID too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(UnpackLayerError::Read)?;
    unpacker.finish()?;
    Ok(UnpackedLayer {
        diff_id: hashing.digest(),
        entries: unpacker.entries,
    })
}

/// Metadata applied to a directory once everything inside it is unpacked.
#[derive(Debug)]
struct DirMeta {
    entry: String,
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

#[derive(Debug)]
struct Unpacker {
    root: PathBuf,
    /// Paths (relative) whited out by this layer: a directory created later at such a path
    /// must hide the lower one entirely (opaque).
    whiteouts: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
    entries: u64,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackLayerError> {
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = relative_path(&raw)
            .ok_or_else(|| UnpackLayerError::PathEscapes { entry: raw.clone() })?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let io = |source| UnpackLayerError::Entry {
            entry: raw.clone(),
            source,
        };
        let meta = EntryMeta {
            mode: header.mode().map_err(io)? & 0o7777,
            uid: header.uid().map_err(io)?,
            gid: header.gid().map_err(io)?,
            mtime: header.mtime().map_err(io)?,
        };

        if rel.as_os_str().is_empty() {
            // The layer root itself ("./"): only its metadata matters.
            if kind.is_dir() {
                self.dirs.push(DirMeta {
                    entry: raw,
                    path: self.root.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            return Ok(());
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();

        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self.ensure_dirs(&raw, &parent_rel)?;
            self.entries += 1;
            if name == WHITEOUT_OPAQUE {
                rustix::fs::lsetxattr(
                    &parent,
                    OVERLAY_OPAQUE_XATTR,
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| io(e.into()))?;
            } else if !name.starts_with(WHITEOUT_META_PREFIX) {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(UnpackLayerError::PathEscapes { entry: raw });
                }
                let target = parent.join(hidden);
                remove_existing(&target).map_err(io)?;
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| io(e.into()))?;
                self.whiteouts.insert(parent_rel.join(hidden));
            }
            return Ok(());
        }

        let parent = self.ensure_dirs(&raw, &parent_rel)?;
        let path = parent.join(&name);
        self.entries += 1;
        match kind {
            tar::EntryType::Directory => {
                let existing = std::fs::symlink_metadata(&path).ok();
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_existing(&path).map_err(io)?;
                    std::fs::create_dir(&path).map_err(io)?;
                }
                if self.whiteouts.contains(&rel) {
                    rustix::fs::lsetxattr(
                        &path,
                        OVERLAY_OPAQUE_XATTR,
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(|e| io(e.into()))?;
                }
                set_owner(&path, &meta).map_err(io)?;
                set_xattrs(&mut entry, &path).map_err(io)?;
                self.dirs.push(DirMeta {
                    entry: raw,
                    path,
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&path).map_err(io)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io)?;
                std::io::copy(&mut entry, &mut file).map_err(UnpackLayerError::Read)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| io(std::io::Error::other("symlink without a target")))?;
                remove_existing(&path).map_err(io)?;
                std::os::unix::fs::symlink(&target, &path).map_err(io)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let bad = || UnpackLayerError::BadHardlink {
                    entry: raw.clone(),
                    target: target_raw.clone(),
                };
                let target_rel = relative_path(&target_raw)
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(bad)?;
                let target = self.existing_path(&target_rel).ok_or_else(bad)?;
                if target == path {
                    return Ok(());
                }
                remove_existing(&path).map_err(io)?;
                std::fs::hard_link(&target, &path).map_err(io)?;
                // A hardlink shares its target's inode and metadata.
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().map_err(io)?.unwrap_or(0);
                let minor = header.device_minor().map_err(io)?.unwrap_or(0);
                remove_existing(&path).map_err(io)?;
                mknod(
                    &path,
                    flag,
                    Mode::from_bits_truncate(0o600),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| io(e.into()))?;
            }
            other => {
                tracing::debug!(entry = %raw, kind = ?other, "skipping layer entry of unsupported type");
                self.entries -= 1;
                return Ok(());
            }
        }
        self.whiteouts.remove(&rel);
        set_owner(&path, &meta).map_err(io)?;
        if kind != tar::EntryType::Symlink {
            // After chown, which clears set-user-ID and set-group-ID bits.
            std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(meta.mode),
            )
            .map_err(io)?;
        }
        set_xattrs(&mut entry, &path).map_err(io)?;
        set_mtime(&path, meta.mtime).map_err(io)?;
        Ok(())
    }

    /// Makes sure every directory of `parent_rel` exists as a real directory (not a symlink)
    /// under the root, creating missing ones (0755), and returns its full path.
    fn ensure_dirs(&self, entry: &str, parent_rel: &Path) -> Result<PathBuf, UnpackLayerError> {
        let mut path = self.root.clone();
        for component in parent_rel.components() {
            path.push(component);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(UnpackLayerError::NotADirectory {
                        entry: entry.to_string(),
                        component: path
                            .strip_prefix(&self.root)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&path).map_err(|source| UnpackLayerError::Entry {
                        entry: entry.to_string(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(UnpackLayerError::Entry {
                        entry: entry.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(path)
    }

    /// The full path of `rel` if it exists and is reached through real directories only.
    fn existing_path(&self, rel: &Path) -> Option<PathBuf> {
        let mut path = self.root.clone();
        let mut components = rel.components().peekable();
        while let Some(component) = components.next() {
            path.push(component);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if components.peek().is_some() && !meta.is_dir() {
                return None;
            }
        }
        Some(path)
    }

    /// Applies directory modes and mtimes, deepest last-created first.
    fn finish(&mut self) -> Result<(), UnpackLayerError> {
        for dir in self.dirs.iter().rev() {
            let io = |source| UnpackLayerError::Entry {
                entry: dir.entry.clone(),
                source,
            };
            std::fs::set_permissions(
                &dir.path,
                std::os::unix::fs::PermissionsExt::from_mode(dir.mode),
            )
            .map_err(io)?;
            set_mtime(&dir.path, dir.mtime).map_err(io)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// The entry path relative to the layer root: leading `/` and `./` dropped; `None` when a
/// `..` component would leave the root.
fn relative_path(raw: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Removes whatever is at `path` (a directory with its content); absent is fine.
fn remove_existing(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner(path: &Path, meta: &EntryMeta) -> std::io::Result<()> {
    let uid = u32::try_from(meta.uid).map_err(std::io::Error::other)?;
    let gid = u32::try_from(meta.gid).map_err(std::io::Error::other)?;
    let current = std::fs::symlink_metadata(path)?;
    if current.uid() == uid && current.gid() == gid {
        return Ok(());
    }
    fchownat(
        None,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

fn set_mtime(path: &Path, mtime: u64) -> std::io::Result<()> {
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let time = TimeSpec::new(secs, 0);
    utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(std::io::Error::from)
}

/// Applies the entry's PAX `SCHILY.xattr.*` records (file capabilities and the like), except
/// overlayfs' own `trusted.overlay.*`, which only the store's whiteout handling sets.
fn set_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> std::io::Result<()> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(());
    };
    for extension in extensions {
        let extension = extension?;
        let Ok(key) = extension.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        rustix::fs::lsetxattr(
            path,
            name,
            extension.value_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// Builds tarballs entry by entry for tests.
    pub(crate) struct TarBuilder(tar::Builder<Vec<u8>>);

    impl TarBuilder {
        pub(crate) fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h
        }

        pub(crate) fn dir(mut self, path: &str, mode: u32) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, mode, 0);
            self.0.append_data(&mut h, path, std::io::empty()).unwrap();
            self
        }

        pub(crate) fn file(mut self, path: &str, data: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
            self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
            self
        }

        pub(crate) fn file_owned(mut self, path: &str, mode: u32, uid: u64, data: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(uid);
            self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
            self
        }

        pub(crate) fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        pub(crate) fn hardlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        /// An entry whose stored name is `raw` verbatim (the tar crate refuses `..` paths).
        pub(crate) fn raw_file(mut self, raw: &str, data: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..raw.len()].copy_from_slice(raw.as_bytes());
            h.set_cksum();
            self.0.append(&h, data.as_bytes()).unwrap();
            self
        }

        pub(crate) fn tar(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }

        pub(crate) fn gzip(self) -> Vec<u8> {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&self.tar()).unwrap();
            gz.finish().unwrap()
        }
    }

    fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<UnpackedLayer, UnpackLayerError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(data, dir.path());
        (dir, result)
    }

    fn is_whiteout(path: &Path) -> bool {
        let meta = std::fs::symlink_metadata(path).unwrap();
        meta.file_type().is_char_device() && meta.rdev() == 0
    }

    fn is_opaque(path: &Path) -> bool {
        let mut buf = [0u8; 8];
        rustix::fs::lgetxattr(path, OVERLAY_OPAQUE_XATTR, &mut buf[..])
            .is_ok_and(|n| buf[..n] == *b"y")
    }

    #[test]
    fn unpacks_files_links_and_modes_and_hashes_the_tar() {
        let tar = TarBuilder::new()
            .dir("bin/", 0o755)
            .file_owned("bin/tool", 0o4755, 0, "#!/bin/sh\n")
            .symlink("bin/sh", "tool")
            .hardlink("bin/tool2", "bin/tool")
            .dir("tmp/", 0o1777)
            .file_owned("home/user/file", 0o600, 1000, "x")
            .tar();
        let (dir, result) = unpack(&tar);
        let layer = result.unwrap();
        assert_eq!(layer.diff_id, crate::digest::sha256_digest(&tar));
        let root = dir.path();
        let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 1_000_000);
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            std::fs::metadata(root.join("bin/tool2")).unwrap().ino(),
            tool.ino()
        );
        assert_eq!(
            std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        let file = std::fs::metadata(root.join("home/user/file")).unwrap();
        assert_eq!((file.uid(), file.gid()), (1000, 1000));
        assert_eq!(
            std::fs::metadata(root.join("bin")).unwrap().mtime(),
            1_000_000
        );
    }

    #[test]
    fn gzip_layers_hash_the_uncompressed_stream() {
        let builder = || TarBuilder::new().file("a", "1");
        let plain = builder().tar();
        let (_dir, result) = unpack(&builder().gzip());
        assert_eq!(
            result.unwrap().diff_id,
            crate::digest::sha256_digest(&plain)
        );
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = TarBuilder::new()
            .dir("etc/", 0o755)
            .file("etc/.wh.os-release", "")
            .file("etc/motd", "hi")
            .file("var/.wh.cache", "")
            .tar();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert!(is_whiteout(&dir.path().join("etc/os-release")));
        assert!(is_whiteout(&dir.path().join("var/cache")));
        assert!(!dir.path().join("etc/.wh.os-release").exists());
        assert_eq!(std::fs::read(dir.path().join("etc/motd")).unwrap(), b"hi");
    }

    #[test]
    fn opaque_markers_become_the_overlay_xattr() {
        let tar = TarBuilder::new()
            .dir("data/", 0o755)
            .file("data/.wh..wh..opq", "")
            .file("data/new", "n")
            .file("other/.wh..wh..opq", "")
            .tar();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert!(is_opaque(&dir.path().join("data")));
        assert!(is_opaque(&dir.path().join("other")));
        assert!(!dir.path().join("data/.wh..wh..opq").exists());
        assert!(dir.path().join("data/new").exists());
    }

    #[test]
    fn a_directory_replacing_a_whiteout_is_opaque() {
        let tar = TarBuilder::new()
            .file(".wh.cfg", "")
            .dir("cfg/", 0o755)
            .file(".wh.single", "")
            .file("single", "again")
            .tar();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert!(dir.path().join("cfg").is_dir());
        assert!(is_opaque(&dir.path().join("cfg")));
        assert_eq!(std::fs::read(dir.path().join("single")).unwrap(), b"again");
    }

    #[test]
    fn parent_dir_components_are_refused() {
        let tar = TarBuilder::new().raw_file("a/../../evil", "x").tar();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackLayerError::PathEscapes { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("a/../../evil"), "{err}");
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let tar = TarBuilder::new()
            .symlink("etc", outside.path().to_str().unwrap())
            .file("etc/passwd", "owned")
            .tar();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackLayerError::NotADirectory { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        assert!(!outside.path().join("passwd").exists());
    }

    #[test]
    fn hardlinks_must_stay_in_the_layer() {
        for target in ["../../etc/shadow", "missing"] {
            let tar = TarBuilder::new().file("a", "1").hardlink("b", target).tar();
            let (_dir, result) = unpack(&tar);
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackLayerError::BadHardlink { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn absolute_paths_stay_inside_the_root() {
        let tar = TarBuilder::new().raw_file("/abs/file", "x").tar();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert!(dir.path().join("abs/file").exists());
    }

    #[test]
    fn truncated_and_zstd_layers_are_errors() {
        let tar = TarBuilder::new().file("big", &"x".repeat(10_000)).tar();
        let (_dir, result) = unpack(&tar[..4096]);
        assert!(
            matches!(result, Err(UnpackLayerError::Read(_))),
            "{result:?}"
        );
        let (_dir, result) = unpack(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]);
        assert!(matches!(
            result,
            Err(UnpackLayerError::UnsupportedCompression { .. })
        ));
    }
}
