//! Upstream's ServiceAccount admission: a new pod that names no image pull secrets gets those
//! of its service account, and, when the API server issues tokens, every container mounts a
//! `kube-api-access-*` projected volume (a bound token, the cluster CA from the
//! `kube-root-ca.crt` ConfigMap, the namespace) at /var/run/secrets/kubernetes.io/serviceaccount
//! unless the pod or its account turns automounting off. The accounts are kept in a
//! [`WatchedMap`] (etcd is asked only while it is not synced), also for the authenticator,
//! which checks a token's account still has the UID it names.
//!
//! Unlike upstream, a pod whose service account does not exist (yet: the service account
//! controller makes `default` just after its namespace) is let through rather than refused;
//! its token volume is mounted, and the kubelet gets the token once the account exists.

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

/// Where the API token volume is mounted in every container (upstream's path).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the token volume's name (upstream's).
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime the token volume asks for (upstream's: one hour and seven seconds).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The ConfigMap the root CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// What admission and authentication need of a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Its UID.
    pub uid: String,
    /// The names of its image pull secrets.
    pub pull_secrets: Vec<String>,
    /// Its `automountServiceAccountToken`.
    pub automount: Option<bool>,
    /// Its `metadata.deletionTimestamp`, while it is being deleted.
    pub deletion_timestamp: Option<String>,
}

fn view_of(account: &Value) -> AccountView {
    AccountView {
        uid: account["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        pull_secrets: account["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        automount: account["automountServiceAccountToken"].as_bool(),
        deletion_timestamp: account["metadata"]["deletionTimestamp"]
            .as_str()
            .map(str::to_owned),
    }
}

/// Service accounts by `namespace/name`.
#[derive(Debug, Clone)]
pub struct ServiceAccountCache {
    known: WatchedMap<AccountView>,
}

impl Default for ServiceAccountCache {
    fn default() -> Self {
        Self {
            known: WatchedMap::new(view_of),
        }
    }
}

impl ServiceAccountCache {
    /// Service account `namespace/name`: from the cache, else from etcd; `None` when it does
    /// not exist.
    pub async fn get<S: Store>(
        &self,
        store: &S,
        namespace: &str,
        name: &str,
    ) -> Result<Option<AccountView>, StatusError> {
        self.known
            .get_or_fetch(store, resource(), Some(namespace), name)
            .await
    }

    /// Keeps the cache in step with the store, forever (restarting after any gap).
    pub async fn run<S: Store>(self, store: Arc<S>, caches: Arc<WatchCaches<S>>) {
        self.known.run(store, caches, resource()).await
    }
}

/// Admission of a new pod: the image pull secrets of its service account when it names none,
/// and the API token volume when `mount_token` (the server issues tokens).
pub async fn admit_new_pod<S: Store>(
    accounts: &ServiceAccountCache,
    store: &S,
    namespace: &str,
    pod: &mut Value,
    mount_token: bool,
) -> Result<(), StatusError> {
    // Upstream's plugin leaves mirror pods (static pods' API copies) alone.
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Ok(());
    }
    let spec = &mut pod["spec"];
    let account_name = spec["serviceAccountName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let account = accounts.get(store, namespace, &account_name).await?;
    let has_own = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|list| !list.is_empty());
    if !has_own
        && let Some(account) = &account
        && !account.pull_secrets.is_empty()
    {
        spec["imagePullSecrets"] = account
            .pull_secrets
            .iter()
            .map(|name| json!({ "name": name }))
            .collect();
    }
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(account.and_then(|a| a.automount))
        .unwrap_or(true);
    if mount_token && automount {
        mount_token_volume(spec);
    }
    Ok(())
}

/// Mounts the API token volume in every init container and container that has nothing at
/// its path yet, and adds the volume when one of them mounts it.
fn mount_token_volume(spec: &mut Value) {
    let existing = spec["volumes"].as_array().and_then(|volumes| {
        volumes
            .iter()
            .filter_map(|v| v["name"].as_str())
            .find(|name| name.starts_with(TOKEN_VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let name = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", random_suffix()));
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for container in containers {
            let taken = container["volumeMounts"]
                .as_array()
                .is_some_and(|mounts| mounts.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH));
            if taken {
                continue;
            }
            let mount = json!({ "name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH });
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = Value::Array(vec![mount]),
            }
            mounted = true;
        }
    }
    if mounted && existing.is_none() {
        let volume = token_volume(&name);
        match spec["volumes"].as_array_mut() {
            Some(volumes) => volumes.push(volume),
            None => spec["volumes"] = Value::Array(vec![volume]),
        }
    }
}

/// Upstream's projected API access volume.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                { "serviceAccountToken": { "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token" } },
                { "configMap": { "name": ROOT_CA_CONFIG_MAP, "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ],
        },
    })
}

/// Five characters from upstream's generateName alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_pull_secrets_are_its_named_references() {
        let account = json!({ "imagePullSecrets": [{ "name": "regcred" }, { "name": "" }, {}] });
        assert_eq!(view_of(&account).pull_secrets, ["regcred"]);
        assert!(view_of(&json!({})).pull_secrets.is_empty());
        let off = json!({ "metadata": { "uid": "u" }, "automountServiceAccountToken": false });
        assert_eq!(view_of(&off).automount, Some(false));
        assert_eq!(view_of(&off).uid, "u");
    }

    #[test]
    fn every_container_mounts_one_token_volume_unless_its_path_is_taken() {
        let mut spec = json!({
            "initContainers": [{ "name": "init" }],
            "containers": [
                { "name": "app", "volumeMounts": [{ "name": "data", "mountPath": "/data" }] },
                { "name": "own", "volumeMounts": [{ "name": "mine", "mountPath": TOKEN_MOUNT_PATH }] },
            ],
            "volumes": [{ "name": "data", "emptyDir": {} }],
        });
        mount_token_volume(&mut spec);
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        assert_eq!(
            volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let token_mount = json!({ "name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH });
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"],
            json!([token_mount])
        );
        assert_eq!(spec["containers"][0]["volumeMounts"][1], token_mount);
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Again (an update through admission): nothing more is added.
        let before = spec.clone();
        mount_token_volume(&mut spec);
        assert_eq!(spec, before);

        // When every container has its own mount there, no volume is added.
        let mut own = json!({ "containers": [{ "name": "own", "volumeMounts": [{ "name": "mine", "mountPath": TOKEN_MOUNT_PATH }] }] });
        mount_token_volume(&mut own);
        assert!(own["volumes"].is_null());
    }
}
