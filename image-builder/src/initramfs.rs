//! Reproducible initramfs archives (gzip-compressed cpio, newc format) and their unpacking:
//! entries sorted, owned by 0:0, stamped with one time, inode numbers in order.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

/// What an entry of the image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A file with these contents.
    File(Vec<u8>),
    /// A file with the contents of this path on the build host (read when written).
    HostFile(PathBuf),
    /// A symbolic link to this target.
    Symlink(String),
}

/// One entry: kind and permission bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o755`).
    pub mode: u32,
}

/// The tree of an image, by path without a leading slash (`usr/bin/etcd`).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// Why an initramfs could not be written or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading an input or writing the archive failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive holds an entry that would land outside the target directory.
    #[error("initramfs entry {0:?} escapes the target directory")]
    UnsafePath(String),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InitramfsError + 'a {
    move |source| InitramfsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Tree {
    /// Adds an entry, and its parent directories (0755) when missing.
    pub fn add(&mut self, path: &str, kind: EntryKind, mode: u32) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(Entry {
                    kind: EntryKind::Directory,
                    mode: 0o755,
                });
            parent = dir.parent();
        }
        self.entries.insert(path, Entry { kind, mode });
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Writes the tree as a gzip-compressed newc cpio archive, every entry stamped `mtime`.
    /// Returns the size of each file entry, by path.
    pub fn write_initramfs(
        &self,
        out: &Path,
        mtime: u32,
    ) -> Result<BTreeMap<String, u64>, InitramfsError> {
        let file = std::fs::File::create(out).map_err(io("creating", out))?;
        let mut gzip = GzEncoder::new(std::io::BufWriter::new(file), Compression::new(6));
        let mut sizes = BTreeMap::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (type_bits, data) = match &entry.kind {
                EntryKind::Directory => (0o040000, Vec::new()),
                EntryKind::File(data) => (0o100000, data.clone()),
                EntryKind::HostFile(host) => {
                    (0o100000, std::fs::read(host).map_err(io("reading", host))?)
                }
                EntryKind::Symlink(target) => (0o120000, target.clone().into_bytes()),
            };
            if type_bits == 0o100000 {
                sizes.insert(path.clone(), data.len() as u64);
            }
            let nlink = if type_bits == 0o040000 { 2 } else { 1 };
            let mut writer = cpio::newc::Builder::new(path)
                .ino(ino as u32 + 1)
                .mode(type_bits | entry.mode)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(mtime)
                .write(&mut gzip, data.len() as u32);
            writer.write_all(&data).map_err(io("writing", out))?;
            writer.finish().map_err(io("writing", out))?;
        }
        cpio::newc::trailer(&mut gzip).map_err(io("writing", out))?;
        let mut inner = gzip.finish().map_err(io("writing", out))?;
        inner.flush().map_err(io("writing", out))?;
        Ok(sizes)
    }
}

/// Unpacks a gzip-compressed newc cpio archive into `target`, which must exist. Several
/// archives concatenated (each gzip member or cpio trailer followed by another archive) are
/// read as one tree, as the kernel does. No entry lands outside `target`: names with `..` or a
/// leading `/`, and paths through a symbolic link, are refused; an existing entry is replaced,
/// never written through.
pub fn unpack_initramfs(archive: &Path, target: &Path) -> Result<usize, InitramfsError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(archive).map_err(io("opening", archive))?;
    let mut reader: Box<dyn Read> = Box::new(MultiGzDecoder::new(std::io::BufReader::new(file)));
    let mut count = 0;
    let mut trailers = 0;
    loop {
        let mut entry = match cpio::NewcReader::new(reader) {
            Ok(entry) => entry,
            // After a complete archive: the end, or padding after the last one.
            Err(_) if trailers > 0 => break,
            Err(err) => return Err(io("reading", archive)(err)),
        };
        let name = entry.entry().name().to_string();
        if entry.entry().is_trailer() {
            trailers += 1;
            reader = entry.finish().map_err(io("reading", archive))?;
            continue;
        }
        if name.split('/').any(|part| part == "..") || name.starts_with('/') {
            return Err(InitramfsError::UnsafePath(name));
        }
        let path = target.join(&name);
        // No parent of the entry may be a symbolic link (it could point out of `target`).
        let mut parent = Path::new(&name).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let through_link = std::fs::symlink_metadata(target.join(dir))
                .is_ok_and(|m| m.file_type().is_symlink());
            if through_link {
                return Err(InitramfsError::UnsafePath(name));
            }
            parent = dir.parent();
        }
        let mode = entry.entry().mode();
        let replace = |path: &Path| match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
            _ => Ok(()),
        };
        match mode & 0o170000 {
            0o040000 => {
                replace(&path).map_err(io("replacing", &path))?;
                std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io("setting the mode of", &path))?;
            }
            0o120000 => {
                let mut link = String::new();
                entry
                    .read_to_string(&mut link)
                    .map_err(io("reading", archive))?;
                replace(&path).map_err(io("replacing", &path))?;
                std::os::unix::fs::symlink(&link, &path).map_err(io("creating", &path))?;
            }
            0o100000 => {
                replace(&path).map_err(io("replacing", &path))?;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io("creating", &path))?;
                std::io::copy(&mut entry, &mut out).map_err(io("writing", &path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io("setting the mode of", &path))?;
            }
            // Device nodes and the like: init makes its own /dev.
            _ => {}
        }
        count += 1;
        reader = entry.finish().map_err(io("reading", archive))?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut tree = Tree::default();
        tree.add("init", EntryKind::File(b"#!binary".to_vec()), 0o755);
        tree.add("usr/bin/kubelet", EntryKind::Symlink("/init".into()), 0o777);
        tree.add(
            "etc/os-release",
            EntryKind::File(b"ID=baton\n".to_vec()),
            0o644,
        );
        tree.add("proc", EntryKind::Directory, 0o555);
        tree
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes_and_unpacks_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.cpio.gz"), dir.path().join("b.cpio.gz"));
        let sizes = tree().write_initramfs(&a, 0).unwrap();
        tree().write_initramfs(&b, 0).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(sizes["init"], 8);
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // init, usr, usr/bin, usr/bin/kubelet, etc, etc/os-release, proc
        assert_eq!(unpack_initramfs(&a, &root).unwrap(), 7);
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"#!binary");
        assert_eq!(
            std::fs::read_link(root.join("usr/bin/kubelet")).unwrap(),
            Path::new("/init")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn an_appended_archive_adds_to_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (base, extra) = (dir.path().join("base.gz"), dir.path().join("extra.gz"));
        tree().write_initramfs(&base, 0).unwrap();
        let mut config = Tree::default();
        config.add(
            "etc/baton/machine-config.yaml",
            EntryKind::File(b"kind: MachineConfig\n".to_vec()),
            0o600,
        );
        config.write_initramfs(&extra, 0).unwrap();
        let both = dir.path().join("both.gz");
        let mut bytes = std::fs::read(&base).unwrap();
        bytes.extend(std::fs::read(&extra).unwrap());
        std::fs::write(&both, bytes).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        unpack_initramfs(&both, &root).unwrap();
        assert!(root.join("init").exists());
        assert_eq!(
            std::fs::read(root.join("etc/baton/machine-config.yaml")).unwrap(),
            b"kind: MachineConfig\n"
        );
    }

    #[test]
    fn entries_through_a_symbolic_link_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mut evil = Tree::default();
        evil.add(
            "a",
            EntryKind::Symlink(outside.display().to_string()),
            0o777,
        );
        evil.add("a/planted", EntryKind::File(b"x".to_vec()), 0o644);
        let archive = dir.path().join("evil.gz");
        evil.write_initramfs(&archive, 0).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack_initramfs(&archive, &root).unwrap_err();
        assert!(
            matches!(err, InitramfsError::UnsafePath(ref name) if name == "a/planted"),
            "{err}"
        );
        assert!(!outside.join("planted").exists());
    }
}
