//! The resource metrics API (`metrics.k8s.io/v1beta1` nodes and pods), which `kubectl top`
//! reads: served by the API server itself, from each kubelet's Summary API
//! (`/stats/summary?only_cpu_and_memory=true`), asked at the moment of the request, where
//! upstream clusters run metrics-server behind the aggregation layer. CPU is the kubelet's
//! usage rate over its last sample window (1 to 10 s; reported as 10 s), memory the working
//! set, in metrics-server's units.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use baton_store::{ListOptions, Store};

use crate::ApiServer;
use crate::body::{Body, Query, json_response};
use crate::handlers::read::read_object;
use crate::objects::{decode, store_error};
use crate::request::RequestInfo;
use crate::resources;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{StatusError, Subject};

/// The group version served.
pub const GROUP_VERSION: (&str, &str) = ("metrics.k8s.io", "v1beta1");
/// How many kubelets are asked at once.
const KUBELETS_AT_ONCE: usize = 32;
/// How long one kubelet may take to answer.
const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest summary read from a kubelet.
const MAX_SUMMARY: usize = 16 << 20;
/// The window the kubelet's CPU rate covers.
const WINDOW: &str = "10s";

/// Whether the request is for the resource metrics API.
pub fn is_metrics_request(info: &RequestInfo) -> bool {
    info.group == GROUP_VERSION.0 && info.version == GROUP_VERSION.1
}

/// One node's figures from its kubelet.
struct NodeSummary {
    node: String,
    summary: Value,
}

/// Serves GET/list of `nodes` and `pods` under metrics.k8s.io/v1beta1.
pub async fn serve<S: Store>(
    server: &ApiServer<S>,
    info: &RequestInfo,
    query: &Query,
) -> Result<Response<Body>, StatusError> {
    let (plural, kind) = match info.resource.as_str() {
        "nodes" if info.namespace.is_none() => ("nodes", "NodeMetrics"),
        "pods" => ("pods", "PodMetrics"),
        _ => return Err(StatusError::no_such_path()),
    };
    if info.subresource.is_some() {
        return Err(StatusError::no_such_path());
    }
    if !matches!(info.verb, "get" | "list") {
        let subject = Subject {
            group: GROUP_VERSION.0,
            resource: plural,
            kind,
        };
        return Err(StatusError::method_not_supported(&subject, info.verb));
    }
    let core_kind = if plural == "nodes" { "Node" } else { "Pod" };
    let labels = match query.get("labelSelector") {
        Some(s) if !s.is_empty() => Some(LabelSelector::parse(s)?),
        _ => None,
    };
    let fields = match query.get("fieldSelector") {
        Some(s) if !s.is_empty() => Some(FieldSelector::parse(s, "", core_kind)?),
        _ => None,
    };
    let namespace = info.namespace.as_deref();
    // One object: it must exist (upstream's not-found for the object itself), then have
    // figures (metrics-server's not-found for its metrics).
    let objects = match info.name.as_deref() {
        Some(name) => {
            if plural == "pods" && namespace.is_none() {
                return Err(StatusError::no_such_path());
            }
            let resource = resources::find("", "v1", plural).expect("core resources are served");
            vec![read_object(server, resource, &resource.key(namespace, name), name).await?]
        }
        None => objects_of(server, plural, namespace).await?,
    };
    let objects: Vec<Value> = objects
        .into_iter()
        .filter(|o| {
            labels
                .as_ref()
                .is_none_or(|s| s.matches(&o["metadata"]["labels"]))
        })
        .filter(|o| fields.as_ref().is_none_or(|s| s.matches(o)))
        .collect();
    let items: Vec<Value> = if plural == "nodes" {
        let summaries = summaries(server, &objects).await;
        summaries
            .iter()
            .filter_map(|s| node_metrics(s, &objects))
            .collect()
    } else {
        let mut node_names: Vec<&str> = objects
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .filter(|n| !n.is_empty())
            .collect();
        node_names.sort_unstable();
        node_names.dedup();
        let nodes_resource = resources::find("", "v1", "nodes").expect("served");
        let mut nodes = Vec::new();
        for node in node_names {
            match read_object(
                server,
                nodes_resource,
                &nodes_resource.key(None, node),
                node,
            )
            .await
            {
                Ok(object) => nodes.push(object),
                Err(e) if e.code == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        let summaries = summaries(server, &nodes).await;
        objects
            .iter()
            .filter_map(|pod| pod_metrics(pod, &summaries))
            .collect()
    };
    let missing = info.name.as_deref().map(|name| match namespace {
        Some(ns) if plural == "pods" => format!("{ns}/{name}"),
        _ => name.to_string(),
    });
    answer(missing.as_deref(), kind, items)
}

/// The objects of a core resource (in `namespace`, or all).
async fn objects_of<S: Store>(
    server: &ApiServer<S>,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Vec<Value>, StatusError> {
    let resource = resources::find("", "v1", plural).expect("core resources are served");
    let prefix = match namespace {
        Some(ns) => format!("{}{ns}/", resource.storage_prefix),
        None => resource.storage_prefix.to_string(),
    };
    let page = server
        .store
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| store_error(resource, "", e))?;
    page.items.iter().map(decode).collect()
}

/// Each reachable node's summary, asked of [`KUBELETS_AT_ONCE`] kubelets at a time.
async fn summaries<S: Store>(server: &ApiServer<S>, nodes: &[Value]) -> Vec<NodeSummary> {
    let mut found = Vec::new();
    for chunk in nodes.chunks(KUBELETS_AT_ONCE) {
        let asks = chunk.iter().map(|node| summary_of(server, node));
        found.extend(futures::future::join_all(asks).await.into_iter().flatten());
    }
    found
}

/// One node's summary, or `None` when its kubelet does not give one in time.
async fn summary_of<S: Store>(server: &ApiServer<S>, node: &Value) -> Option<NodeSummary> {
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = "/stats/summary?only_cpu_and_memory=true";
    let got = tokio::time::timeout(
        KUBELET_TIMEOUT,
        server.kubelet_client.get(node, path, MAX_SUMMARY),
    )
    .await;
    match got {
        Ok(Ok(body)) => match serde_json::from_slice::<Value>(&body) {
            Ok(summary) => Some(NodeSummary {
                node: name,
                summary,
            }),
            Err(err) => {
                tracing::debug!(node = name, %err, "a kubelet's summary is not JSON");
                None
            }
        },
        Ok(Err(err)) => {
            tracing::debug!(node = name, %err, "no metrics from a kubelet");
            None
        }
        Err(_) => {
            tracing::debug!(node = name, "no metrics from a kubelet in time");
            None
        }
    }
}

/// `{cpu, memory}` from a summary's `cpu` and `memory` objects; `None` without both figures.
fn usage(cpu: &Value, memory: &Value) -> Option<Value> {
    let nano_cores = cpu["usageNanoCores"].as_u64()?;
    let working_set = memory["workingSetBytes"].as_u64()?;
    Some(json!({
        "cpu": format!("{nano_cores}n"),
        "memory": format!("{}Ki", working_set / 1024),
    }))
}

fn node_metrics(summary: &NodeSummary, nodes: &[Value]) -> Option<Value> {
    let node = &summary.summary["node"];
    let usage = usage(&node["cpu"], &node["memory"])?;
    let labels = nodes
        .iter()
        .find(|n| n["metadata"]["name"] == summary.node.as_str())
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or(Value::Null);
    Some(json!({
        "metadata": { "name": summary.node, "creationTimestamp": crate::handlers::now(), "labels": labels },
        "timestamp": node["cpu"]["time"],
        "window": WINDOW,
        "usage": usage,
    }))
}

fn pod_metrics(pod: &Value, summaries: &[NodeSummary]) -> Option<Value> {
    let node = pod["spec"]["nodeName"].as_str()?;
    let namespace = pod["metadata"]["namespace"].as_str()?;
    let name = pod["metadata"]["name"].as_str()?;
    let summary = summaries.iter().find(|s| s.node == node)?;
    let stats = summary.summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["namespace"] == namespace && p["podRef"]["name"] == name)?;
    // metrics-server leaves out a pod unless it has figures for every container.
    let containers: Vec<Value> = stats["containers"]
        .as_array()?
        .iter()
        .map(|c| Some(json!({ "name": c["name"], "usage": usage(&c["cpu"], &c["memory"])? })))
        .collect::<Option<_>>()?;
    if containers.is_empty() {
        return None;
    }
    let timestamp = if stats["cpu"]["time"].is_string() {
        stats["cpu"]["time"].clone()
    } else {
        stats["containers"]
            .as_array()?
            .iter()
            .filter_map(|c| c["cpu"]["time"].as_str())
            .min()
            .map_or(Value::Null, |t| json!(t))
    };
    Some(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": crate::handlers::now(),
            "labels": pod["metadata"]["labels"],
        },
        "timestamp": timestamp,
        "window": WINDOW,
        "containers": containers,
    }))
}

/// One object (`missing` names it as metrics-server does in its not-found) or the list.
fn answer(
    missing: Option<&str>,
    kind: &'static str,
    items: Vec<Value>,
) -> Result<Response<Body>, StatusError> {
    let api_version = format!("{}/{}", GROUP_VERSION.0, GROUP_VERSION.1);
    match missing {
        Some(name) => {
            let mut item = items.into_iter().next().ok_or_else(|| {
                let resource = if kind == "NodeMetrics" {
                    "nodemetrics"
                } else {
                    "podmetrics"
                };
                let subject = Subject {
                    group: GROUP_VERSION.0,
                    resource,
                    kind,
                };
                StatusError::not_found(&subject, name)
            })?;
            item["kind"] = json!(kind);
            item["apiVersion"] = json!(api_version);
            Ok(json_response(StatusCode::OK, &item))
        }
        None => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": api_version,
                "metadata": {},
                "items": items,
            }),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> NodeSummary {
        NodeSummary {
            node: "n1".into(),
            summary: json!({
                "node": { "cpu": { "time": "2026-01-01T00:00:00Z", "usageNanoCores": 250_000_000u64 },
                          "memory": { "workingSetBytes": 1_048_576u64 } },
                "pods": [{
                    "podRef": { "name": "web", "namespace": "shop" },
                    "cpu": { "time": "2026-01-01T00:00:00Z" },
                    "containers": [
                        { "name": "app", "cpu": { "usageNanoCores": 1_000u64 }, "memory": { "workingSetBytes": 4096u64 } },
                        { "name": "starting", "cpu": {}, "memory": {} },
                    ],
                }],
            }),
        }
    }

    #[test]
    fn node_and_pod_usage_in_metrics_server_units() {
        let nodes = [json!({ "metadata": { "name": "n1", "labels": { "zone": "a" } } })];
        let node = node_metrics(&summary(), &nodes).unwrap();
        assert_eq!(
            node["usage"],
            json!({ "cpu": "250000000n", "memory": "1024Ki" })
        );
        assert_eq!(node["metadata"]["labels"]["zone"], "a");
        let pod = json!({ "metadata": { "name": "web", "namespace": "shop" }, "spec": { "nodeName": "n1" } });
        let metrics = pod_metrics(&pod, &[summary()]);
        assert!(
            metrics.is_none(),
            "a container without figures: {metrics:?}"
        );
        let mut ready = summary();
        ready.summary["pods"][0]["containers"][1] = json!({
            "name": "starting", "cpu": { "usageNanoCores": 2_000u64 }, "memory": { "workingSetBytes": 8192u64 },
        });
        let metrics = pod_metrics(&pod, &[ready]).unwrap();
        assert_eq!(
            metrics["containers"],
            json!([
                { "name": "app", "usage": { "cpu": "1000n", "memory": "4Ki" } },
                { "name": "starting", "usage": { "cpu": "2000n", "memory": "8Ki" } },
            ])
        );
        let elsewhere = json!({ "metadata": { "name": "web", "namespace": "shop" }, "spec": { "nodeName": "n2" } });
        assert!(pod_metrics(&elsewhere, &[summary()]).is_none());
    }
}
