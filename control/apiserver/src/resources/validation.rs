//! Validation with upstream's field paths and messages. A refused object is never stored.

mod cronjob;
pub mod ephemeral_containers;
mod rbac;
mod storage;

use serde_json::Value;

use crate::status::FieldCause;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An RFC 1123 label: at most 63 characters of [a-z0-9-], alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower)
}

/// An RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| is_alnum_lower(c) || c == '-')
                && l.starts_with(is_alnum_lower)
                && l.ends_with(is_alnum_lower)
        })
}

/// A DNS-1035 label (Service names): starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_qualified_name(s: &str) -> bool {
    let name = match s.rsplit_once('/') {
        Some((prefix, name)) => {
            if !is_dns1123_subdomain(prefix) {
                return false;
            }
            name
        }
        None => s,
    };
    is_label_value(name) && !name.is_empty()
}

/// How an object's name must look.
#[derive(Debug, Clone, Copy)]
pub enum NameRule {
    /// Most objects.
    Subdomain,
    /// Namespaces.
    Label,
    /// Services.
    Dns1035,
    /// Anything that is a valid path segment (events, leases).
    PathSegment,
}

/// The name rule of a kind.
pub fn name_rule(group: &str, kind: &str) -> NameRule {
    match (group, kind) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("", "Event") | ("events.k8s.io", "Event") => NameRule::PathSegment,
        // Upstream checks RBAC names only as path segments (`system:aggregate-to-edit`).
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// Checks a name against a rule; returns the upstream message when it fails.
pub fn check_name(rule: NameRule, name: &str) -> Option<&'static str> {
    match rule {
        NameRule::Subdomain if !is_dns1123_subdomain(name) => Some(DNS1123_SUBDOMAIN_MSG),
        NameRule::Label if !is_dns1123_label(name) => Some(DNS1123_LABEL_MSG),
        NameRule::Dns1035 if !is_dns1035_label(name) => Some(DNS1035_LABEL_MSG),
        NameRule::PathSegment
            if name == "." || name == ".." || name.contains('/') || name.contains('%') =>
        {
            Some("may not contain '/' or '%' and may not be '.' or '..'")
        }
        _ => None,
    }
}

/// Validates metadata common to every object.
pub fn metadata(meta: &Value, rule: NameRule, causes: &mut Vec<FieldCause>) {
    match meta["name"].as_str() {
        Some(name) => {
            if let Some(msg) = check_name(rule, name) {
                causes.push(FieldCause::invalid("metadata.name", &meta["name"], msg));
            }
        }
        None => causes.push(FieldCause::required(
            "metadata.name",
            "name or generateName is required",
        )),
    }
    labels(&meta["labels"], "metadata.labels", causes);
    if let Some(annotations) = meta["annotations"].as_object() {
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            causes.push(FieldCause {
                reason: "FieldValueTooLong",
                message: "Too long: may not be more than 262144 bytes".to_string(),
                field: "metadata.annotations".into(),
            });
        }
        for key in annotations.keys() {
            if !is_qualified_name(&key.to_ascii_lowercase()) {
                causes.push(FieldCause::invalid(
                    "metadata.annotations",
                    &Value::String(key.clone()),
                    QUALIFIED_NAME_MSG,
                ));
            }
        }
    }
}

/// Validates a label map at `path`.
pub fn labels(labels: &Value, path: &str, causes: &mut Vec<FieldCause>) {
    let Some(map) = labels.as_object() else {
        return;
    };
    for (key, value) in map {
        if !is_qualified_name(key) {
            causes.push(FieldCause::invalid(
                path,
                &Value::String(key.clone()),
                QUALIFIED_NAME_MSG,
            ));
        }
        if let Some(v) = value.as_str()
            && !is_label_value(v)
        {
            causes.push(FieldCause::invalid(
                path.to_string(),
                value,
                LABEL_VALUE_MSG,
            ));
        }
    }
}

fn non_negative(obj: &Value, path: &str, field: &str, causes: &mut Vec<FieldCause>) {
    if let Some(n) = obj[field].as_i64()
        && n < 0
    {
        causes.push(FieldCause::invalid(
            format!("{path}.{field}"),
            &obj[field],
            "must be greater than or equal to 0",
        ));
    }
}

/// Upstream's `ValidatePodDisruptionBudgetSpec`: at most one of minAvailable and
/// maxUnavailable, each a non-negative count or a percentage (at most 100%).
fn disruption_budget(spec: &Value, causes: &mut Vec<FieldCause>) {
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        causes.push(FieldCause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for field in ["minAvailable", "maxUnavailable"] {
        let value = &spec[field];
        let at = format!("spec.{field}");
        match value {
            Value::Null => {}
            Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => causes.push(
                FieldCause::invalid(at, value, "must be greater than or equal to 0"),
            ),
            Value::Number(_) => {}
            Value::String(s) => match s
                .strip_suffix('%')
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .map(str::parse::<i64>)
            {
                Some(Ok(percent)) if percent <= 100 => {}
                Some(Ok(_)) => causes.push(FieldCause::invalid(
                    at,
                    value,
                    "must not be greater than 100%",
                )),
                _ => causes.push(FieldCause::invalid(
                    at,
                    value,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )),
            },
            other => causes.push(FieldCause::invalid(at, other, "must be an integer or a percentage")),
        }
    }
    if let Some(policy) = spec["unhealthyPodEvictionPolicy"].as_str()
        && !matches!(policy, "IfHealthyBudget" | "AlwaysAllow")
    {
        causes.push(FieldCause::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
}

/// Upstream's checks of a projected service account token: a path, and a lifetime of ten
/// minutes to 2^32 seconds.
fn service_account_token_projection(token: &Value, at: &str, causes: &mut Vec<FieldCause>) {
    if token["path"].as_str().is_none_or(str::is_empty) {
        causes.push(FieldCause::required(format!("{at}.path"), ""));
    }
    if let Some(seconds) = token["expirationSeconds"].as_i64() {
        let field = format!("{at}.expirationSeconds");
        if seconds < 600 {
            causes.push(FieldCause::invalid(
                field,
                &token["expirationSeconds"],
                "may not specify a duration less than 10 minutes",
            ));
        } else if seconds > 1 << 32 {
            causes.push(FieldCause::invalid(
                field,
                &token["expirationSeconds"],
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
    }
}

/// Validates the object's own fields, per kind.
pub fn object(group: &str, kind: &str, obj: &Value, causes: &mut Vec<FieldCause>) {
    match (group, kind) {
        ("", "Pod") => pod_spec(&obj["spec"], "spec", causes),
        ("", "Service") => service(obj, causes),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            non_negative(&obj["spec"], "spec", "replicas", causes);
            workload(obj, causes, true);
        }
        ("apps", "DaemonSet") => workload(obj, causes, true),
        ("batch", "Job") => {
            for field in ["parallelism", "completions", "backoffLimit"] {
                non_negative(&obj["spec"], "spec", field, causes);
            }
            workload(obj, causes, false);
        }
        ("batch", "CronJob") => cronjob::spec(obj, causes),
        ("", "PersistentVolume") => storage::persistent_volume(obj, causes),
        ("", "PersistentVolumeClaim") => storage::persistent_volume_claim(obj, causes),
        ("storage.k8s.io", "StorageClass") => storage::storage_class(obj, causes),
        ("scheduling.k8s.io", "PriorityClass") => priority_class(obj, causes),
        ("policy", "PodDisruptionBudget") => disruption_budget(&obj["spec"], causes),
        ("rbac.authorization.k8s.io", "Role") => rbac::role(obj, true, causes),
        ("rbac.authorization.k8s.io", "ClusterRole") => rbac::role(obj, false, causes),
        ("rbac.authorization.k8s.io", "RoleBinding") => rbac::binding(obj, true, causes),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => rbac::binding(obj, false, causes),
        _ => {}
    }
}

/// Upstream's `ValidatePriorityClass`: `system-` names belong to the system classes, other
/// classes stay at or below the highest user-definable value, and the preemption policy is one
/// upstream knows.
fn priority_class(obj: &Value, causes: &mut Vec<FieldCause>) {
    use crate::priority_admission::{
        HIGHEST_USER_DEFINABLE_PRIORITY, SYSTEM_PRIORITY_CLASS_PREFIX, unknown_system_class,
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let value = obj["value"].as_i64().unwrap_or(0);
    if name.starts_with(SYSTEM_PRIORITY_CLASS_PREFIX) {
        let global_default = obj["globalDefault"].as_bool().unwrap_or(false);
        if let Some(error) = unknown_system_class(name, value, global_default) {
            causes.push(FieldCause::forbidden(
                "metadata.name",
                &format!(
                    "priority class names with '{SYSTEM_PRIORITY_CLASS_PREFIX}' prefix are reserved for system use only. error: {error}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE_PRIORITY {
        causes.push(FieldCause::forbidden(
            "value",
            &format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    match obj["preemptionPolicy"].as_str() {
        None | Some("PreemptLowerPriority" | "Never") => {}
        Some("") => causes.push(FieldCause::required("preemptionPolicy", "")),
        Some(other) => causes.push(FieldCause::not_supported(
            "preemptionPolicy",
            other,
            &["PreemptLowerPriority", "Never"],
        )),
    }
}

fn workload(obj: &Value, causes: &mut Vec<FieldCause>, restart_always: bool) {
    let spec = &obj["spec"];
    let template_labels = &spec["template"]["metadata"]["labels"];
    labels(template_labels, "spec.template.metadata.labels", causes);
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => causes.push(FieldCause::required("spec.selector", "")),
        Some(selector) => {
            let empty = selector["matchLabels"]
                .as_object()
                .is_none_or(|m| m.is_empty())
                && selector["matchExpressions"]
                    .as_array()
                    .is_none_or(|m| m.is_empty());
            if empty {
                causes.push(FieldCause::invalid(
                    "spec.selector",
                    selector,
                    "empty selector is invalid for deployment",
                ));
            } else if !crate::selectors::label_selector_matches(selector, template_labels) {
                causes.push(FieldCause::invalid_shown(
                    "spec.template.metadata.labels",
                    &go_map(template_labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    let template_spec = &spec["template"]["spec"];
    pod_template_spec(template_spec, "spec.template.spec", causes);
    if restart_always {
        let policy = template_spec["restartPolicy"].as_str().unwrap_or("Always");
        if policy != "Always" {
            causes.push(FieldCause::not_supported(
                "spec.template.spec.restartPolicy",
                policy,
                &["Always"],
            ));
        }
    } else {
        restart_policy_of_job(template_spec, "spec.template.spec", causes);
    }
}

/// A Job's Pods restart OnFailure or Never, not Always (`path` is the pod spec's).
fn restart_policy_of_job(pod_spec: &Value, path: &str, causes: &mut Vec<FieldCause>) {
    let policy = pod_spec["restartPolicy"].as_str().unwrap_or("Always");
    if policy == "Always" {
        causes.push(FieldCause::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["OnFailure", "Never"],
        ));
    }
}

/// The checks only a new object gets, per kind.
pub fn create(group: &str, kind: &str, obj: &Value, causes: &mut Vec<FieldCause>) {
    if (group, kind) == ("batch", "CronJob") {
        cronjob::create(obj, causes);
    }
    if (group, kind) == ("", "Pod") {
        ephemeral_containers::create(&obj["spec"], causes);
    }
}

/// Renders a label map the way Go's `%#v` prints `map[string]string`, as upstream's messages do
/// (keys sorted, as Go prints maps).
fn go_map(labels: &Value) -> String {
    let Some(map) = labels.as_object() else {
        return "map[string]string(nil)".to_string();
    };
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let entries: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{k:?}:{}", serde_json::to_string(v).unwrap_or_default()))
        .collect();
    format!("map[string]string{{{}}}", entries.join(", "))
}

/// The pod spec of a template (`path` is the spec's): a pod's checks, and no ephemeral
/// containers (they are added to running pods only).
fn pod_template_spec(spec: &Value, path: &str, causes: &mut Vec<FieldCause>) {
    pod_spec(spec, path, causes);
    if !is_empty_value(&spec["ephemeralContainers"]) {
        causes.push(FieldCause::forbidden(
            format!("{path}.ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<FieldCause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(FieldCause::required(format!("{path}.containers"), ""));
    }
    let mut names = std::collections::HashSet::new();
    for (list, field) in [
        (containers, "containers"),
        (spec["initContainers"].as_array(), "initContainers"),
    ] {
        for (i, c) in list.into_iter().flatten().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(FieldCause::required(format!("{at}.name"), "")),
                Some(name) => {
                    if !is_dns1123_label(name) {
                        causes.push(FieldCause::invalid(
                            format!("{at}.name"),
                            &c["name"],
                            DNS1123_LABEL_MSG,
                        ));
                    } else if !names.insert(name.to_string()) {
                        causes.push(FieldCause::duplicate(format!("{at}.name"), &c["name"]));
                    }
                }
            }
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                causes.push(FieldCause::required(format!("{at}.image"), ""));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                if let Some(port) = p["containerPort"].as_i64()
                    && !(1..=65535).contains(&port)
                {
                    causes.push(FieldCause::invalid(
                        format!("{at}.ports[{j}].containerPort"),
                        &p["containerPort"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    // Volume names become directory names on the node: DNS labels, unique.
    let mut volumes = std::collections::HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{i}].name");
        match v["name"].as_str() {
            None | Some("") => causes.push(FieldCause::required(at, "")),
            Some(name) if !is_dns1123_label(name) => {
                causes.push(FieldCause::invalid(at, &v["name"], DNS1123_LABEL_MSG));
            }
            Some(name) if !volumes.insert(name.to_string()) => {
                causes.push(FieldCause::duplicate(at, &v["name"]));
            }
            Some(_) => {}
        }
        let sources = v["projected"]["sources"].as_array().into_iter().flatten();
        for (j, source) in sources.enumerate() {
            let token = &source["serviceAccountToken"];
            if token.is_object() {
                let at = format!("{path}.volumes[{i}].projected.sources[{j}].serviceAccountToken");
                service_account_token_projection(token, &at, causes);
            }
        }
    }
    for (list, field) in [
        (spec["containers"].as_array(), "containers"),
        (spec["initContainers"].as_array(), "initContainers"),
        (
            spec["ephemeralContainers"].as_array(),
            "ephemeralContainers",
        ),
    ] {
        for (i, c) in list.into_iter().flatten().enumerate() {
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("{path}.{field}[{i}].volumeMounts[{j}]");
                let name = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(name) {
                    causes.push(FieldCause::not_found(format!("{at}.name"), &m["name"]));
                }
                if m["mountPath"].as_str().is_none_or(str::is_empty) {
                    causes.push(FieldCause::required(format!("{at}.mountPath"), ""));
                }
                for field in ["subPath", "subPathExpr"] {
                    if let Some(sub_path) = m[field].as_str()
                        && (sub_path.starts_with('/') || sub_path.split('/').any(|p| p == ".."))
                    {
                        causes.push(FieldCause::invalid(
                            format!("{at}.{field}"),
                            &m[field],
                            "must be a relative path without '..'",
                        ));
                    }
                }
                if m["subPath"].as_str().is_some_and(|p| !p.is_empty())
                    && m["subPathExpr"].as_str().is_some_and(|p| !p.is_empty())
                {
                    causes.push(FieldCause::invalid(
                        format!("{at}.subPathExpr"),
                        &m["subPathExpr"],
                        "subPathExpr and subPath are mutually exclusive",
                    ));
                }
            }
        }
    }
    for field in ["hostname", "subdomain"] {
        if let Some(value) = spec[field].as_str()
            && !value.is_empty()
            && !is_dns1123_label(value)
        {
            causes.push(FieldCause::invalid(
                format!("{path}.{field}"),
                &spec[field],
                DNS1123_LABEL_MSG,
            ));
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push(FieldCause::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(policy) = spec["dnsPolicy"].as_str()
        && !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&policy)
    {
        causes.push(FieldCause::not_supported(
            format!("{path}.dnsPolicy"),
            policy,
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        ));
    }
    // Upstream checks these on its internal type, where both sit in the security context.
    if spec["shareProcessNamespace"] == Value::Bool(true) && spec["hostPID"] == Value::Bool(true) {
        causes.push(FieldCause::invalid(
            format!("{path}.securityContext.shareProcessNamespace"),
            &Value::Bool(true),
            "ShareProcessNamespace and HostPID cannot both be enabled",
        ));
    }
    non_negative(spec, path, "terminationGracePeriodSeconds", causes);
}

fn service(obj: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(FieldCause::not_supported(
            "spec.type",
            ty,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec["ports"].as_array();
    let headless = spec["clusterIP"] == "None";
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        causes.push(FieldCause::required("spec.ports", ""));
    }
    let multiple = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p["port"].as_i64() {
            Some(port) if (1..=65535).contains(&port) => {}
            Some(_) => causes.push(FieldCause::invalid(
                format!("{at}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(FieldCause::required(format!("{at}.port"), "")),
        }
        match p["name"].as_str() {
            Some(name) if !name.is_empty() => {
                let first = names.insert(name.to_string());
                if !first {
                    causes.push(FieldCause::duplicate(format!("{at}.name"), &p["name"]));
                }
            }
            _ if multiple => causes.push(FieldCause::required(format!("{at}.name"), "")),
            _ => {}
        }
        if let Some(np) = p["nodePort"].as_i64()
            && ty == "ClusterIP"
            && np != 0
        {
            causes.push(FieldCause::forbidden(
                format!("{at}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(proto) = spec["sessionAffinity"].as_str()
        && !["None", "ClientIP"].contains(&proto)
    {
        causes.push(FieldCause::not_supported(
            "spec.sessionAffinity",
            proto,
            &["ClientIP", "None"],
        ));
    }
    service_external_traffic(spec, causes);
}

/// Upstream's `validateServiceExternalTrafficPolicy`: a policy only on Services reached from
/// outside, Cluster or Local, and the health check node port only where it belongs.
fn service_external_traffic(spec: &Value, causes: &mut Vec<FieldCause>) {
    let policy = &spec["externalTrafficPolicy"];
    match policy.as_str() {
        None | Some("") => {}
        Some(_) if !crate::services::externally_accessible(spec) => {
            causes.push(FieldCause::invalid(
                "spec.externalTrafficPolicy",
                policy,
                "may only be set for externally-accessible services",
            ));
        }
        Some(value) if !["Cluster", "Local"].contains(&value) => {
            causes.push(FieldCause::not_supported(
                "spec.externalTrafficPolicy",
                value,
                &["Cluster", "Local"],
            ));
        }
        Some(_) => {}
    }
    let port = &spec["healthCheckNodePort"];
    if port.as_i64().unwrap_or(0) == 0 {
        return;
    }
    if !crate::services::needs_health_check_port(spec) {
        causes.push(FieldCause::invalid(
            "spec.healthCheckNodePort",
            port,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    } else if spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["nodePort"] == *port)
    {
        causes.push(FieldCause::invalid(
            "spec.healthCheckNodePort",
            port,
            "provided port is already allocated",
        ));
    }
}

/// Upstream's `validateServiceExternalTrafficFieldsUpdate`: a health check node port the
/// Service keeps needing does not change.
fn service_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    use crate::services::{health_check_port, needs_health_check_port};
    let (before, after) = (&old["spec"], &new["spec"]);
    if needs_health_check_port(before)
        && needs_health_check_port(after)
        && health_check_port(before) != health_check_port(after)
    {
        causes.push(FieldCause::forbidden(
            "spec.healthCheckNodePort",
            "field is immutable",
        ));
    }
}

/// Fields that may not change once set, per kind: `(path, JSON pointer)`. Pods are checked by
/// [`update`] as upstream's `ValidatePodUpdate` does, not through this table.
pub fn immutable_fields(group: &str, kind: &str) -> &'static [(&'static str, &'static str)] {
    match (group, kind) {
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") => {
            &[("spec.selector", "/spec/selector")]
        }
        ("apps", "StatefulSet") => &[
            ("spec.selector", "/spec/selector"),
            ("spec.serviceName", "/spec/serviceName"),
        ],
        ("batch", "Job") => &[
            ("spec.selector", "/spec/selector"),
            ("spec.completions", "/spec/completions"),
        ],
        ("", "Secret") => &[("type", "/type")],
        ("", "Service") => &[("spec.clusterIP", "/spec/clusterIP")],
        ("scheduling.k8s.io", "PriorityClass") => &[("preemptionPolicy", "/preemptionPolicy")],
        _ => &[],
    }
}

/// Checks an update against the object it replaces: upstream's `ValidateObjectMetaUpdate` for
/// every kind, then the kind's own update rules (`ValidatePodUpdate`, the `immutable` flag of
/// ConfigMaps and Secrets, immutable fields).
pub fn update(group: &str, kind: &str, old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    object_meta_update(&old["metadata"], &new["metadata"], causes);
    for (path, pointer) in immutable_fields(group, kind) {
        let before = old.pointer(pointer);
        let after = new.pointer(pointer);
        // Fields that were unset may be set once.
        if before.is_some_and(|b| !b.is_null()) && before != after {
            let shown = after.cloned().unwrap_or(Value::Null);
            causes.push(FieldCause::invalid(*path, &shown, "field is immutable"));
        }
    }
    match (group, kind) {
        ("", "Pod") => pod_update(old, new, causes),
        ("", "Service") => service_update(old, new, causes),
        ("", "Node") => node_update(old, new, causes),
        ("", "ConfigMap") => immutable_contents(old, new, &["data", "binaryData"], causes),
        ("", "Secret") => immutable_contents(old, new, &["data"], causes),
        // Upstream's `ValidatePriorityClassUpdate`.
        ("scheduling.k8s.io", "PriorityClass") if old["value"] != new["value"] => causes.push(
            FieldCause::forbidden("value", "may not be changed in an update."),
        ),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            rbac::binding_update(old, new, causes)
        }
        ("", "PersistentVolume") => storage::persistent_volume_update(old, new, causes),
        ("", "PersistentVolumeClaim") => storage::persistent_volume_claim_update(old, new, causes),
        ("storage.k8s.io", "StorageClass") => storage::storage_class_update(old, new, causes),
        _ => {}
    }
}

/// Upstream's `ValidateNodeUpdate`: a node's pod CIDRs are set once (from empty) and never
/// changed, since pods hold addresses out of them.
fn node_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    let cidrs = |node: &Value| -> Vec<Value> {
        let list = node["spec"]["podCIDRs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            node["spec"]["podCIDR"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(|c| vec![Value::from(c)])
                .unwrap_or_default()
        } else {
            list
        }
    };
    let before = cidrs(old);
    if !before.is_empty() && before != cidrs(new) {
        causes.push(FieldCause::forbidden(
            "spec.podCIDRs",
            "node updates may not change podCIDR except from \"\" to valid",
        ));
    }
}

const FIELD_IMMUTABLE: &str = "field is immutable";
const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";

/// Upstream's `ValidateObjectMetaUpdate`: no new finalizers once the object is being deleted;
/// name, namespace and uid never change.
fn object_meta_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    if !old["deletionTimestamp"].is_null() {
        let names = |meta: &Value| -> std::collections::BTreeSet<String> {
            meta["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        };
        let before = names(old);
        let added: Vec<String> = names(new)
            .into_iter()
            .filter(|f| !before.contains(f))
            .map(|f| format!("{f:?}"))
            .collect();
        if !added.is_empty() {
            causes.push(FieldCause::forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    added.join(", ")
                ),
            ));
        }
    }
    for field in ["name", "namespace", "uid"] {
        let before = old[field].as_str().unwrap_or_default();
        let after = new[field].as_str().unwrap_or_default();
        if before != after {
            causes.push(FieldCause::invalid(
                format!("metadata.{field}"),
                &Value::String(after.to_string()),
                FIELD_IMMUTABLE,
            ));
        }
    }
}

/// ConfigMaps and Secrets with `immutable: true`: the flag stays, and so do the contents.
fn immutable_contents(old: &Value, new: &Value, fields: &[&str], causes: &mut Vec<FieldCause>) {
    if old["immutable"] != Value::Bool(true) {
        return;
    }
    if new["immutable"] != Value::Bool(true) {
        causes.push(FieldCause::forbidden("immutable", IMMUTABLE_WHEN_SET));
    }
    for field in fields {
        if !semantic_eq(&old[*field], &new[*field]) {
            causes.push(FieldCause::forbidden(*field, IMMUTABLE_WHEN_SET));
        }
    }
}

/// Absent, null, `[]` and `{}` are the same value, as upstream's semantic equality treats nil and
/// empty lists and maps.
fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Upstream's `apiequality.Semantic.DeepEqual` on decoded JSON.
fn semantic_eq(a: &Value, b: &Value) -> bool {
    if is_empty_value(a) && is_empty_value(b) {
        return true;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).all(|k| {
            semantic_eq(
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
            )
        }),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| semantic_eq(a, b))
        }
        _ => a == b,
    }
}

/// The fields upstream lets a Pod update change, as its message lists them.
const UPDATABLE_POD_SPEC_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Upstream's `ValidatePodUpdate` (the spec part; metadata is checked for every kind). Binding
/// sets `spec.nodeName` through its own subresource, which does not come here.
fn pod_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    let old_spec = &old["spec"];
    let new_spec = &new["spec"];
    for field in ["containers", "initContainers"] {
        if !container_updates(old_spec, new_spec, field, causes) {
            return;
        }
    }

    // activeDeadlineSeconds: from unset to a value, or lowered; never unset again.
    let path = "spec.activeDeadlineSeconds";
    let old_deadline = &old_spec["activeDeadlineSeconds"];
    let new_deadline = &new_spec["activeDeadlineSeconds"];
    if !new_deadline.is_null() {
        let seconds = new_deadline.as_i64().unwrap_or(-1);
        if !(0..=i64::from(i32::MAX)).contains(&seconds) {
            causes.push(FieldCause::invalid(
                path,
                new_deadline,
                "must be between 0 and 2147483647, inclusive",
            ));
            return;
        }
        if old_deadline.as_i64().is_some_and(|before| before < seconds) {
            causes.push(FieldCause::invalid(
                path,
                new_deadline,
                "must be less than or equal to previous value",
            ));
            return;
        }
    } else if !old_deadline.is_null() {
        // Upstream renders the nil pointer as the string "null".
        causes.push(FieldCause::invalid(
            path,
            &Value::String("null".into()),
            "must not update from a positive integer to nil value",
        ));
    }

    only_added_tolerations(old_spec, new_spec, causes);
    only_deleted_scheduling_gates(old_spec, new_spec, causes);

    if semantic_eq(old_spec, new_spec) {
        return;
    }
    // Put back what may change, then anything still different is forbidden.
    let mut munged = new_spec.clone();
    if let Some(m) = munged.as_object_mut() {
        for field in ["containers", "initContainers"] {
            if let Some(containers) = m.get_mut(field).and_then(Value::as_array_mut) {
                for (i, c) in containers.iter_mut().enumerate() {
                    if let Some(c) = c.as_object_mut() {
                        match old_spec[field][i].get("image") {
                            Some(image) => c.insert("image".into(), image.clone()),
                            None => c.remove("image"),
                        };
                    }
                }
            }
        }
        for field in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
            set_or_remove(m, field, &old_spec[field]);
        }
        let old_grace = old_spec["terminationGracePeriodSeconds"].as_i64();
        if old_grace.is_some_and(|g| g < 0)
            && m.get("terminationGracePeriodSeconds") == Some(&1.into())
        {
            set_or_remove(
                m,
                "terminationGracePeriodSeconds",
                &old_spec["terminationGracePeriodSeconds"],
            );
        }
    }
    // Gated pods may be narrowed: node selector additions and required node affinity additions.
    if old_spec["schedulingGates"]
        .as_array()
        .is_some_and(|g| !g.is_empty())
    {
        gated_pod_mutations(old_spec, &mut munged, causes);
    }
    if !semantic_eq(old_spec, &munged) {
        causes.push(FieldCause::forbidden(
            "spec",
            &format!(
                "pod updates may not change fields other than {UPDATABLE_POD_SPEC_FIELDS}\n{}",
                pod_spec_diff(old_spec, &munged)
            ),
        ));
    }
}

fn set_or_remove(map: &mut serde_json::Map<String, Value>, field: &str, value: &Value) {
    if value.is_null() {
        map.remove(field);
    } else {
        map.insert(field.to_string(), value.clone());
    }
}

/// Upstream's `ValidateContainerUpdates`; false when the update adds or removes containers, which
/// ends the Pod checks there.
fn container_updates(
    old_spec: &Value,
    new_spec: &Value,
    field: &str,
    causes: &mut Vec<FieldCause>,
) -> bool {
    let count = |spec: &Value| spec[field].as_array().map_or(0, Vec::len);
    if count(old_spec) != count(new_spec) {
        causes.push(FieldCause::forbidden(
            format!("spec.{field}"),
            "pod updates may not add or remove containers",
        ));
        return false;
    }
    // An empty image is already reported by the object's own validation.
    for (i, c) in new_spec[field].as_array().into_iter().flatten().enumerate() {
        if let Some(image) = c["image"].as_str()
            && !image.trim().is_empty()
            && image.trim() != image
        {
            causes.push(FieldCause::invalid(
                format!("spec.{field}[{i}].image"),
                &c["image"],
                "must not have leading or trailing whitespace",
            ));
        }
    }
    true
}

/// Upstream's `validateOnlyAddedTolerations`: every old toleration must still be there, except
/// that its `tolerationSeconds` may change.
fn only_added_tolerations(old_spec: &Value, new_spec: &Value, causes: &mut Vec<FieldCause>) {
    let same = |a: &Value, b: &Value| {
        ["key", "operator", "value", "effect"]
            .iter()
            .all(|f| a[*f].as_str().unwrap_or_default() == b[*f].as_str().unwrap_or_default())
    };
    let new_tolerations = new_spec["tolerations"].as_array();
    for old in old_spec["tolerations"].as_array().into_iter().flatten() {
        if !new_tolerations
            .into_iter()
            .flatten()
            .any(|new| same(old, new))
        {
            causes.push(FieldCause::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            return;
        }
    }
}

/// Upstream's `validateOnlyDeletedSchedulingGates`.
fn only_deleted_scheduling_gates(old_spec: &Value, new_spec: &Value, causes: &mut Vec<FieldCause>) {
    let old_names: Vec<&str> = old_spec["schedulingGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    // Upstream keeps the last index of each new name (a map), and reports in map order; here in
    // index order.
    let mut added: Vec<(usize, &str)> = vec![];
    for (i, gate) in new_spec["schedulingGates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = gate["name"].as_str().unwrap_or_default();
        if old_names.contains(&name) {
            continue;
        }
        added.retain(|(_, n)| *n != name);
        added.push((i, name));
    }
    added.sort();
    for (i, name) in added {
        causes.push(FieldCause::forbidden(
            format!("spec.schedulingGates[{i}].name"),
            &format!("only deletion is allowed, but found new scheduling gate '{name}'"),
        ));
    }
}

/// The part of upstream's `ValidatePodUpdate` for pods that still have scheduling gates: node
/// selector entries may be added and required node affinity terms may gain expressions. What is
/// allowed is put back to the old value in `munged`.
fn gated_pod_mutations(old_spec: &Value, munged: &mut Value, causes: &mut Vec<FieldCause>) {
    if !semantic_eq(&munged["nodeSelector"], &old_spec["nodeSelector"]) {
        let new_selector = &munged["nodeSelector"];
        let removed_or_changed = old_spec["nodeSelector"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| new_selector.get(k) != Some(v));
        if removed_or_changed {
            causes.push(FieldCause::invalid_shown(
                "spec.nodeSelector",
                &go_map(new_selector),
                "only additions to spec.nodeSelector are allowed (no mutations or deletions)",
            ));
        }
        if let Some(m) = munged.as_object_mut() {
            set_or_remove(m, "nodeSelector", &old_spec["nodeSelector"]);
        }
    }

    let old_affinity = &old_spec["affinity"]["nodeAffinity"];
    let new_affinity = munged["affinity"]["nodeAffinity"].clone();
    if semantic_eq(old_affinity, &new_affinity) {
        return;
    }
    node_affinity_mutation(old_affinity, &new_affinity, causes);
    let Some(m) = munged.as_object_mut() else {
        return;
    };
    let munged_affinity_nil = m.get("affinity").is_none_or(Value::is_null);
    if munged_affinity_nil {
        if !old_affinity.is_null() {
            m.insert(
                "affinity".into(),
                serde_json::json!({"nodeAffinity": old_affinity}),
            );
        }
    } else if old_spec["affinity"].is_null()
        && m["affinity"]["podAffinity"].is_null()
        && m["affinity"]["podAntiAffinity"].is_null()
    {
        m.remove("affinity");
    } else if let Some(affinity) = m.get_mut("affinity").and_then(Value::as_object_mut) {
        set_or_remove(affinity, "nodeAffinity", old_affinity);
    }
}

/// Upstream's `validateNodeAffinityMutation`.
fn node_affinity_mutation(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    let required = "requiredDuringSchedulingIgnoredDuringExecution";
    if old[required].is_null() {
        return;
    }
    let terms_path = format!("spec.affinity.nodeAffinity.{required}.nodeSelectorTerms");
    let old_terms = old[required]["nodeSelectorTerms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_terms = new[required]["nodeSelectorTerms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !old_terms.is_empty() && old_terms.len() != new_terms.len() {
        let shown = if new_terms.is_empty() {
            "[]core.NodeSelectorTerm(nil)".to_string()
        } else {
            let terms: Vec<String> = new_terms.iter().map(go_node_selector_term).collect();
            format!("[]core.NodeSelectorTerm{{{}}}", terms.join(", "))
        };
        causes.push(FieldCause::invalid_shown(
            terms_path,
            &shown,
            "no additions/deletions to non-empty NodeSelectorTerms list are allowed",
        ));
        return;
    }
    for (i, (old_term, new_term)) in old_terms.iter().zip(&new_terms).enumerate() {
        if !term_has_only_additions(new_term, old_term) {
            causes.push(FieldCause::invalid_shown(
                format!("{terms_path}[{i}]"),
                &go_node_selector_term(new_term),
                "only additions are allowed (no mutations or deletions)",
            ));
        }
    }
}

fn term_has_only_additions(new: &Value, old: &Value) -> bool {
    let list = |term: &Value, field: &str| term[field].as_array().cloned().unwrap_or_default();
    let fields = ["matchExpressions", "matchFields"];
    if fields.iter().all(|f| list(old, f).is_empty())
        && fields.iter().any(|f| !list(new, f).is_empty())
    {
        return false;
    }
    fields.iter().all(|f| {
        let (old, new) = (list(old, f), list(new, f));
        old.is_empty()
            || (new.len() >= old.len()
                && semantic_eq(&Value::Array(new[..old.len()].to_vec()), &Value::Array(old)))
    })
}

/// A node selector term as Go's `%#v` prints upstream's internal `core.NodeSelectorTerm`.
fn go_node_selector_term(term: &Value) -> String {
    let requirements = |field: &str| match term[field].as_array().filter(|r| !r.is_empty()) {
        None => "[]core.NodeSelectorRequirement(nil)".to_string(),
        Some(reqs) => {
            let reqs: Vec<String> = reqs
                .iter()
                .map(|r| {
                    let values = match r["values"].as_array().filter(|v| !v.is_empty()) {
                        None => "[]string(nil)".to_string(),
                        Some(values) => {
                            let values: Vec<String> = values
                                .iter()
                                .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                                .collect();
                            format!("[]string{{{}}}", values.join(", "))
                        }
                    };
                    format!(
                        "core.NodeSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                        r["key"].as_str().unwrap_or_default(),
                        r["operator"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            format!("[]core.NodeSelectorRequirement{{{}}}", reqs.join(", "))
        }
    };
    format!(
        "core.NodeSelectorTerm{{MatchExpressions:{}, MatchFields:{}}}",
        requirements("matchExpressions"),
        requirements("matchFields")
    )
}

/// A short diff of two pod specs after the pod update's message, in the shape of the `cmp.Diff`
/// upstream appends (field by field, JSON values; upstream's own output is not stable either).
fn pod_spec_diff(old: &Value, new: &Value) -> String {
    let go_name = |field: &str| -> String {
        match field {
            "dnsPolicy" => "DNSPolicy".into(),
            "dnsConfig" => "DNSConfig".into(),
            "hostPID" => "HostPID".into(),
            "hostIPC" => "HostIPC".into(),
            "os" => "OS".into(),
            "serviceAccount" => "DeprecatedServiceAccount".into(),
            _ => {
                let mut chars = field.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        }
    };
    let empty = serde_json::Map::new();
    let (old_map, new_map) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<&String> = old_map.keys().collect();
    fields.extend(new_map.keys().filter(|k| !old_map.contains_key(*k)));
    let mut lines = vec!["  core.PodSpec{".to_string()];
    let mut identical = 0;
    let flush = |identical: &mut usize, lines: &mut Vec<String>| {
        if *identical > 0 {
            lines.push(format!("  \t... // {identical} identical fields"));
            *identical = 0;
        }
    };
    for field in fields {
        let before = old_map.get(field).unwrap_or(&Value::Null);
        let after = new_map.get(field).unwrap_or(&Value::Null);
        if semantic_eq(before, after) {
            identical += 1;
            continue;
        }
        flush(&mut identical, &mut lines);
        let name = go_name(field);
        if !before.is_null() {
            lines.push(format!("- \t{name}: {before},"));
        }
        if !after.is_null() {
            lines.push(format!("+ \t{name}: {after},"));
        }
    }
    flush(&mut identical, &mut lines);
    lines.push("  }".to_string());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_pod_cidr_is_set_once() {
        let empty = json!({"spec": {}});
        let first = json!({"spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}});
        let second = json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}});
        let mut causes = vec![];
        update("", "Node", &empty, &first, &mut causes);
        update("", "Node", &first, &first, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        update("", "Node", &first, &second, &mut causes);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.podCIDRs");
        assert_eq!(
            causes[0].message,
            "Forbidden: node updates may not change podCIDR except from \"\" to valid"
        );
    }

    #[test]
    fn a_pod_cannot_share_its_process_namespace_and_the_nodes() {
        let mut causes = vec![];
        object(
            "",
            "Pod",
            &pod(json!({"shareProcessNamespace": true, "hostPID": true})),
            &mut causes,
        );
        let shown: Vec<String> = causes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "spec.securityContext.shareProcessNamespace: Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled"
            ]
        );
        let mut causes = vec![];
        object(
            "",
            "Pod",
            &pod(json!({"shareProcessNamespace": true})),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("Foo_bar"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let mut causes = vec![];
        object("apps", "Deployment", &d, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert!(
            causes[0]
                .message
                .contains("`selector` does not match template `labels`")
        );
        assert!(
            causes[0]
                .message
                .contains(r#"map[string]string{"app":"b"}"#)
        );
    }

    fn update_errors(kind: &str, old: &Value, new: &Value) -> Vec<String> {
        let mut causes = vec![];
        update("", kind, old, new, &mut causes);
        causes.iter().map(ToString::to_string).collect()
    }

    fn pod(spec: Value) -> Value {
        let mut base = json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {
                "containers": [{"name": "c", "image": "nginx:1"}],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 300}]
            }
        });
        for (k, v) in spec.as_object().unwrap() {
            if v.is_null() {
                base["spec"].as_object_mut().unwrap().remove(k);
            } else {
                base["spec"][k] = v.clone();
            }
        }
        base
    }

    const POD_FORBIDDEN: &str = "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)\n";

    #[test]
    fn config_map_immutable() {
        let old = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "1"}, "binaryData": {"b": "AA=="}});
        assert!(update_errors("ConfigMap", &old, &old.clone()).is_empty());
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        assert_eq!(
            update_errors("ConfigMap", &old, &new),
            ["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let mut new = old.clone();
        new["immutable"] = json!(false);
        new["binaryData"] = json!({});
        assert_eq!(
            update_errors("ConfigMap", &old, &new),
            [
                "immutable: Forbidden: field is immutable when `immutable` is set",
                "binaryData: Forbidden: field is immutable when `immutable` is set"
            ]
        );
        let mut new = old.clone();
        new.as_object_mut().unwrap().remove("immutable");
        assert_eq!(
            update_errors("ConfigMap", &old, &new),
            ["immutable: Forbidden: field is immutable when `immutable` is set"]
        );
        // Not immutable before: anything goes, including becoming immutable.
        let mutable = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let mut new = mutable.clone();
        new["data"]["a"] = json!("2");
        new["immutable"] = json!(true);
        assert!(update_errors("ConfigMap", &mutable, &new).is_empty());
        // The whole refusal, as kubectl prints it.
        let mut causes = vec![];
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        update("", "ConfigMap", &old, &new, &mut causes);
        let subject = crate::status::Subject {
            group: "",
            resource: "configmaps",
            kind: "ConfigMap",
        };
        assert_eq!(
            crate::status::StatusError::invalid(&subject, "c", causes).message,
            "ConfigMap \"c\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
        );
    }

    #[test]
    fn secret_immutable_and_type() {
        let old = json!({"metadata": {"name": "s"}, "type": "Opaque", "immutable": true, "data": {"a": "MQ=="}});
        let mut new = old.clone();
        new["data"]["a"] = json!("Mg==");
        new["type"] = json!("kubernetes.io/tls");
        assert_eq!(
            update_errors("Secret", &old, &new),
            [
                "type: Invalid value: \"kubernetes.io/tls\": field is immutable",
                "data: Forbidden: field is immutable when `immutable` is set"
            ]
        );
        let mut new = old.clone();
        new["immutable"] = json!(false);
        assert_eq!(
            update_errors("Secret", &old, &new),
            ["immutable: Forbidden: field is immutable when `immutable` is set"]
        );
    }

    #[test]
    fn object_meta_update_rules() {
        let old = json!({"metadata": {"name": "c", "namespace": "a", "uid": "u1",
            "deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": ["keep"]}});
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(["y", "keep", "x"]);
        assert_eq!(
            update_errors("ConfigMap", &old, &new),
            [
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"x\", \"y\"}"
            ]
        );
        // Removing finalizers of a deleting object is how it goes away.
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!([]);
        assert!(update_errors("ConfigMap", &old, &new).is_empty());
        // Not being deleted: finalizers may be added.
        let mut live = old.clone();
        live["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        let mut new = live.clone();
        new["metadata"]["finalizers"] = json!(["keep", "x"]);
        assert!(update_errors("ConfigMap", &live, &new).is_empty());
        let mut new = live.clone();
        new["metadata"]["namespace"] = json!("b");
        new["metadata"]["uid"] = json!("u2");
        assert_eq!(
            update_errors("Deployment", &live, &new),
            [
                "metadata.namespace: Invalid value: \"b\": field is immutable",
                "metadata.uid: Invalid value: \"u2\": field is immutable"
            ]
        );
    }

    #[test]
    fn pod_update_allows_images_and_metadata() {
        let old = pod(json!({"initContainers": [{"name": "i", "image": "busybox:1"}]}));
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        new["spec"]["initContainers"][0]["image"] = json!("busybox:2");
        new["metadata"]["labels"] = json!({"a": "b"});
        assert!(update_errors("Pod", &old, &new).is_empty());
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!(" nginx:2");
        assert_eq!(
            update_errors("Pod", &old, &new),
            [
                "spec.containers[0].image: Invalid value: \" nginx:2\": must not have leading or trailing whitespace"
            ]
        );
    }

    #[test]
    fn pod_update_refuses_other_spec_changes() {
        let old = pod(json!({}));
        let new = pod(json!({"nodeName": "n1"}));
        let errors = update_errors("Pod", &old, &new);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(POD_FORBIDDEN), "{}", errors[0]);
        assert!(errors[0].contains("+ \tNodeName: \"n1\","), "{}", errors[0]);
        let mut new = old.clone();
        new["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
        let errors = update_errors("Pod", &old, &new);
        assert!(errors[0].starts_with(POD_FORBIDDEN), "{}", errors[0]);
        let mut new = old.clone();
        new["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "d", "image": "x"}));
        assert_eq!(
            update_errors("Pod", &old, &new),
            ["spec.containers: Forbidden: pod updates may not add or remove containers"]
        );
    }

    #[test]
    fn pod_update_active_deadline_seconds() {
        let unset = pod(json!({}));
        let ten = pod(json!({"activeDeadlineSeconds": 10}));
        let five = pod(json!({"activeDeadlineSeconds": 5}));
        assert!(update_errors("Pod", &unset, &ten).is_empty());
        assert!(update_errors("Pod", &ten, &five).is_empty());
        assert_eq!(
            update_errors("Pod", &five, &ten),
            [
                "spec.activeDeadlineSeconds: Invalid value: 10: must be less than or equal to previous value"
            ]
        );
        assert_eq!(
            update_errors("Pod", &ten, &unset),
            [
                "spec.activeDeadlineSeconds: Invalid value: \"null\": must not update from a positive integer to nil value"
            ]
        );
        assert_eq!(
            update_errors("Pod", &unset, &pod(json!({"activeDeadlineSeconds": -1}))),
            [
                "spec.activeDeadlineSeconds: Invalid value: -1: must be between 0 and 2147483647, inclusive"
            ]
        );
    }

    #[test]
    fn pod_update_tolerations_grace_period_and_gates() {
        let old = pod(json!({"schedulingGates": [{"name": "g1"}]}));
        let mut new = old.clone();
        new["spec"]["tolerations"][0]["tolerationSeconds"] = json!(10);
        new["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "other", "operator": "Exists"}));
        new["spec"]["schedulingGates"] = json!([]);
        assert!(update_errors("Pod", &old, &new).is_empty());
        let mut new = old.clone();
        new["spec"]["tolerations"][0]["value"] = json!("w");
        assert_eq!(
            update_errors("Pod", &old, &new),
            [
                "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
            ]
        );
        let mut new = old.clone();
        new["spec"]["schedulingGates"] = json!([{"name": "g1"}, {"name": "g2"}]);
        assert_eq!(
            update_errors("Pod", &old, &new),
            [
                "spec.schedulingGates[1].name: Forbidden: only deletion is allowed, but found new scheduling gate 'g2'"
            ]
        );
        let negative = pod(json!({"terminationGracePeriodSeconds": -1}));
        assert!(
            update_errors(
                "Pod",
                &negative,
                &pod(json!({"terminationGracePeriodSeconds": 1}))
            )
            .is_empty()
        );
        let errors = update_errors(
            "Pod",
            &old,
            &pod(json!({"schedulingGates": [{"name": "g1"}], "terminationGracePeriodSeconds": 1})),
        );
        assert!(errors[0].starts_with(POD_FORBIDDEN), "{errors:?}");
    }

    #[test]
    fn gated_pods_may_narrow_placement() {
        let term = |exprs: Value| json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}});
        let a = json!({"key": "a", "operator": "In", "values": ["1"]});
        let b = json!({"key": "b", "operator": "Exists"});
        let gated = |extra: Value| {
            let mut spec = json!({"schedulingGates": [{"name": "g"}]});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            pod(spec)
        };
        let old = gated(json!({"nodeSelector": {"a": "b"}, "affinity": term(json!([a]))}));
        let new =
            gated(json!({"nodeSelector": {"a": "b", "c": "d"}, "affinity": term(json!([a, b]))}));
        assert!(update_errors("Pod", &old, &new).is_empty());
        let new =
            gated(json!({"nodeSelector": {"c": "d", "a": "z"}, "affinity": term(json!([a]))}));
        assert_eq!(
            update_errors("Pod", &old, &new),
            [
                "spec.nodeSelector: Invalid value: map[string]string{\"a\":\"z\", \"c\":\"d\"}: only additions to spec.nodeSelector are allowed (no mutations or deletions)"
            ]
        );
        let new = gated(json!({"nodeSelector": {"a": "b"}, "affinity": term(json!([b]))}));
        assert_eq!(
            update_errors("Pod", &old, &new),
            [
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]: Invalid value: core.NodeSelectorTerm{MatchExpressions:[]core.NodeSelectorRequirement{core.NodeSelectorRequirement{Key:\"b\", Operator:\"Exists\", Values:[]string(nil)}}, MatchFields:[]core.NodeSelectorRequirement(nil)}: only additions are allowed (no mutations or deletions)"
            ]
        );
        // A pod that is not gated may not change its placement at all.
        let mut ungated = old.clone();
        ungated["spec"]
            .as_object_mut()
            .unwrap()
            .remove("schedulingGates");
        let mut new = ungated.clone();
        new["spec"]["nodeSelector"]["c"] = json!("d");
        let errors = update_errors("Pod", &ungated, &new);
        assert!(errors[0].starts_with(POD_FORBIDDEN), "{errors:?}");
    }

    #[test]
    fn negative_replicas() {
        let d = json!({"spec": {"replicas": -1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let mut causes = vec![];
        object("apps", "Deployment", &d, &mut causes);
        assert_eq!(
            causes[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn projected_tokens_need_a_path_and_ten_minutes_to_2_32_seconds() {
        let pod = |token: Value| {
            json!({"spec": {"containers": [{"name": "c", "image": "i"}],
                "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": token}]}}]}})
        };
        let errors = |obj: &Value| -> Vec<String> {
            let mut causes = vec![];
            object("", "Pod", obj, &mut causes);
            causes.iter().map(ToString::to_string).collect()
        };
        let at = "spec.volumes[0].projected.sources[0].serviceAccountToken";
        assert!(errors(&pod(json!({"path": "token", "expirationSeconds": 3607}))).is_empty());
        assert_eq!(
            errors(&pod(json!({"path": "token", "expirationSeconds": 60}))),
            [format!(
                "{at}.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
            )]
        );
        assert_eq!(
            errors(&pod(json!({"expirationSeconds": 8589934592_i64}))),
            [
                format!("{at}.path: Required value"),
                format!(
                    "{at}.expirationSeconds: Invalid value: 8589934592: may not specify a duration larger than 2^32 seconds"
                )
            ]
        );
    }

    fn class_errors(obj: &Value) -> Vec<String> {
        let mut causes = vec![];
        object("scheduling.k8s.io", "PriorityClass", obj, &mut causes);
        causes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn priority_class_values_and_reserved_names() {
        let class = |name: &str, value: i64| json!({"metadata": {"name": name}, "value": value});
        assert!(class_errors(&class("high", 1_000_000_000)).is_empty());
        assert_eq!(
            class_errors(&class("higher", 1_000_000_001)),
            ["value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
        );
        assert!(class_errors(&class("system-cluster-critical", 2_000_000_000)).is_empty());
        assert_eq!(
            class_errors(&class("system-x", 1)),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-x is not a known system priority class"
            ]
        );
        let mut odd = class("odd", 1);
        odd["preemptionPolicy"] = json!("Sometimes");
        assert_eq!(
            class_errors(&odd),
            [
                r#"preemptionPolicy: Unsupported value: "Sometimes": supported values: "PreemptLowerPriority", "Never""#
            ]
        );
    }

    #[test]
    fn priority_class_value_and_policy_are_immutable() {
        let old = json!({"metadata": {"name": "high"}, "value": 10, "preemptionPolicy": "Never"});
        let mut new = old.clone();
        new["value"] = json!(11);
        new["preemptionPolicy"] = json!("PreemptLowerPriority");
        new["description"] = json!("may change");
        let mut causes = vec![];
        update(
            "scheduling.k8s.io",
            "PriorityClass",
            &old,
            &new,
            &mut causes,
        );
        let errors: Vec<String> = causes.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                r#"preemptionPolicy: Invalid value: "PreemptLowerPriority": field is immutable"#,
                "value: Forbidden: may not be changed in an update.",
            ]
        );
    }
}
