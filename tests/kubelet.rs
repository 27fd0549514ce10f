//! The kubelet as a node: real etcd and API server, Debian's docker-registry serving the
//! busybox test image built from busybox-static, and `baton kubelet` running pods through
//! its libcontainer runtime process, as root. Pods are bound by setting spec.nodeName.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use baton_cluster::state::process_alive;
use baton_test_harness::{
    Binary, NodeCluster, main_status, pod_phase as phase, wait_until, waiting_reason,
};
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::watcher;
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

#[tokio::test]
async fn pods_run_complete_and_keep_their_output() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-run", &[]).await?;
    let pod = cluster
        .create_pod("hello", "echo hello from baton; sleep 3600", json!({}))
        .await?;
    let uid = pod.metadata.uid.clone().unwrap();
    let status = cluster
        .wait_for("the pod to run", "hello", |pod| {
            (phase(pod) == Some("Running"))
                .then(|| main_status(pod))
                .flatten()
        })
        .await;
    assert!(status.ready, "{status:?}");
    assert!(status.state.unwrap().running.is_some());
    assert!(status.container_id.unwrap().starts_with("baton://"));
    assert!(status.image_id.contains("sha256:"), "{}", status.image_id);
    let conditions = cluster
        .pods()
        .get("hello")
        .await?
        .status
        .unwrap()
        .conditions
        .unwrap();
    for kind in [
        "Ready",
        "ContainersReady",
        "Initialized",
        "PodReadyToStartContainers",
    ] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True"),
            "{kind} in {conditions:?}"
        );
    }
    // The container's output is in its CRI log.
    let log = cluster
        .node
        .pod_logs_dir()
        .join(format!("default_hello_{uid}"))
        .join("main/0.log");
    wait_until("the output in the log", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains(" stdout F hello from baton"))
    })
    .await?;
    // kubectl reads the status as users expect.
    for kubectl in baton_test_harness::kubectl_binaries() {
        let out = cluster
            .server
            .kubectl(&kubectl, &["get", "pod", "hello", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("1/1") && text.contains("Running"), "{text}");
    }

    // A pod whose command ends with 0 and restartPolicy Never succeeds.
    cluster
        .create_pod(
            "once",
            "echo done",
            json!({ "spec": { "restartPolicy": "Never" } }),
        )
        .await?;
    let terminated = cluster
        .wait_for("the pod to succeed", "once", |pod| {
            (phase(pod) == Some("Succeeded"))
                .then(|| main_status(pod)?.state?.terminated)
                .flatten()
        })
        .await;
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );

    // Graceful deletion: the container gets SIGTERM, exits, and the pod is removed.
    cluster
        .pods()
        .delete("hello", &DeleteParams::default())
        .await?;
    let pods = cluster.pods();
    wait_until(
        "the deleted pod to be gone",
        Duration::from_secs(30),
        || async { pods.get_opt("hello").await.ok()?.is_none().then_some(()) },
    )
    .await?;
    assert!(!log.exists(), "the pod's logs are removed with it");
    Ok(())
}

/// The pid the runtime recorded for sandbox `uid`'s PID namespace holder, under `runtime_root`
/// (or one of its `processes/N`).
fn pid_holder_of(runtime_root: &std::path::Path, uid: &str) -> Option<u32> {
    let roots = std::iter::once(runtime_root.to_path_buf()).chain(
        std::fs::read_dir(runtime_root.join("processes"))
            .into_iter()
            .flatten()
            .filter_map(|entry| Some(entry.ok()?.path())),
    );
    roots
        .filter_map(|root| {
            std::fs::read_to_string(root.join("sandboxes").join(uid).join("pid-holder")).ok()
        })
        .find_map(|text| text.trim().parse().ok())
}

#[tokio::test]
async fn containers_of_a_pod_sharing_its_process_namespace_see_one_another() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-share-pid", &[]).await?;
    let container = |name: &str, command: &str| json!({ "name": name, "image": cluster.image, "command": ["sh", "-c", command] });
    let pod = cluster
        .create_pod(
            "shared",
            "",
            json!({ "spec": {
                "shareProcessNamespace": true,
                "containers": [
                    container("main", "exec sleep 3601"),
                    container(
                        "watcher",
                        "until ps | grep -q '[s]leep 3601'; do sleep 0.2; done; echo saw main; \
                         echo pid 1 is $(tr '\\0' ' ' < /proc/1/cmdline); sleep 3600",
                    ),
                ],
            }}),
        )
        .await?;
    let uid = pod.metadata.uid.clone().unwrap();
    cluster
        .wait_for("the pod to run", "shared", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    // The watcher sees main's process; PID 1 of their namespace is the holder, as upstream's
    // pause container.
    let log = cluster
        .node
        .pod_logs_dir()
        .join(format!("default_shared_{uid}"))
        .join("watcher/0.log");
    let seen = wait_until(
        "the watcher to see main",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|text| text.contains("stdout F pid 1 is"))
        },
    )
    .await?;
    assert!(seen.contains("stdout F saw main"), "{seen}");
    assert!(seen.contains(baton_runtime::PID_HOLDER_COMMAND), "{seen}");
    let holder = pid_holder_of(&cluster.node.runtime_root(), &uid).expect("the holder's pid");
    assert!(process_alive(holder));
    let cmdline = std::fs::read(format!("/proc/{holder}/cmdline"))?;
    assert!(
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == baton_runtime::PID_HOLDER_COMMAND.as_bytes()),
        "{cmdline:?}"
    );

    // A holder killed from outside takes the namespace and the containers with it, as a
    // killed pause container does upstream: the kubelet says the sandbox changed, a new
    // holder makes a new namespace, and the containers restart in it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    cluster
        .wait_for("both containers to restart and be ready", "shared", |pod| {
            let statuses = pod.status.clone()?.container_statuses?;
            (statuses.len() == 2 && statuses.iter().all(|s| s.restart_count >= 1 && s.ready))
                .then_some(())
        })
        .await;
    let renewed = wait_until("a new holder", Duration::from_secs(30), || async {
        pid_holder_of(&cluster.node.runtime_root(), &uid)
            .filter(|pid| *pid != holder && process_alive(*pid))
    })
    .await?;
    let restarted_log = log.with_file_name("1.log");
    let seen = wait_until(
        "the restarted watcher to see main",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&restarted_log)
                .ok()
                .filter(|text| text.contains("stdout F pid 1 is"))
        },
    )
    .await?;
    assert!(seen.contains(baton_runtime::PID_HOLDER_COMMAND), "{seen}");
    wait_until(
        "the SandboxChanged event",
        Duration::from_secs(10),
        || async {
            let notes = cluster.event_notes("shared", "SandboxChanged").await;
            notes
                .iter()
                .any(|note| note == "Pod sandbox changed, it will be killed and re-created.")
                .then_some(())
        },
    )
    .await?;
    // The killed holder does not stay a zombie.
    wait_until(
        "the killed holder to be reaped",
        Duration::from_secs(10),
        || async { (!std::path::Path::new(&format!("/proc/{holder}")).exists()).then_some(()) },
    )
    .await?;
    let holder = renewed;

    // `kubectl debug --copy-to` makes such a pod (sharing processes is its default).
    let image = format!("--image={}", cluster.image);
    cluster.kubectl_ok(&[
        "debug",
        "shared",
        "--copy-to=shared-copy",
        "--same-node",
        "--container=dbg",
        &image,
        "--",
        "sh",
        "-c",
        "echo pid 1 is $(tr '\\0' ' ' < /proc/1/cmdline); sleep 3600",
    ]);
    let pods = cluster.pods();
    wait_until("the debug copy to run", Duration::from_secs(30), || async {
        let logs = pods
            .logs(
                "shared-copy",
                &kube::api::LogParams {
                    container: Some("dbg".into()),
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        logs.contains(baton_runtime::PID_HOLDER_COMMAND)
            .then_some(())
    })
    .await?;

    // Deleting the pod ends the holder with it.
    cluster
        .pods()
        .delete("shared", &DeleteParams::default())
        .await?;
    let pods = cluster.pods();
    wait_until(
        "the deleted pod to be gone",
        Duration::from_secs(30),
        || async { pods.get_opt("shared").await.ok()?.is_none().then_some(()) },
    )
    .await?;
    // The holder ends with the pod's sandbox, and is reaped.
    wait_until(
        "the holder to end and be reaped",
        Duration::from_secs(10),
        || async { (!std::path::Path::new(&format!("/proc/{holder}")).exists()).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn failing_containers_restart_with_back_off() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-crash", &[]).await?;
    cluster
        .create_pod("crasher", "echo crashing; exit 3", json!({}))
        .await?;
    let status = cluster
        .wait_for("CrashLoopBackOff", "crasher", |pod| {
            let status = main_status(pod)?;
            let waiting = status.state.clone()?.waiting?;
            (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then_some(status)
        })
        .await;
    assert!(status.restart_count >= 1, "{status:?}");
    let last = status.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let waiting = status.state.unwrap().waiting.unwrap();
    assert!(
        waiting
            .message
            .unwrap()
            .starts_with("back-off 10s restarting failed container=main pod=crasher_default("),
    );

    // restartPolicy Never: the pod fails and is not restarted.
    cluster
        .create_pod(
            "fails",
            "exit 7",
            json!({ "spec": { "restartPolicy": "Never" } }),
        )
        .await?;
    let terminated = cluster
        .wait_for("the pod to fail", "fails", |pod| {
            (phase(pod) == Some("Failed"))
                .then(|| main_status(pod)?.state?.terminated)
                .flatten()
        })
        .await;
    assert_eq!(terminated.exit_code, 7);
    assert_eq!(
        main_status(&cluster.pods().get("fails").await?)
            .unwrap()
            .restart_count,
        0
    );
    Ok(())
}

#[tokio::test]
async fn image_and_memory_errors_show_upstream_reasons() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-errors", &[]).await?;
    let missing = cluster.image.replace(":1.35", ":nope");
    let pod = json!({ "spec": { "containers": [{ "name": "main", "image": missing, "command": ["true"] }] } });
    cluster.create_pod("no-image", "true", pod).await?;
    let waiting = cluster
        .wait_for("ErrImagePull", "no-image", |pod| {
            let waiting = main_status(pod)?.state?.waiting?;
            matches!(
                waiting.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
            .then_some(waiting)
        })
        .await;
    // The pull failure, in the words containerd uses, is on the pod's events and in the
    // waiting message.
    let failure = format!(
        "failed to pull and unpack image \"{missing}\": failed to resolve reference \"{missing}\": {missing}: not found"
    );
    let message = waiting.message.unwrap_or_default();
    assert!(
        message == failure || message == format!("Back-off pulling image \"{missing}\""),
        "{message}"
    );
    let notes = cluster.event_notes("no-image", "Failed").await;
    assert!(
        notes.contains(&format!("Failed to pull image \"{missing}\": {failure}")),
        "{notes:?}"
    );

    // A name that does not parse is never pulled: upstream's reason and message.
    let pod = json!({ "spec": { "containers": [{ "name": "main", "image": "Busybox:1", "command": ["true"] }] } });
    cluster.create_pod("bad-name", "true", pod).await?;
    let waiting = cluster
        .wait_for("InvalidImageName", "bad-name", |pod| {
            let waiting = main_status(pod)?.state?.waiting?;
            (waiting.reason.as_deref() == Some("InvalidImageName")).then_some(waiting)
        })
        .await;
    let expected = "Failed to apply default image tag \"Busybox:1\": couldn't parse image name \"Busybox:1\": invalid reference format: repository name (library/Busybox) must be lowercase";
    assert_eq!(waiting.message.as_deref(), Some(expected));
    let notes = cluster.event_notes("bad-name", "InspectFailed").await;
    assert!(notes.iter().any(|n| n == expected), "{notes:?}");
    assert!(cluster.event_notes("bad-name", "Pulling").await.is_empty());

    // Its logs cannot be read yet: the kubelet's refusal reaches kubectl as a Status.
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let out = cluster.server.kubectl(&kubectl, &["logs", "no-image"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "Error from server (BadRequest): container \"main\" in pod \"no-image\" is waiting to start"
        ),
        "{stderr}"
    );

    // Over its memory limit, a container is OOMKilled.
    cluster
        .create_pod(
            "hog",
            "dd if=/dev/zero of=/dev/null bs=128M count=1",
            json!({ "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": cluster.image,
                    "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
                    "resources": { "limits": { "memory": "16Mi" } },
                }],
            } }),
        )
        .await?;
    let terminated = cluster
        .wait_for("the OOM kill", "hog", |pod| {
            main_status(pod)?.state?.terminated
        })
        .await;
    assert_eq!(
        (terminated.reason.as_deref(), terminated.exit_code),
        (Some("OOMKilled"), 137)
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_kubelet_keeps_pods_running() -> Result<()> {
    let mut cluster = NodeCluster::start(&binary(), "node-restart", &[]).await?;
    cluster
        .create_pod("steady", "sleep 3600", json!({}))
        .await?;
    let before = cluster
        .wait_for("the pod to run", "steady", |pod| {
            (phase(pod) == Some("Running"))
                .then(|| main_status(pod))
                .flatten()
        })
        .await;
    let ip_before = cluster
        .pods()
        .get("steady")
        .await?
        .status
        .and_then(|s| s.pod_ip);
    assert!(ip_before.is_some(), "the pod has an IP on the pod network");
    let name = cluster.node.name.clone();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let renewed_before = leases.get(&name).await?.spec.and_then(|s| s.renew_time);
    // Every Ready condition the Node shows from here on: a restarted kubelet, whose Node has
    // its pod CIDR already, never reports the node NotReady (as upstream's does not).
    let ready_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let node_watch = {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let ready_seen = ready_seen.clone();
        let mut events = watcher::watcher(nodes, config).boxed();
        // The watch's initial list (the node as the old kubelet left it) before the restart.
        loop {
            match events.try_next().await? {
                Some(watcher::Event::InitDone) => break,
                Some(_) => {}
                None => anyhow::bail!("the Node watch ended before its initial list"),
            }
        }
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.try_next().await {
                if let watcher::Event::Apply(node) = event {
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready");
                    if let Some(ready) = ready {
                        let seen =
                            format!("{} ({})", ready.status, ready.message.unwrap_or_default());
                        ready_seen.lock().unwrap().push(seen);
                    }
                }
            }
        })
    };
    cluster.node.kubelet().restart()?;
    // The kubelet is back (it posts the node's first status, then renews its lease) and the
    // container is the same.
    let pods = cluster.pods();
    wait_until(
        "the restarted kubelet to renew its lease",
        Duration::from_secs(60),
        || async {
            let renewed = leases.get(&name).await.ok()?.spec?.renew_time;
            (renewed.is_some() && renewed != renewed_before).then_some(())
        },
    )
    .await?;
    let log_has = |text: &'static str| {
        let node = &cluster.node;
        move || std::future::ready(node.log().contains(text).then_some(()))
    };
    wait_until(
        "the new kubelet to take the container over",
        Duration::from_secs(60),
        log_has("took over a running container"),
    )
    .await?;
    let pod = pods.get("steady").await?;
    // The pod keeps its address: the restarted kubelet finds it attached.
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        ip_before
    );
    let after = main_status(&pod).unwrap();
    assert_eq!(after.container_id, before.container_id);
    assert_eq!(after.restart_count, 0);
    assert!(after.state.unwrap().running.is_some());
    node_watch.abort();
    let ready_seen = ready_seen.lock().unwrap().clone();
    assert!(
        ready_seen.iter().all(|seen| seen.starts_with("True")),
        "the Node's Ready condition after the restart: {ready_seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_logs_and_exec_reach_the_container() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-kubectl", &[]).await?;
    cluster
        .create_pod(
            "talker",
            "echo first; echo oops >&2; while true; do echo tick; sleep 0.2; done",
            json!({}),
        )
        .await?;
    cluster
        .wait_for("the pod to run", "talker", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    // The log has a few ticks after the first lines.
    let pods = cluster.pods();
    wait_until("a few ticks", Duration::from_secs(30), || async {
        let logs = pods.logs("talker", &Default::default()).await.ok()?;
        (logs.matches("tick").count() >= 3).then_some(())
    })
    .await?;
    for kubectl in baton_test_harness::kubectl_binaries() {
        let kubectl = kubectl.as_path();
        // kubectl logs: stdout and stderr, --tail, --timestamps.
        let out = cluster.server.kubectl(kubectl, &["logs", "talker"]);
        let logs = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // stdout and stderr are read apart, so only each one's own order is kept.
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.first(), Some(&"first"), "{logs}");
        assert!(lines.contains(&"oops") && lines.contains(&"tick"), "{logs}");
        let out = cluster
            .server
            .kubectl(kubectl, &["logs", "talker", "--tail=1", "--timestamps"]);
        let tail = String::from_utf8_lossy(&out.stdout);
        assert_eq!(tail.lines().count(), 1, "{tail}");
        assert!(
            tail.trim_end().ends_with(" tick") && tail.starts_with("20"),
            "{tail}"
        );

        // kubectl logs -f streams new lines as they come.
        let follow = cluster
            .server
            .kubectl_background(kubectl, &["logs", "-f", "talker", "--tail=1"])?;
        wait_until("followed lines", Duration::from_secs(30), || {
            std::future::ready((follow.output().matches("tick").count() >= 4).then_some(()))
        })
        .await?;
        drop(follow);

        // kubectl exec: output, stdin, and the command's exit code.
        let out = cluster.server.kubectl(
            kubectl,
            &[
                "exec",
                "talker",
                "--",
                "sh",
                "-c",
                "echo in-$(hostname); exit 7",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(7),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in-talker\n");
        let out = cluster.server.kubectl_with_input(
            kubectl,
            &["exec", "-i", "talker", "--", "sh", "-c", "tr a-z A-Z"],
            Some("shout\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
        // kubectl attach: the output from now on (no earlier line), as it comes.
        let attached = cluster
            .server
            .kubectl_background(kubectl, &["attach", "talker"])?;
        wait_until("attached output", Duration::from_secs(30), || {
            std::future::ready((attached.output().matches("tick").count() >= 3).then_some(()))
        })
        .await?;
        let seen = attached.output();
        assert!(
            !seen.contains("first") && !seen.contains("oops"),
            "attach shows only new output: {seen}"
        );
        drop(attached);

        let out = cluster
            .server
            .kubectl(kubectl, &["exec", "talker", "-c", "nope", "--", "true"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("container nope is not valid for pod talker"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // --previous shows the last run of a restarted container.
    cluster
        .create_pod(
            "restarter",
            "echo run-$(cat /proc/uptime | cut -d. -f1); sleep 1; exit 1",
            json!({}),
        )
        .await?;
    cluster
        .wait_for("a restart", "restarter", |pod| {
            (main_status(pod)?.restart_count >= 1).then_some(())
        })
        .await;
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let out = cluster
        .server
        .kubectl(&kubectl, &["logs", "restarter", "--previous"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("run-"));
    Ok(())
}

#[tokio::test]
async fn image_pull_secrets_open_a_registry_that_asks_for_a_password() -> Result<()> {
    use baton_test_harness::Lab;
    use baton_test_harness::registry::{
        Registry, TEST_PASSWORD, TEST_PASSWORD_BCRYPT, TEST_USERNAME,
    };
    let port = baton_test_harness::free_port()?;
    let private = format!("{}:{port}", Lab::gateway());
    let insecure = format!("--insecure-registry={private}");
    let cluster = NodeCluster::start(&binary(), "node-pull-secret", &[&insecure]).await?;
    let _registry = Registry::start_with_basic_auth_at(
        Lab::gateway(),
        port,
        TEST_USERNAME,
        TEST_PASSWORD_BCRYPT,
    )
    .await?;
    let image = format!("{private}/private:1");
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    baton_image_builder::build_busybox_image(
        std::path::Path::new(baton_image_builder::DEFAULT_BUSYBOX),
        &layout,
        &image,
    )?;
    baton_image_builder::push_layout_with_credentials(
        &layout,
        &image,
        true,
        Some((TEST_USERNAME, TEST_PASSWORD)),
    )
    .await?;

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), "default");
    let config = json!({ "auths": { private.clone(): {
        "username": TEST_USERNAME, "password": TEST_PASSWORD,
    } } });
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "registry-login" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": config.to_string() },
    }))?;
    secrets.create(&Default::default(), &secret).await?;
    let with_image = |secrets: serde_json::Value| {
        json!({ "spec": {
            "imagePullSecrets": secrets,
            "containers": [{
                "name": "main",
                "image": image,
                "command": ["sh", "-c", "echo pulled; sleep 3600"],
            }],
        } })
    };
    cluster
        .create_pod(
            "with-secret",
            "",
            with_image(json!([{ "name": "missing" }, { "name": "registry-login" }])),
        )
        .await?;
    cluster
        .create_pod("without-secret", "", with_image(json!([])))
        .await?;
    cluster
        .wait_for("the pod with the secret to run", "with-secret", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    let reason = cluster
        .wait_for(
            "the pod without the secret to fail its pull",
            "without-secret",
            |pod| waiting_reason(pod).filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff"),
        )
        .await;
    assert!(reason == "ErrImagePull" || reason == "ImagePullBackOff");
    let notes = cluster
        .event_notes("with-secret", "FailedToRetrieveImagePullSecret")
        .await;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Unable to retrieve some image pull secrets (missing)")),
        "{notes:?}"
    );

    // A service account's image pull secrets go to the pods that run as it and name none.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(cluster.client.clone(), "default");
    accounts
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "puller" },
                "imagePullSecrets": [{ "name": "registry-login" }],
            }))?,
        )
        .await?;
    let mut spec = with_image(json!([]));
    spec["spec"]["serviceAccountName"] = json!("puller");
    let pod = cluster.create_pod("as-puller", "", spec).await?;
    let names: Vec<String> = pod
        .spec
        .and_then(|s| s.image_pull_secrets)
        .into_iter()
        .flatten()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["registry-login"]);
    cluster
        .wait_for("the service account's pod to run", "as-puller", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    Ok(())
}

#[tokio::test]
async fn node_statistics_reach_kubectl_through_the_node_proxy() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-stats", &[]).await?;
    let image = cluster.image.clone();
    cluster
        .create_pod(
            "busy",
            "",
            json!({ "spec": {
                "containers": [{
                    "name": "worker",
                    "image": image,
                    "command": ["sh", "-c",
                        "dd if=/dev/zero of=/data/blob bs=1024 count=3072 2>/dev/null; echo written; \
                         i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 3600"],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                }],
                "volumes": [{ "name": "data", "emptyDir": {} }],
            } }),
        )
        .await?;
    cluster
        .wait_for("the pod to run", "busy", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let node = cluster.node.name.clone();
    let raw = |path: String| {
        let out = cluster.server.kubectl(&kubectl, &["get", "--raw", &path]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let summary_path = format!("/api/v1/nodes/{node}/proxy/stats/summary");
    // The container's CPU rate needs two readings a second apart; the file is written first.
    let summary = wait_until("the pod's statistics", Duration::from_secs(60), || {
        let out = cluster
            .server
            .kubectl(&kubectl, &["get", "--raw", &summary_path]);
        async move {
            let summary: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let pod = summary["pods"]
                .as_array()?
                .iter()
                .find(|p| p["podRef"]["name"] == "busy")?
                .clone();
            let written = pod["volume"][0]["usedBytes"].as_u64()? >= 3 << 20;
            let rate = pod["containers"][0]["cpu"]["usageNanoCores"].is_u64();
            (written && rate).then_some(summary)
        }
    })
    .await?;
    let node_stats = &summary["node"];
    assert_eq!(node_stats["nodeName"], node.as_str());
    for (what, value) in [
        ("node CPU time", &node_stats["cpu"]["usageCoreNanoSeconds"]),
        ("node working set", &node_stats["memory"]["workingSetBytes"]),
        ("node fs capacity", &node_stats["fs"]["capacityBytes"]),
        (
            "image fs use",
            &node_stats["runtime"]["imageFs"]["usedBytes"],
        ),
        ("pid limit", &node_stats["rlimit"]["maxpid"]),
    ] {
        assert!(value.as_u64().unwrap_or(0) > 0, "{what}: {node_stats}");
    }
    let pod = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "busy")
        .unwrap();
    assert_eq!(pod["podRef"]["namespace"], "default");
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "worker");
    assert!(
        container["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{pod}"
    );
    assert!(
        container["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{pod}"
    );
    assert!(
        container["logs"]["usedBytes"].as_u64().unwrap() > 0,
        "{pod}"
    );
    assert!(
        pod["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{pod}"
    );
    assert_eq!(pod["volume"][0]["name"], "data");
    // The emptyDir on disk counts towards the pod's ephemeral storage.
    assert!(
        pod["ephemeral-storage"]["usedBytes"].as_u64().unwrap() >= 3 << 20,
        "{pod}"
    );
    assert!(
        pod["process_stats"]["process_count"].as_u64().unwrap_or(0) >= 1,
        "{pod}"
    );
    assert!(pod["network"]["interfaces"].is_array(), "{pod}");

    // CPU and memory only, and the metrics metrics-server scrapes.
    let small: serde_json::Value =
        serde_json::from_str(&raw(format!("{summary_path}?only_cpu_and_memory=true")))?;
    assert!(small["node"]["cpu"].is_object() && small["node"]["fs"].is_null());
    let metrics = raw(format!("/api/v1/nodes/{node}/proxy/metrics/resource"));
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "container_memory_working_set_bytes{container=\"worker\",namespace=\"default\",pod=\"busy\"} "
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nnode_cpu_usage_seconds_total "),
        "{metrics}"
    );
    // The node's pods, and a path the kubelet does not serve.
    let pods: serde_json::Value =
        serde_json::from_str(&raw(format!("/api/v1/nodes/{node}/proxy/pods")))?;
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["name"] == "busy")
    );
    // kubectl top, through the resource metrics API the API server serves from the kubelets.
    let top = |args: &[&str]| {
        let out = cluster.server.kubectl(&kubectl, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let nodes = wait_until("kubectl top node", Duration::from_secs(30), || {
        let (ok, stdout, _) = top(&["top", "node", "--no-headers"]);
        let found = ok && stdout.contains(node.as_str()) && !stdout.contains("<unknown>");
        async move { found.then_some(stdout) }
    })
    .await?;
    // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
    let row: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(row.len(), 5, "{nodes}");
    let value = |cell: &str, unit: &str| -> u64 {
        cell.strip_suffix(unit)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{cell} is not a count of {unit}"))
    };
    assert!(value(row[3], "Mi") > 0, "the node's memory: {nodes}");
    value(row[1], "m");
    value(row[4], "%");
    let (ok, pods_top, stderr) = top(&["top", "pod", "busy", "--containers", "--no-headers"]);
    assert!(ok, "{stderr}");
    // POD NAME CPU(cores) MEMORY(bytes)
    let row: Vec<&str> = pods_top.split_whitespace().collect();
    assert_eq!(&row[..2], ["busy", "worker"], "{pods_top}");
    value(row[2], "m");
    value(row[3], "Mi");
    // A pod that does not exist is upstream's not-found for the pod itself.
    let (ok, _, stderr) = top(&["top", "pod", "no-such-pod"]);
    assert!(
        !ok && stderr.contains(r#"pods "no-such-pod" not found"#),
        "{stderr}"
    );

    // Refusals: a path the kubelet does not serve, a port that is not the kubelet's, a node
    // that does not exist.
    let refusal = |path: String| {
        let out = cluster.server.kubectl(&kubectl, &["get", "--raw", &path]);
        assert!(!out.status.success(), "{path} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (path, expected) in [
        (format!("/api/v1/nodes/{node}/proxy/nope"), "NotFound"),
        (
            format!("/api/v1/nodes/{node}:2379/proxy/health"),
            "only the kubelet's port",
        ),
        (
            "/api/v1/nodes/no-such-node/proxy/stats/summary".to_owned(),
            "nodes \"no-such-node\" not found",
        ),
    ] {
        let stderr = refusal(path);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    Ok(())
}

/// One HTTP/1.0 GET through a local port; the body of the answer.
fn http_get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let body_at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |at| at + 4);
    Ok(answer.split_off(body_at))
}

#[tokio::test]
async fn kubectl_port_forward_reaches_the_pods_port() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-portfwd", &[]).await?;
    // busybox httpd on the pod's 8080, with a small page and a 1 MiB file.
    cluster
        .create_pod(
            "web",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && \
             head -c 1048576 /dev/zero | tr '\\0' x > /www/big && \
             exec httpd -f -p 8080 -h /www",
            json!({}),
        )
        .await?;
    cluster
        .wait_for("the pod to run", "web", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    // kubectl 1.32 and 1.33 tunnel SPDY through a WebSocket first; with the variable off
    // they upgrade the connection to SPDY itself.
    for kubectl in baton_test_harness::kubectl_binaries() {
        for websockets in ["true", "false"] {
            let local = baton_test_harness::free_port()?;
            let forward = cluster.server.kubectl_background_with_env(
                &kubectl,
                &["port-forward", "pod/web", &format!("{local}:8080"), ":9999"],
                &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)],
            )?;
            wait_until("kubectl to listen", Duration::from_secs(30), || {
                std::future::ready(
                    forward
                        .output()
                        .contains(&format!("Forwarding from 127.0.0.1:{local} -> 8080"))
                        .then_some(()),
                )
            })
            .await
            .map_err(|err| anyhow::anyhow!("{err}: {}", forward.errors()))?;
            let context = format!("{} websockets={websockets}", kubectl.display());
            // Several connections in turn, each its own pair of streams.
            for _ in 0..3 {
                let body = http_get(local, "/index.html")
                    .with_context(|| format!("{context}: {}", forward.errors()))?;
                assert_eq!(body, b"hello-from-pod\n", "{context}");
            }
            // More than SPDY's initial 64 KiB window, whole and in order.
            let big = http_get(local, "/big")
                .with_context(|| format!("{context}: {}", forward.errors()))?;
            assert_eq!(big.len(), 1 << 20, "{context}");
            assert!(big.iter().all(|b| *b == b'x'), "{context}");
            // A port nobody listens on: the connection closes and kubectl reports why.
            let line = forward.output().lines().find_map(|l| {
                l.strip_prefix("Forwarding from 127.0.0.1:")?
                    .strip_suffix(" -> 9999")?
                    .parse::<u16>()
                    .ok()
            });
            let refused_port = line.with_context(|| {
                format!("a local port for 9999 ({context}): {}", forward.output())
            })?;
            // Nothing comes back (kubectl closes the connection, or it fails).
            if let Ok(body) = http_get(refused_port, "/") {
                assert!(
                    body.is_empty(),
                    "{context}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            wait_until(
                "the refusal in kubectl's log",
                Duration::from_secs(30),
                || {
                    std::future::ready(
                        forward
                            .errors()
                            .contains("error forwarding port 9999 to pod default/web")
                            .then_some(()),
                    )
                },
            )
            .await
            .map_err(|err| anyhow::anyhow!("{err} ({context}): {}", forward.errors()))?;
            assert!(
                forward.errors().contains("connection refused"),
                "{context}: {}",
                forward.errors()
            );
        }
    }
    // A pod that does not exist.
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let out = cluster
        .server
        .kubectl(&kubectl, &["port-forward", "pod/nope", "8080"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pods \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_run_and_attach_feed_the_containers_stdin() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-stdin", &[]).await?;
    let echo = "while read line; do [ \"$line\" = quit ] && exit 0; echo \"got $line\"; done";
    let on_node = json!({ "spec": { "nodeName": cluster.node.name } }).to_string();
    // `kubectl run NAME FLAGS --rm --restart=Never` of the test image on the node, fed
    // `input`; its output, once it succeeded.
    let run = |kubectl: &std::path::Path, name: &str, flag: &str, command: &[&str], input: &str| {
        let image = format!("--image={}", cluster.image);
        let overrides = format!("--overrides={on_node}");
        let mut args = vec![
            "run",
            name,
            flag,
            "--rm",
            "--restart=Never",
            &image,
            &overrides,
            "--",
        ];
        args.extend_from_slice(command);
        let out = cluster
            .server
            .kubectl_with_input(kubectl, &args, Some(input));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    for (round, kubectl) in baton_test_harness::kubectl_binaries().iter().enumerate() {
        // kubectl run -i --rm: the pod is made with stdin, attached to once Running, fed,
        // and deleted after its container exits.
        let name = format!("feeder-{round}");
        let stdout = run(kubectl, &name, "-i", &["sh", "-c", echo], "hello\nquit\n");
        assert!(stdout.contains("got hello"), "{stdout}");
        assert!(
            stdout.contains(&format!("pod \"{name}\" deleted")),
            "{stdout}"
        );
    }

    // stdinOnce (what kubectl run -i sets): the end of kubectl's input is the container's.
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let stdout = run(&kubectl, "counter", "-i", &["wc", "-l"], "a\nb\nc\n");
    assert_eq!(stdout.lines().next().map(str::trim), Some("3"), "{stdout}");

    // kubectl run -it: the container gets a terminal (kubectl's own input here is not one,
    // so it attaches without; the shell still reads its terminal, fed from stdin).
    let stdout = run(
        &kubectl,
        "shell",
        "-it",
        &["sh"],
        "tty; echo answer-$((6*7))\nexit\n",
    );
    assert!(stdout.contains("answer-42"), "{stdout}");
    assert!(stdout.contains("/dev/pts/0"), "{stdout}");

    // kubectl attach -i to a running pod that keeps its stdin open.
    cluster
        .create_pod(
            "listener",
            echo,
            json!({ "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", echo],
                "stdin": true,
            }],
        } }),
        )
        .await?;
    cluster
        .wait_for("the pod to run", "listener", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    let out = cluster.server.kubectl_with_input(
        &kubectl,
        &["attach", "-i", "listener"],
        Some("hi\nquit\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hi\n");
    cluster
        .wait_for("the container to end", "listener", |pod| {
            (phase(pod) == Some("Succeeded")).then_some(())
        })
        .await;
    Ok(())
}

/// `kubectl debug POD --target`: an ephemeral container joins the running pod, sees the target
/// container's processes, runs once, and reports its status and logs; `kubectl debug -i`
/// attaches to one and feeds it input. Ephemeral containers cannot be removed again.
#[tokio::test]
async fn kubectl_debug_adds_ephemeral_containers_that_see_their_target() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-debug", &[]).await?;
    cluster
        .create_pod("target", "exec sleep 3602", json!({}))
        .await?;
    cluster
        .wait_for("the pod to run", "target", |pod| {
            (phase(pod) == Some("Running")).then_some(())
        })
        .await;
    let image = format!("--image={}", cluster.image);
    cluster.kubectl_ok(&[
        "debug",
        "target",
        "--target=main",
        "--container=dbg",
        &image,
        "--",
        "sh",
        "-c",
        "echo pid 1 is $(tr '\\0' ' ' < /proc/1/cmdline)",
    ]);
    let status = cluster
        .wait_for("the debug container to finish", "target", |pod| {
            let statuses = pod.status.clone()?.ephemeral_container_statuses?;
            let dbg = statuses.into_iter().find(|s| s.name == "dbg")?;
            dbg.state.clone()?.terminated.is_some().then_some(dbg)
        })
        .await;
    let terminated = status.state.unwrap().terminated.unwrap();
    assert_eq!(terminated.exit_code, 0, "{terminated:?}");
    assert!(!status.ready);
    let logs = cluster
        .pods()
        .logs(
            "target",
            &kube::api::LogParams {
                container: Some("dbg".into()),
                ..Default::default()
            },
        )
        .await?;
    // PID 1 of the namespace it joined is the target's process.
    assert_eq!(logs.trim(), "pid 1 is sleep 3602", "{logs}");
    // The pod goes on: its container was not restarted, and it stays ready.
    let pod = cluster.pods().get("target").await?;
    let main = &pod.status.clone().unwrap().container_statuses.unwrap()[0];
    assert!(main.ready && main.restart_count == 0, "{main:?}");
    let spec = &pod.spec.clone().unwrap().ephemeral_containers.unwrap()[0];
    assert_eq!(spec.target_container_name.as_deref(), Some("main"));

    // kubectl debug -i: attached once running, fed kubectl's input.
    let out = cluster.server.kubectl_with_input(
        &baton_test_harness::kubectl_binaries()[0],
        &[
            "debug",
            "-i",
            "target",
            "--target=main",
            "--container=shell",
            &image,
            "--",
            "sh",
        ],
        Some("echo answer-$((6*7)); echo sees $(tr '\\0' ' ' < /proc/1/cmdline)\nexit\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("answer-42"), "{stdout}");
    assert!(stdout.contains("sees sleep 3602"), "{stdout}");

    // Once added, an ephemeral container stays: a write that drops it is refused.
    let pods = cluster.pods();
    let mut without = pods.get_ephemeral_containers("target").await?;
    without.spec.as_mut().unwrap().ephemeral_containers = Some(vec![]);
    let refused = pods
        .replace_ephemeral_containers("target", &Default::default(), &without)
        .await
        .expect_err("removing ephemeral containers");
    let kube::Error::Api(status) = refused else {
        panic!("expected an API error, got {refused:?}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{}",
        status.message
    );
    Ok(())
}
