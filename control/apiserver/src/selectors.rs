//! Label selectors (the query-string form and the LabelSelector object) and field selectors.

use serde_json::Value;

use crate::status::StatusError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    /// Parses the `labelSelector` query form (`a=b,c!=d,e in (f,g),!h,i`).
    pub fn parse(s: &str) -> Result<Self, StatusError> {
        let bad = |part: &str| {
            StatusError::bad_request(format!(
                "unable to parse requirement: {part:?}: invalid label selector"
            ))
        };
        let mut reqs = vec![];
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(v).ok_or_else(|| bad(part))?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(v).ok_or_else(|| bad(part))?)
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(part.to_string())
            } else {
                return Err(bad(part));
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's labels (a JSON map, or null) satisfy the selector.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Whether a `LabelSelector` object (matchLabels + matchExpressions) matches a label map.
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let exprs_ok = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => get(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => get(key).is_some(),
                "DoesNotExist" => get(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// A parsed field selector: `field=value` and `field!=value` terms.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields a kind may be selected on, besides metadata.name and metadata.namespace.
fn selectable_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `fieldSelector` for objects of `kind`; unknown fields are refused as upstream does.
    pub fn parse(s: &str, group: &str, kind: &str) -> Result<Self, StatusError> {
        let mut terms = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(StatusError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !selectable_fields(group, kind).contains(&field)
            {
                return Err(StatusError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), negate, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the terms of another selector.
    pub fn extend(&mut self, other: FieldSelector) {
        self.0.extend(other.0);
    }

    /// The value a `field=value` term requires of `field`, if any (to narrow a list).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, neg, _)| f == field && !neg)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether an object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, negate, want)| {
            let have = field_value(obj, field);
            (have == *want) != *negate
        })
    }
}

fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    if field == "source" {
        cur = &obj["source"]["component"];
    } else {
        for part in field.split('.') {
            cur = &cur[part];
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let labels = json!({"app": "web", "tier": "fe"});
        assert!(LabelSelector::parse("app=web").unwrap().matches(&labels));
        assert!(
            LabelSelector::parse("app==web,tier!=be")
                .unwrap()
                .matches(&labels)
        );
        assert!(
            LabelSelector::parse("tier in (fe, be),app")
                .unwrap()
                .matches(&labels)
        );
        assert!(
            !LabelSelector::parse("tier notin (fe)")
                .unwrap()
                .matches(&labels)
        );
        assert!(LabelSelector::parse("!missing").unwrap().matches(&labels));
        assert!(!LabelSelector::parse("app=db").unwrap().matches(&labels));
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "", "Pod").unwrap();
        assert!(sel.matches(&pod));
        assert!(
            FieldSelector::parse("spec.nodeName=", "", "Pod")
                .unwrap()
                .matches(&json!({"spec": {}}))
        );
        let err = FieldSelector::parse("spec.foo=x", "", "Pod").unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
    }

    #[test]
    fn selector_objects() {
        let sel = json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["x"]}]});
        assert!(label_selector_matches(&sel, &json!({"app": "a", "t": "x"})));
        assert!(!label_selector_matches(&sel, &json!({"app": "a"})));
    }
}
