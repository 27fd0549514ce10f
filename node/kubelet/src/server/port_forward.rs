//! `/portForward/<namespace>/<pod>`: kubectl port-forward. The connection is upgraded to
//! SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`), or to a
//! WebSocket whose binary messages carry the same SPDY bytes (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later try first). In the session,
//! each forwarded connection is a pair of streams the client opens with the headers
//! `streamType` (`error` or `data`), `port` and `requestID`: once both are there the kubelet
//! connects to localhost:port inside the pod's network namespace (IPv4, then IPv6) and copies
//! bytes both ways on the data stream; a failure is written on the error stream as text, and
//! both streams are ended with FIN once the pod's side of the connection has closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::exec::{negotiate, switching_protocols};
use super::spdy::{FLAG_FIN, Frame, FrameReader, FrameWriter, MAX_DATA_WRITE, RST_REFUSED_STREAM};
use super::{Body, ServerState, text};
use crate::container_start::parse_container_id;
use crate::probes::netns::{connect, os_text};
use baton_runtime::{ContainerRuntime, ContainerState, RuntimeClient};

/// The port-forward protocol version.
const PROTOCOL: &str = "portforward.k8s.io";
/// Its name as a WebSocket subprotocol carrying SPDY.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY upgrade token.
const SPDY: &str = "SPDY/3.1";
/// How long a connect to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Data frames from the client queued per stream before the session stops reading.
const INBOUND_QUEUE: usize = 16;

/// Which pod a session forwards to.
#[derive(Clone)]
struct Target {
    runtime: RuntimeClient,
    namespace: String,
    name: String,
    uid: String,
}

impl Target {
    /// The pod's network namespace, through one of its running containers.
    async fn netns(&self) -> Result<PathBuf, String> {
        let containers = self
            .runtime
            .list_containers()
            .await
            .map_err(|err| format!("listing the pod's containers: {err}"))?;
        containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter(|c| parse_container_id(&c.id).is_some_and(|(uid, _, _)| uid == self.uid))
            .find_map(|c| c.pid)
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
            .ok_or_else(|| "the pod has no running container".to_owned())
    }
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
        let versions: Vec<String> = req
            .headers()
            .get_all("X-Stream-Protocol-Version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
            .collect();
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
    let target = Target {
        runtime: state.ctx.runtime.clone(),
        namespace: namespace.to_owned(),
        name: pod_name.to_owned(),
        uid: pod.uid().unwrap_or_default(),
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
            let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
            session(websocket_bytes(ws), target).await;
        } else {
            session(upgraded, target).await;
        }
    });
    match negotiated {
        Some((protocol, key)) => switching_protocols(protocol, &key),
        None => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, SPDY)
            .header("X-Stream-Protocol-Version", PROTOCOL)
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("valid response"),
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
#[derive(Default)]
struct PendingPair {
    error_stream: Option<u32>,
    data_stream: Option<(u32, mpsc::Receiver<Bytes>)>,
    port: String,
}

/// Runs one SPDY session until the client goes away; its forwarded connections end with it.
async fn session<IO>(io: IO, target: Target)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let (frames, mut outgoing) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        let mut writer = FrameWriter::new(write);
        while let Some(frame) = outgoing.recv().await {
            if let Err(err) = writer.write(&frame).await {
                tracing::debug!(%err, "port-forward session write");
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut reader = FrameReader::new(read);
    let mut pending: HashMap<String, PendingPair> = HashMap::new();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut forwarders: HashMap<u32, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(%err, "port-forward session read");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let kind = header("streamtype").unwrap_or_default();
                if kind != "error" && kind != "data" {
                    let _ = frames
                        .send(Frame::RstStream {
                            stream_id,
                            status: RST_REFUSED_STREAM,
                        })
                        .await;
                    continue;
                }
                let _ = frames
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: vec![],
                    })
                    .await;
                // Old clients send no request id: the pair is then the error stream's id (the
                // data stream comes right after it, two ids on).
                let request = header("requestid").unwrap_or_else(|| match kind.as_str() {
                    "error" => stream_id.to_string(),
                    _ => stream_id.saturating_sub(2).to_string(),
                });
                let pair = pending.entry(request.clone()).or_default();
                pair.port = header("port").unwrap_or_default();
                if kind == "error" {
                    pair.error_stream = Some(stream_id);
                } else {
                    let (sender, receiver) = mpsc::channel(INBOUND_QUEUE);
                    inbound.insert(stream_id, sender);
                    pair.data_stream = Some((stream_id, receiver));
                }
                if pair.error_stream.is_some() && pair.data_stream.is_some() {
                    let pair = pending.remove(&request).expect("the pair is pending");
                    let (Some(error_stream), Some((data_stream, receiver))) =
                        (pair.error_stream, pair.data_stream)
                    else {
                        continue;
                    };
                    let connection = Connection {
                        target: target.clone(),
                        port: pair.port,
                        error_stream,
                        data_stream,
                        frames: frames.clone(),
                    };
                    let handle = tasks.spawn(connection.run(receiver));
                    forwarders.insert(data_stream, handle);
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if !data.is_empty()
                    && let Some(sender) = inbound.get(&stream_id)
                    && sender.send(data).await.is_err()
                {
                    inbound.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    // The client sends no more: the pod's side sees the end of input.
                    inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                inbound.remove(&stream_id);
                if let Some(handle) = forwarders.remove(&stream_id) {
                    handle.abort();
                }
            }
            Frame::Ping { id } => {
                let _ = frames.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored { .. } => {}
        }
        // Finished forwarders need no abort handle.
        while tasks.try_join_next().is_some() {}
        forwarders.retain(|_, handle| !handle.is_finished());
    }
    drop(inbound);
    tasks.shutdown().await;
    drop(frames);
    let _ = writer.await;
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
    async fn run(self, from_client: mpsc::Receiver<Bytes>) {
        let result = self.forward(from_client).await;
        if let Err(message) = result {
            tracing::debug!(pod = %self.target.name, port = %self.port, %message, "port-forward");
            let _ = self
                .frames
                .send(Frame::Data {
                    stream_id: self.error_stream,
                    flags: 0,
                    data: Bytes::from(message),
                })
                .await;
            let _ = self.frames.send(self.fin(self.data_stream)).await;
        }
        let _ = self.frames.send(self.fin(self.error_stream)).await;
    }

    fn fin(&self, stream_id: u32) -> Frame {
        Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        }
    }

    /// Connects and copies until both sides are done; the error text for the client if not.
    async fn forward(&self, mut from_client: mpsc::Receiver<Bytes>) -> Result<(), String> {
        let port: u16 = self
            .port
            .parse()
            .map_err(|err| format!("unable to parse {:?} as a port: {err}", self.port))?;
        if port == 0 {
            return Err(format!("port {:?} must be > 0", self.port));
        }
        let target = &self.target;
        let failed = |cause: String| {
            format!(
                "error forwarding port {port} to pod {}/{}, uid {}: {cause}",
                target.namespace, target.name, target.uid
            )
        };
        let netns = target.netns().await.map_err(failed)?;
        let stream = connect_localhost(&netns, port).await.map_err(failed)?;
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
                let frame = Frame::Data {
                    stream_id: data_stream,
                    flags: if n == 0 { FLAG_FIN } else { 0 },
                    data: Bytes::copy_from_slice(&buffer[..n]),
                };
                if frames.send(frame).await.is_err() || n == 0 {
                    return std::io::Result::Ok(());
                }
            }
        };
        // Done once the pod's side has ended (as containerd's forwarder: the client's end of
        // input only half-closes the pod's socket, and the client waits for both FINs).
        tokio::pin!(upstream, downstream);
        let result = tokio::select! {
            result = &mut downstream => result,
            result = &mut upstream => match result {
                Ok(()) => downstream.await,
                Err(err) => Err(err),
            },
        };
        result.map_err(|err| failed(format!("copying: {}", os_text(&err))))
    }
}

/// Connects to localhost:`port` inside the network namespace: 127.0.0.1, then [::1].
async fn connect_localhost(
    netns: &std::path::Path,
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
        match connect(Some(netns), address, CONNECT_TIMEOUT).await {
            Ok(stream) => return Ok(stream),
            Err(err) => failures.push(format!(
                "{family}: {}",
                crate::probes::netns::dial_message(address, &err)
            )),
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

    /// The pod a forwarder in a test points at.
    fn test_target(runtime: RuntimeClient) -> Target {
        Target {
            runtime,
            namespace: "default".into(),
            name: "web".into(),
            uid: "no-such-uid".into(),
        }
    }

    /// A session whose pod has no running container: each pair is answered, then its error
    /// stream carries the reason and both streams end.
    #[tokio::test]
    async fn a_pair_without_a_pod_gets_its_error_and_fins() {
        let root = tempfile::tempdir().unwrap();
        // A runtime that cannot start: listing containers fails, which the error text names.
        let runtime = RuntimeClient::new(root.path(), "/nonexistent/baton");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(session(server, test_target(runtime)));
        let (read, write) = tokio::io::split(client);
        let mut client = (FrameWriter::new(write), FrameReader::new(read));
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_owned(), kind.to_owned()),
                ("port".to_owned(), "8080".to_owned()),
                ("requestid".to_owned(), "0".to_owned()),
            ]
        };
        client
            .0
            .write(&Frame::SynStream {
                stream_id: 1,
                flags: 0,
                headers: headers("error"),
            })
            .await
            .unwrap();
        client
            .0
            .write(&Frame::SynStream {
                stream_id: 3,
                flags: 0,
                headers: headers("data"),
            })
            .await
            .unwrap();
        client.0.write(&Frame::Ping { id: 1 }).await.unwrap();
        client
            .0
            .write(&Frame::SynStream {
                stream_id: 5,
                flags: 0,
                headers: headers("bogus"),
            })
            .await
            .unwrap();
        let mut replies = vec![];
        let mut error_text = String::new();
        let mut fins = vec![];
        let mut pong = false;
        let mut refused = false;
        while fins.len() < 2 || !pong || !refused {
            match client.1.next().await.unwrap().expect("a frame") {
                Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    if stream_id == 1 {
                        error_text.push_str(&String::from_utf8_lossy(&data));
                    }
                    if flags & FLAG_FIN != 0 {
                        fins.push(stream_id);
                    }
                }
                Frame::Ping { id } => pong = id == 1,
                Frame::RstStream { stream_id, status } => {
                    refused = stream_id == 5 && status == RST_REFUSED_STREAM;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies, [1, 3]);
        fins.sort();
        assert_eq!(fins, [1, 3]);
        assert!(
            error_text.starts_with(
                "error forwarding port 8080 to pod default/web, uid no-such-uid: listing the pod's containers"
            ),
            "{error_text}"
        );
        // The client's GOAWAY ends the session.
        client
            .0
            .write(&Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends")
            .unwrap();
    }

    #[tokio::test]
    async fn ports_are_checked() {
        let root = tempfile::tempdir().unwrap();
        let (frames, _outgoing) = mpsc::channel(4);
        let connection = |port: &str| Connection {
            target: test_target(RuntimeClient::new(root.path(), "/nonexistent/baton")),
            port: port.to_owned(),
            error_stream: 1,
            data_stream: 3,
            frames: frames.clone(),
        };
        let (_sender, receiver) = mpsc::channel(1);
        let err = connection("http").forward(receiver).await.unwrap_err();
        assert!(
            err.starts_with("unable to parse \"http\" as a port"),
            "{err}"
        );
        let (_sender, receiver) = mpsc::channel(1);
        let err = connection("0").forward(receiver).await.unwrap_err();
        assert_eq!(err, "port \"0\" must be > 0");
    }
}
