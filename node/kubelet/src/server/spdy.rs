//! SPDY/3.1 framing, as much of it as Kubernetes' port-forward protocol uses (kubectl speaks it
//! over an upgraded HTTP connection, or inside WebSocket binary messages). Frames are read and
//! written whole; header blocks go through one zlib stream per direction, primed with the
//! protocol's dictionary (SPDY/3 section 2.6.10.1). Flow control (WINDOW_UPDATE, SETTINGS) is
//! read and ignored: Go's spdystream, kubectl's side, neither sends nor honours it.

use std::sync::LazyLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The flag that ends a stream's direction (DATA and control frames alike).
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: refused (unknown stream type, too many streams).
pub const RST_REFUSED_STREAM: u32 = 3;

/// The protocol version this module speaks.
const VERSION: u16 = 3;
/// Largest header block accepted, compressed or not.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest data payload written in one frame.
pub const MAX_DATA_WRITE: usize = 32 * 1024;
/// Largest data payload read in one frame (kubectl sends at most 32 KiB).
const MAX_DATA_READ: usize = 1024 * 1024;
/// Largest payload of any other control frame (SETTINGS, WINDOW_UPDATE ...).
const MAX_OTHER_CONTROL: usize = 64 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// Header names and values, in order (names are lower case on the wire).
pub type HeaderList = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new stream from the peer, with its headers.
    SynStream {
        stream_id: u32,
        flags: u8,
        headers: HeaderList,
    },
    /// The acceptance of a stream.
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: HeaderList,
    },
    /// A stream ended abnormally.
    RstStream { stream_id: u32, status: u32 },
    /// A ping, answered with the same id.
    Ping { id: u32 },
    /// The session ends.
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        stream_id: u32,
        flags: u8,
        headers: HeaderList,
    },
    /// Stream data.
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame acted on by nobody here (SETTINGS, WINDOW_UPDATE, CREDENTIAL ...).
    Ignored { kind: u16 },
}

/// Reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("SPDY version {0} is not spoken here (only 3)")]
    UnsupportedVersion(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
    #[error("a frame of {length} bytes is larger than {limit} bytes")]
    TooLarge { length: usize, limit: usize },
    #[error("the connection ended inside a frame")]
    Truncated,
}

/// The zlib dictionary of SPDY/3 header blocks: the length-prefixed names and values below,
/// then a run of common text (1,423 bytes in all).
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504",
        "505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, ",
        "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dictionary = Vec::with_capacity(1423);
    for word in WORDS {
        dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(TAIL.as_bytes());
    dictionary
});

/// Reads frames from one direction of a session.
pub struct FrameReader<R> {
    inner: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame, or `None` once the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0u8; 8];
        let first = self.inner.read(&mut head).await?;
        if first == 0 {
            return Ok(None);
        }
        self.inner
            .read_exact(&mut head[first..])
            .await
            .map_err(truncated)?;
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        // Nothing is allocated for a length beyond what the frame's type may carry.
        let limit = if head[0] & 0x80 == 0 {
            MAX_DATA_READ
        } else {
            match u16::from_be_bytes([head[2], head[3]]) {
                SYN_STREAM | SYN_REPLY | HEADERS => MAX_HEADER_BLOCK + 10,
                _ => MAX_OTHER_CONTROL,
            }
        };
        if length > limit {
            return Err(SpdyError::TooLarge { length, limit });
        }
        let mut payload = vec![0u8; length];
        self.inner
            .read_exact(&mut payload)
            .await
            .map_err(truncated)?;
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: Bytes::from(payload),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        // Stream ids have 31 bits; statuses and ping ids 32.
        let full_word = |at: usize, what| {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SpdyError::Malformed(what))
        };
        let word = |at: usize, what| full_word(at, what).map(|w| w & 0x7fff_ffff);
        let frame = match kind {
            SYN_STREAM => Frame::SynStream {
                stream_id: word(0, "SYN_STREAM")?,
                flags,
                headers: self.headers(payload.get(10..), "SYN_STREAM")?,
            },
            SYN_REPLY => Frame::SynReply {
                stream_id: word(0, "SYN_REPLY")?,
                flags,
                headers: self.headers(payload.get(4..), "SYN_REPLY")?,
            },
            HEADERS => Frame::Headers {
                stream_id: word(0, "HEADERS")?,
                flags,
                headers: self.headers(payload.get(4..), "HEADERS")?,
            },
            RST_STREAM => Frame::RstStream {
                stream_id: word(0, "RST_STREAM")?,
                status: full_word(4, "RST_STREAM")?,
            },
            PING => Frame::Ping {
                id: full_word(0, "PING")?,
            },
            GOAWAY => Frame::GoAway {
                last_good_stream_id: word(0, "GOAWAY")?,
                status: full_word(4, "GOAWAY").unwrap_or(0),
            },
            kind => Frame::Ignored { kind },
        };
        Ok(Some(frame))
    }

    /// Inflates and parses a header block (every block goes through the one zlib stream, in
    /// order, or the next would not decode).
    fn headers(
        &mut self,
        block: Option<&[u8]>,
        what: &'static str,
    ) -> Result<HeaderList, SpdyError> {
        let block = block.ok_or(SpdyError::Malformed(what))?;
        if block.len() > MAX_HEADER_BLOCK {
            return Err(SpdyError::HeaderBlock("too large".into()));
        }
        let raw = inflate(&mut self.inflate, block)?;
        parse_header_block(&raw)
    }
}

/// Inflates one sync-flushed block of the stream, setting the dictionary when asked for.
fn inflate(inflate: &mut Decompress, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
    let mut out = Vec::with_capacity(block.len() * 4 + 256);
    let mut input = block;
    loop {
        if out.capacity() - out.len() < 256 {
            out.reserve(4096);
        }
        let before = inflate.total_in();
        let result = inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
        input = &input[(inflate.total_in() - before) as usize..];
        match result {
            Ok(Status::StreamEnd) => break,
            Ok(Status::BufError) if input.is_empty() => break,
            Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
            Ok(_) => {}
            Err(err) if err.needs_dictionary().is_some() => {
                inflate
                    .set_dictionary(&DICTIONARY)
                    .map_err(|err| SpdyError::HeaderBlock(err.to_string()))?;
            }
            Err(err) => return Err(SpdyError::HeaderBlock(err.to_string())),
        }
        if out.len() > MAX_HEADER_BLOCK {
            return Err(SpdyError::HeaderBlock("too large once inflated".into()));
        }
    }
    Ok(out)
}

/// `count, (name length, name, value length, value)*`, all lengths 32-bit big endian.
fn parse_header_block(raw: &[u8]) -> Result<HeaderList, SpdyError> {
    let malformed = || SpdyError::HeaderBlock("truncated".into());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let part = raw.get(at..at + n).ok_or_else(malformed)?;
        at += n;
        Ok(part)
    };
    let number = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = number(take(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name_length = number(take(4)?);
        let name = String::from_utf8_lossy(take(name_length)?).into_owned();
        let value_length = number(take(4)?);
        let value = String::from_utf8_lossy(take(value_length)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

fn header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, value) in headers {
        for part in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
            raw.extend_from_slice(&(part.len() as u32).to_be_bytes());
            raw.extend_from_slice(part);
        }
    }
    raw
}

/// Writes frames in one direction of a session.
pub struct FrameWriter<W> {
    inner: W,
    deflate: Compress,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer to `inner`.
    pub fn new(inner: W) -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .expect("a fresh zlib stream takes a dictionary");
        Self { inner, deflate }
    }

    /// Writes `frame` and flushes it.
    #[cfg(test)]
    pub async fn write(&mut self, frame: &Frame) -> Result<(), SpdyError> {
        self.write_unflushed(frame).await?;
        self.flush().await
    }

    /// Writes `frame`, leaving it in any buffer on the way (see [`flush`](Self::flush)).
    pub async fn write_unflushed(&mut self, frame: &Frame) -> Result<(), SpdyError> {
        let bytes = self.encode(frame)?;
        self.inner.write_all(&bytes).await?;
        Ok(())
    }

    /// Flushes what was written.
    pub async fn flush(&mut self) -> Result<(), SpdyError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Shuts the connection's write side down.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }

    fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>, SpdyError> {
        let control = |kind: u16, flags: u8, body: Vec<u8>| {
            let mut out = Vec::with_capacity(8 + body.len());
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&frame_length(flags, body.len()));
            out.extend_from_slice(&body);
            out
        };
        Ok(match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&frame_length(*flags, data.len()));
                out.extend_from_slice(data);
                out
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut body = stream_id.to_be_bytes().to_vec();
                body.extend(self.deflate_block(&header_block(headers))?);
                control(kind, *flags, body)
            }
            Frame::SynStream {
                stream_id,
                flags,
                headers,
            } => {
                let mut body = stream_id.to_be_bytes().to_vec();
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                body.extend(self.deflate_block(&header_block(headers))?);
                control(SYN_STREAM, *flags, body)
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = stream_id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(RST_STREAM, 0, body)
            }
            Frame::Ping { id } => control(PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut body = last_good_stream_id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(GOAWAY, 0, body)
            }
            Frame::Ignored { kind } => control(*kind, 0, Vec::new()),
        })
    }

    /// Deflates a header block onto the stream and sync-flushes it.
    fn deflate_block(&mut self, raw: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|err| SpdyError::HeaderBlock(err.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The flags byte and the 24-bit length (payloads written here are far below 2^24).
fn frame_length(flags: u8, length: usize) -> [u8; 4] {
    assert!(length < 1 << 24, "a SPDY frame payload of {length} bytes");
    let length = (length as u32).to_be_bytes();
    [flags, length[1], length[2], length[3]]
}

fn truncated(err: std::io::Error) -> SpdyError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        SpdyError::Truncated
    } else {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_the_protocols() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[tokio::test]
    async fn frames_round_trip_with_headers_on_one_zlib_stream() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut writer = FrameWriter::new(client);
        let mut reader = FrameReader::new(server);
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                flags: 0,
                headers: headers(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            // A second block on the same stream reuses the window (and the dictionary).
            Frame::SynStream {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RST_REFUSED_STREAM,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::Ignored { kind: 9 },
        ];
        for frame in &frames {
            writer.write(frame).await.unwrap();
        }
        drop(writer);
        for frame in &frames {
            assert_eq!(reader.next().await.unwrap().as_ref(), Some(frame));
        }
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        // Version 2.
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(&[0x80, 2, 0, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        let err = FrameReader::new(server).next().await.unwrap_err();
        assert!(matches!(err, SpdyError::UnsupportedVersion(2)), "{err}");
        // A SYN_STREAM too short for its stream id, and a header block that is not zlib.
        for body in [vec![0u8, 0], vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut frame = vec![0x80, 3, 0, 1, 0, 0, 0, body.len() as u8];
            frame.extend(body);
            client.write_all(&frame).await.unwrap();
            assert!(FrameReader::new(server).next().await.is_err());
        }
        // A block that claims more pairs than it has.
        assert!(parse_header_block(&[0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0]).is_err());
        // A PING claiming 16 MiB is refused before anything is allocated for it.
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(&[0x80, 3, 0, 6, 0, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let err = FrameReader::new(server).next().await.unwrap_err();
        assert!(matches!(err, SpdyError::TooLarge { .. }), "{err}");
        // A connection that ends inside a frame's head is not a clean end.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&[0x80, 3, 0]).await.unwrap();
        drop(client);
        let err = FrameReader::new(server).next().await.unwrap_err();
        assert!(matches!(err, SpdyError::Truncated), "{err}");
    }
}
