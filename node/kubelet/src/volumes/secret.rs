//! secret volumes: the Secret's keys as files, or only the `items` listed (key -> path, with
//! their modes), on a tmpfs so that secret data never reaches the node's disk. A missing
//! Secret or key fails the mount unless the volume is optional.

use k8s_openapi::api::core::v1::{KeyToPath, Secret, SecretVolumeSource};

use std::collections::BTreeMap;

use super::atomic_writer::Payload;
use super::objects::ObjectSource;
use super::{CollectPayloadError, DEFAULT_MODE, file_mode, keyed_payload};

/// The files of a secret volume.
pub async fn payload(
    objects: &impl ObjectSource,
    source: &SecretVolumeSource,
) -> Result<Payload, CollectPayloadError> {
    let optional = source.optional.unwrap_or(false);
    let name = source.secret_name.as_deref().unwrap_or_default();
    let secret = fetch(objects, name, optional).await?;
    make_payload(
        source.items.as_deref(),
        &secret,
        file_mode(source.default_mode, DEFAULT_MODE),
        optional,
    )
}

/// Secret `name`; an optional one that does not exist reads as empty.
pub async fn fetch(
    objects: &impl ObjectSource,
    name: &str,
    optional: bool,
) -> Result<Secret, CollectPayloadError> {
    match objects
        .secret(name)
        .await
        .map_err(CollectPayloadError::Api)?
    {
        Some(secret) => Ok(secret),
        None if optional => Ok(Secret::default()),
        None => Err(CollectPayloadError::SecretNotFound(name.to_owned())),
    }
}

/// The files for `items` of `secret` (every key when there are no items).
pub fn make_payload(
    items: Option<&[KeyToPath]>,
    secret: &Secret,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, CollectPayloadError> {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(key, bytes)| (key.clone(), bytes.0.clone()))
        .collect();
    keyed_payload(
        &data,
        items,
        default_mode,
        optional,
        CollectPayloadError::MissingSecretKey,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::objects::fake::FakeObjects;

    fn source(name: &str) -> SecretVolumeSource {
        SecretVolumeSource {
            secret_name: Some(name.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keys_items_modes_and_optional() {
        let objects = FakeObjects::default().with_secret("creds", &[("user", "u"), ("pass", "p")]);
        let all = payload(&objects, &source("creds")).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["pass"].data, b"p");
        assert_eq!(all["user"].mode, 0o644);

        let mut src = source("creds");
        src.default_mode = Some(0o400);
        src.items = Some(vec![
            KeyToPath {
                key: "pass".into(),
                path: "db/password".into(),
                mode: None,
            },
            KeyToPath {
                key: "user".into(),
                path: "db/user".into(),
                mode: Some(0o444),
            },
        ]);
        let chosen = payload(&objects, &src).await.unwrap();
        assert_eq!(
            chosen.keys().collect::<Vec<_>>(),
            ["db/password", "db/user"]
        );
        assert_eq!(chosen["db/password"].mode, 0o400);
        assert_eq!(chosen["db/user"].mode, 0o444);

        src.items.as_mut().unwrap()[0].key = "token".into();
        assert_eq!(
            payload(&objects, &src).await.unwrap_err().to_string(),
            "secret references non-existent secret key: token"
        );
        src.optional = Some(true);
        assert_eq!(payload(&objects, &src).await.unwrap().len(), 1);

        assert_eq!(
            payload(&objects, &source("nope"))
                .await
                .unwrap_err()
                .to_string(),
            "secret \"nope\" not found"
        );
    }
}
