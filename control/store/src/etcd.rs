//! The etcd v3 backend of [`Store`], on the `etcd-client` crate.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::{
    EventKind, KeyValue, ListOptions, ListPage, Store, StoreError, WatchBatch, WatchEvent,
    WatchStream,
};

/// Client TLS files for etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate.
    pub cert_file: Option<PathBuf>,
    /// Client key.
    pub key_file: Option<PathBuf>,
}

/// The largest etcd response accepted (a list of many large objects, a watch message of many
/// changes); as upstream, far above gRPC's 4 MiB default.
const MAX_RESPONSE: usize = 2 * 1024 * 1024 * 1024 - 1;

/// A [`Store`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    watcher: Client,
    kv: Vec<KvClient>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|_| StoreError::InvalidKey)?
            .to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// How often a watch asks etcd for a progress notification.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How many connections reads and writes use.
const KV_CONNECTIONS: usize = 4;

impl EtcdStore {
    /// A KV client, round-robin over the connections.
    fn kv(&self) -> KvClient {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.kv[i % self.kv.len()].clone()
    }

    /// Connects to the etcd endpoints (`--etcd-servers`), with client TLS when given.
    pub async fn connect(endpoints: &[String], tls: &EtcdTls) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if tls.ca_file.is_some() || tls.cert_file.is_some() {
            let mut tls_options = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca).map_err(backend)?;
                tls_options = tls_options.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let cert = std::fs::read(cert).map_err(backend)?;
                let key = std::fs::read(key).map_err(backend)?;
                tls_options = tls_options.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls_options);
        }
        // Watches get a connection of their own: a busy watch stream must never hold up
        // reads and writes behind HTTP/2 flow control on a shared connection.
        let client = Client::connect(endpoints, Some(options.clone()))
            .await
            .map_err(backend)?;
        let watcher = Client::connect(endpoints, Some(options.clone()))
            .await
            .map_err(backend)?;
        // Reads and writes spread over a few connections, so that one connection's HTTP/2
        // processing never serializes the API server's concurrent requests.
        let mut kv = vec![client.kv_client().max_decoding_message_size(MAX_RESPONSE)];
        for _ in 1..KV_CONNECTIONS {
            let extra = Client::connect(endpoints, Some(options.clone()))
                .await
                .map_err(backend)?;
            kv.push(extra.kv_client().max_decoding_message_size(MAX_RESPONSE));
        }
        Ok(Self {
            client,
            watcher,
            kv,
            next: Default::default(),
        })
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.kv().get(key, None).await.map_err(backend)?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListPage, StoreError> {
        let start = opts.start_key.clone().unwrap_or_else(|| prefix.to_string());
        let mut get = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(opts.limit);
        if opts.revision > 0 {
            get = get.with_revision(opts.revision);
        }
        let resp = self.kv().get(start, Some(get)).await.map_err(|e| {
            if matches!(&e, etcd_client::Error::GRpcStatus(s) if s.message().contains("future revision")) {
                StoreError::FutureRevision { requested: opts.revision }
            } else if is_compacted(&e) {
                StoreError::Compacted {
                    requested: opts.revision,
                    compacted: 0,
                }
            } else {
                backend(e)
            }
        })?;
        let items = resp
            .kvs()
            .iter()
            .map(convert)
            .collect::<Result<Vec<_>, _>>()?;
        // A read at a given revision reports that revision, not the store's newest.
        let revision = if opts.revision > 0 {
            opts.revision
        } else {
            resp.header().map(|h| h.revision()).unwrap_or_default()
        };
        Ok(ListPage {
            items,
            revision,
            more: resp.more(),
            count: resp.count(),
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn put_with_ttl(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        // A lease of its own per write, as upstream's storage does: the key moves to the new
        // lease, and the previous one expires without taking it along.
        let lease = self
            .client
            .lease_client()
            .grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(backend)?;
        let resp = self
            .kv()
            .put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease.id())),
            )
            .await
            .map_err(backend)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let current = current_from(resp.op_responses())?;
        if current.is_none() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            current,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> Result<(KeyValue, i64), StoreError> {
        let mut kv = self.kv();
        loop {
            let Some(current) = self.get(key).await? else {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            };
            if let Some(expected) = expected
                && expected != current.mod_revision
            {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    current: Some(current),
                });
            }
            // Delete exactly the version we read, so the caller learns what was removed.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    current.mod_revision,
                )])
                .and_then([TxnOp::delete(key, None)]);
            let resp = kv.txn(txn).await.map_err(backend)?;
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                return Ok((current, revision));
            }
        }
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(after_revision + 1);
        let stream = self
            .watcher
            .watch_client()
            // One message carries a whole revision (a prefix delete with its previous values)
            // or, for a watch catching up, up to a thousand revisions: far above 4 MiB.
            .max_decoding_message_size(MAX_RESPONSE)
            .watch(prefix, Some(options))
            .await
            .map_err(backend)?;
        let ticker = tokio::time::interval(PROGRESS_INTERVAL);
        let events = futures::stream::unfold(Some((stream, ticker)), move |state| async move {
            let (mut stream, mut ticker) = state?;
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = ticker.tick() => {
                        // Ask etcd where this watch stands, so that quiet prefixes still learn
                        // the store's revision (watch bookmarks carry it to clients).
                        if let Err(e) = stream.request_progress().await {
                            return Some((Err(backend(e)), None));
                        }
                        continue;
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            let err = if resp.compact_revision() > 0 {
                                StoreError::Compacted {
                                    requested: after_revision,
                                    compacted: resp.compact_revision(),
                                }
                            } else {
                                backend(etcd_client::Error::WatchError(
                                    resp.cancel_reason().to_string(),
                                ))
                            };
                            return Some((Err(err), None));
                        }
                        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                        if resp.events().is_empty() {
                            // The creation answer says nothing about progress; a progress
                            // notification means every change up to its revision was sent.
                            if resp.created() {
                                continue;
                            }
                            let batch = WatchBatch {
                                events: vec![],
                                revision,
                            };
                            return Some((Ok(batch), Some((stream, ticker))));
                        }
                        let batch = resp
                            .events()
                            .iter()
                            .map(convert_event)
                            .collect::<Result<Vec<_>, _>>()
                            .map(|events| WatchBatch { events, revision });
                        return Some((batch, Some((stream, ticker))));
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(backend(e)), None)),
                }
            }
        });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .kv()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) if is_compacted(&e) => Err(StoreError::Compacted {
                requested: revision,
                compacted: 0,
            }),
            Err(e) => Err(backend(e)),
        }
    }
}

fn current_from(responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>, StoreError> {
    for op in responses {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(convert).transpose();
        }
    }
    Ok(None)
}

fn convert_event(event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = event.kv().ok_or(StoreError::InvalidKey)?;
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Ok(WatchEvent {
        kind,
        key: kv
            .key_str()
            .map_err(|_| StoreError::InvalidKey)?
            .to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        prev_value: event.prev_kv().map(|p| Bytes::copy_from_slice(p.value())),
        revision: kv.mod_revision(),
        created: kind == EventKind::Put && kv.create_revision() == kv.mod_revision(),
    })
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
