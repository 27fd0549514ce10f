//! The kube-rs plumbing that Baton's API clients (scheduler, controller manager, simulated
//! nodes, the kubelet, later the proxy) share: a client from a kubeconfig file, and shared
//! informers, so that one watch and one cache of a resource serve every controller in a process;
//! and the node Lease heartbeat.

pub mod cached_pod;
pub mod informer;
pub mod node_flags;
pub mod node_lease;
pub mod request_limit;
pub mod slim;
pub mod transport;

use std::time::Duration;

use std::path::Path;

pub use cached_pod::CachedPod;
pub use informer::{Informer, InformerEvent};

/// An error and its sources, `: `-separated, for logs (a source whose text repeats an earlier
/// part is left out).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = next.source();
    }
    parts.join(": ")
}

/// Connecting to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading client configuration")]
    Config(#[source] kube::config::KubeconfigError),
    #[error("inferring client configuration (no --kubeconfig given)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the client")]
    Client(#[source] transport::BuildClientError),
}

/// A client for the cluster `kubeconfig` points at (or the usual inference: $KUBECONFIG,
/// ~/.kube/config, in-cluster), with `user_agent` sent on every request.
pub async fn connect(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Client, ConnectError> {
    let config = load_config(kubeconfig, user_agent).await?;
    client(&config).await
}

/// A client for `config`, over HTTP/2 (see [`transport`]), its connection opened.
pub async fn client(config: &kube::Config) -> Result<kube::Client, ConnectError> {
    let client = transport::client_builder(config)
        .map_err(ConnectError::Client)?
        .build();
    open_connection(&client).await;
    Ok(client)
}

/// How long [`open_connection`] waits for its request: a server that is up answers in
/// milliseconds, and one that is not must not hold a component's start for long.
const OPEN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes one request (the server's version), so that the connection is up, and known to speak
/// HTTP/2, before the watches a component starts at once would each open one. A server that is
/// not up yet is no error: the client connects when it is first used.
async fn open_connection(client: &kube::Client) {
    match tokio::time::timeout(OPEN_CONNECTION_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %error_chain(&e), "API server not answering yet"),
        Err(_) => tracing::debug!("API server not answering yet"),
    }
}

/// Like [`connect`], with every request other than a watch given `timeout` for its answer's
/// headers (kube's own default is no limit), so that a request on a dead connection fails.
/// Not kube's `read_timeout`: that one also ends connections idle in the pool for as long,
/// and a client that asks every `timeout` (a heartbeat) then races the end of its own
/// connection and fails with `SendRequest` every few requests.
pub async fn connect_with_request_timeout(
    kubeconfig: Option<&Path>,
    user_agent: &str,
    timeout: Duration,
) -> Result<kube::Client, ConnectError> {
    let layer = request_limit::RequestLimitLayer::with_timeout(usize::MAX, timeout);
    connect_with_layer(kubeconfig, user_agent, &layer).await
}

/// Like [`connect`], with at most `max_in_flight` requests other than watches in flight (see
/// [`request_limit`]): for components whose bursts would otherwise flood the API server.
/// Not for clients that read streaming answers slowly (`log_stream` with follow): those hold
/// their permit while they read.
pub async fn connect_with_request_limit(
    kubeconfig: Option<&Path>,
    user_agent: &str,
    max_in_flight: usize,
) -> Result<kube::Client, ConnectError> {
    let layer = request_limit::RequestLimitLayer::new(max_in_flight);
    connect_with_layer(kubeconfig, user_agent, &layer).await
}

/// Like [`connect`], with `layer` around the client's requests.
async fn connect_with_layer(
    kubeconfig: Option<&Path>,
    user_agent: &str,
    layer: &request_limit::RequestLimitLayer,
) -> Result<kube::Client, ConnectError> {
    let config = load_config(kubeconfig, user_agent).await?;
    let builder = transport::client_builder(&config).map_err(ConnectError::Client)?;
    let client = builder.with_layer(layer).build();
    open_connection(&client).await;
    Ok(client)
}

/// The client configuration [`connect`] builds its client from.
pub async fn load_config(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Config, ConnectError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::ReadKubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(ConnectError::Config)?
        }
        None => kube::Config::infer().await.map_err(ConnectError::Infer)?,
    };
    if let Ok(value) = http::HeaderValue::from_str(user_agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    Ok(config)
}

/// The CA certificates a client configuration trusts for the API server, as PEM.
pub fn root_ca_pem(config: &kube::Config) -> Option<String> {
    use base64::Engine;
    let certs = config.root_cert.as_ref().filter(|c| !c.is_empty())?;
    let mut pem = String::new();
    for der in certs {
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Some(pem)
}

/// Parses a Go-style duration of one unit: `500ms`, `15s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("invalid duration {text:?}: missing unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {text:?}: unknown unit {unit:?}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_in_go_units() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("15").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("1e300s").is_err(),
            "too long for a Duration, refused"
        );
    }
}
