//! A synchronous rtnetlink socket: one request at a time, answered by an acknowledgement or a
//! dump. Opened in the calling thread's network namespace, it keeps acting there whichever
//! thread uses it later.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink request failed; `operation` says what was asked (e.g. `add address 10.0.0.1/24
/// to baton0`).
#[derive(Debug, thiserror::Error)]
#[error("{operation}")]
pub struct NetlinkError {
    /// What was asked of the kernel.
    pub operation: String,
    /// The kernel's (or the socket's) answer.
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    /// The kernel's errno, when it answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The object asked for does not exist (ENODEV, ENOENT, ESRCH).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENODEV | libc_errno::ENOENT | libc_errno::ESRCH)
        )
    }

    /// The object to create exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }
}

/// The errno values this crate tells apart.
mod libc_errno {
    pub const ENOENT: i32 = nix::libc::ENOENT;
    pub const ESRCH: i32 = nix::libc::ESRCH;
    pub const ENODEV: i32 = nix::libc::ENODEV;
    pub const EEXIST: i32 = nix::libc::EEXIST;
}

/// How a request that changes something treats an object that exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Fail with EEXIST.
    Exclusive,
    /// Not a creation (a change or a deletion).
    No,
}

/// An rtnetlink socket bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let fail = |source| NetlinkError {
            operation: "open an rtnetlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends a request that changes something and waits for the kernel's acknowledgement.
    pub fn change(
        &mut self,
        operation: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        create: Create,
    ) -> Result<(), NetlinkError> {
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        if create == Create::Exclusive {
            flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        self.exchange(message, flags)
            .map(drop)
            .map_err(|source| NetlinkError {
                operation: operation(),
                source,
            })
    }

    /// Sends a request for one object and returns the kernel's answer (`None` when the kernel
    /// says it does not exist).
    pub fn get(
        &mut self,
        operation: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Option<RouteNetlinkMessage>, NetlinkError> {
        match self.exchange(message, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(mut answers) => Ok(answers.pop()),
            Err(source) => {
                let error = NetlinkError {
                    operation: operation(),
                    source,
                };
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Sends a dump request and returns every message of the answer.
    pub fn dump(
        &mut self,
        operation: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP)
            .map_err(|source| NetlinkError {
                operation: operation(),
                source,
            })
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        exchange(&self.socket, &mut self.sequence, message, flags)
    }
}

/// Sends `message` with `flags` on `socket` and collects the answers to it: the messages of a
/// dump until its end, or nothing but the acknowledgement; an error answer as its errno.
pub(crate) fn exchange<M>(
    socket: &Socket,
    sequence: &mut u32,
    message: M,
    flags: u16,
) -> io::Result<Vec<M>>
where
    M: netlink_packet_core::NetlinkSerializable
        + netlink_packet_core::NetlinkDeserializable
        + std::fmt::Debug,
{
    *sequence = sequence.wrapping_add(1);
    let sequence = *sequence;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let mut buffer = vec![0u8; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut answers = Vec::new();
    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        socket.recv(&mut received, 0)?;
        let mut offset = 0;
        while offset < received.len() {
            let answer = NetlinkMessage::<M>::deserialize(&received[offset..])
                .map_err(|err| io::Error::other(format!("decode netlink answer: {err}")))?;
            let length = answer.header.length as usize;
            if length == 0 {
                return Err(io::Error::other("netlink answer of length 0"));
            }
            offset += length;
            if answer.header.sequence_number != sequence {
                continue;
            }
            match answer.payload {
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None if !dump => Ok(answers),
                        None => continue,
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                _ => {}
            }
        }
    }
}
