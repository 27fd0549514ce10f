//! A container's environment as the kubelet computes it (upstream `makeEnvironmentVariables`):
//! `envFrom` first, then `env` in order (literal values with `$(VAR)` expansion, or values from
//! the downward API, ConfigMaps and Secrets), then the service link variables.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::qos;
use crate::quantity;

/// Where ConfigMaps, Secrets and Services come from (the kubelet's caches, prefetched).
pub trait EnvSources {
    /// The `data` of ConfigMap `namespace/name`, `None` when it does not exist.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// The `data` of Secret `namespace/name`, `None` when it does not exist.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The Services of `namespace`, for the service link variables (`FOO_SERVICE_HOST` ...).
    /// Without it, containers get no service variables, not even `KUBERNETES_SERVICE_HOST`.
    fn services(&self, namespace: &str) -> Vec<Service> {
        let _ = namespace;
        Vec::new()
    }
}

/// What the kubelet knows about its node that the downward API exposes.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// `spec.nodeName` of the pods on this node.
    pub node_name: String,
    /// The node's IPs, preferred family first (`status.hostIP` is the first).
    pub host_ips: Vec<String>,
    /// The node's allocatable resources, the value of `limits.*` for containers without a limit.
    pub allocatable: BTreeMap<String, Quantity>,
}

/// Why a container's environment could not be made; the message is the kubelet's
/// CreateContainerConfigError message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("field label not supported: {path}")]
    UnsupportedFieldPath { path: String },
    #[error("unsupported container resource : {resource}")]
    UnsupportedResource { resource: String },
    #[error("container {name} not found")]
    ContainerNotFound { name: String },
}

/// Upstream `$(VAR)` expansion: `$(NAME)` becomes `lookup(NAME)` when it returns a value and is
/// kept as written otherwise; `$$` becomes `$`; any other `$` and an unterminated `$(` stay.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `name` can be an environment variable name: printable ASCII without `=` (the
/// relaxed rule of v1.33, RelaxedEnvironmentVariableValidation on by default).
pub fn is_valid_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// Variables in first-definition order; redefining one replaces its value in place.
#[derive(Default)]
struct OrderedEnv {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.vars.len());
                self.vars.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.vars[i].1.as_str())
    }
}

/// The container's environment, in order: `envFrom` keys, `env` variables, then the service
/// variables no earlier variable defines.
pub fn resolve_env(
    pod: &Pod,
    container: &Container,
    sources: &dyn EnvSources,
    node: &NodeFacts,
    pod_ip: Option<&str>,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut config_maps: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
    let mut secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>> = HashMap::new();
    let mut config_map = |name: &str| {
        config_maps
            .entry(name.to_string())
            .or_insert_with(|| sources.config_map(namespace, name))
            .clone()
    };
    let mut secret = |name: &str| {
        secrets
            .entry(name.to_string())
            .or_insert_with(|| sources.secret(namespace, name))
            .clone()
    };

    let mut env = OrderedEnv::default();
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, source, entries): (&str, &str, Vec<(String, String)>) =
            if let Some(cm) = &from.config_map_ref {
                match config_map(&cm.name) {
                    Some(data) => ("configMap", cm.name.as_str(), data.into_iter().collect()),
                    None if cm.optional == Some(true) => continue,
                    None => {
                        return Err(EnvError::ConfigMapNotFound {
                            name: cm.name.clone(),
                        });
                    }
                }
            } else if let Some(s) = &from.secret_ref {
                match secret(&s.name) {
                    Some(data) => (
                        "secret",
                        s.name.as_str(),
                        data.into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                            .collect(),
                    ),
                    None if s.optional == Some(true) => continue,
                    None => {
                        return Err(EnvError::SecretNotFound {
                            name: s.name.clone(),
                        });
                    }
                }
            } else {
                continue;
            };
        let mut invalid = Vec::new();
        for (key, value) in entries {
            let name = format!("{prefix}{key}");
            if is_valid_env_var_name(&name) {
                env.set(name, value);
            } else {
                invalid.push(name);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                container = container.name,
                "keys [{}] from the EnvFrom {kind} {namespace}/{source} were skipped since they \
                 are considered invalid environment variable names",
                invalid.join(", ")
            );
        }
    }

    let service_env = service_env(pod, sources);
    for var in container.env.as_deref().unwrap_or_default() {
        let literal = var.value.as_deref().unwrap_or_default();
        let value = if !literal.is_empty() {
            expand(literal, |name| {
                env.get(name)
                    .or_else(|| service_env.get(name).map(String::as_str))
                    .map(str::to_string)
            })
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(field, pod, node, pod_ip)?
            } else if let Some(resource) = &from.resource_field_ref {
                resource_value(resource, pod, container, node)?
            } else if let Some(key_ref) = &from.config_map_key_ref {
                let optional = key_ref.optional == Some(true);
                let Some(data) = config_map(&key_ref.name) else {
                    if optional {
                        continue;
                    }
                    return Err(EnvError::ConfigMapNotFound {
                        name: key_ref.name.clone(),
                    });
                };
                match data.get(&key_ref.key) {
                    Some(value) => value.clone(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::ConfigMapKeyNotFound {
                            key: key_ref.key.clone(),
                            namespace: namespace.to_string(),
                            name: key_ref.name.clone(),
                        });
                    }
                }
            } else if let Some(key_ref) = &from.secret_key_ref {
                let optional = key_ref.optional == Some(true);
                let Some(data) = secret(&key_ref.name) else {
                    if optional {
                        continue;
                    }
                    return Err(EnvError::SecretNotFound {
                        name: key_ref.name.clone(),
                    });
                };
                match data.get(&key_ref.key) {
                    Some(value) => String::from_utf8_lossy(value).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::SecretKeyNotFound {
                            key: key_ref.key.clone(),
                            namespace: namespace.to_string(),
                            name: key_ref.name.clone(),
                        });
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }

    let mut vars = env.vars;
    for (name, value) in service_env {
        if !env.index.contains_key(&name) {
            vars.push((name, value));
        }
    }
    Ok(vars)
}

/// The value of a downward API `fieldRef`.
pub(crate) fn field_value(
    field: &ObjectFieldSelector,
    pod: &Pod,
    node: &NodeFacts,
    pod_ip: Option<&str>,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let path = field.field_path.as_str();
    let pod_ips: Vec<String> = match pod_ip {
        Some(ip) => vec![ip.to_string()],
        None => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|p| p.ip.clone()).collect())
            .filter(|ips: &Vec<String>| !ips.is_empty())
            .or_else(|| status.and_then(|s| s.pod_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default(),
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => node.host_ips.join(","),
        "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => pod_ips.join(","),
        _ => {
            let subscripted = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix("['"))
                    .and_then(|rest| rest.strip_suffix("']"))
            };
            if let Some(key) = subscripted("metadata.labels") {
                lookup(meta.labels.as_ref(), key)
            } else if let Some(key) = subscripted("metadata.annotations") {
                lookup(meta.annotations.as_ref(), key)
            } else {
                return Err(EnvError::UnsupportedFieldPath {
                    path: path.to_string(),
                });
            }
        }
    };
    Ok(value)
}

fn lookup(map: Option<&BTreeMap<String, String>>, key: &str) -> String {
    map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
}

/// `key="value"` lines sorted by key, as the downward API formats whole label and annotation
/// maps.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", go_quote(v)))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// A double-quoted string with Go's escapes for quotes, backslashes and control characters.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of a downward API `resourceFieldRef`: the container's (or the named container's)
/// request or limit in units of the divisor, rounded up; a missing limit reads as the node's
/// allocatable amount.
pub(crate) fn resource_value(
    selector: &ResourceFieldSelector,
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
) -> Result<String, EnvError> {
    let target = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => container,
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.as_deref().unwrap_or_default())
                    .find(|c| c.name == name)
            })
            .ok_or_else(|| EnvError::ContainerNotFound {
                name: name.to_string(),
            })?,
    };
    let resource = selector.resource.as_str();
    let unsupported = || EnvError::UnsupportedResource {
        resource: resource.to_string(),
    };
    let (kind, name) = resource.split_once('.').ok_or_else(unsupported)?;
    let supported =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    if !supported || !matches!(kind, "limits" | "requests") {
        return Err(unsupported());
    }
    let zero = Quantity("0".to_string());
    let amount = if kind == "limits" {
        qos::limit(target, name)
            .or_else(|| node.allocatable.get(name))
            .unwrap_or(&zero)
    } else {
        qos::request(target, name).unwrap_or(&zero)
    };
    let divisor = selector
        .divisor
        .as_ref()
        .filter(|d| quantity::nanos(d) != 0)
        .cloned()
        .unwrap_or_else(|| Quantity("1".to_string()));
    let value = if name == "cpu" {
        ceil_div(
            quantity::milli_value(amount),
            quantity::milli_value(&divisor),
        )
    } else {
        ceil_div(quantity::value(amount), quantity::value(&divisor))
    };
    Ok(value.to_string())
}

fn ceil_div(numerator: i64, denominator: i64) -> i64 {
    if denominator <= 0 {
        return numerator;
    }
    let quotient = numerator / denominator;
    if numerator % denominator > 0 {
        quotient + 1
    } else {
        quotient
    }
}

/// The Docker-link style variables of the services a pod sees: the `kubernetes` Service of the
/// `default` namespace always, and every Service of the pod's namespace unless
/// `enableServiceLinks` is false (headless Services excluded).
fn service_env(pod: &Pod, sources: &dyn EnvSources) -> BTreeMap<String, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, Service> = BTreeMap::new();
    for service in sources.services("default") {
        if service.metadata.name.as_deref() == Some("kubernetes") && cluster_ip(&service).is_some()
        {
            chosen.insert("kubernetes".to_string(), service);
        }
    }
    if links {
        for service in sources.services(namespace) {
            if let Some(name) = service.metadata.name.clone()
                && cluster_ip(&service).is_some()
            {
                chosen.insert(name, service);
            }
        }
    }
    let mut vars = BTreeMap::new();
    for (name, service) in &chosen {
        add_service_vars(&mut vars, name, service);
    }
    vars
}

fn cluster_ip(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn add_service_vars(vars: &mut BTreeMap<String, String>, name: &str, service: &Service) {
    let (Some(ip), Some(ports)) = (
        cluster_ip(service),
        service.spec.as_ref().and_then(|s| s.ports.as_ref()),
    ) else {
        return;
    };
    let Some(first) = ports.first() else {
        return;
    };
    let prefix = env_name(name);
    vars.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
    vars.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.insert(
                format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                port.port.to_string(),
            );
        }
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    for (i, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{host}:{}", port.port);
        if i == 0 {
            vars.insert(format!("{prefix}_PORT"), url.clone());
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        vars.insert(port_prefix.clone(), url);
        vars.insert(format!("{port_prefix}_PROTO"), lower);
        vars.insert(format!("{port_prefix}_PORT"), port.port.to_string());
        vars.insert(format!("{port_prefix}_ADDR"), ip.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, PodSpec,
        PodStatus, SecretEnvSource, SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[derive(Default)]
    struct Sources {
        config_maps: BTreeMap<String, BTreeMap<String, String>>,
        secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
        services: Vec<Service>,
    }

    impl EnvSources for Sources {
        fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
            self.config_maps
                .get(&format!("{namespace}/{name}"))
                .cloned()
        }
        fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.secrets.get(&format!("{namespace}/{name}")).cloned()
        }
        fn services(&self, namespace: &str) -> Vec<Service> {
            self.services
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
                .cloned()
                .collect()
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "ns/cfg".into(),
            BTreeMap::from([
                ("MODE".to_string(), "fast".to_string()),
                ("index.html".to_string(), "<html>".to_string()),
                ("bad=key".to_string(), "x".to_string()),
            ]),
        );
        s.secrets.insert(
            "ns/creds".into(),
            BTreeMap::from([("PASSWORD".to_string(), b"hunter2".to_vec())]),
        );
        s
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node-a".into(),
            host_ips: vec!["10.0.0.5".into(), "fd00::5".into()],
            allocatable: BTreeMap::from([
                ("cpu".to_string(), Quantity("4".into())),
                ("memory".to_string(), Quantity("8Gi".into())),
                ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
            ]),
        }
    }

    fn pod_with(container: Container) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), "web".to_string()),
                    ("tier".to_string(), "front \"end\"".to_string()),
                ])),
                annotations: Some(BTreeMap::from([("note".to_string(), "hi".to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container],
                node_name: Some("node-a".into()),
                service_account_name: Some("builder".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.1.0.9".into()),
                ..Default::default()
            }),
        }
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    fn resource(res: &str, divisor: Option<&str>) -> EnvVarSource {
        EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: None,
                divisor: divisor.map(|d| Quantity(d.into())),
                resource: res.into(),
            }),
            ..Default::default()
        }
    }

    fn run(container: Container) -> Result<Vec<(String, String)>, EnvError> {
        let pod = pod_with(container.clone());
        resolve_env(&pod, &container, &sources(), &node(), None)
    }

    fn single(source: EnvVarSource) -> Result<String, EnvError> {
        run(Container {
            name: "c".into(),
            env: Some(vec![from("V", source)]),
            ..Default::default()
        })
        .map(|vars| vars.into_iter().find(|(k, _)| k == "V").unwrap().1)
    }

    #[test]
    fn expansion_follows_upstream_rules() {
        let vars = HashMap::from([("A", "x"), ("EMPTY", "")]);
        let lookup = |n: &str| vars.get(n).map(|v| v.to_string());
        let cases = [
            ("$(A)", "x"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$(A)$(A)", "xx"),
            ("$(MISSING)", "$(MISSING)"),
            ("$(EMPTY)", ""),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("$$", "$"),
            ("$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("($(A))", "(x)"),
            ("ü$(A)ü$ü", "üxü$ü"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup), want, "{input:?}");
        }
    }

    #[test]
    fn literal_values_expand_earlier_variables_only() {
        let vars = run(Container {
            name: "c".into(),
            env: Some(vec![
                literal("B", "$(A)-b"),
                literal("A", "a"),
                literal("C", "$(A)-c"),
                literal("D", "$$(A)"),
                literal("A", "again"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            vars,
            vec![
                ("B".to_string(), "$(A)-b".to_string()),
                ("A".to_string(), "again".to_string()),
                ("C".to_string(), "a-c".to_string()),
                ("D".to_string(), "$(A)".to_string()),
            ]
        );
    }

    #[test]
    fn env_from_with_prefix_skips_invalid_names_and_env_overrides() {
        let vars = run(Container {
            name: "c".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    prefix: Some("CFG_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    config_map_ref: None,
                    prefix: None,
                    secret_ref: Some(SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                literal("CFG_MODE", "slow"),
                literal("X", "$(PASSWORD)"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            vars,
            vec![
                ("CFG_MODE".to_string(), "slow".to_string()),
                ("CFG_index.html".to_string(), "<html>".to_string()),
                ("PASSWORD".to_string(), "hunter2".to_string()),
                ("X".to_string(), "hunter2".to_string()),
            ]
        );
    }

    #[test]
    fn missing_sources_fail_with_kubelet_messages() {
        let env_from = |cm: Option<&str>, secret: Option<&str>| Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: cm.map(|n| ConfigMapEnvSource {
                    name: n.into(),
                    optional: None,
                }),
                prefix: None,
                secret_ref: secret.map(|n| SecretEnvSource {
                    name: n.into(),
                    optional: Some(false),
                }),
            }]),
            ..Default::default()
        };
        let cm_key = |name: &str, key: &str, optional: Option<bool>| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                key: key.into(),
                name: name.into(),
                optional,
            }),
            ..Default::default()
        };
        let secret_key = |name: &str, key: &str, optional: Option<bool>| EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                key: key.into(),
                name: name.into(),
                optional,
            }),
            ..Default::default()
        };
        fn message<T: std::fmt::Debug>(r: Result<T, EnvError>) -> String {
            r.unwrap_err().to_string()
        }
        assert_eq!(
            message(run(env_from(Some("x"), None))),
            "configmap \"x\" not found"
        );
        assert_eq!(
            message(run(env_from(None, Some("x")))),
            "secret \"x\" not found"
        );
        assert_eq!(
            message(single(cm_key("x", "k", None))),
            "configmap \"x\" not found"
        );
        assert_eq!(
            message(single(cm_key("cfg", "y", None))),
            "couldn't find key y in ConfigMap ns/cfg"
        );
        assert_eq!(
            message(single(secret_key("x", "k", None))),
            "secret \"x\" not found"
        );
        assert_eq!(
            message(single(secret_key("creds", "y", Some(false)))),
            "couldn't find key y in Secret ns/creds"
        );
        assert_eq!(single(cm_key("cfg", "MODE", None)).unwrap(), "fast");
        assert_eq!(
            single(secret_key("creds", "PASSWORD", None)).unwrap(),
            "hunter2"
        );
        // Optional references to missing objects or keys leave the variable out.
        for source in [
            cm_key("x", "k", Some(true)),
            cm_key("cfg", "y", Some(true)),
            secret_key("x", "k", Some(true)),
            secret_key("creds", "y", Some(true)),
        ] {
            let vars = run(Container {
                name: "c".into(),
                env: Some(vec![from("V", source)]),
                ..Default::default()
            })
            .unwrap();
            assert!(vars.is_empty(), "{vars:?}");
        }
    }

    #[test]
    fn field_refs() {
        let cases = [
            ("metadata.name", "web-0"),
            ("metadata.namespace", "ns"),
            ("metadata.uid", "uid-1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "hi"),
            ("metadata.labels", "app=\"web\"\ntier=\"front \\\"end\\\"\""),
            ("spec.nodeName", "node-a"),
            ("spec.serviceAccountName", "builder"),
            ("status.hostIP", "10.0.0.5"),
            ("status.hostIPs", "10.0.0.5,fd00::5"),
            ("status.podIP", "10.1.0.9"),
            ("status.podIPs", "10.1.0.9"),
        ];
        for (path, want) in cases {
            assert_eq!(single(field(path)).unwrap(), want, "{path}");
        }
        assert_eq!(
            single(field("spec.bogus")).unwrap_err().to_string(),
            "field label not supported: spec.bogus"
        );
        // The pod IP the sandbox reports wins over a stale status.
        let container = Container {
            name: "c".into(),
            env: Some(vec![from("IP", field("status.podIP"))]),
            ..Default::default()
        };
        let pod = pod_with(container.clone());
        let vars = resolve_env(&pod, &container, &sources(), &node(), Some("10.9.9.9")).unwrap();
        assert_eq!(vars[0].1, "10.9.9.9");
    }

    #[test]
    fn resource_field_refs_round_up_and_default_to_allocatable() {
        let limited = |source: EnvVarSource| {
            let mut c = qos::tests::container(
                "c",
                &[("cpu", "250m"), ("memory", "100Mi")],
                &[("cpu", "1500m"), ("memory", "1Gi")],
            );
            c.env = Some(vec![from("V", source)]);
            run(c).map(|v| v[0].1.clone())
        };
        let cases = [
            ("limits.cpu", None, "2"),
            ("limits.cpu", Some("1m"), "1500"),
            ("requests.cpu", None, "1"),
            ("requests.cpu", Some("100m"), "3"),
            ("limits.memory", None, "1073741824"),
            ("limits.memory", Some("1Mi"), "1024"),
            ("requests.memory", Some("1Gi"), "1"),
            ("limits.ephemeral-storage", Some("1Gi"), "100"),
            ("requests.ephemeral-storage", None, "0"),
        ];
        for (res, divisor, want) in cases {
            assert_eq!(
                limited(resource(res, divisor)).unwrap(),
                want,
                "{res} / {divisor:?}"
            );
        }
        // No limits: the node's allocatable.
        assert_eq!(single(resource("limits.cpu", None)).unwrap(), "4");
        assert_eq!(single(resource("limits.memory", Some("1Gi"))).unwrap(), "8");
        assert_eq!(
            single(resource("limits.nvidia.com/gpu", None))
                .unwrap_err()
                .to_string(),
            "unsupported container resource : limits.nvidia.com/gpu"
        );
        let mut other = resource("limits.cpu", None);
        other.resource_field_ref.as_mut().unwrap().container_name = Some("ghost".into());
        assert_eq!(
            single(other).unwrap_err().to_string(),
            "container ghost not found"
        );
    }

    fn service(
        ns: &str,
        name: &str,
        ip: &str,
        ports: &[(Option<&str>, i32, Option<&str>)],
    ) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: n.map(str::to_string),
                            port: *p,
                            protocol: proto.map(str::to_string),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn service_link_variables() {
        let mut s = sources();
        s.services = vec![
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                &[(Some("https"), 443, None)],
            ),
            service("default", "other", "10.96.0.2", &[(None, 80, None)]),
            service(
                "ns",
                "my-db",
                "10.96.0.3",
                &[(Some("sql"), 5432, None), (Some("dns"), 53, Some("UDP"))],
            ),
            service("ns", "headless", "None", &[(None, 80, None)]),
            service("ns", "v6", "fd00::10", &[(None, 80, None)]),
        ];
        let container = Container {
            name: "c".into(),
            env: Some(vec![
                literal("KUBERNETES_SERVICE_HOST", "overridden"),
                literal("URL", "$(MY_DB_PORT)"),
            ]),
            ..Default::default()
        };
        let pod = pod_with(container.clone());
        let vars: BTreeMap<_, _> = resolve_env(&pod, &container, &s, &node(), None)
            .unwrap()
            .into_iter()
            .collect();
        let get = |k: &str| vars.get(k).map(String::as_str);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("overridden"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.96.0.3"));
        assert_eq!(get("MY_DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_DNS"), Some("53"));
        assert_eq!(get("MY_DB_PORT_53_UDP"), Some("udp://10.96.0.3:53"));
        assert_eq!(get("MY_DB_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_PORT"), Some("5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("10.96.0.3"));
        assert_eq!(
            get("URL"),
            Some("tcp://10.96.0.3:5432"),
            "service vars expand"
        );
        assert_eq!(get("V6_PORT"), Some("tcp://[fd00::10]:80"));
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None);
        assert_eq!(
            get("OTHER_SERVICE_HOST"),
            None,
            "other namespaces are not linked"
        );

        // enableServiceLinks: false keeps only the master service.
        let mut pod = pod;
        pod.spec.as_mut().unwrap().enable_service_links = Some(false);
        let vars = resolve_env(&pod, &container, &s, &node(), None).unwrap();
        assert!(vars.iter().any(|(k, _)| k == "KUBERNETES_PORT"));
        assert!(!vars.iter().any(|(k, _)| k.starts_with("MY_DB")));
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "a.b-c", "1abc", "with space", "CFG_index.html"] {
            assert!(is_valid_env_var_name(ok), "{ok}");
        }
        for bad in ["", "a=b", "tab\there", "é"] {
            assert!(!is_valid_env_var_name(bad), "{bad}");
        }
    }
}
