//! The Recreate strategy: scale every old ReplicaSet to zero, wait until none of their Pods
//! is left running (gone, or Succeeded or Failed), then create or grow the new ReplicaSet to
//! spec.replicas.

use baton_client::CachedPod;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;

use super::status::deployment_complete;
use super::sync::Rollout;
use super::{SyncDeploymentError, desired, rs_spec, rs_status_replicas};

/// Whether old Pods still run: an old ReplicaSet still counts replicas, or one of `old_pods`
/// (the Pods of the Deployment's ReplicaSets other than the new one) is not finished.
pub(super) fn old_pods_running(olds: &[&ReplicaSet], old_pods: &[&CachedPod]) -> bool {
    if olds.iter().map(|rs| rs_status_replicas(rs)).sum::<i32>() > 0 {
        return true;
    }
    old_pods.iter().any(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
    })
}

impl Rollout<'_> {
    /// One step of a Recreate rollout; returns when to look again for the progress deadline.
    pub(super) async fn recreate(&mut self) -> Result<Option<Duration>, SyncDeploymentError> {
        // Do not create the new ReplicaSet yet: nothing scales up before the old are gone.
        let mut new = self.get_all_and_sync_revision(false).await?;
        let (_, olds) = self.partition();
        let mut scaled_down = false;
        for i in olds.iter().copied() {
            if rs_spec(&self.rs_list[i]) > 0 && self.scale_rs(i, 0, false).await? {
                scaled_down = true;
            }
        }
        if scaled_down {
            return self.sync_rollout_status().await;
        }
        let running = {
            let old_rses: Vec<&ReplicaSet> = olds.iter().map(|&i| &self.rs_list[i]).collect();
            let pods = self.pods_of(&olds);
            let pods: Vec<&CachedPod> = pods.iter().map(AsRef::as_ref).collect();
            old_pods_running(&old_rses, &pods)
        };
        if running {
            return self.sync_rollout_status().await;
        }
        if new.is_none() {
            new = self.get_all_and_sync_revision(true).await?;
        }
        if let Some(new) = new {
            let want = desired(&self.d);
            let up = want > rs_spec(&self.rs_list[new]);
            self.scale_rs(new, want, up).await?;
        }
        let recorded = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &recorded) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::scale::tests::replicaset;
    use crate::replicaset::pods::tests::pod;

    #[test]
    fn old_pods_block_until_finished_or_gone() {
        let scaled_down = replicaset("old", 0, 0, 0, None);
        let mut counting = replicaset("old", 0, 0, 0, None);
        counting.status.as_mut().unwrap().replicas = 1;
        assert!(old_pods_running(&[&counting], &[]));
        assert!(!old_pods_running(&[&scaled_down], &[]));
        let running = pod("p", "n", "Running", None);
        let done = pod("q", "n", "Succeeded", None);
        let failed = pod("r", "n", "Failed", None);
        assert!(old_pods_running(&[&scaled_down], &[&running, &done]));
        assert!(!old_pods_running(&[&scaled_down], &[&done, &failed]));
    }
}
