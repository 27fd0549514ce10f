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
    /// Something else, by name (`xfs`, `a GPT partition table` ...).
    Other(&'static str),
    /// No signature this probe knows.
    Unformatted,
}

/// A signature: its bytes at an offset, and what it means.
const SIGNATURES: &[(u64, &[u8], &str)] = &[
    (0, b"XFSB", "an xfs file system"),
    (0, b"LUKS\xba\xbe", "a LUKS volume"),
    (0, b"hsqs", "a squashfs image"),
    (512, b"EFI PART", "a GPT partition table"),
    (4086, b"SWAPSPACE2", "a swap area"),
    (32769, b"CD001", "an ISO 9660 file system"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (510, b"\x55\xaa", "a DOS partition table or boot sector"),
];

/// How far into the disk the probe reads.
const PROBE_BYTES: usize = 65600 + 8;

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

/// What the first bytes of a disk say it holds.
fn content(head: &[u8]) -> DiskContent {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    if at(1024 + 0x38, 2) == Some(&0xEF53u16.to_le_bytes()[..]) {
        let label = at(1024 + 0x78, 16).unwrap_or_default();
        let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
        return DiskContent::Ext4 {
            label: String::from_utf8_lossy(&label[..end]).into_owned(),
        };
    }
    SIGNATURES
        .iter()
        .find(|(offset, bytes, _)| at(*offset as usize, bytes.len()) == Some(*bytes))
        .map_or(DiskContent::Unformatted, |(_, _, name)| {
            DiskContent::Other(name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_name_what_the_disk_holds() {
        let mut head = vec![0u8; PROBE_BYTES];
        assert_eq!(content(&head), DiskContent::Unformatted);
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
        head[1024 + 0x38..1024 + 0x3A].copy_from_slice(&[0x53, 0xEF]);
        head[1024 + 0x78..1024 + 0x78 + 5].copy_from_slice(b"STATE");
        assert_eq!(
            content(&head),
            DiskContent::Ext4 {
                label: "STATE".into()
            }
        );
        // A disk shorter than a signature's place is read as far as it goes.
        assert_eq!(content(&[0u8; 100]), DiskContent::Unformatted);
    }
}
