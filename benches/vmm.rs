//! The VMM's start-up beside QEMU's `microvm` machine doing the same, in the same run: each
//! starts a VM with 128 MiB, a virtio block device on a raw image and a virtio entropy
//! device, whose guest writes one byte to COM1 as its first instruction and halts. Measured
//! from the process's spawn to that byte on its standard output: the wall time, the CPU time
//! of all the process's threads, and its resident memory once the guest halted (guest pages
//! touched by the tiny guest are a few KiB). Then 20 of each started at once, until every
//! one has printed. Baton's guest is a 64-bit ELF entered in long mode; QEMU's is a 64 KiB
//! firmware (`-bios`) entered at the reset vector in real mode, so neither runs firmware or
//! a kernel first. `baton vmm --jail` is measured the same way (the outer process and the
//! jailed child together), beside the same VMM without the jail.
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench vmm` (as root, with
//! /dev/kvm and qemu-system-x86_64).

mod support;

#[path = "../vmm/tests/common/mod.rs"]
mod tiny_guest;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{ms, pss_mib, quantile};

const RUNS: usize = 15;
const CONCURRENT: usize = 20;

/// One start: spawn to the guest's first byte, CPU time and RSS at that moment.
struct Start {
    first_output: Duration,
    cpu: Duration,
    rss_mib: f64,
}

/// `pid` and its children (a jailed `baton vmm` is an outer process and the jailed VMM).
fn process_tree(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}

/// CPU time of every thread of `pid` so far (schedstat: nanoseconds on a CPU).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn spawn(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the VMM starts")
}

/// Waits for the first byte of `child`'s output.
fn first_byte(child: &mut Child) -> u8 {
    let mut byte = [0u8; 1];
    child
        .stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut byte)
        .expect("the guest printed a byte");
    byte[0]
}

/// SIGTERM, so that a jailed `baton vmm` removes its cgroup and mount point.
fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn start_once(command: &mut Command) -> Start {
    let started = Instant::now();
    let mut child = spawn(command);
    assert_eq!(first_byte(&mut child), b'X');
    let first_output = started.elapsed();
    let tree = process_tree(child.id());
    let cpu = tree.iter().map(|&pid| cpu_time(pid)).sum();
    // A jailed VMM's two processes share the binary's pages: their proportional shares
    // (Pss) add up to what both hold; a lone process's RSS is the same figure.
    let rss_mib = match tree.as_slice() {
        [pid] => support::memory_mib(*pid).0,
        pids => pids.iter().map(|&pid| pss_mib(pid)).sum(),
    };
    stop(child);
    Start {
        first_output,
        cpu,
        rss_mib,
    }
}

/// Starts `count` VMs at once; the time until every one has printed.
fn start_concurrently(count: usize, command: &mut dyn FnMut() -> Command) -> Duration {
    let started = Instant::now();
    let mut children: Vec<Child> = (0..count).map(|_| spawn(&mut command())).collect();
    for child in &mut children {
        assert_eq!(first_byte(child), b'X');
    }
    let elapsed = started.elapsed();
    children.into_iter().for_each(stop);
    elapsed
}

fn baton_command(kernel: &Path, disk: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .arg("vmm")
        .arg("--kernel")
        .arg(kernel)
        .arg("--disk")
        .arg(disk)
        .args(["--memory", "128", "--console", "stdout"]);
    command
}

fn jailed_baton_command(kernel: &Path, disk: &Path) -> Command {
    let mut command = baton_command(kernel, disk);
    command.arg("--jail");
    command
}

fn qemu_command(bios: &Path, disk: &Path) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-M", "microvm", "-accel", "kvm", "-m", "128", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-bios"])
        .arg(bios)
        .arg("-drive")
        .arg(format!(
            "id=disk,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=disk"])
        .args(["-device", "virtio-rng-device"]);
    command
}

/// Baton's guest, an ELF entered in long mode: `mov dx, 0x3f8; mov al, 'X'; out dx, al`,
/// then `hlt` forever.
fn long_mode_guest() -> Vec<u8> {
    let mut asm = tiny_guest::Asm::default();
    asm.mov_dx(0x3f8)
        .out_al(b'X')
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    tiny_guest::elf_kernel(&asm.finish())
}

/// QEMU's guest, a 64 KiB firmware whose reset vector (0xffff0) runs the same instructions
/// in real mode (where `mov dx` needs no operand-size prefix).
fn real_mode_firmware() -> Vec<u8> {
    let mut bios = vec![0xf4u8; 0x1_0000];
    let stub = [0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xf4, 0xeb, 0xfd];
    bios[0xfff0..0xfff0 + stub.len()].copy_from_slice(&stub);
    bios
}

fn summarize(name: &str, starts: &[Start]) -> (Duration, Duration, f64) {
    let mut wall: Vec<Duration> = starts.iter().map(|s| s.first_output).collect();
    let mut cpu: Vec<Duration> = starts.iter().map(|s| s.cpu).collect();
    let mut rss: Vec<f64> = starts.iter().map(|s| s.rss_mib).collect();
    wall.sort();
    cpu.sort();
    rss.sort_by(f64::total_cmp);
    let summary = (
        quantile(&wall, 0.5),
        quantile(&cpu, 0.5),
        rss[rss.len() / 2],
    );
    println!(
        "| {name} | {} | {} | {:.1} ms | {:.1} MiB |",
        ms(summary.0),
        ms(quantile(&wall, 0.9)),
        summary.1.as_secs_f64() * 1000.0,
        summary.2
    );
    summary
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let kernel = work.path().join("tiny.elf");
    let bios = work.path().join("tiny.bios");
    std::fs::write(&kernel, long_mode_guest()).unwrap();
    std::fs::write(&bios, real_mode_firmware()).unwrap();
    let disks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let path = work.path().join(format!("disk{i}.raw"));
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            path
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Warm the page cache for both binaries.
    start_once(&mut baton_command(&kernel, &disks[0]));
    start_once(&mut qemu_command(&bios, &disks[0]));
    start_once(&mut jailed_baton_command(&kernel, &disks[0]));
    let mut baton = Vec::new();
    let mut qemu = Vec::new();
    let mut jailed = Vec::new();
    for _ in 0..RUNS {
        baton.push(start_once(&mut baton_command(&kernel, &disks[0])));
        qemu.push(start_once(&mut qemu_command(&bios, &disks[0])));
        jailed.push(start_once(&mut jailed_baton_command(&kernel, &disks[0])));
    }
    println!("{RUNS} starts each, alternating; 128 MiB, virtio-blk and virtio-rng, 1 vCPU\n");
    println!("| VMM | spawn to first guest output, p50 | p90 | CPU time to it, p50 | RSS, p50 |");
    println!("|---|---|---|---|---|");
    let b = summarize("baton vmm", &baton);
    let q = summarize("qemu -M microvm -accel kvm", &qemu);
    summarize("baton vmm --jail (outer and jailed processes)", &jailed);

    let mut next = 0;
    let baton_all = start_concurrently(CONCURRENT, &mut || {
        next += 1;
        baton_command(&kernel, &disks[next - 1])
    });
    let mut next = 0;
    let qemu_all = start_concurrently(CONCURRENT, &mut || {
        next += 1;
        qemu_command(&bios, &disks[next - 1])
    });
    let mut next = 0;
    let jailed_all = start_concurrently(CONCURRENT, &mut || {
        next += 1;
        jailed_baton_command(&kernel, &disks[next - 1])
    });
    let rate = |d: Duration| CONCURRENT as f64 / d.as_secs_f64() / cores as f64;
    println!("\n{CONCURRENT} started at once on {cores} cores, until every guest printed\n");
    println!("| VMM | all printed after | starts per core per second |");
    println!("|---|---|---|");
    println!("| baton vmm | {} | {:.1} |", ms(baton_all), rate(baton_all));
    println!(
        "| qemu -M microvm -accel kvm | {} | {:.1} |",
        ms(qemu_all),
        rate(qemu_all)
    );
    println!(
        "| baton vmm --jail | {} | {:.1} |",
        ms(jailed_all),
        rate(jailed_all)
    );
    println!(
        "\nbaton vs qemu: first output {:.1}x faster, {:.1}x less CPU, {:.1}x less memory, \
         {:.1}x the start rate",
        q.0.as_secs_f64() / b.0.as_secs_f64(),
        q.1.as_secs_f64() / b.1.as_secs_f64(),
        q.2 / b.2,
        rate(baton_all) / rate(qemu_all)
    );
}
