//! CNI network configuration lists as a container runtime finds them (CNI spec 1.0, "Network
//! configuration lists"): the first file of the configuration directory in lexical order,
//! either a `.conflist` or a single plugin's `.conf`/`.json` taken as a list of one, as
//! containerd's go-cni chooses it: when that file is not valid there is no network (falling
//! back to a later file would attach pods to a leftover network while the first is being
//! written).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The file extensions a runtime reads, as libcni's.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// A network configuration list: the plugins to run, in order, for one network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network's name (given to every plugin as `name`).
    pub name: String,
    /// The spec version the configuration is written for (given to every plugin).
    pub cni_version: String,
    /// CHECK is not run for this network.
    pub disable_check: bool,
    /// The plugins, in the order ADD runs them.
    pub plugins: Vec<PluginConfig>,
}

/// One plugin of a list: its `type` (the binary's name) and its whole configuration object.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The `type` field: the plugin binary to run.
    pub plugin_type: String,
    /// The plugin's configuration as written.
    pub config: Map<String, Value>,
}

/// No usable network configuration was found.
#[derive(Debug, thiserror::Error)]
pub enum LoadConfigError {
    /// The directory could not be read.
    #[error("read the CNI configuration directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no configuration file.
    #[error("no network config found in {}", dir.display())]
    NoFile {
        /// The directory.
        dir: PathBuf,
    },
    /// The first configuration file is not valid; `problem` says what is wrong.
    #[error("invalid CNI configuration {}: {problem}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong (the field, where there is one).
        problem: String,
    },
}

impl NetworkConfigList {
    /// The configuration of the first file in `dir` in lexical order.
    pub fn load(dir: &Path) -> Result<Self, LoadConfigError> {
        let read_dir = |source| LoadConfigError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let first = std::fs::read_dir(dir)
            .map_err(read_dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.is_file()
                    && path
                        .extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e))
            })
            .min()
            .ok_or_else(|| LoadConfigError::NoFile {
                dir: dir.to_owned(),
            })?;
        std::fs::read(&first)
            .map_err(|err| err.to_string())
            .and_then(|bytes| Self::parse(&first, &bytes))
            .map_err(|problem| LoadConfigError::Invalid {
                file: first,
                problem,
            })
    }

    /// Parses `bytes` read from `file`: a list when the name ends in `.conflist`, else one
    /// plugin's configuration. The error says what is wrong (the field, where there is one).
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| format!("not valid JSON: {err}"))?;
        if file.extension().and_then(|e| e.to_str()) == Some("conflist") {
            Self::from_list(value)
        } else {
            let Value::Object(plugin) = value else {
                return Err("the configuration is not a JSON object".into());
            };
            let name = required_string(&plugin, "name")?;
            let cni_version = required_string(&plugin, "cniVersion")?;
            Self::from_list(serde_json::json!({
                "cniVersion": cni_version,
                "name": name,
                "plugins": [plugin],
            }))
        }
    }

    /// A list from its JSON form (a `.conflist`, or what [`NetworkConfigList::to_value`] wrote).
    pub fn from_list(value: Value) -> Result<Self, String> {
        let Value::Object(list) = value else {
            return Err("the configuration list is not a JSON object".into());
        };
        let name = required_string(&list, "name")?;
        let cni_version = required_string(&list, "cniVersion")?;
        let disable_check = match list.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(value)) => *value,
            Some(Value::String(text)) if text == "true" || text == "false" => text == "true",
            Some(other) => return Err(format!("disableCheck: not a boolean: {other}")),
        };
        let Some(Value::Array(entries)) = list.get("plugins") else {
            return Err("plugins: missing, or not a list".into());
        };
        if entries.is_empty() {
            return Err("plugins: no plugins in list".into());
        }
        let plugins = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let Value::Object(config) = entry else {
                    return Err(format!("plugins[{index}]: not a JSON object"));
                };
                let plugin_type = required_string(config, "type")
                    .map_err(|err| format!("plugins[{index}].{err}"))?;
                Ok(PluginConfig {
                    plugin_type,
                    config: config.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            name,
            cni_version,
            disable_check,
            plugins,
        })
    }

    /// The list in its `.conflist` form.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins.iter().map(|p| Value::Object(p.config.clone())).collect::<Vec<_>>(),
        })
    }

    /// Whether CHECK applies: the spec defines it from version 0.4.0, and the list may turn
    /// it off.
    pub fn runs_check(&self) -> bool {
        !self.disable_check && version_at_least(&self.cni_version, (0, 4, 0))
    }

    /// Whether DEL is given ADD's result as `prevResult` (from version 0.4.0, as libcni;
    /// plugins of older versions may refuse the field).
    pub fn passes_prev_result_to_del(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0))
    }
}

impl PluginConfig {
    /// What the plugin is given on its standard input: its configuration with the network's
    /// `name` and `cniVersion`, the previous result, and under `runtimeConfig` those of
    /// `capability_args` that the plugin declares in its `capabilities`.
    pub fn stdin(
        &self,
        list: &NetworkConfigList,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Vec<u8> {
        let mut config = self.config.clone();
        config.insert("name".into(), Value::String(list.name.clone()));
        config.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(prev) = prev_result {
            config.insert("prevResult".into(), prev.clone());
        }
        let runtime_config: Map<String, Value> = self
            .config
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, enabled)| enabled.as_bool() == Some(true))
            .filter_map(|(capability, _)| {
                Some((capability.clone(), capability_args.get(capability)?.clone()))
            })
            .collect();
        if !runtime_config.is_empty() {
            config.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        serde_json::to_vec(&config).expect("a JSON map serializes")
    }
}

fn required_string(object: &Map<String, Value>, field: &str) -> Result<String, String> {
    match object.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::String(_)) | None => Err(format!("{field}: missing")),
        Some(other) => Err(format!("{field}: not a string: {other}")),
    }
}

/// Whether the version `text` ("major.minor.patch") is `minimum` or later; a version that
/// does not parse counts as old.
fn version_at_least(text: &str, minimum: (u32, u32, u32)) -> bool {
    let mut parts = text.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next().unwrap_or(Ok(0))) {
        (Some(Ok(major)), Some(Ok(minor)), Ok(patch)) => (major, minor, patch) >= minimum,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_first_file_in_lexical_order_is_the_network() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-pods.conflist",
            r#"{ "cniVersion": "1.0.0", "name": "pods", "plugins": [
                { "type": "bridge", "bridge": "cni0" },
                { "type": "portmap", "capabilities": { "portMappings": true } } ] }"#,
        );
        write(
            dir.path(),
            "20-other.conf",
            r#"{ "cniVersion": "1.0.0", "name": "other", "type": "ptp" }"#,
        );
        write(dir.path(), "00-notes.txt", "ignored");
        let list = NetworkConfigList::load(dir.path()).unwrap();
        assert_eq!(list.name, "pods");
        let types: Vec<_> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert!(list.runs_check());
        // A first file that is not valid is no network (no falling back to a later one).
        write(dir.path(), "05-half-written.conflist", "{ \"cniVersion\": ");
        let err = NetworkConfigList::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid CNI configuration ")
                && err.contains("05-half-written.conflist: not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_single_plugin_file_is_a_list_of_one() {
        let list = NetworkConfigList::parse(
            Path::new("10-one.conf"),
            br#"{ "cniVersion": "0.3.1", "name": "one", "type": "bridge", "isGateway": true }"#,
        )
        .unwrap();
        assert_eq!((list.name.as_str(), list.plugins.len()), ("one", 1));
        assert_eq!(list.plugins[0].config["isGateway"], true);
        assert!(!list.runs_check(), "CHECK starts with spec 0.4.0");
        let again = NetworkConfigList::from_list(list.to_value()).unwrap();
        assert_eq!(again, list);
    }

    #[test]
    fn invalid_files_are_named_with_what_is_wrong() {
        let problem = |name: &str, text: &str| {
            NetworkConfigList::parse(Path::new(name), text.as_bytes()).unwrap_err()
        };
        assert_eq!(
            problem(
                "a.conflist",
                r#"{ "cniVersion": "1.0.0", "name": "x", "plugins": [] }"#
            ),
            "plugins: no plugins in list"
        );
        assert_eq!(
            problem(
                "b.conflist",
                r#"{ "cniVersion": "1.0.0", "name": "x", "plugins": [ { "bridge": "cni0" } ] }"#
            ),
            "plugins[0].type: missing"
        );
        assert_eq!(
            problem("c.conf", r#"{ "cniVersion": "1.0.0", "type": "bridge" }"#),
            "name: missing"
        );
        assert_eq!(
            problem(
                "d.conflist",
                r#"{ "cniVersion": "1.0.0", "name": "x", "plugins": [], "disableCheck": 3 }"#
            ),
            "disableCheck: not a boolean: 3"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            NetworkConfigList::load(empty.path())
                .unwrap_err()
                .to_string(),
            format!("no network config found in {}", empty.path().display())
        );
    }

    #[test]
    fn a_plugin_gets_the_network_its_previous_result_and_its_capabilities() {
        let list = NetworkConfigList::from_list(serde_json::json!({
            "cniVersion": "1.0.0", "name": "pods", "plugins": [
                { "type": "bridge" },
                { "type": "portmap", "capabilities": { "portMappings": true, "bandwidth": false } },
            ],
        }))
        .unwrap();
        let mut args = Map::new();
        args.insert(
            "portMappings".into(),
            serde_json::json!([{ "hostPort": 80 }]),
        );
        args.insert("bandwidth".into(), serde_json::json!({ "ingressRate": 1 }));
        let prev = serde_json::json!({ "cniVersion": "1.0.0", "ips": [] });
        let stdin: Value =
            serde_json::from_slice(&list.plugins[1].stdin(&list, Some(&prev), &args)).unwrap();
        assert_eq!(stdin["name"], "pods");
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(stdin["prevResult"], prev);
        assert_eq!(
            stdin["runtimeConfig"],
            serde_json::json!({ "portMappings": [{ "hostPort": 80 }] })
        );
        let stdin: Value =
            serde_json::from_slice(&list.plugins[0].stdin(&list, None, &args)).unwrap();
        assert!(stdin.get("runtimeConfig").is_none() && stdin.get("prevResult").is_none());
    }
}
