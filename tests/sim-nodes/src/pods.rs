//! The pods bound to simulated nodes: reported Running and Ready with a pod IP from the node's
//! podCIDR (as a kubelet would once its containers started), ended as their annotations ask,
//! and removed once they are marked for deletion (nothing runs, so there is nothing to stop).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::{OUTCOME_ANNOTATION, RUN_FOR_ANNOTATION, SIMULATED_LABEL, SimNode, parse_duration};

/// Range pod IPs come from when a node has no spec.podCIDR (node IPAM off): one /24 per node
/// in 100.64.0.0/10, which nothing else here uses.
const FALLBACK_POD_RANGE: [u8; 2] = [100, 64];

/// Addresses handed to pods, per node.
#[derive(Debug, Default)]
struct PodIps {
    /// node -> (pod uid -> address)
    by_node: HashMap<String, HashMap<String, Ipv4Addr>>,
}

impl PodIps {
    /// The address `uid` holds on `node`, or the lowest free host address of `range` (network
    /// base, prefix length), skipping the network and the first host (the node's bridge).
    fn assign(&mut self, node: &str, uid: &str, range: (Ipv4Addr, u8)) -> Option<Ipv4Addr> {
        let used = self.by_node.entry(node.to_string()).or_default();
        if let Some(ip) = used.get(uid) {
            return Some(*ip);
        }
        let taken: HashSet<Ipv4Addr> = used.values().copied().collect();
        let base = u32::from(range.0);
        let size = 1u64 << (32 - u32::from(range.1.min(32)));
        let ip = (2..size.saturating_sub(1))
            .map(|offset| Ipv4Addr::from(base + offset as u32))
            .find(|ip| !taken.contains(ip))?;
        used.insert(uid.to_string(), ip);
        Some(ip)
    }

    fn record(&mut self, node: &str, uid: &str, ip: Ipv4Addr) {
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(uid.to_string(), ip);
    }

    fn release(&mut self, node: &str, uid: &str) {
        if let Some(used) = self.by_node.get_mut(node) {
            used.remove(uid);
        }
    }
}

struct State {
    client: Client,
    nodes: HashMap<String, SimNode>,
    node_store: Store<Node>,
    ips: Mutex<PodIps>,
}

/// Watches pods bound to any node and acts on those bound to ours, forever.
pub(crate) async fn run(client: Client, nodes: Arc<Vec<SimNode>>, concurrency: usize) {
    let node_informer: Informer<Node> = Informer::new(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!("{SIMULATED_LABEL}=true")),
    );
    let pod_informer: Informer<CachedPod> = Informer::new(
        Api::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
    );
    let ours: HashSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let state = Arc::new(State {
        client,
        nodes: nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(),
        node_store: node_informer.store(),
        ips: Mutex::default(),
    });
    // Keep the address table in step with what the API says, including pods deleted by others.
    let for_ips = state.clone();
    let ours_for_ips = ours.clone();
    pod_informer.on_event(move |event| {
        let mut ips = for_ips.ips.lock().expect("pod ips");
        match event {
            InformerEvent::Applied { new, .. } => {
                let node = node_name(new);
                let ip = new.status.as_ref().and_then(|s| s.pod_ip.as_deref());
                if let (true, Some(ip)) =
                    (ours_for_ips.contains(node), ip.and_then(|i| i.parse().ok()))
                {
                    ips.record(node, uid(new), ip);
                }
            }
            InformerEvent::Deleted(old) => ips.release(node_name(old), uid(old)),
        }
    });
    let wake = pod_informer.subscribe(move |event| {
        event
            .objects()
            .filter(|pod| ours.contains(node_name(pod)))
            .map(ObjectRef::from_obj)
            .collect::<Vec<_>>()
    });
    let controller =
        Controller::for_shared_stream(futures::stream::pending(), pod_informer.store())
            .with_config(Config::default().concurrency(concurrency.min(u16::MAX as usize) as u16))
            .reconcile_on(wake)
            .run(reconcile, error_policy, state.clone())
            .for_each(|_| std::future::ready(()));
    let informers = async { tokio::join!(node_informer.run(), pod_informer.run()) };
    let controller = async {
        node_informer.wait_until_ready().await;
        controller.await;
    };
    tokio::join!(informers, controller);
}

fn node_name(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn uid(pod: &CachedPod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// Why acting on a pod failed.
#[derive(Debug, thiserror::Error)]
enum SimPodError {
    #[error("updating the status of pod {pod}")]
    Status {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing pod {pod}")]
    Remove {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

fn error_policy(_: Arc<CachedPod>, error: &SimPodError, _: Arc<State>) -> Action {
    tracing::warn!(error = %error, "simulated pod update failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(pod: Arc<CachedPod>, state: Arc<State>) -> Result<Action, SimPodError> {
    let node = node_name(&pod).to_string();
    if !state.nodes.contains_key(&node) {
        return Ok(Action::await_change());
    }
    let api: Api<CachedPod> =
        Api::namespaced(state.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    if pod.metadata.deletion_timestamp.is_some() {
        // Nothing runs, so the pod is gone at once: finish the deletion as a kubelet does.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        return match api.delete(&name, &params).await {
            Ok(_) => {
                state.ips.lock().expect("pod ips").release(&node, uid(&pod));
                Ok(Action::await_change())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                Ok(Action::await_change())
            }
            Err(source) => Err(SimPodError::Remove { pod: name, source }),
        };
    }
    if never_starts(&pod) {
        return Ok(Action::await_change());
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match phase {
        "Pending" => {
            let Some(ip) = pod_ip(&state, &node, uid(&pod)) else {
                tracing::warn!(node = %node, pod = %name, "no free pod address on the node");
                return Ok(Action::requeue(Duration::from_secs(5)));
            };
            let status = running_status(&pod, &state.nodes[&node], ip);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(|source| SimPodError::Status {
                    pod: name.clone(),
                    source,
                })?;
            Ok(outcome(&pod).map_or(Action::await_change(), |(_, after)| Action::requeue(after)))
        }
        "Running" => {
            let Some((phase, after)) = outcome(&pod) else {
                if !is_ready(&pod) {
                    // Marked not ready while this node was silent (the node lifecycle
                    // controller does that): a live kubelet reports its pods ready again.
                    let status = json!({ "status": { "conditions": [
                        condition("Ready", "True"),
                        condition("ContainersReady", "True"),
                    ]}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                        .await
                        .map_err(|source| SimPodError::Status {
                            pod: name.clone(),
                            source,
                        })?;
                }
                return Ok(Action::await_change());
            };
            let started = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
                .unwrap_or_else(jiff::Timestamp::now);
            let ran = jiff::Timestamp::now().duration_since(started);
            let ran = Duration::try_from(ran).unwrap_or_default();
            if ran < after {
                return Ok(Action::requeue(after - ran));
            }
            let status = terminated_status(&pod, phase);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(|source| SimPodError::Status {
                    pod: name.clone(),
                    source,
                })?;
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

fn is_ready(pod: &CachedPod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod's annotation asks it never to start.
fn never_starts(pod: &CachedPod) -> bool {
    pod.annotations()
        .get(crate::NEVER_START_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The phase a pod's annotations ask it to end in, and after how long.
fn outcome(pod: &CachedPod) -> Option<(&'static str, Duration)> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let phase = match annotations.get(OUTCOME_ANNOTATION)?.as_str() {
        "Succeeded" => "Succeeded",
        "Failed" => "Failed",
        _ => return None,
    };
    let after = annotations
        .get(RUN_FOR_ANNOTATION)
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or_default();
    Some((phase, after))
}

fn pod_ip(state: &State, node: &str, uid: &str) -> Option<Ipv4Addr> {
    let range = state
        .node_store
        .get(&ObjectRef::new(node))
        .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
        .and_then(|cidr| {
            let (ip, len) = cidr.split_once('/')?;
            Some((ip.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?))
        })
        .unwrap_or_else(|| {
            let index = node_index(node, state);
            (
                Ipv4Addr::new(
                    FALLBACK_POD_RANGE[0],
                    FALLBACK_POD_RANGE[1] + (index / 256) as u8,
                    (index % 256) as u8,
                    0,
                ),
                24,
            )
        });
    state.ips.lock().expect("pod ips").assign(node, uid, range)
}

fn node_index(node: &str, state: &State) -> usize {
    let mut names: Vec<&String> = state.nodes.keys().collect();
    names.sort();
    names.iter().position(|n| *n == node).unwrap_or(0) % (64 * 256)
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn condition(type_: &str, status: &str) -> Value {
    json!({ "type": type_, "status": status, "lastTransitionTime": now() })
}

fn container_names(pod: &CachedPod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn running_status(pod: &CachedPod, node: &SimNode, ip: Ipv4Addr) -> Value {
    let started = now();
    let containers: Vec<Value> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            json!({
                "name": name, "image": image, "imageID": format!("sim://{image}"),
                "containerID": format!("sim://{}-{name}", uid(pod)),
                "ready": true, "started": true, "restartCount": 0,
                "state": { "running": { "startedAt": started } },
            })
        })
        .collect();
    json!({ "status": {
        "phase": "Running",
        "hostIP": node.internal_ip.to_string(),
        "hostIPs": [{ "ip": node.internal_ip.to_string() }],
        "podIP": ip.to_string(),
        "podIPs": [{ "ip": ip.to_string() }],
        "startTime": started,
        "conditions": [
            condition("PodReadyToStartContainers", "True"),
            condition("Initialized", "True"),
            condition("Ready", "True"),
            condition("ContainersReady", "True"),
            condition("PodScheduled", "True"),
        ],
        "containerStatuses": containers,
    }})
}

fn terminated_status(pod: &CachedPod, phase: &str) -> Value {
    let (exit_code, reason) = if phase == "Succeeded" {
        (0, "Completed")
    } else {
        (1, "Error")
    };
    let finished = now();
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(now);
    let containers: Vec<Value> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            json!({
                "name": name, "image": image, "imageID": format!("sim://{image}"),
                "containerID": format!("sim://{}-{name}", uid(pod)),
                "ready": false, "started": false, "restartCount": 0,
                "state": { "terminated": {
                    "exitCode": exit_code, "reason": reason,
                    "startedAt": started, "finishedAt": finished,
                    "containerID": format!("sim://{}-{name}", uid(pod)),
                }},
            })
        })
        .collect();
    json!({ "status": {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", "False"),
            condition("Initialized", "True"),
            json!({ "type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished }),
            json!({ "type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished }),
            condition("PodScheduled", "True"),
        ],
        "containerStatuses": containers,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lowest_free_and_reused_per_pod() {
        let mut ips = PodIps::default();
        let range = (Ipv4Addr::new(10, 244, 1, 0), 24);
        assert_eq!(
            ips.assign("n", "a", range),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
        assert_eq!(
            ips.assign("n", "b", range),
            Some(Ipv4Addr::new(10, 244, 1, 3))
        );
        assert_eq!(
            ips.assign("n", "a", range),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
        ips.release("n", "a");
        assert_eq!(
            ips.assign("n", "c", range),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
    }

    #[test]
    fn a_full_range_gives_no_address() {
        let mut ips = PodIps::default();
        let range = (Ipv4Addr::new(10, 0, 0, 0), 30);
        assert!(ips.assign("n", "a", range).is_some());
        assert_eq!(ips.assign("n", "b", range), None);
    }
}
