//! virtio-net (virtio 1.2, section 5.1) on a tap device, without offloads: queue 0 receives,
//! queue 1 transmits. Frames the guest sends are written to the tap on the vCPU thread that
//! notifies; frames from the tap are delivered by the device's receive thread, which waits
//! for the tap, for the driver to add receive buffers, or for the VMM to stop.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::queue::{BrokenQueue, drain_queue, use_chains};
use super::{MmioTransport, VIRTIO_F_VERSION_1, VirtioDevice, device_type, read_config_bytes};
use crate::seccomp::{ThreadFilters, ThreadKind, spawn_filtered};
use crate::stoppable_thread::StoppableThread;

/// Feature: the configuration space has the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// `struct virtio_net_hdr_v1`: without offloads, zero but for `num_buffers`.
pub const NET_HEADER_LEN: usize = 12;
/// Largest frame taken from the guest or the tap (64 KiB plus an Ethernet header).
const MAX_FRAME: usize = 65_536 + 14;
const QUEUE_SIZE: u16 = 256;

/// The network device.
#[derive(Debug)]
pub struct Net {
    tap: Arc<File>,
    mac: [u8; 6],
    /// Written when the driver notifies the receive queue (it added buffers).
    rx_buffers_added: EventFd,
    frame: Vec<u8>,
    /// Frames written to the tap.
    pub frames_sent: u64,
    /// Frames the receive thread gave the guest.
    frames_received: Arc<AtomicU64>,
}

impl Net {
    /// A device whose host side is `tap` (opened without packet information or virtio-net
    /// headers) and whose guest has `mac`; `rx_buffers_added` is the receive thread's wake-up.
    pub fn new(tap: Arc<File>, mac: [u8; 6], rx_buffers_added: EventFd) -> Self {
        Self {
            tap,
            mac,
            rx_buffers_added,
            frame: Vec::new(),
            frames_sent: 0,
            frames_received: Arc::default(),
        }
    }

    /// The counter the receive thread adds delivered frames to.
    pub fn frames_received(&self) -> Arc<AtomicU64> {
        self.frames_received.clone()
    }

    /// Sends one transmit chain's frame (after its header) to the tap; returns 0, the
    /// bytes the device wrote into the chain.
    fn transmit(&mut self, chain: super::queue::Chain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let mut reader: Reader<'_> = match Reader::new(mem, chain) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, "virtio-net: malformed transmit chain");
                return 0;
            }
        };
        let len = reader.available_bytes();
        if len < NET_HEADER_LEN || len - NET_HEADER_LEN > MAX_FRAME {
            tracing::warn!(
                len,
                "virtio-net: transmit chain dropped: no header or too long"
            );
            return 0;
        }
        let mut header = [0u8; NET_HEADER_LEN];
        self.frame.resize(len - NET_HEADER_LEN, 0);
        if reader.read_exact(&mut header).is_err() || reader.read_exact(&mut self.frame).is_err() {
            tracing::warn!("virtio-net: transmit chain unreadable");
            return 0;
        }
        match (&*self.tap).write(&self.frame) {
            Ok(_) => self.frames_sent += 1,
            Err(error) => tracing::debug!(%error, "virtio-net: frame not sent"),
        }
        0
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    /// The configuration space: the MAC address; the other fields belong to features not
    /// offered and read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("frames_sent", self.frames_sent),
            (
                "frames_received",
                self.frames_received.load(Ordering::Relaxed),
            ),
        ]
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, BrokenQueue> {
        match index {
            RX_QUEUE => {
                if let Err(error) = self.rx_buffers_added.write(1) {
                    tracing::warn!(%error, "virtio-net: receive thread not woken");
                }
                Ok(0)
            }
            _ => drain_queue(queue, mem, |chain| self.transmit(chain, mem)),
        }
    }
}

/// Writes `frame`, after a header, into the next receive chain; returns 1 if a chain was
/// used (a chain too small for the frame is used empty and the frame dropped), 0 if the
/// driver has no receive buffer available.
pub fn deliver_frame(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
) -> Result<usize, BrokenQueue> {
    use_chains(queue, mem, 1, |chain| {
        let mut writer: Writer<'_> = match Writer::new(mem, chain) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(%error, "virtio-net: malformed receive chain");
                return 0;
            }
        };
        if writer.available_bytes() < NET_HEADER_LEN + frame.len() {
            tracing::warn!(
                buffer = writer.available_bytes(),
                frame = frame.len(),
                "virtio-net: receive buffer too small, frame dropped"
            );
            return 0;
        }
        let mut header = [0u8; NET_HEADER_LEN];
        header[10] = 1; // num_buffers
        match writer
            .write_all(&header)
            .and_then(|()| writer.write_all(frame))
        {
            Ok(()) => (NET_HEADER_LEN + frame.len()) as u32,
            Err(error) => {
                tracing::warn!(%error, "virtio-net: receive buffer unwritable");
                0
            }
        }
    })
}

/// The receive thread of a network device.
#[derive(Debug)]
pub struct NetReceiver {
    _thread: StoppableThread,
}

const TAP_EVENT: u64 = 0;
const BUFFERS_EVENT: u64 = 1;
const STOP_EVENT: u64 = 2;

impl NetReceiver {
    /// Starts a thread that moves frames from `tap` into `transport`'s receive queue,
    /// waking when the tap is readable or `rx_buffers_added` is written.
    pub fn spawn(
        name: String,
        tap: Arc<File>,
        rx_buffers_added: EventFd,
        transport: Arc<Mutex<MmioTransport>>,
        frames_received: Arc<AtomicU64>,
        filters: &ThreadFilters,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, data) in [
            (tap.as_raw_fd(), TAP_EVENT),
            (rx_buffers_added.as_raw_fd(), BUFFERS_EVENT),
            (stop.as_raw_fd(), STOP_EVENT),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )?;
        }
        let receive = Receive {
            tap,
            rx_buffers_added,
            transport,
            epoll,
            pending: None,
            frames_received,
        };
        let thread = spawn_filtered(
            format!("{name}-rx"),
            filters,
            ThreadKind::NetReceive,
            move || receive.run(),
        )?;
        Ok(Self {
            _thread: StoppableThread::new(name, stop, thread),
        })
    }
}

struct Receive {
    tap: Arc<File>,
    rx_buffers_added: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    epoll: Epoll,
    /// A frame read from the tap that no receive buffer has taken yet.
    pending: Option<Vec<u8>>,
    frames_received: Arc<AtomicU64>,
}

impl Receive {
    fn run(mut self) {
        let mut events = [EpollEvent::default(); 3];
        let mut buffer = vec![0u8; MAX_FRAME];
        loop {
            let Some(ready) = crate::stoppable_thread::wait_events(
                &self.epoll,
                -1,
                &mut events,
                "the virtio-net receive thread",
            ) else {
                return;
            };
            for event in &events[..ready] {
                if event.data() == TAP_EVENT
                    && event
                        .event_set()
                        .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    // The tap is gone (its link or namespace was deleted): nothing more will
                    // arrive, and epoll would report it forever.
                    tracing::warn!("virtio-net: the tap failed; the device receives no more");
                    return;
                }
                match event.data() {
                    STOP_EVENT => return,
                    BUFFERS_EVENT => {
                        let _ = self.rx_buffers_added.read();
                    }
                    _ => {
                        if self.pending.is_none() {
                            match (&*self.tap).read(&mut buffer) {
                                Ok(n) => self.pending = Some(buffer[..n].to_vec()),
                                Err(error) => {
                                    tracing::debug!(%error, "virtio-net: tap read failed")
                                }
                            }
                        }
                    }
                }
            }
            self.try_deliver();
        }
    }

    /// Hands the pending frame to the guest if it has a buffer; while one is pending the
    /// tap is not watched (the kernel queues frames for it), only the driver's notification.
    fn try_deliver(&mut self) {
        let Some(frame) = &self.pending else {
            return;
        };
        let used = self
            .transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .use_queue(RX_QUEUE, |queue, mem| deliver_frame(queue, mem, frame));
        let delivered = matches!(used, Some(1..));
        if delivered {
            self.pending = None;
            self.frames_received.fetch_add(1, Ordering::Relaxed);
        }
        let events = if delivered {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if let Err(error) = self.epoll.ctl(
            ControlOperation::Modify,
            self.tap.as_raw_fd(),
            EpollEvent::new(events, TAP_EVENT),
        ) {
            tracing::warn!(%error, "virtio-net: cannot change the tap's watch");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_driver::{BUFFERS, TestDriver};

    /// A datagram socket pair stands in for the tap: like a tap, it carries whole frames.
    fn net_with_peer() -> (TestDriver, UnixDatagram, Arc<File>, EventFd) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        let tap = Arc::new(File::from(std::os::fd::OwnedFd::from(ours)));
        let buffers_added = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let net = Net::new(
            tap.clone(),
            [0x52, 0x54, 0, 0xba, 0, 1],
            buffers_added.try_clone().unwrap(),
        );
        let mut driver = TestDriver::new(Box::new(net));
        driver.start(16);
        (driver, peer, tap, buffers_added)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x52, 0x54, 0, 0xba, 0, 1, 0x88, 0xb5]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn offers_its_mac_and_sends_frames_without_the_header() {
        let (mut driver, peer, _tap, _) = net_with_peer();
        let mut mac = [0u8; 6];
        driver.read_bytes(0x100, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 0xba, 0, 1]);
        assert_eq!(
            driver.device_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
        );

        let sent = frame(b"hello from the guest");
        let mut chain = vec![0u8; NET_HEADER_LEN];
        chain.extend_from_slice(&sent);
        driver
            .mem
            .write_slice(&chain, GuestAddress(BUFFERS))
            .unwrap();
        driver.submit_on(
            1,
            &[
                (BUFFERS, 4, false),
                (BUFFERS + 4, chain.len() as u32 - 4, false),
            ],
        );
        let mut received = vec![0u8; 2048];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = peer.recv(&mut received).unwrap();
        assert_eq!(&received[..n], sent.as_slice());
        assert_eq!(driver.used_on(1), (1, vec![(0, 0)]));

        // A chain shorter than the header sends nothing.
        driver.submit_on(1, &[(BUFFERS, 8, false)]);
        assert_eq!(driver.used_on(1).0, 2);
        peer.set_nonblocking(true).unwrap();
        assert!(peer.recv(&mut received).is_err(), "nothing sent");
    }

    #[test]
    fn received_frames_wait_for_buffers_and_too_small_buffers_drop_them() {
        let (mut driver, peer, tap, buffers_added) = net_with_peer();
        let receiver = NetReceiver::spawn(
            "test".into(),
            tap,
            buffers_added,
            driver.transport.clone(),
            Arc::default(),
            &ThreadFilters::disabled(),
        )
        .unwrap();

        // A frame before any receive buffer: it waits.
        let first = frame(b"first");
        peer.send(&first).unwrap();
        // A window to see nothing delivered in: the receive thread takes the frame at once.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(driver.used_on(0).0, 0, "no buffer, nothing delivered");

        // A good buffer, then one too small for the second frame.
        driver.write_desc_on(0, 0, BUFFERS, 2048, 2, 0);
        driver.write_desc_on(0, 1, BUFFERS + 0x1000, 8, 2, 0);
        driver.offer_on(0, 0);
        driver.offer_on(0, 1);
        driver.write32(crate::devices::virtio::mmio::reg::QUEUE_NOTIFY, 0);
        let used = driver.wait_used(0, 1);
        assert_eq!(used[0], (0, (NET_HEADER_LEN + first.len()) as u32));
        let mut header = [0u8; NET_HEADER_LEN];
        driver
            .mem
            .read_slice(&mut header, GuestAddress(BUFFERS))
            .unwrap();
        assert_eq!(
            header,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "num_buffers 1"
        );
        let mut got = vec![0u8; first.len()];
        driver
            .mem
            .read_slice(&mut got, GuestAddress(BUFFERS + NET_HEADER_LEN as u64))
            .unwrap();
        assert_eq!(got, first);
        assert_eq!(driver.interrupt.status() & 1, 1, "used-buffer interrupt");

        peer.send(&frame(b"second, too big for 8 bytes")).unwrap();
        let used = driver.wait_used(0, 2);
        assert_eq!(used[1], (1, 0), "used empty, the frame dropped");
        drop(receiver);
    }
}
