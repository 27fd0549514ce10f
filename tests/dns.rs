//! Cluster DNS end to end: `baton dns` and `baton proxy` on two kubelet nodes in a lab (the
//! test's thread is in it; nothing reaches the host's network). Pods resolve through the
//! `kube-dns` Service address in their resolv.conf (dnsPolicy ClusterFirst): a ClusterIP
//! Service, a headless Service's pods, an SRV record, and a name outside the cluster domain
//! answered by an upstream resolver the test runs in the lab.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use baton_test_harness::{Binary, Lab, NodeCluster, pod_phase, wait_until};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// The address the test's upstream resolver gives `example.org`.
const EXAMPLE_ORG: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// A resolver for names outside the cluster: `example.org A` is 192.0.2.10, anything else is
/// NXDOMAIN. Plain DNS messages, written by hand: a header, the question echoed, one answer.
struct Upstream {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start(ip: Ipv4Addr) -> Result<Self> {
        let socket = UdpSocket::bind((ip, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let address = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                if let Some(answer) = answer(&buffer[..length]) {
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        Ok(Self { address, stop })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    // The question: labels up to the zero byte, then type and class.
    let mut end = 12;
    let mut labels = Vec::new();
    while *query.get(end)? != 0 {
        let length = query[end] as usize;
        labels.push(String::from_utf8_lossy(query.get(end + 1..end + 1 + length)?).to_lowercase());
        end += 1 + length;
    }
    let question = query.get(12..end + 5)?;
    let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
    let found = labels == ["example", "org"] && qtype == 1;
    let mut out = Vec::new();
    out.extend_from_slice(&query[0..2]);
    // QR, RD copied, RA; RCODE 0 or 3 (NXDOMAIN).
    out.extend_from_slice(&[
        0x81 | (query[2] & 0x01),
        if found || labels == ["example", "org"] {
            0x80
        } else {
            0x83
        },
    ]);
    out.extend_from_slice(&[0, 1, 0, u8::from(found), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if found {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        out.extend_from_slice(&EXAMPLE_ORG.octets());
    }
    Some(out)
}

#[tokio::test]
async fn pods_resolve_services_and_outside_names() -> Result<()> {
    let mut cluster = NodeCluster::start_nodes(
        &binary(),
        &["dns-a", "dns-b"],
        &["--cluster-dns=10.96.0.10"],
    )
    .await?;
    let upstream = Upstream::start(Lab::gateway())?;
    for node in std::iter::once(&mut cluster.node).chain(cluster.others.iter_mut()) {
        node.start_proxy(&cluster.server, &[])?;
        node.start_dns(&cluster.server, upstream.address)?;
    }
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    for service in [
        json!({ "metadata": { "name": "web" },
                "spec": { "selector": { "app": "web" },
                          "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] } }),
        json!({ "metadata": { "name": "db" },
                "spec": { "clusterIP": "None", "selector": { "app": "db" },
                          "ports": [{ "name": "pg", "port": 5432 }] } }),
    ] {
        services
            .create(&PostParams::default(), &serde_json::from_value(service)?)
            .await?;
    }
    let web_ip = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    let mut db_ips = Vec::new();
    for name in ["db-0", "db-1"] {
        cluster
            .create_pod(
                name,
                "sleep 3600",
                json!({ "metadata": { "labels": { "app": "db" } } }),
            )
            .await?;
        let ip = cluster
            .wait_for("the db pod to run", name, |pod| {
                (pod_phase(pod) == Some("Running"))
                    .then(|| pod.status.as_ref()?.pod_ip.clone())
                    .flatten()
            })
            .await;
        db_ips.push(ip);
    }

    // The kube-dns Service's endpoint on node b is programmed before the client asks.
    let node_b = cluster.others[0].name.clone();
    let script = "cat /etc/resolv.conf; \
        for i in $(seq 1 20); do nslookup web.default.svc.cluster.local >/dev/null 2>&1 && break; sleep 1; done; \
        nslookup web.default.svc.cluster.local; \
        nslookup db.default.svc.cluster.local; \
        nslookup -type=SRV _http._tcp.web.default.svc.cluster.local; \
        nslookup example.org; \
        nslookup nothing.default.svc.cluster.local; true";
    cluster
        .create_pod(
            "client",
            script,
            json!({ "spec": { "nodeName": node_b, "restartPolicy": "Never" } }),
        )
        .await?;
    let pods = cluster.pods();
    let finished = wait_until("the client to finish", Duration::from_secs(120), || async {
        let pod = pods.get("client").await.ok()?;
        (pod_phase(&pod) == Some("Succeeded")).then_some(())
    })
    .await;
    if let Err(err) = finished {
        let logs = pods
            .logs("client", &Default::default())
            .await
            .unwrap_or_default();
        panic!(
            "{err}\n{logs}\ndns log on b:\n{}\nproxy log on b:\n{}",
            cluster.others[0].addon_log("dns"),
            cluster.others[0].proxy_log()
        );
    }
    let output = cluster.pods().logs("client", &Default::default()).await?;
    let context = || {
        format!(
            "{output}\ndns log on b:\n{}\nproxy log on b:\n{}",
            cluster.others[0].addon_log("dns"),
            cluster.others[0].proxy_log()
        )
    };
    assert!(output.contains("nameserver 10.96.0.10"), "{}", context());
    assert!(
        output.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{}",
        context()
    );
    assert!(output.contains("options ndots:5"), "{}", context());
    assert!(
        output.contains(&format!("Address: {web_ip}")),
        "web: {}",
        context()
    );
    for ip in &db_ips {
        assert!(
            output.contains(&format!("Address: {ip}")),
            "db {ip}: {}",
            context()
        );
    }
    assert!(
        output.contains("port = 80") || output.contains(" 80 web.default.svc.cluster.local"),
        "SRV: {}",
        context()
    );
    assert!(
        output.contains(&format!("Address: {EXAMPLE_ORG}")),
        "example.org: {}",
        context()
    );
    assert!(output.contains("NXDOMAIN"), "nothing: {}", context());

    // The Service and the slices the DNS servers registered.
    let system: Api<Service> = Api::namespaced(cluster.client.clone(), "kube-system");
    let kube_dns = system.get("kube-dns").await?;
    assert_eq!(
        kube_dns.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.10")
    );
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(cluster.client.clone(), "kube-system");
    let registered = wait_until(
        "both nodes' DNS endpoints",
        Duration::from_secs(10),
        || async {
            let list = slices
                .list(
                    &kube::api::ListParams::default().labels("kubernetes.io/service-name=kube-dns"),
                )
                .await
                .ok()?;
            (list.items.len() == 2).then_some(())
        },
    )
    .await;
    assert!(registered.is_ok());

    // A node's slice, deleted, is applied again by its DNS server.
    let name = format!("kube-dns-{node_b}");
    slices.delete(&name, &Default::default()).await?;
    let back = wait_until(
        "the deleted slice to be back",
        Duration::from_secs(20),
        || async { slices.get_opt(&name).await.ok()?.map(|_| ()) },
    )
    .await;
    assert!(back.is_ok(), "{}", cluster.others[0].addon_log("dns"));
    Ok(())
}
