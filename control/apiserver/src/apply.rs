//! Server-side apply: the applied configuration is merged into the live object, and each
//! field manager's set of fields is recorded in `metadata.managedFields` (FieldsV1), so that a
//! field a manager stops applying is removed.

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use baton_store::Store;

use crate::ApiServer;
use crate::body::{Body, json_response, parse_object};
use crate::handlers::{Call, set_type};
use crate::objects::{Decision, guaranteed_update};
use crate::patch::strategic_merge;
use crate::status::{FieldCause, StatusError};

/// The FieldsV1 set of an applied configuration.
pub fn field_set(obj: &Value) -> Value {
    let mut out = Map::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" || (k == "metadata" && v.is_null()) {
                continue;
            }
            out.insert(format!("f:{k}"), field_set_of(k, v));
        }
    }
    Value::Object(out)
}

fn field_set_of(field: &str, v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, child) in map {
                if matches!(
                    k.as_str(),
                    "resourceVersion"
                        | "uid"
                        | "creationTimestamp"
                        | "managedFields"
                        | "generation"
                ) {
                    continue;
                }
                out.insert(format!("f:{k}"), field_set_of(k, child));
            }
            Value::Object(out)
        }
        Value::Array(items) => match crate::patch::merge_key(field, items) {
            Some(key) => {
                let mut out = Map::new();
                for item in items {
                    let id = json!({ key: item.get(key).cloned().unwrap_or(Value::Null) });
                    let mut entry = match field_set_of("", item) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    entry.insert(".".into(), json!({}));
                    out.insert(format!("k:{id}"), Value::Object(entry));
                }
                Value::Object(out)
            }
            None => json!({}),
        },
        _ => json!({}),
    }
}

/// Removes from `live` the fields in `old` that are not in `new` (fields a manager dropped).
fn prune(live: &mut Value, old: &Value, new: &Value, field: &str) {
    let (Some(old), Some(live_map)) = (old.as_object(), live.as_object_mut()) else {
        return;
    };
    for (entry, old_child) in old {
        if entry == "." {
            continue;
        }
        let new_child = new.get(entry);
        if let Some(name) = entry.strip_prefix("f:") {
            match new_child {
                None => {
                    live_map.remove(name);
                }
                Some(n) => {
                    if let Some(child) = live_map.get_mut(name) {
                        match child {
                            Value::Array(items) => prune_list(items, old_child, n, name),
                            other => prune(other, old_child, n, name),
                        }
                    }
                }
            }
        }
    }
    let _ = field;
}

fn prune_list(items: &mut Vec<Value>, old: &Value, new: &Value, field: &str) {
    let Some(key) = crate::patch::merge_key(field, items) else {
        return;
    };
    let Some(old) = old.as_object() else { return };
    for (entry, old_child) in old {
        let Some(id) = entry.strip_prefix("k:") else {
            continue;
        };
        let Ok(id) = serde_json::from_str::<Value>(id) else {
            continue;
        };
        let matches = |i: &Value| i.get(key) == id.get(key);
        match new.get(entry) {
            None => items.retain(|i| !matches(i)),
            Some(n) => {
                if let Some(item) = items.iter_mut().find(|i| matches(i)) {
                    prune(item, old_child, n, field);
                }
            }
        }
    }
}

fn set_manager(
    obj: &mut Value,
    manager: &str,
    api_version: &str,
    fields: Value,
    subresource: Option<&str>,
) {
    let now = crate::handlers::now();
    let entry = {
        let mut e = json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        });
        if let Some(sub) = subresource {
            e["subresource"] = json!(sub);
        }
        e
    };
    let meta = &mut obj["metadata"];
    let mut list: Vec<Value> = meta["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.retain(|m| !(m["manager"] == manager && m["operation"] == "Apply"));
    list.push(entry);
    meta["managedFields"] = Value::Array(list);
}

/// PATCH with application/apply-patch+yaml.
pub async fn server_side_apply<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    status_only: bool,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let manager = call.query.get("fieldManager").ok_or_else(|| {
        let subject = crate::status::Subject {
            group: "meta.k8s.io",
            resource: "PatchOptions",
            kind: "PatchOptions",
        };
        StatusError::invalid(
            &subject,
            "",
            vec![FieldCause::required(
                "fieldManager",
                "is required for apply patch",
            )],
        )
    })?;
    let applied = parse_object(&call.body, "application/yaml")?;
    let mut applied_meta_checked = applied.clone();
    set_type(resource, &mut applied_meta_checked);
    if applied["metadata"]["name"].as_str() != Some(call.name()) {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            applied["metadata"]["name"].as_str().unwrap_or_default(),
            call.name()
        )));
    }
    let fields = field_set(&applied);
    let subresource = status_only.then_some("status");
    let key = call.key();
    let exists = server
        .store
        .get(&key)
        .await
        .map_err(|e| crate::objects::store_error(resource, call.name(), e))?
        .is_some();
    if !exists {
        let mut obj = applied.clone();
        set_manager(
            &mut obj,
            manager,
            &resource.api_version(),
            fields,
            subresource,
        );
        let created = crate::handlers::create_for_apply(server, call, obj).await?;
        return Ok(json_response(StatusCode::CREATED, &created));
    }
    let dry_run = call.query.dry_run()?;
    let result = guaranteed_update(&server.store, resource, &key, call.name(), |current| {
        let previous_fields = current["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["manager"] == manager && m["operation"] == "Apply")
            .map(|m| m["fieldsV1"].clone());
        let mut merged = current.clone();
        if let Some(old) = &previous_fields {
            prune(&mut merged, old, &fields, "");
        }
        strategic_merge(&mut merged, &applied, "")?;
        set_type(resource, &mut merged);
        set_manager(
            &mut merged,
            manager,
            &resource.api_version(),
            fields.clone(),
            subresource,
        );
        let next =
            (resource.normalize)(merged).map_err(|e| StatusError::bad_request(e.to_string()))?;
        let prepared = crate::handlers::prepare_update(
            &server.defaulting,
            resource,
            current,
            next,
            status_only,
        )?;
        Ok(if dry_run {
            Decision::Preview(prepared)
        } else {
            Decision::Write(prepared)
        })
    })
    .await;
    match result {
        Ok(updated) => {
            let mut obj = updated.object;
            set_type(resource, &mut obj);
            Ok(json_response(StatusCode::OK, &obj))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_use_keys_for_containers() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let set = field_set(&obj);
        assert_eq!(set["f:metadata"]["f:labels"]["f:a"], json!({}));
        assert_eq!(
            set["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"],
            json!({})
        );
    }

    #[test]
    fn dropped_fields_are_pruned() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let old = json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}});
        let new = json!({"f:metadata": {"f:labels": {"f:a": {}}}});
        prune(&mut live, &old, &new, "");
        assert_eq!(live["metadata"]["labels"], json!({"a": "1"}));
    }
}
