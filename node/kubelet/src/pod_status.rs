//! A pod's status from what the kubelet knows of its containers: container statuses (state,
//! lastState, restartCount, ready, started, image, imageID, containerID), the phase by
//! upstream's rules, and the conditions (PodReadyToStartContainers, Initialized,
//! ContainersReady, Ready). Pure, so that every rule is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::qos::qos_class;

/// The prefix of container ids in statuses (as `containerd://`).
pub const CONTAINER_ID_SCHEME: &str = "baton://";

/// How an attempt of a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Completed, Error, OOMKilled, StartError, Unknown.
    pub reason: String,
    /// The termination message (from terminationMessagePath), or the start error.
    pub message: Option<String>,
    pub finished_at: jiff::Timestamp,
}

/// One attempt (one runtime container) of a pod's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    /// The runtime's container id.
    pub container_id: String,
    pub image_id: String,
    pub started_at: Option<jiff::Timestamp>,
    pub exit: Option<Exit>,
}

/// What the kubelet knows of one container of the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerTrack {
    /// The newest attempt.
    pub current: Option<Attempt>,
    /// The attempt before it (for lastState and `logs --previous`).
    pub previous: Option<Attempt>,
    /// Why no attempt runs now although one should: (reason, message).
    pub waiting: Option<(String, String)>,
    pub restarts: u32,
    /// Passed its readiness probe (or has none) while running.
    pub ready: bool,
    /// Passed its startup probe (or has none) while running.
    pub started: bool,
}

impl ContainerTrack {
    /// Whether the current attempt runs.
    pub fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|a| a.exit.is_none()) && self.waiting.is_none()
    }

    /// The current attempt's exit, when it has ended and no new attempt is pending.
    pub fn terminated(&self) -> Option<&Exit> {
        match (&self.current, &self.waiting) {
            (Some(attempt), None) => attempt.exit.as_ref(),
            _ => None,
        }
    }
}

fn time(at: jiff::Timestamp) -> Time {
    Time(at)
}

fn terminated_state(attempt: &Attempt) -> Option<ContainerState> {
    let exit = attempt.exit.as_ref()?;
    Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: Some(exit.reason.clone()),
            message: exit.message.clone(),
            started_at: attempt.started_at.map(time),
            finished_at: Some(time(exit.finished_at)),
            container_id: Some(format!("{CONTAINER_ID_SCHEME}{}", attempt.container_id)),
        }),
        ..Default::default()
    })
}

/// The status of one container.
pub fn container_status(container: &Container, track: &ContainerTrack) -> ContainerStatus {
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..Default::default()
    };
    let (state, last) = match (&track.current, &track.waiting) {
        (_, Some((reason, message))) => (
            waiting(reason, (!message.is_empty()).then(|| message.clone())),
            track.current.as_ref().and_then(terminated_state),
        ),
        (Some(attempt), None) => match &attempt.exit {
            None => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: attempt.started_at.map(time),
                    }),
                    ..Default::default()
                },
                track.previous.as_ref().and_then(terminated_state),
            ),
            Some(_) => (
                terminated_state(attempt).expect("an exit"),
                track.previous.as_ref().and_then(terminated_state),
            ),
        },
        (None, None) => (waiting("ContainerCreating", None), None),
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: track
            .current
            .as_ref()
            .map(|a| a.image_id.clone())
            .unwrap_or_default(),
        container_id: track
            .current
            .as_ref()
            .map(|a| format!("{CONTAINER_ID_SCHEME}{}", a.container_id)),
        state: Some(state),
        last_state: Some(last.unwrap_or_default()),
        ready: running && track.ready,
        started: Some(running && track.started),
        restart_count: track.restarts as i32,
        ..Default::default()
    }
}

/// The pod's phase by upstream's rules (kubelet getPhase).
pub fn phase(pod: &Pod, tracks: &BTreeMap<String, ContainerTrack>) -> &'static str {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let empty = ContainerTrack::default();
    let track = |name: &str| tracks.get(name).unwrap_or(&empty);
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[]);
    let mut initialized = true;
    for init in init_containers {
        let track = track(&init.name);
        match track.terminated() {
            Some(exit) if exit.exit_code == 0 => continue,
            Some(_) if policy == "Never" => return "Failed",
            _ => {
                initialized = false;
                break;
            }
        }
    }
    if !initialized {
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    for container in containers {
        let track = track(&container.name);
        if track.running() {
            running += 1;
        } else if let Some(exit) = track.terminated() {
            stopped += 1;
            if exit.exit_code == 0 {
                succeeded += 1;
            }
        } else if track.current.as_ref().is_some_and(|a| a.exit.is_some()) {
            // Waiting to restart after an earlier run: counted as stopped, as upstream.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// Inputs of the pod status besides the container tracks.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub host_ip: Option<String>,
    pub pod_ip: Option<String>,
    pub sandbox_ready: bool,
    pub start_time: Option<jiff::Timestamp>,
}

/// The pod's whole status. `previous` is the status the API has, whose condition transition
/// times are kept when a condition did not change.
pub fn pod_status(
    pod: &Pod,
    tracks: &BTreeMap<String, ContainerTrack>,
    facts: &PodFacts,
    previous: Option<&PodStatus>,
) -> PodStatus {
    let empty = ContainerTrack::default();
    let spec = pod.spec.as_ref();
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[]);
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let init_statuses: Vec<ContainerStatus> = init_containers
        .iter()
        .map(|c| container_status(c, tracks.get(&c.name).unwrap_or(&empty)))
        .collect();
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| container_status(c, tracks.get(&c.name).unwrap_or(&empty)))
        .collect();
    let ephemeral_statuses: Vec<ContainerStatus> = crate::ephemeral_containers::of(pod)
        .iter()
        .map(|(c, _)| ContainerStatus {
            // Nothing waits for an ephemeral container to be ready (upstream reports false).
            ready: false,
            ..container_status(c, tracks.get(&c.name).unwrap_or(&empty))
        })
        .collect();
    let phase = phase(pod, tracks);

    let incomplete: Vec<&str> = init_containers
        .iter()
        .filter(|c| {
            tracks
                .get(&c.name)
                .and_then(|t| t.terminated())
                .is_none_or(|exit| exit.exit_code != 0)
        })
        .map(|c| c.name.as_str())
        .collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let now = jiff::Timestamp::now();
    let condition = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|all| all.iter().find(|c| c.type_ == type_ && c.status == status))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            last_transition_time: Some(since),
            ..Default::default()
        }
    };
    let list = |names: &[&str]| names.join(" ");
    let (ready_reason, ready_message) = if terminal && phase == "Succeeded" {
        (Some("PodCompleted".to_owned()), None)
    } else if unready.is_empty() {
        (None, None)
    } else {
        (
            Some("ContainersNotReady".to_owned()),
            Some(format!(
                "containers with unready status: [{}]",
                list(&unready)
            )),
        )
    };
    let initialized = incomplete.is_empty();
    let mut conditions = vec![
        condition("PodReadyToStartContainers", facts.sandbox_ready, None, None),
        if initialized {
            condition(
                "Initialized",
                true,
                (terminal && phase == "Succeeded" && !init_containers.is_empty())
                    .then(|| "PodCompleted".to_owned()),
                None,
            )
        } else {
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized".into()),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    list(&incomplete)
                )),
            )
        },
        condition(
            "Ready",
            unready.is_empty() && !terminal,
            ready_reason.clone(),
            ready_message.clone(),
        ),
        condition(
            "ContainersReady",
            unready.is_empty() && !terminal,
            ready_reason,
            ready_message,
        ),
    ];
    // Conditions the kubelet does not own (PodScheduled, readiness gates' own) stay.
    if let Some(existing) = previous.and_then(|p| p.conditions.as_ref()) {
        for other in existing {
            if !conditions.iter().any(|c| c.type_ == other.type_) {
                conditions.push(other.clone());
            }
        }
    }
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: facts.host_ip.clone(),
        host_ips: facts.host_ip.clone().map(|ip| vec![HostIP { ip }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: facts.start_time.map(time),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        ephemeral_container_statuses: (!ephemeral_statuses.is_empty())
            .then_some(ephemeral_statuses),
        qos_class: Some(qos_class(pod).as_str().to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(policy: &str, containers: &[&str], init: &[&str]) -> Pod {
        let make = |name: &&str| Container {
            name: name.to_string(),
            image: Some("busybox".into()),
            ..Default::default()
        };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: containers.iter().map(make).collect(),
                init_containers: (!init.is_empty()).then(|| init.iter().map(make).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn attempt(exit: Option<i32>) -> Attempt {
        Attempt {
            attempt: 0,
            container_id: "c".into(),
            image_id: "sha256:abc".into(),
            started_at: Some(jiff::Timestamp::UNIX_EPOCH),
            exit: exit.map(|code| Exit {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                finished_at: jiff::Timestamp::UNIX_EPOCH,
            }),
        }
    }

    fn track(exit: Option<i32>) -> ContainerTrack {
        ContainerTrack {
            current: Some(attempt(exit)),
            ready: true,
            started: true,
            ..Default::default()
        }
    }

    fn tracks(items: &[(&str, ContainerTrack)]) -> BTreeMap<String, ContainerTrack> {
        items
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect()
    }

    #[test]
    fn phases_follow_upstream_rules() {
        let p = pod("Always", &["a", "b"], &[]);
        assert_eq!(phase(&p, &tracks(&[])), "Pending");
        assert_eq!(phase(&p, &tracks(&[("a", track(None))])), "Pending");
        assert_eq!(
            phase(&p, &tracks(&[("a", track(None)), ("b", track(None))])),
            "Running"
        );
        assert_eq!(
            phase(&p, &tracks(&[("a", track(Some(0))), ("b", track(Some(1)))])),
            "Running"
        );
        let p = pod("Never", &["a", "b"], &[]);
        assert_eq!(
            phase(&p, &tracks(&[("a", track(Some(0))), ("b", track(Some(0)))])),
            "Succeeded"
        );
        assert_eq!(
            phase(&p, &tracks(&[("a", track(Some(0))), ("b", track(Some(2)))])),
            "Failed"
        );
        assert_eq!(
            phase(&p, &tracks(&[("a", track(None)), ("b", track(Some(2)))])),
            "Running"
        );
        let p = pod("OnFailure", &["a"], &[]);
        assert_eq!(phase(&p, &tracks(&[("a", track(Some(0)))])), "Succeeded");
        assert_eq!(phase(&p, &tracks(&[("a", track(Some(1)))])), "Running");
        // A container in CrashLoopBackOff after a run counts as stopped: Running for Always.
        let p = pod("Always", &["a"], &[]);
        let mut crashing = track(Some(1));
        crashing.waiting = Some(("CrashLoopBackOff".into(), "back-off".into()));
        assert_eq!(phase(&p, &tracks(&[("a", crashing)])), "Running");
    }

    #[test]
    fn init_containers_gate_the_phase() {
        let p = pod("Never", &["app"], &["setup"]);
        assert_eq!(phase(&p, &tracks(&[("setup", track(None))])), "Pending");
        assert_eq!(phase(&p, &tracks(&[("setup", track(Some(1)))])), "Failed");
        assert_eq!(
            phase(
                &p,
                &tracks(&[("setup", track(Some(0))), ("app", track(None))])
            ),
            "Running"
        );
        let p = pod("Always", &["app"], &["setup"]);
        assert_eq!(phase(&p, &tracks(&[("setup", track(Some(1)))])), "Pending");
    }

    #[test]
    fn statuses_show_waiting_running_terminated_and_last_state() {
        let container = Container {
            name: "a".into(),
            image: Some("busybox".into()),
            ..Default::default()
        };
        let status = container_status(&container, &ContainerTrack::default());
        let waiting = status.state.unwrap().waiting.unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
        assert!(!status.ready);

        let mut crashing = track(Some(2));
        crashing.restarts = 3;
        crashing.waiting = Some((
            "CrashLoopBackOff".into(),
            "back-off 40s restarting failed container=a pod=p_ns(u)".into(),
        ));
        let status = container_status(&container, &crashing);
        assert_eq!(status.restart_count, 3);
        assert_eq!(
            status.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = status.last_state.unwrap().terminated.unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(last.container_id.as_deref(), Some("baton://c"));

        let status = container_status(&container, &track(None));
        assert!(status.state.unwrap().running.is_some());
        assert!(status.ready);
        assert_eq!(status.image_id, "sha256:abc");
    }

    #[test]
    fn conditions_name_unready_and_uninitialized_containers() {
        let p = pod("Always", &["a", "b"], &["setup"]);
        let status = pod_status(
            &p,
            &tracks(&[("setup", track(Some(0))), ("a", track(None))]),
            &PodFacts {
                sandbox_ready: true,
                ..Default::default()
            },
            None,
        );
        let conditions = status.conditions.unwrap();
        let get = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(get("Initialized").status, "True");
        assert_eq!(get("PodReadyToStartContainers").status, "True");
        let ready = get("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));

        let status = pod_status(&p, &tracks(&[]), &PodFacts::default(), None);
        let conditions = status.conditions.unwrap();
        let initialized = conditions
            .iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert_eq!(
            initialized.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
    }

    #[test]
    fn transition_times_are_kept_and_foreign_conditions_stay() {
        let p = pod("Always", &["a"], &[]);
        let before = PodStatus {
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let status = pod_status(
            &p,
            &tracks(&[("a", track(None))]),
            &PodFacts::default(),
            Some(&before),
        );
        let conditions = status.conditions.unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            ready.last_transition_time,
            Some(Time(jiff::Timestamp::UNIX_EPOCH))
        );
        assert!(conditions.iter().any(|c| c.type_ == "PodScheduled"));
    }
}
