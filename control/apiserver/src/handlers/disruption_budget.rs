//! The disruption budget check of pods/eviction, as upstream's eviction REST does: a running
//! pod covered by a PodDisruptionBudget is evicted only while the budget allows a disruption,
//! which the eviction then uses up (`status.disruptionsAllowed` minus one, the pod listed in
//! `status.disruptedPods`) before the pod is deleted. A pod that is running but not Ready
//! costs no disruption: it is evicted when the budget's policy is `AlwaysAllow`, or (the
//! default, `IfHealthyBudget`) while the budget has all the healthy pods it wants. The
//! disruption controller recomputes the budget from the pods it sees.

use serde_json::{Value, json};

use baton_store::{ListOptions, Store};

use crate::ApiServer;
use crate::objects::{Decision, decode, store_error};
use crate::resources;
use crate::selectors::label_selector_matches;
use crate::status::StatusError;

/// Upstream's refusal when a budget allows no disruption now.
const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether a pod's Ready condition is True.
fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether a budget's selector covers the pod in an eviction: a budget without a selector, or
/// with an empty one, covers none here (upstream's eviction; its controller counts every pod
/// for an empty one).
fn covers(budget: &Value, pod: &Value) -> bool {
    let selector = &budget["spec"]["selector"];
    let selects_something = selector["matchLabels"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
        || selector["matchExpressions"]
            .as_array()
            .is_some_and(|e| !e.is_empty());
    selects_something && label_selector_matches(selector, &pod["metadata"]["labels"])
}

/// What an eviction of `pod` does to `budget`: `Ok(Some(next))` takes a disruption,
/// `Ok(None)` evicts without one, `Err` refuses.
fn decide(budget: &Value, pod: &Value, now: &str) -> Result<Option<Value>, StatusError> {
    let name = budget["metadata"]["name"].as_str().unwrap_or_default();
    let status = &budget["status"];
    let generation = budget["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
        return Err(StatusError::too_many_requests(
            VIOLATION,
            &[(
                "DisruptionBudget",
                format!("The disruption budget {name} is still being processed by the server."),
            )],
            Some(10),
        ));
    }
    let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
    let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
    if !is_ready(pod) {
        let policy = budget["spec"]["unhealthyPodEvictionPolicy"]
            .as_str()
            .unwrap_or("IfHealthyBudget");
        if policy == "AlwaysAllow" || (desired > 0 && healthy >= desired) {
            return Ok(None);
        }
    }
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    if allowed <= 0 {
        return Err(StatusError::too_many_requests(
            VIOLATION,
            &[(
                "DisruptionBudget",
                format!(
                    "The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"
                ),
            )],
            None,
        ));
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut next = budget.clone();
    next["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !next["status"]["disruptedPods"].is_object() {
        next["status"]["disruptedPods"] = json!({});
    }
    next["status"]["disruptedPods"][pod_name] = json!(now);
    Ok(Some(next))
}

/// Whether the eviction of `pod` may go ahead; when a budget covers it, one of its allowed
/// disruptions is taken first (unless `dry_run`, which only checks). Pods that are not running
/// (pending, finished) or already being deleted are evicted without asking a budget, as
/// upstream.
pub async fn take_disruption<S: Store>(
    server: &ApiServer<S>,
    pod: &Value,
    dry_run: bool,
) -> Result<(), StatusError> {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if matches!(phase, "Pending" | "Succeeded" | "Failed")
        || !pod["metadata"]["deletionTimestamp"].is_null()
    {
        return Ok(());
    }
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let budgets = resources::find("policy", "v1", "poddisruptionbudgets").expect("served");
    let prefix = format!("{}{namespace}/", budgets.storage_prefix);
    let page = server
        .store
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| store_error(budgets, "", e))?;
    let mut covering = Vec::new();
    for kv in &page.items {
        let budget = decode(kv)?;
        if covers(&budget, pod) {
            covering.push(budget);
        }
    }
    let budget = match covering.as_slice() {
        [] => return Ok(()),
        [one] => one,
        _ => {
            return Err(StatusError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let now = crate::handlers::now();
    if dry_run {
        return decide(budget, pod, &now).map(|_| ());
    }
    let name = budget["metadata"]["name"].as_str().unwrap_or_default();
    server
        .guaranteed_update(
            budgets,
            &budgets.key(Some(namespace), name),
            name,
            |current| {
                Ok(match decide(current, pod, &now)? {
                    Some(next) => Decision::Write(next),
                    None => Decision::Preview(current.clone()),
                })
            },
        )
        .await?;
    tracing::debug!(
        pod = pod["metadata"]["name"].as_str(),
        budget = name,
        "eviction checked against its disruption budget"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(allowed: i64, healthy: i64, desired: i64) -> Value {
        json!({
            "metadata": { "name": "web", "generation": 1 },
            "spec": { "selector": { "matchLabels": { "app": "web" } } },
            "status": { "observedGeneration": 1, "disruptionsAllowed": allowed,
                "currentHealthy": healthy, "desiredHealthy": desired },
        })
    }

    fn pod(ready: bool) -> Value {
        json!({
            "metadata": { "name": "web-1", "labels": { "app": "web" } },
            "status": { "phase": "Running", "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        })
    }

    #[test]
    fn a_ready_pod_takes_a_disruption_or_is_refused() {
        let next = decide(&budget(1, 3, 2), &pod(true), "now")
            .unwrap()
            .unwrap();
        assert_eq!(next["status"]["disruptionsAllowed"], 0);
        assert_eq!(next["status"]["disruptedPods"]["web-1"], "now");
        let err = decide(&budget(0, 2, 2), &pod(true), "now").unwrap_err();
        assert_eq!(err.code, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.message, VIOLATION);
        let mut unobserved = budget(1, 3, 2);
        unobserved["metadata"]["generation"] = json!(2);
        assert!(decide(&unobserved, &pod(true), "now").is_err());
    }

    #[test]
    fn an_unready_pod_goes_free_while_the_budget_is_healthy() {
        assert!(
            decide(&budget(0, 2, 2), &pod(false), "now")
                .unwrap()
                .is_none()
        );
        assert!(decide(&budget(0, 1, 2), &pod(false), "now").is_err());
        let mut always = budget(0, 1, 2);
        always["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert!(decide(&always, &pod(false), "now").unwrap().is_none());
    }

    #[test]
    fn empty_selectors_cover_no_pod_in_an_eviction() {
        let mut open = budget(1, 1, 1);
        open["spec"]["selector"] = json!({});
        assert!(!covers(&open, &pod(true)));
        assert!(covers(&budget(1, 1, 1), &pod(true)));
    }
}
