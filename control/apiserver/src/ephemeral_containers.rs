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
    let list = next["spec"]
        .get("ephemeralContainers")
        .filter(|v| !v.is_null());
    match (list, out["spec"].as_object_mut()) {
        (Some(list), Some(spec)) => {
            spec.insert("ephemeralContainers".into(), list.clone());
        }
        (None, Some(spec)) => {
            spec.remove("ephemeralContainers");
        }
        (_, None) => {}
    }
    defaults::ephemeral_containers(&mut out["spec"]);
    let mut causes = vec![];
    validation::ephemeral_containers::update(&current["spec"], &out["spec"], &mut causes);
    if causes.is_empty() {
        Ok(out)
    } else {
        let name = current["metadata"]["name"].as_str().unwrap_or_default();
        Err(StatusError::invalid(&resource.subject(), name, causes))
    }
}
