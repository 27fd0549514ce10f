//! downwardAPI volumes: files holding the pod's own fields (`fieldRef`: name, namespace, uid,
//! labels and annotations, whole maps as sorted `key="value"` lines) and its containers'
//! resources (`resourceFieldRef`, in units of the divisor), on a tmpfs. The values come from
//! the same functions as the downward API's environment variables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::atomic_writer::{FileProjection, Payload};
use super::{CollectPayloadError, file_mode};
use crate::env::{EnvError, NodeFacts, field_value, resource_value};

/// The files for `items`; every item that cannot be resolved is reported (all of them, as
/// upstream aggregates them).
pub fn payload(
    items: &[DownwardAPIVolumeFile],
    pod: &Pod,
    allocatable: &BTreeMap<String, Quantity>,
    default_mode: u32,
) -> Result<Payload, CollectPayloadError> {
    let node = NodeFacts {
        allocatable: allocatable.clone(),
        ..Default::default()
    };
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            field_value(field, pod, &node, None)
        } else if let Some(selector) = &item.resource_field_ref {
            // A volume has no container of its own: the selector must name one.
            let name = selector.container_name.as_deref().unwrap_or_default();
            match find_container(pod, name) {
                Some(container) => resource_value(selector, pod, container, &node),
                None => Err(EnvError::ContainerNotFound {
                    name: name.to_owned(),
                }),
            }
        } else {
            Ok(String::new())
        };
        match value {
            Ok(text) => {
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: text.into_bytes(),
                        mode: file_mode(item.mode, default_mode),
                    },
                );
            }
            Err(err) => errors.push(CollectPayloadError::DownwardApi(err)),
        }
    }
    CollectPayloadError::aggregate(errors)?;
    Ok(payload)
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ObjectFieldSelector, PodSpec, ResourceFieldSelector};
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        let container = crate::qos::tests::container(
            "app",
            &[("cpu", "250m"), ("memory", "64Mi")],
            &[("memory", "128Mi")],
        );
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-7".into()),
                labels: Some(
                    [("tier", "front"), ("app", "web")]
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .into(),
                ),
                annotations: Some([("note".to_string(), "say \"hi\"".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn field(path: &str, field_path: &str, mode: Option<i32>) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            mode,
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            resource_field_ref: None,
        }
    }

    fn resource(
        path: &str,
        container: &str,
        res: &str,
        divisor: Option<&str>,
    ) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            mode: None,
            field_ref: None,
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(container.into()),
                divisor: divisor.map(|d| Quantity(d.into())),
                resource: res.into(),
            }),
        }
    }

    fn allocatable() -> BTreeMap<String, Quantity> {
        [("cpu", "2"), ("memory", "4Gi")]
            .map(|(k, v)| (k.to_string(), Quantity(v.into())))
            .into()
    }

    fn text(payload: &Payload, path: &str) -> String {
        String::from_utf8(payload[path].data.clone()).unwrap()
    }

    #[test]
    fn fields_are_formatted_as_upstream() {
        let items = [
            field("name", "metadata.name", None),
            field("namespace", "metadata.namespace", Some(0o400)),
            field("uid", "metadata.uid", None),
            field("labels", "metadata.labels", None),
            field("annotations", "metadata.annotations", None),
            field("app", "metadata.labels['app']", None),
        ];
        let payload = payload(&items, &pod(), &allocatable(), 0o644).unwrap();
        assert_eq!(text(&payload, "name"), "web-0");
        assert_eq!(text(&payload, "namespace"), "shop");
        assert_eq!(text(&payload, "uid"), "uid-7");
        assert_eq!(text(&payload, "labels"), "app=\"web\"\ntier=\"front\"");
        assert_eq!(text(&payload, "annotations"), "note=\"say \\\"hi\\\"\"");
        assert_eq!(text(&payload, "app"), "web");
        assert_eq!(payload["namespace"].mode, 0o400);
        assert_eq!(payload["name"].mode, 0o644);
    }

    #[test]
    fn resources_use_the_divisor_and_default_limits_to_allocatable() {
        let items = [
            resource("cpu_request", "app", "requests.cpu", Some("1m")),
            resource("cpu_limit", "app", "limits.cpu", None),
            resource("mem_limit", "app", "limits.memory", Some("1Mi")),
            resource("mem_request", "app", "requests.memory", None),
        ];
        let payload = payload(&items, &pod(), &allocatable(), 0o644).unwrap();
        assert_eq!(text(&payload, "cpu_request"), "250");
        assert_eq!(text(&payload, "cpu_limit"), "2");
        assert_eq!(text(&payload, "mem_limit"), "128");
        assert_eq!(text(&payload, "mem_request"), "67108864");
    }

    #[test]
    fn every_bad_item_is_reported() {
        let items = [
            field("bad", "spec.nope", None),
            resource("ghost", "ghost", "limits.cpu", None),
            field("ok", "metadata.name", None),
        ];
        let err = payload(&items, &pod(), &allocatable(), 0o644).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[field label not supported: spec.nope, container ghost not found]"
        );
        let one = payload(&items[1..], &pod(), &allocatable(), 0o644).unwrap_err();
        assert_eq!(one.to_string(), "container ghost not found");
    }
}
