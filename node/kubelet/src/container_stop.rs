//! Stopping one running container as upstream's kubelet does: the Killing event, the preStop
//! hook within the grace period (a FailedPreStopHook event when it fails; one that outlives
//! the grace period is cut short), then SIGTERM, and SIGKILL once the rest of the grace period
//! has passed. The container always gets at least 2 s between SIGTERM and SIGKILL.

use std::time::{Duration, Instant};

use baton_runtime::{ContainerRuntime, ContainerState, wait_for_exit};
use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};

use crate::context::KubeletContext;
use crate::hooks::run_hook;
use crate::probes::Target;

/// The shortest time between SIGTERM and SIGKILL (upstream's minimumGracePeriodInSeconds).
pub const MIN_GRACE: Duration = Duration::from_secs(2);
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
/// How long a SIGKILLed container may take to go away.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One container to stop.
#[derive(Clone, Debug)]
pub struct StopRequest {
    /// The container's name in the pod.
    pub name: String,
    /// The runtime's id of the running attempt.
    pub container_id: String,
    /// The grace period, the preStop hook included.
    pub grace: Duration,
    /// The Killing event's message.
    pub message: String,
    /// The preStop hook to run first, and where it reaches the container.
    pub pre_stop: Option<(LifecycleHandler, Target)>,
}

/// Stops the container; returns once it has exited (or did not go away after SIGKILL).
pub async fn stop_container(ctx: &KubeletContext, pod: &Pod, request: StopRequest) {
    let name = request.name.as_str();
    ctx.event(pod, Some(name), false, "Killing", request.message.clone())
        .await;
    let began = Instant::now();
    if let Some((handler, target)) = &request.pre_stop
        && !request.grace.is_zero()
    {
        let hook = run_hook(&ctx.runtime, pod, handler, target);
        match tokio::time::timeout(request.grace, hook).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                tracing::warn!(container = %request.container_id, error = %message, "preStop hook failed");
                // As upstream, the message stays out of the event (it may hold secrets).
                ctx.event(
                    pod,
                    Some(name),
                    true,
                    "FailedPreStopHook",
                    "PreStopHook failed".into(),
                )
                .await;
            }
            Err(_) => {
                tracing::info!(container = %request.container_id, "preStop hook not completed in the grace period")
            }
        }
    }
    let remaining = request.grace.saturating_sub(began.elapsed()).max(MIN_GRACE);
    let pid = match ctx.runtime.container_status(&request.container_id).await {
        Ok(status) if status.state == ContainerState::Running => status.pid,
        Ok(_) => None,
        Err(err) => {
            // Without its pid the exit cannot be awaited: no grace period then.
            tracing::warn!(container = %request.container_id, %err, "reading a container's status to stop it");
            let _ = ctx
                .runtime
                .signal_container(&request.container_id, SIGKILL)
                .await;
            None
        }
    };
    let Some(pid) = pid else {
        return;
    };
    if let Err(err) = ctx
        .runtime
        .signal_container(&request.container_id, SIGTERM)
        .await
    {
        tracing::warn!(container = %request.container_id, %err, "sending SIGTERM");
    }
    if tokio::time::timeout(remaining, wait_for_exit(pid))
        .await
        .is_ok()
    {
        return;
    }
    if let Err(err) = ctx
        .runtime
        .signal_container(&request.container_id, SIGKILL)
        .await
    {
        tracing::warn!(container = %request.container_id, %err, "sending SIGKILL");
    }
    let _ = tokio::time::timeout(KILL_WAIT, wait_for_exit(pid)).await;
}
