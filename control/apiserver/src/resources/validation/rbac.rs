//! Upstream's validation of RBAC objects (`ValidateRole`, `ValidateRoleBinding` and their
//! cluster counterparts): rules name their verbs and what they apply to, bindings refer to a
//! role of a kind they may bind and name subjects of known kinds, and a binding's roleRef never
//! changes.

use serde_json::Value;

use crate::status::FieldCause;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The rules of a Role (`namespaced`) or ClusterRole.
pub fn role(obj: &Value, namespaced: bool, causes: &mut Vec<FieldCause>) {
    for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        let non_empty = |field: &str| rule[field].as_array().is_some_and(|l| !l.is_empty());
        if !non_empty("verbs") {
            causes.push(FieldCause::required(
                format!("{at}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if non_empty("nonResourceURLs") {
            if namespaced {
                causes.push(FieldCause::invalid(
                    format!("{at}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if non_empty("apiGroups") || non_empty("resources") {
                causes.push(FieldCause::invalid(
                    format!("{at}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if !non_empty("apiGroups") {
            causes.push(FieldCause::required(
                format!("{at}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if !non_empty("resources") {
            causes.push(FieldCause::required(
                format!("{at}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A RoleBinding (`namespaced`) or ClusterRoleBinding.
pub fn binding(obj: &Value, namespaced: bool, causes: &mut Vec<FieldCause>) {
    let role_ref = &obj["roleRef"];
    let group = role_ref["apiGroup"].as_str().unwrap_or_default();
    if group != RBAC_GROUP {
        causes.push(FieldCause::not_supported(
            "roleRef.apiGroup",
            group,
            &[RBAC_GROUP],
        ));
    }
    let kind = role_ref["kind"].as_str().unwrap_or_default();
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind) {
        causes.push(FieldCause::not_supported("roleRef.kind", kind, kinds));
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        causes.push(FieldCause::required("roleRef.name", ""));
    }
    for (i, subject) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let at = format!("subjects[{i}]");
        if subject["name"].as_str().is_none_or(str::is_empty) {
            causes.push(FieldCause::required(format!("{at}.name"), ""));
        }
        let group = subject["apiGroup"].as_str().unwrap_or_default();
        match subject["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    causes.push(FieldCause::not_supported(
                        format!("{at}.apiGroup"),
                        group,
                        &[""],
                    ));
                }
                if !namespaced && subject["namespace"].as_str().is_none_or(str::is_empty) {
                    causes.push(FieldCause::required(format!("{at}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != RBAC_GROUP {
                    causes.push(FieldCause::not_supported(
                        format!("{at}.apiGroup"),
                        group,
                        &[RBAC_GROUP],
                    ));
                }
            }
            other => causes.push(FieldCause::not_supported(
                format!("{at}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// A binding's update: its roleRef stays.
pub fn binding_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    if old["roleRef"] != new["roleRef"] {
        causes.push(FieldCause::invalid(
            "roleRef",
            &new["roleRef"],
            "cannot change roleRef",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(causes: Vec<FieldCause>) -> Vec<String> {
        causes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rules_name_verbs_and_what_they_apply_to() {
        let mut causes = vec![];
        let ok = json!({ "rules": [
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get"] },
            { "nonResourceURLs": ["/healthz"], "verbs": ["get"] },
        ] });
        role(&ok, false, &mut causes);
        assert!(causes.is_empty(), "{:?}", messages(causes));

        role(&ok, true, &mut causes);
        role(
            &json!({ "rules": [{ "resources": ["pods"] }] }),
            true,
            &mut causes,
        );
        assert_eq!(
            messages(causes),
            [
                r#"rules[1].nonResourceURLs: Invalid value: ["/healthz"]: namespaced rules cannot apply to non-resource URLs"#,
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
            ]
        );
    }

    #[test]
    fn bindings_refer_to_roles_they_may_bind_and_known_subjects() {
        let binding_of = |kind: &str, subject: Value| json!({ "roleRef": { "apiGroup": RBAC_GROUP, "kind": kind, "name": "view" }, "subjects": [subject] });
        let account = json!({ "kind": "ServiceAccount", "name": "builder" });
        let mut causes = vec![];
        binding(
            &binding_of("ClusterRole", account.clone()),
            true,
            &mut causes,
        );
        assert!(causes.is_empty(), "{:?}", messages(causes));

        binding(&binding_of("Role", account), false, &mut causes);
        binding(
            &binding_of("ClusterRole", json!({ "kind": "Robot", "name": "r" })),
            true,
            &mut causes,
        );
        assert_eq!(
            messages(causes),
            [
                r#"roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole""#,
                "subjects[0].namespace: Required value",
                r#"subjects[0].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group""#,
            ]
        );

        let mut causes = vec![];
        let old = binding_of(
            "ClusterRole",
            json!({ "kind": "User", "apiGroup": RBAC_GROUP, "name": "jane" }),
        );
        let mut new = old.clone();
        new["roleRef"]["name"] = json!("admin");
        binding_update(&old, &new, &mut causes);
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0].message.ends_with("cannot change roleRef"),
            "{}",
            causes[0].message
        );
    }
}
