//! Field ownership (`metadata.managedFields`, FieldsV1), as server-side apply keeps it: every
//! write records which manager set which fields; an apply that would change a field another
//! manager owns is a conflict unless forced.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path in FieldsV1 segments: `f:spec`, `f:containers`, `k:{"name":"web"}`, ...
pub type FieldPath = Vec<String>;

/// The FieldsV1 set of an object (the fields it sets), as upstream records it.
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

/// Fields the server sets, which no manager owns (left out of field sets at every level).
fn is_server_set(field: &str) -> bool {
    matches!(
        field,
        "resourceVersion" | "uid" | "creationTimestamp" | "managedFields" | "generation"
    )
}

fn field_set_of(field: &str, v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, child) in map {
                if is_server_set(k) {
                    continue;
                }
                out.insert(format!("f:{k}"), field_set_of(k, child));
            }
            Value::Object(out)
        }
        // Set-lists of primitives (finalizers) are owned value by value, as `v:` entries.
        Value::Array(items) if field == "finalizers" => {
            let out: Map<String, Value> = items
                .iter()
                .map(|v| (format!("v:{v}"), json!({})))
                .collect();
            Value::Object(out)
        }
        Value::Array(items) => match crate::patch::merge_key(field, items) {
            Some(key) => {
                let mut out = Map::new();
                for item in items {
                    let value = item.get(key).cloned().unwrap_or(Value::Null);
                    let id = Value::Object(Map::from_iter([(key.to_string(), value)]));
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

/// The FieldsV1 set of what a new object's creator sent, in the sorted order upstream
/// writes: the same set as `to_fields_v1(&leaves(&field_set(obj)))`, built without the
/// path sets.
pub fn created_fields(obj: &Value) -> Value {
    fn sort_keys(v: &mut Value) {
        if let Value::Object(map) = v {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
    }
    let mut set = field_set(obj);
    sort_keys(&mut set);
    set
}

/// The owned paths of a FieldsV1 set: its leaves, and the keyed list items whose existence
/// it owns (those marked with `.`).
pub fn leaves(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        if v.get(".").is_some() && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != ".")
            .collect();
        if children.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (k, child) in children {
            prefix.push(k.clone());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut vec![], &mut out);
    out
}

/// Builds a FieldsV1 set from leaf paths.
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for seg in path {
            let entry = node.entry(seg.clone()).or_insert_with(|| json!({}));
            if seg.starts_with("k:")
                && let Some(m) = entry.as_object_mut()
            {
                m.entry(".").or_insert_with(|| json!({}));
            }
            node = entry.as_object_mut().expect("field set nodes are objects");
        }
    }
    Value::Object(root)
}

/// Whether a path names a keyed list item (its existence) rather than a field.
pub fn is_item(path: &[String]) -> bool {
    path.last().is_some_and(|s| s.starts_with("k:"))
}

/// Removes the field or list item at `path` from an object.
pub fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = if let Some(name) = seg.strip_prefix("f:") {
            cur.get_mut(name)
        } else if let Some(id) = seg.strip_prefix("k:") {
            let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(id) else {
                return;
            };
            cur.as_array_mut().and_then(|items| {
                items
                    .iter_mut()
                    .find(|i| keys.iter().all(|(k, v)| i.get(k) == Some(v)))
            })
        } else {
            None
        };
        let Some(next) = next else { return };
        cur = next;
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(map) = cur.as_object_mut() {
            map.remove(name);
        }
    } else if let Some(id) = last.strip_prefix("k:")
        && let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(id)
        && let Some(items) = cur.as_array_mut()
    {
        items.retain(|i| !keys.iter().all(|(k, v)| i.get(k) == Some(v)));
    } else if let Some(value) = last.strip_prefix("v:")
        && let Ok(value) = serde_json::from_str::<Value>(value)
        && let Some(items) = cur.as_array_mut()
    {
        items.retain(|i| *i != value);
    }
}

/// The paths any manager other than `manager`'s apply owns.
pub fn owned_by_others(obj: &Value, manager: &str) -> BTreeSet<FieldPath> {
    entries(obj)
        .iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
        .flat_map(|e| leaves(&e["fieldsV1"]))
        .collect()
}

/// The paths `manager`'s apply owns.
pub fn applied_by(obj: &Value, manager: &str) -> BTreeSet<FieldPath> {
    entries(obj)
        .iter()
        .filter(|e| e["manager"] == manager && e["operation"] == "Apply")
        .flat_map(|e| leaves(&e["fieldsV1"]))
        .collect()
}

/// The value at a field path of an object, if set.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(name) = seg.strip_prefix("f:") {
            cur = cur.get(name)?;
        } else if let Some(id) = seg.strip_prefix("k:") {
            let id: Value = serde_json::from_str(id).ok()?;
            let keys = id.as_object()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| keys.iter().all(|(k, v)| item.get(k) == Some(v)))?;
        } else if let Some(value) = seg.strip_prefix("v:") {
            let value: Value = serde_json::from_str(value).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == value)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Renders a path the way upstream's conflict messages do: `.spec.containers[name="web"].image`.
pub fn render(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if let Some(name) = seg.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(id) = seg.strip_prefix("k:") {
            let id: Value = serde_json::from_str(id).unwrap_or_default();
            let parts: Vec<String> = id
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = seg.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Takes the entries out of an object that [`store_entries`] will put them back into.
fn take_entries(obj: &mut Value) -> Vec<Value> {
    match obj
        .get_mut("metadata")
        .and_then(|m| m.get_mut("managedFields"))
        .map(Value::take)
    {
        Some(Value::Array(list)) => list,
        _ => vec![],
    }
}

/// Whether a FieldsV1 set owns nothing (the same as `leaves(fields).is_empty()`).
fn owns_nothing(fields: &Value) -> bool {
    fields
        .as_object()
        .is_none_or(|m| m.keys().all(|k| k == "."))
}

/// Whether a FieldsV1 set owns `path` (the same as `leaves(fields).contains(path)`).
fn owns(fields: &Value, path: &[String]) -> bool {
    let mut node = fields;
    for seg in path {
        match node.get(seg) {
            Some(next) => node = next,
            None => return false,
        }
    }
    !path.is_empty() && (node.get(".").is_some() || owns_nothing(node))
}

/// Whether every path a FieldsV1 set owns is set in `obj` (the same as every leaf having a
/// [`value_at`]), walked without building the paths.
fn all_set(fields: &Value, obj: &Value) -> bool {
    let Some(map) = fields.as_object() else {
        return true;
    };
    map.iter()
        .filter(|(seg, _)| seg.as_str() != ".")
        .all(|(seg, child)| {
            value_at(obj, std::slice::from_ref(seg)).is_some_and(|next| all_set(child, next))
        })
}
fn is_entry(e: &Value, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
    e["manager"] == manager
        && e["operation"] == operation
        && e["subresource"].as_str() == subresource
}

/// Writes the entries back, dropping those that own nothing.
fn store_entries(obj: &mut Value, mut list: Vec<Value>) {
    list.retain(|e| !owns_nothing(&e["fieldsV1"]));
    if let Some(meta) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Gives `manager` the fields `paths` under `operation`, taking them from every other entry.
pub fn assign(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    paths: &BTreeSet<FieldPath>,
    replace_own: bool,
) {
    let mut list = take_entries(obj);
    for e in list.iter_mut().filter(|e| {
        !is_entry(e, manager, operation, subresource)
            && paths.iter().any(|p| owns(&e["fieldsV1"], p))
    }) {
        let mut owned = leaves(&e["fieldsV1"]);
        let before = owned.len();
        owned.retain(|p| !paths.contains(p));
        if owned.len() != before {
            e["fieldsV1"] = to_fields_v1(&owned);
        }
    }
    let mut mine = list
        .iter()
        .find(|e| is_entry(e, manager, operation, subresource))
        .map(|e| leaves(&e["fieldsV1"]))
        .unwrap_or_default();
    if replace_own {
        mine.clear();
    }
    mine.extend(paths.iter().cloned());
    list.retain(|e| !is_entry(e, manager, operation, subresource));
    list.push(entry(
        manager,
        operation,
        api_version,
        subresource,
        to_fields_v1(&mine),
    ));
    store_entries(obj, list);
}

/// One managedFields entry, stamped now.
fn entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    fields: Value,
) -> Value {
    let mut entry = Map::new();
    entry.insert("manager".into(), manager.into());
    entry.insert("operation".into(), operation.into());
    entry.insert("apiVersion".into(), api_version.into());
    entry.insert("time".into(), crate::handlers::now().into());
    entry.insert("fieldsType".into(), "FieldsV1".into());
    // Moved in, not through `json!`, which would copy it by serializing it.
    entry.insert("fieldsV1".into(), fields);
    if let Some(sub) = subresource {
        entry.insert("subresource".into(), sub.into());
    }
    Value::Object(entry)
}

/// Records the creator of an object that has no managedFields yet: `fields` (its
/// [`created_fields`]) become theirs, as an `Update`. The same as [`assign`] with those
/// fields' leaves, without the path sets.
pub fn record_create(obj: &mut Value, manager: &str, api_version: &str, fields: Value) {
    let owns_something = fields.as_object().is_some_and(|m| !m.is_empty());
    if owns_something && let Some(meta) = obj["metadata"].as_object_mut() {
        let entry = entry(manager, "Update", api_version, None, fields);
        meta.insert("managedFields".into(), Value::Array(vec![entry]));
    }
}

/// Records an update (create, PUT or non-apply PATCH) by `manager`: the fields it changed
/// become its own; fields it removed are owned by no one.
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
) {
    let changed = changed_paths(old, new);
    // Fields that disappeared are no longer owned by anyone.
    let mut list = take_entries(new);
    for e in list.iter_mut().filter(|e| !all_set(&e["fieldsV1"], new)) {
        let owned = leaves(&e["fieldsV1"]);
        let kept: BTreeSet<FieldPath> = owned
            .iter()
            .filter(|p| value_at(new, p).is_some())
            .cloned()
            .collect();
        if kept.len() != owned.len() {
            e["fieldsV1"] = to_fields_v1(&kept);
        }
    }
    store_entries(new, list);
    if !changed.is_empty() {
        assign(
            new,
            manager,
            "Update",
            api_version,
            subresource,
            &changed,
            false,
        );
    }
}

/// The paths of `field_set(new)` that an update from `old` to `new` changed: a field whose
/// value differs, or a keyed list item that `old` lacks (an item changes owner only when it
/// is added; its fields are judged one by one). Walks both objects together and skips the
/// parts they share, instead of building `new`'s whole field set. A part both share changed
/// nothing, even when it holds a list item that [`value_at`] cannot find (one without its
/// merge key): judging every leaf one by one counted such an item as added by every update.
fn changed_paths(old: &Value, new: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let mut prefix = vec![];
    for (k, v) in new.as_object().into_iter().flatten() {
        if k == "apiVersion" || k == "kind" || (k == "metadata" && v.is_null()) {
            continue;
        }
        prefix.push(format!("f:{k}"));
        changed_under(k, old.get(k), v, &mut prefix, &mut out);
        prefix.pop();
    }
    out
}

/// [`changed_paths`] below `prefix`, where `old` and `new` are what [`value_at`] finds there.
fn changed_under(
    field: &str,
    old: Option<&Value>,
    new: &Value,
    prefix: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    if old == Some(new) {
        return;
    }
    match new {
        Value::Object(map) if map.keys().any(|k| !is_server_set(k)) => {
            for (k, child) in map.iter().filter(|(k, _)| !is_server_set(k)) {
                prefix.push(format!("f:{k}"));
                changed_under(k, old.and_then(|o| o.get(k)), child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() && field == "finalizers" => {
            for item in items {
                if !old
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.contains(item))
                {
                    let mut path = prefix.clone();
                    path.push(format!("v:{item}"));
                    out.insert(path);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let Some(key) = crate::patch::merge_key(field, items) else {
                out.insert(prefix.clone());
                return;
            };
            let ids: Vec<Option<&Value>> = items.iter().map(|i| i.get(key)).collect();
            let unique = ids
                .iter()
                .enumerate()
                .all(|(n, id)| id.is_some() && !ids[..n].contains(id));
            if !unique {
                // Items without the key, or twice the same key: [`value_at`] finds the first
                // of them, so judge each path as it would.
                changed_by_paths(field, old, new, prefix, out);
                return;
            }
            let old_items = old.and_then(Value::as_array);
            for (item, id) in items.iter().zip(ids) {
                let old_item = old_items.and_then(|o| o.iter().find(|i| i.get(key) == id));
                if old_item == Some(item) {
                    continue;
                }
                let id = Value::Object(Map::from_iter([(
                    key.to_string(),
                    id.cloned().unwrap_or_default(),
                )]));
                prefix.push(format!("k:{id}"));
                if old_item.is_none() {
                    out.insert(prefix.clone());
                }
                for (k, child) in item.as_object().into_iter().flatten() {
                    if is_server_set(k) {
                        continue;
                    }
                    prefix.push(format!("f:{k}"));
                    changed_under(k, old_item.and_then(|o| o.get(k)), child, prefix, out);
                    prefix.pop();
                }
                prefix.pop();
            }
        }
        // A leaf (a value, a list without keys, an empty object or list), and it changed.
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// [`changed_under`] the plain way: every path of the field set, judged with [`value_at`].
fn changed_by_paths(
    field: &str,
    old: Option<&Value>,
    new: &Value,
    prefix: &FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    for path in leaves(&field_set_of(field, new)) {
        let before = old.and_then(|o| value_at(o, &path));
        let changed = if is_item(&path) {
            before.is_none()
        } else {
            before != value_at(new, &path)
        };
        if changed {
            out.insert(prefix.iter().chain(&path).cloned().collect());
        }
    }
}

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// The API version it used.
    pub api_version: String,
    /// The field.
    pub path: FieldPath,
}

/// The conflicts of applying `applied` (with field set `paths`) over `live` as `manager`.
pub fn conflicts(
    live: &Value,
    applied: &Value,
    paths: &BTreeSet<FieldPath>,
    manager: &str,
) -> Vec<Conflict> {
    let mut out = vec![];
    for e in entries(live) {
        if e["manager"] == manager && e["operation"] == "Apply" {
            continue;
        }
        for path in leaves(&e["fieldsV1"])
            .intersection(paths)
            .filter(|p| !is_item(p))
        {
            if value_at(live, path) != value_at(applied, path) {
                out.push(Conflict {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                    path: path.clone(),
                });
            }
        }
    }
    out
}

/// Upstream's conflict message, e.g.
/// `Apply failed with 1 conflict: conflict with "kubectl-scale" using apps/v1: .spec.replicas`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    if n == 1 {
        let c = &conflicts[0];
        return format!(
            "Apply failed with 1 conflict: conflict with {:?} using {}: {}",
            c.manager,
            c.api_version,
            render(&c.path)
        );
    }
    let mut managers: Vec<(&str, &str)> = conflicts
        .iter()
        .map(|c| (c.manager.as_str(), c.api_version.as_str()))
        .collect();
    managers.dedup();
    let mut msg = format!("Apply failed with {n} conflicts: ");
    let groups: Vec<String> = managers
        .iter()
        .map(|(m, v)| {
            let fields: Vec<String> = conflicts
                .iter()
                .filter(|c| c.manager == *m)
                .map(|c| format!("- {}", render(&c.path)))
                .collect();
            format!("conflicts with {m:?} using {v}:\n{}", fields.join("\n"))
        })
        .collect();
    msg.push_str(&groups.join("\n"));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &Value) -> BTreeSet<FieldPath> {
        leaves(v)
    }

    #[test]
    fn leaves_and_back() {
        let set = json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}}}}});
        let l = leaves(&set);
        assert!(l.contains(&vec![
            "f:metadata".to_string(),
            "f:labels".into(),
            "f:a".into()
        ]));
        assert_eq!(to_fields_v1(&l), set);
    }

    #[test]
    fn a_creator_is_recorded_as_assign_records_it() {
        let sent = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"z": "1", "a": "2"},
                "finalizers": ["b/f", "a/f"], "uid": "ignored"},
            "spec": {"volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "web", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "env": [{"name": "B", "value": "1"}, {"name": "A"}], "args": ["x"]},
                    {"name": "side", "image": "j"}]},
        });
        let via_paths = {
            let mut obj = sent.clone();
            assign(
                &mut obj,
                "m",
                "Update",
                "v1",
                None,
                &leaves(&field_set(&sent)),
                true,
            );
            obj
        };
        let direct = {
            let mut obj = sent.clone();
            record_create(&mut obj, "m", "v1", created_fields(&sent));
            obj
        };
        let fields = |obj: &Value| {
            let mut entry = obj["metadata"]["managedFields"][0].clone();
            entry["time"] = Value::Null;
            serde_json::to_string(&entry).unwrap()
        };
        // Compared as text: the order of keys must match too.
        assert_eq!(fields(&direct), fields(&via_paths));
        assert!(fields(&direct).contains(r#""f:labels":{"f:a":{},"f:z":{}}"#));
        // A creator that set nothing owns nothing, and gets no entry.
        let mut empty = json!({"metadata": {}});
        record_create(&mut empty, "m", "v1", created_fields(&json!({})));
        assert_eq!(empty, json!({"metadata": {}}));
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let mut obj = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "paused": false}});
        let created = leaves(&field_set(&obj));
        assign(
            &mut obj, "creator", "Update", "apps/v1", None, &created, true,
        );
        let old = obj.clone();
        obj["spec"]["replicas"] = json!(3);
        record_update(&old, &mut obj, "kubectl-scale", "apps/v1", None);
        let mf = obj["metadata"]["managedFields"].as_array().unwrap().clone();
        let scale = mf.iter().find(|e| e["manager"] == "kubectl-scale").unwrap();
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        let creator = mf.iter().find(|e| e["manager"] == "creator").unwrap();
        assert!(creator["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        // Applying another replica count as a third manager conflicts with kubectl-scale.
        let applied = json!({"spec": {"replicas": 5}});
        let c = conflicts(&obj, &applied, &paths(&field_set(&applied)), "ssa");
        assert_eq!(
            conflict_message(&c),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // The same value is shared ownership, not a conflict.
        let same = json!({"spec": {"replicas": 3}});
        assert!(conflicts(&obj, &same, &paths(&field_set(&same)), "ssa").is_empty());
    }

    /// `changed_paths` as first written: every leaf of the new field set, judged by value.
    fn changed_plainly(old: &Value, new: &Value) -> BTreeSet<FieldPath> {
        leaves(&field_set(new))
            .into_iter()
            .filter(|p| {
                if is_item(p) {
                    value_at(old, p).is_none()
                } else {
                    value_at(old, p) != value_at(new, p)
                }
            })
            .collect()
    }

    #[test]
    fn changed_paths_are_the_changed_leaves_of_the_field_set() {
        let base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "5",
                "labels": {"a": "1"}, "finalizers": ["x/f"], "annotations": {}},
            "spec": {"nodeName": "", "containers": [
                    {"name": "web", "image": "i", "ports": [{"containerPort": 80}], "args": ["a"]},
                    {"name": "side", "image": "j"}],
                "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"}]},
        });
        let changes: Vec<fn(&mut Value)> = vec![
            |_| {},
            |o| o["spec"]["nodeName"] = json!("node-1"),
            |o| {
                o["status"] = json!({"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "web", "ready": true, "state": {"running": {}}}]});
            },
            |o| o["spec"]["containers"][0]["image"] = json!("i2"),
            |o| o["spec"]["containers"][1] = json!({"name": "other", "image": "j"}),
            |o| o["spec"]["containers"][0]["ports"] = json!([]),
            |o| o["metadata"]["finalizers"] = json!(["x/f", "y/f"]),
            |o| o["metadata"]["finalizers"] = json!([]),
            |o| o["metadata"]["labels"] = json!({}),
            |o| o["metadata"]["uid"] = json!("other"),
            |o| o["metadata"]["annotations"] = json!({"resourceVersion": "x"}),
            |o| o["spec"]["tolerations"][0]["operator"] = json!("Equal"),
            |o| o["spec"] = json!("not an object"),
            // Items without their key, and twice the same key: judged as value_at finds them.
            |o| {
                o["status"]["conditions"] = json!([{"status": "True"}, {"type": "A", "status": "1"}, {"type": "A", "status": "2"}]);
            },
            |o| o["spec"]["containers"][1]["name"] = json!("web"),
        ];
        // An item without its merge key, in a part the update did not touch: not changed
        // (judged leaf by leaf, every update would take it over).
        let mut keyless = base.clone();
        keyless["status"]["conditions"] = json!([{"status": "True"}]);
        let mut updated = keyless.clone();
        updated["spec"]["nodeName"] = json!("node-1");
        assert_eq!(
            changed_paths(&keyless, &updated),
            BTreeSet::from([vec!["f:spec".to_string(), "f:nodeName".into()]])
        );
        for (n, change) in changes.iter().enumerate() {
            let mut new = base.clone();
            change(&mut new);
            for (old, new) in [(&base, &new), (&new, &base), (&json!({}), &new)] {
                assert_eq!(
                    changed_paths(old, new),
                    changed_plainly(old, new),
                    "change {n}: {old} to {new}"
                );
            }
        }
    }

    #[test]
    fn finalizers_are_owned_value_by_value() {
        let mut obj =
            json!({"metadata": {"name": "x", "finalizers": ["a.example/f", "b.example/f"]}});
        let set = field_set(&obj);
        assert_eq!(
            set["f:metadata"]["f:finalizers"],
            json!({"v:\"a.example/f\"": {}, "v:\"b.example/f\"": {}})
        );
        let path: FieldPath = vec![
            "f:metadata".into(),
            "f:finalizers".into(),
            "v:\"a.example/f\"".into(),
        ];
        assert_eq!(value_at(&obj, &path), Some(&json!("a.example/f")));
        remove(&mut obj, &path);
        assert_eq!(obj["metadata"]["finalizers"], json!(["b.example/f"]));
    }

    #[test]
    fn keyed_paths_render_like_upstream() {
        let p: FieldPath = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(render(&p), ".spec.containers[name=\"web\"].image");
    }
}
