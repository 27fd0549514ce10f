//! GPT disk images: a protective MBR, a GUID partition table (the `gpt` crate), and FAT file
//! systems written into the partitions that carry files by GNU mtools (`mformat`, `mmd`,
//! `mcopy` on an offset into the image; the `fatfs` crate was tried and writes long-name
//! entries for `.` and `..`, which fsck.fat rejects). Partitions start on 1 MiB boundaries.
//! Every GUID and volume serial is derived from a seed the caller gives (the sha256 of what the
//! disk carries) and every file is stamped with the caller's time (mtools reads
//! SOURCE_DATE_EPOCH), so the same inputs give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// 1980-01-01T00:00:00Z, the earliest time FAT can record.
const FAT_EPOCH: u64 = 315_532_800;

/// Bytes per logical block: the GPT is written for 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Where partitions start and how they are aligned.
const ALIGN: u64 = 1 << 20;
/// The GPT's partition entry array: 128 entries of 128 bytes, 32 sectors, after the header.
const GPT_SECTORS: u64 = 33;

/// What a partition is, in GPT type GUID terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// An EFI system partition.
    EfiSystem,
    /// Linux file system data.
    LinuxData,
    /// Basic data (FAT data that any system reads).
    BasicData,
}

impl PartitionKind {
    fn type_guid(self) -> gpt::partition_types::Type {
        match self {
            PartitionKind::EfiSystem => gpt::partition_types::EFI,
            PartitionKind::LinuxData => gpt::partition_types::LINUX_FS,
            PartitionKind::BasicData => gpt::partition_types::BASIC,
        }
    }
}

/// What a partition holds when the image is written.
#[derive(Clone, Debug)]
pub enum PartitionContents {
    /// Zeros: left for the machine to format (a state partition).
    Blank,
    /// A FAT file system with a volume label (at most 11 bytes) and these files, by path
    /// (`EFI/BOOT/BOOTX64.EFI`); directories are made as needed.
    Fat {
        /// The volume label.
        label: &'static str,
        /// The files.
        files: BTreeMap<String, Vec<u8>>,
    },
}

/// One partition of the image.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    /// The GPT partition name (what `/sys/class/block/*/uevent` reports as PARTNAME).
    pub name: &'static str,
    /// Its type.
    pub kind: PartitionKind,
    /// Its size in bytes (rounded up to 1 MiB), or `None` for the rest of the disk (last only).
    pub size: Option<u64>,
    /// What it holds.
    pub contents: PartitionContents,
}

/// Where a partition landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedPartition {
    /// Its GPT name.
    pub name: String,
    /// Its first byte on the disk.
    pub offset: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Its unique GUID.
    pub guid: String,
}

/// Why a disk image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteDiskImageError {
    /// The partitions do not fit the disk.
    #[error(
        "the partitions need {needed} bytes and the disk has {size} (GPT included): make the disk larger"
    )]
    TooSmall {
        /// Bytes the partitions and the GPT need.
        needed: u64,
        /// The disk's size.
        size: u64,
    },
    /// A partition other than the last asks for the rest of the disk.
    #[error("partition {0}: only the last partition may take the rest of the disk")]
    RestNotLast(&'static str),
    /// A FAT volume label is longer than 11 bytes.
    #[error("partition {0}: a FAT volume label has at most 11 bytes")]
    LongLabel(&'static str),
    /// Writing the partition table failed.
    #[error("writing the partition table of {path}")]
    PartitionTable {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: gpt::GptError,
    },
    /// An mtools command failed.
    #[error("{command} failed: {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Writing the protective MBR failed.
    #[error("writing the protective MBR of {path}")]
    Mbr {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: gpt::mbr::MBRError,
    },
    /// Reading or writing the image failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: String,
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A GUID derived from `seed` and `what`: the same inputs always give the same GUID.
fn derived_guid(seed: &[u8], what: &str) -> uuid::Uuid {
    let digest = Sha256::new()
        .chain_update(seed)
        .chain_update(b"\0")
        .chain_update(what.as_bytes())
        .finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Writes a `size`-byte GPT disk image at `path` with `partitions` in order (replacing any
/// file there; an image cut short by an error is removed). `seed` fixes the GUIDs; files on
/// FAT partitions carry the time `epoch` (seconds since 1970).
pub fn write_disk_image(
    path: &Path,
    size: u64,
    partitions: &[PartitionSpec],
    seed: &[u8],
    epoch: u64,
) -> Result<Vec<PlacedPartition>, WriteDiskImageError> {
    let size = size / SECTOR * SECTOR;
    let mut placed = place(size, partitions)?;
    let result = write_placed(path, size, partitions, &placed, seed, epoch);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result?;
    for partition in &mut placed {
        partition.guid = derived_guid(seed, &partition.name).to_string();
    }
    Ok(placed)
}

/// Where each partition goes: 1 MiB aligned, the last one to the end of the usable space.
fn place(
    size: u64,
    partitions: &[PartitionSpec],
) -> Result<Vec<PlacedPartition>, WriteDiskImageError> {
    let last_usable_end = size.saturating_sub(GPT_SECTORS * SECTOR) / SECTOR * SECTOR;
    let mut offset = ALIGN;
    let mut placed = Vec::with_capacity(partitions.len());
    for (i, spec) in partitions.iter().enumerate() {
        let len = match spec.size {
            Some(bytes) => bytes.div_ceil(ALIGN) * ALIGN,
            None if i + 1 == partitions.len() => last_usable_end.saturating_sub(offset),
            None => return Err(WriteDiskImageError::RestNotLast(spec.name)),
        };
        if len == 0 || offset + len > last_usable_end {
            return Err(WriteDiskImageError::TooSmall {
                needed: offset + len.max(ALIGN) + GPT_SECTORS * SECTOR,
                size,
            });
        }
        if let PartitionContents::Fat { label, .. } = &spec.contents
            && label.len() > 11
        {
            return Err(WriteDiskImageError::LongLabel(spec.name));
        }
        placed.push(PlacedPartition {
            name: spec.name.to_string(),
            offset,
            size: len,
            guid: String::new(),
        });
        offset += len;
    }
    Ok(placed)
}

fn write_placed(
    path: &Path,
    size: u64,
    partitions: &[PartitionSpec],
    placed: &[PlacedPartition],
    seed: &[u8],
    epoch: u64,
) -> Result<(), WriteDiskImageError> {
    let io = |action: &str| {
        let action = action.to_string();
        move |source| WriteDiskImageError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let _ = std::fs::remove_file(path);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("creating"))?;
    file.set_len(size).map_err(io("sizing"))?;
    let sectors = size / SECTOR;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut file)
        .map_err(|source| WriteDiskImageError::Mbr {
            path: path.to_path_buf(),
            source,
        })?;
    let table_error = |source| WriteDiskImageError::PartitionTable {
        path: path.to_path_buf(),
        source,
    };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut file, Some(derived_guid(seed, "disk")))
        .map_err(table_error)?;
    let mut entries = BTreeMap::new();
    for (i, (spec, at)) in partitions.iter().zip(placed).enumerate() {
        entries.insert(
            i as u32 + 1,
            gpt::partition::Partition {
                part_type_guid: spec.kind.type_guid(),
                part_guid: derived_guid(seed, spec.name),
                first_lba: at.offset / SECTOR,
                last_lba: (at.offset + at.size) / SECTOR - 1,
                flags: 0,
                name: spec.name.to_string(),
            },
        );
    }
    disk.update_partitions(entries).map_err(table_error)?;
    disk.write().map_err(table_error)?;

    for (spec, at) in partitions.iter().zip(placed) {
        let PartitionContents::Fat { label, files } = &spec.contents else {
            continue;
        };
        let guid = derived_guid(seed, spec.name);
        let serial = u32::from_le_bytes(guid.as_bytes()[..4].try_into().expect("4 bytes"));
        write_fat(path, at, spec.kind, label, files, serial, epoch)?;
    }
    file.sync_all().map_err(io("syncing"))?;
    Ok(())
}

/// Formats the partition at `at` of the image at `path` as FAT with `label` and `serial`, and
/// copies `files` onto it, with mtools.
fn write_fat(
    path: &Path,
    at: &PlacedPartition,
    kind: PartitionKind,
    label: &str,
    files: &BTreeMap<String, Vec<u8>>,
    serial: u32,
    epoch: u64,
) -> Result<(), WriteDiskImageError> {
    let scratch = tempfile::tempdir().map_err(|source| WriteDiskImageError::Io {
        action: "creating a temporary directory for".into(),
        path: path.to_path_buf(),
        source,
    })?;
    let target = format!("{}@@{}", path.display(), at.offset);
    // FAT cannot hold times before 1980.
    let epoch = epoch.max(FAT_EPOCH);
    let mtools = |tool: &str| {
        let mut command = Command::new(tool);
        // Nothing of the build host's: no configuration file (mtools reads ~/.mtoolsrc,
        // /etc/mtools.conf and MTOOLS_* variables) and UTC (it stamps local times).
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", scratch.path())
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&target);
        command
    };
    let mut format = mtools("mformat");
    format
        .args(["-T", &(at.size / SECTOR).to_string()])
        .args(["-h", "64", "-s", "32"])
        .args(["-H", &(at.offset / SECTOR).to_string()])
        .args(["-N", &format!("{serial:08x}")])
        .args(["-v", label]);
    // UEFI asks for FAT32 on an EFI system partition (65,525 clusters at least: mformat
    // picks the cluster size).
    if kind == PartitionKind::EfiSystem {
        format.arg("-F");
    }
    run_tool(format.arg("::"))?;
    let directories: BTreeSet<String> = files
        .keys()
        .flat_map(|file| {
            let parts: Vec<&str> = file.split('/').collect();
            (1..parts.len()).map(move |n| parts[..n].join("/"))
        })
        .collect();
    for directory in &directories {
        run_tool(mtools("mmd").arg(format!("::/{directory}")))?;
    }
    for (index, (name, data)) in files.iter().enumerate() {
        let local = scratch.path().join(index.to_string());
        std::fs::write(&local, data).map_err(|source| WriteDiskImageError::Io {
            action: "writing".into(),
            path: local.clone(),
            source,
        })?;
        run_tool(mtools("mcopy").arg(&local).arg(format!("::/{name}")))?;
    }
    Ok(())
}

fn run_tool(command: &mut Command) -> Result<(), WriteDiskImageError> {
    let line = format!("{command:?}");
    let output = command.output().map_err(|source| WriteDiskImageError::Io {
        action: "running".into(),
        path: PathBuf::from(&line),
        source,
    })?;
    if !output.status.success() {
        return Err(WriteDiskImageError::Tool {
            command: line,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(files: BTreeMap<String, Vec<u8>>) -> Vec<PartitionSpec> {
        vec![
            PartitionSpec {
                name: "EFI",
                kind: PartitionKind::EfiSystem,
                size: Some(40 << 20),
                contents: PartitionContents::Fat {
                    label: "EFI",
                    files,
                },
            },
            PartitionSpec {
                name: "BATON-STATE",
                kind: PartitionKind::LinuxData,
                size: None,
                contents: PartitionContents::Blank,
            },
        ]
    }

    #[test]
    fn partitions_are_aligned_and_the_last_takes_the_rest() {
        let placed = place(100 << 20, &specs(BTreeMap::new())).unwrap();
        assert_eq!(placed[0].offset, 1 << 20);
        assert_eq!(placed[0].size, 40 << 20);
        assert_eq!(placed[1].offset, 41 << 20);
        // The backup GPT's 33 sectors at the end are outside every partition.
        assert_eq!(placed[1].size, (100 << 20) - (41 << 20) - 33 * 512);
        assert!(matches!(
            place(30 << 20, &specs(BTreeMap::new())),
            Err(WriteDiskImageError::TooSmall { .. })
        ));
    }

    #[test]
    fn files_written_to_a_fat_partition_read_back_and_the_bytes_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert("EFI/BOOT/BOOTX64.EFI".to_string(), vec![0xab; 300_000]);
        files.insert("loader/loader.conf".to_string(), b"timeout 0\n".to_vec());
        let image = dir.path().join("disk.raw");
        let placed = write_disk_image(
            &image,
            100 << 20,
            &specs(files.clone()),
            b"seed",
            1_700_000_000,
        )
        .unwrap();
        let target = format!("{}@@{}", image.display(), placed[0].offset);
        for (path, data) in &files {
            let out = Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-i", &target])
                .arg(format!("::/{path}"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(&out.stdout, data, "{path}");
        }
        // Stamped with the given time in UTC, whatever the build host's time zone.
        let listing = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("TZ", "UTC")
            .args(["-i", &target, "::/loader"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("2023-11-14  22:13"), "{listing}");
        // FAT32, labelled, and clean to fsck.fat.
        let esp = dir.path().join("esp.img");
        let bytes = std::fs::read(&image).unwrap();
        let range = placed[0].offset as usize..(placed[0].offset + placed[0].size) as usize;
        std::fs::write(&esp, &bytes[range]).unwrap();
        let checked = Command::new("fsck.fat")
            .args(["-n", "-v"])
            .arg(&esp)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&checked.stdout);
        assert!(checked.status.success(), "{report}");
        assert!(report.contains("32 bit entries"), "{report}");
        let info = Command::new("minfo")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &target, "::"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&info.stdout).contains("disk label=\"EFI        \""),
            "{}",
            String::from_utf8_lossy(&info.stdout)
        );
        let disk = gpt::GptConfig::new().open(&image).unwrap();
        let names: Vec<&str> = disk
            .partitions()
            .values()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["EFI", "BATON-STATE"]);
        assert_eq!(disk.partitions()[&2].part_guid.to_string(), placed[1].guid);
        let again = dir.path().join("again.raw");
        write_disk_image(&again, 100 << 20, &specs(files), b"seed", 1_700_000_000).unwrap();
        assert!(std::fs::read(&image).unwrap() == std::fs::read(&again).unwrap());
    }
}
