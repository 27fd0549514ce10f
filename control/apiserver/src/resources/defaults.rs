//! Defaulting, as upstream's `SetDefaults_*` functions and default admission plugins fill in
//! fields a client left unset.

use serde_json::{Map, Value, json};

/// Settings that defaulting depends on.
#[derive(Debug, Clone)]
pub struct DefaultingConfig {
    /// Seconds of the default `node.kubernetes.io/not-ready` toleration.
    pub not_ready_toleration_seconds: i64,
    /// Seconds of the default `node.kubernetes.io/unreachable` toleration.
    pub unreachable_toleration_seconds: i64,
}

/// Sets `obj[key] = value` when the key is absent or null.
fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let slot = map.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// Returns `obj[key]` as an object, creating it when absent.
fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("object");
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot
}

fn each_mut(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(items) = obj.get_mut(key).and_then(Value::as_array_mut) {
        items.iter_mut().for_each(&mut f);
    }
}

/// Applies the defaults of `kind` (in `group`) to a new or updated object.
pub fn apply(group: &str, kind: &str, obj: &mut Value, cfg: &DefaultingConfig, creating: bool) {
    match (group, kind) {
        ("", "Pod") => pod(obj, cfg, creating),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => secret(obj),
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => {
            default(child(obj, "spec"), "replicas", json!(1));
            pod_template(child(child(obj, "spec"), "template"));
        }
        ("apps", "DaemonSet") => daemonset(obj),
        ("apps", "StatefulSet") => statefulset(obj),
        ("batch", "Job") => job(obj),
        ("batch", "CronJob") => cron_job(obj),
        ("", "PersistentVolumeClaim") => {
            default(child(obj, "spec"), "volumeMode", json!("Filesystem"));
            default(child(obj, "status"), "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let spec = child(obj, "spec");
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
            if let Some(host_path) = spec.get_mut("hostPath").filter(|h| h.is_object()) {
                default(host_path, "type", json!(""));
            }
            default(child(obj, "status"), "phase", json!("Pending"));
        }
        ("storage.k8s.io", "StorageClass") => {
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        // A pod's priority and preemption policy come from Priority admission, not defaults.
        ("scheduling.k8s.io", "PriorityClass") => {
            default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("networking.k8s.io", "NetworkPolicy") => network_policy(obj),
        ("networking.k8s.io", "IngressClass") => {
            if let Some(parameters) = obj["spec"].get_mut("parameters").filter(|p| p.is_object()) {
                default(parameters, "scope", json!("Cluster"));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => rbac_binding(obj),
        _ => {}
    }
}

/// Upstream's RBAC binding defaults: the roleRef's API group, and that of User and Group
/// subjects.
fn rbac_binding(obj: &mut Value) {
    const GROUP: &str = "rbac.authorization.k8s.io";
    // An empty group counts as unset (the typed form writes "" for a missing one).
    let set_group = |target: &mut Value| {
        if target["apiGroup"].as_str().is_none_or(str::is_empty) {
            target["apiGroup"] = json!(GROUP);
        }
    };
    if obj["roleRef"].is_object() {
        set_group(&mut obj["roleRef"]);
    }
    each_mut(obj, "subjects", |subject| {
        if matches!(subject["kind"].as_str(), Some("User" | "Group")) {
            set_group(subject);
        }
    });
}

/// Upstream's NetworkPolicy defaults: ports are TCP, and policyTypes is Ingress, plus Egress
/// when there are egress rules.
fn network_policy(obj: &mut Value) {
    let spec = child(obj, "spec");
    for direction in ["ingress", "egress"] {
        each_mut(spec, direction, |rule| {
            each_mut(rule, "ports", |port| {
                default(port, "protocol", json!("TCP"))
            });
        });
    }
    let has_egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
    let types = if has_egress {
        json!(["Ingress", "Egress"])
    } else {
        json!(["Ingress"])
    };
    if spec["policyTypes"].as_array().is_some_and(Vec::is_empty) {
        spec["policyTypes"] = Value::Null;
    }
    default(spec, "policyTypes", types);
}

fn pod(obj: &mut Value, cfg: &DefaultingConfig, creating: bool) {
    let spec = child(obj, "spec");
    pod_spec(spec);
    if creating {
        // ServiceAccount admission: the deprecated `serviceAccount` names the account when
        // `serviceAccountName` does not.
        let deprecated = spec["serviceAccount"].clone();
        if deprecated.as_str().is_some_and(|n| !n.is_empty()) {
            default(spec, "serviceAccountName", deprecated);
        }
        default(spec, "serviceAccountName", json!("default"));
        let sa = spec["serviceAccountName"].clone();
        default(spec, "serviceAccount", sa);
        // DefaultTolerationSeconds admission.
        let tolerations = spec
            .as_object_mut()
            .expect("object")
            .entry("tolerations")
            .or_insert_with(|| json!([]));
        if let Some(list) = tolerations.as_array_mut() {
            for (taint, seconds) in [
                (
                    "node.kubernetes.io/not-ready",
                    cfg.not_ready_toleration_seconds,
                ),
                (
                    "node.kubernetes.io/unreachable",
                    cfg.unreachable_toleration_seconds,
                ),
            ] {
                let covered = list.iter().any(|t| {
                    (t["key"] == taint || (t["key"].is_null() && t["operator"] == "Exists"))
                        && (t["effect"].is_null() || t["effect"] == "NoExecute")
                });
                if !covered {
                    list.push(json!({
                        "key": taint, "operator": "Exists", "effect": "NoExecute",
                        "tolerationSeconds": seconds,
                    }));
                }
            }
        }
        let qos = qos_class(spec);
        let status = child(obj, "status");
        default(status, "phase", json!("Pending"));
        default(status, "qosClass", json!(qos));
    }
}

/// Upstream's QoS class of a pod spec: Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = spec["containers"].as_array().into_iter().flatten();
    let inits = spec["initContainers"].as_array().into_iter().flatten();
    for c in containers.chain(inits) {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        for res in ["cpu", "memory"] {
            let request = requests.get(res).or(limits.get(res));
            let limit = limits.get(res);
            if request.is_some() || limit.is_some() {
                any = true;
            }
            match (request, limit) {
                (Some(r), Some(l)) if r == l => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn pod_template(template: &mut Value) {
    pod_spec(child(template, "spec"));
}

fn pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    each_mut(spec, "containers", container);
    each_mut(spec, "initContainers", container);
    ephemeral_containers(spec);
    each_mut(spec, "volumes", |v| {
        for source in ["configMap", "secret", "downwardAPI", "projected"] {
            if let Some(src) = v.get_mut(source).filter(|s| s.is_object()) {
                default(src, "defaultMode", json!(420));
            }
        }
        if let Some(sources) = v["projected"]["sources"].as_array_mut() {
            for token in sources
                .iter_mut()
                .map(|s| &mut s["serviceAccountToken"])
                .filter(|t| t.is_object())
            {
                default(token, "expirationSeconds", json!(3600));
            }
        }
    });
}

/// Defaults of a pod spec's ephemeral containers (those of every container).
pub fn ephemeral_containers(spec: &mut Value) {
    each_mut(spec, "ephemeralContainers", container);
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let policy = if image_uses_latest(&image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    each_mut(c, "ports", |p| default(p, "protocol", json!("TCP")));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(http) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                default(http, "path", json!("/"));
                default(http, "scheme", json!("HTTP"));
            }
        }
    }
}

/// Whether an image reference has no tag or the `latest` tag (and no digest).
pub fn image_uses_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn service(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
        default(spec, "ipFamilies", json!(["IPv4"]));
    }
    // An empty policy is unset, as upstream's defaulting reads it.
    if spec["externalTrafficPolicy"] == "" {
        spec["externalTrafficPolicy"] = Value::Null;
    }
    if crate::services::externally_accessible(spec) {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    each_mut(spec, "ports", |p| {
        default(p, "protocol", json!("TCP"));
        let port = p["port"].clone();
        default(p, "targetPort", port);
    });
    if spec["sessionAffinity"] == "ClientIP" {
        let cfg = child(spec, "sessionAffinityConfig");
        default(child(cfg, "clientIP"), "timeoutSeconds", json!(10800));
    }
}

/// Secret: `stringData` is a write-only convenience merged into `data` (base64), as upstream does.
fn secret(obj: &mut Value) {
    use base64::Engine;
    default(obj, "type", json!("Opaque"));
    let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    let Some(entries) = string_data.as_object() else {
        return;
    };
    let data = child(obj, "data");
    for (k, v) in entries {
        let text = v.as_str().unwrap_or_default();
        data[k] = json!(base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));
    }
}

fn namespace(obj: &mut Value) {
    let name = obj["metadata"]["name"].clone();
    if name.is_string() {
        let labels = child(child(obj, "metadata"), "labels");
        labels["kubernetes.io/metadata.name"] = name;
    }
    default(child(obj, "spec"), "finalizers", json!(["kubernetes"]));
    default(child(obj, "status"), "phase", json!("Active"));
}

fn deployment(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = child(spec, "strategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let ru = child(strategy, "rollingUpdate");
        default(ru, "maxUnavailable", json!("25%"));
        default(ru, "maxSurge", json!("25%"));
    }
    pod_template(child(spec, "template"));
}

fn daemonset(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "revisionHistoryLimit", json!(10));
    let strategy = child(spec, "updateStrategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let ru = child(strategy, "rollingUpdate");
        default(ru, "maxUnavailable", json!(1));
        default(ru, "maxSurge", json!(0));
    }
    pod_template(child(spec, "template"));
}

fn statefulset(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = child(spec, "updateStrategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        default(child(strategy, "rollingUpdate"), "partition", json!(0));
    }
    let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
    default(retention, "whenDeleted", json!("Retain"));
    default(retention, "whenScaled", json!("Retain"));
    pod_template(child(spec, "template"));
}

fn job(obj: &mut Value) {
    let spec = child(obj, "spec");
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "manualSelector", Value::Null);
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let template = child(spec, "template");
    pod_template(template);
}

/// Upstream's `SetDefaults_CronJob`, and the pod defaults inside its job template (the
/// template's Job fields are defaulted when the Job is made from it).
fn cron_job(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "concurrencyPolicy", json!("Allow"));
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    pod_template(child(child(child(spec, "jobTemplate"), "spec"), "template"));
}

/// Upstream's Job selector generation: a controller-uid label on the template and a selector on it.
pub fn job_selector(obj: &mut Value, uid: &str) {
    if obj["spec"]["manualSelector"] == json!(true) {
        return;
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = child(obj, "spec");
    if spec["selector"].is_null() {
        spec["selector"] = json!({ "matchLabels": { "batch.kubernetes.io/controller-uid": uid } });
    }
    let labels = child(child(child(spec, "template"), "metadata"), "labels");
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid),
        ("job-name", name.as_str()),
    ] {
        default(labels, k, json!(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DefaultingConfig {
        DefaultingConfig {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }

    #[test]
    fn pod_defaults_match_upstream() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox:1.36", "ports": [{"containerPort": 80}]}
        ]}});
        apply("", "Pod", &mut pod, &cfg(), true);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn priority_is_left_to_admission_and_classes_preempt_by_default() {
        let mut rs = json!({"spec": {"template": {"spec": {"containers": []}}}});
        apply("apps", "ReplicaSet", &mut rs, &cfg(), true);
        let template = &rs["spec"]["template"]["spec"];
        assert!(template.get("priority").is_none() && template.get("preemptionPolicy").is_none());
        let mut pc = json!({"metadata": {"name": "high"}, "value": 10});
        apply("scheduling.k8s.io", "PriorityClass", &mut pc, &cfg(), true);
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
        let mut never = json!({"metadata": {"name": "n"}, "value": 1, "preemptionPolicy": "Never"});
        apply(
            "scheduling.k8s.io",
            "PriorityClass",
            &mut never,
            &cfg(),
            false,
        );
        assert_eq!(never["preemptionPolicy"], "Never");
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"password": "s3cret"}, "data": {"a": "YQ=="}});
        apply("", "Secret", &mut s, &cfg(), true);
        assert_eq!(s["data"], json!({"a": "YQ==", "password": "czNjcmV0"}));
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn qos_classes() {
        let guaranteed =
            json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn latest_detection() {
        assert!(image_uses_latest("busybox"));
        assert!(image_uses_latest("localhost:5000/busybox"));
        assert!(image_uses_latest("r/busybox:latest"));
        assert!(!image_uses_latest("localhost:5000/busybox:1"));
        assert!(!image_uses_latest("busybox@sha256:abc"));
    }
}
