//! The wire between the kubelet and the runtime process: one request, one response, each a
//! length-prefixed JSON frame on a Unix stream socket; file descriptors (an exec's stdio) travel
//! beside a request as SCM_RIGHTS.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::types::{
    ContainerConfig, ContainerStatus, ExecConfig, ExitStatus, Sandbox, SandboxConfig,
};

/// Largest frame either side accepts.
const MAX_FRAME: usize = 16 << 20;
/// Most file descriptors one request carries.
const MAX_FDS: usize = 4;

/// What the kubelet asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Ping,
    CreateSandbox(SandboxConfig),
    RemoveSandbox {
        id: String,
    },
    CreateContainer(ContainerConfig),
    StartContainer {
        id: String,
    },
    SignalContainer {
        id: String,
        signal: i32,
    },
    RemoveContainer {
        id: String,
    },
    ContainerStatus {
        id: String,
    },
    /// Drop the runtime's own writer of a container's stdin.
    CloseStdin {
        id: String,
    },
    /// Set the window size of a container's terminal.
    ResizeTerminal {
        id: String,
        width: u16,
        height: u16,
    },
    ListContainers,
    /// Run a process in a container; stdin, stdout and stderr arrive as three descriptors.
    Exec(ExecConfig),
    /// How an exec'd process ended, once it has.
    ExecStatus {
        pid: i32,
    },
    /// Kill every container, remove every sandbox, and exit.
    Shutdown,
}

impl Request {
    /// The request's name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::CreateSandbox(_) => "create sandbox",
            Request::RemoveSandbox { .. } => "remove sandbox",
            Request::CreateContainer(_) => "create container",
            Request::StartContainer { .. } => "start container",
            Request::SignalContainer { .. } => "signal container",
            Request::RemoveContainer { .. } => "remove container",
            Request::ContainerStatus { .. } => "container status",
            Request::CloseStdin { .. } => "close stdin",
            Request::ResizeTerminal { .. } => "resize terminal",
            Request::ListContainers => "list containers",
            Request::Exec(_) => "exec",
            Request::ExecStatus { .. } => "exec status",
            Request::Shutdown => "shutdown",
        }
    }
}

/// What the runtime answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Pong {
        pid: i32,
    },
    Sandbox(Sandbox),
    Created {
        pid: i32,
    },
    Done,
    Status(ContainerStatus),
    List(Vec<ContainerStatus>),
    ExecStarted {
        pid: i32,
    },
    ExecStatus(Option<ExitStatus>),
    /// The request failed; the message names what and why.
    Failed(String),
}

/// Writes one frame, with `fds` attached to its first byte.
pub(crate) fn send_frame<T: Serialize>(
    stream: &mut UnixStream,
    message: &T,
    fds: &[OwnedFd],
) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(
        &u32::try_from(body.len())
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    frame.extend_from_slice(&body);
    if fds.is_empty() {
        return stream.write_all(&frame);
    }
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other(
            "too many file descriptors for one request",
        ));
    }
    let sent = rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    stream.write_all(&frame[sent..])
}

/// Reads one frame and the descriptors that came with it. `Ok(None)` when the peer closed the
/// connection between frames.
pub(crate) fn recv_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut UnixStream,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut len)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut len[received.bytes..])?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok(Some((message, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    #[test]
    fn frames_carry_messages_and_descriptors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello").unwrap();
        send_frame(
            &mut a,
            &Request::SignalContainer {
                id: "c1".into(),
                signal: 15,
            },
            &[OwnedFd::from(file.try_clone().unwrap())],
        )
        .unwrap();
        send_frame(&mut a, &Request::Ping, &[]).unwrap();
        let (first, fds): (Request, _) = recv_frame(&mut b).unwrap().unwrap();
        assert!(matches!(first, Request::SignalContainer { ref id, signal: 15 } if id == "c1"));
        assert_eq!(fds.len(), 1);
        let mut passed = std::fs::File::from(fds.into_iter().next().unwrap());
        passed.rewind().unwrap();
        let mut text = String::new();
        passed.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        let (second, fds): (Request, _) = recv_frame(&mut b).unwrap().unwrap();
        assert!(matches!(second, Request::Ping));
        assert!(fds.is_empty());
        drop(a);
        assert!(recv_frame::<Request>(&mut b).unwrap().is_none());
    }
}
