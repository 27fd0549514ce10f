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
/// data directory, nor any mount on the machine uses, so that the cache holds the images in
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
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < ABANDONED_AFTER);
            let keep = in_use.contains(&path)
                || (name.contains(".partial") && recent)
                || mounted_somewhere(&path);
            if keep {
                kept_roots.push(name);
            } else {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    // A cached image stays while its initramfs's root does, or while a VM cluster boots from
    // it directly.
    if let Ok(entries) = std::fs::read_dir(cache.join("images")) {
        for entry in entries.flatten() {
            let initramfs = entry.path().join(INITRAMFS_NAME);
            let used = in_use.contains(&entry.path())
                || std::fs::read(&initramfs)
                    .map(|bytes| kept_roots.contains(&sha256_hex(&bytes)))
                    .unwrap_or(false);
            if !used {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
