//! The node image: Debian's cloud kernel, and an initramfs with the statically linked `baton`
//! (without its debug information) at /init with a link per role, the kernel modules the node
//! loads, the etcd binary and the C library it needs (from Debian packages fetched with
//! `apt-get download` into a cache, never installed on the build host), the mount points init
//! uses, and a manifest with the sha256 of every input and output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::initramfs::{EntryKind, InitramfsError, Tree};

/// The names `baton` answers to, linked to /init in /usr/bin.
pub const ROLE_LINKS: &[&str] = &[
    "baton",
    "apiserver",
    "scheduler",
    "controller-manager",
    "kubelet",
    "proxy",
    "dns",
];

/// Debian packages the image takes files from, and which files.
const PACKAGE_FILES: &[(&str, &[&str])] = &[
    ("etcd-server", &["usr/bin/etcd"]),
    (
        "libc6",
        &[
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "lib64/ld-linux-x86-64.so.2",
        ],
    ),
];

/// Directories init mounts on or writes to.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("etc/baton", 0o755),
    ("etc/kubernetes", 0o755),
    ("root", 0o700),
];

/// Where the image keeps OCI archives of the images its nodes start with (init imports them
/// into the kubelet's image store before the kubelet starts).
pub const PRELOADED_IMAGES_DIR: &str = "usr/share/baton/images";
/// The preloaded test image: busybox (with its httpd, the test HTTP server), from Debian's
/// busybox-static.
pub const PRELOADED_BUSYBOX: &str = "docker.io/library/busybox:1.35";

/// Where init looks for the machine configuration inside the image (an archive appended to
/// the initramfs puts it there).
pub const CONFIG_IN_IMAGE: &str = "etc/baton/machine-config.yaml";

/// Writes a gzip-compressed newc cpio archive holding only `yaml` at [`CONFIG_IN_IMAGE`]: a
/// node's configuration, appended to the image's initramfs (the kernel unpacks concatenated
/// archives in order, so it adds to the image's tree).
pub fn write_config_archive(yaml: &str, out: &Path, mtime: u32) -> Result<(), InitramfsError> {
    let mut tree = Tree::default();
    tree.add(
        CONFIG_IN_IMAGE,
        EntryKind::File(yaml.as_bytes().to_vec()),
        0o600,
    );
    tree.write_initramfs(out, mtime).map(|_| ())
}

/// The initramfs file name in the output directory.
pub const INITRAMFS_NAME: &str = "initramfs.cpio.gz";
/// The manifest file name in the output directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// What to build the node image from.
#[derive(Clone, Debug)]
pub struct NodeImageOptions {
    /// The statically linked `baton` binary.
    pub baton: PathBuf,
    /// Where to write the image.
    pub output: PathBuf,
    /// Where downloaded Debian packages are kept between builds.
    pub package_cache: PathBuf,
    /// The time stamped on every entry (SOURCE_DATE_EPOCH; cpio keeps 32 bits).
    pub source_date_epoch: u64,
    /// The UEFI system disk's size in bytes; `None` builds no unified kernel image and no
    /// disk (what a cluster on one machine boots needs only the kernel and the initramfs).
    pub disk_size: Option<u64>,
}

/// A built node image.
#[derive(Clone, Debug)]
pub struct NodeImage {
    /// The kernel (Debian's cloud kernel).
    pub kernel: PathBuf,
    /// Its release, also the modules' directory under /lib/modules.
    pub kernel_release: String,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Its sha256, hex.
    pub initramfs_sha256: String,
    /// The manifest.
    pub manifest: PathBuf,
    /// The size of each file in the image, by path.
    pub sizes: BTreeMap<String, u64>,
    /// The unified kernel image and the system disk, when asked for.
    pub uefi: Option<crate::node_disk::UefiArtifacts>,
}

/// Why the node image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildNodeImageError {
    /// The `baton` binary is dynamically linked.
    #[error(
        "{0} is dynamically linked (it asks for an ELF interpreter); the node image needs the statically linked baton that `cargo build` makes with the project's .cargo/config.toml"
    )]
    NotStatic(PathBuf),
    /// Reading an input or writing an output failed.
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
    /// A tool (apt-get, dpkg-deb) failed.
    #[error("{command} failed: {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A package lacks a file the image needs.
    #[error("Debian package {package} has no {path}")]
    MissingFile {
        /// The package.
        package: String,
        /// The file.
        path: String,
    },
    /// The kernel package lacks a module the node needs.
    #[error("the kernel package has no module {0}, and the kernel does not have it built in")]
    MissingModule(String),
    /// Writing the initramfs failed.
    #[error("writing the initramfs")]
    Initramfs(#[from] InitramfsError),
    /// The preloaded test image could not be built.
    #[error("building the preloaded busybox image")]
    TestImage(#[from] crate::BuildImageError),
    /// The preloaded test image could not be archived.
    #[error("archiving the preloaded busybox image")]
    Archive(#[from] crate::WriteArchiveError),
    /// The unified kernel image could not be made.
    #[error("making the unified kernel image")]
    Uki(#[from] crate::uki::BuildUkiError),
    /// The system disk could not be written.
    #[error("writing the system disk")]
    Disk(#[from] crate::disk_image::WriteDiskImageError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildNodeImageError + 'a {
    move |source| BuildNodeImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Builds the node image's initramfs and manifest into `options.output`.
pub fn build_node_image(options: &NodeImageOptions) -> Result<NodeImage, BuildNodeImageError> {
    let baton = std::fs::read(&options.baton).map_err(io("reading", &options.baton))?;
    if has_interpreter(&baton) {
        return Err(BuildNodeImageError::NotStatic(options.baton.clone()));
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("baton".to_string(), sha256_hex(&baton));
    // The image carries the binary without its debug information (a third to a fifth of the
    // size): `strip --strip-debug` from the build host's binutils, as dpkg-deb is.
    let scratch_bin =
        tempfile::tempdir().map_err(io("creating", Path::new("a temporary directory")))?;
    let stripped = scratch_bin.path().join("baton");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&options.baton))?;
    let baton = std::fs::read(&stripped).map_err(io("reading", &stripped))?;
    let mut tree = Tree::default();
    tree.add("init", EntryKind::File(baton), 0o755);
    for role in ROLE_LINKS {
        tree.add(
            &format!("usr/bin/{role}"),
            EntryKind::Symlink("/init".into()),
            0o777,
        );
    }
    for (dir, mode) in MOUNT_POINTS {
        tree.add(dir, EntryKind::Directory, *mode);
    }
    tree.add(
        "etc/os-release",
        EntryKind::File(os_release().into_bytes()),
        0o644,
    );
    tree.add(
        "etc/passwd",
        EntryKind::File(
            b"root:x:0:0:root:/root:/init\nnobody:x:65534:65534:nobody:/:/init\n".to_vec(),
        ),
        0o644,
    );
    tree.add(
        "etc/group",
        EntryKind::File(b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
        0o644,
    );
    std::fs::create_dir_all(&options.package_cache)
        .map_err(io("creating", &options.package_cache))?;
    for (package, files) in PACKAGE_FILES {
        let deb = fetch_package(package, &options.package_cache)?;
        let deb_bytes = std::fs::read(&deb).map_err(io("reading", &deb))?;
        inputs.insert(
            deb.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256_hex(&deb_bytes),
        );
        for (path, kind, mode) in extract_from_deb(&deb, package, files)? {
            tree.add(&path, kind, mode);
        }
    }
    // The kernel, and the modules the node loads at boot with a modules.dep for them.
    let kernel_deb = fetch_package(
        &crate::kernel::kernel_package(crate::kernel::KERNEL_METAPACKAGE)?,
        &options.package_cache,
    )?;
    let kernel_bytes = std::fs::read(&kernel_deb).map_err(io("reading", &kernel_deb))?;
    inputs.insert(
        kernel_deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256_hex(&kernel_bytes),
    );
    drop(kernel_bytes);
    let kernel = crate::kernel::kernel_files(&kernel_deb)?;
    let modules_dir = format!("lib/modules/{}", kernel.release);
    for (path, data) in kernel.modules {
        tree.add(
            &format!("{modules_dir}/{path}"),
            EntryKind::File(data),
            0o644,
        );
    }
    tree.add(
        &format!("{modules_dir}/modules.dep"),
        EntryKind::File(kernel.modules_dep.into_bytes()),
        0o644,
    );

    // The preloaded busybox image, from busybox-static's binary (kept in `scratch` until the
    // initramfs is written).
    let scratch =
        tempfile::tempdir().map_err(io("creating", Path::new("a temporary directory")))?;
    let busybox_deb = fetch_package("busybox-static", &options.package_cache)?;
    let busybox_bytes = std::fs::read(&busybox_deb).map_err(io("reading", &busybox_deb))?;
    inputs.insert(
        busybox_deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256_hex(&busybox_bytes),
    );
    let busybox = scratch.path().join("busybox");
    for (_, kind, _) in extract_from_deb(&busybox_deb, "busybox-static", &["bin/busybox"])? {
        if let EntryKind::File(data) = kind {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&busybox, data).map_err(io("writing", &busybox))?;
            std::fs::set_permissions(&busybox, std::fs::Permissions::from_mode(0o755))
                .map_err(io("writing", &busybox))?;
        }
    }
    let layout = scratch.path().join("layout");
    crate::build_busybox_image(&busybox, &layout, PRELOADED_BUSYBOX)?;
    let archive = scratch.path().join("busybox.tar");
    crate::write_oci_archive(&layout, &archive)?;
    tree.add(
        &format!("{PRELOADED_IMAGES_DIR}/busybox.tar"),
        EntryKind::HostFile(archive),
        0o644,
    );

    std::fs::create_dir_all(&options.output).map_err(io("creating", &options.output))?;
    let initramfs = options.output.join(INITRAMFS_NAME);
    let mtime = u32::try_from(options.source_date_epoch).unwrap_or(u32::MAX);
    // Written under a temporary name and renamed: an interrupted build leaves no initramfs
    // that looks complete.
    let partial = options
        .output
        .join(format!("{INITRAMFS_NAME}.partial-{}", std::process::id()));
    let sizes = tree.write_initramfs(&partial, mtime)?;
    std::fs::rename(&partial, &initramfs).map_err(io("renaming", &partial))?;
    let bytes = std::fs::read(&initramfs).map_err(io("reading", &initramfs))?;
    let initramfs_sha256 = sha256_hex(&bytes);
    let kernel_path = options.output.join(crate::kernel::KERNEL_NAME);
    let partial_kernel = options.output.join(format!(
        "{}.partial-{}",
        crate::kernel::KERNEL_NAME,
        std::process::id()
    ));
    std::fs::write(&partial_kernel, &kernel.vmlinuz).map_err(io("writing", &partial_kernel))?;
    std::fs::rename(&partial_kernel, &kernel_path).map_err(io("renaming", &partial_kernel))?;
    let uefi = match options.disk_size {
        Some(disk_size) => Some(crate::node_disk::build_uefi_artifacts(
            &kernel.vmlinuz,
            &bytes,
            &os_release(),
            &options.package_cache,
            &options.output,
            disk_size,
            options.source_date_epoch,
        )?),
        None => {
            // No UEFI artifacts from an earlier build left beside this one's manifest.
            for name in [
                crate::node_disk::UKI_NAME,
                crate::node_disk::DISK_RAW_NAME,
                crate::node_disk::DISK_QCOW2_NAME,
            ] {
                let stale = options.output.join(name);
                match std::fs::remove_file(&stale) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(BuildNodeImageError::Io {
                            action: "removing",
                            path: stale,
                            source,
                        });
                    }
                }
            }
            None
        }
    };
    let mut artifacts = serde_json::json!({
        INITRAMFS_NAME: { "sha256": initramfs_sha256, "size": bytes.len() },
        crate::kernel::KERNEL_NAME: {
            "sha256": sha256_hex(&kernel.vmlinuz),
            "size": kernel.vmlinuz.len(),
            "release": kernel.release,
        },
    });
    drop(bytes);
    if let Some(uefi) = &uefi {
        inputs.insert(uefi.input.0.clone(), uefi.input.1.clone());
        for path in [&uefi.uki, &uefi.disk_raw, &uefi.disk_qcow2] {
            let (sha256, size) = sha256_file(path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            artifacts[name] = serde_json::json!({ "sha256": sha256, "size": size });
        }
        artifacts[crate::node_disk::DISK_RAW_NAME]["partitions"] = uefi
            .partitions
            .iter()
            .map(|p| {
                serde_json::json!({ "name": p.name, "offset": p.offset, "size": p.size, "guid": p.guid })
            })
            .collect();
    }
    let manifest = serde_json::json!({
        "artifacts": artifacts,
        "inputs": inputs,
        "contents": sizes,
    });
    let manifest_path = options.output.join(MANIFEST_NAME);
    let text = serde_json::to_string_pretty(&manifest).expect("a JSON value serializes");
    std::fs::write(&manifest_path, text + "\n").map_err(io("writing", &manifest_path))?;
    tracing::info!(initramfs = %initramfs.display(), "node image built");
    Ok(NodeImage {
        kernel: kernel_path,
        kernel_release: kernel.release,
        initramfs,
        initramfs_sha256,
        manifest: manifest_path,
        sizes,
        uefi,
    })
}

/// The image's /etc/os-release (also the unified kernel image's `.osrel`).
fn os_release() -> String {
    format!(
        "NAME=Baton\nID=baton\nVERSION_ID={}\nPRETTY_NAME=\"Baton {}\"\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION")
    )
}

/// The sha256 (hex) and size of a file, read in pieces (disk images are large and sparse).
fn sha256_file(path: &Path) -> Result<(String, u64), BuildNodeImageError> {
    let mut file = std::fs::File::open(path).map_err(io("reading", path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io("reading", path))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// The user's cache directory for Baton: `$BATON_CACHE_DIR`, else `$XDG_CACHE_HOME/baton`,
/// else `~/.cache/baton`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("baton");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/baton")
}

/// The sha256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Whether an ELF executable names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let read_u32 = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let read_u64 = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if !elf.starts_with(b"\x7fELF") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (read_u64(0x20), read_u16(0x36), read_u16(0x38))
    else {
        return false;
    };
    (0..phnum as usize)
        .any(|i| read_u32(phoff as usize + i * phentsize as usize) == Some(PT_INTERP))
}

/// The cached `.deb` of `package`, downloaded with `apt-get download` when missing.
pub(crate) fn fetch_package(package: &str, cache: &Path) -> Result<PathBuf, BuildNodeImageError> {
    let cached = |cache: &Path| -> Result<Option<PathBuf>, BuildNodeImageError> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
            .map_err(io("reading", cache))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                })
            })
            .collect();
        found.sort();
        Ok(found.pop())
    };
    if let Some(deb) = cached(cache)? {
        return Ok(deb);
    }
    run(Command::new("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(cache))?;
    cached(cache)?.ok_or_else(|| BuildNodeImageError::Tool {
        command: format!("apt-get download {package}"),
        stderr: "no .deb file appeared".into(),
    })
}

pub(crate) fn run(command: &mut Command) -> Result<Vec<u8>, BuildNodeImageError> {
    let line = format!("{command:?}");
    let output = command.output().map_err(|source| BuildNodeImageError::Io {
        action: "running",
        path: PathBuf::from(&line),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildNodeImageError::Tool {
            command: line,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

/// The files `wanted` of a `.deb` (read through `dpkg-deb --fsys-tarfile`).
pub(crate) fn extract_from_deb(
    deb: &Path,
    package: &str,
    wanted: &[&str],
) -> Result<Vec<(String, EntryKind, u32)>, BuildNodeImageError> {
    let tar = run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb))?;
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
    let mut found = Vec::new();
    for entry in archive.entries().map_err(io("reading", deb))? {
        let mut entry = entry.map_err(io("reading", deb))?;
        let path = entry.path().map_err(io("reading", deb))?;
        let path = path.to_string_lossy().trim_start_matches("./").to_string();
        if !wanted.contains(&path.as_str()) {
            continue;
        }
        let mode = entry.header().mode().map_err(io("reading", deb))? & 0o7777;
        let kind = if entry.header().entry_type().is_symlink() {
            let target = entry
                .link_name()
                .map_err(io("reading", deb))?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            EntryKind::Symlink(target)
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).map_err(io("reading", deb))?;
            EntryKind::File(data)
        };
        found.push((path, kind, mode));
    }
    for path in wanted {
        if !found.iter().any(|(p, _, _)| p == path) {
            return Err(BuildNodeImageError::MissingFile {
                package: package.to_string(),
                path: path.to_string(),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&dynamic));
        assert!(!has_interpreter(b"not an ELF file"));
        // This test binary is linked the way the project builds everything: statically.
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!has_interpreter(&this), "the project's binaries are static");
    }
}
