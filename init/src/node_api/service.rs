//! The node API's calls.

use std::sync::Arc;

use baton_node_api::proto::node_server::Node;
use baton_node_api::proto::{
    ApplyConfigReply, ApplyConfigRequest, ApplyMode, KernelLogRequest, KubeconfigReply,
    KubeconfigRequest, LogLine, LogsRequest, Phase, PowerReply, PowerRequest, RestartServiceReply,
    RestartServiceRequest, Service, ServicesReply, ServicesRequest, StatusReply, StatusRequest,
    VersionReply, VersionRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::facts;
use super::state::{AppliedConfig, NodeState};
use crate::apply_config::{ApplyPlan, changed_fields, plan, stage};
use crate::machine_config::{MachineConfig, Role};
use crate::phases::PhaseOutcome;
use crate::power::PowerAction;
use crate::supervisor::RestartServiceError;

/// The group a caller's certificate must name (the cluster's administrators).
const ADMIN_GROUP: &str = baton_pki::ADMIN_GROUP;
/// Lines buffered towards a slow log reader before the copy waits.
const STREAM_BUFFER: usize = 256;

/// What a call needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Served also without authentication, in maintenance mode.
    Maintenance,
    /// Only for an authenticated administrator.
    Admin,
}

/// The node API's implementation over the node's state.
#[derive(Debug)]
pub(super) struct NodeApi {
    state: Arc<NodeState>,
    authenticated: bool,
}

impl NodeApi {
    pub(super) fn new(state: Arc<NodeState>, authenticated: bool) -> Self {
        NodeApi {
            state,
            authenticated,
        }
    }

    /// Lets the call through when its caller may make it.
    fn authorize<T>(&self, request: &Request<T>, access: Access) -> Result<(), Status> {
        if !self.authenticated {
            return match access {
                Access::Maintenance => Ok(()),
                Access::Admin => Err(Status::permission_denied(
                    "the node is in maintenance mode without a usable cluster CA: only version, status, apply-config, reboot and shutdown are served",
                )),
            };
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate of the cluster CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| Status::unauthenticated("the client certificate does not parse"))?;
        let subject = parsed.subject();
        let in_group = subject
            .iter_organization()
            .any(|o| o.as_str().ok() == Some(ADMIN_GROUP));
        if in_group {
            Ok(())
        } else {
            let user = subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("the caller");
            Err(Status::permission_denied(format!(
                "{user} is not in group {ADMIN_GROUP}"
            )))
        }
    }

    fn power(&self, action: PowerAction) -> Result<Response<PowerReply>, Status> {
        tracing::info!(?action, "power request through the node API");
        if self.state.request_power(action) {
            Ok(Response::new(PowerReply {}))
        } else {
            Err(Status::unavailable("the node is already shutting down"))
        }
    }
}

/// The machine's hostname as the kernel has it.
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The role of the configuration in use; empty while there is none.
fn role_of(config: Option<&MachineConfig>) -> String {
    config
        .map(|c| c.machine.role.as_str().to_string())
        .unwrap_or_default()
}

fn lines_stream(
    lines: Vec<String>,
    follow: Option<broadcast::Receiver<String>>,
) -> ReceiverStream<Result<LogLine, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        for line in lines {
            if tx.send(Ok(LogLine { line })).await.is_err() {
                return;
            }
        }
        let Some(mut later) = follow else {
            return;
        };
        loop {
            let line = match later.recv().await {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    format!("... {missed} lines dropped: the reader fell behind")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(LogLine { line })).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Node for NodeApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionReply>, Status> {
        self.authorize(&request, Access::Maintenance)?;
        let inner = self.state.lock();
        Ok(Response::new(VersionReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname(),
            role: role_of(inner.config.as_ref()),
            environment: format!("{:?}", self.state.environment),
            maintenance: inner.maintenance.is_some(),
        }))
    }

    async fn services(
        &self,
        request: Request<ServicesRequest>,
    ) -> Result<Response<ServicesReply>, Status> {
        self.authorize(&request, Access::Admin)?;
        let supervisor = self.state.lock().supervisor.clone();
        let services = supervisor
            .map(|s| s.status())
            .unwrap_or_default()
            .into_iter()
            .map(|s| Service {
                name: s.name,
                state: s.state.as_str().to_string(),
                pid: s.pid,
                ready: s.ready,
                restarts: s.restarts,
                last_exit: s.last_exit.unwrap_or_default(),
                ready_after_ms: s.ready_after.map(|d| d.as_secs_f64() * 1e3),
            })
            .collect();
        Ok(Response::new(ServicesReply { services }))
    }

    async fn restart_service(
        &self,
        request: Request<RestartServiceRequest>,
    ) -> Result<Response<RestartServiceReply>, Status> {
        self.authorize(&request, Access::Admin)?;
        let name = request.into_inner().name;
        let supervisor = self.state.lock().supervisor.clone();
        let Some(supervisor) = supervisor else {
            return Err(Status::failed_precondition(
                "no services run: the node is not booted",
            ));
        };
        tracing::info!(service = %name, "restart requested through the node API");
        match supervisor.restart(&name).await {
            Ok(()) => Ok(Response::new(RestartServiceReply {})),
            Err(err @ RestartServiceError::Unknown(_)) => Err(Status::not_found(err.to_string())),
            Err(err) => Err(Status::unavailable(err.to_string())),
        }
    }

    type LogsStream = ReceiverStream<Result<LogLine, Status>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.authorize(&request, Access::Admin)?;
        let LogsRequest {
            service,
            follow,
            tail_lines,
        } = request.into_inner();
        let supervisor = self.state.lock().supervisor.clone();
        let ring = supervisor
            .and_then(|s| s.logs(&service))
            .ok_or_else(|| Status::not_found(format!("no service named {service}")))?;
        let (mut lines, later) = if follow {
            let (lines, later) = ring.follow();
            (lines, Some(later))
        } else {
            (ring.lines(), None)
        };
        if let Some(tail) = tail_lines {
            let keep = lines.len().saturating_sub(tail as usize);
            lines.drain(..keep);
        }
        Ok(Response::new(lines_stream(lines, later)))
    }

    type KernelLogStream = ReceiverStream<Result<LogLine, Status>>;

    async fn kernel_log(
        &self,
        request: Request<KernelLogRequest>,
    ) -> Result<Response<Self::KernelLogStream>, Status> {
        self.authorize(&request, Access::Admin)?;
        if self.state.environment.is_sandbox() {
            return Err(Status::unavailable(
                "a sandboxed node runs on the host's kernel: its log is the host's (dmesg there)",
            ));
        }
        let follow = request.into_inner().follow;
        let mut kmsg = facts::open_kmsg(follow)
            .map_err(|err| Status::unavailable(format!("opening /dev/kmsg: {err}")))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            while let Some(record) = facts::read_kmsg_record(&mut kmsg) {
                let Some(line) = facts::kmsg_line(&record) else {
                    continue;
                };
                if tx.blocking_send(Ok(LogLine { line })).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.authorize(&request, Access::Maintenance)?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let (memory_total_bytes, memory_available_bytes) = facts::memory(&meminfo);
        let inner = self.state.lock();
        let phases = inner
            .phases
            .iter()
            .map(|p| {
                let (outcome, detail) = match &p.outcome {
                    PhaseOutcome::Done => ("Done", String::new()),
                    PhaseOutcome::Skipped(why) => ("Skipped", why.clone()),
                    PhaseOutcome::Failed(err) => ("Failed", err.clone()),
                };
                Phase {
                    name: p.name.to_string(),
                    outcome: outcome.to_string(),
                    duration_ms: p.duration.as_secs_f64() * 1e3,
                    detail,
                }
            })
            .collect();
        Ok(Response::new(StatusReply {
            hostname: hostname(),
            role: role_of(inner.config.as_ref()),
            environment: format!("{:?}", self.state.environment),
            maintenance: inner.maintenance.is_some(),
            problems: inner
                .maintenance
                .as_ref()
                .map(|m| m.problems.clone())
                .unwrap_or_default(),
            phases,
            memory_total_bytes,
            memory_available_bytes,
            disks: facts::disks(facts::REPORTED_MOUNTS),
            addresses: facts::addresses(),
            uptime_seconds: self.state.uptime().as_secs_f64(),
            config_source: inner.config_source.clone(),
            config_staged: inner.staged,
            init_memory_bytes: facts::status_memory(&own, "VmRSS"),
            init_anonymous_memory_bytes: facts::status_memory(&own, "RssAnon"),
        }))
    }

    async fn reboot(&self, request: Request<PowerRequest>) -> Result<Response<PowerReply>, Status> {
        self.authorize(&request, Access::Maintenance)?;
        self.power(PowerAction::Reboot)
    }

    async fn shutdown(
        &self,
        request: Request<PowerRequest>,
    ) -> Result<Response<PowerReply>, Status> {
        self.authorize(&request, Access::Maintenance)?;
        self.power(PowerAction::PowerOff)
    }

    async fn apply_config(
        &self,
        request: Request<ApplyConfigRequest>,
    ) -> Result<Response<ApplyConfigReply>, Status> {
        self.authorize(&request, Access::Maintenance)?;
        let request = request.into_inner();
        let staged_only = request.mode() == ApplyMode::Staged;
        let config =
            MachineConfig::parse(&request.config, "the applied configuration").map_err(|err| {
                let mut message = err.to_string();
                if let crate::LoadMachineConfigError::Malformed { source, .. } = &err {
                    message = format!("{message}: {source}");
                }
                Status::invalid_argument(message)
            })?;
        let (current, recoverable) = {
            let inner = self.state.lock();
            (
                inner.config.clone(),
                inner.maintenance.as_ref().is_some_and(|m| m.recoverable),
            )
        };
        let changed: Vec<String> = match &current {
            Some(current) => changed_fields(current, &config)
                .into_iter()
                .map(String::from)
                .collect(),
            None => vec!["(no configuration in use)".into()],
        };
        let changed_refs: Vec<&str> = changed.iter().map(String::as_str).collect();
        let plan = if recoverable && !staged_only {
            ApplyPlan::Live
        } else if current.is_none() {
            ApplyPlan::Staged
        } else {
            plan(&changed_refs, staged_only)
        };
        if plan == ApplyPlan::Unchanged {
            return Ok(Response::new(ApplyConfigReply {
                outcome: plan.outcome().into(),
                changed,
                message: "the configuration is the one in use".into(),
            }));
        }
        let path = stage(&self.state.root, &request.config)
            .map_err(|err| Status::internal(baton_client::error_chain(&err)))?;
        let source = format!("{} (applied through the node API)", path.display());
        let message = match plan {
            ApplyPlan::Live if recoverable => {
                tracing::info!("a corrected configuration was applied: leaving maintenance mode");
                if !self.state.hand_over(AppliedConfig {
                    config: config.clone(),
                    source: source.clone(),
                }) {
                    return Err(Status::unavailable("the node is shutting down"));
                }
                "the node leaves maintenance mode and boots with it".to_string()
            }
            ApplyPlan::Live => {
                crate::sysctls::apply_sysctls(
                    &self.state.root.join("proc/sys"),
                    self.state.environment,
                    &config.machine.sysctls,
                )
                .map_err(|err| Status::failed_precondition(baton_client::error_chain(&err)))?;
                self.state.set_config(&config, &source);
                "applied to the running node".to_string()
            }
            _ => {
                self.state.lock().staged = true;
                format!(
                    "staged in {}: it takes effect at the next reboot",
                    path.display()
                )
            }
        };
        tracing::info!(
            outcome = plan.outcome(),
            ?changed,
            "configuration applied through the node API"
        );
        Ok(Response::new(ApplyConfigReply {
            outcome: plan.outcome().into(),
            changed,
            message,
        }))
    }

    async fn kubeconfig(
        &self,
        request: Request<KubeconfigRequest>,
    ) -> Result<Response<KubeconfigReply>, Status> {
        self.authorize(&request, Access::Admin)?;
        let config = self.state.lock().config.clone();
        let Some(config) = config else {
            return Err(Status::failed_precondition(
                "the node has no configuration yet",
            ));
        };
        if config.machine.role != Role::ControlPlane {
            return Err(Status::failed_precondition(format!(
                "{} is a worker: only control-plane nodes hand out the admin kubeconfig",
                config.machine.hostname
            )));
        }
        match crate::credentials::admin_kubeconfig(&config) {
            Ok(Some(kubeconfig)) => Ok(Response::new(KubeconfigReply { kubeconfig })),
            Ok(None) => Err(Status::failed_precondition(
                "the node holds no cluster CA key",
            )),
            Err(err) => Err(Status::internal(baton_client::error_chain(&err))),
        }
    }
}
