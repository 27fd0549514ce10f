//! Queue notifications off the vCPU threads. For each queue of each virtio device, KVM is
//! given an eventfd to signal when the driver writes that queue's index to the device's
//! QueueNotify register (an ioeventfd matched on the value written), so the write does not
//! leave KVM_RUN at all; one thread waits on every such eventfd and runs the queue there. A
//! vCPU goes on running its guest while a disk request is read or written, as under
//! Firecracker. Without an ioeventfd (device tests without KVM), a QueueNotify write reaches
//! the transport on the writing thread instead, as before.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::MmioTransport;
use crate::seccomp::{ThreadFilters, ThreadKind, spawn_filtered};
use crate::stoppable_thread::StoppableThread;

/// One queue's notification eventfd, and whose queue it is.
#[derive(Debug)]
pub struct QueueNotification {
    /// What KVM signals.
    pub event: EventFd,
    /// The device's transport.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The queue's index.
    pub queue: u32,
}

/// The thread that runs notified queues; dropping it stops and joins it.
#[derive(Debug)]
pub struct NotifyThread {
    _thread: StoppableThread,
}

impl NotifyThread {
    /// Starts the thread for `notifications`, under the device I/O filter.
    pub fn spawn(
        notifications: Vec<QueueNotification>,
        filters: &ThreadFilters,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let stop_token = notifications.len() as u64;
        for (token, notification) in notifications.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                notification.event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let thread = spawn_filtered(
            "virtio-notify".into(),
            filters,
            ThreadKind::DeviceIo,
            move || run(&epoll, &notifications, stop_token),
        )?;
        Ok(Self {
            _thread: StoppableThread::new("virtio-notify", stop, thread),
        })
    }
}

fn run(epoll: &Epoll, notifications: &[QueueNotification], stop_token: u64) {
    let mut events = vec![EpollEvent::default(); notifications.len() + 1];
    loop {
        let Some(ready) = crate::stoppable_thread::wait_events(
            epoll,
            -1,
            &mut events,
            "the virtio notification thread",
        ) else {
            return;
        };
        for event in &events[..ready] {
            let token = event.data();
            if token == stop_token {
                return;
            }
            let Some(notification) = notifications.get(token as usize) else {
                continue;
            };
            // Several writes between two waits are one notification: the queue is drained.
            if notification.event.read().is_err() {
                continue;
            }
            notification
                .transport
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .notify(notification.queue);
        }
    }
}
