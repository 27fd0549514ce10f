//! Which resolvers queries outside the cluster are forwarded to: the `--upstream` flags, else
//! the nameservers of /etc/resolv.conf (CoreDNS's `forward . /etc/resolv.conf`), never the
//! server itself.

use std::net::{IpAddr, SocketAddr};

/// The DNS port.
const DNS_PORT: u16 = 53;

/// Parses an `--upstream`: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("invalid upstream {text:?}: expected IP or IP:PORT"))
}

/// The `nameserver` addresses of a resolv.conf, port 53 (IPv6 zone suffixes dropped).
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let address = words.next()?;
            let address = address.split('%').next()?;
            address.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

/// `upstreams` without the addresses queries to which would come back to a server listening
/// on `listen`: the listen address itself and, when it is a wildcard, the loopback and
/// unspecified addresses of its port.
pub fn without_self(upstreams: Vec<SocketAddr>, listen: SocketAddr) -> Vec<SocketAddr> {
    upstreams
        .into_iter()
        .filter(|upstream| {
            let is_self = *upstream == listen
                || (upstream.port() == listen.port()
                    && listen.ip().is_unspecified()
                    && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()));
            if is_self {
                tracing::warn!(%upstream, "not forwarding to this server itself");
            }
            !is_self
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags_take_an_ip_with_or_without_a_port() {
        assert_eq!(
            parse_upstream("192.0.2.1"),
            Ok("192.0.2.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("192.0.2.1:5353"),
            Ok("192.0.2.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("2001:db8::1"),
            Ok("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:5353"),
            Ok("[2001:db8::1]:5353".parse().unwrap())
        );
        assert!(parse_upstream("dns.example").is_err());
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.1\n\
                    nameserver fe80::1%eth0\n  nameserver   192.0.2.2  \noptions ndots:5\n\
                    nameserver bogus\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "192.0.2.2:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn the_server_itself_is_never_an_upstream() {
        let upstreams: Vec<SocketAddr> = ["127.0.0.1:53", "127.0.0.53:53", "192.0.2.1:53"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            without_self(upstreams.clone(), "0.0.0.0:53".parse().unwrap()),
            vec!["192.0.2.1:53".parse().unwrap()]
        );
        assert_eq!(
            without_self(upstreams.clone(), "127.0.0.1:53".parse().unwrap()),
            upstreams[1..].to_vec()
        );
        assert_eq!(
            without_self(upstreams.clone(), "0.0.0.0:5353".parse().unwrap()),
            upstreams
        );
    }
}
