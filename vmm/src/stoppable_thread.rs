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
