//! kube-proxy benchmark, per mode (nftables, iptables, and ipvs where the kernel has it): full
//! and single-Service sync times for 1,000 and 10,000 Services with 2 endpoints each (and 3,
//! for nftables at 10,000; the single change: an endpoint moving, and one coming and going),
//! and connection setup through a ClusterIP with 100 to 10,000 Services present (also
//! userspace); where the kernel has no IPVS, the ipvs mode's own share of a sync, with a kernel
//! that only counts requests. References measured in the same run:
//! Debian's `nft -f` loading the same Services in upstream kube-proxy's nftables layout (a
//! chain per Service and per endpoint, `numgen ... vmap` between them), in full and for the
//! same endpoint move (what upstream's proxy, which writes nft text, pays), and connecting to
//! the backend directly (no Service in the way). Runs as root inside network namespaces of its
//! own.
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench proxy`

#[allow(dead_code)] // memory_mib is for the node benchmark.
mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_network::{Destination, NetNs, Route, RouteSocket, ServiceAddress};
use baton_proxy::args::ProxyMode;
use baton_proxy::dataplane::Dataplane;
use baton_proxy::ipvs_rules::{IpvsChange, TableElements, render_ipvs};
use baton_proxy::ipvs_sync::{IpvsError, IpvsKernel, IpvsProxier, KernelIpvs};
use baton_proxy::nftables_rules::RuleSettings;
use baton_proxy::service_model::build_state;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use support::{ms, quantile};

/// The backend every benchmark connection ends at, and the Service address in front of it.
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const FRONT: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

/// What happens to Service 0's endpoints in a single-Service change.
#[derive(Clone, Copy)]
enum Change {
    /// One endpoint moves to another address; the number stays.
    Move,
    /// A third endpoint comes (odd rounds) and goes (even rounds), as a Deployment scaled up
    /// and down.
    Scale,
}

/// `n` Services with `per_service` endpoints each (two or three; Service 0 always two), plus
/// the one in front of the local backend; `round` changes the endpoints of Service 0 (a
/// single-Service change) as `change` says.
fn objects(
    n: usize,
    per_service: usize,
    round: usize,
    change: Change,
) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::with_capacity(n + 1);
    let mut slices = Vec::with_capacity(n + 1);
    let mut add = |name: String, ip: String, endpoints: Vec<String>, target: u16| {
        services.push(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "bench" },
                "spec": { "clusterIP": ip, "clusterIPs": [ip],
                          "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] },
            }))
            .expect("service"),
        );
        slices.push(
            serde_json::from_value(json!({
                "metadata": { "name": format!("{name}-1"), "namespace": "bench",
                              "labels": { "kubernetes.io/service-name": name } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": target, "protocol": "TCP" }],
                "endpoints": endpoints.iter().map(|ip| json!({
                    "addresses": [ip], "conditions": { "ready": true }, "nodeName": "bench",
                })).collect::<Vec<_>>(),
            }))
            .expect("slice"),
        );
    };
    for i in 0..n {
        let shift = match change {
            Change::Move if i == 0 => round,
            _ => 0,
        };
        let mut endpoints = vec![
            format!("10.244.{}.{}", (i + shift) / 250, (i + shift) % 250 + 2),
            format!("10.245.{}.{}", i / 250, i % 250 + 2),
        ];
        if per_service == 3 && i != 0 {
            endpoints.push(format!("10.246.{}.{}", i / 250, i % 250 + 2));
        }
        if matches!(change, Change::Scale) && i == 0 && round % 2 == 1 {
            endpoints.push("10.246.0.2".into());
        }
        add(format!("svc-{i}"), cluster_ip(i), endpoints, 8080);
    }
    add(
        "front".into(),
        FRONT.to_string(),
        vec![BACKEND.to_string()],
        8080,
    );
    (services, slices)
}

fn settings() -> RuleSettings {
    RuleSettings {
        node_name: "bench".into(),
        cluster_cidr: Some("10.244.0.0/15".parse().expect("cidr")),
    }
}

/// A namespace where Service addresses route to loopback and the backend listens.
fn namespace() -> NetNs {
    let namespace = NetNs::create().expect("namespace");
    namespace
        .run(|| {
            let mut socket = RouteSocket::open().expect("rtnetlink");
            socket
                .add_address(1, "10.0.0.1/32".parse().expect("address"))
                .expect("backend address");
            for destination in ["10.96.0.0/12", "10.100.0.0/16"] {
                socket
                    .add_route(&Route {
                        destination: destination.parse().expect("route"),
                        gateway: None,
                        interface: Some(1),
                    })
                    .expect("route");
            }
        })
        .expect("namespace setup");
    namespace
}

struct SyncResult {
    rules: usize,
    full: Duration,
    full_kernel: Duration,
    /// p50 of 11 single-Service changes (and of which the kernel or iptables-restore): an
    /// endpoint moving, and a third endpoint coming and going.
    moved: (Duration, Duration),
    scaled: (Duration, Duration),
}

/// The single-Service changes of `change`: Service 0 and its slice, 11 rounds.
fn changes(change: Change) -> Vec<(Service, EndpointSlice)> {
    (1..=11)
        .map(|round| {
            let (mut services, mut slices) = objects(1, 2, round, change);
            (services.remove(0), slices.remove(0))
        })
        .collect()
}

/// Full sync, then single-Service changes, the way the proxy runs them in `mode`: the Services
/// and EndpointSlices are in its informers' caches already (built here before the clock
/// starts); the first sync joins them all into service ports, later ones rebuild the ports of
/// the one Service that changed and apply them.
fn measure_sync(mode: ProxyMode, n: usize, per_service: usize) -> SyncResult {
    let (services, slices) = objects(n, per_service, 0, Change::Move);
    let namespace = namespace();
    namespace
        .run(|| {
            let mut dataplane = Dataplane::open(mode).expect("dataplane");
            let started = Instant::now();
            let mut state = build_state(&services, &slices);
            let (stats, rules) = dataplane.sync(&state, &settings()).expect("full sync");
            let full = started.elapsed();
            state.mark_applied();
            let mut median = |change: Change| {
                let mut times = Vec::new();
                for (service, slice) in &changes(change) {
                    let started = Instant::now();
                    state.update_service(
                        "bench",
                        "svc-0",
                        Some(service),
                        std::slice::from_ref(slice),
                    );
                    let (stats, _) = dataplane
                        .sync(&state, &settings())
                        .expect("incremental sync");
                    state.mark_applied();
                    times.push((started.elapsed(), stats.apply_time));
                    assert!(!stats.full && stats.changes > 0);
                }
                times.sort();
                times[times.len() / 2]
            };
            let moved = median(Change::Move);
            let scaled = median(Change::Scale);
            dataplane.clean_up().expect("clean up");
            SyncResult {
                rules,
                full,
                full_kernel: stats.apply_time,
                moved,
                scaled,
            }
        })
        .expect("run in namespace")
}

/// The endpoints (`address`, port) of a slice.
fn endpoints_of(slice: &EndpointSlice) -> Vec<(String, i32)> {
    let port = slice
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| p.port)
        .unwrap_or(0);
    slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(|a| (a.clone(), port)))
        .collect()
}

/// Rules of upstream kube-proxy's nftables layout for Service `i`'s endpoint chain.
fn upstream_endpoint_chain(i: usize, address: &str, port: i32) -> String {
    let chain = format!("endpoint-{i}-{address}");
    format!(
        "add chain ip kube-proxy {chain}\n\
         add rule ip kube-proxy {chain} ip saddr {address} jump mark-for-masquerade\n\
         add rule ip kube-proxy {chain} meta l4proto tcp dnat to {address}:{port}\n"
    )
}

fn upstream_service_rule(i: usize, endpoints: &[(String, i32)]) -> String {
    let choices: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(k, (address, _))| format!("{k} : goto endpoint-{i}-{address}"))
        .collect();
    format!(
        "add rule ip kube-proxy service-{i} numgen random mod {} vmap {{ {} }}\n",
        endpoints.len(),
        choices.join(", ")
    )
}

/// `nft -f` of the Services in upstream kube-proxy's nftables layout, into a fresh namespace:
/// (the whole table, then the single-Service change of `changed`, which replaces Service 0's
/// endpoints). `None` where nft failed or is missing.
fn upstream_reference(
    services: &[Service],
    slices: &[EndpointSlice],
    changed: &EndpointSlice,
) -> (Option<Duration>, Option<Duration>) {
    let mut text = String::from(
        "add table ip kube-proxy\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade meta mark set meta mark or 0x4000\n\
         add chain ip kube-proxy services\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy nat-prerouting jump services\n",
    );
    let mut elements = Vec::new();
    for (i, (service, slice)) in services.iter().zip(slices).enumerate() {
        let ip = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .unwrap_or_default();
        let endpoints = endpoints_of(slice);
        for (address, port) in &endpoints {
            text.push_str(&upstream_endpoint_chain(i, address, *port));
        }
        text.push_str(&format!(
            "add chain ip kube-proxy service-{i}\n\
             add rule ip kube-proxy service-{i} ip daddr {ip} tcp dport 80 ip saddr != 10.244.0.0/15 jump mark-for-masquerade\n"
        ));
        text.push_str(&upstream_service_rule(i, &endpoints));
        elements.push(format!("{ip} . tcp . 80 : goto service-{i}"));
    }
    text.push_str(&format!(
        "add element ip kube-proxy service-ips {{ {} }}\n",
        elements.join(", ")
    ));
    // The change: Service 0's endpoints become `changed`'s.
    let old = endpoints_of(&slices[0]);
    let new = endpoints_of(changed);
    let mut change = String::new();
    for (address, port) in new.iter().filter(|e| !old.contains(e)) {
        change.push_str(&upstream_endpoint_chain(0, address, *port));
    }
    change.push_str("flush chain ip kube-proxy service-0\n");
    change.push_str(&format!(
        "add rule ip kube-proxy service-0 ip daddr {} tcp dport 80 ip saddr != 10.244.0.0/15 jump mark-for-masquerade\n",
        cluster_ip(0)
    ));
    change.push_str(&upstream_service_rule(0, &new));
    for (address, _) in old.iter().filter(|e| !new.contains(e)) {
        change.push_str(&format!(
            "flush chain ip kube-proxy endpoint-0-{address}\n\
             delete chain ip kube-proxy endpoint-0-{address}\n"
        ));
    }
    let dir = std::env::temp_dir();
    let full_file = dir.join(format!("baton-bench-{}.nft", std::process::id()));
    let change_file = dir.join(format!("baton-bench-{}-change.nft", std::process::id()));
    let written = std::fs::write(&full_file, text).and(std::fs::write(&change_file, change));
    let load = |file: &std::path::Path| -> Option<Duration> {
        let started = Instant::now();
        let status = Command::new("nft").arg("-f").arg(file).status().ok()?;
        status.success().then(|| started.elapsed())
    };
    let took = written
        .ok()
        .and_then(|()| NetNs::create().ok())
        .and_then(|fresh| {
            fresh
                .run(|| {
                    let full = load(&full_file);
                    let change = full.and_then(|_| load(&change_file));
                    (full, change)
                })
                .ok()
        })
        .unwrap_or((None, None));
    let _ = std::fs::remove_file(&full_file);
    let _ = std::fs::remove_file(&change_file);
    took
}

/// Connects `count` times to `address`, accepting on `listener`: (connections per second,
/// p50, p99).
fn connect_rate(
    listener: &TcpListener,
    address: SocketAddr,
    count: usize,
) -> (f64, Duration, Duration) {
    let mut times = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let begin = Instant::now();
        let stream = TcpStream::connect(address).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        times.push(begin.elapsed());
        drop((stream, accepted));
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    times.sort();
    (rate, quantile(&times, 0.5), quantile(&times, 0.99))
}

/// Connection setup through a ClusterIP in `mode` with `n` Services programmed, and straight to
/// the backend: ((connections/s, p50, p99) through the Service, the same directly).
fn measure_lookup(
    mode: ProxyMode,
    n: usize,
) -> ((f64, Duration, Duration), (f64, Duration, Duration)) {
    let namespace = namespace();
    namespace
        .run(|| {
            // The userspace mode's listeners are tokio tasks; its threads start here, in the
            // namespace.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let _entered = runtime.enter();
            let mut dataplane = Dataplane::open(mode).expect("dataplane");
            let (services, slices) = objects(n, 2, 0, Change::Move);
            dataplane
                .sync(&build_state(&services, &slices), &settings())
                .expect("sync");
            let listener = TcpListener::bind((BACKEND, 8080)).expect("backend");
            let count = 3000;
            // Warm up, then measure through the Service and directly.
            connect_rate(&listener, SocketAddr::from((FRONT, 80)), 200);
            let through = connect_rate(&listener, SocketAddr::from((FRONT, 80)), count);
            let direct = connect_rate(&listener, SocketAddr::from((BACKEND, 8080)), count);
            dataplane.clean_up().expect("clean up");
            (through, direct)
        })
        .expect("run in namespace")
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ms2(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A kernel that takes every ipvs request and counts it: the ipvs mode's own share where the
/// kernel has no IPVS.
#[derive(Debug, Default)]
struct CountingKernel {
    requests: usize,
}

impl IpvsKernel for CountingKernel {
    fn read(&mut self) -> Result<KernelIpvs, IpvsError> {
        self.requests += 2;
        Ok(KernelIpvs {
            node_addresses: vec![Ipv4Addr::new(192, 168, 1, 5)],
            ..KernelIpvs::default()
        })
    }
    fn destinations(
        &mut self,
        _: &ServiceAddress,
    ) -> Result<std::collections::BTreeSet<Destination>, IpvsError> {
        self.requests += 1;
        Ok(Default::default())
    }
    fn apply(&mut self, _: &IpvsChange) -> Result<(), IpvsError> {
        self.requests += 1;
        Ok(())
    }
    fn replace_table(&mut self, _: &TableElements, _: &RuleSettings) -> Result<(), IpvsError> {
        self.requests += 1;
        Ok(())
    }
    fn update_table(&mut self, _: &TableElements, _: &TableElements) -> Result<(), IpvsError> {
        self.requests += 1;
        Ok(())
    }
    fn watch_node_addresses(&mut self) -> Result<Vec<Ipv4Addr>, IpvsError> {
        Ok(vec![Ipv4Addr::new(192, 168, 1, 5)])
    }
    fn node_addresses_changed(&mut self) -> Result<bool, IpvsError> {
        Ok(false)
    }
}

/// The ipvs mode's own share of a sync of `n` Services: the full sync, and p50 of 11 endpoint
/// moves (with the kernel requests each sends); the reference is what the mode did before
/// its syncs became incremental, rendering every Service again for each change.
fn measure_ipvs_share(n: usize) -> (Duration, Duration, usize, Duration) {
    let (services, slices) = objects(n, 2, 0, Change::Move);
    let mut proxier = IpvsProxier::with_kernel(CountingKernel::default());
    let started = Instant::now();
    let mut state = build_state(&services, &slices);
    proxier.sync(&state, &settings()).expect("full sync");
    let full = started.elapsed();
    state.mark_applied();
    let mut times = Vec::new();
    let mut requests = 0;
    let mut rendered = Vec::new();
    for (service, slice) in &changes(Change::Move) {
        let before = proxier.kernel().requests;
        let started = Instant::now();
        state.update_service("bench", "svc-0", Some(service), std::slice::from_ref(slice));
        let stats = proxier.sync(&state, &settings()).expect("incremental sync");
        state.mark_applied();
        times.push(started.elapsed());
        assert!(!stats.full && stats.changes > 0);
        requests = proxier.kernel().requests - before;
        let started = Instant::now();
        std::hint::black_box(render_ipvs(
            &state,
            &settings(),
            &[Ipv4Addr::new(192, 168, 1, 5)],
        ));
        rendered.push(started.elapsed());
    }
    times.sort();
    rendered.sort();
    (
        full,
        times[times.len() / 2],
        requests,
        rendered[rendered.len() / 2],
    )
}

/// Whether this kernel has IPVS (it is not here: CONFIG_IP_VS is unset).
fn has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

fn main() {
    let mut sync_modes = vec![
        ("nftables", ProxyMode::Nftables),
        ("iptables", ProxyMode::Iptables),
    ];
    let mut lookup_modes = vec![
        ("nftables", ProxyMode::Nftables),
        ("iptables", ProxyMode::Iptables),
        ("userspace", ProxyMode::Userspace),
    ];
    if has_ipvs() {
        sync_modes.push(("ipvs", ProxyMode::Ipvs));
        lookup_modes.push(("ipvs", ProxyMode::Ipvs));
    }
    println!("# kube-proxy sync and lookup (2 cores, 24 GiB)\n");
    if !has_ipvs() {
        println!(
            "ipvs mode not measured: this kernel has no IPVS (CONFIG_IP_VS; /proc/net/ip_vs is missing).\n"
        );
    }
    println!(
        "| mode | Services | endpoints each | rules | full sync (of which the kernel) | an endpoint moves, p50 of 11 (kernel) | an endpoint comes or goes, p50 of 11 (kernel) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut runs: Vec<(&str, ProxyMode, usize, usize)> = Vec::new();
    for n in [1_000, 10_000] {
        for (name, mode) in &sync_modes {
            runs.push((name, *mode, n, 2));
        }
    }
    // Three endpoints: ranges that are not aligned halves cost the nftables mode's range sets
    // more per element.
    runs.push(("nftables", ProxyMode::Nftables, 10_000, 3));
    for (name, mode, n, per_service) in runs {
        let r = measure_sync(mode, n, per_service);
        println!(
            "| {name} | {n} | {per_service} | {} | {} ({}) | {} ({}) | {} ({}) |",
            r.rules,
            ms(r.full),
            ms(r.full_kernel),
            ms2(r.moved.0),
            ms2(r.moved.1),
            ms2(r.scaled.0),
            ms2(r.scaled.1),
        );
    }
    println!(
        "\n| Services | ipvs mode's own share (no kernel): full sync | an endpoint moves, p50 of 11 | kernel requests for it | reference: rendering every Service again, p50 |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let (full, moved, requests, rendered) = measure_ipvs_share(n);
        println!(
            "| {n} | {} | {} | {requests} | {} |",
            ms(full),
            us(moved),
            ms2(rendered)
        );
    }
    println!(
        "\n| Services | reference: upstream's nftables layout through `nft -f`, full | the same endpoint move |"
    );
    println!("|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let (services, slices) = objects(n, 2, 0, Change::Move);
        let moved = &changes(Change::Move)[0].1;
        match upstream_reference(&services, &slices, moved) {
            (Some(full), Some(change)) => println!("| {n} | {} | {} |", ms(full), ms2(change)),
            _ => println!("| {n} | nft failed or not installed | |"),
        }
    }
    println!(
        "\n| mode | Services present | connections/s through a ClusterIP | p50 | p99 | reference: direct to the backend (conn/s, p50, p99) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for n in [100, 1_000, 10_000] {
        for (name, mode) in &lookup_modes {
            let ((rate, p50, p99), (direct, d50, d99)) = measure_lookup(*mode, n);
            println!(
                "| {name} | {n} | {rate:.0} | {} | {} | {direct:.0}, {}, {} |",
                us(p50),
                us(p99),
                us(d50),
                us(d99)
            );
        }
    }
}
