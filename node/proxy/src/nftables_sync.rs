//! Applies a rendered [`Ruleset`]: the first sync (and any after a failure) replaces the whole
//! table in one batch; later ones send only the chains and map elements that changed, also in
//! one batch, so that the kernel never sees half a change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use baton_nftables::{ApplyBatchError, Batch, Element, Family, NftSocket};

use crate::nftables_rules::{
    EndpointRange, HAIRPIN, RuleSettings, Ruleset, TABLE, base_chains, base_ruleset, empty_ruleset,
    endpoint_map_name, endpoint_maps, hairpin_element, hairpin_set, maps, render_port_rules,
};
use crate::service_model::{Endpoint, ProxyState, ServicePortInfo, ServicePortKey};

/// What one sync sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// A full replacement of the table.
    pub full: bool,
    /// Changes in the batch.
    pub changes: usize,
    /// Time the kernel (or iptables-restore) took to apply them.
    pub apply_time: std::time::Duration,
}

/// One service port as last applied: its inputs and its rendered rules.
type AppliedPort = (ServicePortInfo, Vec<Endpoint>, Ruleset);

/// The nftables dataplane and what it last applied.
#[derive(Debug)]
pub struct NftablesProxier {
    socket: NftSocket,
    /// Per service port, what was applied.
    ports: BTreeMap<ServicePortKey, AppliedPort>,
    /// The settings the ports were rendered with; `None` (at first, after a failure or a
    /// clean-up) makes the next sync replace the whole table.
    settings: Option<RuleSettings>,
    /// Rules programmed now.
    rules: usize,
    /// How many service ports use each endpoint address (its hairpin element goes with the
    /// last).
    hairpin: BTreeMap<Ipv4Addr, usize>,
}

impl NftablesProxier {
    /// Opens the netlink socket (in the calling thread's network namespace).
    pub fn new() -> Result<Self, ApplyBatchError> {
        Ok(Self {
            socket: NftSocket::open()?,
            ports: BTreeMap::new(),
            settings: None,
            rules: 0,
            hairpin: BTreeMap::new(),
        })
    }

    /// Rules programmed after the last successful sync.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// Makes the table hold the rules of `state`. Only the service ports whose Service or
    /// endpoints changed since the last sync are rendered again and compared, so a change to
    /// one Service costs the same with 10 or 10,000 of them (the first sync, and any after a
    /// failure or a change of settings, replaces the whole table). When `state` knows which
    /// ports changed since it was last applied ([`ProxyState::mark_applied`]), only those are
    /// looked at; otherwise every port is compared with what was applied.
    pub fn sync_state(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
    ) -> Result<SyncStats, ApplyBatchError> {
        if self.settings.as_ref() != Some(settings) {
            let mut ports = BTreeMap::new();
            let mut hairpin = BTreeMap::new();
            for (key, (info, endpoints)) in &state.services {
                let rules = render_port_rules(info, endpoints, settings);
                for ip in &rules.hairpin {
                    *hairpin.entry(*ip).or_default() += 1;
                }
                ports.insert(key.clone(), (info.clone(), endpoints.clone(), rules));
            }
            let base = base_ruleset();
            let batch = full(&base, ports.values().map(|(_, _, rules)| rules), &hairpin);
            // Until it is applied, nothing is known to be there.
            self.settings = None;
            self.ports.clear();
            self.hairpin.clear();
            let started = Instant::now();
            self.socket.apply(&batch)?;
            let apply_time = started.elapsed();
            self.rules = base.rule_count()
                + ports
                    .values()
                    .map(|(_, _, rules)| rules.chain_rule_count())
                    .sum::<usize>();
            self.ports = ports;
            self.hairpin = hairpin;
            self.settings = Some(settings.clone());
            return Ok(SyncStats {
                full: true,
                changes: batch.len(),
                apply_time,
            });
        }
        let empty = empty_ruleset();
        let mut phases = [Batch::new(), Batch::new(), Batch::new()];
        let mut add = |applied: &Ruleset, wanted: &Ruleset| {
            for (phase, part) in phases.iter_mut().zip(incremental_phases(applied, wanted)) {
                phase.append(part);
            }
        };
        let mut changed: Vec<(ServicePortKey, Option<AppliedPort>)> = Vec::new();
        let mut rules = self.rules;
        // Per endpoint address, the change in the number of ports using it.
        let mut hairpin_delta: BTreeMap<Ipv4Addr, isize> = BTreeMap::new();
        // The ports to look at: those the state says changed since it was last applied, or,
        // when it does not know, every port (compared with what was applied).
        let every;
        let candidates: &BTreeSet<ServicePortKey> = match state.touched() {
            Some(touched) => touched,
            None => {
                every = self
                    .ports
                    .keys()
                    .chain(state.services.keys())
                    .cloned()
                    .collect();
                &every
            }
        };
        for key in candidates {
            let old = self.ports.get(key);
            let Some((info, endpoints)) = state.services.get(key) else {
                if let Some((_, _, old)) = old {
                    add(old, &empty);
                    rules -= old.chain_rule_count();
                    for ip in &old.hairpin {
                        *hairpin_delta.entry(*ip).or_default() -= 1;
                    }
                    changed.push((key.clone(), None));
                }
                continue;
            };
            if old.is_some_and(|(i, e, _)| i == info && e == endpoints) {
                continue;
            }
            let new = render_port_rules(info, endpoints, settings);
            let before = old.map(|(_, _, r)| r).unwrap_or(&empty);
            add(before, &new);
            rules = rules - before.chain_rule_count() + new.chain_rule_count();
            for ip in &before.hairpin {
                *hairpin_delta.entry(*ip).or_default() -= 1;
            }
            for ip in &new.hairpin {
                *hairpin_delta.entry(*ip).or_default() += 1;
            }
            changed.push((key.clone(), Some((info.clone(), endpoints.clone(), new))));
        }
        let [mut batch, mut additions, removals] = phases;
        let mut hairpin_gone = Vec::new();
        let mut hairpin_new = Vec::new();
        for (ip, delta) in &hairpin_delta {
            let before = self.hairpin.get(ip).copied().unwrap_or(0);
            let after = before.saturating_add_signed(*delta);
            if before > 0 && after == 0 {
                hairpin_gone.push(hairpin_element(*ip));
            } else if before == 0 && after > 0 {
                hairpin_new.push(hairpin_element(*ip));
            }
        }
        if !hairpin_gone.is_empty() {
            batch.delete_elements(Family::Ip, TABLE, HAIRPIN, &hairpin_gone);
        }
        if !hairpin_new.is_empty() {
            additions.add_elements(Family::Ip, TABLE, HAIRPIN, &hairpin_new);
        }
        batch.append(additions).append(removals);
        let started = Instant::now();
        if let Err(err) = self.socket.apply(&batch) {
            // The kernel's state is unknown to us now: replace it all next time.
            self.settings = None;
            self.ports.clear();
            self.hairpin.clear();
            return Err(err);
        }
        for (ip, delta) in hairpin_delta {
            let count = self.hairpin.entry(ip).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.hairpin.remove(&ip);
            }
        }
        let apply_time = started.elapsed();
        for (key, port) in changed {
            match port {
                Some(port) => self.ports.insert(key, port),
                None => self.ports.remove(&key),
            };
        }
        self.rules = rules;
        Ok(SyncStats {
            full: false,
            changes: batch.len(),
            apply_time,
        })
    }

    /// Removes the table (and with it every rule of this mode).
    pub fn clean_up(&mut self) -> Result<(), ApplyBatchError> {
        let mut batch = Batch::new();
        batch.destroy_table(Family::Ip, TABLE);
        self.settings = None;
        self.ports.clear();
        self.hairpin.clear();
        self.socket.apply(&batch)
    }
}

fn elements(map: &BTreeMap<Vec<u8>, baton_nftables::Verdict>) -> Vec<Element> {
    map.iter()
        .map(|(key, verdict)| Element {
            key: key.clone(),
            verdict: Some(verdict.clone()),
            ..Element::default()
        })
        .collect()
}

/// Adds endpoint-map elements, each to its map.
fn add_endpoint_elements<'a>(
    batch: &mut Batch,
    endpoints: impl IntoIterator<Item = (&'a Vec<u8>, &'a EndpointRange)>,
) {
    let mut by_map: BTreeMap<String, Vec<Element>> = BTreeMap::new();
    for (key, (last, data)) in endpoints {
        by_map
            .entry(endpoint_map_name(key[0]))
            .or_default()
            .push(Element {
                key: key.clone(),
                key_end: Some(last.clone()),
                data: Some(data.clone()),
                ..Element::default()
            });
    }
    for (map, elements) in &by_map {
        batch.add_elements(Family::Ip, TABLE, map, elements);
    }
}

/// Deletes the table and builds it again, all in one batch: the fixed chains and maps of
/// `base`, each service port's rules, and a hairpin element per endpoint address.
fn full<'a>(
    base: &'a Ruleset,
    ports: impl Iterator<Item = &'a Ruleset> + Clone,
    hairpin: &BTreeMap<Ipv4Addr, usize>,
) -> Batch {
    let mut batch = Batch::new();
    batch
        .destroy_table(Family::Ip, TABLE)
        .add_table(Family::Ip, TABLE);
    for spec in maps()
        .iter()
        .chain([&hairpin_set()])
        .chain(&endpoint_maps())
        .chain(ports.clone().flat_map(|port| port.affinity_sets.values()))
    {
        batch.add_set(Family::Ip, TABLE, spec);
    }
    let hairpin: Vec<Element> = hairpin.keys().map(|ip| hairpin_element(*ip)).collect();
    if !hairpin.is_empty() {
        batch.add_elements(Family::Ip, TABLE, HAIRPIN, &hairpin);
    }
    let chains = || {
        std::iter::once(base)
            .chain(ports.clone())
            .flat_map(|ruleset| ruleset.chains.iter())
    };
    for (name, _) in chains() {
        batch.add_chain(Family::Ip, TABLE, name, None);
    }
    for (name, rules) in chains() {
        for rule in rules {
            batch.add_rule(Family::Ip, TABLE, name, rule);
        }
    }
    // Keyed by the element's key: two Services may claim one address and port (external IPs
    // are not checked for uniqueness), and the kernel refuses a batch adding a key twice. The
    // last port's claim holds here; an incremental sync that meets such a claim is refused and
    // retried as a full sync, which settles it.
    let mut by_map: BTreeMap<&str, BTreeMap<&[u8], &baton_nftables::Verdict>> = BTreeMap::new();
    for ruleset in std::iter::once(base).chain(ports.clone()) {
        for (name, map) in &ruleset.maps {
            by_map
                .entry(name)
                .or_default()
                .extend(map.iter().map(|(key, verdict)| (key.as_slice(), verdict)));
        }
    }
    for (name, map) in &by_map {
        let elements: Vec<Element> = map
            .iter()
            .map(|(key, verdict)| Element {
                key: key.to_vec(),
                verdict: Some((*verdict).clone()),
                ..Element::default()
            })
            .collect();
        if !elements.is_empty() {
            batch.add_elements(Family::Ip, TABLE, name, &elements);
        }
    }
    // After the rules: the kernel checks each element against each rule looking its map up
    // when it comes, and each existing element when a rule comes; either way once.
    add_endpoint_elements(&mut batch, ports.flat_map(|port| port.endpoints.iter()));
    for (name, base, rules) in base_chains() {
        batch.add_chain(Family::Ip, TABLE, name, Some(&base));
        for rule in rules {
            batch.add_rule(Family::Ip, TABLE, name, &rule);
        }
    }
    batch
}

/// The difference in three phases that several service ports' changes are interleaved by
/// (every port's first phase, then every port's second, then third), so that an address or
/// node port one Service gives up is out of the maps before another takes it: (new sets and
/// chains, element deletions, rewritten chains), (element additions), (removed chains and sets).
fn incremental_phases(applied: &Ruleset, wanted: &Ruleset) -> [Batch; 3] {
    let mut batch = Batch::new();
    let mut additions = Batch::new();
    let mut removals = Batch::new();
    // New sets and chains first (so that rules and elements may point at them).
    for (name, spec) in &wanted.affinity_sets {
        if !applied.affinity_sets.contains_key(name) {
            batch.add_set(Family::Ip, TABLE, spec);
        }
    }
    // Endpoints that went or changed, out first (a change of a port's endpoints, in number
    // too, is only this and the additions below: no rule changes, so the kernel does not
    // validate the table again).
    let mut gone: BTreeMap<String, Vec<Element>> = BTreeMap::new();
    for (key, range) in &applied.endpoints {
        if wanted.endpoints.get(key) != Some(range) {
            // A range is removed by its first and last key.
            gone.entry(endpoint_map_name(key[0]))
                .or_default()
                .push(Element {
                    key_end: Some(range.0.clone()),
                    ..Element::key(key.clone())
                });
        }
    }
    for (map, elements) in &gone {
        batch.delete_elements(Family::Ip, TABLE, map, elements);
    }
    for name in wanted
        .chains
        .keys()
        .filter(|n| !applied.chains.contains_key(*n))
    {
        batch.add_chain(Family::Ip, TABLE, name, None);
    }
    // Map elements that went or changed, out first.
    for (name, want) in &wanted.maps {
        let empty = BTreeMap::new();
        let had = applied.maps.get(name).unwrap_or(&empty);
        let gone: Vec<Element> = had
            .iter()
            .filter(|(key, verdict)| want.get(*key) != Some(*verdict))
            .map(|(key, _)| Element::key(key.clone()))
            .collect();
        if !gone.is_empty() {
            batch.delete_elements(Family::Ip, TABLE, name, &gone);
        }
    }
    // Chains whose rules changed: flushed and written again; chains that went: flushed.
    for (name, rules) in &wanted.chains {
        match applied.chains.get(name) {
            Some(old) if old == rules => continue,
            Some(_) => {
                batch.flush_chain(Family::Ip, TABLE, name);
            }
            None => {}
        }
        for rule in rules {
            batch.add_rule(Family::Ip, TABLE, name, rule);
        }
    }
    let removed: Vec<&String> = applied
        .chains
        .keys()
        .filter(|n| !wanted.chains.contains_key(*n))
        .collect();
    for name in &removed {
        batch.flush_chain(Family::Ip, TABLE, name);
    }
    // New and changed elements.
    for (name, want) in &wanted.maps {
        let empty = BTreeMap::new();
        let had = applied.maps.get(name).unwrap_or(&empty);
        let added: BTreeMap<Vec<u8>, baton_nftables::Verdict> = want
            .iter()
            .filter(|(key, verdict)| had.get(*key) != Some(*verdict))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !added.is_empty() {
            additions.add_elements(Family::Ip, TABLE, name, &elements(&added));
        }
    }
    add_endpoint_elements(
        &mut additions,
        wanted
            .endpoints
            .iter()
            .filter(|(key, range)| applied.endpoints.get(*key) != Some(*range)),
    );
    // Chains and sets that went, once nothing points at them.
    for name in removed {
        removals.delete_chain(Family::Ip, TABLE, name);
    }
    for name in applied.affinity_sets.keys() {
        if !wanted.affinity_sets.contains_key(name) {
            removals.delete_set(Family::Ip, TABLE, name);
        }
    }

    [batch, additions, removals]
}
