//! API discovery: the legacy documents (/api, /apis, /api/v1, /apis/<group>/<version>) and the
//! aggregated v2 documents kubectl asks for first; /version.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::{ALL_VERBS, CATALOG, Resource};

/// A served resource that is not stored: computed on request (resource metrics) or a review
/// that is only created (SelfSubjectReview, the access reviews).
struct Virtual {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
}

const VIRTUAL: &[Virtual] = &[
    Virtual {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        namespaced: false,
        verbs: &["create"],
    },
    Virtual {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        namespaced: false,
        verbs: &["create"],
    },
    Virtual {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        namespaced: false,
        verbs: &["create"],
    },
    Virtual {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        namespaced: false,
        verbs: &["create"],
    },
    Virtual {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "NodeMetrics",
        plural: "nodes",
        singular: "",
        namespaced: false,
        verbs: &["get", "list"],
    },
    Virtual {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "PodMetrics",
        plural: "pods",
        singular: "",
        namespaced: true,
        verbs: &["get", "list"],
    },
];

/// Every served group and version, stored resources first.
fn group_versions() -> impl Iterator<Item = (&'static str, &'static str)> {
    CATALOG
        .iter()
        .map(|r| (r.group, r.version))
        .chain(VIRTUAL.iter().map(|v| (v.group, v.version)))
}

/// The legacy discovery entry of a virtual resource.
fn virtual_entry(v: &Virtual) -> Value {
    json!({
        "name": v.plural,
        "singularName": v.singular,
        "namespaced": v.namespaced,
        "kind": v.kind,
        "verbs": v.verbs,
    })
}

/// The aggregated discovery entry of a virtual resource.
fn virtual_aggregated(v: &Virtual) -> Value {
    json!({
        "resource": v.plural,
        "responseKind": { "group": v.group, "version": v.version, "kind": v.kind },
        "scope": if v.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": v.singular,
        "verbs": v.verbs,
    })
}

/// The groups served, in upstream's preference order, with their versions.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut order: Vec<&'static str> = vec![];
    let mut versions: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for (group, version) in group_versions().filter(|(g, _)| !g.is_empty()) {
        if !order.contains(&group) {
            order.push(group);
        }
        let v = versions.entry(group).or_default();
        if !v.contains(&version) {
            v.push(version);
        }
    }
    order
        .into_iter()
        .map(|g| (g, versions.remove(g).unwrap_or_default()))
        .collect()
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v }))
        .collect();
    json!({ "name": group, "versions": vs, "preferredVersion": vs[0] })
}

/// `/apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().iter().map(|(g, vs)| group_doc(g, vs)).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    groups()
        .into_iter()
        .find(|(g, _)| *g == name)
        .map(|(g, vs)| {
            let mut doc = group_doc(g, &vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
}

fn resource_entries(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": ALL_VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let mut entry = json!({
            "name": format!("{}/{}", r.plural, sub.name),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": sub.kind.map_or(r.kind, |(_, _, k)| k),
            "verbs": sub.verbs,
        });
        if let Some((g, v, _)) = sub.kind
            && (g != r.group || v != r.version)
        {
            entry["group"] = json!(g);
            entry["version"] = json!(v);
        }
        out.push(entry);
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = CATALOG
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(resource_entries)
        .chain(
            VIRTUAL
                .iter()
                .filter(|v| v.group == group && v.version == version)
                .map(virtual_entry),
        )
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources }),
    )
}

/// The content type of aggregated discovery v2 documents.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').next().is_some_and(|first| {
            first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2")
        })
    })
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = CATALOG
                .iter()
                .filter(|r| r.group == group && r.version == *v)
                .map(|r| {
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| {
                            let (g, ver, k) = s.kind.unwrap_or((r.group, r.version, r.kind));
                            json!({ "subresource": s.name, "responseKind": { "group": g, "version": ver, "kind": k }, "verbs": s.verbs })
                        })
                        .collect();
                    json!({
                        "resource": r.plural,
                        "responseKind": { "group": r.group, "version": r.version, "kind": r.kind },
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": ALL_VERBS,
                        "shortNames": r.short_names,
                        "categories": r.categories,
                        "subresources": subs,
                    })
                })
                .chain(
                    VIRTUAL
                        .iter()
                        .filter(|r| r.group == group && r.version == *v)
                        .map(virtual_aggregated),
                )
                .collect();
            json!({ "version": v, "resources": resources, "freshness": "Current" })
        })
        .collect();
    let mut meta = json!({ "creationTimestamp": null });
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({ "metadata": meta, "versions": versions })
}

/// Aggregated discovery for `/api` (core) or `/apis` (every group).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", &["v1"])]
    } else {
        groups()
            .iter()
            .map(|(g, vs)| aggregated_group(g, vs))
            .collect()
    };
    json!({ "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items })
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-baton.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "rustc",
        "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_pods_and_subresources() {
        let doc = resource_list("", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods"));
        assert!(names.contains(&"pods/status"));
        assert!(names.contains(&"namespaces"));
        let scale = resource_list("apps", "v1").unwrap()["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .cloned()
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
    }

    #[test]
    fn aggregated_lists_every_group() {
        let doc = aggregated(false);
        let names: Vec<&str> = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        for g in [
            "apps",
            "batch",
            "discovery.k8s.io",
            "coordination.k8s.io",
            "events.k8s.io",
        ] {
            assert!(names.contains(&g), "{g}");
        }
    }
}
