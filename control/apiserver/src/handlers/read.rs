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
    let mut obj = decode(&kv)?;
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

fn partial_metadata(obj: &Value) -> Value {
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

/// How many keys an unlimited list reads from the store at a time.
const STORE_PAGE: i64 = 1000;

/// Reads objects of a list request, honouring limit/continue/resourceVersion and selectors.
pub async fn read_list<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    params: &ListParams,
) -> Result<Listed, StatusError> {
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
    if start.is_none()
        && let Some(rv) = call.query.get("resourceVersion")
    {
        let rv = parse_rv(rv)?;
        match call.query.get("resourceVersionMatch") {
            Some("Exact") => revision = rv,
            Some("NotOlderThan") | None => {}
            Some(other) => {
                return Err(StatusError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        }
    }
    let mut items = vec![];
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
        revision = rev;
        let fetched = kvs.len();
        let mut consumed = 0usize;
        let mut last_key = None;
        for kv in kvs {
            consumed += 1;
            let mut obj = decode(&kv)?;
            last_key = Some(kv.key);
            if selected(params, &obj) {
                set_type(resource, &mut obj);
                items.push(obj);
            }
            if limit > 0 && items.len() as i64 >= limit {
                break;
            }
        }
        let has_more = more || consumed < fetched;
        let Some(last) = last_key.filter(|_| has_more) else {
            return Ok(Listed {
                items,
                revision,
                continue_token: None,
                remaining: None,
            });
        };
        let next_start = format!("{}\u{0}", &last[prefix.len()..]);
        if limit > 0 && items.len() as i64 >= limit {
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
            return Ok(Listed {
                items,
                revision,
                continue_token: Some(token),
                remaining,
            });
        }
        start = Some(next_start);
    }
}

/// LIST.
pub async fn list<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let params = list_params(call)?;
    let listed = read_list(server, call, &params).await?;
    let mut meta = json!({ "resourceVersion": listed.revision.to_string() });
    if let Some(token) = &listed.continue_token {
        meta["continue"] = json!(token);
        if let Some(remaining) = listed.remaining.filter(|r| *r > 0) {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
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
