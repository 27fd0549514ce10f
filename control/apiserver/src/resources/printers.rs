//! Server-side printing: the Table columns and cells `kubectl get` shows, per kind, with
//! upstream's column names (priority 1 columns appear only with `-o wide`).

use jiff::Timestamp;
use serde_json::{Value, json};

/// A column: name, type, priority.
pub type Column = (&'static str, &'static str, u8);

const NAME: Column = ("Name", "string", 0);
const AGE: Column = ("Age", "string", 0);

/// The columns of a kind.
pub fn columns(group: &str, kind: &str) -> Vec<Column> {
    match (group, kind) {
        ("", "Pod") => vec![
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            AGE,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "Namespace") => vec![NAME, ("Status", "string", 0), AGE],
        ("", "Node") => vec![
            NAME,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            AGE,
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        ("", "Service") => vec![
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            AGE,
            ("Selector", "string", 1),
        ],
        ("", "Endpoints") => vec![NAME, ("Endpoints", "string", 0), AGE],
        ("", "ConfigMap") => vec![NAME, ("Data", "integer", 0), AGE],
        ("", "Secret") => vec![NAME, ("Type", "string", 0), ("Data", "integer", 0), AGE],
        ("", "ServiceAccount") => vec![NAME, ("Secrets", "integer", 0), AGE],
        ("", "Event") => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            ("Ready", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        ("batch", "Job") => vec![
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            AGE,
            ("VolumeMode", "string", 1),
        ],
        ("", "PersistentVolume") => vec![
            NAME,
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            AGE,
            ("VolumeMode", "string", 1),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            NAME,
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "boolean", 0),
            AGE,
        ],
        ("batch", "CronJob") => vec![
            NAME,
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => vec![NAME, ("Holder", "string", 0), AGE],
        ("scheduling.k8s.io", "PriorityClass") => {
            vec![
                NAME,
                ("Value", "integer", 0),
                ("Global-Default", "boolean", 0),
                AGE,
                ("PreemptionPolicy", "string", 0),
            ]
        }
        ("networking.k8s.io", "NetworkPolicy") => vec![NAME, ("Pod-Selector", "string", 0), AGE],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            AGE,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            NAME,
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            AGE,
        ],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            NAME,
            ("Role", "string", 0),
            AGE,
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        _ => vec![NAME, ("Created At", "date", 0)],
    }
}

/// The column descriptions upstream attaches (kubectl shows them in `explain`-like output only).
pub fn column_definitions(group: &str, kind: &str) -> Value {
    columns(group, kind)
        .iter()
        .map(|(name, ty, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({ "name": name, "type": ty, "format": format, "description": "", "priority": priority })
        })
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}

/// Upstream's `HumanDuration`: 45s, 5m12s, 3h, 2d4h, 3y21d ...
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        let dd = d % 365;
        if dd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dd}d")
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: &Value, now: Timestamp) -> String {
    match ts.as_str().and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn unset_if_missing(v: &Value) -> String {
    v.as_str().unwrap_or("<unset>").to_string()
}

/// Access modes as kubectl abbreviates them, in upstream's order.
fn access_modes(modes: &Value) -> String {
    let listed: Vec<&str> = modes.as_array().into_iter().flatten().map(s).collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| listed.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn none_if_empty(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn selector_string(selector: &Value) -> String {
    let mut parts = vec![];
    if let Some(m) = selector["matchLabels"].as_object() {
        parts.extend(m.iter().map(|(k, v)| format!("{k}={}", s(v))));
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let key = s(&e["key"]);
        parts.push(match s(&e["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    none_if_empty(parts.join(","))
}

/// Renders a Scale-style label-selector (matchLabels + expressions) as its query-string form.
pub fn selector_to_string(selector: &Value) -> String {
    let s = selector_string(selector);
    if s == "<none>" { String::new() } else { s }
}

fn map_string(m: &Value) -> String {
    let parts: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    none_if_empty(parts.join(","))
}

fn containers_images(template_spec: &Value) -> (String, String) {
    let cs = template_spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn pod_status(pod: &Value) -> (String, String, String) {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(&c["restartCount"])).sum();
    let mut reason = s(&pod["status"]["reason"]).to_string();
    if reason.is_empty() {
        reason = s(&pod["status"]["phase"]).to_string();
    }
    let mut init_done = true;
    let inits = pod["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init_total = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    for (idx, c) in inits.iter().enumerate() {
        let term = &c["state"]["terminated"];
        if term.is_object() && i(&term["exitCode"]) == 0 {
            continue;
        }
        init_done = false;
        reason = if term.is_object() {
            let r = s(&term["reason"]);
            if r.is_empty() {
                format!("Init:ExitCode:{}", i(&term["exitCode"]))
            } else {
                format!("Init:{r}")
            }
        } else if !s(&c["state"]["waiting"]["reason"]).is_empty()
            && s(&c["state"]["waiting"]["reason"]) != "PodInitializing"
        {
            format!("Init:{}", s(&c["state"]["waiting"]["reason"]))
        } else {
            format!("Init:{idx}/{init_total}")
        };
        break;
    }
    if init_done {
        for c in statuses.iter().rev() {
            let waiting = s(&c["state"]["waiting"]["reason"]);
            let term = &c["state"]["terminated"];
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if term.is_object() {
                let r = s(&term["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if term["signal"].as_i64().is_some_and(|x| x != 0) {
                    format!("Signal:{}", i(&term["signal"]))
                } else {
                    format!("ExitCode:{}", i(&term["exitCode"]))
                };
            }
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = if s(&pod["status"]["reason"]) == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (format!("{ready}/{total}"), reason, restarts.to_string())
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = s(&p["protocol"]);
            match p["nodePort"].as_i64() {
                Some(np) if np != 0 => format!("{}:{np}/{proto}", i(&p["port"])),
                _ => format!("{}/{proto}", i(&p["port"])),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

fn node_roles(labels: &Value) -> String {
    let mut roles: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    none_if_empty(roles.join(","))
}

fn node_status(node: &Value) -> String {
    let mut status = "Unknown".to_string();
    for c in node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["type"] == "Ready" {
            status = if c["status"] == "True" {
                "Ready".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if node["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_address(node: &Value, ty: &str) -> String {
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == ty)
        .map_or("<none>".into(), |a| s(&a["address"]).to_string())
}

/// The cells of one object's row.
pub fn cells(group: &str, kind: &str, obj: &Value, now: Timestamp) -> Vec<Value> {
    let meta = &obj["metadata"];
    let name = json!(s(&meta["name"]));
    let created = age(&meta["creationTimestamp"], now);
    let spec = &obj["spec"];
    let status = &obj["status"];
    match (group, kind) {
        ("", "Pod") => {
            let (ready, reason, restarts) = pod_status(obj);
            let ip = none_if_empty(s(&status["podIP"]).to_string());
            let node = none_if_empty(s(&spec["nodeName"]).to_string());
            let nominated = none_if_empty(s(&status["nominatedNodeName"]).to_string());
            let gates = spec["readinessGates"].as_array().map_or(0, Vec::len);
            let gates = if gates == 0 {
                "<none>".to_string()
            } else {
                format!("0/{gates}")
            };
            vec![
                name,
                json!(ready),
                json!(reason),
                json!(restarts),
                json!(created),
                json!(ip),
                json!(node),
                json!(nominated),
                json!(gates),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(&status["phase"])), json!(created)],
        ("", "Node") => {
            let info = &status["nodeInfo"];
            vec![
                name,
                json!(node_status(obj)),
                json!(node_roles(&meta["labels"])),
                json!(created),
                json!(s(&info["kubeletVersion"])),
                json!(node_address(obj, "InternalIP")),
                json!(node_address(obj, "ExternalIP")),
                json!(none_if_empty(s(&info["osImage"]).to_string())),
                json!(none_if_empty(s(&info["kernelVersion"]).to_string())),
                json!(none_if_empty(
                    s(&info["containerRuntimeVersion"]).to_string()
                )),
            ]
        }
        ("", "Service") => {
            let ty = s(&spec["type"]);
            let cluster_ip = none_if_empty(s(&spec["clusterIP"]).to_string());
            let external = match ty {
                "ExternalName" => s(&spec["externalName"]).to_string(),
                "LoadBalancer" => {
                    let ing: Vec<&str> = status["loadBalancer"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| s(&i["ip"]))
                        .collect();
                    if ing.is_empty() {
                        "<pending>".into()
                    } else {
                        ing.join(",")
                    }
                }
                _ => {
                    let ips: Vec<&str> = spec["externalIPs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    none_if_empty(ips.join(","))
                }
            };
            vec![
                name,
                json!(ty),
                json!(cluster_ip),
                json!(external),
                json!(service_ports(spec)),
                json!(created),
                json!(map_string(&spec["selector"])),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = vec![];
            for subset in obj["subsets"].as_array().into_iter().flatten() {
                for addr in subset["addresses"].as_array().into_iter().flatten() {
                    for port in subset["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", s(&addr["ip"]), i(&port["port"])));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                none_if_empty(eps.join(","))
            };
            vec![name, json!(shown), json!(created)]
        }
        ("", "ConfigMap") => {
            let n = obj["data"].as_object().map_or(0, |m| m.len())
                + obj["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), json!(created)]
        }
        ("", "Secret") => {
            let n = obj["data"].as_object().map_or(0, |m| m.len());
            vec![name, json!(s(&obj["type"])), json!(n), json!(created)]
        }
        ("", "ServiceAccount") => vec![
            name,
            json!(obj["secrets"].as_array().map_or(0, Vec::len)),
            json!(created),
        ],
        ("", "Event") => {
            let last = if obj["lastTimestamp"].is_string() {
                &obj["lastTimestamp"]
            } else if obj["eventTime"].is_string() {
                &obj["eventTime"]
            } else {
                &meta["creationTimestamp"]
            };
            let inv = &obj["involvedObject"];
            vec![
                json!(age(last, now)),
                json!(s(&obj["type"])),
                json!(s(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&inv["kind"]).to_lowercase(),
                    s(&inv["name"])
                )),
                json!(s(&obj["message"])),
            ]
        }
        ("apps", "Deployment") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(&status["readyReplicas"]),
                    i(&spec["replicas"])
                )),
                json!(i(&status["updatedReplicas"])),
                json!(i(&status["availableReplicas"])),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(i(&spec["replicas"])),
                json!(i(&status["replicas"])),
                json!(i(&status["readyReplicas"])),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(i(&status["desiredNumberScheduled"])),
                json!(i(&status["currentNumberScheduled"])),
                json!(i(&status["numberReady"])),
                json!(i(&status["updatedNumberScheduled"])),
                json!(i(&status["numberAvailable"])),
                json!(map_string(&spec["template"]["spec"]["nodeSelector"])),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(&status["readyReplicas"]),
                    i(&spec["replicas"])
                )),
                json!(created),
                json!(c),
                json!(im),
            ]
        }
        ("batch", "Job") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            let completions = match spec["completions"].as_i64() {
                Some(n) => format!("{}/{n}", i(&status["succeeded"])),
                None => format!(
                    "{}/1 of {}",
                    i(&status["succeeded"]),
                    i(&spec["parallelism"])
                ),
            };
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let state = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (
                status["startTime"].as_str(),
                status["completionTime"].as_str(),
            ) {
                (Some(start), end) => {
                    let start = start
                        .parse::<Timestamp>()
                        .map(|t| t.as_second())
                        .unwrap_or_default();
                    let end = end
                        .and_then(|e| e.parse::<Timestamp>().ok())
                        .map_or(now.as_second(), |t| t.as_second());
                    human_duration(end - start)
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(state),
                json!(completions),
                json!(duration),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        ("", "PersistentVolumeClaim") => {
            let phase = if meta["deletionTimestamp"].is_null() {
                s(&status["phase"])
            } else {
                "Terminating"
            };
            let volume = s(&spec["volumeName"]);
            let (capacity, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    s(&status["capacity"]["storage"]).to_string(),
                    access_modes(&status["accessModes"]),
                )
            };
            vec![
                name,
                json!(phase),
                json!(volume),
                json!(capacity),
                json!(modes),
                json!(s(&spec["storageClassName"])),
                json!(unset_if_missing(&spec["volumeAttributesClassName"])),
                json!(created),
                json!(unset_if_missing(&spec["volumeMode"])),
            ]
        }
        ("", "PersistentVolume") => {
            let phase = if meta["deletionTimestamp"].is_null() {
                s(&status["phase"])
            } else {
                "Terminating"
            };
            let claim = match &spec["claimRef"] {
                Value::Object(claim) => format!(
                    "{}/{}",
                    s(claim.get("namespace").unwrap_or(&Value::Null)),
                    s(claim.get("name").unwrap_or(&Value::Null))
                ),
                _ => String::new(),
            };
            vec![
                name,
                json!(s(&spec["capacity"]["storage"])),
                json!(access_modes(&spec["accessModes"])),
                json!(s(&spec["persistentVolumeReclaimPolicy"])),
                json!(phase),
                json!(claim),
                json!(s(&spec["storageClassName"])),
                json!(unset_if_missing(&spec["volumeAttributesClassName"])),
                json!(s(&status["reason"])),
                json!(created),
                json!(unset_if_missing(&spec["volumeMode"])),
            ]
        }
        ("storage.k8s.io", "StorageClass") => {
            let default_class = crate::storage_classes::is_default_class(obj);
            let shown = if default_class {
                format!("{} (default)", s(&meta["name"]))
            } else {
                s(&meta["name"]).to_string()
            };
            vec![
                json!(shown),
                json!(s(&obj["provisioner"])),
                json!(obj["reclaimPolicy"].as_str().unwrap_or("Delete")),
                json!(obj["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                json!(obj["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                json!(created),
            ]
        }
        ("batch", "CronJob") => {
            let (c, im) = containers_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let suspend = match spec["suspend"].as_bool() {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let active = status["active"].as_array().map_or(0, Vec::len);
            let last_schedule = match status["lastScheduleTime"] {
                Value::Null => "<none>".to_string(),
                ref at => age(at, now),
            };
            vec![
                name,
                json!(s(&spec["schedule"])),
                json!(none_if_empty(s(&spec["timeZone"]).to_string())),
                json!(suspend),
                json!(active),
                json!(last_schedule),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&spec["jobTemplate"]["spec"]["selector"])),
            ]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| i(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a).to_string())
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                none_if_empty(addrs.join(","))
            };
            vec![
                name,
                json!(s(&obj["addressType"])),
                json!(none_if_empty(ports.join(","))),
                json!(shown),
                json!(created),
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(s(&spec["holderIdentity"])), json!(created)]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(i(&obj["value"])),
            json!(obj["globalDefault"] == json!(true)),
            json!(created),
            json!(s(&obj["preemptionPolicy"])),
        ],
        ("policy", "PodDisruptionBudget") => {
            let bound = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                name,
                json!(bound(&spec["minAvailable"])),
                json!(bound(&spec["maxUnavailable"])),
                json!(i(&obj["status"]["disruptionsAllowed"])),
                json!(created),
            ]
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            vec![
                name,
                json!(selector_string(&spec["podSelector"])),
                json!(created),
            ]
        }
        ("networking.k8s.io", "Ingress") => {
            let hosts: Vec<&str> = spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["host"].as_str().filter(|h| !h.is_empty()))
                .collect();
            // Upstream shows three hosts and counts the rest.
            let hosts = match hosts.len() {
                0 => "*".to_string(),
                1..=3 => hosts.join(","),
                n => format!("{} + {} more...", hosts[..3].join(","), n - 3),
            };
            let mut addresses: Vec<&str> = obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| [i["ip"].as_str(), i["hostname"].as_str()])
                .flatten()
                .filter(|a| !a.is_empty())
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
            vec![
                name,
                json!(none_if_empty(s(&spec["ingressClassName"]).to_string())),
                json!(hosts),
                json!(addresses.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                json!(created),
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let parameters = &spec["parameters"];
            let shown = if parameters.is_object() {
                let kind = match parameters["apiGroup"].as_str() {
                    Some(group) => format!("{}.{group}", s(&parameters["kind"])),
                    None => s(&parameters["kind"]).to_string(),
                };
                format!("{kind}/{}", s(&parameters["name"]))
            } else {
                "<none>".to_string()
            };
            vec![
                name,
                json!(s(&spec["controller"])),
                json!(shown),
                json!(created),
            ]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |wanted: &str| -> String {
                obj["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|subject| subject["kind"] == wanted)
                    .map(|subject| match (wanted, subject["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&subject["name"])),
                        _ => s(&subject["name"]).to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let role_ref = &obj["roleRef"];
            vec![
                name,
                json!(format!("{}/{}", s(&role_ref["kind"]), s(&role_ref["name"]))),
                json!(created),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        _ => vec![name, meta["creationTimestamp"].clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_follow_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60 * 5), "3h5m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
    }

    #[test]
    fn pod_row() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let row = cells("", "Pod", &pod, now);
        assert_eq!(row[1], "1/1");
        assert_eq!(row[2], "Running");
        assert_eq!(row[3], "2");
        assert_eq!(row[4], "60s");
        assert_eq!(row[6], "n1");
    }
}
