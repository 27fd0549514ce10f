//! `baton image`: the node's image store from the command line (what `ctr images` and
//! `crictl images` are to containerd): import archives, pull, list, remove, and build the
//! busybox test image.

use std::path::PathBuf;

use clap::Subcommand;

/// `baton image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The layout directory or archive.
        file: PathBuf,
        /// The image store.
        #[arg(long, default_value = baton_images::DEFAULT_ROOT)]
        store: PathBuf,
    },
    /// Pull an image from a registry.
    Pull {
        /// The image reference (`busybox`, `registry:5000/app:1.0`, `name@sha256:...`).
        reference: String,
        /// Registries (host:port) spoken to over plain HTTP.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// The image store.
        #[arg(long, default_value = baton_images::DEFAULT_ROOT)]
        store: PathBuf,
    },
    /// List the images in the store.
    List {
        /// The image store.
        #[arg(long, default_value = baton_images::DEFAULT_ROOT)]
        store: PathBuf,
    },
    /// Remove an image (by reference or id) and the layers no other image uses.
    Remove {
        /// The image reference or id.
        reference: String,
        /// The image store.
        #[arg(long, default_value = baton_images::DEFAULT_ROOT)]
        store: PathBuf,
    },
    /// Build the busybox test image (from Debian's busybox-static) as an OCI layout,
    /// reproducibly.
    BuildTestImage {
        /// The layout directory to write.
        #[arg(long)]
        output: PathBuf,
        /// The name recorded in the layout.
        #[arg(long, default_value = "docker.io/library/busybox:1.35")]
        reference: String,
        /// The busybox binary.
        #[arg(long, default_value = baton_image_builder::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// Also write the layout as an OCI archive (tar) here.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Write a node's machine configuration as a cpio archive to append to the image's
    /// initramfs (`cat initramfs.cpio.gz config.cpio.gz`), after validating it.
    ConfigArchive {
        /// The MachineConfig file.
        #[arg(long)]
        machine_config: PathBuf,
        /// The archive to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Write a node's machine configuration on a configuration disk, after validating it: a
    /// GPT disk image with one FAT partition named BATON-CONFIG holding machine-config.yaml,
    /// where a node booted from the system disk finds it.
    ConfigDisk {
        /// The MachineConfig file.
        #[arg(long)]
        machine_config: PathBuf,
        /// The disk image to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Build the node image: Debian's cloud kernel, and an initramfs holding this (statically
    /// linked) baton at /init, the kernel modules the node loads, etcd and what it needs from
    /// Debian packages; for UEFI machines a unified kernel image and a GPT system disk (raw
    /// and qcow2); and a manifest of sha256 sums.
    Build {
        /// The directory to write (vmlinuz, initramfs.cpio.gz, baton.efi, disk.raw,
        /// disk.qcow2, manifest.json).
        #[arg(long)]
        output: PathBuf,
        /// The system disk's size, in bytes or with a suffix (M or MiB, G or GiB); 2 GiB
        /// unless given.
        #[arg(long, value_parser = parse_size, conflicts_with = "no_uefi")]
        disk_size: Option<u64>,
        /// Build only the kernel and the initramfs (no unified kernel image, no disk).
        #[arg(long)]
        no_uefi: bool,
        /// The baton binary to put at /init (default: this one).
        #[arg(long)]
        baton: Option<PathBuf>,
        /// Where downloaded Debian packages are kept (default: the user's cache directory).
        #[arg(long)]
        package_cache: Option<PathBuf>,
    },
}

/// Runs the subcommand.
pub async fn run(command: ImageCommand) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        ImageCommand::Import { file, store } => {
            let store = baton_images::ImageStore::open(&store)?;
            for image in store.import(&file).await? {
                println!(
                    "imported {} {}",
                    short(&image.id),
                    image.repo_tags.join(" ")
                );
            }
        }
        ImageCommand::Pull {
            reference,
            insecure_registries,
            store,
        } => {
            let store = baton_images::ImageStore::open(&store)?;
            let options = baton_images::PullOptions {
                insecure_registries,
                ..Default::default()
            };
            let image = store.pull(&reference, &options).await?;
            println!("pulled {} {}", short(&image.id), image.repo_tags.join(" "));
        }
        ImageCommand::List { store } => {
            let store = baton_images::ImageStore::open(&store)?;
            // One row per name, as `crictl images` shows them.
            let mut rows: Vec<(String, String, u64)> = Vec::new();
            for image in store.list() {
                let names = if image.repo_tags.is_empty() {
                    vec!["<none>".to_owned()]
                } else {
                    image.repo_tags.clone()
                };
                for name in names {
                    rows.push((name, short(&image.id).to_owned(), image.size));
                }
            }
            rows.sort();
            println!("{:<60} {:<14} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for (name, id, size) in rows {
                println!("{name:<60} {id:<14} {:>8.1}MB", size as f64 / 1_000_000.0);
            }
        }
        ImageCommand::Remove { reference, store } => {
            let store = baton_images::ImageStore::open(&store)?;
            let image = store.remove(&reference).await?;
            println!("removed {}", short(&image.id));
        }
        ImageCommand::BuildTestImage {
            output,
            reference,
            busybox,
            archive,
        } => {
            let built = baton_image_builder::build_busybox_image(&busybox, &output, &reference)?;
            if let Some(archive) = archive {
                baton_image_builder::write_oci_archive(&built.layout_dir, &archive)?;
            }
            println!("{} {}", built.reference, built.manifest_digest);
        }
        ImageCommand::ConfigArchive {
            machine_config,
            output,
        } => {
            let yaml = read_machine_config(&machine_config)?;
            let mtime =
                u32::try_from(baton_image_builder::source_date_epoch()?).unwrap_or(u32::MAX);
            baton_image_builder::write_config_archive(&yaml, &output, mtime)?;
            println!("{}", output.display());
        }
        ImageCommand::ConfigDisk {
            machine_config,
            output,
        } => {
            let yaml = read_machine_config(&machine_config)?;
            baton_image_builder::write_config_disk(
                &yaml,
                &output,
                baton_image_builder::source_date_epoch()?,
            )?;
            println!("{}", output.display());
        }
        ImageCommand::Build {
            output,
            disk_size,
            no_uefi,
            baton,
            package_cache,
        } => {
            let options = baton_image_builder::NodeImageOptions {
                baton: match baton {
                    Some(path) => path,
                    None => std::env::current_exe()?,
                },
                output,
                package_cache: package_cache
                    .unwrap_or_else(|| baton_image_builder::default_cache_dir().join("packages")),
                source_date_epoch: baton_image_builder::source_date_epoch()?,
                disk_size: (!no_uefi)
                    .then(|| disk_size.unwrap_or(baton_image_builder::DEFAULT_DISK_SIZE)),
            };
            let image = baton_image_builder::build_node_image(&options)?;
            println!("{:<50} {:>12}", "FILE", "BYTES");
            for (path, size) in &image.sizes {
                println!("/{path:<49} {size:>12}");
            }
            println!(
                "{} {} bytes (Linux {})",
                image.kernel.display(),
                std::fs::metadata(&image.kernel)?.len(),
                image.kernel_release
            );
            let total = std::fs::metadata(&image.initramfs)?.len();
            println!(
                "{} {} bytes sha256:{}",
                image.initramfs.display(),
                total,
                image.initramfs_sha256
            );
            if let Some(uefi) = &image.uefi {
                for path in [&uefi.uki, &uefi.disk_raw, &uefi.disk_qcow2] {
                    println!(
                        "{} {} bytes",
                        path.display(),
                        std::fs::metadata(path)?.len()
                    );
                }
                for partition in &uefi.partitions {
                    println!(
                        "  partition {:<12} at {:>10} bytes, {:>10} bytes",
                        partition.name, partition.offset, partition.size
                    );
                }
            }
        }
    }
    Ok(())
}

/// A machine configuration file's text, once it validates; errors name the flag and file.
fn read_machine_config(path: &std::path::Path) -> anyhow::Result<String> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("--machine-config {}: {err}", path.display()))?;
    let source = format!("--machine-config {}", path.display());
    if let Err(err) = baton_init::MachineConfig::parse(&yaml, &source) {
        let mut message = err.to_string();
        if let baton_init::LoadMachineConfigError::Malformed { source, .. } = &err {
            message = format!("{message}: {source}");
        }
        anyhow::bail!(message);
    }
    Ok(yaml)
}

/// A size in bytes from `2147483648`, `2048M`, `2048MiB`, `2G` or `2GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let scale: u64 = match unit {
        "" => 1,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: use bytes, or a number with M, MiB, G or GiB"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size"))
}

/// The first 12 hex digits of an image id, as `crictl images` shows it.
fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}
