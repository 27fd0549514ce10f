//! What the Endpoints and EndpointSlice controllers share: a Service cache indexed by
//! namespace, the Pods a Service selects (from the shared Pod cache, indexed by namespace), the
//! Pod facts an endpoint is made of (readiness, addresses, named ports), the
//! last-change-trigger-time bookkeeping, and the detection of a cache that has not yet seen
//! the controller's own writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::{CachedPod, Informer, InformerEvent};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::Context;
use crate::pod_control::{is_pod_ready, is_pod_terminal};

/// Annotation with the time of the Pod or Service change an endpoints write reflects.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Label on the Endpoints and EndpointSlices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Services (one watch) and the Pods of each namespace (from the shared Pod cache).
pub struct ServiceCache {
    /// Every Service.
    pub services: Informer<Service>,
    services_by_ns: Mutex<HashMap<String, BTreeSet<String>>>,
    /// References (shared, cheap to copy out) to the Pods of each namespace.
    pods_by_ns: Mutex<HashMap<String, HashSet<Arc<ObjectRef<CachedPod>>>>>,
    pods: Store<CachedPod>,
    /// Whether a controller drives the Service watch already.
    driven: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCache")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The Service cache the endpoint controllers share (made, and registered on the Pod
    /// informer, on first use: in a controller's `start`). Every user drives `run()`; the
    /// first one runs the watch, the others return at once.
    pub fn service_cache(&self) -> Arc<ServiceCache> {
        self.service_cache
            .get_or_init(|| ServiceCache::new(self))
            .clone()
    }
}

impl ServiceCache {
    /// A Service watch and the namespace indexes, registered on the shared Pod informer.
    fn new(ctx: &Context) -> Arc<Self> {
        let cache = Arc::new(ServiceCache {
            services: Informer::new(Api::all(ctx.client.clone()), watcher::Config::default()),
            services_by_ns: Mutex::default(),
            pods_by_ns: Mutex::default(),
            pods: ctx.pods.store(),
            driven: std::sync::atomic::AtomicBool::new(false),
        });
        let index = cache.clone();
        ctx.pods.on_event(move |event| {
            let mut by_ns = index.pods_by_ns.lock().expect("pods by namespace");
            match event {
                InformerEvent::Applied { old: None, new } => {
                    let ns = new.namespace().unwrap_or_default();
                    let reference = ObjectRef::new(&new.name_any()).within(&ns);
                    by_ns.entry(ns).or_default().insert(Arc::new(reference));
                }
                InformerEvent::Applied { .. } => {}
                InformerEvent::Deleted(pod) => remove_name(&mut by_ns, pod),
            }
        });
        let index = cache.clone();
        cache.services.on_event(move |event| {
            let mut by_ns = index.services_by_ns.lock().expect("services by namespace");
            match event {
                InformerEvent::Applied { new, .. } => {
                    by_ns
                        .entry(new.namespace().unwrap_or_default())
                        .or_default()
                        .insert(new.name_any());
                }
                InformerEvent::Deleted(svc) => {
                    let ns = svc.namespace().unwrap_or_default();
                    if let Some(set) = by_ns.get_mut(&ns) {
                        set.remove(&svc.name_any());
                        if set.is_empty() {
                            by_ns.remove(&ns);
                        }
                    }
                }
            }
        });
        cache
    }

    /// Drives the Service watch, unless another controller does already (then returns).
    pub async fn run(&self) {
        if !self.driven.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.services.run().await;
        }
    }

    /// The Service cache.
    pub fn service_store(&self) -> Store<Service> {
        self.services.store()
    }

    /// The Pods in the Service's namespace that its selector selects (in no particular order).
    pub fn pods_for(&self, svc: &Service) -> Vec<Arc<CachedPod>> {
        let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            return vec![];
        };
        let ns = svc.namespace().unwrap_or_default();
        let refs: Vec<Arc<ObjectRef<CachedPod>>> = self
            .pods_by_ns
            .lock()
            .expect("pods by namespace")
            .get(&ns)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        refs.iter()
            .filter_map(|r| self.pods.get(r))
            .filter(|pod| selector_matches(selector, pod.metadata.labels.as_ref()))
            .collect()
    }

    /// The Services whose endpoints a Pod change may alter: those selecting the Pod before or
    /// after the change, when something an endpoint is made of changed.
    pub fn services_for_pod_event(
        &self,
        event: &InformerEvent<'_, CachedPod>,
    ) -> Vec<ObjectRef<Service>> {
        if let InformerEvent::Applied {
            old: Some(old),
            new,
        } = event
            && !endpoint_facts_changed(old, new)
        {
            return vec![];
        }
        // A Pod without an IP is in no endpoints, before or after.
        if !event.objects().any(has_ip) {
            return vec![];
        }
        let pods: Vec<&CachedPod> = event.objects().collect();
        let ns = pods[0].namespace().unwrap_or_default();
        let names: Vec<String> = self
            .services_by_ns
            .lock()
            .expect("services by namespace")
            .get(&ns)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let store = self.services.store();
        names
            .into_iter()
            .map(|name| ObjectRef::new(&name).within(&ns))
            .filter(|reference| {
                store.get(reference).is_some_and(|svc| {
                    svc.spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|sel| {
                            pods.iter()
                                .any(|pod| selector_matches(sel, pod.metadata.labels.as_ref()))
                        })
                })
            })
            .collect()
    }
}

fn remove_name(by_ns: &mut HashMap<String, HashSet<Arc<ObjectRef<CachedPod>>>>, pod: &CachedPod) {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(set) = by_ns.get_mut(&ns) {
        set.remove(&ObjectRef::from_obj(pod));
        if set.is_empty() {
            by_ns.remove(&ns);
        }
    }
}

/// Whether a Service's equality-based selector selects these labels (an empty selector selects
/// everything, as upstream's `labels.Set.AsSelector`).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether anything an endpoint is made of differs between two states of a Pod.
pub fn endpoint_facts_changed(old: &CachedPod, new: &CachedPod) -> bool {
    let facts = |pod: &CachedPod| {
        let spec = pod.spec.as_ref();
        (
            pod.metadata.labels.clone(),
            pod.metadata.deletion_timestamp.is_some(),
            pod_ips(pod),
            is_pod_ready(pod),
            ready_transition(pod),
            is_pod_terminal(pod),
            spec.and_then(|s| s.node_name.clone()),
            spec.and_then(|s| s.hostname.clone()),
            spec.and_then(|s| s.subdomain.clone()),
        )
    };
    facts(old) != facts(new)
}

fn ready_transition(pod: &CachedPod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// The Pod's IPs (status.podIPs, or status.podIP when only that is set).
pub fn pod_ips(pod: &CachedPod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return vec![];
    };
    let ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !ips.is_empty() {
        return ips;
    }
    status
        .pod_ip
        .iter()
        .filter(|ip| !ip.is_empty())
        .cloned()
        .collect()
}

/// Whether an IP address is IPv6.
pub fn is_ipv6(ip: &str) -> bool {
    ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv6())
}

/// Whether the Pod has an IP (without copying its IPs out).
fn has_ip(pod: &CachedPod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.pod_ips.iter().flatten().any(|ip| !ip.ip.is_empty())
            || s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
    })
}

/// Upstream's ShouldPodBeInEndpoints: running (not terminal), with an IP, and not terminating
/// unless terminating Pods are wanted.
pub fn should_pod_be_in_endpoints(pod: &CachedPod, include_terminating: bool) -> bool {
    !is_pod_terminal(pod)
        && has_ip(pod)
        && (include_terminating || pod.metadata.deletion_timestamp.is_none())
}

/// The Pod's hostname, when the Service is its subdomain (upstream's ShouldSetHostname).
pub fn endpoint_hostname(pod: &CachedPod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| hostname.to_string())
}

/// Whether the Service is headless (clusterIP None).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The port number a Service port reaches on the Pod: a number as is, a name looked up among
/// the container ports (and those of sidecar init containers) of the same protocol.
pub fn find_port(pod: &CachedPod, svc_port: &ServicePort) -> Option<i32> {
    let protocol = svc_port.protocol.as_deref().unwrap_or("TCP");
    match &svc_port.target_port {
        None => Some(svc_port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The time, in upstream's RFC 3339 with nanoseconds, for the trigger-time annotation.
pub fn format_trigger_time(t: Timestamp) -> String {
    // jiff prints RFC 3339 with as many fractional digits as needed, in UTC.
    t.to_string()
}

#[derive(Debug, Default)]
struct TriggerState {
    service: Option<Timestamp>,
    /// Each Pod's trigger time, and the sync that last saw it.
    pods: HashMap<String, (Timestamp, u64)>,
    syncs: u64,
}

/// Upstream's TriggerTimeTracker: per Service, the trigger times (Ready transition of each Pod,
/// creation of the Service) seen at the last sync, to report the earliest one that changed.
#[derive(Debug, Default)]
pub struct TriggerTimes {
    services: Mutex<HashMap<String, TriggerState>>,
}

impl TriggerTimes {
    /// The last-change-trigger-time of a sync of `svc` over `pods`, and records what it saw.
    /// A Service synced for the first time reports its creation.
    pub fn compute(&self, svc: &Service, pods: &[Arc<CachedPod>]) -> Option<Timestamp> {
        let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
        let mut services = self.services.lock().expect("trigger times");
        let known = services.contains_key(&key);
        let state = services.entry(key).or_default();
        state.syncs += 1;
        let sync = state.syncs;
        let mut earliest: Option<Timestamp> = None;
        for pod in pods {
            let Some(t) = ready_transition(pod) else {
                continue;
            };
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            match state.pods.get_mut(name) {
                Some((last, seen)) => {
                    if t > *last {
                        earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    }
                    *last = t;
                    *seen = sync;
                }
                None => {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    state.pods.insert(name.to_string(), (t, sync));
                }
            }
        }
        state.pods.retain(|_, (_, seen)| *seen == sync);
        let created = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(c) = created
            && state.service.is_none_or(|last| c > last)
        {
            earliest = Some(earliest.map_or(c, |e| e.min(c)));
        }
        state.service = created;
        if known { earliest } else { created }
    }

    /// Forgets a deleted Service.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.services
            .lock()
            .expect("trigger times")
            .remove(&format!("{namespace}/{name}"));
    }
}

/// What the controller last wrote to an object, until its cache shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Written at this resourceVersion.
    Version(u64),
    /// Deleted.
    Gone,
}

/// How long a write may go unseen by the watch before the cache is trusted anyway (a write
/// whose event was missed must not hold its object back for ever; acting on a stale cache then
/// costs at most a refused write and a retry).
const OWN_WRITE_PATIENCE: Duration = Duration::from_secs(10);

/// One write the cache has not shown yet.
#[derive(Debug, Clone)]
struct Pending {
    written: Written,
    at: Instant,
    /// The objects (same namespace) whose reconciles wait for the watch to show this write.
    waiters: BTreeSet<String>,
}

/// The controller's own writes its cache has not shown yet (upstream's EndpointSliceTracker,
/// by resourceVersion): acting on a cache that lags behind them would undo or repeat them.
/// A reconcile that finds the cache behind (`hold`) waits for the watch event that shows the
/// write (`observe` then asks for a wake-up), or at the latest until the patience runs out.
#[derive(Debug, Default)]
pub struct OwnWrites {
    pending: Mutex<HashMap<(String, String), Pending>>,
}

/// What a watch event of a tracked object means for the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The event shows the controller's own last write.
    pub own: bool,
    /// The objects (same namespace) whose reconciles waited for the write the event settles:
    /// they must run again.
    pub wake: Vec<String>,
}

fn version(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|rv| rv.parse().ok())
}

impl OwnWrites {
    fn record(&self, namespace: &str, name: &str, written: Written) {
        let pending = Pending {
            written,
            at: Instant::now(),
            waiters: BTreeSet::new(),
        };
        self.pending
            .lock()
            .expect("own writes")
            .insert((namespace.into(), name.into()), pending);
    }

    /// Records a create or update that answered with resourceVersion `rv`.
    pub fn wrote(&self, namespace: &str, name: &str, rv: Option<&str>) {
        if let Some(v) = version(rv) {
            self.record(namespace, name, Written::Version(v));
        }
    }

    /// Records a deletion.
    pub fn deleted(&self, namespace: &str, name: &str) {
        self.record(namespace, name, Written::Gone);
    }

    /// A watch event for an object (`rv` `None`: it was deleted), seen after the cache took
    /// it: the pending write it shows or supersedes is forgotten.
    pub fn observe(&self, namespace: &str, name: &str, rv: Option<&str>) -> Observed {
        let key = (namespace.to_string(), name.to_string());
        let mut pending = self.pending.lock().expect("own writes");
        let Some(entry) = pending.get(&key) else {
            return Observed::default();
        };
        let (own, settled) = match (entry.written, version(rv)) {
            (Written::Gone, None) => (true, true),
            // Deleted after being written: nothing to wait for any more.
            (Written::Version(_), None) => (false, true),
            (Written::Version(v), Some(seen)) => (seen == v, seen >= v),
            // Created again after being deleted.
            (Written::Gone, Some(_)) => (false, true),
        };
        let wake = match settled {
            true => pending
                .remove(&key)
                .map(|e| e.waiters.into_iter().collect())
                .unwrap_or_default(),
            false => Vec::new(),
        };
        Observed { own, wake }
    }

    /// Whether the cached state of an object (`None`: absent) already reflects the last write
    /// to it, or the write has waited out its patience; either way the write is then
    /// forgotten. Otherwise, how much longer to wait, and `waiter` is woken when it shows.
    fn check(
        pending: &mut HashMap<(String, String), Pending>,
        key: (String, String),
        cached_rv: Option<Option<&str>>,
        waiter: &str,
    ) -> Result<(), Duration> {
        let Some(entry) = pending.get_mut(&key) else {
            return Ok(());
        };
        let left = OWN_WRITE_PATIENCE.saturating_sub(entry.at.elapsed());
        let fresh = left.is_zero()
            || match (entry.written, cached_rv) {
                (Written::Gone, None) => true,
                (Written::Gone, Some(_)) => false,
                (Written::Version(_), None) => false,
                (Written::Version(v), Some(rv)) => version(rv).is_none_or(|c| c >= v),
            };
        if fresh {
            pending.remove(&key);
            Ok(())
        } else {
            entry.waiters.insert(waiter.to_string());
            Err(left)
        }
    }

    /// Whether the cache of `store` shows the controller's last writes to the named objects
    /// of `namespace` (all of them with pending writes when `names` is `None`). When it does
    /// not, the action for the reconcile of `waiter`: wait for the watch event that shows the
    /// write (`observe` names `waiter` to wake), and look again once the write's patience
    /// runs out.
    pub fn hold<K>(
        &self,
        store: &Store<K>,
        namespace: &str,
        names: Option<&[String]>,
        waiter: &str,
    ) -> Option<Action>
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        // The cache is read under the lock: an event that lands after the read is observed
        // only once the write is marked awaited, so its wake-up is not lost.
        let mut pending = self.pending.lock().expect("own writes");
        let names: Vec<String> = match names {
            Some(names) => names.to_vec(),
            None => pending
                .keys()
                .filter(|(ns, _)| ns == namespace)
                .map(|(_, name)| name.clone())
                .collect(),
        };
        for name in names {
            let cached = store.get(&ObjectRef::new(&name).within(namespace));
            let rv = cached
                .as_ref()
                .map(|o| o.meta().resource_version.as_deref());
            let key = (namespace.to_string(), name);
            if let Err(left) = Self::check(&mut pending, key, rv, waiter) {
                return Some(Action::requeue(left));
            }
        }
        None
    }

    /// Forgets the writes to the named objects.
    pub fn forget(&self, namespace: &str, names: &[String]) {
        let mut pending = self.pending.lock().expect("own writes");
        for name in names {
            pending.remove(&(namespace.to_string(), name.clone()));
        }
    }
}

/// Whether a write was refused because the namespace is being deleted (nothing to retry).
pub fn namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    /// A Pod for tests: `ip` (empty for none), Ready or not, with one named container port.
    pub fn pod(name: &str, ip: &str, ready: bool) -> CachedPod {
        CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
                pod_ips: (!ip.is_empty()).then(|| vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time("2025-01-01T00:00:00Z".parse().expect("time"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn named_ports_resolve_per_pod_and_protocol() {
        let p = pod("a", "10.0.0.1", true);
        let named = ServicePort {
            port: 80,
            target_port: Some(IntOrString::String("http".into())),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &named), Some(8080));
        let udp = ServicePort {
            protocol: Some("UDP".into()),
            ..named.clone()
        };
        assert_eq!(find_port(&p, &udp), None);
        let number = ServicePort {
            port: 80,
            target_port: Some(IntOrString::Int(9090)),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &number), Some(9090));
    }

    #[test]
    fn selectors_and_membership() {
        let p = pod("a", "10.0.0.1", true);
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(selector_matches(&sel, p.metadata.labels.as_ref()));
        assert!(selector_matches(&BTreeMap::new(), None));
        assert!(!selector_matches(&sel, None));
        assert!(should_pod_be_in_endpoints(&p, false));
        assert!(!should_pod_be_in_endpoints(&pod("b", "", true), true));
        let mut terminating = p.clone();
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(!should_pod_be_in_endpoints(&terminating, false));
        assert!(should_pod_be_in_endpoints(&terminating, true));
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!should_pod_be_in_endpoints(&done, true));
    }

    #[test]
    fn trigger_time_is_the_earliest_change_since_the_last_sync() {
        let tracker = TriggerTimes::default();
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                creation_timestamp: Some(Time("2024-01-01T00:00:00Z".parse().unwrap())),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = Arc::new(pod("a", "10.0.0.1", true));
        // First sync: the Service's creation.
        assert_eq!(
            tracker.compute(&svc, std::slice::from_ref(&a)),
            Some("2024-01-01T00:00:00Z".parse().unwrap())
        );
        // Nothing changed.
        assert_eq!(tracker.compute(&svc, std::slice::from_ref(&a)), None);
        // A Pod turned ready later.
        let mut b = pod("b", "10.0.0.2", true);
        b.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(Time("2025-02-01T00:00:00Z".parse().unwrap()));
        let b = Arc::new(b);
        assert_eq!(
            tracker.compute(&svc, &[a, b]),
            Some("2025-02-01T00:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn own_writes_hold_until_the_cache_shows_them() {
        use k8s_openapi::api::core::v1::Endpoints;
        use kube::runtime::watcher::Event;

        let (store, mut writer) = kube::runtime::reflector::store::<Endpoints>();
        let cache = |writer: &mut kube::runtime::reflector::store::Writer<Endpoints>,
                     name: &str,
                     rv: &str| {
            writer.apply_watcher_event(&Event::Apply(Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("ns".into()),
                    resource_version: Some(rv.into()),
                    ..Default::default()
                },
                ..Default::default()
            }));
        };
        let names = |n: &str| vec![n.to_string()];
        let w = OwnWrites::default();
        assert!(w.hold(&store, "ns", Some(&names("a")), "svc").is_none());
        w.wrote("ns", "a", Some("10"));
        assert!(
            w.hold(&store, "ns", Some(&names("a")), "svc").is_some(),
            "absent"
        );
        assert!(w.hold(&store, "ns", None, "svc").is_some(), "pending in ns");
        assert!(w.hold(&store, "other", None, "svc").is_none());
        cache(&mut writer, "a", "9");
        let held = w
            .hold(&store, "ns", Some(&names("a")), "svc")
            .expect("older version");
        assert!(
            format!("{held:?}").contains("Some("),
            "a requeue at the deadline: {held:?}"
        );
        cache(&mut writer, "a", "10");
        assert!(w.hold(&store, "ns", Some(&names("a")), "svc").is_none());
        // A deletion holds until the cache loses the object.
        w.deleted("ns", "a");
        assert!(w.hold(&store, "ns", None, "svc").is_some());
        // Watch events settle writes: the own one is recognised and wakes the held reconcile;
        // an older one is not enough.
        assert_eq!(
            w.observe("ns", "a", None),
            Observed {
                own: true,
                wake: vec!["svc".into()]
            }
        );
        assert!(w.hold(&store, "ns", None, "svc").is_none());
        w.wrote("ns", "b", Some("20"));
        assert_eq!(w.observe("ns", "b", Some("19")), Observed::default());
        assert_eq!(
            w.observe("ns", "b", Some("20")),
            Observed {
                own: true,
                wake: vec![]
            },
            "nobody waited"
        );
        assert!(w.hold(&store, "ns", None, "svc").is_none());
        // Someone else deleting a written object settles it too (no waiting for ever).
        w.wrote("ns", "c", Some("30"));
        assert!(w.hold(&store, "ns", Some(&names("c")), "svc").is_some());
        assert_eq!(
            w.observe("ns", "c", None),
            Observed {
                own: false,
                wake: vec!["svc".into()]
            }
        );
        assert!(w.hold(&store, "ns", Some(&names("c")), "svc").is_none());
    }
}
