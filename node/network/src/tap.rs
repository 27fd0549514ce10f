//! TAP devices (a VM's network interface on the host side), made and opened through
//! /dev/net/tun's ioctls: the one thing about links rtnetlink cannot create. A persistent tap
//! outlives the descriptor that made it; QEMU opens it again by name, and it goes away with
//! its network namespace.

use std::os::fd::AsRawFd;

/// Why a tap device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateTapError {
    /// The name does not fit an interface name.
    #[error("{0:?} is not an interface name (1 to 15 bytes)")]
    Name(String),
    /// /dev/net/tun could not be opened (the tun module missing, or not root).
    #[error("opening /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// The kernel refused the device.
    #[error("creating tap device {name} ({call})")]
    Ioctl {
        /// The device.
        name: String,
        /// TUNSETIFF or TUNSETPERSIST.
        call: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Makes a persistent tap device `name` (no packet information header, with virtio-net
/// headers, as QEMU's virtio NIC uses it) in the calling thread's network namespace. The
/// device stays down and unattached: see `RouteSocket::set_link`.
pub fn create_tap(name: &str) -> Result<(), CreateTapError> {
    let tun = attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    if tun_ioctl(&tun, TUNSETPERSIST, 1) < 0 {
        return Err(CreateTapError::Ioctl {
            name: name.to_string(),
            call: "TUNSETPERSIST",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Opens tap device `name` for frames without a packet information or virtio-net header,
/// in the calling thread's network namespace: a persistent tap of that name is attached, and
/// otherwise a new one is made that goes away when the returned file is closed.
pub fn open_tap(name: &str) -> Result<std::fs::File, CreateTapError> {
    attach(name, IFF_TAP | IFF_NO_PI)
}

/// TUNSETIFF on a new /dev/net/tun descriptor.
fn attach(name: &str, flags: libc::c_short) -> Result<std::fs::File, CreateTapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(CreateTapError::Name(name.to_string()));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(CreateTapError::Open)?;
    let mut request = TunRequest {
        name: [0; libc::IFNAMSIZ],
        flags,
        _rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    if tun_ioctl(
        &tun,
        TUNSETIFF,
        &mut request as *mut TunRequest as libc::c_ulong,
    ) < 0
    {
        return Err(CreateTapError::Ioctl {
            name: name.to_string(),
            call: "TUNSETIFF",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tun)
}

#[allow(unsafe_code)]
fn tun_ioctl(tun: &std::fs::File, request: libc::c_ulong, argument: libc::c_ulong) -> libc::c_int {
    // SAFETY: `tun` is an open /dev/net/tun descriptor; TUNSETIFF's argument is the address of
    // a live `TunRequest` laid out as `struct ifreq`'s name and flags, padded to its size;
    // TUNSETPERSIST takes an integer.
    unsafe { libc::ioctl(tun.as_raw_fd(), request, argument) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetNs, RouteSocket};

    #[test]
    fn a_tap_outlives_its_descriptor_and_goes_with_its_namespace() {
        let namespace = NetNs::create().unwrap();
        let found = namespace
            .run(|| {
                create_tap("tap-test0").unwrap();
                let mut socket = RouteSocket::open().unwrap();
                let link = socket.link("tap-test0").unwrap();
                socket
                    .set_link(link.as_ref().unwrap().index, None, Some(1400))
                    .unwrap();
                link.is_some()
            })
            .unwrap();
        assert!(found);
        let err = create_tap("a-name-far-too-long").unwrap_err();
        assert!(err.to_string().contains("a-name-far-too-long"), "{err}");
    }
}
