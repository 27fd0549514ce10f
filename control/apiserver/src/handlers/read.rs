//! get and list, as objects or as kubectl's Tables.

use http::{Response, StatusCode};
use jiff::Timestamp;
use serde_json::{Value, json};

use baton_store::Store;

use super::{Call, set_type};
use crate::ApiServer;
use crate::body::{Body, Wanted, json_response};
use crate::objects::{Continue, decode, list_page, parse_rv, store_error};
use crate::resources::{Resource, printers};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::StatusError;
use baton_store::KeyValue;

/// GET of one object.
pub async fn get<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let obj = read_object(server, call.resource, &call.key(), call.name()).await?;
    Ok(json_response(StatusCode::OK, &render_one(call, obj)))
}

/// Reads one object by key, or 404.
pub async fn read_object<S: Store>(
    server: &ApiServer<S>,
    resource: &Resource,
    key: &str,
    name: &str,
) -> Result<Value, StatusError> {
    let kv = server
        .store
        .get(key)
        .await
        .map_err(|e| store_error(resource, name, e))?
        .ok_or_else(|| StatusError::not_found(&resource.subject(), name))?;
    let mut obj = resource.from_storage(decode(&kv)?);
    set_type(resource, &mut obj);
    Ok(obj)
}

/// Renders one object as the client asked (object, Table, or metadata).
pub fn render_one(call: &Call<'_>, obj: Value) -> Value {
    match call.wanted {
        Wanted::Object => obj,
        Wanted::Metadata => partial_metadata(&obj),
        Wanted::Table => {
            let rv = obj["metadata"]["resourceVersion"].clone();
            table(
                call,
                std::slice::from_ref(&obj),
                json!({ "resourceVersion": rv }),
            )
        }
    }
}

/// An object as meta.k8s.io PartialObjectMetadata (what metadata informers ask for).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"] })
}

/// A meta.k8s.io/v1 Table of objects.
pub fn table(call: &Call<'_>, objs: &[Value], list_meta: Value) -> Value {
    let r = call.resource;
    let now = Timestamp::now();
    let include = call.query.get("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => partial_metadata(o),
            };
            json!({ "cells": printers::cells(r.group, r.kind, o, now), "object": object })
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": rows,
    });
    if !call.query.flag("noHeaders") {
        table["columnDefinitions"] = printers::column_definitions(r.group, r.kind);
    }
    table
}

/// The list options of a request.
#[derive(Debug)]
pub struct ListParams {
    /// labelSelector
    pub labels: LabelSelector,
    /// fieldSelector
    pub fields: FieldSelector,
}

/// Parses labelSelector and fieldSelector.
pub fn list_params(call: &Call<'_>) -> Result<ListParams, StatusError> {
    let labels = LabelSelector::parse(call.query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(
        call.query.get("fieldSelector").unwrap_or_default(),
        call.resource.group,
        call.resource.kind,
    )?;
    Ok(ListParams { labels, fields })
}

/// Whether an object passes a list's selectors.
pub fn selected(params: &ListParams, obj: &Value) -> bool {
    params.labels.matches(&obj["metadata"]["labels"]) && params.fields.matches(obj)
}

/// The result of reading a (possibly paged) list.
#[derive(Debug)]
pub struct Listed {
    /// Matching objects.
    pub items: Vec<Value>,
    /// The revision the list was read at.
    pub revision: i64,
    /// The continue token, if more follow.
    pub continue_token: Option<String>,
    /// How many keys remain after this page (before selectors).
    pub remaining: Option<i64>,
}

/// Where the keys of a list go, one at a time.
trait ListSink {
    /// Takes one stored object; returns whether it counts as a returned item.
    fn accept(&mut self, kv: KeyValue) -> Result<bool, StatusError>;
}

/// Decodes, filters by selectors, and keeps the objects.
struct DecodedItems<'a> {
    resource: &'static Resource,
    params: &'a ListParams,
    items: Vec<Value>,
}

impl ListSink for DecodedItems<'_> {
    fn accept(&mut self, kv: KeyValue) -> Result<bool, StatusError> {
        let mut obj = self.resource.from_storage(decode(&kv)?);
        if !selected(self.params, &obj) {
            return Ok(false);
        }
        set_type(self.resource, &mut obj);
        self.items.push(obj);
        Ok(true)
    }
}

/// Copies stored JSON into the response as it is, with the resourceVersion spliced into
/// metadata: no decoding, for unfiltered JSON lists (what informers and `list` calls ask).
struct RawItems {
    out: Vec<u8>,
    count: usize,
}

impl ListSink for RawItems {
    fn accept(&mut self, kv: KeyValue) -> Result<bool, StatusError> {
        if self.count > 0 {
            self.out.push(b',');
        }
        if !crate::objects::write_with_resource_version(&mut self.out, &kv.value, kv.mod_revision) {
            let obj = decode(&kv)?;
            serde_json::to_writer(&mut self.out, &obj)
                .map_err(|e| StatusError::internal(e.to_string()))?;
        }
        self.count += 1;
        Ok(true)
    }
}

/// Where a list ended.
#[derive(Debug)]
struct ListEnd {
    revision: i64,
    continue_token: Option<String>,
    remaining: Option<i64>,
}

/// How many keys an unlimited list reads from the store at a time.
const STORE_PAGE: i64 = 1000;

/// Reads objects of a list request, honouring limit/continue/resourceVersion and selectors.
pub async fn read_list<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    params: &ListParams,
) -> Result<Listed, StatusError> {
    let mut sink = DecodedItems {
        resource: call.resource,
        params,
        items: vec![],
    };
    let end = read_into(server, call, params, &mut sink).await?;
    Ok(Listed {
        items: sink.items,
        revision: end.revision,
        continue_token: end.continue_token,
        remaining: end.remaining,
    })
}

async fn read_into<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    params: &ListParams,
    sink: &mut impl ListSink,
) -> Result<ListEnd, StatusError> {
    let resource = call.resource;
    let mut namespace = call.namespace().map(str::to_string);
    if namespace.is_none() && resource.namespaced {
        namespace = params
            .fields
            .required_value("metadata.namespace")
            .map(str::to_string);
    }
    let prefix = resource.list_prefix(namespace.as_deref());
    let limit = call.query.int("limit")?.unwrap_or(0).max(0);
    let (mut start, mut revision) = match call.query.get("continue") {
        Some(token) => {
            let c = Continue::decode(token)?;
            (Some(c.start), c.revision)
        }
        None => (None, 0),
    };
    // Upstream's ValidateListOptions.
    let rv_param = call.query.get("resourceVersion");
    let rv_match = call.query.get("resourceVersionMatch");
    if rv_match.is_some() && rv_param.is_none() {
        return Err(StatusError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if start.is_some() && rv_param.is_some_and(|rv| rv != "0") {
        return Err(StatusError::bad_request(
            "resourceVersion: Forbidden: specifying resource version is not allowed when using continue",
        ));
    }
    if rv_match == Some("Exact") && rv_param == Some("0") {
        return Err(StatusError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ));
    }
    let mut not_older_than = 0;
    if start.is_none()
        && let Some(rv) = rv_param
    {
        let rv = parse_rv(rv)?;
        match rv_match {
            Some("Exact") => revision = rv,
            Some("NotOlderThan") | None => not_older_than = rv,
            Some(other) => {
                return Err(StatusError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        }
    }
    let mut returned: i64 = 0;
    let filtering = !params.labels.is_empty() || !params.fields.is_empty();
    loop {
        // Unlimited lists are read in chunks too, at one revision, to bound each etcd response.
        let page_size = if limit > 0 { limit } else { STORE_PAGE };
        let (kvs, rev, more, count) = list_page(
            &server.store,
            resource,
            &prefix,
            start.as_deref(),
            page_size,
            revision,
        )
        .await?;
        if rev < not_older_than {
            return Err(StatusError::timeout(format!(
                "Too large resource version: {not_older_than}, current: {rev}"
            )));
        }
        revision = rev;
        let fetched = kvs.len();
        let mut consumed = 0usize;
        let mut last_key = None;
        for kv in kvs {
            consumed += 1;
            last_key = Some(kv.key.clone());
            if sink.accept(kv)? {
                returned += 1;
            }
            if limit > 0 && returned >= limit {
                break;
            }
        }
        let has_more = more || consumed < fetched;
        let Some(last) = last_key.filter(|_| has_more) else {
            return Ok(ListEnd {
                revision,
                continue_token: None,
                remaining: None,
            });
        };
        let next_start = format!("{}\u{0}", &last[prefix.len()..]);
        if limit > 0 && returned >= limit {
            let token = Continue {
                revision,
                start: next_start,
            }
            .encode();
            // The remaining count is only exact without selectors.
            let remaining = if filtering {
                None
            } else {
                Some(count - consumed as i64)
            };
            return Ok(ListEnd {
                revision,
                continue_token: Some(token),
                remaining,
            });
        }
        start = Some(next_start);
    }
}

fn list_metadata(end_revision: i64, continue_token: Option<&str>, remaining: Option<i64>) -> Value {
    let mut meta = json!({ "resourceVersion": end_revision.to_string() });
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
        if let Some(remaining) = remaining.filter(|r| *r > 0) {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    meta
}

/// LIST.
pub async fn list<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let params = list_params(call)?;
    if call.resource.stored_as_served()
        && call.wanted == Wanted::Object
        && params.labels.is_empty()
        && params.fields.is_empty()
    {
        let mut sink = RawItems {
            out: Vec::with_capacity(64 * 1024),
            count: 0,
        };
        sink.out.extend_from_slice(b"{\"items\":[");
        let end = read_into(server, call, &params, &mut sink).await?;
        let meta = list_metadata(end.revision, end.continue_token.as_deref(), end.remaining);
        let tail = json!({
            "kind": call.resource.list_kind(),
            "apiVersion": call.resource.api_version(),
            "metadata": meta,
        });
        let tail = serde_json::to_vec(&tail).expect("JSON");
        sink.out.extend_from_slice(b"],");
        sink.out.extend_from_slice(&tail[1..]);
        return Ok(crate::body::json_bytes_response(StatusCode::OK, sink.out));
    }
    let listed = read_list(server, call, &params).await?;
    let meta = list_metadata(
        listed.revision,
        listed.continue_token.as_deref(),
        listed.remaining,
    );
    let body = match call.wanted {
        Wanted::Table => table(call, &listed.items, meta),
        Wanted::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "items": listed.items.iter().map(partial_metadata).collect::<Vec<_>>(),
        }),
        Wanted::Object => json!({
            "kind": call.resource.list_kind(),
            "apiVersion": call.resource.api_version(),
            "metadata": meta,
            "items": listed.items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}
