//! Registry credentials from a pod's `imagePullSecrets`: Secrets of type
//! `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`, `{"auths": {REGISTRY: ...}}`) and
//! `kubernetes.io/dockercfg` (`.dockercfg`, `{REGISTRY: ...}`), each entry with `username`
//! and `password` or `auth` (base64 of `user:password`). An entry applies to an image whose
//! registry is its key without scheme and path (`https://index.docker.io/v1/` is
//! `docker.io`).

use base64::Engine;
use baton_images::RegistryCredentials;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// The credentials in `secrets` for images of `registry` (`host[:port]`), in order.
pub fn registry_credentials(registry: &str, secrets: &[Secret]) -> Vec<RegistryCredentials> {
    let mut found = Vec::new();
    for secret in secrets {
        let data = secret.data.as_ref();
        let entries = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => data
                .and_then(|d| d.get(".dockerconfigjson"))
                .and_then(|v| serde_json::from_slice::<Value>(&v.0).ok())
                .and_then(|config| config.get("auths").cloned()),
            Some("kubernetes.io/dockercfg") => data
                .and_then(|d| d.get(".dockercfg"))
                .and_then(|v| serde_json::from_slice::<Value>(&v.0).ok()),
            _ => None,
        };
        let Some(Value::Object(entries)) = entries else {
            continue;
        };
        for (key, entry) in entries {
            if registry_of(&key) == registry
                && let Some(credentials) = credentials_of(&entry)
            {
                found.push(credentials);
            }
        }
    }
    found
}

/// A config key's registry: without scheme or path, Docker Hub's index as `docker.io`.
fn registry_of(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        host => host.to_owned(),
    }
}

fn credentials_of(entry: &Value) -> Option<RegistryCredentials> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Some(RegistryCredentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(field("auth")?)
        .ok()?;
    let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(RegistryCredentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(kind: &str, key: &str, value: serde_json::Value) -> Secret {
        Secret {
            type_: Some(kind.into()),
            data: Some(
                [(key.to_owned(), ByteString(value.to_string().into_bytes()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn basic(username: &str, password: &str) -> RegistryCredentials {
        RegistryCredentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn entries_match_their_registry_in_both_formats() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
        let secrets = [
            secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                serde_json::json!({ "auths": {
                    "10.0.0.1:5000": { "username": "alice", "password": "s3cret" },
                    "https://index.docker.io/v1/": { "auth": auth },
                } }),
            ),
            secret(
                "kubernetes.io/dockercfg",
                ".dockercfg",
                serde_json::json!({ "http://10.0.0.1:5000/v2/": { "auth": auth } }),
            ),
            secret("Opaque", "x", serde_json::json!({})),
        ];
        assert_eq!(
            registry_credentials("10.0.0.1:5000", &secrets),
            [basic("alice", "s3cret"), basic("bob", "hunter2")]
        );
        assert_eq!(
            registry_credentials("docker.io", &secrets),
            [basic("bob", "hunter2")]
        );
        assert!(registry_credentials("quay.io", &secrets).is_empty());
    }
}
