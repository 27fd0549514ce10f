//! Lifecycle hooks (postStart, preStop) as upstream's kubelet runs them: `exec` runs the
//! command in the container (no timeout of its own: postStart runs until it ends or the pod is
//! deleted, preStop within the grace period, both by dropping the run, which kills the
//! command); `httpGet` makes the GET into the pod's network namespace (any response counts,
//! only a failed exchange fails); `sleep` waits. A failure comes back as upstream's message
//! ("Exec lifecycle hook ([...]) for Container \"c\" in Pod \"p_ns(uid)\" failed - error: ...").

use std::time::Duration;

use baton_runtime::ContainerRuntime;
use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};

use crate::container_spec::pod_description;
use crate::probes::exec::exec_in_container;
use crate::probes::{Target, http, http_request, user_agent};

/// Runs `handler` against `target`, a container of `pod`; the error is the message upstream
/// logs for a failed hook.
pub async fn run_hook<R: ContainerRuntime>(
    runtime: &R,
    pod: &Pod,
    handler: &LifecycleHandler,
    target: &Target,
) -> Result<(), String> {
    let name = &target.container.name;
    let pod_text = pod_description(pod);
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let failed = |error: String, output: String| {
            format!(
                "Exec lifecycle hook ([{}]) for Container {name:?} in Pod {pod_text:?} failed - error: {error}, message: {output:?}",
                command.join(" ")
            )
        };
        return match exec_in_container(runtime, &target.container_id, &command, None).await {
            Ok(output) if output.exit_code == Some(0) => Ok(()),
            Ok(output) => Err(failed(
                format!(
                    "command '{}' exited with {}: {}",
                    command.join(" "),
                    output.exit_code.unwrap_or(-1),
                    String::from_utf8_lossy(&output.stderr)
                ),
                output.combined(),
            )),
            Err(err) => Err(failed(baton_images::error_chain(&err), String::new())),
        };
    }
    if let Some(action) = &handler.http_get {
        let path = action.path.clone().unwrap_or_default();
        let failed = |error: String| {
            format!(
                "HTTP lifecycle hook ({path}) for Container {name:?} in Pod {pod_text:?} failed - error: {error}"
            )
        };
        let request = http_request(action, &target.container, target.host).map_err(failed)?;
        return http::get(
            target.netns.as_deref(),
            &request,
            &user_agent("lifecycle"),
            None,
        )
        .await
        .map(drop)
        .map_err(failed);
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
        return Ok(());
    }
    Err(format!("Cannot run handler: invalid handler: {handler:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use k8s_openapi::api::core::v1::{Container, HTTPGetAction, SleepAction, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    /// A runtime for hooks that never exec (http, sleep): every call fails.
    #[derive(Debug)]
    struct NoRuntime;

    fn unavailable() -> baton_runtime::RuntimeCallError {
        baton_runtime::RuntimeCallError::Failed("no runtime in this test".into())
    }

    impl ContainerRuntime for NoRuntime {
        async fn create_sandbox(
            &self,
            _: baton_runtime::SandboxConfig,
        ) -> Result<baton_runtime::Sandbox, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn remove_sandbox(&self, _: &str) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn create_container(
            &self,
            _: baton_runtime::ContainerConfig,
        ) -> Result<i32, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn start_container(&self, _: &str) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn signal_container(
            &self,
            _: &str,
            _: i32,
        ) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn remove_container(&self, _: &str) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn close_stdin(&self, _: &str) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn resize_terminal(
            &self,
            _: &str,
            _: u16,
            _: u16,
        ) -> Result<(), baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn container_status(
            &self,
            _: &str,
        ) -> Result<baton_runtime::ContainerStatus, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn list_containers(
            &self,
        ) -> Result<Vec<baton_runtime::ContainerStatus>, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn exec(
            &self,
            _: baton_runtime::ExecConfig,
            _: [std::os::fd::OwnedFd; 3],
        ) -> Result<i32, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
        async fn exec_status(
            &self,
            _: i32,
        ) -> Result<Option<baton_runtime::ExitStatus>, baton_runtime::RuntimeCallError> {
            Err(unavailable())
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn target() -> Target {
        Target {
            container_id: "c".into(),
            container: Container {
                name: "main".into(),
                ..Default::default()
            },
            netns: None,
            host: IpAddr::from([127, 0, 0, 1]),
        }
    }

    #[tokio::test]
    async fn http_hooks_succeed_on_any_response_and_fail_on_a_failed_exchange() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap();
            let _ = stream.write_all(b"HTTP/1.1 500 Oops\r\n\r\n").await;
            let _ = sender.send(String::from_utf8_lossy(&request[..n]).into_owned());
        });
        let handler = LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/hook".into()),
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            run_hook(&NoRuntime, &pod(), &handler, &target()).await,
            Ok(())
        );
        let request = received.await.unwrap();
        assert!(request.starts_with("GET /hook HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("User-Agent: kube-lifecycle/1.33"),
            "{request}"
        );
        let err = run_hook(&NoRuntime, &pod(), &handler, &target())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "HTTP lifecycle hook (/hook) for Container \"main\" in Pod \"web_default(u1)\" failed - error: Get \"http://127.0.0.1:{port}/hook\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn exec_hooks_that_cannot_run_and_invalid_handlers_fail() {
        let handler = LifecycleHandler {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), "exit 1".into()]),
            }),
            ..Default::default()
        };
        let err = run_hook(&NoRuntime, &pod(), &handler, &target())
            .await
            .unwrap_err();
        assert!(
            err.starts_with("Exec lifecycle hook ([sh -c exit 1]) for Container \"main\" in Pod \"web_default(u1)\" failed - error: start [\"sh\", \"-c\", \"exit 1\"] in container c: no runtime in this test, message: \"\""),
            "{err}"
        );
        let handler = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = run_hook(&NoRuntime, &pod(), &handler, &target())
            .await
            .unwrap_err();
        assert!(
            err.starts_with("Cannot run handler: invalid handler: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn sleep_hooks_wait_their_seconds() {
        let handler = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 1 }),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        assert_eq!(
            run_hook(&NoRuntime, &pod(), &handler, &target()).await,
            Ok(())
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
