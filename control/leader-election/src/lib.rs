//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's rules: a candidate
//! takes the Lease when it is free or its holder has not renewed it for `lease_duration` (as
//! observed on the candidate's own clock, so clock skew between machines does not matter); the
//! leader renews it every `retry_period` and gives up leadership when it could not renew for
//! `renew_deadline`. Upstream's components exit when they lose leadership, and so do Baton's.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// The leader-election flags shared by the scheduler and the controller manager, with
/// kube-scheduler's and kube-controller-manager's names and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionArgs {
    /// Start a leader election client and gain leadership before running the main loop.
    #[arg(long = "leader-elect", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long a non-leader waits after the last observed renewal before taking the Lease.
    #[arg(long = "leader-elect-lease-duration", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a renewal before it stops leading.
    #[arg(long = "leader-elect-renew-deadline", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How long clients wait between tries of acquisition and renewal.
    #[arg(long = "leader-elect-retry-period", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// The namespace of the Lease.
    #[arg(
        long = "leader-elect-resource-namespace",
        default_value = "kube-system"
    )]
    pub resource_namespace: String,
    /// The name of the Lease (defaults to the component's name).
    #[arg(long = "leader-elect-resource-name")]
    pub resource_name: Option<String>,
}

pub use baton_client::parse_duration;

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionError {
    /// The leader could not renew its Lease within the renew deadline.
    #[error("leader election lost: Lease {namespace}/{name} not renewed within {deadline:?}")]
    Lost {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The renew deadline that passed.
        deadline: Duration,
    },
}

/// The leader-election flags do not fit together (client-go refuses the same).
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionConfigError {
    /// The Lease must outlive the renew deadline, in whole seconds.
    #[error(
        "--leader-elect-lease-duration ({lease:?}) must be at least 1s and greater than --leader-elect-renew-deadline ({renew:?})"
    )]
    LeaseDuration { lease: Duration, renew: Duration },
    /// The renew deadline must leave room for retries.
    #[error(
        "--leader-elect-renew-deadline ({renew:?}) must be greater than 1.2 x --leader-elect-retry-period ({retry:?})"
    )]
    RenewDeadline { renew: Duration, retry: Duration },
}

impl LeaderElectionArgs {
    /// Checks the durations as client-go's NewLeaderElector does.
    pub fn validate(&self) -> Result<(), LeaderElectionConfigError> {
        if self.lease_duration <= self.renew_deadline
            || self.lease_duration < Duration::from_secs(1)
        {
            return Err(LeaderElectionConfigError::LeaseDuration {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(LeaderElectionConfigError::RenewDeadline {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }
}

/// One candidate for the leadership of a component.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// The identity client-go components use: the host name, an underscore and a random UUID.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

impl LeaderElector {
    /// A candidate for the Lease the flags name (`component` when no name is given).
    pub fn new(client: kube::Client, args: &LeaderElectionArgs, component: &str) -> Self {
        let name = args
            .resource_name
            .clone()
            .unwrap_or_else(|| component.to_string());
        LeaderElector {
            leases: Api::namespaced(client, &args.resource_namespace),
            namespace: args.resource_namespace.clone(),
            name,
            identity: default_identity(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        }
    }

    /// This candidate's holder identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease, then runs `work` while renewing it. Returns
    /// `work`'s output, or an error as soon as a renewal fails for longer than the deadline.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, LeaderElectionError> {
        let mut observed: Option<(String, Instant)> = None;
        loop {
            match self.try_acquire_or_renew(&mut observed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election: cannot read or write the Lease")
                }
            }
            tokio::time::sleep(self.retry_period).await;
        }
        tracing::info!(lease = %format!("{}/{}", self.namespace, self.name), identity = %self.identity, "successfully acquired lease");
        let renew = async {
            let mut last_renewal = Instant::now();
            loop {
                tokio::time::sleep(self.retry_period).await;
                // A renewal that hangs must not outlast the deadline: by then a standby may
                // take the Lease, and two leaders must never act at once.
                let left = self.renew_deadline.saturating_sub(last_renewal.elapsed());
                match tokio::time::timeout(left, self.try_acquire_or_renew(&mut observed)).await {
                    Ok(Ok(true)) => last_renewal = Instant::now(),
                    Ok(Ok(false)) => break,
                    Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
                    Err(_) => tracing::warn!("leader election: renewal timed out"),
                }
                if last_renewal.elapsed() >= self.renew_deadline {
                    break;
                }
            }
        };
        tokio::select! {
            out = work => Ok(out),
            () = renew => Err(LeaderElectionError::Lost {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                deadline: self.renew_deadline,
            }),
        }
    }

    /// One round of client-go's tryAcquireOrRenew: true when this candidate holds the Lease
    /// afterwards. `observed` is the last seen (resourceVersion, local time it was first seen).
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_seconds =
            i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        match observed {
            Some((seen, _)) if *seen == version => {}
            _ => *observed = Some((version, Instant::now())),
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == self.identity;
        if !held_by_me && !holder.is_empty() {
            let lease_seconds = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(self.lease_duration);
            let seen_at = observed
                .as_ref()
                .map(|(_, at)| *at)
                .unwrap_or_else(Instant::now);
            if seen_at.elapsed() < lease_seconds {
                return Ok(false);
            }
        }
        if !held_by_me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration_seconds);
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                *observed = Some((
                    written.metadata.resource_version.unwrap_or_default(),
                    Instant::now(),
                ));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn flags_must_fit_together_as_in_client_go() {
        use super::LeaderElectionArgs;
        let args = |lease: u64, renew: u64, retry: u64| LeaderElectionArgs {
            leader_elect: true,
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
            resource_namespace: "kube-system".into(),
            resource_name: None,
        };
        assert!(args(15_000, 10_000, 2_000).validate().is_ok());
        assert!(args(3_000, 2_000, 500).validate().is_ok());
        let e = args(10_000, 10_000, 2_000).validate().unwrap_err();
        assert!(
            e.to_string().contains("--leader-elect-lease-duration"),
            "{e}"
        );
        assert!(
            args(900, 500, 100).validate().is_err(),
            "sub-second leases are refused"
        );
        let e = args(15_000, 2_000, 2_000).validate().unwrap_err();
        assert!(
            e.to_string().contains("--leader-elect-renew-deadline"),
            "{e}"
        );
    }
}
