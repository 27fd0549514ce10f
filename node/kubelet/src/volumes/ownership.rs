//! The pod's fsGroup on a volume, as upstream's `SetVolumeOwnership`: every file and directory
//! gets the group, group read (and write for read-write volumes) access, directories also
//! group search and the setgid bit so that new files inherit the group. Symlinks only change
//! group.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

/// Group access added to files of read-only and read-write volumes.
const READ_ONLY_MASK: u32 = 0o440;
const READ_WRITE_MASK: u32 = 0o660;
/// Added to directories: group (and owner) search, and setgid.
const DIRECTORY_MASK: u32 = 0o110 | 0o2000;

/// Applies `gid` to `root` and everything under it.
pub fn set_volume_ownership(root: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    own_entry(root, gid, read_only)?;
    if fs::symlink_metadata(root)?.is_dir() {
        for entry in fs::read_dir(root)? {
            set_volume_ownership(&entry?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

/// Applies `gid` to `path` alone.
pub fn own_entry(path: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    lchown(path, None, Some(gid))?;
    let metadata = fs::symlink_metadata(path)?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    let mode = metadata.permissions().mode() & 0o7777;
    let wanted =
        mode | if read_only {
            READ_ONLY_MASK
        } else {
            READ_WRITE_MASK
        } | if metadata.is_dir() { DIRECTORY_MASK } else { 0 };
    if wanted != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn read_write_volumes_get_group_write_and_setgid_directories() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::set_permissions(dir.path().join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.path().join("sub/f"), b"x").unwrap();
        fs::set_permissions(dir.path().join("sub/f"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("sub/f", dir.path().join("link")).unwrap();
        set_volume_ownership(dir.path(), gid, false).unwrap();
        let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("sub"), 0o2770);
        assert_eq!(mode("sub/f"), 0o660);
        assert_eq!(
            fs::symlink_metadata(dir.path().join("link")).unwrap().gid(),
            gid
        );
    }
}
