//! The scheduler's writes to the API server, all made off the scheduling loop in tasks of
//! their own: bindings (up to 128 workers, the rest queued), the Scheduled event of each pod
//! bound (a few workers, at most 1,000 waiting, the rest dropped as upstream's event
//! broadcaster drops them), the PodScheduled condition and FailedScheduling events of pods
//! that fit nowhere, and preemption (evicting victims, nominating nodes).

use baton_client::CachedPod;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::pod_info::PodInfo;

/// How many bindings may be in flight at once.
pub const MAX_BINDS_IN_FLIGHT: usize = 128;
/// How many status, event and eviction writes may be in flight at once.
pub const MAX_REPORTS_IN_FLIGHT: usize = 16;
/// How many Scheduled events may be written at once: they yield to the bindings.
pub const MAX_SCHEDULED_EVENTS_IN_FLIGHT: usize = 4;
/// How many Scheduled events may wait; more are dropped, as upstream's event broadcaster
/// drops events beyond its queue of 1,000 (`maxQueuedEvents`) rather than fall behind.
pub const MAX_SCHEDULED_EVENTS_WAITING: usize = 1000;
/// The name its events are reported under.
const SCHEDULER_NAME: &str = "default-scheduler";
/// The events API's limit on a note.
const NOTE_LENGTH_LIMIT: usize = 1024;

/// The outcome of a binding, sent back to the scheduling loop.
#[derive(Debug)]
pub struct BindResult {
    pub info: Arc<PodInfo>,
    pub node: Arc<str>,
    pub attempts: u32,
    /// `None` when the binding was written.
    pub error: Option<BindError>,
}

/// Why a binding failed.
#[derive(Debug)]
pub struct BindError {
    /// The HTTP status when the API server answered.
    pub code: Option<u16>,
    pub message: String,
}

/// A pod's failure to schedule, to record on the pod.
#[derive(Debug)]
pub struct FailureReport {
    pub pod: Arc<CachedPod>,
    /// "Unschedulable" or "SchedulerError".
    pub reason: &'static str,
    pub message: String,
    /// `Some(node)` sets status.nominatedNodeName (empty clears it); `None` leaves it.
    pub nominated_node: Option<String>,
}

/// A binding waiting for a free worker: a few dozen bytes, where a task spawned to wait for
/// its turn held its whole future (about 2.5 KiB; a backlog queued thousands).
struct BindJob {
    info: Arc<PodInfo>,
    node: Arc<str>,
    claims: Vec<crate::plugins::volume_binding::ClaimToSelect>,
    attempts: u32,
    results: mpsc::UnboundedSender<BindResult>,
}

/// The Scheduled event of a pod just bound: "Successfully assigned NS/NAME to NODE".
struct ScheduledEvent {
    pod: ObjectReference,
    node: Arc<str>,
}

/// Jobs waiting for a worker, and how many workers run (at most `max`). Both change under
/// one lock, so that a worker never stops while a job waits.
struct WorkQueue<J> {
    waiting: std::collections::VecDeque<J>,
    workers: usize,
    max: usize,
    /// How many jobs may wait; a job beyond it is dropped.
    max_waiting: usize,
    /// How many jobs were dropped.
    dropped: u64,
}

impl<J> WorkQueue<J> {
    fn new(max: usize) -> Self {
        Self::bounded(max, usize::MAX)
    }

    fn bounded(max: usize, max_waiting: usize) -> Self {
        WorkQueue {
            waiting: std::collections::VecDeque::new(),
            workers: 0,
            max,
            max_waiting,
            dropped: 0,
        }
    }

    /// Queues `job` (or drops it when `max_waiting` jobs wait), or hands it back when a new
    /// worker should start with it.
    fn submit(&mut self, job: J) -> Option<J> {
        if self.workers == self.max {
            if self.waiting.len() < self.max_waiting {
                self.waiting.push_back(job);
            } else {
                self.dropped += 1;
            }
            return None;
        }
        self.workers += 1;
        Some(job)
    }

    /// The next job for a worker that finished one, oldest first; `None` tells it to stop.
    fn next(&mut self) -> Option<J> {
        let next = self.waiting.pop_front();
        if next.is_none() {
            self.workers -= 1;
            // A drained backlog gives its room back.
            if self.waiting.capacity() > crate::queue::KEEP_CAPACITY {
                self.waiting.shrink_to_fit();
            }
        }
        next
    }
}

/// Starts a worker of `queue` on a new task: it runs `job`, then the waiting jobs, until none
/// waits. Each job runs as a task of its own, so that a job that panics is logged and the
/// worker goes on (the queue never loses a worker).
fn spawn_worker<J, F, Fut>(queue: Arc<std::sync::Mutex<WorkQueue<J>>>, job: J, work: F)
where
    J: Send + 'static,
    F: Fn(J) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut job = job;
        loop {
            if let Err(e) = tokio::spawn(work(job)).await
                && e.is_panic()
            {
                tracing::error!("a queued API write panicked");
            }
            let next = queue.lock().expect("work queue").next();
            match next {
                Some(next) => job = next,
                None => return,
            }
        }
    });
}

/// Writes to the API server for the scheduler.
#[derive(Clone)]
pub struct ApiWriter {
    client: Client,
    recorder: Recorder,
    /// The reportingInstance of its events: "default-scheduler-HOSTNAME".
    reporting_instance: String,
    binds: Arc<std::sync::Mutex<WorkQueue<BindJob>>>,
    scheduled_events: Arc<std::sync::Mutex<WorkQueue<ScheduledEvent>>>,
    reports: Arc<Semaphore>,
}

impl std::fmt::Debug for ApiWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWriter")
            .field(
                "bind_workers",
                &self.binds.lock().expect("bind queue").workers,
            )
            .field(
                "binds_waiting",
                &self.binds.lock().expect("bind queue").waiting.len(),
            )
            .field(
                "scheduled_events_dropped",
                &self.scheduled_events.lock().expect("event queue").dropped,
            )
            .field("reports_available", &self.reports.available_permits())
            .finish()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// upstream's truncateMessage for event notes.
pub fn truncate_note(message: &str) -> String {
    if message.len() <= NOTE_LENGTH_LIMIT {
        return message.to_string();
    }
    let suffix = " ...";
    let mut end = NOTE_LENGTH_LIMIT - suffix.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &message[..end])
}

fn pod_reference(pod: &CachedPod, resource_version: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: resource_version.or_else(|| pod.metadata.resource_version.clone()),
        field_path: None,
    }
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl ApiWriter {
    /// A writer reporting events as "default-scheduler".
    pub fn new(client: Client) -> Self {
        let reporting_instance = format!("{SCHEDULER_NAME}-{}", hostname());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: SCHEDULER_NAME.into(),
                instance: Some(reporting_instance.clone()),
            },
        );
        ApiWriter {
            client,
            recorder,
            reporting_instance,
            binds: Arc::new(std::sync::Mutex::new(WorkQueue::new(MAX_BINDS_IN_FLIGHT))),
            scheduled_events: Arc::new(std::sync::Mutex::new(WorkQueue::bounded(
                MAX_SCHEDULED_EVENTS_IN_FLIGHT,
                MAX_SCHEDULED_EVENTS_WAITING,
            ))),
            reports: Arc::new(Semaphore::new(MAX_REPORTS_IN_FLIGHT)),
        }
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Binds the pod to `node` in the background; the result comes back on `results`. The
    /// claims given (`(namespace, name)`, waiting for their pod's node) are first annotated
    /// with the node, so the volume binder binds or provisions their volumes there.
    pub fn bind(
        &self,
        info: Arc<PodInfo>,
        node: Arc<str>,
        claims: Vec<crate::plugins::volume_binding::ClaimToSelect>,
        attempts: u32,
        results: mpsc::UnboundedSender<BindResult>,
    ) {
        let job = BindJob {
            info,
            node,
            claims,
            attempts,
            results,
        };
        let Some(job) = self.binds.lock().expect("bind queue").submit(job) else {
            return;
        };
        let this = self.clone();
        spawn_worker(self.binds.clone(), job, move |job| {
            let this = this.clone();
            async move { this.bind_one(job).await }
        });
    }

    /// Writes one binding and sends its result back.
    async fn bind_one(&self, job: BindJob) {
        let BindJob {
            info,
            node,
            claims,
            attempts,
            results,
        } = job;
        if let Err(error) = self.select_node_for_claims(&claims, &node).await {
            let _ = results.send(BindResult {
                info,
                node,
                attempts,
                error: Some(error),
            });
            return;
        }
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(info.name().to_string()),
                namespace: Some(info.namespace.clone()),
                uid: Some(info.uid.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let result = self
            .pods(&info.namespace)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                info.name(),
                &PostParams::default(),
                &binding,
            )
            .await;
        if result.is_ok() {
            self.record_scheduled(&info, &node);
        }
        let error = result.err().map(|e| BindError {
            code: status_code(&e),
            // What the API server said, as upstream shows it (not the client's wrapping).
            message: match &e {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            },
        });
        let _ = results.send(BindResult {
            info,
            node,
            attempts,
            error,
        });
    }

    /// Queues the pod's Scheduled event (upstream's "Successfully assigned NS/NAME to NODE",
    /// action Binding), dropped when too many already wait.
    fn record_scheduled(&self, info: &PodInfo, node: &Arc<str>) {
        let job = ScheduledEvent {
            pod: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(info.name().to_string()),
                namespace: Some(info.namespace.clone()),
                uid: Some(info.uid.clone()),
                ..Default::default()
            },
            node: node.clone(),
        };
        let Some(job) = self
            .scheduled_events
            .lock()
            .expect("event queue")
            .submit(job)
        else {
            return;
        };
        let this = self.clone();
        spawn_worker(self.scheduled_events.clone(), job, move |job| {
            let this = this.clone();
            async move { this.write_scheduled(job).await }
        });
    }

    /// Creates a Scheduled event. A pod is bound once, so the event never repeats: it is
    /// created, never counted into a series, and so not kept (kube's `Recorder` keeps every
    /// event it wrote for its series, which would hold one per pod).
    async fn write_scheduled(&self, job: ScheduledEvent) {
        let namespace = job.pod.namespace.clone().unwrap_or_default();
        let name = job.pod.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = k8s_openapi::api::events::v1::Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                now,
            )),
            type_: Some("Normal".into()),
            reason: Some("Scheduled".into()),
            action: Some("Binding".into()),
            note: Some(format!(
                "Successfully assigned {namespace}/{name} to {}",
                job.node
            )),
            reporting_controller: Some(SCHEDULER_NAME.into()),
            reporting_instance: Some(self.reporting_instance.clone()),
            regarding: Some(job.pod),
            ..Default::default()
        };
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "recording a Scheduled event failed");
        }
    }

    /// Annotates each claim with the node its pod goes to, over the version the decision saw
    /// (a claim changed meanwhile fails the binding, and the pod is tried again).
    async fn select_node_for_claims(
        &self,
        claims: &[crate::plugins::volume_binding::ClaimToSelect],
        node: &str,
    ) -> Result<(), BindError> {
        for claim in claims {
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &claim.namespace);
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": claim.resource_version,
                "annotations": {baton_volume_binding::SELECTED_NODE_ANNOTATION: node},
            }});
            api.patch(&claim.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| BindError {
                    code: status_code(&e),
                    message: match &e {
                        kube::Error::Api(status) => status.message.clone(),
                        other => other.to_string(),
                    },
                })?;
        }
        Ok(())
    }

    /// Records a scheduling failure on the pod: the PodScheduled condition (when it changes)
    /// and a FailedScheduling event.
    pub fn report_failure(&self, report: FailureReport) {
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.reports.acquire().await;
            let resource_version = this.update_condition(&report).await;
            let event = Event {
                type_: EventType::Warning,
                reason: "FailedScheduling".into(),
                note: Some(truncate_note(&report.message)),
                action: "Scheduling".into(),
                secondary: None,
            };
            // The reference carries the resource version the condition was written at, so a
            // new message starts a new event instead of counting into the old one.
            let reference = pod_reference(&report.pod, resource_version);
            if let Err(e) = this.recorder.publish(&event, &reference).await {
                tracing::warn!(pod = %format!("{}/{}", reference.namespace.unwrap_or_default(), reference.name.unwrap_or_default()), error = %e, "recording a FailedScheduling event failed");
            }
        });
    }

    /// Patches the PodScheduled condition (and nominatedNodeName) unless they already say the
    /// same; returns the pod's resource version after the write.
    async fn update_condition(&self, report: &FailureReport) -> Option<String> {
        let pod = &report.pod;
        let status = pod.status.as_ref();
        let existing = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        let same_condition = existing.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some(report.reason)
                && c.message.as_deref() == Some(report.message.as_str())
        });
        let current_nominated = status
            .and_then(|s| s.nominated_node_name.clone())
            .unwrap_or_default();
        let same_nomination = report
            .nominated_node
            .as_ref()
            .is_none_or(|n| *n == current_nominated);
        if same_condition && same_nomination {
            return None;
        }
        let transition = match existing {
            Some(c) if c.status == "False" => c.last_transition_time.clone(),
            _ => None,
        }
        .unwrap_or_else(|| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
        });
        let mut status_patch = json!({
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": report.reason,
                "message": report.message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
            }],
        });
        if let Some(node) = &report.nominated_node {
            status_patch["nominatedNodeName"] = if node.is_empty() {
                serde_json::Value::Null
            } else {
                json!(node)
            };
        }
        let patch = json!({ "status": status_patch });
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        match self
            .pods(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(updated) => updated.metadata.resource_version,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "updating the PodScheduled condition failed");
                None
            }
        }
    }

    /// Evicts `victims` for `preemptor` on `node` (condition DisruptionTarget, delete, event)
    /// and clears the nominations of lower-priority pods that lose the node.
    pub fn preempt(
        &self,
        preemptor: Arc<PodInfo>,
        node: Arc<str>,
        victims: Vec<Arc<PodInfo>>,
        displaced: Vec<Arc<PodInfo>>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.reports.acquire().await;
            for victim in victims {
                this.evict(&preemptor, &node, &victim).await;
            }
            for pod in displaced {
                let patch = json!({ "status": { "nominatedNodeName": null } });
                if let Err(e) = this
                    .pods(&pod.namespace)
                    .patch_status(pod.name(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(pod = %pod.key, error = %e, "clearing a nominated node failed");
                }
            }
        });
    }

    async fn evict(&self, preemptor: &PodInfo, node: &str, victim: &PodInfo) {
        let pods = self.pods(&victim.namespace);
        let condition = json!({ "status": { "conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": "default-scheduler: preempting to accommodate a higher priority pod",
            "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        }]}});
        if let Err(e) = pods
            .patch_status(
                victim.name(),
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            tracing::warn!(pod = %victim.key, error = %e, "marking a preemption victim failed");
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(victim.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(victim.name(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => {
                tracing::warn!(pod = %victim.key, error = %e, "deleting a preemption victim failed");
                return;
            }
        }
        let event = Event {
            type_: EventType::Normal,
            reason: "Preempted".into(),
            note: Some(format!("Preempted by pod {} on node {node}", preemptor.uid)),
            action: "Preempting".into(),
            secondary: Some(pod_reference(&preemptor.pod, None)),
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &pod_reference(&victim.pod, None))
            .await
        {
            tracing::warn!(pod = %victim.key, error = %e, "recording a Preempted event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{WorkQueue, spawn_worker, truncate_note};

    #[tokio::test]
    async fn a_worker_whose_job_panics_is_replaced() {
        let queue = Arc::new(Mutex::new(WorkQueue::new(1)));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let work = move |job: u32| {
            let done = done_tx.clone();
            async move {
                assert_ne!(job, 1, "job 1 panics");
                let _ = done.send(job);
            }
        };
        let first = queue.lock().unwrap().submit(1).expect("a free worker");
        assert_eq!(
            queue.lock().unwrap().submit(2),
            None,
            "the one worker is busy"
        );
        assert_eq!(queue.lock().unwrap().submit(3), None);
        spawn_worker(queue.clone(), first, work);
        let wait = std::time::Duration::from_secs(5);
        for expected in [2, 3] {
            let done = tokio::time::timeout(wait, done_rx.recv()).await;
            assert_eq!(done.expect("the waiting jobs ran"), Some(expected));
        }
        // The replacement worker stops once nothing waits: the place is free again.
        tokio::time::timeout(wait, async {
            while queue.lock().unwrap().workers != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the worker's place is given back");
        assert_eq!(queue.lock().unwrap().submit(4), Some(4));
    }

    #[test]
    fn queued_jobs_wait_for_a_worker_and_run_oldest_first() {
        let mut queue = WorkQueue::new(2);
        assert_eq!(queue.submit(1), Some(1));
        assert_eq!(queue.submit(2), Some(2));
        // Both workers are busy: these wait.
        assert_eq!(queue.submit(3), None);
        assert_eq!(queue.submit(4), None);
        assert_eq!(queue.workers, 2);
        // A worker that finishes takes the oldest waiting job.
        assert_eq!(queue.next(), Some(3));
        assert_eq!(queue.next(), Some(4));
        assert_eq!(queue.workers, 2);
        // Nothing waits: each finishing worker stops, and a new job starts a new one.
        assert_eq!(queue.next(), None);
        assert_eq!(queue.workers, 1);
        assert_eq!(queue.submit(5), Some(5));
        assert_eq!(queue.next(), None);
        assert_eq!(queue.next(), None);
        assert_eq!(queue.workers, 0);
        assert!(queue.waiting.is_empty());
    }

    #[test]
    fn a_drained_backlog_of_jobs_gives_its_room_back() {
        let mut queue = WorkQueue::new(1);
        assert_eq!(queue.submit(0), Some(0));
        for job in 1..5_000 {
            assert_eq!(queue.submit(job), None);
        }
        assert!(queue.waiting.capacity() >= 4_999);
        while queue.next().is_some() {}
        assert!(queue.waiting.capacity() <= crate::queue::KEEP_CAPACITY);
    }

    #[test]
    fn a_bounded_queue_drops_what_does_not_fit() {
        let mut queue = WorkQueue::bounded(1, 2);
        assert_eq!(queue.submit(1), Some(1));
        assert_eq!(queue.submit(2), None);
        assert_eq!(queue.submit(3), None);
        // Two wait already: this one is dropped, and counted.
        assert_eq!(queue.submit(4), None);
        assert_eq!(queue.dropped, 1);
        assert_eq!(queue.next(), Some(2));
        assert_eq!(queue.next(), Some(3));
        assert_eq!(queue.next(), None);
        assert_eq!(queue.workers, 0);
    }

    #[test]
    fn notes_are_truncated_like_upstream() {
        let short = "0/3 nodes are available: 3 Insufficient cpu.";
        assert_eq!(truncate_note(short), short);
        let long = "x".repeat(2000);
        let note = truncate_note(&long);
        assert_eq!(note.len(), 1024);
        assert!(note.ends_with(" ..."));
    }
}
