//! Ephemeral containers (`kubectl debug POD`): added to a running pod through the API's
//! `ephemeralcontainers` subresource, each started once and never restarted, in the pod's
//! namespaces, and in the PID namespace of the container it targets when it names one
//! (`targetContainerName`), so that it sees that container's processes.

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod};

/// The container an ephemeral container runs as (the fields they share).
pub fn as_container(ephemeral: &EphemeralContainer) -> Container {
    let e = ephemeral.clone();
    Container {
        name: e.name,
        image: e.image,
        command: e.command,
        args: e.args,
        working_dir: e.working_dir,
        env: e.env,
        env_from: e.env_from,
        volume_mounts: e.volume_mounts,
        volume_devices: e.volume_devices,
        security_context: e.security_context,
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path,
        termination_message_policy: e.termination_message_policy,
        image_pull_policy: e.image_pull_policy,
        ..Default::default()
    }
}

/// The pod's ephemeral containers as containers, each with the container it targets.
pub fn of(pod: &Pod) -> Vec<(Container, Option<String>)> {
    pod.spec
        .iter()
        .flat_map(|spec| spec.ephemeral_containers.iter().flatten())
        .map(|e| {
            let target = e.target_container_name.clone().filter(|t| !t.is_empty());
            (as_container(e), target)
        })
        .collect()
}

/// Whether `name` is one of the pod's ephemeral containers.
pub fn is_ephemeral(pod: &Pod, name: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|spec| spec.ephemeral_containers.iter().flatten())
        .any(|e| e.name == name)
}

/// Container `name` of the pod, of any kind (regular, init or ephemeral).
pub fn any_container(pod: &Pod, name: &str) -> Option<Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
        .or_else(|| {
            spec.ephemeral_containers
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .map(as_container)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn ephemeral_containers_run_as_containers_and_are_found_by_name() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    ..Default::default()
                }],
                ephemeral_containers: Some(vec![EphemeralContainer {
                    name: "debugger".into(),
                    image: Some("busybox".into()),
                    command: Some(vec!["sh".into()]),
                    stdin: Some(true),
                    tty: Some(true),
                    target_container_name: Some("main".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let all = of(&pod);
        assert_eq!(all.len(), 1);
        let (container, target) = &all[0];
        assert_eq!(container.name, "debugger");
        assert_eq!(container.command.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!((container.stdin, container.tty), (Some(true), Some(true)));
        assert_eq!(target.as_deref(), Some("main"));
        assert!(is_ephemeral(&pod, "debugger") && !is_ephemeral(&pod, "main"));
        assert_eq!(any_container(&pod, "debugger").unwrap().name, "debugger");
        assert_eq!(any_container(&pod, "main").unwrap().name, "main");
        assert!(any_container(&pod, "other").is_none());
    }
}
