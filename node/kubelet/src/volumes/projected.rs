//! projected volumes: the files of several sources (ConfigMaps, Secrets, the downward API) in
//! one directory on a tmpfs, each item with its mode or the volume's defaultMode. A later
//! source's file replaces an earlier one's at the same path. Service account tokens need the
//! API server's TokenRequest (serviceaccounts/token), which Baton's does not serve yet: such
//! a source fails the mount with a message that says so, rather than a made-up token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::atomic_writer::Payload;
use super::objects::ObjectSource;
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
        } else if projection.service_account_token.is_some() {
            Err(CollectPayloadError::TokenRequestUnsupported)
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

    #[tokio::test]
    async fn failures_of_every_source_are_reported() {
        let token = VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let source = volume(
            vec![config_map("nope", None), secret("gone", false), token],
            None,
        );
        let err = payload(&objects(), &pod(), &source, &BTreeMap::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "[configmap \"nope\" not found, secret \"gone\" not found, failed to fetch token: "
            ),
            "{err}"
        );
        assert!(err.contains("TokenRequest"), "{err}");
    }
}
