//! virtio-vsock (virtio 1.2, section 5.10), stream sockets only, with Firecracker's mapping
//! to Unix sockets on the host (see `config/vsock.rs`). The queues (receive 0, transmit 1,
//! event 2) are served by the device's muxer thread (`muxer.rs`); a notification only wakes
//! it.

pub mod muxer;
pub mod packet;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue::BrokenQueue;
use super::{VIRTIO_F_VERSION_1, VirtioDevice, device_type, read_config_bytes};

pub use muxer::VsockMuxer;

/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 256;

/// The socket device.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    /// Written when the driver notifies any queue; the muxer thread waits on it.
    kick: EventFd,
}

impl Vsock {
    /// A device for guest context ID `guest_cid`, waking its muxer through `kick`.
    pub fn new(guest_cid: u64, kick: EventFd) -> Self {
        Self { guest_cid, kick }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    /// The configuration space: `guest_cid` (u64).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        _queue: &mut Queue,
        _mem: &GuestMemoryMmap,
    ) -> Result<usize, BrokenQueue> {
        if let Err(error) = self.kick.write(1) {
            tracing::warn!(%error, "virtio-vsock: muxer not woken");
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::packet::{HEADER_LEN, HOST_CID, Header, TYPE_STREAM, op};
    use super::*;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::test_driver::{BUFFERS, F_WRITE, TestDriver};

    const CID: u64 = 3;
    const RX_BUFFERS: u16 = 8;
    const RX_BUFFER_LEN: u32 = 4096 + HEADER_LEN as u32;
    /// Where the driver writes its packets.
    const TX_BUFFER: u64 = BUFFERS + 0x4_0000;

    /// A driver for the device with its muxer running, and the socket path.
    struct Setup {
        driver: TestDriver,
        _muxer: VsockMuxer,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
        rx_seen: u16,
        tx_sent: u16,
        /// The guest's receive buffer and what it has consumed, as its packets announce.
        buf_alloc: u32,
        fwd_cnt: u32,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.sock");
            let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut driver = TestDriver::new(Box::new(Vsock::new(CID, kick.try_clone().unwrap())));
            driver.start(RX_BUFFERS);
            for i in 0..RX_BUFFERS {
                let addr = BUFFERS + u64::from(i) * 0x2000;
                driver.write_desc_on(0, i, addr, RX_BUFFER_LEN, F_WRITE, 0);
                driver.offer_on(0, i);
            }
            let muxer = VsockMuxer::spawn(
                CID,
                crate::unix_socket::BoundSocket::bind(path.clone(), true).unwrap(),
                kick,
                driver.transport.clone(),
                &crate::seccomp::ThreadFilters::disabled(),
            )
            .unwrap();
            driver.write32(reg::QUEUE_NOTIFY, 0);
            Self {
                driver,
                _muxer: muxer,
                path,
                _dir: dir,
                rx_seen: 0,
                tx_sent: 0,
                buf_alloc: 65536,
                fwd_cnt: 0,
            }
        }

        /// Sends a packet from guest port 5000 to host port `port`, and waits until the
        /// device has taken it.
        fn send(&mut self, port: u32, op: u16, payload: &[u8]) {
            self.send_packet(port, op, 0, payload);
        }

        /// As [`send`](Self::send), with operation flags and no payload.
        fn send_flags(&mut self, port: u32, op: u16, flags: u32) {
            self.send_packet(port, op, flags, b"");
        }

        fn send_packet(&mut self, port: u32, op: u16, flags: u32, payload: &[u8]) {
            let header = Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: 5000,
                dst_port: port,
                len: payload.len() as u32,
                kind: TYPE_STREAM,
                op,
                flags,
                buf_alloc: self.buf_alloc,
                fwd_cnt: self.fwd_cnt,
            };
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.driver
                .mem
                .write_slice(&bytes, GuestAddress(TX_BUFFER))
                .unwrap();
            self.driver
                .submit_on(1, &[(TX_BUFFER, bytes.len() as u32, false)]);
            self.tx_sent += 1;
            self.driver.wait_used(1, self.tx_sent);
        }

        /// The next packet the device put in a receive buffer; the buffer is offered again.
        fn receive(&mut self) -> (Header, Vec<u8>) {
            self.rx_seen += 1;
            self.driver.wait_used(0, self.rx_seen);
            let (_, used) = self.driver.used_on(0);
            let (id, len) = used[usize::from((self.rx_seen - 1) % RX_BUFFERS)];
            let addr = BUFFERS + u64::from(id) * 0x2000;
            let mut bytes = vec![0u8; len as usize];
            self.driver
                .mem
                .read_slice(&mut bytes, GuestAddress(addr))
                .unwrap();
            let header = Header::parse(bytes[..HEADER_LEN].try_into().unwrap());
            self.driver.offer_on(0, id as u16);
            self.driver.write32(reg::QUEUE_NOTIFY, 0);
            (header, bytes[HEADER_LEN..].to_vec())
        }
    }

    #[test]
    fn reports_its_cid_and_three_queues() {
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut driver = TestDriver::new(Box::new(Vsock::new(42, kick)));
        assert_eq!(driver.read32(reg::DEVICE_ID), 19);
        let mut cid = [0u8; 8];
        driver.read_bytes(reg::CONFIG, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 42);
        driver.write32(reg::QUEUE_SEL, 2);
        assert_eq!(driver.read32(reg::QUEUE_NUM_MAX), 256);
        driver.write32(reg::QUEUE_SEL, 3);
        assert_eq!(driver.read32(reg::QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn the_guest_connects_to_a_host_listener_and_data_flows_both_ways() {
        let mut setup = Setup::new();
        let listener = UnixListener::bind(format!("{}_1234", setup.path.display())).unwrap();
        setup.send(1234, op::REQUEST, b"");
        let (response, _) = setup.receive();
        assert_eq!(response.op, op::RESPONSE);
        assert_eq!((response.src_port, response.dst_port), (1234, 5000));
        assert_eq!((response.src_cid, response.dst_cid), (HOST_CID, CID));
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        setup.send(1234, op::RW, b"ping");
        let mut got = [0u8; 4];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        host.write_all(b"pong").unwrap();
        let (rw, payload) = setup.receive();
        assert_eq!(rw.op, op::RW);
        assert_eq!(payload, b"pong");
        assert_eq!(rw.fwd_cnt, 4, "the muxer took the guest's 4 bytes");

        drop(host);
        let (shutdown, _) = setup.receive();
        assert_eq!(shutdown.op, op::SHUTDOWN);
        assert_eq!(shutdown.flags, 3);
        setup.send(1234, op::RW, b"late");
        let (reset, _) = setup.receive();
        assert_eq!(reset.op, op::RST, "the connection is gone");
    }

    #[test]
    fn the_host_connects_to_a_guest_port() {
        let mut setup = Setup::new();
        let mut host = UnixStream::connect(&setup.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let (request, _) = setup.receive();
        assert_eq!(request.op, op::REQUEST);
        assert_eq!(request.dst_port, 52);
        let host_port = request.src_port;
        assert!(host_port >= 1 << 30);

        // The guest accepts: its RESPONSE comes from port 52 to the host's port.
        let header = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 52,
            dst_port: host_port,
            len: 0,
            kind: TYPE_STREAM,
            op: op::RESPONSE,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        };
        setup
            .driver
            .mem
            .write_slice(&header.to_bytes(), GuestAddress(TX_BUFFER))
            .unwrap();
        setup
            .driver
            .submit_on(1, &[(TX_BUFFER, HEADER_LEN as u32, false)]);
        let mut line = String::new();
        BufReader::new(&host).read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {host_port}\n"));

        host.write_all(b"hello guest").unwrap();
        let (rw, payload) = setup.receive();
        assert_eq!((rw.op, rw.dst_port), (op::RW, 52));
        assert_eq!(payload, b"hello guest");
    }

    #[test]
    fn refused_and_unknown_connections_get_a_reset() {
        let mut setup = Setup::new();
        setup.send(4321, op::REQUEST, b"");
        let (reset, _) = setup.receive();
        assert_eq!(reset.op, op::RST, "nobody listens on port 4321");
        setup.send(4321, op::RW, b"data");
        let (reset, _) = setup.receive();
        assert_eq!(reset.op, op::RST, "no such connection");

        let mut host = UnixStream::connect(&setup.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"HELLO 52\n").unwrap();
        let mut rest = Vec::new();
        assert_eq!(host.read_to_end(&mut rest).unwrap(), 0, "closed");
    }

    #[test]
    fn a_host_that_hangs_up_before_the_guest_answers_gets_the_guest_a_reset() {
        let mut setup = Setup::new();
        let mut host = UnixStream::connect(&setup.path).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let (request, _) = setup.receive();
        assert_eq!(request.op, op::REQUEST);
        drop(host);
        let (reset, _) = setup.receive();
        assert_eq!(reset.op, op::RST);
        assert_eq!(reset.src_port, request.src_port);
    }

    #[test]
    fn a_guest_that_stops_sending_still_gets_the_answer() {
        let mut setup = Setup::new();
        let listener = UnixListener::bind(format!("{}_1234", setup.path.display())).unwrap();
        setup.send(1234, op::REQUEST, b"");
        assert_eq!(setup.receive().0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        setup.send(1234, op::RW, b"question");
        // SHUTDOWN with "no more sending" only.
        setup.send_flags(1234, op::SHUTDOWN, 2);
        let mut asked = Vec::new();
        host.read_to_end(&mut asked).unwrap();
        assert_eq!(
            asked, b"question",
            "the host reads to the end of the guest's data"
        );
        host.write_all(b"answer").unwrap();
        let (rw, payload) = setup.receive();
        assert_eq!((rw.op, payload.as_slice()), (op::RW, &b"answer"[..]));
    }

    #[test]
    fn a_host_that_writes_more_than_the_guest_takes_and_leaves_loses_nothing() {
        let mut setup = Setup::new();
        setup.buf_alloc = 8;
        let listener = UnixListener::bind(format!("{}_1234", setup.path.display())).unwrap();
        setup.send(1234, op::REQUEST, b"");
        assert_eq!(setup.receive().0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(b"twenty bytes of data").unwrap();
        drop(host);
        let mut got = Vec::new();
        loop {
            let (header, payload) = setup.receive();
            if header.op == op::SHUTDOWN {
                break;
            }
            assert_eq!(header.op, op::RW);
            assert!(payload.len() <= 8, "within the guest's credit");
            got.extend_from_slice(&payload);
            // The guest consumed it: a CREDIT_UPDATE gives the room back.
            setup.fwd_cnt += payload.len() as u32;
            setup.send(1234, op::CREDIT_UPDATE, b"");
        }
        assert_eq!(got, b"twenty bytes of data");
    }

    #[test]
    fn the_socket_file_goes_with_the_muxer() {
        let setup = Setup::new();
        let path = setup.path.clone();
        assert!(path.exists());
        drop(setup);
        assert!(!path.exists());
    }
}
