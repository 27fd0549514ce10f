//! The serial console on a Unix socket (`--console socket:PATH`): one client at a time (a new
//! connection replaces the old one) reads the guest's COM1 output and types its input.
//! Output the guest writes while nobody is connected waits in a backlog (the last
//! [`BACKLOG_LIMIT`] bytes), so a client that connects later sees the boot messages. Input
//! goes into the UART's 64-byte receive FIFO; when it is full the thread stops reading the
//! client until the guest has emptied the FIFO (the UART reports that), so typing faster than
//! the guest reads loses nothing.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::serial::SerialDevice;
use crate::seccomp::{ThreadFilters, ThreadKind, spawn_filtered};
use crate::stoppable_thread::StoppableThread;
use crate::unix_socket::BoundSocket;

/// Output kept for a client that is not connected yet, at most.
pub const BACKLOG_LIMIT: usize = 64 * 1024;

const LISTENER: u64 = 0;
const CLIENT: u64 = 1;
const OUTPUT: u64 = 2;
const ROOM: u64 = 3;
const STOP: u64 = 4;

/// The guest's console output on its way to the client: filled by the UART (on vCPU
/// threads), drained by the console thread.
#[derive(Debug)]
pub struct ConsoleBacklog {
    bytes: Mutex<VecDeque<u8>>,
    ready: EventFd,
}

impl ConsoleBacklog {
    /// An empty backlog.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            bytes: Mutex::new(VecDeque::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// Adds the guest's output, dropping the oldest beyond [`BACKLOG_LIMIT`].
    pub fn push(&self, output: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend(output);
        let excess = bytes.len().saturating_sub(BACKLOG_LIMIT);
        bytes.drain(..excess);
        drop(bytes);
        let _ = self.ready.write(1);
    }

    /// Writes as much as `client` takes; returns whether anything is left.
    fn send(&self, client: &mut UnixStream) -> std::io::Result<bool> {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        while !bytes.is_empty() {
            let (front, _) = bytes.as_slices();
            match client.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn is_empty(&self) -> bool {
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// The console thread; dropping it stops the thread (the socket file goes with it).
#[derive(Debug)]
pub struct ConsoleSocket {
    _thread: StoppableThread,
    _socket: BoundSocket,
}

impl ConsoleSocket {
    /// Serves the console on `socket`: `backlog` to the client, the client's bytes into
    /// `serial`, which signals `room` when its receive FIFO has emptied.
    pub fn spawn(
        socket: BoundSocket,
        backlog: Arc<ConsoleBacklog>,
        serial: Arc<Mutex<SerialDevice>>,
        room: EventFd,
        filters: &ThreadFilters,
    ) -> std::io::Result<Self> {
        let listener = socket.listener().try_clone()?;
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (listener.as_raw_fd(), LISTENER),
            (backlog.ready.as_raw_fd(), OUTPUT),
            (room.as_raw_fd(), ROOM),
            (stop.as_raw_fd(), STOP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let mut session = Session {
            epoll,
            backlog,
            serial,
            room,
            client: None,
            interest: EventSet::empty(),
            input: Vec::new(),
        };
        let thread = spawn_filtered("console".into(), filters, ThreadKind::Console, move || {
            let mut events = [EpollEvent::default(); 5];
            // Whether the listener is out of epoll after a failed accept (out of file
            // descriptors: the pending client would wake epoll again and again).
            let mut accept_paused = false;
            loop {
                let timeout = if accept_paused { ACCEPT_RETRY_MS } else { -1 };
                let Some(ready) = crate::stoppable_thread::wait_events(
                    &session.epoll,
                    timeout,
                    &mut events,
                    "the console socket",
                ) else {
                    return;
                };
                if accept_paused {
                    accept_paused = false;
                    let _ = session.epoll.ctl(
                        ControlOperation::Add,
                        listener.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, LISTENER),
                    );
                }
                for event in &events[..ready] {
                    match event.data() {
                        STOP => return,
                        LISTENER => loop {
                            match listener.accept() {
                                Ok((stream, _)) => session.connect(stream),
                                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                                Err(error) => {
                                    tracing::warn!(%error, "console socket cannot accept; retrying shortly");
                                    let _ = session.epoll.ctl(
                                        ControlOperation::Delete,
                                        listener.as_raw_fd(),
                                        EpollEvent::default(),
                                    );
                                    accept_paused = true;
                                    break;
                                }
                            }
                        },
                        OUTPUT => {
                            let _ = session.backlog.ready.read();
                        }
                        ROOM => {
                            let _ = session.room.read();
                            session.feed_guest();
                        }
                        CLIENT => session.client_event(event.event_set()),
                        _ => {}
                    }
                }
                session.send_output();
                session.update_interest();
            }
        })?;
        Ok(Self {
            _thread: StoppableThread::new("console", stop, thread),
            _socket: socket,
        })
    }
}

/// How long (ms) the console waits before accepting again after an accept failed.
const ACCEPT_RETRY_MS: i32 = 100;

/// The connected client.
struct Client {
    stream: UnixStream,
    /// Whether its input may still come: false once a read returned end of file (a client
    /// that shut down its sending side still gets the output).
    reading: bool,
    /// Whether it takes output: false once a write failed (a client that closed may still
    /// have input waiting to be read).
    writing: bool,
    /// Whether epoll watches it: not once it hung up with input still unread, which is then
    /// read as the FIFO takes it, without epoll reporting the hang-up again and again.
    watched: bool,
}

/// Stops epoll watching `client`.
fn unwatch(epoll: &Epoll, client: &Client) {
    if client.watched {
        let _ = epoll.ctl(
            ControlOperation::Delete,
            client.stream.as_raw_fd(),
            EpollEvent::default(),
        );
    }
}

/// The console thread's state.
struct Session {
    epoll: Epoll,
    backlog: Arc<ConsoleBacklog>,
    serial: Arc<Mutex<SerialDevice>>,
    room: EventFd,
    client: Option<Client>,
    /// What the client's fd is registered for.
    interest: EventSet,
    /// Input read from the client that the UART's FIFO has not taken yet.
    input: Vec<u8>,
}

impl Session {
    fn connect(&mut self, stream: UnixStream) {
        self.disconnect();
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let interest = EventSet::IN;
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(interest, CLIENT),
            )
            .is_ok()
        {
            tracing::debug!("console client connected");
            self.client = Some(Client {
                stream,
                reading: true,
                writing: true,
                watched: true,
            });
            self.interest = interest;
        }
    }

    fn disconnect(&mut self) {
        if let Some(client) = self.client.take() {
            unwatch(&self.epoll, &client);
            tracing::debug!("console client gone");
        }
    }

    /// The client's events: input, or its hang-up.
    fn client_event(&mut self, set: EventSet) {
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.read_client();
        }
        let Some(client) = &mut self.client else {
            return;
        };
        // Hung up, or reset (it closed with our output unread): what it sent before still
        // goes in as the FIFO takes it; reads end with end of file or the error.
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            if client.reading && !self.input.is_empty() {
                unwatch(&self.epoll, client);
                client.watched = false;
            } else if !client.reading {
                self.disconnect();
            }
        }
    }

    fn read_client(&mut self) {
        if !self.input.is_empty() {
            return;
        }
        let Some(client) = &mut self.client else {
            return;
        };
        if !client.reading {
            return;
        }
        let mut buffer = [0u8; 4096];
        match client.stream.read(&mut buffer) {
            Ok(0) => {
                client.reading = false;
                if !client.watched || !client.writing {
                    self.disconnect();
                }
            }
            Ok(n) => {
                self.input.extend_from_slice(&buffer[..n]);
                self.feed_guest();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.disconnect(),
        }
    }

    /// Moves waiting input into the UART's FIFO, as much as fits; a client that hung up is
    /// read on as the FIFO empties.
    fn feed_guest(&mut self) {
        if !self.input.is_empty() {
            let taken = self
                .serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .enqueue_input(&self.input);
            self.input.drain(..taken);
        }
        if self.input.is_empty() && self.client.as_ref().is_some_and(|c| !c.watched) {
            self.read_client();
        }
    }

    fn send_output(&mut self) {
        let Some(client) = &mut self.client else {
            return;
        };
        if !client.watched || !client.writing {
            return;
        }
        if self.backlog.send(&mut client.stream).is_err() {
            client.writing = false;
            if !client.reading {
                self.disconnect();
            }
        }
    }

    /// Reads the client only while its input has been taken and more may come; waits for it
    /// to be writable only while output waits.
    fn update_interest(&mut self) {
        let Some(client) = &self.client else {
            return;
        };
        if !client.watched {
            return;
        }
        let mut wanted = EventSet::empty();
        if self.input.is_empty() && client.reading {
            wanted |= EventSet::IN;
        }
        if client.writing && !self.backlog.is_empty() {
            wanted |= EventSet::OUT;
        }
        if wanted != self.interest
            && self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    client.stream.as_raw_fd(),
                    EpollEvent::new(wanted, CLIENT),
                )
                .is_ok()
        {
            self.interest = wanted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_keeps_the_latest_output_up_to_its_limit() {
        let backlog = ConsoleBacklog::new().unwrap();
        backlog.push(&vec![b'a'; BACKLOG_LIMIT]);
        backlog.push(b"tail");
        let (mut client, mut server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut received = Vec::new();
        loop {
            let left = backlog.send(&mut server).unwrap();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = client.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&chunk[..n]);
            }
            if !left {
                break;
            }
        }
        assert_eq!(received.len(), BACKLOG_LIMIT);
        assert!(received.ends_with(b"aaaatail"));
        assert!(backlog.is_empty());
    }
}
