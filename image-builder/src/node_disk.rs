//! The node's disks for UEFI machines (bare metal, or QEMU with OVMF):
//!
//! - the **unified kernel image** `baton.efi`: systemd's EFI stub with the kernel, the
//!   initramfs, the command line and an os-release (see [`crate::uki`]);
//! - the **system disk** `disk.raw` (and `disk.qcow2`, converted by `qemu-img`): a GPT disk with
//!   an EFI system partition holding systemd-boot (the removable-media path
//!   `EFI/BOOT/BOOTX64.EFI`), its `loader/loader.conf`, and two boot slots, the unified kernel
//!   images `EFI/Linux/baton-a.efi` and `EFI/Linux/baton-b.efi` (both the built image at
//!   first; an upgrade writes the slot not booted and makes it the default), then a blank
//!   `BATON-STATE` partition over the rest of the disk, which init formats on first boot when
//!   the machine configuration names it as `machine.dataDisk`;
//! - a **configuration disk**: a GPT disk with one FAT partition named `BATON-CONFIG` holding
//!   `machine-config.yaml`, where init looks when nothing earlier gives it a configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::EntryKind;
use crate::disk_image::{
    PartitionContents, PartitionKind, PartitionSpec, PlacedPartition, WriteDiskImageError,
    write_disk_image,
};
use crate::node_image::{BuildNodeImageError, extract_from_deb, fetch_package, run, sha256_hex};
use crate::uki::{UkiSection, build_uki};

/// The unified kernel image's file name in the output directory.
pub const UKI_NAME: &str = "baton.efi";
/// The raw system disk's file name.
pub const DISK_RAW_NAME: &str = "disk.raw";
/// The qcow2 system disk's file name.
pub const DISK_QCOW2_NAME: &str = "disk.qcow2";
/// The system disk's default size: the EFI system partition and 1.75 GiB of state.
pub const DEFAULT_DISK_SIZE: u64 = 2 << 30;
/// The EFI system partition's size: room for systemd-boot and two slots of about 50 MiB.
pub const ESP_SIZE: u64 = 256 << 20;
/// The GPT name of the state partition (what `machine.dataDisk` names as
/// `/dev/disk/by-partlabel/BATON-STATE`).
pub const STATE_PARTITION: &str = "BATON-STATE";
/// The GPT name of the EFI system partition.
pub const ESP_PARTITION: &str = "EFI";
/// The boot slots' unified kernel images on the EFI system partition.
pub const SLOT_FILES: [&str; 2] = ["EFI/Linux/baton-a.efi", "EFI/Linux/baton-b.efi"];
/// The kernel command line the unified kernel image carries: the serial console last, so
/// that init's console is the serial port (kernel messages go to both).
pub const UKI_CMDLINE: &str = "console=tty0 console=ttyS0 panic=-1";

/// The Debian package with systemd's EFI stub and systemd-boot, and the files taken from it.
const SYSTEMD_BOOT_PACKAGE: &str = "systemd-boot-efi";
const EFI_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The UEFI artifacts of a build.
#[derive(Clone, Debug)]
pub struct UefiArtifacts {
    /// The unified kernel image.
    pub uki: PathBuf,
    /// The raw GPT system disk.
    pub disk_raw: PathBuf,
    /// The same disk as qcow2.
    pub disk_qcow2: PathBuf,
    /// The system disk's partitions.
    pub partitions: Vec<PlacedPartition>,
    /// The `.deb` taken from, and its sha256.
    pub input: (String, String),
}

/// Builds the unified kernel image and the system disk into `output` from the kernel, the
/// initramfs and the image's os-release.
pub fn build_uefi_artifacts(
    kernel: &[u8],
    initramfs: &[u8],
    os_release: &str,
    package_cache: &Path,
    output: &Path,
    disk_size: u64,
    epoch: u64,
) -> Result<UefiArtifacts, BuildNodeImageError> {
    let deb = fetch_package(SYSTEMD_BOOT_PACKAGE, package_cache)?;
    let deb_bytes = std::fs::read(&deb).map_err(|source| BuildNodeImageError::Io {
        action: "reading",
        path: deb.clone(),
        source,
    })?;
    let input = (
        deb.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256_hex(&deb_bytes),
    );
    drop(deb_bytes);
    let mut files = BTreeMap::new();
    for (path, kind, _) in extract_from_deb(&deb, SYSTEMD_BOOT_PACKAGE, &[EFI_STUB, SYSTEMD_BOOT])?
    {
        if let EntryKind::File(data) = kind {
            files.insert(path, data);
        }
    }
    let mut take = |path: &str| {
        files
            .remove(path)
            .ok_or_else(|| BuildNodeImageError::MissingFile {
                package: SYSTEMD_BOOT_PACKAGE.into(),
                path: format!("{path} (as a regular file)"),
            })
    };
    let stub = take(EFI_STUB)?;
    let systemd_boot = take(SYSTEMD_BOOT)?;
    let uki = build_uki(
        &stub,
        &[
            UkiSection {
                name: ".osrel",
                data: os_release.as_bytes(),
            },
            UkiSection {
                name: ".cmdline",
                data: UKI_CMDLINE.as_bytes(),
            },
            UkiSection {
                name: ".linux",
                data: kernel,
            },
            UkiSection {
                name: ".initrd",
                data: initramfs,
            },
        ],
    )?;
    let uki_path = output.join(UKI_NAME);
    write_renamed(&uki_path, &uki)?;

    let mut esp = BTreeMap::new();
    esp.insert("EFI/BOOT/BOOTX64.EFI".to_string(), systemd_boot);
    esp.insert(
        "loader/loader.conf".to_string(),
        format!(
            "default {}\ntimeout 0\n",
            SLOT_FILES[0].rsplit('/').next().unwrap_or_default()
        )
        .into_bytes(),
    );
    for slot in SLOT_FILES {
        esp.insert(slot.to_string(), uki.clone());
    }
    let seed = sha256_hex(&uki);
    drop(uki);
    let partitions = [
        PartitionSpec {
            name: ESP_PARTITION,
            kind: PartitionKind::EfiSystem,
            size: Some(ESP_SIZE),
            contents: PartitionContents::Fat {
                label: ESP_PARTITION,
                files: esp,
            },
        },
        PartitionSpec {
            name: STATE_PARTITION,
            kind: PartitionKind::LinuxData,
            size: None,
            contents: PartitionContents::Blank,
        },
    ];
    let disk_raw = output.join(DISK_RAW_NAME);
    let partial = partial_name(&disk_raw);
    let placed = write_disk_image(&partial, disk_size, &partitions, seed.as_bytes(), epoch)?;
    rename(&partial, &disk_raw)?;
    let disk_qcow2 = output.join(DISK_QCOW2_NAME);
    let partial = partial_name(&disk_qcow2);
    let converted = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&disk_raw)
        .arg(&partial));
    if let Err(err) = converted {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    rename(&partial, &disk_qcow2)?;
    Ok(UefiArtifacts {
        uki: uki_path,
        disk_raw,
        disk_qcow2,
        partitions: placed,
        input,
    })
}

/// The GPT name of a configuration disk's partition.
pub const CONFIG_PARTITION: &str = "BATON-CONFIG";
/// The configuration's file name on that partition.
pub const CONFIG_FILE: &str = "machine-config.yaml";
/// A configuration disk's size.
pub const CONFIG_DISK_SIZE: u64 = 8 << 20;

/// Writes a configuration disk at `out` (mode 0600: it carries the machine's keys): one FAT
/// partition named `BATON-CONFIG` holding `yaml` as `machine-config.yaml`, stamped with
/// `epoch`.
pub fn write_config_disk(yaml: &str, out: &Path, epoch: u64) -> Result<(), WriteDiskImageError> {
    let mut files = BTreeMap::new();
    files.insert(CONFIG_FILE.to_string(), yaml.as_bytes().to_vec());
    let partitions = [PartitionSpec {
        name: CONFIG_PARTITION,
        kind: PartitionKind::BasicData,
        size: None,
        contents: PartitionContents::Fat {
            // FAT labels have 11 bytes; init finds the partition by its GPT name.
            label: "BATON-CFG",
            files,
        },
    }];
    let partial = partial_name(out);
    write_disk_image(
        &partial,
        CONFIG_DISK_SIZE,
        &partitions,
        sha256_hex(yaml.as_bytes()).as_bytes(),
        epoch,
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| {
                let _ = std::fs::remove_file(&partial);
                WriteDiskImageError::Io {
                    action: "setting the mode of".into(),
                    path: partial.clone(),
                    source,
                }
            },
        )?;
    }
    std::fs::rename(&partial, out).map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        WriteDiskImageError::Io {
            action: "renaming".into(),
            path: partial.clone(),
            source,
        }
    })
}

/// `path` with a `.partial-PID` suffix: outputs are written under it and renamed when whole,
/// so an interrupted build leaves nothing that looks complete.
fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

fn rename(from: &Path, to: &Path) -> Result<(), BuildNodeImageError> {
    std::fs::rename(from, to).map_err(|source| {
        let _ = std::fs::remove_file(from);
        BuildNodeImageError::Io {
            action: "renaming",
            path: from.to_path_buf(),
            source,
        }
    })
}

fn write_renamed(path: &Path, data: &[u8]) -> Result<(), BuildNodeImageError> {
    let partial = partial_name(path);
    std::fs::write(&partial, data).map_err(|source| BuildNodeImageError::Io {
        action: "writing",
        path: partial.clone(),
        source,
    })?;
    rename(&partial, path)
}
