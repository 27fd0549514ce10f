//! The network interfaces resource: each a virtio-net device whose host side is a tap
//! device, named by the caller, in the VMM's network namespace or a given one.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// One entry of the file's `network-interfaces` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetFile {
    /// The tap device's name: attached when it exists (a persistent tap), made otherwise.
    pub tap: String,
    /// The guest's MAC address, `xx:xx:xx:xx:xx:xx` [default: a random locally administered
    /// one].
    pub mac: Option<String>,
    /// A network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`) to open the tap in.
    pub netns: Option<PathBuf>,
}

/// A validated network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap device's name (1 to 15 bytes, no `/`).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The network namespace to open the tap in (an existing file), or the VMM's own.
    pub netns: Option<PathBuf>,
}

impl NetConfig {
    /// Parses `TAP[,mac=MAC][,netns=PATH]` as `--net` takes it.
    pub fn parse_flag(value: &str) -> Result<NetFile, ConfigError> {
        let bad = |reason: String| ConfigError::Net {
            value: value.to_owned(),
            reason,
        };
        let mut parts = value.split(',');
        let tap = parts.next().unwrap_or_default().to_owned();
        let mut net = NetFile {
            tap,
            mac: None,
            netns: None,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("mac", mac)) => net.mac = Some(mac.to_owned()),
                Some(("netns", path)) => net.netns = Some(PathBuf::from(path)),
                _ => {
                    return Err(bad(format!(
                        "unknown option {part:?}; expected TAP[,mac=MAC][,netns=PATH]"
                    )));
                }
            }
        }
        Ok(net)
    }

    /// Checks the name, the MAC address and the namespace file.
    pub fn new(net: NetFile) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Net {
            value: net.tap.clone(),
            reason,
        };
        if net.tap.is_empty()
            || net.tap.len() >= 16
            || net.tap.contains(['/', ' ', ','])
            || net.tap == "."
            || net.tap == ".."
        {
            return Err(bad(
                "not an interface name (1 to 15 bytes, no / , or space)".into(),
            ));
        }
        let mac = match &net.mac {
            Some(text) => parse_mac(text).ok_or_else(|| {
                bad(format!(
                    "mac {text:?}: expected six hex bytes, xx:xx:xx:xx:xx:xx"
                ))
            })?,
            None => random_mac(),
        };
        if mac[0] & 1 != 0 {
            return Err(bad(format!(
                "mac {}: a multicast address cannot be a NIC's",
                format_mac(&mac)
            )));
        }
        if let Some(path) = &net.netns
            && !path.exists()
        {
            return Err(bad(format!("netns {}: no such file", path.display())));
        }
        Ok(Self {
            tap: net.tap,
            mac,
            netns: net.netns,
        })
    }
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `xx:xx:xx:xx:xx:xx`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random unicast, locally administered MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if getrandom::fill(&mut mac).is_err() {
        mac = [0, 0, 0, 0, 0, std::process::id() as u8];
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:01"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 1])
        );
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 1]),
            "52:54:00:ab:cd:01"
        );
        let random = random_mac();
        assert_eq!(random[0] & 3, 2, "unicast, locally administered");
    }

    #[test]
    fn flags_and_errors() {
        let net =
            NetConfig::new(NetConfig::parse_flag("tap0,mac=52:54:00:00:00:01").unwrap()).unwrap();
        assert_eq!(net.tap, "tap0");
        assert_eq!(net.mac, [0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(net.netns, None);
        let check = |value: &str, expected: &str| {
            let err = NetConfig::parse_flag(value)
                .and_then(NetConfig::new)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--net (network-interfaces)"), "{err}");
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        };
        check("tap0,speed=10", "unknown option \"speed=10\"");
        check(",mac=52:54:00:00:00:01", "not an interface name");
        check("a-name-that-is-too-long", "not an interface name");
        check("tap0,mac=52:54:00", "expected six hex bytes");
        check("tap0,mac=01:00:5e:00:00:01", "multicast");
        check("tap0,netns=/nonexistent/ns", "no such file");
    }
}
