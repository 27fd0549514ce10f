//! Objects in the store: JSON encoding, resourceVersion from the store revision, continue
//! tokens, and the read-modify-write loop that every update goes through.

use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use baton_store::{KeyValue, ListOptions, Store, StoreError};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::resources::Resource;
use crate::status::StatusError;

/// Decodes a stored object and sets its resourceVersion from the store revision.
pub fn decode(kv: &KeyValue) -> Result<Value, StatusError> {
    decode_bytes(&kv.key, &kv.value, kv.mod_revision)
}

/// Decodes stored bytes at a known revision.
pub fn decode_bytes(key: &str, value: &[u8], revision: i64) -> Result<Value, StatusError> {
    let mut obj: Value = serde_json::from_slice(value)
        .map_err(|e| StatusError::internal(format!("decoding {key}: {e}")))?;
    set_resource_version(&mut obj, revision);
    Ok(obj)
}

/// Sets metadata.resourceVersion.
pub fn set_resource_version(obj: &mut Value, revision: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// Encodes an object for storage (without resourceVersion, which the store supplies).
pub fn encode(obj: &Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&WithoutResourceVersion(obj)).expect("JSON values always serialize"),
    )
}

/// Serializes an object as it is but for `metadata.resourceVersion`, without copying it.
struct WithoutResourceVersion<'a>(&'a Value);

/// An object's metadata, serialized without its `resourceVersion`.
struct MetadataWithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (key, value) in fields {
            match value {
                Value::Object(meta) if key == "metadata" => {
                    map.serialize_entry(key, &MetadataWithoutResourceVersion(meta))?
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

impl serde::Serialize for MetadataWithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let kept = self.0.iter().filter(|(key, _)| *key != "resourceVersion");
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in kept {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Appends stored JSON to `out` with `metadata.resourceVersion` set to `revision`, copying
/// the bytes rather than decoding them. Returns false, appending nothing, when the bytes are
/// not a JSON object with a metadata object (the caller then decodes).
pub fn write_with_resource_version(out: &mut Vec<u8>, raw: &[u8], revision: i64) -> bool {
    let Some((head, tail)) = split_at_metadata(raw) else {
        return false;
    };
    out.reserve(raw.len() + 32);
    out.extend_from_slice(head);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "\"resourceVersion\":\"{revision}\"");
    if !skip_ws_starts_with(tail, b'}') {
        out.push(b',');
    }
    out.extend_from_slice(tail);
    true
}

/// Whether `raw` starts, after white space, with `byte`.
fn skip_ws_starts_with(raw: &[u8], byte: u8) -> bool {
    raw.get(skip_ws(raw, 0)) == Some(&byte)
}

/// Finds where the top-level `metadata` object of stored JSON opens, so a list can copy the
/// stored bytes and splice `resourceVersion` in without decoding: returns the bytes up to and
/// including metadata's `{`, and the rest. `None` when the bytes are not a JSON object with a
/// metadata object (the caller then decodes).
fn split_at_metadata(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = skip_ws(raw, 0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(raw, i);
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(raw, i)?;
        let key = &raw[i + 1..key_end - 1];
        i = skip_ws(raw, key_end);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(raw, i + 1);
        if key == b"metadata" {
            if raw.get(i) != Some(&b'{') {
                return None;
            }
            return Some((&raw[..=i], &raw[i + 1..]));
        }
        i = skip_value(raw, i)?;
        i = skip_ws(raw, i);
        match raw.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while matches!(raw.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// Returns the index just past the string starting at `i` (which must be a quote).
fn skip_string(raw: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while let Some(&c) = raw.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Returns the index just past the JSON value starting at `i`.
fn skip_value(raw: &[u8], mut i: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => skip_string(raw, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            while let Some(&c) = raw.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            while let Some(&c) = raw.get(i) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    return Some(i);
                }
                i += 1;
            }
            Some(i)
        }
    }
}

/// Maps a store failure to the API error a client sees.
pub fn store_error(resource: &Resource, name: &str, err: StoreError) -> StatusError {
    let subject = resource.subject();
    match err {
        StoreError::NotFound { .. } => StatusError::not_found(&subject, name),
        StoreError::AlreadyExists { .. } => StatusError::already_exists(&subject, name),
        StoreError::Conflict { .. } => StatusError::conflict(&subject, name),
        StoreError::Compacted { requested, .. } => {
            StatusError::expired(format!("too old resource version: {requested}"))
        }
        StoreError::FutureRevision { requested } => {
            StatusError::timeout(format!("Too large resource version: {requested}"))
        }
        StoreError::Backend(e) => {
            tracing::warn!(error = %e, "storage backend error");
            StatusError::unavailable("storage is unavailable, please retry")
        }
        StoreError::InvalidKey => StatusError::internal("invalid key in storage"),
    }
}

/// Parses a resourceVersion string.
pub fn parse_rv(rv: &str) -> Result<i64, StatusError> {
    rv.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| StatusError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// The position a paged list continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The revision of the first page.
    pub revision: i64,
    /// The key (relative to the list prefix) to start at.
    pub start: String,
}

impl Continue {
    /// Encodes the token as upstream does: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":K}`.
    pub fn encode(&self) -> String {
        let token = json!({ "v": "meta.k8s.io/v1", "rv": self.revision, "start": self.start });
        STANDARD.encode(token.to_string())
    }

    /// Decodes a `continue` parameter.
    pub fn decode(token: &str) -> Result<Self, StatusError> {
        let bad = || {
            StatusError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            )
        };
        let raw = STANDARD.decode(token).map_err(|_| bad())?;
        let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        if value["v"] != "meta.k8s.io/v1" {
            return Err(bad());
        }
        let revision = value["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
        let start = value["start"].as_str().ok_or_else(bad)?.to_string();
        if start.contains("..") || start.starts_with('/') {
            return Err(bad());
        }
        Ok(Self { revision, start })
    }
}

/// The outcome of a read-modify-write.
#[derive(Debug)]
pub struct Updated {
    /// The object as stored (with its new resourceVersion).
    pub object: Value,
    /// The object before the change.
    pub previous: Value,
    /// False when the change was a no-op and nothing was written.
    pub written: bool,
    /// Whether the object was removed (its last finalizer went away).
    pub deleted: bool,
    /// The bytes written and their revision, when the object was written.
    pub stored: Option<(Bytes, i64)>,
}

/// What an update function decides.
#[derive(Debug)]
pub enum Decision {
    /// Write this object.
    Write(Value),
    /// Delete the object (e.g. the last finalizer went away on a deleting object).
    Delete,
    /// Write nothing and return this object (dry runs).
    Preview(Value),
}

/// Reads `key`, applies `change` and writes the result with compare-and-swap, retrying when
/// another writer got there first. `change` sees the current object (with resourceVersion);
/// it is called again on each retry, and only its last call's outcome counts.
///
/// `cached` is a first guess at the stored object (the watch cache's newest), which saves
/// the read: a write from it is a compare-and-swap like any other, and any other outcome (an
/// error, nothing to change, a dry run) is decided again on a fresh read, as upstream's
/// GuaranteedUpdate does with its cached object.
pub async fn guaranteed_update<S: Store>(
    store: &Arc<S>,
    resource: &Resource,
    key: &str,
    name: &str,
    cached: Option<KeyValue>,
    mut change: impl FnMut(&Value) -> Result<Decision, StatusError>,
) -> Result<Updated, StatusError> {
    let mut known = cached.map(|kv| (kv, false));
    for _ in 0..32 {
        let (current, fresh) = match known.take() {
            Some(known) => known,
            None => (
                store
                    .get(key)
                    .await
                    .map_err(|e| store_error(resource, name, e))?
                    .ok_or_else(|| StatusError::not_found(&resource.subject(), name))?,
                true,
            ),
        };
        let previous = resource.from_storage(decode(&current)?);
        let decision = match change(&previous) {
            Ok(decision) => decision,
            Err(_) if !fresh => continue,
            Err(e) => return Err(e),
        };
        // A conflict's answer holds the store's current object: the next try starts there.
        let retry_from = |e: StoreError| match e {
            StoreError::Conflict {
                current: Some(current),
                ..
            } => Ok(Some((current, true))),
            StoreError::Conflict { current: None, .. } => Ok(None),
            e => Err(store_error(resource, name, e)),
        };
        match decision {
            Decision::Preview(_) if !fresh => continue,
            Decision::Preview(object) => {
                return Ok(Updated {
                    object,
                    previous,
                    written: false,
                    deleted: false,
                    stored: None,
                });
            }
            Decision::Delete => match store.delete(key, Some(current.mod_revision)).await {
                Ok((_, revision)) => {
                    let mut object = previous.clone();
                    set_resource_version(&mut object, revision);
                    return Ok(Updated {
                        object,
                        previous,
                        written: true,
                        deleted: true,
                        stored: None,
                    });
                }
                Err(e) => known = retry_from(e)?,
            },
            Decision::Write(mut next) => {
                set_resource_version(&mut next, current.mod_revision);
                if next == previous {
                    if !fresh {
                        continue;
                    }
                    return Ok(Updated {
                        object: next,
                        previous,
                        written: false,
                        deleted: false,
                        stored: None,
                    });
                }
                let stored = resource.stored_bytes(&next);
                match store
                    .update(key, stored.clone(), current.mod_revision)
                    .await
                {
                    Ok(revision) => {
                        set_resource_version(&mut next, revision);
                        return Ok(Updated {
                            object: next,
                            previous,
                            written: true,
                            deleted: false,
                            stored: Some((stored, revision)),
                        });
                    }
                    Err(e) => known = retry_from(e)?,
                }
            }
        }
    }
    Err(StatusError::conflict(&resource.subject(), name))
}

/// Reads one page of keys under `prefix`.
pub async fn list_page<S: Store>(
    store: &Arc<S>,
    resource: &Resource,
    prefix: &str,
    start: Option<&str>,
    limit: i64,
    revision: i64,
) -> Result<(Vec<KeyValue>, i64, bool, i64), StatusError> {
    let opts = ListOptions {
        start_key: start.map(|s| format!("{prefix}{s}")),
        limit,
        revision,
    };
    match store.list(prefix, opts).await {
        Ok(page) => Ok((page.items, page.revision, page.more, page.count)),
        Err(StoreError::Compacted { .. }) if start.is_some() => Err(StatusError::expired(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        )),
        Err(StoreError::Compacted { requested, .. }) => Err(StatusError::expired(format!(
            "too old resource version: {requested}"
        ))),
        Err(e) => Err(store_error(resource, "", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let c = Continue {
            revision: 42,
            start: "default/web-7\u{0}".into(),
        };
        assert_eq!(Continue::decode(&c.encode()).unwrap(), c);
        assert!(Continue::decode("not base64!").is_err());
    }

    #[test]
    fn split_finds_top_level_metadata_only() {
        let raw = br#"{"apiVersion":"v1","spec":{"template":{"metadata":{"x":"}{\"metadata\":{"}}},"metadata":{"name":"a"}}"#;
        let mut out = vec![];
        assert!(write_with_resource_version(&mut out, raw, 7));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "7", "name": "a"}));
        assert_eq!(v["spec"]["template"]["metadata"]["x"], "}{\"metadata\":{");
        assert!(split_at_metadata(b"[1]").is_none());
        assert!(split_at_metadata(br#"{"metadata":"x"}"#).is_none());
        assert!(!write_with_resource_version(
            &mut out,
            br#"{"metadata":"x"}"#,
            7
        ));
    }

    #[test]
    fn resource_version_goes_into_empty_metadata() {
        for raw in [
            &br#"{"kind":"A","metadata":{}}"#[..],
            br#"{"metadata":{ },"x":1}"#,
        ] {
            let mut out = vec![];
            assert!(write_with_resource_version(&mut out, raw, 9));
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["metadata"], json!({"resourceVersion": "9"}));
        }
    }

    #[test]
    fn encode_strips_resource_version() {
        let obj = json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "5", "labels": {"x": "y"}}, "spec": {"metadata": {"resourceVersion": "kept"}}});
        let stored: Value = serde_json::from_slice(&encode(&obj)).unwrap();
        assert_eq!(
            stored,
            json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"metadata": {"resourceVersion": "kept"}}})
        );
        assert_eq!(&encode(&json!([1, 2]))[..], b"[1,2]");
    }
}
