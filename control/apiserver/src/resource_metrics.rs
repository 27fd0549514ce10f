//! The resource metrics API (`metrics.k8s.io/v1beta1` nodes and pods), which `kubectl top`
//! reads: served by the API server itself, from each kubelet's Summary API
//! (`/stats/summary?only_cpu_and_memory=true`), asked at the moment of the request, where
//! upstream clusters run metrics-server behind the aggregation layer. CPU is the kubelet's
//! 10-second usage rate, memory the working set, as metrics-server reports them.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use baton_store::{ListOptions, Store};

use crate::ApiServer;
use crate::body::{Body, Query, json_response};
use crate::objects::{decode, store_error};
use crate::request::RequestInfo;
use crate::resources;
use crate::selectors::LabelSelector;
use crate::status::{StatusError, Subject};

/// The group version served.
pub const GROUP_VERSION: (&str, &str) = ("metrics.k8s.io", "v1beta1");
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
    if !matches!(info.verb, "get" | "list") || info.subresource.is_some() {
        return Err(StatusError::no_such_path());
    }
    let selector = match query.get("labelSelector") {
        Some(s) if !s.is_empty() => Some(LabelSelector::parse(s)?),
        _ => None,
    };
    let name = info.name.as_deref();
    match info.resource.as_str() {
        "nodes" if info.namespace.is_none() => {
            let nodes = objects_of(server, "nodes", None).await?;
            let nodes: Vec<Value> = nodes
                .into_iter()
                .filter(|n| name.is_none_or(|name| n["metadata"]["name"] == name))
                .filter(|n| {
                    selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&n["metadata"]["labels"]))
                })
                .collect();
            let summaries = summaries(server, &nodes).await;
            let items: Vec<Value> = summaries
                .iter()
                .filter_map(|s| node_metrics(s, &nodes))
                .collect();
            answer(name, "NodeMetrics", "nodes", items)
        }
        "pods" => {
            let namespace = info.namespace.as_deref();
            let pods: Vec<Value> = objects_of(server, "pods", namespace)
                .await?
                .into_iter()
                .filter(|p| name.is_none_or(|name| p["metadata"]["name"] == name))
                .filter(|p| {
                    selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&p["metadata"]["labels"]))
                })
                .collect();
            let mut node_names: Vec<&str> = pods
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .filter(|n| !n.is_empty())
                .collect();
            node_names.sort_unstable();
            node_names.dedup();
            let nodes: Vec<Value> = objects_of(server, "nodes", None)
                .await?
                .into_iter()
                .filter(|n| {
                    n["metadata"]["name"]
                        .as_str()
                        .is_some_and(|name| node_names.contains(&name))
                })
                .collect();
            let summaries = summaries(server, &nodes).await;
            let items: Vec<Value> = pods
                .iter()
                .filter_map(|pod| pod_metrics(pod, &summaries))
                .collect();
            answer(name, "PodMetrics", "pods", items)
        }
        _ => Err(StatusError::no_such_path()),
    }
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

/// Each reachable node's summary, asked of all kubelets at once.
async fn summaries<S: Store>(server: &ApiServer<S>, nodes: &[Value]) -> Vec<NodeSummary> {
    let asks = nodes.iter().map(|node| async move {
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
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
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
    let containers: Vec<Value> = stats["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some(json!({ "name": c["name"], "usage": usage(&c["cpu"], &c["memory"])? }))
        })
        .collect();
    // metrics-server leaves out pods it has no container figures for.
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": crate::handlers::now(),
            "labels": pod["metadata"]["labels"],
        },
        "timestamp": stats["cpu"]["time"],
        "window": WINDOW,
        "containers": containers,
    }))
}

/// One object (`name` given) or the list.
fn answer(
    name: Option<&str>,
    kind: &'static str,
    plural: &'static str,
    items: Vec<Value>,
) -> Result<Response<Body>, StatusError> {
    let api_version = format!("{}/{}", GROUP_VERSION.0, GROUP_VERSION.1);
    let with_type = |mut item: Value| {
        item["kind"] = json!(kind);
        item["apiVersion"] = json!(api_version);
        item
    };
    match name {
        Some(name) => {
            let item = items.into_iter().next().ok_or_else(|| {
                let subject = Subject {
                    group: GROUP_VERSION.0,
                    resource: plural,
                    kind,
                };
                StatusError::not_found(&subject, name)
            })?;
            Ok(json_response(StatusCode::OK, &with_type(item)))
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
        let metrics = pod_metrics(&pod, &[summary()]).unwrap();
        assert_eq!(
            metrics["containers"],
            json!([{ "name": "app", "usage": { "cpu": "1000n", "memory": "4Ki" } }])
        );
        let elsewhere = json!({ "metadata": { "name": "web", "namespace": "shop" }, "spec": { "nodeName": "n2" } });
        assert!(pod_metrics(&elsewhere, &[summary()]).is_none());
    }
}
