//! configMap, secret, downwardAPI and projected volumes on a real kubelet node (as root):
//! their files as a container sees them (items, modes, fsGroup, the secret's tmpfs), the
//! service account token volume every pod gets (a token that authenticates as the pod's
//! account, the cluster CA, the namespace), a ConfigMap update reaching a running container,
//! and FailedMount for what cannot be mounted.

use std::time::Duration;

use anyhow::Result;
use baton_test_harness::{Binary, NodeCluster, wait_until, waiting_reason};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// The value printed as `key=value`, if the container printed it.
fn printed(lines: &[String], key: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

const SCRIPT: &str = r#"
echo "config=$(cat /etc/config/key)"
echo "config-bin=$(od -An -tx1 /etc/config/bin | tr -d ' ')"
echo "secret=$(cat /etc/secret/db/password)"
echo "secret-file=$(stat -L -c '%g %a' /etc/secret/db/password)"
echo "secret-fs=$(awk '$2 == "/etc/secret" { print $3 }' /proc/mounts)"
echo "secret-keys=$(ls /etc/secret | tr '\n' ' ')"
echo "info-name=$(cat /etc/info/name)"
echo "info-labels=$(cat /etc/info/labels | tr '\n' ';')"
echo "info-memory=$(cat /etc/info/memory)"
echo "info-mode=$(stat -L -c '%a' /etc/info/name)"
echo "projected=$(cat /etc/projected/config/key),$(cat /etc/projected/password),$(cat /etc/projected/namespace)"
echo "projected-mode=$(stat -L -c '%a' /etc/projected/password)"
echo "projected-fs=$(awk '$2 == "/etc/projected" { print $3 }' /proc/mounts)"
echo "optional=$(ls /etc/optional | wc -l)"
SA=/var/run/secrets/kubernetes.io/serviceaccount
echo "sa-files=$(ls $SA | tr '\n' ' ')"
echo "sa-namespace=$(cat $SA/namespace)"
echo "sa-ca=$(tr -d '\n' < $SA/ca.crt)"
echo "sa-token=$(cat $SA/token)"
echo "sa-writable=$(touch $SA/x 2>/dev/null && echo yes || echo no)"
while true; do echo "live=$(cat /etc/config/key)"; sleep 1; done
"#;

/// Who `token` authenticates as, asked with a client that holds only the token.
async fn whoami(
    cluster: &NodeCluster,
    token: &str,
) -> Result<k8s_openapi::api::authentication::v1::SelfSubjectReview> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let path = cluster.server.token_kubeconfig("pod-token", token)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let api: Api<SelfSubjectReview> = Api::all(kube::Client::try_from(config)?);
    Ok(api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?)
}

#[tokio::test]
async fn config_map_secret_downward_api_and_projected_volumes() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-volumes", &[]).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "app-config" },
                "data": { "key": "value-1", "other": "x" },
                "binaryData": { "bin": "AAH/" },
            }))?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "app-secret" },
                "stringData": { "password": "hunter2", "user": "admin" },
            }))?,
        )
        .await?;

    let mounts = json!([
        { "name": "config", "mountPath": "/etc/config" },
        { "name": "secret", "mountPath": "/etc/secret", "readOnly": true },
        { "name": "info", "mountPath": "/etc/info" },
        { "name": "projected", "mountPath": "/etc/projected" },
        { "name": "optional", "mountPath": "/etc/optional" },
    ]);
    let pod = cluster
        .create_pod(
            "volumes",
            SCRIPT,
            json!({
                "metadata": { "labels": { "app": "web", "tier": "front" } },
                "spec": {
                    "securityContext": { "fsGroup": 2000 },
                    "containers": [{
                        "name": "main",
                        "image": cluster.image,
                        "command": ["sh", "-c", SCRIPT],
                        "volumeMounts": mounts,
                        "resources": { "requests": { "memory": "32Mi" } },
                    }],
                    "volumes": [
                        { "name": "config", "configMap": { "name": "app-config" } },
                        { "name": "secret", "secret": {
                            "secretName": "app-secret",
                            "defaultMode": 0o400,
                            "items": [{ "key": "password", "path": "db/password" }],
                        } },
                        { "name": "info", "downwardAPI": { "items": [
                            { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                            { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                            { "path": "memory", "resourceFieldRef": {
                                "containerName": "main",
                                "resource": "requests.memory",
                                "divisor": "1Mi",
                            } },
                        ] } },
                        { "name": "projected", "projected": {
                            "defaultMode": 0o600,
                            "sources": [
                                { "configMap": { "name": "app-config", "items": [
                                    { "key": "key", "path": "config/key" },
                                ] } },
                                { "secret": { "name": "app-secret" } },
                                { "downwardAPI": { "items": [
                                    { "path": "namespace", "fieldRef": { "fieldPath": "metadata.namespace" } },
                                ] } },
                            ],
                        } },
                        { "name": "optional", "configMap": { "name": "absent", "optional": true } },
                    ],
                },
            }),
        )
        .await?;
    let lines = wait_until(
        "the container's report",
        Duration::from_secs(90),
        || async {
            let lines = cluster.stdout_lines(&pod);
            lines
                .iter()
                .any(|line| line.starts_with("live="))
                .then_some(lines)
        },
    )
    .await;
    let lines = match lines {
        Ok(lines) => lines,
        Err(err) => panic!(
            "{err}\nlog: {:?}\nkubelet log:\n{}",
            cluster.stdout_lines(&pod),
            cluster.node.log()
        ),
    };
    let get = |key: &str| printed(&lines, key).unwrap_or_else(|| panic!("{key} in {lines:?}"));
    assert_eq!(get("config"), "value-1");
    assert_eq!(get("config-bin"), "0001ff");
    assert_eq!(get("secret"), "hunter2");
    // defaultMode 0400 plus group read for the fsGroup, which owns the file.
    assert_eq!(get("secret-file"), "2000 440");
    assert_eq!(get("secret-fs"), "tmpfs", "secrets live on a tmpfs");
    assert_eq!(get("secret-keys"), "db ", "only the listed item");
    assert_eq!(get("info-name"), "volumes");
    assert_eq!(get("info-labels"), "app=\"web\";tier=\"front\"");
    assert_eq!(get("info-memory"), "32");
    assert_eq!(get("info-mode"), "644");
    assert_eq!(get("projected"), "value-1,hunter2,default");
    assert_eq!(get("projected-mode"), "640");
    assert_eq!(get("projected-fs"), "tmpfs");
    assert_eq!(get("optional"), "0");

    // The service account token volume: the token authenticates as the pod's account.
    assert_eq!(get("sa-files"), "ca.crt namespace token ");
    assert_eq!(get("sa-namespace"), "default");
    let ca = std::fs::read_to_string(cluster.server.pki_dir().join("ca.crt"))?;
    assert_eq!(get("sa-ca"), ca.replace('\n', ""));
    assert_eq!(
        get("sa-writable"),
        "no",
        "the token volume is mounted read-only"
    );
    let review = whoami(&cluster, &get("sa-token")).await?;
    assert_eq!(
        review
            .status
            .unwrap()
            .user_info
            .unwrap()
            .username
            .as_deref(),
        Some("system:serviceaccount:default:default")
    );

    // An update of the ConfigMap reaches the running container.
    config_maps
        .patch(
            "app-config",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "key": "value-2" } })),
        )
        .await?;
    let updated = wait_until(
        "the running container to read the new value",
        Duration::from_secs(150),
        || async {
            cluster
                .stdout_lines(&pod)
                .iter()
                .any(|line| line == "live=value-2")
                .then_some(())
        },
    )
    .await;
    if let Err(err) = updated {
        panic!("{err}\nkubelet log:\n{}", cluster.node.log());
    }
    let status = cluster.pods().get("volumes").await?.status.unwrap();
    let restarts = status.container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0, "the update needs no restart");
    Ok(())
}

#[tokio::test]
async fn volumes_that_cannot_be_mounted_keep_the_pod_creating() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-failed-mount", &[]).await?;
    let mount = json!([{ "name": "config", "mountPath": "/etc/config" }]);
    let with_volume = |volume: serde_json::Value| {
        json!({ "spec": {
            "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", "sleep 3600"],
                "volumeMounts": mount,
            }],
            "volumes": [volume],
        } })
    };
    cluster
        .create_pod(
            "missing-config",
            "sleep 3600",
            with_volume(json!({ "name": "config", "configMap": { "name": "does-not-exist" } })),
        )
        .await?;
    // A service account that does not exist (yet) gets no token.
    let mut ghost = with_volume(json!({ "name": "config", "projected": { "sources": [
        { "serviceAccountToken": { "path": "token", "expirationSeconds": 3600 } },
    ] } }));
    ghost["spec"]["serviceAccountName"] = json!("ghost");
    cluster.create_pod("token", "sleep 3600", ghost).await?;

    let note = wait_until("a FailedMount event", Duration::from_secs(60), || async {
        cluster
            .event_notes("missing-config", "FailedMount")
            .await
            .into_iter()
            .next()
    })
    .await?;
    assert_eq!(
        note,
        "MountVolume.SetUp failed for volume \"config\" : configmap \"does-not-exist\" not found"
    );
    let note = wait_until("a FailedMount event", Duration::from_secs(60), || async {
        cluster
            .event_notes("token", "FailedMount")
            .await
            .into_iter()
            .next()
    })
    .await?;
    assert!(
        note.starts_with("MountVolume.SetUp failed for volume ")
            && note.contains(r#"failed to fetch token: serviceaccounts "ghost" not found"#),
        "{note}"
    );
    for name in ["missing-config", "token"] {
        let reason = cluster
            .wait_for("ContainerCreating", name, waiting_reason)
            .await;
        assert_eq!(reason, "ContainerCreating");
    }

    // Once the ConfigMap exists, the pod starts.
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "does-not-exist" },
                "data": { "key": "now it does" },
            }))?,
        )
        .await?;
    // Once the service account exists, the other gets its token and starts.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(cluster.client.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "ghost" } }))?,
        )
        .await?;
    for name in ["missing-config", "token"] {
        cluster
            .wait_for("the pod to run", name, |pod| {
                (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
            })
            .await;
    }
    Ok(())
}

#[tokio::test]
async fn a_sub_path_expression_puts_the_pod_under_its_own_name() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-subpathexpr", &[]).await?;
    let script = "echo hi > /logs/hello && echo \"seen=$(cat /all/$POD_NAME/hello)\" && sleep 3600";
    let spec = |sub_path: serde_json::Value| {
        let mut mount = json!({ "name": "work", "mountPath": "/logs" });
        if let (Some(mount), Some(extra)) = (mount.as_object_mut(), sub_path.as_object()) {
            mount.extend(extra.clone());
        }
        json!({ "spec": {
            "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", script],
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "volumeMounts": [mount, { "name": "work", "mountPath": "/all" }],
            }],
            "volumes": [{ "name": "work", "emptyDir": {} }],
        } })
    };
    cluster
        .create_pod(
            "writer-0",
            script,
            spec(json!({ "subPathExpr": "$(POD_NAME)" })),
        )
        .await?;
    let pods = cluster.pods();
    let seen = wait_until("the pod to print", Duration::from_secs(60), || async {
        let logs = pods.logs("writer-0", &Default::default()).await.ok()?;
        let lines: Vec<String> = logs.lines().map(str::to_owned).collect();
        printed(&lines, "seen")
    })
    .await?;
    assert_eq!(
        seen, "hi",
        "the file is under the pod's own name in the volume"
    );

    // subPath and subPathExpr together are refused, naming the field.
    let both = cluster
        .create_pod(
            "both",
            script,
            spec(json!({ "subPath": "a", "subPathExpr": "$(POD_NAME)" })),
        )
        .await
        .unwrap_err();
    assert!(
        both.to_string()
            .contains("spec.containers[0].volumeMounts[0].subPathExpr"),
        "{both}"
    );
    assert!(both.to_string().contains("mutually exclusive"), "{both}");
    Ok(())
}
