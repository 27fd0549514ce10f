//! A lab: a network namespace of the test's own, with a bridge that node namespaces join by
//! veth pairs, so that kubelets run as separate machines on one shared network and no test
//! traffic touches the host's. The test's thread moves into the lab (a thread's namespace is
//! its own), so the servers it starts (etcd, the API server, a registry), its API clients and
//! the kubectl it runs are all inside; dropping the lab moves the thread back. Use it from
//! current-thread tests (`#[tokio::test]`), whose every task runs on that thread.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use baton_network::{NetNs, Route, RouteSocket};
use ipnet::Ipv4Net;

/// The lab network: 10.250.0.0/24, the bridge at .1, nodes from .10 (inside the lab only).
const LAB_NETWORK: [u8; 3] = [10, 250, 0];
/// The bridge's name inside the lab.
const LAB_BRIDGE: &str = "lab";
/// The MTU of the lab's links.
const LAB_MTU: u32 = 1500;

/// A network namespace with a bridge, entered by the calling thread.
#[derive(Debug)]
pub struct Lab {
    namespace: NetNs,
    home: NetNs,
    bridge_index: u32,
    nodes: u8,
}

/// A node's network namespace on the lab's bridge.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// The node's namespace.
    pub namespace: Arc<NetNs>,
    /// Its address on the lab network.
    pub ip: Ipv4Addr,
}

impl Lab {
    /// Makes the lab and moves the calling thread into it.
    pub fn enter() -> Result<Self> {
        let home = NetNs::current()?;
        let namespace = NetNs::create()?;
        let bridge_index = namespace.run(|| -> Result<u32> {
            let mut socket = RouteSocket::open()?;
            socket.create_bridge(LAB_BRIDGE)?;
            let bridge = socket
                .link(LAB_BRIDGE)?
                .context("the lab's bridge vanished")?;
            socket.add_address(bridge.index, Ipv4Net::new(Self::gateway(), 24)?)?;
            socket.set_link(bridge.index, None, Some(LAB_MTU))?;
            Ok(bridge.index)
        })??;
        namespace.enter()?;
        Ok(Self {
            namespace,
            home,
            bridge_index,
            nodes: 0,
        })
    }

    /// The lab bridge's address, where the lab's servers listen.
    pub fn gateway() -> Ipv4Addr {
        let [a, b, c] = LAB_NETWORK;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Makes a node namespace joined to the bridge (as `eth0`, the next free address, a
    /// default route through the bridge).
    pub fn add_node(&mut self) -> Result<LabNode> {
        let [a, b, c] = LAB_NETWORK;
        let ip = Ipv4Addr::new(a, b, c, 10 + self.nodes);
        let port = format!("node{}", self.nodes);
        self.nodes += 1;
        let node = NetNs::create()?;
        let bridge_index = self.bridge_index;
        self.namespace.run(|| -> Result<()> {
            let mut socket = RouteSocket::open()?;
            socket.create_veth(&port, "eth0", &node, LAB_MTU)?;
            let link = socket.link(&port)?.context("the lab port vanished")?;
            socket.set_link(link.index, Some(bridge_index), None)?;
            Ok(())
        })??;
        node.run(|| -> Result<()> {
            let mut socket = RouteSocket::open()?;
            let link = socket.link("eth0")?.context("the node's eth0 vanished")?;
            socket.add_address(link.index, Ipv4Net::new(ip, 24)?)?;
            socket.set_link(link.index, None, None)?;
            socket.add_route(&Route {
                destination: Ipv4Net::default(),
                gateway: Some(Self::gateway()),
                interface: Some(link.index),
            })?;
            Ok(())
        })??;
        Ok(LabNode {
            namespace: Arc::new(node),
            ip,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(err) = self.home.enter() {
            // The thread cannot go home; the test process must not go on in the lab.
            panic!("leaving the lab: {err}");
        }
    }
}
