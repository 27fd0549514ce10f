//! One node of the `process` provider run by hand (`baton sandbox run`) with an invalid machine
//! configuration: init, as PID 1 of the sandbox, lands in maintenance mode, names every bad
//! field on the console, applies nothing (no service starts), and still powers off in order on
//! SIGTERM. Everything the test made is removed, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_network::NetNs;

/// What the test made, removed on drop.
struct Made {
    monitor: Option<Child>,
    netns: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Drop for Made {
    fn drop(&mut self) {
        if let Some(mut monitor) = self.monitor.take() {
            let _ = monitor.kill();
            let _ = monitor.wait();
        }
        let _ = baton_sandbox::kill_and_remove_cgroups(&self.cgroups, Duration::from_secs(10));
        for dir in &self.cgroups {
            for parent in dir.ancestors().skip(1).take(2) {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let _ = NetNs::unpin(&self.netns);
    }
}

/// Polls `check` until it holds; fails the test after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    baton_test_harness::wait_until_blocking(what, timeout, || check().then_some(())).unwrap();
}

const INVALID: &str = r#"
apiVersion: baton.dev/v1alpha1
kind: MachineConfig
machine:
  role: worker
  hostname: Bad_Name
  network:
    interfaces:
    - name: eth0
      addresses: [10.252.0.11/24]
      routes:
      - {to: 0.0.0.0/0, via: 192.0.2.1}
cluster:
  name: test
  endpoint: https://10.252.0.10:6443
  ca:
    cert: "not a certificate"
"#;

#[test]
fn an_invalid_configuration_leaves_a_node_in_maintenance_and_it_still_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let baton = env!("CARGO_BIN_EXE_baton");
    let image = dir.path().join("image");
    let built = Command::new(baton)
        .args(["image", "build", "--output", &image.display().to_string()])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let root = dir.path().join("image-root");
    std::fs::create_dir(&root).unwrap();
    baton_image_builder::unpack_initramfs(&image.join("initramfs.cpio.gz"), &root).unwrap();

    let name = format!("sandbox-test-{}", std::process::id());
    let cgroup = format!("baton/{name}/node");
    let mut made = Made {
        monitor: None,
        netns: PathBuf::from(format!("/run/netns/baton-{name}")),
        cgroups: baton_sandbox::NodeCgroups::for_this_process(&cgroup)
            .unwrap()
            .dirs,
    };
    NetNs::create_pinned(&made.netns).unwrap();
    let config = dir.path().join("machine-config.yaml");
    std::fs::write(&config, INVALID).unwrap();
    let console = dir.path().join("console.log");
    let log = std::fs::File::create(&console).unwrap();
    let monitor = Command::new(baton)
        .args(["sandbox", "run", "--image-root"])
        .arg(&root)
        .arg("--node-dir")
        .arg(dir.path().join("node"))
        .arg("--netns")
        .arg(&made.netns)
        .args(["--cgroup", &cgroup, "--machine-config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    made.monitor = Some(monitor);

    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    wait_for("maintenance mode", Duration::from_secs(30), || {
        read().contains("maintenance: machine.hostname")
    });
    let text = read();
    for field in [
        "machine.hostname",
        "machine.network.interfaces[0].routes[0].via",
        "cluster.ca.cert",
        "machine.identity",
    ] {
        assert!(
            text.contains(&format!("maintenance: {field}")),
            "{field} not named:\n{text}"
        );
    }
    assert!(
        !text.contains("service started"),
        "nothing of the configuration is applied:\n{text}"
    );
    assert!(
        text.contains("environment=Sandbox"),
        "init knows it runs in a sandbox:\n{text}"
    );

    // SIGTERM to the node: init (PID 1, waiting in maintenance) powers off, and the node's
    // process exits 0.
    let monitor = made.monitor.as_mut().unwrap();
    let pid = nix::unistd::Pid::from_raw(monitor.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = baton_test_harness::wait_until_blocking(
        "the node to power off",
        Duration::from_secs(20),
        || monitor.try_wait().unwrap(),
    )
    .unwrap_or_else(|err| panic!("{err}:\n{}", read()));
    assert_eq!(status.code(), Some(0), "{}", read());
    made.monitor = None;
    let left: usize = made
        .cgroups
        .iter()
        .map(|c| {
            std::fs::read_to_string(c.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(left, 0, "processes left in the node's cgroups");
    drop(made);
    assert!(!Path::new(&format!("/run/netns/baton-{name}")).exists());
}
