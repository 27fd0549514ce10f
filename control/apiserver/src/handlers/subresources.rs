//! Subresources: status, ephemeralcontainers, scale, binding, eviction, token (log/exec/attach/portforward are proxied to
//! the kubelet before they get here: see `node_proxy`).

use http::{Response, StatusCode};
use serde_json::{Value, json};

use baton_store::Store;

use super::Call;
use super::read::read_object;
use super::write::{WrittenPart, patch, update};
use crate::ApiServer;
use crate::body::{Body, json_response, parse_object};
use crate::objects::Decision;
use crate::resources::printers::selector_to_string;
use crate::status::{FieldCause, StatusError, success_status};

/// Serves `<resource>/<name>/<subresource>`.
pub async fn dispatch<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    sub: &str,
) -> Result<Response<Body>, StatusError> {
    let verb = call.info.verb;
    match (sub, verb) {
        ("status" | "ephemeralcontainers", "get") => super::read::get(server, call).await,
        ("status", "update") => update(server, call, WrittenPart::Status).await,
        ("status", "patch") => patch(server, call, WrittenPart::Status).await,
        ("ephemeralcontainers", "update") => {
            update(server, call, WrittenPart::EphemeralContainers).await
        }
        ("ephemeralcontainers", "patch") => {
            patch(server, call, WrittenPart::EphemeralContainers).await
        }
        ("finalize", "update") => update(server, call, WrittenPart::Object).await,
        ("scale", "get") => {
            let obj = read_object(server, call.resource, &call.key(), call.name()).await?;
            Ok(json_response(StatusCode::OK, &scale_of(&obj)))
        }
        ("scale", "update" | "patch") => scale(server, call).await,
        ("binding", "create") => binding(server, call).await,
        ("eviction", "create") => eviction(server, call).await,
        ("token", "create") => super::token_request::create(server, call).await,
        _ => Err(StatusError::method_not_supported(
            &call.resource.subject(),
            verb,
        )),
    }
}

/// The autoscaling/v1 Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": { "replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0) },
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_to_string(&obj["spec"]["selector"]),
        },
    })
}

async fn scale<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let name = call.name().to_string();
    let body = call.body.clone();
    let is_patch = call.info.verb == "patch";
    let patch_type = if is_patch {
        Some(crate::patch::PatchType::from_content_type(
            call.content_type,
        )?)
    } else {
        None
    };
    let result = server
        .guaranteed_update(resource, &call.key(), &name, |current| {
            let current_scale = scale_of(current);
            let wanted = match patch_type {
                Some(pt) => crate::patch::apply(&current_scale, pt, &body)?,
                None => parse_object(&body, call.content_type)?,
            };
            if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str()
                && !rv.is_empty()
                && current["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                return Err(StatusError::conflict(&resource.subject(), &name));
            }
            let replicas = wanted["spec"]["replicas"].as_i64().unwrap_or(0);
            if replicas < 0 {
                let subject = crate::status::Subject {
                    group: "autoscaling",
                    resource: "scale",
                    kind: "Scale",
                };
                return Err(StatusError::invalid(
                    &subject,
                    &name,
                    vec![FieldCause::invalid(
                        "spec.replicas",
                        &json!(replicas),
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            let mut next = current.clone();
            if next["spec"]["replicas"] != json!(replicas) {
                next["spec"]["replicas"] = json!(replicas);
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                next["metadata"]["generation"] = json!(generation);
                crate::managed_fields::record_update(
                    current,
                    &mut next,
                    &call.manager(),
                    &resource.api_version(),
                    Some("scale"),
                );
            }
            Ok(Decision::Write(next))
        })
        .await?;
    Ok(json_response(StatusCode::OK, &scale_of(&result.object)))
}

async fn binding<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let body = parse_object(&call.body, call.content_type)?;
    let node = body["target"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        let subject = crate::status::Subject {
            group: "",
            resource: "bindings",
            kind: "Binding",
        };
        return Err(StatusError::invalid(
            &subject,
            call.name(),
            vec![FieldCause::required("target.name", "")],
        ));
    }
    let name = call.name().to_string();
    let resource = call.resource;
    server.guaranteed_update(resource, &call.key(), &name, |current| {
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return Err(StatusError::conflict_with(&resource.subject(), &name, "pod is being deleted, cannot be assigned to a host"));
        }
        if let Some(existing) = current["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(StatusError::conflict_with(&resource.subject(), &name, &format!("pod {name} is already assigned to node {existing:?}")));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        let mut conditions: Vec<Value> = next["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions.push(json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::write::now_rfc3339() }));
        next["status"]["conditions"] = Value::Array(conditions);
        Ok(Decision::Write(next))
    })
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &success_status(&resource.subject(), &name, None),
    ))
}

async fn eviction<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let body = parse_object(&call.body, call.content_type)?;
    let pod = read_object(server, call.resource, &call.key(), call.name()).await?;
    let dry_run = call.query.dry_run()?
        || body["deleteOptions"]["dryRun"]
            .as_array()
            .is_some_and(|modes| modes.iter().any(|m| m == "All"));
    super::disruption_budget::take_disruption(server, &pod, dry_run).await?;
    let mut delete_call_body = body["deleteOptions"].clone();
    if delete_call_body.is_null() {
        delete_call_body = json!({});
    }
    let delete_info = crate::request::RequestInfo {
        subresource: None,
        verb: "delete",
        ..call.info.clone()
    };
    let bytes = bytes::Bytes::from(serde_json::to_vec(&delete_call_body).expect("JSON"));
    let delete_call = Call {
        info: &delete_info,
        resource: call.resource,
        query: call.query,
        wanted: call.wanted,
        content_type: "application/json",
        body: bytes,
        user: call.user,
        user_agent: call.user_agent,
    };
    super::delete::delete(server, &delete_call).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &success_status(&call.resource.subject(), call.name(), None),
    ))
}
