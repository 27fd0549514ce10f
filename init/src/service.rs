//! Services declared as data: what to run, after what, how to tell it is ready, and what to do
//! when it exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One supervised service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// Its name (`etcd`, `apiserver`, `kubelet` ...), unique on the node.
    pub name: String,
    /// The program.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Services that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// How to tell that it is ready.
    pub readiness: Readiness,
    /// What happens when it exits.
    pub restart: RestartPolicy,
    /// How long it gets between SIGTERM and SIGKILL when stopped.
    pub stop_timeout: Duration,
}

impl ServiceSpec {
    /// A service running `command args` with no dependencies, ready once started, always
    /// restarted, and 10 s to stop.
    pub fn new(name: &str, command: impl Into<PathBuf>, args: &[&str]) -> Self {
        ServiceSpec {
            name: name.to_string(),
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            depends_on: Vec::new(),
            readiness: Readiness::Started,
            restart: RestartPolicy::Always,
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// The same, started only once `services` are ready.
    pub fn after(mut self, services: &[&str]) -> Self {
        self.depends_on = services.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same, ready when `readiness` passes.
    pub fn ready_when(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The same, with `policy` on exit.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }
}

/// When a service counts as ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as its process runs.
    Started,
    /// When a TCP connection to the address is accepted.
    TcpConnect(SocketAddr),
    /// When a plain-HTTP GET of `path` at `address` answers 200.
    HttpGet {
        /// Where to connect.
        address: SocketAddr,
        /// The request path (`/health`).
        path: String,
    },
}

/// What the supervisor does when a service exits on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart it, with backoff, whatever its exit status.
    Always,
    /// Restart it, with backoff, when it failed (non-zero exit or a signal).
    OnFailure,
    /// Leave it exited.
    Never,
}

/// Restart backoff: 1 s doubling to 30 s, back to 1 s after a run of a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the next start after a run of `ran`, when the previous delay was
    /// `previous` (`None` for the first restart).
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(previous) if ran < self.reset_after => (previous * 2).min(self.max),
            _ => self.initial,
        }
    }
}

/// Why a set of services cannot be supervised.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderServicesError {
    /// Two services share a name.
    #[error("service {0} is declared twice")]
    Duplicate(String),
    /// A dependency names no declared service.
    #[error("service {service} depends on {dependency}, which is not declared")]
    UnknownDependency {
        /// The dependent.
        service: String,
        /// The missing one.
        dependency: String,
    },
    /// Dependencies form a cycle.
    #[error("services {0} depend on each other in a cycle")]
    Cycle(String),
}

/// Orders `specs` so that every service comes after its dependencies (stable: declaration order
/// among independent services).
pub fn start_order(specs: &[ServiceSpec]) -> Result<Vec<usize>, OrderServicesError> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(OrderServicesError::Duplicate(spec.name.clone()));
        }
        for dependency in &spec.depends_on {
            if !specs.iter().any(|s| &s.name == dependency) {
                return Err(OrderServicesError::UnknownDependency {
                    service: spec.name.clone(),
                    dependency: dependency.clone(),
                });
            }
        }
    }
    let mut order: Vec<usize> = Vec::with_capacity(specs.len());
    while order.len() < specs.len() {
        let next = (0..specs.len()).find(|&i| {
            !order.contains(&i)
                && specs[i]
                    .depends_on
                    .iter()
                    .all(|d| order.iter().any(|&o| &specs[o].name == d))
        });
        match next {
            Some(i) => order.push(i),
            None => {
                let stuck: Vec<&str> = (0..specs.len())
                    .filter(|i| !order.contains(i))
                    .map(|i| specs[i].name.as_str())
                    .collect();
                return Err(OrderServicesError::Cycle(stuck.join(", ")));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(specs: &[ServiceSpec]) -> Vec<&str> {
        start_order(specs)
            .unwrap()
            .into_iter()
            .map(|i| specs[i].name.as_str())
            .collect()
    }

    #[test]
    fn dependencies_come_first() {
        let specs = vec![
            ServiceSpec::new("scheduler", "/init", &[]).after(&["apiserver"]),
            ServiceSpec::new("apiserver", "/init", &[]).after(&["etcd"]),
            ServiceSpec::new("kubelet", "/init", &[]),
            ServiceSpec::new("etcd", "/usr/bin/etcd", &[]),
        ];
        assert_eq!(names(&specs), ["kubelet", "etcd", "apiserver", "scheduler"]);
    }

    #[test]
    fn cycles_unknown_dependencies_and_duplicates_are_refused() {
        let cycle = vec![
            ServiceSpec::new("a", "/x", &[]).after(&["b"]),
            ServiceSpec::new("b", "/x", &[]).after(&["a"]),
            ServiceSpec::new("c", "/x", &[]),
        ];
        assert_eq!(
            start_order(&cycle),
            Err(OrderServicesError::Cycle("a, b".into()))
        );
        let unknown = vec![ServiceSpec::new("a", "/x", &[]).after(&["etcd"])];
        assert!(matches!(
            start_order(&unknown),
            Err(OrderServicesError::UnknownDependency { .. })
        ));
        let twice = vec![
            ServiceSpec::new("a", "/x", &[]),
            ServiceSpec::new("a", "/y", &[]),
        ];
        assert_eq!(
            start_order(&twice),
            Err(OrderServicesError::Duplicate("a".into()))
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let backoff = Backoff::default();
        let short = Duration::from_secs(2);
        let mut delay = backoff.next(None, short);
        let mut seen = vec![delay.as_secs()];
        for _ in 0..6 {
            delay = backoff.next(Some(delay), short);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            backoff.next(Some(delay), Duration::from_secs(61)),
            Duration::from_secs(1)
        );
    }
}
