//! The machine's clock from NTP servers (`machine.time.servers`), as an SNTP client (RFC 4330,
//! a client of RFC 5905's protocol): at boot the servers are asked in order and the clock is
//! stepped to the first good answer; then a thread asks again every [`POLL_INTERVAL`] and steps
//! the clock when it is off by more than [`STEP_THRESHOLD`] (ntpd's step threshold). Nothing
//! slews: smaller offsets wait for the next step. A sandbox shares the host's clock and does
//! none of this.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The NTP port.
pub const NTP_PORT: u16 = 123;
/// How long one server may take to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the clock is checked after boot.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1024);
/// Offsets beyond this are stepped.
pub const STEP_THRESHOLD: Duration = Duration::from_millis(128);
/// A date the clock is surely past (1 January 2026, in ns since the epoch): NTP timestamps are
/// read in the era nearest to the later of it and the machine's clock, which may start at 1970
/// on a machine without an RTC.
const ERA_PIVOT_NANOS: i128 = 1_767_225_600 * 1_000_000_000;
/// Samples whose round trip took longer than this are not trusted to step the clock after
/// boot: the offset's error is up to half the round trip.
const MAX_KEEP_DELAY: Duration = Duration::from_millis(256);
/// Seconds from the NTP era's start (1900) to the Unix epoch.
const NTP_TO_UNIX_SECONDS: u64 = 2_208_988_800;
/// A packet's size without extensions.
const PACKET_LEN: usize = 48;
/// The first byte of a request: leap indicator 0, version 4, mode 3 (client).
const CLIENT_REQUEST: u8 = (4 << 3) | 3;
/// Mode 4: a server's answer.
const MODE_SERVER: u8 = 4;
/// Leap indicator 3: the server's clock is not synchronized.
const LEAP_UNSYNCHRONIZED: u8 = 3;

/// One server's answer, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// How far the server's clock is ahead of this machine's.
    pub offset_nanos: i128,
    /// The round trip, less the server's own time.
    pub delay_nanos: i128,
    /// The server's stratum (1 for a reference clock).
    pub stratum: u8,
}

/// Asking a server failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryTimeError {
    /// The socket failed.
    #[error("asking {server}")]
    Socket {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{server} did not answer within {QUERY_TIMEOUT:?}")]
    NoAnswer {
        /// The server.
        server: SocketAddr,
    },
    /// The answer cannot be used.
    #[error("{server} answered unusably: {reason}")]
    Unusable {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: &'static str,
    },
}

/// Setting the clock failed.
#[derive(Debug, thiserror::Error)]
pub enum StepClockError {
    /// No server gave a usable answer; the last one's failure.
    #[error("no time server answered (machine.time.servers)")]
    NoServer(#[source] QueryTimeError),
    /// clock_settime failed.
    #[error("setting the clock")]
    Set(#[source] nix::Error),
}

/// Nanoseconds since the Unix epoch now.
fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// An NTP timestamp (seconds since 1900, 32.32 fixed point) for `nanos` since the Unix epoch.
fn to_ntp(nanos: i128) -> [u8; 8] {
    let since_1900 = nanos + i128::from(NTP_TO_UNIX_SECONDS) * 1_000_000_000;
    let seconds = (since_1900.div_euclid(1_000_000_000)) as u32;
    let fraction = ((since_1900.rem_euclid(1_000_000_000) << 32) / 1_000_000_000) as u32;
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[4..].copy_from_slice(&fraction.to_be_bytes());
    bytes
}

/// Nanoseconds since the Unix epoch for an NTP timestamp, taken in the era that puts it
/// nearest to `reference` (so the 2036 rollover does not matter).
fn from_ntp(bytes: &[u8], reference: i128) -> i128 {
    let seconds = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let fraction = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let in_era =
        i128::from(seconds) * 1_000_000_000 + ((i128::from(fraction) * 1_000_000_000) >> 32);
    let era = 1i128 << 32;
    let era_nanos = era * 1_000_000_000;
    let reference_since_1900 = reference + i128::from(NTP_TO_UNIX_SECONDS) * 1_000_000_000;
    let eras = (reference_since_1900 - in_era + era_nanos / 2).div_euclid(era_nanos);
    in_era + eras * era_nanos - i128::from(NTP_TO_UNIX_SECONDS) * 1_000_000_000
}

/// The request sent at `sent` (ns since the epoch).
fn request(sent: i128) -> [u8; PACKET_LEN] {
    let mut packet = [0u8; PACKET_LEN];
    packet[0] = CLIENT_REQUEST;
    packet[40..48].copy_from_slice(&to_ntp(sent));
    packet
}

/// The sample a `reply` to the request sent at `sent` gives, received at `received`; or why
/// it cannot be used. The reply is hostile input: everything it says is checked.
fn sample(reply: &[u8], sent: i128, received: i128) -> Result<Sample, &'static str> {
    if reply.len() < PACKET_LEN {
        return Err("a short packet");
    }
    if reply[0] & 0x7 != MODE_SERVER {
        return Err("not a server's answer");
    }
    if reply[0] >> 6 == LEAP_UNSYNCHRONIZED {
        return Err("its clock is not synchronized");
    }
    let stratum = reply[1];
    if stratum == 0 || stratum > 15 {
        return Err("a stratum outside 1-15 (a kiss-o'-death or an unsynchronized server)");
    }
    // The server echoes the request's transmit time: an answer to this request.
    if reply[24..32] != to_ntp(sent) {
        return Err("an answer to another request");
    }
    if reply[40..48] == [0; 8] || reply[32..40] == [0; 8] {
        return Err("no receive or transmit time");
    }
    let reference = sent.max(ERA_PIVOT_NANOS);
    let server_received = from_ntp(&reply[32..40], reference);
    let server_sent = from_ntp(&reply[40..48], reference);
    let delay_nanos = (received - sent) - (server_sent - server_received);
    if delay_nanos < 0 {
        return Err("a negative round trip");
    }
    Ok(Sample {
        offset_nanos: ((server_received - sent) + (server_sent - received)) / 2,
        delay_nanos,
        stratum,
    })
}

/// Asks `server` for the time.
pub fn query(server: SocketAddr) -> Result<Sample, QueryTimeError> {
    let fail = |source| QueryTimeError::Socket { server, source };
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = UdpSocket::bind(local).map_err(fail)?;
    socket.connect(server).map_err(fail)?;
    let deadline = std::time::Instant::now() + QUERY_TIMEOUT;
    let sent = now_nanos();
    socket.send(&request(sent)).map_err(fail)?;
    let mut buffer = [0u8; 512];
    let mut unusable = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(match unusable {
                Some(reason) => QueryTimeError::Unusable { server, reason },
                None => QueryTimeError::NoAnswer { server },
            });
        }
        socket.set_read_timeout(Some(left)).map_err(fail)?;
        let length = match socket.recv(&mut buffer) {
            Ok(length) => length,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(fail(err)),
        };
        let received = now_nanos();
        // A stray or forged datagram does not end the wait for the real answer.
        match sample(&buffer[..length], sent, received) {
            Ok(sample) => return Ok(sample),
            Err(reason) => unusable = Some(reason),
        }
    }
}

/// The first usable sample from `servers`, asked in order.
pub fn first_sample(servers: &[IpAddr]) -> Result<(IpAddr, Sample), StepClockError> {
    let mut last = None;
    for server in servers {
        match query(SocketAddr::new(*server, NTP_PORT)) {
            Ok(sample) => return Ok((*server, sample)),
            Err(err) => {
                tracing::warn!("{}", baton_client::error_chain(&err));
                last = Some(err);
            }
        }
    }
    Err(StepClockError::NoServer(last.unwrap_or(
        QueryTimeError::Unusable {
            server: SocketAddr::from(([0, 0, 0, 0], NTP_PORT)),
            reason: "no servers",
        },
    )))
}

/// Moves the clock by `offset_nanos`.
fn step(offset_nanos: i128) -> Result<(), StepClockError> {
    let target = now_nanos() + offset_nanos;
    let spec = nix::sys::time::TimeSpec::new(
        target.div_euclid(1_000_000_000) as i64,
        target.rem_euclid(1_000_000_000) as i64,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec).map_err(StepClockError::Set)
}

/// Boot's clock phase: steps the clock to the first server's time; returns the offset
/// applied, in nanoseconds.
pub fn set_clock(servers: &[IpAddr]) -> Result<i128, StepClockError> {
    let (server, sample) = first_sample(servers)?;
    step(sample.offset_nanos)?;
    tracing::info!(
        %server,
        stratum = sample.stratum,
        offset_ms = sample.offset_nanos as f64 / 1e6,
        delay_ms = sample.delay_nanos as f64 / 1e6,
        "clock set"
    );
    Ok(sample.offset_nanos)
}

/// Checks the clock against `servers` every [`POLL_INTERVAL`] on a thread of its own, for as
/// long as the process lives, stepping it when it is off by more than [`STEP_THRESHOLD`].
pub fn keep_clock(servers: Vec<IpAddr>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("time-sync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL_INTERVAL);
                match first_sample(&servers) {
                    Ok((server, sample)) if sample.delay_nanos as u128 > MAX_KEEP_DELAY.as_nanos() => {
                        tracing::warn!(%server, delay_ms = sample.delay_nanos as f64 / 1e6, "a time sample with too long a round trip to step the clock by");
                    }
                    Ok((server, sample))
                        if sample.offset_nanos.unsigned_abs() > STEP_THRESHOLD.as_nanos() =>
                    {
                        match step(sample.offset_nanos) {
                            Ok(()) => tracing::info!(%server, offset_ms = sample.offset_nanos as f64 / 1e6, "clock stepped"),
                            Err(err) => tracing::warn!("{}", baton_client::error_chain(&err)),
                        }
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!("{}", baton_client::error_chain(&err)),
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's reply to `request` with its clock `ahead` nanoseconds ahead, `serving`
    /// nanoseconds between receiving and sending.
    fn reply(request: &[u8; PACKET_LEN], at: i128, ahead: i128, serving: i128) -> [u8; 48] {
        let mut reply = [0u8; PACKET_LEN];
        reply[0] = (4 << 3) | MODE_SERVER;
        reply[1] = 2;
        reply[24..32].copy_from_slice(&request[40..48]);
        reply[32..40].copy_from_slice(&to_ntp(at + ahead));
        reply[40..48].copy_from_slice(&to_ntp(at + ahead + serving));
        reply
    }

    #[test]
    fn timestamps_go_to_ntp_and_back_in_the_nearest_era() {
        let now = 1_796_083_218_123_456_789i128;
        let back = from_ntp(&to_ntp(now), now);
        assert!((back - now).abs() < 2, "{back} vs {now}");
        // 1 January 2037, after the NTP era rolls over (7 February 2036).
        let later = 2_114_380_800_000_000_000i128;
        assert!((from_ntp(&to_ntp(later), now) - later).abs() < 2);
        assert_eq!(&to_ntp(0)[..4], &2_208_988_800u32.to_be_bytes());
        // A machine whose clock starts at 1970 still reads a 2040 server time as 2040.
        let sent_at_boot = 0i128;
        let server_time = 2_208_988_800_000_000_000i128; // 2040-01-01
        let mut reply = reply(&request(sent_at_boot), sent_at_boot, server_time, 0);
        reply[1] = 1;
        let sample = sample(&reply, sent_at_boot, sent_at_boot).unwrap();
        assert!((sample.offset_nanos - server_time).abs() <= 2, "{sample:?}");
    }

    #[test]
    fn the_offset_and_delay_come_from_the_four_timestamps() {
        let sent = 1_796_083_218_000_000_000i128;
        let request = request(sent);
        assert_eq!(request[0], 0x23, "version 4, client");
        // The server is 1.5 s ahead; the network takes 10 ms each way; it serves in 1 ms.
        let reply = reply(&request, sent + 10_000_000, 1_500_000_000, 1_000_000);
        let received = sent + 21_000_000;
        let sample = sample(&reply, sent, received).unwrap();
        // NTP's fractions are 2^-32 s: a nanosecond or two of rounding.
        assert!(
            (sample.offset_nanos - 1_500_000_000).abs() <= 2,
            "{sample:?}"
        );
        assert!((sample.delay_nanos - 20_000_000).abs() <= 2, "{sample:?}");
        assert_eq!(sample.stratum, 2);
    }

    #[test]
    fn unusable_answers_are_refused() {
        let sent = 1_796_083_218_000_000_000i128;
        let good = reply(&request(sent), sent, 0, 0);
        let refused = |change: &dyn Fn(&mut [u8; 48])| {
            let mut reply = good;
            change(&mut reply);
            sample(&reply, sent, sent).unwrap_err()
        };
        assert_eq!(
            sample(&good[..40], sent, sent).unwrap_err(),
            "a short packet"
        );
        assert_eq!(refused(&|r| r[0] = (4 << 3) | 3), "not a server's answer");
        assert_eq!(
            refused(&|r| r[0] |= 3 << 6),
            "its clock is not synchronized"
        );
        assert!(refused(&|r| r[1] = 0).starts_with("a stratum outside"));
        assert!(refused(&|r| r[1] = 16).starts_with("a stratum outside"));
        assert_eq!(refused(&|r| r[31] ^= 1), "an answer to another request");
        assert_eq!(
            refused(&|r| r[40..48].fill(0)),
            "no receive or transmit time"
        );
        // The server says it took 5 ms to answer a request that came back at once.
        let backwards = reply(&request(sent), sent, 0, 5_000_000);
        assert_eq!(
            sample(&backwards, sent, sent).unwrap_err(),
            "a negative round trip"
        );
    }
}
