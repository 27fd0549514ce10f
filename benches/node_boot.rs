//! A node's boot timeline as a machine: the image (Debian's cloud kernel, Baton's initramfs)
//! with a control-plane configuration under QEMU's software emulation (`-M pc -accel tcg`:
//! this host's KVM cannot boot Linux), from QEMU's start to init starting, to each service
//! ready, to the API server answering `/readyz` on the host, to the node registered Ready; the
//! init phases and init's own memory from the node API; and the shutdown. Reference in the same
//! run, same QEMU flags and kernel: a busybox initramfs whose /init powers off at once (the
//! kernel's own boot and power-off). Beside the direct kernel boots, one boot of the image's
//! UEFI system disk (qcow2 under an overlay) with Debian's OVMF, systemd-boot and the unified
//! kernel image, its configuration on a configuration disk and /var on the disk's
//! BATON-STATE partition (formatted in that boot).
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench node_boot` (as root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_image_builder::{EntryKind, Tree};
use baton_test_harness::qemu_machine::{AdminFiles, add_uefi_disks, user_network_control_plane};

const RUNS: usize = 2;
const SERVICES: &[&str] = &[
    "etcd",
    "apiserver",
    "scheduler",
    "controller-manager",
    "kubelet",
    "proxy",
    "dns",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a machine boots.
enum Boot<'a> {
    /// QEMU loads the kernel and the initramfs (with the configuration appended).
    Direct { kernel: &'a Path, initrd: &'a Path },
    /// OVMF boots the system disk (under a fresh overlay); the configuration is on a disk.
    Uefi {
        system_disk: &'a Path,
        config_disk: &'a Path,
    },
}

/// QEMU booting `boot` with a user network forwarding `forwards` (host port, guest port) from
/// 127.0.0.1; files it writes go in `work`, named by `index`.
fn qemu(boot: &Boot, work: &Path, index: usize, console: &Path, forwards: &[(u16, u16)]) -> Child {
    let mut netdev = "user,id=net0,restrict=on".to_string();
    for (host, guest) in forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    let mut command = Command::new("qemu-system-x86_64");
    match boot {
        Boot::Direct { kernel, initrd } => {
            command
                .arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", "console=ttyS0 panic=-1"]);
        }
        Boot::Uefi {
            system_disk,
            config_disk,
        } => {
            add_uefi_disks(
                &mut command,
                work,
                &format!("node-{index}"),
                system_disk,
                config_disk,
            );
        }
    }
    command
        .args(["-M", "pc", "-accel", "tcg", "-m", "2048", "-smp", "2"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
        ])
        .arg(format!("file:{}", console.display()))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64")
}

/// The console's text without terminal colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The kernel alone: a busybox /init that powers off at once.
fn reference_boot(work: &Path, kernel: &Path) -> Duration {
    let mut tree = Tree::default();
    tree.add(
        "bin/busybox",
        EntryKind::HostFile(PathBuf::from(baton_image_builder::DEFAULT_BUSYBOX)),
        0o755,
    );
    tree.add("bin/sh", EntryKind::Symlink("busybox".into()), 0o777);
    tree.add(
        "init",
        EntryKind::File(b"#!/bin/sh\n/bin/busybox poweroff -f\n".to_vec()),
        0o755,
    );
    let initrd = work.join("reference.cpio.gz");
    tree.write_initramfs(&initrd, 0).unwrap();
    let console = work.join("reference-console.log");
    let started = Instant::now();
    let boot = Boot::Direct {
        kernel,
        initrd: &initrd,
    };
    let mut child = qemu(&boot, work, usize::MAX, &console, &[]);
    let status = child.wait().unwrap();
    assert!(status.success(), "the reference guest did not power off");
    started.elapsed()
}

struct Run {
    init_started: Duration,
    services: Vec<(String, Duration)>,
    readyz: Duration,
    node_ready: Duration,
    shutdown: Duration,
    phases: String,
    init_memory: String,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn baton_run(work: &Path, boot: &Boot, creds: &AdminFiles, index: usize) -> Run {
    let api_port = free_port();
    let node_api_port = free_port();
    let console = work.join(format!("console-{index}.log"));
    let kubeconfig = creds.kubeconfig(work, api_port);
    let started = Instant::now();
    let mut guest = Killed(qemu(
        boot,
        work,
        index,
        &console,
        &[(api_port, 6443), (node_api_port, 50000)],
    ));
    // The console is watched on a thread of its own every 10 ms, so that the kubectl calls
    // below (each up to 2 s while the API server is not up) do not blur when a line came.
    let (stop_watching, stopped) = std::sync::mpsc::channel::<()>();
    let watched_console = console.clone();
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<(String, Duration)> = Vec::new();
        let markers: Vec<(String, String)> =
            std::iter::once(("init".to_string(), "baton init starting".to_string()))
                .chain(
                    SERVICES
                        .iter()
                        .map(|s| (s.to_string(), format!("service ready service={s} "))),
                )
                .collect();
        while stopped.try_recv().is_err() {
            let text = plain(&std::fs::read_to_string(&watched_console).unwrap_or_default());
            for (name, marker) in &markers {
                if text.contains(marker.as_str()) && !seen.iter().any(|(n, _)| n == name) {
                    seen.push((name.clone(), started.elapsed()));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    });
    let mut readyz = None;
    let node_ready;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the node did not come up:\n{}",
            plain(&std::fs::read_to_string(&console).unwrap_or_default())
        );
        if readyz.is_none() {
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "ok" {
                readyz = Some(started.elapsed());
            }
        } else {
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "get",
                    "node",
                    "control-plane-1",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "True" {
                node_ready = started.elapsed();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stop_watching.send(());
    let mut seen = watcher.join().unwrap();
    let init_started = seen
        .iter()
        .find(|(name, _)| name == "init")
        .map(|(_, at)| *at);
    seen.retain(|(name, _)| name != "init");
    let mut services = seen;
    let node = |verb: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["node", "--endpoint", &format!("127.0.0.1:{node_api_port}")])
            .args(["--ca", &creds.ca.display().to_string()])
            .args(["--cert", &creds.cert.display().to_string()])
            .args(["--key", &creds.key.display().to_string(), verb])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = node("status");
    let phases = status
        .lines()
        .skip_while(|l| !l.starts_with("PHASE"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let init_memory = status
        .lines()
        .find_map(|l| l.strip_prefix("Init memory:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let stop = Instant::now();
    node("shutdown");
    let status = guest.0.wait().unwrap();
    assert!(status.success());
    let shutdown = stop.elapsed();
    services.sort_by_key(|(_, at)| *at);
    Run {
        init_started: init_started.unwrap_or_default(),
        services,
        readyz: readyz.unwrap(),
        node_ready,
        shutdown,
        phases,
        init_memory,
    }
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let baton = env!("CARGO_BIN_EXE_baton");
    let image = work.join("image");
    let started = Instant::now();
    let built = Command::new(baton)
        .args(["image", "build", "--output"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let build_time = started.elapsed();

    let ca = baton_pki::ClusterCa::generate("bench").unwrap();
    let config = user_network_control_plane(&ca);
    let archive = work.join("config.cpio.gz");
    baton_image_builder::write_config_archive(&config.to_yaml(), &archive, 0).unwrap();
    let mut initrd = std::fs::read(image.join("initramfs.cpio.gz")).unwrap();
    initrd.extend(std::fs::read(&archive).unwrap());
    let initrd_path = work.join("initrd.cpio.gz");
    std::fs::write(&initrd_path, initrd).unwrap();
    let creds = AdminFiles::write(&ca, work);

    let mut uefi_config = config.clone();
    uefi_config.machine.data_disk = Some("/dev/disk/by-partlabel/BATON-STATE".into());
    let config_disk = work.join("config.img");
    baton_image_builder::write_config_disk(&uefi_config.to_yaml(), &config_disk, 0).unwrap();

    let reference = reference_boot(work, &image.join("vmlinuz"));
    let kernel = image.join("vmlinuz");
    let direct = Boot::Direct {
        kernel: &kernel,
        initrd: &initrd_path,
    };
    let mut runs: Vec<Run> = (0..RUNS)
        .map(|i| baton_run(work, &direct, &creds, i))
        .collect();
    let system_disk = image.join("disk.qcow2");
    runs.push(baton_run(
        work,
        &Boot::Uefi {
            system_disk: &system_disk,
            config_disk: &config_disk,
        },
        &creds,
        RUNS,
    ));

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("manifest.json")).unwrap())
            .unwrap();
    println!(
        "image: vmlinuz {} bytes (Linux {}), initramfs {} bytes, unified kernel image {} bytes, disk.qcow2 {} bytes, built in {}",
        manifest["artifacts"]["vmlinuz"]["size"],
        manifest["artifacts"]["vmlinuz"]["release"],
        manifest["artifacts"]["initramfs.cpio.gz"]["size"],
        manifest["artifacts"]["baton.efi"]["size"],
        manifest["artifacts"]["disk.qcow2"]["size"],
        secs(build_time)
    );
    println!(
        "reference: busybox /init powering off at once, QEMU start to exit: {}\n",
        secs(reference)
    );
    print!("| from QEMU's start to |");
    for i in 0..RUNS {
        print!(" direct boot, run {} |", i + 1);
    }
    print!(" UEFI: OVMF, systemd-boot, the unified kernel image |");
    println!("\n|---|{}", "---|".repeat(RUNS + 1));
    let row = |name: &str, value: &dyn Fn(&Run) -> String| {
        print!("| {name} |");
        for run in &runs {
            print!(" {} |", value(run));
        }
        println!();
    };
    row("init starts (kernel boot)", &|r| secs(r.init_started));
    for service in SERVICES {
        row(&format!("{service} ready"), &|r| {
            r.services
                .iter()
                .find(|(s, _)| s == service)
                .map_or("-".into(), |(_, at)| secs(*at))
        });
    }
    row("API server /readyz from the host", &|r| secs(r.readyz));
    row("node Ready (kubelet registered)", &|r| secs(r.node_ready));
    row("shutdown through the node API to QEMU's exit", &|r| {
        secs(r.shutdown)
    });
    row("init's memory (with the node API)", &|r| {
        r.init_memory.clone()
    });
    println!(
        "\ninit phases (node API status, run 1):\n{}",
        runs[0].phases
    );
    println!(
        "\ninit phases (node API status, UEFI boot):\n{}",
        runs[RUNS].phases
    );
}
