//! A VMM thread that is told to stop through an eventfd it waits on: dropping the handle
//! writes the eventfd and joins the thread (the API, the console socket, the virtio
//! notification thread, each network device's receive thread, the vsock muxer).

use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// A running thread and the eventfd that stops it; dropping this stops and joins it.
#[derive(Debug)]
pub struct StoppableThread {
    name: String,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// `thread`, named `name` in logs, which returns once `stop` is written.
    pub fn new(name: impl Into<String>, stop: EventFd, thread: JoinHandle<()>) -> Self {
        Self {
            name: name.into(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        if let Err(error) = self.stop.write(1) {
            tracing::warn!(%error, thread = %self.name, "thread not told to stop");
        } else if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(thread = %self.name, "thread panicked");
        }
    }
}

/// Waits up to `timeout_ms` (-1: no limit) for events on `epoll`, retrying when a signal
/// interrupts the wait. `None` when the wait fails, which is logged as `thread`'s: the thread
/// then ends.
pub fn wait_events(
    epoll: &vmm_sys_util::epoll::Epoll,
    timeout_ms: i32,
    events: &mut [vmm_sys_util::epoll::EpollEvent],
    thread: &str,
) -> Option<usize> {
    loop {
        match epoll.wait(timeout_ms, events) {
            Ok(ready) => return Some(ready),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::error!(%error, "{thread} cannot wait");
                return None;
            }
        }
    }
}
