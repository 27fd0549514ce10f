//! The scheduling loop. It owns the cache, the queue and the nominations; informer changes
//! and binding results arrive on channels and are applied between cycles, so each decision is
//! made on a consistent in-memory state. Decisions are bound asynchronously: the pod is
//! assumed on its node at once and the loop goes on with the next pod.

use baton_client::CachedPod;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use tokio::sync::{mpsc, watch};

use crate::api::{ApiWriter, BindResult, FailureReport};
use crate::cache::{Cache, PodChange};
use crate::events::{ClusterEvent, node_changes};
use crate::fit_error::{NO_NODES_AVAILABLE, diagnosis_message};
use crate::framework::PluginSet;
use crate::plugins::default_preemption::{Nominator, PostFilter, nominated_node_name, post_filter};
use crate::pod_info::PodInfo;
use crate::queue::{Popped, SchedulingQueue};
use crate::schedule_one::{Algorithm, Outcome};

/// How many cycles run between yields to the runtime.
const CYCLES_PER_YIELD: u32 = 32;
/// The least time between two summaries in the log.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How many informer changes are applied before the loop schedules again.
const INPUTS_PER_BATCH: usize = 4096;

/// A change reported by an informer.
#[derive(Debug)]
pub enum Change<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
}

/// What the loop is told about the cluster.
#[derive(Debug)]
pub enum Input {
    Node(Change<Node>),
    Pod(Change<CachedPod>),
    Namespace(Change<Namespace>),
    Service(Change<Service>),
    Claim(Change<PersistentVolumeClaim>),
    Volume(Change<PersistentVolume>),
    Class(Change<StorageClass>),
}

/// Whether this scheduler schedules `pod` (schedulerName default-scheduler or unset; not
/// being deleted; not finished).
pub fn responsible_for(pod: &CachedPod) -> bool {
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    (scheduler.is_empty() || scheduler == "default-scheduler")
        && pod.metadata.deletion_timestamp.is_none()
        && phase != "Succeeded"
        && phase != "Failed"
}

/// Counters for the summary logged when the queue drains.
#[derive(Debug, Default)]
struct Stats {
    scheduled: u64,
    unschedulable: u64,
    bind_failures: u64,
    burst_start: Option<Instant>,
    last_logged: Option<Instant>,
}

/// The scheduler's state and loop.
#[derive(Debug)]
pub struct Scheduler {
    cache: Cache,
    queue: SchedulingQueue,
    nominator: Nominator,
    algorithm: Algorithm,
    api: ApiWriter,
    bind_results: mpsc::UnboundedSender<BindResult>,
    leading: bool,
    stats: Stats,
}

impl Scheduler {
    /// A scheduler writing through `api`; binding results come back on `bind_results`.
    pub fn new(api: ApiWriter, bind_results: mpsc::UnboundedSender<BindResult>) -> Self {
        Scheduler {
            cache: Cache::default(),
            queue: SchedulingQueue::default(),
            nominator: Nominator::default(),
            algorithm: Algorithm::default(),
            api,
            bind_results,
            leading: false,
            stats: Stats::default(),
        }
    }

    /// Runs until the input channel closes. Pods are scheduled only while `lead` is true.
    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut bound: mpsc::UnboundedReceiver<BindResult>,
        mut lead: watch::Receiver<bool>,
    ) {
        let mut cycles = 0u32;
        loop {
            let now = Instant::now();
            for _ in 0..INPUTS_PER_BATCH {
                match inputs.try_recv() {
                    Ok(input) => self.handle(input, now),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            while let Ok(result) = bound.try_recv() {
                self.on_bound(result, now);
            }
            self.queue.flush(now);
            if self.leading
                && let Some(popped) = self.queue.pop()
            {
                self.schedule_one(popped, now);
                cycles += 1;
                if cycles >= CYCLES_PER_YIELD {
                    cycles = 0;
                    tokio::task::yield_now().await;
                }
                continue;
            }
            self.log_burst_summary();
            let wakeup = self.queue.next_wakeup();
            let sleep = async {
                match wakeup {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.handle(input, Instant::now()),
                    None => return,
                },
                Some(result) = bound.recv() => self.on_bound(result, Instant::now()),
                changed = lead.changed() => match changed {
                    Ok(()) => {
                        self.leading = *lead.borrow_and_update();
                        tracing::info!(leading = self.leading, queued = self.queue.len(), nodes = self.cache.node_count(), "scheduling {}", if self.leading { "started" } else { "stopped" });
                    }
                    Err(_) => return,
                },
                () = sleep => {}
            }
        }
    }

    /// Logs what was scheduled since the last summary, when the queue drains and the last
    /// summary is at least 10 s old (or 1,000 pods ago).
    fn log_burst_summary(&mut self) {
        let Some(start) = self.stats.burst_start else {
            return;
        };
        let since_log = self.stats.last_logged.map(|t| t.elapsed());
        if since_log.is_some_and(|d| d < SUMMARY_INTERVAL) && self.stats.scheduled < 1000 {
            return;
        }
        let elapsed = start.elapsed().max(Duration::from_millis(1));
        let [active, backoff, unschedulable, gated, _] = self.queue.counts();
        tracing::info!(
            scheduled = self.stats.scheduled,
            unschedulable_attempts = self.stats.unschedulable,
            bind_failures = self.stats.bind_failures,
            per_second = format!("{:.0}", self.stats.scheduled as f64 / elapsed.as_secs_f64()),
            active,
            backoff,
            unschedulable,
            gated,
            "scheduling queue drained"
        );
        self.stats = Stats {
            last_logged: Some(Instant::now()),
            ..Stats::default()
        };
    }

    /// Applies one informer change.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Node(Change::Applied(node)) => self.on_node(node, now),
            Input::Node(Change::Deleted(node)) => {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                if let Some(old) = self.cache.remove_node(name) {
                    self.queue.on_event(&ClusterEvent::NodeDelete(&old), now);
                }
            }
            Input::Pod(Change::Applied(pod)) => self.on_pod(pod, now),
            Input::Pod(Change::Deleted(pod)) => {
                let key = crate::pod_info::pod_key(&pod);
                self.queue.delete(&key);
                self.nominator.remove(&key);
                if let Some(entry) = self.cache.remove_pod(&key) {
                    self.queue
                        .on_event(&ClusterEvent::AssignedPodDelete(&entry.info), now);
                }
            }
            Input::Namespace(Change::Applied(ns)) => self.cache.upsert_namespace(&ns),
            Input::Namespace(Change::Deleted(ns)) => self
                .cache
                .remove_namespace(ns.metadata.name.as_deref().unwrap_or_default()),
            Input::Service(Change::Applied(svc)) => self.cache.upsert_service(&svc),
            Input::Service(Change::Deleted(svc)) => self.cache.remove_service(
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.as_deref().unwrap_or_default(),
            ),
            Input::Claim(change) => {
                match change {
                    Change::Applied(claim) => self.cache.volumes.upsert_claim(claim),
                    Change::Deleted(claim) => self.cache.volumes.remove_claim(&claim),
                }
                self.queue.on_event(&ClusterEvent::VolumeChange, now);
            }
            Input::Volume(change) => {
                match change {
                    Change::Applied(volume) => self.cache.volumes.upsert_volume(volume),
                    Change::Deleted(volume) => self.cache.volumes.remove_volume(&volume),
                }
                self.queue.on_event(&ClusterEvent::VolumeChange, now);
            }
            Input::Class(change) => {
                match change {
                    Change::Applied(class) => self.cache.volumes.upsert_class(class),
                    Change::Deleted(class) => self.cache.volumes.remove_class(&class),
                }
                self.queue.on_event(&ClusterEvent::VolumeChange, now);
            }
        }
    }

    fn on_node(&mut self, node: Arc<Node>, now: Instant) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let old = self.cache.upsert_node(node);
        let Some(slot) = self.cache.slot_of(&name) else {
            return;
        };
        let info = self.cache.node(slot);
        match old {
            None => {
                self.queue.on_event(&ClusterEvent::NodeAdd(info), now);
            }
            Some(old) => {
                let Some(new) = info.node.as_ref() else {
                    return;
                };
                let changes = node_changes(&old, new);
                if !changes.is_empty() {
                    self.queue.on_event(
                        &ClusterEvent::NodeUpdate {
                            old: &old,
                            new: info,
                            changes,
                        },
                        now,
                    );
                }
            }
        }
    }

    fn on_pod(&mut self, pod: Arc<CachedPod>, now: Instant) {
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if bound {
            let info = Arc::new(PodInfo::new(pod).slimmed());
            self.queue.delete(&info.key);
            self.nominator.remove(&info.key);
            match self.cache.upsert_bound_pod(info.clone()) {
                PodChange::Added => {
                    self.queue
                        .on_event(&ClusterEvent::AssignedPodAdd(&info), now);
                }
                // The informer's first sight of a pod we assumed is its add for the queue.
                PodChange::Updated {
                    was_assumed: true, ..
                } => {
                    self.queue
                        .on_event(&ClusterEvent::AssignedPodAdd(&info), now);
                }
                PodChange::Updated { old, .. } => {
                    let relevant = old.labels() != info.labels()
                        || old.requests.requests != info.requests.requests;
                    if relevant {
                        self.queue.on_event(
                            &ClusterEvent::AssignedPodUpdate {
                                old: &old,
                                new: &info,
                            },
                            now,
                        );
                    }
                }
            }
            return;
        }
        let info = Arc::new(PodInfo::new(pod).without_containers());
        // A pod whose binding is in flight keeps its assumption; remember the newer object.
        if self.cache.refresh_assumed(info.clone()) {
            return;
        }
        if !responsible_for(&info.pod) {
            self.queue.delete(&info.key);
            self.nominator.remove(&info.key);
            return;
        }
        if let Some(node) = nominated_node_name(&info) {
            self.nominator.set(info.clone(), node);
        } else if self.nominator.node_of(&info.key).is_some() {
            // Keep our own nomination (its status write may still be on its way), with the
            // newer object.
            let node = self
                .nominator
                .node_of(&info.key)
                .unwrap_or_default()
                .to_string();
            self.nominator.set(info.clone(), &node);
        }
        self.queue.add(info, now);
    }

    fn schedule_one(&mut self, popped: Popped, now: Instant) {
        let info = popped.info;
        if self.stats.burst_start.is_none() {
            self.stats.burst_start = Some(now);
        }
        self.cache.prepare_order();
        let (outcome, state) = self.algorithm.schedule(&info, &self.cache, &self.nominator);
        match outcome {
            Outcome::Fit {
                slot,
                evaluated,
                feasible,
            } => {
                let node = self.cache.node(slot).name.clone();
                tracing::debug!(pod = %info.key, node = %node, evaluated, feasible, "assumed pod on node; binding");
                self.cache.assume(info.clone(), slot);
                self.queue.done(&info.key);
                self.nominator.remove(&info.key);
                self.stats.scheduled += 1;
                let claims = match state.as_ref().and_then(|s| s.volumes.as_ref()) {
                    Some(volumes) => crate::plugins::volume_binding::select_node(
                        volumes,
                        &mut self.cache.volumes,
                        &node,
                    ),
                    None => vec![],
                };
                self.api.bind(
                    info,
                    node,
                    claims,
                    popped.attempts,
                    self.bind_results.clone(),
                );
            }
            Outcome::NoNodes => {
                self.fail(
                    &info,
                    PluginSet::default(),
                    NO_NODES_AVAILABLE.to_string(),
                    None,
                    now,
                );
            }
            Outcome::Unfit {
                diagnosis,
                total_nodes,
            } => {
                let offset = self.algorithm.rng.below(total_nodes.max(1));
                let decision = match &state {
                    Some(state) => post_filter(
                        state,
                        &self.cache,
                        &diagnosis,
                        total_nodes,
                        &self.nominator,
                        offset,
                    ),
                    // A PreFilter rejected the pod for every node.
                    None => PostFilter::NotHelpful(format!(
                        "preemption: {}",
                        crate::fit_error::fit_error_message(
                            total_nodes,
                            Vec::<&str>::new(),
                            0,
                            Some(crate::plugins::default_preemption::NOT_HELPFUL),
                            None,
                            None,
                        )
                    )),
                };
                drop(state);
                let had_nomination = nominated_node_name(&info).is_some()
                    || self.nominator.node_of(&info.key).is_some();
                let (message, nominate) = match decision {
                    PostFilter::NotEligible(post) => (
                        diagnosis_message(total_nodes, &diagnosis, Some(&post)),
                        None,
                    ),
                    PostFilter::NotHelpful(post) => {
                        if had_nomination {
                            self.nominator.remove(&info.key);
                        }
                        (
                            diagnosis_message(total_nodes, &diagnosis, Some(&post)),
                            had_nomination.then(String::new),
                        )
                    }
                    PostFilter::Preempt { slot, victims } => {
                        let node = self.cache.node(slot).name.clone();
                        let displaced: Vec<Arc<PodInfo>> = self
                            .nominator
                            .on_node(&node)
                            .iter()
                            .filter(|p| p.priority < info.priority && p.key != info.key)
                            .cloned()
                            .collect();
                        for pod in &displaced {
                            self.nominator.remove(&pod.key);
                        }
                        self.nominator.set(info.clone(), &node);
                        tracing::info!(pod = %info.key, node = %node, victims = victims.len(), "preempting lower-priority pods");
                        self.api
                            .preempt(info.clone(), node.clone(), victims, displaced);
                        (
                            diagnosis_message(total_nodes, &diagnosis, None),
                            Some(node.to_string()),
                        )
                    }
                };
                self.fail(&info, diagnosis.plugins, message, nominate, now);
            }
        }
    }

    /// Parks a pod that fit nowhere and records why on it.
    fn fail(
        &mut self,
        info: &Arc<PodInfo>,
        rejected_by: PluginSet,
        message: String,
        nominated_node: Option<String>,
        now: Instant,
    ) {
        tracing::debug!(
            pod = %info.key,
            plugins = ?rejected_by.iter().map(|p| p.name()).collect::<Vec<_>>(),
            %message,
            "unable to schedule pod"
        );
        self.stats.unschedulable += 1;
        self.queue
            .requeue_unschedulable(&info.key, rejected_by, now);
        self.api.report_failure(FailureReport {
            pod: info.pod.clone(),
            reason: "Unschedulable",
            message,
            nominated_node,
        });
    }

    /// Applies the outcome of a binding.
    pub fn on_bound(&mut self, result: BindResult, now: Instant) {
        let BindResult {
            info,
            node,
            attempts,
            error,
        } = result;
        let Some(error) = error else {
            tracing::debug!(pod = %info.key, node = %node, "bound pod");
            return;
        };
        self.stats.bind_failures += 1;
        // A pod that is gone, or that the informer already shows bound, needs nothing more.
        let Some(latest) = self.cache.forget(&info.key, &info.uid) else {
            tracing::debug!(pod = %info.key, node = %node, error = %error.message, "binding failed for a pod that is gone or bound");
            return;
        };
        tracing::warn!(pod = %info.key, node = %node, code = ?error.code, error = %error.message, "binding failed; retrying after backoff");
        self.queue
            .on_event(&ClusterEvent::AssignedPodDelete(&latest), now);
        self.queue.requeue_backoff(latest.clone(), attempts, now);
        if !matches!(error.code, Some(404) | Some(409)) {
            self.api.report_failure(FailureReport {
                pod: latest.pod.clone(),
                reason: "SchedulerError",
                message: format!("running Bind plugin \"DefaultBinder\": {}", error.message),
                nominated_node: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{node, pod};

    fn scheduler() -> (Scheduler, mpsc::UnboundedReceiver<BindResult>) {
        // A client that is never used by these tests' synchronous paths.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Scheduler::new(ApiWriter::new(client), tx);
        s.leading = true;
        (s, rx)
    }

    #[test]
    fn responsibility() {
        assert!(responsible_for(&pod("p").build()));
        let other = pod("p")
            .with_spec(|s| s.scheduler_name = Some("other".into()))
            .build();
        assert!(!responsible_for(&other));
        let default = pod("p")
            .with_spec(|s| s.scheduler_name = Some("default-scheduler".into()))
            .build();
        assert!(responsible_for(&default));
        let mut done = pod("p");
        done.0.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(!responsible_for(&done.build()));
    }

    #[tokio::test]
    async fn assumed_pods_count_until_confirmed_or_forgotten() {
        let (mut s, _rx) = scheduler();
        let now = Instant::now();
        s.handle(
            Input::Node(Change::Applied(
                node("n1")
                    .allocatable(&[("cpu", "1"), ("pods", "10")])
                    .build(),
            )),
            now,
        );
        s.handle(
            Input::Pod(Change::Applied(
                pod("a").requests(&[("cpu", "600m")]).build(),
            )),
            now,
        );
        s.handle(
            Input::Pod(Change::Applied(
                pod("b").requests(&[("cpu", "600m")]).build(),
            )),
            now,
        );
        let first = s.queue.pop().unwrap();
        s.schedule_one(first, now);
        let slot = s.cache.slot_of("n1").unwrap();
        assert_eq!(s.cache.node(slot).requested.milli_cpu, 600);
        // The second pod sees the first one's resources taken.
        let second = s.queue.pop().unwrap();
        s.schedule_one(second, now);
        assert_eq!(s.cache.node(slot).requested.milli_cpu, 600);
        assert!(
            s.queue.get("default/b").is_some(),
            "b waits as unschedulable"
        );

        // The binding of a fails: a is forgotten, which frees the node for b.
        let a = s.cache.pod("default/a").unwrap().info.clone();
        s.on_bound(
            BindResult {
                info: a,
                node: "n1".into(),
                attempts: 1,
                error: Some(crate::api::BindError {
                    code: Some(500),
                    message: "boom".into(),
                }),
            },
            now,
        );
        assert_eq!(s.cache.node(slot).requested.milli_cpu, 0);
        assert!(s.queue.get("default/a").is_some(), "a is retried");

        // The informer shows b bound by someone else: it leaves the queue and counts.
        s.handle(
            Input::Pod(Change::Applied(
                pod("b")
                    .requests(&[("cpu", "600m")])
                    .node_name("n1")
                    .build(),
            )),
            now,
        );
        assert!(s.queue.get("default/b").is_none());
        assert_eq!(s.cache.node(slot).requested.milli_cpu, 600);
        // Terminal pods leave the informer as deletions and free their resources.
        s.handle(
            Input::Pod(Change::Deleted(pod("b").node_name("n1").build())),
            now,
        );
        assert_eq!(s.cache.node(slot).requested.milli_cpu, 0);
    }

    #[tokio::test]
    async fn no_nodes() {
        let (mut s, _rx) = scheduler();
        let now = Instant::now();
        s.handle(Input::Pod(Change::Applied(pod("a").build())), now);
        let popped = s.queue.pop().unwrap();
        s.schedule_one(popped, now);
        assert_eq!(
            s.queue.get("default/a").unwrap().state,
            crate::queue::QueueState::Unschedulable
        );
        // A node arriving moves it back.
        s.handle(
            Input::Node(Change::Applied(node("n1").build())),
            now + Duration::from_secs(2),
        );
        s.queue.flush(now + Duration::from_secs(2));
        assert!(s.queue.pop().is_some());
    }
}
