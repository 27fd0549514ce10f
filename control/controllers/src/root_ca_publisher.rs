//! The root CA publisher (kube-controller-manager's root-ca-certificate-publisher-controller):
//! every active namespace has a `kube-root-ca.crt` ConfigMap whose `ca.crt` is the CA that
//! signed the API server's certificate, which pods read from their API token volume to trust
//! the API server. The ConfigMap is made again when deleted and set back when edited.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_client::Informer;
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::per_namespace::{self, Wake};
use crate::serviceaccount::is_active;

/// The ConfigMap's name (upstream's).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The key holding the CA bundle.
const CA_KEY: &str = "ca.crt";
/// The annotation upstream sets on the ConfigMap, and its value.
const DESCRIPTION: (&str, &str) = (
    "kubernetes.io/description",
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.",
);

/// Creating or setting back a namespace's root CA ConfigMap failed.
#[derive(Debug, thiserror::Error)]
#[error("publishing ConfigMap {namespace}/{ROOT_CA_CONFIG_MAP}")]
pub struct PublishRootCaError {
    namespace: String,
    #[source]
    source: kube::Error,
}

struct State {
    client: Client,
    config_maps: Informer<ConfigMap>,
    ca_pem: String,
    backoff: FailureBackoff,
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let Some(ca_pem) = ctx.root_ca_pem.clone() else {
        tracing::warn!(
            "no root CA (neither --root-ca-file nor a CA in the kubeconfig): kube-root-ca.crt is not published"
        );
        return futures::future::ready(()).boxed();
    };
    let (config_maps, by_config_maps) =
        per_namespace::kept_objects(ctx.client.clone(), ROOT_CA_CONFIG_MAP, Wake::OnAnyChange);
    let state = Arc::new(State {
        client: ctx.client.clone(),
        config_maps,
        ca_pem,
        backoff: FailureBackoff::default(),
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        per_namespace::run(
            state.client.clone(),
            &state.config_maps,
            by_config_maps,
            concurrency,
            reconcile,
            error_policy,
            state.clone(),
            "root-ca-certificate-publisher-controller",
        )
        .await
    }
    .boxed()
}

fn error_policy(ns: Arc<Namespace>, err: &PublishRootCaError, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&ns.name_any());
    log_failure!(
        "publishing the root CA ConfigMap failed",
        &ns.name_any(),
        err,
        delay,
    );
    Action::requeue(delay)
}

/// Whether `cm` holds exactly the CA bundle and carries the description.
fn is_current(cm: &ConfigMap, ca_pem: &str) -> bool {
    let data_ok = cm.data.as_ref().is_some_and(|data| {
        data.len() == 1 && data.get(CA_KEY).map(String::as_str) == Some(ca_pem)
    }) && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty);
    let described = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION.0))
        .is_some_and(|v| v == DESCRIPTION.1);
    data_ok && described
}

/// `current` (or a new ConfigMap) with the CA bundle and the description.
fn published(namespace: &str, current: Option<&ConfigMap>, ca_pem: &str) -> ConfigMap {
    let mut cm = current.cloned().unwrap_or_else(|| ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    });
    cm.metadata.managed_fields = None;
    cm.metadata
        .annotations
        .get_or_insert_default()
        .insert(DESCRIPTION.0.into(), DESCRIPTION.1.into());
    cm.data = Some(BTreeMap::from([(CA_KEY.into(), ca_pem.into())]));
    cm.binary_data = None;
    cm
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, PublishRootCaError> {
    let name = ns.name_any();
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let current = state
        .config_maps
        .store()
        .get(&ObjectRef::new(ROOT_CA_CONFIG_MAP).within(&name));
    if current
        .as_deref()
        .is_some_and(|cm| is_current(cm, &state.ca_pem))
    {
        state.backoff.reset(&name);
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(state.client.clone(), &name);
    let wanted = published(&name, current.as_deref(), &state.ca_pem);
    let result = match &current {
        Some(_) => api
            .replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &wanted)
            .await
            .map(|_| ()),
        None => api
            .create(&PostParams::default(), &wanted)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => tracing::debug!(namespace = %name, "published the root CA ConfigMap"),
        // A conflict or a race with a create: the informer brings the newer state. Not
        // found: the namespace is gone.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) if crate::service_endpoints::namespace_terminating(&e) => {}
        Err(source) => {
            return Err(PublishRootCaError {
                namespace: name,
                source,
            });
        }
    }
    state.backoff.reset(&name);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn an_edited_config_map_is_set_back_and_keeps_its_labels() {
        let fresh = published("team", None, CA);
        assert!(is_current(&fresh, CA));
        assert_eq!(fresh.metadata.namespace.as_deref(), Some("team"));

        let mut edited = fresh.clone();
        edited.metadata.labels = Some(BTreeMap::from([("keep".into(), "me".into())]));
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(!is_current(&edited, CA));
        let restored = published("team", Some(&edited), CA);
        assert!(is_current(&restored, CA));
        assert_eq!(restored.metadata.labels, edited.metadata.labels);

        assert!(!is_current(&fresh, "another CA"));
    }
}
