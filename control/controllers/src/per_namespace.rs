//! The loop of the controllers that keep one object in every active namespace (the default
//! ServiceAccount, the root CA ConfigMap): a kube-runtime Controller over Namespaces, also woken
//! by changes to the kept objects, which it sees through their informer.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use baton_client::{Informer, InformerEvent};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// Which changes of a kept object wake its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Only its deletion (it is made again).
    OnDelete,
    /// Any change (it is also set back when edited).
    OnAnyChange,
}

/// The informer of the kept objects (every namespace's object named `name`) and the stream
/// of namespaces their changes wake.
pub fn kept_objects<K>(
    client: Client,
    name: &str,
    wake: Wake,
) -> (
    Informer<K>,
    impl Stream<Item = ObjectRef<Namespace>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let informer = Informer::new(
        Api::<K>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    );
    let namespaces = informer.subscribe(move |event: &InformerEvent<'_, K>| {
        let object = match event {
            InformerEvent::Deleted(object) => object,
            InformerEvent::Applied { new, .. } if wake == Wake::OnAnyChange => new,
            InformerEvent::Applied { .. } => return None,
        };
        Some(ObjectRef::<Namespace>::new(
            object.meta().namespace.as_deref().unwrap_or_default(),
        ))
    });
    (informer, namespaces)
}

/// Runs the informer of the kept objects and, once it has listed, the Controller over
/// Namespaces (`concurrency` reconciles at once), forever. `what` names the controller in
/// debug logs.
#[allow(clippy::too_many_arguments)]
pub async fn run<K, S, E, Fut>(
    client: Client,
    kept: &Informer<K>,
    wake: impl Stream<Item = ObjectRef<Namespace>> + Send + 'static,
    concurrency: u16,
    reconcile: fn(Arc<Namespace>, Arc<S>) -> Fut,
    error_policy: fn(Arc<Namespace>, &E, Arc<S>) -> Action,
    state: Arc<S>,
    what: &'static str,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
    S: Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let work = async {
        kept.wait_until_ready().await;
        Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
            .with_config(kube::runtime::Config::default().concurrency(concurrency))
            .reconcile_on(wake)
            .run(reconcile, error_policy, state)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, controller = what, "reconcile");
                }
            })
            .await;
    };
    tokio::join!(kept.run(), work);
}
