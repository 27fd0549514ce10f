//! `baton proxy` in its nftables, iptables and userspace modes on two kubelet nodes, each in a
//! network namespace of its own on a lab bridge (the test's thread is in the lab, nothing
//! reaches the host's network): a ClusterIP Service with a named target port is reached from
//! a pod and spreads over both endpoints, a pod reaches itself through its Service (hairpin),
//! the NodePort answers from the lab, endpoints follow readiness, a Service without endpoints
//! refuses connections at once, and deleting a Service removes its rules.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use baton_network::{NetNs, RouteSocket};
use baton_nftables::{Family, NftSocket};
use baton_test_harness::{Binary, NodeCluster, kubectl_binaries, pod_phase, wait_until};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// busybox httpd answering its hostname on / and, while /www/ready exists, on /ready.
const WEB: &str = "mkdir -p /www && hostname > /www/index.html && touch /www/ready && exec httpd -f -p 0.0.0.0:8080 -h /www";

fn web_pod(node: &str, image: &str) -> serde_json::Value {
    json!({
        "metadata": { "labels": { "app": "web" } },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "main",
                "image": image,
                "command": ["sh", "-c", WEB],
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "readinessProbe": {
                    "httpGet": { "path": "/ready", "port": "http" },
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }],
        },
    })
}

/// GET / through `address` (from the test's thread, in the lab), the body trimmed.
fn fetch(address: SocketAddr) -> std::io::Result<String> {
    fetch_path(address, "/")
}

/// GET `path` from `address` over HTTP/1.0, the body trimmed.
fn fetch_path(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// The endpoints programmed for Service `service` in `netns`, in the proxy's `mode`, and
/// whether the proxy's rules are there at all.
fn programmed_endpoints(netns: &NetNs, mode: &str, service: &str) -> (usize, bool) {
    let prefix = format!("default/{service}");
    if mode == "userspace" {
        // The proxy's own report: its /metrics in the node's namespace.
        let metrics = netns
            .run(|| {
                fetch_path(SocketAddr::from(([127, 0, 0, 1], 10249)), "/metrics")
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let endpoints = metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "baton_proxy_userspace_service_endpoints{{service=\"{prefix}"
                ))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum();
        return (endpoints, metrics.contains("kubeproxy_sync"));
    }
    if mode == "nftables" {
        // The endpoint-map elements under the ids of the Service's cluster-IP chains; with
        // session affinity, its endpoint chains instead.
        netns
            .run(|| {
                let Ok(mut nft) = NftSocket::open() else {
                    return (0, false);
                };
                let chains = nft.chains(Family::Ip, "baton-proxy").unwrap_or_default();
                let ids: Vec<[u8; 8]> = chains
                    .iter()
                    .filter(|c| c.starts_with(&format!("svc-{prefix}/")) && !c.contains("__"))
                    .map(|c| baton_proxy::nftables_rules::chain_id(c))
                    .collect();
                let in_map = ids
                    .iter()
                    .map(|id| {
                        let map = baton_proxy::nftables_rules::endpoint_map_name(id[0]);
                        nft.set_elements(Family::Ip, "baton-proxy", &map)
                            .unwrap_or_default()
                            .iter()
                            .filter(|e| e.key.starts_with(id))
                            .count()
                    })
                    .sum::<usize>();
                let in_chains = chains
                    .iter()
                    .filter(|c| c.starts_with(&format!("svc-{prefix}/")) && c.contains("__"))
                    .count();
                (in_map + in_chains, !chains.is_empty())
            })
            .unwrap_or_default()
    } else {
        let saved = netns
            .run(|| {
                std::process::Command::new("iptables-save")
                    .args(["-t", "nat"])
                    .output()
            })
            .ok()
            .and_then(Result::ok)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let endpoints = saved
            .lines()
            .filter(|l| {
                l.starts_with("-A KUBE-SEP-")
                    && (l.contains(&format!("--comment \"{prefix}:"))
                        || l.contains(&format!("--comment \"{prefix}\"")))
                    && l.contains("-j DNAT")
            })
            .count();
        (endpoints, saved.contains(":KUBE-SERVICES"))
    }
}

#[tokio::test]
async fn services_reach_their_endpoints_through_nftables() -> Result<()> {
    services_reach_their_endpoints("nftables").await
}

#[tokio::test]
async fn services_reach_their_endpoints_through_iptables() -> Result<()> {
    services_reach_their_endpoints("iptables").await
}

#[tokio::test]
async fn services_reach_their_endpoints_through_userspace() -> Result<()> {
    services_reach_their_endpoints("userspace").await
}

async fn services_reach_their_endpoints(mode: &str) -> Result<()> {
    let mode_flag = format!("--proxy-mode={mode}");
    let names = [format!("{mode}-a"), format!("{mode}-b")];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut cluster = NodeCluster::start_nodes(&binary(), &names, &[]).await?;
    cluster.node.start_proxy(&cluster.server, &[&mode_flag])?;
    cluster.others[0].start_proxy(&cluster.server, &[&mode_flag])?;
    let (node_a, node_b) = (cluster.node.name.clone(), cluster.others[0].name.clone());
    cluster
        .create_pod("web-0", WEB, web_pod(&node_a, &cluster.image))
        .await?;
    cluster
        .create_pod("web-1", WEB, web_pod(&node_b, &cluster.image))
        .await?;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "type": "NodePort",
            "selector": { "app": "web" },
            "ports": [{ "name": "web", "port": 80, "targetPort": "http", "nodePort": 30080 }],
        },
    }))?;
    let service = services.create(&PostParams::default(), &service).await?;
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    for name in ["web-0", "web-1"] {
        cluster
            .wait_for("the web pod to be ready", name, |pod| {
                pod.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            })
            .await;
    }

    // Both proxies have both endpoints (the proxy applies changes at most once a second).
    for node in [&cluster.node, &cluster.others[0]] {
        let programmed = wait_until(
            "both endpoints in the rules",
            Duration::from_secs(20),
            || {
                let (endpoints, _) = programmed_endpoints(&node.netns, mode, "web");
                std::future::ready((endpoints == 2).then_some(()))
            },
        )
        .await;
        assert!(
            programmed.is_ok(),
            "{}: {:?}\n{}",
            node.name,
            programmed_endpoints(&node.netns, mode, "web"),
            node.proxy_log()
        );
    }

    // From a pod on node a, the cluster IP spreads over both endpoints.
    let spread = format!(
        "for i in $(seq 1 40); do timeout 2 wget -qO- http://{cluster_ip}:80/ || echo failed; done"
    );
    cluster
        .create_pod(
            "client",
            &spread,
            json!({ "spec": { "restartPolicy": "Never" } }),
        )
        .await?;
    cluster
        .wait_for("the client to finish", "client", |pod| {
            (pod_phase(pod) == Some("Succeeded")).then_some(())
        })
        .await;
    let network_log = |node: &baton_test_harness::KubeletNode| -> String {
        node.log()
            .lines()
            .filter(|l| l.contains("route") || l.contains("pod network"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let answers = cluster.stdout_lines(&cluster.pods().get("client").await?);
    assert_eq!(answers.len(), 40, "{answers:?}");
    assert!(
        answers.iter().all(|a| a == "web-0" || a == "web-1"),
        "{answers:?}\n{}\n{}\n{}",
        cluster.node.proxy_log(),
        network_log(&cluster.node),
        network_log(&cluster.others[0])
    );
    assert!(
        answers.iter().any(|a| a == "web-0") && answers.iter().any(|a| a == "web-1"),
        "{answers:?}\n{}\n{}",
        network_log(&cluster.node),
        network_log(&cluster.others[0])
    );

    // With sessionAffinity ClientIP, one client keeps its endpoint.
    let sticky: Service = serde_json::from_value(json!({
        "metadata": { "name": "sticky" },
        "spec": {
            "selector": { "app": "web" },
            "sessionAffinity": "ClientIP",
            "ports": [{ "port": 81, "targetPort": "http" }],
        },
    }))?;
    let sticky_ip = services
        .create(&PostParams::default(), &sticky)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    let programmed = wait_until(
        "the sticky Service's endpoints",
        Duration::from_secs(20),
        || {
            let (endpoints, _) = programmed_endpoints(&cluster.node.netns, mode, "sticky");
            std::future::ready((endpoints == 2).then_some(()))
        },
    )
    .await;
    assert!(programmed.is_ok(), "{}", cluster.node.proxy_log());
    cluster
        .create_pod(
            "sticky-client",
            &format!("for i in $(seq 1 20); do timeout 2 wget -qO- http://{sticky_ip}:81/ || echo failed; done"),
            json!({ "spec": { "restartPolicy": "Never" } }),
        )
        .await?;
    cluster
        .wait_for("the sticky client to finish", "sticky-client", |pod| {
            (pod_phase(pod) == Some("Succeeded")).then_some(())
        })
        .await;
    let answers = cluster.stdout_lines(&cluster.pods().get("sticky-client").await?);
    assert_eq!(answers.len(), 20, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a == &answers[0] && a.starts_with("web-")),
        "{answers:?}"
    );

    // A pod reaches itself through its Service (hairpin).
    let kubectl = &kubectl_binaries()[0];
    let itself = format!(
        "for i in $(seq 1 40); do timeout 2 wget -qO- http://{cluster_ip}:80/; done | grep -c web-0"
    );
    let output = cluster
        .server
        .kubectl(kubectl, &["exec", "web-0", "--", "sh", "-c", &itself]);
    let count: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        count > 0,
        "web-0 never reached itself: {output:?}\n{}",
        cluster.node.proxy_log()
    );

    // The node port answers on both nodes' addresses, from the lab.
    for node in [&cluster.node, &cluster.others[0]] {
        let address = SocketAddr::from((node.ip, 30080));
        let answer = wait_until("the node port to answer", Duration::from_secs(20), || {
            std::future::ready(fetch(address).ok().filter(|a| a.starts_with("web-")))
        })
        .await;
        assert!(
            answer.is_ok(),
            "{address}: {:?}\n{}",
            fetch(address),
            node.proxy_log()
        );
    }

    // web-1 turns unready: its endpoint leaves the rules and every answer is web-0's.
    let output = cluster
        .server
        .kubectl(kubectl, &["exec", "web-1", "--", "rm", "/www/ready"]);
    assert!(output.status.success(), "{output:?}");
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");
    wait_until(
        "web-1's endpoint to be unready",
        Duration::from_secs(30),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .any(|e| {
                    e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some("web-1")
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)
                })
                .then_some(())
        },
    )
    .await?;
    let node_port = SocketAddr::from((cluster.node.ip, 30080));
    wait_until("only web-0 to answer", Duration::from_secs(10), || {
        std::future::ready(
            (0..10)
                .all(|_| fetch(node_port).is_ok_and(|a| a == "web-0"))
                .then_some(()),
        )
    })
    .await?;

    // A Service without endpoints refuses at once (no timeout).
    let empty: Service = serde_json::from_value(json!({
        "metadata": { "name": "empty" },
        "spec": {
            "type": "NodePort",
            "selector": { "app": "nothing" },
            "ports": [{ "port": 80, "nodePort": 30081 }],
        },
    }))?;
    services.create(&PostParams::default(), &empty).await?;
    let empty_port = SocketAddr::from((cluster.node.ip, 30081));
    let refused = wait_until(
        "the empty Service to refuse",
        Duration::from_secs(10),
        || {
            std::future::ready(
                match TcpStream::connect_timeout(&empty_port, Duration::from_secs(1)) {
                    Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                    _ => None,
                },
            )
        },
    )
    .await;
    assert!(
        refused.is_ok(),
        "{:?}",
        TcpStream::connect_timeout(&empty_port, Duration::from_secs(1))
    );

    // Deleting the Services removes their chains on every node.
    for name in ["web", "empty", "sticky"] {
        services.delete(name, &DeleteParams::default()).await?;
    }
    for node in [&cluster.node, &cluster.others[0]] {
        let gone = wait_until(
            "the Services' chains to go",
            Duration::from_secs(10),
            || {
                let (web, present) = programmed_endpoints(&node.netns, mode, "web");
                let (sticky, _) = programmed_endpoints(&node.netns, mode, "sticky");
                std::future::ready((present && web == 0 && sticky == 0).then_some(()))
            },
        )
        .await;
        assert!(
            gone.is_ok(),
            "{} keeps {:?}",
            node.name,
            programmed_endpoints(&node.netns, mode, "web")
        );
        if mode == "userspace" {
            // The deleted Services' cluster IPs left the loopback interface.
            let on_lo: Vec<String> = node
                .netns
                .run(|| RouteSocket::open()?.labeled_addresses("lo:kube-proxy"))
                .expect("the node's namespace")
                .expect("the loopback addresses")
                .into_iter()
                .map(|(_, net)| net.addr().to_string())
                .collect();
            assert!(
                !on_lo.contains(&cluster_ip) && !on_lo.contains(&sticky_ip),
                "{} keeps {on_lo:?}",
                node.name
            );
        }
    }
    Ok(())
}
