//! `baton cluster create` with a VM per node, end to end: a control plane and a worker, each
//! the node image booted as a machine with a virtio NIC on a tap device plugged into the
//! cluster's bridge, by QEMU (`--provider qemu`: software emulation here, this host's KVM
//! cannot boot Linux) or by Baton's own VMM (`--provider microvm`, which needs KVM that can).
//! It checks what a user checks: both nodes Ready; a web pod and a client pod on the worker,
//! the web pod reached through its Service by DNS name; /var on each node's data disk; a worker
//! rebooted through the node API comes back Ready and runs its pods again; `cluster stop` shuts
//! the nodes down in order and `cluster start` boots them again from their data disks (each
//! formatted only at its first boot, each later boot seeding its random pool from the seed the
//! boot before saved there) with the pods serving again; and `cluster destroy` leaves
//! no VM, namespace or file behind. Where KVM cannot boot Linux, the microvm run checks that `create` refuses
//! before making anything, naming why, and reports the boot as skipped with that reason.

use baton_test_harness::LocalCluster;
use std::time::{Duration, Instant};

struct VmCluster(LocalCluster);

impl std::ops::Deref for VmCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl std::ops::DerefMut for VmCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.0
    }
}

impl VmCluster {
    fn consoles(&self) -> String {
        self.console_tails(&["control-plane-1", "worker-1"], 30)
    }

    fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        baton_test_harness::wait_until_blocking(what, timeout, || check().then_some(()))
            .unwrap_or_else(|err| panic!("{err}{}", self.consoles()));
    }

    fn node_ready(&self, node: &str) -> bool {
        let out = self.kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        String::from_utf8_lossy(&out.stdout) == "True"
    }

    fn web_page(&self) -> Option<String> {
        let out = self.kubectl(&[
            "exec",
            "client",
            "--",
            "timeout",
            "5",
            "wget",
            "-q",
            "-O-",
            "http://web.default.svc.cluster.local/",
        ]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && page.starts_with("hello from web")).then_some(page)
    }
}

#[test]
fn a_qemu_cluster_boots_serves_reboots_a_worker_and_is_destroyed() {
    vm_cluster_boots_serves_reboots_a_worker_and_is_destroyed("qemu", "8m");
}

#[test]
fn a_microvm_cluster_boots_serves_reboots_a_worker_and_is_destroyed() {
    let kvm = baton_vmm::check();
    if kvm.linux_usable {
        vm_cluster_boots_serves_reboots_a_worker_and_is_destroyed("microvm", "3m");
        return;
    }
    // Refused before anything is made, naming why.
    let name = format!("mvm-{}", std::process::id());
    let mut cluster = VmCluster(LocalCluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_baton")),
        &name,
    ));
    let out = cluster.create("microvm", &["--workers", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "--provider microvm: KVM cannot boot Linux guests here ({}); use --provider qemu or --provider process",
            kvm.reason
        )),
        "{stderr}"
    );
    assert!(!cluster.home.path().join("clusters").join(&name).exists());
    assert!(!std::path::Path::new(&format!("/run/netns/baton-{name}")).exists());
    cluster.destroyed = true;
    eprintln!(
        "skipped: booting a microvm cluster needs KVM that can boot Linux guests, and here: {}",
        kvm.reason
    );
}

/// The scenario of the module documentation, on `provider`, waiting up to `wait` for the
/// cluster.
fn vm_cluster_boots_serves_reboots_a_worker_and_is_destroyed(provider: &str, wait: &str) {
    let name = format!("{provider}-{}", std::process::id());
    let mut cluster = VmCluster(LocalCluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_baton")),
        &name,
    ));
    let started = Instant::now();
    let out = cluster.create(provider, &["--workers", "1", "--wait", wait]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cluster create failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("Booting 2 nodes ({provider} provider)")),
        "{stderr}"
    );
    println!(
        "{provider} cluster (1+1) Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let status =
        String::from_utf8_lossy(&cluster.baton(&["cluster", "status", &name]).stdout).into_owned();
    assert!(status.contains(provider), "{status}");
    assert_eq!(status.matches("running").count(), 2, "{status}");
    assert!(cluster.node_ready("control-plane-1") && cluster.node_ready("worker-1"));

    // A web pod and a client on the worker; the client reaches the web pod by its Service's
    // DNS name (cluster DNS and the proxy's rules inside the VM).
    for args in [
        vec![
            "run",
            "web",
            "--image=busybox:1.35",
            "--labels=app=web",
            "--",
            "sh",
            "-c",
            "mkdir /www && echo hello from web > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
        vec!["expose", "pod", "web", "--port=80"],
        vec![
            "run",
            "client",
            "--image=busybox:1.35",
            "--",
            "sleep",
            "3600",
        ],
    ] {
        let out = cluster.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.wait(
        "the web page through the Service",
        Duration::from_secs(240),
        || cluster.web_page().is_some(),
    );
    let node = cluster.kubectl(&["get", "pod", "client", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(String::from_utf8_lossy(&node.stdout), "worker-1");

    // Each node keeps its /var on its data disk, formatted at its first boot.
    let status = cluster.baton(&["node", "--cluster", &name, "--node", "worker-1", "status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status_text
            .lines()
            .any(|l| l.starts_with("/var ") && l.contains("/dev/vda")),
        "{status_text}{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // A reboot through the node API: QEMU resets the guest (the microvm node's monitor starts
    // its VMM again), which boots again from the image and its data disk, registers, and runs
    // its pods again.
    let out = cluster.baton(&["node", "--cluster", &name, "--node", "worker-1", "reboot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = cluster.node_dir("worker-1").join("console.log");
    cluster.wait(
        "worker-1's init to start a second time",
        Duration::from_secs(180),
        || {
            std::fs::read_to_string(&console)
                .unwrap_or_default()
                .matches("baton init starting")
                .count()
                == 2
        },
    );
    cluster.wait(
        "the web page again after the reboot",
        Duration::from_secs(300),
        || cluster.node_ready("worker-1") && cluster.web_page().is_some(),
    );

    // Stop and start: each node shuts down in order through its node API and powers off; the
    // cluster boots again from its data disks with its objects, and the pods serve again.
    let out = cluster.baton(&["cluster", "stop", &name]);
    assert!(
        out.status.success(),
        "cluster stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in ["control-plane-1", "worker-1"] {
        let console =
            std::fs::read_to_string(cluster.node_dir(node).join("console.log")).unwrap_or_default();
        assert!(
            console.contains("shutting down: stopping services action=PowerOff")
                && console.contains("reboot: Power down"),
            "{node} shut down in order through its node API:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.consoles()
        );
    }
    let status =
        String::from_utf8_lossy(&cluster.baton(&["cluster", "status", &name]).stdout).into_owned();
    assert_eq!(status.matches("running").count(), 0, "{status}");
    let started = Instant::now();
    let out = cluster.baton(&["cluster", "start", &name, "--wait", wait]);
    assert!(
        out.status.success(),
        "cluster start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.consoles()
    );
    println!(
        "{provider} cluster (1+1) started again in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    cluster.wait(
        "the web page after the cluster started again",
        Duration::from_secs(300),
        || cluster.node_ready("worker-1") && cluster.web_page().is_some(),
    );
    for node in ["control-plane-1", "worker-1"] {
        let console =
            std::fs::read_to_string(cluster.node_dir(node).join("console.log")).unwrap_or_default();
        assert_eq!(
            console.matches("formatted the data disk").count(),
            1,
            "{node}'s disk is formatted once, at its first boot, of 3:\n{console}"
        );
        let boots = if node == "worker-1" { 3 } else { 2 };
        assert_eq!(console.matches("baton init starting").count(), boots);
        // Every boot after the first seeds the random pool from the seed the one before saved
        // on the data disk.
        assert_eq!(
            console
                .matches("mixed the random seed saved by the last boot")
                .count(),
            boots - 1,
            "{node}:\n{console}"
        );
    }

    let state = cluster.state();
    cluster.destroy();
    // No process (QEMU, or a VMM and its monitor) still names a node's console.
    for node in state["nodes"].as_array().unwrap() {
        let console = node["console"].as_str().unwrap();
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(console))
            })
            .map(|p| p.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "processes of {console} left: {left:?}");
    }
    assert!(!std::path::Path::new(state["netns"].as_str().unwrap()).exists());
    assert!(
        !cluster
            .home
            .path()
            .join(format!("clusters/{name}"))
            .exists()
    );
}
