//! Service address bookkeeping around updates: keeping allocated ClusterIPs and NodePorts when
//! a client omits them, and handing out NodePorts claimed before the write.

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

/// Copies ClusterIPs and NodePorts from the stored Service where the update left them out.
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
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
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
}

/// How many ports of a Service still need a NodePort.
pub fn missing_node_ports(svc: &Value) -> usize {
    if !needs_node_ports(&svc["spec"]) {
        return 0;
    }
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["nodePort"].as_i64().unwrap_or(0) == 0)
        .count()
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

    /// Assigns pool ports to the Service's ports that lack a NodePort.
    pub fn fill(&self, svc: &mut Value) {
        if self.ports.is_empty() || !needs_node_ports(&svc["spec"]) {
            return;
        }
        let mut available = self.ports.iter();
        if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
            for p in ports.iter_mut() {
                if p["nodePort"].as_i64().unwrap_or(0) == 0
                    && let Some(port) = available.next()
                {
                    p["nodePort"] = json!(port);
                }
            }
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
