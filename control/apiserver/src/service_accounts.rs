//! The part of upstream's ServiceAccount admission that concerns images: a new pod that names
//! no image pull secrets gets those of its service account. The service accounts' secrets are
//! kept in a [`WatchedMap`] (etcd is asked only while it is not synced). Unlike upstream, a pod
//! whose service account does not exist (yet: the service account controller makes `default`
//! just after its namespace) is let through unchanged rather than refused, and no API token
//! is mounted (the API server issues no service account tokens yet).

use std::sync::Arc;

use baton_store::Store;
use serde_json::{Value, json};

use crate::resources::{self, Resource};
use crate::status::StatusError;
use crate::watch_cache::WatchCaches;
use crate::watched_map::WatchedMap;

fn resource() -> &'static Resource {
    resources::find("", "v1", "serviceaccounts").expect("serviceaccounts are served")
}

/// The names of a service account's image pull secrets.
fn pull_secrets_of(account: &Value) -> Vec<String> {
    account["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Service accounts' image pull secrets by `namespace/name`.
#[derive(Debug, Clone)]
pub struct ServiceAccountCache {
    known: WatchedMap<Vec<String>>,
}

impl Default for ServiceAccountCache {
    fn default() -> Self {
        Self {
            known: WatchedMap::new(pull_secrets_of),
        }
    }
}

impl ServiceAccountCache {
    /// The image pull secrets of service account `namespace/name`: from the cache, else from
    /// etcd; `None` when the account does not exist.
    pub async fn pull_secrets<S: Store>(
        &self,
        store: &S,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Vec<String>>, StatusError> {
        self.known
            .get_or_fetch(store, resource(), Some(namespace), name)
            .await
    }

    /// Keeps the cache in step with the store, forever (restarting after any gap).
    pub async fn run<S: Store>(self, store: Arc<S>, caches: Arc<WatchCaches<S>>) {
        self.known.run(store, caches, resource()).await
    }
}

/// Admission of a new pod: the image pull secrets of its service account when it names none.
pub async fn admit_new_pod<S: Store>(
    accounts: &ServiceAccountCache,
    store: &S,
    namespace: &str,
    pod: &mut Value,
) -> Result<(), StatusError> {
    let spec = &mut pod["spec"];
    let has_own = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|list| !list.is_empty());
    let account = spec["serviceAccountName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    if has_own {
        return Ok(());
    }
    if let Some(secrets) = accounts.pull_secrets(store, namespace, &account).await?
        && !secrets.is_empty()
    {
        spec["imagePullSecrets"] = secrets.iter().map(|name| json!({ "name": name })).collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_pull_secrets_are_its_named_references() {
        let account = json!({ "imagePullSecrets": [{ "name": "regcred" }, { "name": "" }, {}] });
        assert_eq!(pull_secrets_of(&account), ["regcred"]);
        assert!(pull_secrets_of(&json!({})).is_empty());
    }
}
