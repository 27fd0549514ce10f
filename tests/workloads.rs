//! The controller manager and scheduler acting on workloads, with simulated nodes: what a user
//! sees with kubectl when they run Deployments, DaemonSets, Jobs and delete namespaces, and
//! what happens when a node stops heartbeating.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_test_harness::{
    Binary, ControlPlane, kubectl_apply as apply, kubectl_binaries, kubectl_ok as ok, wait_until,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

fn kubectl() -> std::path::PathBuf {
    kubectl_binaries().remove(0)
}

/// Running pods matching `selector` in `namespace`, with their nodes.
async fn running_pods(pods: &Api<Pod>, selector: &str) -> Vec<(String, String)> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            (p.name_any(), node)
        })
        .collect()
}

/// The 3 web pods, once they all run (with the components' logs when they do not).
async fn three_running_web_pods(plane: &ControlPlane, pods: &Api<Pod>) -> Vec<(String, String)> {
    wait_until("3 running web pods", Duration::from_secs(60), || async {
        let r = running_pods(pods, "app=web").await;
        (r.len() == 3).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()))
}

const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "nginx:1.25", resources: {requests: {cpu: 100m, memory: 64Mi}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scales_rolls_out_and_undoes() {
    let plane = ControlPlane::start(&binary(), 3, &[])
        .await
        .expect("control plane");
    let k = kubectl();
    apply(&plane, &k, WEB);
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "shop");

    // Three replicas, Running, one on each node (the default topology spreading).
    let running = three_running_web_pods(&plane, &pods).await;
    let nodes: BTreeSet<&String> = running.iter().map(|(_, n)| n).collect();
    assert_eq!(
        nodes.len(),
        3,
        "replicas spread over the nodes: {running:?}"
    );
    let status = ok(
        &plane,
        &k,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "shop",
            "--timeout=60s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");

    // Scale up and down.
    ok(
        &plane,
        &k,
        &["scale", "deployment/web", "-n", "shop", "--replicas=5"],
    );
    wait_until("5 running web pods", Duration::from_secs(60), || async {
        (running_pods(&pods, "app=web").await.len() == 5).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    ok(
        &plane,
        &k,
        &["scale", "deployment/web", "-n", "shop", "--replicas=2"],
    );
    wait_until("2 web pods left", Duration::from_secs(60), || async {
        let all = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        (all.items.len() == 2 && running_pods(&pods, "app=web").await.len() == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let get = ok(&plane, &k, &["get", "deployment", "web", "-n", "shop"]);
    assert!(
        get.lines().nth(1).is_some_and(|l| l.contains("2/2")),
        "{get}"
    );

    // An image change rolls out; rollout status waits for it.
    ok(
        &plane,
        &k,
        &[
            "set",
            "image",
            "deployment/web",
            "-n",
            "shop",
            "web=nginx:1.27",
        ],
    );
    let status = ok(
        &plane,
        &k,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "shop",
            "--timeout=90s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let images = ok(
        &plane,
        &k,
        &[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    );
    assert_eq!(
        images.split_whitespace().collect::<BTreeSet<_>>(),
        BTreeSet::from(["nginx:1.27"]),
        "{images}"
    );
    let history = ok(
        &plane,
        &k,
        &["rollout", "history", "deployment/web", "-n", "shop"],
    );
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Undo restores the previous template.
    ok(
        &plane,
        &k,
        &["rollout", "undo", "deployment/web", "-n", "shop"],
    );
    let status = ok(
        &plane,
        &k,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "shop",
            "--timeout=90s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let image = ok(
        &plane,
        &k,
        &[
            "get",
            "deployment",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image, "nginx:1.25");
    wait_until("only nginx:1.25 pods", Duration::from_secs(60), || async {
        let all = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let images: BTreeSet<String> = all
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
            .collect();
        (all.items.len() == 2 && images == BTreeSet::from(["nginx:1.25".to_string()])).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let rs = ok(
        &plane,
        &k,
        &[
            "get",
            "replicasets",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].status.replicas}",
        ],
    );
    let mut counts: Vec<&str> = rs.split_whitespace().collect();
    counts.sort();
    assert_eq!(
        counts,
        vec!["0", "2"],
        "the old ReplicaSet is scaled to zero: {rs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_job_and_namespace_deletion() {
    let mut plane = ControlPlane::start(&binary(), 2, &[])
        .await
        .expect("control plane");
    let k = kubectl();
    apply(
        &plane,
        &k,
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: ops}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: "busybox:1.36"}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: ops}
spec:
  completions: 3
  parallelism: 2
  template:
    metadata:
      annotations: {sim-nodes.baton.dev/outcome: Succeeded, sim-nodes.baton.dev/run-for: 300ms}
    spec:
      restartPolicy: Never
      containers: [{name: report, image: "busybox:1.36"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: ops}
data: {a: b}
"#,
    );
    let client = plane.apiserver.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ops");

    // One agent on each node, and on a node that joins later.
    let on_nodes = |want: usize| {
        let pods = pods.clone();
        async move {
            let r = running_pods(&pods, "app=agent").await;
            let nodes: BTreeSet<String> = r.iter().map(|(_, n)| n.clone()).collect();
            (r.len() == want && nodes.len() == want).then_some(())
        }
    };
    wait_until("an agent on both nodes", Duration::from_secs(60), || {
        on_nodes(2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    plane
        .add_sim_nodes("late-node", 1, "late-node-", &[])
        .await
        .expect("third node");
    wait_until(
        "an agent on the new node too",
        Duration::from_secs(60),
        || on_nodes(3),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let status = ok(
        &plane,
        &k,
        &[
            "rollout",
            "status",
            "daemonset/agent",
            "-n",
            "ops",
            "--timeout=60s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");

    // The Job runs 3 completions and reports Complete.
    ok(
        &plane,
        &k,
        &[
            "wait",
            "--for=condition=complete",
            "job/report",
            "-n",
            "ops",
            "--timeout=90s",
        ],
    );
    let succeeded = ok(
        &plane,
        &k,
        &[
            "get",
            "job",
            "report",
            "-n",
            "ops",
            "-o",
            "jsonpath={.status.succeeded}",
        ],
    );
    assert_eq!(succeeded, "3");
    let get = ok(&plane, &k, &["get", "job", "report", "-n", "ops"]);
    assert!(get.contains("Complete") && get.contains("3/3"), "{get}");

    // Deleting the namespace removes all it held, then the namespace itself.
    ok(&plane, &k, &["delete", "namespace", "ops", "--wait=false"]);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    wait_until("namespace ops gone", Duration::from_secs(90), || async {
        matches!(namespaces.get_opt("ops").await, Ok(None)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let left = pods.list(&ListParams::default()).await.unwrap();
    assert!(
        left.items.is_empty(),
        "pods left in a deleted namespace: {:?}",
        left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, "ops");
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_silent_node_come_back_elsewhere() {
    let mut plane = ControlPlane::start(&binary(), 0, &["--node-monitor-grace-period=4s"])
        .await
        .expect("control plane");
    plane
        .add_sim_nodes("steady", 2, "steady-", &["--lease-renew-interval=1s"])
        .await
        .expect("steady nodes");
    plane
        .add_sim_nodes("doomed", 1, "doomed-", &["--lease-renew-interval=1s"])
        .await
        .expect("doomed node");
    let k = kubectl();
    // Tolerate an unreachable node for 2 s instead of the default 300 s.
    apply(
        &plane,
        &k,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: default}
spec:
  replicas: 6
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers: [{name: api, image: "busybox:1.36"}]
"#,
    );
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "default");
    let running = wait_until("6 running api pods", Duration::from_secs(60), || async {
        let r = running_pods(&pods, "app=api").await;
        (r.len() == 6).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    assert!(
        running.iter().any(|(_, n)| n == "doomed-0"),
        "some pods on the doomed node: {running:?}"
    );

    // The doomed node's "kubelet" dies: no more heartbeats.
    plane.sim_nodes[1].stop();
    wait_until("doomed-0 NotReady and tainted unreachable", Duration::from_secs(60), || async {
        let out = plane.apiserver.kubectl(&k, &["get", "node", "doomed-0", "-o", "jsonpath={.spec.taints[*].key} {.status.conditions[?(@.type==\"Ready\")].status}"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains("node.kubernetes.io/unreachable") && text.ends_with("Unknown")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let get = ok(&plane, &k, &["get", "nodes"]);
    assert!(
        get.lines()
            .any(|l| l.starts_with("doomed-0") && l.contains("NotReady")),
        "{get}"
    );
    // Its pods turn Ready False (upstream's MarkPodsNotReady), keeping their other conditions.
    let doomed = running
        .iter()
        .find(|(_, node)| node == "doomed-0")
        .map(|(name, _)| name.clone())
        .expect("a pod on the doomed node");
    let conditions = wait_until(
        "the doomed node's pod not Ready",
        Duration::from_secs(60),
        || async {
            let pod = pods.get(&doomed).await.ok()?;
            let conditions = pod.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
                .then_some(conditions)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    for kept in ["PodScheduled", "Initialized", "ContainersReady"] {
        assert!(
            conditions.iter().any(|c| c.type_ == kept),
            "{kept} kept: {conditions:?}"
        );
    }

    // Its pods are evicted once their toleration runs out and come back on the others.
    wait_until(
        "6 running api pods on steady nodes",
        Duration::from_secs(90),
        || async {
            let r = running_pods(&pods, "app=api").await;
            (r.len() == 6 && r.iter().all(|(_, n)| n.starts_with("steady-"))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
}

/// Whether a pod's Ready condition is True.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

const BUDGET: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  minAvailable: 3
  selector: {matchLabels: {app: web}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_disruption_budget() {
    let plane = ControlPlane::start(&binary(), 2, &[])
        .await
        .expect("control plane");
    let k = kubectl();
    apply(&plane, &k, WEB);
    apply(&plane, &k, BUDGET);
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "shop");
    let running = three_running_web_pods(&plane, &pods).await;
    let jsonpath = |path: &str| {
        ok(
            &plane,
            &k,
            &[
                "get",
                "pdb",
                "web",
                "-n",
                "shop",
                "-o",
                &format!("jsonpath={path}"),
            ],
        )
    };
    wait_until("the budget's status", Duration::from_secs(30), || async {
        (jsonpath("{.status.currentHealthy}/{.status.disruptionsAllowed}") == "3/0").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let table = ok(&plane, &k, &["get", "pdb", "-n", "shop"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["web", "3", "N/A", "0"], "{table}");

    // The budget allows no disruption: drain evicts nothing and gives up at its timeout.
    // The node with the most web pods (two of the three), so that evicting them all at once
    // would break the budget.
    let node = running
        .iter()
        .map(|(_, n)| n.clone())
        .max_by_key(|n| running.iter().filter(|(_, m)| m == n).count())
        .unwrap();
    let drain = plane
        .apiserver
        .kubectl(&k, &["drain", &node, "--ignore-daemonsets", "--timeout=8s"]);
    let stderr = String::from_utf8_lossy(&drain.stderr);
    assert!(!drain.status.success(), "{stderr}");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{stderr}"
    );
    assert_eq!(running_pods(&pods, "app=web").await.len(), 3);

    // One disruption allowed: drain evicts one pod at a time, each after its replacement is
    // Ready elsewhere, and the node ends up empty.
    ok(
        &plane,
        &k,
        &[
            "patch",
            "pdb",
            "web",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":2}}"#,
        ],
    );
    let mut drain = plane
        .apiserver
        .kubectl_background(
            &k,
            &[
                "drain",
                &node,
                "--ignore-daemonsets",
                "--grace-period=1",
                "--timeout=120s",
            ],
        )
        .unwrap();
    let started = std::time::Instant::now();
    let mut fewest_ready = usize::MAX;
    let status = loop {
        if let Some(status) = drain.exited() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "drain hangs: {}",
            drain.errors()
        );
        let ready = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .count();
        fewest_ready = fewest_ready.min(ready);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{}{}", drain.output(), drain.errors());
    assert!(
        fewest_ready >= 2,
        "the budget kept 2 pods ready during the drain: {fewest_ready}"
    );
    let after = wait_until(
        "3 web pods off the drained node",
        Duration::from_secs(60),
        || async {
            let r = running_pods(&pods, "app=web").await;
            (r.len() == 3 && r.iter().all(|(_, n)| *n != node)).then_some(r)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    assert_eq!(after.len(), 3);
}

const BUDGET_MAX_ONE: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web-max, namespace: shop}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: front, namespace: shop}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {tier: front}}
"#;

const STRAY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: stray, namespace: shop, labels: {app: web}}
spec:
  containers:
  - {name: web, image: "nginx:1.25"}
"#;

const WEB_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: warmup, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      restartPolicy: Never
      containers:
      - {name: warmup, image: "busybox"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_unavailable_counts_the_replicas_the_deployment_asks_for() {
    let plane = ControlPlane::start(&binary(), 2, &[])
        .await
        .expect("control plane");
    let k = kubectl();
    apply(&plane, &k, WEB);
    apply(&plane, &k, BUDGET_MAX_ONE);
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "shop");
    let web = three_running_web_pods(&plane, &pods).await;
    // "expectedPods/desiredHealthy/disruptionsAllowed reason: message" of a budget.
    let budget_is = |budget: &'static str, wanted: &'static str| {
        let plane = &plane;
        let k = &k;
        async move {
            let path = "jsonpath={.status.expectedPods}/{.status.desiredHealthy}/\
                        {.status.disruptionsAllowed} {.status.conditions[0].reason}: \
                        {.status.conditions[0].message}";
            let mut last = String::new();
            let seen = wait_until(wanted, Duration::from_secs(60), || {
                last = ok(plane, k, &["get", "pdb", budget, "-n", "shop", "-o", path]);
                let matched = last.trim() == wanted;
                async move { matched.then_some(()) }
            })
            .await;
            seen.unwrap_or_else(|e| panic!("{budget}: {e}: last {last:?}\n{}", plane.logs()));
        }
    };
    budget_is("web-max", "3/2/1 SufficientPods:").await;

    // A budget over two of the Deployment's three pods still expects all three replicas: with
    // two healthy pods and one allowed to be unavailable, none may go (counting its own pods
    // it would say 2/1/1).
    for (name, _) in &web[..2] {
        ok(
            &plane,
            &k,
            &["label", "pod", name, "-n", "shop", "tier=front"],
        );
    }
    budget_is("front", "3/2/0 InsufficientPods:").await;

    // A covered pod without a controller counts for nothing and draws a warning.
    apply(&plane, &k, STRAY);
    budget_is("web-max", "3/2/2 SufficientPods:").await;
    let described = ok(&plane, &k, &["describe", "pdb", "web-max", "-n", "shop"]);
    assert!(
        described.contains("UnmanagedPods") && described.contains("were found to be unmanaged"),
        "{described}"
    );

    // A covered pod of a Job, which has no scale: the budget cannot count and fails safe.
    apply(&plane, &k, WEB_JOB);
    budget_is(
        "web-max",
        "3/2/0 SyncFailed: jobs.batch does not implement the scale subresource",
    )
    .await;
    let described = ok(&plane, &k, &["describe", "pdb", "web-max", "-n", "shop"]);
    assert!(
        described.contains("CalculateExpectedPodCountFailed")
            && described.contains("Failed to calculate the number of expected pods"),
        "{described}"
    );
    ok(
        &plane,
        &k,
        &[
            "delete",
            "job",
            "warmup",
            "-n",
            "shop",
            "--cascade=foreground",
            "--wait",
        ],
    );
    budget_is("web-max", "3/2/2 SufficientPods:").await;
}

const REPORT_CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata: {labels: {app: report}}
    spec:
      template:
        metadata:
          annotations: {sim-nodes.baton.dev/outcome: Succeeded, sim-nodes.baton.dev/run-for: 300ms}
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: "busybox:1.36"}]
"#;

/// The CronJob's Jobs, oldest first (names end in the scheduled minute).
async fn cronjob_jobs(jobs: &Api<k8s_openapi::api::batch::v1::Job>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = jobs
        .list(&ListParams::default().labels("app=report"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.kind == "CronJob" && o.name == "report")
        })
        .map(|j| {
            let complete = j
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                });
            (j.name_any(), complete)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_starts_missed_and_scheduled_jobs_and_keeps_its_history() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let plane = ControlPlane::start(&binary(), 1, &[])
        .await
        .expect("control plane");
    let k = kubectl();

    // Validation speaks the cron parser's language.
    let bad = plane.apiserver.kubectl(
        &k,
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox:1.36",
            "--schedule=61 * * * *",
        ],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr.contains(
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ),
        "{stderr}"
    );

    apply(&plane, &k, REPORT_CRONJOB);
    let client = plane.apiserver.client().await.unwrap();
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let get = ok(&plane, &k, &["get", "cronjob", "report"]);
    let header: Vec<&str> = get.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{get}"
    );
    assert!(
        get.contains("* * * * *") && get.contains("<none>") && get.contains("False"),
        "{get}"
    );

    // As if the controller had been down for three minutes: the most recent missed time
    // starts at once, and only that one.
    let now = jiff::Timestamp::now().as_second();
    let three_minutes_ago = jiff::Timestamp::from_second(now - now.rem_euclid(60) - 180).unwrap();
    cron_jobs
        .patch_status(
            "report",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "status": {"lastScheduleTime": three_minutes_ago}
            })),
        )
        .await
        .unwrap();
    let first = wait_until(
        "a job for the missed time",
        Duration::from_secs(20),
        || async { cronjob_jobs(&jobs).await.into_iter().next() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    // Read at once: once the next minute's Job completes, the history limit lets this one go.
    let first_job = jobs.get(&first.0).await.unwrap();
    let minute_of = |job: &str| -> i64 { job.trim_start_matches("report-").parse().unwrap() };
    let minute = minute_of(&first.0);
    // The current minute when the status was patched (or the next, had one begun since).
    let patched_minute = now.div_euclid(60);
    assert!(
        minute == patched_minute
            || (minute == patched_minute + 1 && minute * 60 <= jiff::Timestamp::now().as_second()),
        "{first:?} is not the most recent scheduled minute ({patched_minute})"
    );
    // None of the older missed minutes follows.
    let older = wait_until(
        "a job for an older missed minute",
        Duration::from_secs(3),
        || async {
            cronjob_jobs(&jobs)
                .await
                .into_iter()
                .find(|(name, _)| minute_of(name) < patched_minute)
        },
    )
    .await;
    assert!(older.is_err(), "{older:?}");
    let scheduled = jiff::Timestamp::from_second(minute * 60).unwrap();
    assert_eq!(
        first_job.annotations()["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        scheduled.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    );

    // It completes; the CronJob notes the success and lists nothing active.
    let status = wait_until("the success recorded", Duration::from_secs(60), || async {
        let cj = cron_jobs.get("report").await.ok()?;
        let status = cj.status?;
        (status.last_successful_time.is_some() && status.active.is_none()).then_some(status)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    // (The next minute's Job may have started meanwhile.)
    assert!(
        status
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 >= scheduled),
        "{status:?}"
    );

    // The next minute comes by itself; once its Job completes, the history limit of one
    // success lets the first go.
    let second = wait_until(
        "a job at the next minute",
        Duration::from_secs(75),
        || async {
            let all = cronjob_jobs(&jobs).await;
            all.iter().find(|(name, _)| *name != first.0).cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let kept = wait_until(
        "only the newest job kept",
        Duration::from_secs(60),
        || async {
            let all = cronjob_jobs(&jobs).await;
            (all.len() == 1 && all[0].0 == second.0 && all[0].1).then_some(())
        },
    )
    .await;
    if let Err(e) = kept {
        let left = cronjob_jobs(&jobs).await;
        panic!("{e}: {left:?}\n{}", plane.logs());
    }
    let describe = ok(&plane, &k, &["describe", "cronjob", "report"]);
    for expected in [
        format!("Created job {}", first.0),
        format!("Saw completed job: {}, condition: Complete", first.0),
        format!("Deleted job {}", first.0),
    ] {
        assert!(
            describe.contains(&expected),
            "{expected:?} missing:\n{describe}"
        );
    }

    // kubectl makes a Job from the CronJob's template by hand (as the server returns it:
    // the history limit may let it go as soon as it completes).
    let by_hand = ok(
        &plane,
        &k,
        &[
            "create",
            "job",
            "by-hand",
            "--from=cronjob/report",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].name} {.metadata.labels.app} {.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate}",
        ],
    );
    assert_eq!(by_hand, "report report manual");
}
