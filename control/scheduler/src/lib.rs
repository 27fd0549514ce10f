//! `baton scheduler`: binds each pending pod to a node, as kube-scheduler v1.33 does with its
//! default profile. Only the API server is talked to (kube-rs); the leader schedules.
//!
//! Code map: `scheduler` is the loop (informer changes in, decisions out); `cache` holds the
//! nodes with their pods (bound and assumed); `queue` is activeQ/backoffQ/unschedulable;
//! `schedule_one` picks a node with the `framework` of `plugins`; `fit_error` words failures;
//! `api` writes bindings, conditions, events and evictions.

mod api;
mod cache;
mod events;
mod fit_error;
mod framework;
mod node_info;
mod node_tree;
mod plugins;
mod pod_info;
mod queue;
mod resources;
mod schedule_one;
mod scheduler;
mod selector;

use std::fmt::Debug;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;

use baton_client::{CachedPod, Informer, InformerEvent};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::scheduler::{Change, Input, Scheduler};

/// Flags of `baton scheduler`, with kube-scheduler's names.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub leader_election: baton_leader_election::LeaderElectionArgs,
}

/// The scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("connecting to the API server")]
    Connect(#[from] baton_client::ConnectError),
    #[error(transparent)]
    LeaderElection(#[from] baton_leader_election::LeaderElectionError),
    /// The leader-election flags do not fit together.
    #[error(transparent)]
    LeaderElectionConfig(#[from] baton_leader_election::LeaderElectionConfigError),
    #[error("the scheduling loop stopped")]
    LoopStopped,
}

/// A keys-only informer of the objects `api` and `config` select, its changes going to the
/// scheduling loop as `wrap`ped inputs. The scheduler's cache keeps the one copy of what it
/// needs of each object (slimmer still for bound pods), so the informer keeps none.
fn to_loop<K>(
    api: Api<K>,
    config: watcher::Config,
    transform: Option<baton_client::informer::Transform<K>>,
    inputs: &mpsc::UnboundedSender<Input>,
    wrap: fn(Change<K>) -> Input,
) -> Arc<Informer<K>>
where
    K: Resource + Clone + Default + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone + Default,
{
    let mut informer = Informer::new(api, config).keys_only();
    if let Some(transform) = transform {
        informer = informer.with_transform(transform);
    }
    let informer = Arc::new(informer);
    let tx = inputs.clone();
    informer.on_event(move |event| {
        let change = match event {
            InformerEvent::Applied { new, .. } => Change::Applied(Arc::new((*new).clone())),
            InformerEvent::Deleted(old) => Change::Deleted(Arc::new((*old).clone())),
        };
        let _ = tx.send(wrap(change));
    });
    informer
}

/// Runs the scheduler until it loses leadership or fails.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    args.leader_election.validate()?;
    let client = baton_client::connect(args.kubeconfig.as_deref(), "kube-scheduler").await?;

    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let (bind_tx, bind_rx) = mpsc::unbounded_channel();
    let (lead_tx, lead_rx) = watch::channel(false);

    // Finished pods leave the watch (as deletions), as with upstream's scheduler informer.
    // Cached slimmed (baton_client::slim): the scheduler only patches pods.
    let pods = to_loop(
        Api::<CachedPod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        Some(baton_client::slim::pod),
        &input_tx,
        Input::Pod,
    );
    let nodes = to_loop(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        Some(baton_client::slim::node),
        &input_tx,
        Input::Node,
    );
    let services = to_loop(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        None,
        &input_tx,
        Input::Service,
    );
    let namespaces = to_loop(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        None,
        &input_tx,
        Input::Namespace,
    );
    let claims = to_loop(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
        None,
        &input_tx,
        Input::Claim,
    );
    let volumes = to_loop(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
        None,
        &input_tx,
        Input::Volume,
    );
    let classes = to_loop(
        Api::<StorageClass>::all(client.clone()),
        watcher::Config::default(),
        None,
        &input_tx,
        Input::Class,
    );
    drop(input_tx);

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (p, n, s, ns) = (
            pods.clone(),
            nodes.clone(),
            services.clone(),
            namespaces.clone(),
        );
        tasks.spawn(async move { p.run().await });
        tasks.spawn(async move { n.run().await });
        tasks.spawn(async move { s.run().await });
        tasks.spawn(async move { ns.run().await });
        let (c, v, sc) = (claims.clone(), volumes.clone(), classes.clone());
        tasks.spawn(async move { c.run().await });
        tasks.spawn(async move { v.run().await });
        tasks.spawn(async move { sc.run().await });
    }
    let scheduler = Scheduler::new(api::ApiWriter::new(client.clone()), bind_tx);
    let mut main_loop = tokio::spawn(scheduler.run(input_rx, bind_rx, lead_rx));

    let lead = async {
        tokio::join!(
            pods.wait_until_ready(),
            nodes.wait_until_ready(),
            services.wait_until_ready(),
            namespaces.wait_until_ready(),
            claims.wait_until_ready(),
            volumes.wait_until_ready(),
            classes.wait_until_ready(),
        );
        tracing::info!("caches synced");
        let work = async {
            let _ = lead_tx.send(true);
            std::future::pending::<()>().await
        };
        if args.leader_election.leader_elect {
            let elector = baton_leader_election::LeaderElector::new(
                client.clone(),
                &args.leader_election,
                "kube-scheduler",
            );
            elector.run(work).await?;
        } else {
            work.await;
        }
        Ok::<(), SchedulerError>(())
    };

    let result = tokio::select! {
        result = lead => result,
        _ = &mut main_loop => Err(SchedulerError::LoopStopped),
    };
    main_loop.abort();
    tasks.abort_all();
    result
}
