//! Keeps the node's network in line with the cluster's Nodes: sets the pod network up once this
//! node has its pod CIDR (spec.podCIDR, else --pod-cidr), and keeps a route to every other
//! node's pod CIDR through that node's InternalIP (host-gateway routing on a shared network).
//! Woken by Node events; a failed step is retried after a short delay.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use baton_client::Informer;
use baton_network::Route;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::pod_network::PodNetwork;

/// How long a failed setup or route change waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Runs forever.
pub async fn run(
    client: Client,
    node_name: String,
    network: Arc<PodNetwork>,
    fallback_cidr: Option<Ipv4Net>,
) {
    let informer = Arc::new(Informer::new(
        Api::<Node>::all(client),
        watcher::Config::default(),
    ));
    let (nudge, mut nudged) = watch::channel(());
    informer.on_event(move |_| {
        nudge.send_replace(());
    });
    let store = informer.store();
    let runner = informer.clone();
    tokio::spawn(async move { runner.run().await });
    let mut applied: Option<BTreeSet<Route>> = None;
    let mut masqueraded: Option<BTreeSet<Ipv4Net>> = None;
    loop {
        let nodes = store.state();
        let own_cidr = nodes
            .iter()
            .find(|node| node.name_any() == node_name)
            .and_then(|node| pod_cidr(node))
            .or(fallback_cidr);
        let mut failed = false;
        if let Some(cidr) = own_cidr
            && let Err(err) = network.set_up(cidr).await
        {
            tracing::warn!(%err, "setting up the pod network");
            failed = network.pod_cidr().is_none();
        }
        if network.is_ready() {
            let wanted: BTreeSet<Route> = nodes
                .iter()
                .filter(|node| node.name_any() != node_name)
                .filter_map(|node| route_to(node))
                .collect();
            if applied.as_ref() != Some(&wanted) {
                failed |= !apply_routes(&wanted).await;
                applied = Some(wanted);
            }
            let cluster: BTreeSet<Ipv4Net> =
                nodes.iter().filter_map(|node| pod_cidr(node)).collect();
            if masqueraded.as_ref() != Some(&cluster)
                && let Some(own) = network.pod_cidr()
            {
                failed |= !apply_masquerade(own, &cluster).await;
                masqueraded = Some(cluster);
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(RETRY_AFTER).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = nudged.changed() => if changed.is_err() { return },
            () = retry => {
                applied = None;
                masqueraded = None;
            }
        }
    }
}

/// Makes the routes `wanted`; false when one could not be made.
async fn apply_routes(wanted: &BTreeSet<Route>) -> bool {
    let wanted: Vec<Route> = wanted.iter().copied().collect();
    let result =
        tokio::task::spawn_blocking(move || baton_network::sync_node_routes(&wanted)).await;
    match result {
        Ok(Ok(changes)) => {
            for route in &changes.added {
                tracing::info!(destination = %route.destination, gateway = ?route.gateway, "added a route to a node's pods");
            }
            for route in &changes.removed {
                tracing::info!(destination = %route.destination, "removed a route to a node's pods");
            }
            for (route, err) in &changes.failed {
                tracing::warn!(destination = %route.destination, err = %baton_images::error_chain(err), "adding a route to a node's pods");
            }
            changes.failed.is_empty()
        }
        Ok(Err(err)) => {
            tracing::warn!(err = %baton_images::error_chain(&err), "syncing routes to other nodes' pods");
            false
        }
        Err(err) => {
            tracing::warn!(%err, "syncing routes to other nodes' pods");
            false
        }
    }
}

/// Masquerades this node's pod traffic that leaves every pod CIDR of `cluster`; false when
/// the rules could not be made.
async fn apply_masquerade(own: Ipv4Net, cluster: &BTreeSet<Ipv4Net>) -> bool {
    let cluster: Vec<Ipv4Net> = cluster.iter().copied().collect();
    let result =
        tokio::task::spawn_blocking(move || baton_network::sync_masquerade(own, &cluster)).await;
    match result {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(err = %baton_images::error_chain(&err), "masquerading pod traffic that leaves the cluster");
            false
        }
        Err(err) => {
            tracing::warn!(%err, "masquerading pod traffic that leaves the cluster");
            false
        }
    }
}

/// A node's IPv4 pod CIDR.
pub(crate) fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|cidr| cidr.parse::<Ipv4Net>().ok())
}

/// The route to `node`'s pods: its pod CIDR through its InternalIP.
fn route_to(node: &Node) -> Option<Route> {
    let destination = pod_cidr(node)?;
    let gateway = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| match address.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })?;
    usable_gateway(gateway).then_some(Route {
        destination,
        gateway: Some(gateway),
        interface: None,
    })
}

/// Loopback or unspecified addresses cannot carry another node's pods.
fn usable_gateway(ip: Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidr: Option<&str>, internal_ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "n" },
            "spec": { "podCIDR": cidr, "podCIDRs": cidr.map(|c| vec![c]) },
            "status": { "addresses": [
                { "type": "Hostname", "address": "n" },
                { "type": "InternalIP", "address": internal_ip },
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_with_a_pod_cidr_and_an_internal_ip_is_routed_through_it() {
        let route = route_to(&node(Some("10.244.2.0/24"), "10.250.0.12")).unwrap();
        assert_eq!(route.destination.to_string(), "10.244.2.0/24");
        assert_eq!(route.gateway, Some(Ipv4Addr::new(10, 250, 0, 12)));
    }

    #[test]
    fn nodes_without_a_cidr_or_a_usable_address_get_no_route() {
        assert_eq!(route_to(&node(None, "10.250.0.12")), None);
        assert_eq!(route_to(&node(Some("10.244.2.0/24"), "127.0.0.1")), None);
    }
}
