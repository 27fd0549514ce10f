//! PersistentVolumes on a real kubelet node (as root), with the scheduler and the volume
//! binder: the default StorageClass and its local-path provisioner (a claim waits for its
//! pod, gets a volume on the pod's node, keeps its data across pods, and the volume goes with
//! the claim), and a static volume bound by a claim of no class, kept (Retain) once released.

use std::time::Duration;

use anyhow::Result;
use baton_test_harness::{Binary, NodeCluster, kubectl_binaries, wait_until};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

fn claim(name: &str, class: Option<&str>) -> Result<PersistentVolumeClaim> {
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}},
        },
    });
    if let Some(class) = class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    Ok(serde_json::from_value(claim)?)
}

/// A pod the scheduler places, with claim `claim` at /data, running `command`.
async fn pod_with_claim(
    cluster: &NodeCluster,
    name: &str,
    claim: &str,
    command: &str,
) -> Result<Pod> {
    let extra = json!({
        "spec": {
            "nodeName": null,
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", command],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
        },
    });
    cluster.create_pod(name, command, extra).await
}

async fn printed(cluster: &NodeCluster, pod: &str, line: &str) -> Result<()> {
    wait_until(
        &format!("pod {pod} to print {line:?}"),
        Duration::from_secs(90),
        || async {
            // Through the API server: the pod may be on either node.
            let logs = cluster
                .server
                .kubectl(&kubectl_binaries()[0], &["logs", pod]);
            String::from_utf8_lossy(&logs.stdout)
                .lines()
                .any(|l| l == line)
                .then_some(())
        },
    )
    .await
    .map_err(|e| {
        let state = cluster.server.kubectl(
            &kubectl_binaries()[0],
            &["get", "pods,pvc,pv,events", "-o", "wide"],
        );
        anyhow::anyhow!(
            "{e}\n{}\n{}",
            String::from_utf8_lossy(&state.stdout),
            cluster.node.log()
        )
    })
}

#[tokio::test]
async fn the_default_class_provisions_on_the_pods_node_and_static_volumes_bind() -> Result<()> {
    let cluster =
        NodeCluster::start_with(&binary(), &["storage-a", "storage-b"], &[], true).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(cluster.client.clone());

    // The controller manager made the default class, as kind and k3s ship theirs.
    let classes = wait_until(
        "the default StorageClass",
        Duration::from_secs(30),
        || async {
            let out = cluster
                .server
                .kubectl(&kubectl_binaries()[0], &["get", "storageclass"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("standard").then_some(text)
        },
    )
    .await?;
    let row: Vec<&str> = classes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..6],
        [
            "standard",
            "(default)",
            "baton.dev/local-path",
            "Delete",
            "WaitForFirstConsumer",
            "false"
        ],
        "{classes}"
    );

    // A claim naming no class gets the default one, and waits for its pod.
    claims
        .create(&PostParams::default(), &claim("data", None)?)
        .await?;
    let created = claims.get("data").await?;
    assert_eq!(
        created.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("standard")
    );
    wait_until(
        "the claim to wait for its pod",
        Duration::from_secs(30),
        || async {
            let out = cluster.server.kubectl(
                &kubectl_binaries()[0],
                &[
                    "get",
                    "events",
                    "--field-selector=reason=WaitForFirstConsumer",
                ],
            );
            String::from_utf8_lossy(&out.stdout)
                .contains("waiting for first consumer to be created before binding")
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        cluster.kubectl_ok(&["get", "pvc", "data", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // Its first pod: scheduled, the claim gets a volume on that node, the pod writes to it.
    pod_with_claim(
        &cluster,
        "writer",
        "data",
        "echo kept > /data/file && echo written && sleep 3600",
    )
    .await?;
    printed(&cluster, "writer", "written").await?;
    let bound = claims.get("data").await?;
    let volume_name = bound.spec.as_ref().unwrap().volume_name.clone().unwrap();
    assert_eq!(
        volume_name,
        format!("pvc-{}", bound.metadata.uid.clone().unwrap())
    );
    let pvc_row = cluster.kubectl_ok(&["get", "pvc", "data", "--no-headers"]);
    let pvc_row: Vec<&str> = pvc_row.split_whitespace().collect();
    assert_eq!(
        pvc_row[..6],
        [
            "data",
            "Bound",
            volume_name.as_str(),
            "16Mi",
            "RWO",
            "standard"
        ]
    );
    let pv_row = cluster.kubectl_ok(&["get", "pv", &volume_name, "--no-headers"]);
    let pv_row: Vec<&str> = pv_row.split_whitespace().collect();
    assert_eq!(
        pv_row[..7],
        [
            volume_name.as_str(),
            "16Mi",
            "RWO",
            "Delete",
            "Bound",
            "default/data",
            "standard"
        ]
    );
    // The volume is on the node the scheduler chose for the writer.
    let node_of = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let writer_node = node_of(&cluster.pods().get("writer").await?);
    let volume = volumes.get(&volume_name).await?;
    let affinity = serde_json::to_value(&volume.spec.as_ref().unwrap().node_affinity)?;
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        writer_node.as_str()
    );

    // The data outlives the pod.
    cluster
        .pods()
        .delete("writer", &DeleteParams::default().grace_period(0))
        .await?;
    pod_with_claim(
        &cluster,
        "reader",
        "data",
        "echo read=$(cat /data/file) && sleep 3600",
    )
    .await?;
    printed(&cluster, "reader", "read=kept").await?;
    // Of two nodes, the scheduler put the reader where the volume is.
    assert_eq!(node_of(&cluster.pods().get("reader").await?), writer_node);

    // Without its pod and claim the volume goes (reclaim policy Delete).
    cluster
        .pods()
        .delete("reader", &DeleteParams::default().grace_period(0))
        .await?;
    wait_until("the reader gone", Duration::from_secs(60), || async {
        matches!(cluster.pods().get_opt("reader").await, Ok(None)).then_some(())
    })
    .await?;
    claims.delete("data", &DeleteParams::default()).await?;
    wait_until(
        "the provisioned volume deleted",
        Duration::from_secs(60),
        || async { matches!(volumes.get_opt(&volume_name).await, Ok(None)).then_some(()) },
    )
    .await?;

    // A static volume binds a claim of no class at once, and is kept once released.
    let static_dir = baton_test_harness::TempDir::new("static-volume")?;
    let static_dir = static_dir.path().join("data");
    let static_volume: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "static"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
            "storageClassName": "",
            "hostPath": {"path": static_dir.display().to_string(), "type": "DirectoryOrCreate"},
        },
    }))?;
    volumes
        .create(&PostParams::default(), &static_volume)
        .await?;
    wait_until(
        "the static volume Available",
        Duration::from_secs(30),
        || async {
            let v = volumes.get("static").await.ok()?;
            (v.status?.phase.as_deref() == Some("Available")).then_some(())
        },
    )
    .await?;
    claims
        .create(&PostParams::default(), &claim("manual", Some(""))?)
        .await?;
    wait_until(
        "the claim bound to the static volume",
        Duration::from_secs(30),
        || async {
            let c = claims.get("manual").await.ok()?;
            let bound = c.status?.phase.as_deref() == Some("Bound")
                && c.spec?.volume_name.as_deref() == Some("static");
            bound.then_some(())
        },
    )
    .await?;
    claims.delete("manual", &DeleteParams::default()).await?;
    wait_until(
        "the static volume Released",
        Duration::from_secs(30),
        || async {
            let v = volumes.get("static").await.ok()?;
            (v.status?.phase.as_deref() == Some("Released")).then_some(())
        },
    )
    .await?;
    // ...and kept so (reclaim policy Retain).
    let changed = wait_until(
        "the static volume to change",
        Duration::from_secs(3),
        || async {
            let v = volumes.get_opt("static").await.ok()?;
            let phase = v.and_then(|v| v.status?.phase);
            (phase.as_deref() != Some("Released")).then_some(phase)
        },
    )
    .await;
    assert!(changed.is_err(), "{changed:?}");
    Ok(())
}
