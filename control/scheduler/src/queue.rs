//! The scheduling queue, with upstream's three parts: activeQ (ready pods, highest priority
//! first, then oldest), backoffQ (pods waiting out their backoff: 1 s doubling up to 10 s per
//! attempt), and the unschedulable pods, which wait for a cluster event that may help them
//! (or for 5 minutes, after which they are retried anyway). Pods with scheduling gates wait
//! until the gates are gone. Nothing here polls: the owner sleeps until `next_wakeup`.

use baton_client::CachedPod;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::ClusterEvent;
use crate::framework::{Plugin, PluginSet};
use crate::pod_info::PodInfo;

/// upstream's podInitialBackoffSeconds.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// upstream's podMaxBackoffSeconds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// upstream's podMaxInUnschedulablePodsDuration.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// Where a queued pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Active,
    Backoff,
    Unschedulable,
    /// Has scheduling gates.
    Gated,
    /// Popped and being scheduled.
    InFlight,
}

/// Room the scheduler's queues (this one and the API writer's work queues) keep when they
/// empty out: a backlog of thousands of pods grows them, and they would keep that size after
/// it drains.
pub(crate) const KEEP_CAPACITY: usize = 1024;

/// A pod in the queue.
#[derive(Debug)]
pub struct QueuedPod {
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// When the pod last (re-)entered the queue; backoff counts from here.
    pub timestamp: Instant,
    /// The plugins that rejected the pod in its last attempt.
    pub rejected_by: PluginSet,
    pub state: QueueState,
    /// Tie-break within a priority: creation time at first, re-queue time later (ns).
    sort_time: i128,
    seq: u64,
    generation: u64,
}

/// A pod handed out by [`SchedulingQueue::pop`].
#[derive(Debug, Clone)]
pub struct Popped {
    pub info: Arc<PodInfo>,
    pub attempts: u32,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    sort_time: i128,
    seq: u64,
    key: Arc<str>,
    generation: u64,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sort_time.cmp(&self.sort_time))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A heap entry due at `at` (earliest first).
#[derive(Debug, PartialEq, Eq)]
struct TimedEntry {
    at: Instant,
    seq: u64,
    key: Arc<str>,
    generation: u64,
}

impl Ord for TimedEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for TimedEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gated(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

/// Whether an update changed more than the pod's status (upstream's isPodUpdated).
fn spec_changed(old: &CachedPod, new: &CachedPod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

fn wall_clock_nanos() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// The queue of pods waiting to be scheduled.
#[derive(Debug)]
pub struct SchedulingQueue {
    pods: HashMap<Arc<str>, QueuedPod>,
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<TimedEntry>,
    /// Unschedulable pods by when they are flushed.
    flush: BinaryHeap<TimedEntry>,
    /// Unschedulable pods by rejecting plugin (`Plugin as usize`), and those rejected by none.
    by_plugin: Vec<HashSet<Arc<str>>>,
    by_none: HashSet<Arc<str>>,
    next_seq: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_unschedulable: Duration,
}

impl Default for SchedulingQueue {
    fn default() -> Self {
        SchedulingQueue::new(INITIAL_BACKOFF, MAX_BACKOFF, MAX_UNSCHEDULABLE)
    }
}

impl SchedulingQueue {
    /// A queue with the given backoff bounds and unschedulable flush interval.
    pub fn new(
        initial_backoff: Duration,
        max_backoff: Duration,
        max_unschedulable: Duration,
    ) -> Self {
        SchedulingQueue {
            pods: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            flush: BinaryHeap::new(),
            by_plugin: vec![HashSet::new(); Plugin::ALL.len()],
            by_none: HashSet::new(),
            next_seq: 0,
            initial_backoff,
            max_backoff,
            max_unschedulable,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The queued pod with `key`.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&QueuedPod> {
        self.pods.get(key)
    }

    /// How many pods are queued (in any state).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The backoff after `attempts` attempts.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut duration = self.initial_backoff;
        for _ in 1..attempts {
            if duration > self.max_backoff.saturating_sub(duration) {
                return self.max_backoff;
            }
            duration += duration;
        }
        duration.min(self.max_backoff)
    }

    fn backoff_expiry(&self, pod: &QueuedPod) -> Instant {
        pod.timestamp + self.backoff_duration(pod.attempts)
    }

    /// Adds a new pending pod, or updates a queued one.
    pub fn add(&mut self, info: Arc<PodInfo>, now: Instant) {
        if self.pods.contains_key(&info.key) {
            self.update(info, now);
            return;
        }
        let sort_time = info
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_nanosecond())
            .unwrap_or_else(wall_clock_nanos);
        let state = if gated(&info.pod) {
            QueueState::Gated
        } else {
            QueueState::Active
        };
        let seq = self.seq();
        let key = info.key.clone();
        self.pods.insert(
            key.clone(),
            QueuedPod {
                info,
                attempts: 0,
                timestamp: now,
                rejected_by: PluginSet::default(),
                state,
                sort_time,
                seq,
                generation: 0,
            },
        );
        if state == QueueState::Active {
            self.push_active(&key);
        }
    }

    /// Replaces a queued pod's object. An unschedulable pod whose spec or labels changed is
    /// retried (after its backoff); a gated pod whose gates are gone becomes active.
    pub fn update(&mut self, info: Arc<PodInfo>, now: Instant) {
        let Some(entry) = self.pods.get_mut(&info.key) else {
            self.add(info, now);
            return;
        };
        let changed = spec_changed(&entry.info.pod, &info.pod);
        let now_gated = gated(&info.pod);
        entry.info = info;
        let key = entry.info.key.clone();
        match entry.state {
            QueueState::Gated if !now_gated => {
                entry.state = QueueState::Active;
                self.push_active(&key);
            }
            QueueState::Unschedulable if changed => self.move_to_active_or_backoff(&key, now),
            _ => {}
        }
    }

    /// Removes a pod (deleted, bound, or no longer this scheduler's).
    pub fn delete(&mut self, key: &str) -> Option<QueuedPod> {
        let entry = self.pods.remove(key)?;
        self.unindex(key, entry.rejected_by);
        // A drained backlog gives its room back (a map never shrinks by itself).
        if self.pods.capacity() > KEEP_CAPACITY && self.pods.len() * 8 < self.pods.capacity() {
            self.pods.shrink_to(self.pods.len() * 2);
        }
        Some(entry)
    }

    fn push_active(&mut self, key: &Arc<str>) {
        let entry = self.pods.get_mut(key).expect("queued pod");
        entry.generation += 1;
        entry.state = QueueState::Active;
        self.active.push(ActiveEntry {
            priority: entry.info.priority,
            sort_time: entry.sort_time,
            seq: entry.seq,
            key: key.clone(),
            generation: entry.generation,
        });
    }

    fn push_backoff(&mut self, key: &Arc<str>) {
        let seq = self.seq();
        let attempts = self.pods.get(key).expect("queued pod").attempts;
        let backoff = self.backoff_duration(attempts);
        let entry = self.pods.get_mut(key).expect("queued pod");
        entry.generation += 1;
        entry.state = QueueState::Backoff;
        self.backoff.push(TimedEntry {
            at: entry.timestamp + backoff,
            seq,
            key: key.clone(),
            generation: entry.generation,
        });
    }

    fn index(&mut self, key: &Arc<str>, rejected_by: PluginSet) {
        if rejected_by.is_empty() {
            self.by_none.insert(key.clone());
        }
        for plugin in rejected_by.iter() {
            self.by_plugin[plugin as usize].insert(key.clone());
        }
    }

    fn unindex(&mut self, key: &str, rejected_by: PluginSet) {
        self.by_none.remove(key);
        for plugin in rejected_by.iter() {
            self.by_plugin[plugin as usize].remove(key);
        }
    }

    fn move_to_active_or_backoff(&mut self, key: &Arc<str>, now: Instant) {
        let Some(entry) = self.pods.get(key) else {
            return;
        };
        let rejected_by = entry.rejected_by;
        let backing_off = now < self.backoff_expiry(entry);
        self.unindex(key, rejected_by);
        if backing_off {
            self.push_backoff(key);
        } else {
            self.push_active(key);
        }
    }

    /// Moves backoff pods whose backoff expired to activeQ, and unschedulable pods that waited
    /// longer than the flush interval to activeQ or backoffQ.
    pub fn flush(&mut self, now: Instant) {
        while let Some(top) = self.backoff.peek() {
            if top.at > now {
                break;
            }
            let top = self.backoff.pop().expect("peeked");
            if self
                .pods
                .get(&top.key)
                .is_some_and(|p| p.generation == top.generation && p.state == QueueState::Backoff)
            {
                self.push_active(&top.key);
            }
        }
        while let Some(top) = self.flush.peek() {
            if top.at > now {
                break;
            }
            let top = self.flush.pop().expect("peeked");
            if self.pods.get(&top.key).is_some_and(|p| {
                p.generation == top.generation && p.state == QueueState::Unschedulable
            }) {
                self.move_to_active_or_backoff(&top.key, now);
            }
        }
    }

    /// When `flush` next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|e| e.at);
        let flush = self.flush.peek().map(|e| e.at);
        match (backoff, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the highest-priority active pod (call `flush` first).
    pub fn pop(&mut self) -> Option<Popped> {
        while let Some(top) = self.active.pop() {
            let Some(entry) = self.pods.get_mut(&top.key) else {
                continue;
            };
            if entry.generation != top.generation || entry.state != QueueState::Active {
                continue;
            }
            entry.state = QueueState::InFlight;
            entry.attempts += 1;
            return Some(Popped {
                info: entry.info.clone(),
                attempts: entry.attempts,
            });
        }
        if self.active.capacity() > KEEP_CAPACITY {
            self.active.shrink_to_fit();
        }
        None
    }

    /// Parks an in-flight pod that fit no node until an event may help it.
    pub fn requeue_unschedulable(&mut self, key: &str, rejected_by: PluginSet, now: Instant) {
        let seq = self.seq();
        let Some(entry) = self.pods.get_mut(key) else {
            return;
        };
        entry.timestamp = now;
        entry.sort_time = wall_clock_nanos();
        entry.rejected_by = rejected_by;
        entry.generation += 1;
        entry.state = QueueState::Unschedulable;
        let key = entry.info.key.clone();
        let generation = entry.generation;
        self.flush.push(TimedEntry {
            at: now + self.max_unschedulable,
            seq,
            key: key.clone(),
            generation,
        });
        self.index(&key, rejected_by);
    }

    /// Puts an in-flight pod (or one whose binding failed, with its attempts) into backoffQ.
    pub fn requeue_backoff(&mut self, info: Arc<PodInfo>, attempts: u32, now: Instant) {
        let key = info.key.clone();
        if let Some(previous) = self.pods.remove(&key) {
            self.unindex(&key, previous.rejected_by);
        }
        let seq = self.seq();
        self.pods.insert(
            key.clone(),
            QueuedPod {
                info,
                attempts,
                timestamp: now,
                rejected_by: PluginSet::default(),
                state: QueueState::Backoff,
                sort_time: wall_clock_nanos(),
                seq,
                generation: 0,
            },
        );
        self.push_backoff(&key);
    }

    /// Hands an in-flight pod over to binding: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.delete(key);
    }

    /// Moves the unschedulable pods `event` may help to activeQ (or backoffQ while they back
    /// off). Returns how many moved.
    pub fn on_event(&mut self, event: &ClusterEvent<'_>, now: Instant) -> usize {
        let interested = event.interested();
        let mut candidates: HashSet<Arc<str>> = self.by_none.clone();
        for plugin in interested.iter() {
            candidates.extend(self.by_plugin[plugin as usize].iter().cloned());
        }
        let mut moved = 0;
        for key in candidates {
            let Some(entry) = self.pods.get(&key) else {
                continue;
            };
            if entry.state == QueueState::Unschedulable
                && event.may_help(&entry.info, entry.rejected_by)
            {
                self.move_to_active_or_backoff(&key, now);
                moved += 1;
            }
        }
        moved
    }

    /// Counts of pods per state (for logs).
    pub fn counts(&self) -> [usize; 5] {
        let mut counts = [0; 5];
        for pod in self.pods.values() {
            counts[pod.state as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_info::NodeInfo;
    use crate::pod_info::testing::{node, pod};
    use k8s_openapi::api::core::v1::PodSchedulingGate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn created(b: crate::pod_info::testing::PodBuilder, seconds: i64) -> Arc<PodInfo> {
        let mut b = b;
        b.0.metadata.creation_timestamp =
            Some(Time(jiff::Timestamp::from_second(seconds).unwrap()));
        b.info()
    }

    fn pop_name(q: &mut SchedulingQueue) -> Option<String> {
        q.pop().map(|p| p.info.name().to_string())
    }

    #[test]
    fn priority_then_creation_order() {
        let mut q = SchedulingQueue::default();
        let now = Instant::now();
        q.add(created(pod("old-low"), 100), now);
        q.add(created(pod("new-high").priority(10), 300), now);
        q.add(created(pod("old-high").priority(10), 200), now);
        q.add(created(pod("new-low"), 400), now);
        assert_eq!(pop_name(&mut q).as_deref(), Some("old-high"));
        assert_eq!(pop_name(&mut q).as_deref(), Some("new-high"));
        assert_eq!(pop_name(&mut q).as_deref(), Some("old-low"));
        assert_eq!(pop_name(&mut q).as_deref(), Some("new-low"));
        assert_eq!(pop_name(&mut q), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let q = SchedulingQueue::default();
        let secs: Vec<u64> = (1..=6).map(|a| q.backoff_duration(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn failed_binding_waits_out_its_backoff() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.requeue_backoff(pod("p").info(), 3, t0);
        q.flush(t0 + Duration::from_secs(3));
        assert!(q.pop().is_none(), "4 s backoff after 3 attempts");
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(4)));
        q.flush(t0 + Duration::from_secs(4));
        let popped = q.pop().unwrap();
        assert_eq!(popped.attempts, 4);
    }

    #[test]
    fn events_move_unschedulable_pods() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(pod("big").requests(&[("cpu", "6")]).info(), t0);
        let p = q.pop().unwrap();
        let fit: PluginSet = [Plugin::NodeResourcesFit].into_iter().collect();
        q.requeue_unschedulable(&p.info.key, fit, t0);
        assert_eq!(
            q.get("default/big").unwrap().state,
            QueueState::Unschedulable
        );

        // An unrelated event leaves it alone.
        let other = pod("o").node_name("n").info();
        assert_eq!(q.on_event(&ClusterEvent::AssignedPodAdd(&other), t0), 0);
        // A node too small for it also does.
        let mut small = NodeInfo::new("s".into());
        small.set_node(node("s").build());
        assert_eq!(q.on_event(&ClusterEvent::NodeAdd(&small), t0), 0);

        // A deleted pod frees resources: it moves, to backoffQ while its 1 s backoff runs.
        assert_eq!(q.on_event(&ClusterEvent::AssignedPodDelete(&other), t0), 1);
        assert_eq!(q.get("default/big").unwrap().state, QueueState::Backoff);
        q.flush(t0 + Duration::from_millis(999));
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(pop_name(&mut q).as_deref(), Some("big"));

        // After the backoff expired, an event moves it straight to activeQ.
        let t1 = t0 + Duration::from_secs(20);
        q.requeue_unschedulable("default/big", fit, t1 - Duration::from_secs(10));
        assert_eq!(q.on_event(&ClusterEvent::AssignedPodDelete(&other), t1), 1);
        assert_eq!(q.get("default/big").unwrap().state, QueueState::Active);
    }

    #[test]
    fn unschedulable_pods_are_flushed_after_five_minutes() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(pod("p").info(), t0);
        q.pop().unwrap();
        q.requeue_unschedulable(
            "default/p",
            [Plugin::NodeAffinity].into_iter().collect(),
            t0,
        );
        assert_eq!(q.next_wakeup(), Some(t0 + MAX_UNSCHEDULABLE));
        q.flush(t0 + Duration::from_secs(299));
        assert!(q.pop().is_none());
        q.flush(t0 + MAX_UNSCHEDULABLE);
        assert_eq!(pop_name(&mut q).as_deref(), Some("p"));
    }

    #[test]
    fn own_updates_retry_only_on_spec_changes() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(pod("p").info(), t0);
        q.pop().unwrap();
        let affinity: PluginSet = [Plugin::NodeAffinity].into_iter().collect();
        q.requeue_unschedulable("default/p", affinity, t0);
        // A status-only update (our own condition) changes nothing.
        let mut status_only = pod("p");
        status_only.0.status = Some(Default::default());
        q.update(status_only.info(), t0 + Duration::from_secs(5));
        assert_eq!(q.get("default/p").unwrap().state, QueueState::Unschedulable);
        q.update(pod("p").label("x", "y").info(), t0 + Duration::from_secs(5));
        assert_eq!(q.get("default/p").unwrap().state, QueueState::Active);
    }

    #[test]
    fn gated_pods_wait_for_their_gates() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        let gated = pod("g").with_spec(|s| {
            s.scheduling_gates = Some(vec![PodSchedulingGate {
                name: "wait".into(),
            }])
        });
        q.add(gated.info(), t0);
        assert!(q.pop().is_none());
        q.update(pod("g").info(), t0);
        assert_eq!(pop_name(&mut q).as_deref(), Some("g"));
    }

    #[test]
    fn deleted_pods_leave() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(pod("p").info(), t0);
        q.delete("default/p");
        assert!(q.pop().is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn a_drained_backlog_gives_its_room_back() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        for i in 0..5_000 {
            q.add(pod(&format!("p{i}")).info(), t0);
        }
        assert!(q.pods.capacity() >= 5_000 && q.active.capacity() >= 5_000);
        while let Some(popped) = q.pop() {
            q.delete(&popped.info.key);
        }
        assert!(q.is_empty());
        assert!(q.pods.capacity() <= KEEP_CAPACITY, "{}", q.pods.capacity());
        assert!(
            q.active.capacity() <= KEEP_CAPACITY,
            "{}",
            q.active.capacity()
        );
    }
}
