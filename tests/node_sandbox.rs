//! One node of the `process` provider run by hand (`baton sandbox run`) with an invalid machine
//! configuration: init, as PID 1 of the sandbox, lands in maintenance mode, names every bad
//! field on the console and through the node API, and applies nothing (no service starts). The
//! node API, reached with `baton node` from inside the node's network namespace, refuses a
//! still invalid configuration, takes a corrected one (the node leaves maintenance and boots),
//! switches to mutual TLS against the new configuration's CA, applies a sysctl change at once,
//! stages a hostname change for the next boot, and powers the node off in order. Everything
//! the test made is removed, also when it fails.

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

/// A corrected configuration for the node: a worker with a fresh cluster CA and identity
/// (no `apiCertificate`: the node API serves a self-signed certificate, so callers use
/// `--insecure` but still present the admin certificate). `extra` goes under `machine:`.
fn corrected_config(
    ca: &baton_pki::ClusterCa,
    identity: &baton_pki::CertAndKey,
    hostname: &str,
    extra: &str,
) -> String {
    let quote = |pem: &str| serde_json::to_string(pem).unwrap();
    format!(
        r#"apiVersion: baton.dev/v1alpha1
kind: MachineConfig
machine:
  role: worker
  hostname: {hostname}
  network:
    interfaces:
    - name: eth0
      addresses: [10.252.0.11/24]
      routes:
      - {{to: 0.0.0.0/0, via: 10.252.0.1}}
  identity:
    cert: {}
    key: {}
{extra}
cluster:
  name: test
  endpoint: https://10.252.0.10:6443
  ca:
    cert: {}
"#,
        quote(&identity.cert_pem),
        quote(&identity.key_pem),
        quote(ca.cert_pem()),
    )
}

/// Runs `baton node --endpoint 127.0.0.1 --netns NETNS --insecure ARGS...` and returns
/// (success, stdout, stderr).
fn node_api(netns: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["node", "--endpoint", "127.0.0.1", "--insecure", "--netns"])
        .arg(netns)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_configuration_leaves_a_node_in_maintenance_until_a_corrected_one_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let baton = env!("CARGO_BIN_EXE_baton");
    let image = dir.path().join("image");
    let built = Command::new(baton)
        .args(["image", "build", "--no-uefi", "--output"])
        .arg(&image)
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

    // The node API answers in maintenance mode without a CA to check callers against: status
    // and apply-config only.
    let netns = made.netns.clone();
    let mut status = (false, String::new(), String::new());
    wait_for(
        "the node API in maintenance mode",
        Duration::from_secs(20),
        || {
            status = node_api(&netns, &["status"]);
            status.0
        },
    );
    assert!(status.1.contains("Maintenance:  true"), "{}", status.1);
    assert!(
        status
            .1
            .contains("Problem:      machine.hostname: \"Bad_Name\" is not a DNS label"),
        "{}",
        status.1
    );
    let services = node_api(&netns, &["services"]);
    assert!(!services.0);
    assert!(
        services
            .2
            .contains("permission denied: the node is in maintenance mode"),
        "{}",
        services.2
    );

    // A configuration that is still invalid is refused by field, and nothing is kept.
    let ca = baton_pki::ClusterCa::generate("node-api-test").unwrap();
    let identity = ca
        .issue_client("system:node:worker-1", Some("system:nodes"))
        .unwrap();
    let still_bad = dir.path().join("still-bad.yaml");
    std::fs::write(
        &still_bad,
        corrected_config(&ca, &identity, "Still_Bad", ""),
    )
    .unwrap();
    let refused = node_api(
        &netns,
        &["apply-config", "-f", &still_bad.display().to_string()],
    );
    assert!(!refused.0);
    assert!(
        refused.2.contains("invalid argument:") && refused.2.contains("machine.hostname"),
        "{}",
        refused.2
    );
    let staged = dir.path().join("node/var/lib/baton/machine-config.yaml");
    assert!(!staged.exists(), "a refused configuration is not kept");
    assert!(
        node_api(&netns, &["status"])
            .1
            .contains("Maintenance:  true")
    );

    // The corrected one: the node leaves maintenance mode and boots with it.
    NetNs::open(&netns)
        .unwrap()
        .run(|| {
            baton_network::RouteSocket::open()
                .unwrap()
                .create_bridge("eth0")
                .unwrap()
        })
        .unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, corrected_config(&ca, &identity, "worker-1", "")).unwrap();
    let applied = node_api(&netns, &["apply-config", "-f", &good.display().to_string()]);
    assert!(applied.0, "{}", applied.2);
    assert!(
        applied
            .1
            .starts_with("applied: the node leaves maintenance mode and boots with it"),
        "{}",
        applied.1
    );
    assert!(
        staged.exists(),
        "the applied configuration is kept for later boots"
    );

    // From now on callers need a certificate of the new CA in system:masters.
    let admin = ca
        .issue_client("kubernetes-admin", Some("system:masters"))
        .unwrap();
    let node_cert = ca
        .issue_client("system:node:worker-1", Some("system:nodes"))
        .unwrap();
    let pem = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (admin_cert, admin_key) = (
        pem("admin.crt", &admin.cert_pem),
        pem("admin.key", &admin.key_pem),
    );
    let as_admin = |args: &[&str]| {
        let mut all = vec!["--cert", admin_cert.as_str(), "--key", admin_key.as_str()];
        all.extend_from_slice(args);
        node_api(&netns, &all)
    };
    let mut services = (false, String::new(), String::new());
    wait_for("the node's services", Duration::from_secs(30), || {
        services = as_admin(&["services"]);
        services.0
            && ["kubelet", "proxy", "dns"].iter().all(|name| {
                services
                    .1
                    .lines()
                    .any(|l| l.starts_with(name) && l.contains("Running"))
            })
    });
    let status = as_admin(&["status"]);
    assert!(status.1.contains("Maintenance:  false"), "{}", status.1);
    assert!(
        status.1.contains("applied through the node API"),
        "{}",
        status.1
    );
    assert!(
        status.1.contains("eth0        10.252.0.11/24"),
        "{}",
        status.1
    );
    let anonymous = node_api(&netns, &["services"]);
    assert!(!anonymous.0, "a caller without a certificate is refused");
    let (node_crt, node_key) = (
        pem("node.crt", &node_cert.cert_pem),
        pem("node.key", &node_cert.key_pem),
    );
    let as_node = node_api(
        &netns,
        &["--cert", &node_crt, "--key", &node_key, "services"],
    );
    assert!(
        as_node
            .2
            .contains("permission denied: system:node:worker-1 is not in group system:masters"),
        "{}",
        as_node.2
    );

    // A sysctl takes effect at once, in the node's own network namespace.
    let sysctl = dir.path().join("sysctl.yaml");
    std::fs::write(
        &sysctl,
        corrected_config(
            &ca,
            &identity,
            "worker-1",
            "  sysctls:\n    net.ipv4.tcp_keepalive_time: \"611\"",
        ),
    )
    .unwrap();
    let live = as_admin(&["apply-config", "-f", &sysctl.display().to_string()]);
    assert!(live.0, "{}", live.2);
    assert_eq!(
        live.1,
        "applied: applied to the running node\nchanged: machine.sysctls\n"
    );
    let keepalive = NetNs::open(&netns)
        .unwrap()
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap())
        .unwrap();
    assert_eq!(keepalive.trim(), "611");

    // A new hostname waits for the next boot.
    let renamed = dir.path().join("renamed.yaml");
    std::fs::write(&renamed, corrected_config(&ca, &identity, "worker-9", "")).unwrap();
    let staged_reply = as_admin(&["apply-config", "-f", &renamed.display().to_string()]);
    assert!(staged_reply.0, "{}", staged_reply.2);
    assert!(
        staged_reply.1.starts_with("staged: ") && staged_reply.1.contains("machine.hostname"),
        "{}",
        staged_reply.1
    );
    assert!(as_admin(&["status"]).1.contains("staged for the next boot"));
    assert!(
        std::fs::read_to_string(&staged)
            .unwrap()
            .contains("worker-9")
    );

    // Shutdown through the API: services stop in order and the node's process exits 0.
    let off = as_admin(&["shutdown"]);
    assert!(off.0, "{}", off.2);
    let monitor = made.monitor.as_mut().unwrap();
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
