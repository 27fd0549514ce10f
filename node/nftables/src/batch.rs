//! A batch of nf_tables changes, applied atomically: the kernel applies all of it or none.

use crate::expr::{Expr, Verdict};
use crate::netlink::{Attributes, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

/// nf_tables message types.
mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const NEWCHAIN: u16 = 3;
    pub const NEWRULE: u16 = 6;
    pub const DELRULE: u16 = 8;
    pub const NEWSET: u16 = 9;
    pub const NEWSETELEM: u16 = 12;
    pub const DELSETELEM: u16 = 14;
    pub const DELTABLE: u16 = 2;
    pub const DELCHAIN: u16 = 5;
    pub const DELSET: u16 = 11;
}

/// Address families of tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`ip`).
    Ip = 2,
    /// IPv4 and IPv6 (`inet`).
    Inet = 1,
}

/// Netfilter hooks of the inet families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Before routing.
    Prerouting = 0,
    /// To this host.
    Input = 1,
    /// Routed through this host.
    Forward = 2,
    /// From this host.
    Output = 3,
    /// After routing.
    Postrouting = 4,
}

/// What a base chain is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `nat` or `filter`.
    pub kind: &'static str,
    /// The hook.
    pub hook: Hook,
    /// Its priority (dstnat -100, srcnat 100, filter 0).
    pub priority: i32,
}

/// nf_tables data types of set keys and values (as `nft` names them, for listing).
pub mod data_type {
    /// An IPv4 address.
    pub const IPV4_ADDR: u32 = 7;
    /// A layer 4 protocol number.
    pub const INET_PROTO: u32 = 12;
    /// A port.
    pub const INET_SERVICE: u32 = 13;
    /// A verdict (the value of a verdict map).
    pub const VERDICT: u32 = 0xffff_ff00;

    /// The type of a concatenation of `types`.
    pub fn concat(types: &[u32]) -> u32 {
        types.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetSpec {
    /// Its name.
    pub name: String,
    /// The key's data type ([`data_type`]).
    pub key_type: u32,
    /// The key's length in bytes (each field of a concatenation padded to 4).
    pub key_len: u32,
    /// A verdict map (values are verdicts) rather than a plain set.
    pub verdict_map: bool,
    /// A data map: the values' data type and length in bytes (each field of a concatenation
    /// padded to 4), loaded into the lookup's destination registers.
    pub data: Option<(u32, u32)>,
    /// Elements expire this long after they were last added or updated (a set the packet
    /// path updates, through [`Expr::UpdateSet`](crate::Expr::UpdateSet)).
    pub timeout_ms: Option<u64>,
    /// A set of ranges over a concatenation of fields of these lengths in bytes (the
    /// kernel's `pipapo` set): each element holds its first key and its last
    /// ([`Element::key_end`]), and a key in between matches.
    pub interval_fields: Option<Vec<u32>>,
}

/// One element of a set or map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Element {
    /// The key's bytes, as the lookup's register holds them.
    pub key: Vec<u8>,
    /// In a set of ranges, the last key the element matches (`key` is the first).
    pub key_end: Option<Vec<u8>>,
    /// A verdict map's value.
    pub verdict: Option<Verdict>,
    /// A data map's value.
    pub data: Option<Vec<u8>>,
}

impl Element {
    /// An element of a plain set.
    pub fn key(key: Vec<u8>) -> Self {
        Element {
            key,
            ..Element::default()
        }
    }
}

/// One nf_tables message of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) family: u8,
    pub(crate) attributes: Vec<u8>,
    /// What it does, for error messages: a verb, and the attribute holding the name of what it
    /// changes (read back only when the kernel refuses it, so a large batch formats nothing).
    verb: &'static str,
    name_attribute: u16,
}

impl Message {
    /// What the message does, e.g. `add rule to chain services`.
    pub(crate) fn describe(&self) -> String {
        let name = crate::netlink::parse_attributes(&self.attributes)
            .into_iter()
            .find(|(kind, _)| *kind == self.name_attribute)
            .map(|(_, value)| {
                String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned()
            })
            .unwrap_or_default();
        format!("{} {name}", self.verb)
    }
}

/// Messages waiting to be sent, with what each one does (for error messages).
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) messages: Vec<Message>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `other`'s changes after this batch's.
    pub fn append(&mut self, other: Batch) -> &mut Self {
        self.messages.extend(other.messages);
        self
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn push(
        &mut self,
        kind: u16,
        flags: u16,
        family: Family,
        attributes: Attributes,
        (verb, name_attribute): (&'static str, u16),
    ) {
        self.messages.push(Message {
            kind,
            flags: flags | NLM_F_REQUEST,
            family: family as u8,
            attributes: attributes.into_bytes(),
            verb,
            name_attribute,
        });
    }

    /// Creates table `name` (nothing if it exists).
    pub fn add_table(&mut self, family: Family, name: &str) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, name);
        self.push(msg::NEWTABLE, NLM_F_CREATE, family, a, ("add table", 1));
        self
    }

    /// Deletes table `name` and everything in it (nothing if it does not exist). It is made
    /// first and then deleted, as `nft` does for kernels before 6.3, which lack the
    /// delete-if-present message (Debian bookworm's 6.1 among them).
    pub fn destroy_table(&mut self, family: Family, name: &str) -> &mut Self {
        self.add_table(family, name);
        let mut a = Attributes::new();
        a.string(1, name);
        self.push(msg::DELTABLE, 0, family, a, ("delete table", 1));
        self
    }

    /// Creates chain `name` (nothing if it exists); a base chain when `base` is given.
    pub fn add_chain(
        &mut self,
        family: Family,
        table: &str,
        name: &str,
        base: Option<&BaseChain>,
    ) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, table).string(3, name);
        if let Some(base) = base {
            a.nested(4, |hook| {
                hook.be32(1, base.hook as u32).be32(2, base.priority as u32);
            });
            // NF_ACCEPT policy.
            a.be32(5, 1).string(7, base.kind);
        }
        self.push(msg::NEWCHAIN, NLM_F_CREATE, family, a, ("add chain", 3));
        self
    }

    /// Removes every rule of chain `name`.
    pub fn flush_chain(&mut self, family: Family, table: &str, name: &str) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, table).string(2, name);
        self.push(msg::DELRULE, 0, family, a, ("flush chain", 2));
        self
    }

    /// Deletes chain `name`, which must exist and have no rules and no references left.
    pub fn delete_chain(&mut self, family: Family, table: &str, name: &str) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, table).string(3, name);
        self.push(msg::DELCHAIN, 0, family, a, ("delete chain", 3));
        self
    }

    /// Appends a rule of `exprs` to chain `chain`.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
    ) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, table).string(2, chain).nested(4, |list| {
            for expr in exprs {
                // NFTA_LIST_ELEM = 1.
                list.nested(1, |e| expr.encode(e));
            }
        });
        self.push(
            msg::NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            a,
            ("add rule to chain", 2),
        );
        self
    }

    /// Creates a named set or map (nothing if it exists).
    pub fn add_set(&mut self, family: Family, table: &str, set: &SetSpec) -> &mut Self {
        let mut a = Attributes::new();
        // NFT_SET_INTERVAL = 0x4, NFT_SET_MAP = 0x8, NFT_SET_TIMEOUT = 0x10, NFT_SET_EVAL
        // (updated from the packet path) = 0x20, NFT_SET_CONCAT = 0x80.
        let mut flags = 0;
        if set.interval_fields.is_some() {
            flags |= 0x4 | 0x80;
        }
        if set.verdict_map || set.data.is_some() {
            flags |= 0x8;
        }
        if set.timeout_ms.is_some() {
            flags |= 0x10 | 0x20;
        }
        a.string(1, table)
            .string(2, &set.name)
            .be32(3, flags)
            .be32(4, set.key_type)
            .be32(5, set.key_len)
            .be32(10, 1);
        if set.verdict_map {
            a.be32(6, data_type::VERDICT).be32(7, 0);
        } else if let Some((data_type, data_len)) = set.data {
            a.be32(6, data_type).be32(7, data_len);
        }
        if let Some(timeout) = set.timeout_ms {
            a.be64(11, timeout);
        }
        if let Some(fields) = &set.interval_fields {
            // NFTA_SET_DESC = 9 > NFTA_SET_DESC_CONCAT = 2 > NFTA_LIST_ELEM = 1 >
            // NFTA_SET_FIELD_LEN = 1.
            a.nested(9, |desc| {
                desc.nested(2, |concat| {
                    for len in fields {
                        concat.nested(1, |field| {
                            field.be32(1, *len);
                        });
                    }
                });
            });
        }
        self.push(msg::NEWSET, NLM_F_CREATE, family, a, ("add set", 2));
        self
    }

    /// Deletes set `name`, which must exist and have no references left.
    pub fn delete_set(&mut self, family: Family, table: &str, name: &str) -> &mut Self {
        let mut a = Attributes::new();
        a.string(1, table).string(2, name);
        self.push(msg::DELSET, 0, family, a, ("delete set", 2));
        self
    }

    /// Adds `elements` to set `set`.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) -> &mut Self {
        self.elements(
            msg::NEWSETELEM,
            NLM_F_CREATE,
            family,
            table,
            set,
            elements,
            "add to set",
        )
    }

    /// Removes `elements` (by key) from set `set`.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) -> &mut Self {
        self.elements(
            msg::DELSETELEM,
            0,
            family,
            table,
            set,
            elements,
            "remove from set",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn elements(
        &mut self,
        kind: u16,
        flags: u16,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
        verb: &'static str,
    ) -> &mut Self {
        // The element list is one attribute, whose length is 16 bits: as many elements per
        // message as fit, by the largest one (a verdict names a chain of up to 256 bytes).
        let largest = elements
            .iter()
            .map(|e| {
                64 + e.key.len()
                    + e.key_end.as_ref().map_or(0, Vec::len)
                    + e.data.as_ref().map_or(0, Vec::len)
                    + e.verdict.as_ref().map_or(0, Verdict::encoded_len)
            })
            .max()
            .unwrap_or(64);
        let per_message = (60_000 / largest).clamp(1, 512);
        for chunk in elements.chunks(per_message) {
            let mut a = Attributes::new();
            a.string(1, table).string(2, set).nested(3, |list| {
                for element in chunk {
                    list.nested(1, |e| {
                        e.nested(1, |key| {
                            key.raw(1, &element.key);
                        });
                        if let Some(end) = &element.key_end {
                            // NFTA_SET_ELEM_KEY_END = 10.
                            e.nested(10, |key| {
                                key.raw(1, end);
                            });
                        }
                        if let Some(verdict) = &element.verdict {
                            e.nested(2, |data| {
                                data.nested(2, |v| verdict.encode(v));
                            });
                        } else if let Some(value) = &element.data {
                            // NFTA_SET_ELEM_DATA = 2 holding NFTA_DATA_VALUE = 1.
                            e.nested(2, |data| {
                                data.raw(1, value);
                            });
                        }
                    });
                }
            });
            self.push(kind, flags, family, a, (verb, 2));
        }
        self
    }
}
