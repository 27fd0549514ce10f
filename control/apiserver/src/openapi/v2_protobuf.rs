//! The OpenAPI v2 document in gnostic's protobuf encoding (the `openapi.v2.Document` message
//! of github.com/google/gnostic), which kubectl asks for with
//! `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf` and reads with
//! kube-openapi's proto models (client-side validation, e.g. of a `kind: List`).
//!
//! [`encode`] walks the JSON document and writes each field under gnostic's field number.
//! Maps become repeated `Named*` pairs in the JSON's key order; every `x-` key becomes a
//! `NamedAny` vendor extension whose value carries the JSON text in `Any.yaml` (JSON is YAML,
//! and kube-openapi reads extensions from there). Keys gnostic has no field for are dropped, as
//! are the parts of Swagger 2.0 Baton's documents never carry (security, tags, external docs,
//! xml, response headers and examples).

use prost::encoding::{WireType, encode_key, encode_varint};
use serde_json::{Map, Value};

/// One protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn len_delimited(&mut self, field: u32, bytes: &[u8]) {
        encode_key(field, WireType::LengthDelimited, &mut self.0);
        encode_varint(bytes.len() as u64, &mut self.0);
        self.0.extend_from_slice(bytes);
    }

    /// A proto3 string field: absent when empty.
    fn string(&mut self, field: u32, value: Option<&Value>) {
        if let Some(s) = value.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.len_delimited(field, s.as_bytes());
        }
    }

    /// A repeated string field from a JSON string or array of strings.
    fn strings(&mut self, field: u32, value: Option<&Value>) {
        match value {
            Some(Value::String(s)) => self.len_delimited(field, s.as_bytes()),
            Some(Value::Array(items)) => {
                for s in items.iter().filter_map(Value::as_str) {
                    self.len_delimited(field, s.as_bytes());
                }
            }
            _ => {}
        }
    }

    fn boolean(&mut self, field: u32, value: Option<&Value>) {
        if value.and_then(Value::as_bool) == Some(true) {
            encode_key(field, WireType::Varint, &mut self.0);
            encode_varint(1, &mut self.0);
        }
    }

    fn int64(&mut self, field: u32, value: Option<&Value>) {
        if let Some(n) = value.and_then(Value::as_i64).filter(|n| *n != 0) {
            encode_key(field, WireType::Varint, &mut self.0);
            // Negative int64s are ten-byte varints of their two's complement, as protobuf has it.
            encode_varint(n as u64, &mut self.0);
        }
    }

    fn double(&mut self, field: u32, value: Option<&Value>) {
        if let Some(n) = value.and_then(Value::as_f64).filter(|n| *n != 0.0) {
            encode_key(field, WireType::SixtyFourBit, &mut self.0);
            self.0.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// An `Any` field (`default`, `example`), absent when the key is.
    fn any(&mut self, field: u32, value: Option<&Value>) {
        if let Some(value) = value {
            self.message(field, any(value));
        }
    }

    /// A repeated `ParametersItem` field from a `parameters` array.
    fn parameters(&mut self, field: u32, value: Option<&Value>) {
        for p in value.and_then(Value::as_array).into_iter().flatten() {
            self.message(field, parameters_item(p));
        }
    }

    /// A repeated `Any` field from the items of a JSON array (`enum`).
    fn anys(&mut self, field: u32, value: Option<&Value>) {
        for item in value.and_then(Value::as_array).into_iter().flatten() {
            self.message(field, any(item));
        }
    }

    /// The ten validation keywords Swagger 2.0 schemas and parameters share, which gnostic
    /// numbers in the same order from `first`: maximum, exclusiveMaximum, minimum,
    /// exclusiveMinimum, maxLength, minLength, pattern, maxItems, minItems, uniqueItems.
    fn validation_keywords(&mut self, first: u32, object: &Map<String, Value>) {
        self.double(first, object.get("maximum"));
        self.boolean(first + 1, object.get("exclusiveMaximum"));
        self.double(first + 2, object.get("minimum"));
        self.boolean(first + 3, object.get("exclusiveMinimum"));
        self.int64(first + 4, object.get("maxLength"));
        self.int64(first + 5, object.get("minLength"));
        self.string(first + 6, object.get("pattern"));
        self.int64(first + 7, object.get("maxItems"));
        self.int64(first + 8, object.get("minItems"));
        self.boolean(first + 9, object.get("uniqueItems"));
    }

    /// An embedded message; written even when empty, since its presence is meaningful (an
    /// object schema with `properties: {}` is not one without).
    fn message(&mut self, field: u32, message: Message) {
        self.len_delimited(field, &message.0);
    }

    /// A `NamedAny` for each `x-` key of `object`.
    fn vendor_extensions(&mut self, field: u32, object: &Map<String, Value>) {
        for (name, value) in object.iter().filter(|(k, _)| k.starts_with("x-")) {
            self.message(field, named(name, any(value)));
        }
    }
}

/// gnostic's `Any`: the value as YAML text (here JSON, which YAML parsers read).
fn any(value: &Value) -> Message {
    let mut m = Message::default();
    m.len_delimited(2, value.to_string().as_bytes());
    m
}

/// A `Named*` pair: the name in field 1, the value in field 2.
fn named(name: &str, value: Message) -> Message {
    let mut m = Message::default();
    m.len_delimited(1, name.as_bytes());
    m.message(2, value);
    m
}

fn object(value: Option<&Value>) -> Option<&Map<String, Value>> {
    value.and_then(Value::as_object)
}

/// The whole `openapi.v2.Document` of a Swagger 2.0 JSON document.
pub fn encode(doc: &Value) -> Vec<u8> {
    let empty = Map::new();
    let d = doc.as_object().unwrap_or(&empty);
    let mut m = Message::default();
    m.string(1, d.get("swagger"));
    if let Some(info) = object(d.get("info")) {
        m.message(2, info_message(info));
    }
    m.string(3, d.get("host"));
    m.string(4, d.get("basePath"));
    m.strings(5, d.get("schemes"));
    m.strings(6, d.get("consumes"));
    m.strings(7, d.get("produces"));
    if let Some(paths) = object(d.get("paths")) {
        let mut p = Message::default();
        p.vendor_extensions(1, paths);
        for (path, item) in paths.iter().filter(|(k, _)| k.starts_with('/')) {
            if let Some(item) = item.as_object() {
                p.message(2, named(path, path_item(item)));
            }
        }
        m.message(8, p);
    }
    if let Some(definitions) = object(d.get("definitions")) {
        m.message(9, named_schemas(definitions));
    }
    m.vendor_extensions(16, d);
    m.0
}

fn info_message(info: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.string(1, info.get("title"));
    m.string(2, info.get("version"));
    m.string(3, info.get("description"));
    m.string(4, info.get("termsOfService"));
    m.vendor_extensions(7, info);
    m
}

/// `Definitions` and `Properties` alike: repeated `NamedSchema` in field 1.
fn named_schemas(schemas: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    for (name, s) in schemas {
        m.message(1, named(name, schema(s)));
    }
    m
}

fn path_item(item: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.string(1, item.get("$ref"));
    for (field, verb) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = object(item.get(verb)) {
            m.message(field, operation(op));
        }
    }
    m.parameters(9, item.get("parameters"));
    m.vendor_extensions(10, item);
    m
}

fn operation(op: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.strings(1, op.get("tags"));
    m.string(2, op.get("summary"));
    m.string(3, op.get("description"));
    m.string(5, op.get("operationId"));
    m.strings(6, op.get("produces"));
    m.strings(7, op.get("consumes"));
    m.parameters(8, op.get("parameters"));
    if let Some(responses) = object(op.get("responses")) {
        let mut r = Message::default();
        for (code, response) in responses.iter().filter(|(k, _)| !k.starts_with("x-")) {
            r.message(1, named(code, response_value(response)));
        }
        r.vendor_extensions(2, responses);
        m.message(9, r);
    }
    m.strings(10, op.get("schemes"));
    m.boolean(11, op.get("deprecated"));
    m.vendor_extensions(13, op);
    m
}

/// `ResponseValue`: a `Response` (field 1) or a `JsonReference` (field 2).
fn response_value(response: &Value) -> Message {
    let mut m = Message::default();
    let Some(r) = response.as_object() else {
        return m;
    };
    if r.contains_key("$ref") {
        m.message(2, json_reference(r));
        return m;
    }
    let mut inner = Message::default();
    inner.string(1, r.get("description"));
    if let Some(s) = r.get("schema") {
        // SchemaItem: oneof schema = 1.
        let mut item = Message::default();
        item.message(1, schema(s));
        inner.message(2, item);
    }
    inner.vendor_extensions(5, r);
    m.message(1, inner);
    m
}

fn json_reference(r: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.string(1, r.get("$ref"));
    m.string(2, r.get("description"));
    m
}

/// `ParametersItem`: a `Parameter` (field 1) or a `JsonReference` (field 2).
fn parameters_item(p: &Value) -> Message {
    let mut m = Message::default();
    let Some(p) = p.as_object() else {
        return m;
    };
    if p.contains_key("$ref") {
        m.message(2, json_reference(p));
        return m;
    }
    let mut parameter = Message::default();
    if p.get("in").and_then(Value::as_str) == Some("body") {
        let mut body = Message::default();
        body.string(1, p.get("description"));
        body.string(2, p.get("name"));
        body.string(3, p.get("in"));
        body.boolean(4, p.get("required"));
        if let Some(s) = p.get("schema") {
            body.message(5, schema(s));
        }
        body.vendor_extensions(6, p);
        parameter.message(1, body);
    } else {
        parameter.message(2, non_body_parameter(p));
    }
    m.message(1, parameter);
    m
}

/// `NonBodyParameter`: one of the header (1), formData (2), query (3) and path (4) sub-schemas.
/// The query and formData sub-schemas carry `allowEmptyValue` in field 5, which shifts every
/// later field by one against the header and path ones.
fn non_body_parameter(p: &Map<String, Value>) -> Message {
    let (which, has_allow_empty) = match p.get("in").and_then(Value::as_str) {
        Some("header") => (1, false),
        Some("formData") => (2, true),
        Some("path") => (4, false),
        _ => (3, true),
    };
    let shift = u32::from(has_allow_empty);
    let mut s = Message::default();
    s.boolean(1, p.get("required"));
    s.string(2, p.get("in"));
    s.string(3, p.get("description"));
    s.string(4, p.get("name"));
    if has_allow_empty {
        s.boolean(5, p.get("allowEmptyValue"));
    }
    s.string(5 + shift, p.get("type"));
    s.string(6 + shift, p.get("format"));
    if let Some(items) = object(p.get("items")) {
        s.message(7 + shift, primitives_items(items));
    }
    s.string(8 + shift, p.get("collectionFormat"));
    s.any(9 + shift, p.get("default"));
    s.validation_keywords(10 + shift, p);
    s.anys(20 + shift, p.get("enum"));
    s.double(21 + shift, p.get("multipleOf"));
    s.vendor_extensions(22 + shift, p);
    let mut m = Message::default();
    m.message(which, s);
    m
}

/// `PrimitivesItems`: the element type of an array parameter.
fn primitives_items(items: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.string(1, items.get("type"));
    m.string(2, items.get("format"));
    if let Some(inner) = object(items.get("items")) {
        m.message(3, primitives_items(inner));
    }
    m.string(4, items.get("collectionFormat"));
    m.any(5, items.get("default"));
    m.validation_keywords(6, items);
    m.anys(16, items.get("enum"));
    m.double(17, items.get("multipleOf"));
    m.vendor_extensions(18, items);
    m
}

/// gnostic's `Schema`.
fn schema(value: &Value) -> Message {
    let mut m = Message::default();
    let Some(s) = value.as_object() else {
        return m;
    };
    m.string(1, s.get("$ref"));
    m.string(2, s.get("format"));
    m.string(3, s.get("title"));
    m.string(4, s.get("description"));
    m.any(5, s.get("default"));
    m.double(6, s.get("multipleOf"));
    m.validation_keywords(7, s);
    m.int64(17, s.get("maxProperties"));
    m.int64(18, s.get("minProperties"));
    m.strings(19, s.get("required"));
    m.anys(20, s.get("enum"));
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            // AdditionalPropertiesItem: oneof boolean = 2 (written even when false).
            let mut item = Message::default();
            encode_key(2, WireType::Varint, &mut item.0);
            encode_varint(u64::from(*b), &mut item.0);
            m.message(21, item);
        }
        Some(sub @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, schema(sub));
            m.message(21, item);
        }
        _ => {}
    }
    if s.get("type").is_some() {
        let mut t = Message::default();
        t.strings(1, s.get("type"));
        m.message(22, t);
    }
    match s.get("items") {
        Some(Value::Array(items)) => {
            let mut i = Message::default();
            for item in items {
                i.message(1, schema(item));
            }
            m.message(23, i);
        }
        Some(item @ Value::Object(_)) => {
            let mut i = Message::default();
            i.message(1, schema(item));
            m.message(23, i);
        }
        _ => {}
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(sub));
    }
    if let Some(properties) = object(s.get("properties")) {
        m.message(25, named_schemas(properties));
    }
    m.string(26, s.get("discriminator"));
    m.boolean(27, s.get("readOnly"));
    m.any(30, s.get("example"));
    m.vendor_extensions(31, s);
    m
}

#[cfg(test)]
mod tests {
    //! The encoding is read back with prost messages declared here after gnostic's
    //! OpenAPIv2.proto (only the fields asserted on), and checked against the rules
    //! kube-openapi's proto models apply when kubectl loads the document: one bad schema there
    //! and kubectl's client-side validation fails for every object.

    use std::collections::BTreeSet;

    use prost::Message as _;

    use super::*;
    use crate::openapi::v2;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Document {
        #[prost(string, tag = "1")]
        swagger: String,
        #[prost(message, optional, tag = "2")]
        info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        definitions: Option<NamedSchemas>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Info {
        #[prost(string, tag = "1")]
        title: String,
        #[prost(string, tag = "2")]
        version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Paths {
        #[prost(message, repeated, tag = "2")]
        path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NamedPathItem {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct PathItem {
        #[prost(message, optional, tag = "4")]
        post: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        patch: Option<Operation>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Operation {
        #[prost(string, tag = "5")]
        operation_id: String,
        #[prost(message, repeated, tag = "8")]
        parameters: Vec<ParametersItem>,
        #[prost(message, repeated, tag = "13")]
        vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        parameter: Option<Parameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Parameter {
        #[prost(message, optional, tag = "2")]
        non_body_parameter: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        r#in: String,
        #[prost(string, tag = "4")]
        name: String,
        #[prost(string, tag = "6")]
        r#type: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NamedSchemas {
        #[prost(message, repeated, tag = "1")]
        additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NamedSchema {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Schema {
        #[prost(string, tag = "1")]
        xref: String,
        #[prost(string, tag = "2")]
        format: String,
        #[prost(string, tag = "4")]
        description: String,
        #[prost(string, repeated, tag = "19")]
        required: Vec<String>,
        #[prost(message, optional, boxed, tag = "21")]
        additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        items: Option<ItemsItem>,
        #[prost(message, optional, tag = "25")]
        properties: Option<NamedSchemas>,
        #[prost(message, repeated, tag = "31")]
        vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct AdditionalPropertiesItem {
        #[prost(message, optional, tag = "1")]
        schema: Option<Schema>,
        #[prost(bool, optional, tag = "2")]
        boolean: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        value: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        schema: Vec<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NamedAny {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Any {
        #[prost(string, tag = "2")]
        yaml: String,
    }

    fn decoded() -> Document {
        Document::decode(encode(v2()).as_slice()).expect("the encoding decodes")
    }

    fn definition<'a>(doc: &'a Document, name: &str) -> &'a Schema {
        doc.definitions
            .as_ref()
            .unwrap()
            .additional_properties
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.value.as_ref())
            .unwrap_or_else(|| panic!("no definition {name}"))
    }

    fn property<'a>(schema: &'a Schema, name: &str) -> &'a Schema {
        schema
            .properties
            .as_ref()
            .unwrap()
            .additional_properties
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.value.as_ref())
            .unwrap_or_else(|| panic!("no property {name}"))
    }

    fn extension(extensions: &[NamedAny], name: &str) -> Value {
        let any = extensions
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_ref())
            .unwrap_or_else(|| panic!("no extension {name}"));
        serde_json::from_str(&any.yaml).unwrap()
    }

    #[test]
    fn definitions_read_back_as_kubectl_sees_them() {
        let doc = decoded();
        assert_eq!(doc.swagger, "2.0");
        assert_eq!(doc.info.as_ref().unwrap().title, "Kubernetes");
        assert_eq!(
            doc.definitions
                .as_ref()
                .unwrap()
                .additional_properties
                .len(),
            v2()["definitions"].as_object().unwrap().len()
        );

        let config_map = definition(&doc, "io.k8s.api.core.v1.ConfigMap");
        assert_eq!(config_map.r#type.as_ref().unwrap().value, ["object"]);
        assert_eq!(
            extension(
                &config_map.vendor_extension,
                "x-kubernetes-group-version-kind"
            ),
            serde_json::json!([{ "group": "", "version": "v1", "kind": "ConfigMap" }])
        );
        let data = property(config_map, "data");
        let values = data.additional_properties.as_ref().unwrap();
        assert_eq!(
            values
                .schema
                .as_ref()
                .unwrap()
                .r#type
                .as_ref()
                .unwrap()
                .value,
            ["string"]
        );
        // A described reference is a plain $ref, not an allOf kube-openapi would not follow.
        let metadata = property(config_map, "metadata");
        assert_eq!(
            metadata.xref,
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(!metadata.description.is_empty());

        let containers = property(definition(&doc, "io.k8s.api.core.v1.PodSpec"), "containers");
        assert_eq!(containers.r#type.as_ref().unwrap().value, ["array"]);
        assert_eq!(
            containers.items.as_ref().unwrap().schema[0].xref,
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        assert!(
            definition(&doc, "io.k8s.api.core.v1.Container")
                .required
                .contains(&"name".to_string())
        );
    }

    #[test]
    fn write_operations_declare_field_validation() {
        let doc = decoded();
        let item = doc
            .paths
            .as_ref()
            .unwrap()
            .path
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments")
            .and_then(|p| p.value.as_ref())
            .unwrap();
        let post = item.post.as_ref().unwrap();
        assert_eq!(post.operation_id, "postDeployment");
        assert_eq!(
            extension(&post.vendor_extension, "x-kubernetes-group-version-kind")["kind"],
            "Deployment"
        );
        let query: Vec<_> = post
            .parameters
            .iter()
            .filter_map(|p| {
                p.parameter
                    .as_ref()?
                    .non_body_parameter
                    .as_ref()?
                    .query_parameter_sub_schema
                    .clone()
            })
            .collect();
        let validation = query.iter().find(|q| q.name == "fieldValidation").unwrap();
        assert_eq!(
            (validation.r#in.as_str(), validation.r#type.as_str()),
            ("query", "string")
        );
    }

    /// kube-openapi's `NewOpenAPIData` rules (pkg/util/proto/document.go), applied to one schema.
    fn check(schema: &Schema, path: &str, names: &BTreeSet<&str>, problems: &mut Vec<String>) {
        let types = schema
            .r#type
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        if !schema.xref.is_empty() {
            let target = schema.xref.strip_prefix("#/definitions/");
            if !target.is_some_and(|t| names.contains(t)) {
                problems.push(format!("{path}: dangling reference {}", schema.xref));
            }
            if schema.properties.is_some() || !types.is_empty() {
                problems.push(format!("{path}: a reference with a type or properties"));
            }
            return;
        }
        match types.as_slice() {
            [] => {}
            [t] if t == "array" => match schema.items.as_ref().map(|i| i.schema.as_slice()) {
                Some([item]) => check(item, &format!("{path}[]"), names, problems),
                _ => problems.push(format!("{path}: an array without exactly one item schema")),
            },
            [t] if t == "object" => {
                if let Some(sub) = schema
                    .additional_properties
                    .as_ref()
                    .and_then(|a| a.schema.as_ref())
                    .filter(|_| schema.properties.is_none())
                {
                    check(sub, &format!("{path}{{}}"), names, problems);
                }
            }
            [t] if ["string", "number", "integer", "boolean"].contains(&t.as_str()) => {}
            other => problems.push(format!("{path}: type {other:?}")),
        }
        for p in schema
            .properties
            .iter()
            .flat_map(|p| &p.additional_properties)
        {
            if let Some(value) = &p.value {
                check(value, &format!("{path}.{}", p.name), names, problems);
            }
        }
    }

    #[test]
    fn every_definition_loads_as_kube_openapi_models() {
        let doc = decoded();
        let definitions = &doc.definitions.as_ref().unwrap().additional_properties;
        let names: BTreeSet<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
        let mut problems = vec![];
        for d in definitions {
            check(d.value.as_ref().unwrap(), &d.name, &names, &mut problems);
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn negative_and_fractional_numbers_keep_their_value() {
        let bytes = encode(&serde_json::json!({
            "definitions": { "N": { "type": "integer", "minimum": -2.5, "maxLength": -1 } }
        }));
        // Schema.minimum (9) as a little-endian double and maxLength (11) as a ten-byte varint.
        let minimum: Vec<u8> = [0x49].into_iter().chain((-2.5f64).to_le_bytes()).collect();
        assert!(
            bytes
                .windows(minimum.len())
                .any(|w| w == minimum.as_slice())
        );
        let max_length = [
            0x58, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(bytes.windows(max_length.len()).any(|w| w == max_length));
    }
}
