//! Events as kube-controller-manager's workload controllers record them: one core/v1 Event per
//! occurrence (`Created pod: web-7d9c8b6f5-x2x4q`, `Scaled up replica set web-7d9c8b6f5 from
//! 0 to 3`), written in the background so a reconcile never waits on them.
//!
//! kube-runtime's `Recorder` folds events with the same reason about the same object into one
//! series that keeps the first message, which would hide every `Created pod` but the first and
//! every scaling step but the first; upstream's recorder only folds identical messages.

use std::sync::atomic::{AtomicI64, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

/// Events in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Normal,
    Warning,
}

/// Records events for one controller (`source.component` / `reportingComponent`).
#[derive(Debug, Clone)]
pub(crate) struct EventWriter {
    component: &'static str,
    queue: mpsc::UnboundedSender<Event>,
}

/// Strictly increasing nanosecond stamps for event names (`<object>.<hex nanos>`, as upstream),
/// so two events in the same nanosecond still get distinct names.
static LAST_STAMP: AtomicI64 = AtomicI64::new(0);

fn unique_stamp(now: Timestamp) -> i64 {
    let nanos = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
    let mut last = LAST_STAMP.load(Ordering::Relaxed);
    loop {
        let next = nanos.max(last + 1);
        match LAST_STAMP.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

impl EventWriter {
    /// A writer for `component`, and the task that writes its events (run it alongside the
    /// controller).
    pub(crate) fn new(client: Client, component: &'static str) -> (Self, BoxFuture<'static, ()>) {
        let (queue, rx) = mpsc::unbounded_channel::<Event>();
        let worker = async move {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            });
            stream
                .for_each_concurrent(CONCURRENT_WRITES, |event| {
                    let client = client.clone();
                    async move {
                        let namespace = event.metadata.namespace.clone().unwrap_or_default();
                        let api: Api<Event> = Api::namespaced(client, &namespace);
                        if let Err(e) = api.create(&PostParams::default(), &event).await {
                            tracing::warn!(reason = ?event.reason, error = %e, "recording an event failed");
                        }
                    }
                })
                .await;
        };
        (EventWriter { component, queue }, Box::pin(worker))
    }

    /// Records `reason` and `message` about `regarding`.
    pub(crate) fn emit(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        message: String,
    ) {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(self.component),
            unique_stamp(now)
        );
        let seconds = Time(super::status::now_seconds(now));
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: regarding,
            reason: Some(reason.into()),
            message: Some(message),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            first_timestamp: Some(seconds.clone()),
            last_timestamp: Some(seconds),
            count: Some(1),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reporting_component: Some(self.component.into()),
            reporting_instance: None,
            ..Default::default()
        };
        // The receiver lives as long as the controller runs.
        let _ = self.queue.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_unique_even_for_one_instant() {
        let now = Timestamp::now();
        let a = unique_stamp(now);
        let b = unique_stamp(now);
        assert!(b > a);
    }
}
