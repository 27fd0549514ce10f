//! watch: a chunked stream of JSON watch events (or Table rows for `kubectl get -w`), served
//! from the resource's watch cache, with bookmarks and timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use baton_store::{Store, StoreError};

use super::read::{ListParams, list_params, partial_metadata, read_list, selected};
use super::{Call, set_type};
use crate::ApiServer;
use crate::body::{Body, Wanted};
use crate::objects::parse_rv;
use crate::resources::Resource;
use crate::status::StatusError;
use crate::watch_cache::{CachedEvent, Delivery, EventType, convert};

/// How often bookmarks are sent to watchers that allow them.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);

/// One watcher's view: what to filter and how to encode.
struct Watcher {
    resource: &'static Resource,
    namespace: Option<String>,
    params: ListParams,
    table: bool,
    /// PartialObjectMetadata instead of whole objects (metadata informers).
    metadata_only: bool,
    include: String,
    filtered: bool,
    sent_headers: bool,
    no_headers: bool,
}

impl Watcher {
    fn in_scope(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.in_scope(obj) && selected(&self.params, obj)
    }

    /// The event type this watcher should see for a change, if any.
    fn view(&self, kind: EventType, object: &Value, previous: Option<&Value>) -> Option<EventType> {
        if !self.filtered {
            return Some(kind);
        }
        let now = self.matches(object);
        let before = previous.map_or(now, |p| self.matches(p));
        match kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => before.then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }

    fn encode(&mut self, kind: &str, obj: &Value) -> Bytes {
        let mut obj = obj.clone();
        set_type(self.resource, &mut obj);
        let object = if self.metadata_only && kind != "BOOKMARK" && kind != "ERROR" {
            partial_metadata(&obj)
        } else if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            let rv = obj["metadata"]["resourceVersion"].clone();
            let mut t = table_for(
                self.resource,
                &self.include,
                &obj,
                json!({ "resourceVersion": rv }),
            );
            if (self.sent_headers || self.no_headers)
                && let Some(m) = t.as_object_mut()
            {
                m.remove("columnDefinitions");
            }
            self.sent_headers = true;
            t
        } else {
            obj
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("JSON");
        line.push(b'\n');
        Bytes::from(line)
    }

    fn event_line(&mut self, event: &CachedEvent) -> Option<Bytes> {
        if !self.resource.stored_as_served() {
            // Stored in another form (events.k8s.io Events): convert, then filter and encode.
            let object = self.resource.from_storage(event.object().clone());
            let previous = event
                .previous()
                .cloned()
                .map(|p| self.resource.from_storage(p));
            let kind = self.view(event.kind, &object, previous.as_ref())?;
            let shown = match &previous {
                Some(previous) if left_selection(kind, event.kind) => previous,
                _ => &object,
            };
            return Some(self.encode(kind.as_str(), shown));
        }
        let kind = if self.filtered {
            self.view(event.kind, event.selectable(), event.previous_selectable())?
        } else {
            event.kind
        };
        let left = left_selection(kind, event.kind);
        if self.metadata_only {
            return Some(if left {
                metadata_line(kind.as_str(), &event.previous_metadata())
            } else {
                metadata_line(kind.as_str(), event.metadata())
            });
        }
        if !self.table {
            return Some(event.json_line_as(kind));
        }
        let object = match event.previous() {
            Some(previous) if left => previous,
            _ => event.object(),
        };
        Some(self.encode(kind.as_str(), object))
    }
}

/// Whether a watcher sees a change as the object leaving its selection, which shows the object
/// as it was before the change (as upstream's watch cache does).
fn left_selection(seen: EventType, happened: EventType) -> bool {
    seen == EventType::Deleted && happened == EventType::Modified
}

/// A watch event of a PartialObjectMetadata holding `metadata`.
fn metadata_line(kind: &str, metadata: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: Partial<'a>,
    }
    #[derive(serde::Serialize)]
    struct Partial<'a> {
        kind: &'static str,
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        metadata: &'a Value,
    }
    let line = Line {
        kind,
        object: Partial {
            kind: "PartialObjectMetadata",
            api_version: "meta.k8s.io/v1",
            metadata,
        },
    };
    let mut bytes = serde_json::to_vec(&line).expect("JSON values always serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn table_for(resource: &'static Resource, include: &str, obj: &Value, meta: Value) -> Value {
    let now = jiff::Timestamp::now();
    let object = match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => partial_metadata(obj),
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": crate::resources::printers::column_definitions(resource.group, resource.kind),
        "rows": [{ "cells": crate::resources::printers::cells(resource.group, resource.kind, obj, now), "object": object }],
    })
}

fn bookmark(resource: &Resource, revision: i64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": revision.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let obj =
        json!({ "kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta });
    let mut line = serde_json::to_vec(&json!({ "type": "BOOKMARK", "object": obj })).expect("JSON");
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(err: &StatusError) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": "ERROR", "object": err.to_status() })).expect("JSON");
    line.push(b'\n');
    Bytes::from(line)
}

/// GET with watch=true.
pub async fn watch<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let mut params = list_params(call)?;
    // A watch of one named object is a watch with a metadata.name field selector, as upstream.
    if let Some(name) = call.info.name.as_deref() {
        let extra = crate::selectors::FieldSelector::parse(
            &format!("metadata.name={name}"),
            resource.group,
            resource.kind,
        )?;
        params.fields.extend(extra);
    }
    let timeout = call
        .query
        .int("timeoutSeconds")?
        .filter(|t| *t > 0)
        .map_or_else(
            // Upstream picks a random timeout between 30 and 60 minutes.
            || Duration::from_secs(1800 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 7),
            |t| Duration::from_secs(t as u64),
        );
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let send_initial = call.query.get("sendInitialEvents").map(|v| v == "true");
    let rv = call.query.get("resourceVersion");
    let cache = server
        .caches
        .get(resource)
        .await
        .map_err(|e| crate::objects::store_error(resource, "", e))?;

    // Initial state: synthetic ADDED events for everything that exists, then changes after it.
    let list_first = match send_initial {
        Some(v) => v,
        None => matches!(rv, None | Some("0")),
    };
    let mut initial = vec![];
    let after = if list_first {
        let listed = read_list(
            server,
            &Call {
                query: &crate::body::Query::default(),
                ..clone_call(call)
            },
            &params,
        )
        .await?;
        initial = listed.items;
        listed.revision
    } else {
        match rv {
            // No initial events and no version: start from now.
            None | Some("0") => cache
                .latest_revision()
                .max(server.store.current_revision().await.unwrap_or(0)),
            Some(rv) => parse_rv(rv)?,
        }
    };

    let mut watcher = Watcher {
        resource,
        namespace: call.namespace().map(str::to_string),
        filtered: !params.labels.is_empty()
            || !params.fields.is_empty()
            || call.namespace().is_some(),
        params,
        table: call.wanted == Wanted::Table,
        metadata_only: call.wanted == Wanted::Metadata,
        include: call
            .query
            .get("includeObject")
            .unwrap_or("Metadata")
            .to_string(),
        sent_headers: false,
        no_headers: call.query.flag("noHeaders"),
    };
    let subscription = cache.subscribe(after);
    let store = server.store.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let initial_end_bookmark = send_initial == Some(true) && bookmarks;
    server.metrics.watchers_add(1);
    let metrics = server.metrics.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let run = async {
            for obj in &initial {
                let line = watcher.encode("ADDED", obj);
                tx.send(line).await.ok()?;
            }
            if initial_end_bookmark {
                tx.send(bookmark(resource, after, true)).await.ok()?;
            }
            match subscription {
                Some(sub) => serve_cached(&mut watcher, after, sub, &tx, bookmarks, cache).await,
                None => serve_direct(&mut watcher, store, after, &tx).await,
            }
        };
        tokio::select! {
            _ = run => {}
            _ = &mut deadline => {}
            _ = tx.closed() => {}
        }
        metrics.watchers_add(-1);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *resp.status_mut() = StatusCode::OK;
    let ct = if call.wanted == Wanted::Metadata {
        "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
    } else if call.wanted == Wanted::Table {
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    } else {
        "application/json"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

fn clone_call<'a>(call: &Call<'a>) -> Call<'a> {
    Call {
        info: call.info,
        resource: call.resource,
        query: call.query,
        wanted: call.wanted,
        content_type: call.content_type,
        body: call.body.clone(),
        user: call.user,
        user_agent: call.user_agent,
    }
}

async fn serve_cached(
    watcher: &mut Watcher,
    after: i64,
    subscription: crate::watch_cache::Subscription,
    tx: &mpsc::Sender<Bytes>,
    bookmarks: bool,
    cache: Arc<crate::watch_cache::WatchCache>,
) -> Option<()> {
    // The backlog and the live channel never overlap (the cache subscribes and sends under one
    // lock), but when the requested revision is ahead of the cache, the live channel still
    // carries changes at or before it. `last` is the newest revision sent, for bookmarks.
    let mut last = after;
    let crate::watch_cache::Subscription { backlog, mut live } = subscription;
    for event in backlog {
        last = event.revision;
        if let Some(line) = watcher.event_line(&event) {
            tx.send(line).await.ok()?;
        }
    }
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            delivery = live.recv() => match delivery {
                Ok(Delivery::Event(event)) => forward(watcher, &event, after, &mut last, tx).await?,
                // A lagging or reset watcher ends; the client resumes from its last resourceVersion.
                Ok(Delivery::Reset) | Err(_) => return None,
            },
            _ = ticker.tick(), if bookmarks => {
                // Everything up to `latest` is already in the channel: send it first, so that
                // no bookmark ever gets ahead of an event.
                let latest = cache.latest_revision();
                loop {
                    match live.try_recv() {
                        Ok(Delivery::Event(event)) => forward(watcher, &event, after, &mut last, tx).await?,
                        Ok(Delivery::Reset) | Err(broadcast::error::TryRecvError::Lagged(_)) => return None,
                        Err(_) => break,
                    }
                }
                tx.send(bookmark(watcher.resource, latest.max(last), false)).await.ok()?;
            }
        }
    }
}

/// Sends one live event to the watcher, unless it is at or before the requested revision.
/// Several events may share a revision (etcd deleting many keys in one transaction): all go.
async fn forward(
    watcher: &mut Watcher,
    event: &CachedEvent,
    after: i64,
    last: &mut i64,
    tx: &mpsc::Sender<Bytes>,
) -> Option<()> {
    if event.revision <= after {
        return Some(());
    }
    *last = (*last).max(event.revision);
    if let Some(line) = watcher.event_line(event) {
        tx.send(line).await.ok()?;
    }
    Some(())
}

async fn serve_direct<S: Store>(
    watcher: &mut Watcher,
    store: Arc<S>,
    after: i64,
    tx: &mpsc::Sender<Bytes>,
) -> Option<()> {
    let mut stream = match store.watch(watcher.resource.storage_prefix, after).await {
        Ok(s) => s,
        Err(e) => {
            tx.send(error_line(&watch_error(after, e))).await.ok()?;
            return None;
        }
    };
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(batch) => {
                for event in &batch.events {
                    if let Some(converted) = convert(event)
                        && let Some(line) = watcher.event_line(&converted)
                    {
                        tx.send(line).await.ok()?;
                    }
                }
            }
            Err(e) => {
                tx.send(error_line(&watch_error(after, e))).await.ok()?;
                return None;
            }
        }
    }
    None
}

fn watch_error(after: i64, e: StoreError) -> StatusError {
    match e {
        StoreError::Compacted { compacted, .. } => {
            StatusError::expired(format!("too old resource version: {after} ({compacted})"))
        }
        other => {
            tracing::warn!(error = %other, "direct store watch failed");
            StatusError::internal("watch of the store failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::{FieldSelector, LabelSelector};

    fn watcher(metadata_only: bool, fields: &str) -> Watcher {
        let resource = crate::resources::find_kind("", "Pod").expect("pods");
        Watcher {
            resource,
            namespace: None,
            filtered: !fields.is_empty(),
            params: ListParams {
                labels: LabelSelector::parse("").unwrap(),
                fields: FieldSelector::parse(fields, "", "Pod").unwrap(),
            },
            table: false,
            metadata_only,
            include: "Metadata".into(),
            sent_headers: false,
            no_headers: false,
        }
    }

    fn event(kind: EventType, object: &Value, previous: Option<&Value>) -> CachedEvent {
        let bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap());
        CachedEvent::new(kind, 42, bytes(object), previous.map(bytes))
    }

    #[test]
    fn metadata_watchers_get_the_metadata_of_the_whole_object() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "ownerReferences": [{"uid": "u"}]},
            "spec": {"nodeName": "a", "containers": [{"name": "c"}]}});
        let event = event(EventType::Modified, &pod, Some(&pod));
        let mut watcher = watcher(true, "");
        let line = watcher.event_line(&event).unwrap();
        let mut object = pod.clone();
        object["metadata"]["resourceVersion"] = json!("42");
        let expected = watcher.encode("MODIFIED", &object);
        assert_eq!(
            serde_json::from_slice::<Value>(&line).unwrap(),
            serde_json::from_slice::<Value>(&expected).unwrap()
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&line).unwrap()["object"]["metadata"]["resourceVersion"],
            "42"
        );
    }

    #[test]
    fn filtered_watchers_see_objects_enter_and_leave_their_selection() {
        let before = json!({"metadata": {"name": "p"}, "spec": {"nodeName": ""}});
        let after = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "a"}});
        let bound = event(EventType::Modified, &after, Some(&before));
        let unassigned = |line: Option<Bytes>| {
            line.map(|l| serde_json::from_slice::<Value>(&l).unwrap()["type"].clone())
        };
        assert_eq!(
            unassigned(watcher(false, "spec.nodeName=").event_line(&bound)),
            Some(json!("DELETED"))
        );
        // As upstream: the object as it was before the change, at the change's revision.
        let line = watcher(false, "spec.nodeName=").event_line(&bound).unwrap();
        let deleted: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(deleted["object"]["spec"]["nodeName"], "");
        assert_eq!(deleted["object"]["metadata"]["resourceVersion"], "42");
        let line = watcher(true, "spec.nodeName=").event_line(&bound).unwrap();
        let deleted: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(deleted["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(deleted["object"]["metadata"]["resourceVersion"], "42");
        let line = watcher(false, "spec.nodeName=a")
            .event_line(&bound)
            .unwrap();
        let added: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(added["object"]["spec"]["nodeName"], "a");
        assert_eq!(
            unassigned(watcher(false, "spec.nodeName=a").event_line(&bound)),
            Some(json!("ADDED"))
        );
        assert_eq!(
            unassigned(watcher(true, "spec.nodeName=b").event_line(&bound)),
            None
        );
    }
}
