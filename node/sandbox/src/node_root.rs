//! The node's root file system: an overlay with the image's unpacked root as its read-only
//! lower layer and the node's own directory as its upper layer, /var bound from the node's
//! directory on the host's file system (an overlay cannot be the upper layer of the
//! kubelet's container overlays), and a pivot_root into it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The node directory's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDirs {
    /// The overlay's upper layer.
    pub upper: PathBuf,
    /// The overlay's work directory.
    pub work: PathBuf,
    /// The node's /var.
    pub var: PathBuf,
    /// Where the root is mounted.
    pub root: PathBuf,
}

impl NodeDirs {
    /// The layout under `node_dir`.
    pub fn under(node_dir: &Path) -> Self {
        NodeDirs {
            upper: node_dir.join("upper"),
            work: node_dir.join("work"),
            var: node_dir.join("var"),
            root: node_dir.join("root"),
        }
    }
}

/// Why the node's root could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NodeRootError {
    /// A directory or file could not be made.
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
    /// A mount operation failed.
    #[error("{action} {path}")]
    Mount {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

fn mount_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::Error) -> NodeRootError + 'a {
    move |source| NodeRootError::Mount {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NodeRootError + 'a {
    move |source| NodeRootError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Places the machine configuration where init looks for it in the image
/// (`/etc/baton/machine-config.yaml`), in the node's upper layer.
pub fn place_machine_config(dirs: &NodeDirs, yaml: &[u8]) -> Result<(), NodeRootError> {
    let dir = dirs.upper.join("etc/baton");
    std::fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
    let path = dirs.upper.join(baton_init::config_source::CONFIG_IN_IMAGE);
    // It may hold the cluster CA's key: readable by root only.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(yaml))
        .map_err(io_error("writing", &path))
}

/// In a new mount namespace: makes every mount private, mounts the node's root from
/// `image_root` and `dirs`, and pivots into it.
pub fn enter_node_root(image_root: &Path, dirs: &NodeDirs) -> Result<(), NodeRootError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_error("making private", Path::new("/")))?;
    for dir in [&dirs.upper, &dirs.work, &dirs.var, &dirs.root] {
        std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_root.display(),
        dirs.upper.display(),
        dirs.work.display()
    );
    mount(
        Some("overlay"),
        &dirs.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(mount_error(
        "mounting the node's overlay root on",
        &dirs.root,
    ))?;
    let var = dirs.root.join("var");
    std::fs::create_dir_all(&var).map_err(io_error("creating", &var))?;
    mount(
        Some(&dirs.var),
        &var,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_error("binding the node's /var on", &var))?;
    let old_root = dirs.root.join(".old-root");
    std::fs::create_dir_all(&old_root).map_err(io_error("creating", &old_root))?;
    nix::unistd::pivot_root(&dirs.root, &old_root)
        .map_err(mount_error("pivoting into", &dirs.root))?;
    nix::unistd::chdir("/").map_err(mount_error("entering", Path::new("/")))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(mount_error(
        "detaching the host's root from",
        Path::new("/.old-root"),
    ))?;
    std::fs::remove_dir("/.old-root").map_err(io_error("removing", Path::new("/.old-root")))?;
    Ok(())
}
