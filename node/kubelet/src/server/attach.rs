//! `/attach/<namespace>/<pod>/<container>?stdout&stderr`: the running container's output from
//! now on, over the same WebSocket channel protocol as exec (stdout on channel 1, stderr on
//! 2; with `tty`, stdout only), until the container exits and its last output is written (a
//! final Success status on channel 3) or the client goes.
//! The output is read from the container's log as the runtime writes it (through `LogTail`,
//! woken by inotify, as `kubectl logs -f`). With `stdin`, and a
//! container whose spec asks for `stdin: true`, channel 0 is written to the container's stdin
//! FIFO (see `baton_runtime::stdin_path`; for a container with `tty: true` the runtime copies it
//! into the terminal); a v5 client's end of stdin closes this attach's writer. Input for a
//! container without stdin is dropped. With `stdinOnce` (and no terminal), the end of the
//! first attach's input (a v5 close of stdin, or the session's end) lets the runtime close the
//! container's stdin, so that it reads end-of-file. With `tty`, window sizes (channel 4) go to the container's
//! terminal through the runtime.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::exec::{
    ExecRequest, Input, STATUS, STDERR, STDOUT, Socket, StdinWriter, close, drain_input, framed,
    handle_input, input_blocked, is_v5, negotiate, running_container_or_not_found,
    switching_protocols, terminal_size,
};
use super::logs::{LogTail, TailFrom, attempt_files, attempts, parse_record};
use super::{Body, ServerState, text};
use baton_runtime::{ContainerRuntime, ContainerState, RuntimeClient};

/// How long the log may still grow after the container exited (the runtime writes what was
/// left in the container's pipe, and its last unfinished line, once the pipe closes).
const DRAIN: Duration = Duration::from_millis(500);

/// Serves the request: checks it, answers 101 and streams the output on the upgraded
/// connection.
pub(crate) async fn attach(
    state: &ServerState,
    namespace: &str,
    pod_name: &str,
    container: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let mut request = ExecRequest::parse(req.uri().query());
    if !(request.stdin || request.stdout || request.stderr) {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    // A terminal has one output stream, as upstream.
    if request.tty {
        request.stderr = false;
    }
    let (protocol, key) = match negotiate(&req, &super::exec::PROTOCOLS) {
        Ok(negotiated) => negotiated,
        Err(refusal) => return *refusal,
    };
    let pod = match state.pod_or_not_found(namespace, pod_name) {
        Ok(pod) => pod,
        Err(refusal) => return *refusal,
    };
    let spec = crate::ephemeral_containers::any_container(&pod, container);
    let spec = spec.as_ref();
    let spec_stdin = spec.is_some_and(|c| c.stdin == Some(true));
    let spec_tty = spec.is_some_and(|c| c.tty == Some(true));
    let container_id = match running_container_or_not_found(state, &pod, container).await {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    let input: Input = if request.stdin && spec_stdin {
        let fifo = baton_runtime::stdin_path(
            state.ctx.runtime.container_root(&container_id),
            &container_id,
        );
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(&fifo) {
            Ok(sender) => Some(StdinWriter::spawn(sender)),
            // Nobody reads it any more (the process closed its stdin, or just exited): the
            // output can still be attached to.
            Err(err) => {
                tracing::debug!(container = %container_id, %err, "attaching without stdin");
                None
            }
        }
    } else {
        None
    };
    // With stdinOnce, the first attach's end of input is the container's; not for a terminal,
    // whose input ends only with it (as containerd: `kubectl attach -it` can come back).
    let stdin_once =
        (input.is_some() && !spec_tty && spec.is_some_and(|c| c.stdin_once == Some(true)))
            .then(|| (state.ctx.runtime.clone(), container_id.clone()));
    let v5 = is_v5(protocol);
    // Window sizes go to the container's terminal, which the runtime holds.
    let terminal = (request.tty && spec_tty).then(|| Terminal {
        runtime: state.ctx.runtime.clone(),
        container_id: container_id.clone(),
    });
    let pid = match state.ctx.runtime.container_status(&container_id).await {
        Ok(status) if status.state == ContainerState::Running => status.pid,
        _ => None,
    };
    let dir = state.container_log_dir(&pod, container);
    let Some(live) = attempts(&dir)
        .last()
        .and_then(|attempt| attempt_files(&dir, *attempt).last().cloned())
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("unable to upgrade connection: no output of container \"{container}\""),
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                let client = ClientInput {
                    stdin: input,
                    terminal,
                    stdin_once: stdin_once.clone(),
                    v5,
                };
                if let Err(err) = session(ws, &live, pid, request, client).await {
                    tracing::debug!(%err, "attach session");
                }
                // However the session ended, its input has.
                close_stdin_once(stdin_once.as_ref()).await;
            }
            Err(err) => tracing::debug!(%err, "upgrading an attach connection"),
        }
    });
    switching_protocols(protocol, &key)
}

/// Lets the runtime close the container's stdin (`stdinOnce`), once this attach's input is
/// over: the container reads end-of-file when this attach's writer is gone too.
async fn close_stdin_once(stdin_once: Option<&(RuntimeClient, String)>) {
    if let Some((runtime, id)) = stdin_once
        && let Err(err) = runtime.close_stdin(id).await
    {
        tracing::debug!(container = %id, %err, "closing a container's stdin");
    }
}

/// Where the client's messages go.
struct ClientInput {
    /// The container's stdin, if attached to.
    stdin: Input,
    /// The container's terminal, for window sizes.
    terminal: Option<Terminal>,
    /// The runtime and container whose stdin ends with this attach's input (`stdinOnce`).
    stdin_once: Option<(RuntimeClient, String)>,
    /// Whether the client speaks v5 (which can close stdin alone).
    v5: bool,
}

/// The terminal of the container attached to, for window sizes.
struct Terminal {
    runtime: RuntimeClient,
    container_id: String,
}

/// Sends what the container writes from now on until it exits or the client goes.
async fn session(
    ws: Socket,
    live: &std::path::Path,
    pid: Option<i32>,
    request: ExecRequest,
    mut client: ClientInput,
) -> std::io::Result<()> {
    let (mut sink, mut incoming) = ws.split();
    let mut tail = LogTail::open(live, TailFrom::End)?;
    let mut drained_by: Option<tokio::time::Instant> = None;
    let exit = async {
        if let Some(pid) = pid {
            let _ = baton_runtime::wait_for_exit(pid).await;
        }
    };
    tokio::pin!(exit);
    if pid.is_none() {
        drained_by = Some(tokio::time::Instant::now() + DRAIN);
    }
    loop {
        for line in tail.read_lines()? {
            let Some(record) = parse_record(&line) else {
                continue;
            };
            let (wanted, channel) = if record.stderr {
                (request.stderr, STDERR)
            } else {
                (request.stdout, STDOUT)
            };
            if !wanted {
                continue;
            }
            let mut data = record.content.to_vec();
            if !record.partial {
                data.push(b'\n');
            }
            if sink.send(framed(channel, &data)).await.is_err() {
                return Ok(());
            }
        }
        if drained_by.is_some_and(|at| tokio::time::Instant::now() >= at) {
            let status = json!({ "metadata": {}, "status": "Success" });
            let _ = sink
                .send(framed(STATUS, status.to_string().as_bytes()))
                .await;
            close(&mut sink).await;
            return Ok(());
        }
        tokio::select! {
            changed = tail.changed() => changed?,
            // The last output has had its time to reach the log.
            _ = tokio::time::sleep_until(drained_by.unwrap_or_else(tokio::time::Instant::now)), if drained_by.is_some() => {}
            _ = &mut exit, if drained_by.is_none() => {
                drained_by = Some(tokio::time::Instant::now() + DRAIN);
            }
            _ = drain_input(&mut client.stdin), if input_blocked(&client.stdin) => {}
            message = incoming.next(), if !input_blocked(&client.stdin) => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    match (terminal_size(&data), &client.terminal) {
                        (Some((width, height)), Some(terminal)) => {
                            let resized = terminal
                                .runtime
                                .resize_terminal(&terminal.container_id, width, height)
                                .await;
                            if let Err(err) = resized {
                                tracing::debug!(%err, "resizing a container's terminal");
                            }
                        }
                        _ => {
                            let had_input = client.stdin.is_some();
                            handle_input(&data, &mut client.stdin, None, client.v5);
                            if had_input && client.stdin.is_none() {
                                close_stdin_once(client.stdin_once.as_ref()).await;
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
