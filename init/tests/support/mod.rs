//! What the tests of init's network code share: a machine namespace wired by a veth pair to
//! a server namespace, and Debian's dnsmasq as the DHCP server there.

#![allow(dead_code)] // Each test crate uses its own part.

use std::process::{Child, Command};

use baton_network::{NetNs, RouteSocket};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A server process (dnsmasq, chronyd), killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A machine namespace with `eth0`, wired to a server namespace whose end holds 10.77.0.1/24.
pub fn wire() -> (NetNs, NetNs) {
    let server = NetNs::create().unwrap();
    let machine = NetNs::create().unwrap();
    server
        .run(|| {
            let mut socket = RouteSocket::open().unwrap();
            socket
                .create_veth("dhcp-srv", "eth0", &machine, 1500)
                .unwrap();
            let link = socket.link("dhcp-srv").unwrap().unwrap();
            socket.set_link(link.index, None, None).unwrap();
            socket
                .add_address(link.index, "10.77.0.1/24".parse().unwrap())
                .unwrap();
        })
        .unwrap();
    (server, machine)
}

/// dnsmasq in `namespace` handing out `range` with `router`, its lease file in `dir`.
pub fn start_dnsmasq(
    namespace: &NetNs,
    dir: &std::path::Path,
    range: &str,
    router: &str,
) -> Server {
    namespace
        .run(|| {
            Command::new(DNSMASQ)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--interface=dhcp-srv",
                    "--bind-interfaces",
                    &format!("--dhcp-range={range},255.255.255.0,2m"),
                    &format!("--dhcp-option=option:router,{router}"),
                    "--dhcp-option=option:dns-server,10.77.0.53",
                    "--dhcp-option=option:mtu,1400",
                    "--dhcp-authoritative",
                    &format!("--dhcp-leasefile={}", dir.join("leases").display()),
                    &format!("--pid-file={}", dir.join("pid").display()),
                ])
                .spawn()
                .map(Server)
        })
        .unwrap()
        .unwrap()
}

/// `ip -4 route show default` in the calling thread's namespace.
pub fn default_routes() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
