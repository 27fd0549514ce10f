//! The node image booted as a machine under QEMU (software emulation, `-M pc`: KVM here cannot
//! boot Linux), twice, one machine at a time:
//!
//! - **Direct kernel boot**: Debian's cloud kernel and Baton's initramfs. The control-plane
//!   machine configuration is served over HTTP by the test, as a provider's metadata endpoint
//!   (`baton.config=http://10.0.2.100/...`, which QEMU's `guestfwd` leads to a loopback port
//!   of the test's); the same configuration is also appended as an extra cpio archive
//!   (`baton image config-archive`), which the command line outranks. init runs as the
//!   machine's PID 1: it loads the image's kernel modules, mounts cgroup v2, gets a DHCP
//!   lease from QEMU, fetches its configuration, gives the lease back, configures the virtio
//!   NIC as the configuration says, and starts etcd, the API server and the rest. The test reaches
//!   the API server and the node API through QEMU's user network (forwarded to 127.0.0.1 only,
//!   and `restrict=on` so the guest reaches nothing else), runs a pod on the node, and shuts
//!   the machine down through the node API.
//! - **UEFI, the bare-metal path**: Debian's OVMF firmware boots the image's GPT system disk
//!   (as qcow2, under a copy-on-write overlay): systemd-boot on the EFI system partition starts
//!   slot A's unified kernel image; the machine configuration comes from a configuration disk
//!   (`baton image config-disk`), and /var is the disk's `BATON-STATE` partition, formatted on
//!   first boot.
//!
//! Two builds of the image (initramfs, unified kernel image, raw and qcow2 disks) are byte for
//! byte the same. QEMU is killed and every file removed, also when the test fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_test_harness::qemu_machine::{
    AdminFiles, GUEST_IP, add_uefi_disks, user_network_control_plane,
};

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

/// The sha256 of a file, hex, read in pieces.
fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
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
    for artifact in [
        "vmlinuz",
        "initramfs.cpio.gz",
        "baton.efi",
        "disk.raw",
        "disk.qcow2",
        "manifest.json",
    ] {
        assert_eq!(
            sha256_file(&image.join(artifact)),
            sha256_file(&again.join(artifact)),
            "{artifact} differs between two builds"
        );
    }
    std::fs::remove_dir_all(&again).unwrap();

    direct_kernel_boot(baton, dir.path(), &image);
    uefi_disk_boot(baton, dir.path(), &image);
}

/// `baton image TOOL` refuses `config` with an unknown role, naming the file and the field,
/// and writes nothing.
fn refuses_a_bad_configuration(
    baton: &str,
    tool: &str,
    dir: &Path,
    config: &baton_init::MachineConfig,
) {
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        config
            .to_yaml()
            .replace("role: control-plane", "role: boss"),
    )
    .unwrap();
    let output = dir.join("bad.out");
    let refused = run(Command::new(baton)
        .args(["image", tool, "--machine-config"])
        .arg(&bad)
        .arg("--output")
        .arg(&output));
    assert!(!refused.status.success(), "{tool} took a bad configuration");
    assert!(
        text(&refused.stderr).contains("bad.yaml") && text(&refused.stderr).contains("role"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!output.exists());
}

/// The machine's metadata endpoint: a loopback port that QEMU's `guestfwd` connects to
/// when it starts, carrying the guest's one connection. It answers the first request with
/// the configuration.
struct MetadataServer {
    address: SocketAddr,
    served: std::thread::JoinHandle<String>,
}

impl MetadataServer {
    fn start(yaml: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let served = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(&stream);
            let mut head = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut head).unwrap_or(0) > 2 {}
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{yaml}",
                yaml.len()
            );
            std::io::Write::write_all(&mut &stream, response.as_bytes()).unwrap();
            head
        });
        Self { address, served }
    }

    /// The request the guest made (the machine is up, so it made one).
    fn request(self) -> String {
        self.served.join().unwrap()
    }
}

/// A node port the test's Services use, forwarded from the host.
const GUEST_NODE_PORT: u16 = 30080;

/// A booted machine with the admin's ways in: kubectl through the forwarded API port, and the
/// node API.
struct Guest {
    machine: Machine,
    kubeconfig: PathBuf,
    endpoint: String,
    /// Forwarded to the guest's node port [`GUEST_NODE_PORT`].
    node_port: SocketAddr,
    admin: AdminFiles,
}

impl Guest {
    /// Starts `qemu` (a command line without its network and console) with the API server's
    /// and the node API's ports forwarded to free loopback ports, for a machine of `ca`.
    /// `netdev_options` are added to the user network's (`,guestfwd=...`).
    fn start(
        mut qemu: Command,
        ca: &baton_pki::ClusterCa,
        dir: &Path,
        netdev_options: &str,
    ) -> Guest {
        let api_port = free_loopback_port();
        let node_api_port = free_loopback_port();
        let node_port = free_loopback_port();
        let console = dir.join("console.log");
        let qemu_log = dir.join("qemu.log");
        let child = qemu
            .args(["-display", "none", "-serial"])
            .arg(format!("file:{}", console.display()))
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-:6443,hostfwd=tcp:127.0.0.1:{node_api_port}-:50000,hostfwd=tcp:127.0.0.1:{node_port}-:{GUEST_NODE_PORT}{netdev_options}"
            ))
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_log).unwrap())
            .spawn()
            .unwrap();
        let admin = AdminFiles::write(ca, dir);
        Guest {
            machine: Machine {
                qemu: Some(child),
                console,
                qemu_log,
            },
            kubeconfig: admin.kubeconfig(dir, api_port),
            endpoint: SocketAddr::from(([127, 0, 0, 1], node_api_port)).to_string(),
            node_port: SocketAddr::from(([127, 0, 0, 1], node_port)),
            admin,
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args))
    }

    fn node(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["node", "--endpoint", &self.endpoint, "--ca"])
            .arg(&self.admin.ca)
            .arg("--cert")
            .arg(&self.admin.cert)
            .arg("--key")
            .arg(&self.admin.key)
            .args(args))
    }

    /// Waits for `check`, failing with the console's last lines.
    fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        baton_test_harness::wait_until_blocking(what, timeout, || check().then_some(()))
            .unwrap_or_else(|err| panic!("{err}\nconsole:\n{}", self.machine.console()));
    }

    /// Waits for the API server's /readyz and the node's Ready condition.
    fn wait_ready(&self, node: &str, started: Instant, how: &str) {
        self.wait(
            "the API server to answer /readyz",
            Duration::from_secs(300),
            || {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                out.status.success() && text(&out.stdout) == "ok"
            },
        );
        let ready_after = started.elapsed();
        self.wait("the node to be Ready", Duration::from_secs(120), || {
            let out = self.kubectl(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            text(&out.stdout) == "True"
        });
        eprintln!(
            "{how}: API server ready {:.1}s after QEMU started (software emulation); node Ready after {:.1}s",
            ready_after.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }

    /// Shuts the machine down through the node API and waits for QEMU to end; the console.
    fn shut_down(mut self) -> String {
        let off = self.node(&["shutdown"]);
        assert!(off.status.success(), "{}", text(&off.stderr));
        let qemu = self.machine.qemu.as_mut().unwrap();
        let exited = baton_test_harness::wait_until_blocking(
            "QEMU to end when the guest powers off",
            Duration::from_secs(120),
            || qemu.try_wait().unwrap(),
        );
        let console = self.machine.console();
        let exited = exited.unwrap_or_else(|err| panic!("{err}\nconsole:\n{console}"));
        assert!(exited.success(), "QEMU: {exited}");
        self.machine.qemu = None;
        assert!(console.contains("reboot: Power down"), "{console}");
        assert!(
            console.contains("shutting down: stopping services"),
            "an ordered stop: {console}"
        );
        console
    }
}

/// Direct kernel boot of the kernel and the initramfs, the configuration from an HTTP
/// metadata endpoint (and appended as a cpio archive, which the endpoint outranks); a pod
/// runs; shutdown through the node API.
fn direct_kernel_boot(baton: &str, dir: &Path, image: &Path) {
    let dir = &dir.join("direct");
    std::fs::create_dir_all(dir).unwrap();
    // A control-plane configuration on QEMU's user network.
    let ca = baton_pki::ClusterCa::generate("qemu-test").unwrap();
    let config = user_network_control_plane(&ca);
    let config_file = dir.join("machine-config.yaml");
    std::fs::write(&config_file, config.to_yaml()).unwrap();
    let archive = dir.join("config.cpio.gz");
    let made = run(Command::new(baton)
        .args(["image", "config-archive", "--machine-config"])
        .arg(&config_file)
        .arg("--output")
        .arg(&archive));
    assert!(made.status.success(), "{}", text(&made.stderr));
    let mut initrd = std::fs::read(image.join("initramfs.cpio.gz")).unwrap();
    initrd.extend(std::fs::read(&archive).unwrap());
    let initrd_path = dir.join("initrd.cpio.gz");
    std::fs::write(&initrd_path, initrd).unwrap();

    // A bad configuration is refused by the archive tool, naming the file and the field.
    refuses_a_bad_configuration(baton, "config-archive", dir, &config);

    // Boot, the configuration from the metadata endpoint.
    let metadata = MetadataServer::start(config.to_yaml());
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M", "pc", "-accel", "tcg", "-m", "2048", "-smp", "2", "-kernel",
    ])
    .arg(image.join("vmlinuz"))
    .arg("-initrd")
    .arg(&initrd_path)
    .args([
        "-append",
        "console=ttyS0 panic=-1 baton.config=http://10.0.2.100/nodes/control-plane-1.yaml",
    ]);
    let guest = Guest::start(
        qemu,
        &ca,
        dir,
        &format!(",guestfwd=tcp:10.0.2.100:80-tcp:{}", metadata.address),
    );
    guest.wait_ready("control-plane-1", started, "direct kernel boot");
    let node = |args: &[&str]| guest.node(args);
    let kubectl = |args: &[&str]| guest.kubectl(args);
    let request = metadata.request();
    assert!(
        request.starts_with("GET /nodes/control-plane-1.yaml HTTP/1.1\r\n"),
        "{request}"
    );

    // The node API over mutual TLS: a machine, every module loaded, every service ready.
    let status = node(&["status"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status = text(&status.stdout);
    assert!(status.contains("Environment:  Machine"), "{status}");
    assert!(
        status.contains("Config:       http://10.0.2.100/nodes/control-plane-1.yaml"),
        "the command line's endpoint outranks the archive: {status}"
    );
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
        .arg(&guest.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(apply.stdin.as_mut().unwrap(), pod.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success());
    guest.wait("the pod to succeed", Duration::from_secs(180), || {
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
    guest.shut_down();
}

/// The UEFI path: OVMF boots the GPT system disk (qcow2, under an overlay), systemd-boot
/// starts slot A, the configuration comes from a configuration disk, and /var is the disk's
/// BATON-STATE partition.
fn uefi_disk_boot(baton: &str, dir: &Path, image: &Path) {
    let dir = &dir.join("uefi");
    std::fs::create_dir_all(dir).unwrap();
    // The system disk as a user inspects it: a GPT with the EFI system partition and the
    // state partition, and a FAT file system on the former with systemd-boot and both slots.
    let listed = run(Command::new("partx")
        .args(["--show", "--output", "NR,NAME"])
        .arg(image.join("disk.raw")));
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let names: Vec<String> = text(&listed.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(names, ["1 EFI", "2 BATON-STATE"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let esp = &manifest["artifacts"]["disk.raw"]["partitions"][0];
    let (offset, size) = (
        esp["offset"].as_u64().unwrap(),
        esp["size"].as_u64().unwrap(),
    );
    let esp_file = dir.join("esp.img");
    {
        use std::io::{Read, Seek};
        let mut disk = std::fs::File::open(image.join("disk.raw")).unwrap();
        disk.seek(std::io::SeekFrom::Start(offset)).unwrap();
        let mut out = std::fs::File::create(&esp_file).unwrap();
        std::io::copy(&mut disk.take(size), &mut out).unwrap();
    }
    let checked = run(Command::new("fsck.fat").args(["-n", "-l"]).arg(&esp_file));
    assert!(
        checked.status.success(),
        "fsck.fat: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    let listing = text(&checked.stdout);
    for file in [
        "/EFI/BOOT/BOOTX64.EFI",
        "/EFI/Linux/baton-a.efi",
        "/EFI/Linux/baton-b.efi",
        "/loader/loader.conf",
    ] {
        assert!(
            listing.to_lowercase().contains(&file.to_lowercase()),
            "{file} on the EFI system partition: {listing}"
        );
    }
    std::fs::remove_file(&esp_file).unwrap();

    // The node writes to an overlay: the built disk stays as it was.
    let built_disk = sha256_file(&image.join("disk.qcow2"));

    // The configuration on a configuration disk, with /var on the state partition.
    let ca = baton_pki::ClusterCa::generate("uefi-test").unwrap();
    let mut config = user_network_control_plane(&ca);
    config.machine.data_disk = Some("/dev/disk/by-partlabel/BATON-STATE".into());
    // This machine's kernel has IPVS (the host's has not): the proxy runs in its ipvs mode.
    config.machine.proxy.mode = "ipvs".into();
    let config_file = dir.join("machine-config.yaml");
    std::fs::write(&config_file, config.to_yaml()).unwrap();
    let config_disk = dir.join("config.img");
    let made = run(Command::new(baton)
        .args(["image", "config-disk", "--machine-config"])
        .arg(&config_file)
        .arg("--output")
        .arg(&config_disk));
    assert!(made.status.success(), "{}", text(&made.stderr));
    // An invalid configuration is refused by name, and no disk is written.
    refuses_a_bad_configuration(baton, "config-disk", dir, &config);

    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "pc", "-accel", "tcg", "-m", "2048", "-smp", "2"]);
    add_uefi_disks(
        &mut qemu,
        dir,
        "node",
        &image.join("disk.qcow2"),
        &config_disk,
    );
    let guest = Guest::start(qemu, &ca, dir, "");
    guest.wait_ready("control-plane-1", started, "UEFI boot from the disk image");

    // Booted from the unified kernel image: its command line, not one QEMU passed.
    let status = guest.node(&["status"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status = text(&status.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.contains("/var") && l.contains("/dev/vda2")),
        "/var on the state partition: {status}"
    );
    let console = guest.machine.console();
    assert!(
        console.contains("partition BATON-CONFIG (/dev/vdb1)"),
        "the configuration from the configuration disk: {console}"
    );
    let dmesg = text(&guest.node(&["dmesg"]).stdout);
    assert!(
        dmesg.contains("Command line: console=tty0 console=ttyS0 panic=-1"),
        "{dmesg}"
    );
    assert!(dmesg.contains("efi: EFI v"), "booted through UEFI: {dmesg}");

    // The proxy's ipvs mode serves a ClusterIP: busybox httpd behind a Service, reached from
    // another pod and from itself (hairpin, masqueraded).
    ipvs_cluster_ip(&guest);
    guest.shut_down();
    // The overlay took the node's writes; the built disk is as it was.
    assert_eq!(
        sha256_file(&image.join("disk.qcow2")),
        built_disk,
        "the built disk changed"
    );
}

/// The answer to `GET /` at `address` (empty on any failure).
fn http_get(address: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
    else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A NodePort Service in front of a busybox httpd pod, reached through its ClusterIP by
/// another pod and by the server itself, and through its node port from the host, with the
/// proxy in its ipvs mode.
fn ipvs_cluster_ip(guest: &Guest) {
    let apply = |yaml: &str| {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&guest.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "kubectl apply: {yaml}");
    };
    apply(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default","labels":{"app":"web"}},
         "spec":{"tolerations":[{"operator":"Exists"}],
          "containers":[{"name":"httpd","image":"docker.io/library/busybox:1.35","imagePullPolicy":"Never",
           "command":["sh","-c","mkdir -p /www && echo hello through ipvs > /www/index.html && exec httpd -f -p 8080 -h /www"],
           "ports":[{"containerPort":8080}]}]}}"#,
    );
    apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"web","namespace":"default"}},
            "spec":{{"type":"NodePort","selector":{{"app":"web"}},
            "ports":[{{"port":80,"targetPort":8080,"nodePort":{GUEST_NODE_PORT}}}]}}}}"#
    ));
    guest.wait("the web pod to run", Duration::from_secs(180), || {
        text(
            &guest
                .kubectl(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"])
                .stdout,
        ) == "Running"
    });
    let cluster_ip = text(
        &guest
            .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
            .stdout,
    );
    assert!(!cluster_ip.is_empty());
    // busybox nc with a plain HTTP/1.0 request (busybox's static wget crashes with a
    // segmentation fault in this guest, though not on the host; not investigated yet).
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {cluster_ip} 80");
    let fetch = format!(
        "for i in $(seq 1 60); do {request} | grep '^hello' && exit 0; sleep 1; done; exit 1"
    );
    apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"client","namespace":"default"}},
        "spec":{{"restartPolicy":"Never","tolerations":[{{"operator":"Exists"}}],
        "containers":[{{"name":"main","image":"docker.io/library/busybox:1.35","imagePullPolicy":"Never",
        "command":["sh","-c",{}]}}]}}}}"#,
        serde_json::to_string(&fetch).unwrap()
    ));
    guest.wait("the client pod to finish", Duration::from_secs(180), || {
        let phase = text(
            &guest
                .kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
                .stdout,
        );
        phase == "Succeeded" || phase == "Failed"
    });
    let logs = guest.kubectl(&["logs", "client"]);
    let proxy_logs = text(&guest.node(&["logs", "proxy"]).stdout);
    assert_eq!(
        text(&logs.stdout),
        "hello through ipvs\n",
        "{}\nproxy:\n{proxy_logs}",
        text(&logs.stderr)
    );
    // The node port from outside the node (QEMU's user network: the source is its gateway,
    // outside the pod range), so the connection is marked and masqueraded after IPVS chose
    // the endpoint.
    let mut answer = String::new();
    guest.wait(
        "the node port to answer from the host",
        Duration::from_secs(60),
        || {
            answer = http_get(guest.node_port);
            answer.contains("hello through ipvs")
        },
    );
    // Hairpin: the server reaches itself through its Service.
    let hairpin = guest.kubectl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        &format!("{request} | grep '^hello'"),
    ]);
    assert_eq!(
        text(&hairpin.stdout),
        "hello through ipvs\n",
        "{}\nproxy:\n{proxy_logs}",
        text(&hairpin.stderr)
    );
}
