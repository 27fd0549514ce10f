//! Where configMap, secret and projected volumes get their ConfigMaps, Secrets and service
//! account tokens: the API (read on every set-up, so that updates reach running pods; tokens
//! through the kubelet's [`TokenCache`]), behind a small trait so that payloads can be tested
//! without a server.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use kube::{Api, Client};

use super::service_account_token::{TokenCache, TokenSpec};

/// Reads the ConfigMaps and Secrets of the pod's namespace, and tokens of its service account.
/// `Ok(None)`: the object does not exist; `Err`: the message of any other failure.
pub trait ObjectSource {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, String>;
    async fn secret(&self, name: &str) -> Result<Option<Secret>, String>;
    async fn service_account_token(&self, spec: &TokenSpec) -> Result<String, String>;
    async fn persistent_volume_claim(
        &self,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, String>;
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, String>;
}

/// The API server as an [`ObjectSource`].
#[derive(Clone)]
pub struct ApiObjects {
    client: Client,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    claims: Api<PersistentVolumeClaim>,
    volumes: Api<PersistentVolume>,
    tokens: Arc<TokenCache>,
}

impl std::fmt::Debug for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiObjects").finish_non_exhaustive()
    }
}

impl ApiObjects {
    /// Objects of `namespace`; tokens from `tokens`.
    pub fn new(client: &Client, namespace: &str, tokens: Arc<TokenCache>) -> Self {
        Self {
            client: client.clone(),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            claims: Api::namespaced(client.clone(), namespace),
            volumes: Api::all(client.clone()),
            tokens,
        }
    }
}

/// The API's own message for a failed read (what upstream's FailedMount events show).
fn message(err: kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message,
        other => other.to_string(),
    }
}

impl ObjectSource for ApiObjects {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, String> {
        self.config_maps.get_opt(name).await.map_err(message)
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, String> {
        self.secrets.get_opt(name).await.map_err(message)
    }

    async fn service_account_token(&self, spec: &TokenSpec) -> Result<String, String> {
        self.tokens.get(&self.client, spec).await
    }

    async fn persistent_volume_claim(
        &self,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, String> {
        self.claims.get_opt(name).await.map_err(message)
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, String> {
        self.volumes.get_opt(name).await.map_err(message)
    }
}

#[cfg(test)]
pub mod fake {
    //! A map of objects standing in for the API in tests.

    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    /// ConfigMaps and Secrets by name; `failing` makes every read fail.
    #[derive(Debug, Default)]
    pub struct FakeObjects {
        pub config_maps: BTreeMap<String, ConfigMap>,
        pub secrets: BTreeMap<String, Secret>,
        pub claims: BTreeMap<String, PersistentVolumeClaim>,
        pub volumes: BTreeMap<String, PersistentVolume>,
        pub failing: bool,
    }

    impl FakeObjects {
        pub fn with_config_map(mut self, name: &str, data: &[(&str, &str)]) -> Self {
            let map = ConfigMap {
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            };
            self.config_maps.insert(name.into(), map);
            self
        }

        pub fn with_secret(mut self, name: &str, data: &[(&str, &str)]) -> Self {
            let secret = Secret {
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                        .collect(),
                ),
                ..Default::default()
            };
            self.secrets.insert(name.into(), secret);
            self
        }
    }

    impl ObjectSource for FakeObjects {
        async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, String> {
            if self.failing {
                return Err(format!("configmaps \"{name}\" is forbidden"));
            }
            Ok(self.config_maps.get(name).cloned())
        }

        async fn secret(&self, name: &str) -> Result<Option<Secret>, String> {
            if self.failing {
                return Err(format!("secrets \"{name}\" is forbidden"));
            }
            Ok(self.secrets.get(name).cloned())
        }

        async fn service_account_token(&self, spec: &TokenSpec) -> Result<String, String> {
            if self.failing {
                return Err(format!("serviceaccounts \"{}\" not found", spec.account));
            }
            Ok(format!(
                "token-of-{}-for-{}-{}s",
                spec.account,
                spec.audience.as_deref().unwrap_or("api"),
                spec.expiration_seconds
            ))
        }

        async fn persistent_volume_claim(
            &self,
            name: &str,
        ) -> Result<Option<PersistentVolumeClaim>, String> {
            if self.failing {
                return Err(format!("persistentvolumeclaims \"{name}\" is forbidden"));
            }
            Ok(self.claims.get(name).cloned())
        }

        async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, String> {
            if self.failing {
                return Err(format!("persistentvolumes \"{name}\" is forbidden"));
            }
            Ok(self.volumes.get(name).cloned())
        }
    }
}
