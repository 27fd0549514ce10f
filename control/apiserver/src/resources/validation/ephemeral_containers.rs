//! Upstream's validation of a pod's ephemeral containers (`validateEphemeralContainers` and
//! `ValidatePodEphemeralContainersUpdate`): names unique among all the pod's containers, a
//! target that is one of its regular or init containers, none of the fields that would make
//! the pod rely on them (ports, probes, lifecycle, resources), no subPath mounts, and once
//! added, never changed or removed.

use serde_json::Value;

use super::{DNS1123_LABEL_MSG, is_dns1123_label, is_empty_value, semantic_eq};
use crate::status::FieldCause;

/// Fields an ephemeral container may not set (upstream's allow list, inverted).
const FORBIDDEN_FIELDS: &[&str] = &[
    "ports",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];

/// What upstream says of each forbidden field.
const NOT_FOR_EPHEMERAL: &str = "cannot be set for an Ephemeral Container";

/// A new pod may not have ephemeral containers: they are added to a running pod.
pub fn create(spec: &Value, causes: &mut Vec<FieldCause>) {
    if !is_empty_value(&spec["ephemeralContainers"]) {
        causes.push(FieldCause::forbidden(
            "spec.ephemeralContainers",
            "cannot be set on create",
        ));
    }
}

/// The checks of an update through the `ephemeralcontainers` subresource.
pub fn update(old_spec: &Value, new_spec: &Value, causes: &mut Vec<FieldCause>) {
    containers(new_spec, causes);
    let new_list = new_spec["ephemeralContainers"].as_array();
    for old in old_spec["ephemeralContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = old["name"].as_str().unwrap_or_default();
        let new = new_list
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some(name));
        match new {
            None => causes.push(FieldCause::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers {name:?} may not be removed\n"),
            )),
            Some(new) if !semantic_eq(old, new) => causes.push(FieldCause::forbidden(
                format!("spec.ephemeralContainers[{name}]"),
                &format!(
                    "existing ephemeral containers {name:?} may not be changed\n- {old}\n+ {new}"
                ),
            )),
            Some(_) => {}
        }
    }
}

/// Each ephemeral container on its own and against the pod's other containers.
fn containers(spec: &Value, causes: &mut Vec<FieldCause>) {
    let mut names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|field| spec[*field].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let targets = names.clone();
    let list = spec["ephemeralContainers"].as_array().into_iter().flatten();
    for (i, c) in list.enumerate() {
        let at = format!("spec.ephemeralContainers[{i}]");
        match c["name"].as_str() {
            None | Some("") => causes.push(FieldCause::required(format!("{at}.name"), "")),
            Some(name) if !is_dns1123_label(name) => {
                causes.push(FieldCause::invalid(
                    format!("{at}.name"),
                    &c["name"],
                    DNS1123_LABEL_MSG,
                ));
            }
            Some(name) if names.contains(&name) => {
                causes.push(FieldCause::duplicate(format!("{at}.name"), &c["name"]));
            }
            Some(name) => names.push(name),
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            causes.push(FieldCause::required(format!("{at}.image"), ""));
        }
        if let Some(target) = c["targetContainerName"].as_str().filter(|t| !t.is_empty())
            && !targets.contains(&target)
        {
            causes.push(FieldCause::not_found(
                format!("{at}.targetContainerName"),
                &c["targetContainerName"],
            ));
        }
        for field in FORBIDDEN_FIELDS {
            if !is_empty_value(&c[*field]) {
                causes.push(FieldCause::forbidden(
                    format!("{at}.{field}"),
                    NOT_FOR_EPHEMERAL,
                ));
            }
        }
        let mounts = c["volumeMounts"].as_array().into_iter().flatten();
        for (j, mount) in mounts.enumerate() {
            for field in ["subPath", "subPathExpr"] {
                if mount[field].as_str().is_some_and(|p| !p.is_empty()) {
                    causes.push(FieldCause::forbidden(
                        format!("{at}.volumeMounts[{j}].{field}"),
                        NOT_FOR_EPHEMERAL,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ephemeral: Value) -> Value {
        json!({
            "containers": [{"name": "main", "image": "busybox"}],
            "initContainers": [{"name": "setup", "image": "busybox"}],
            "ephemeralContainers": ephemeral,
        })
    }

    fn fields(causes: &[FieldCause]) -> Vec<String> {
        causes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn additions_with_a_known_target_pass() {
        let old = spec(json!([{"name": "dbg1", "image": "busybox", "resources": {}}]));
        let new = spec(json!([
            {"name": "dbg1", "image": "busybox", "resources": {}},
            {"name": "dbg2", "image": "busybox", "targetContainerName": "main",
             "stdin": true, "tty": true, "resources": {}},
        ]));
        let mut causes = vec![];
        update(&old, &new, &mut causes);
        assert!(causes.is_empty(), "{:?}", fields(&causes));
    }

    #[test]
    fn removals_changes_and_forbidden_fields_are_refused() {
        let old = spec(json!([
            {"name": "gone", "image": "busybox"},
            {"name": "kept", "image": "busybox"},
        ]));
        let new = spec(json!([
            {"name": "kept", "image": "debian"},
            {"name": "main", "image": "busybox"},
            {"name": "probe", "image": "busybox", "targetContainerName": "nope",
             "ports": [{"containerPort": 80}], "readinessProbe": {"exec": {"command": ["true"]}},
             "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]},
        ]));
        let mut causes = vec![];
        update(&old, &new, &mut causes);
        let got = fields(&causes);
        assert_eq!(
            got[0],
            "spec.ephemeralContainers[1].name: Duplicate value: \"main\""
        );
        assert_eq!(
            got[1],
            "spec.ephemeralContainers[2].targetContainerName: Not found: \"nope\""
        );
        assert_eq!(
            got[2],
            "spec.ephemeralContainers[2].ports: Forbidden: cannot be set for an Ephemeral Container"
        );
        assert_eq!(
            got[3],
            "spec.ephemeralContainers[2].readinessProbe: Forbidden: cannot be set for an Ephemeral Container"
        );
        assert_eq!(
            got[4],
            "spec.ephemeralContainers[2].volumeMounts[0].subPath: Forbidden: cannot be set for an Ephemeral Container"
        );
        assert_eq!(
            got[5],
            "spec.ephemeralContainers: Forbidden: existing ephemeral containers \"gone\" may not be removed\n"
        );
        assert!(
            got[6].starts_with(
                "spec.ephemeralContainers[kept]: Forbidden: existing ephemeral containers \"kept\" may not be changed"
            ),
            "{}",
            got[6]
        );
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn pod_templates_have_none() {
        let deployment = json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": spec(json!([{"name": "d", "image": "busybox"}])),
                },
            },
        });
        let mut causes = vec![];
        super::super::object("apps", "Deployment", &deployment, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec.template.spec.ephemeralContainers: Forbidden: ephemeral containers not allowed in pod template"
            ]
        );
    }

    #[test]
    fn a_new_pod_has_none() {
        let mut causes = vec![];
        create(
            &spec(json!([{"name": "d", "image": "busybox"}])),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            ["spec.ephemeralContainers: Forbidden: cannot be set on create"]
        );
        let mut causes = vec![];
        create(&spec(Value::Null), &mut causes);
        assert!(causes.is_empty());
    }
}
