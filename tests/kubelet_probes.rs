//! Probes and lifecycle hooks on a real kubelet node (as root): real etcd and API server, the
//! busybox test image from the harness's registry, `baton kubelet` running the pods. Readiness
//! (exec and tcpSocket) flips the Ready condition both ways, a failing httpGet liveness probe
//! restarts its container, postStart runs right after the start and preStop before the stop.

use std::time::Duration;

use anyhow::Result;
use baton_test_harness::{Binary, NodeCluster, TempDir, main_status, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// The status of the pod's Ready condition ("True"/"False").
fn ready_condition(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Whether container `main` runs, and its ready flag, once it runs.
fn running_ready(pod: &Pod) -> Option<bool> {
    let status = main_status(pod)?;
    status.state.as_ref()?.running.as_ref()?;
    Some(status.ready)
}

/// Waits (60 s at most) for an event with `reason` about `pod` whose note satisfies `check`.
async fn wait_for_event(
    cluster: &NodeCluster,
    pod: &str,
    reason: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let found = wait_until(
        &format!("a {reason} event about {pod}"),
        Duration::from_secs(60),
        || async {
            cluster
                .event_notes(pod, reason)
                .await
                .into_iter()
                .find(|note| check(note))
        },
    )
    .await;
    match found {
        Ok(note) => note,
        Err(err) => panic!(
            "{err}\nevents: {:?}\nkubelet log:\n{}",
            cluster.event_notes(pod, reason).await,
            cluster.node.log()
        ),
    }
}

#[tokio::test]
async fn readiness_probes_flip_ready_both_ways() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-readiness", &[]).await?;

    // exec: ready while /tmp/ready exists, which the container makes and later removes.
    let script = "sleep 4; touch /tmp/ready; sleep 8; rm /tmp/ready; sleep 3600";
    cluster
        .create_pod(
            "exec-ready",
            script,
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", script],
                "readinessProbe": {
                    "exec": { "command": ["test", "-f", "/tmp/ready"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                    "failureThreshold": 1,
                },
            }] } }),
        )
        .await?;
    cluster
        .wait_for("running but not ready", "exec-ready", |pod| {
            (running_ready(pod) == Some(false) && ready_condition(pod).as_deref() == Some("False"))
                .then_some(())
        })
        .await;
    cluster
        .wait_for("ready once the file exists", "exec-ready", |pod| {
            (running_ready(pod) == Some(true) && ready_condition(pod).as_deref() == Some("True"))
                .then_some(())
        })
        .await;
    let status = cluster
        .wait_for("unready again once it is gone", "exec-ready", |pod| {
            (running_ready(pod) == Some(false) && ready_condition(pod).as_deref() == Some("False"))
                .then(|| main_status(pod))
                .flatten()
        })
        .await;
    assert_eq!(status.restart_count, 0, "readiness never restarts");
    assert_eq!(status.started, Some(true));
    // test(1) prints nothing: the event carries the (empty) output.
    wait_for_event(&cluster, "exec-ready", "Unhealthy", |note| {
        note == "Readiness probe failed: "
    })
    .await;

    // tcpSocket, by a named port: ready once something listens on it.
    let script = "sleep 4; exec httpd -f -p 9090 -h /tmp";
    cluster
        .create_pod(
            "tcp-ready",
            script,
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", script],
                "ports": [{ "name": "service", "containerPort": 9090 }],
                "readinessProbe": {
                    "tcpSocket": { "port": "service" },
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                },
            }] } }),
        )
        .await?;
    let pod_ip = cluster
        .wait_for("running but not ready", "tcp-ready", |pod| {
            (running_ready(pod) == Some(false)).then_some(())?;
            pod.status.as_ref()?.pod_ip.clone()
        })
        .await;
    // The probe dials the pod's own address on the pod network.
    let refused =
        format!("Readiness probe failed: dial tcp {pod_ip}:9090: connect: connection refused");
    wait_for_event(&cluster, "tcp-ready", "Unhealthy", |note| note == refused).await;
    cluster
        .wait_for("ready once the port listens", "tcp-ready", |pod| {
            (running_ready(pod) == Some(true) && ready_condition(pod).as_deref() == Some("True"))
                .then_some(())
        })
        .await;

    // An exec probe's output is its failure message; one that outlives its timeout is killed
    // and fails with upstream's message.
    cluster
        .create_pod(
            "exec-output",
            "exec sleep 3600",
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sleep", "3600"],
                "readinessProbe": {
                    "exec": { "command": ["sh", "-c", "echo not yet; echo >&2 on stderr; exit 1"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                },
            }] } }),
        )
        .await?;
    cluster
        .create_pod(
            "exec-timeout",
            "exec sleep 3600",
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sleep", "3600"],
                "livenessProbe": {
                    "exec": { "command": ["sleep", "30"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 1,
                    "failureThreshold": 1000,
                },
            }] } }),
        )
        .await?;
    wait_for_event(&cluster, "exec-output", "Unhealthy", |note| {
        note == "Readiness probe failed: not yet\non stderr\n"
    })
    .await;
    wait_for_event(&cluster, "exec-timeout", "Unhealthy", |note| {
        note == "Liveness probe failed: command \"sleep 30\" timed out"
    })
    .await;
    let status = main_status(&cluster.pods().get("exec-output").await?).unwrap();
    assert!(!status.ready);
    let status = main_status(&cluster.pods().get("exec-timeout").await?).unwrap();
    assert_eq!(status.restart_count, 0, "below its failureThreshold");

    // A startup probe holds started and ready back (and the readiness probe with them) until
    // it succeeds.
    let script = "sleep 4; touch /tmp/up; exec sleep 3600";
    cluster
        .create_pod(
            "slow-start",
            script,
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", script],
                "startupProbe": {
                    "exec": { "command": ["test", "-f", "/tmp/up"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                    "failureThreshold": 60,
                },
                "readinessProbe": {
                    "exec": { "command": ["true"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                },
            }] } }),
        )
        .await?;
    cluster
        .wait_for("running, not started", "slow-start", |pod| {
            let status = main_status(pod)?;
            (running_ready(pod) == Some(false) && status.started == Some(false)).then_some(())
        })
        .await;
    cluster
        .wait_for("started and ready", "slow-start", |pod| {
            let status = main_status(pod)?;
            (running_ready(pod) == Some(true) && status.started == Some(true)).then_some(())
        })
        .await;
    assert!(
        cluster
            .event_notes("slow-start", "Unhealthy")
            .await
            .iter()
            .all(|note| note.starts_with("Startup probe failed")),
        "only the startup probe ran while the container started"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_http_liveness_probe_restarts_the_container() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-liveness", &[]).await?;
    // Serves /www/healthz, and deletes it a few seconds in.
    let script = "mkdir -p /www; echo ok > /www/healthz; (sleep 4; rm /www/healthz) & \
                  exec httpd -f -p 8080 -h /www";
    cluster
        .create_pod(
            "web",
            script,
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", script],
                "livenessProbe": {
                    "httpGet": {
                        "path": "/healthz",
                        "port": 8080,
                        "httpHeaders": [{ "name": "X-Probe", "value": "baton" }],
                    },
                    // httpd listens before the first probe, whose failure would otherwise
                    // be "connection refused" (and later failures fold into that event).
                    "initialDelaySeconds": 1,
                    "periodSeconds": 1,
                    "timeoutSeconds": 10,
                    "failureThreshold": 2,
                    "terminationGracePeriodSeconds": 1,
                },
            }] } }),
        )
        .await?;
    // Healthy first: running and ready (no readiness probe).
    cluster
        .wait_for("the web server to run", "web", |pod| {
            (running_ready(pod) == Some(true)).then_some(())
        })
        .await;
    let status = cluster
        .wait_for("a restart by the liveness probe", "web", |pod| {
            main_status(pod).filter(|s| s.restart_count >= 1)
        })
        .await;
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("the killed attempt's state");
    // SIGTERM, or SIGKILL after the probe's grace period (httpd may be its namespace's init).
    assert!(matches!(last.exit_code, 137 | 143), "{last:?}");
    assert_eq!(last.reason.as_deref(), Some("Error"));
    wait_for_event(&cluster, "web", "Unhealthy", |note| {
        note == "Liveness probe failed: HTTP probe failed with statuscode: 404"
    })
    .await;
    wait_for_event(&cluster, "web", "Killing", |note| {
        note == "Container main failed liveness probe, will be restarted"
    })
    .await;
    // The new attempt serves again (its own file) before it too is deleted.
    cluster
        .wait_for("the restarted container to run", "web", |pod| {
            main_status(pod)
                .filter(|s| {
                    s.restart_count >= 1 && s.state.as_ref().is_some_and(|s| s.running.is_some())
                })
                .map(drop)
        })
        .await;
    Ok(())
}

#[tokio::test]
async fn post_start_and_pre_stop_hooks_run() -> Result<()> {
    let cluster = NodeCluster::start(&binary(), "node-hooks", &[]).await?;
    let shared = TempDir::new("hooks")?;
    let host_dir = shared.path().display().to_string();
    // The main process waits for the file postStart writes and reports what it read.
    let script = "while [ ! -f /tmp/hook ]; do sleep 0.1; done; \
                  cat /tmp/hook > /data/seen; exec sleep 3600";
    cluster
        .create_pod(
            "hooked",
            script,
            json!({ "spec": {
                "terminationGracePeriodSeconds": 10,
                "volumes": [{ "name": "data", "hostPath": { "path": host_dir, "type": "Directory" } }],
                "containers": [{
                    "name": "main",
                    "image": cluster.image,
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                    "lifecycle": {
                        "postStart": { "exec": { "command": ["sh", "-c", "echo from-post-start > /tmp/hook"] } },
                        "preStop": { "exec": { "command": ["sh", "-c", "echo from-pre-stop > /data/pre-stop"] } },
                    },
                }],
            } }),
        )
        .await?;
    cluster
        .wait_for("the pod to run", "hooked", |pod| {
            (running_ready(pod) == Some(true)).then_some(())
        })
        .await;
    let seen = shared.path().join("seen");
    wait_until(
        "the main process to read postStart's file",
        Duration::from_secs(30),
        || {
            std::future::ready(
                std::fs::read_to_string(&seen)
                    .ok()
                    .filter(|t| !t.is_empty()),
            )
        },
    )
    .await?;
    assert_eq!(std::fs::read_to_string(&seen)?, "from-post-start\n");
    assert!(!shared.path().join("pre-stop").exists());

    cluster
        .pods()
        .delete("hooked", &DeleteParams::default())
        .await?;
    let pods = cluster.pods();
    wait_until(
        "the deleted pod to be gone",
        Duration::from_secs(60),
        || async { pods.get_opt("hooked").await.ok()?.is_none().then_some(()) },
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(shared.path().join("pre-stop"))?,
        "from-pre-stop\n"
    );

    // A failing postStart hook kills the container, which the restart policy restarts.
    let script = "exec sleep 3600";
    cluster
        .create_pod(
            "hook-fails",
            script,
            json!({ "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": cluster.image,
                    "command": ["sh", "-c", script],
                    "lifecycle": {
                        "postStart": { "exec": { "command": ["sh", "-c", "echo nope; exit 3"] } },
                    },
                }],
            } }),
        )
        .await?;
    wait_for_event(&cluster, "hook-fails", "FailedPostStartHook", |note| {
        note == "PostStartHook failed"
    })
    .await;
    wait_for_event(&cluster, "hook-fails", "Killing", |note| {
        note == "FailedPostStartHook"
    })
    .await;
    cluster
        .wait_for("a restart after the failed hook", "hook-fails", |pod| {
            main_status(pod).filter(|s| s.restart_count >= 1)
        })
        .await;
    let log = cluster.node.log();
    assert!(
        log.contains("Exec lifecycle hook ([sh -c echo nope; exit 3]) for Container")
            && log.contains("exited with 3"),
        "the hook's failure is logged with upstream's message:\n{log}"
    );
    Ok(())
}
