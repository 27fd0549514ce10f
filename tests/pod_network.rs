//! The pod network across nodes: two kubelets, each in a network namespace of its own on a lab
//! bridge (nothing reaches the host's network), pod CIDRs from the controller manager's node
//! IPAM, and host-gateway routes between the nodes. A pod on one node reaches a pod on the
//! other without NAT (the server sees the client pod's own IP), a host port answers on the
//! node's address, and deleting the pods leaves no interface, address or rule behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use baton_network::{HOST_INTERFACE_PREFIX, HOST_PORTS_TABLE, RouteSocket};
use baton_test_harness::{Binary, KubeletNode, NodeCluster, pod_phase, wait_until};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, LogParams};
use serde_json::json;

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

/// A CGI script for busybox httpd that answers with the caller's address.
const WHO_AM_I: &str = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 0.0.0.0:8080 -h /www";

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

async fn node_pod_cidr(cluster: &NodeCluster, node: &KubeletNode) -> Result<Ipv4Net> {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let spec = nodes.get(&node.name).await?.spec.unwrap_or_default();
    Ok(spec.pod_cidr.unwrap_or_default().parse()?)
}

/// Starts pod `server` (who-am-i on port 8080, also on host port `host_port`) on the first
/// node; its IP once it runs.
async fn start_server(cluster: &NodeCluster, host_port: u16) -> Result<Ipv4Addr> {
    cluster
        .create_pod(
            "server",
            WHO_AM_I,
            json!({ "spec": { "containers": [{
                "name": "main",
                "image": cluster.image,
                "command": ["sh", "-c", WHO_AM_I],
                "ports": [{ "containerPort": 8080, "hostPort": host_port }],
            }] } }),
        )
        .await?;
    Ok(cluster
        .wait_for("the server to run with an IP", "server", |pod| {
            (pod_phase(pod) == Some("Running"))
                .then(|| pod_ip(pod))
                .flatten()
        })
        .await)
}

/// Runs pod `client` (`spec` merged into its spec) until it has fetched who-am-i from the
/// server at `server_ip`; its IP, and the address the server saw.
async fn fetch_from_client(
    cluster: &NodeCluster,
    server_ip: Ipv4Addr,
    spec: serde_json::Value,
) -> Result<(Ipv4Addr, String)> {
    let fetch = format!(
        "for i in $(seq 1 30); do wget -qO- http://{server_ip}:8080/cgi-bin/ip && exit 0; sleep 1; done; exit 1"
    );
    let mut extra = json!({ "spec": { "restartPolicy": "Never" } });
    baton_test_harness::merge_json(&mut extra, json!({ "spec": spec }));
    cluster.create_pod("client", &fetch, extra).await?;
    let client_ip = cluster
        .wait_for("the client to succeed", "client", |pod| {
            (pod_phase(pod) == Some("Succeeded"))
                .then(|| pod_ip(pod))
                .flatten()
        })
        .await;
    let seen = cluster.pods().logs("client", &LogParams::default()).await?;
    Ok((client_ip, seen.trim().to_owned()))
}

/// The host ends of pod veth pairs on `node` (the bridge's and the CNI bridge plugin's
/// alike).
fn host_veths(node: &KubeletNode) -> Result<Vec<String>> {
    node.netns.run(|| -> Result<Vec<String>> {
        Ok(RouteSocket::open()?
            .links()?
            .into_iter()
            .map(|link| link.name)
            .filter(|name| name.starts_with(HOST_INTERFACE_PREFIX))
            .collect())
    })?
}

/// Deletes pods `names` at once and waits until the API server has none left.
async fn delete_all(cluster: &NodeCluster, names: &[&str]) -> Result<()> {
    for name in names {
        cluster
            .pods()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    let pods = cluster.pods();
    wait_until("the pods to be gone", Duration::from_secs(60), || async {
        pods.list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await?;
    Ok(())
}

/// The host ends of pod veth pairs on `node`, and the addresses its allocator holds.
fn leftovers(node: &KubeletNode) -> Result<(Vec<String>, Vec<String>)> {
    let interfaces = host_veths(node)?;
    let mut addresses = Vec::new();
    for range in std::fs::read_dir(node.root_dir().join("network"))? {
        for entry in std::fs::read_dir(range?.path())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.parse::<Ipv4Addr>().is_ok() {
                addresses.push(name);
            }
        }
    }
    Ok((interfaces, addresses))
}

#[tokio::test]
async fn pods_on_two_nodes_reach_each_other_without_nat() -> Result<()> {
    let cluster = NodeCluster::start_nodes(&binary(), &["net-a", "net-b"], &[]).await?;
    let node_b = &cluster.others[0];
    // The server also asks for host port 18080.
    let server_ip = start_server(&cluster, 18080).await?;
    let cidr_a = node_pod_cidr(&cluster, &cluster.node).await?;
    let cidr_b = node_pod_cidr(&cluster, node_b).await?;
    assert_ne!(cidr_a, cidr_b);
    assert!(
        cidr_a.contains(&server_ip),
        "{server_ip} is not in node a's {cidr_a}"
    );

    let (client_ip, seen) =
        fetch_from_client(&cluster, server_ip, json!({ "nodeName": node_b.name })).await?;
    assert!(
        cidr_b.contains(&client_ip),
        "{client_ip} is not in node b's {cidr_b}"
    );
    assert_eq!(
        seen.trim(),
        client_ip.to_string(),
        "the server saw the client's own pod IP"
    );

    // The host port answers on node a's address, from the lab, and the server sees the
    // lab's address (no source NAT).
    let host_port = std::net::SocketAddr::from((cluster.node.ip, 18080));
    let seen = wait_until("the host port to answer", Duration::from_secs(20), || {
        std::future::ready(http_get(host_port, "/cgi-bin/ip").ok())
    })
    .await;
    assert_eq!(
        seen.as_deref().map(str::trim).ok(),
        Some(baton_test_harness::Lab::gateway().to_string().as_str()),
        "{seen:?}\n{}",
        cluster.node.log()
    );

    // The pod reaches its own host port through the node's address (hairpin).
    let kubectl = baton_test_harness::kubectl_binaries().remove(0);
    let out = cluster.server.kubectl(
        &kubectl,
        &[
            "exec",
            "server",
            "--",
            "timeout",
            "10",
            "wget",
            "-qO-",
            &format!("http://{host_port}/cgi-bin/ip"),
        ],
    );
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "hairpin to the pod's own host port: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Traffic that leaves the cluster (to the lab) leaves with the node's address.
    let outside = std::net::TcpListener::bind((baton_test_harness::Lab::gateway(), 0))?;
    let port = outside.local_addr()?.port();
    outside.set_nonblocking(true)?;
    cluster
        .create_pod(
            "egress",
            &format!(
                "echo hello | nc {} {port}",
                baton_test_harness::Lab::gateway()
            ),
            json!({ "spec": { "restartPolicy": "Never" } }),
        )
        .await?;
    let peer = wait_until("the pod to connect out", Duration::from_secs(60), || {
        std::future::ready(outside.accept().ok().map(|(_, peer)| peer))
    })
    .await?;
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(cluster.node.ip),
        "masqueraded to the node's address"
    );

    // The pods go; neither node keeps an interface or an address of theirs.
    delete_all(&cluster, &["server", "client", "egress"]).await?;
    for node in [&cluster.node, node_b] {
        let left = wait_until(
            "the node to release the pods' network",
            Duration::from_secs(10),
            || {
                std::future::ready(
                    leftovers(node)
                        .ok()
                        .filter(|(i, a)| i.is_empty() && a.is_empty()),
                )
            },
        )
        .await;
        assert!(left.is_ok(), "{} keeps {:?}", node.name, leftovers(node)?);
    }
    // The host port went with its pod: no table, and the port refuses.
    let tables = cluster.node.netns.run(|| {
        baton_nftables::NftSocket::open()
            .and_then(|mut nft| nft.chains(baton_nftables::Family::Ip, HOST_PORTS_TABLE))
    })??;
    assert!(tables.is_empty(), "host port chains left: {tables:?}");
    assert!(http_get(host_port, "/cgi-bin/ip").is_err());
    Ok(())
}

/// GET `path` from `address` over HTTP/1.0 (from the test's thread, in the lab): the body.
fn http_get(address: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    // busybox httpd passes a CGI script's own header lines, ended by a bare newline.
    answer
        .replace("\r\n", "\n")
        .split_once("\n\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {answer:?}")))
}

/// The reference plugins' configuration: a bridge with host-local addresses (kept under
/// `ipam_dir`) and portmap for host ports.
fn reference_plugins_config(ipam_dir: &std::path::Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "test-pods",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local", "dataDir": ipam_dir,
                    "ranges": [[{ "subnet": "10.88.0.0/24" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

/// The addresses host-local holds in `ipam_dir` (one file per address).
fn reserved_addresses(ipam_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(ipam_dir.join("test-pods"))
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.parse::<Ipv4Addr>().is_ok())
        .collect()
}

#[tokio::test]
async fn cni_mode_attaches_pods_through_the_debian_reference_plugins() -> Result<()> {
    const BIN_DIR: &str = "/usr/lib/cni";
    assert!(
        std::path::Path::new(BIN_DIR).join("bridge").is_file(),
        "the reference plugins are missing: scripts/setup installs containernetworking-plugins"
    );
    let conf = tempfile::tempdir()?;
    let ipam = tempfile::tempdir()?;
    std::fs::write(
        conf.path().join("10-test-pods.conflist"),
        serde_json::to_vec(&reference_plugins_config(ipam.path()))?,
    )?;
    let conf_dir = conf.path().display().to_string();
    let mut cluster = NodeCluster::start(
        &binary(),
        "cni-a",
        &[
            "--network-plugin=cni",
            "--cni-conf-dir",
            &conf_dir,
            "--cni-bin-dir",
            BIN_DIR,
        ],
    )
    .await?;
    let subnet: Ipv4Net = "10.88.0.0/24".parse()?;
    let server_ip = start_server(&cluster, 18081).await?;
    assert!(
        subnet.contains(&server_ip),
        "{server_ip} is not host-local's"
    );

    // Another pod reaches it, and the server sees the client's own address.
    let (client_ip, seen) = fetch_from_client(&cluster, server_ip, json!({})).await?;
    assert_eq!(seen.trim(), client_ip.to_string());

    // portmap got the host port: it answers on the node's address, from the lab.
    let host_port = std::net::SocketAddr::from((cluster.node.ip, 18081));
    let answer = wait_until("the host port to answer", Duration::from_secs(20), || {
        std::future::ready(http_get(host_port, "/cgi-bin/ip").ok())
    })
    .await;
    assert!(answer.is_ok(), "{answer:?}\n{}", cluster.node.log());

    // A restarted kubelet finds the server attached and keeps its address (it runs CHECK,
    // which Debian's portmap fails wrongly for IPv4-only pods, containernetworking/plugins#819,
    // so only a warning comes of it): no second ADD, no second address.
    let server_uid = cluster
        .pods()
        .get("server")
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let cache = cluster.node.root_dir().join("cni-cache");
    let server_entry = cache.join(format!("{server_uid}.json"));
    let written = std::fs::metadata(&server_entry)?.modified()?;
    cluster.node.kubelet().restart()?;
    cluster
        .create_pod("after-restart", "sleep 3600", json!({}))
        .await?;
    cluster
        .wait_for("a pod to start after the restart", "after-restart", |pod| {
            (pod_phase(pod) == Some("Running")).then_some(())
        })
        .await;
    let server = cluster.pods().get("server").await?;
    assert_eq!(pod_ip(&server), Some(server_ip));
    assert_eq!(
        std::fs::metadata(&server_entry)?.modified()?,
        written,
        "the server was attached again:\n{}",
        cluster.node.log()
    );
    assert_eq!(
        reserved_addresses(ipam.path()).len(),
        3,
        "server, client and the new pod: {:?}",
        reserved_addresses(ipam.path())
    );
    assert!(http_get(host_port, "/cgi-bin/ip").is_ok());

    // A configuration naming a plugin that is not there: new pods say so in an event, the
    // server keeps answering, and the pod starts once the configuration is fixed.
    let broken = conf.path().join("00-broken.conflist");
    std::fs::write(
        &broken,
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "broken",
            "plugins": [{ "type": "no-such-plugin" }],
        }))?,
    )?;
    // The configuration is read every 5 s.
    let node = &cluster.node;
    let loaded = wait_until("the kubelet to load it", Duration::from_secs(20), || {
        std::future::ready(node.log().contains("network=broken").then_some(()))
    })
    .await;
    assert!(loaded.is_ok(), "{}", node.log());
    cluster
        .create_pod("waiting", "sleep 3600", json!({}))
        .await?;
    let notes = wait_until(
        "the sandbox failure event",
        Duration::from_secs(30),
        || async {
            let notes = cluster
                .event_notes("waiting", "FailedCreatePodSandBox")
                .await;
            (!notes.is_empty()).then_some(notes)
        },
    )
    .await?;
    assert!(
        notes[0].contains(&format!(
            "plugin type=\"no-such-plugin\" name=\"broken\" failed (add): failed to find plugin \"no-such-plugin\" in path [{BIN_DIR}]"
        )),
        "{notes:?}"
    );
    assert!(http_get(host_port, "/cgi-bin/ip").is_ok());
    std::fs::remove_file(&broken)?;
    cluster
        .wait_for("the pod to start on the fixed network", "waiting", |pod| {
            (pod_phase(pod) == Some("Running")).then_some(())
        })
        .await;

    // Everything goes: no address is left reserved, no veth on the node, nothing cached,
    // and no rule of bridge's or portmap's for any of the pods.
    assert_eq!(reserved_addresses(ipam.path()).len(), 4);
    let mut uids = Vec::new();
    for name in ["server", "client", "after-restart", "waiting"] {
        uids.push(
            cluster
                .pods()
                .get(name)
                .await?
                .metadata
                .uid
                .unwrap_or_default(),
        );
    }
    delete_all(&cluster, &["server", "client", "after-restart", "waiting"]).await?;
    let clean = wait_until(
        "the plugins to release the pods",
        Duration::from_secs(20),
        || {
            let cached = std::fs::read_dir(&cache).map_or(0, |d| d.count());
            std::future::ready(
                (cached == 0 && reserved_addresses(ipam.path()).is_empty()).then_some(()),
            )
        },
    )
    .await;
    assert!(
        clean.is_ok(),
        "left: {:?} reserved, cache {:?}\n{}",
        reserved_addresses(ipam.path()),
        std::fs::read_dir(&cache).map(|d| d.count()),
        cluster.node.log()
    );
    let veths = host_veths(&cluster.node)?;
    assert!(veths.is_empty(), "veths left: {veths:?}");
    let rules = cluster
        .node
        .netns
        .run(|| std::process::Command::new("iptables-save").output())??;
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("CNI-HOSTPORT-DNAT"),
        "portmap's rules were never seen:\n{rules}"
    );
    assert!(
        !rules.contains("18081")
            && !rules.contains("CNI-DN-")
            && uids.iter().all(|uid| !rules.contains(uid.as_str())),
        "rules left for the pods:\n{rules}"
    );
    assert!(http_get(host_port, "/cgi-bin/ip").is_err());
    Ok(())
}
