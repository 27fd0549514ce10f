//! The probe state machine of one pod, as upstream's prober workers: per running container and
//! per probe kind, when the next run is due (initialDelaySeconds after the container started,
//! then every periodSeconds), how results count against successThreshold and failureThreshold,
//! the startup probe gating the liveness and readiness probes, and a fresh start (initial results)
//! for every new attempt of a container. It never runs a probe itself and takes the time as an
//! argument, so that every rule is unit-tested with a fake clock; the pod worker runs the probes
//! it says are due and feeds their results back.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// Every kind, startup first.
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];

    /// The kind as upstream's events begin with it ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The kind in lower case, as in "Container main failed liveness probe".
    pub fn lower(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }

    /// The container's probe of this kind, if it has one.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// A probe's timings and thresholds, with upstream's defaults for unset fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimings {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTimings {
    /// The timings of `probe`: periodSeconds 10, timeoutSeconds 1, successThreshold 1 and
    /// failureThreshold 3 unless set (values below the API's minimums are raised to them).
    pub fn of(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(value.unwrap_or(default).max(min) as u64)
        };
        let count = |value: Option<i32>, default: i32| value.unwrap_or(default).max(1) as u32;
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// What one run of a probe found, as the state machine counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    Success,
    Failure,
    /// The probe could not run (upstream: "errored"); the result is thrown away.
    Error,
}

/// What the worker has to do after a result was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The container's started or ready state changed.
    Changed,
    /// The liveness or startup probe failed: the container is to be killed (and restarted by
    /// the restart policy). That probe is on hold until a new attempt of the container runs.
    Kill(ProbeKind),
}

/// A probe run the worker is to start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueProbe {
    pub container: String,
    pub container_id: String,
    pub kind: ProbeKind,
}

/// Started and ready states carried over from the pod's status for a container the kubelet
/// took over after a restart, so that a healthy pod does not turn unready until its next probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub started: bool,
    pub ready: bool,
}

/// One probe of one attempt.
#[derive(Clone, Debug)]
struct Worker {
    kind: ProbeKind,
    timings: ProbeTimings,
    /// The result as it counts now (`None`: unknown).
    result: Option<bool>,
    /// The latest run's result and how many runs in a row gave it.
    last: Option<bool>,
    run: u32,
    /// When the next run is due.
    due: Instant,
    in_flight: bool,
    /// A failed liveness or startup probe waits for the next attempt.
    on_hold: bool,
}

/// The probes of the running attempt of one container.
#[derive(Clone, Debug)]
struct Tracked {
    container_id: String,
    workers: Vec<Worker>,
}

impl Tracked {
    fn worker(&self, kind: ProbeKind) -> Option<&Worker> {
        self.workers.iter().find(|w| w.kind == kind)
    }

    /// No startup probe, or it has succeeded.
    fn started(&self) -> bool {
        self.worker(ProbeKind::Startup)
            .is_none_or(|w| w.result == Some(true))
    }

    /// Started, and no readiness probe or it succeeds.
    fn ready(&self) -> bool {
        self.started()
            && self
                .worker(ProbeKind::Readiness)
                .is_none_or(|w| w.result == Some(true))
    }

    /// Whether `worker` may run now: not running, not on hold, and the startup probe only
    /// until the container started, the others only after.
    fn eligible(&self, worker: &Worker) -> bool {
        let started = self.started();
        !worker.in_flight
            && !worker.on_hold
            && match worker.kind {
                ProbeKind::Startup => !started,
                ProbeKind::Liveness | ProbeKind::Readiness => started,
            }
    }
}

/// The probe state of one pod's containers.
#[derive(Debug, Default)]
pub struct ProbeManager {
    containers: BTreeMap<String, Tracked>,
    /// Seeds by runtime container id, used when that attempt is first tracked.
    seeds: HashMap<String, Seed>,
}

impl ProbeManager {
    /// Carries `seed` over to attempt `container_id` when it is tracked.
    pub fn seed(&mut self, container_id: &str, seed: Seed) {
        self.seeds.insert(container_id.to_owned(), seed);
    }

    /// Tracks the running attempt `container_id` of `container`, which started at
    /// `started_at`. A new attempt starts over with upstream's initial results: not started
    /// while a startup probe exists, alive, and not ready while a readiness probe exists.
    pub fn running(&mut self, container: &Container, container_id: &str, started_at: Instant) {
        if self
            .containers
            .get(&container.name)
            .is_some_and(|t| t.container_id == container_id)
        {
            return;
        }
        let seed = self.seeds.remove(container_id);
        let workers = ProbeKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let timings = ProbeTimings::of(kind.of(container)?);
                let result = match kind {
                    ProbeKind::Startup => seed.is_some_and(|s| s.started).then_some(true),
                    ProbeKind::Liveness => Some(true),
                    ProbeKind::Readiness => Some(seed.is_some_and(|s| s.ready)),
                };
                Some(Worker {
                    kind,
                    timings,
                    result,
                    last: None,
                    run: 0,
                    due: started_at + timings.initial_delay,
                    in_flight: false,
                    on_hold: false,
                })
            })
            .collect();
        self.containers.insert(
            container.name.clone(),
            Tracked {
                container_id: container_id.to_owned(),
                workers,
            },
        );
    }

    /// Forgets container `name`: it does not run (any more).
    pub fn stopped(&mut self, name: &str) {
        self.containers.remove(name);
    }

    /// Whether container `name` runs and has started (no startup probe, or it succeeded).
    pub fn started(&self, name: &str) -> bool {
        self.containers.get(name).is_some_and(Tracked::started)
    }

    /// Whether container `name` runs, has started and is ready (no readiness probe, or it
    /// succeeded often enough).
    pub fn ready(&self, name: &str) -> bool {
        self.containers.get(name).is_some_and(Tracked::ready)
    }

    /// The probe runs due at `now`, marked as running; each next one is due a period later.
    pub fn due(&mut self, now: Instant) -> Vec<DueProbe> {
        let mut due = Vec::new();
        for (name, tracked) in &mut self.containers {
            let eligible: Vec<bool> = tracked
                .workers
                .iter()
                .map(|w| tracked.eligible(w))
                .collect();
            for (worker, eligible) in tracked.workers.iter_mut().zip(eligible) {
                if !eligible || worker.due > now {
                    continue;
                }
                worker.in_flight = true;
                worker.due = now + worker.timings.period;
                due.push(DueProbe {
                    container: name.clone(),
                    container_id: tracked.container_id.clone(),
                    kind: worker.kind,
                });
            }
        }
        due
    }

    /// When the next probe run is due, if any can be.
    pub fn next_due(&self) -> Option<Instant> {
        self.containers
            .values()
            .flat_map(|t| t.workers.iter().filter(|w| t.eligible(w)).map(|w| w.due))
            .min()
    }

    /// Records the result of a run of probe `kind` of attempt `container_id` of container
    /// `name` (a result of an attempt no longer tracked is ignored). A result only counts once
    /// it came successThreshold (successes) or failureThreshold (failures) times in a row.
    pub fn record(
        &mut self,
        name: &str,
        container_id: &str,
        kind: ProbeKind,
        result: RunResult,
    ) -> Option<Verdict> {
        let tracked = self.containers.get_mut(name)?;
        if tracked.container_id != container_id {
            return None;
        }
        let (started, ready) = (tracked.started(), tracked.ready());
        let worker = tracked.workers.iter_mut().find(|w| w.kind == kind)?;
        worker.in_flight = false;
        let ok = match result {
            RunResult::Success => true,
            RunResult::Failure => false,
            RunResult::Error => return None,
        };
        if worker.last == Some(ok) {
            worker.run = worker.run.saturating_add(1);
        } else {
            worker.last = Some(ok);
            worker.run = 1;
        }
        let threshold = if ok {
            worker.timings.success_threshold
        } else {
            worker.timings.failure_threshold
        };
        if worker.run < threshold {
            return None;
        }
        worker.result = Some(ok);
        if !ok && matches!(kind, ProbeKind::Liveness | ProbeKind::Startup) {
            // Probing stops until the next attempt: the kill may take a while, and its result
            // is already known.
            worker.on_hold = true;
            worker.run = 0;
            return Some(Verdict::Kill(kind));
        }
        (tracked.started() != started || tracked.ready() != ready).then_some(Verdict::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ExecAction;

    fn probe(period: i32, success: i32, failure: i32, delay: i32) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            period_seconds: Some(period),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            initial_delay_seconds: Some(delay),
            ..Default::default()
        }
    }

    fn container(
        startup: Option<Probe>,
        liveness: Option<Probe>,
        readiness: Option<Probe>,
    ) -> Container {
        Container {
            name: "main".into(),
            startup_probe: startup,
            liveness_probe: liveness,
            readiness_probe: readiness,
            ..Default::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs every due probe of `kind` at `now` with `result` (the other kinds due then error,
    /// which does not count); returns the verdicts.
    fn run(
        manager: &mut ProbeManager,
        now: Instant,
        kind: ProbeKind,
        result: RunResult,
    ) -> Vec<Option<Verdict>> {
        let (due, others): (Vec<DueProbe>, Vec<DueProbe>) =
            manager.due(now).into_iter().partition(|d| d.kind == kind);
        assert!(!due.is_empty(), "no {kind:?} probe due at {now:?}");
        for other in others {
            let verdict = manager.record(
                &other.container,
                &other.container_id,
                other.kind,
                RunResult::Error,
            );
            assert_eq!(verdict, None);
        }
        due.iter()
            .map(|d| manager.record(&d.container, &d.container_id, kind, result))
            .collect()
    }

    #[test]
    fn defaults_follow_upstream() {
        let timings = ProbeTimings::of(&Probe::default());
        assert_eq!(
            timings,
            ProbeTimings {
                initial_delay: Duration::ZERO,
                period: secs(10),
                timeout: secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn without_probes_a_running_container_is_started_and_ready_at_once() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        assert!(!manager.ready("main"));
        manager.running(&container(None, None, None), "c0", t0);
        assert!(manager.started("main") && manager.ready("main"));
        assert_eq!(manager.next_due(), None);
        assert!(manager.due(t0 + secs(100)).is_empty());
        manager.stopped("main");
        assert!(!manager.ready("main"));
    }

    #[test]
    fn readiness_waits_for_its_first_success_and_counts_thresholds() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        manager.running(&container(None, None, Some(probe(1, 2, 3, 0))), "c0", t0);
        assert!(manager.started("main"));
        assert!(!manager.ready("main"), "not ready before the first success");
        assert_eq!(manager.next_due(), Some(t0));
        // successThreshold 2: one success is not enough.
        assert_eq!(
            run(&mut manager, t0, ProbeKind::Readiness, RunResult::Success),
            [None]
        );
        assert!(!manager.ready("main"));
        assert_eq!(manager.next_due(), Some(t0 + secs(1)));
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(1),
                ProbeKind::Readiness,
                RunResult::Success
            ),
            [Some(Verdict::Changed)]
        );
        assert!(manager.ready("main"));
        // failureThreshold 3: two failures keep it ready, the third does not, and an error in
        // between does not count.
        for at in [2, 3] {
            let verdict = run(
                &mut manager,
                t0 + secs(at),
                ProbeKind::Readiness,
                RunResult::Failure,
            );
            assert_eq!(verdict, [None]);
            assert!(manager.ready("main"));
        }
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(4),
                ProbeKind::Readiness,
                RunResult::Error
            ),
            [None]
        );
        assert!(manager.ready("main"));
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(5),
                ProbeKind::Readiness,
                RunResult::Failure
            ),
            [Some(Verdict::Changed)]
        );
        assert!(!manager.ready("main"));
        // A failing readiness probe never asks for a kill and keeps running.
        assert_eq!(manager.next_due(), Some(t0 + secs(6)));
    }

    #[test]
    fn nothing_runs_before_the_initial_delay_or_while_in_flight() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        manager.running(&container(None, Some(probe(5, 1, 3, 7)), None), "c0", t0);
        assert_eq!(manager.next_due(), Some(t0 + secs(7)));
        assert!(manager.due(t0 + secs(6)).is_empty());
        let due = manager.due(t0 + secs(7));
        assert_eq!(due.len(), 1);
        // In flight: not due again, even long after, until its result is in.
        assert_eq!(manager.next_due(), None);
        assert!(manager.due(t0 + secs(60)).is_empty());
        manager.record("main", "c0", ProbeKind::Liveness, RunResult::Success);
        assert_eq!(manager.next_due(), Some(t0 + secs(12)));
    }

    #[test]
    fn liveness_failures_ask_for_a_kill_and_hold_until_the_next_attempt() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        let spec = container(None, Some(probe(1, 1, 3, 0)), Some(probe(1, 1, 1, 0)));
        manager.running(&spec, "c0", t0);
        run(&mut manager, t0, ProbeKind::Readiness, RunResult::Success);
        assert!(manager.ready("main"));
        for at in 1..3 {
            let verdict = run(
                &mut manager,
                t0 + secs(at),
                ProbeKind::Liveness,
                RunResult::Failure,
            );
            assert_eq!(verdict, [None]);
        }
        assert!(manager.ready("main"), "readiness is a probe of its own");
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(3),
                ProbeKind::Liveness,
                RunResult::Failure
            ),
            [Some(Verdict::Kill(ProbeKind::Liveness))]
        );
        // The liveness probe is on hold; readiness goes on.
        let due = manager.due(t0 + secs(10));
        assert!(
            due.iter().all(|d| d.kind == ProbeKind::Readiness),
            "{due:?}"
        );
        // A late result of the old attempt is ignored once the next attempt runs, and the
        // next attempt starts over: not ready, liveness probed again.
        manager.running(&spec, "c1", t0 + secs(20));
        assert!(!manager.ready("main"));
        assert_eq!(
            manager.record("main", "c0", ProbeKind::Readiness, RunResult::Success),
            None
        );
        assert!(!manager.ready("main"));
        let kinds: Vec<ProbeKind> = manager
            .due(t0 + secs(20))
            .into_iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds, [ProbeKind::Liveness, ProbeKind::Readiness]);
        // The same attempt again changes nothing.
        manager.running(&spec, "c1", t0 + secs(21));
        assert!(manager.due(t0 + secs(20)).is_empty());
    }

    #[test]
    fn the_startup_probe_gates_the_others_and_can_kill() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        let spec = container(
            Some(probe(1, 1, 2, 0)),
            Some(probe(1, 1, 1, 0)),
            Some(probe(1, 1, 1, 0)),
        );
        manager.running(&spec, "c0", t0);
        assert!(!manager.started("main") && !manager.ready("main"));
        let kinds: Vec<ProbeKind> = manager.due(t0).into_iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [ProbeKind::Startup],
            "only the startup probe runs first"
        );
        manager.record("main", "c0", ProbeKind::Startup, RunResult::Failure);
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(1),
                ProbeKind::Startup,
                RunResult::Failure
            ),
            [Some(Verdict::Kill(ProbeKind::Startup))]
        );
        assert_eq!(
            manager.next_due(),
            None,
            "nothing runs until the next attempt"
        );

        manager.running(&spec, "c1", t0 + secs(5));
        assert_eq!(
            run(
                &mut manager,
                t0 + secs(5),
                ProbeKind::Startup,
                RunResult::Success
            ),
            [Some(Verdict::Changed)]
        );
        assert!(manager.started("main"));
        assert!(
            !manager.ready("main"),
            "ready waits for the readiness probe"
        );
        // Liveness and readiness are due at once; the startup probe never runs again.
        let kinds: Vec<ProbeKind> = manager
            .due(t0 + secs(5))
            .into_iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds, [ProbeKind::Liveness, ProbeKind::Readiness]);
        assert_eq!(
            manager.record("main", "c1", ProbeKind::Readiness, RunResult::Success),
            Some(Verdict::Changed)
        );
        assert!(manager.ready("main"));
        manager.record("main", "c1", ProbeKind::Liveness, RunResult::Success);
        let kinds: Vec<ProbeKind> = manager
            .due(t0 + secs(60))
            .into_iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds, [ProbeKind::Liveness, ProbeKind::Readiness]);
    }

    #[test]
    fn a_seed_keeps_an_adopted_container_ready() {
        let t0 = Instant::now();
        let mut manager = ProbeManager::default();
        let spec = container(Some(probe(1, 1, 1, 0)), None, Some(probe(1, 1, 1, 0)));
        manager.seed(
            "c0",
            Seed {
                started: true,
                ready: true,
            },
        );
        manager.running(&spec, "c0", t0);
        assert!(manager.started("main") && manager.ready("main"));
        let kinds: Vec<ProbeKind> = manager.due(t0).into_iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [ProbeKind::Readiness]);
        // A seed is for its attempt only.
        manager.running(&spec, "c1", t0);
        assert!(!manager.started("main"));
    }
}
