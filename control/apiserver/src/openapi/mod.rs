//! /openapi/v2 and /openapi/v3, generated from the k8s-openapi types' schemas (their schemars
//! support), with the `x-kubernetes-group-version-kind` extensions kubectl looks for and the
//! write operations' parameters (so kubectl knows the server validates fields itself).
//! /openapi/v2 is also served in gnostic's protobuf encoding ([`v2_protobuf`]), the form kubectl
//! asks for.

mod v2_protobuf;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::resources::{CATALOG, Resource};

fn group_version_path(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

fn gvk(r: &Resource) -> Value {
    json!([{ "group": r.group, "version": r.version, "kind": r.kind }])
}

/// The query parameters of a write: OpenAPI v3 puts a parameter's type under `schema`, Swagger
/// 2.0 beside its name.
fn write_params(v3: bool) -> Value {
    let params = [
        (
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        (
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
        ),
        (
            "fieldValidation",
            "Ignore, Warn or Strict: how to treat unknown or duplicate fields.",
        ),
    ];
    params
        .iter()
        .map(|(name, description)| {
            let mut p = json!({ "name": name, "in": "query", "description": description });
            if v3 {
                p["schema"] = json!({ "type": "string" });
            } else {
                p["type"] = json!("string");
            }
            p
        })
        .collect()
}

fn collection_path(r: &Resource) -> String {
    if r.namespaced {
        format!(
            "/{}/namespaces/{{namespace}}/{}",
            group_version_path(r),
            r.plural
        )
    } else {
        format!("/{}/{}", group_version_path(r), r.plural)
    }
}

fn paths_for(r: &Resource, type_ref: &str, v3: bool) -> Vec<(String, Value)> {
    let body = |op: &str| {
        let mut o = json!({
            "operationId": format!("{op}{}", r.kind),
            "x-kubernetes-action": op,
            "x-kubernetes-group-version-kind": gvk(r)[0],
            "parameters": write_params(v3),
        });
        if v3 {
            o["requestBody"] = json!({ "content": { "*/*": { "schema": { "$ref": type_ref } } }, "required": true });
            o["responses"] = json!({ "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": type_ref } } } } });
        } else {
            o["responses"] =
                json!({ "200": { "description": "OK", "schema": { "$ref": type_ref } } });
        }
        o
    };
    let collection = collection_path(r);
    vec![
        (collection.clone(), json!({ "post": body("post") })),
        (
            format!("{collection}/{{name}}"),
            json!({ "put": body("put"), "patch": body("patch") }),
        ),
    ]
}

fn settings(v3: bool) -> SchemaSettings {
    if v3 {
        SchemaSettings::openapi3()
    } else {
        let mut s = SchemaSettings::draft07();
        s.definitions_path = "#/definitions/".into();
        s
    }
}

fn document(resources: &[&Resource], v3: bool) -> Value {
    let mut generator = settings(v3).into_generator();
    let mut paths = Map::new();
    let mut kinds = vec![];
    for r in resources {
        let schema = (r.schema)(&mut generator);
        let type_ref = schema
            .as_value()
            .get("$ref")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = type_ref.rsplit('/').next().unwrap_or_default().to_string();
        kinds.push((name, *r));
        for (path, item) in paths_for(r, &type_ref, v3) {
            paths.insert(path, item);
        }
    }
    let mut definitions = generator.take_definitions(true);
    for (name, r) in kinds {
        if let Some(def) = definitions.get_mut(&name).and_then(Value::as_object_mut) {
            def.insert("x-kubernetes-group-version-kind".into(), gvk(r));
        }
    }
    let info = json!({ "title": "Kubernetes", "version": "v1.33.0" });
    if !v3 {
        for def in definitions.values_mut() {
            refs_beside_siblings(def);
        }
    }
    if v3 {
        json!({ "openapi": "3.0.0", "info": info, "paths": paths, "components": { "schemas": definitions } })
    } else {
        json!({ "swagger": "2.0", "info": info, "paths": paths, "definitions": definitions })
    }
}

/// Rewrites `{"allOf": [{"$ref": R}], ...}` (how the schemas say "R, described here") into
/// `{"$ref": R, ...}`, as upstream's Swagger 2.0 document has it: kube-openapi's proto models
/// follow a `$ref` but take a schema with neither a type nor properties for an arbitrary value.
fn refs_beside_siblings(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let single_ref = match object.get("allOf").and_then(Value::as_array) {
        Some(all) if all.len() == 1 => all[0]
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("$ref"))
            .cloned(),
        _ => None,
    };
    if let Some(reference) = single_ref {
        object.remove("allOf");
        object.insert("$ref".into(), reference);
    }
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" | "definitions" => {
                for sub in value
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|m| m.values_mut())
                {
                    refs_beside_siblings(sub);
                }
            }
            "items" | "additionalProperties" => refs_beside_siblings(value),
            "allOf" | "anyOf" | "oneOf" => {
                for sub in value.as_array_mut().into_iter().flatten() {
                    refs_beside_siblings(sub);
                }
            }
            _ => {}
        }
    }
}

/// The OpenAPI v2 document of every served type.
pub fn v2() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| document(&CATALOG.iter().collect::<Vec<_>>(), false))
}

/// The media type of the OpenAPI v2 document in gnostic's protobuf encoding, as upstream
/// labels its answers.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The deprecated name of the same, which kubectl still asks for (and which is no valid media
/// type for Go's parser, so it is never sent back).
const V2_PROTOBUF_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// How /openapi/v2 is answered, from the request's Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Encoding {
    Json,
    Protobuf,
}

/// Picks the media type of `accept` /openapi/v2 is served as: the most preferred one (by `q`,
/// then order) it can be served as, a wildcard standing for the first served type not refused
/// by name with `q=0`; `None` when there is none (406). No Accept header means JSON.
pub fn v2_encoding(accept: Option<&str>) -> Option<V2Encoding> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(V2Encoding::Json);
    };
    let encoding_of = |range: &str| match range {
        "application/json" => Some(V2Encoding::Json),
        V2_PROTOBUF | V2_PROTOBUF_DEPRECATED => Some(V2Encoding::Protobuf),
        _ => None,
    };
    let mut ranges: Vec<(f32, String)> = accept
        .split(',')
        .filter_map(|media| {
            let mut parts = media.split(';');
            let range = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then_some(value)
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!range.is_empty()).then_some((q, range))
        })
        .collect();
    let refused: Vec<V2Encoding> = ranges
        .iter()
        .filter(|(q, _)| *q <= 0.0)
        .filter_map(|(_, range)| encoding_of(range))
        .collect();
    ranges.retain(|(q, _)| *q > 0.0);
    // Stable: equal preferences keep their order.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges.iter().find_map(|(_, range)| match range.as_str() {
        "*/*" | "application/*" => [V2Encoding::Json, V2Encoding::Protobuf]
            .into_iter()
            .find(|e| !refused.contains(e)),
        named => encoding_of(named),
    })
}

/// The OpenAPI v2 document as JSON bytes, serialized once.
pub fn v2_json() -> Bytes {
    static BYTES: OnceLock<Bytes> = OnceLock::new();
    BYTES.get_or_init(|| Bytes::from(v2().to_string())).clone()
}

/// The OpenAPI v2 document in gnostic's protobuf encoding, encoded once.
pub fn v2_protobuf() -> Bytes {
    static BYTES: OnceLock<Bytes> = OnceLock::new();
    BYTES
        .get_or_init(|| Bytes::from(v2_protobuf::encode(v2())))
        .clone()
}

fn v3_docs() -> &'static BTreeMap<String, Value> {
    static DOCS: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut by_gv: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
        for r in CATALOG {
            by_gv.entry(group_version_path(r)).or_default().push(r);
        }
        by_gv
            .into_iter()
            .map(|(gv, rs)| (gv, document(&rs, true)))
            .collect()
    })
}

/// `/openapi/v3`: the index of group-version documents.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = v3_docs()
        .iter()
        .map(|(gv, doc)| {
            let hash = format!("{:016X}", fxhash(doc.to_string().as_bytes()));
            (
                gv.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}") }),
            )
        })
        .collect();
    json!({ "paths": paths })
}

/// `/openapi/v3/<group-version path>`.
pub fn v3_group(gv: &str) -> Option<&'static Value> {
    v3_docs().get(gv)
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_is_served_as_asked() {
        assert_eq!(v2_encoding(None), Some(V2Encoding::Json));
        assert_eq!(v2_encoding(Some("*/*")), Some(V2Encoding::Json));
        // What kubectl sends.
        assert_eq!(
            v2_encoding(Some(
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
            )),
            Some(V2Encoding::Protobuf)
        );
        assert_eq!(
            v2_encoding(Some(&format!("{V2_PROTOBUF}, application/json"))),
            Some(V2Encoding::Protobuf)
        );
        assert_eq!(v2_encoding(Some("text/html")), None);
        assert_eq!(v2_encoding(Some("text/html,")), None);
        // A type refused by name is not served through a wildcard either.
        assert_eq!(
            v2_encoding(Some("*/*;q=0.1, application/json;Q=0")),
            Some(V2Encoding::Protobuf)
        );
        assert_eq!(v2_encoding(Some("application/json;q=0")), None);
        assert_eq!(
            v2_encoding(Some(&format!("application/json;q=0, {V2_PROTOBUF}"))),
            Some(V2Encoding::Protobuf)
        );
        assert_eq!(
            v2_encoding(Some(&format!(
                "application/json;q=0.5, {}",
                V2_PROTOBUF.to_uppercase()
            ))),
            Some(V2Encoding::Protobuf)
        );
        assert!(v2_protobuf().starts_with(b"\x0a\x032.0"));
        assert_eq!(
            serde_json::from_slice::<Value>(&v2_json()).unwrap()["swagger"],
            "2.0"
        );
    }

    #[test]
    fn v3_documents_carry_kinds() {
        let apps = v3_group("apis/apps/v1").unwrap();
        let dep = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(dep["properties"]["spec"].is_object());
        assert!(
            v3_index()["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }
}
