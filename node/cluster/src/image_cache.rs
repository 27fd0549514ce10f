//! The node image for a cluster: built from this very binary into the cache when no image is
//! given (and rebuilt only when the binary changed), and its initramfs unpacked once per
//! image into a shared, read-only root that every node's overlay uses as its lower layer.

use std::path::{Path, PathBuf};

use baton_image_builder::{
    BuildNodeImageError, INITRAMFS_NAME, InitramfsError, NodeImageOptions, build_node_image,
    default_cache_dir, sha256_hex, source_date_epoch, unpack_initramfs,
};

/// The marker written once an unpacked root is complete.
const COMPLETE_MARKER: &str = ".baton-unpacked";

/// Why the image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PrepareImageError {
    /// Building the image failed.
    #[error("building the node image")]
    Build(#[from] BuildNodeImageError),
    /// SOURCE_DATE_EPOCH is not a number.
    #[error("building the node image")]
    SourceDateEpoch(#[from] baton_image_builder::BuildImageError),
    /// The image directory holds no initramfs.
    #[error(
        "--image {0}: no {INITRAMFS_NAME} there (make one with `baton image build --output DIR`)"
    )]
    NoInitramfs(PathBuf),
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Unpacking failed.
    #[error("unpacking the node image")]
    Unpack(#[from] InitramfsError),
}

/// A node image ready for a provider.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    /// The image directory.
    pub dir: PathBuf,
    /// The initramfs's sha256.
    pub sha256: String,
    /// The unpacked root (the image directory itself when it was not unpacked).
    pub root: PathBuf,
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PrepareImageError + 'a {
    move |source| PrepareImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the image ready: `image` when given, else the cached build of this binary; unpacked
/// into a root when `unpack` (the `process` provider's nodes run on it; a VM boots the image
/// as it is, and its `root` is then the image directory).
pub fn prepare_image(
    image: Option<&Path>,
    unpack: bool,
) -> Result<PreparedImage, PrepareImageError> {
    let cache = default_cache_dir();
    let dir = match image {
        Some(dir) => dir.to_path_buf(),
        None => {
            let baton =
                std::env::current_exe().map_err(io("finding", Path::new("this program")))?;
            let binary = std::fs::read(&baton).map_err(io("reading", &baton))?;
            let dir = cache.join("images").join(&sha256_hex(&binary)[..16]);
            if !dir.join(INITRAMFS_NAME).exists() {
                build_node_image(&NodeImageOptions {
                    baton,
                    output: dir.clone(),
                    package_cache: cache.join("packages"),
                    source_date_epoch: source_date_epoch()?,
                    disk_size: None,
                })?;
            }
            dir
        }
    };
    let initramfs = dir.join(INITRAMFS_NAME);
    if !initramfs.exists() {
        return Err(PrepareImageError::NoInitramfs(dir));
    }
    let bytes = std::fs::read(&initramfs).map_err(io("reading", &initramfs))?;
    let sha256 = sha256_hex(&bytes);
    if !unpack {
        return Ok(PreparedImage {
            root: dir.clone(),
            dir,
            sha256,
        });
    }
    let root = cache.join("roots").join(&sha256);
    if !root.join(COMPLETE_MARKER).exists() {
        // Unpacked under a name of this process's own, then renamed into place: a concurrent
        // `create` that wins the rename is as good.
        let partial = cache
            .join("roots")
            .join(format!("{sha256}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
        unpack_initramfs(&initramfs, &partial)?;
        std::fs::write(partial.join(COMPLETE_MARKER), &sha256).map_err(io("writing", &partial))?;
        if std::fs::rename(&partial, &root).is_err() && root.join(COMPLETE_MARKER).exists() {
            let _ = std::fs::remove_dir_all(&partial);
        } else if !root.join(COMPLETE_MARKER).exists() {
            return Err(PrepareImageError::Io {
                action: "renaming",
                path: partial,
                source: std::io::Error::other(format!("{} is in the way", root.display())),
            });
        }
    }
    prune_cache(&cache, &root);
    Ok(PreparedImage { dir, sha256, root })
}

/// The directory of `root`'s users: one file per cluster that runs on it, named for the
/// cluster's directory and holding its path.
fn users_dir(root: &Path) -> PathBuf {
    let mut name = root.as_os_str().to_owned();
    name.push(USERS_SUFFIX);
    PathBuf::from(name)
}

/// The suffix of a root's users directory, beside the root in the cache.
const USERS_SUFFIX: &str = ".users";

fn user_file(root: &Path, cluster_dir: &Path) -> PathBuf {
    let id = &sha256_hex(cluster_dir.as_os_str().as_encoded_bytes())[..16];
    users_dir(root).join(id)
}

/// Records that the cluster in `cluster_dir` runs on `root` (an unpacked root, or the image
/// directory a VM cluster boots from), so that no `create` of any data directory prunes it
/// while that cluster exists (stopped clusters hold no mount of it).
pub fn record_user(root: &Path, cluster_dir: &Path) -> std::io::Result<()> {
    // An image of the user's own (`--image DIR`) is never pruned: nothing to record beside it.
    if !root.starts_with(default_cache_dir()) {
        return Ok(());
    }
    write_user_record(root, cluster_dir)
}

/// Writes the record of [`record_user`] beside `root`, wherever it is.
fn write_user_record(root: &Path, cluster_dir: &Path) -> std::io::Result<()> {
    let cluster_dir = std::path::absolute(cluster_dir)?;
    let file = user_file(root, &cluster_dir);
    std::fs::create_dir_all(users_dir(root))?;
    std::fs::write(file, cluster_dir.as_os_str().as_encoded_bytes())
}

/// Forgets the cluster in `cluster_dir` as a user of `root`.
pub fn forget_user(root: &Path, cluster_dir: &Path) {
    if let Ok(cluster_dir) = std::path::absolute(cluster_dir) {
        let _ = std::fs::remove_file(user_file(root, &cluster_dir));
    }
    let _ = std::fs::remove_dir(users_dir(root));
}

/// Whether a cluster that still exists recorded itself as a user of `root`; removes the
/// records of clusters that are gone.
fn has_users(root: &Path) -> bool {
    let mut used = false;
    for entry in std::fs::read_dir(users_dir(root))
        .into_iter()
        .flatten()
        .flatten()
    {
        let cluster_dir = std::fs::read(entry.path())
            .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
            .ok();
        if cluster_dir.is_some_and(|dir| dir.join(crate::state::STATE_FILE).exists()) {
            used = true;
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    used
}

/// Whether `dir` holds what a VM node boots: the image's kernel and initramfs.
pub fn is_bootable_image(dir: &Path) -> bool {
    [baton_image_builder::KERNEL_NAME, INITRAMFS_NAME]
        .iter()
        .all(|name| dir.join(name).is_file())
}

/// Whether `root` is a complete unpacked image root.
pub fn is_unpacked_root(root: &Path) -> bool {
    root.join(COMPLETE_MARKER).exists()
}

/// How old an unfinished unpack must be before it is taken for abandoned.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether some process's mounts use `root` (an overlay's lower layer in a node's mount
/// namespace): the surest sign a cluster, of whatever user data directory, still runs on it.
fn mounted_somewhere(root: &Path) -> bool {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read_to_string(entry.path().join("mountinfo"))
                    .is_ok_and(|mounts| mounts.contains(&needle))
            })
        })
        .unwrap_or(false)
}

/// Removes cached images and unpacked roots that neither `current`, nor any cluster of this
/// data directory, nor any cluster that recorded itself as a user (of any data directory), nor
/// any mount on the machine uses, so that the cache holds the images in
/// use rather than one per build. Unpacks still in progress (younger than an hour) stay.
fn prune_cache(cache: &Path, current: &Path) {
    let in_use: Vec<PathBuf> = crate::state::ClusterState::list_names()
        .iter()
        .filter_map(|name| crate::state::ClusterState::load(&crate::state::cluster_dir(name)).ok())
        .map(|state| state.image_root)
        .chain([current.to_path_buf()])
        .collect();
    let mut kept_roots: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(cache.join("roots")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(USERS_SUFFIX) {
                // Goes with its root.
                if !path
                    .with_file_name(name.trim_end_matches(USERS_SUFFIX))
                    .exists()
                {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < ABANDONED_AFTER);
            let keep = in_use.contains(&path)
                || (name.contains(".partial") && recent)
                || has_users(&path)
                || mounted_somewhere(&path);
            if keep {
                kept_roots.push(name);
            } else {
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_dir_all(users_dir(&path));
            }
        }
    }
    // A cached image stays while its initramfs's root does, or while a VM cluster (of any
    // data directory) boots from it directly: its VMs read the kernel again at each reset.
    if let Ok(entries) = std::fs::read_dir(cache.join("images")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().ends_with(USERS_SUFFIX) {
                continue;
            }
            let initramfs = path.join(INITRAMFS_NAME);
            let used = in_use.contains(&path)
                || has_users(&path)
                || std::fs::read(&initramfs)
                    .map(|bytes| kept_roots.contains(&sha256_hex(&bytes)))
                    .unwrap_or(false);
            if !used {
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_dir_all(users_dir(&path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_stays_while_a_cluster_that_recorded_itself_exists() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let roots = cache.join("roots");
        for name in ["kept", "orphaned", "unused", "current"] {
            std::fs::create_dir_all(roots.join(name)).unwrap();
            std::fs::write(roots.join(name).join(COMPLETE_MARKER), name).unwrap();
        }
        // A stopped cluster (its state file exists) and one that is gone.
        let alive = dir.path().join("home-a/clusters/a");
        std::fs::create_dir_all(&alive).unwrap();
        std::fs::write(alive.join(crate::state::STATE_FILE), "{}").unwrap();
        write_user_record(&roots.join("kept"), &alive).unwrap();
        write_user_record(
            &roots.join("orphaned"),
            &dir.path().join("home-b/clusters/b"),
        )
        .unwrap();

        prune_cache(&cache, &roots.join("current"));

        assert!(roots.join("kept").exists());
        assert!(roots.join("current").exists());
        assert!(!roots.join("orphaned").exists());
        assert!(!roots.join("orphaned.users").exists());
        assert!(!roots.join("unused").exists());

        // Once the cluster is destroyed, the next create prunes its root.
        forget_user(&roots.join("kept"), &alive);
        prune_cache(&cache, &roots.join("current"));
        assert!(!roots.join("kept").exists());
        assert!(!roots.join("kept.users").exists());
    }
}
