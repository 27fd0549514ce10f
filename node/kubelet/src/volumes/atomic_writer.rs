//! Writes the files of a configMap, secret, downwardAPI or projected volume the way upstream's
//! kubelet does, so that a reader never sees a half-updated volume:
//!
//! ```text
//! <volume>/..2025_01_31_12_00_00.123456789/   the files of one version (a timestamped dir)
//! <volume>/..data -> ..2025_01_31_12_00_00.123456789
//! <volume>/key    -> ..data/key               one symlink per top-level name
//! ```
//!
//! A new version is written to a new timestamped directory, then `..data` is replaced by
//! renaming a fresh symlink over it (rename is atomic), so a container that bind-mounts the
//! volume directory sees either the old or the new files. Nothing is written when the content
//! is unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::ownership::{own_entry, set_volume_ownership};

/// The symlink to the current version's directory.
const DATA_DIR: &str = "..data";
/// The symlink made beside `..data` and renamed over it.
const NEW_DATA_DIR: &str = "..data_tmp";
/// The longest path and file name the writer accepts.
const MAX_PATH: usize = 4096;
const MAX_FILE_NAME: usize = 255;

/// One file of a volume: its content and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A volume's files by relative path.
pub type Payload = BTreeMap<String, FileProjection>;

/// Writing a volume's payload failed.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError {
    let path = path.to_path_buf();
    move |source| AtomicWriteError::Io {
        operation,
        path,
        source,
    }
}

/// Makes `target` show `payload`: returns whether a new version was written (false when the
/// current version already has this content). With `fs_group`, the new files get that group
/// and group read access and directories the setgid bit (upstream's volume ownership for
/// read-only volumes).
pub fn write(
    target: &Path,
    payload: &Payload,
    fs_group: Option<u32>,
) -> Result<bool, AtomicWriteError> {
    let payload = clean_payload(payload)?;
    let data_link = target.join(DATA_DIR);
    let old_version = current_version(target)?;
    let new_top: BTreeSet<&str> = payload.keys().map(|path| top_level(path)).collect();
    let stale = stale_visible_names(target, &new_top)?;

    if let Some(old) = &old_version
        && stale.is_empty()
        && same_content(&target.join(old), &payload)?
        && visible_links_exist(target, &new_top)
    {
        return Ok(false);
    }

    let version = new_version_dir(target)?;
    let version_path = target.join(&version);
    write_files(&version_path, &payload)?;
    if let Some(gid) = fs_group {
        set_volume_ownership(&version_path, gid, true)
            .map_err(io_error("set the ownership of", &version_path))?;
    }

    let new_link = target.join(NEW_DATA_DIR);
    match fs::remove_file(&new_link) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("remove", &new_link)(err));
        }
        _ => {}
    }
    symlink(&version, &new_link).map_err(io_error("create the symlink", &new_link))?;
    fs::rename(&new_link, &data_link).map_err(io_error("rename over", &data_link))?;

    for name in &new_top {
        ensure_visible_link(target, name)?;
    }
    for name in &stale {
        let path = target.join(name);
        fs::remove_file(&path).map_err(io_error("remove", &path))?;
    }
    if let Some(gid) = fs_group {
        let entries = [target.to_path_buf(), data_link.clone()]
            .into_iter()
            .chain(new_top.iter().map(|name| target.join(name)));
        for path in entries {
            own_entry(&path, gid, true).map_err(io_error("set the ownership of", &path))?;
        }
    }
    remove_old_versions(target, &version)?;
    Ok(true)
}

/// The payload with normalised paths, refusing absolute paths, `..` and names the writer uses.
fn clean_payload(payload: &Payload) -> Result<BTreeMap<String, &FileProjection>, AtomicWriteError> {
    let mut clean = BTreeMap::new();
    for (path, file) in payload {
        clean.insert(clean_path(path)?, file);
    }
    Ok(clean)
}

fn clean_path(path: &str) -> Result<String, AtomicWriteError> {
    let invalid = |reason| AtomicWriteError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid("must be shorter than 4096 characters"));
    }
    if path.starts_with('/') {
        return Err(invalid("must be a relative path"));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| invalid("must be UTF-8"))?;
                if part.len() > MAX_FILE_NAME {
                    return Err(invalid("file names must be shorter than 256 characters"));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("must be a relative path"));
            }
        }
    }
    match parts.first() {
        None => Err(invalid("must not be empty")),
        Some(first) if first.starts_with("..") => Err(invalid("must not start with '..'")),
        Some(_) => Ok(parts.join("/")),
    }
}

/// The first component of a clean path: the name of its symlink in the volume directory.
fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The name of the directory `..data` points to, if it points to one.
fn current_version(target: &Path) -> Result<Option<String>, AtomicWriteError> {
    let data_link = target.join(DATA_DIR);
    match fs::read_link(&data_link) {
        Ok(version) => {
            let version = version.to_string_lossy().into_owned();
            Ok(target.join(&version).is_dir().then_some(version))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error("read the symlink", &data_link)(err)),
    }
}

/// Names shown in the volume directory (symlinks into `..data`) that the payload no longer has.
fn stale_visible_names(
    target: &Path,
    wanted: &BTreeSet<&str>,
) -> Result<Vec<String>, AtomicWriteError> {
    let entries = fs::read_dir(target).map_err(io_error("read the directory", target))?;
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read the directory", target))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || wanted.contains(name.as_str()) {
            continue;
        }
        if fs::read_link(entry.path()).is_ok_and(|to| to == Path::new(DATA_DIR).join(&name)) {
            stale.push(name);
        }
    }
    Ok(stale)
}

/// Whether `version` holds exactly the payload's files with the payload's content.
fn same_content(
    version: &Path,
    payload: &BTreeMap<String, &FileProjection>,
) -> Result<bool, AtomicWriteError> {
    let mut present = BTreeSet::new();
    collect_files(version, "", &mut present)?;
    if present.len() != payload.len() || !payload.keys().all(|path| present.contains(path)) {
        return Ok(false);
    }
    for (path, file) in payload {
        let on_disk = version.join(path);
        match fs::read(&on_disk) {
            Ok(data) if data == file.data => {}
            Ok(_) => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_error("read", &on_disk)(err)),
        }
    }
    Ok(true)
}

/// The relative paths of the regular files under `dir`.
fn collect_files(
    dir: &Path,
    prefix: &str,
    files: &mut BTreeSet<String>,
) -> Result<(), AtomicWriteError> {
    let entries = fs::read_dir(dir).map_err(io_error("read the directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read the directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io_error("stat", &entry.path()))?;
        if kind.is_dir() {
            collect_files(&entry.path(), &relative, files)?;
        } else {
            files.insert(relative);
        }
    }
    Ok(())
}

fn visible_links_exist(target: &Path, names: &BTreeSet<&str>) -> bool {
    names.iter().all(|name| {
        fs::read_link(target.join(name)).is_ok_and(|to| to == Path::new(DATA_DIR).join(name))
    })
}

/// Creates a new, empty version directory (mode 0755) and returns its name.
fn new_version_dir(target: &Path) -> Result<String, AtomicWriteError> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let now = jiff::Timestamp::now();
    loop {
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "..{}.{:09}{sequence}",
            now.strftime("%Y_%m_%d_%H_%M_%S"),
            now.subsec_nanosecond()
        );
        let path = target.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("chmod", &path))?;
                return Ok(name);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io_error("create the directory", &path)(err)),
        }
    }
}

/// Writes every file of the payload under `dir` with its mode (not reduced by the umask).
fn write_files(
    dir: &Path,
    payload: &BTreeMap<String, &FileProjection>,
) -> Result<(), AtomicWriteError> {
    for (relative, file) in payload {
        let path = dir.join(relative);
        if let Some(parent) = path.parent().filter(|p| *p != dir) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error("create the directory", parent))?;
        }
        let mode = file.mode & 0o7777;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_error("create", &path))?;
        out.write_all(&file.data)
            .map_err(io_error("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_error("chmod", &path))?;
    }
    Ok(())
}

/// Makes `<target>/<name>` the symlink `..data/<name>`, replacing whatever else is there.
fn ensure_visible_link(target: &Path, name: &str) -> Result<(), AtomicWriteError> {
    let path = target.join(name);
    let wanted = Path::new(DATA_DIR).join(name);
    if fs::read_link(&path).is_ok_and(|to| to == wanted) {
        return Ok(());
    }
    let temporary = target.join("..link_tmp");
    let _ = fs::remove_file(&temporary);
    symlink(&wanted, &temporary).map_err(io_error("create the symlink", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("rename over", &path))
}

/// Removes every version directory but `current` (the previous one, and any a crash left).
fn remove_old_versions(target: &Path, current: &str) -> Result<(), AtomicWriteError> {
    let entries = fs::read_dir(target).map_err(io_error("read the directory", target))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if name.starts_with("..") && name != current && is_dir {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(path, data, mode)| (path.to_string(), file(data, *mode)))
            .collect()
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn versions(dir: &Path) -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| n.starts_with("..") && n != DATA_DIR)
            .collect()
    }

    #[test]
    fn files_are_symlinks_through_data_into_a_timestamped_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        let files = payload(&[
            ("name", "web-0", 0o644),
            ("conf/app.yaml", "a: 1", 0o600),
            ("conf/deep/x", "x", 0o400),
        ]);
        assert!(write(target, &files, None).unwrap());

        let version = fs::read_link(target.join(DATA_DIR)).unwrap();
        let version = version.to_str().unwrap();
        assert!(version.starts_with("..20"), "{version}");
        assert_eq!(versions(target), vec![version.to_owned()]);
        assert_eq!(
            fs::read_link(target.join("name")).unwrap(),
            Path::new("..data/name")
        );
        assert_eq!(
            fs::read_link(target.join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        assert_eq!(
            names(target),
            BTreeSet::from([
                "..data".to_string(),
                version.to_string(),
                "name".into(),
                "conf".into()
            ])
        );
        assert_eq!(fs::read_to_string(target.join("name")).unwrap(), "web-0");
        assert_eq!(
            fs::read_to_string(target.join("conf/app.yaml")).unwrap(),
            "a: 1"
        );
        let mode = |p: &str| fs::metadata(target.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("name"), 0o644);
        assert_eq!(mode("conf/app.yaml"), 0o600);
        assert_eq!(mode("conf/deep/x"), 0o400);
        assert_eq!(mode(version), 0o755);
    }

    #[test]
    fn unchanged_content_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let files = payload(&[("a", "1", 0o644), ("b/c", "2", 0o644)]);
        assert!(write(dir.path(), &files, None).unwrap());
        let before = fs::read_link(dir.path().join(DATA_DIR)).unwrap();
        assert!(!write(dir.path(), &files, None).unwrap());
        assert_eq!(fs::read_link(dir.path().join(DATA_DIR)).unwrap(), before);
    }

    #[test]
    fn updates_swap_the_version_and_drop_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        write(
            target,
            &payload(&[
                ("keep", "old", 0o644),
                ("gone", "x", 0o644),
                ("d/f", "1", 0o644),
            ]),
            None,
        )
        .unwrap();
        let first = fs::read_link(target.join(DATA_DIR)).unwrap();
        // A reader holding the old directory (as an open file would) keeps the old content.
        let old_file = target.join(&first).join("keep");

        assert!(
            write(
                target,
                &payload(&[
                    ("keep", "new", 0o644),
                    ("added", "y", 0o644),
                    ("d/g", "2", 0o644)
                ]),
                None,
            )
            .unwrap()
        );
        let second = fs::read_link(target.join(DATA_DIR)).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "new");
        assert_eq!(fs::read_to_string(target.join("added")).unwrap(), "y");
        assert_eq!(fs::read_to_string(target.join("d/g")).unwrap(), "2");
        assert!(!target.join("d/f").exists(), "a removed nested key is gone");
        assert!(fs::symlink_metadata(target.join("gone")).is_err());
        assert!(!old_file.exists(), "the previous version is removed");
        assert_eq!(
            versions(target),
            vec![second.to_string_lossy().into_owned()]
        );
        assert!(!target.join(NEW_DATA_DIR).exists());
    }

    #[test]
    fn an_empty_payload_leaves_only_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("a", "1", 0o644)]), None).unwrap();
        assert!(write(dir.path(), &Payload::new(), None).unwrap());
        let left: Vec<_> = names(dir.path())
            .into_iter()
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(dir.path().join(DATA_DIR).is_dir());
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..2020_01_01_00_00_00.1")).unwrap();
        symlink("nowhere", dir.path().join(NEW_DATA_DIR)).unwrap();
        write(dir.path(), &payload(&[("a", "1", 0o644)]), None).unwrap();
        assert_eq!(versions(dir.path()).len(), 1);
        assert!(fs::symlink_metadata(dir.path().join(NEW_DATA_DIR)).is_err());
    }

    #[test]
    fn bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "..data",
            "..hidden",
            "",
            "./",
        ] {
            let err = write(dir.path(), &payload(&[(bad, "x", 0o644)]), None).unwrap_err();
            assert!(
                matches!(err, AtomicWriteError::InvalidPath { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(names(dir.path()).is_empty(), "nothing was written");
        assert_eq!(clean_path("./a//b/").unwrap(), "a/b");
        assert_eq!(clean_path(".a").unwrap(), ".a");
    }

    #[test]
    fn fs_group_sets_group_read_and_setgid() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        write(dir.path(), &payload(&[("s/key", "v", 0o600)]), Some(gid)).unwrap();
        let meta = fs::metadata(dir.path().join("s/key")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.gid(), gid);
        let sub = fs::metadata(dir.path().join("s")).unwrap();
        assert_eq!(sub.mode() & 0o2000, 0o2000, "directories get setgid");
        let root = fs::metadata(dir.path()).unwrap();
        assert_eq!(root.mode() & 0o2000, 0o2000);
    }
}
