//! The disruption controller (kube-controller-manager's "disruption-controller"): keeps each
//! PodDisruptionBudget's status, which pods/eviction consults. The pods a budget covers are
//! those its selector picks in its namespace; healthy are those Ready and not being deleted
//! (nor just evicted: listed in `disruptedPods`, until they are gone or two minutes passed).
//! desiredHealthy is minAvailable (a count, or a percentage of the covered pods rounded up), or
//! the covered pods less maxUnavailable (the same way); disruptionsAllowed is what healthy pods
//! exceed it by.
//!
//! Unlike upstream, a percentage or maxUnavailable counts the pods the selector covers (those
//! not finished and not being deleted) rather than the replicas their controllers ask for: the
//! two differ while a workload is short of pods or has extra ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{is_pod_ready, is_pod_terminal, key_of};

/// How long an evicted pod counts as disrupted before the controller stops waiting for its
/// deletion to show (upstream's DeletionTimeout).
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// A budget's status could not be written.
#[derive(Debug, thiserror::Error)]
#[error("updating the status of PodDisruptionBudget {budget}")]
pub struct UpdateBudgetStatusError {
    budget: String,
    #[source]
    source: kube::Error,
}

struct Disruption {
    client: Client,
    pods: Store<Pod>,
    budgets: Informer<PodDisruptionBudget>,
    errors: FailureBackoff,
}

/// The selector of a budget; `None` for one that selects nothing (no selector, or one that
/// does not parse). An empty selector selects every pod of the namespace, as policy/v1 reads it.
fn selector_of(budget: &PodDisruptionBudget) -> Option<Selector> {
    let selector = budget.spec.as_ref()?.selector.clone()?;
    selector.try_into().ok()
}

/// Registers the pod subscription and returns the loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let budgets = Informer::new(
        Api::<PodDisruptionBudget>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let budget_store = budgets.store();
    // A pod that appears, changes or goes wakes the budgets that cover it.
    let by_pods = ctx.pods.subscribe(move |event: &InformerEvent<'_, Pod>| {
        let mut wake = Vec::new();
        for pod in event.objects() {
            let namespace = pod.namespace().unwrap_or_default();
            for budget in budget_store.state() {
                if budget.namespace().as_deref() == Some(namespace.as_str())
                    && selector_of(&budget).is_some_and(|s| s.matches(pod.labels()))
                {
                    wake.push(ObjectRef::from_obj(budget.as_ref()));
                }
            }
        }
        wake
    });
    let this = Arc::new(Disruption {
        client: ctx.client.clone(),
        pods: ctx.pods.store(),
        budgets,
        errors: FailureBackoff::default(),
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        let work = async {
            this.budgets.wait_until_ready().await;
            Controller::new(
                Api::<PodDisruptionBudget>::all(this.client.clone()),
                watcher::Config::default(),
            )
            .with_config(Config::default().concurrency(concurrency))
            .reconcile_on(by_pods)
            .run(reconcile, error_policy, this.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "disruption reconcile");
                }
            })
            .await;
        };
        tokio::join!(this.budgets.run(), work);
    }
    .boxed()
}

fn error_policy(
    budget: Arc<PodDisruptionBudget>,
    error: &UpdateBudgetStatusError,
    this: Arc<Disruption>,
) -> Action {
    let key = key_of(budget.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(budget = %key, error = %error, retry_in = ?delay, "updating a disruption budget failed");
    Action::requeue(delay)
}

/// An IntOrString bound as a count of `total` pods (percentages rounded up).
fn count_of(bound: &IntOrString, total: i32) -> i32 {
    crate::deployment::scale::scaled_value(Some(bound), total, true)
}

/// The status `budget` should have for `pods` (those in its namespace) at `now`; also when the
/// oldest disruption it still waits for times out.
pub fn compute_status(
    budget: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> (PodDisruptionBudgetStatus, Option<Duration>) {
    let covered: Vec<&Pod> = match selector_of(budget) {
        Some(selector) => pods
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| selector.matches(p.labels()))
            .collect(),
        None => Vec::new(),
    };
    let previous = budget.status.clone().unwrap_or_default();
    // Evicted pods stay disrupted until their deletion shows, or the timeout passes.
    let mut disrupted = BTreeMap::new();
    let mut next_timeout: Option<Duration> = None;
    for (name, at) in previous.disrupted_pods.unwrap_or_default() {
        let Some(pod) = covered.iter().find(|p| p.name_any() == name) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let expires = at.0 + jiff::SignedDuration::try_from(DISRUPTION_TIMEOUT).unwrap_or_default();
        if expires <= now {
            continue;
        }
        let left = Duration::try_from(expires.duration_since(now)).unwrap_or_default();
        next_timeout = Some(next_timeout.map_or(left, |t| t.min(left)));
        disrupted.insert(name, at);
    }
    // Finished pods and pods on their way out stand for no replica.
    let expected = covered
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_pod_terminal(p))
        .count() as i32;
    let healthy = covered
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_pod_ready(p)
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let spec = budget.spec.clone().unwrap_or_default();
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (_, Some(max)) => (expected - count_of(max, expected)).max(0),
        (Some(min), None) => count_of(min, expected),
        (None, None) => expected,
    };
    let allowed = (healthy - desired).max(0);
    let (status, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let previous_condition = previous
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed");
    let transition = match &previous_condition {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
        observed_generation: budget.metadata.generation,
    };
    (
        PodDisruptionBudgetStatus {
            observed_generation: budget.metadata.generation,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            disruptions_allowed: allowed,
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            conditions: Some(vec![condition]),
        },
        next_timeout,
    )
}

async fn reconcile(
    budget: Arc<PodDisruptionBudget>,
    this: Arc<Disruption>,
) -> Result<Action, UpdateBudgetStatusError> {
    let key = key_of(budget.as_ref());
    if budget.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = budget.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = this
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let (status, next_timeout) = compute_status(&budget, &pods, jiff::Timestamp::now());
    let unchanged = budget.status.as_ref().is_some_and(|s| {
        let mut current = s.clone();
        let mut wanted = status.clone();
        // The condition's time is kept when nothing else changed.
        current.conditions = None;
        wanted.conditions = None;
        current == wanted
            && s.conditions
                .as_ref()
                .and_then(|c| c.first())
                .map(|c| &c.status)
                == status
                    .conditions
                    .as_ref()
                    .and_then(|c| c.first())
                    .map(|c| &c.status)
    });
    if !unchanged {
        let api: Api<PodDisruptionBudget> = Api::namespaced(this.client.clone(), &namespace);
        let mut next = (*budget).clone();
        next.metadata.managed_fields = None;
        next.status = Some(status);
        match api
            .replace_status(&budget.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            // A newer state of the budget is on its way through the watch.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(source) => {
                return Err(UpdateBudgetStatusError {
                    budget: key,
                    source,
                });
            }
        }
    }
    this.errors.reset(&key);
    Ok(match next_timeout {
        Some(left) => Action::requeue(left),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    fn pod(name: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    match_expressions: None,
                }),
                unhealthy_pod_eviction_policy: None,
            }),
            status: None,
        }
    }

    #[test]
    fn allowed_disruptions_are_healthy_pods_beyond_the_budget() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let now = jiff::Timestamp::now();
        let (status, _) = compute_status(&budget(Some(IntOrString::Int(1)), None), &pods, now);
        assert_eq!(
            (
                status.expected_pods,
                status.current_healthy,
                status.desired_healthy
            ),
            (3, 2, 1)
        );
        assert_eq!(status.disruptions_allowed, 1);
        assert_eq!(status.observed_generation, Some(2));
        let (status, _) = compute_status(
            &budget(Some(IntOrString::String("50%".into())), None),
            &pods,
            now,
        );
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 0));
        let condition = &status.conditions.unwrap()[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "InsufficientPods")
        );
        let (status, _) = compute_status(&budget(None, Some(IntOrString::Int(1))), &pods, now);
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 0));
    }

    #[test]
    fn an_evicted_pod_stays_disrupted_until_it_goes_or_times_out() {
        let pods = vec![pod("a", true), pod("b", true)];
        let now = jiff::Timestamp::now();
        let mut evicted = budget(Some(IntOrString::Int(1)), None);
        evicted.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([("a".into(), Time(now))])),
            ..Default::default()
        });
        let (status, timeout) = compute_status(&evicted, &pods, now);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (1, 0));
        assert_eq!(timeout, Some(DISRUPTION_TIMEOUT));
        let later = now + jiff::SignedDuration::from_secs(121);
        let (status, timeout) = compute_status(&evicted, &pods, later);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (2, 1));
        assert!(status.disrupted_pods.is_none() && timeout.is_none());
    }

    #[test]
    fn no_selector_covers_nothing_and_an_empty_one_everything() {
        let mut open = budget(Some(IntOrString::Int(0)), None);
        open.spec.as_mut().unwrap().selector = None;
        let (status, _) = compute_status(&open, &[pod("a", true)], jiff::Timestamp::now());
        assert_eq!((status.expected_pods, status.disruptions_allowed), (0, 0));
        open.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        let (status, _) = compute_status(&open, &[pod("a", true)], jiff::Timestamp::now());
        assert_eq!((status.expected_pods, status.disruptions_allowed), (1, 1));
    }
}
