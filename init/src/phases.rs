//! Boot as a list of named phases, each logged with its duration and kept in a timeline that
//! the node API reports.

use std::time::{Duration, Instant};

/// How a phase ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhaseOutcome {
    /// It did its work.
    Done,
    /// It did not apply here (the reason).
    Skipped(String),
    /// It failed (the error, with its causes).
    Failed(String),
}

/// One phase of the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseRecord {
    /// The phase's name (`mounts`, `network` ...).
    pub name: &'static str,
    /// How long it took.
    pub duration: Duration,
    /// How it ended.
    pub outcome: PhaseOutcome,
}

/// The boot's phases so far, in order.
#[derive(Clone, Debug)]
pub struct BootTimeline {
    started: Instant,
    phases: Vec<PhaseRecord>,
}

impl Default for BootTimeline {
    fn default() -> Self {
        BootTimeline {
            started: Instant::now(),
            phases: Vec::new(),
        }
    }
}

impl BootTimeline {
    /// Runs phase `name`, logging and recording its duration and outcome.
    pub fn run<T, E: std::error::Error>(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = phase();
        self.record(name, start.elapsed(), &result);
        result
    }

    /// Runs phase `name`, which blocks (waits for a device or a lease, writes a disk), on a
    /// thread of the blocking pool, so that the node API on init's one-thread runtime keeps
    /// answering meanwhile; logs and records it as [`BootTimeline::run`] does.
    pub async fn run_blocking<T, E>(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: std::error::Error + Send + 'static,
    {
        let start = Instant::now();
        let result = match tokio::task::spawn_blocking(phase).await {
            Ok(result) => result,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        };
        self.record(name, start.elapsed(), &result);
        result
    }

    /// Records phase `name`, which ran elsewhere (an async phase) for `duration` with
    /// `result`.
    pub fn record<T, E: std::error::Error>(
        &mut self,
        name: &'static str,
        duration: Duration,
        result: &Result<T, E>,
    ) {
        let outcome = match result {
            Ok(_) => {
                tracing::info!(
                    phase = name,
                    ms = duration.as_secs_f64() * 1e3,
                    "boot phase done"
                );
                PhaseOutcome::Done
            }
            Err(err) => {
                let message = baton_client::error_chain(err);
                tracing::error!(phase = name, "boot phase failed: {message}");
                PhaseOutcome::Failed(message)
            }
        };
        self.phases.push(PhaseRecord {
            name,
            duration,
            outcome,
        });
    }

    /// Records phase `name` as skipped, with why.
    pub fn skip(&mut self, name: &'static str, why: &str) {
        tracing::info!(phase = name, "boot phase skipped: {why}");
        self.phases.push(PhaseRecord {
            name,
            duration: Duration::ZERO,
            outcome: PhaseOutcome::Skipped(why.to_string()),
        });
    }

    /// The phases so far.
    pub fn phases(&self) -> &[PhaseRecord] {
        &self.phases
    }

    /// Time since init started.
    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn phases_are_recorded_in_order_with_their_outcome() {
        let mut timeline = BootTimeline::default();
        assert_eq!(timeline.run("mounts", || Ok::<_, Outer>(7)).unwrap(), 7);
        timeline.skip("modules", "the host's kernel");
        let failed = timeline.run("network", || {
            Err::<(), _>(Outer(std::io::Error::other("no eth0")))
        });
        assert!(failed.is_err());
        let outcomes: Vec<_> = timeline
            .phases()
            .iter()
            .map(|p| (p.name, p.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("mounts", PhaseOutcome::Done),
                ("modules", PhaseOutcome::Skipped("the host's kernel".into())),
                ("network", PhaseOutcome::Failed("outer: no eth0".into())),
            ]
        );
    }
}
