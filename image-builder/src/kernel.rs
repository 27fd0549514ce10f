//! The node's kernel: Debian's cloud kernel package (`linux-image-cloud-amd64`, fetched with
//! `apt-get download`, never installed), its vmlinuz, and the modules the node needs with every
//! module they depend on. The package carries no modules.dep (depmod writes it on install), so
//! one is made here from each module's own `depends=` and `softdep=pre:` fields.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::node_image::{BuildNodeImageError, run};

/// The Debian metapackage that names the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The kernel's file name in the image's output directory.
pub const KERNEL_NAME: &str = "vmlinuz";

/// The modules a node loads at boot (init loads every module of the image), by module name:
/// virtio transports and devices, overlayfs for container roots, the pod network (bridge,
/// br_netfilter, veth, vxlan), what the proxy's nftables and ipvs modes use, dm-verity, and
/// FAT with the code page and character set it mounts with by default (the configuration
/// partition).
pub const NODE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "vxlan",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_numgen",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_limit",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "ip_tables",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "dummy",
    "dm_verity",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// The kernel and modules taken from the package.
#[derive(Clone, Debug)]
pub struct KernelFiles {
    /// The kernel release (`6.1.0-56-cloud-amd64`).
    pub release: String,
    /// The compressed kernel image.
    pub vmlinuz: Vec<u8>,
    /// Each module the node needs, by its path under `lib/modules/<release>/`.
    pub modules: BTreeMap<String, Vec<u8>>,
    /// The modules.dep listing them.
    pub modules_dep: String,
}

/// The concrete kernel package the metapackage depends on (`linux-image-6.1.0-56-cloud-amd64`).
pub fn kernel_package(metapackage: &str) -> Result<String, BuildNodeImageError> {
    let out = run(Command::new("apt-cache")
        .args(["depends", "--important"])
        .arg(metapackage))?;
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("linux-image-"))
        .ok_or_else(|| BuildNodeImageError::Tool {
            command: format!("apt-cache depends --important {metapackage}"),
            stderr: "names no linux-image package".into(),
        })
}

/// A module's name as the kernel knows it (`virtio-rng.ko` is `virtio_rng`).
fn module_name(file: &str) -> String {
    let stem = file.rsplit('/').next().unwrap_or(file);
    let stem = stem.split(".ko").next().unwrap_or(stem);
    stem.replace('-', "_")
}

/// The value of `key` in a module's .modinfo strings (`key=value\0`).
pub fn modinfo_field(module: &[u8], key: &str) -> Option<String> {
    let needle = format!("\0{key}=");
    let needle = needle.as_bytes();
    let at = module.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let end = module[at..].iter().position(|b| *b == 0)? + at;
    Some(String::from_utf8_lossy(&module[at..end]).into_owned())
}

/// A module's dependencies: those of `depends=` (it cannot load without them) and the
/// modules of `softdep=pre:` (loaded first when the image has them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleDependencies {
    /// Hard dependencies.
    pub hard: Vec<String>,
    /// Soft dependencies loaded before it.
    pub soft: Vec<String>,
}

fn dependencies(module: &[u8]) -> ModuleDependencies {
    let hard = modinfo_field(module, "depends")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect();
    let soft = modinfo_field(module, "softdep")
        .map(|softdep| {
            softdep
                .split_whitespace()
                .skip_while(|word| *word != "pre:")
                .skip(1)
                .take_while(|word| !word.ends_with(':'))
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default();
    ModuleDependencies { hard, soft }
}

/// Every module of `wanted` and what they depend on, from `available` (module name to its
/// dependencies). A module or hard dependency that is neither in the package nor built into
/// the kernel (`builtin`) is an error; a missing soft dependency is skipped.
pub fn module_closure(
    available: &BTreeMap<String, ModuleDependencies>,
    builtin: &BTreeSet<String>,
    wanted: &[&str],
) -> Result<BTreeSet<String>, BuildNodeImageError> {
    let mut chosen = BTreeSet::new();
    let mut queue: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
    while let Some(name) = queue.pop() {
        if chosen.contains(&name) || builtin.contains(&name) {
            continue;
        }
        let Some(deps) = available.get(&name) else {
            return Err(BuildNodeImageError::MissingModule(name));
        };
        chosen.insert(name.clone());
        queue.extend(deps.hard.iter().cloned());
        queue.extend(
            deps.soft
                .iter()
                .filter(|d| available.contains_key(*d))
                .cloned(),
        );
    }
    Ok(chosen)
}

/// The kernel and the node's modules from the kernel package `deb`.
pub fn kernel_files(deb: &Path) -> Result<KernelFiles, BuildNodeImageError> {
    let tar = run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb))?;
    let read_error = |source| BuildNodeImageError::Io {
        action: "reading",
        path: deb.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
    let mut vmlinuz = None;
    let mut release = None;
    let mut builtin = BTreeSet::new();
    // Module name -> (path under lib/modules/<release>/, contents).
    let mut files: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(read_error)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if let Some(name) = path.strip_prefix("boot/vmlinuz-") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(read_error)?;
            vmlinuz = Some(data);
            release = Some(name.to_string());
        } else if let Some(rest) = path.strip_prefix("lib/modules/") {
            let Some((_, inside)) = rest.split_once('/') else {
                continue;
            };
            if inside == "modules.builtin" {
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(read_error)?;
                builtin.extend(text.lines().map(module_name));
            } else if inside.contains(".ko") {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(read_error)?;
                files.insert(module_name(inside), (inside.to_string(), data));
            }
        }
    }
    let (Some(vmlinuz), Some(release)) = (vmlinuz, release) else {
        return Err(BuildNodeImageError::MissingFile {
            package: deb.display().to_string(),
            path: "boot/vmlinuz-*".into(),
        });
    };
    let available: BTreeMap<String, ModuleDependencies> = files
        .iter()
        .map(|(name, (_, data))| (name.clone(), dependencies(data)))
        .collect();
    let chosen = module_closure(&available, &builtin, NODE_MODULES)?;
    let mut modules_dep = String::new();
    let mut modules = BTreeMap::new();
    for name in &chosen {
        let deps = &available[name];
        let dep_paths: Vec<&str> = deps
            .hard
            .iter()
            .chain(&deps.soft)
            .filter(|d| chosen.contains(*d))
            .map(|d| files[d].0.as_str())
            .collect();
        let (path, data) = &files[name];
        modules_dep.push_str(&format!("{path}: {}\n", dep_paths.join(" ")));
        modules.insert(path.clone(), data.clone());
    }
    Ok(KernelFiles {
        release,
        vmlinuz,
        modules,
        modules_dep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_fields_and_soft_dependencies_are_read() {
        let module = b"\x7fELF...\0license=GPL\0softdep=pre: crc32c post: foo\0depends=nfnetlink,libcrc32c\0name=nf_tables\0";
        assert_eq!(
            modinfo_field(module, "depends").as_deref(),
            Some("nfnetlink,libcrc32c")
        );
        assert_eq!(
            dependencies(module),
            ModuleDependencies {
                hard: vec!["nfnetlink".into(), "libcrc32c".into()],
                soft: vec!["crc32c".into()],
            }
        );
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
    }

    #[test]
    fn the_closure_takes_dependencies_and_skips_built_in_ones() {
        let available: BTreeMap<String, ModuleDependencies> = [
            ("br_netfilter", vec!["bridge"], vec![]),
            ("bridge", vec!["stp", "llc"], vec![]),
            ("stp", vec!["llc"], vec![]),
            ("llc", vec![], vec![]),
            ("libcrc32c", vec![], vec!["crc32c"]),
            ("needs_missing", vec!["missing"], vec![]),
        ]
        .into_iter()
        .map(|(n, hard, soft)| {
            (
                n.to_string(),
                ModuleDependencies {
                    hard: hard.into_iter().map(String::from).collect(),
                    soft: soft.into_iter().map(String::from).collect(),
                },
            )
        })
        .collect();
        let builtin = BTreeSet::from(["crc32c".to_string()]);
        let chosen = module_closure(&available, &builtin, &["br_netfilter", "libcrc32c"]).unwrap();
        assert_eq!(
            chosen.into_iter().collect::<Vec<_>>(),
            ["br_netfilter", "bridge", "libcrc32c", "llc", "stp"]
        );
        let err = module_closure(&available, &builtin, &["nope"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel package has no module nope, and the kernel does not have it built in"
        );
        let err = module_closure(&available, &BTreeSet::new(), &["needs_missing"]).unwrap_err();
        assert!(err.to_string().contains("no module missing"), "{err}");
    }
}
