//! Validation with upstream's field paths and messages. A refused object is never stored.

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
        _ => {}
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
    pod_spec(template_spec, "spec.template.spec", causes);
    let policy = template_spec["restartPolicy"].as_str().unwrap_or("Always");
    if restart_always && policy != "Always" {
        causes.push(FieldCause::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["Always"],
        ));
    }
    if !restart_always && policy == "Always" {
        causes.push(FieldCause::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["OnFailure", "Never"],
        ));
    }
}

/// Renders a label map the way Go's `%#v` prints `map[string]string`, as upstream's messages do.
fn go_map(labels: &Value) -> String {
    let entries: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k:?}:{}", serde_json::to_string(v).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!("map[string]string{{{}}}", entries.join(", "))
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
}

/// Fields that may not change once set, per kind: `(path, JSON pointer)`.
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
        ("", "Secret") | ("", "ConfigMap") => &[],
        ("", "Service") => &[("spec.clusterIP", "/spec/clusterIP")],
        ("", "Pod") => &[
            ("spec.containers", "/spec/containers/0/name"),
            ("spec.nodeName", "/spec/nodeName"),
            ("spec.restartPolicy", "/spec/restartPolicy"),
            ("spec.volumes", "/spec/volumes"),
        ],
        _ => &[],
    }
}

/// Checks the immutable fields of an update.
pub fn update(group: &str, kind: &str, old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    for (path, pointer) in immutable_fields(group, kind) {
        let before = old.pointer(pointer);
        let after = new.pointer(pointer);
        // Fields that were unset may be set once (e.g. a pod's nodeName by binding).
        if before.is_some_and(|b| !b.is_null()) && before != after {
            let shown = after.cloned().unwrap_or(Value::Null);
            causes.push(FieldCause::invalid(*path, &shown, "field is immutable"));
        }
    }
    if let (Some(old_secret), Some(new_secret)) = (old.get("immutable"), new.get("immutable"))
        && old_secret == &Value::Bool(true)
        && (old.get("data") != new.get("data") || new_secret != &Value::Bool(true))
    {
        causes.push(FieldCause::forbidden(
            "data",
            "field is immutable when `immutable` is set",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
