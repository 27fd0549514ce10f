//! Upstream's Priority admission plugin: a new pod gets the value and preemption policy of its
//! PriorityClass (or of the cluster's default class, or priority 0), a pod naming an unknown
//! class or contradicting its class is refused, updates keep the priority a pod was created
//! with, and only one PriorityClass may be the default. Also the system classes every cluster
//! has.

use baton_store::Store;
use serde_json::{Value, json};

use crate::priority_classes::{PriorityClassCache, PriorityClassInfo};
use crate::resources::Resource;
use crate::status::StatusError;

/// The highest value a PriorityClass not named `system-*` may have.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;
/// The value of `system-cluster-critical`; `system-node-critical` is 1000 above it.
pub const SYSTEM_CRITICAL_PRIORITY: i64 = 2 * HIGHEST_USER_DEFINABLE_PRIORITY;
/// Names with this prefix are reserved for the system classes.
pub const SYSTEM_PRIORITY_CLASS_PREFIX: &str = "system-";
/// The preemption policy of pods whose class does not say.
pub const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

/// A PriorityClass the API server creates at startup.
#[derive(Debug, Clone, Copy)]
pub struct SystemClass {
    /// Its name.
    pub name: &'static str,
    /// Its value.
    pub value: i64,
    /// Its description, as upstream writes it.
    pub description: &'static str,
}

/// Upstream's system PriorityClasses.
pub const SYSTEM_CLASSES: [SystemClass; 2] = [
    SystemClass {
        name: "system-node-critical",
        value: SYSTEM_CRITICAL_PRIORITY + 1000,
        description: "Used for system critical pods that must not be moved from their current node.",
    },
    SystemClass {
        name: "system-cluster-critical",
        value: SYSTEM_CRITICAL_PRIORITY,
        description: "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    },
];

impl SystemClass {
    /// The object bootstrap stores (before metadata and defaults are filled in).
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": { "name": self.name },
            "value": self.value,
            "description": self.description,
        })
    }
}

/// Why a name under the `system-` prefix is refused, if it is: it must be one of the system
/// classes with their value and not the default (upstream's `IsKnownSystemPriorityClass`).
pub fn unknown_system_class(name: &str, value: i64, global_default: bool) -> Option<String> {
    let Some(known) = SYSTEM_CLASSES.iter().find(|c| c.name == name) else {
        return Some(format!("{name} is not a known system priority class"));
    };
    if known.value != value {
        return Some(format!(
            "value of {name} PriorityClass must be {}",
            known.value
        ));
    }
    if global_default {
        return Some(format!(
            "globalDefault of {name} PriorityClass must be false"
        ));
    }
    None
}

/// Sets a new pod's priority from `class` (its name and the class), or, when the pod names no
/// class and no default exists, to 0 with the `PreemptLowerPriority` policy. Refuses a pod
/// that already carries a different priority or preemption policy; the error is the detail of
/// upstream's Forbidden message.
pub fn apply_class(
    spec: &mut Value,
    class: Option<(&str, &PriorityClassInfo)>,
) -> Result<(), String> {
    let (name, value, policy) = match class {
        Some((name, info)) => (name, info.value, info.preemption_policy.as_deref()),
        None => ("", 0, Some(PREEMPT_LOWER_PRIORITY)),
    };
    if let Some(given) = spec["priority"].as_i64()
        && given != i64::from(value)
    {
        return Err(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        ));
    }
    if let Some(policy) = policy
        && let Some(given) = spec["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        ));
    }
    let Some(fields) = spec.as_object_mut() else {
        return Ok(());
    };
    if name.is_empty() {
        fields.remove("priorityClassName");
    } else {
        fields.insert("priorityClassName".into(), json!(name));
    }
    fields.insert("priority".into(), json!(value));
    if let Some(policy) = policy {
        fields.insert("preemptionPolicy".into(), json!(policy));
    }
    Ok(())
}

/// On a pod update that leaves them out, keeps the priority and preemption policy admission
/// set when the pod was created (validation then refuses any other change to them).
pub fn keep_on_update(current: &Value, next: &mut Value) {
    for field in ["priority", "preemptionPolicy"] {
        let kept = &current["spec"][field];
        if next["spec"][field].is_null()
            && !kept.is_null()
            && let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert(field.into(), kept.clone());
        }
    }
}

/// Refuses a PriorityClass marked `globalDefault` while another class is the default: on
/// create any existing default counts, on update any but the class itself.
pub fn check_single_default(
    obj: &Value,
    existing_default: Option<&str>,
    creating: bool,
) -> Result<(), String> {
    if obj["globalDefault"].as_bool() != Some(true) {
        return Ok(());
    }
    match existing_default {
        Some(other) if creating || obj["metadata"]["name"].as_str() != Some(other) => Err(format!(
            "PriorityClass {other} is already marked as default. Only one default can exist"
        )),
        _ => Ok(()),
    }
}

fn forbidden(resource: &Resource, obj: &Value, detail: &str) -> StatusError {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    StatusError::forbidden(&resource.subject(), name, detail)
}

/// Priority admission of a new pod: resolves its class through `classes` (the cache, then
/// etcd) and applies it.
pub async fn admit_new_pod<S: Store>(
    classes: &PriorityClassCache,
    store: &S,
    resource: &Resource,
    pod: &mut Value,
) -> Result<(), StatusError> {
    let named = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let class = match named {
        Some(name) => match classes.lookup(store, &name).await? {
            Some(info) => Some((name, info)),
            None => {
                let detail = format!("no PriorityClass with name {name} was found");
                return Err(forbidden(resource, pod, &detail));
            }
        },
        None => classes.global_default(store).await?,
    };
    let class = class.as_ref().map(|(name, info)| (name.as_str(), info));
    apply_class(&mut pod["spec"], class).map_err(|detail| forbidden(resource, pod, &detail))
}

/// Priority admission of a PriorityClass create: refuses a second default class.
pub async fn admit_new_class<S: Store>(
    classes: &PriorityClassCache,
    store: &S,
    resource: &Resource,
    class: &Value,
) -> Result<(), StatusError> {
    if class["globalDefault"].as_bool() != Some(true) {
        return Ok(());
    }
    let existing = classes.global_default(store).await?;
    check_single_default(class, existing.as_ref().map(|(n, _)| n.as_str()), true)
        .map_err(|detail| forbidden(resource, class, &detail))
}

/// Priority admission of a PriorityClass update, made inside the compare-and-swap loop from
/// what the cache knows: refuses marking a second class as the default.
pub fn admit_class_update(
    classes: &PriorityClassCache,
    resource: &Resource,
    class: &Value,
) -> Result<(), StatusError> {
    if class["globalDefault"].as_bool() != Some(true) {
        return Ok(());
    }
    let existing = classes.cached_global_default();
    check_single_default(class, existing.as_ref().map(|(n, _)| n.as_str()), false)
        .map_err(|detail| forbidden(resource, class, &detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(value: i32, policy: Option<&str>) -> PriorityClassInfo {
        PriorityClassInfo {
            value,
            preemption_policy: policy.map(str::to_string),
            global_default: false,
        }
    }

    #[test]
    fn a_named_class_sets_priority_and_policy() {
        let mut spec = json!({ "priorityClassName": "high", "containers": [] });
        let high = class(1000, Some("Never"));
        apply_class(&mut spec, Some(("high", &high))).unwrap();
        assert_eq!(spec["priority"], 1000);
        assert_eq!(spec["preemptionPolicy"], "Never");
        assert_eq!(spec["priorityClassName"], "high");
    }

    #[test]
    fn the_default_class_names_itself_on_the_pod() {
        let mut spec = json!({ "containers": [] });
        let low = class(-5, Some(PREEMPT_LOWER_PRIORITY));
        apply_class(&mut spec, Some(("low", &low))).unwrap();
        assert_eq!(
            (&spec["priorityClassName"], &spec["priority"]),
            (&json!("low"), &json!(-5))
        );
    }

    #[test]
    fn without_any_class_priority_is_zero() {
        let mut spec = json!({ "priorityClassName": "", "containers": [] });
        apply_class(&mut spec, None).unwrap();
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], PREEMPT_LOWER_PRIORITY);
        assert!(spec.get("priorityClassName").is_none());
    }

    #[test]
    fn a_class_without_a_policy_leaves_the_pods() {
        let mut spec = json!({ "preemptionPolicy": "Never" });
        let old = class(7, None);
        apply_class(&mut spec, Some(("old", &old))).unwrap();
        assert_eq!(
            (&spec["priority"], &spec["preemptionPolicy"]),
            (&json!(7), &json!("Never"))
        );
    }

    #[test]
    fn a_contradicting_priority_or_policy_is_refused() {
        let high = class(1000, Some(PREEMPT_LOWER_PRIORITY));
        let mut spec = json!({ "priorityClassName": "high", "priority": 5 });
        assert_eq!(
            apply_class(&mut spec, Some(("high", &high))).unwrap_err(),
            "the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"
        );
        let mut spec = json!({ "priority": 1000, "preemptionPolicy": "Never" });
        assert_eq!(
            apply_class(&mut spec, Some(("high", &high))).unwrap_err(),
            "the string value of PreemptionPolicy (Never) must not be provided in pod spec; priority admission controller computed PreemptLowerPriority from the given PriorityClass name"
        );
        // The same values as the class are accepted.
        let mut spec = json!({ "priority": 1000, "preemptionPolicy": PREEMPT_LOWER_PRIORITY });
        apply_class(&mut spec, Some(("high", &high))).unwrap();
        // Without a class, only 0 is.
        assert!(apply_class(&mut json!({ "priority": 1 }), None).is_err());
    }

    #[test]
    fn updates_keep_the_admitted_priority() {
        let current = json!({ "spec": { "priority": 9, "preemptionPolicy": "Never" } });
        let mut next = json!({ "spec": { "containers": [] } });
        keep_on_update(&current, &mut next);
        assert_eq!(
            (&next["spec"]["priority"], &next["spec"]["preemptionPolicy"]),
            (&json!(9), &json!("Never"))
        );
        let mut changed = json!({ "spec": { "priority": 3 } });
        keep_on_update(&current, &mut changed);
        assert_eq!(changed["spec"]["priority"], 3);
    }

    #[test]
    fn only_one_default_class() {
        let new_default = json!({ "metadata": { "name": "b" }, "globalDefault": true });
        assert_eq!(
            check_single_default(&new_default, Some("a"), true).unwrap_err(),
            "PriorityClass a is already marked as default. Only one default can exist"
        );
        check_single_default(&new_default, None, true).unwrap();
        // The default itself may be updated; another class may not become the default.
        check_single_default(&new_default, Some("b"), false).unwrap();
        assert!(check_single_default(&new_default, Some("a"), false).is_err());
        let plain = json!({ "metadata": { "name": "c" } });
        check_single_default(&plain, Some("a"), true).unwrap();
    }

    #[test]
    fn system_names_are_reserved() {
        assert_eq!(
            unknown_system_class("system-node-critical", 2_000_001_000, false),
            None
        );
        assert_eq!(
            unknown_system_class("system-cluster-critical", 5, false).as_deref(),
            Some("value of system-cluster-critical PriorityClass must be 2000000000")
        );
        assert_eq!(
            unknown_system_class("system-cluster-critical", 2_000_000_000, true).as_deref(),
            Some("globalDefault of system-cluster-critical PriorityClass must be false")
        );
        assert_eq!(
            unknown_system_class("system-mine", 1, false).as_deref(),
            Some("system-mine is not a known system priority class")
        );
    }
}
