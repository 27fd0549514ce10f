//! The node image booted as a machine: Debian's cloud kernel and Baton's initramfs under QEMU
//! (software emulation, `-M pc`: KVM here cannot boot Linux), with a control-plane machine
//! configuration appended as an extra cpio archive (`baton image config-archive`). init runs as
//! the machine's PID 1: it loads the image's kernel modules, mounts cgroup v2, configures the
//! virtio NIC, and starts etcd, the API server and the rest. The test reaches the API server
//! and the node API through QEMU's user network (forwarded to 127.0.0.1 only, and `restrict=on`
//! so the guest reaches nothing else), runs a pod on the node, and shuts the machine down
//! through the node API. Two builds of the image are byte for byte the same. QEMU is killed and
//! every file removed, also when the test fails.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_test_harness::qemu_machine::{AdminFiles, GUEST_IP, user_network_control_plane};

/// The machine, killed on drop.
struct Machine {
    qemu: Option<Child>,
    console: PathBuf,
    qemu_log: PathBuf,
}

impl Machine {
    /// The last lines of the serial console, and what QEMU itself printed.
    fn console(&self) -> String {
        let console = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        format!(
            "{}\nQEMU: {}",
            lines[lines.len().saturating_sub(80)..].join("\n"),
            std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
    }
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_image_boots_a_control_plane_machine_under_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let baton = env!("CARGO_BIN_EXE_baton");
    let image = dir.path().join("image");
    let built = run(Command::new(baton)
        .args(["image", "build", "--output"])
        .arg(&image));
    assert!(built.status.success(), "{}", text(&built.stderr));
    // Reproducible: a second build from the same inputs is byte for byte the same.
    let again = dir.path().join("image-again");
    let rebuilt = run(Command::new(baton)
        .args(["image", "build", "--output"])
        .arg(&again));
    assert!(rebuilt.status.success(), "{}", text(&rebuilt.stderr));
    for artifact in ["vmlinuz", "initramfs.cpio.gz", "manifest.json"] {
        assert!(
            std::fs::read(image.join(artifact)).unwrap()
                == std::fs::read(again.join(artifact)).unwrap(),
            "{artifact} differs between two builds"
        );
    }
    std::fs::remove_dir_all(&again).unwrap();

    // A control-plane configuration on QEMU's user network.
    let ca = baton_pki::ClusterCa::generate("qemu-test").unwrap();
    let config = user_network_control_plane(&ca);
    let config_file = dir.path().join("machine-config.yaml");
    std::fs::write(&config_file, config.to_yaml()).unwrap();
    let archive = dir.path().join("config.cpio.gz");
    let made = run(Command::new(baton)
        .args(["image", "config-archive", "--machine-config"])
        .arg(&config_file)
        .arg("--output")
        .arg(&archive));
    assert!(made.status.success(), "{}", text(&made.stderr));
    let mut initrd = std::fs::read(image.join("initramfs.cpio.gz")).unwrap();
    initrd.extend(std::fs::read(&archive).unwrap());
    let initrd_path = dir.path().join("initrd.cpio.gz");
    std::fs::write(&initrd_path, initrd).unwrap();

    // A bad configuration is refused by the archive tool, naming the file and the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config
            .to_yaml()
            .replace("role: control-plane", "role: boss"),
    )
    .unwrap();
    let refused = run(Command::new(baton)
        .args(["image", "config-archive", "--machine-config"])
        .arg(&bad)
        .arg("--output")
        .arg(dir.path().join("bad.cpio.gz")));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("bad.yaml") && text(&refused.stderr).contains("role"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!dir.path().join("bad.cpio.gz").exists());

    // Boot.
    let api_port = free_loopback_port();
    let node_api_port = free_loopback_port();
    let console = dir.path().join("console.log");
    let qemu_log = dir.path().join("qemu.log");
    let started = Instant::now();
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "pc", "-accel", "tcg", "-m", "2048", "-smp", "2"])
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", console.display()))
        .args(["-monitor", "none", "-no-reboot", "-kernel"])
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd_path)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-netdev")
        .arg(format!(
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-:6443,hostfwd=tcp:127.0.0.1:{node_api_port}-:50000"
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&qemu_log).unwrap())
        .spawn()
        .unwrap();
    let mut machine = Machine {
        qemu: Some(qemu),
        console,
        qemu_log,
    };

    // The admin's credentials, for kubectl and the node API.
    let admin = AdminFiles::write(&ca, dir.path());
    let kubeconfig = admin.kubeconfig(dir.path(), api_port);
    let (ca_file, cert_file, key_file) = (
        admin.ca.display().to_string(),
        admin.cert.display().to_string(),
        admin.key.display().to_string(),
    );
    let kubectl = |args: &[&str]| {
        run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args))
    };
    let endpoint = SocketAddr::from(([127, 0, 0, 1], node_api_port)).to_string();
    let node = |args: &[&str]| {
        run(Command::new(baton)
            .args(["node", "--endpoint", &endpoint, "--ca", &ca_file])
            .args(["--cert", &cert_file, "--key", &key_file])
            .args(args))
    };
    let wait = |what: &str, timeout: Duration, check: &mut dyn FnMut() -> bool| {
        baton_test_harness::wait_until_blocking(what, timeout, || check().then_some(()))
            .unwrap_or_else(|err| panic!("{err}\nconsole:\n{}", machine.console()));
    };

    wait(
        "the API server to answer /readyz",
        Duration::from_secs(240),
        &mut || {
            let out = kubectl(&["get", "--raw", "/readyz"]);
            out.status.success() && text(&out.stdout) == "ok"
        },
    );
    let ready_after = started.elapsed();
    wait(
        "the node to be Ready",
        Duration::from_secs(120),
        &mut || {
            let out = kubectl(&[
                "get",
                "node",
                "control-plane-1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            text(&out.stdout) == "True"
        },
    );
    eprintln!(
        "API server ready {:.1}s after QEMU started (software emulation); node Ready after {:.1}s",
        ready_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // The node API over mutual TLS: a machine, every module loaded, every service ready.
    let status = node(&["status"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status = text(&status.stdout);
    assert!(status.contains("Environment:  Machine"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("modules") && l.contains("Done")),
        "{status}"
    );
    assert!(
        status.contains(&format!("eth0        {GUEST_IP}/24")),
        "{status}"
    );
    let services = text(&node(&["services"]).stdout);
    baton_test_harness::services_running_and_ready(
        &services,
        baton_test_harness::CONTROL_PLANE_SERVICES,
    )
    .unwrap();
    let dmesg = node(&["dmesg"]);
    assert!(
        text(&dmesg.stdout).contains("Linux version 6."),
        "{}",
        text(&dmesg.stderr)
    );
    // The proxy's nftables rules load on this kernel.
    let proxy_logs = text(&node(&["logs", "proxy"]).stdout);
    assert!(
        !proxy_logs.contains("retrying with a full sync"),
        "{proxy_logs}"
    );

    // A pod runs on the machine: overlayfs, cgroup v2, the pod network, all from the image.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hello","namespace":"default"},
        "spec":{"restartPolicy":"Never","tolerations":[{"operator":"Exists"}],
        "containers":[{"name":"main","image":"docker.io/library/busybox:1.35","imagePullPolicy":"Never",
        "command":["sh","-c","echo hello from $(hostname)"]}]}}"#;
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(apply.stdin.as_mut().unwrap(), pod.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success());
    wait("the pod to succeed", Duration::from_secs(180), &mut || {
        text(&kubectl(&["get", "pod", "hello", "-o", "jsonpath={.status.phase}"]).stdout)
            == "Succeeded"
    });
    let logs = kubectl(&["logs", "hello"]);
    assert_eq!(
        text(&logs.stdout),
        "hello from hello\n",
        "{}",
        text(&logs.stderr)
    );

    // Shutdown through the node API: services stop in order and the machine powers off.
    let off = node(&["shutdown"]);
    assert!(off.status.success(), "{}", text(&off.stderr));
    let qemu = machine.qemu.as_mut().unwrap();
    let exited = baton_test_harness::wait_until_blocking(
        "QEMU to end when the guest powers off",
        Duration::from_secs(120),
        || qemu.try_wait().unwrap(),
    );
    let console = machine.console();
    let exited = exited.unwrap_or_else(|err| panic!("{err}\nconsole:\n{console}"));
    assert!(exited.success(), "QEMU: {exited}");
    machine.qemu = None;
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(
        console.contains("shutting down: stopping services"),
        "an ordered stop: {console}"
    );
}
