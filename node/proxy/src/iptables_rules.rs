//! The iptables mode's rules in upstream kube-proxy's chain layout, rendered as data (chains of
//! `iptables-restore` rule lines) from the desired [`ProxyState`]:
//!
//! - nat: `KUBE-SERVICES` (one rule per service address, then `KUBE-NODEPORTS` for local
//!   destinations), `KUBE-SVC-*` (masquerade off-cluster sources, then endpoints chosen with
//!   `statistic --mode random`), `KUBE-SEP-*` (hairpin mark, DNAT), `KUBE-EXT-*` (external
//!   traffic), `KUBE-FW-*` (load-balancer IPs from `loadBalancerSourceRanges` only),
//!   `KUBE-MARK-MASQ` and `KUBE-POSTROUTING` (mark 0x4000, masquerade);
//! - filter: `KUBE-SERVICES` and `KUBE-EXTERNAL-SERVICES` reject Services without endpoints,
//!   and drop connections to a load-balancer IP that its firewall chain did not let through.
//!
//! Chain names hash the service port (and endpoint) as upstream does: the first 16 characters of
//! the base32 of a SHA-256.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::nftables_rules::{MASQUERADE_MARK, RuleSettings};
use crate::service_model::{Endpoint, ProxyState, ServicePortInfo, categorize};

/// A chain's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`.
    Nat,
    /// `filter`.
    Filter,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// The jumps from built-in chains into the proxy's: (table, built-in chain, rule arguments).
pub const JUMPS: &[(Table, &str, &[&str])] = &[
    (
        Table::Nat,
        "PREROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        Table::Nat,
        "OUTPUT",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        Table::Nat,
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING",
        ],
    ),
    (
        Table::Filter,
        "INPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            "KUBE-EXTERNAL-SERVICES",
        ],
    ),
    (
        Table::Filter,
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        Table::Filter,
        "OUTPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
];

/// Every chain the proxy owns, with its rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesRuleset {
    /// (table, chain) to rule lines (without `-A CHAIN`).
    pub chains: BTreeMap<(Table, String), Vec<String>>,
}

impl IptablesRuleset {
    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    fn rule(&mut self, table: Table, chain: &str, rule: String) {
        self.chains
            .entry((table, chain.to_owned()))
            .or_default()
            .push(rule);
    }

    fn chain(&mut self, table: Table, chain: &str) {
        self.chains.entry((table, chain.to_owned())).or_default();
    }
}

/// Upstream's chain-name hash: base32 (RFC 4648) of SHA-256, first 16 characters.
fn hash16(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(16);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in digest {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && out.len() < 16 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    out
}

fn port_name(info: &ServicePortInfo) -> String {
    info.key().to_string()
}

fn protocol_lower(info: &ServicePortInfo) -> String {
    info.protocol.as_str().to_lowercase()
}

fn svc_chain(info: &ServicePortInfo) -> String {
    format!(
        "KUBE-SVC-{}",
        hash16(&format!("{}{}", port_name(info), protocol_lower(info)))
    )
}

fn ext_chain(info: &ServicePortInfo) -> String {
    format!(
        "KUBE-EXT-{}",
        hash16(&format!("{}{}", port_name(info), protocol_lower(info)))
    )
}

fn fw_chain(info: &ServicePortInfo) -> String {
    format!(
        "KUBE-FW-{}",
        hash16(&format!("{}{}", port_name(info), protocol_lower(info)))
    )
}

fn sep_chain(info: &ServicePortInfo, endpoint: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{}:{}",
            port_name(info),
            protocol_lower(info),
            endpoint.ip,
            endpoint.port
        ))
    )
}

/// Rules that pick one of `endpoints` at random, each equally likely; with session affinity,
/// a client seen within the timeout goes to its endpoint first (`-m recent`, as upstream).
fn spread(
    ruleset: &mut IptablesRuleset,
    chain: &str,
    info: &ServicePortInfo,
    endpoints: &[Endpoint],
) {
    if let Some(seconds) = info.session_affinity_seconds {
        for endpoint in endpoints {
            let target = sep_chain(info, endpoint);
            ruleset.rule(
                Table::Nat,
                chain,
                format!(
                    "-m comment --comment \"{} -> {}:{}\" -m recent --name {target} --mask 255.255.255.255 --rcheck --seconds {seconds} --reap -j {target}",
                    port_name(info),
                    endpoint.ip,
                    endpoint.port
                ),
            );
        }
    }
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let comment = format!(
            "-m comment --comment \"{} -> {}:{}\"",
            port_name(info),
            endpoint.ip,
            endpoint.port
        );
        let target = sep_chain(info, endpoint);
        let rule = if i + 1 == n {
            format!("{comment} -j {target}")
        } else {
            let probability = 1.0 / (n - i) as f64;
            format!(
                "{comment} -m statistic --mode random --probability {probability:.10} -j {target}"
            )
        };
        ruleset.rule(Table::Nat, chain, rule);
    }
}

/// Renders the rules for `state` on this node.
pub fn render_iptables(state: &ProxyState, settings: &RuleSettings) -> IptablesRuleset {
    let mut ruleset = IptablesRuleset::default();
    let mark = format!("{MASQUERADE_MARK:#x}");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        ruleset.chain(Table::Nat, chain);
    }
    for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
        ruleset.chain(Table::Filter, chain);
    }
    ruleset.rule(
        Table::Nat,
        "KUBE-POSTROUTING",
        format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
    );
    ruleset.rule(
        Table::Nat,
        "KUBE-POSTROUTING",
        format!("-j MARK --xor-mark {mark}"),
    );
    ruleset.rule(
        Table::Nat,
        "KUBE-POSTROUTING",
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    );
    ruleset.rule(
        Table::Nat,
        "KUBE-MARK-MASQ",
        format!("-j MARK --or-mark {mark}"),
    );

    for (info, endpoints) in state.services.values() {
        let categorized = categorize(info, endpoints, &settings.node_name);
        let proto = protocol_lower(info);
        let name = port_name(info);
        for endpoint in &categorized.all_reachable {
            let chain = sep_chain(info, endpoint);
            ruleset.rule(
                Table::Nat,
                &chain,
                format!(
                    "-m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
                    endpoint.ip
                ),
            );
            let remember = if info.session_affinity_seconds.is_some() {
                format!(" -m recent --name {chain} --mask 255.255.255.255 --set")
            } else {
                String::new()
            };
            ruleset.rule(
                Table::Nat,
                &chain,
                format!(
                    "-m comment --comment {name} -m {proto} -p {proto}{remember} -j DNAT --to-destination {}:{}",
                    endpoint.ip, endpoint.port
                ),
            );
        }
        let internal = if info.internal_policy_local {
            &categorized.local
        } else {
            &categorized.cluster
        };
        let service_match = format!(
            "-m {proto} -p {proto} -d {}/32 --dport {}",
            info.cluster_ip, info.port
        );
        if internal.is_empty() {
            // Endpoints only on other nodes while the policy is Local: dropped, as upstream.
            let (why, action) = if info.internal_policy_local && categorized.has_any_endpoints {
                ("has no local endpoints", "DROP")
            } else {
                (
                    "has no endpoints",
                    "REJECT --reject-with icmp-port-unreachable",
                )
            };
            ruleset.rule(
                Table::Filter,
                "KUBE-SERVICES",
                format!("-m comment --comment \"{name} {why}\" {service_match} -j {action}"),
            );
        } else {
            let svc = svc_chain(info);
            ruleset.rule(
                Table::Nat,
                "KUBE-SERVICES",
                format!("-m comment --comment \"{name} cluster IP\" {service_match} -j {svc}"),
            );
            if let Some(cidr) = settings.cluster_cidr {
                ruleset.rule(
                    Table::Nat,
                    &svc,
                    format!("-m comment --comment \"{name} cluster IP\" {service_match} ! -s {cidr} -j KUBE-MARK-MASQ"),
                );
            }
            spread(&mut ruleset, &svc, info, internal);
        }
        if !info.externally_accessible() {
            continue;
        }
        let external = if info.external_policy_local {
            &categorized.local
        } else {
            &categorized.cluster
        };
        let ext = ext_chain(info);
        // Where external traffic goes: the ext chain, or a filter verdict (refused when there
        // is no endpoint at all; dropped when the policy is Local and the endpoints are all
        // on other nodes, as upstream; the nat table cannot drop).
        let target: Result<String, (&str, &str)> = if !external.is_empty() {
            if !info.external_policy_local {
                ruleset.rule(
                    Table::Nat,
                    &ext,
                    format!("-m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"),
                );
            }
            spread(&mut ruleset, &ext, info, external);
            Ok(ext.clone())
        } else if info.external_policy_local && categorized.has_any_endpoints {
            Err(("has no local endpoints", "DROP"))
        } else {
            Err((
                "has no endpoints",
                "REJECT --reject-with icmp-port-unreachable",
            ))
        };
        // Load-balancer IPs of a Service with loadBalancerSourceRanges go through its
        // firewall chain, which goes on to the ext chain only for those sources; the others
        // keep their destination and are dropped in the filter table.
        let firewalled = target.is_ok() && !info.load_balancer_source_ranges.is_empty();
        if firewalled && !info.load_balancer_ips.is_empty() {
            let fw = fw_chain(info);
            for source in &info.load_balancer_source_ranges {
                ruleset.rule(
                    Table::Nat,
                    &fw,
                    format!("-m comment --comment \"{name} loadbalancer IP\" -s {source} -j {ext}"),
                );
            }
            for ip in &info.load_balancer_ips {
                let address_match =
                    format!("-m {proto} -p {proto} -d {ip}/32 --dport {}", info.port);
                ruleset.rule(
                    Table::Nat,
                    "KUBE-SERVICES",
                    format!(
                        "-m comment --comment \"{name} loadbalancer IP\" {address_match} -j {fw}"
                    ),
                );
                for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
                    ruleset.rule(
                        Table::Filter,
                        chain,
                        format!("-m comment --comment \"{name} traffic not accepted by {fw}\" {address_match} -j DROP"),
                    );
                }
            }
        }
        let load_balancer_ips = info.load_balancer_ips.iter().filter(|_| !firewalled);
        for ip in info.external_ips.iter().chain(load_balancer_ips) {
            let address_match = format!("-m {proto} -p {proto} -d {ip}/32 --dport {}", info.port);
            match &target {
                Ok(chain) => ruleset.rule(
                    Table::Nat,
                    "KUBE-SERVICES",
                    format!(
                        "-m comment --comment \"{name} external IP\" {address_match} -j {chain}"
                    ),
                ),
                Err((why, action)) => ruleset.rule(
                    Table::Filter,
                    "KUBE-EXTERNAL-SERVICES",
                    format!("-m comment --comment \"{name} {why}\" {address_match} -j {action}"),
                ),
            }
        }
        if let Some(node_port) = info.node_port {
            match &target {
                Ok(chain) => ruleset.rule(
                    Table::Nat,
                    "KUBE-NODEPORTS",
                    format!("-m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {chain}"),
                ),
                Err((why, action)) => ruleset.rule(
                    Table::Filter,
                    "KUBE-EXTERNAL-SERVICES",
                    format!("-m comment --comment \"{name} {why}\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j {action}"),
                ),
            }
        }
    }
    ruleset.rule(
        Table::Nat,
        "KUBE-SERVICES",
        "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into(),
    );
    ruleset
}

/// The `iptables-restore --noflush` input that turns `applied` into `wanted` (everything when
/// `applied` is `None`): changed chains are declared (which flushes them) and written again,
/// chains that went are declared and deleted.
pub fn restore_input(applied: Option<&IptablesRuleset>, wanted: &IptablesRuleset) -> String {
    let mut out = String::new();
    for table in [Table::Filter, Table::Nat] {
        let mut declarations = String::new();
        let mut rules = String::new();
        let mut deletions = String::new();
        for ((t, chain), lines) in &wanted.chains {
            if *t != table {
                continue;
            }
            let unchanged =
                applied.and_then(|a| a.chains.get(&(table, chain.clone()))) == Some(lines);
            if unchanged {
                continue;
            }
            declarations.push_str(&format!(":{chain} - [0:0]\n"));
            for line in lines {
                rules.push_str(&format!("-A {chain} {line}\n"));
            }
        }
        if let Some(applied) = applied {
            for (t, chain) in applied.chains.keys() {
                if *t == table && !wanted.chains.contains_key(&(table, chain.clone())) {
                    declarations.push_str(&format!(":{chain} - [0:0]\n"));
                    deletions.push_str(&format!("-X {chain}\n"));
                }
            }
        }
        if declarations.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "*{}\n{declarations}{rules}{deletions}COMMIT\n",
            table.name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_hash_like_upstream() {
        // The shape upstream's names have: prefix and 16 base32 characters.
        let name = hash16("default/web:httptcp");
        assert_eq!(name.len(), 16);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(name, hash16("default/web:httpudp"));
        // RFC 4648 base32 of SHA-256(""): 4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ...
        assert_eq!(hash16(""), "4OYMIQUY7QOBJGX3");
    }

    #[test]
    fn load_balancer_source_ranges_go_through_a_firewall_chain() {
        let service = crate::service_model::firewalled_load_balancer();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "web-a", "namespace": "default",
                    "labels": { "kubernetes.io/service-name": "web" },
                },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": [{ "addresses": ["10.244.1.2"], "conditions": { "ready": true } }],
            }))
            .unwrap();
        let state = crate::service_model::build_state(&[service], &[slice]);
        let settings = RuleSettings {
            node_name: "n1".into(),
            cluster_cidr: None,
        };
        let rules = render_iptables(&state, &settings);
        let info = &state.services.values().next().unwrap().0;
        let (fw, ext) = (fw_chain(info), ext_chain(info));
        let chain = |table, name: &str| rules.chains[&(table, name.to_owned())].clone();
        let fw_rules = chain(Table::Nat, &fw);
        assert_eq!(fw_rules.len(), 1);
        assert!(fw_rules[0].ends_with(&format!("-s 10.1.0.0/16 -j {ext}")));
        let to_fw: Vec<String> = chain(Table::Nat, "KUBE-SERVICES")
            .into_iter()
            .filter(|r| r.contains("-d 192.0.2.10/32"))
            .collect();
        assert_eq!(to_fw.len(), 1);
        assert!(to_fw[0].ends_with(&format!("-j {fw}")));
        for filter in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
            assert!(
                chain(Table::Filter, filter)
                    .iter()
                    .any(|r| r.contains("-d 192.0.2.10/32 --dport 80 -j DROP")),
                "{filter}"
            );
        }
    }

    #[test]
    fn an_incremental_input_holds_only_what_changed() {
        let mut before = IptablesRuleset::default();
        before.rule(Table::Nat, "KUBE-SERVICES", "-j KUBE-SVC-A".into());
        before.rule(Table::Nat, "KUBE-SVC-A", "-j KUBE-SEP-A".into());
        before.rule(Table::Nat, "KUBE-SVC-OLD", "-j DROP".into());
        let mut after = IptablesRuleset::default();
        after.rule(Table::Nat, "KUBE-SERVICES", "-j KUBE-SVC-A".into());
        after.rule(Table::Nat, "KUBE-SVC-A", "-j KUBE-SEP-B".into());
        let input = restore_input(Some(&before), &after);
        assert_eq!(
            input,
            "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-OLD - [0:0]\n-A KUBE-SVC-A -j KUBE-SEP-B\n-X KUBE-SVC-OLD\nCOMMIT\n"
        );
        assert_eq!(restore_input(Some(&after), &after), "");
    }
}
