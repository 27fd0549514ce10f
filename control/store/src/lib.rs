//! The storage seam of the API server: the [`Store`] trait (a key-value store with revisions,
//! compare-and-swap, consistent paged lists and resumable watches) and [`EtcdStore`], its etcd
//! backend. Only the API server uses this crate: every other component goes through the
//! Kubernetes API.

mod etcd;

pub use etcd::{EtcdStore, EtcdTls};

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The stored bytes.
    pub value: Bytes,
    /// The store revision that created the key.
    pub create_revision: i64,
    /// The store revision of the last change (Kubernetes' resourceVersion).
    pub mod_revision: i64,
}

/// Which keys a list returns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// The first key to return (inclusive); `None` starts at the prefix.
    pub start_key: Option<String>,
    /// At most this many items; 0 means no limit.
    pub limit: i64,
    /// Read at this revision; 0 means the latest.
    pub revision: i64,
}

/// One page of a list, read at a single revision.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The items, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Whether more keys follow.
    pub more: bool,
    /// How many keys match from the start key on (including these items).
    pub count: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// A change seen by a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The new value (empty for a delete).
    pub value: Bytes,
    /// The value before the change, when the store still had it.
    pub prev_value: Option<Bytes>,
    /// The revision of the change.
    pub revision: i64,
    /// Whether this put created the key.
    pub created: bool,
}

/// A stream of watch batches, in revision order, as the store delivers them.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// What a watch delivers at a time: changes, or only the news that the store has reached a
/// revision with no change under the prefix (a progress notification).
#[derive(Debug, Clone, Default)]
pub struct WatchBatch {
    /// The changes, in revision order (empty for a progress notification).
    pub events: Vec<WatchEvent>,
    /// Every change up to this revision has been delivered.
    pub revision: i64,
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create found the key already there.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A compare-and-swap found another revision than expected.
    #[error("{key} was modified (expected revision {expected})")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// What the key holds now (`None` if it was deleted).
        current: Option<KeyValue>,
    },
    /// The asked-for revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction revision, when the store says it (0 when unknown).
        compacted: i64,
    },
    /// The asked-for revision is newer than the store's.
    #[error("revision {requested} is newer than the store's")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
    },
    /// The store could not be reached or answered with an error.
    #[error("storage backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored key is not valid UTF-8.
    #[error("stored key is not UTF-8")]
    InvalidKey,
}

/// A versioned key-value store with compare-and-swap and watches: what the API server needs of
/// etcd. Implementations must give every change a revision, strictly increasing store-wide.
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;

    /// Reads the keys under `prefix`, in key order, at one revision.
    fn list(
        &self,
        prefix: &str,
        opts: ListOptions,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists. Returns the new
    /// revision.
    fn create(
        &self,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Replaces `key` if its revision is still `expected`; otherwise fails with
    /// [`StoreError::Conflict`] carrying the current value. Returns the new revision.
    fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Deletes `key`, only if its revision is `expected` when given. Returns what was deleted
    /// and the revision of the deletion.
    fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> impl Future<Output = Result<(KeyValue, i64), StoreError>> + Send;

    /// Watches the keys under `prefix` for changes after `after_revision` (exclusive).
    fn watch(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;

    /// Writes `key` unconditionally, to expire `ttl` after this write unless written again:
    /// for records that must vanish with their writer (upstream's master leases). Returns the
    /// new revision.
    fn put_with_ttl(
        &self,
        key: &str,
        value: Bytes,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The store's current revision.
    fn current_revision(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Discards history up to `revision`.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
}
