//! A work queue with client-go's semantics: an item is queued at most once, is processed by
//! one worker at a time, and an item added while it is being processed is processed again
//! afterwards; items can be added after a delay.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug)]
struct Inner<T> {
    ready: VecDeque<T>,
    queued: HashSet<T>,
    processing: HashSet<T>,
    /// Added while being processed: queued again when done.
    dirty: HashSet<T>,
}

/// A deduplicating work queue.
#[derive(Debug)]
pub struct WorkQueue<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> WorkQueue<T> {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
            }),
            notify: Notify::new(),
        })
    }

    /// Queues an item (once).
    pub fn add(&self, item: T) {
        let mut inner = self.inner.lock().expect("work queue");
        if inner.processing.contains(&item) {
            inner.dirty.insert(item);
            return;
        }
        if inner.queued.insert(item.clone()) {
            inner.ready.push_back(item);
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// Queues an item after `delay`.
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        if delay.is_zero() {
            self.add(item);
            return;
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(item);
        });
    }

    fn try_take(&self) -> Option<T> {
        let mut inner = self.inner.lock().expect("work queue");
        let item = inner.ready.pop_front()?;
        inner.queued.remove(&item);
        inner.processing.insert(item.clone());
        Some(item)
    }

    /// Waits for the next item; the caller must call `done` with it afterwards.
    pub async fn take(&self) -> T {
        loop {
            if let Some(item) = self.try_take() {
                return item;
            }
            self.notify.notified().await;
        }
    }

    /// Ends the processing of an item, queueing it again if it was added meanwhile.
    pub fn done(&self, item: &T) {
        let again = {
            let mut inner = self.inner.lock().expect("work queue");
            inner.processing.remove(item);
            inner.dirty.remove(item)
        };
        if again {
            self.add(item.clone());
        }
    }

    /// Items waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().expect("work queue").ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_requeues_items_added_while_processing() {
        let q = WorkQueue::new();
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let one = q.take().await;
        assert_eq!(one, 1);
        q.add(1);
        assert_eq!(q.len(), 1, "an item being processed is not queued twice");
        q.done(&one);
        assert_eq!(q.take().await, 2);
        assert_eq!(q.take().await, 1);
        q.done(&1);
        q.done(&2);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn delayed_items_arrive() {
        let q = WorkQueue::new();
        q.add_after(7, Duration::from_millis(10));
        assert_eq!(q.len(), 0);
        let got = tokio::time::timeout(Duration::from_secs(5), q.take()).await;
        assert_eq!(got.ok(), Some(7));
    }
}
