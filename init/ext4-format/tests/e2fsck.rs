//! The formatted file system as e2fsck sees it: nothing to fix, at every size. (init's
//! tests/data_disk.rs has the kernel mount it.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;

use baton_ext4_format::{Disk, DiskContent, FormatOptions, format, probe};

fn options(label: &str) -> FormatOptions {
    FormatOptions {
        label: label.into(),
        uuid: *b"baton-ext4-test!",
        hash_seed: *b"0123456789abcdef",
        journal_sequence: 0x1234_5678,
        now: 1_790_000_000,
    }
}

/// A disk image of `size` bytes: sparse (reads as zeros) or full of earlier data.
fn disk(dir: &Path, name: &str, size: u64, garbage: bool) -> File {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    if garbage {
        // A pattern in every byte, as a disk that held something else.
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 13) as u8).collect();
        for _ in 0..size >> 20 {
            file.write_all(&chunk).unwrap();
        }
    } else {
        file.set_len(size).unwrap();
    }
    file
}

/// Runs e2fsck without changing anything; panics with its output unless it is clean.
fn e2fsck_clean(image: &Path) -> String {
    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .expect("e2fsck runs (scripts/setup installs e2fsprogs)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With -n, e2fsck answers "no" to every fix and may still exit 0 for some (a wrong free
    // count): any question it asked is a defect.
    assert!(
        out.status.success() && !text.contains("? no"),
        "e2fsck -fn {}:\n{text}",
        image.display()
    );
    text
}

fn dumpe2fs(image: &Path) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn e2fsck_finds_every_size_clean() {
    let dir = tempfile::tempdir().unwrap();
    // One small group; ten groups with backups and a short last group left out; a last group
    // of its own; a disk full of old data.
    for (name, size, garbage) in [
        ("small.img", 16 << 20, false),
        ("ten-groups.img", (10 * 32768 + 10) * 4096, false),
        ("eleven-groups.img", (10 * 32768 + 4000) * 4096, false),
        ("two-gib.img", 2 << 30, false),
        ("old-data.img", 300 << 20, true),
    ] {
        let file = disk(dir.path(), name, size, garbage);
        let made = format(&file, &options("BATON-STATE")).unwrap();
        drop(file);
        let image = dir.path().join(name);
        let report = e2fsck_clean(&image);
        assert!(
            report.contains(&format!(
                "11/{} files (0.0% non-contiguous), {}/{} blocks",
                made.inodes,
                made.blocks - made.free_blocks,
                made.blocks
            )),
            "{name}: {report}"
        );
        let header = dumpe2fs(&image);
        for expected in [
            "Filesystem volume name:   BATON-STATE",
            "has_journal",
            "extent",
            "uninit_bg",
            "Filesystem state:         clean",
            &format!("Block count:              {}", made.blocks),
            "Reserved block count:     0",
            &format!("Total journal blocks:     {}", made.journal_blocks),
            "Journal start:            0",
        ] {
            assert!(
                header.contains(expected),
                "{name}: no {expected:?} in\n{header}"
            );
        }
        let file = File::open(&image).unwrap();
        assert_eq!(
            probe(&file).unwrap(),
            DiskContent::Ext4 {
                label: "BATON-STATE".into()
            }
        );
    }
}

#[test]
fn a_disk_under_16_mib_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = disk(dir.path(), "tiny.img", 8 << 20, true);
    let before = std::fs::read(dir.path().join("tiny.img")).unwrap();
    let err = format(&file, &options("x")).unwrap_err().to_string();
    assert!(
        err.contains("8388608 bytes") && err.contains("at least 16777216"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.path().join("tiny.img")).unwrap(), before);
    let err = format(&file, &options("a-label-of-17-chr"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a-label-of-17-chr"), "{err}");
}

/// A disk that fails every write after the first `writes_left`: a format cut short, as by a
/// power cut.
struct FailingDisk {
    file: File,
    writes_left: std::cell::Cell<usize>,
}

impl Disk for FailingDisk {
    fn size(&self) -> std::io::Result<u64> {
        self.file.size()
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        match self.writes_left.get() {
            0 => Err(std::io::Error::other("the power went out")),
            n => {
                self.writes_left.set(n - 1);
                Disk::write_all_at(&self.file, bytes, offset)
            }
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        self.file.sync()
    }
}

#[test]
fn an_interrupted_format_is_known_as_one_and_formatted_again() {
    let dir = tempfile::tempdir().unwrap();
    // Cut after the first write (the superblock saying "formatting"), in the middle, and
    // just before the last (the superblock with its label).
    let total = {
        let counting = FailingDisk {
            file: disk(dir.path(), "count.img", 300 << 20, false),
            writes_left: std::cell::Cell::new(usize::MAX),
        };
        format(&counting, &options("BATON-STATE")).unwrap();
        usize::MAX - counting.writes_left.get()
    };
    for cut in [1, total / 2, total - 1] {
        let name = format!("cut-{cut}.img");
        let cut_short = FailingDisk {
            file: disk(dir.path(), &name, 300 << 20, true),
            writes_left: std::cell::Cell::new(cut),
        };
        // An interrupted format over old data: its first MiB was wiped.
        Disk::write_all_at(&cut_short.file, &vec![0u8; 1 << 20], 0).unwrap();
        let err = format(&cut_short, &options("BATON-STATE")).unwrap_err();
        assert!(err.to_string().starts_with("writing block"), "{err}");
        assert_eq!(
            probe(&cut_short.file).unwrap(),
            DiskContent::Unfinished,
            "cut after {cut} of {total} writes"
        );
        format(&cut_short.file, &options("BATON-STATE")).unwrap();
        e2fsck_clean(&dir.path().join(&name));
    }
}
