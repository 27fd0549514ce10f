//! The ServiceAccount controller (kube-controller-manager's serviceaccount-controller): every
//! active namespace has a `default` ServiceAccount, created when the namespace appears and
//! again whenever it is deleted. Terminating namespaces get none.

use std::sync::Arc;

use baton_client::Informer;
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::per_namespace::{self, Wake};

/// The ServiceAccount every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Creating a namespace's default ServiceAccount failed.
#[derive(Debug, thiserror::Error)]
#[error("creating ServiceAccount {namespace}/default")]
pub struct EnsureServiceAccountError {
    namespace: String,
    #[source]
    source: kube::Error,
}

struct State {
    client: Client,
    accounts: Informer<ServiceAccount>,
    backoff: FailureBackoff,
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let (accounts, by_accounts) =
        per_namespace::kept_objects(ctx.client.clone(), DEFAULT_ACCOUNT, Wake::OnDelete);
    let state = Arc::new(State {
        client: ctx.client.clone(),
        accounts,
        backoff: FailureBackoff::default(),
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        per_namespace::run(
            state.client.clone(),
            &state.accounts,
            by_accounts,
            concurrency,
            reconcile,
            error_policy,
            state.clone(),
            "serviceaccount-controller",
        )
        .await
    }
    .boxed()
}

fn error_policy(ns: Arc<Namespace>, err: &EnsureServiceAccountError, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&ns.name_any());
    log_failure!(
        "ensuring the default ServiceAccount failed",
        &ns.name_any(),
        err,
        delay,
    );
    Action::requeue(delay)
}

/// Whether the namespace is active (not being deleted), so may get a ServiceAccount.
pub fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Active")
            == "Active"
}

async fn reconcile(
    ns: Arc<Namespace>,
    state: Arc<State>,
) -> Result<Action, EnsureServiceAccountError> {
    let name = ns.name_any();
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let exists = state
        .accounts
        .store()
        .get(&ObjectRef::new(DEFAULT_ACCOUNT).within(&name))
        .is_some();
    if exists {
        state.backoff.reset(&name);
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(state.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => tracing::debug!(namespace = %name, "created the default ServiceAccount"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) if crate::service_endpoints::namespace_terminating(&e) => {}
        Err(source) => {
            return Err(EnsureServiceAccountError {
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
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn only_active_namespaces_get_accounts() {
        let mut ns = Namespace {
            status: Some(NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_active(&ns));
        ns.status.as_mut().unwrap().phase = Some("Terminating".into());
        assert!(!is_active(&ns));
        ns.status = None;
        ns.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(!is_active(&ns));
    }
}
