//! projected volumes: the files of several sources (ConfigMaps, Secrets, the downward API,
//! service account tokens bound to the pod) in one directory on a tmpfs, each item with its
//! mode or the volume's defaultMode. A later source's file replaces an earlier one's at the
//! same path.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::atomic_writer::{FileProjection, Payload};
use super::objects::ObjectSource;
use super::service_account_token::TokenSpec;
use super::{CollectPayloadError, DEFAULT_MODE, config_map, downward_api, file_mode, secret};

/// The files of a projected volume; the failures of all sources are reported together.
pub async fn payload(
    objects: &impl ObjectSource,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<Payload, CollectPayloadError> {
    let default_mode = file_mode(source.default_mode, DEFAULT_MODE);
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for projection in source.sources.iter().flatten() {
        let files = if let Some(cm) = &projection.config_map {
            let optional = cm.optional.unwrap_or(false);
            match config_map::fetch(objects, &cm.name, optional).await {
                Ok(object) => {
                    config_map::make_payload(cm.items.as_deref(), &object, default_mode, optional)
                }
                Err(err) => Err(err),
            }
        } else if let Some(s) = &projection.secret {
            let optional = s.optional.unwrap_or(false);
            match secret::fetch(objects, &s.name, optional).await {
                Ok(object) => {
                    secret::make_payload(s.items.as_deref(), &object, default_mode, optional)
                }
                Err(err) => Err(err),
            }
        } else if let Some(downward) = &projection.downward_api {
            downward_api::payload(
                downward.items.as_deref().unwrap_or_default(),
                pod,
                allocatable,
                default_mode,
            )
        } else if let Some(token) = &projection.service_account_token {
            let spec = TokenSpec {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                account: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".into()),
                pod_name: pod.metadata.name.clone().unwrap_or_default(),
                pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                audience: token.audience.clone().filter(|a| !a.is_empty()),
                expiration_seconds: token.expiration_seconds.unwrap_or(3600),
            };
            match objects.service_account_token(&spec).await {
                Ok(jwt) => {
                    let mut files = Payload::new();
                    let file = FileProjection {
                        data: jwt.into_bytes(),
                        mode: default_mode,
                    };
                    files.insert(token.path.clone(), file);
                    Ok(files)
                }
                Err(message) => Err(CollectPayloadError::FetchToken(message)),
            }
        } else if projection.cluster_trust_bundle.is_some() {
            Err(CollectPayloadError::Unsupported("clusterTrustBundle"))
        } else {
            Ok(Payload::new())
        };
        match files {
            Ok(files) => payload.extend(files),
            Err(err) => errors.push(err),
        }
    }
    CollectPayloadError::aggregate(errors)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::objects::fake::FakeObjects;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
        ObjectFieldSelector, SecretProjection, ServiceAccountTokenProjection, VolumeProjection,
    };
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn objects() -> FakeObjects {
        FakeObjects::default()
            .with_config_map("cfg", &[("mode", "fast"), ("other", "x")])
            .with_secret("creds", &[("pass", "p")])
    }

    fn config_map(name: &str, items: Option<Vec<KeyToPath>>) -> VolumeProjection {
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: name.into(),
                items,
                optional: None,
            }),
            ..Default::default()
        }
    }

    fn secret(name: &str, optional: bool) -> VolumeProjection {
        VolumeProjection {
            secret: Some(SecretProjection {
                name: name.into(),
                items: None,
                optional: Some(optional),
            }),
            ..Default::default()
        }
    }

    fn downward(path: &str) -> VolumeProjection {
        VolumeProjection {
            downward_api: Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: path.into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: "metadata.name".into(),
                    }),
                    mode: Some(0o600),
                    resource_field_ref: None,
                }]),
            }),
            ..Default::default()
        }
    }

    fn volume(sources: Vec<VolumeProjection>, default_mode: Option<i32>) -> ProjectedVolumeSource {
        ProjectedVolumeSource {
            default_mode,
            sources: Some(sources),
        }
    }

    #[tokio::test]
    async fn sources_are_merged_with_the_volume_default_mode() {
        let items = vec![KeyToPath {
            key: "mode".into(),
            path: "config/mode".into(),
            mode: None,
        }];
        let source = volume(
            vec![
                config_map("cfg", Some(items)),
                secret("creds", false),
                secret("absent", true),
                downward("podname"),
            ],
            Some(0o440),
        );
        let payload = payload(&objects(), &pod(), &source, &BTreeMap::new())
            .await
            .unwrap();
        let summary: Vec<(&str, &[u8], u32)> = payload
            .iter()
            .map(|(p, f)| (p.as_str(), f.data.as_slice(), f.mode))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("config/mode", b"fast".as_slice(), 0o440),
                ("pass", b"p".as_slice(), 0o440),
                ("podname", b"web-0".as_slice(), 0o600),
            ]
        );
    }

    fn token(audience: Option<&str>) -> VolumeProjection {
        VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".into(),
                audience: audience.map(str::to_owned),
                expiration_seconds: Some(3607),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_token_source_writes_the_pods_account_token() {
        let mut pod = pod();
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("builder".into()),
            ..Default::default()
        });
        let source = volume(vec![token(Some("vault"))], Some(0o400));
        let payload = payload(&objects(), &pod, &source, &BTreeMap::new())
            .await
            .unwrap();
        let file = &payload["token"];
        assert_eq!(file.data, b"token-of-builder-for-vault-3607s");
        assert_eq!(file.mode, 0o400);
    }

    #[tokio::test]
    async fn failures_of_every_source_are_reported() {
        let source = volume(
            vec![config_map("nope", None), secret("gone", false), token(None)],
            None,
        );
        let err = payload(
            &FakeObjects {
                failing: true,
                ..FakeObjects::default()
            },
            &pod(),
            &source,
            &BTreeMap::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "[configmaps \"nope\" is forbidden, secrets \"gone\" is forbidden, failed to fetch token: serviceaccounts \"default\" not found]"
        );
        let err = payload(&objects(), &pod(), &source, &BTreeMap::new())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "[configmap \"nope\" not found, secret \"gone\" not found]"
        );
    }
}
