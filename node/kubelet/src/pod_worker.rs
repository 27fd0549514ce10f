//! One task per pod: it makes the node match the pod (sandbox, volumes, init containers in
//! order, then containers, restarts by the restart policy with back-off), posts the pod's
//! status when it changes, and on deletion stops the containers within the grace period,
//! removes everything the pod had on the node and lets the API server remove the pod.
//! It wakes on a pod update, a container exit (pidfd), a probe result or a deadline (back-off,
//! the next probe run); never polls. Probes run as tasks of their own ([`crate::probes`]) and
//! report back through a channel; a container whose liveness or startup probe or postStart
//! hook failed is stopped by a task of its own ([`crate::container_stop`], preStop included).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::{ContainerRuntime, ContainerState, Sandbox, SandboxConfig, wait_for_exit};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::container_spec::namespaces::pod_hostname;
use crate::container_spec::pod_description;
use crate::container_start::{StartRequest, TargetContainer, parse_container_id, start_container};
use crate::container_stop::{StopRequest, stop_container};
use crate::context::KubeletContext;
use crate::pod_dirs::{PodDirs, etc_files};
use crate::pod_status::{Attempt, CONTAINER_ID_SCHEME, ContainerTrack, Exit, PodFacts, pod_status};
use crate::probes::{
    DueProbe, ProbeKind, ProbeManager, ProbeOutput, RunResult, Seed, Target, Verdict, run_probe,
};
use crate::volumes;

/// What the worker is told about its pod.
#[derive(Debug, Clone)]
pub enum PodUpdate {
    /// The pod as the API has it now.
    Present(Arc<Pod>),
    /// The pod is gone from the API (deleted without the kubelet's help).
    Gone,
}

/// Why a pod's sandbox was not made.
#[derive(Debug)]
enum SandboxFailure {
    /// The pod network is not set up yet: wait for it.
    NetworkNotReady(String),
    /// Anything else: retried after a delay.
    Failed(String),
}

/// SIGKILL (a pod gone from the API is not given a grace period).
const SIGKILL: i32 = 9;
/// How long a SIGKILLed container may take to go away.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Default size of a pod's /dev/shm.
const SHM_SIZE: u64 = 64 << 20;
/// How soon a container whose exit was seen but not yet recorded is asked about again.
const EXIT_RETRY: Duration = Duration::from_secs(1);

/// The state of one pod's worker.
pub struct PodWorker {
    ctx: Arc<KubeletContext>,
    uid: String,
    dirs: PodDirs,
    tracks: BTreeMap<String, ContainerTrack>,
    crash_backoff: HashMap<String, Backoff>,
    pull_backoff: HashMap<String, Backoff>,
    sandbox: Option<Sandbox>,
    /// The pod's IP on the pod network (none for hostNetwork pods: theirs is the node's).
    pod_ip: Option<std::net::Ipv4Addr>,
    /// Readiness of the pod network, which a pod waits for before its sandbox is made.
    network: watch::Receiver<crate::pod_network::NetworkState>,
    start_time: Option<jiff::Timestamp>,
    /// Names of containers whose watched process exited (sent by one task per process).
    exits: mpsc::UnboundedReceiver<String>,
    exit_sender: mpsc::UnboundedSender<String>,
    /// Processes watched and not yet seen to exit.
    watching: usize,
    /// Containers whose watched process ended and whose exit is not recorded yet: only
    /// these are asked of the runtime (a pod's syncs cost no runtime round trips otherwise).
    exited: HashSet<String>,
    /// The pod's cgroup, removed with the pod.
    pod_cgroup: Option<String>,
    /// The status last posted.
    posted: Option<PodStatus>,
    /// When each probe of the running containers is due, and what their results mean.
    probes: ProbeManager,
    /// Results of probe runs (sent by one task per run), and those not yet applied.
    probe_results: mpsc::UnboundedReceiver<ProbeReport>,
    probe_sender: mpsc::UnboundedSender<ProbeReport>,
    probe_reports: Vec<ProbeReport>,
    /// Attempts (runtime ids) a task is stopping after a probe or postStart hook failure.
    killing: HashSet<String>,
    /// The pod's updates, for cutting a postStart hook short when the pod is deleted.
    updates: Option<watch::Receiver<PodUpdate>>,
}

/// The result of one probe run, sent back to the worker.
#[derive(Debug)]
struct ProbeReport {
    container: String,
    container_id: String,
    kind: ProbeKind,
    result: RunResult,
}

impl std::fmt::Debug for PodWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWorker")
            .field("uid", &self.uid)
            .field("tracks", &self.tracks)
            .finish_non_exhaustive()
    }
}

impl PodWorker {
    /// A worker for `pod`, taking over `existing`: the containers the runtime had for it when
    /// the kubelet started (after a kubelet restart; none for a new pod).
    pub async fn new(
        ctx: Arc<KubeletContext>,
        pod: &Pod,
        existing: Vec<baton_runtime::ContainerStatus>,
    ) -> Self {
        let uid = pod.uid().unwrap_or_default();
        let dirs = PodDirs::new(
            &ctx.root_dir,
            &ctx.pod_logs_dir,
            &pod.namespace().unwrap_or_default(),
            &pod.name_any(),
            &uid,
        );
        let (exit_sender, exits) = mpsc::unbounded_channel();
        let pod_cgroup = crate::cgroups::pod_cgroup(&ctx.cgroup_root, pod);
        let (probe_sender, probe_results) = mpsc::unbounded_channel();
        let network = ctx.network.subscribe();
        let mut worker = Self {
            ctx,
            uid,
            dirs,
            tracks: BTreeMap::new(),
            crash_backoff: HashMap::new(),
            pull_backoff: HashMap::new(),
            sandbox: None,
            pod_ip: None,
            network,
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            exits,
            exit_sender,
            pod_cgroup: Some(pod_cgroup),
            watching: 0,
            exited: HashSet::new(),
            posted: pod.status.clone(),
            probes: ProbeManager::default(),
            probe_results,
            probe_sender,
            probe_reports: Vec::new(),
            killing: HashSet::new(),
            updates: None,
        };
        worker.adopt(existing).await;
        worker.seed_probes(pod);
        worker
    }

    /// Carries the started and ready states the API shows for running containers over to
    /// their probes, so that a kubelet restart does not turn a healthy pod unready.
    fn seed_probes(&mut self, pod: &Pod) {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for status in statuses.into_iter().flatten() {
            let Some(id) = status
                .container_id
                .as_deref()
                .and_then(|id| id.strip_prefix(CONTAINER_ID_SCHEME))
            else {
                continue;
            };
            if status.state.as_ref().is_some_and(|s| s.running.is_some()) {
                let seed = Seed {
                    started: status.started.unwrap_or(false),
                    ready: status.ready,
                };
                self.probes.seed(id, seed);
            }
        }
    }

    /// Rebuilds the container tracks from what the runtime has for this pod.
    async fn adopt(&mut self, existing: Vec<baton_runtime::ContainerStatus>) {
        let mut attempts: BTreeMap<String, Vec<(u32, baton_runtime::ContainerStatus)>> =
            BTreeMap::new();
        for status in existing {
            if let Some((uid, name, attempt)) = parse_container_id(&status.id)
                && uid == self.uid
            {
                attempts
                    .entry(name.to_owned())
                    .or_default()
                    .push((attempt, status));
            }
        }
        for (name, mut list) in attempts {
            // One created but never started (the kubelet stopped in between) is removed: the
            // worker starts that attempt again.
            let mut created = Vec::new();
            list.retain(|(attempt, status)| {
                let keep = status.state != ContainerState::Created;
                if !keep {
                    created.push(attempt_of(*attempt, status));
                }
                keep
            });
            for attempt in created {
                self.remove_attempt(&name, &attempt).await;
            }
            list.sort_by_key(|(attempt, _)| *attempt);
            let mut track = ContainerTrack::default();
            let mut iter = list.into_iter().rev();
            if let Some((attempt, status)) = iter.next() {
                if let (ContainerState::Running, Some(pid)) = (status.state, status.pid) {
                    self.watch_exit(&name, pid);
                }
                // Asked about at the first sync: it may have ended before its process was
                // watched (and its pid been taken since).
                self.exited.insert(name.clone());
                track.restarts = attempt;
                track.current = Some(attempt_of(attempt, &status));
                track.ready = status.state == ContainerState::Running;
                track.started = track.ready;
            }
            if let Some((attempt, status)) = iter.next() {
                track.previous = Some(attempt_of(attempt, &status));
            }
            tracing::info!(pod = %self.uid, container = %name, "took over a running container");
            self.tracks.insert(name, track);
        }
    }

    fn watch_exit(&mut self, name: &str, pid: i32) {
        let name = name.to_owned();
        let sender = self.exit_sender.clone();
        self.watching += 1;
        // A new process of this container: an exit seen before is an earlier attempt's.
        self.exited.remove(&name);
        tokio::spawn(async move {
            if let Err(err) = wait_for_exit(pid).await {
                tracing::warn!(%err, pid, "watching a container's process");
            }
            let _ = sender.send(name);
        });
    }

    /// Runs until the pod is gone from the node.
    pub async fn run(mut self, mut updates: watch::Receiver<PodUpdate>) {
        self.updates = Some(updates.clone());
        loop {
            let update = updates.borrow_and_update().clone();
            let wake = match update {
                // Each step boxed: the worker's task, waiting below most of the time, then
                // holds only this loop's state, not the largest step's (tens of KiB per pod).
                PodUpdate::Present(pod) if pod.metadata.deletion_timestamp.is_none() => {
                    Box::pin(self.sync(&pod)).await
                }
                PodUpdate::Present(pod) => {
                    Box::pin(self.terminate(Some(&pod))).await;
                    return;
                }
                PodUpdate::Gone => {
                    Box::pin(self.terminate(None)).await;
                    return;
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The kubelet is shutting down; the containers go on running.
                        return;
                    }
                }
                Some(name) = self.exits.recv() => {
                    self.watching -= 1;
                    self.exited.insert(name);
                }
                Some(report) = self.probe_results.recv() => self.probe_reports.push(report),
                Ok(()) = self.network.changed() => {}
                _ = sleep => {}
            }
        }
    }

    /// One pass over the pod; returns when it wants to be woken if nothing else happens.
    async fn sync(&mut self, pod: &Pod) -> Option<Instant> {
        self.refresh_exits().await;
        // An exit seen but not recorded (the runtime could not be asked, or had not reaped
        // the process yet) is asked about again soon.
        let unrecorded = self
            .running_attempts()
            .iter()
            .any(|(name, _)| self.exited.contains(name));
        let exits_retry = unrecorded.then(|| Instant::now() + EXIT_RETRY);
        let wake = self.converge(pod).await;
        let wake = wake.into_iter().chain(exits_retry).min();
        // Volumes fed by ConfigMaps and Secrets are set up again periodically (updates).
        let wake = wake.into_iter().chain(volumes::refresh_deadline(pod)).min();
        let wake = wake.into_iter().chain(self.sync_probes(pod)).min();
        timed("status", &self.uid.clone(), self.post_status(pod)).await;
        wake
    }

    /// (container name, runtime id) of every attempt not known to have exited.
    fn running_attempts(&self) -> Vec<(String, String)> {
        self.tracks
            .iter()
            .filter_map(|(name, track)| {
                let attempt = track.current.as_ref()?;
                attempt
                    .exit
                    .is_none()
                    .then(|| (name.clone(), attempt.container_id.clone()))
            })
            .collect()
    }

    /// Records the exits of attempts whose processes have ended.
    async fn refresh_exits(&mut self) {
        let running = self.running_attempts();
        for (name, id) in running {
            if !self.exited.contains(&name) {
                continue;
            }
            let Ok(status) = self.ctx.runtime.container_status(&id).await else {
                continue;
            };
            let Some(exit) = status
                .exit
                .filter(|_| status.state == ContainerState::Exited)
            else {
                continue;
            };
            let track = self.tracks.get_mut(&name).expect("tracked");
            let attempt = track.current.as_mut().expect("current");
            let message = termination_message(&self.dirs.termination_log(&name, attempt.attempt));
            let reason = exit_reason(&exit);
            let finished_at = exit
                .finished_at
                .parse()
                .unwrap_or_else(|_| jiff::Timestamp::now());
            let ran_for = attempt
                .started_at
                .map(|at| finished_at.duration_since(at).unsigned_abs())
                .unwrap_or_default();
            attempt.exit = Some(Exit {
                exit_code: exit.exit_code,
                signal: exit.signal,
                reason: reason.to_owned(),
                message,
                finished_at,
            });
            track.ready = false;
            track.started = false;
            let backoff = self.crash_backoff.entry(name.clone()).or_default();
            if ran_for >= crate::backoff::RESET_AFTER {
                backoff.reset();
            }
            backoff.failed(Instant::now());
            self.killing.remove(&id);
            self.exited.remove(&name);
        }
    }

    /// Brings the node in line with the pod; returns the next back-off deadline, if any.
    async fn converge(&mut self, pod: &Pod) -> Option<Instant> {
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(api_phase, Some("Succeeded" | "Failed")) {
            // A terminal pod never runs again.
            self.stop_all(None).await;
            return None;
        }
        if self.start_time.is_none() {
            self.start_time = Some(jiff::Timestamp::now());
        }
        let retry = Instant::now() + crate::backoff::INITIAL;
        if let Some(sandbox) = &self.sandbox
            && !baton_runtime::pid_namespace_alive(sandbox)
        {
            // The holder of the pod's PID namespace ended (killed from outside, as upstream's
            // pause container can be), and the kernel killed the containers with it: the
            // sandbox is asked for again, the runtime makes the namespace again, and the
            // containers restart in it as their restart policy allows.
            self.ctx
                .event(
                    pod,
                    None,
                    false,
                    "SandboxChanged",
                    "Pod sandbox changed, it will be killed and re-created.".into(),
                )
                .await;
            self.sandbox = None;
        }
        let sandbox = match &self.sandbox {
            Some(sandbox) => sandbox.clone(),
            None => match timed("sandbox", &self.uid.clone(), self.create_sandbox(pod)).await {
                Ok(sandbox) => sandbox,
                Err(SandboxFailure::NetworkNotReady(message)) => {
                    // Woken when the network becomes ready (run's select).
                    self.ctx
                        .event(pod, None, true, "NetworkNotReady", message)
                        .await;
                    return None;
                }
                Err(SandboxFailure::Failed(message)) => {
                    self.ctx
                        .event(pod, None, true, "FailedCreatePodSandBox", message)
                        .await;
                    return Some(retry);
                }
            },
        };
        let volumes = match timed(
            "volumes",
            &self.uid,
            volumes::set_up(
                &self.ctx.client,
                &self.ctx.tokens,
                pod,
                &self.dirs,
                &self.ctx.allocatable,
            ),
        )
        .await
        {
            Ok(volumes) => volumes,
            Err(err) => {
                self.ctx
                    .event(pod, None, true, "FailedMount", err.to_string())
                    .await;
                return Some(retry);
            }
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .as_deref()
            .unwrap_or("Always")
            .to_owned();
        let hostname = pod_hostname(
            pod,
            &self.ctx.dns.node_hostname,
            &self.ctx.dns.cluster_domain,
        );

        // Ephemeral containers, each once, even before the pod is initialized (as upstream).
        let mut wake = self
            .start_ephemeral_containers(pod, &sandbox, &volumes, &hostname)
            .await;

        // Init containers, one at a time, each to success.
        for init in spec.init_containers.iter().flatten() {
            let track = self.tracks.get(&init.name).cloned().unwrap_or_default();
            if track.running() {
                return wake;
            }
            match track.current.as_ref().and_then(|a| a.exit.as_ref()) {
                Some(exit) if exit.exit_code == 0 && track.waiting.is_none() => continue,
                Some(_) if policy == "Never" => return wake,
                _ => {}
            }
            let at = self
                .start_or_back_off(pod, init, &sandbox, &volumes, &hostname, None)
                .await;
            return earliest(wake, at);
        }

        for container in &spec.containers {
            let track = self
                .tracks
                .get(&container.name)
                .cloned()
                .unwrap_or_default();
            if track.running() {
                continue;
            }
            if let Some(exit) = track.current.as_ref().and_then(|a| a.exit.as_ref()) {
                let restart = match policy.as_str() {
                    "Always" => true,
                    "OnFailure" => exit.exit_code != 0,
                    _ => false,
                };
                if !restart {
                    continue;
                }
            }
            let at = self
                .start_or_back_off(pod, container, &sandbox, &volumes, &hostname, None)
                .await;
            wake = earliest(wake, at);
        }
        wake
    }

    /// Starts the ephemeral containers that have not run yet, each in the PID namespace of
    /// the container it targets; returns when to try again those that could not start.
    async fn start_ephemeral_containers(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        volumes: &HashMap<String, PathBuf>,
        hostname: &str,
    ) -> Option<Instant> {
        // With a shared process namespace, every container is already in the target's.
        let shared = pod.spec.as_ref().and_then(|s| s.share_process_namespace) == Some(true);
        let mut wake = None;
        for (container, target) in crate::ephemeral_containers::of(pod) {
            let started = self
                .tracks
                .get(&container.name)
                .is_some_and(|t| t.current.is_some());
            if started {
                continue;
            }
            let target = target.filter(|_| !shared).map(|name| TargetContainer {
                running_id: self
                    .tracks
                    .get(&name)
                    .and_then(|t| t.current.as_ref())
                    .filter(|a| a.exit.is_none())
                    .map(|a| a.container_id.clone()),
                name,
            });
            let at = self
                .start_or_back_off(pod, &container, sandbox, volumes, hostname, target)
                .await;
            wake = earliest(wake, at);
        }
        wake
    }

    /// Starts the next attempt of `container` unless its back-off forbids it now (with
    /// `target`, an ephemeral container's, in that container's PID namespace).
    async fn start_or_back_off(
        &mut self,
        pod: &Pod,
        container: &Container,
        sandbox: &Sandbox,
        volumes: &HashMap<String, PathBuf>,
        hostname: &str,
        target: Option<TargetContainer>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let image = container.image.clone().unwrap_or_default();
        let previous = self
            .tracks
            .get(&container.name)
            .cloned()
            .unwrap_or_default();
        let ran_before = previous.current.as_ref().is_some_and(|a| a.exit.is_some());
        if ran_before
            && let Some(at) = self
                .crash_backoff
                .get(&container.name)
                .and_then(|b| b.retry_at(now))
        {
            let delay = self.crash_backoff[&container.name].delay().as_secs();
            let track = self.tracks.entry(container.name.clone()).or_default();
            if track
                .waiting
                .as_ref()
                .is_none_or(|(reason, _)| reason != "CrashLoopBackOff")
            {
                self.ctx
                    .event(
                        pod,
                        Some(&container.name),
                        true,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}",
                            container.name,
                            pod_description(pod)
                        ),
                    )
                    .await;
            }
            let track = self.tracks.entry(container.name.clone()).or_default();
            track.waiting = Some((
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {delay}s restarting failed container={} pod={}",
                    container.name,
                    pod_description(pod)
                ),
            ));
            return Some(at);
        }
        if let Some(at) = self.pull_backoff.get(&image).and_then(|b| b.retry_at(now)) {
            let track = self.tracks.entry(container.name.clone()).or_default();
            track.waiting = Some((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\""),
            ));
            return Some(at);
        }
        let attempt = previous
            .current
            .as_ref()
            .map(|a| a.attempt + u32::from(a.exit.is_some()))
            .unwrap_or(0);
        let pod_ip = self.pod_ip_text(pod);
        let pod_ip = pod_ip.as_deref();
        let request = StartRequest {
            pod,
            container,
            attempt,
            sandbox,
            dirs: &self.dirs,
            volumes,
            hostname,
            pod_ip,
            updates: self.updates.clone(),
            target,
        };
        match timed("container", &self.uid, start_container(&self.ctx, &request)).await {
            Ok(started) => {
                self.pull_backoff.remove(&image);
                let track = self.tracks.entry(container.name.clone()).or_default();
                let replaced = track.current.take();
                if let Some(old) = track.previous.take() {
                    self.remove_attempt(&container.name, &old).await;
                }
                let id = started.attempt.container_id.clone();
                let track = self.tracks.entry(container.name.clone()).or_default();
                track.previous = replaced;
                track.current = Some(started.attempt);
                track.restarts = attempt;
                track.waiting = None;
                // Regular containers' probes decide these (sync_probes).
                track.ready = true;
                track.started = true;
                self.watch_exit(&container.name, started.pid);
                if started.post_start_failure.is_some() {
                    // As upstream: killed with the pod's grace period (preStop included), then
                    // restarted by the restart policy.
                    let grace = pod_grace_seconds(pod);
                    self.stop_in_background(
                        pod,
                        container,
                        &id,
                        Duration::from_secs(grace),
                        "FailedPostStartHook".into(),
                    );
                }
                None
            }
            Err(failure) => {
                let track = self.tracks.entry(container.name.clone()).or_default();
                track.waiting = Some((failure.reason.clone(), failure.message.clone()));
                let backoff = if failure.image_pull {
                    self.pull_backoff.entry(image).or_default()
                } else {
                    self.crash_backoff
                        .entry(container.name.clone())
                        .or_default()
                };
                backoff.failed(now);
                if !failure.image_pull {
                    self.ctx
                        .event(
                            pod,
                            Some(&container.name),
                            true,
                            "Failed",
                            format!("Error: {}", failure.reason),
                        )
                        .await;
                }
                Some(
                    backoff
                        .retry_at(now)
                        .unwrap_or(now + crate::backoff::INITIAL),
                )
            }
        }
    }

    /// What the runtime makes the pod's sandbox from.
    fn sandbox_config(&self, pod: &Pod) -> SandboxConfig {
        let spec = pod.spec.as_ref();
        let hostname = pod_hostname(
            pod,
            &self.ctx.dns.node_hostname,
            &self.ctx.dns.cluster_domain,
        );
        SandboxConfig {
            id: self.uid.clone(),
            hostname: hostname.chars().take(63).collect(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            host_ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
            shm_size: SHM_SIZE,
            // With hostPID the containers are in the node's PID namespace instead.
            share_pid: spec.and_then(|s| s.share_process_namespace) == Some(true)
                && spec.and_then(|s| s.host_pid) != Some(true),
        }
    }

    async fn create_sandbox(&mut self, pod: &Pod) -> Result<Sandbox, SandboxFailure> {
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        // Read and marked seen in one step: a network that comes up right after still wakes
        // the worker (run's select).
        let not_ready = self.network.borrow_and_update().not_ready_message();
        if !host_network
            && let Some(message) = not_ready
            && !self.ctx.network.has_attachment(&self.uid)
        {
            return Err(SandboxFailure::NetworkNotReady(
                crate::pod_network::AttachPodError::NotReady(message).to_string(),
            ));
        }
        let sandbox = self
            .ctx
            .runtime
            .create_sandbox(self.sandbox_config(pod))
            .await
            .map_err(|err| {
                SandboxFailure::Failed(format!("Failed to create pod sandbox: {err}"))
            })?;
        if let Some(netns) = &sandbox.network {
            match self.ctx.network.attach(&self.uid, netns, pod).await {
                Ok(ip) => self.pod_ip = Some(ip),
                Err(err) => {
                    // A sandbox with no containers yet is made again on the next attempt; one
                    // whose containers run (a restarted kubelet found them) is kept.
                    if self.tracks.is_empty() {
                        let _ = self.ctx.runtime.remove_sandbox(&self.uid).await;
                    }
                    if let crate::pod_network::AttachPodError::NotReady(_) = err {
                        // The network went away since the check above: wait for it.
                        return Err(SandboxFailure::NetworkNotReady(err.to_string()));
                    }
                    return Err(SandboxFailure::Failed(format!(
                        "Failed to create pod sandbox: {}",
                        baton_images::error_chain(&err)
                    )));
                }
            }
        }
        let pod_ip = self.pod_ip_text(pod);
        let files = etc_files(pod, pod_ip.as_deref(), &self.ctx.dns);
        self.dirs.write_etc_files(&files).map_err(|err| {
            SandboxFailure::Failed(format!(
                "Failed to create pod sandbox: write /etc files: {err}"
            ))
        })?;
        self.sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// Posts the pod's status if it changed.
    async fn post_status(&mut self, pod: &Pod) {
        let facts = PodFacts {
            host_ip: Some(self.ctx.node_ip.to_string()),
            pod_ip: self.pod_ip_text(pod),
            sandbox_ready: self.sandbox.is_some(),
            start_time: self.start_time,
        };
        let status = pod_status(pod, &self.tracks, &facts, pod.status.as_ref());
        if self.posted.as_ref() == Some(&status) {
            return;
        }
        // A terminal phase is final: what the node has now (after a reboot, nothing) never
        // takes it back.
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(api_phase, Some("Succeeded" | "Failed")) && status.phase.as_deref() != api_phase
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "metadata": { "uid": self.uid },
            "status": status,
        });
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.posted = Some(status),
            Err(err) => tracing::warn!(pod = %pod.name_any(), %err, "posting the pod status"),
        }
    }

    /// Stops every running attempt and waits for them to end: with a grace period, each one's
    /// preStop hook, SIGTERM, then SIGKILL once the grace period has passed (all at once, as
    /// upstream); without one (`None`), SIGKILL at once.
    async fn stop_all(&mut self, grace: Option<(Duration, &Pod)>) {
        let running = self.running_attempts();
        if running.is_empty() {
            return;
        }
        match grace {
            Some((grace, pod)) => {
                let requests: Vec<StopRequest> = running
                    .iter()
                    .map(|(name, id)| StopRequest {
                        name: name.clone(),
                        container_id: id.clone(),
                        grace,
                        message: format!("Stopping container {name}"),
                        // A stop already under way (probe failure) has run the hook.
                        pre_stop: pod_container(pod, name)
                            .filter(|_| !self.killing.contains(id))
                            .and_then(|container| self.pre_stop(pod, container, id)),
                    })
                    .collect();
                let ctx = &self.ctx;
                futures::future::join_all(
                    requests
                        .into_iter()
                        .map(|request| stop_container(ctx, pod, request)),
                )
                .await;
            }
            None => {
                for (_, id) in &running {
                    let _ = self.ctx.runtime.signal_container(id, SIGKILL).await;
                }
            }
        }
        self.wait_for_exits(Instant::now() + KILL_WAIT).await;
        self.refresh_exits().await;
    }

    /// Applies the probe results that came in, stops containers whose liveness or startup
    /// probe failed, sets each container's started and ready state, and starts the probe runs
    /// due now; returns when the next one is due.
    fn sync_probes(&mut self, pod: &Pod) -> Option<Instant> {
        let now = Instant::now();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[]);
        for container in containers {
            let running = self
                .tracks
                .get(&container.name)
                .filter(|track| track.running())
                .and_then(|track| track.current.as_ref());
            match running {
                Some(attempt) => {
                    let started_at = attempt.started_at.map_or(now, |at| instant_of(at, now));
                    self.probes
                        .running(container, &attempt.container_id, started_at);
                }
                None => self.probes.stopped(&container.name),
            }
        }
        for report in std::mem::take(&mut self.probe_reports) {
            let verdict = self.probes.record(
                &report.container,
                &report.container_id,
                report.kind,
                report.result,
            );
            if let (Some(Verdict::Kill(kind)), Some(container)) =
                (verdict, pod_container(pod, &report.container))
            {
                self.kill_for_probe(pod, container, &report.container_id, kind);
            }
        }
        for container in containers {
            if let Some(track) = self.tracks.get_mut(&container.name) {
                // A container being stopped for a failure is not ready any more.
                let stopping = track
                    .current
                    .as_ref()
                    .is_some_and(|a| self.killing.contains(&a.container_id));
                track.started = self.probes.started(&container.name);
                track.ready = self.probes.ready(&container.name) && !stopping;
            }
        }
        // Containers being stopped are not probed again (their next attempt is).
        let due: Vec<DueProbe> = self
            .probes
            .due(now)
            .into_iter()
            .filter(|due| !self.killing.contains(&due.container_id))
            .collect();
        if !due.is_empty() {
            let pod = Arc::new(pod.clone());
            for probe in due {
                self.spawn_probe(&pod, probe);
            }
        }
        self.probes.next_due()
    }

    /// Runs one probe in a task of its own: records its event (Unhealthy, ProbeWarning) and
    /// sends the result back to the worker.
    fn spawn_probe(&self, pod: &Arc<Pod>, due: DueProbe) {
        let Some(container) = pod_container(pod, &due.container) else {
            return;
        };
        let Some(probe) = due.kind.of(container).cloned() else {
            return;
        };
        let target = self.target(pod, container, &due.container_id);
        let (ctx, pod, sender) = (self.ctx.clone(), pod.clone(), self.probe_sender.clone());
        tokio::spawn(async move {
            let output = run_probe(&ctx.runtime, &probe, &target).await;
            let kind = due.kind.title();
            let _ = sender.send(ProbeReport {
                container: due.container.clone(),
                container_id: due.container_id,
                kind: due.kind,
                result: output.result(),
            });
            let (reason, note) = match output {
                ProbeOutput::Success => return,
                ProbeOutput::Warning(message) => {
                    ("ProbeWarning", format!("{kind} probe warning: {message}"))
                }
                ProbeOutput::Failure(message) => {
                    ("Unhealthy", format!("{kind} probe failed: {message}"))
                }
                ProbeOutput::Error(message) => (
                    "Unhealthy",
                    format!("{kind} probe errored and resulted in unknown state: {message}"),
                ),
            };
            ctx.event(&pod, Some(&due.container), true, reason, note)
                .await;
        });
    }

    /// Stops a container whose liveness or startup probe failed, with the probe's
    /// terminationGracePeriodSeconds or else the pod's.
    fn kill_for_probe(
        &mut self,
        pod: &Pod,
        container: &Container,
        container_id: &str,
        kind: ProbeKind,
    ) {
        let spec = pod.spec.as_ref();
        let restart = spec.and_then(|s| s.restart_policy.as_deref()) != Some("Never");
        let mut message = format!("Container {} failed {} probe", container.name, kind.lower());
        if restart {
            message.push_str(", will be restarted");
        }
        let grace = kind
            .of(container)
            .and_then(|p| p.termination_grace_period_seconds)
            .map_or_else(|| pod_grace_seconds(pod), |seconds| seconds.max(0) as u64);
        self.stop_in_background(
            pod,
            container,
            container_id,
            Duration::from_secs(grace),
            message,
        );
    }

    /// Stops a running attempt in a task of its own (preStop hook, SIGTERM, SIGKILL); the
    /// worker learns of its exit as of any other, and the restart policy applies.
    fn stop_in_background(
        &mut self,
        pod: &Pod,
        container: &Container,
        container_id: &str,
        grace: Duration,
        message: String,
    ) {
        if !self.killing.insert(container_id.to_owned()) {
            return;
        }
        let request = StopRequest {
            name: container.name.clone(),
            container_id: container_id.to_owned(),
            grace,
            message,
            pre_stop: self.pre_stop(pod, container, container_id),
        };
        let (ctx, pod) = (self.ctx.clone(), pod.clone());
        tokio::spawn(async move { stop_container(&ctx, &pod, request).await });
    }

    /// The container's preStop hook and where it reaches the container.
    fn pre_stop(
        &self,
        pod: &Pod,
        container: &Container,
        container_id: &str,
    ) -> Option<(LifecycleHandler, Target)> {
        let handler = container.lifecycle.as_ref()?.pre_stop.clone()?;
        Some((handler, self.target(pod, container, container_id)))
    }

    /// Where probes and hooks of an attempt reach it.
    fn target(&self, pod: &Pod, container: &Container, container_id: &str) -> Target {
        Target::new(
            pod,
            container,
            container_id,
            self.sandbox.as_ref(),
            self.pod_ip.map(std::net::IpAddr::V4),
            self.ctx.node_ip,
        )
    }

    /// The pod's IP as status and environment show it: the node's for a hostNetwork pod.
    fn pod_ip_text(&self, pod: &Pod) -> Option<String> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            Some(self.ctx.node_ip.to_string())
        } else {
            self.pod_ip.map(|ip| ip.to_string())
        }
    }

    /// Waits until every watched process has exited or `deadline` passes.
    async fn wait_for_exits(&mut self, deadline: Instant) {
        let until = tokio::time::Instant::from_std(deadline);
        while self.watching > 0 {
            match tokio::time::timeout_at(until, self.exits.recv()).await {
                Ok(Some(name)) => {
                    self.watching -= 1;
                    self.exited.insert(name);
                }
                _ => return,
            }
        }
    }

    /// Stops the pod's containers within its grace period and removes everything it has on the
    /// node; then lets the API server remove the pod.
    async fn terminate(&mut self, pod: Option<&Pod>) {
        // The deletion's own grace period, else the pod's.
        let grace = pod.map_or(0, |p| {
            p.metadata
                .deletion_grace_period_seconds
                .map_or_else(|| pod_grace_seconds(p), |seconds| seconds.max(0) as u64)
        });
        match pod {
            Some(pod) => self.stop_all(Some((Duration::from_secs(grace), pod))).await,
            None => self.stop_all(None).await,
        }
        self.clean_up().await;
        if let Some(pod) = pod {
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                &pod.namespace().unwrap_or_default(),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(err) => tracing::warn!(pod = %pod.name_any(), %err, "removing the pod"),
            }
        }
    }

    /// Removes the pod's containers, sandbox, volumes and directories from the node.
    async fn clean_up(&mut self) {
        if let Ok(all) = self.ctx.runtime.list_containers().await {
            for status in all {
                if let Some((uid, name, attempt)) = parse_container_id(&status.id)
                    && uid == self.uid
                {
                    let attempt = attempt_of(attempt, &status);
                    self.remove_attempt(name, &attempt).await;
                }
            }
        }
        self.ctx.network.detach(&self.uid).await;
        self.pod_ip = None;
        if let Err(err) = self.ctx.runtime.remove_sandbox(&self.uid).await {
            tracing::warn!(pod = %self.uid, %err, "removing the pod sandbox");
        }
        volumes::tear_down(&self.dirs);
        self.ctx.tokens.forget_pod(&self.uid);
        if let Some(pod_cgroup) = &self.pod_cgroup {
            crate::cgroups::remove(pod_cgroup);
        }
        for (path, result) in [
            (&self.dirs.dir, self.dirs.remove()),
            (&self.dirs.logs, self.dirs.remove_logs()),
        ] {
            if let Err(err) = result {
                tracing::warn!(path = %path.display(), %err, "removing a pod directory");
            }
        }
        self.tracks.clear();
        self.sandbox = None;
    }

    /// Removes one attempt's container and its bundle (root filesystem unmounted first).
    async fn remove_attempt(&self, name: &str, attempt: &Attempt) {
        if let Err(err) = self
            .ctx
            .runtime
            .remove_container(&attempt.container_id)
            .await
        {
            tracing::warn!(container = %attempt.container_id, %err, "removing a container");
        }
        let bundle = self.dirs.bundle(name, attempt.attempt);
        if let Err(err) = baton_images::unmount_overlay(&bundle) {
            tracing::warn!(bundle = %bundle.display(), %err, "unmounting a container's root filesystem");
        }
        let _ = std::fs::remove_dir_all(&bundle);
        self.dirs.remove_log(name, attempt.attempt);
    }
}

/// Resolves once the pod is being deleted (or gone, or the kubelet stops watching it).
pub async fn deletion_requested(mut updates: watch::Receiver<PodUpdate>) {
    loop {
        let deleting = match &*updates.borrow_and_update() {
            PodUpdate::Present(pod) => pod.metadata.deletion_timestamp.is_some(),
            PodUpdate::Gone => true,
        };
        if deleting || updates.changed().await.is_err() {
            return;
        }
    }
}

/// Awaits `step` of pod `uid`'s start, logging how long it took (debug).
async fn timed<T>(step: &'static str, uid: &str, future: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let output = future.await;
    tracing::debug!(
        pod = uid,
        step,
        took_us = started.elapsed().as_micros() as u64,
        "pod step"
    );
    output
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Container `name` of the pod, regular or init.
fn pod_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The monotonic instant of wall-clock time `at` (`now` stands for the present).
fn instant_of(at: jiff::Timestamp, now: Instant) -> Instant {
    let ago = Duration::try_from(jiff::Timestamp::now().duration_since(at)).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

/// An attempt as the runtime reports it (after a kubelet restart).
fn attempt_of(attempt: u32, status: &baton_runtime::ContainerStatus) -> Attempt {
    let parse = |text: &Option<String>| text.as_deref().and_then(|t| t.parse().ok());
    Attempt {
        attempt,
        container_id: status.id.clone(),
        image_id: String::new(),
        started_at: parse(&status.started_at),
        exit: status.exit.as_ref().map(|exit| Exit {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: exit_reason(exit).into(),
            message: None,
            finished_at: exit
                .finished_at
                .parse()
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        }),
    }
}

/// The terminated reason of an exit, as upstream names them.
fn exit_reason(exit: &baton_runtime::ExitStatus) -> &'static str {
    if exit.oom_killed {
        "OOMKilled"
    } else if exit.unknown {
        "Unknown"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// Most bytes of a termination message kept (upstream's limit).
const MAX_TERMINATION_MESSAGE: u64 = 4096;

/// The termination message a container wrote (its first 4096 bytes), if any.
fn termination_message(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut text)
        .ok()?;
    (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned())
}

/// The pod's termination grace period in seconds (30 when unset, as upstream's default).
fn pod_grace_seconds(pod: &Pod) -> u64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}
