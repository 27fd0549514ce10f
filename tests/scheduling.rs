//! Where the scheduler puts pods, checked as a user would (kubectl and the API), on simulated
//! nodes with zones, labels and taints; what an unschedulable pod shows in `kubectl describe`;
//! and a standby scheduler taking over when the leader dies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use baton_test_harness::{
    Binary, Component, ControlPlane, kubectl_apply as apply, kubectl_binaries, kubectl_ok as ok,
    wait_until,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// Nodes of the bound pods matching `selector`, once `count` of them are bound.
async fn placed(
    plane: &ControlPlane,
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
) -> Vec<String> {
    wait_until(
        &format!("{count} pods {selector} bound"),
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            let nodes: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            (nodes.len() >= count).then_some(nodes)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()))
}

fn deployment(name: &str, replicas: u32, pod_spec_extra: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{pod_spec_extra}
      containers: [{{name: main, image: "busybox:1.36"}}]
"#
    )
}

/// Zones a (a-0, a-1) and b (b-0, b-1), and one tainted GPU node gpu-0.
async fn zoned_plane() -> ControlPlane {
    let mut plane = ControlPlane::start(&binary(), 0, &[])
        .await
        .expect("control plane");
    plane
        .add_sim_nodes(
            "zone-a",
            2,
            "a-",
            &[
                "--node-label=topology.kubernetes.io/zone=a",
                "--node-label=disk=ssd",
            ],
        )
        .await
        .expect("zone a");
    plane
        .add_sim_nodes(
            "zone-b",
            2,
            "b-",
            &["--node-label=topology.kubernetes.io/zone=b"],
        )
        .await
        .expect("zone b");
    plane
        .add_sim_nodes(
            "gpu",
            1,
            "gpu-",
            &["--node-label=hw=gpu", "--node-taint=gpu=true:NoSchedule"],
        )
        .await
        .expect("gpu node");
    plane
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_selectors_affinity_taints_and_spreading() {
    let plane = zoned_plane().await;
    let k = kubectl_binaries().remove(0);
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "default");

    // nodeSelector: only the ssd nodes.
    apply(
        &plane,
        &k,
        &deployment("ssd", 4, "      nodeSelector: {disk: ssd}"),
    );
    let nodes = placed(&plane, &pods, "app=ssd", 4).await;
    assert!(nodes.iter().all(|n| n.starts_with("a-")), "{nodes:?}");

    // Required node affinity: zone b only.
    apply(
        &plane,
        &k,
        &deployment(
            "zoned",
            3,
            "      affinity:\n        nodeAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n            - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [b]}]",
        ),
    );
    let nodes = placed(&plane, &pods, "app=zoned", 3).await;
    assert!(nodes.iter().all(|n| n.starts_with("b-")), "{nodes:?}");

    // Taints: nothing lands on the GPU node without a toleration; with one it can.
    apply(&plane, &k, &deployment("plain", 10, ""));
    let nodes = placed(&plane, &pods, "app=plain", 10).await;
    assert!(!nodes.iter().any(|n| n == "gpu-0"), "{nodes:?}");
    apply(
        &plane,
        &k,
        &deployment(
            "trainer",
            2,
            "      nodeSelector: {hw: gpu}\n      tolerations: [{key: gpu, operator: Equal, value: \"true\", effect: NoSchedule}]",
        ),
    );
    let nodes = placed(&plane, &pods, "app=trainer", 2).await;
    assert_eq!(nodes, vec!["gpu-0", "gpu-0"]);

    // Required anti-affinity per host: four replicas on four different untainted nodes.
    apply(
        &plane,
        &k,
        &deployment(
            "solo",
            4,
            "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: solo}}\n            topologyKey: kubernetes.io/hostname",
        ),
    );
    let nodes = placed(&plane, &pods, "app=solo", 4).await;
    assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), 4, "{nodes:?}");

    // Required pod affinity by zone: next to the cache, which is in zone b.
    apply(
        &plane,
        &k,
        &deployment(
            "cache",
            1,
            "      nodeSelector: {kubernetes.io/hostname: b-1}",
        ),
    );
    placed(&plane, &pods, "app=cache", 1).await;
    apply(
        &plane,
        &k,
        &deployment(
            "near",
            3,
            "      affinity:\n        podAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: cache}}\n            topologyKey: topology.kubernetes.io/zone",
        ),
    );
    let nodes = placed(&plane, &pods, "app=near", 3).await;
    assert!(nodes.iter().all(|n| n.starts_with("b-")), "{nodes:?}");

    // Topology spread, DoNotSchedule, maxSkew 1 over zones: 3 and 3.
    apply(
        &plane,
        &k,
        &deployment(
            "spread",
            6,
            "      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}",
        ),
    );
    let nodes = placed(&plane, &pods, "app=spread", 6).await;
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for n in &nodes {
        *per_zone.entry(n.chars().next().unwrap()).or_default() += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([('a', 3), ('b', 3)]), "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_says_why_in_describe() {
    let plane = zoned_plane().await;
    let k = kubectl_binaries().remove(0);
    apply(
        &plane,
        &k,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: huge, namespace: default}
spec:
  containers:
  - {name: main, image: "busybox:1.36", resources: {requests: {memory: 1Ti}}}
"#,
    );
    let expected = "0/5 nodes are available: 1 node(s) had untolerated taint {gpu: true}, 4 Insufficient memory.";
    let describe = wait_until(
        "FailedScheduling in describe",
        Duration::from_secs(60),
        || async {
            let out = plane.apiserver.kubectl(&k, &["describe", "pod", "huge"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("FailedScheduling").then_some(text)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    assert!(describe.contains(expected), "{describe}");
    assert!(describe.contains("Warning  FailedScheduling"), "{describe}");
    let condition = ok(
        &plane,
        &k,
        &[
            "get",
            "pod",
            "huge",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        ],
    );
    assert_eq!(condition, "Unschedulable");
    let get = ok(&plane, &k, &["get", "pod", "huge"]);
    assert!(get.contains("Pending"), "{get}");

    // When room appears (a bigger node joins), the pod is retried without anyone touching it.
    let mut plane = plane;
    plane
        .add_sim_nodes("big", 1, "big-", &["--memory=2Ti"])
        .await
        .expect("big node");
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "default");
    let node = wait_until("huge bound", Duration::from_secs(60), || async {
        pods.get("huge").await.ok()?.spec?.node_name
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    assert_eq!(node, "big-0");
    // Once bound, describe shows upstream's Scheduled event from the scheduler.
    let describe = wait_until("Scheduled in describe", Duration::from_secs(30), || async {
        let out = plane.apiserver.kubectl(&k, &["describe", "pod", "huge"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("Normal   Scheduled").then_some(text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    let line = describe
        .lines()
        .find(|l| l.contains("Normal   Scheduled"))
        .unwrap();
    assert!(
        line.contains("default-scheduler")
            && line.ends_with("Successfully assigned default/huge to big-0"),
        "{describe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_scheduler_takes_over_from_a_dead_leader() {
    let mut plane = ControlPlane::start(&binary(), 2, &[])
        .await
        .expect("control plane");
    plane.scheduler.stop();
    let fast = [
        "--leader-elect-lease-duration=3s",
        "--leader-elect-renew-deadline=2s",
        "--leader-elect-retry-period=500ms",
    ];
    let mut first = Component::start(
        &binary(),
        &plane.apiserver,
        &plane.dir,
        "scheduler-1",
        "scheduler",
        &fast,
    )
    .unwrap();
    let leader_log = |c: &Component| c.log().contains("successfully acquired lease");
    wait_until("first scheduler leads", Duration::from_secs(30), || async {
        leader_log(&first).then_some(())
    })
    .await
    .unwrap();
    let mut second = Component::start(
        &binary(),
        &plane.apiserver,
        &plane.dir,
        "scheduler-2",
        "scheduler",
        &fast,
    )
    .unwrap();
    let k = kubectl_binaries().remove(0);
    apply(
        &plane,
        &k,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: default}\nspec:\n  containers: [{name: main, image: \"busybox:1.36\"}]\n",
    );
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "default");
    let bound = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get(name).await.ok()?.spec?.node_name }
    };
    wait_until(
        "pod one bound by the leader",
        Duration::from_secs(30),
        || bound("one"),
    )
    .await
    .unwrap();
    assert!(
        !leader_log(&second),
        "the standby must not lead while the leader lives"
    );

    first.stop();
    wait_until("standby leads", Duration::from_secs(30), || async {
        leader_log(&second).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    apply(
        &plane,
        &k,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: two, namespace: default}\nspec:\n  containers: [{name: main, image: \"busybox:1.36\"}]\n",
    );
    wait_until(
        "pod two bound by the new leader",
        Duration::from_secs(30),
        || bound("two"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    assert!(second.running());
    let holder = ok(
        &plane,
        &k,
        &[
            "get",
            "lease",
            "kube-scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!holder.is_empty(), "the Lease names its holder");
    assert!(
        second.log().contains(&format!("identity={holder}")),
        "lease holder {holder} is the standby"
    );
    assert!(!first.log().contains(&format!("identity={holder}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_a_lower_one() {
    let mut plane = ControlPlane::start(&binary(), 0, &[])
        .await
        .expect("control plane");
    plane
        .add_sim_nodes("small", 1, "small-", &["--cpu=2"])
        .await
        .expect("small node");
    let k = kubectl_binaries().remove(0);
    let pod = |name: &str, class: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  priorityClassName: {class}
  containers: [{{name: main, image: "busybox:1.36", resources: {{requests: {{cpu: 1500m}}}}}}]
"#
        )
    };
    apply(
        &plane,
        &k,
        r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
"#,
    );
    apply(&plane, &k, &pod("victim", "low"));
    let pods: Api<Pod> = Api::namespaced(plane.apiserver.client().await.unwrap(), "default");
    let bound = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get(name).await.ok()?.spec?.node_name }
    };
    wait_until(
        "the low-priority pod bound",
        Duration::from_secs(60),
        || bound("victim"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));

    // The node has room for one of them: the high-priority pod takes it, the other is evicted.
    apply(&plane, &k, &pod("preemptor", "high"));
    let node = wait_until(
        "the high-priority pod bound",
        Duration::from_secs(60),
        || bound("preemptor"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs()));
    assert_eq!(node, "small-0");
    assert!(
        pods.get_opt("victim").await.unwrap().is_none(),
        "the victim is still there"
    );
}
