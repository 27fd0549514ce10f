//! `baton cluster create` with the process provider, 1 control plane + 2 workers, on this
//! machine: time to every node Ready (and DNS answering), to a first pod Running, to stopped
//! and started again (`cluster stop`, `cluster start` to every node Ready and DNS answering),
//! to destroyed; the host memory (PSS) of Baton's own processes per node; and the image's size.
//! References in the same run: etcd alone from start to `/health` (the floor of a
//! control-plane boot), and the published figures of kind and k3s.
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench cluster` (as root).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{memory_mib, pss_mib, rss_split_mib};

const RUNS: usize = 3;

fn baton(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_HOME", home)
        .output()
        .expect("run baton")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The processes in a node's own memory cgroup (init and its services, not the pods, which
/// live in the kubepods cgroups below it).
fn node_pids(cgroups: &[PathBuf]) -> Vec<u32> {
    let Some(memory) = cgroups
        .iter()
        .find(|c| c.components().any(|p| p.as_os_str() == "memory"))
        .or_else(|| cgroups.iter().find(|c| c.join("memory.current").exists()))
    else {
        return Vec::new();
    };
    [memory.clone(), memory.join("init")]
        .iter()
        .flat_map(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|pid| pid.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// One process's memory, MiB.
struct ProcessMemory {
    /// Its name (comm).
    name: String,
    rss: f64,
    anonymous: f64,
    /// The file pages it maps: the binary's, shared with the other processes running it.
    file: f64,
    /// Its share of the pages it shares with others.
    pss: f64,
}

/// Each of a node's own processes.
fn node_processes(cgroups: &[PathBuf]) -> Vec<ProcessMemory> {
    let mut processes: Vec<ProcessMemory> = node_pids(cgroups)
        .into_iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let (rss, _) = memory_mib(pid);
            let (anonymous, file) = rss_split_mib(pid);
            ProcessMemory {
                name: name.trim().to_string(),
                rss,
                anonymous,
                file,
                pss: pss_mib(pid),
            }
        })
        .collect();
    processes.sort_by(|a, b| a.name.cmp(&b.name));
    processes
}

fn etcd_to_health() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let peer = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let started = Instant::now();
    let mut etcd = Command::new("etcd")
        .arg(format!("--data-dir={}", dir.path().display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg("--log-level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let took = loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(stream, "GET /health HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.contains("\"health\":\"true\"") {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = etcd.kill();
    let _ = etcd.wait();
    took
}

/// Destroys the cluster when a run fails half-way (an assertion), so nothing is left behind.
struct DestroyOnDrop<'a> {
    home: &'a Path,
    name: String,
    destroyed: bool,
}

impl Drop for DestroyOnDrop<'_> {
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = baton(self.home, &["cluster", "destroy", &self.name]);
        }
    }
}

struct Run {
    ready: Duration,
    first_pod: Duration,
    destroy: Duration,
    stop: Duration,
    start: Duration,
    total: Duration,
    control_plane_mib: f64,
    worker_mib: f64,
    /// The processes of the control plane and of one worker, as [`node_processes`] reads them.
    processes: Vec<(&'static str, Vec<ProcessMemory>)>,
}

fn one_run(work: &Path, image: &Path, index: usize) -> Run {
    let name = format!("bench-{}-{index}", std::process::id());
    let home = work.join(format!("home-{index}"));
    let kubeconfig = work.join(format!("kubeconfig-{index}"));
    let mut guard = DestroyOnDrop {
        home: &home,
        name: name.clone(),
        destroyed: false,
    };
    let started = Instant::now();
    let out = baton(
        &home,
        &[
            "cluster",
            "create",
            "--provider",
            "process",
            "--name",
            &name,
            "--image",
            &image.display().to_string(),
            "--kubeconfig",
            &kubeconfig.display().to_string(),
        ],
    );
    let ready = started.elapsed();
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(
        &kubeconfig,
        &[
            "run",
            "first",
            "--image=busybox:1.35",
            "--restart=Never",
            "--",
            "sleep",
            "3600",
        ],
    );
    loop {
        let phase = kubectl(
            &kubeconfig,
            &["get", "pod", "first", "-o", "jsonpath={.status.phase}"],
        );
        if phase == "Running" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the first pod did not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_pod = started.elapsed();
    // Let the components settle before memory is read.
    std::thread::sleep(Duration::from_secs(5));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.join(format!("clusters/{name}/cluster.json"))).unwrap(),
    )
    .unwrap();
    let mut workers = Vec::new();
    let mut control_plane_mib = 0.0;
    let mut processes = Vec::new();
    for node in state["nodes"].as_array().unwrap() {
        let cgroups: Vec<PathBuf> = node["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| PathBuf::from(c.as_str().unwrap()))
            .collect();
        let node_processes = node_processes(&cgroups);
        let mib = node_processes.iter().map(|p| p.pss).sum();
        if node["role"] == "worker" {
            if workers.is_empty() {
                processes.push(("worker", node_processes));
            }
            workers.push(mib);
        } else {
            processes.push(("control plane", node_processes));
            control_plane_mib = mib;
        }
    }
    // Stopped and started again (what a host restart asks of it), timed apart from the rest.
    let stop_started = Instant::now();
    let out = baton(&home, &["cluster", "stop", &name]);
    assert!(
        out.status.success(),
        "cluster stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stop = stop_started.elapsed();
    let start_started = Instant::now();
    let out = baton(&home, &["cluster", "start", &name]);
    assert!(
        out.status.success(),
        "cluster start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = start_started.elapsed();
    let destroy_started = Instant::now();
    let out = baton(&home, &["cluster", "destroy", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard.destroyed = true;
    Run {
        ready,
        first_pod,
        destroy: destroy_started.elapsed(),
        stop,
        start,
        total: started.elapsed() - stop - start,
        control_plane_mib,
        worker_mib: workers.iter().sum::<f64>() / workers.len().max(1) as f64,
        processes,
    }
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the process provider needs root"
    );
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "image",
            "build",
            "--no-uefi",
            "--output",
            &image.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let build = started.elapsed();
    let initramfs = std::fs::metadata(image.join("initramfs.cpio.gz"))
        .unwrap()
        .len();
    println!(
        "image build: {:.1} s, initramfs {:.1} MiB (goal < 40 MiB)",
        build.as_secs_f64(),
        initramfs as f64 / (1 << 20) as f64
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let etcd = etcd_to_health();
    let runs: Vec<Run> = (0..RUNS).map(|i| one_run(work.path(), &image, i)).collect();
    println!();
    println!(
        "| run | create to all Ready + DNS | to first pod Running | stop | start to all Ready + DNS | destroy | create to destroyed (without stop and start) | control plane PSS | worker PSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, run) in runs.iter().enumerate() {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.0} MiB | {:.0} MiB |",
            i + 1,
            run.ready.as_secs_f64(),
            run.first_pod.as_secs_f64(),
            run.stop.as_secs_f64(),
            run.start.as_secs_f64(),
            run.destroy.as_secs_f64(),
            run.total.as_secs_f64(),
            run.control_plane_mib,
            run.worker_mib
        );
    }
    println!();
    println!("Processes of the nodes in the last run (MiB):");
    println!();
    println!("| node | process | RSS | anonymous | file (the binary's pages) |");
    println!("|---|---|---|---|---|");
    for (node, processes) in &runs.last().expect("runs").processes {
        for p in processes {
            println!(
                "| {node} | {} | {:.1} | {:.1} | {:.1} |",
                p.name, p.rss, p.anonymous, p.file
            );
        }
    }
    println!();
    println!("| reference | figure |");
    println!("|---|---|");
    println!(
        "| etcd alone, start to /health (this run) | {:.2} s |",
        etcd.as_secs_f64()
    );
    println!("| kind, single-node cluster create (kind issues 2893, 585) | 15 to 30 s |");
    println!("| k3s, all default pods Ready (k3s issue 4340) | about 50 s |");
}
