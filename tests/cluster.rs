//! `baton cluster create` end to end with the `process` provider: a 1 control-plane + 2 worker
//! cluster from the node image, driven with the real kubectl. Each step prints its time.
//!
//! It checks what a user checks: the nodes Ready with their roles and their own capacity; a
//! Deployment of the preloaded busybox image serving HTTP, spread over both workers, reachable
//! through its Service by ClusterIP and by DNS name from a pod on a worker and by NodePort from
//! the cluster's network; `kubectl logs` and `kubectl exec`; scaling; a worker that stops turns
//! NotReady and its pod is recreated on the other worker while the Service keeps answering;
//! and `cluster destroy` leaves no process, namespace, cgroup, mount or file behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_network::NetNs;
use baton_test_harness::{CONTROL_PLANE_SERVICES, LocalCluster, services_running_and_ready};

/// The test's cluster (destroyed on drop, also on failure), and when the test started.
struct TestCluster {
    cluster: LocalCluster,
    started: Instant,
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

impl TestCluster {
    /// kubectl's stdout; panics with its stderr when it fails.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.consoles()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until `url` answers with a web pod's page, fetched by the client pod (busybox wget
    /// through `kubectl exec`); returns the page.
    fn web_page_from_client(&self, url: &str, timeout: Duration) -> String {
        wait_for(&format!("{url} from the client pod"), timeout, || {
            let out = self.kubectl(&[
                "exec", "client", "--", "timeout", "3", "wget", "-q", "-O-", url,
            ]);
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && body.starts_with("hello from web-")).then_some(body)
        })
    }

    /// The last lines of every node's console, for failure messages.
    fn consoles(&self) -> String {
        self.console_tails(&["control-plane-1", "worker-1", "worker-2"], 25)
    }

    fn step(&self, name: &str, since: Instant) {
        println!(
            "step {name}: {:.1}s (at {:.1}s)",
            since.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A node's entry in the cluster's state.
fn node_state<'a>(state: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()
}

/// The host pid of a node's init: the process of the node's cgroup that is PID 1 of its own
/// PID namespace.
fn init_pid(node: &serde_json::Value) -> Option<u32> {
    node["cgroups"]
        .as_array()?
        .iter()
        .filter_map(|c| c.as_str())
        // init is in the node's cgroup (v1), or in its `init` child (v2).
        .flat_map(|c| [Path::new(c).to_path_buf(), Path::new(c).join("init")])
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().map(str::to_string).collect::<Vec<_>>())
        .find_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            (nspid.split_whitespace().nth(1) == Some("1")).then(|| pid.parse().ok())?
        })
}

/// Polls `check` until it gives a value; fails the test after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    baton_test_harness::wait_until_blocking(what, timeout, check).unwrap()
}

/// An HTTP GET of `/` at `address` from the cluster's network namespace.
fn http_get_in(namespace: &NetNs, address: SocketAddr) -> Option<String> {
    namespace
        .run(|| {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(stream, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.contains(" 200 ").then_some(answer)
        })
        .ok()
        .flatten()
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      # Evicted 2 s after their node is lost, not after the default 300 s.
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector:
                matchLabels: {app: web}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: httpd
        image: busybox:1.35
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && echo serving && exec httpd -f -v -p 8080 -h /www"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
    nodePort: 30080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: worker-1
  containers:
  - name: client
    image: busybox:1.35
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo client ready && exec sleep 3600"]
"#;

#[test]
fn a_process_cluster_boots_serves_survives_a_lost_worker_and_is_destroyed_without_a_trace() {
    let name = format!("e2e-{}", std::process::id());
    let mut cluster = TestCluster {
        cluster: LocalCluster::new(Path::new(env!("CARGO_BIN_EXE_baton")), &name),
        started: Instant::now(),
    };

    let t = Instant::now();
    let out = cluster.create("process", &["--wait", "180s"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cluster create failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("Cluster {name} is ready")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("kubectl --context baton-{name} get nodes")),
        "{stderr}"
    );
    cluster.step("cluster create (1 control plane, 2 workers)", t);

    // A second cluster of the same name is refused before anything is made.
    let again = cluster.create("process", &[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("a cluster named {name} exists")),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let t = Instant::now();
    let nodes = cluster.kubectl_ok(&["get", "nodes", "--no-headers"]);
    let rows: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{nodes}");
    assert!(rows.iter().all(|r| r[1] == "Ready"), "{nodes}");
    let role = |node: &str| rows.iter().find(|r| r[0] == node).map(|r| r[2]);
    assert_eq!(role("control-plane-1"), Some("control-plane"), "{nodes}");
    assert_eq!(role("worker-1"), Some("<none>"), "{nodes}");
    // A node's capacity is its own (the default --memory 1024 and --cpus 1), not the host's.
    let capacity = cluster.kubectl_ok(&[
        "get",
        "node",
        "worker-1",
        "-o",
        "jsonpath={.status.capacity.memory} {.status.capacity.cpu}",
    ]);
    assert_eq!(capacity, "1048576Ki 1");
    let status = cluster.baton(&["cluster", "status", &name]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("worker-2") && status.contains("10.251.0.12") && status.contains("running"),
        "{status}"
    );
    let list = String::from_utf8_lossy(&cluster.baton(&["cluster", "list"]).stdout).into_owned();
    assert!(list.contains(&name), "{list}");
    cluster.step("nodes Ready with their roles; status and list", t);

    let t = Instant::now();
    cluster.apply(WEB);
    cluster.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let placed = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {end}",
    ]);
    let mut hosts: Vec<&str> = placed.split_whitespace().collect();
    hosts.sort();
    assert_eq!(
        hosts,
        ["worker-1", "worker-2"],
        "the replicas spread over both workers"
    );
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ]);
    cluster.step("deployment rolled out over both workers", t);

    let t = Instant::now();
    let cluster_ip =
        cluster.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    for target in [
        format!("http://{cluster_ip}:80/"),
        "http://web.default.svc.cluster.local:80/".to_string(),
    ] {
        cluster.web_page_from_client(&target, Duration::from_secs(30));
    }
    let logs = cluster.kubectl_ok(&["logs", "client"]);
    assert!(logs.contains("client ready"), "{logs}");
    // Every pod holds its service account's token and the cluster CA.
    let account = "/var/run/secrets/kubernetes.io/serviceaccount";
    let namespace = cluster.kubectl_ok(&[
        "exec",
        "client",
        "--",
        "cat",
        &format!("{account}/namespace"),
    ]);
    assert_eq!(namespace, "default");
    let token = cluster.kubectl_ok(&["exec", "client", "--", "cat", &format!("{account}/token")]);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let ca = cluster.kubectl_ok(&["exec", "client", "--", "cat", &format!("{account}/ca.crt")]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    cluster.step(
        "Service by ClusterIP and DNS name from a pod; logs and exec",
        t,
    );

    let t = Instant::now();
    let namespace = NetNs::open(Path::new(&format!("/run/netns/baton-{name}"))).unwrap();
    for worker_ip in ["10.251.0.11", "10.251.0.12"] {
        let address: SocketAddr = format!("{worker_ip}:30080").parse().unwrap();
        let answer = wait_for(
            &format!("NodePort on {worker_ip}"),
            Duration::from_secs(30),
            || http_get_in(&namespace, address),
        );
        assert!(answer.contains("hello from web-"), "{answer}");
    }
    cluster.step("NodePort from the cluster network", t);

    let t = Instant::now();
    cluster.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    wait_for("one web pod", Duration::from_secs(60), || {
        let pods = cluster.kubectl_ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
        (pods.lines().count() == 1).then_some(())
    });
    cluster.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]);
    cluster.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    cluster.step("scale down and up", t);

    // worker-2 loses power: every process of the node is killed.
    let t = Instant::now();
    let state = cluster.state();
    let worker2 = node_state(&state, "worker-2");
    let cgroups: Vec<PathBuf> = worker2["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| PathBuf::from(c.as_str().unwrap()))
        .collect();
    let pids_cgroup = cgroups
        .iter()
        .find(|c| c.join("cgroup.procs").exists())
        .expect("a cgroup of worker-2");
    for pid in std::fs::read_to_string(pids_cgroup.join("cgroup.procs"))
        .unwrap()
        .lines()
    {
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    wait_for("worker-2 NotReady", Duration::from_secs(120), || {
        let ready = cluster.kubectl_ok(&[
            "get",
            "node",
            "worker-2",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (ready.trim() != "True").then_some(())
    });
    cluster.step("a stopped worker turns NotReady", t);
    let t = Instant::now();
    // The pod on the lost worker stays Terminating (no kubelet confirms it), as upstream's
    // does; its replacement runs on worker-1.
    wait_for(
        "both web replicas running on worker-1",
        Duration::from_secs(180),
        || {
            let pods: serde_json::Value = serde_json::from_str(
                &cluster.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "json"]),
            )
            .ok()?;
            let live: Vec<(&str, bool)> = pods["items"]
                .as_array()?
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    (p["spec"]["nodeName"].as_str().unwrap_or(""), ready)
                })
                .collect();
            (live.len() == 2
                && live
                    .iter()
                    .all(|(node, ready)| *node == "worker-1" && *ready))
            .then_some(())
        },
    );
    cluster.web_page_from_client("http://web:80/", Duration::from_secs(60));
    cluster.step(
        "its pods recreated on the other worker; the Service recovers",
        t,
    );

    // The node API, through `baton node --cluster NAME --node NODE`.
    let t = Instant::now();
    let node_api = |node: &str, args: &[&str]| cluster.node_api(node, args);
    let (ok, services, err) = node_api("control-plane-1", &["services"]);
    assert!(ok, "{err}");
    services_running_and_ready(&services, CONTROL_PLANE_SERVICES).unwrap();
    let (ok, version, err) = node_api("worker-1", &["version"]);
    assert!(ok, "{err}");
    assert!(
        version.contains("Hostname:     worker-1") && version.contains("Role:         worker"),
        "{version}"
    );
    let (ok, logs, err) = node_api("worker-1", &["logs", "kubelet", "--tail", "3"]);
    assert!(ok, "{err}");
    assert_eq!(logs.lines().count(), 3, "{logs}");
    let (ok, _, err) = node_api("worker-1", &["restart", "proxy"]);
    assert!(ok, "{err}");
    let (_, services, _) = node_api("worker-1", &["services"]);
    let proxy = services.lines().find(|l| l.starts_with("proxy")).unwrap();
    assert_eq!(
        proxy.split_whitespace().nth(4),
        Some("1"),
        "one restart: {proxy}"
    );
    let (ok, _, err) = node_api("worker-1", &["kubeconfig"]);
    assert!(!ok);
    assert!(
        err.contains("failed precondition: worker-1 is a worker"),
        "{err}"
    );
    // The control plane's admin kubeconfig works (through the forwarder: its certificate
    // names 127.0.0.1).
    let (ok, admin, err) = node_api("control-plane-1", &["kubeconfig"]);
    assert!(ok, "{err}");
    let admin_file = cluster.home.path().join("from-node-api.kubeconfig");
    std::fs::write(&admin_file, admin).unwrap();
    let api_port = state["apiPort"].as_u64().unwrap();
    let nodes = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&admin_file)
        .args([
            "--server",
            &format!("https://127.0.0.1:{api_port}"),
            "get",
            "nodes",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains("node/control-plane-1"),
        "{}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    cluster.step("node API: services, version, logs, restart, kubeconfig", t);

    // worker-1 reboots through its node API: init stops the node in order, its monitor boots
    // it again, and it comes back with its pods.
    let t = Instant::now();
    let worker1 = node_state(&state, "worker-1");
    let first_init = init_pid(worker1).expect("worker-1's init");
    let (ok, said, err) = node_api("worker-1", &["reboot"]);
    assert!(ok, "{err}");
    assert_eq!(said, "the node is rebooting\n");
    let second_init = wait_for(
        "worker-1's init to start again",
        Duration::from_secs(60),
        || init_pid(worker1).filter(|pid| *pid != first_init),
    );
    assert_ne!(second_init, first_init);
    let console =
        std::fs::read_to_string(cluster.node_dir("worker-1").join("console.log")).unwrap();
    assert!(
        console.contains("the node rebooted"),
        "the monitor saw a reboot"
    );
    wait_for(
        "the client pod to run again after the reboot",
        Duration::from_secs(120),
        || {
            let out = cluster.kubectl(&["exec", "client", "--", "echo", "back"]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("back"))
                .then_some(())
        },
    );
    cluster.web_page_from_client("http://web:80/", Duration::from_secs(60));
    let ready = cluster.kubectl_ok(&[
        "get",
        "node",
        "worker-1",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready.trim(), "True");
    cluster.step("a rebooted worker comes back Ready with its pods", t);

    let t = Instant::now();
    cluster.destroy();
    cluster.step("cluster destroy", t);
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("baton-{name}")))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "namespaces left: {leftovers:?}");
    let nodes: Vec<&serde_json::Value> = state["nodes"].as_array().unwrap().iter().collect();
    for node in nodes {
        for cgroup in node["cgroups"].as_array().unwrap() {
            let cgroup = cgroup.as_str().unwrap();
            assert!(!Path::new(cgroup).exists(), "cgroup left: {cgroup}");
        }
        let pid = node["pid"].as_u64().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("sandbox"),
            "node process {pid} left"
        );
    }
    let cluster_dir = cluster.home.path().join(format!("clusters/{name}"));
    assert!(!cluster_dir.exists(), "{} left", cluster_dir.display());
    // No process anywhere (in whatever mount namespace) still has a mount of the cluster's.
    let home = cluster.home.path().to_string_lossy().into_owned();
    let holders: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("mountinfo")).is_ok_and(|m| m.contains(&home))
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        holders.is_empty(),
        "processes with the cluster's mounts: {holders:?}"
    );
    let kubeconfig_text = std::fs::read_to_string(&cluster.kubeconfig).unwrap_or_default();
    assert!(
        !kubeconfig_text.contains(&format!("baton-{name}")),
        "the kubeconfig context is left: {kubeconfig_text}"
    );
    let forwarder = state["forwarderPid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{forwarder}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("forward"),
        "forwarder {forwarder} left"
    );
}
