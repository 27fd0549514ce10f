//! Applies the ipvs mode's rendering ([`crate::ipvs_rules`]) incrementally, as the nftables
//! mode does: the first sync (and any after a failure, a change of the node's addresses or of
//! the settings, and one an hour, upstream's full sync period) reads what the kernel holds and
//! changes the difference; the others render only the service ports that changed since the
//! last sync and send what changed in them, without reading anything back. The netfilter
//! table is replaced whole on a full sync and has set elements added and removed otherwise.
//!
//! The mode touches only virtual services that are its own: those on the dummy interface's
//! addresses, and those on a node address with a port in the node port range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use baton_network::{
    AddressWatch, Destination, IpvsSocket, NetlinkError, RouteSocket, ServiceAddress,
    VirtualService,
};
use baton_nftables::{ApplyBatchError, Batch, Family, NftSocket};

use crate::ipvs_rules::{
    IPVS_INTERFACE, IPVS_TABLE, IpvsChange, IpvsState, NODE_PORT_RANGE, SetElement, TableElements,
    counted_elements, firewall_elements, host_net, ipvs_changes, netfilter_table, render_port,
    table_update,
};
use crate::nftables_rules::RuleSettings;
use crate::nftables_sync::SyncStats;
use crate::service_model::{Endpoint, ProxyState, ServicePortInfo, ServicePortKey};

/// How often a sync compares with the kernel even without a reason to (upstream's
/// `FullSyncPeriod`): what someone else changed is put back.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// sysctls the mode needs: conntrack entries for IPVS connections (so netfilter can
/// masquerade them), and connections to a removed destination dropped rather than kept.
const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
];

/// Programming IPVS failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// A netlink request (IPVS, an interface, an address) was refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The netfilter table was refused.
    #[error(transparent)]
    Nftables(#[from] ApplyBatchError),
    /// A sysctl the mode needs could not be set.
    #[error("setting sysctl {name}")]
    Sysctl {
        /// Its path under /proc/sys.
        name: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a full sync reads from the kernel.
#[derive(Clone, Debug, Default)]
pub struct KernelIpvs {
    /// Every IPv4 address of the node but loopback's and the dummy interface's.
    pub node_addresses: Vec<Ipv4Addr>,
    /// The dummy interface's addresses.
    pub interface_addresses: BTreeSet<Ipv4Addr>,
    /// Every IPv4 virtual service (this mode's and others').
    pub services: Vec<VirtualService>,
}

/// The kernel as the ipvs mode programs it: IPVS, the dummy interface's addresses and the
/// netfilter table. [`NetlinkKernel`] is the real one.
pub trait IpvsKernel {
    /// Sets up what the mode needs (sysctls, the dummy interface) and reads what is there.
    fn read(&mut self) -> Result<KernelIpvs, IpvsError>;
    /// A virtual service's destinations.
    fn destinations(
        &mut self,
        address: &ServiceAddress,
    ) -> Result<BTreeSet<Destination>, IpvsError>;
    /// Makes one change.
    fn apply(&mut self, change: &IpvsChange) -> Result<(), IpvsError>;
    /// Replaces the netfilter table with one holding `elements`.
    fn replace_table(
        &mut self,
        elements: &TableElements,
        settings: &RuleSettings,
    ) -> Result<(), IpvsError>;
    /// Takes `removed` out of the table's sets and puts `added` in, in one batch.
    fn update_table(
        &mut self,
        removed: &TableElements,
        added: &TableElements,
    ) -> Result<(), IpvsError>;
    /// Starts noticing changes of the node's addresses; returns them as they are now.
    fn watch_node_addresses(&mut self) -> Result<Vec<Ipv4Addr>, IpvsError>;
    /// Whether a node address changed since [`IpvsKernel::watch_node_addresses`] (or the last
    /// call).
    fn node_addresses_changed(&mut self) -> Result<bool, IpvsError>;
}

/// One service port as last applied: its inputs and its rendering.
type AppliedPort = (ServicePortInfo, Vec<Endpoint>, IpvsState);

/// What the kernel holds after the last successful sync, per service port, with what the
/// ports share counted.
#[derive(Debug)]
struct Applied {
    settings: RuleSettings,
    node_addresses: Vec<Ipv4Addr>,
    ports: BTreeMap<ServicePortKey, AppliedPort>,
    /// The ports rendering each service address; the last one's rendering is programmed, as
    /// in [`crate::ipvs_rules::render_ipvs`].
    owners: BTreeMap<ServiceAddress, BTreeSet<ServicePortKey>>,
    /// How many ports put each address on the dummy interface.
    interface_addresses: BTreeMap<Ipv4Addr, usize>,
    /// How many ports put each element in each of the table's counted sets
    /// ([`counted_elements`]).
    elements: BTreeMap<(&'static str, SetElement), usize>,
    /// Virtual services and destinations programmed.
    rules: usize,
}

/// What one update of [`Applied`] changes: before and after, over what it touched.
struct Update {
    before: IpvsState,
    after: IpvsState,
    /// Elements to put in the table's sets.
    added: TableElements,
    /// Elements to take out of the firewall's sets, in the batch that adds (so a firewall
    /// changes at once, and a range leaves before one overlapping it comes).
    firewall_removed: TableElements,
    /// Elements to take out of the other sets, once IPVS no longer uses them.
    removed: TableElements,
}

/// What `to` holds and `from` does not, set by set.
fn elements_missing(from: &TableElements, to: &TableElements) -> TableElements {
    to.iter()
        .map(|(name, set)| {
            let there = from.get(name);
            let missing = set
                .iter()
                .filter(|e| !there.is_some_and(|t| t.contains(*e)))
                .cloned()
                .collect();
            (*name, missing)
        })
        .collect()
}

impl Applied {
    fn new(settings: RuleSettings, node_addresses: Vec<Ipv4Addr>) -> Self {
        Self {
            settings,
            node_addresses,
            ports: BTreeMap::new(),
            owners: BTreeMap::new(),
            interface_addresses: BTreeMap::new(),
            elements: BTreeMap::new(),
            rules: 0,
        }
    }

    /// The rendering whose virtual service (and firewall) `address` has.
    fn owner(&self, address: &ServiceAddress) -> Option<&IpvsState> {
        let owner = self.owners.get(address)?.last()?;
        self.ports.get(owner).map(|(_, _, rendering)| rendering)
    }

    /// What is programmed of `addresses` (virtual services and firewalls) and
    /// `interface_addresses`.
    fn view(
        &self,
        addresses: &BTreeSet<ServiceAddress>,
        interface_addresses: &BTreeSet<Ipv4Addr>,
    ) -> IpvsState {
        let mut state = IpvsState::default();
        for address in addresses {
            let Some(rendering) = self.owner(address) else {
                continue;
            };
            if let Some(service) = rendering.services.get(address) {
                state.services.insert(*address, service.clone());
            }
            if let Some(ranges) = rendering.firewalls.get(address) {
                state.firewalls.insert(*address, ranges.clone());
            }
        }
        state.interface_addresses = interface_addresses
            .iter()
            .filter(|ip| self.interface_addresses.contains_key(ip))
            .copied()
            .collect();
        state
    }

    /// Renders the ports `changed` names again (`None`: the port is gone) and records them;
    /// returns what that changes. A port whose inputs did not change is skipped.
    fn update<'a>(
        &mut self,
        changed: impl Iterator<
            Item = (
                &'a ServicePortKey,
                Option<&'a (ServicePortInfo, Vec<Endpoint>)>,
            ),
        >,
    ) -> Update {
        let mut renderings: Vec<(ServicePortKey, Option<AppliedPort>)> = Vec::new();
        let mut addresses = BTreeSet::new();
        let mut interface = BTreeSet::new();
        for (key, port) in changed {
            let old = self.ports.get(key);
            if let (Some((info, endpoints, _)), Some((new_info, new_endpoints))) = (old, port)
                && info == new_info
                && endpoints == new_endpoints
            {
                continue;
            }
            if old.is_none() && port.is_none() {
                continue;
            }
            let new = port.map(|(info, endpoints)| {
                let rendered = render_port(info, endpoints, &self.settings, &self.node_addresses);
                (info.clone(), endpoints.clone(), rendered)
            });
            for (_, _, rendering) in old.into_iter().chain(&new) {
                addresses.extend(rendering.services.keys().copied());
                interface.extend(rendering.interface_addresses.iter().copied());
            }
            renderings.push((key.clone(), new));
        }
        let before = self.view(&addresses, &interface);
        let mut element_delta: BTreeMap<(&'static str, SetElement), isize> = BTreeMap::new();
        for (key, new) in renderings {
            let old = match new {
                Some(port) => self.ports.insert(key.clone(), port),
                None => self.ports.remove(&key),
            };
            let new = self.ports.get(&key);
            for (rendering, step) in [(old.as_ref().map(|p| &p.2), -1), (new.map(|p| &p.2), 1)] {
                let Some(rendering) = rendering else { continue };
                for address in rendering.services.keys() {
                    let owners = self.owners.entry(*address).or_default();
                    if step > 0 {
                        owners.insert(key.clone());
                    } else {
                        owners.remove(&key);
                        if owners.is_empty() {
                            self.owners.remove(address);
                        }
                    }
                }
                for ip in &rendering.interface_addresses {
                    let count = self.interface_addresses.entry(*ip).or_default();
                    *count = count.saturating_add_signed(step);
                    if *count == 0 {
                        self.interface_addresses.remove(ip);
                    }
                }
                for (name, set) in counted_elements(rendering) {
                    for element in set {
                        *element_delta.entry((name, element)).or_default() += step;
                    }
                }
            }
        }
        let after = self.view(&addresses, &interface);
        self.rules = self.rules + after.rule_count() - before.rule_count();
        let mut removed = TableElements::new();
        let (firewall_before, firewall_after) =
            (firewall_elements(&before), firewall_elements(&after));
        let firewall_removed = elements_missing(&firewall_after, &firewall_before);
        let mut added = elements_missing(&firewall_before, &firewall_after);
        for (key, delta) in element_delta {
            if delta == 0 {
                continue;
            }
            let count = self.elements.get(&key).copied().unwrap_or(0);
            let new_count = count.saturating_add_signed(delta);
            let (name, element) = key.clone();
            match (count, new_count) {
                (0, n) if n > 0 => {
                    added.entry(name).or_default().insert(element);
                }
                (c, 0) if c > 0 => {
                    removed.entry(name).or_default().insert(element);
                }
                _ => {}
            }
            if new_count == 0 {
                self.elements.remove(&key);
            } else {
                self.elements.insert(key, new_count);
            }
        }
        Update {
            before,
            after,
            added,
            firewall_removed,
            removed,
        }
    }
}

/// The ipvs dataplane, over a kernel ([`NetlinkKernel`], or a model of one in unit tests).
#[derive(Debug)]
pub struct IpvsProxier<K = NetlinkKernel> {
    kernel: K,
    /// What the last successful sync left; `None` (at first, after a failure or a clean-up)
    /// makes the next sync a full one.
    applied: Option<Applied>,
    /// When the last full sync was.
    last_full: Option<Instant>,
    /// The node addresses earlier syncs served node ports on: the virtual services left on
    /// one that went away are this mode's too.
    former_node_addresses: BTreeSet<Ipv4Addr>,
    /// Virtual services and destinations programmed by the last sync.
    rules: usize,
}

impl IpvsProxier<NetlinkKernel> {
    /// A proxier that has programmed nothing yet, over the kernel of the calling thread's
    /// network namespace (its sockets are opened by the first sync).
    pub fn new() -> Self {
        Self::with_kernel(NetlinkKernel::default())
    }

    /// Removes this mode's virtual services, the dummy interface and the netfilter table.
    pub fn clean_up(&mut self) -> Result<(), IpvsError> {
        self.applied = None;
        clean_up_ipvs()
    }
}

impl Default for IpvsProxier<NetlinkKernel> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: IpvsKernel> IpvsProxier<K> {
    /// A proxier over `kernel`.
    pub fn with_kernel(kernel: K) -> Self {
        Self {
            kernel,
            applied: None,
            last_full: None,
            former_node_addresses: BTreeSet::new(),
            rules: 0,
        }
    }

    /// The kernel it programs.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Virtual services and destinations programmed by the last sync.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// Makes the kernel hold what `state` asks for.
    pub fn sync(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
    ) -> Result<SyncStats, IpvsError> {
        let started = Instant::now();
        let result = self.sync_inner(state, settings, started);
        if result.is_err() {
            // What the kernel holds is not known now: compare with it next time.
            self.applied = None;
        }
        result
    }

    fn sync_inner(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
        started: Instant,
    ) -> Result<SyncStats, IpvsError> {
        let full_due = self
            .last_full
            .is_none_or(|at| at.elapsed() >= FULL_SYNC_PERIOD);
        let mut applied = match self.applied.take() {
            Some(applied)
                if !full_due
                    && applied.settings == *settings
                    && !self.kernel.node_addresses_changed()? =>
            {
                applied
            }
            _ => return self.full_sync(state, settings, started),
        };
        // The ports to look at: those the state says changed since it was last applied, or,
        // when it does not know, every port (compared with what was applied).
        let update = match state.touched() {
            Some(touched) => {
                applied.update(touched.iter().map(|key| (key, state.services.get(key))))
            }
            None => {
                let keys: BTreeSet<ServicePortKey> = applied
                    .ports
                    .keys()
                    .chain(state.services.keys())
                    .cloned()
                    .collect();
                applied.update(keys.iter().map(|key| (key, state.services.get(key))))
            }
        };
        let changes = ipvs_changes(&update.before, &update.after);
        let count =
            |elements: &TableElements| -> usize { elements.values().map(BTreeSet::len).sum() };
        // What IPVS will use goes into the table first (a new load-balancer IP is firewalled
        // before it is served, a new node port marked for masquerading); what it used leaves
        // after.
        let first = count(&update.added) + count(&update.firewall_removed);
        if first > 0 {
            self.kernel
                .update_table(&update.firewall_removed, &update.added)?;
        }
        for change in &changes {
            self.kernel.apply(change)?;
        }
        let last = count(&update.removed);
        if last > 0 {
            self.kernel
                .update_table(&update.removed, &TableElements::new())?;
        }
        let table_changes = first + last;
        self.rules = applied.rules;
        self.applied = Some(applied);
        Ok(SyncStats {
            full: false,
            changes: changes.len() + table_changes,
            apply_time: started.elapsed(),
        })
    }

    /// Compares everything with what the kernel holds and changes the difference.
    fn full_sync(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
        started: Instant,
    ) -> Result<SyncStats, IpvsError> {
        let kernel = self.kernel.read()?;
        let mut applied = Applied::new(settings.clone(), kernel.node_addresses.clone());
        // From nothing, the update's result is everything.
        let Update {
            after: wanted,
            added: elements,
            ..
        } = applied.update(state.services.iter().map(|(key, port)| (key, Some(port))));
        self.rules = applied.rules;
        // This mode's virtual services: on the dummy interface's addresses (those there, and
        // those about to be), and on node addresses (now or before) with a port in the node
        // port range.
        self.former_node_addresses
            .extend(kernel.node_addresses.iter().copied());
        let ours = |address: &ServiceAddress| {
            kernel.interface_addresses.contains(&address.address)
                || wanted.interface_addresses.contains(&address.address)
                || wanted.services.contains_key(address)
                || (self.former_node_addresses.contains(&address.address)
                    && NODE_PORT_RANGE.contains(&address.port))
        };
        let ours: Vec<&VirtualService> = kernel
            .services
            .iter()
            .filter(|s| ours(&s.address))
            .collect();
        let mut present = IpvsState {
            interface_addresses: kernel.interface_addresses.clone(),
            ..IpvsState::default()
        };
        for service in ours {
            // Destinations matter only where the service stays.
            let destinations = if wanted.services.contains_key(&service.address) {
                self.kernel.destinations(&service.address)?
            } else {
                BTreeSet::new()
            };
            present
                .services
                .insert(service.address, (service.clone(), destinations));
        }
        let changes = ipvs_changes(&present, &wanted);
        // The table first (its firewalls guard what IPVS is about to serve). A change the
        // kernel refuses is reported, and the rest still made, so that one bad Service does not
        // keep the others from being served; the sync then fails, and the next is full again.
        let mut refused = self.kernel.replace_table(&elements, settings).err();
        for change in &changes {
            if let Err(err) = self.kernel.apply(change) {
                tracing::warn!(?change, err = %baton_client::error_chain(&err), "the kernel refused an IPVS change");
                refused.get_or_insert(err);
            }
        }
        if let Some(err) = refused {
            return Err(err);
        }
        // The node's addresses are watched from here on; a change since they were read
        // makes the next sync a full one again.
        let now = self.kernel.watch_node_addresses()?;
        self.last_full = Some(Instant::now());
        if now == kernel.node_addresses {
            self.applied = Some(applied);
        } else {
            tracing::debug!("the node's addresses changed during a full sync");
        }
        Ok(SyncStats {
            full: true,
            changes: changes.len() + elements.values().map(BTreeSet::len).sum::<usize>(),
            apply_time: started.elapsed(),
        })
    }
}

/// The sockets of [`NetlinkKernel`].
#[derive(Debug)]
struct Sockets {
    route: RouteSocket,
    ipvs: IpvsSocket,
    nft: NftSocket,
    /// The dummy interface's index.
    interface: u32,
}

/// The kernel of the network namespace the proxier's first sync ran in, through netlink.
#[derive(Debug, Default)]
pub struct NetlinkKernel {
    sockets: Option<Sockets>,
    watch: Option<AddressWatch>,
    /// A node address change the watch reported while the sync's own changes were read
    /// from it.
    node_address_changed: bool,
    /// Address changes made since the watch was last read.
    unread_address_changes: usize,
    sysctls_set: bool,
}

impl NetlinkKernel {
    /// Reads the watch every 64 address changes, so that the notifications of a sync's own
    /// changes to the dummy interface do not overflow its socket (which would count as a
    /// node address change, and make the next sync a full one).
    fn read_watch_now_and_then(&mut self, interface: u32) -> Result<(), IpvsError> {
        self.unread_address_changes += 1;
        if self.unread_address_changes >= 64
            && let Some(watch) = &mut self.watch
        {
            self.node_address_changed |= watch.changed_except(interface)?;
            self.unread_address_changes = 0;
        }
        Ok(())
    }

    fn sockets(&mut self) -> Result<&mut Sockets, IpvsError> {
        if self.sockets.is_none() {
            let mut route = RouteSocket::open()?;
            let interface = match route.link(IPVS_INTERFACE)? {
                Some(link) => link.index,
                None => {
                    route.create_dummy(IPVS_INTERFACE)?;
                    route
                        .link(IPVS_INTERFACE)?
                        .map(|link| link.index)
                        .ok_or_else(|| NetlinkError {
                            operation: format!("find {IPVS_INTERFACE} after creating it"),
                            source: std::io::ErrorKind::NotFound.into(),
                        })?
                }
            };
            self.sockets = Some(Sockets {
                route,
                ipvs: IpvsSocket::open()?,
                nft: NftSocket::open()?,
                interface,
            });
        }
        Ok(self.sockets.as_mut().expect("opened above"))
    }

    /// (node addresses, the dummy interface's addresses).
    fn addresses(&mut self) -> Result<(Vec<Ipv4Addr>, BTreeSet<Ipv4Addr>), IpvsError> {
        let sockets = self.sockets()?;
        let interface = sockets.interface;
        let mut node = Vec::new();
        let mut on_interface = BTreeSet::new();
        for (index, net) in sockets.route.ipv4_addresses()? {
            if index == interface {
                on_interface.insert(net.addr());
            } else if !net.addr().is_loopback() {
                node.push(net.addr());
            }
        }
        Ok((node, on_interface))
    }
}

impl IpvsKernel for NetlinkKernel {
    fn read(&mut self) -> Result<KernelIpvs, IpvsError> {
        if !self.sysctls_set {
            for (name, value) in SYSCTLS {
                std::fs::write(format!("/proc/sys/{name}"), value)
                    .map_err(|source| IpvsError::Sysctl { name, source })?;
            }
            self.sysctls_set = true;
        }
        // Opened again each full sync: the dummy interface may have been removed.
        self.sockets = None;
        let (node_addresses, interface_addresses) = self.addresses()?;
        let services = self.sockets()?.ipvs.services()?;
        Ok(KernelIpvs {
            node_addresses,
            interface_addresses,
            services,
        })
    }

    fn destinations(
        &mut self,
        address: &ServiceAddress,
    ) -> Result<BTreeSet<Destination>, IpvsError> {
        Ok(self
            .sockets()?
            .ipvs
            .destinations(address)?
            .into_iter()
            .collect())
    }

    fn apply(&mut self, change: &IpvsChange) -> Result<(), IpvsError> {
        let sockets = self.sockets()?;
        let interface = sockets.interface;
        let ipvs = &mut sockets.ipvs;
        match change {
            IpvsChange::AddAddress(ip) => {
                sockets.route.add_address(interface, host_net(*ip))?;
                self.read_watch_now_and_then(interface)?;
            }
            IpvsChange::DeleteAddress(ip) => {
                sockets.route.delete_address(interface, host_net(*ip))?;
                self.read_watch_now_and_then(interface)?;
            }
            IpvsChange::AddService(service) => ipvs.add_service(service)?,
            IpvsChange::UpdateService(service) => ipvs.update_service(service)?,
            IpvsChange::DeleteService(address) => ipvs.delete_service(address)?,
            IpvsChange::AddDestination(address, destination) => {
                ipvs.add_destination(address, destination)?;
            }
            IpvsChange::UpdateDestination(address, destination) => {
                ipvs.update_destination(address, destination)?;
            }
            IpvsChange::DeleteDestination(address, destination) => {
                ipvs.delete_destination(address, destination)?;
            }
        }
        Ok(())
    }

    fn replace_table(
        &mut self,
        elements: &TableElements,
        settings: &RuleSettings,
    ) -> Result<(), IpvsError> {
        let batch = netfilter_table(elements, settings);
        self.sockets()?.nft.apply(&batch)?;
        Ok(())
    }

    fn update_table(
        &mut self,
        removed: &TableElements,
        added: &TableElements,
    ) -> Result<(), IpvsError> {
        let batch = table_update(removed, added);
        self.sockets()?.nft.apply(&batch)?;
        Ok(())
    }

    fn watch_node_addresses(&mut self) -> Result<Vec<Ipv4Addr>, IpvsError> {
        // Subscribed before the addresses are read, so that no change falls between.
        self.watch = Some(AddressWatch::open()?);
        self.node_address_changed = false;
        self.unread_address_changes = 0;
        Ok(self.addresses()?.0)
    }

    fn node_addresses_changed(&mut self) -> Result<bool, IpvsError> {
        let interface = self.sockets()?.interface;
        let changed = match &mut self.watch {
            Some(watch) => watch.changed_except(interface)?,
            None => true,
        };
        self.unread_address_changes = 0;
        Ok(std::mem::take(&mut self.node_address_changed) || changed)
    }
}

/// Removes what the ipvs mode programs (also when another mode starts): its virtual services
/// (those on the dummy interface's addresses, and those on node addresses with a port in the
/// node port range), the dummy interface and the netfilter table.
pub fn clean_up_ipvs() -> Result<(), IpvsError> {
    let mut route = RouteSocket::open()?;
    let interface = route.link(IPVS_INTERFACE)?.map(|link| link.index);
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        let addresses = route.ipv4_addresses()?;
        let on_interface: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, _)| Some(*index) == interface)
            .map(|(_, net)| net.addr())
            .collect();
        let node: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, net)| Some(*index) != interface && !net.addr().is_loopback())
            .map(|(_, net)| net.addr())
            .collect();
        let mut ipvs = IpvsSocket::open()?;
        for service in ipvs.services()? {
            let address = service.address;
            if on_interface.contains(&address.address)
                || (node.contains(&address.address) && NODE_PORT_RANGE.contains(&address.port))
            {
                ipvs.delete_service(&address)?;
            }
        }
    }
    if interface.is_some() {
        route.delete_link(IPVS_INTERFACE)?;
    }
    let mut batch = Batch::new();
    batch.destroy_table(Family::Ip, IPVS_TABLE);
    NftSocket::open()?.apply(&batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs_rules::{render_ipvs, table_elements};
    use crate::service_model::build_state;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    /// IPVS, the dummy interface and the table's sets as data, refusing what the kernel
    /// refuses (a service added twice, a destination of a service that is not there, an
    /// element removed that is not there), so that a sync that sends the wrong change fails.
    #[derive(Debug, Default)]
    struct ModelKernel {
        node_addresses: Vec<Ipv4Addr>,
        interface_addresses: BTreeSet<Ipv4Addr>,
        services: BTreeMap<ServiceAddress, (VirtualService, BTreeSet<Destination>)>,
        table: Option<TableElements>,
        /// Full reads of the kernel.
        reads: usize,
        /// Changes and table updates made.
        changes: usize,
        /// Set when a node address changes; cleared when read.
        addresses_changed: bool,
        /// Refuse the change after this many more.
        fail_after: Option<usize>,
        /// Always refuse to add this virtual service.
        refuse: Option<ServiceAddress>,
    }

    /// As the kernel's set of ranges (`pipapo`) does: an element whose range meets one in the
    /// set is refused.
    fn check_ranges(table: &TableElements) -> Result<(), IpvsError> {
        let Some(ranges) = table.get("firewall-sources") else {
            return Ok(());
        };
        let ranges: Vec<&SetElement> = ranges.iter().collect();
        for (i, (first, last)) in ranges.iter().enumerate() {
            let last = last.as_ref().expect("a range");
            for (other_first, other_last) in &ranges[i + 1..] {
                let other_last = other_last.as_ref().expect("a range");
                if first <= other_last && other_first <= last {
                    return Err(refused(
                        "add an overlapping range".into(),
                        std::io::ErrorKind::AlreadyExists,
                    ));
                }
            }
        }
        Ok(())
    }

    fn refused(what: String, kind: std::io::ErrorKind) -> IpvsError {
        IpvsError::Netlink(NetlinkError {
            operation: what,
            source: kind.into(),
        })
    }

    impl IpvsKernel for ModelKernel {
        fn read(&mut self) -> Result<KernelIpvs, IpvsError> {
            self.reads += 1;
            Ok(KernelIpvs {
                node_addresses: self.node_addresses.clone(),
                interface_addresses: self.interface_addresses.clone(),
                services: self.services.values().map(|(s, _)| s.clone()).collect(),
            })
        }

        fn destinations(
            &mut self,
            address: &ServiceAddress,
        ) -> Result<BTreeSet<Destination>, IpvsError> {
            self.services
                .get(address)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| refused(format!("list {address}"), std::io::ErrorKind::NotFound))
        }

        fn apply(&mut self, change: &IpvsChange) -> Result<(), IpvsError> {
            if let Some(left) = &mut self.fail_after {
                if *left == 0 {
                    return Err(refused(format!("{change:?}"), std::io::ErrorKind::Other));
                }
                *left -= 1;
            }
            if let (IpvsChange::AddService(service), Some(refuse)) = (change, self.refuse)
                && service.address == refuse
            {
                return Err(refused(
                    format!("{change:?}"),
                    std::io::ErrorKind::InvalidInput,
                ));
            }
            self.changes += 1;
            let missing = || refused(format!("{change:?}"), std::io::ErrorKind::NotFound);
            let exists = || refused(format!("{change:?}"), std::io::ErrorKind::AlreadyExists);
            match change {
                IpvsChange::AddAddress(ip) => {
                    self.interface_addresses.insert(*ip);
                }
                IpvsChange::DeleteAddress(ip) => {
                    self.interface_addresses.remove(ip);
                }
                IpvsChange::AddService(service) => {
                    if self.services.contains_key(&service.address) {
                        return Err(exists());
                    }
                    self.services
                        .insert(service.address, (service.clone(), BTreeSet::new()));
                }
                IpvsChange::UpdateService(service) => {
                    let entry = self
                        .services
                        .get_mut(&service.address)
                        .ok_or_else(missing)?;
                    entry.0 = service.clone();
                }
                IpvsChange::DeleteService(address) => {
                    self.services.remove(address).ok_or_else(missing)?;
                }
                IpvsChange::AddDestination(address, destination) => {
                    let (_, destinations) = self.services.get_mut(address).ok_or_else(missing)?;
                    if destinations
                        .iter()
                        .any(|d| (d.address, d.port) == (destination.address, destination.port))
                    {
                        return Err(exists());
                    }
                    destinations.insert(*destination);
                }
                IpvsChange::UpdateDestination(address, destination) => {
                    let (_, destinations) = self.services.get_mut(address).ok_or_else(missing)?;
                    let old = destinations
                        .iter()
                        .find(|d| (d.address, d.port) == (destination.address, destination.port))
                        .copied()
                        .ok_or_else(missing)?;
                    destinations.remove(&old);
                    destinations.insert(*destination);
                }
                IpvsChange::DeleteDestination(address, destination) => {
                    let (_, destinations) = self.services.get_mut(address).ok_or_else(missing)?;
                    if !destinations.remove(destination) {
                        return Err(missing());
                    }
                }
            }
            Ok(())
        }

        fn replace_table(
            &mut self,
            elements: &TableElements,
            _settings: &RuleSettings,
        ) -> Result<(), IpvsError> {
            check_ranges(elements)?;
            self.changes += 1;
            self.table = Some(elements.clone());
            Ok(())
        }

        fn update_table(
            &mut self,
            removed: &TableElements,
            added: &TableElements,
        ) -> Result<(), IpvsError> {
            self.changes += 1;
            let table = self.table.as_mut().ok_or_else(|| {
                refused(
                    "update a missing table".into(),
                    std::io::ErrorKind::NotFound,
                )
            })?;
            for (name, set) in removed {
                for element in set {
                    if !table.entry(name).or_default().remove(element) {
                        return Err(refused(
                            format!("remove a missing element of {name}"),
                            std::io::ErrorKind::NotFound,
                        ));
                    }
                }
            }
            for (name, set) in added {
                table.entry(name).or_default().extend(set.iter().cloned());
            }
            check_ranges(table)
        }

        fn watch_node_addresses(&mut self) -> Result<Vec<Ipv4Addr>, IpvsError> {
            self.addresses_changed = false;
            Ok(self.node_addresses.clone())
        }

        fn node_addresses_changed(&mut self) -> Result<bool, IpvsError> {
            Ok(std::mem::take(&mut self.addresses_changed))
        }
    }

    /// A Service numbered `i`; `variant` picks its type, affinity, external IPs and source
    /// ranges. Load-balancer and external IPs are shared between Services on purpose.
    fn service(i: u8, variant: u64) -> Service {
        let kind = ["ClusterIP", "NodePort", "LoadBalancer"][(variant % 3) as usize];
        let mut spec = json!({
            "type": kind,
            "clusterIP": format!("10.96.0.{i}"),
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }],
        });
        if kind != "ClusterIP" {
            spec["ports"][0]["nodePort"] = json!(30000 + u16::from(i));
        }
        if variant & 8 != 0 {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        if variant & 16 != 0 {
            spec["externalIPs"] = json!([format!("198.51.100.{}", i % 3)]);
        }
        if variant & 32 != 0 && kind == "LoadBalancer" {
            // Ranges that hold one another, or every source (and so the node's address).
            spec["loadBalancerSourceRanges"] = match variant & 384 {
                0 => json!(["10.1.0.0/16"]),
                128 => json!(["10.0.0.0/8", "10.1.0.0/16"]),
                256 => json!(["0.0.0.0/0"]),
                _ => json!(["192.168.0.0/16", "10.1.2.0/24"]),
            };
        }
        if variant & 64 != 0 && kind != "ClusterIP" {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        let mut service = json!({
            "metadata": { "name": format!("svc-{i}"), "namespace": "default" },
            "spec": spec,
        });
        if kind == "LoadBalancer" {
            service["status"] =
                json!({ "loadBalancer": { "ingress": [{ "ip": format!("192.0.2.{}", i % 4) }] } });
        }
        serde_json::from_value(service).expect("a valid Service")
    }

    /// Service `i`'s slice: endpoints 10.244.0.x, ready or not, on node-1 or node-2.
    fn slice(i: u8, endpoints: &[(u8, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(last, ready)| {
                json!({
                    "addresses": [format!("10.244.0.{last}")],
                    "conditions": { "ready": ready },
                    "nodeName": if last % 2 == 0 { "node-1" } else { "node-2" },
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("svc-{i}-abcde"), "namespace": "default",
                "labels": { "kubernetes.io/service-name": format!("svc-{i}") },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        }))
        .expect("a valid EndpointSlice")
    }

    /// Services 0 to `count - 1` of `variant`, each with one ready endpoint, 10.244.0.`last`.
    fn set_services(state: &mut ProxyState, count: u8, variant: u64, last: u8) {
        for i in 0..count {
            state.update_service(
                "default",
                &format!("svc-{i}"),
                Some(&service(i, variant)),
                &[slice(i, &[(last, true)])],
            );
        }
    }

    fn settings() -> RuleSettings {
        RuleSettings {
            node_name: "node-1".into(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    /// The kernel holds exactly what a render of the whole state asks for.
    fn assert_kernel_holds(proxier: &IpvsProxier<ModelKernel>, state: &ProxyState) {
        let kernel = &proxier.kernel;
        let wanted = render_ipvs(state, &settings(), &kernel.node_addresses);
        assert_eq!(kernel.services, wanted.services);
        assert_eq!(kernel.interface_addresses, wanted.interface_addresses);
        let mut table = kernel.table.clone().expect("a table");
        table.retain(|_, set| !set.is_empty());
        let mut expected = table_elements(&wanted);
        expected.retain(|_, set| !set.is_empty());
        assert_eq!(table, expected);
        assert_eq!(proxier.rule_count(), wanted.rule_count());
    }

    /// A small xorshift generator: the same sequence on every run.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn node_kernel() -> ModelKernel {
        ModelKernel {
            node_addresses: vec![Ipv4Addr::new(192, 168, 1, 5)],
            ..ModelKernel::default()
        }
    }

    #[test]
    fn incremental_syncs_leave_the_kernel_as_a_full_sync_would() {
        let mut proxier = IpvsProxier::with_kernel(node_kernel());
        let mut state = ProxyState::default();
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        for step in 0..400 {
            let i = (random.next() % 12) as u8;
            let name = format!("svc-{i}");
            match random.next() % 5 {
                // Gone, with its slice.
                0 => state.update_service::<EndpointSlice>("default", &name, None, &[]),
                // Endpoints come, go, turn ready or not.
                _ => {
                    let endpoints: Vec<(u8, bool)> = (0..random.next() % 4)
                        .map(|_| {
                            (
                                (random.next() % 6) as u8 + 1,
                                !random.next().is_multiple_of(3),
                            )
                        })
                        .collect();
                    let service = service(i, random.next());
                    state.update_service("default", &name, Some(&service), &[slice(i, &endpoints)]);
                }
            }
            proxier
                .sync(&state, &settings())
                .unwrap_or_else(|err| panic!("step {step}: {err:?}"));
            state.mark_applied();
            assert_kernel_holds(&proxier, &state);
        }
        assert_eq!(
            proxier.kernel.reads, 1,
            "only the first sync read the kernel"
        );

        // A state that does not know what changed is compared port by port.
        let services: Vec<Service> = (0..12).map(|i| service(i, 32)).collect();
        let slices: Vec<EndpointSlice> = (0..12).map(|i| slice(i, &[(2, true)])).collect();
        let whole = build_state(&services, &slices);
        assert!(whole.touched().is_none());
        proxier.sync(&whole, &settings()).unwrap();
        assert_kernel_holds(&proxier, &whole);
        assert_eq!(proxier.kernel.reads, 1);
    }

    #[test]
    fn one_changed_endpoint_is_one_destination_on_each_of_its_addresses() {
        let mut proxier = IpvsProxier::with_kernel(node_kernel());
        let services: Vec<Service> = (0..50).map(|i| service(i, 1)).collect();
        let slices: Vec<EndpointSlice> = (0..50).map(|i| slice(i, &[(2, true)])).collect();
        let mut state = build_state(&services, &slices);
        let stats = proxier.sync(&state, &settings()).unwrap();
        assert!(stats.full);
        state.mark_applied();
        let before = proxier.kernel.changes;
        state.update_service(
            "default",
            "svc-7",
            Some(&service(7, 1)),
            &[slice(7, &[(2, true), (4, true)])],
        );
        let stats = proxier.sync(&state, &settings()).unwrap();
        assert!(!stats.full);
        // A NodePort Service: the cluster IP and the node port get the new destination; the
        // endpoint's hairpin element goes into the table in one update.
        assert_eq!(proxier.kernel.changes - before, 3);
        assert_eq!(stats.changes, 3);
        assert_eq!(proxier.kernel.reads, 1);
        assert_kernel_holds(&proxier, &state);
    }

    #[test]
    fn a_failed_sync_is_followed_by_a_full_one_that_repairs_the_kernel() {
        let mut proxier = IpvsProxier::with_kernel(node_kernel());
        let mut state = ProxyState::default();
        set_services(&mut state, 5, 2, 2);
        proxier.sync(&state, &settings()).unwrap();
        state.mark_applied();
        // Half of the next change is applied, then the kernel refuses.
        proxier.kernel.fail_after = Some(2);
        set_services(&mut state, 5, 2, 4);
        assert!(proxier.sync(&state, &settings()).is_err());
        proxier.kernel.fail_after = None;
        // Someone also removed a virtual service behind the proxy's back.
        let cluster_ip = ServiceAddress {
            protocol: baton_network::IpvsProtocol::Tcp,
            address: Ipv4Addr::new(10, 96, 0, 3),
            port: 80,
        };
        proxier.kernel.services.remove(&cluster_ip);
        let stats = proxier.sync(&state, &settings()).unwrap();
        assert!(stats.full, "the failure made the next sync a full one");
        assert_eq!(proxier.kernel.reads, 2);
        assert_kernel_holds(&proxier, &state);
    }

    #[test]
    fn a_new_node_address_moves_the_node_ports_in_a_full_sync() {
        let mut proxier = IpvsProxier::with_kernel(node_kernel());
        let mut state = ProxyState::default();
        state.update_service(
            "default",
            "svc-1",
            Some(&service(1, 1)),
            &[slice(1, &[(2, true)])],
        );
        proxier.sync(&state, &settings()).unwrap();
        state.mark_applied();
        // A user's virtual service on a node address outside the node port range is left.
        let theirs = VirtualService {
            address: ServiceAddress {
                protocol: baton_network::IpvsProtocol::Tcp,
                address: Ipv4Addr::new(192, 168, 1, 5),
                port: 8443,
            },
            scheduler: "wrr".into(),
            persistence_seconds: None,
        };
        proxier
            .kernel
            .apply(&IpvsChange::AddService(theirs.clone()))
            .unwrap();
        proxier.kernel.node_addresses = vec![Ipv4Addr::new(192, 168, 1, 6)];
        proxier.kernel.addresses_changed = true;
        let stats = proxier.sync(&state, &settings()).unwrap();
        assert!(stats.full);
        let node_ports: Vec<Ipv4Addr> = proxier
            .kernel
            .services
            .keys()
            .filter(|a| a.port == 30001)
            .map(|a| a.address)
            .collect();
        assert_eq!(node_ports, [Ipv4Addr::new(192, 168, 1, 6)]);
        assert!(proxier.kernel.services.contains_key(&theirs.address));
        proxier.kernel.services.remove(&theirs.address);
        assert_kernel_holds(&proxier, &state);
    }

    #[test]
    fn a_refused_change_does_not_keep_a_full_sync_from_the_others() {
        let mut kernel = node_kernel();
        // Service 2's cluster IP cannot be added, whatever the proxy does.
        kernel.refuse = Some(ServiceAddress {
            protocol: baton_network::IpvsProtocol::Tcp,
            address: Ipv4Addr::new(10, 96, 0, 2),
            port: 80,
        });
        let mut proxier = IpvsProxier::with_kernel(kernel);
        let mut state = ProxyState::default();
        set_services(&mut state, 5, 32, 2);
        assert!(proxier.sync(&state, &settings()).is_err());
        // The others are served, and the table (their firewalls) is in.
        let served = |proxier: &IpvsProxier<ModelKernel>| {
            proxier
                .kernel
                .services
                .keys()
                .filter(|a| a.address.octets()[..3] == [10, 96, 0])
                .count()
        };
        assert_eq!(served(&proxier), 4);
        assert!(
            proxier
                .kernel
                .table
                .as_ref()
                .is_some_and(|t| !t["firewalled-addresses"].is_empty())
        );
        // Once the kernel takes it, the next sync (a full one) adds it.
        proxier.kernel.refuse = None;
        let stats = proxier.sync(&state, &settings()).unwrap();
        assert!(stats.full);
        assert_eq!(served(&proxier), 5);
        assert_kernel_holds(&proxier, &state);
    }

    #[test]
    fn a_restarted_proxy_takes_over_its_node_ports_outside_the_default_range() {
        // A cluster whose node port range is not upstream's default.
        let web: Service = serde_json::from_value(json!({
            "metadata": { "name": "svc-40", "namespace": "default" },
            "spec": {
                "type": "NodePort", "clusterIP": "10.96.0.40",
                "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 20080 }],
            },
        }))
        .unwrap();
        let state = build_state(&[web], &[slice(40, &[(2, true)])]);
        let mut first = IpvsProxier::with_kernel(node_kernel());
        first.sync(&state, &settings()).unwrap();
        // The proxy restarts: a new proxier over the same kernel.
        let mut second = IpvsProxier::with_kernel(first.kernel);
        let before = second.kernel.changes;
        let stats = second.sync(&state, &settings()).unwrap();
        assert!(stats.full);
        assert_eq!(
            second.kernel.changes - before,
            1,
            "only the table is replaced; the virtual services are there"
        );
        assert_kernel_holds(&second, &state);
    }
}
