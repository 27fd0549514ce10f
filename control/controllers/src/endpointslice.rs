//! The EndpointSlice controller (kube-controller-manager's endpointslice-controller): for every
//! Service with a selector, discovery.k8s.io/v1 EndpointSlices per address type listing the
//! selected Pods (ready, serving, terminating conditions; zone, node, hostname, target), at most
//! 100 per slice, one set of resolved ports per slice. Slices are named `<service>-<random>`,
//! labelled with the Service's name and this controller as manager, owned by the Service (the
//! garbage collector removes them with it). A Service without endpoints keeps one empty
//! placeholder slice. Changes keep endpoints in the slices they are in, fill slices being
//! written anyway before touching others, and reuse slices that would be deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::service_endpoints::{
    self as shared, HEADLESS_LABEL, LAST_CHANGE_TRIGGER_TIME, OwnWrites, ServiceCache, TriggerTimes,
};

/// Most endpoints in one slice (upstream's --max-endpoints-per-slice default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of the managed-by label.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The node label with its zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Syncing a Service's EndpointSlices failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncEndpointSlicesError {
    #[error("creating an EndpointSlice for Service {0}")]
    Create(String, #[source] kube::Error),
    #[error("updating EndpointSlice {0}")]
    Update(String, #[source] kube::Error),
    #[error("deleting EndpointSlice {0}")]
    Delete(String, #[source] kube::Error),
}

struct State {
    client: kube::Client,
    cache: Arc<ServiceCache>,
    slices: Informer<EndpointSlice>,
    /// Managed slice names by (namespace, Service name).
    slices_by_service: Arc<SlicesByService>,
    nodes: Store<Node>,
    triggers: Arc<TriggerTimes>,
    own_writes: Arc<OwnWrites>,
    backoff: FailureBackoff,
}

type SlicesByService = Mutex<HashMap<(String, String), BTreeSet<String>>>;

fn service_of(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((
        slice.namespace().unwrap_or_default(),
        slice.labels().get(SERVICE_NAME_LABEL)?.clone(),
    ))
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let cache = ctx.service_cache();
    let selector = format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}");
    let state = Arc::new(State {
        client: ctx.client.clone(),
        cache: cache.clone(),
        slices: Informer::new(
            Api::all(ctx.client.clone()),
            watcher::Config::default().labels(&selector),
        ),
        slices_by_service: Arc::default(),
        nodes: ctx.nodes.store(),
        triggers: Arc::default(),
        own_writes: Arc::default(),
        backoff: FailureBackoff::default(),
    });
    // (Handlers hold the parts of the state they need, not the state that holds them.)
    let index = state.slices_by_service.clone();
    state.slices.on_event(move |event| {
        let mut by_service = index.lock().expect("slices by service");
        match event {
            InformerEvent::Applied { old, new } => {
                if let Some(old) = old
                    && service_of(old) != service_of(new)
                    && let Some(set) = service_of(old).and_then(|k| by_service.get_mut(&k))
                {
                    set.remove(&old.name_any());
                }
                if let Some(key) = service_of(new) {
                    by_service.entry(key).or_default().insert(new.name_any());
                }
            }
            InformerEvent::Deleted(slice) => {
                if let Some(key) = service_of(slice)
                    && let Some(set) = by_service.get_mut(&key)
                {
                    set.remove(&slice.name_any());
                    if set.is_empty() {
                        by_service.remove(&key);
                    }
                }
            }
        }
    });
    let by_pods = {
        let cache = cache.clone();
        ctx.pods
            .subscribe(move |event| cache.services_for_pod_event(event))
    };
    let by_services = cache.services.subscribe(|event| match event {
        InformerEvent::Applied { new, .. } => vec![ObjectRef::from_obj(*new)],
        InformerEvent::Deleted(_) => vec![],
    });
    let (triggers, index, own) = (
        state.triggers.clone(),
        state.slices_by_service.clone(),
        state.own_writes.clone(),
    );
    cache.services.on_event(move |event| {
        if let InformerEvent::Deleted(svc) = event {
            let ns = svc.namespace().unwrap_or_default();
            triggers.forget(&ns, &svc.name_any());
            let names: Vec<String> = index
                .lock()
                .expect("slices by service")
                .get(&(ns.clone(), svc.name_any()))
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default();
            own.forget(&ns, &names);
        }
    });
    // Slices changed by someone else (deleted, edited) are put back; the controller's own
    // writes wake only a reconcile that waits for them.
    let own = state.own_writes.clone();
    let by_slices = state.slices.subscribe(move |event| {
        let (slice, rv) = match event {
            InformerEvent::Applied { new, .. } => (*new, new.metadata.resource_version.as_deref()),
            InformerEvent::Deleted(slice) => (*slice, None),
        };
        let ns = slice.namespace().unwrap_or_default();
        let seen = own.observe(&ns, &slice.name_any(), rv);
        let mut wake = seen.wake;
        if !seen.own
            && let Some((_, service)) = service_of(slice)
        {
            wake.push(service);
        }
        wake.sort();
        wake.dedup();
        wake.into_iter()
            .map(|name| ObjectRef::<Service>::new(&name).within(&ns))
            .collect::<Vec<_>>()
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        let informers = async {
            tokio::join!(state.cache.run(), state.slices.run());
        };
        let work = async {
            state.slices.wait_until_ready().await;
            Controller::for_shared_stream(futures::stream::empty(), state.cache.service_store())
                .with_config(kube::runtime::Config::default().concurrency(concurrency))
                .reconcile_on(by_services)
                .reconcile_on(by_pods)
                .reconcile_on(by_slices)
                .run(reconcile, error_policy, state.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "endpointslice reconcile");
                    }
                })
                .await;
        };
        tokio::join!(informers, work);
    }
    .boxed()
}

fn error_policy(svc: Arc<Service>, err: &SyncEndpointSlicesError, state: Arc<State>) -> Action {
    let key = crate::pod_control::key_of(svc.as_ref());
    let delay = state.backoff.next_delay(&key);
    log_failure!("syncing EndpointSlices failed", &key, err, delay);
    Action::requeue(delay)
}

async fn reconcile(
    svc: Arc<Service>,
    state: Arc<State>,
) -> Result<Action, SyncEndpointSlicesError> {
    let key = crate::pod_control::key_of(svc.as_ref());
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.selector.is_none()
        || spec.type_.as_deref() == Some("ExternalName")
        || (ns == "default" && name == "kubernetes")
    {
        return Ok(Action::await_change());
    }
    // The cache must show this controller's last writes in the namespace before it is
    // trusted (a slice just created may not be indexed under its Service yet).
    let store = state.slices.store();
    if let Some(wait) = state.own_writes.hold(&store, &ns, None, &name) {
        return Ok(wait);
    }
    let names: Vec<String> = state
        .slices_by_service
        .lock()
        .expect("slices by service")
        .get(&(ns.clone(), name.clone()))
        .map(|set| set.iter().cloned().collect())
        .unwrap_or_default();
    let existing: Vec<Arc<EndpointSlice>> = names
        .iter()
        .filter_map(|n| store.get(&ObjectRef::new(n).within(&ns)))
        .collect();
    let pods = state.cache.pods_for(&svc);
    let trigger = state.triggers.compute(&svc, &pods);
    let zone_of = |node: &str| {
        state
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
    };
    let mut plan = SlicePlan::default();
    let families = address_types(&svc);
    for slice in &existing {
        if !families.contains(&slice.address_type) {
            plan.delete.push(slice.as_ref().clone());
        }
    }
    for family in &families {
        let of_family: Vec<Arc<EndpointSlice>> = existing
            .iter()
            .filter(|s| &s.address_type == family)
            .cloned()
            .collect();
        let desired = desired_endpoints(&svc, &pods, family, &zone_of);
        let p = plan_slices(
            &svc,
            family,
            &of_family,
            desired,
            MAX_ENDPOINTS_PER_SLICE,
            trigger,
        );
        plan.create.extend(p.create);
        plan.update.extend(p.update);
        plan.delete.extend(p.delete);
    }
    match apply_plan(&state, &ns, &key, plan).await {
        Ok(()) => {
            state.backoff.reset(&key);
            Ok(Action::await_change())
        }
        Err(
            SyncEndpointSlicesError::Create(_, e)
            | SyncEndpointSlicesError::Update(_, e)
            | SyncEndpointSlicesError::Delete(_, e),
        ) if shared::namespace_terminating(&e) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Writes a plan: creations first, then updates, then deletions, so that no endpoint is
/// missing in between.
async fn apply_plan(
    state: &State,
    ns: &str,
    service: &str,
    plan: SlicePlan,
) -> Result<(), SyncEndpointSlicesError> {
    let api: Api<EndpointSlice> = Api::namespaced(state.client.clone(), ns);
    let pp = PostParams::default();
    for slice in &plan.create {
        let created = api
            .create(&pp, slice)
            .await
            .map_err(|e| SyncEndpointSlicesError::Create(service.to_string(), e))?;
        state.own_writes.wrote(
            ns,
            &created.name_any(),
            created.metadata.resource_version.as_deref(),
        );
    }
    for slice in &plan.update {
        let name = slice.name_any();
        let updated = api
            .replace(&name, &pp, slice)
            .await
            .map_err(|e| SyncEndpointSlicesError::Update(format!("{ns}/{name}"), e))?;
        state
            .own_writes
            .wrote(ns, &name, updated.metadata.resource_version.as_deref());
    }
    for slice in &plan.delete {
        let name = slice.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: slice.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => state.own_writes.deleted(ns, &name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(SyncEndpointSlicesError::Delete(format!("{ns}/{name}"), e)),
        }
    }
    Ok(())
}

/// The address types a Service's slices carry: its IP families; for a Service not defaulted
/// yet, its cluster IP's family; for a headless one without families, both.
pub fn address_types(svc: &Service) -> Vec<String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut types: Vec<String> = spec
        .ip_families
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f == "IPv4" || f == "IPv6")
        .collect();
    types.dedup();
    if !types.is_empty() {
        return types;
    }
    match spec.cluster_ip.as_deref() {
        Some(ip) if !ip.is_empty() && ip != "None" => {
            vec![if shared::is_ipv6(ip) { "IPv6" } else { "IPv4" }.to_string()]
        }
        _ => vec!["IPv4".into(), "IPv6".into()],
    }
}

/// A set of resolved ports, in a canonical order (the key slices are grouped by).
type PortsKey = Vec<(String, i32, String, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    let mut key: PortsKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

/// The endpoints that should exist for one address type, grouped by their ports.
#[derive(Debug, Default)]
pub struct DesiredEndpoints {
    groups: BTreeMap<PortsKey, (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>)>,
}

/// What identifies an endpoint across changes: its addresses, hostname and target Pod.
type EndpointKey = String;

fn endpoint_key(e: &Endpoint) -> EndpointKey {
    let target = e.target_ref.as_ref();
    format!(
        "{}|{}|{}/{}",
        e.addresses.join(","),
        e.hostname.as_deref().unwrap_or_default(),
        target
            .and_then(|t| t.namespace.as_deref())
            .unwrap_or_default(),
        target.and_then(|t| t.name.as_deref()).unwrap_or_default(),
    )
}

/// The endpoint of each selected Pod with an address of `address_type`: conditions as
/// upstream (serving = Pod Ready; terminating = being deleted; ready = serving and not
/// terminating, or always when the Service publishes not-ready addresses), node, zone,
/// hostname and target; terminal Pods and Pods without an IP left out.
pub fn desired_endpoints(
    svc: &Service,
    pods: &[Arc<CachedPod>],
    address_type: &str,
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> DesiredEndpoints {
    let spec = svc.spec.as_ref();
    let publish = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_ports: &[k8s_openapi::api::core::v1::ServicePort] =
        spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let want_v6 = address_type == "IPv6";
    let mut by_numbers: HashMap<Vec<Option<i32>>, BTreeMap<EndpointKey, Endpoint>> = HashMap::new();
    for pod in pods {
        if !shared::should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let Some(ip) = shared::pod_ips(pod)
            .into_iter()
            .find(|ip| shared::is_ipv6(ip) == want_v6)
        else {
            continue;
        };
        let serving = crate::pod_control::is_pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: shared::endpoint_hostname(pod, svc),
            zone: node.as_deref().and_then(zone_of),
            node_name: node,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The port numbers the Pod resolves, in the Service's port order: Pods resolving the
        // same numbers share a group (the ports themselves are made once per group).
        let numbers: Vec<Option<i32>> = svc_ports
            .iter()
            .map(|p| shared::find_port(pod, p))
            .collect();
        by_numbers
            .entry(numbers)
            .or_default()
            .insert(endpoint_key(&endpoint), endpoint);
    }
    let mut desired = DesiredEndpoints::default();
    for (numbers, endpoints) in by_numbers {
        let ports: Vec<EndpointPort> = svc_ports
            .iter()
            .zip(numbers)
            .filter_map(|(p, number)| {
                Some(EndpointPort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(number?),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        desired
            .groups
            .entry(ports_key(&ports))
            .or_insert_with(|| (ports, BTreeMap::new()))
            .1
            .extend(endpoints);
    }
    desired
}

/// What to write to make a Service's slices of one address type match.
#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

/// An existing slice being worked on.
struct Working {
    slice: EndpointSlice,
    key: PortsKey,
    endpoints: Vec<Endpoint>,
    changed: bool,
}

/// The labels of a Service's slices: the Service's (but the reserved keys), the headless
/// marker, the Service name and the manager.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_NAME_LABEL && k.as_str() != MANAGED_BY_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if shared::is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    labels
}

fn service_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Upstream's slice name prefix: `<service>-`, or `slice-` when that would be too long.
fn name_prefix(svc: &Service) -> String {
    let prefix = format!("{}-", svc.name_any());
    if prefix.len() > 253 - 5 {
        "slice-".into()
    } else {
        prefix
    }
}

fn new_slice(svc: &Service, address_type: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(name_prefix(svc)),
            namespace: svc.metadata.namespace.clone(),
            owner_references: Some(vec![service_ref(svc)]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: vec![],
        ports: Some(vec![]),
    }
}

/// Whether a slice has this Service's labels and owner reference.
fn metadata_current(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.metadata.labels.clone().unwrap_or_default() == slice_labels(svc)
        && slice
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == svc.metadata.uid.as_ref())
}

/// Finishes a slice to be written: content, labels, owner, trigger-time annotation.
fn finish(
    mut slice: EndpointSlice,
    svc: &Service,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
    trigger: Option<Timestamp>,
) -> EndpointSlice {
    slice.ports = Some(ports);
    slice.endpoints = endpoints;
    slice.metadata.labels = Some(slice_labels(svc));
    let mut owners: Vec<OwnerReference> = slice
        .owner_references()
        .iter()
        .filter(|r| r.controller != Some(true))
        .cloned()
        .collect();
    owners.push(service_ref(svc));
    slice.metadata.owner_references = Some(owners);
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match trigger {
        Some(t) => {
            annotations.insert(
                LAST_CHANGE_TRIGGER_TIME.into(),
                shared::format_trigger_time(t),
            );
        }
        None => {
            annotations.remove(LAST_CHANGE_TRIGGER_TIME);
        }
    }
    slice.metadata.managed_fields = None;
    slice
}

/// Plans the slices of one address type of a Service: endpoints stay in the slice they are
/// in (updated where they changed), slices left without endpoints go, new endpoints fill the
/// slices being written anyway, then one unchanged slice that can take them all, then new
/// slices of at most `max`; a slice to delete is reused instead of creating one; a Service
/// without endpoints keeps one placeholder slice (no endpoints, no ports).
pub fn plan_slices(
    svc: &Service,
    address_type: &str,
    existing: &[Arc<EndpointSlice>],
    mut desired: DesiredEndpoints,
    max: usize,
    trigger: Option<Timestamp>,
) -> SlicePlan {
    let max = max.max(1);
    let mut kept: Vec<Working> = vec![];
    let mut doomed: Vec<EndpointSlice> = vec![];
    let mut existing: Vec<&Arc<EndpointSlice>> = existing.iter().collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for slice in existing {
        let key = ports_key(slice.ports.as_deref().unwrap_or_default());
        let Some((_, wanted)) = desired.groups.get_mut(&key) else {
            doomed.push(slice.as_ref().clone());
            continue;
        };
        let mut changed = !metadata_current(slice, svc);
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for endpoint in &slice.endpoints {
            match wanted.remove(&endpoint_key(endpoint)) {
                Some(want) => {
                    changed |= &want != endpoint;
                    endpoints.push(want);
                }
                None => changed = true,
            }
        }
        if endpoints.is_empty() {
            doomed.push(slice.as_ref().clone());
        } else {
            kept.push(Working {
                slice: slice.as_ref().clone(),
                key,
                endpoints,
                changed,
            });
        }
    }
    // Place the endpoints not in any slice yet.
    let mut fresh: Vec<(Vec<EndpointPort>, Vec<Endpoint>)> = vec![];
    for (key, (ports, wanted)) in desired.groups {
        let mut rest: Vec<Endpoint> = wanted.into_values().collect();
        for w in kept.iter_mut().filter(|w| w.key == key && w.changed) {
            let room = max.saturating_sub(w.endpoints.len());
            let take = room.min(rest.len());
            w.endpoints.extend(rest.drain(..take));
        }
        if !rest.is_empty()
            && let Some(w) = kept
                .iter_mut()
                .filter(|w| {
                    w.key == key && !w.changed && max - w.endpoints.len().min(max) >= rest.len()
                })
                .min_by_key(|w| max - w.endpoints.len())
        {
            w.endpoints.append(&mut rest);
            w.changed = true;
        }
        while !rest.is_empty() {
            let take = rest.len().min(max);
            fresh.push((ports.clone(), rest.drain(..take).collect()));
        }
    }
    let mut plan = SlicePlan::default();
    let any_kept = !kept.is_empty();
    for w in kept {
        if w.changed {
            let ports = w.slice.ports.clone().unwrap_or_default();
            plan.update
                .push(finish(w.slice, svc, ports, w.endpoints, trigger));
        }
    }
    if !any_kept && fresh.is_empty() {
        // No endpoints at all: one placeholder slice, the existing one if there is one.
        match doomed.iter().position(|s| is_placeholder(s, svc)) {
            Some(i) => {
                doomed.remove(i);
            }
            None => fresh.push((vec![], vec![])),
        }
    }
    for (ports, endpoints) in fresh {
        // Reuse a slice that would be deleted rather than create one.
        let base = doomed.pop().unwrap_or_else(|| new_slice(svc, address_type));
        let slice = finish(base, svc, ports, endpoints, trigger);
        if slice.metadata.name.is_some() {
            plan.update.push(slice);
        } else {
            plan.create.push(slice);
        }
    }
    plan.delete = doomed;
    plan
}

/// Whether a slice is an up-to-date placeholder: no endpoints, no ports, current metadata.
fn is_placeholder(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.endpoints.is_empty()
        && slice.ports.as_ref().is_none_or(Vec::is_empty)
        && metadata_current(slice, svc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_endpoints::tests::pod;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn service(publish: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("svc-uid".into()),
                labels: Some([("tier".to_string(), "front".to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ip_families: Some(vec!["IPv4".into()]),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                publish_not_ready_addresses: Some(publish),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pods(n: usize) -> Vec<Arc<CachedPod>> {
        (0..n)
            .map(|i| {
                Arc::new(pod(
                    &format!("p{i:03}"),
                    &format!("10.1.{}.{}", i / 200, i % 200),
                    true,
                ))
            })
            .collect()
    }

    fn zone(node: &str) -> Option<String> {
        (node == "node-1").then(|| "zone-a".to_string())
    }

    fn plan(svc: &Service, pods: &[Arc<CachedPod>], existing: &[Arc<EndpointSlice>]) -> SlicePlan {
        let desired = desired_endpoints(svc, pods, "IPv4", &zone);
        plan_slices(
            svc,
            "IPv4",
            existing,
            desired,
            MAX_ENDPOINTS_PER_SLICE,
            None,
        )
    }

    /// What the API server would hold after the plan: created slices get names.
    fn apply(existing: &[Arc<EndpointSlice>], plan: SlicePlan) -> Vec<Arc<EndpointSlice>> {
        let mut by_name: BTreeMap<String, EndpointSlice> = existing
            .iter()
            .map(|s| (s.name_any(), s.as_ref().clone()))
            .collect();
        for s in plan.delete {
            by_name.remove(&s.name_any());
        }
        for s in plan.update {
            by_name.insert(s.name_any(), s);
        }
        for (i, mut s) in plan.create.into_iter().enumerate() {
            let name = format!(
                "{}x{i}{}",
                s.metadata.generate_name.clone().unwrap(),
                by_name.len()
            );
            s.metadata.name = Some(name.clone());
            by_name.insert(name, s);
        }
        by_name.into_values().map(Arc::new).collect()
    }

    fn count(slices: &[Arc<EndpointSlice>]) -> usize {
        slices.iter().map(|s| s.endpoints.len()).sum()
    }

    #[test]
    fn endpoints_carry_conditions_zone_and_target() {
        let svc = service(false);
        let mut terminating = pod("t", "10.0.0.9", true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let all = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", false)),
            Arc::new(terminating),
        ];
        let desired = desired_endpoints(&svc, &all, "IPv4", &zone);
        let (ports, endpoints) = desired.groups.values().next().unwrap();
        assert_eq!(ports[0].port, Some(8080));
        let conditions: Vec<(bool, bool, bool)> = endpoints
            .values()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect();
        assert_eq!(
            conditions,
            vec![
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        let a = endpoints.values().next().unwrap();
        assert_eq!(a.zone.as_deref(), Some("zone-a"));
        assert_eq!(a.node_name.as_deref(), Some("node-1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        // Publishing not-ready addresses makes all ready.
        let desired = desired_endpoints(&service(true), &all, "IPv4", &zone);
        let (_, endpoints) = desired.groups.values().next().unwrap();
        assert!(
            endpoints
                .values()
                .all(|e| e.conditions.clone().unwrap().ready == Some(true))
        );
        // No IPv6 addresses: nothing for that family.
        assert!(
            desired_endpoints(&svc, &all, "IPv6", &zone)
                .groups
                .is_empty()
        );
    }

    #[test]
    fn at_most_a_hundred_per_slice_and_no_write_when_nothing_changed() {
        let svc = service(false);
        let all = pods(250);
        let p = plan(&svc, &all, &[]);
        assert_eq!(p.create.len(), 3);
        assert!(p.create.iter().all(|s| s.endpoints.len() <= 100));
        let s = &p.create[0];
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.labels()[SERVICE_NAME_LABEL], "web");
        assert_eq!(s.labels()[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(s.labels()["tier"], "front");
        assert_eq!(s.owner_references()[0].uid, "svc-uid");
        let slices = apply(&[], p);
        assert_eq!(count(&slices), 250);
        let again = plan(&svc, &all, &slices);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
    }

    #[test]
    fn a_change_touches_only_the_slice_holding_the_endpoint() {
        let svc = service(false);
        let mut all = pods(250);
        let slices = apply(&[], plan(&svc, &all, &[]));
        all[7] = Arc::new(pod("p007", "10.1.0.7", false));
        let p = plan(&svc, &all, &slices);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(
            p.update[0].endpoints.len(),
            slices
                .iter()
                .find(|s| s.name_any() == p.update[0].name_any())
                .unwrap()
                .endpoints
                .len()
        );
        // A removed endpoint makes room that a new one fills in the same write.
        all.remove(3);
        all.push(Arc::new(pod("q", "10.2.0.1", true)));
        let p = plan(&svc, &all, &slices);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        let slices = apply(&slices, p);
        assert_eq!(count(&slices), 250);
    }

    #[test]
    fn new_endpoints_go_to_one_slice_with_room_or_a_new_one() {
        let svc = service(false);
        let mut all = pods(150);
        let slices = apply(&[], plan(&svc, &all, &[]));
        assert_eq!(slices.len(), 2);
        all.extend((0..10).map(|i| Arc::new(pod(&format!("n{i}"), &format!("10.3.0.{i}"), true))));
        let p = plan(&svc, &all, &slices);
        assert!(p.create.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].endpoints.len(), 60);
        all.extend((0..60).map(|i| Arc::new(pod(&format!("m{i}"), &format!("10.4.0.{i}"), true))));
        let p = plan(&svc, &all, &slices);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].endpoints.len(), 70);
    }

    #[test]
    fn no_endpoints_leave_one_placeholder() {
        let svc = service(false);
        let p = plan(&svc, &[], &[]);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
        let placeholder = apply(&[], p);
        let again = plan(&svc, &[], &placeholder);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
        // Endpoints appear: the placeholder is reused.
        let all = pods(3);
        let p = plan(&svc, &all, &placeholder);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update[0].endpoints.len(), 3);
        // All gone again: one slice is reused as the placeholder, the others deleted.
        let slices = apply(&[], plan(&svc, &pods(250), &[]));
        let p = plan(&svc, &[], &slices);
        assert!(p.create.is_empty());
        assert_eq!(p.update.len(), 1);
        assert!(p.update[0].endpoints.is_empty());
        assert_eq!(p.delete.len(), 2);
    }

    #[test]
    fn pods_resolving_ports_differently_get_separate_slices() {
        let svc = service(false);
        let mut other = pod("b", "10.0.0.2", true);
        other.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        let all = vec![Arc::new(pod("a", "10.0.0.1", true)), Arc::new(other)];
        let p = plan(&svc, &all, &[]);
        let mut ports: Vec<i32> = p
            .create
            .iter()
            .map(|s| s.ports.as_ref().unwrap()[0].port.unwrap())
            .collect();
        ports.sort();
        assert_eq!(ports, vec![8080, 9090]);
        // The Service's ports change: the old slices are reused for the new ports.
        let slices = apply(&[], p);
        let mut svc2 = svc.clone();
        svc2.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
            Some(IntOrString::Int(7000));
        let p = plan(&svc2, &all, &slices);
        assert!(p.create.is_empty());
        assert_eq!(p.update.len() + p.delete.len(), 2);
        assert_eq!(p.update[0].ports.as_ref().unwrap()[0].port, Some(7000));
    }

    #[test]
    fn address_types_follow_the_service() {
        let mut svc = service(false);
        assert_eq!(address_types(&svc), vec!["IPv4"]);
        svc.spec.as_mut().unwrap().ip_families = None;
        svc.spec.as_mut().unwrap().cluster_ip = Some("fd00::10".into());
        assert_eq!(address_types(&svc), vec!["IPv6"]);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert_eq!(address_types(&svc), vec!["IPv4", "IPv6"]);
    }
}
