//! Running one CNI plugin binary as the spec's "execution protocol" says: the operation and
//! the container in `CNI_*` environment variables, the configuration on standard input, a
//! result (or an error object) on standard output.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long a plugin may take before it is killed (a DHCP plugin waits for a lease).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The operations of the spec this runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Attach the container.
    Add,
    /// Check that the attachment is as ADD left it.
    Check,
    /// Detach the container.
    Del,
}

impl Operation {
    /// The `CNI_COMMAND` value.
    fn command(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Check => "CHECK",
            Self::Del => "DEL",
        }
    }

    /// The word libcni's errors use for the operation.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Check => "check",
            Self::Del => "delete",
        }
    }
}

/// What one call tells the plugin besides its configuration.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// `CNI_COMMAND`.
    pub operation: Operation,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// The container's network namespace file; none on a DEL whose namespace is gone.
    pub netns: Option<&'a Path>,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`: `KEY=VALUE` pairs joined with `;`.
    pub args: &'a str,
    /// Where plugins are looked for (`CNI_PATH`).
    pub bin_dirs: &'a [PathBuf],
}

/// A plugin could not be run, or said it failed (libcni's words where it has them).
#[derive(Debug, thiserror::Error)]
pub enum RunPluginError {
    /// No binary of that name in any plugin directory.
    #[error("failed to find plugin {plugin_type:?} in path {}", go_list(dirs))]
    NotFound {
        /// The plugin's `type`.
        plugin_type: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// The binary could not be started or waited for.
    #[error("run {}", path.display())]
    Run {
        /// The binary.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("{} did not finish within {}s and was killed", path.display(), PLUGIN_TIMEOUT.as_secs())]
    TimedOut {
        /// The binary.
        path: PathBuf,
    },
    /// The plugin failed and said why in the spec's error object.
    #[error("{msg}{}", details_text(details))]
    Failed {
        /// The spec's error code.
        code: u64,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
    /// The plugin failed, wrote nothing on its standard output, and `stderr` on its error
    /// output (`exit` is how it ended, as Go prints it).
    #[error("{}", exited_text(stderr, exit))]
    Exited {
        /// Its error output, quoted and cut to 1 KiB.
        stderr: String,
        /// `exit status N` or `signal: N`.
        exit: String,
    },
    /// The plugin failed and wrote something that is not an error object.
    #[error("netplugin failed but error parsing its diagnostic message {output}: {reason}")]
    BadError {
        /// Its standard output, quoted and cut to 1 KiB.
        output: String,
        /// Why it is not an error object.
        reason: String,
    },
    /// The plugin succeeded but its output is not a result object.
    #[error("decode the plugin's result {output}: not a JSON object")]
    BadResult {
        /// Its standard output, quoted and cut to 1 KiB.
        output: String,
    },
}

fn details_text(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!("; {details}")
    }
}

fn exited_text(stderr: &str, exit: &str) -> String {
    if stderr == "\"\"" {
        format!("netplugin failed with no error message: {exit}")
    } else {
        format!("netplugin failed: {stderr}: {exit}")
    }
}

/// `bytes` as a quoted string for a message, cut to its first KiB.
pub fn quoted(bytes: &[u8]) -> String {
    const LIMIT: usize = 1024;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(LIMIT)]);
    let text = text.trim();
    if bytes.len() > LIMIT {
        format!("{text:?}...")
    } else {
        format!("{text:?}")
    }
}

/// How a process ended, as Go's os/exec prints it.
fn go_exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal: {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Directories as Go prints a slice of strings (`[/opt/cni/bin /usr/lib/cni]`), as in
/// libcni's message.
fn go_list(dirs: &[PathBuf]) -> String {
    let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", joined.join(" "))
}

/// The plugin binary `plugin_type` in the first of `dirs` that has it.
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf, RunPluginError> {
    let not_found = || RunPluginError::NotFound {
        plugin_type: plugin_type.to_owned(),
        dirs: dirs.to_vec(),
    };
    // A type is a file name, never a path.
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type == ".." {
        return Err(not_found());
    }
    dirs.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|path| path.is_file())
        .ok_or_else(not_found)
}

/// Runs the plugin at `path` with `stdin`; its standard output when it succeeds (empty for
/// DEL and CHECK).
pub async fn invoke(
    path: &Path,
    invocation: &Invocation<'_>,
    stdin: &[u8],
) -> Result<Vec<u8>, RunPluginError> {
    let run_error = |source| RunPluginError::Run {
        path: path.to_owned(),
        source,
    };
    let cni_path = std::env::join_paths(invocation.bin_dirs).unwrap_or_default();
    let mut command = tokio::process::Command::new(path);
    command
        .env("CNI_COMMAND", invocation.operation.command())
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_IFNAME", invocation.ifname)
        .env("CNI_ARGS", invocation.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match invocation.netns {
        Some(netns) => command.env("CNI_NETNS", netns),
        None => command.env_remove("CNI_NETNS"),
    };
    let mut child = command.spawn().map_err(run_error)?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let run = async {
        // A plugin that exits without reading its input is not an error of the runtime's.
        let _ = input.write_all(stdin).await;
        drop(input);
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, run)
        .await
        .map_err(|_| RunPluginError::TimedOut {
            path: path.to_owned(),
        })?
        .map_err(run_error)?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    #[derive(serde::Deserialize)]
    struct ErrorObject {
        #[serde(default)]
        code: u64,
        msg: String,
        #[serde(default)]
        details: String,
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(RunPluginError::Exited {
            stderr: quoted(&output.stderr),
            exit: go_exit_text(output.status),
        });
    }
    match serde_json::from_slice::<ErrorObject>(&output.stdout) {
        Ok(error) => Err(RunPluginError::Failed {
            code: error.code,
            msg: error.msg,
            details: error.details,
        }),
        Err(err) => Err(RunPluginError::BadError {
            output: quoted(&output.stdout),
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A plugin written as a shell script into `dir`.
    fn plugin(dir: &Path, name: &str, script: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn invocation<'a>(dirs: &'a [PathBuf], netns: Option<&'a Path>) -> Invocation<'a> {
        Invocation {
            operation: Operation::Add,
            container_id: "c1",
            netns,
            ifname: "eth0",
            args: "IgnoreUnknown=1;K8S_POD_NAME=web",
            bin_dirs: dirs,
        }
    }

    #[tokio::test]
    async fn the_plugin_gets_the_environment_and_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_owned()];
        let path = plugin(
            dir.path(),
            "echo",
            r#"printf '{"env":"%s %s %s %s %s %s","stdin":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "$(cat)""#,
        );
        assert_eq!(find_plugin("echo", &dirs).unwrap(), path);
        let out = invoke(
            &path,
            &invocation(&dirs, Some(Path::new("/run/netns/x"))),
            br#"{"a":1}"#,
        )
        .await
        .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["env"],
            format!(
                "ADD c1 /run/netns/x eth0 IgnoreUnknown=1;K8S_POD_NAME=web {}",
                dir.path().display()
            )
        );
        assert_eq!(out["stdin"], serde_json::json!({ "a": 1 }));
    }

    #[tokio::test]
    async fn failures_say_what_the_plugin_said() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_owned(), PathBuf::from("/nonexistent")];
        let err = find_plugin("bridge", &dirs).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "failed to find plugin \"bridge\" in path [{} /nonexistent]",
                dir.path().display()
            )
        );
        assert!(find_plugin("../bin/sh", &dirs).is_err());
        let failing = plugin(
            dir.path(),
            "failing",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses left","details":"range 10.0.0.0/30"}'; exit 1"#,
        );
        let err = invoke(&failing, &invocation(&dirs, None), b"{}")
            .await
            .unwrap_err();
        assert!(matches!(err, RunPluginError::Failed { code: 11, .. }));
        assert_eq!(err.to_string(), "no addresses left; range 10.0.0.0/30");
        let crashing = plugin(dir.path(), "crashing", "echo 'panic: oops' >&2; exit 2");
        let err = invoke(&crashing, &invocation(&dirs, None), b"{}")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "netplugin failed: \"panic: oops\": exit status 2"
        );
        let silent = plugin(dir.path(), "silent", "kill -9 $$");
        let err = invoke(&silent, &invocation(&dirs, None), b"{}")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "netplugin failed with no error message: signal: 9"
        );
        let garbled = plugin(dir.path(), "garbled", "echo 'not json'; exit 1");
        let err = invoke(&garbled, &invocation(&dirs, None), b"{}")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "netplugin failed but error parsing its diagnostic message \"not json\": "
            ),
            "{err}"
        );
    }
}
