//! The Endpoints controller (kube-controller-manager's endpoints-controller): for every Service
//! with a selector, an Endpoints object of the same name listing the selected Pods' addresses,
//! ready ones in `addresses` and the others in `notReadyAddresses` (all in `addresses` when the
//! Service publishes not-ready addresses), with the ports each Pod resolves, grouped into
//! subsets. Written only when its content changes; deleted when its Service goes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::service_endpoints::{
    self as shared, HEADLESS_LABEL, LAST_CHANGE_TRIGGER_TIME, OwnWrites, ServiceCache, TriggerTimes,
};

/// Most addresses an Endpoints object holds; beyond, it is truncated (EndpointSlices have all).
pub const MAX_CAPACITY: usize = 1000;
/// Annotation marking a truncated Endpoints object.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Annotation of leader-election records kept in Endpoints (never deleted as leftovers).
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// Syncing a Service's Endpoints failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncEndpointsError {
    #[error("creating Endpoints {0}")]
    Create(String, #[source] kube::Error),
    #[error("updating Endpoints {0}")]
    Update(String, #[source] kube::Error),
}

struct State {
    client: kube::Client,
    cache: Arc<ServiceCache>,
    endpoints: Informer<Endpoints>,
    triggers: TriggerTimes,
    own_writes: Arc<OwnWrites>,
    backoff: FailureBackoff,
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let cache = ctx.service_cache();
    let state = Arc::new(State {
        client: ctx.client.clone(),
        endpoints: Informer::new(Api::all(ctx.client.clone()), watcher::Config::default()),
        cache: cache.clone(),
        triggers: TriggerTimes::default(),
        own_writes: Arc::default(),
        backoff: FailureBackoff::default(),
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
    // A deleted Service takes its Endpoints along.
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    cache.services.on_event(move |event| {
        if let InformerEvent::Deleted(svc) = event {
            let _ = gone_tx.send((svc.namespace().unwrap_or_default(), svc.name_any()));
        }
    });
    // The watch settles the controller's own writes and wakes a reconcile waiting for one;
    // Endpoints deleted by someone else come back.
    let own = state.own_writes.clone();
    let by_endpoints = state.endpoints.subscribe(move |event| {
        let (ep, rv) = match event {
            InformerEvent::Applied { new, .. } => (*new, new.metadata.resource_version.as_deref()),
            InformerEvent::Deleted(ep) => (*ep, None),
        };
        let ns = ep.namespace().unwrap_or_default();
        let mut wake = own.observe(&ns, &ep.name_any(), rv).wake;
        if matches!(event, InformerEvent::Deleted(_)) {
            wake.push(ep.name_any());
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
            tokio::join!(state.cache.run(), state.endpoints.run());
        };
        let work = async {
            state.endpoints.wait_until_ready().await;
            state.cache.services.wait_until_ready().await;
            delete_leftovers(&state).await;
            let deleter = delete_with_services(&state, gone_rx);
            let controller = Controller::for_shared_stream(
                futures::stream::empty(),
                state.cache.service_store(),
            )
            .with_config(kube::runtime::Config::default().concurrency(concurrency))
            .reconcile_on(by_services)
            .reconcile_on(by_pods)
            .reconcile_on(by_endpoints)
            .run(reconcile, error_policy, state.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "endpoints reconcile");
                }
            });
            tokio::join!(deleter, controller);
        };
        tokio::join!(informers, work);
    }
    .boxed()
}

/// Deletes the Endpoints of each Service the watch reports deleted (unless a Service of that
/// name exists again).
async fn delete_with_services(
    state: &State,
    mut gone: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((ns, name)) = gone.recv().await {
        state.triggers.forget(&ns, &name);
        delete_orphan(state, &ns, &name).await;
    }
}

async fn delete_orphan(state: &State, ns: &str, name: &str) {
    let svc_ref = ObjectRef::<Service>::new(name).within(ns);
    if state.cache.service_store().get(&svc_ref).is_some() {
        return;
    }
    let api: Api<Endpoints> = Api::namespaced(state.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            state.own_writes.deleted(ns, name);
            tracing::debug!(
                namespace = ns,
                name,
                "deleted the Endpoints of a deleted Service"
            );
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(namespace = ns, name, error = %e, "deleting Endpoints"),
    }
}

/// Upstream's checkLeftoverEndpoints: Endpoints whose Service is gone (deleted while the
/// controller was not running) are deleted, leader-election records excepted.
async fn delete_leftovers(state: &State) {
    for ep in state.endpoints.store().state() {
        if ep.annotations().contains_key(LEADER_ANNOTATION) {
            continue;
        }
        delete_orphan(state, &ep.namespace().unwrap_or_default(), &ep.name_any()).await;
    }
}

fn error_policy(svc: Arc<Service>, err: &SyncEndpointsError, state: Arc<State>) -> Action {
    let delay = state
        .backoff
        .next_delay(&crate::pod_control::key_of(svc.as_ref()));
    log_failure!(
        "syncing Endpoints failed",
        &crate::pod_control::key_of(svc.as_ref()),
        err,
        delay,
    );
    Action::requeue(delay)
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, SyncEndpointsError> {
    let key = crate::pod_control::key_of(svc.as_ref());
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    // Selector-less Services (the API server's `kubernetes` one among them) have their
    // Endpoints written by whoever manages them.
    if svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none()
        || (ns == "default" && name == "kubernetes")
    {
        return Ok(Action::await_change());
    }
    let current = state
        .endpoints
        .store()
        .get(&ObjectRef::new(&name).within(&ns));
    let own = Some(std::slice::from_ref(&name));
    if let Some(wait) = state
        .own_writes
        .hold(&state.endpoints.store(), &ns, own, &name)
    {
        return Ok(wait);
    }
    let pods = state.cache.pods_for(&svc);
    let trigger = state.triggers.compute(&svc, &pods);
    let (subsets, truncated) = truncate(desired_subsets(&svc, &pods));
    let labels = desired_labels(&svc);
    if let Some(current) = &current
        && normalized(current.subsets.clone().unwrap_or_default()) == subsets
        && current.metadata.labels.clone().unwrap_or_default() == labels
        && current.annotations().contains_key(OVER_CAPACITY) == truncated
    {
        state.backoff.reset(&key);
        return Ok(Action::await_change());
    }
    let mut annotations = current
        .as_ref()
        .and_then(|c| c.metadata.annotations.clone())
        .unwrap_or_default();
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
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    let api: Api<Endpoints> = Api::namespaced(state.client.clone(), &ns);
    let written = match &current {
        Some(current) => {
            let mut next = current.as_ref().clone();
            next.metadata.labels = Some(labels);
            next.metadata.annotations = Some(annotations);
            next.subsets = Some(subsets);
            next.metadata.managed_fields = None;
            api.replace(&name, &PostParams::default(), &next)
                .await
                .map_err(|e| SyncEndpointsError::Update(key.clone(), e))
        }
        None => {
            let new = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                subsets: Some(subsets),
            };
            api.create(&PostParams::default(), &new)
                .await
                .map_err(|e| SyncEndpointsError::Create(key.clone(), e))
        }
    };
    match written {
        Ok(ep) => {
            state
                .own_writes
                .wrote(&ns, &name, ep.metadata.resource_version.as_deref());
            state.backoff.reset(&key);
            Ok(Action::await_change())
        }
        Err(SyncEndpointsError::Create(_, e) | SyncEndpointsError::Update(_, e))
            if shared::namespace_terminating(&e) =>
        {
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

/// The Endpoints labels: the Service's, and the headless marker for a headless Service.
fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if shared::is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The IP family a Service's endpoints use: its cluster IP's, or for a headless Service its
/// first listed family (`None`: each Pod's own, when none is listed).
fn wants_ipv6(svc: &Service) -> Option<bool> {
    let spec = svc.spec.as_ref();
    if shared::is_headless(svc) {
        spec.and_then(|s| s.ip_families.as_ref())
            .and_then(|f| f.first())
            .map(|family| family == "IPv6")
    } else {
        Some(
            spec.and_then(|s| s.cluster_ip.as_deref())
                .is_some_and(shared::is_ipv6),
        )
    }
}

/// The address of a Pod for the Service: its IP of the Service's family.
fn pod_address(
    svc: &Service,
    pod: &CachedPod,
    ips: Vec<String>,
    want_v6: Option<bool>,
) -> Option<EndpointAddress> {
    let want_v6 = want_v6.unwrap_or_else(|| ips.first().is_some_and(|ip| shared::is_ipv6(ip)));
    let ip = ips.into_iter().find(|ip| shared::is_ipv6(ip) == want_v6)?;
    Some(EndpointAddress {
        ip,
        hostname: shared::endpoint_hostname(pod, svc),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// The subsets for a Service over the Pods it selects: each Pod's address once per port it
/// resolves, ports offered by the same set of addresses sharing a subset (upstream's
/// RepackSubsets), sorted.
pub fn desired_subsets(svc: &Service, pods: &[Arc<CachedPod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.as_ref();
    let publish = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_ports: &[k8s_openapi::api::core::v1::ServicePort] =
        spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let headless = shared::is_headless(svc);
    let want_v6 = wants_ipv6(svc);
    // Every (address, ready), and the addresses (by index) offering each port (`None`: no
    // ports, for a headless Service without any).
    let mut addresses: Vec<(EndpointAddress, bool)> = Vec::with_capacity(pods.len());
    let mut by_port: HashMap<Option<PortKey>, Vec<usize>> = HashMap::new();
    for pod in pods {
        if !shared::should_pod_be_in_endpoints(pod, publish) {
            continue;
        }
        let Some(address) = pod_address(svc, pod, shared::pod_ips(pod), want_v6) else {
            continue;
        };
        let mut offered = vec![];
        if svc_ports.is_empty() {
            if headless {
                offered.push(None);
            }
        } else {
            for port in svc_ports {
                if let Some(number) = shared::find_port(pod, port) {
                    offered.push(Some(PortKey {
                        name: port.name.clone().unwrap_or_default(),
                        port: number,
                        protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        app_protocol: port.app_protocol.clone(),
                    }));
                }
            }
        }
        if offered.is_empty() {
            continue;
        }
        let index = addresses.len();
        addresses.push((address, publish || crate::pod_control::is_pod_ready(pod)));
        for port in offered {
            by_port.entry(port).or_default().push(index);
        }
    }
    // Ports offered by the same addresses share a subset (each list is in ascending order,
    // so equal sets are equal lists).
    let mut by_addresses: BTreeMap<Vec<usize>, Vec<Option<PortKey>>> = BTreeMap::new();
    for (port, indexes) in by_port {
        by_addresses.entry(indexes).or_default().push(port);
    }
    let single = by_addresses.len() == 1;
    let mut addresses: Vec<Option<(EndpointAddress, bool)>> =
        addresses.into_iter().map(Some).collect();
    let subsets = by_addresses
        .into_iter()
        .map(|(indexes, ports)| {
            let mut ready = vec![];
            let mut not_ready = vec![];
            for i in indexes {
                // An address in one subset only is moved, not copied.
                let entry = if single {
                    addresses[i].take()
                } else {
                    addresses[i].clone()
                };
                let Some((address, is_ready)) = entry else {
                    continue;
                };
                if is_ready {
                    ready.push(address);
                } else {
                    not_ready.push(address);
                }
            }
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .flatten()
                .map(|p| EndpointPort {
                    name: Some(p.name).filter(|n| !n.is_empty()),
                    port: p.port,
                    protocol: Some(p.protocol),
                    app_protocol: p.app_protocol,
                })
                .collect();
            EndpointSubset {
                addresses: Some(ready),
                not_ready_addresses: Some(not_ready),
                ports: Some(ports),
            }
        })
        .collect();
    normalized(subsets)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortKey {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

/// Addresses in order: by IP, then target uid (upstream's LessEndpointAddress).
fn cmp_address(a: &EndpointAddress, b: &EndpointAddress) -> std::cmp::Ordering {
    fn uid(x: &EndpointAddress) -> Option<&str> {
        x.target_ref.as_ref().and_then(|r| r.uid.as_deref())
    }
    a.ip.cmp(&b.ip).then_with(|| uid(a).cmp(&uid(b)))
}

fn cmp_port(a: &EndpointPort, b: &EndpointPort) -> std::cmp::Ordering {
    (a.name.as_deref(), a.port, a.protocol.as_deref()).cmp(&(
        b.name.as_deref(),
        b.port,
        b.protocol.as_deref(),
    ))
}

fn nonempty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
    v.filter(|v| !v.is_empty())
}

/// Subsets in one canonical form, to compare what is with what should be: addresses and ports
/// sorted, empty lists absent, subsets ordered by their ports and first address.
fn normalized(subsets: Vec<EndpointSubset>) -> Vec<EndpointSubset> {
    let mut subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|mut s| {
            for list in [&mut s.addresses, &mut s.not_ready_addresses] {
                if let Some(list) = list.as_mut() {
                    list.sort_by(cmp_address);
                    for a in list.iter_mut() {
                        if let Some(r) = a.target_ref.as_mut() {
                            r.resource_version = None;
                        }
                    }
                }
            }
            if let Some(ports) = s.ports.as_mut() {
                ports.sort_by(cmp_port);
            }
            EndpointSubset {
                addresses: nonempty(s.addresses),
                not_ready_addresses: nonempty(s.not_ready_addresses),
                ports: nonempty(s.ports),
            }
        })
        .filter(|s| s.addresses.is_some() || s.not_ready_addresses.is_some())
        .collect();
    subsets.sort_by(|a, b| {
        let first = |s: &EndpointSubset| {
            s.addresses
                .iter()
                .chain(s.not_ready_addresses.iter())
                .flatten()
                .next()
                .cloned()
        };
        let ports = |s: &EndpointSubset| s.ports.clone().unwrap_or_default();
        let (pa, pb) = (ports(a), ports(b));
        let by_ports = pa
            .iter()
            .zip(pb.iter())
            .map(|(x, y)| cmp_port(x, y))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| pa.len().cmp(&pb.len()));
        by_ports.then_with(|| match (first(a), first(b)) {
            (Some(x), Some(y)) => cmp_address(&x, &y),
            (x, y) => x.is_some().cmp(&y.is_some()),
        })
    });
    subsets
}

/// Keeps at most MAX_CAPACITY addresses, as upstream: when the ready ones alone exceed it, a
/// share of them per subset and no not-ready ones; otherwise every ready one and a share of
/// the not-ready ones. Returns whether anything was cut.
pub fn truncate(mut subsets: Vec<EndpointSubset>) -> (Vec<EndpointSubset>, bool) {
    let count = |s: &Option<Vec<EndpointAddress>>| s.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_CAPACITY {
        return (subsets, false);
    }
    let cut_ready = ready > MAX_CAPACITY;
    let (budget, total) = if cut_ready {
        (MAX_CAPACITY, ready)
    } else {
        (MAX_CAPACITY - ready, not_ready)
    };
    let mut left = budget;
    let last = subsets.len() - 1;
    for (i, subset) in subsets.iter_mut().enumerate() {
        let list = if cut_ready {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        let here = count(list);
        let share = if i < last {
            (here * budget).div_ceil(total).min(left)
        } else {
            left
        };
        if let Some(list) = list.as_mut() {
            list.truncate(share);
        }
        left -= count(list);
        if cut_ready {
            subset.not_ready_addresses = None;
        }
    }
    let subsets = subsets
        .into_iter()
        .filter(|s| count(&s.addresses) + count(&s.not_ready_addresses) > 0)
        .collect();
    (subsets, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_endpoints::tests::pod;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn service(ports: Vec<ServicePort>, publish: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                publish_not_ready_addresses: Some(publish),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn named_port() -> ServicePort {
        ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::String("http".into())),
            ..Default::default()
        }
    }

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        list.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let pods = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", false)),
            Arc::new(pod("c", "", true)),
        ];
        let subsets = desired_subsets(&service(vec![named_port()], false), &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
        let a = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("node-1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    }

    #[test]
    fn publish_not_ready_addresses_lists_every_pod_as_ready() {
        let mut terminating = pod("c", "10.0.0.3", true);
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let pods = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", false)),
            Arc::new(terminating),
        ];
        let subsets = desired_subsets(&service(vec![named_port()], true), &pods);
        assert_eq!(
            ips(&subsets[0].addresses),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert!(subsets[0].not_ready_addresses.is_none());
        // Without it, the terminating Pod is left out.
        let subsets = desired_subsets(&service(vec![named_port()], false), &pods);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
    }

    #[test]
    fn pods_resolving_a_name_differently_get_their_own_subsets() {
        let mut other = pod("b", "10.0.0.2", true);
        other.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        let pods = vec![Arc::new(pod("a", "10.0.0.1", true)), Arc::new(other)];
        let subsets = desired_subsets(&service(vec![named_port()], false), &pods);
        let shape: Vec<(Vec<&str>, i32)> = subsets
            .iter()
            .map(|s| (ips(&s.addresses), s.ports.as_ref().unwrap()[0].port))
            .collect();
        assert_eq!(
            shape,
            vec![(vec!["10.0.0.1"], 8080), (vec!["10.0.0.2"], 9090)]
        );
        // A pod without the named port is left out of that port.
        let mut none = pod("c", "10.0.0.3", true);
        none.spec.as_mut().unwrap().containers[0].ports = None;
        let subsets = desired_subsets(&service(vec![named_port()], false), &[Arc::new(none)]);
        assert!(subsets.is_empty());
    }

    #[test]
    fn ports_offered_by_the_same_pods_share_a_subset() {
        let numbered = ServicePort {
            name: Some("metrics".into()),
            port: 9100,
            target_port: Some(IntOrString::Int(9100)),
            ..Default::default()
        };
        let pods = vec![
            Arc::new(pod("a", "10.0.0.1", true)),
            Arc::new(pod("b", "10.0.0.2", true)),
        ];
        let subsets = desired_subsets(&service(vec![named_port(), numbered], false), &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].ports.as_ref().unwrap().len(), 2);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn headless_without_ports_lists_addresses() {
        let mut svc = service(vec![], false);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let subsets = desired_subsets(&svc, &[Arc::new(pod("a", "10.0.0.1", true))]);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert!(subsets[0].ports.is_none());
        assert!(desired_labels(&svc).contains_key(HEADLESS_LABEL));
        // Not headless and no ports: nothing.
        let subsets = desired_subsets(
            &service(vec![], false),
            &[Arc::new(pod("a", "10.0.0.1", true))],
        );
        assert!(subsets.is_empty());
    }

    #[test]
    fn truncation_keeps_ready_addresses_first() {
        let addrs = |n: usize, prefix: &str| {
            Some(
                (0..n)
                    .map(|i| EndpointAddress {
                        ip: format!("{prefix}{i}"),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let subsets = vec![
            EndpointSubset {
                addresses: addrs(600, "a"),
                not_ready_addresses: addrs(300, "b"),
                ports: None,
            },
            EndpointSubset {
                addresses: addrs(200, "c"),
                not_ready_addresses: addrs(300, "d"),
                ports: None,
            },
        ];
        let (cut, truncated) = truncate(subsets.clone());
        assert!(truncated);
        let total: usize = cut
            .iter()
            .map(|s| {
                s.addresses.as_ref().map_or(0, Vec::len)
                    + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
            })
            .sum();
        assert_eq!(total, MAX_CAPACITY);
        assert_eq!(cut[0].addresses.as_ref().unwrap().len(), 600);
        assert_eq!(cut[1].addresses.as_ref().unwrap().len(), 200);
        assert_eq!(cut[0].not_ready_addresses.as_ref().unwrap().len(), 100);
        let (same, truncated) = truncate(vec![subsets[1].clone()]);
        assert!(!truncated);
        assert_eq!(same.len(), 1);
    }
}
