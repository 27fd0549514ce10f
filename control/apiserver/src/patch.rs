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

/// The patch merge key of a list field, by field name alone (upstream's `patchMergeKey` tags,
/// without knowing where the list is).
///
/// A heuristic for server-side apply's field sets. The strategic merge uses [`merge_key_at`],
/// which tells apart lists of the same name (a container's `ports` from a Service's).
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

/// The patch merge key of the list at `path` (dot-separated field names from the object's root,
/// without indices: `spec.containers.ports`), as upstream's `patchMergeKey` tags of the built-in
/// types give it; `None` for lists that are not merged by key.
pub fn merge_key_at(path: &str, _items: &[Value]) -> Option<&'static str> {
    let (parent_path, field) = split_path(path);
    let parent = last_segment(parent_path);
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    let in_container_status = matches!(
        parent,
        "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses"
    );
    Some(match field {
        // PodSpec (in Pods and in every pod template).
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
            if parent == "spec" =>
        {
            "name"
        }
        "hostAliases" if parent == "spec" => "ip",
        "topologySpreadConstraints" if parent == "spec" => "topologyKey",
        // Container.
        "env" if in_container => "name",
        "volumeMounts" if in_container => "mountPath",
        "volumeDevices" if in_container => "devicePath",
        "ports" if in_container => "containerPort",
        // ServiceSpec; EndpointSlice `ports` and Endpoints `subsets[].ports` are atomic.
        "ports" if path == "spec.ports" => "port",
        // Conditions of every kind that has them.
        "conditions" => "type",
        // NodeStatus (Endpoints' and EndpointSlices' addresses are atomic).
        "addresses" if path == "status.addresses" => "type",
        // PodStatus and ContainerStatus.
        "podIPs" | "hostIPs" if parent_path == "status" => "ip",
        "resourceClaimStatuses" if parent_path == "status" => "name",
        "allocatedResourcesStatus" if in_container_status => "name",
        // ObjectMeta.
        "ownerReferences" if parent == "metadata" => "uid",
        // ServiceAccount (its `imagePullSecrets` are atomic).
        "secrets" if parent_path.is_empty() => "name",
        _ => return None,
    })
}

/// How the list at a path merges: upstream's `patchStrategy` and `patchMergeKey` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// `patchStrategy:"merge"` with a key: lists of maps merged item by item.
    Keyed(&'static str),
    /// `patchStrategy:"merge"` without a key: lists of primitives merged as a set.
    Set,
    /// No strategy: the patch's list replaces the object's.
    Replace,
}

fn list_strategy(path: &str) -> ListStrategy {
    if let Some(key) = merge_key_at(path, &[]) {
        return ListStrategy::Keyed(key);
    }
    let (parent_path, field) = split_path(path);
    let set = (field == "finalizers" && last_segment(parent_path) == "metadata")
        || path == "spec.podCIDRs";
    if set {
        ListStrategy::Set
    } else {
        ListStrategy::Replace
    }
}

/// `("spec.containers", "ports")` for `spec.containers.ports`.
fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('.').unwrap_or(("", path))
}

fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or_default()
}

fn child_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const GO_MAP: &str = "map[string]interface {}";
const GO_SLICE: &str = "[]interface {}";

/// An error of the merge itself. Upstream returns these as plain errors, which the API server
/// answers as a 500 with no reason (only malformed directives are mapped to 400).
fn merge_error(message: impl Into<String>) -> StatusError {
    let mut err = StatusError::internal(message);
    err.reason = "";
    err
}

fn no_merge_key(item: &Map<String, Value>, key: &str) -> StatusError {
    merge_error(format!(
        "map: {} does not contain declared merge key: {key}",
        go_map(item)
    ))
}

fn bad_arg_type(expected: &str, actual: &Value) -> StatusError {
    merge_error(format!(
        "expected a {expected}, but received a {}",
        go_type(actual)
    ))
}

fn bad_patch_type(directive: &Value, item: &Map<String, Value>) -> StatusError {
    merge_error(format!(
        "unknown patch type: {} in map: {}",
        go_value(directive),
        go_map(item)
    ))
}

/// A value as Go's `%v` prints the decoded JSON (`map[k:v]`, `[a b]`, `<nil>`).
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(map) => go_map(map),
    }
}

fn go_map(map: &Map<String, Value>) -> String {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let entries: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{k}:{}", go_value(v)))
        .collect();
    format!("map[{}]", entries.join(" "))
}

/// The Go type a decoded JSON value has (ints are kept as int64, as the API server decodes).
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => GO_SLICE,
        Value::Object(_) => GO_MAP,
    }
}

/// Merges `patch` into `doc` strategically. `path` is where `doc` is in the object (`""` for the
/// object itself); it decides how lists below it merge (see [`merge_key_at`]).
///
/// Follows apimachinery's `strategicpatch.StrategicMergeMapPatch`: maps merge key by key (null
/// deletes), lists merge by their patch strategy, and the directives `$patch` (replace, delete,
/// and delete of a list item), `$retainKeys`, `$setElementOrder/<list>` and
/// `$deleteFromPrimitiveList/<list>` are honoured.
pub fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) -> Result<(), StatusError> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    let original = doc.as_object().cloned().unwrap_or_default();
    *doc = Value::Object(merge_map(original, patch_map.clone(), path)?);
    Ok(())
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &str,
) -> Result<Map<String, Value>, StatusError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad_patch_type(directive, &patch)),
        };
    }
    retain_keys(&mut original, &mut patch)?;
    merge_ordered_lists(&mut original, &mut patch, path)?;
    for (key, value) in patch {
        let (field, delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(field) => (field.to_string(), true),
            None => (key, false),
        };
        if value.is_null() {
            original.remove(&field);
            continue;
        }
        let Some(slot) = original.get_mut(&field) else {
            // Not in the object: the patch's value as it is.
            original.insert(field, value);
            continue;
        };
        let at = child_path(path, &field);
        *slot = match (slot.take(), value) {
            (Value::Object(current), Value::Object(patch)) => {
                Value::Object(merge_map(current, patch, &at)?)
            }
            (Value::Array(current), Value::Array(patch)) => {
                Value::Array(merge_list(current, patch, &at, delete_list)?)
            }
            (_, value) => value,
        };
    }
    Ok(original)
}

/// `$retainKeys`: keys of the object that the list does not name are cleared; the patch may only
/// set keys it names.
fn retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), StatusError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let bad = || StatusError::bad_request("invalid patch format of retainKeys");
    let Some(retain) = retain.as_array() else {
        return Err(bad());
    };
    let named = |key: &str| retain.iter().any(|k| k.as_str() == Some(key));
    for (key, value) in patch.iter() {
        if value.is_null()
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || key.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !named(key) {
            return Err(bad());
        }
    }
    original.retain(|key, _| named(key));
    Ok(())
}

/// `$setElementOrder/<list>`: merges the list (if the patch has it) and then orders the result as
/// upstream's `mergePatchIntoOriginal` does: the items the directive names in its order,
/// interleaved with the items it does not name (server-only items) by their places in the
/// object's list.
fn merge_ordered_lists(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: &str,
) -> Result<(), StatusError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for directive in directives {
        let order = patch.remove(&directive).unwrap_or_default();
        let Value::Array(order) = order else {
            return Err(bad_arg_type(GO_SLICE, &order));
        };
        let field = directive[SET_ELEMENT_ORDER.len()..].to_string();
        let as_list = |value: Option<&Value>| match value {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items.clone())),
            Some(other) => Err(bad_arg_type(GO_SLICE, other)),
        };
        let original_list = as_list(original.get(&field))?;
        let patch_list = as_list(patch.get(&field))?;
        let at = child_path(path, &field);
        let key = merge_key_at(&at, &[]);
        validate_set_order(patch_list.as_deref().unwrap_or_default(), &order, key)?;
        let original_items = original_list.clone().unwrap_or_default();
        let is_map = original_items
            .iter()
            .chain(patch_list.iter().flatten())
            .next()
            .is_some_and(Value::is_object);
        let merged = match (original_list, patch_list) {
            (Some(current), None) => current,
            (None, Some(patch)) => patch,
            (Some(current), Some(patch)) => merge_list(current, patch, &at, false)?,
            (None, None) => continue,
        };
        let (named, server_only) = partition(merged, &order, key)?;
        let ordered =
            normalize_element_order(named, server_only, &order, &original_items, key, is_map)?;
        original.insert(field.clone(), Value::Array(ordered));
        patch.remove(&field);
    }
    Ok(())
}

/// Upstream's `validatePatchWithSetOrderList`: the patch's items must appear in the directive's
/// list, in the same order.
fn validate_set_order(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&str>,
) -> Result<(), StatusError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = match key {
        Some(_) => {
            if let Some(bad) = patch_list.iter().find(|i| !i.is_object()) {
                return Err(bad_arg_type(GO_MAP, bad));
            }
            patch_list.iter().filter(|i| !is_delete_item(i)).collect()
        }
        None => patch_list.iter().collect(),
    };
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        if items[p].get(DIRECTIVE).is_some() {
            p += 1;
            continue;
        }
        if merge_key_value_equal(items[p], &order[o], key)? {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() && o >= order.len() {
        return Err(merge_error(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            go_value(&Value::Array(patch_list.to_vec())),
            go_value(&Value::Array(order.to_vec()))
        )));
    }
    Ok(())
}

fn merge_key_value_equal(
    left: &Value,
    right: &Value,
    key: Option<&str>,
) -> Result<bool, StatusError> {
    let Some(key) = key else {
        return Ok(left == right);
    };
    let id = |item: &Value| -> Result<Value, StatusError> {
        let map = item.as_object().ok_or_else(|| bad_arg_type(GO_MAP, item))?;
        map.get(key).cloned().ok_or_else(|| no_merge_key(map, key))
    };
    Ok(id(left)? == id(right)?)
}

fn is_delete_item(item: &Value) -> bool {
    item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

/// Merges the list at `path` (upstream's `mergeSliceHandler` and `mergeSlice`).
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &str,
    delete_list: bool,
) -> Result<Vec<Value>, StatusError> {
    let key = match list_strategy(path) {
        ListStrategy::Replace => return Ok(patch),
        ListStrategy::Set => None,
        ListStrategy::Keyed(key) => Some(key),
    };
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    if element_type(&original, &patch)? != GO_MAP {
        if delete_list {
            return Ok(original
                .into_iter()
                .filter(|i| !patch.contains(i))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for item in original.iter().chain(&patch) {
            if !merged.contains(item) {
                merged.push(item.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, key)?;
        return normalize_element_order(in_patch, server_only, &patch, &original, key, false);
    }
    let Some(key) = key else {
        return Err(merge_error(
            "cannot merge lists without merge key for type struct",
        ));
    };
    let (original, patch) = list_directives(original, patch, key)?;
    let mut merged = original.clone();
    for item in &patch {
        let map = item.as_object().ok_or_else(|| bad_arg_type(GO_MAP, item))?;
        let id = map.get(key).ok_or_else(|| no_merge_key(map, key))?;
        match merged.iter().position(|m| m.get(key) == Some(id)) {
            Some(pos) => {
                let current = match merged[pos].take() {
                    Value::Object(current) => current,
                    _ => Map::new(),
                };
                merged[pos] = Value::Object(merge_map(current, map.clone(), path)?);
            }
            None => merged.push(item.clone()),
        }
    }
    let (in_patch, server_only) = partition(merged, &patch, Some(key))?;
    normalize_element_order(in_patch, server_only, &patch, &original, Some(key), true)
}

/// The Go type shared by the items of both lists (upstream's `sliceElementType`).
fn element_type(original: &[Value], patch: &[Value]) -> Result<&'static str, StatusError> {
    let mut found: Option<&'static str> = None;
    for item in original.iter().chain(patch) {
        let ty = go_type(item);
        match found {
            None if item.is_array() => {
                let mut err = StatusError::bad_request(
                    "the server rejected our request due to an error in our request",
                );
                err.code = http::StatusCode::UNPROCESSABLE_ENTITY;
                err.reason = "Invalid";
                return Err(err);
            }
            None => found = Some(ty),
            Some(first) if first != ty => {
                let lists = Value::Array(vec![
                    Value::Array(original.to_vec()),
                    Value::Array(patch.to_vec()),
                ]);
                return Err(merge_error(format!(
                    "list element types are not identical: {}",
                    go_value(&lists)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(found.unwrap_or(GO_MAP))
}

/// Applies the `$patch` items of a keyed list: `delete` removes the object's items with that key,
/// `replace` makes the list the patch's other items. Returns the object's list and the patch's
/// plain items.
fn list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), StatusError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(map) = item.as_object() else {
            plain.push(item);
            continue;
        };
        match map.get(DIRECTIVE) {
            None => plain.push(item),
            Some(d) if d == "delete" => {
                let id = map.get(key).ok_or_else(|| no_merge_key(map, key))?;
                original.retain(|o| o.get(key) != Some(id));
            }
            Some(d) if d == "replace" => replace = true,
            Some(d) if d == "merge" => {
                return Err(merge_error(
                    "merging lists cannot yet be specified in the patch",
                ));
            }
            Some(d) => return Err(bad_patch_type(d, map)),
        }
    }
    if replace {
        Ok((plain, vec![]))
    } else {
        Ok((original, plain))
    }
}

/// Splits `items` into those present in `by` (by merge key, or by value without one) and the
/// rest, keeping their order.
fn partition(
    items: Vec<Value>,
    by: &[Value],
    key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), StatusError> {
    let (mut present, mut absent) = (vec![], vec![]);
    for item in items {
        let found = match key {
            None => by.contains(&item),
            Some(key) => {
                let map = item
                    .as_object()
                    .ok_or_else(|| bad_arg_type(GO_MAP, &item))?;
                let id = map.get(key).ok_or_else(|| no_merge_key(map, key))?;
                let mut found = false;
                for (i, candidate) in by.iter().enumerate() {
                    if !candidate.is_object() {
                        return Err(merge_error(format!("value for key {i} is not a map.")));
                    }
                    if candidate.get(key) == Some(id) {
                        found = true;
                        break;
                    }
                }
                found
            }
        };
        if found {
            present.push(item);
        } else {
            absent.push(item);
        }
    }
    Ok((present, absent))
}

/// Upstream's `normalizeElementOrder`: sorts the patch's items by `patch_order` and the
/// server-only items by `server_order`, then merges the two sorted lists.
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
    is_map: bool,
) -> Result<Vec<Value>, StatusError> {
    let patch = normalize_slice_order(patch, patch_order, key, is_map)?;
    let server_only = normalize_slice_order(server_only, server_order, key, is_map)?;
    Ok(merge_sorted(server_only, patch, server_order, key, is_map))
}

fn normalize_slice_order(
    mut items: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
    is_map: bool,
) -> Result<Vec<Value>, StatusError> {
    let mut deletes = vec![];
    if is_map && let Some(key) = key {
        for item in items.iter().chain(order) {
            let map = item.as_object().ok_or_else(|| bad_arg_type(GO_MAP, item))?;
            if !map.contains_key(key) {
                return Err(no_merge_key(map, key));
            }
        }
        let (keep, delete): (Vec<Value>, Vec<Value>) =
            items.into_iter().partition(|i| !is_delete_item(i));
        items = keep;
        deletes = delete;
    }
    items.sort_by_key(|item| index_in(order, item, key, is_map).unwrap_or(usize::MAX));
    items.extend(deletes);
    Ok(items)
}

/// Upstream's `mergeSortedSlice`: inserts the server-only items (`left`) among the patch's items
/// (`right`). A server-only item goes first only when both it and the next patch item are in the
/// object's list and it came before that item there; otherwise the patch item goes first.
fn merge_sorted(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[Value],
    key: Option<&str>,
    is_map: bool,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (
                    index_in(server_order, l, key, is_map),
                    index_in(server_order, r, key, is_map),
                ),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// Where `item` is in `list`: by merge key for lists of maps, by value otherwise.
fn index_in(list: &[Value], item: &Value, key: Option<&str>, is_map: bool) -> Option<usize> {
    match key {
        Some(key) if is_map => {
            let id = item.get(key);
            list.iter().position(|i| i.get(key) == id)
        }
        _ => list.iter().position(|i| i == item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: &Value, patch: &Value) -> Value {
        apply(doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap()
    }

    fn smp_err(doc: &Value, patch: &Value) -> StatusError {
        apply(doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn containers_merge_by_name() {
        let doc = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "y:2"}]}});
        let out = smp(&doc, &patch);
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}})
        );
    }

    #[test]
    fn new_items_go_before_the_server_only_items() {
        // Upstream's mergeSortedSlice puts a patch item the object does not have before the
        // items only the object has (when no $setElementOrder says otherwise).
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"spec": {"containers": [{"name": "c", "image": "z"}]}});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {"containers": [{"name": "c", "image": "z"}, {"name": "a"}, {"name": "b"}]}})
        );
    }

    #[test]
    fn delete_directive_and_null() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}}, "spec": {"containers": [{"name": "a", "$patch": "delete"}], "$setElementOrder/containers": [{"name": "b"}]}});
        let out = smp(&doc, &patch);
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn map_and_list_directives() {
        let doc = json!({"spec": {
            "affinity": {"nodeAffinity": {"x": 1}},
            "securityContext": {"runAsUser": 1, "fsGroup": 2},
            "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
        }});
        let patch = json!({"spec": {
            "affinity": {"$patch": "delete"},
            "securityContext": {"$patch": "replace", "runAsUser": 5},
            "volumes": [{"name": "c", "secret": {"secretName": "s"}}, {"$patch": "replace"}],
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"}
        }});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {
                "affinity": {},
                "securityContext": {"runAsUser": 5},
                "volumes": [{"name": "c", "secret": {"secretName": "s"}}],
                "strategy": {"type": "Recreate"}
            }})
        );
        let bad = smp_err(
            &doc,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
        );
        assert_eq!(bad.code, http::StatusCode::BAD_REQUEST);
        assert_eq!(bad.message, "invalid patch format of retainKeys");
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let doc = json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "args": ["3"]}]}});
        let out = smp(&doc, &patch);
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
    }

    #[test]
    fn merge_key_at_depends_on_the_path() {
        let cases = [
            ("spec.containers", Some("name")),
            ("spec.initContainers", Some("name")),
            ("spec.ephemeralContainers", Some("name")),
            ("spec.template.spec.containers", Some("name")),
            (
                "spec.jobTemplate.spec.template.spec.initContainers",
                Some("name"),
            ),
            ("spec.containers.ports", Some("containerPort")),
            ("spec.initContainers.ports", Some("containerPort")),
            ("spec.ephemeralContainers.ports", Some("containerPort")),
            ("spec.template.spec.containers.ports", Some("containerPort")),
            ("spec.ports", Some("port")),
            ("ports", None),
            ("subsets.ports", None),
            ("subsets.addresses", None),
            ("endpoints.addresses", None),
            ("spec.taints", None),
            ("status.podIPs", Some("ip")),
            ("status.hostIPs", Some("ip")),
            ("secrets", Some("name")),
            ("imagePullSecrets", None),
            ("spec.imagePullSecrets", Some("name")),
            ("spec.containers.env", Some("name")),
            ("spec.volumes", Some("name")),
            ("spec.containers.volumeMounts", Some("mountPath")),
            ("spec.containers.volumeDevices", Some("devicePath")),
            ("spec.hostAliases", Some("ip")),
            ("status.conditions", Some("type")),
            ("status.addresses", Some("type")),
            ("metadata.ownerReferences", Some("uid")),
            ("spec.template.metadata.ownerReferences", Some("uid")),
            ("spec.topologySpreadConstraints", Some("topologyKey")),
            ("spec.resourceClaims", Some("name")),
            ("spec.schedulingGates", Some("name")),
            ("status.resourceClaimStatuses", Some("name")),
            (
                "status.containerStatuses.allocatedResourcesStatus",
                Some("name"),
            ),
            ("spec.tolerations", None),
            ("spec.containers.args", None),
            ("metadata.finalizers", None),
        ];
        for (path, key) in cases {
            assert_eq!(merge_key_at(path, &[]), key, "{path}");
        }
        assert_eq!(list_strategy("metadata.finalizers"), ListStrategy::Set);
        assert_eq!(list_strategy("spec.podCIDRs"), ListStrategy::Set);
        assert_eq!(list_strategy("spec.finalizers"), ListStrategy::Replace);
        // The name-only heuristic used by server-side apply keeps answering as before.
        assert_eq!(
            merge_key("ports", &[json!({"containerPort": 80})]),
            Some("containerPort")
        );
        assert_eq!(merge_key("ports", &[json!({"port": 80})]), Some("port"));
        assert_eq!(merge_key("env", &[]), Some("name"));
    }

    #[test]
    fn container_ports_merge_by_container_port() {
        let doc = json!({"spec": {
            "containers": [{"name": "a", "image": "x", "ports": [
                {"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}]}],
            "initContainers": [{"name": "i", "image": "x", "ports": [{"containerPort": 1}]}]
        }});
        let patch = json!({"spec": {
            "containers": [{"name": "a", "ports": [{"containerPort": 443, "protocol": "TCP"}]}],
            "initContainers": [{"name": "i", "ports": [{"containerPort": 2}]}]
        }});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {
                "containers": [{"name": "a", "image": "x", "ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 443, "name": "https", "protocol": "TCP"}]}],
                "initContainers": [{"name": "i", "image": "x", "ports": [
                    {"containerPort": 2}, {"containerPort": 1}]}]
            }})
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let doc = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "https", "port": 443, "targetPort": 8443}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 9090},
                {"name": "https", "port": 443, "targetPort": 8443}]}})
        );
    }

    #[test]
    fn endpoint_ports_are_atomic() {
        let slice = json!({"addressType": "IPv4", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]});
        let patch = json!({"ports": [{"name": "c", "port": 82}]});
        assert_eq!(
            smp(&slice, &patch),
            json!({"addressType": "IPv4", "ports": [{"name": "c", "port": 82}]})
        );
        let endpoints = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}, {"port": 81}]}]});
        let patch =
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 82}]}]});
        assert_eq!(
            smp(&endpoints, &patch),
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 82}]}]})
        );
    }

    #[test]
    fn node_taints_are_replaced() {
        // `kubectl taint nodes n b-` sends the remaining taints; they replace the list.
        let node = json!({"spec": {"taints": [
            {"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}]}});
        let patch = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        assert_eq!(
            smp(&node, &patch),
            json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}})
        );
        assert_eq!(
            smp(&node, &json!({"spec": {"taints": null}})),
            json!({"spec": {}})
        );
    }

    #[test]
    fn pod_and_host_ips_merge_by_ip() {
        let pod =
            json!({"status": {"podIPs": [{"ip": "10.0.0.1"}], "hostIPs": [{"ip": "192.168.0.1"}]}});
        let patch = json!({"status": {
            "$setElementOrder/podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "podIPs": [{"ip": "fd00::1"}],
            "hostIPs": [{"ip": "192.168.0.1"}]
        }});
        assert_eq!(
            smp(&pod, &patch),
            json!({"status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "hostIPs": [{"ip": "192.168.0.1"}]}})
        );
    }

    #[test]
    fn service_account_secrets_merge_by_name() {
        let sa = json!({"secrets": [{"name": "a"}], "imagePullSecrets": [{"name": "p"}]});
        let patch = json!({"secrets": [{"name": "a", "namespace": "n"}, {"name": "b"}], "imagePullSecrets": [{"name": "q"}]});
        assert_eq!(
            smp(&sa, &patch),
            json!({"secrets": [{"name": "a", "namespace": "n"}, {"name": "b"}], "imagePullSecrets": [{"name": "q"}]})
        );
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        assert_eq!(
            smp(&doc, &json!({"metadata": {"finalizers": ["b", "c"]}})),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}})
        );
        assert_eq!(
            smp(&doc, &json!({"metadata": {"finalizers": ["c"]}})),
            json!({"metadata": {"finalizers": ["c", "a", "b"]}})
        );
        assert_eq!(
            smp(
                &doc,
                &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
            ),
            json!({"metadata": {"finalizers": ["b"]}})
        );
        let node = json!({"spec": {"podCIDRs": ["10.0.0.0/24"]}});
        assert_eq!(
            smp(
                &node,
                &json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]}})
            ),
            json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]}})
        );
    }

    #[test]
    fn set_element_order_orders_keyed_lists() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "new"}]
        }});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {"containers": [{"name": "c"}, {"name": "a", "image": "new"}, {"name": "b"}]}})
        );
        // Items the directive does not name keep their relative order and are interleaved by
        // their places in the object's list (upstream's normalizeElementOrder).
        let order = |names: &[&str]| {
            let order: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
            let out = smp(
                &doc,
                &json!({"spec": {"$setElementOrder/containers": order}}),
            );
            out["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&["b", "a"]), ["b", "a", "c"]);
        assert_eq!(order(&["c", "a"]), ["b", "c", "a"]);
        assert_eq!(order(&["c", "b", "a"]), ["c", "b", "a"]);
        // A new item placed by the directive.
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "x"}, {"name": "b"}, {"name": "c"}],
            "containers": [{"name": "x", "image": "i"}]
        }});
        assert_eq!(
            smp(&doc, &patch),
            json!({"spec": {"containers": [{"name": "a"}, {"name": "x", "image": "i"}, {"name": "b"}, {"name": "c"}]}})
        );
    }

    #[test]
    fn set_element_order_must_agree_with_the_patch() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "1"}, {"name": "a", "image": "2"}]
        }});
        let err = smp_err(&doc, &patch);
        assert_eq!(err.code, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            err.message,
            "The order in patch list:\n[map[image:1 name:b] map[image:2 name:a]]\n doesn't match $setElementOrder list:\n[map[name:a] map[name:b]]\n"
        );
    }

    #[test]
    fn set_element_order_orders_primitive_lists() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"], "finalizers": ["c"]}});
        assert_eq!(
            smp(&doc, &patch),
            json!({"metadata": {"finalizers": ["b", "c", "a"]}})
        );
        // As kubectl sends a removal: the order list and the deletion list together.
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(
            smp(&doc, &patch),
            json!({"metadata": {"finalizers": ["b"]}})
        );
    }

    #[test]
    fn missing_merge_key_is_refused() {
        let doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = smp_err(&doc, &json!({"spec": {"containers": [{"image": "x"}]}}));
        assert_eq!(err.code, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            err.message,
            "map: map[image:x] does not contain declared merge key: name"
        );
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
