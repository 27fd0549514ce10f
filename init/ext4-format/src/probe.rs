//! What a disk holds, from the signatures file systems and partition tables leave at fixed
//! places, so that init formats only a disk that holds nothing it knows.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::ProbeDiskError;

/// What a disk holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskContent {
    /// An ext2, ext3 or ext4 file system (the kernel's ext4 driver mounts all three).
    Ext4 {
        /// Its volume label.
        label: String,
    },
    /// A file system [`crate::format`] began and never finished (it was interrupted).
    Unfinished,
    /// Something with a known signature, by name (`an xfs file system`, `a GPT partition
    /// table` ...).
    Other(&'static str),
    /// Data that no signature here names: not all zeros.
    Unrecognised,
    /// Zeros, as far as the probe reads: nothing to lose.
    Blank,
}

/// A signature: its bytes at an offset, and what it means.
const SIGNATURES: &[(u64, &[u8], &str)] = &[
    (0, b"XFSB", "an xfs file system"),
    (0, b"LUKS\xba\xbe", "a LUKS volume"),
    (0, b"hsqs", "a squashfs image"),
    (0, b"\xfc\x4e\x2b\xa9", "an md RAID member"),
    (4096, b"\xfc\x4e\x2b\xa9", "an md RAID member"),
    (512, b"LABELONE", "an LVM physical volume"),
    (512, b"EFI PART", "a GPT partition table"),
    (1024, b"\x10\x20\xf5\xf2", "an f2fs file system"),
    (4086, b"SWAPSPACE2", "a swap area"),
    (16374, b"SWAPSPACE2", "a swap area"),
    (65526, b"SWAPSPACE2", "a swap area"),
    (32769, b"CD001", "an ISO 9660 file system"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (510, b"\x55\xaa", "a DOS partition table or boot sector"),
];

/// How far into the disk the probe reads: 1 MiB (what "wipe the first MiB" clears).
pub const PROBE_BYTES: usize = 1 << 20;

/// Reads the start of `disk` and says what it holds.
pub fn probe(disk: &File) -> Result<DiskContent, ProbeDiskError> {
    let mut head = vec![0u8; PROBE_BYTES];
    let mut read = 0;
    while read < head.len() {
        match disk.read_at(&mut head[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ProbeDiskError { source }),
        }
    }
    head.truncate(read);
    Ok(content(&head))
}

/// What the first bytes of a disk say it holds. Other signatures come first: a partition
/// table written over an old ext file system leaves the old superblock behind it.
fn content(head: &[u8]) -> DiskContent {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    if let Some((_, _, name)) = SIGNATURES
        .iter()
        .find(|(offset, bytes, _)| at(*offset as usize, bytes.len()) == Some(*bytes))
    {
        return DiskContent::Other(name);
    }
    if let Some(superblock) = at(1024, 1024)
        && plausible_ext_superblock(superblock)
    {
        let label = &superblock[0x78..0x88];
        let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
        let label = String::from_utf8_lossy(&label[..end]).into_owned();
        if label == crate::format::FORMATTING_LABEL {
            return DiskContent::Unfinished;
        }
        return DiskContent::Ext4 { label };
    }
    if head.iter().all(|&b| b == 0) {
        DiskContent::Blank
    } else {
        DiskContent::Unrecognised
    }
}

/// Whether `sb` is an ext2/3/4 superblock: its magic, and fields no real one has otherwise.
fn plausible_ext_superblock(sb: &[u8]) -> bool {
    let u16_at = |at: usize| u16::from_le_bytes([sb[at], sb[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    u16_at(0x38) == 0xEF53
        && u32_at(0x4C) <= 1 // revision
        && u32_at(0x18) <= 6 // block size at most 64 KiB
        && u32_at(0x20) != 0 // blocks per group
        && u32_at(0x28) != 0 // inodes per group
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head of zeros with an ext superblock labelled `label`.
    fn ext_head(label: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        let sb = &mut head[1024..2048];
        sb[0x38..0x3A].copy_from_slice(&[0x53, 0xEF]);
        sb[0x4C] = 1;
        sb[0x18] = 2;
        sb[0x20..0x24].copy_from_slice(&32768u32.to_le_bytes());
        sb[0x28..0x2C].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x78..0x78 + label.len()].copy_from_slice(label);
        head
    }

    #[test]
    fn signatures_name_what_the_disk_holds() {
        assert_eq!(content(&vec![0u8; PROBE_BYTES]), DiskContent::Blank);
        // A disk shorter than the probe is read as far as it goes.
        assert_eq!(content(&[0u8; 100]), DiskContent::Blank);

        let mut head = vec![0u8; PROBE_BYTES];
        head[512..520].copy_from_slice(b"EFI PART");
        head[510..512].copy_from_slice(b"\x55\xaa");
        assert_eq!(
            content(&head),
            DiskContent::Other("a GPT partition table"),
            "a protective MBR is named for the GPT behind it"
        );
        let mut head = vec![0u8; PROBE_BYTES];
        head[65600..65608].copy_from_slice(b"_BHRfS_M");
        assert_eq!(content(&head), DiskContent::Other("a btrfs file system"));
        let mut head = vec![0u8; PROBE_BYTES];
        head[4096..4100].copy_from_slice(b"\xfc\x4e\x2b\xa9");
        assert_eq!(content(&head), DiskContent::Other("an md RAID member"));

        assert_eq!(
            content(&ext_head(b"STATE")),
            DiskContent::Ext4 {
                label: "STATE".into()
            }
        );
        assert_eq!(
            content(&ext_head(crate::format::FORMATTING_LABEL.as_bytes())),
            DiskContent::Unfinished
        );
    }

    #[test]
    fn a_partition_table_over_an_old_ext_file_system_is_the_partition_table() {
        let mut head = ext_head(b"OLD");
        head[510..512].copy_from_slice(b"\x55\xaa");
        assert_eq!(
            content(&head),
            DiskContent::Other("a DOS partition table or boot sector")
        );
    }

    #[test]
    fn data_without_a_signature_is_unrecognised_not_blank() {
        let mut head = vec![0u8; PROBE_BYTES];
        head[300_000] = 1;
        assert_eq!(content(&head), DiskContent::Unrecognised);
        // The magic alone, in data that is no superblock.
        let mut head = vec![0u8; PROBE_BYTES];
        head[1024 + 0x38..1024 + 0x3A].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(content(&head), DiskContent::Unrecognised);
    }
}
