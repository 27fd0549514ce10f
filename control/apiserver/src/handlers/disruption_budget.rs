//! The disruption budget check of pods/eviction, as upstream's eviction REST does: a pod that
//! is running and covered by a PodDisruptionBudget is evicted only while the budget allows a
//! disruption, which the eviction then uses up (`status.disruptionsAllowed` minus one, the pod
//! listed in `status.disruptedPods`) before the pod is deleted. The disruption controller
//! recomputes the budget from the pods it sees.

use serde_json::{Value, json};

use baton_store::{ListOptions, Store};

use crate::ApiServer;
use crate::objects::{Decision, decode, guaranteed_update, store_error};
use crate::resources;
use crate::selectors::label_selector_matches;
use crate::status::StatusError;

/// Upstream's refusal when a budget allows no disruption now.
const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether the eviction of `pod` may go ahead; when a budget covers it, one of its allowed
/// disruptions is taken first. Pods that are not running (pending, finished) or already being
/// deleted are evicted without asking a budget, as upstream.
pub async fn take_disruption<S: Store>(
    server: &ApiServer<S>,
    pod: &Value,
) -> Result<(), StatusError> {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if matches!(phase, "Pending" | "Succeeded" | "Failed")
        || !pod["metadata"]["deletionTimestamp"].is_null()
    {
        return Ok(());
    }
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
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
        let selector = &budget["spec"]["selector"];
        // A budget without a selector covers no pod; an empty one covers all (policy/v1).
        if selector.is_object() && label_selector_matches(selector, &pod["metadata"]["labels"]) {
            covering.push(
                budget["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    let budget_name = match covering.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        _ => {
            return Err(StatusError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let now = crate::handlers::now();
    guaranteed_update(
        &server.store,
        budgets,
        &budgets.key(Some(namespace), &budget_name),
        &budget_name,
        |current| {
            let status = &current["status"];
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
                return Err(StatusError::too_many_requests(
                    VIOLATION,
                    &[(
                        "DisruptionBudget",
                        format!(
                            "The disruption budget {budget_name} is still being processed by the server."
                        ),
                    )],
                ));
            }
            let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed <= 0 {
                let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
                let current_healthy = status["currentHealthy"].as_i64().unwrap_or(0);
                return Err(StatusError::too_many_requests(
                    VIOLATION,
                    &[(
                        "DisruptionBudget",
                        format!(
                            "The disruption budget {budget_name} needs {desired} healthy pods and has {current_healthy} currently"
                        ),
                    )],
                ));
            }
            let mut next = current.clone();
            next["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if !next["status"]["disruptedPods"].is_object() {
                next["status"]["disruptedPods"] = json!({});
            }
            next["status"]["disruptedPods"][pod_name] = json!(now);
            Ok(Decision::Write(next))
        },
    )
    .await?;
    tracing::debug!(
        pod = pod_name,
        budget = budget_name,
        "eviction took a disruption"
    );
    Ok(())
}
