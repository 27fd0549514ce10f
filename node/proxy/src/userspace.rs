//! The `userspace` mode: no packet rules at all. Each Service's cluster IP is put on the
//! loopback interface (labeled `lo:kube-proxy`), so the node takes traffic to it as its own,
//! and a tokio proxy listens on every cluster IP, external IP and node port of each service
//! port that has endpoints, copying each TCP connection (or UDP flow) to an endpoint chosen
//! round robin, or the client's last one under `sessionAffinity: ClientIP`. A service port
//! without endpoints has no listener, so connections to it are refused at once. Slow and
//! simple, as upstream describes the mode: it works where netfilter does not, and endpoints
//! see the node's address as the source, not the client's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use baton_network::{NetlinkError, RouteSocket};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::ipvs_rules::host_net;
use crate::nftables_rules::RuleSettings;
use crate::service_model::{
    Endpoint, Protocol, ProxyState, ServicePortInfo, ServicePortKey, categorize,
};

/// The label of the cluster IPs this mode puts on the loopback interface.
pub const ADDRESS_LABEL: &str = "lo:kube-proxy";
/// How long a connection to an endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP flow lives without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// The userspace mode could not be programmed.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    /// The loopback interface's addresses could not be read or changed.
    #[error("cluster IP addresses on the loopback interface")]
    Addresses(#[from] NetlinkError),
    /// The node has no loopback interface.
    #[error("no loopback interface `lo`")]
    NoLoopback,
    /// A listener could not be opened.
    #[error("listening on {protocol} {address} for {service}")]
    Listen {
        /// The service port.
        service: String,
        /// TCP or UDP.
        protocol: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Each client's endpoint and when it last used it.
type ClientEndpoints = Mutex<HashMap<Ipv4Addr, (SocketAddrV4, Instant)>>;

/// Endpoints of one listener, and how the next one is chosen.
#[derive(Debug)]
struct Backends {
    list: RwLock<Vec<SocketAddrV4>>,
    next: AtomicUsize,
    /// `sessionAffinity: ClientIP`: the timeout and each client's endpoint.
    affinity: Option<(Duration, ClientEndpoints)>,
}

impl Backends {
    fn new(affinity_seconds: Option<u32>) -> Self {
        Self {
            list: RwLock::default(),
            next: AtomicUsize::new(0),
            affinity: affinity_seconds
                .map(|s| (Duration::from_secs(u64::from(s)), Mutex::default())),
        }
    }

    fn set(&self, endpoints: Vec<SocketAddrV4>) {
        *self.list.write().unwrap_or_else(PoisonError::into_inner) = endpoints;
    }

    fn len(&self) -> usize {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The endpoint for a connection from `client`.
    fn pick(&self, client: Ipv4Addr) -> Option<SocketAddrV4> {
        let list = self.list.read().unwrap_or_else(PoisonError::into_inner);
        if list.is_empty() {
            return None;
        }
        if let Some((timeout, clients)) = &self.affinity {
            let mut clients = clients.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if let Some((endpoint, last)) = clients.get_mut(&client)
                && now.duration_since(*last) < *timeout
                && list.contains(endpoint)
            {
                *last = now;
                return Some(*endpoint);
            }
            let endpoint = list[self.next.fetch_add(1, Ordering::Relaxed) % list.len()];
            clients.insert(client, (endpoint, now));
            return Some(endpoint);
        }
        Some(list[self.next.fetch_add(1, Ordering::Relaxed) % list.len()])
    }

    /// Forgets `client`'s endpoint (it did not answer).
    fn forget(&self, client: Ipv4Addr) {
        if let Some((_, clients)) = &self.affinity {
            clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&client);
        }
    }
}

/// What a service port's listeners are opened from: a change of any means new listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenerShape {
    protocol: Protocol,
    cluster: Vec<SocketAddr>,
    external: Vec<SocketAddr>,
    affinity_seconds: Option<u32>,
}

/// One service port's proxy.
#[derive(Debug)]
struct PortProxy {
    shape: ListenerShape,
    /// Endpoints for traffic to the cluster IP, and to node ports and external IPs.
    cluster: Arc<Backends>,
    external: Arc<Backends>,
    cluster_tasks: Vec<JoinHandle<()>>,
    external_tasks: Vec<JoinHandle<()>>,
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        for task in self.cluster_tasks.iter().chain(&self.external_tasks) {
            task.abort();
        }
    }
}

/// The userspace mode's state between syncs.
#[derive(Debug)]
pub struct UserspaceProxier {
    runtime: Handle,
    ports: BTreeMap<ServicePortKey, PortProxy>,
}

impl UserspaceProxier {
    /// A proxier whose listeners run on the current tokio runtime.
    pub fn new() -> Self {
        Self {
            runtime: Handle::current(),
            ports: BTreeMap::new(),
        }
    }

    /// Brings listeners and loopback addresses to `state`; returns the number of listeners.
    pub fn sync(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
    ) -> Result<usize, UserspaceError> {
        let wanted_ips: BTreeSet<Ipv4Addr> = state
            .services
            .values()
            .filter(|(info, _)| info.protocol != Protocol::Sctp)
            .map(|(info, _)| info.cluster_ip)
            .collect();
        // Addresses first: a listener on a cluster IP needs the IP to be local.
        sync_addresses(&wanted_ips)?;
        self.ports.retain(|key, _| state.services.contains_key(key));
        let mut first_error = None;
        for (key, (info, endpoints)) in &state.services {
            if info.protocol == Protocol::Sctp {
                tracing::warn!(service = %key, "the userspace mode does not proxy SCTP");
                continue;
            }
            if let Err(err) = self.sync_port(key, info, endpoints, &settings.node_name) {
                tracing::warn!(%err, "userspace proxy");
                self.ports.remove(key);
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(self
                .ports
                .values()
                .map(|p| p.cluster_tasks.len() + p.external_tasks.len())
                .sum()),
        }
    }

    fn sync_port(
        &mut self,
        key: &ServicePortKey,
        info: &ServicePortInfo,
        endpoints: &[Endpoint],
        node_name: &str,
    ) -> Result<(), UserspaceError> {
        let shape = ListenerShape {
            protocol: info.protocol,
            cluster: vec![SocketAddr::from((info.cluster_ip, info.port))],
            external: info
                .external_ips
                .iter()
                .map(|ip| SocketAddr::from((*ip, info.port)))
                .chain(
                    info.node_port
                        .map(|port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
                )
                .collect(),
            affinity_seconds: info.session_affinity_seconds,
        };
        if self.ports.get(key).is_some_and(|p| p.shape != shape) {
            self.ports.remove(key);
        }
        let port = self.ports.entry(key.clone()).or_insert_with(|| PortProxy {
            shape: shape.clone(),
            cluster: Arc::new(Backends::new(info.session_affinity_seconds)),
            external: Arc::new(Backends::new(info.session_affinity_seconds)),
            cluster_tasks: Vec::new(),
            external_tasks: Vec::new(),
        });
        let categorized = categorize(info, endpoints, node_name);
        let addresses = |eps: &[Endpoint]| -> Vec<SocketAddrV4> {
            eps.iter()
                .map(|e| SocketAddrV4::new(e.ip, e.port))
                .collect()
        };
        port.cluster.set(addresses(categorized.internal(info)));
        port.external.set(addresses(categorized.external(info)));
        let service = key.to_string();
        for (backends, listeners, tasks) in [
            (&port.cluster, &shape.cluster, &mut port.cluster_tasks),
            (&port.external, &shape.external, &mut port.external_tasks),
        ] {
            if backends.len() == 0 {
                // Refused at once: nothing listens.
                for task in tasks.drain(..) {
                    task.abort();
                }
            } else if tasks.is_empty() {
                for address in listeners {
                    tasks.push(listen(
                        &self.runtime,
                        &service,
                        info.protocol,
                        *address,
                        backends.clone(),
                    )?);
                }
            }
        }
        Ok(())
    }

    /// Service ports and the endpoints their cluster IP leads to, for `/metrics`.
    pub fn backends(&self) -> Vec<(String, usize)> {
        self.ports
            .iter()
            .map(|(key, port)| (key.to_string(), port.cluster.len()))
            .collect()
    }

    /// Stops every listener and removes this mode's loopback addresses.
    pub fn clean_up(&mut self) -> Result<(), UserspaceError> {
        self.ports.clear();
        clean_up_addresses()
    }
}

impl Default for UserspaceProxier {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes the cluster IPs this mode put on the loopback interface (also those a
/// previous run left).
pub fn clean_up_addresses() -> Result<(), UserspaceError> {
    sync_addresses(&BTreeSet::new())
}

fn sync_addresses(wanted: &BTreeSet<Ipv4Addr>) -> Result<(), UserspaceError> {
    let mut socket = RouteSocket::open()?;
    let lo = socket.link("lo")?.ok_or(UserspaceError::NoLoopback)?.index;
    let present: BTreeSet<Ipv4Addr> = socket
        .labeled_addresses(ADDRESS_LABEL)?
        .into_iter()
        .map(|(_, net)| net.addr())
        .collect();
    for ip in present.difference(wanted) {
        socket.delete_address(lo, host_net(*ip))?;
    }
    for ip in wanted.difference(&present) {
        socket.add_labeled_address(lo, host_net(*ip), ADDRESS_LABEL)?;
    }
    Ok(())
}

/// Opens a listener on `address` and serves it on `runtime`.
fn listen(
    runtime: &Handle,
    service: &str,
    protocol: Protocol,
    address: SocketAddr,
    backends: Arc<Backends>,
) -> Result<JoinHandle<()>, UserspaceError> {
    let failed = |protocol, source| UserspaceError::Listen {
        service: service.to_owned(),
        protocol,
        address,
        source,
    };
    let _entered = runtime.enter();
    match protocol {
        Protocol::Udp => {
            let socket = retry_in_use(|| std::net::UdpSocket::bind(address))
                .map_err(|e| failed("UDP", e))?;
            socket.set_nonblocking(true).map_err(|e| failed("UDP", e))?;
            let socket = UdpSocket::from_std(socket).map_err(|e| failed("UDP", e))?;
            Ok(runtime.spawn(serve_udp(Arc::new(socket), backends)))
        }
        _ => {
            let listener = retry_in_use(|| std::net::TcpListener::bind(address))
                .map_err(|e| failed("TCP", e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| failed("TCP", e))?;
            let listener = TcpListener::from_std(listener).map_err(|e| failed("TCP", e))?;
            Ok(runtime.spawn(serve_tcp(listener, backends)))
        }
    }
}

/// Binds, trying again for up to a second while the address is in use: a listener just
/// stopped (its task aborted) closes its socket a moment later.
fn retry_in_use<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match bind() {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn client_ip(peer: SocketAddr) -> Ipv4Addr {
    match peer.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

async fn serve_tcp(listener: TcpListener, backends: Arc<Backends>) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(%err, "userspace proxy accept");
                continue;
            }
        };
        let backends = backends.clone();
        tokio::spawn(async move {
            let ip = client_ip(peer);
            // Up to three endpoints, in case one does not answer.
            for _ in 0..3 {
                let Some(endpoint) = backends.pick(ip) else {
                    return;
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
                    Ok(Ok(mut server)) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                    _ => {
                        tracing::debug!(%endpoint, "userspace proxy: endpoint did not answer");
                        backends.forget(ip);
                    }
                }
            }
        });
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, backends: Arc<Backends>) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    // The flows' reply relays end with this task (a JoinSet aborts its tasks when dropped),
    // so that nothing keeps the listening socket open once the listener is stopped.
    let mut relays = tokio::task::JoinSet::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!(%err, "userspace proxy receive");
                continue;
            }
        };
        let existing = flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let Some(endpoint) = backends.pick(client_ip(client)) else {
                    continue;
                };
                let upstream = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
                    Ok(upstream) => upstream,
                    Err(_) => continue,
                };
                if upstream.connect(endpoint).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                flows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(client, upstream.clone());
                relays.spawn(relay_replies(
                    socket.clone(),
                    upstream.clone(),
                    client,
                    flows.clone(),
                ));
                // Reap the relays that ended.
                while relays.try_join_next().is_some() {}
                upstream
            }
        };
        let _ = upstream.send(&buffer[..len]).await;
    }
}

/// Sends an endpoint's replies back to the client until the flow is idle.
async fn relay_replies(
    socket: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buffer = vec![0u8; 65_536];
    while let Ok(Ok(len)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buffer)).await {
        let _ = socket.send_to(&buffer[..len], client).await;
    }
    flows
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&client);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_client_affinity() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 2), 80);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 80);
        let client = Ipv4Addr::new(10, 244, 0, 9);
        let spread = Backends::new(None);
        assert_eq!(spread.pick(client), None, "no endpoints");
        spread.set(vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| spread.pick(client).unwrap()).collect();
        assert_eq!(picks, [a, b, a, b]);

        let sticky = Backends::new(Some(60));
        sticky.set(vec![a, b]);
        let first = sticky.pick(client).unwrap();
        assert!((0..5).all(|_| sticky.pick(client) == Some(first)));
        let other = sticky.pick(Ipv4Addr::new(10, 244, 0, 10)).unwrap();
        assert_ne!(other, first, "the next client gets the next endpoint");
        sticky.set(vec![other]);
        assert_eq!(
            sticky.pick(client),
            Some(other),
            "a gone endpoint is not kept"
        );
        sticky.forget(client);
    }

    fn v4(address: SocketAddr) -> SocketAddrV4 {
        match address {
            SocketAddr::V4(address) => address,
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        }
    }

    #[tokio::test]
    async fn tcp_and_udp_are_carried_to_the_endpoints() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // A TCP endpoint answering "pong" and a UDP endpoint echoing in upper case.
        let tcp_endpoint = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_address = v4(tcp_endpoint.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp_endpoint.accept().await {
                let mut ping = [0u8; 4];
                if stream.read_exact(&mut ping).await.is_ok() {
                    let _ = stream.write_all(b"pong").await;
                }
            }
        });
        let udp_endpoint = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_address = v4(udp_endpoint.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            while let Ok((len, from)) = udp_endpoint.recv_from(&mut buffer).await {
                let reply = buffer[..len].to_ascii_uppercase();
                let _ = udp_endpoint.send_to(&reply, from).await;
            }
        });

        // The proxy's own addresses: free loopback ports.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_address = listener.local_addr().unwrap();
        drop(listener);
        let backends = Arc::new(Backends::new(None));
        backends.set(vec![tcp_address]);
        let task = listen(
            &Handle::current(),
            "default/web",
            Protocol::Tcp,
            proxy_address,
            backends,
        )
        .unwrap();
        let mut client = TcpStream::connect(proxy_address).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
        task.abort();

        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_proxy_address = socket.local_addr().unwrap();
        drop(socket);
        let backends = Arc::new(Backends::new(None));
        backends.set(vec![udp_address]);
        let task = listen(
            &Handle::current(),
            "kube-system/dns",
            Protocol::Udp,
            udp_proxy_address,
            backends,
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"query", udp_proxy_address).await.unwrap();
        let mut reply = [0u8; 16];
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut reply))
                .await
                .expect("a reply within 5 s")
                .unwrap();
        assert_eq!(&reply[..len], b"QUERY");
        assert_eq!(
            from, udp_proxy_address,
            "the reply comes from the service address"
        );
        task.abort();
    }
}
