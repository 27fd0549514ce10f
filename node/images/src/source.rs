//! Files of an image being imported, read either from a directory or from a tar archive
//! (indexed once; members are read by seeking, without extracting the archive). Member paths
//! are relative (`index.json`, `blobs/sha256/<hex>`, `<id>/layer.tar`); paths leaving the
//! source are refused.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// A set of files to import from.
pub(crate) trait Source: Send + Sync + std::fmt::Debug {
    /// Opens member `path`.
    fn open(&self, path: &str) -> std::io::Result<Box<dyn Read + Send + '_>>;

    /// Whether member `path` exists.
    fn exists(&self, path: &str) -> bool;

    /// Reads member `path` whole (for small JSON files).
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(path)?.read_to_end(&mut data)?;
        Ok(data)
    }
}

/// `path` normalised to `a/b/c`; `None` if it leaves the source.
fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn not_found(path: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{path} is not in the image archive"),
    )
}

/// An unpacked layout or `docker save` directory.
#[derive(Debug)]
pub(crate) struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, path: &str) -> std::io::Result<PathBuf> {
        let rel = normalise(path).ok_or_else(|| not_found(path))?;
        Ok(self.root.join(rel))
    }
}

impl Source for DirSource {
    fn open(&self, path: &str) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(std::fs::File::open(self.path(path)?)?))
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).is_ok_and(|p| p.is_file())
    }
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

/// A tar archive (an OCI layout tar or a `docker save` tar), indexed once.
#[derive(Debug)]
pub(crate) struct TarSource {
    file: PathBuf,
    members: HashMap<String, Member>,
}

impl TarSource {
    /// Indexes the archive at `file`.
    pub fn open(file: &Path) -> std::io::Result<Self> {
        let mut archive = tar::Archive::new(std::fs::File::open(file)?);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = normalise(&raw) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(
                    path,
                    Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                // Symlinks are relative to their directory, hardlinks to the archive root.
                let target = if kind.is_symlink() && !target.starts_with('/') {
                    let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                    dir.join(&target).to_string_lossy().into_owned()
                } else {
                    target
                };
                if let Some(target) = normalise(&target) {
                    members.insert(path, Member::Link(target));
                }
            }
        }
        Ok(Self {
            file: file.to_path_buf(),
            members,
        })
    }

    /// Offset and size of `path`, following links (a few levels).
    fn locate(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = normalise(path)?;
        for _ in 0..8 {
            match self.members.get(&path)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => path = target.clone(),
            }
        }
        None
    }
}

impl Source for TarSource {
    fn open(&self, path: &str) -> std::io::Result<Box<dyn Read + Send + '_>> {
        let (offset, size) = self.locate(path).ok_or_else(|| not_found(path))?;
        let mut file = std::fs::File::open(&self.file)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(std::io::BufReader::new(file.take(size))))
    }

    fn exists(&self, path: &str) -> bool {
        self.locate(path).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::tests::TarBuilder;

    #[test]
    fn reads_tar_members_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        let tar = TarBuilder::new()
            .file("./manifest.json", "[]")
            .file("abc/layer.tar", "layer-data")
            .symlink("def/layer.tar", "../abc/layer.tar")
            .tar();
        std::fs::write(&archive, tar).unwrap();
        let source = TarSource::open(&archive).unwrap();
        assert_eq!(source.read("manifest.json").unwrap(), b"[]");
        assert_eq!(source.read("def/layer.tar").unwrap(), b"layer-data");
        assert!(!source.exists("index.json"));
        assert_eq!(
            source.read("missing").unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn directory_members_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        let source = DirSource::new(&dir.path().join("src"));
        assert!(!source.exists("../secret"));
        assert!(source.open("../secret").is_err());
    }
}
