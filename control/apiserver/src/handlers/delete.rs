//! delete and deletecollection: graceful deletion of pods, finalizers, propagationPolicy.

use http::{Response, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use baton_store::Store;

use super::read::{list_params, read_list};
use super::{Call, set_type};
use crate::ApiServer;
use crate::body::{Body, json_response, parse_object};
use crate::objects::Decision;
use crate::status::{StatusError, success_status};

/// DeleteOptions from the body and the query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    grace_period: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

fn options(call: &Call<'_>) -> Result<DeleteOptions, StatusError> {
    let body: Value = if call.body.is_empty() {
        Value::Null
    } else {
        parse_object(&call.body, call.content_type)?
    };
    let propagation = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| call.query.get("propagationPolicy").map(str::to_string));
    if let Some(p) = &propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(StatusError::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    let dry_run = call.query.dry_run()?
        || body["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        grace_period: body["gracePeriodSeconds"]
            .as_i64()
            .or(call.query.int("gracePeriodSeconds")?),
        propagation,
        uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run,
    })
}

/// What a delete did.
enum Outcome {
    /// The object is gone.
    Deleted(Value),
    /// The object is marked for deletion and waits for finalizers or its grace period.
    Pending(Value),
}

async fn delete_one<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    key: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Outcome, StatusError> {
    let resource = call.resource;
    let updated = server.guaranteed_update(resource, key, name, |current| {
        let meta = &current["metadata"];
        if let Some(uid) = &opts.uid
            && meta["uid"].as_str() != Some(uid)
        {
            return Err(StatusError::conflict_with(&resource.subject(), name, &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta["uid"].as_str().unwrap_or_default()
            )));
        }
        if let Some(rv) = &opts.resource_version
            && meta["resourceVersion"].as_str() != Some(rv)
        {
            return Err(StatusError::conflict_with(&resource.subject(), name, &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta["resourceVersion"].as_str().unwrap_or_default()
            )));
        }
        let mut next = current.clone();
        let mut finalizers: Vec<Value> = meta["finalizers"].as_array().cloned().unwrap_or_default();
        match opts.propagation.as_deref() {
            Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => finalizers.push(json!("foregroundDeletion")),
            Some("Orphan") if !finalizers.contains(&json!("orphan")) => finalizers.push(json!("orphan")),
            _ => {}
        }
        let is_pod = resource.group.is_empty() && resource.kind == "Pod";
        let is_namespace = resource.group.is_empty() && resource.kind == "Namespace";
        let grace = if is_pod {
            let g = opts.grace_period.or(current["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
            // Pods never scheduled, or already finished, have nothing to stop.
            let bound = current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
            let done = matches!(current["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if bound && !done { g.max(0) } else { 0 }
        } else {
            0
        };
        if is_namespace {
            finalizers.retain(|f| f != "kubernetes");
        }
        let spec_finalizers = is_namespace && current["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if finalizers.is_empty() && grace == 0 && !spec_finalizers {
            return Ok(Decision::Delete);
        }
        // Graceful: mark, and let the finalizers' owners (or the kubelet) finish.
        // A first deletion, or a shorter grace period than the one running, sets the deadline.
        let shorter = meta["deletionGracePeriodSeconds"].as_i64().is_some_and(|old| grace < old);
        if meta["deletionTimestamp"].is_null() || shorter {
            next["metadata"]["deletionTimestamp"] = json!(super::write::rfc3339(deletion_time(grace)));
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        if !finalizers.is_empty() || meta.get("finalizers").is_some() {
            next["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        if is_namespace {
            next["status"]["phase"] = json!("Terminating");
        }
        Ok(Decision::Write(next))
    })
    .await?;
    let mut obj = updated.object;
    set_type(resource, &mut obj);
    // What the last attempt did counts: a deletion that lost its compare-and-swap may have
    // become a graceful one.
    if updated.deleted {
        if resource.is_core("Service") {
            server.release_held(&obj).await;
        }
        Ok(Outcome::Deleted(obj))
    } else {
        Ok(Outcome::Pending(obj))
    }
}

/// When a graceful deletion ends: now plus the grace period (clamped, never overflowing).
fn deletion_time(grace: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_secs(grace))
        .unwrap_or(Timestamp::MAX)
}

/// Resources whose DELETE answers with the deleted object (upstream's ReturnDeletedObject).
fn returns_deleted_object(resource: &crate::resources::Resource) -> bool {
    resource.group.is_empty()
        && matches!(
            resource.kind,
            "Pod" | "ServiceAccount" | "PersistentVolumeClaim"
        )
}

/// DELETE of one object.
pub async fn delete<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let opts = options(call)?;
    if call.resource.kind == "PriorityClass"
        && crate::priority_admission::SYSTEM_CLASSES
            .iter()
            .any(|c| c.name == call.name())
    {
        return Err(StatusError::forbidden(
            &call.resource.subject(),
            call.name(),
            "this is a system priority class and cannot be deleted",
        ));
    }
    if opts.dry_run {
        let obj = super::read::read_object(server, call.resource, &call.key(), call.name()).await?;
        return Ok(json_response(StatusCode::OK, &obj));
    }
    match delete_one(server, call, &call.key(), call.name(), &opts).await? {
        // As upstream: pods, service accounts and claims answer with the deleted object, the
        // rest with a Status; an object still being deleted is returned as it now is.
        Outcome::Deleted(obj) if returns_deleted_object(call.resource) => {
            Ok(json_response(StatusCode::OK, &obj))
        }
        Outcome::Deleted(obj) => Ok(json_response(
            StatusCode::OK,
            &success_status(
                &call.resource.subject(),
                call.name(),
                obj["metadata"]["uid"].as_str(),
            ),
        )),
        Outcome::Pending(obj) => Ok(json_response(StatusCode::OK, &obj)),
    }
}

/// DELETE of a collection (with label and field selectors).
pub async fn delete_collection<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let opts = options(call)?;
    let params = list_params(call)?;
    let listed = read_list(server, call, &params).await?;
    let mut items = vec![];
    for obj in listed.items {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let key = call.resource.key(ns.as_deref(), &name);
        if opts.dry_run {
            items.push(obj);
            continue;
        }
        match delete_one(server, call, &key, &name, &opts).await {
            Ok(Outcome::Deleted(o) | Outcome::Pending(o)) => items.push(o),
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": call.resource.list_kind(),
        "apiVersion": call.resource.api_version(),
        "metadata": { "resourceVersion": listed.revision.to_string() },
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}
