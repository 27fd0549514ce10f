//! The wire format: netlink attributes (nested, big-endian numbers as nf_tables wants them) and
//! nfnetlink message headers.

/// Attribute type flag: the payload is a list of attributes.
const NLA_F_NESTED: u16 = 0x8000;

/// Builds one message's attributes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attributes {
    bytes: Vec<u8>,
}

impl Attributes {
    pub(crate) fn new() -> Self {
        // Most messages (a rule, a chain, a few elements) fit without growing.
        Self {
            bytes: Vec::with_capacity(256),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// An attribute holding raw bytes.
    pub(crate) fn raw(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let start = self.header(kind);
        self.bytes.extend_from_slice(value);
        self.finish(start)
    }

    /// A NUL-terminated string.
    pub(crate) fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let start = self.header(kind);
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.push(0);
        self.finish(start)
    }

    /// Starts an attribute of `kind` (its length written by [`Attributes::finish`]); returns
    /// where it starts.
    fn header(&mut self, kind: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        start
    }

    /// Writes the length of the attribute that starts at `start` and pads it to 4 bytes.
    fn finish(&mut self, start: usize) -> &mut Self {
        let length = u16::try_from(self.bytes.len() - start).expect("attribute fits");
        self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
        self
    }

    /// A big-endian u32.
    pub(crate) fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.raw(kind, &value.to_be_bytes())
    }

    /// A big-endian u64.
    pub(crate) fn be64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.raw(kind, &value.to_be_bytes())
    }

    /// A nested attribute built by `build` (written in place).
    pub(crate) fn nested(&mut self, kind: u16, build: impl FnOnce(&mut Attributes)) -> &mut Self {
        let start = self.header(kind | NLA_F_NESTED);
        build(self);
        self.finish(start)
    }

    /// The bytes, taken.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Netlink message header flags.
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// The netlink "error" message type (acknowledgements included).
pub(crate) const NLMSG_ERROR: u16 = 0x2;
/// The end of a dump.
pub(crate) const NLMSG_DONE: u16 = 0x3;

/// nfnetlink's nf_tables subsystem.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;

/// Appends one nfnetlink message: the netlink header, the nfgenmsg header and `attributes`.
pub(crate) fn push_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    sequence: u32,
    family: u8,
    resource: u16,
    attributes: &[u8],
) {
    let length = 16 + 4 + attributes.len();
    out.extend_from_slice(&u32::try_from(length).expect("message fits").to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&resource.to_be_bytes());
    out.extend_from_slice(attributes);
}

/// One received netlink message: its type, sequence number and payload (after the header).
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub(crate) kind: u16,
    pub(crate) sequence: u32,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into its messages.
pub(crate) fn split_messages(mut data: &[u8]) -> Vec<Received<'_>> {
    let mut messages = Vec::new();
    while data.len() >= 16 {
        let length = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if length < 16 || length > data.len() {
            break;
        }
        messages.push(Received {
            kind: u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes")),
            sequence: u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes")),
            payload: &data[16..length],
        });
        data = &data[length.next_multiple_of(4).min(data.len())..];
    }
    messages
}

/// The attributes of a payload, as (type without flags, value).
pub(crate) fn parse_attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while data.len() >= 4 {
        let length = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_F_NESTED & 0x3fff;
        if length < 4 || length > data.len() {
            break;
        }
        found.push((kind, &data[4..length]));
        data = &data[length.next_multiple_of(4).min(data.len())..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut attributes = Attributes::new();
        attributes.string(1, "ab").nested(2, |inner| {
            inner.be32(1, 0x0102_0304);
        });
        let bytes = attributes.bytes();
        // "ab\0" takes 4 + 3 bytes, padded to 8.
        assert_eq!(&bytes[0..8], &[7, 0, 1, 0, b'a', b'b', 0, 0]);
        // The nested attribute: length 4 + 8, type 2 | NLA_F_NESTED.
        assert_eq!(&bytes[8..12], &[12, 0, 2, 0x80]);
        assert_eq!(&bytes[12..20], &[8, 0, 1, 0, 1, 2, 3, 4]);
        let parsed = parse_attributes(bytes);
        assert_eq!(parsed[0], (1, &b"ab\0"[..]));
        assert_eq!(
            parse_attributes(parsed[1].1),
            vec![(1, &[1u8, 2, 3, 4][..])]
        );
    }
}
