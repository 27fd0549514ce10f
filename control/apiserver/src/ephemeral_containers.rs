//! Writes through a pod's `ephemeralcontainers` subresource (upstream's
//! podEphemeralContainersStrategy): everything but `spec.ephemeralContainers` is kept as
//! stored, the new containers get a container's defaults, and only additions pass.

use serde_json::Value;

use crate::resources::{Resource, defaults, validation};
use crate::status::StatusError;

/// The pod an update of its ephemeral containers stores: `current` with the client's
/// `spec.ephemeralContainers`.
pub fn prepare_update(
    resource: &Resource,
    current: &Value,
    next: &Value,
) -> Result<Value, StatusError> {
    let mut out = current.clone();
    let list = &next["spec"]["ephemeralContainers"];
    if let Some(spec) = out["spec"].as_object_mut() {
        match list {
            Value::Null => spec.remove("ephemeralContainers"),
            list => spec.insert("ephemeralContainers".into(), list.clone()),
        };
    }
    defaults::ephemeral_containers(&mut out["spec"]);
    let mut causes = vec![];
    // A pod's own checks (the new containers' volume mounts among them), then theirs.
    validation::object("", "Pod", &out, &mut causes);
    validation::ephemeral_containers::update(&current["spec"], &out["spec"], &mut causes);
    if causes.is_empty() {
        Ok(out)
    } else {
        let name = current["metadata"]["name"].as_str().unwrap_or_default();
        Err(StatusError::invalid(&resource.subject(), name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static Resource {
        crate::resources::find_kind("", "Pod").expect("pods are served")
    }

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "main", "image": "busybox"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "nodeName": "node-1",
            },
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn only_the_ephemeral_containers_change_and_they_get_defaults() {
        let mut next = pod();
        next["metadata"]["labels"] = json!({"app": "other"});
        next["spec"]["nodeName"] = json!("node-2");
        next["status"] = json!({"phase": "Failed"});
        next["spec"]["ephemeralContainers"] = json!([{
            "name": "dbg", "image": "busybox", "targetContainerName": "main",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }]);
        let out = prepare_update(pods(), &pod(), &next).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(out["spec"]["nodeName"], "node-1");
        assert_eq!(out["status"]["phase"], "Running");
        let dbg = &out["spec"]["ephemeralContainers"][0];
        assert_eq!(dbg["targetContainerName"], "main");
        assert_eq!(dbg["terminationMessagePolicy"], "File");
        assert_eq!(dbg["imagePullPolicy"], "Always");
    }

    #[test]
    fn a_mount_of_a_volume_the_pod_lacks_is_refused() {
        let mut next = pod();
        next["spec"]["ephemeralContainers"] = json!([{
            "name": "dbg", "image": "busybox",
            "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
        }]);
        let err = prepare_update(pods(), &pod(), &next).unwrap_err();
        assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err.message,
            "Pod \"web\" is invalid: spec.ephemeralContainers[0].volumeMounts[0].name: Not found: \"nope\""
        );
    }
}
