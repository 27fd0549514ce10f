//! The node IPAM controller (kube-controller-manager's node-ipam-controller, range allocator):
//! with --allocate-node-cidrs, every node without spec.podCIDR gets the lowest free subnet of
//! size --node-cidr-mask-size out of --cluster-cidr (spec.podCIDR and spec.podCIDRs). The
//! subnets in use are rebuilt from all nodes at start and kept in memory, a subnet is never
//! handed out twice, and a deleted node's subnet is free again. When the range is exhausted,
//! the node gets the event CIDRNotAvailable and waits for a subnet to be freed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use baton_client::InformerEvent;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};

/// Giving a node its pod CIDR failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocateNodeCidrError {
    #[error("no pod CIDR left in {cluster} for node {node}")]
    Exhausted { node: String, cluster: IpNet },
    #[error("setting the pod CIDR {cidr} of node {node}")]
    Patch {
        node: String,
        cidr: IpNet,
        #[source]
        source: kube::Error,
    },
}

/// The subnets of a cluster CIDR, by index, and which are in use.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: IpNet,
    mask: u8,
    used: BTreeSet<u128>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl CidrSet {
    /// The subnets of size `mask` of `cluster` (the mask must be at least the cluster's
    /// prefix and at most the address length, which the flags' validation ensures).
    pub fn new(cluster: IpNet, mask: u8) -> Self {
        CidrSet {
            cluster: cluster.trunc(),
            mask,
            used: BTreeSet::new(),
        }
    }

    fn bits(&self) -> u8 {
        self.cluster.max_prefix_len()
    }

    /// How many subnets there are.
    pub fn capacity(&self) -> u128 {
        1u128
            .checked_shl(u32::from(self.mask - self.cluster.prefix_len()))
            .unwrap_or(u128::MAX)
    }

    /// The index of the subnet holding `ip` (which must be in the cluster range).
    fn index_of(&self, ip: IpAddr) -> u128 {
        let offset = to_u128(ip) - to_u128(self.cluster.network());
        offset
            .checked_shr(u32::from(self.bits() - self.mask))
            .unwrap_or(0)
    }

    fn subnet(&self, index: u128) -> IpNet {
        let shift = u32::from(self.bits() - self.mask);
        let base = to_u128(self.cluster.network()) + index.checked_shl(shift).unwrap_or(0);
        match self.cluster {
            IpNet::V4(_) => IpNet::new(IpAddr::V4((base as u32).into()), self.mask),
            IpNet::V6(_) => IpNet::new(IpAddr::V6(base.into()), self.mask),
        }
        .expect("mask within the address length")
    }

    /// The subnet indexes a CIDR covers, when it lies in the cluster range.
    fn range_of(&self, cidr: &IpNet) -> Option<(u128, u128)> {
        if !self.cluster.contains(cidr) && !cidr.contains(&self.cluster) {
            return None;
        }
        let first = cidr.network().max(self.cluster.network());
        let last = cidr.broadcast().min(self.cluster.broadcast());
        Some((self.index_of(first), self.index_of(last)))
    }

    /// Marks the subnets a CIDR covers as used (a CIDR outside the range is ignored).
    pub fn occupy(&mut self, cidr: &IpNet) {
        if let Some((first, last)) = self.range_of(cidr) {
            // A CIDR far larger than a subnet would be a misconfiguration; bound the work.
            for i in first..=last.min(first.saturating_add(1 << 16)) {
                self.used.insert(i);
            }
        }
    }

    /// Frees the subnets a CIDR covers.
    pub fn release(&mut self, cidr: &IpNet) {
        if let Some((first, last)) = self.range_of(cidr) {
            let gone: Vec<u128> = self.used.range(first..=last).copied().collect();
            for i in gone {
                self.used.remove(&i);
            }
        }
    }

    /// Whether a subnet is in use.
    #[cfg(test)]
    pub fn is_used(&self, cidr: &IpNet) -> bool {
        self.range_of(cidr)
            .is_some_and(|(first, last)| self.used.range(first..=last).next().is_some())
    }

    /// Takes the lowest free subnet.
    pub fn allocate(&mut self) -> Option<IpNet> {
        let mut candidate = 0u128;
        for &i in &self.used {
            if i > candidate {
                break;
            }
            candidate = i + 1;
        }
        if candidate >= self.capacity() {
            return None;
        }
        self.used.insert(candidate);
        Some(self.subnet(candidate))
    }
}

/// The allocator's memory: the set, and what it gave each node (by uid) until the node shows
/// it, so that a node is never given two subnets.
#[derive(Debug)]
struct Allocator {
    set: CidrSet,
    given: HashMap<String, (String, IpNet)>,
    /// Nodes waiting for a subnet to be freed.
    waiting: HashSet<String>,
}

struct State {
    client: Client,
    nodes: Store<Node>,
    recorder: Recorder,
    allocator: Arc<Mutex<Allocator>>,
    backoff: FailureBackoff,
}

/// The pod CIDRs a node holds.
fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return vec![];
    };
    let mut all: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Registers the controller's subscriptions and returns its loop (nothing to do unless node
/// CIDRs are allocated).
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let Some((cluster, mask)) = ctx.node_cidrs else {
        return async {}.boxed();
    };
    let allocator = Arc::new(Mutex::new(Allocator {
        set: CidrSet::new(cluster, mask),
        given: HashMap::new(),
        waiting: HashSet::new(),
    }));
    // Every subnet a node holds is used; a deleted node's is free again, and nodes waiting
    // for one are looked at again.
    let book = allocator.clone();
    let by_nodes = ctx.nodes.subscribe(move |event: &InformerEvent<'_, Node>| {
        let mut alloc = book.lock().expect("cidr allocator");
        match event {
            InformerEvent::Applied { new, .. } => {
                let held = node_cidrs(new);
                for cidr in &held {
                    alloc.set.occupy(cidr);
                }
                let name = new.name_any();
                if !held.is_empty() {
                    alloc.given.remove(&name);
                    alloc.waiting.remove(&name);
                    return vec![];
                }
                vec![ObjectRef::from_obj(*new)]
            }
            InformerEvent::Deleted(node) => {
                let name = node.name_any();
                let mut freed = node_cidrs(node);
                if let Some((_, cidr)) = alloc.given.remove(&name) {
                    freed.push(cidr);
                }
                for cidr in &freed {
                    alloc.set.release(cidr);
                }
                alloc.waiting.remove(&name);
                if freed.is_empty() {
                    return vec![];
                }
                alloc.waiting.iter().map(|n| ObjectRef::new(n)).collect()
            }
        }
    });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        nodes: ctx.nodes.store(),
        recorder: ctx.recorder("cidrAllocator"),
        allocator,
        backoff: FailureBackoff::default(),
    });
    async move {
        // The informer's initial list has occupied what the nodes hold; make sure of it before
        // handing anything out.
        {
            let mut alloc = state.allocator.lock().expect("cidr allocator");
            for node in state.nodes.state() {
                for cidr in node_cidrs(&node) {
                    alloc.set.occupy(&cidr);
                }
            }
        }
        Controller::for_shared_stream(futures::stream::empty(), state.nodes.clone())
            .reconcile_on(by_nodes)
            .run(reconcile, error_policy, state.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "node ipam reconcile");
                }
            })
            .await;
    }
    .boxed()
}

fn error_policy(node: Arc<Node>, err: &AllocateNodeCidrError, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&node.name_any());
    log_failure!(
        "allocating a node CIDR failed",
        &node.name_any(),
        err,
        delay,
    );
    Action::requeue(delay)
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, AllocateNodeCidrError> {
    let name = node.name_any();
    if !node_cidrs(&node).is_empty() {
        return Ok(Action::await_change());
    }
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let (cidr, cluster) = {
        let mut alloc = state.allocator.lock().expect("cidr allocator");
        // The node as the cache has it now: the informer updates the cache before its
        // handler takes this lock, so a subnet given meanwhile (and forgotten from `given`)
        // shows here, and the node is not given a second one.
        let latest = state.nodes.get(&ObjectRef::from_obj(node.as_ref()));
        if latest.is_some_and(|latest| !node_cidrs(&latest).is_empty()) {
            return Ok(Action::await_change());
        }
        let cluster = alloc.set.cluster;
        let reuse = alloc
            .given
            .get(&name)
            .filter(|(given_uid, _)| *given_uid == uid)
            .map(|(_, cidr)| *cidr);
        let cidr = match reuse {
            Some(cidr) => Some(cidr),
            None => {
                if let Some((_, stale)) = alloc.given.remove(&name) {
                    alloc.set.release(&stale);
                }
                alloc.set.allocate()
            }
        };
        match cidr {
            Some(cidr) => {
                alloc.given.insert(name.clone(), (uid.clone(), cidr));
                alloc.waiting.remove(&name);
            }
            None => {
                alloc.waiting.insert(name.clone());
            }
        }
        (cidr, cluster)
    };
    let Some(cidr) = cidr else {
        let event = Event {
            type_: EventType::Normal,
            reason: "CIDRNotAvailable".into(),
            note: Some(format!("Node {name} status is now: CIDRNotAvailable")),
            action: "AllocateCIDR".into(),
            secondary: None,
        };
        if let Err(e) = state.recorder.publish(&event, &node.object_ref(&())).await {
            tracing::debug!(error = %e, "recording CIDRNotAvailable");
        }
        return Err(AllocateNodeCidrError::Exhausted {
            node: name,
            cluster,
        });
    };
    let patch = json!({
        "metadata": { "uid": uid },
        "spec": { "podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()] },
    });
    let api: Api<Node> = Api::all(state.client.clone());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, %cidr, "allocated the node's pod CIDR");
            state.backoff.reset(&name);
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            // The node is gone (or replaced): its subnet is free again.
            let mut alloc = state.allocator.lock().expect("cidr allocator");
            if alloc.given.get(&name).is_some_and(|(u, _)| *u == uid) {
                alloc.given.remove(&name);
                alloc.set.release(&cidr);
            }
            Ok(Action::await_change())
        }
        Err(source) => Err(AllocateNodeCidrError::Patch {
            node: name,
            cidr,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_subnet_first() {
        let mut set = CidrSet::new(net("10.244.0.0/16"), 24);
        assert_eq!(set.capacity(), 256);
        assert_eq!(set.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(set.allocate(), Some(net("10.244.1.0/24")));
        set.occupy(&net("10.244.3.0/24"));
        assert_eq!(set.allocate(), Some(net("10.244.2.0/24")));
        assert_eq!(set.allocate(), Some(net("10.244.4.0/24")));
        // A released subnet is the lowest free again.
        set.release(&net("10.244.1.0/24"));
        assert!(!set.is_used(&net("10.244.1.0/24")));
        assert_eq!(set.allocate(), Some(net("10.244.1.0/24")));
        // CIDRs outside the range are ignored.
        set.occupy(&net("192.168.0.0/24"));
        assert!(!set.is_used(&net("192.168.0.0/24")));
    }

    #[test]
    fn exhaustion_and_release() {
        let mut set = CidrSet::new(net("10.0.0.0/30"), 31);
        assert_eq!(set.allocate(), Some(net("10.0.0.0/31")));
        assert_eq!(set.allocate(), Some(net("10.0.0.2/31")));
        assert_eq!(set.allocate(), None);
        set.release(&net("10.0.0.2/31"));
        assert_eq!(set.allocate(), Some(net("10.0.0.2/31")));
        // A larger CIDR occupies every subnet it covers.
        let mut set = CidrSet::new(net("10.0.0.0/16"), 24);
        set.occupy(&net("10.0.0.0/23"));
        assert_eq!(set.allocate(), Some(net("10.0.2.0/24")));
    }

    #[test]
    fn ipv6_ranges() {
        let mut set = CidrSet::new(net("fd00:10:244::/56"), 64);
        assert_eq!(set.capacity(), 256);
        assert_eq!(set.allocate(), Some(net("fd00:10:244::/64")));
        assert_eq!(set.allocate(), Some(net("fd00:10:244:1::/64")));
    }
}
