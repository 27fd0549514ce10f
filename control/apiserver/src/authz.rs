//! Authorization reviews (authorization.k8s.io/v1). Baton does not enforce RBAC yet: every
//! authenticated user may do everything, as with upstream's `--authorization-mode=AlwaysAllow`.
//! The reviews clients ask say exactly that: `kubectl auth can-i` (SelfSubjectAccessReview)
//! answers yes, `kubectl auth can-i --list` (SelfSubjectRulesReview) lists `*` rules, and a
//! SubjectAccessReview (what webhooks and proxies ask about another user) is allowed. The
//! request is validated as upstream validates it, and nothing is stored.

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
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut causes = Vec::new();
    let status = if *kind == "SelfSubjectRulesReview" {
        json!({
            "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"] }],
            "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            "incomplete": false,
        })
    } else {
        let present = |field: &str| spec.get(field).is_some_and(|v| !v.is_null());
        let resource = present("resourceAttributes");
        let non_resource = present("nonResourceAttributes");
        if resource && non_resource {
            causes.push(FieldCause::invalid(
                "spec.nonResourceAttributes",
                &spec["nonResourceAttributes"],
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
        let subject = Subject {
            group: GROUP,
            resource: plural,
            kind,
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
        let both = json!({ "spec": { "resourceAttributes": {}, "nonResourceAttributes": {}, "user": "u" } });
        assert!(review("subjectaccessreviews", &both).is_err());
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
