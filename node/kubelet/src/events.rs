//! The kubelet's events, as core/v1 Events the way upstream's recorder writes them
//! (source.component "kubelet", source.host the node, reportingComponent and
//! reportingInstance): one Event per (object, field path, type, reason, message), its count
//! and lastTimestamp raised when it happens again. kube-runtime's Recorder is not used here:
//! it folds events that differ only in their message into one series, so a second
//! "Liveness probe failed: ..." with another message would never show.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Most distinct events remembered for counting repeats.
const REMEMBERED: usize = 4096;

/// What makes two events the same.
type EventKey = (String, String, String, String, String);

/// Writes events, counting repeats.
pub struct EventSink {
    client: Client,
    node: String,
    /// Event name and count per key.
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EventSink {
    /// A sink writing as the kubelet of `node`.
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            client,
            node: node.to_owned(),
            seen: Mutex::default(),
        }
    }

    /// Records the event; a failure is logged, never returned.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let type_ = if warning { "Warning" } else { "Normal" };
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            regarding.field_path.clone().unwrap_or_default(),
            type_.to_owned(),
            reason.to_owned(),
            message.to_owned(),
        );
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = jiff::Timestamp::now();
        let repeat = {
            let mut seen = self.seen.lock().expect("event cache");
            match seen.get_mut(&key) {
                Some((name, count)) => {
                    *count += 1;
                    Some((name.clone(), *count))
                }
                None => None,
            }
        };
        if let Some((name, count)) = repeat {
            let patch = json!({ "count": count, "lastTimestamp": Time(now) });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // Gone (expired or deleted): write it anew below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    tracing::warn!(%err, reason, "recording an event");
                    return;
                }
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.clone().unwrap_or_default(),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: regarding.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            action: Some(reason.to_owned()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                let mut seen = self.seen.lock().expect("event cache");
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(key, (name, 1));
            }
            Err(err) => tracing::warn!(%err, reason, "recording an event"),
        }
    }
}
