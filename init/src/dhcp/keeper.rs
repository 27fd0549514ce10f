//! A lease on the machine: its address, default route, MTU and resolvers applied through
//! netlink, and a thread that keeps it (RFC 2131, 4.4.5): renewing with the server from T1,
//! rebinding with any server from T2, and when it expires, taking the address away and
//! asking for a new lease until one comes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_network::{NetlinkError, Route, RouteSocket};
use ipnet::Ipv4Net;

use super::{DhcpClient, Lease};

/// The shortest wait between two attempts to extend a lease (RFC 2131 says 60 s).
const MIN_RETRY: Duration = Duration::from_secs(60);
/// How long one attempt to extend a lease, or to get a new one, may take.
const ATTEMPT: Duration = Duration::from_secs(30);

/// What the keeper needs besides the lease.
#[derive(Clone, Debug)]
pub struct KeepLeaseSettings {
    /// The interface's index.
    pub index: u32,
    /// The MTU the configuration sets (a lease's MTU is used only without one).
    pub configured_mtu: Option<u32>,
    /// The resolvers the configuration names (written before the lease's).
    pub nameservers: Vec<IpAddr>,
    /// Where the resolvers go.
    pub resolv_conf: PathBuf,
    /// Whether this lease's resolvers are written (the first DHCP interface's only, so that
    /// two leases do not take turns).
    pub writes_resolvers: bool,
}

/// Where a lease stands at `elapsed` since it was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeasePhase {
    /// Nothing to do until T1, `left` from now.
    Bound { left: Duration },
    /// Between T1 and T2: renew with the server; the next attempt in `retry`.
    Renewing { retry: Duration },
    /// Between T2 and the end: rebind with any server; the next attempt in `retry`.
    Rebinding { retry: Duration },
    /// The lease is over.
    Expired,
}

/// The phase of `lease` at `elapsed`: attempts are spaced half the time left to the next
/// stage, at least 60 s (RFC 2131, 4.4.5), and never past it.
pub fn lease_phase(lease: &Lease, elapsed: Duration) -> LeasePhase {
    let retry = |until: Duration| {
        let left = until.saturating_sub(elapsed);
        (left / 2).max(MIN_RETRY).min(left)
    };
    if elapsed < lease.renew_after {
        LeasePhase::Bound {
            left: lease.renew_after - elapsed,
        }
    } else if elapsed < lease.rebind_after {
        LeasePhase::Renewing {
            retry: retry(lease.rebind_after),
        }
    } else if elapsed < lease.lease_time {
        LeasePhase::Rebinding {
            retry: retry(lease.lease_time),
        }
    } else {
        LeasePhase::Expired
    }
}

/// Applies `lease` to interface `index`, after `previous` (whose address and route are
/// removed when they changed): the address with its prefix, a default route through its
/// router (marked as DHCP's; a default route that is there already, such as one of the
/// configuration's, is left alone), and the lease's MTU when the configuration sets none and
/// it is sensible (576 to 65535; a refused MTU is logged: the address matters more).
pub fn apply_lease(
    socket: &mut RouteSocket,
    index: u32,
    previous: Option<&Lease>,
    lease: &Lease,
    configured_mtu: Option<u32>,
) -> Result<(), NetlinkError> {
    if let Some(previous) = previous {
        if previous.address != lease.address {
            remove_lease(socket, index, previous)?;
        } else if let Some(router) = previous.router
            && lease.router != Some(router)
        {
            socket.delete_dhcp_route(&default_route(index, router))?;
        }
    }
    socket.add_address(index, lease.address)?;
    if let Some(router) = lease.router {
        socket.add_dhcp_route(&default_route(index, router))?;
    }
    if configured_mtu.is_none()
        && let Some(mtu) = lease.mtu
    {
        let mtu = u32::from(mtu);
        let applied = if (576..=65535).contains(&mtu) {
            socket
                .set_link(index, None, Some(mtu))
                .map_err(|err| err.to_string())
        } else {
            Err(format!("{mtu} is outside 576..=65535"))
        };
        if let Err(err) = applied {
            tracing::warn!(%err, "the DHCP lease's MTU was not applied");
        }
    }
    Ok(())
}

/// Takes `lease`'s address and default route off interface `index`.
pub fn remove_lease(
    socket: &mut RouteSocket,
    index: u32,
    lease: &Lease,
) -> Result<(), NetlinkError> {
    // Both, even when the first fails; the first failure is reported.
    let route = match lease.router {
        Some(router) => socket.delete_dhcp_route(&default_route(index, router)),
        None => Ok(()),
    };
    let address = socket.delete_address(index, lease.address);
    route.and(address)
}

fn default_route(index: u32, router: Ipv4Addr) -> Route {
    Route {
        destination: Ipv4Net::default(),
        gateway: Some(router),
        interface: Some(index),
    }
}

/// Writes the configured resolvers, then the lease's that are not among them, when that
/// changes the file (through a temporary file renamed into place, so that readers never see
/// it empty).
pub fn write_resolvers(
    path: &Path,
    configured: &[IpAddr],
    lease: Option<&Lease>,
) -> std::io::Result<()> {
    let mut servers: Vec<IpAddr> = configured.to_vec();
    for server in lease.into_iter().flat_map(|l| &l.dns) {
        let server = IpAddr::V4(*server);
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    let text: String = servers
        .iter()
        .map(|server| format!("nameserver {server}\n"))
        .collect();
    if std::fs::read_to_string(path).is_ok_and(|now| now == text) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("dhcp-tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// Keeps `lease` (granted at `granted`) on the interface for as long as the process lives, on
/// a thread of its own.
pub fn keep_lease(
    mut client: DhcpClient,
    mut lease: Lease,
    mut granted: Instant,
    settings: KeepLeaseSettings,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("dhcp-{}", client.interface))
        .spawn(move || {
            loop {
                let step = match lease_phase(&lease, granted.elapsed()) {
                    LeasePhase::Bound { left } => {
                        std::thread::sleep(left);
                        continue;
                    }
                    LeasePhase::Renewing { retry } => (false, retry),
                    LeasePhase::Rebinding { retry } => (true, retry),
                    LeasePhase::Expired => {
                        tracing::warn!(interface = %client.interface, address = %lease.address, "the DHCP lease expired; asking for a new one");
                        (lease, granted) = start_over(&mut client, &settings, &lease);
                        continue;
                    }
                };
                let (rebind, retry) = step;
                let attempt_started = Instant::now();
                match client.extend(&lease, rebind, attempt_started + ATTEMPT.min(retry)) {
                    Ok(new) => {
                        tracing::info!(interface = %client.interface, address = %new.address, lease = ?new.lease_time, rebind, "DHCP lease extended");
                        update(&settings, Some(&lease), &new);
                        (lease, granted) = (new, attempt_started);
                    }
                    // The server took the address back (RFC 2131, 4.4.5: back to INIT).
                    Err(err @ super::DhcpExchangeError::Refused { .. }) => {
                        tracing::warn!(err = %baton_client::error_chain(&err), address = %lease.address, "the DHCP server refused the lease; asking for a new one");
                        (lease, granted) = start_over(&mut client, &settings, &lease);
                    }
                    Err(err) => {
                        tracing::warn!(err = %baton_client::error_chain(&err), "extending the DHCP lease");
                        std::thread::sleep(retry.saturating_sub(attempt_started.elapsed()));
                    }
                }
            }
        })
}

/// Takes `lease` off the interface and asks for a new one until it comes; the new lease and
/// when it was granted. Another address than before is logged as an error: the node's
/// services were started with the old one.
fn start_over(
    client: &mut DhcpClient,
    settings: &KeepLeaseSettings,
    lease: &Lease,
) -> (Lease, Instant) {
    if let Ok(mut socket) = RouteSocket::open()
        && let Err(err) = remove_lease(&mut socket, settings.index, lease)
    {
        tracing::warn!(err = %baton_client::error_chain(&err), "removing the DHCP lease");
    }
    let (new, granted) = acquire_until_granted(client);
    if new.address.addr() != lease.address.addr() {
        tracing::error!(before = %lease.address, now = %new.address, "the node's DHCP address changed; its services still use the one before until the node restarts");
    }
    update(settings, None, &new);
    (new, granted)
}

/// Asks for a lease until one is granted (30 s attempts, a pause of up to a minute between).
fn acquire_until_granted(client: &mut DhcpClient) -> (Lease, Instant) {
    let mut pause = Duration::from_secs(5);
    loop {
        let started = Instant::now();
        match client.acquire(started + ATTEMPT) {
            Ok(lease) => return (lease, started),
            Err(err) => {
                tracing::warn!(err = %baton_client::error_chain(&err), "asking for a DHCP lease");
                std::thread::sleep(pause);
                pause = (pause * 2).min(MIN_RETRY);
            }
        }
    }
}

/// Applies a new lease and rewrites the resolvers; failures are logged (the next step of the
/// keeper tries again).
fn update(settings: &KeepLeaseSettings, previous: Option<&Lease>, lease: &Lease) {
    let applied = RouteSocket::open().and_then(|mut socket| {
        apply_lease(
            &mut socket,
            settings.index,
            previous,
            lease,
            settings.configured_mtu,
        )
    });
    if let Err(err) = applied {
        tracing::warn!(err = %baton_client::error_chain(&err), "applying the DHCP lease");
    }
    if settings.writes_resolvers
        && let Err(err) = write_resolvers(&settings.resolv_conf, &settings.nameservers, Some(lease))
    {
        tracing::warn!(%err, path = %settings.resolv_conf.display(), "writing the resolvers of the DHCP lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(seconds: u64) -> Lease {
        Lease {
            address: "10.9.0.50/24".parse().unwrap(),
            router: None,
            dns: vec![Ipv4Addr::new(10, 9, 0, 53)],
            mtu: None,
            server: Ipv4Addr::new(10, 9, 0, 1),
            lease_time: Duration::from_secs(seconds),
            renew_after: Duration::from_secs(seconds / 2),
            rebind_after: Duration::from_secs(seconds * 7 / 8),
        }
    }

    #[test]
    fn a_lease_is_renewed_from_t1_rebound_from_t2_and_over_at_its_end() {
        let lease = lease(3600);
        let s = Duration::from_secs;
        // Renewing and rebinding: half the time left to the next stage, at least 60 s, never
        // past it (T2 is 3150 s).
        for (elapsed, phase) in [
            (0, LeasePhase::Bound { left: s(1800) }),
            (1800, LeasePhase::Renewing { retry: s(675) }),
            (3100, LeasePhase::Renewing { retry: s(50) }),
            (3150, LeasePhase::Rebinding { retry: s(225) }),
            (3599, LeasePhase::Rebinding { retry: s(1) }),
            (3600, LeasePhase::Expired),
        ] {
            assert_eq!(lease_phase(&lease, s(elapsed)), phase, "at {elapsed} s");
        }
    }

    #[test]
    fn resolvers_of_the_configuration_come_first_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");
        let configured: Vec<IpAddr> =
            vec!["10.9.0.53".parse().unwrap(), "1.1.1.1".parse().unwrap()];
        let mut lease = lease(3600);
        lease.dns.push(Ipv4Addr::new(10, 9, 0, 54));
        write_resolvers(&path, &configured, Some(&lease)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 10.9.0.53\nnameserver 1.1.1.1\nnameserver 10.9.0.54\n"
        );
    }
}
