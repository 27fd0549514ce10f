//! `/exec/<namespace>/<pod>/<container>?command=...&stdin&stdout&stderr&tty`: a process in a
//! running container over a WebSocket with the channel protocol kubectl speaks
//! (v5.channel.k8s.io, or v4): each binary message starts with its stream — 0 stdin,
//! 1 stdout, 2 stderr, 3 the final status (a metav1.Status: Success, or NonZeroExitCode with
//! the exit code), 4 terminal resize; v5 adds 255 to close a stream (stdin's end).

use std::os::fd::OwnedFd;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Body, ServerState, text};
use crate::container_start::parse_container_id;
use baton_runtime::{ContainerRuntime, ContainerState, ExecConfig};

/// The subprotocols served, best first.
pub(crate) const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;
pub(crate) const STATUS: u8 = 3;
pub(crate) const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// How long a terminal's last output may take to arrive after its process exited.
const TTY_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// What the query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    pub fn parse(query: Option<&str>) -> Self {
        let mut request = ExecRequest::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let on = matches!(value.as_ref(), "true" | "1");
            match key.as_ref() {
                "command" => request.command.push(value.into_owned()),
                "stdin" | "input" => request.stdin = on,
                "stdout" | "output" => request.stdout = on,
                "stderr" | "error" => request.stderr = on,
                "tty" => request.tty = on,
                _ => {}
            }
        }
        request
    }
}

/// Serves the request: checks it, answers 101 and runs the session on the upgraded
/// connection.
pub(crate) async fn exec(
    state: &ServerState,
    namespace: &str,
    pod_name: &str,
    container: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let request = ExecRequest::parse(req.uri().query());
    if request.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let (protocol, key) = match negotiate(&req, &PROTOCOLS) {
        Ok(negotiated) => negotiated,
        Err(refusal) => return *refusal,
    };
    let pod = match state.pod_or_not_found(namespace, pod_name) {
        Ok(pod) => pod,
        Err(refusal) => return *refusal,
    };
    let container_id = match running_container_or_not_found(state, &pod, container).await {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let ctx = state.ctx.clone();
    let v5 = is_v5(protocol);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                if let Err(err) = session(&ctx, ws, container_id, request, v5).await {
                    tracing::debug!(%err, "exec session");
                }
            }
            Err(err) => tracing::debug!(%err, "upgrading an exec connection"),
        }
    });
    switching_protocols(protocol, &key)
}

/// The first of `protocols` (best first) the client asked for, and its WebSocket key, or the
/// refusal to answer.
pub(crate) fn negotiate(
    req: &Request<Incoming>,
    protocols: &[&'static str],
) -> Result<(&'static str, http::HeaderValue), Box<Response<Body>>> {
    let asked = header_tokens(req, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let Some(protocol) = protocols.iter().find(|p| asked.iter().any(|a| a == *p)) else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade connection: the kubelet speaks {} over WebSocket here",
                protocols.join(", ")
            ),
        )));
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade connection: not a WebSocket request",
        )));
    };
    Ok((protocol, key))
}

/// The comma-separated tokens of every `name` header of the request.
pub(crate) fn header_tokens(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether `protocol` is v5 (which can close a single stream).
pub(crate) fn is_v5(protocol: &str) -> bool {
    protocol == PROTOCOLS[0]
}

/// The 101 answer that upgrades to `protocol`.
pub(crate) fn switching_protocols(
    protocol: &'static str,
    key: &http::HeaderValue,
) -> Response<Body> {
    upgraded_to(
        "websocket",
        &[
            (
                header::SEC_WEBSOCKET_ACCEPT.as_str(),
                derive_accept_key(key.as_bytes()),
            ),
            (header::SEC_WEBSOCKET_PROTOCOL.as_str(), protocol.to_owned()),
        ],
    )
}

/// A 101 answer upgrading the connection to `protocol`, with `headers`.
pub(crate) fn upgraded_to(protocol: &str, headers: &[(&str, String)]) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, protocol);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("valid response")
}

/// [`running_container`] of `pod`, or the 404 to answer with.
pub(crate) async fn running_container_or_not_found(
    state: &ServerState,
    pod: &k8s_openapi::api::core::v1::Pod,
    container: &str,
) -> Result<String, Box<Response<Body>>> {
    running_container(state, &pod.uid().unwrap_or_default(), container)
        .await
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::NOT_FOUND,
                format!("unable to upgrade connection: container not found (\"{container}\")"),
            ))
        })
}

/// The runtime id of the running attempt of `container` in pod `uid`.
pub(crate) async fn running_container(
    state: &ServerState,
    uid: &str,
    container: &str,
) -> Option<String> {
    let list = state.ctx.runtime.list_containers().await.ok()?;
    list.into_iter()
        .filter(|status| status.state == ContainerState::Running)
        .filter_map(|status| {
            let (pod, name, attempt) = parse_container_id(&status.id)?;
            (pod == uid && name == container).then_some((attempt, status.id.clone()))
        })
        .max()
        .map(|(_, id)| id)
}

pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The process's stdio as the kubelet holds it.
struct Stdio {
    /// Where stdin goes (absent without stdin).
    input: Input,
    outputs: Vec<(u8, Box<dyn AsyncRead + Send + Unpin>)>,
    /// The terminal's leader side, for resizes.
    terminal: Option<OwnedFd>,
    /// The ends the process gets.
    child: [OwnedFd; 3],
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

fn pipe_stdio(request: &ExecRequest) -> std::io::Result<Stdio> {
    let mut outputs: Vec<(u8, Box<dyn AsyncRead + Send + Unpin>)> = Vec::new();
    let (stdin, input): (OwnedFd, Input) = if request.stdin {
        let (reader, writer) = std::io::pipe()?;
        let writer = tokio::net::unix::pipe::Sender::from_owned_fd(writer.into())?;
        (reader.into(), Some(StdinWriter::spawn(writer)))
    } else {
        (dev_null()?, None)
    };
    let mut out = |wanted: bool, channel: u8| -> std::io::Result<OwnedFd> {
        if !wanted {
            return dev_null();
        }
        let (reader, writer) = std::io::pipe()?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())?;
        outputs.push((channel, Box::new(reader)));
        Ok(writer.into())
    };
    let stdout = out(request.stdout, STDOUT)?;
    let stderr = out(request.stderr, STDERR)?;
    Ok(Stdio {
        input,
        outputs,
        terminal: None,
        child: [stdin, stdout, stderr],
    })
}

fn terminal_stdio() -> std::io::Result<Stdio> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let leader = pty.master;
    let reader = tokio::fs::File::from_std(std::fs::File::from(leader.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(leader.try_clone()?));
    let follower = pty.slave;
    Ok(Stdio {
        input: Some(StdinWriter::spawn(writer)),
        outputs: vec![(STDOUT, Box::new(reader))],
        terminal: Some(leader),
        child: [follower.try_clone()?, follower.try_clone()?, follower],
    })
}

/// The final status message of channel 3.
pub(crate) fn exit_status_message(command: &[String], exit_code: i32) -> serde_json::Value {
    if exit_code == 0 {
        return json!({ "metadata": {}, "status": "Success" });
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {exit_code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": { "causes": [{ "reason": "ExitCode", "message": exit_code.to_string() }] },
    })
}

pub(crate) fn framed(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(Bytes::from(frame))
}

async fn session(
    ctx: &crate::context::KubeletContext,
    ws: Socket,
    container_id: String,
    request: ExecRequest,
    v5: bool,
) -> std::io::Result<()> {
    let (mut sink, mut incoming) = ws.split();
    let stdio = if request.tty {
        terminal_stdio()
    } else {
        pipe_stdio(&request)
    };
    let stdio = match stdio {
        Ok(stdio) => stdio,
        Err(err) => {
            let status = json!({ "metadata": {}, "status": "Failure", "message": format!("set up the process's stdio: {err}"), "reason": "InternalError" });
            let _ = sink
                .send(framed(STATUS, status.to_string().as_bytes()))
                .await;
            return Err(err);
        }
    };
    let Stdio {
        mut input,
        outputs,
        terminal,
        child,
    } = stdio;
    let config = ExecConfig {
        container_id: container_id.clone(),
        args: request.command.clone(),
        tty: request.tty,
    };
    let pid = match ctx.runtime.exec(config, child).await {
        Ok(pid) => pid,
        Err(err) => {
            let status = json!({ "metadata": {}, "status": "Failure", "message": err.to_string(), "reason": "InternalError" });
            let _ = sink
                .send(framed(STATUS, status.to_string().as_bytes()))
                .await;
            close(&mut sink).await;
            return Ok(());
        }
    };
    // Output: one task per stream, all feeding the socket's writer.
    let (frames, mut to_send) = tokio::sync::mpsc::channel::<Message>(16);
    for (channel, mut reader) in outputs {
        let frames = frames.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.send(framed(channel, &buffer[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    // The channel closes once every reader has reached the end of its stream.
    drop(frames);
    let exited = baton_runtime::wait_for_exit(pid);
    tokio::pin!(exited);
    let (mut process_done, mut output_done) = (false, false);
    while !(process_done && (output_done || request.tty)) {
        tokio::select! {
            message = to_send.recv() => match message {
                Some(message) => sink.send(message).await.map_err(std::io::Error::other)?,
                None => output_done = true,
            },
            _ = &mut exited, if !process_done => process_done = true,
            _ = drain_input(&mut input), if input_blocked(&input) => {}
            message = incoming.next(), if !input_blocked(&input) => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    handle_input(&data, &mut input, terminal.as_ref(), v5);
                }
                other @ (Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                    // The client left: stop the process.
                    tracing::debug!(?other, pid, "exec client left");
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                    // Answer a close with a close (a client that is gone just fails this).
                    close(&mut sink).await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // Output still on its way goes out before the status. A terminal's reader may never see
    // its end (another process can hold the terminal open), so it gets a bounded drain.
    let drain_until = tokio::time::Instant::now() + TTY_DRAIN;
    loop {
        let next = if request.tty {
            tokio::time::timeout_at(drain_until, to_send.recv())
                .await
                .unwrap_or_default()
        } else {
            to_send.try_recv().ok()
        };
        let Some(message) = next else { break };
        sink.send(message).await.map_err(std::io::Error::other)?;
    }
    let exit_code = match ctx.runtime.exec_status(pid).await {
        Ok(Some(exit)) => exit.exit_code,
        _ => 1,
    };
    let status = exit_status_message(&request.command, exit_code);
    sink.send(framed(STATUS, status.to_string().as_bytes()))
        .await
        .map_err(std::io::Error::other)?;
    close(&mut sink).await;
    Ok(())
}

/// Ends the session with a normal closure (1000): kubectl treats a close without a status
/// code as an error on its streams.
pub(crate) async fn close(sink: &mut futures::stream::SplitSink<Socket, Message>) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

/// The (width, height) of a resize message (channel 4, `{"Width":W,"Height":H}`).
pub(crate) fn terminal_size(message: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    if message.first() != Some(&RESIZE) {
        return None;
    }
    let size: Size = serde_json::from_slice(&message[1..]).ok()?;
    Some((size.width, size.height))
}

/// Stdin messages queued for a process before the session waits for it to read.
const STDIN_QUEUE: usize = 64;

/// A session's stdin: its writes go through a queue to a task of their own. The session never
/// waits on the queue: what a full queue cannot take is held as pending, and the session then
/// reads no more client messages until the queue takes it ([`drain_input`]), while output,
/// exits and everything else go on. Dropping it ends the input once the queue is written.
pub(crate) struct StdinWriter {
    queue: tokio::sync::mpsc::Sender<Bytes>,
    pending: Option<Bytes>,
}

impl StdinWriter {
    /// Starts the task writing to `writer`.
    pub(crate) fn spawn(mut writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Bytes>(STDIN_QUEUE);
        tokio::spawn(async move {
            while let Some(data) = queued.recv().await {
                if writer.write_all(&data).await.is_err() {
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        Self {
            queue,
            pending: None,
        }
    }

    /// Queues `data` without waiting (holding it as pending when the queue is full); false
    /// once the process's input is gone.
    fn offer(&mut self, data: &[u8]) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        match self.queue.try_send(Bytes::copy_from_slice(data)) {
            Ok(()) => true,
            Err(TrySendError::Full(data)) => {
                self.pending = Some(data);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Whether the session's stdin holds a chunk its queue could not take yet (then no client
/// message is read until [`drain_input`] has queued it).
pub(crate) fn input_blocked(input: &Input) -> bool {
    input.as_ref().is_some_and(|w| w.pending.is_some())
}

/// Waits until the queue takes the pending chunk (cancel-safe: the chunk stays pending until
/// a place is reserved); the input is dropped if the process's input is gone.
pub(crate) async fn drain_input(input: &mut Input) {
    let Some(writer) = input.as_mut() else {
        return std::future::pending().await;
    };
    let queue = writer.queue.clone();
    match queue.reserve().await {
        Ok(permit) => {
            if let Some(data) = writer.pending.take() {
                permit.send(data);
            }
        }
        Err(_) => *input = None,
    }
}

/// Where a session's stdin goes.
pub(crate) type Input = Option<StdinWriter>;

/// Applies one message from the client: stdin data, a resize, or (v5) stdin's end.
pub(crate) fn handle_input(data: &[u8], input: &mut Input, terminal: Option<&OwnedFd>, v5: bool) {
    match data[0] {
        STDIN => {
            if let Some(writer) = input.as_mut()
                && !writer.offer(&data[1..])
            {
                *input = None;
            }
        }
        RESIZE => {
            if let (Some(terminal), Some((width, height))) = (terminal, terminal_size(data)) {
                let _ = baton_runtime::set_window_size(terminal, width, height);
            }
        }
        CLOSE if v5 && data.get(1) == Some(&STDIN) => {
            // The writer task closes the input once what is queued is written.
            *input = None;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_command_and_streams() {
        let request = ExecRequest::parse(Some(
            "command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&tty=true&container=main",
        ));
        assert_eq!(request.command, ["sh", "-c", "echo hi"]);
        assert!(request.stdin && request.stdout && request.tty && !request.stderr);
    }

    #[test]
    fn the_status_carries_the_exit_code() {
        let ok = exit_status_message(&["true".into()], 0);
        assert_eq!(ok["status"], "Success");
        let failed = exit_status_message(&["sh".into(), "-c".into(), "exit 7".into()], 7);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "7");
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7"
        );
    }

    #[tokio::test]
    async fn stdin_that_is_not_read_holds_up_only_its_input() {
        use tokio::io::AsyncReadExt;
        let (writer, mut reader) = tokio::io::duplex(16);
        let mut input: Input = Some(StdinWriter::spawn(writer));
        // Offering never waits: once the pipe and the queue are full, a chunk is held.
        let mut offered = 0;
        while !input_blocked(&input) {
            handle_input(&[STDIN, b'x'], &mut input, None, true);
            offered += 1;
            assert!(offered < 10_000, "the queue never filled");
            tokio::task::yield_now().await;
        }
        // Once the process reads, the held chunk goes on, and everything arrives in order.
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).await.unwrap();
            all
        });
        drain_input(&mut input).await;
        assert!(!input_blocked(&input));
        drop(input);
        let all = reading.await.unwrap();
        assert_eq!(all.len(), offered);
        assert!(all.iter().all(|b| *b == b'x'));
    }
}
