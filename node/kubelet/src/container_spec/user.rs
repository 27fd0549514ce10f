//! Users and groups of the container's image: `/etc/passwd` and `/etc/group` read from its
//! rootfs (symlinks resolved inside the rootfs, never on the host), and `user[:group]` strings
//! resolved against them as containerd does.

use std::path::{Component, Path, PathBuf};

use super::ContainerConfigError;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The passwd and group databases of a rootfs (empty when the files do not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub passwd: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

/// A resolved process identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl UserDb {
    /// Reads `/etc/passwd` and `/etc/group` of `rootfs`.
    pub fn load(rootfs: &Path) -> Result<Self, ContainerConfigError> {
        Ok(UserDb {
            passwd: read_optional(rootfs, "etc/passwd")?
                .map(|text| parse_passwd(&text))
                .unwrap_or_default(),
            groups: read_optional(rootfs, "etc/group")?
                .map(|text| parse_group(&text))
                .unwrap_or_default(),
        })
    }

    /// Resolves `user` or `user:group` (names or numeric ids) as containerd's `WithUser` does:
    /// a numeric user needs no passwd entry and takes the primary group of its entry if there
    /// is one, else 0; a named user or group must exist.
    pub fn resolve(&self, spec: &str) -> Result<Identity, ContainerConfigError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, entry_gid) = match user.parse::<u32>() {
            Ok(uid) => (
                uid,
                self.passwd.iter().find(|e| e.uid == uid).map(|e| e.gid),
            ),
            Err(_) => {
                let entry = self.passwd.iter().find(|e| e.name == user).ok_or_else(|| {
                    ContainerConfigError::UserNotFound {
                        user: user.to_string(),
                    }
                })?;
                (entry.uid, Some(entry.gid))
            }
        };
        let gid = match group {
            None => entry_gid.unwrap_or(0),
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.groups
                        .iter()
                        .find(|g| g.name == group)
                        .ok_or_else(|| ContainerConfigError::GroupNotFound {
                            group: group.to_string(),
                        })?
                        .gid
                }
            },
        };
        Ok(Identity { uid, gid })
    }

    /// The groups that list `user` (a name, or a uid whose passwd entry gives the name) as a
    /// member, except its own same-named group: containerd's `WithAdditionalGIDs`.
    pub fn member_groups(&self, user: &str) -> Vec<u32> {
        let name = match user.parse::<u32>() {
            Ok(uid) => match self.passwd.iter().find(|e| e.uid == uid) {
                Some(entry) => entry.name.as_str(),
                None => return Vec::new(),
            },
            Err(_) => user,
        };
        self.groups
            .iter()
            .filter(|g| g.name != name && g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .collect()
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.trim().parse().ok()?,
                gid: fields.get(3)?.trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: fields.first()?.to_string(),
                gid: fields.get(2)?.trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_optional(rootfs: &Path, relative: &str) -> Result<Option<String>, ContainerConfigError> {
    let path = match resolve_in_root(rootfs, Path::new(relative)) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ContainerConfigError::ReadRootfsFile {
                path: PathBuf::from("/").join(relative),
                source,
            });
        }
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContainerConfigError::ReadRootfsFile {
            path: PathBuf::from("/").join(relative),
            source,
        }),
    }
}

/// Follows `relative` inside `root` the way the container will see it: absolute symlinks are
/// taken relative to `root` and `..` never climbs above it.
pub fn resolve_in_root(root: &Path, relative: &Path) -> std::io::Result<PathBuf> {
    const MAX_LINKS: usize = 40;
    let mut pending: Vec<std::ffi::OsString> = components(relative);
    pending.reverse();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let candidate = candidate.join(&part);
        let meta = std::fs::symlink_metadata(&candidate)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(std::io::Error::other("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            let mut next = components(&target);
            next.reverse();
            pending.extend(next);
        } else {
            resolved.push(part);
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        www-data:x:33:33::/var/www:/bin/sh\n\
        app:x:1000:1001::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        www-data:x:33:app\n\
        staff:x:50:app,other\n\
        app:x:1001:app\n\
        video:x:44:\n";

    fn db() -> UserDb {
        UserDb {
            passwd: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        }
    }

    #[test]
    fn resolves_user_strings_like_containerd() {
        let cases: &[(&str, u32, u32)] = &[
            ("0", 0, 0),
            ("root", 0, 0),
            ("1000", 1000, 1001),
            ("app", 1000, 1001),
            ("4242", 4242, 0),
            ("4242:7", 4242, 7),
            ("app:staff", 1000, 50),
            ("app:9", 1000, 9),
            ("33:video", 33, 44),
        ];
        for (spec, uid, gid) in cases {
            assert_eq!(
                db().resolve(spec).unwrap(),
                Identity {
                    uid: *uid,
                    gid: *gid
                },
                "{spec}"
            );
        }
        assert_eq!(
            db().resolve("nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            db().resolve("app:wheel").unwrap_err().to_string(),
            "unable to find group wheel: no matching entries in group file"
        );
    }

    #[test]
    fn member_groups_exclude_the_users_own_group() {
        assert_eq!(db().member_groups("app"), vec![33, 50]);
        assert_eq!(db().member_groups("1000"), vec![33, 50]);
        assert_eq!(db().member_groups("4242"), Vec::<u32>::new());
        assert_eq!(db().member_groups("root"), Vec::<u32>::new());
    }

    #[test]
    fn reads_files_through_symlinks_inside_the_rootfs_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("data")).unwrap();
        std::fs::write(root.path().join("data/passwd"), PASSWD).unwrap();
        // An absolute link is resolved inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/data/passwd", root.path().join("etc/passwd")).unwrap();
        // A link that climbs out stays at the rootfs' top.
        let escape = format!("../../../../{}/passwd", outside.path().display());
        std::os::unix::fs::symlink(escape, root.path().join("etc/group")).unwrap();
        let db = UserDb::load(root.path()).unwrap();
        assert_eq!(db.passwd.len(), 4);
        assert!(db.passwd.iter().all(|e| e.name != "evil"));
        assert!(
            db.groups.is_empty(),
            "the escaping link resolves to nothing"
        );

        let empty = tempfile::tempdir().unwrap();
        assert_eq!(UserDb::load(empty.path()).unwrap(), UserDb::default());
    }
}
