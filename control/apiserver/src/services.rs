//! Service address bookkeeping around updates: keeping allocated ClusterIPs, NodePorts and
//! health check node ports when a client omits them, and handing out ports claimed before the
//! write.

use serde_json::{Value, json};

/// Addresses and ports claimed for one request.
#[derive(Debug, Clone, Default)]
pub struct Allocated {
    /// ClusterIPs.
    pub ips: Vec<String>,
    /// NodePorts.
    pub ports: Vec<i64>,
}

/// Whether a Service type gets NodePorts.
pub fn needs_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// A service port's protocol, TCP when left out (the default applied later).
fn protocol(port: &Value) -> &str {
    port["protocol"].as_str().unwrap_or("TCP")
}

/// Whether a Service is reached from outside the cluster (upstream's `ExternallyAccessible`):
/// type NodePort or LoadBalancer, or a ClusterIP Service with external IPs. Only these take an
/// `externalTrafficPolicy`.
pub fn externally_accessible(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
        || (spec["type"].as_str().is_none_or(|t| t == "ClusterIP")
            && spec["externalIPs"]
                .as_array()
                .is_some_and(|ips| !ips.is_empty()))
}

/// Whether a Service gets a health check node port: type LoadBalancer with
/// `externalTrafficPolicy: Local` (upstream's `NeedsHealthCheck`), whose port kube-proxy serves
/// so that load balancers send traffic only to nodes with local endpoints.
pub fn needs_health_check_port(spec: &Value) -> bool {
    spec["type"] == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local"
}

/// The Service's health check node port (0 when unset).
pub fn health_check_port(spec: &Value) -> i64 {
    spec["healthCheckNodePort"].as_i64().unwrap_or(0)
}

/// Copies ClusterIPs, NodePorts and the health check node port from the stored Service where
/// the update left them out; drops the health check node port an update no longer needs (when
/// it still carries the stored one, as upstream's `dropTypeDependentFields`).
pub fn keep_allocations(current: &Value, next: &mut Value) {
    let old = &current["spec"];
    let spec = &mut next["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["clusterIP"].as_str().is_none_or(str::is_empty) && spec["type"] != "ExternalName" {
        spec["clusterIP"] = old["clusterIP"].clone();
        spec["clusterIPs"] = old["clusterIPs"].clone();
    }
    if spec["clusterIPs"].is_null() && spec["clusterIP"].is_string() {
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
    }
    if needs_node_ports(spec) {
        let old_ports = old["ports"].as_array().cloned().unwrap_or_default();
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports.iter_mut() {
                if p["nodePort"].as_i64().unwrap_or(0) == 0
                    && let Some(prev) = old_ports
                        .iter()
                        .find(|o| o["port"] == p["port"] && protocol(o) == protocol(p))
                    && prev["nodePort"].as_i64().unwrap_or(0) != 0
                {
                    p["nodePort"] = prev["nodePort"].clone();
                }
            }
        }
    } else if let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports.iter_mut() {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    // A Service that stops being reached from outside drops the policy it carried over (as
    // upstream's `dropTypeDependentFields`); one it sets anew is refused by validation.
    if externally_accessible(old)
        && !externally_accessible(spec)
        && spec["externalTrafficPolicy"] == old["externalTrafficPolicy"]
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("externalTrafficPolicy");
    }
    let old_port = health_check_port(old);
    if needs_health_check_port(spec) {
        if health_check_port(spec) == 0 && old_port != 0 && needs_health_check_port(old) {
            spec["healthCheckNodePort"] = json!(old_port);
        }
    } else if health_check_port(spec) == old_port
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("healthCheckNodePort");
    }
}

/// How many node ports a Service still needs: its ports' NodePorts and its health check node
/// port.
pub fn missing_node_ports(svc: &Value) -> usize {
    let spec = &svc["spec"];
    let health_check = usize::from(needs_health_check_port(spec) && health_check_port(spec) == 0);
    if !needs_node_ports(spec) {
        return health_check;
    }
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["nodePort"].as_i64().unwrap_or(0) == 0)
        .count()
        + health_check
}

/// NodePorts claimed before an update, assigned to the ports that lack one.
#[derive(Debug, Default)]
pub struct PortPool {
    ports: Vec<i64>,
    explicit: Vec<i64>,
}

impl PortPool {
    /// A pool of claimed ports.
    pub fn new(ports: Vec<i64>) -> Self {
        Self {
            ports,
            explicit: vec![],
        }
    }

    /// Adds ports the update named itself (claimed, not handed out).
    pub fn with_explicit(mut self, explicit: Vec<i64>) -> Self {
        self.explicit = explicit;
        self
    }

    /// Assigns pool ports to the Service's ports that lack a NodePort, then to its health
    /// check node port if it needs one.
    pub fn fill(&self, svc: &mut Value) {
        if self.ports.is_empty() {
            return;
        }
        let mut available = self.ports.iter();
        let spec = &mut svc["spec"];
        if needs_node_ports(spec)
            && let Some(ports) = spec["ports"].as_array_mut()
        {
            for p in ports.iter_mut() {
                if p["nodePort"].as_i64().unwrap_or(0) == 0
                    && let Some(port) = available.next()
                {
                    p["nodePort"] = json!(port);
                }
            }
        }
        if needs_health_check_port(spec)
            && health_check_port(spec) == 0
            && let Some(port) = available.next()
        {
            spec["healthCheckNodePort"] = json!(port);
        }
    }

    /// Everything claimed.
    pub fn claimed(&self) -> Allocated {
        Allocated {
            ips: vec![],
            ports: self.ports.iter().chain(&self.explicit).copied().collect(),
        }
    }
}
