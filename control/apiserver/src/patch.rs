//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), and strategic merge patch
//! for built-in types (lists merged by their patch merge keys, with the `$patch`,
//! `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` directives).

use serde_json::{Map, Value};

use crate::status::StatusError;

/// The kinds of PATCH, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// application/json-patch+json
    Json,
    /// application/merge-patch+json
    Merge,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/apply-patch+yaml (server-side apply)
    Apply,
}

impl PatchType {
    /// Reads the Content-Type of a PATCH.
    pub fn from_content_type(content_type: &str) -> Result<Self, StatusError> {
        let base = content_type.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(StatusError::unsupported_media_type(other)),
        }
    }
}

/// Applies a JSON patch or merge patch or strategic merge patch to `target`.
pub fn apply(target: &Value, patch_type: PatchType, body: &[u8]) -> Result<Value, StatusError> {
    let mut doc = target.clone();
    match patch_type {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                let mut err = StatusError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ));
                err.code = http::StatusCode::UNPROCESSABLE_ENTITY;
                err.reason = "Invalid";
                err
            })?;
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::merge(&mut doc, &patch);
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?;
            if !patch.is_object() {
                return Err(StatusError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut doc, &patch, "")?;
        }
        PatchType::Apply => unreachable!("apply patches go through server-side apply"),
    }
    Ok(doc)
}

/// The patch merge key of a list field (upstream's `patchMergeKey` tags), if it merges by key.
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "taints" => "key",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is `merge` (a set union).
fn merges_as_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.get(key)
}

/// Merges `patch` into `doc` strategically. `field` is the name of the field holding `doc`.
pub fn strategic_merge(doc: &mut Value, patch: &Value, field: &str) -> Result<(), StatusError> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch_map.clone();
        replaced.remove("$patch");
        *doc = Value::Object(replaced);
        return Ok(());
    }
    if patch_map.get("$patch").and_then(Value::as_str) == Some("delete") {
        *doc = Value::Null;
        return Ok(());
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> =
        patch_map
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            });
    let map = doc.as_object_mut().expect("object");
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) =
                (map.get_mut(list_field), value.as_array())
            {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value, key)?;
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(patch_items) => {
                let existing = map.remove(key);
                let merged = merge_list(key, existing, patch_items)?;
                map.insert(key.clone(), merged);
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(retain) = retain {
        map.retain(|k, _| retain.contains(k));
    }
    let _ = field;
    Ok(())
}

fn merge_list(
    field: &str,
    existing: Option<Value>,
    patch_items: &[Value],
) -> Result<Value, StatusError> {
    let mut items = match existing {
        Some(Value::Array(items)) => items,
        _ => vec![],
    };
    // `$patch: replace` as a list element replaces the whole list.
    if patch_items
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let kept = patch_items
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(kept));
    }
    if merges_as_set(field) {
        for p in patch_items {
            if !items.contains(p) {
                items.push(p.clone());
            }
        }
        return Ok(Value::Array(items));
    }
    let all = [items.as_slice(), patch_items].concat();
    let Some(key) = merge_key(field, &all) else {
        return Ok(Value::Array(patch_items.to_vec()));
    };
    for p in patch_items {
        let Some(id) = key_of(p, key).cloned() else {
            return Err(StatusError::bad_request(format!(
                "map: {p} does not contain declared merge key: {key}"
            )));
        };
        let pos = items.iter().position(|i| key_of(i, key) == Some(&id));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pos) = pos {
                items.remove(pos);
            }
            continue;
        }
        match pos {
            Some(pos) => strategic_merge(&mut items[pos], p, field)?,
            None => {
                let mut new_item = Value::Null;
                strategic_merge(&mut new_item, p, field)?;
                items.push(new_item);
            }
        }
    }
    Ok(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name() {
        let doc = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "y:2"}]}});
        let out = apply(&doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "x:1");
        assert_eq!(out["spec"]["containers"][1]["image"], "y:2");
    }

    #[test]
    fn delete_directive_and_null() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}}, "spec": {"containers": [{"name": "a", "$patch": "delete"}], "$setElementOrder/containers": [{"name": "b"}]}});
        let out = apply(&doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let doc = json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "args": ["3"]}]}});
        let out = apply(&doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
    }

    #[test]
    fn merge_and_json_patch() {
        let doc = json!({"spec": {"replicas": 1}});
        let out = apply(&doc, PatchType::Merge, br#"{"spec":{"replicas":3}}"#).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        let out = apply(
            &doc,
            PatchType::Json,
            br#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
    }
}
