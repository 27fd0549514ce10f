//! Sending batches and reading tables back over a NETLINK_NETFILTER socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use crate::batch::{Batch, Element, Family};
use crate::netlink::{
    Attributes, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, parse_attributes, push_message,
    split_messages,
};

/// The netlink protocol of netfilter.
const NETLINK_NETFILTER: isize = 12;

/// The send buffer a netlink socket starts with (net.core.wmem_default), roughly.
const DEFAULT_SEND_BUFFER: usize = 200 * 1024;

/// How long the kernel may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Applying a batch failed; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
#[error("{operation}")]
pub struct ApplyBatchError {
    /// The change the kernel refused (or the socket step that failed).
    pub operation: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// A socket to the kernel's nf_tables, in the calling thread's network namespace.
#[derive(Debug)]
pub struct NftSocket {
    socket: Socket,
    sequence: u32,
    /// The send buffer's size, grown for large batches.
    send_buffer: usize,
}

fn socket_error(operation: &str) -> impl FnOnce(io::Error) -> ApplyBatchError + '_ {
    move |source| ApplyBatchError {
        operation: operation.to_owned(),
        source,
    }
}

impl NftSocket {
    /// Opens the socket.
    pub fn open() -> Result<Self, ApplyBatchError> {
        let fail = socket_error("open a netfilter netlink socket");
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(fail)?;
        socket
            .bind_auto()
            .map_err(socket_error("bind a netfilter netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(socket_error("connect a netfilter netlink socket"))?;
        let fd = socket.as_fd();
        let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|errno| socket_error("set the netlink answer timeout")(errno.into()))?;
        // Large batches get large answers (one acknowledgement per message).
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        Ok(Self {
            socket,
            sequence: std::process::id().wrapping_mul(1 << 12),
            send_buffer: DEFAULT_SEND_BUFFER,
        })
    }

    /// Applies `batch` atomically; on error, names the change the kernel refused.
    ///
    /// Only the last message asks for an acknowledgement: the kernel processes the whole batch
    /// and reports every refused message before that acknowledgement, so one answer (not one
    /// per message) tells how it went, which keeps large syncs cheap.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), ApplyBatchError> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = self.sequence.wrapping_add(1);
        let count = batch.messages.len();
        // Each message: its attributes behind a 16-byte netlink and a 4-byte nfgenmsg header.
        let mut buffer = Vec::with_capacity(
            batch
                .messages
                .iter()
                .map(|m| m.attributes.len() + 20)
                .sum::<usize>()
                + 40,
        );
        push_message(
            &mut buffer,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        for (index, message) in batch.messages.iter().enumerate() {
            let sequence = first.wrapping_add(1 + index as u32);
            let flags = if index + 1 == count {
                message.flags | NLM_F_ACK
            } else {
                message.flags
            };
            push_message(
                &mut buffer,
                (NFNL_SUBSYS_NFTABLES << 8) | message.kind,
                flags,
                sequence,
                message.family,
                0,
                &message.attributes,
            );
        }
        let end = first.wrapping_add(1 + count as u32);
        push_message(
            &mut buffer,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.sequence = end;
        // The whole batch goes in one message; make room for it.
        if buffer.len() > self.send_buffer {
            let size = buffer.len().next_power_of_two();
            nix::sys::socket::setsockopt(
                &self.socket.as_fd(),
                nix::sys::socket::sockopt::SndBufForce,
                &size,
            )
            .map_err(|errno| socket_error("grow the netlink send buffer")(errno.into()))?;
            self.send_buffer = size;
        }
        self.socket
            .send(&buffer, 0)
            .map_err(socket_error("send an nftables batch"))?;

        let last = first.wrapping_add(count as u32);
        let mut refused: Option<ApplyBatchError> = None;
        let mut received = Vec::with_capacity(256 * 1024);
        loop {
            received.clear();
            self.socket.recv(&mut received, 0).map_err(socket_error(
                "read the kernel's answer to an nftables batch",
            ))?;
            for message in split_messages(&received) {
                if message.kind == NLMSG_ERROR && message.sequence == first {
                    // The kernel refused the batch as a whole (permissions, an unsupported
                    // request): answered on the batch's own sequence number, nothing follows.
                    let code = i32::from_ne_bytes(message.payload[0..4].try_into().expect("errno"));
                    if code != 0 {
                        return Err(ApplyBatchError {
                            operation: "apply an nftables batch".into(),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                }
                let index = message.sequence.wrapping_sub(first).wrapping_sub(1) as usize;
                if message.kind != NLMSG_ERROR || index >= count {
                    continue;
                }
                let code = i32::from_ne_bytes(message.payload[0..4].try_into().expect("errno"));
                if code != 0 && refused.is_none() {
                    refused = Some(ApplyBatchError {
                        operation: batch.messages[index].describe(),
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
                if message.sequence == last {
                    return match refused {
                        Some(err) => Err(err),
                        None => Ok(()),
                    };
                }
            }
        }
    }

    /// Names of the tables of `family`.
    pub fn tables(&mut self, family: Family) -> Result<Vec<String>, ApplyBatchError> {
        self.dump(1, family, &[]).map(|objects| {
            objects
                .iter()
                .filter_map(|attributes| string_attribute(attributes, 1))
                .collect()
        })
    }

    /// Names of the chains of `table`.
    pub fn chains(&mut self, family: Family, table: &str) -> Result<Vec<String>, ApplyBatchError> {
        let objects = self.dump(4, family, &[])?;
        Ok(objects
            .iter()
            .filter(|a| string_attribute(a, 1).as_deref() == Some(table))
            .filter_map(|a| string_attribute(a, 3))
            .collect())
    }

    /// Names of the sets and maps of `table`.
    pub fn sets(&mut self, family: Family, table: &str) -> Result<Vec<String>, ApplyBatchError> {
        // NFT_MSG_GETSET = 10; NFTA_SET_TABLE = 1, NFTA_SET_NAME = 2.
        let objects = self.dump(10, family, &[])?;
        Ok(objects
            .iter()
            .filter(|a| string_attribute(a, 1).as_deref() == Some(table))
            .filter_map(|a| string_attribute(a, 2))
            .collect())
    }

    /// The elements of set `set` of `table`: keys and data values (verdicts are not read
    /// back).
    pub fn set_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Vec<Element>, ApplyBatchError> {
        // NFT_MSG_GETSETELEM = 13; NFTA_SET_ELEM_LIST_TABLE = 1, _SET = 2, _ELEMENTS = 3.
        let mut request = Attributes::new();
        request.string(1, table).string(2, set);
        let objects = self.dump(13, family, request.bytes())?;
        let value = |nested: &[u8]| {
            parse_attributes(nested)
                .into_iter()
                .find(|(k, _)| *k == 1)
                .map(|(_, v)| v.to_vec())
        };
        let mut elements = Vec::new();
        for object in &objects {
            for (kind, list) in parse_attributes(object) {
                if kind != 3 {
                    continue;
                }
                for (_, element) in parse_attributes(list) {
                    let mut found = Element::default();
                    for (kind, attribute) in parse_attributes(element) {
                        match kind {
                            1 => found.key = value(attribute).unwrap_or_default(),
                            2 => found.data = value(attribute),
                            _ => {}
                        }
                    }
                    elements.push(found);
                }
            }
        }
        Ok(elements)
    }

    /// Number of rules in `table`.
    pub fn rule_count(&mut self, family: Family, table: &str) -> Result<usize, ApplyBatchError> {
        let objects = self.dump(7, family, &[])?;
        Ok(objects
            .iter()
            .filter(|a| string_attribute(a, 1).as_deref() == Some(table))
            .count())
    }

    fn dump(
        &mut self,
        kind: u16,
        family: Family,
        attributes: &[u8],
    ) -> Result<Vec<Vec<u8>>, ApplyBatchError> {
        self.dump_subsystem((NFNL_SUBSYS_NFTABLES << 8) | kind, family as u8, attributes)
    }

    /// Sends one message outside a batch; returns its sequence number.
    fn send_one(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        attributes: &[u8],
    ) -> Result<u32, io::Error> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut buffer = Vec::new();
        push_message(
            &mut buffer,
            kind,
            flags,
            self.sequence,
            family,
            0,
            attributes,
        );
        self.socket.send(&buffer, 0)?;
        Ok(self.sequence)
    }

    /// Sends one request of nfnetlink message type `kind` (subsystem and message) and waits
    /// for its acknowledgement.
    pub(crate) fn request(
        &mut self,
        kind: u16,
        family: u8,
        attributes: &[u8],
    ) -> Result<(), io::Error> {
        let sequence = self.send_one(kind, NLM_F_REQUEST | NLM_F_ACK, family, attributes)?;
        let mut received = Vec::with_capacity(64 * 1024);
        loop {
            received.clear();
            self.socket.recv(&mut received, 0)?;
            for message in split_messages(&received) {
                if message.sequence == sequence && message.kind == NLMSG_ERROR {
                    let code = i32::from_ne_bytes(message.payload[0..4].try_into().expect("errno"));
                    return match code {
                        0 => Ok(()),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
            }
        }
    }

    /// The objects a dump of nfnetlink message type `kind` (subsystem and message) answers:
    /// each one's attributes.
    pub(crate) fn dump_subsystem(
        &mut self,
        kind: u16,
        family: u8,
        attributes: &[u8],
    ) -> Result<Vec<Vec<u8>>, ApplyBatchError> {
        let sequence = self
            .send_one(
                kind,
                NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK,
                family,
                attributes,
            )
            .map_err(socket_error("send a netfilter dump request"))?;
        let mut objects = Vec::new();
        let mut received = Vec::with_capacity(256 * 1024);
        loop {
            received.clear();
            self.socket
                .recv(&mut received, 0)
                .map_err(socket_error("read a netfilter dump"))?;
            for message in split_messages(&received) {
                if message.sequence != sequence {
                    continue;
                }
                match message.kind {
                    NLMSG_DONE => return Ok(objects),
                    NLMSG_ERROR => {
                        let code =
                            i32::from_ne_bytes(message.payload[0..4].try_into().expect("errno"));
                        if code != 0 {
                            return Err(socket_error("dump netfilter objects")(
                                io::Error::from_raw_os_error(-code),
                            ));
                        }
                    }
                    _ => objects.push(message.payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }
}

fn string_attribute(attributes: &[u8], kind: u16) -> Option<String> {
    parse_attributes(attributes)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, value)| {
            String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned()
        })
}

impl AsRawFd for NftSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}
