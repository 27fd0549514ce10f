//! configMap volumes: the ConfigMap's keys (`data` and `binaryData`) as files, or only the
//! `items` listed (key -> path, with their modes), in a directory on disk. A missing ConfigMap
//! or key fails the mount unless the volume is optional.

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, KeyToPath};

use std::collections::BTreeMap;

use super::atomic_writer::Payload;
use super::objects::ObjectSource;
use super::{CollectPayloadError, DEFAULT_MODE, file_mode, keyed_payload};

/// The files of a configMap volume.
pub async fn payload(
    objects: &impl ObjectSource,
    source: &ConfigMapVolumeSource,
) -> Result<Payload, CollectPayloadError> {
    let optional = source.optional.unwrap_or(false);
    let config_map = fetch(objects, &source.name, optional).await?;
    make_payload(
        source.items.as_deref(),
        &config_map,
        file_mode(source.default_mode, DEFAULT_MODE),
        optional,
    )
}

/// ConfigMap `name`; an optional one that does not exist reads as empty.
pub async fn fetch(
    objects: &impl ObjectSource,
    name: &str,
    optional: bool,
) -> Result<ConfigMap, CollectPayloadError> {
    match objects
        .config_map(name)
        .await
        .map_err(CollectPayloadError::Api)?
    {
        Some(config_map) => Ok(config_map),
        None if optional => Ok(ConfigMap::default()),
        None => Err(CollectPayloadError::ConfigMapNotFound(name.to_owned())),
    }
}

/// The files for `items` of `config_map` (every key of data and binaryData when there are no
/// items).
pub fn make_payload(
    items: Option<&[KeyToPath]>,
    config_map: &ConfigMap,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, CollectPayloadError> {
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(key, bytes)| (key.clone(), bytes.0.clone()))
        .collect();
    for (key, text) in config_map.data.iter().flatten() {
        data.insert(key.clone(), text.as_bytes().to_vec());
    }
    keyed_payload(
        &data,
        items,
        default_mode,
        optional,
        CollectPayloadError::MissingConfigMapKey,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::objects::fake::FakeObjects;
    use k8s_openapi::ByteString;

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    fn source(name: &str) -> ConfigMapVolumeSource {
        ConfigMapVolumeSource {
            name: name.into(),
            ..Default::default()
        }
    }

    fn files(payload: &Payload) -> Vec<(&str, &str, u32)> {
        payload
            .iter()
            .map(|(p, f)| (p.as_str(), std::str::from_utf8(&f.data).unwrap(), f.mode))
            .collect()
    }

    #[tokio::test]
    async fn every_key_with_the_default_mode_including_binary_data() {
        let mut objects = FakeObjects::default().with_config_map("cfg", &[("a", "1"), ("b", "2")]);
        objects.config_maps.get_mut("cfg").unwrap().binary_data =
            Some([("bin".to_string(), ByteString(b"\x01".to_vec()))].into());
        let payload = payload(&objects, &source("cfg")).await.unwrap();
        assert_eq!(payload["bin"].data, vec![1]);
        assert_eq!(payload["bin"].mode, 0o644);
        assert_eq!(
            files(&payload)
                .into_iter()
                .filter(|(p, ..)| *p != "bin")
                .collect::<Vec<_>>(),
            vec![("a", "1", 0o644), ("b", "2", 0o644)]
        );

        let mut with_mode = source("cfg");
        with_mode.default_mode = Some(0o400);
        let payload = super::payload(&objects, &with_mode).await.unwrap();
        assert!(payload.values().all(|f| f.mode == 0o400));
    }

    #[tokio::test]
    async fn items_choose_keys_paths_and_modes() {
        let objects = FakeObjects::default().with_config_map("cfg", &[("a", "1"), ("b", "2")]);
        let mut src = source("cfg");
        src.default_mode = Some(0o440);
        src.items = Some(vec![
            item("a", "dir/first", Some(0o600)),
            item("b", "second", None),
        ]);
        let payload = payload(&objects, &src).await.unwrap();
        assert_eq!(
            files(&payload),
            vec![("dir/first", "1", 0o600), ("second", "2", 0o440)]
        );
    }

    #[tokio::test]
    async fn missing_objects_and_keys_fail_unless_optional() {
        let objects = FakeObjects::default().with_config_map("cfg", &[("a", "1")]);
        let err = payload(&objects, &source("nope")).await.unwrap_err();
        assert_eq!(err.to_string(), "configmap \"nope\" not found");

        let mut src = source("cfg");
        src.items = Some(vec![item("a", "a", None), item("zz", "zz", None)]);
        let err = payload(&objects, &src).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: zz"
        );

        src.optional = Some(true);
        assert_eq!(
            files(&payload(&objects, &src).await.unwrap()),
            vec![("a", "1", 0o644)]
        );
        let mut missing = source("nope");
        missing.optional = Some(true);
        assert!(payload(&objects, &missing).await.unwrap().is_empty());

        let failing = FakeObjects {
            failing: true,
            ..Default::default()
        };
        let err = payload(&failing, &missing).await.unwrap_err();
        assert_eq!(err.to_string(), "configmaps \"nope\" is forbidden");
    }
}
