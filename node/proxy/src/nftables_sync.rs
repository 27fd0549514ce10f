//! Applies a rendered [`Ruleset`]: the first sync (and any after a failure) replaces the whole
//! table in one batch; later ones send only the chains and map elements that changed, also in
//! one batch, so that the kernel never sees half a change.

use std::collections::BTreeMap;

use baton_nftables::{ApplyBatchError, Batch, Element, Family, NftSocket};

use crate::nftables_rules::{Ruleset, TABLE, base_chains, maps};

/// What one sync sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// A full replacement of the table.
    pub full: bool,
    /// Changes in the batch.
    pub changes: usize,
}

/// The nftables dataplane and what it last applied.
#[derive(Debug)]
pub struct NftablesProxier {
    socket: NftSocket,
    applied: Option<Ruleset>,
}

impl NftablesProxier {
    /// Opens the netlink socket (in the calling thread's network namespace).
    pub fn new() -> Result<Self, ApplyBatchError> {
        Ok(Self {
            socket: NftSocket::open()?,
            applied: None,
        })
    }

    /// Makes the table hold `wanted`.
    pub fn sync(&mut self, wanted: &Ruleset) -> Result<SyncStats, ApplyBatchError> {
        let (batch, full) = match &self.applied {
            Some(applied) => (incremental(applied, wanted), false),
            None => (full(wanted), true),
        };
        let result = self.socket.apply(&batch);
        match result {
            Ok(()) => {
                self.applied = Some(wanted.clone());
                Ok(SyncStats {
                    full,
                    changes: batch.len(),
                })
            }
            Err(err) => {
                // The kernel's state is unknown to us now: replace it all next time.
                self.applied = None;
                Err(err)
            }
        }
    }

    /// Removes the table (and with it every rule of this mode).
    pub fn clean_up(&mut self) -> Result<(), ApplyBatchError> {
        let mut batch = Batch::new();
        batch.destroy_table(Family::Ip, TABLE);
        self.applied = None;
        self.socket.apply(&batch)
    }
}

fn elements(map: &BTreeMap<Vec<u8>, baton_nftables::Verdict>) -> Vec<Element> {
    map.iter()
        .map(|(key, verdict)| Element {
            key: key.clone(),
            verdict: Some(verdict.clone()),
        })
        .collect()
}

/// Deletes the table and builds it again, all in one batch.
fn full(wanted: &Ruleset) -> Batch {
    let mut batch = Batch::new();
    batch
        .destroy_table(Family::Ip, TABLE)
        .add_table(Family::Ip, TABLE);
    for spec in maps().iter().chain(wanted.affinity_sets.values()) {
        batch.add_set(Family::Ip, TABLE, spec);
    }
    for name in wanted.chains.keys() {
        batch.add_chain(Family::Ip, TABLE, name, None);
    }
    for (name, rules) in &wanted.chains {
        for rule in rules {
            batch.add_rule(Family::Ip, TABLE, name, rule);
        }
    }
    for (name, map) in &wanted.maps {
        if !map.is_empty() {
            batch.add_elements(Family::Ip, TABLE, name, &elements(map));
        }
    }
    for (name, base, rules) in base_chains() {
        batch.add_chain(Family::Ip, TABLE, name, Some(&base));
        for rule in rules {
            batch.add_rule(Family::Ip, TABLE, name, &rule);
        }
    }
    batch
}

/// Only what differs between `applied` and `wanted`.
fn incremental(applied: &Ruleset, wanted: &Ruleset) -> Batch {
    let mut batch = Batch::new();
    // New sets and chains first (so that rules and elements may point at them).
    for (name, spec) in &wanted.affinity_sets {
        if !applied.affinity_sets.contains_key(name) {
            batch.add_set(Family::Ip, TABLE, spec);
        }
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
            .map(|(key, _)| Element {
                key: key.clone(),
                verdict: None,
            })
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
            batch.add_elements(Family::Ip, TABLE, name, &elements(&added));
        }
    }
    // Chains and sets that went, once nothing points at them.
    for name in removed {
        batch.destroy_chain(Family::Ip, TABLE, name);
    }
    for name in applied.affinity_sets.keys() {
        if !wanted.affinity_sets.contains_key(name) {
            batch.destroy_set(Family::Ip, TABLE, name);
        }
    }
    batch
}
