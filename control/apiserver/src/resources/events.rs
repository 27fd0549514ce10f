//! events.k8s.io/v1 Events are core/v1 Events seen another way: upstream stores both under
//! `/registry/events/` in the core form and renames fields when events.k8s.io reads or writes
//! them, so an event recorded through either API is listed by both.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field) pairs that differ only in name.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: Value, to_core: bool, api_version: &str) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMED
            .iter()
            .find(|(new, old)| if to_core { key == *new } else { key == *old })
            .map(|(new, old)| if to_core { *old } else { *new });
        out.insert(renamed.unwrap_or(&key).to_string(), value);
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// events.k8s.io/v1 form to the stored core/v1 form.
pub fn to_core(obj: Value) -> Value {
    rename(obj, true, "v1")
}

/// Stored core/v1 form to the events.k8s.io/v1 form.
pub fn from_core(obj: Value) -> Value {
    rename(obj, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_renamed_both_ways() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "hi", "reason": "Started", "count": 2});
        let new = from_core(core.clone());
        assert_eq!(new["apiVersion"], "events.k8s.io/v1");
        assert_eq!(new["regarding"]["name"], "p");
        assert_eq!(new["note"], "hi");
        assert_eq!(new["deprecatedCount"], 2);
        assert_eq!(new["reason"], "Started");
        assert_eq!(to_core(new), core);
    }
}
