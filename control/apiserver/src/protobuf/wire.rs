//! The protobuf wire format, read without trusting it: every length is checked against the
//! buffer, varints stop at 10 bytes, and groups (skipped, never decoded) nest a bounded depth.

use super::Problem;

/// Deepest group nesting skipped before the input is called malformed.
const MAX_GROUP_DEPTH: usize = 64;
/// The largest field number protobuf allows.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// One field value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited: a string, bytes, an embedded message or a packed run.
    Len(&'a [u8]),
    /// A group (deprecated wire types 3 and 4), already skipped.
    Group,
}

impl Raw<'_> {
    pub(super) fn wire_type(&self) -> u8 {
        match self {
            Raw::Varint(_) => 0,
            Raw::Fixed64(_) => 1,
            Raw::Len(_) => 2,
            Raw::Group => 3,
            Raw::Fixed32(_) => 5,
        }
    }
}

/// Why a read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Truncated,
    Bad(Problem),
}

/// A read failure, with the field number when the key had been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WireError {
    pub(super) field: Option<u32>,
    pub(super) fault: Fault,
}

/// Reads the fields of one message in order.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next field, or `None` at the end of the message.
    pub(super) fn next_field(&mut self) -> Result<Option<(u32, Raw<'a>)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at_key = |fault| WireError { field: None, fault };
        let key = self.varint().map_err(at_key)?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD_NUMBER {
            return Err(at_key(Fault::Bad(Problem::BadFieldNumber)));
        }
        // In range of u32 by the check above.
        let field = number as u32;
        let raw = self
            .value(field, (key & 7) as u8)
            .map_err(|fault| WireError {
                field: Some(field),
                fault,
            })?;
        Ok(Some((field, raw)))
    }

    fn value(&mut self, field: u32, wire_type: u8) -> Result<Raw<'a>, Fault> {
        Ok(match wire_type {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(self.take_array()?)),
            2 => {
                let len = self.varint()?;
                Raw::Len(self.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)?)
            }
            3 => {
                self.skip_group(field)?;
                Raw::Group
            }
            4 => return Err(Fault::Bad(Problem::UnmatchedEndGroup)),
            5 => Raw::Fixed32(u32::from_le_bytes(self.take_array()?)),
            other => return Err(Fault::Bad(Problem::BadWireType(other))),
        })
    }

    /// Skips to the end-group key of `field`, across nested groups, without recursion.
    fn skip_group(&mut self, field: u32) -> Result<(), Fault> {
        let mut open = vec![field];
        while let Some(&innermost) = open.last() {
            let key = self.varint()?;
            let number = key >> 3;
            if number == 0 || number > MAX_FIELD_NUMBER {
                return Err(Fault::Bad(Problem::BadFieldNumber));
            }
            match (key & 7) as u8 {
                3 => {
                    if open.len() >= MAX_GROUP_DEPTH {
                        return Err(Fault::Bad(Problem::GroupTooDeep));
                    }
                    open.push(number as u32);
                }
                4 if number == u64::from(innermost) => {
                    open.pop();
                }
                4 => return Err(Fault::Bad(Problem::UnmatchedEndGroup)),
                wire_type => {
                    self.value(number as u32, wire_type)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn varint(&mut self) -> Result<u64, Fault> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(Fault::Truncated)?;
            self.pos += 1;
            // Bits past the 64th (in a 10th byte) are dropped, as Go's decoder does.
            value |= u64::from(byte & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Fault::Bad(Problem::VarintTooLong))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Fault> {
        let end = self.pos.checked_add(len).ok_or(Fault::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Fault::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }
}

/// The varints of a packed repeated field.
pub(super) fn packed_varints(mut bytes: &[u8]) -> Result<Vec<u64>, Fault> {
    let mut values = Vec::new();
    while !bytes.is_empty() {
        let mut reader = Reader::new(bytes);
        values.push(reader.varint()?);
        bytes = &bytes[reader.pos..];
    }
    Ok(values)
}

/// The little-endian 64-bit words of a packed repeated field.
pub(super) fn packed_fixed64(bytes: &[u8]) -> Result<Vec<u64>, Fault> {
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(Fault::Truncated);
    }
    Ok(chunks
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, WireError> {
        let mut reader = Reader::new(buf);
        let mut out = Vec::new();
        while let Some(field) = reader.next_field()? {
            out.push(field);
        }
        Ok(out)
    }

    #[test]
    fn reads_each_wire_type() {
        let buf = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 0x02, b'h', b'i', // 3: "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        assert_eq!(
            fields(&buf).unwrap(),
            vec![
                (1, Raw::Varint(150)),
                (2, Raw::Fixed64(1)),
                (3, Raw::Len(b"hi")),
                (4, Raw::Fixed32(2))
            ]
        );
    }

    #[test]
    fn skips_nested_groups() {
        // 5: start group { 6: start group { 1: varint 1 } 6: end } 5: end, then 2: varint 3.
        let buf = [0x2b, 0x33, 0x08, 0x01, 0x34, 0x2c, 0x10, 0x03];
        assert_eq!(
            fields(&buf).unwrap(),
            vec![(5, Raw::Group), (2, Raw::Varint(3))]
        );
    }

    #[test]
    fn rejects_hostile_input() {
        let truncated = |field| {
            Err(WireError {
                field,
                fault: Fault::Truncated,
            })
        };
        let bad = |field, problem| {
            Err(WireError {
                field,
                fault: Fault::Bad(problem),
            })
        };
        assert_eq!(fields(&[0x0a, 0x05, b'a']), truncated(Some(1)));
        assert_eq!(
            fields(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            truncated(Some(1))
        );
        assert_eq!(fields(&[0x08, 0x80]), truncated(Some(1)));
        assert_eq!(fields(&[0x80]), truncated(None));
        assert_eq!(
            fields(&[0x08; 12].map(|_| 0xff)),
            bad(None, Problem::VarintTooLong)
        );
        assert_eq!(fields(&[0x00]), bad(None, Problem::BadFieldNumber));
        assert_eq!(fields(&[0x0e]), bad(Some(1), Problem::BadWireType(6)));
        assert_eq!(fields(&[0x0c]), bad(Some(1), Problem::UnmatchedEndGroup));
        assert_eq!(fields(&[0x0b; 100]), bad(Some(1), Problem::GroupTooDeep));
        assert_eq!(
            fields(&[0x0b, 0x14]),
            bad(Some(1), Problem::UnmatchedEndGroup)
        );
        assert_eq!(fields(&[0x0b]), truncated(Some(1)));
    }
}
