//! Host-gateway routing: a route to every other node's pod CIDR through that node's address on
//! the shared network. Only routes Baton marked as its own are ever removed.

use std::collections::HashSet;

use crate::netlink::{NetlinkError, RouteSocket};
use crate::routes::Route;

/// What a sync changed.
#[derive(Debug, Default)]
pub struct RouteChanges {
    /// Routes added.
    pub added: Vec<Route>,
    /// Routes removed.
    pub removed: Vec<Route>,
    /// Routes that could not be added, with why (e.g. a gateway not on a local network).
    pub failed: Vec<(Route, NetlinkError)>,
}

/// Makes Baton's routes in the calling thread's namespace exactly `wanted`: adds the missing,
/// removes the others Baton made. A route that cannot be added does not stop the rest.
pub fn sync_node_routes(wanted: &[Route]) -> Result<RouteChanges, NetlinkError> {
    let mut socket = RouteSocket::open()?;
    // The kernel reports the outgoing interface of every route; a wanted route through a
    // gateway leaves it to the kernel, so it is compared without it.
    let present: Vec<Route> = socket
        .baton_routes()?
        .into_iter()
        .map(|route| Route {
            interface: if route.gateway.is_some() {
                None
            } else {
                route.interface
            },
            ..route
        })
        .collect();
    let wanted_set: HashSet<&Route> = wanted.iter().collect();
    let present_set: HashSet<&Route> = present.iter().collect();
    let mut changes = RouteChanges::default();
    for route in &present {
        if !wanted_set.contains(route) {
            socket.delete_route(route)?;
            changes.removed.push(*route);
        }
    }
    for route in wanted {
        if present_set.contains(route) {
            continue;
        }
        // Another route to the same destination (an old gateway) goes first.
        if let Some(old) = present.iter().find(|p| p.destination == route.destination) {
            socket.delete_route(old)?;
        }
        match socket.add_route(route) {
            Ok(()) => changes.added.push(*route),
            Err(err) => changes.failed.push((*route, err)),
        }
    }
    Ok(changes)
}
