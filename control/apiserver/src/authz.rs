//! Authorization reviews (authorization.k8s.io/v1). Baton does not enforce RBAC yet: every
//! authenticated user may do everything, as with upstream's `--authorization-mode=AlwaysAllow`.
//! The reviews clients ask say exactly that: `kubectl auth can-i` (SelfSubjectAccessReview)
//! answers yes, `kubectl auth can-i --list` (SelfSubjectRulesReview) lists `*` rules, and a
//! SubjectAccessReview (what webhooks and proxies ask about another user) is allowed. The
//! request's kind, attributes, subject and namespace are checked as upstream checks them
//! (not yet: that metadata is empty, and the field and label selector attributes), and
//! nothing is stored.

use serde_json::{Value, json};

use crate::status::{FieldCause, StatusError, Subject};

/// The review resources, by plural, with their kinds; all are create-only and cluster-scoped.
pub const REVIEWS: [(&str, &str); 3] = [
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
    ("subjectaccessreviews", "SubjectAccessReview"),
];

/// The group of the reviews.
pub const GROUP: &str = "authorization.k8s.io";

/// Answers the review `body` posted to `plural`: the review back with its status, or 422 with
/// upstream's causes when the spec is not one upstream accepts.
pub fn review(plural: &str, body: &Value) -> Result<Value, StatusError> {
    let Some((_, kind)) = REVIEWS.iter().find(|(p, _)| *p == plural) else {
        return Err(StatusError::no_such_path());
    };
    let sent_kind = body["kind"].as_str().unwrap_or_default();
    let sent_version = body["apiVersion"].as_str().unwrap_or_default();
    if !sent_kind.is_empty() && sent_kind != *kind {
        return Err(StatusError::bad_request(format!(
            "the kind in the data ({sent_kind}) does not match the expected kind ({kind})"
        )));
    }
    if !sent_version.is_empty() && sent_version != "authorization.k8s.io/v1" {
        return Err(StatusError::bad_request(format!(
            "the API version in the data ({sent_version}) does not match the expected API version (authorization.k8s.io/v1)"
        )));
    }
    let asked = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    if *kind == "SelfSubjectRulesReview" {
        if asked["namespace"].as_str().unwrap_or_default().is_empty() {
            return Err(StatusError::bad_request("no namespace on request"));
        }
        // As upstream: a new review with the rules, its spec left empty.
        return Ok(json!({
            "kind": kind,
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": {},
            "status": {
                "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"] }],
                "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
                "incomplete": false,
            },
        }));
    }
    // The spec's own fields only (a SelfSubjectAccessReview has no subject).
    let fields: &[&str] = if *kind == "SubjectAccessReview" {
        &[
            "resourceAttributes",
            "nonResourceAttributes",
            "user",
            "groups",
            "extra",
            "uid",
        ]
    } else {
        &["resourceAttributes", "nonResourceAttributes"]
    };
    let spec: serde_json::Map<String, Value> = fields
        .iter()
        .filter_map(|f| asked.get(*f).map(|v| ((*f).to_string(), v.clone())))
        .collect();
    let mut causes = Vec::new();
    let status = {
        let present = |field: &str| spec.get(field).is_some_and(|v| !v.is_null());
        let resource = present("resourceAttributes");
        let non_resource = present("nonResourceAttributes");
        if resource && non_resource {
            // Upstream prints the Go value.
            let attributes = &spec["nonResourceAttributes"];
            let go = format!(
                "authorization.NonResourceAttributes{{Path:{:?}, Verb:{:?}}}",
                attributes["path"].as_str().unwrap_or_default(),
                attributes["verb"].as_str().unwrap_or_default()
            );
            causes.push(FieldCause::invalid_shown(
                "spec.nonResourceAttributes",
                &go,
                "cannot be specified in combination with resourceAttributes",
            ));
        } else if !resource && !non_resource {
            causes.push(FieldCause::invalid_shown(
                "spec.resourceAttributes",
                "\"null\"",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        if *kind == "SubjectAccessReview" {
            let user = spec.get("user").and_then(Value::as_str).unwrap_or_default();
            let groups = spec
                .get("groups")
                .and_then(Value::as_array)
                .is_some_and(|g| !g.is_empty());
            if user.is_empty() && !groups {
                causes.push(FieldCause::invalid(
                    "spec.user",
                    &json!(user),
                    "at least one of user or group must be specified",
                ));
            }
        }
        json!({ "allowed": true })
    };
    if !causes.is_empty() {
        // Upstream names the kind of the decoded object, which is empty by then:
        // `.authorization.k8s.io "" is invalid: ...`.
        let subject = Subject {
            group: GROUP,
            resource: plural,
            kind: "",
        };
        return Err(StatusError::invalid(&subject, "", causes));
    }
    Ok(json!({
        "kind": kind,
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": spec,
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_access_is_allowed_and_every_rule_listed() {
        let asked = json!({ "spec": { "resourceAttributes": { "verb": "create", "resource": "pods", "namespace": "default" } } });
        let answer = review("selfsubjectaccessreviews", &asked).unwrap();
        assert_eq!(answer["status"]["allowed"], true);
        assert_eq!(answer["kind"], "SelfSubjectAccessReview");
        assert_eq!(answer["spec"]["resourceAttributes"]["resource"], "pods");
        let rules = review(
            "selfsubjectrulesreviews",
            &json!({ "spec": { "namespace": "default" } }),
        )
        .unwrap();
        assert_eq!(rules["status"]["resourceRules"][0]["verbs"][0], "*");
        assert_eq!(rules["status"]["incomplete"], false);
        assert_eq!(rules["spec"], json!({}));
        let err = review("selfsubjectrulesreviews", &json!({ "spec": {} })).unwrap_err();
        assert_eq!(err.code, http::StatusCode::BAD_REQUEST);
        // Only the spec's own fields come back.
        let with_user = json!({ "spec": { "resourceAttributes": { "verb": "get" }, "user": "x" } });
        let answer = review("selfsubjectaccessreviews", &with_user).unwrap();
        assert!(answer["spec"].get("user").is_none());
        let wrong_kind = json!({ "kind": "SubjectAccessReview", "spec": { "resourceAttributes": {}, "user": "u" } });
        assert_eq!(
            review("selfsubjectaccessreviews", &wrong_kind)
                .unwrap_err()
                .code,
            http::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn reviews_are_validated_as_upstream_does() {
        let err = review("selfsubjectaccessreviews", &json!({ "spec": {} })).unwrap_err();
        assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        let message = err.to_status()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"),
            "{message}"
        );
        assert!(
            message.starts_with(".authorization.k8s.io \"\" is invalid: "),
            "{message}"
        );
        let both = json!({ "spec": { "resourceAttributes": {}, "nonResourceAttributes": { "path": "/healthz", "verb": "get" }, "user": "u" } });
        let message = review("subjectaccessreviews", &both)
            .unwrap_err()
            .to_status()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(r#"spec.nonResourceAttributes: Invalid value: authorization.NonResourceAttributes{Path:"/healthz", Verb:"get"}: cannot be specified in combination with resourceAttributes"#),
            "{message}"
        );
        let nobody =
            json!({ "spec": { "nonResourceAttributes": { "path": "/healthz", "verb": "get" } } });
        let err = review("subjectaccessreviews", &nobody).unwrap_err();
        assert!(
            err.to_status()["message"]
                .as_str()
                .unwrap()
                .contains("at least one of user or group must be specified")
        );
        let someone = json!({ "spec": { "nonResourceAttributes": { "path": "/healthz", "verb": "get" }, "groups": ["g"] } });
        assert_eq!(
            review("subjectaccessreviews", &someone).unwrap()["status"]["allowed"],
            true
        );
    }
}
