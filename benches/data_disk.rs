//! Formatting a node's data disk: `baton-ext4-format` (what init runs at a node's first boot)
//! beside the reference, Debian's `mke2fs -t ext4` with lazy inode-table and journal
//! initialisation (what a node would otherwise carry and run), on the same sparse images in the
//! same run. Measured: the wall time of each format (the reference's includes its process
//! start), and the bytes the image then holds on the host's disk (what was written). Then the
//! kernel mounts each result on a loop device, to show both are file systems it takes.
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench data_disk` (as root,
//! with e2fsprogs and util-linux).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{ms, quantile};

const RUNS: usize = 7;
const SIZES_GIB: &[u64] = &[1, 8, 64];

fn sparse_image(path: &Path, gib: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .unwrap()
        .set_len(gib << 30)
        .unwrap();
}

/// Bytes the image holds on the host's disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn baton_format(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let options = baton_ext4_format::FormatOptions {
        label: "BATON-STATE".into(),
        uuid: rand_bytes(),
        hash_seed: rand_bytes(),
        journal_sequence: 1,
        now: 0,
    };
    baton_ext4_format::format(&file, &options).unwrap();
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    bytes
}

fn mke2fs(path: &Path) {
    let status = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-L",
            "BATON-STATE",
        ])
        .arg(path)
        .status()
        .expect("mke2fs runs (e2fsprogs)");
    assert!(status.success());
}

/// Whether the kernel mounts `image` as ext4 (through a loop device).
fn kernel_mounts(image: &Path, target: &Path) -> bool {
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(image)
        .output()
        .unwrap();
    let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mounted = nix::mount::mount(
        Some(device.as_str()),
        target,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    if mounted {
        nix::mount::umount(target).unwrap();
    }
    let _ = Command::new("losetup").args(["-d", &device]).status();
    mounted
}

fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = dir.path().join("disk.img");
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    println!(
        "| disk (sparse) | formatter | median | p90 | written to the host's disk | kernel mounts it |"
    );
    println!("|---|---|---|---|---|---|");
    for &gib in SIZES_GIB {
        for (name, format) in [
            ("baton-ext4-format", baton_format as fn(&Path)),
            ("mke2fs -t ext4, lazy init (reference)", mke2fs as fn(&Path)),
        ] {
            let mut times: Vec<Duration> = Vec::new();
            let mut written = 0;
            for _ in 0..RUNS {
                sparse_image(&image, gib);
                let start = Instant::now();
                format(&image);
                times.push(start.elapsed());
                written = allocated(&image);
            }
            times.sort();
            println!(
                "| {gib} GiB | {name} | {} | {} | {:.1} MiB | {} |",
                ms(quantile(&times, 0.5)),
                ms(quantile(&times, 0.9)),
                written as f64 / (1 << 20) as f64,
                if kernel_mounts(&image, &target) {
                    "yes"
                } else {
                    "no"
                }
            );
        }
    }
}
