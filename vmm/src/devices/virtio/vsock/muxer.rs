//! The vsock muxer: one thread that moves stream data between the guest's queues and Unix
//! sockets on the host, in Firecracker's way.
//! - The host connects to the device's socket and writes `CONNECT PORT\n`; the muxer sends
//!   the guest a REQUEST for PORT from a host port of its own, and on the guest's RESPONSE
//!   answers `OK HOST_PORT\n`; from then on bytes flow both ways.
//! - The guest's REQUEST to the host (CID 2) on port P connects to `UDS_PATH_P`; a RESPONSE
//!   follows if it answers, an RST otherwise.
//! - Data to the guest respects the guest's credit (its buffer size less what is in
//!   flight); a connection out of credit is not read until a CREDIT_UPDATE. The muxer's own
//!   credit is [`BUF_ALLOC`]; it writes what the guest sends at once and tells the guest how
//!   much it took once half of that is used.
//! - A host socket that ends gets the guest a SHUTDOWN once the guest has read what it
//!   wrote; the guest's SHUTDOWN "no more sending" shuts the host socket's writing side,
//!   both flags (over one or more packets) or an RST close it. Packets for unknown
//!   connections are answered with an RST.
//!
//! Writes to a host socket block the muxer for at most [`WRITE_TIMEOUT`]; a host that does
//! not read in that time loses its connection.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use virtio_queue::{Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{HEADER_LEN, HOST_CID, Header, Packet, SHUTDOWN_BOTH, TYPE_STREAM, op};
use super::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::MmioTransport;
use crate::devices::virtio::queue::{drain_queue, use_chains};
use crate::seccomp::{ThreadFilters, ThreadKind, spawn_filtered};
use crate::stoppable_thread::StoppableThread;
use crate::unix_socket::BoundSocket;

/// The receive buffer the muxer announces per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Most payload in one packet to the guest.
const MAX_PAYLOAD: usize = 4096;
/// Most payload accepted in one packet from the guest.
const MAX_GUEST_PAYLOAD: usize = 64 * 1024;
/// Most packets waiting for the guest's receive buffers before the RSTs answering the
/// guest's packets for no connection are dropped (other packets are bounded by the
/// connections and the guest's credit).
const MAX_WAITING: usize = 4096;
/// How long a write to a host socket may block the muxer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest `CONNECT PORT\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// The first host-side port of host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

const LISTENER: u64 = 0;
const KICK: u64 = 1;
const STOP: u64 = 2;
/// Tokens of host sockets: their descriptor plus this.
const SOCKET_BASE: u64 = 3;

/// The muxer thread; dropping it stops the thread and removes the device's socket file.
#[derive(Debug)]
pub struct VsockMuxer {
    _thread: StoppableThread,
    /// Dropped after the thread has stopped.
    _socket: BoundSocket,
}

impl VsockMuxer {
    /// Starts the thread serving `transport`'s queues for guest `guest_cid`, accepting host
    /// connections on `socket`, woken by `kick`.
    pub fn spawn(
        guest_cid: u64,
        socket: BoundSocket,
        kick: EventFd,
        transport: Arc<Mutex<MmioTransport>>,
        filters: &ThreadFilters,
    ) -> std::io::Result<Self> {
        let listener = socket.listener().try_clone()?;
        let uds_path = socket.path().to_owned();
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (listener.as_raw_fd(), LISTENER),
            (kick.as_raw_fd(), KICK),
            (stop.as_raw_fd(), STOP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let muxer = Muxer {
            guest_cid,
            uds_path: uds_path.clone(),
            listener,
            kick,
            transport,
            epoll,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            to_guest: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
        };
        let thread = spawn_filtered("vsock".into(), filters, ThreadKind::Vsock, move || {
            muxer.run()
        })?;
        Ok(Self {
            _thread: StoppableThread::new("vsock", stop, thread),
            _socket: socket,
        })
    }
}

/// A connection: the host-side port and the guest's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    host_port: u32,
    guest_port: u32,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    established: bool,
    /// The guest's buffer size and what it has consumed (from its last header).
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest, and bytes from the guest written to the host (wrapping).
    tx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_told: u32,
    /// Whether the host socket is watched for reading.
    reading: bool,
    /// The host hung up while the guest had no credit: the socket is out of epoll (which
    /// reports a hang-up whatever the mask) until the guest has room for what is left.
    hung_up: bool,
    /// The SHUTDOWN flags the guest has sent so far.
    guest_shutdown: u32,
}

impl Conn {
    /// Bytes the guest can take now.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    kick: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    epoll: Epoll,
    /// Host sockets that have not said `CONNECT PORT` yet, by descriptor, with what they
    /// sent so far.
    pending: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    conns: HashMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Packets for the guest, waiting for receive buffers.
    to_guest: VecDeque<Packet>,
    next_host_port: u32,
}

impl Muxer {
    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let Some(ready) = crate::stoppable_thread::wait_events(
                &self.epoll,
                -1,
                &mut events,
                "the virtio-vsock muxer",
            ) else {
                return;
            };
            for event in &events[..ready] {
                match event.data() {
                    STOP => return,
                    KICK => {
                        let _ = self.kick.read();
                        self.take_guest_packets();
                    }
                    LISTENER => self.accept(),
                    token => {
                        let fd = (token - SOCKET_BASE) as RawFd;
                        if self.pending.contains_key(&fd) {
                            self.read_connect_line(fd);
                        } else if let Some(&key) = self.by_fd.get(&fd) {
                            let hung_up = event
                                .event_set()
                                .intersects(EventSet::HANG_UP | EventSet::ERROR);
                            self.read_host(key, hung_up);
                        }
                    }
                }
            }
            self.fill_guest_buffers();
        }
    }

    fn watch(&self, fd: RawFd, read: bool, operation: ControlOperation) {
        let events = if read {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if let Err(error) = self.epoll.ctl(
            operation,
            fd,
            EpollEvent::new(events, SOCKET_BASE + fd as u64),
        ) {
            tracing::warn!(%error, "virtio-vsock: cannot watch a host socket");
        }
    }

    fn forget(&mut self, fd: RawFd) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::empty(), 0),
        );
    }

    /// A packet to the guest on `key`'s connection.
    fn packet(&self, key: ConnKey, op: u16, flags: u32, payload: Vec<u8>) -> Packet {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Packet {
            header: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.host_port,
                dst_port: key.guest_port,
                len: payload.len() as u32,
                kind: TYPE_STREAM,
                op,
                flags,
                buf_alloc: BUF_ALLOC,
                fwd_cnt,
            },
            payload,
        }
    }

    /// An RST answering a guest packet for no connection: dropped when [`MAX_WAITING`]
    /// packets already wait (the guest sends without taking its answers).
    fn refuse(&mut self, key: ConnKey) {
        if self.to_guest.len() >= MAX_WAITING {
            tracing::debug!("virtio-vsock: the guest takes no packets; reset dropped");
            return;
        }
        self.send(key, op::RST, 0);
    }

    fn send(&mut self, key: ConnKey, op: u16, flags: u32) {
        let packet = self.packet(key, op, flags, Vec::new());
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.fwd_cnt_told = conn.fwd_cnt;
        }
        self.to_guest.push_back(packet);
    }

    fn close(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.forget(fd);
            self.by_fd.remove(&fd);
        }
    }

    fn reset(&mut self, key: ConnKey) {
        self.send(key, op::RST, 0);
        self.close(key);
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.watch(fd, true, ControlOperation::Add);
                    self.pending.insert(fd, (stream, Vec::new()));
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::warn!(%error, "virtio-vsock: accept failed");
                    return;
                }
            }
        }
    }

    /// Reads a host socket's `CONNECT PORT\n`; when complete, asks the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some((stream, line)) = self.pending.get_mut(&fd) else {
            return;
        };
        // One byte at a time, so that nothing past the line is taken from the socket.
        let mut byte = [0u8; 1];
        let done = loop {
            match stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if line.len() < MAX_CONNECT_LINE => line.push(byte[0]),
                Ok(_) => break Err("CONNECT line too long"),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let (stream, line) = self.pending.remove(&fd).expect("present");
        let port = done.and_then(|()| {
            std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.strip_prefix("CONNECT "))
                .and_then(|p| p.trim().parse::<u32>().ok())
                .ok_or("expected CONNECT PORT")
        });
        let guest_port = match port {
            Ok(port) => port,
            Err(reason) => {
                tracing::debug!(reason, "virtio-vsock: host connection refused");
                self.forget(fd);
                return;
            }
        };
        let key = ConnKey {
            host_port: self.next_host_port,
            guest_port,
        };
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        if stream.set_nonblocking(false).is_err()
            || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        {
            self.forget(fd);
            return;
        }
        // Not read until the guest answers.
        self.watch(fd, false, ControlOperation::Modify);
        self.by_fd.insert(fd, key);
        self.conns.insert(
            key,
            Conn {
                stream,
                established: false,
                peer_buf_alloc: 0,
                peer_fwd_cnt: 0,
                tx_cnt: 0,
                fwd_cnt: 0,
                fwd_cnt_told: 0,
                reading: false,
                hung_up: false,
                guest_shutdown: 0,
            },
        );
        self.send(key, op::REQUEST, 0);
    }

    /// Reads what a host socket has for the guest, as far as the guest's credit allows.
    /// `hung_up`: epoll reported the socket closed or failed, which it does even while the
    /// socket is not watched for reading.
    fn read_host(&mut self, key: ConnKey, hung_up: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let credit = conn.credit() as usize;
        if hung_up && !conn.established {
            // The host left before the guest answered its REQUEST.
            self.reset(key);
            return;
        }
        if hung_up && credit == 0 {
            // The host is gone but what it wrote waits in the socket: leave epoll until the
            // guest has room, then read it to its end.
            conn.reading = false;
            conn.hung_up = true;
            let fd = conn.stream.as_raw_fd();
            self.forget(fd);
            return;
        }
        if !conn.established || credit == 0 {
            conn.reading = false;
            let fd = conn.stream.as_raw_fd();
            self.watch(fd, false, ControlOperation::Modify);
            return;
        }
        let mut buffer = vec![0u8; credit.min(MAX_PAYLOAD)];
        match conn.stream.read(&mut buffer) {
            Ok(0) => {
                self.send(key, op::SHUTDOWN, SHUTDOWN_BOTH);
                self.close(key);
            }
            Ok(n) => {
                buffer.truncate(n);
                conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                let packet = self.packet(key, op::RW, 0, buffer);
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.fwd_cnt_told = conn.fwd_cnt;
                }
                self.to_guest.push_back(packet);
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.reset(key),
        }
    }

    /// Takes the guest's transmit queue and acts on each packet.
    fn take_guest_packets(&mut self) {
        let mut packets = Vec::new();
        self.transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .use_queue(TX_QUEUE, |queue, mem| {
                drain_queue(queue, mem, |chain| {
                    match Reader::new(mem, chain) {
                        Ok(mut reader) => match read_packet(&mut reader) {
                            Some(packet) => packets.push(packet),
                            None => tracing::warn!("virtio-vsock: malformed packet dropped"),
                        },
                        Err(error) => tracing::warn!(%error, "virtio-vsock: malformed chain"),
                    }
                    0
                })
            });
        for packet in packets {
            self.guest_packet(packet);
        }
    }

    fn guest_packet(&mut self, packet: Packet) {
        let h = packet.header;
        let key = ConnKey {
            host_port: h.dst_port,
            guest_port: h.src_port,
        };
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            tracing::debug!(
                src = h.src_cid,
                dst = h.dst_cid,
                "virtio-vsock: packet not from the guest to the host dropped"
            );
            return;
        }
        if h.kind != TYPE_STREAM {
            if h.op != op::RST {
                self.refuse(key);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = h.buf_alloc;
            conn.peer_fwd_cnt = h.fwd_cnt;
            if conn.established && !conn.reading && conn.credit() > 0 {
                conn.reading = true;
                let fd = conn.stream.as_raw_fd();
                let operation = if std::mem::take(&mut conn.hung_up) {
                    ControlOperation::Add
                } else {
                    ControlOperation::Modify
                };
                self.watch(fd, true, operation);
            }
        }
        let known = self.conns.contains_key(&key);
        match h.op {
            op::REQUEST if !known => self.connect_to_host(key, h),
            op::RESPONSE if known => self.guest_accepted(key),
            op::RW if known => self.write_host(key, &packet.payload),
            op::CREDIT_UPDATE if known => {}
            op::CREDIT_REQUEST if known => self.send(key, op::CREDIT_UPDATE, 0),
            op::SHUTDOWN if known => {
                let flags = self.conns.get_mut(&key).map_or(SHUTDOWN_BOTH, |conn| {
                    conn.guest_shutdown |= h.flags;
                    conn.guest_shutdown
                });
                if flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH {
                    self.reset(key);
                } else {
                    self.half_close(key, flags);
                }
            }
            op::RST => self.close(key),
            _ => self.refuse(key),
        }
    }

    /// The guest connects to host port `key.host_port`: `UDS_PATH_PORT`.
    fn connect_to_host(&mut self, key: ConnKey, h: Header) {
        let path = format!("{}_{}", self.uds_path.display(), key.host_port);
        let stream = match UnixStream::connect(&path) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, path, "virtio-vsock: guest connection refused");
                self.send(key, op::RST, 0);
                return;
            }
        };
        if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            self.send(key, op::RST, 0);
            return;
        }
        let fd = stream.as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(
            key,
            Conn {
                stream,
                established: true,
                peer_buf_alloc: h.buf_alloc,
                peer_fwd_cnt: h.fwd_cnt,
                tx_cnt: 0,
                fwd_cnt: 0,
                fwd_cnt_told: 0,
                reading: true,
                hung_up: false,
                guest_shutdown: 0,
            },
        );
        self.watch(fd, true, ControlOperation::Add);
        self.send(key, op::RESPONSE, 0);
    }

    /// The guest accepted a host-initiated connection.
    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.established {
            self.reset(key);
            return;
        }
        conn.established = true;
        if conn
            .stream
            .write_all(format!("OK {}\n", key.host_port).as_bytes())
            .is_err()
        {
            self.reset(key);
            return;
        }
        conn.reading = true;
        let fd = conn.stream.as_raw_fd();
        self.watch(fd, true, ControlOperation::Modify);
    }

    /// The guest will send no more (flag 2): the host socket's writing side is shut, and
    /// the host's answer still reaches the guest. Only "no more receiving" (flag 1) changes
    /// nothing here.
    fn half_close(&mut self, key: ConnKey, flags: u32) {
        const NO_MORE_SENDING: u32 = 2;
        if flags & NO_MORE_SENDING != 0
            && let Some(conn) = self.conns.get(&key)
            && conn.stream.shutdown(std::net::Shutdown::Write).is_err()
        {
            self.reset(key);
        }
    }

    /// Data from the guest to the host socket.
    fn write_host(&mut self, key: ConnKey, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.established {
            self.reset(key);
            return;
        }
        if conn.stream.write_all(payload).is_err() {
            self.reset(key);
            return;
        }
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(payload.len() as u32);
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_told) >= BUF_ALLOC / 2 {
            self.send(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// Puts waiting packets into the guest's receive buffers; an RW packet larger than a
    /// buffer is split.
    fn fill_guest_buffers(&mut self) {
        if self.to_guest.is_empty() {
            return;
        }
        let Self {
            transport,
            to_guest,
            ..
        } = self;
        transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .use_queue(RX_QUEUE, |queue, mem| {
                use_chains(queue, mem, to_guest.len(), |chain| {
                    let mut writer: Writer<'_> = match Writer::new(mem, chain) {
                        Ok(writer) => writer,
                        Err(error) => {
                            tracing::warn!(%error, "virtio-vsock: malformed receive chain");
                            return 0;
                        }
                    };
                    let room = writer.available_bytes().saturating_sub(HEADER_LEN);
                    let Some(packet) = to_guest.front_mut() else {
                        return 0;
                    };
                    if writer.available_bytes() < HEADER_LEN
                        || (room < packet.payload.len() && packet.header.op != op::RW)
                    {
                        tracing::warn!("virtio-vsock: receive buffer too small");
                        return 0;
                    }
                    let take = room.min(packet.payload.len());
                    let mut header = packet.header;
                    header.len = take as u32;
                    let written = writer
                        .write_all(&header.to_bytes())
                        .and_then(|()| writer.write_all(&packet.payload[..take]));
                    if written.is_err() {
                        tracing::warn!("virtio-vsock: receive buffer unwritable");
                        return 0;
                    }
                    if take == packet.payload.len() {
                        to_guest.pop_front();
                    } else {
                        packet.payload.drain(..take);
                        packet.header.len = packet.payload.len() as u32;
                    }
                    (HEADER_LEN + take) as u32
                })
            });
    }
}

/// A header and its payload from a transmit chain.
pub(crate) fn read_packet(reader: &mut Reader<'_>) -> Option<Packet> {
    let mut bytes = [0u8; HEADER_LEN];
    reader.read_exact(&mut bytes).ok()?;
    let header = Header::parse(&bytes);
    let len = header.len as usize;
    if len > MAX_GUEST_PAYLOAD || len > reader.available_bytes() {
        return None;
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).ok()?;
    Some(Packet { header, payload })
}
