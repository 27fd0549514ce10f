//! The dependency graph (upstream's GraphBuilder's uidToNode): every object with owners or
//! dependents, by uid, with edges both ways. Owners seen only in references are "virtual"
//! until observed or found gone. Applying a change returns the work it causes: objects whose
//! owners may be gone (attempt to delete) and owners that started orphaning their dependents.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// An object's uid, shared between the graph's maps.
pub type Uid = Arc<str>;

/// Where an object is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Uid,
}

/// The group of an apiVersion (`apps/v1` -> `apps`, `v1` -> ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// One owner reference of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// blockOwnerDeletion.
    pub block: bool,
}

/// What a watch says about an object.
#[derive(Debug, Clone)]
pub struct Observed {
    pub identity: Identity,
    pub owners: Vec<Owner>,
    /// deletionTimestamp is set.
    pub deleting: bool,
    /// The `orphan` finalizer is present.
    pub orphan_finalizer: bool,
    /// The `foregroundDeletion` finalizer is present.
    pub foreground_finalizer: bool,
}

/// A change to apply to the graph.
#[derive(Debug, Clone)]
pub enum Change {
    /// An object was added or changed.
    Upsert(Observed),
    /// An object was deleted.
    Deleted(Identity),
    /// A virtual owner was found not to exist.
    VirtualDeleted(Identity),
    /// A watch re-listed one kind: observed objects of that kind not listed are gone.
    Relisted {
        group: String,
        kind: String,
        listed: HashSet<Uid>,
    },
}

/// Work a change causes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// Check whether the object must be deleted (or, deleting its dependents, finished).
    Delete(Uid),
    /// Orphan the object's dependents, then drop its `orphan` finalizer.
    Orphan(Uid),
}

/// One object of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<Owner>,
    pub dependents: HashSet<Uid>,
    pub deleting: bool,
    pub orphan_finalizer: bool,
    pub foreground_finalizer: bool,
    /// Foreground deletion in progress: deleting with the `foregroundDeletion` finalizer.
    pub deleting_dependents: bool,
    /// Known only from references, not observed.
    pub virtual_: bool,
}

impl Node {
    fn observed(o: &Observed) -> Node {
        Node {
            identity: o.identity.clone(),
            owners: o.owners.clone(),
            dependents: HashSet::new(),
            deleting: o.deleting,
            orphan_finalizer: o.orphan_finalizer,
            foreground_finalizer: o.foreground_finalizer,
            deleting_dependents: o.deleting && o.foreground_finalizer,
            virtual_: false,
        }
    }
}

/// Whether a reference can designate an object: same group, kind and name, and a namespace
/// the referring object can reach (its own, or none for a cluster-scoped owner).
pub fn reference_matches(owner: &Owner, identity: &Identity, dependent_ns: Option<&str>) -> bool {
    group_of(&owner.api_version) == group_of(&identity.api_version)
        && owner.kind == identity.kind
        && owner.name == identity.name
        && (identity.namespace.is_none() || identity.namespace.as_deref() == dependent_ns)
}

/// Owners known to be gone (upstream's absentOwnerCache), the most recent ones.
#[derive(Debug, Default)]
struct Absent {
    order: VecDeque<Uid>,
    set: HashSet<Uid>,
}

const ABSENT_CAPACITY: usize = 500;

impl Absent {
    fn insert(&mut self, uid: Uid) {
        if self.set.insert(uid.clone()) {
            self.order.push_back(uid);
            if self.order.len() > ABSENT_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// How an object's owner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists and is not deleting its dependents first.
    Solid,
    /// Does not exist (or is another object now).
    Dangling,
    /// Exists, deleting its dependents first (foreground deletion).
    Waiting,
}

/// The dependency graph.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<Uid, Node>,
    absent: Absent,
}

impl Graph {
    /// The node of a uid.
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// How many objects the graph holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Records that an owner was found gone by a direct read.
    pub fn mark_absent(&mut self, uid: Uid) {
        self.absent.insert(uid);
    }

    /// What the graph knows about an owner of an object in `dependent_ns`: `None` when only a
    /// direct read can tell (not observed, or observed under other coordinates).
    pub fn owner_state(&self, owner: &Owner, dependent_ns: Option<&str>) -> Option<OwnerState> {
        if self.absent.set.contains(&owner.uid) {
            return Some(OwnerState::Dangling);
        }
        let node = self.nodes.get(&owner.uid)?;
        if node.virtual_ || !reference_matches(owner, &node.identity, dependent_ns) {
            return None;
        }
        Some(if node.deleting_dependents {
            OwnerState::Waiting
        } else {
            OwnerState::Solid
        })
    }

    /// The dependents of `uid` that block its deletion (blockOwnerDeletion on their
    /// reference to it).
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        let Some(node) = self.nodes.get(uid) else {
            return vec![];
        };
        node.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.owners.iter().any(|o| &*o.uid == uid && o.block))
            .collect()
    }

    /// Applies a change and returns the work it causes.
    pub fn apply(&mut self, change: Change) -> Vec<Work> {
        let mut work = vec![];
        match change {
            Change::Upsert(o) => self.upsert(o, &mut work),
            Change::Deleted(id) => self.remove(&id, false, &mut work),
            Change::VirtualDeleted(id) => self.remove(&id, true, &mut work),
            Change::Relisted {
                group,
                kind,
                listed,
            } => {
                let gone: Vec<Identity> = self
                    .nodes
                    .values()
                    .filter(|n| {
                        !n.virtual_
                            && n.identity.kind == kind
                            && group_of(&n.identity.api_version) == group
                            && !listed.contains(&n.identity.uid)
                    })
                    .map(|n| n.identity.clone())
                    .collect();
                for id in gone {
                    self.remove(&id, false, &mut work);
                }
            }
        }
        work
    }

    fn upsert(&mut self, o: Observed, work: &mut Vec<Work>) {
        let uid = o.identity.uid.clone();
        let dep_ns = o.identity.namespace.clone();
        let Some(existing) = self.nodes.get_mut(&uid) else {
            self.nodes.insert(uid.clone(), Node::observed(&o));
            self.add_to_owners(&uid, &o.owners, dep_ns.as_deref(), work);
            self.transitions(&uid, None, &o, work);
            return;
        };
        if existing.virtual_ {
            // Observed at last: dependents that named it by other coordinates are checked.
            let dependents = std::mem::take(&mut existing.dependents);
            *existing = Node::observed(&o);
            existing.dependents = dependents;
            let identity = existing.identity.clone();
            let dependents: Vec<Uid> = existing.dependents.iter().cloned().collect();
            for dep in dependents {
                let Some(d) = self.nodes.get(&dep) else {
                    continue;
                };
                let named_right = d
                    .owners
                    .iter()
                    .filter(|r| r.uid == uid)
                    .all(|r| reference_matches(r, &identity, d.identity.namespace.as_deref()));
                if !named_right {
                    work.push(Work::Delete(dep));
                }
            }
            self.add_to_owners(&uid, &o.owners, dep_ns.as_deref(), work);
            self.transitions(&uid, None, &o, work);
            return;
        }
        let old_owners = std::mem::replace(&mut existing.owners, o.owners.clone());
        let old_flags = (
            existing.deleting,
            existing.orphan_finalizer,
            existing.foreground_finalizer,
        );
        existing.identity = o.identity.clone();
        existing.deleting = o.deleting;
        existing.orphan_finalizer = o.orphan_finalizer;
        existing.foreground_finalizer = o.foreground_finalizer;
        existing.deleting_dependents = o.deleting && o.foreground_finalizer;
        let added: Vec<Owner> = o
            .owners
            .iter()
            .filter(|n| !old_owners.iter().any(|p| p.uid == n.uid))
            .cloned()
            .collect();
        let removed: Vec<Owner> = old_owners
            .iter()
            .filter(|p| !o.owners.iter().any(|n| n.uid == p.uid))
            .cloned()
            .collect();
        // An owner waiting for its blocking dependents may be unblocked by a reference that
        // went away or stopped blocking.
        let unblocked = removed
            .iter()
            .filter(|p| p.block)
            .map(|p| p.uid.clone())
            .chain(
                old_owners
                    .iter()
                    .filter(|p| p.block && o.owners.iter().any(|n| n.uid == p.uid && !n.block))
                    .map(|p| p.uid.clone()),
            );
        for owner in unblocked.collect::<Vec<_>>() {
            if self
                .nodes
                .get(&owner)
                .is_some_and(|n| n.deleting_dependents)
            {
                work.push(Work::Delete(owner));
            }
        }
        self.add_to_owners(&uid, &added, dep_ns.as_deref(), work);
        self.remove_from_owners(&uid, &removed);
        self.transitions(&uid, Some(old_flags), &o, work);
    }

    /// Upstream's processTransitions: an object that starts being deleted with the `orphan`
    /// finalizer orphans its dependents; with `foregroundDeletion`, its dependents are
    /// deleted first.
    fn transitions(
        &mut self,
        uid: &Uid,
        old: Option<(bool, bool, bool)>,
        o: &Observed,
        work: &mut Vec<Work>,
    ) {
        let (was_deleting, had_orphan, had_foreground) = old.unwrap_or_default();
        if o.deleting && o.orphan_finalizer && !(was_deleting && had_orphan) {
            work.push(Work::Orphan(uid.clone()));
            return;
        }
        if o.deleting && o.foreground_finalizer && !(was_deleting && had_foreground) {
            let Some(node) = self.nodes.get_mut(uid) else {
                return;
            };
            node.deleting_dependents = true;
            work.extend(node.dependents.iter().cloned().map(Work::Delete));
            work.push(Work::Delete(uid.clone()));
        }
    }

    fn add_to_owners(
        &mut self,
        dep: &Uid,
        owners: &[Owner],
        dep_ns: Option<&str>,
        work: &mut Vec<Work>,
    ) {
        for owner in owners {
            match self.nodes.get_mut(&owner.uid) {
                Some(node) => {
                    node.dependents.insert(dep.clone());
                    if !node.virtual_ && !reference_matches(owner, &node.identity, dep_ns) {
                        // The reference cannot designate this object: check the dependent.
                        work.push(Work::Delete(dep.clone()));
                    }
                }
                None => {
                    let identity = Identity {
                        api_version: owner.api_version.clone(),
                        kind: owner.kind.clone(),
                        namespace: dep_ns.map(str::to_string),
                        name: owner.name.clone(),
                        uid: owner.uid.clone(),
                    };
                    self.nodes.insert(
                        owner.uid.clone(),
                        Node {
                            identity,
                            owners: vec![],
                            dependents: [dep.clone()].into(),
                            deleting: false,
                            orphan_finalizer: false,
                            foreground_finalizer: false,
                            deleting_dependents: false,
                            virtual_: true,
                        },
                    );
                    // Verify that the owner exists.
                    work.push(Work::Delete(owner.uid.clone()));
                }
            }
        }
    }

    fn remove_from_owners(&mut self, dep: &Uid, owners: &[Owner]) {
        for owner in owners {
            if let Some(node) = self.nodes.get_mut(&owner.uid) {
                node.dependents.remove(dep);
                if node.virtual_ && node.dependents.is_empty() {
                    self.nodes.remove(&owner.uid);
                }
            }
        }
    }

    fn remove(&mut self, id: &Identity, virtual_event: bool, work: &mut Vec<Work>) {
        let Some(node) = self.nodes.get(&id.uid) else {
            return;
        };
        if virtual_event && !node.virtual_ {
            // Observed objects go only when their watch says so.
            return;
        }
        let node = self.nodes.remove(&id.uid).expect("present");
        for owner in &node.owners {
            if let Some(o) = self.nodes.get_mut(&owner.uid) {
                o.dependents.remove(&id.uid);
                if o.deleting_dependents {
                    work.push(Work::Delete(owner.uid.clone()));
                }
                if o.virtual_ && o.dependents.is_empty() {
                    self.nodes.remove(&owner.uid);
                }
            }
        }
        if !node.dependents.is_empty() {
            self.absent.insert(id.uid.clone());
            work.extend(node.dependents.into_iter().map(Work::Delete));
        }
    }
}

/// What to do with an object after classifying its owners (upstream's attemptToDeleteItem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep it as it is.
    Keep,
    /// Some owner exists: drop only the references to gone or foreground-deleting owners.
    RemoveReferences(Vec<Uid>),
    /// An owner deletes its dependents first and this object has dependents of its own:
    /// delete it in the foreground too (after making its own references non-blocking when a
    /// dependent of it is also deleting in the foreground, to break cycles).
    DeleteForeground { unblock_first: bool },
    /// No owner remains: delete it with the propagation its finalizers ask for.
    Delete(Propagation),
}

/// A deletion's propagation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// Decides about an object from how its owners stand, whether it has dependents (and whether
/// one of those deletes in the foreground), and its own finalizers.
pub fn decide(
    owners: &[(Owner, OwnerState)],
    has_dependents: bool,
    dependent_deleting_dependents: bool,
    orphan_finalizer: bool,
    foreground_finalizer: bool,
) -> Decision {
    if owners.is_empty() {
        return Decision::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    if solid {
        let drop: Vec<Uid> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(o, _)| o.uid.clone())
            .collect();
        return if drop.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveReferences(drop)
        };
    }
    if waiting && has_dependents {
        return Decision::DeleteForeground {
            unblock_first: dependent_deleting_dependents,
        };
    }
    Decision::Delete(if orphan_finalizer {
        Propagation::Orphan
    } else if foreground_finalizer {
        Propagation::Foreground
    } else {
        Propagation::Background
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, name: &str, uid: &str) -> Identity {
        Identity {
            api_version: if kind == "Pod" { "v1" } else { "apps/v1" }.into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn owner(kind: &str, name: &str, uid: &str, block: bool) -> Owner {
        Owner {
            uid: uid.into(),
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            block,
        }
    }

    fn observed(identity: Identity, owners: Vec<Owner>) -> Observed {
        Observed {
            identity,
            owners,
            deleting: false,
            orphan_finalizer: false,
            foreground_finalizer: false,
        }
    }

    fn uid(s: &str) -> Uid {
        s.into()
    }

    #[test]
    fn background_owner_gone_deletes_dependents() {
        let mut g = Graph::default();
        let rs = observed(id("ReplicaSet", "web", "rs1"), vec![]);
        assert!(g.apply(Change::Upsert(rs.clone())).is_empty());
        let pod = observed(
            id("Pod", "web-a", "p1"),
            vec![owner("ReplicaSet", "web", "rs1", true)],
        );
        assert!(g.apply(Change::Upsert(pod)).is_empty());
        assert_eq!(
            g.owner_state(&owner("ReplicaSet", "web", "rs1", true), Some("ns")),
            Some(OwnerState::Solid)
        );
        // A reference with the right uid but another name cannot designate the owner.
        assert_eq!(
            g.owner_state(&owner("ReplicaSet", "other", "rs1", true), Some("ns")),
            None
        );
        let work = g.apply(Change::Deleted(rs.identity));
        assert_eq!(work, vec![Work::Delete(uid("p1"))]);
        assert_eq!(
            g.owner_state(&owner("ReplicaSet", "web", "rs1", true), Some("ns")),
            Some(OwnerState::Dangling)
        );
        assert_eq!(
            decide(
                &[(
                    owner("ReplicaSet", "web", "rs1", true),
                    OwnerState::Dangling
                )],
                false,
                false,
                false,
                false
            ),
            Decision::Delete(Propagation::Background)
        );
    }

    #[test]
    fn unknown_owners_become_virtual_and_are_verified() {
        let mut g = Graph::default();
        let pod = observed(
            id("Pod", "a", "p1"),
            vec![owner("ReplicaSet", "web", "rs1", true)],
        );
        let work = g.apply(Change::Upsert(pod));
        assert_eq!(work, vec![Work::Delete(uid("rs1"))]);
        assert!(g.node("rs1").unwrap().virtual_);
        assert_eq!(
            g.owner_state(&owner("ReplicaSet", "web", "rs1", true), Some("ns")),
            None
        );
        // Found gone: its dependents are checked.
        let work = g.apply(Change::VirtualDeleted(
            g.node("rs1").unwrap().identity.clone(),
        ));
        assert_eq!(work, vec![Work::Delete(uid("p1"))]);
        assert!(g.node("rs1").is_none());
        // A virtual delete never removes an observed object.
        let rs = observed(id("ReplicaSet", "web2", "rs2"), vec![]);
        g.apply(Change::Upsert(rs.clone()));
        assert!(g.apply(Change::VirtualDeleted(rs.identity)).is_empty());
        assert!(g.node("rs2").is_some());
    }

    #[test]
    fn virtual_owner_observed_later_keeps_its_dependents() {
        let mut g = Graph::default();
        g.apply(Change::Upsert(observed(
            id("Pod", "a", "p1"),
            vec![owner("ReplicaSet", "web", "rs1", true)],
        )));
        let work = g.apply(Change::Upsert(observed(
            id("ReplicaSet", "web", "rs1"),
            vec![],
        )));
        assert!(work.is_empty());
        let rs = g.node("rs1").unwrap();
        assert!(!rs.virtual_);
        assert!(rs.dependents.contains("p1"));
    }

    #[test]
    fn foreground_deletion_waits_for_blocking_dependents() {
        let mut g = Graph::default();
        let mut deploy = observed(id("Deployment", "web", "d1"), vec![]);
        g.apply(Change::Upsert(deploy.clone()));
        g.apply(Change::Upsert(observed(
            id("ReplicaSet", "web-1", "rs1"),
            vec![owner("Deployment", "web", "d1", true)],
        )));
        g.apply(Change::Upsert(observed(
            id("ReplicaSet", "web-2", "rs2"),
            vec![owner("Deployment", "web", "d1", false)],
        )));
        deploy.deleting = true;
        deploy.foreground_finalizer = true;
        let mut work = g.apply(Change::Upsert(deploy.clone()));
        work.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(
            work,
            vec![
                Work::Delete(uid("d1")),
                Work::Delete(uid("rs1")),
                Work::Delete(uid("rs2"))
            ]
        );
        // The dependents see their owner waiting; leaves are deleted in the background.
        let d = owner("Deployment", "web", "d1", true);
        assert_eq!(g.owner_state(&d, Some("ns")), Some(OwnerState::Waiting));
        assert_eq!(
            decide(
                &[(d.clone(), OwnerState::Waiting)],
                false,
                false,
                false,
                false
            ),
            Decision::Delete(Propagation::Background)
        );
        // A dependent with dependents of its own goes in the foreground too.
        assert_eq!(
            decide(&[(d, OwnerState::Waiting)], true, false, false, false),
            Decision::DeleteForeground {
                unblock_first: false
            }
        );
        // Only rs1 blocks; once it is gone the owner is looked at again.
        let blocking: Vec<&str> = g
            .blocking_dependents("d1")
            .iter()
            .map(|n| &*n.identity.uid)
            .collect();
        assert_eq!(blocking, vec!["rs1"]);
        let work = g.apply(Change::Deleted(id("ReplicaSet", "web-1", "rs1")));
        assert_eq!(work, vec![Work::Delete(uid("d1"))]);
        assert!(g.blocking_dependents("d1").is_empty());
        // Seeing the same state again causes no new work.
        assert!(g.apply(Change::Upsert(deploy)).is_empty());
    }

    #[test]
    fn orphaning_starts_once() {
        let mut g = Graph::default();
        let mut rs = observed(id("ReplicaSet", "web", "rs1"), vec![]);
        g.apply(Change::Upsert(rs.clone()));
        rs.deleting = true;
        rs.orphan_finalizer = true;
        assert_eq!(
            g.apply(Change::Upsert(rs.clone())),
            vec![Work::Orphan(uid("rs1"))]
        );
        assert!(g.apply(Change::Upsert(rs)).is_empty());
    }

    #[test]
    fn dropping_a_blocking_reference_unblocks_the_owner() {
        let mut g = Graph::default();
        let mut d = observed(id("Deployment", "web", "d1"), vec![]);
        d.deleting = true;
        d.foreground_finalizer = true;
        g.apply(Change::Upsert(d));
        let rs = observed(
            id("ReplicaSet", "web-1", "rs1"),
            vec![owner("Deployment", "web", "d1", true)],
        );
        g.apply(Change::Upsert(rs.clone()));
        let orphaned = Observed {
            owners: vec![],
            ..rs
        };
        assert_eq!(
            g.apply(Change::Upsert(orphaned)),
            vec![Work::Delete(uid("d1"))]
        );
        assert!(g.node("d1").unwrap().dependents.is_empty());
    }

    #[test]
    fn a_relist_removes_what_vanished() {
        let mut g = Graph::default();
        g.apply(Change::Upsert(observed(
            id("ReplicaSet", "a", "rs1"),
            vec![],
        )));
        g.apply(Change::Upsert(observed(
            id("ReplicaSet", "b", "rs2"),
            vec![],
        )));
        g.apply(Change::Upsert(observed(
            id("Pod", "p", "p1"),
            vec![owner("ReplicaSet", "a", "rs1", true)],
        )));
        let work = g.apply(Change::Relisted {
            group: "apps".into(),
            kind: "ReplicaSet".into(),
            listed: [uid("rs2")].into(),
        });
        assert_eq!(work, vec![Work::Delete(uid("p1"))]);
        assert!(g.node("rs1").is_none() && g.node("rs2").is_some() && g.node("p1").is_some());
    }

    #[test]
    fn decisions_with_solid_owners_keep_the_object() {
        let a = owner("ReplicaSet", "a", "a", true);
        let b = owner("ReplicaSet", "b", "b", true);
        assert_eq!(
            decide(
                &[(a.clone(), OwnerState::Solid)],
                false,
                false,
                false,
                false
            ),
            Decision::Keep
        );
        assert_eq!(
            decide(
                &[
                    (a.clone(), OwnerState::Solid),
                    (b.clone(), OwnerState::Dangling)
                ],
                false,
                false,
                false,
                false
            ),
            Decision::RemoveReferences(vec![uid("b")])
        );
        assert_eq!(
            decide(
                &[(b.clone(), OwnerState::Dangling)],
                false,
                false,
                true,
                false
            ),
            Decision::Delete(Propagation::Orphan)
        );
        assert_eq!(
            decide(&[(b, OwnerState::Waiting)], true, true, false, false),
            Decision::DeleteForeground {
                unblock_first: true
            }
        );
        assert_eq!(decide(&[], true, false, false, false), Decision::Keep);
    }
}
