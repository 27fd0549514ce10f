//! `/portForward/<namespace>/<pod>`: kubectl port-forward. The connection is upgraded to
//! SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`), or to a
//! WebSocket whose binary messages carry the same SPDY bytes (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later try first). In the session,
//! each forwarded connection is a pair of streams the client opens with the headers
//! `streamType` (`error` or `data`), `port` and `requestID`: once both are there the kubelet
//! connects to localhost:port inside the pod's network namespace (IPv4, then IPv6) and copies
//! bytes both ways on the data stream. As containerd's forwarder, once one direction has ended
//! the other gets a second to finish (the client's end of input half-closes the pod's socket
//! first). A failure is written on the error stream as text; the error stream always ends
//! with FIN, the data stream too unless the client reset it.
//!
//! Limits keep one client from holding the kubelet: a pair must be complete within 30 s, a
//! session has at most 128 pairs, a stream queues at most 32 frames for a pod that does not
//! read (then it is reset, and the others go on), and frames are size-checked before anything
//! is allocated for them (see `spdy`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::exec::{header_tokens, negotiate, switching_protocols, upgraded_to};
use super::spdy::{FLAG_FIN, Frame, FrameReader, FrameWriter, MAX_DATA_WRITE, RST_REFUSED_STREAM};
use super::{Body, ServerState, text};
use crate::probes::netns::{connect, dial_message, os_text};

/// The port-forward protocol version.
const PROTOCOL: &str = "portforward.k8s.io";
/// Its name as a WebSocket subprotocol carrying SPDY.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY upgrade token.
const SPDY: &str = "SPDY/3.1";
/// How long a connect to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What one session may hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// How long the second half of a pair may take to come (upstream's stream creation
    /// timeout is 30 s).
    pair_timeout: Duration,
    /// Pairs (pending or forwarding) one session may have.
    max_pairs: usize,
    /// Data frames from the client queued per stream before the session waits for the pod.
    inbound_queue: usize,
    /// How long the session waits for a pod that does not take its data before resetting that
    /// stream (meanwhile the session reads nothing, as kubectl's own SPDY library, which has
    /// no flow control, waits).
    stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pair_timeout: Duration::from_secs(30),
            max_pairs: 128,
            inbound_queue: 32,
            stall_timeout: Duration::from_secs(30),
        }
    }
}
/// How long the client's remaining input may take to reach the pod once the pod's side has
/// ended (containerd's grace).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long the session's last frames may take to be written once it ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// RST_STREAM status: the stream id is not valid.
const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: the stream is being cancelled (its pod did not keep up).
const RST_CANCEL: u32 = 5;
/// The largest WebSocket message accepted in the tunnel.
const MAX_TUNNEL_MESSAGE: usize = 2 * 1024 * 1024;

/// Which pod a session forwards to.
#[derive(Clone)]
struct Target {
    namespace: String,
    name: String,
    uid: String,
    /// The pod's network namespace file (`None`: the pod uses the node's network).
    netns: Option<PathBuf>,
}

/// Checks the request, answers 101 and runs the session on the upgraded connection.
pub(crate) async fn port_forward(
    state: &ServerState,
    namespace: &str,
    pod_name: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let upgrade_to = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let websocket = upgrade_to.eq_ignore_ascii_case("websocket");
    let negotiated = if websocket {
        match negotiate(&req, &[TUNNEL_PROTOCOL]) {
            Ok(negotiated) => Some(negotiated),
            Err(refusal) => return *refusal,
        }
    } else {
        if !upgrade_to.eq_ignore_ascii_case(SPDY) {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade connection: port-forward needs Upgrade: SPDY/3.1 or a WebSocket",
            );
        }
        let versions = header_tokens(&req, "X-Stream-Protocol-Version");
        if !versions.is_empty() && !versions.iter().any(|v| v == PROTOCOL) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {versions:?}, server supports [\"{PROTOCOL}\"]"
                ),
            );
        }
        None
    };
    let pod = match state.pod_or_not_found(namespace, pod_name) {
        Ok(pod) => pod,
        Err(refusal) => return *refusal,
    };
    let uid = pod.uid().unwrap_or_default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let target = Target {
        namespace: namespace.to_owned(),
        name: pod_name.to_owned(),
        netns: (!host_network).then(|| {
            baton_runtime::sandbox_network_path(state.ctx.runtime.sandbox_root(&uid), &uid)
        }),
        uid,
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(err) => {
                tracing::debug!(%err, "upgrading a port-forward connection");
                return;
            }
        };
        if websocket {
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_TUNNEL_MESSAGE))
                .max_frame_size(Some(MAX_TUNNEL_MESSAGE));
            let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
            session(websocket_bytes(ws), target, Limits::default()).await;
        } else {
            session(upgraded, target, Limits::default()).await;
        }
    });
    match negotiated {
        Some((protocol, key)) => switching_protocols(protocol, &key),
        None => upgraded_to(SPDY, &[("X-Stream-Protocol-Version", PROTOCOL.to_owned())]),
    }
}

/// The bytes carried in a WebSocket's binary messages, as a byte stream.
fn websocket_bytes<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_session, mut to_session) = tokio::io::split(ours);
    let (mut sink, mut messages) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            match message {
                Message::Binary(data) if to_session.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; MAX_DATA_WRITE + 64];
        loop {
            match from_session.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buffer[..n]));
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    theirs
}

/// A pair of streams waiting for its other half.
struct PendingPair {
    error_stream: Option<u32>,
    data_stream: Option<(u32, mpsc::Receiver<Bytes>)>,
    port: String,
    since: Instant,
}

/// What the session keeps of a data stream whose connection is being forwarded.
struct Forwarding {
    /// Cancels the forwarder (the client reset the stream, or the pod fell behind).
    cancel: oneshot::Sender<()>,
}

/// Runs one SPDY session until the client goes away; its forwarded connections end with it.
async fn session<IO>(io: IO, target: Target, limits: Limits)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let (frames, mut outgoing) = mpsc::channel::<Frame>(64);
    let mut writer = tokio::spawn(async move {
        let mut writer = FrameWriter::new(write);
        while let Some(frame) = outgoing.recv().await {
            // Whatever else is queued goes out with it, in one flush.
            let mut next = Some(frame);
            while let Some(frame) = next {
                if let Err(err) = writer.write_unflushed(&frame).await {
                    tracing::debug!(%err, "port-forward session write");
                    return;
                }
                next = outgoing.try_recv().ok();
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    // Frames are read on a task of their own, so that the loop below can also wait for pair
    // deadlines without ever abandoning a frame half read.
    let (incoming_frames, mut incoming) = mpsc::channel(8);
    let reader = tokio::spawn(async move {
        let mut reader = FrameReader::new(read);
        loop {
            match reader.next().await {
                Ok(Some(frame)) => {
                    if incoming_frames.send(frame).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    tracing::debug!(%err, "port-forward session read");
                    return;
                }
            }
        }
    });
    let mut pending: HashMap<String, PendingPair> = HashMap::new();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut forwarding: HashMap<u32, Forwarding> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut last_stream_id = 0u32;
    let mut gone_away = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let frame = tokio::select! {
            frame = incoming.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            _ = tick.tick() => {
                expire_pairs(&mut pending, &mut inbound, &frames, limits.pair_timeout).await;
                continue;
            }
        };
        // Finished forwarders are forgotten.
        while tasks.try_join_next().is_some() {}
        forwarding.retain(|_, f| !f.cancel.is_closed());
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
            } => {
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let kind = header("streamtype").unwrap_or_default();
                // Old clients send no request id: the pair is then the error stream's id (the
                // data stream comes right after it, two ids on).
                let request = header("requestid").unwrap_or_else(|| match kind.as_str() {
                    "error" => stream_id.to_string(),
                    _ => stream_id.saturating_sub(2).to_string(),
                });
                let new_pair = !pending.contains_key(&request);
                // Client streams have odd, increasing ids.
                let refusal = if stream_id % 2 == 0 || stream_id <= last_stream_id {
                    Some(RST_PROTOCOL_ERROR)
                } else if gone_away
                    || (kind != "error" && kind != "data")
                    || (new_pair && pending.len() + forwarding.len() >= limits.max_pairs)
                {
                    Some(RST_REFUSED_STREAM)
                } else {
                    None
                };
                if stream_id > last_stream_id {
                    last_stream_id = stream_id;
                }
                if let Some(status) = refusal {
                    let _ = frames.send(Frame::RstStream { stream_id, status }).await;
                    continue;
                }
                let _ = frames
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: vec![],
                    })
                    .await;
                let pair = pending
                    .entry(request.clone())
                    .or_insert_with(|| PendingPair {
                        error_stream: None,
                        data_stream: None,
                        port: String::new(),
                        since: Instant::now(),
                    });
                let taken = if kind == "error" {
                    pair.error_stream.is_some()
                } else {
                    pair.data_stream.is_some()
                };
                if taken {
                    // A second stream of one kind for one request: upstream's "already
                    // assigned".
                    let _ = frames
                        .send(Frame::RstStream {
                            stream_id,
                            status: RST_PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                }
                if kind == "error" {
                    pair.error_stream = Some(stream_id);
                } else {
                    // The data stream's port is the one forwarded.
                    pair.port = header("port").unwrap_or_default();
                    let (sender, receiver) = mpsc::channel(limits.inbound_queue);
                    // A data stream opened with FIN has no input at all.
                    if flags & FLAG_FIN == 0 {
                        inbound.insert(stream_id, sender);
                    }
                    pair.data_stream = Some((stream_id, receiver));
                }
                if pair.error_stream.is_some() && pair.data_stream.is_some() {
                    let pair = pending.remove(&request).expect("the pair is pending");
                    let (Some(error_stream), Some((data_stream, receiver))) =
                        (pair.error_stream, pair.data_stream)
                    else {
                        continue;
                    };
                    let (cancel, cancelled) = oneshot::channel();
                    let connection = Connection {
                        target: target.clone(),
                        port: pair.port,
                        error_stream,
                        data_stream,
                        frames: frames.clone(),
                    };
                    tasks.spawn(connection.run(receiver, cancelled));
                    forwarding.insert(data_stream, Forwarding { cancel });
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if !data.is_empty()
                    && let Some(sender) = inbound.get(&stream_id).cloned()
                {
                    use mpsc::error::{SendTimeoutError, TrySendError};
                    let delivered = match sender.try_send(data) {
                        Ok(()) => Ok(()),
                        Err(TrySendError::Closed(_)) => Err(false),
                        // The pod reads slower than the client sends: wait for it, for a
                        // while.
                        Err(TrySendError::Full(data)) => {
                            match sender.send_timeout(data, limits.stall_timeout).await {
                                Ok(()) => Ok(()),
                                Err(SendTimeoutError::Closed(_)) => Err(false),
                                Err(SendTimeoutError::Timeout(_)) => Err(true),
                            }
                        }
                    };
                    if let Err(stalled) = delivered {
                        inbound.remove(&stream_id);
                        if stalled {
                            // The pod does not take its data: this connection ends, not the
                            // session.
                            if let Some(f) = forwarding.remove(&stream_id) {
                                let _ = f.cancel.send(());
                            }
                            let _ = frames
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: RST_CANCEL,
                                })
                                .await;
                        }
                    }
                }
                if flags & FLAG_FIN != 0 {
                    // The client sends no more: the pod's side sees the end of input.
                    inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                // The forwarder stops, and still ends its error stream.
                inbound.remove(&stream_id);
                if let Some(f) = forwarding.remove(&stream_id) {
                    let _ = f.cancel.send(());
                }
                // Half a pair that is reset will not be completed.
                pending.retain(|_, pair| {
                    pair.error_stream != Some(stream_id)
                        && pair.data_stream.as_ref().map(|(id, _)| *id) != Some(stream_id)
                });
            }
            // Only the client's pings (odd ids) are answered; ours would be even.
            Frame::Ping { id } if id % 2 == 1 => {
                let _ = frames.send(Frame::Ping { id }).await;
            }
            // No new streams; the ones open go on until the client closes the connection.
            Frame::GoAway { .. } => gone_away = true,
            Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Ignored { .. } => {}
        }
    }
    reader.abort();
    drop(inbound);
    tasks.shutdown().await;
    drop(frames);
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Ends the pairs whose other half did not come in time: the error stream (if any) says so,
/// and both streams end.
async fn expire_pairs(
    pending: &mut HashMap<String, PendingPair>,
    inbound: &mut HashMap<u32, mpsc::Sender<Bytes>>,
    frames: &mpsc::Sender<Frame>,
    timeout: Duration,
) {
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, pair)| pair.since.elapsed() >= timeout)
        .map(|(request, _)| request.clone())
        .collect();
    for request in expired {
        let Some(pair) = pending.remove(&request) else {
            continue;
        };
        if let Some(stream_id) = pair.error_stream {
            let message = format!("timed out waiting for the data stream of request {request}");
            for frame in [data(stream_id, 0, Bytes::from(message)), fin(stream_id)] {
                let _ = frames.send(frame).await;
            }
        }
        if let Some((stream_id, _)) = pair.data_stream {
            inbound.remove(&stream_id);
            let _ = frames.send(fin(stream_id)).await;
        }
    }
}

fn data(stream_id: u32, flags: u8, data: Bytes) -> Frame {
    Frame::Data {
        stream_id,
        flags,
        data,
    }
}

fn fin(stream_id: u32) -> Frame {
    data(stream_id, FLAG_FIN, Bytes::new())
}

/// One forwarded connection: a pair of streams and the pod's port.
struct Connection {
    target: Target,
    port: String,
    error_stream: u32,
    data_stream: u32,
    frames: mpsc::Sender<Frame>,
}

impl Connection {
    async fn run(self, from_client: mpsc::Receiver<Bytes>, cancelled: oneshot::Receiver<()>) {
        let (result, data_ended) = tokio::select! {
            result = self.forward(from_client) => result,
            // Reset by the client (or cut for not keeping up): nothing more on that stream.
            _ = cancelled => (Ok(()), true),
        };
        if let Err(message) = result {
            tracing::debug!(pod = %self.target.name, port = %self.port, %message, "port-forward");
            let _ = self
                .frames
                .send(data(self.error_stream, 0, Bytes::from(message)))
                .await;
        }
        if !data_ended {
            let _ = self.frames.send(fin(self.data_stream)).await;
        }
        let _ = self.frames.send(fin(self.error_stream)).await;
    }

    /// Connects and copies until the pod's side has ended; the error text for the client if
    /// it fails, and whether the data stream's FIN was sent. Once the pod's side has ended,
    /// the client's remaining input gets [`CLOSE_GRACE`] to reach it (failures then are no
    /// error: the pod is gone); once the client's input has ended, the pod's socket is
    /// half-closed and its side is waited for (the client waits for it too).
    async fn forward(&self, mut from_client: mpsc::Receiver<Bytes>) -> (Result<(), String>, bool) {
        let port: u16 = match self.port.parse() {
            Ok(0) => return (Err(format!("port {:?} must be > 0", self.port)), false),
            Ok(port) => port,
            Err(err) => {
                return (
                    Err(format!("unable to parse {:?} as a port: {err}", self.port)),
                    false,
                );
            }
        };
        let target = &self.target;
        let failed = |cause: String| {
            format!(
                "error forwarding port {port} to pod {}/{}, uid {}: {cause}",
                target.namespace, target.name, target.uid
            )
        };
        if let Some(netns) = &target.netns
            && !netns.exists()
        {
            let cause = format!("the pod's network namespace {} is gone", netns.display());
            return (Err(failed(cause)), false);
        }
        let stream = match connect_localhost(target.netns.as_deref(), port).await {
            Ok(stream) => stream,
            Err(cause) => return (Err(failed(cause)), false),
        };
        let (mut from_pod, mut to_pod) = stream.into_split();
        let upstream = async {
            while let Some(data) = from_client.recv().await {
                to_pod.write_all(&data).await?;
            }
            to_pod.shutdown().await
        };
        let frames = self.frames.clone();
        let data_stream = self.data_stream;
        let downstream = async move {
            let mut buffer = vec![0u8; MAX_DATA_WRITE];
            loop {
                let n = from_pod.read(&mut buffer).await?;
                let flags = if n == 0 { FLAG_FIN } else { 0 };
                let frame = data(data_stream, flags, Bytes::copy_from_slice(&buffer[..n]));
                if frames.send(frame).await.is_err() || n == 0 {
                    return std::io::Result::Ok(());
                }
            }
        };
        let copying = |err: std::io::Error| failed(format!("copying: {}", os_text(&err)));
        tokio::pin!(upstream, downstream);
        tokio::select! {
            ended = &mut downstream => match ended {
                Ok(()) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut upstream).await;
                    (Ok(()), true)
                }
                Err(err) => (Err(copying(err)), false),
            },
            ended = &mut upstream => match ended {
                Ok(()) => match downstream.await {
                    Ok(()) => (Ok(()), true),
                    Err(err) => (Err(copying(err)), false),
                },
                Err(err) => (Err(copying(err)), false),
            },
        }
    }
}

/// Connects to localhost:`port` inside the network namespace (`None`: the node's own):
/// 127.0.0.1, then [::1].
async fn connect_localhost(
    netns: Option<&std::path::Path>,
    port: u16,
) -> Result<tokio::net::TcpStream, String> {
    let mut failures = Vec::new();
    for (family, address) in [
        ("IPv4", SocketAddr::from(([127, 0, 0, 1], port))),
        (
            "IPv6",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ),
    ] {
        match connect(netns, address, CONNECT_TIMEOUT).await {
            Ok(stream) => return Ok(stream),
            Err(err) => failures.push(format!("{family}: {}", dial_message(address, &err))),
        }
    }
    Err(format!(
        "failed to connect to localhost:{port} inside the pod's network namespace, {}",
        failures.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A pod on the node's own network (a hostNetwork pod): its ports are the test's.
    fn target() -> Target {
        Target {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            netns: None,
        }
    }

    fn headers(kind: &str, port: u16, request: &str) -> Vec<(String, String)> {
        vec![
            ("streamtype".to_owned(), kind.to_owned()),
            ("port".to_owned(), port.to_string()),
            ("requestid".to_owned(), request.to_owned()),
        ]
    }

    /// The client's side of a session: a writer, and the frames it receives.
    struct Client {
        writer: FrameWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
        received: mpsc::UnboundedReceiver<Frame>,
        session: tokio::task::JoinHandle<()>,
    }

    impl Client {
        fn start(limits: Limits) -> Self {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let session = tokio::spawn(session(server, target(), limits));
            let (read, write) = tokio::io::split(client);
            let (sender, received) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut reader = FrameReader::new(read);
                while let Ok(Some(frame)) = reader.next().await {
                    if sender.send(frame).is_err() {
                        return;
                    }
                }
            });
            Self {
                writer: FrameWriter::new(write),
                received,
                session,
            }
        }

        async fn send(&mut self, frame: Frame) {
            self.writer.write(&frame).await.unwrap();
        }

        async fn open_pair(&mut self, error: u32, data: u32, port: u16, request: &str) {
            for (stream_id, kind) in [(error, "error"), (data, "data")] {
                self.send(Frame::SynStream {
                    stream_id,
                    flags: 0,
                    headers: headers(kind, port, request),
                })
                .await;
            }
        }

        /// Frames until `done` accepts one (10 s at most).
        async fn until(&mut self, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let frame = tokio::time::timeout_at(deadline, self.received.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no such frame; got {seen:?}"))
                    .expect("the session is open");
                let last = done(&frame);
                seen.push(frame);
                if last {
                    return seen;
                }
            }
        }
    }

    fn is_fin(frame: &Frame, stream: u32) -> bool {
        matches!(frame, Frame::Data { stream_id, flags, .. } if *stream_id == stream && flags & FLAG_FIN != 0)
    }

    fn text_on(frames: &[Frame], stream: u32) -> String {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data {
                    stream_id, data, ..
                } if *stream_id == stream => Some(String::from_utf8_lossy(data).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// A refused port: the pair is answered, its error stream carries the reason, and both
    /// streams end; pings are answered and bad streams refused meanwhile.
    #[tokio::test]
    async fn a_refused_port_gets_its_error_and_both_fins() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut client = Client::start(Limits::default());
        client.open_pair(1, 3, port, "0").await;
        client.send(Frame::Ping { id: 7 }).await;
        for (stream_id, kind) in [(5, "bogus"), (4, "data")] {
            client
                .send(Frame::SynStream {
                    stream_id,
                    flags: 0,
                    headers: headers(kind, port, "1"),
                })
                .await;
        }
        // Both FINs, the pong and both refusals, in whatever order.
        let mut wanted = 5;
        let frames = client
            .until(|f| {
                let counts = is_fin(f, 1)
                    || is_fin(f, 3)
                    || matches!(f, Frame::Ping { .. } | Frame::RstStream { .. });
                wanted -= usize::from(counts);
                wanted == 0
            })
            .await;
        let replies: Vec<u32> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::SynReply { stream_id, .. } => Some(*stream_id),
                _ => None,
            })
            .collect();
        assert_eq!(replies, [1, 3]);
        let error = text_on(&frames, 1);
        assert!(
            error.starts_with(&format!(
                "error forwarding port {port} to pod default/web, uid u1: failed to connect to localhost:{port}"
            )) && error.contains("connection refused"),
            "{error}"
        );
        assert!(frames.contains(&Frame::Ping { id: 7 }), "{frames:?}");
        assert!(frames.contains(&Frame::RstStream {
            stream_id: 5,
            status: RST_REFUSED_STREAM
        }));
        assert!(frames.contains(&Frame::RstStream {
            stream_id: 4,
            status: RST_PROTOCOL_ERROR
        }));
        // The client's GOAWAY, then its close, end the session.
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        client.writer.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), client.session)
            .await
            .expect("the session ends")
            .unwrap();
    }

    /// Bytes go both ways; the client's reset of the data stream still ends the error stream
    /// (kubectl waits for it).
    #[tokio::test]
    async fn data_flows_and_a_reset_still_ends_the_error_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 64];
            let n = socket.read(&mut buffer).await.unwrap();
            socket.write_all(&buffer[..n]).await.unwrap();
            // Then it keeps the connection open.
            std::future::pending::<()>().await;
        });
        let mut client = Client::start(Limits::default());
        client.open_pair(1, 3, port, "0").await;
        client
            .send(Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"ping"),
            })
            .await;
        let frames = client
            .until(|f| matches!(f, Frame::Data { stream_id: 3, data, .. } if !data.is_empty()))
            .await;
        assert_eq!(text_on(&frames, 3), "ping");
        client
            .send(Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            })
            .await;
        let frames = client.until(|f| is_fin(f, 1)).await;
        assert_eq!(text_on(&frames, 1), "", "no error after a reset");
    }

    /// A pod that does not read has its stream reset once its queue stays full for the stall
    /// timeout; the session goes on answering.
    #[tokio::test]
    async fn a_pod_that_does_not_read_loses_its_stream_not_the_session() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, mut held) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = accepted.send(socket);
            }
        });
        let mut client = Client::start(Limits {
            inbound_queue: 2,
            stall_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        client.open_pair(1, 3, port, "0").await;
        let _socket = held.recv().await;
        // Far more than the socket buffers and the queue hold.
        let chunk = Bytes::from(vec![b'x'; 32 * 1024]);
        let mut reset = false;
        for _ in 0..2048 {
            client
                .send(Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data: chunk.clone(),
                })
                .await;
            if let Ok(Frame::RstStream { stream_id: 3, .. }) = client.received.try_recv() {
                reset = true;
                break;
            }
        }
        if !reset {
            client
                .until(|f| matches!(f, Frame::RstStream { stream_id: 3, .. }))
                .await;
        }
        client.send(Frame::Ping { id: 9 }).await;
        client.until(|f| *f == Frame::Ping { id: 9 }).await;
    }

    /// A client that half-closes (its input ended) still gets the pod's whole answer, however
    /// long it takes.
    #[tokio::test]
    async fn after_the_clients_end_of_input_the_pods_answer_is_waited_for() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            socket.read_to_end(&mut request).await.unwrap();
            // Longer than the grace a client gets after the pod's end.
            tokio::time::sleep(CLOSE_GRACE + Duration::from_millis(500)).await;
            socket.write_all(b"late answer").await.unwrap();
        });
        let mut client = Client::start(Limits::default());
        client.open_pair(1, 3, port, "0").await;
        client
            .send(Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"question"),
            })
            .await;
        let frames = client.until(|f| is_fin(f, 3)).await;
        assert_eq!(text_on(&frames, 3), "late answer");
    }

    /// Half a pair is given up after the pair timeout, with the reason on its error stream.
    #[tokio::test]
    async fn half_a_pair_times_out() {
        let mut client = Client::start(Limits {
            pair_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        client
            .send(Frame::SynStream {
                stream_id: 1,
                flags: 0,
                headers: headers("error", 80, "7"),
            })
            .await;
        let frames = client.until(|f| is_fin(f, 1)).await;
        assert_eq!(
            text_on(&frames, 1),
            "timed out waiting for the data stream of request 7"
        );
    }

    #[tokio::test]
    async fn ports_are_checked() {
        let (frames, _outgoing) = mpsc::channel(4);
        let connection = |port: &str| Connection {
            target: target(),
            port: port.to_owned(),
            error_stream: 1,
            data_stream: 3,
            frames: frames.clone(),
        };
        let (_sender, receiver) = mpsc::channel(1);
        let (result, data_ended) = connection("http").forward(receiver).await;
        let err = result.unwrap_err();
        assert!(
            err.starts_with("unable to parse \"http\" as a port"),
            "{err}"
        );
        assert!(!data_ended);
        let (_sender, receiver) = mpsc::channel(1);
        let err = connection("0").forward(receiver).await.0.unwrap_err();
        assert_eq!(err, "port \"0\" must be > 0");
    }
}
