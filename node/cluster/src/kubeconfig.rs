//! The cluster's context in the user's kubeconfig: added (or replaced) as `baton-NAME` with
//! its cluster and user entries and made current, and removed again on destroy.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Why the kubeconfig could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a kubeconfig.
    #[error("{0} is not a kubeconfig file")]
    Malformed(PathBuf),
}

/// The default kubeconfig: `$KUBECONFIG` (its first entry), else `~/.kube/config`.
pub fn default_kubeconfig() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next().map(PathBuf::from))
        })
        .filter(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".kube/config")
}

fn read(path: &Path) -> Result<Value, KubeconfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(empty()),
        Ok(text) => {
            let value: Value = serde_saphyr::from_str(&text)
                .map_err(|_| KubeconfigError::Malformed(path.to_path_buf()))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(KubeconfigError::Malformed(path.to_path_buf()))
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(empty()),
        Err(source) => Err(KubeconfigError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn empty() -> Value {
    json!({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": [], "preferences": {}})
}

fn write(path: &Path, config: &Value) -> Result<(), KubeconfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action, source| KubeconfigError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let text = serde_saphyr::to_string(config)
        .map_err(|_| KubeconfigError::Malformed(path.to_path_buf()))?;
    let tmp = path.with_extension("baton-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing", e))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("writing", e))
}

fn upsert(config: &mut Value, list: &str, entry: Value) {
    let name = entry["name"].clone();
    let items = config
        .as_object_mut()
        .expect("a kubeconfig is an object")
        .entry(list)
        .or_insert_with(|| json!([]));
    if !items.is_array() {
        *items = json!([]);
    }
    let items = items.as_array_mut().expect("an array");
    items.retain(|item| item["name"] != name);
    items.push(entry);
}

/// Merges the single-context kubeconfig `source` (as `baton pki` renders it) into `target`
/// under the name `context`, and makes it the current context.
pub fn merge_context(target: &Path, source: &str, context: &str) -> Result<(), KubeconfigError> {
    let source: Value = serde_saphyr::from_str(source)
        .map_err(|_| KubeconfigError::Malformed(PathBuf::from("<generated kubeconfig>")))?;
    let mut config = read(target)?;
    let cluster = source["clusters"][0]["cluster"].clone();
    let user = source["users"][0]["user"].clone();
    upsert(
        &mut config,
        "clusters",
        json!({"name": context, "cluster": cluster}),
    );
    upsert(&mut config, "users", json!({"name": context, "user": user}));
    upsert(
        &mut config,
        "contexts",
        json!({"name": context, "context": {"cluster": context, "user": context}}),
    );
    config["current-context"] = json!(context);
    write(target, &config)
}

/// Removes the context `context` and its cluster and user from `target`; the current context
/// is cleared when it was that one. A missing file is fine.
pub fn remove_context(target: &Path, context: &str) -> Result<(), KubeconfigError> {
    if !target.exists() {
        return Ok(());
    }
    let mut config = read(target)?;
    for list in ["clusters", "users", "contexts"] {
        if let Some(items) = config.get_mut(list).and_then(Value::as_array_mut) {
            items.retain(|item| item["name"] != json!(context));
        }
    }
    if config["current-context"] == json!(context) {
        config["current-context"] = json!("");
    }
    write(target, &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: baton\n  cluster:\n    server: https://127.0.0.1:40000\n    certificate-authority-data: Q0E=\nusers:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\ncontexts:\n- name: admin@baton\n  context:\n    cluster: baton\n    user: admin\ncurrent-context: admin@baton\n";

    #[test]
    fn a_context_is_merged_beside_others_and_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n    server: https://192.0.2.1\ncontexts:\n- name: other\n  context:\n    cluster: other\nusers: []\ncurrent-context: other\n",
        )
        .unwrap();
        merge_context(&path, GENERATED, "baton-demo").unwrap();
        merge_context(&path, GENERATED, "baton-demo").unwrap();
        let merged = read(&path).unwrap();
        assert_eq!(merged["current-context"], "baton-demo");
        assert_eq!(merged["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(
            merged["clusters"][1]["cluster"]["server"],
            "https://127.0.0.1:40000"
        );
        assert_eq!(merged["users"][0]["user"]["client-key-data"], "S0VZ");
        remove_context(&path, "baton-demo").unwrap();
        let removed = read(&path).unwrap();
        assert_eq!(removed["clusters"].as_array().unwrap().len(), 1);
        assert_eq!(removed["contexts"][0]["name"], "other");
        assert_eq!(removed["current-context"], "");
    }
}
