//! Running a command in a running container through the runtime, for exec probes and exec
//! hooks: stdin is /dev/null, stdout and stderr come back through pipes (at most 10 KiB of
//! each is kept), and a process that outlives its timeout is killed (SIGKILL). A run whose
//! future is dropped (a hook cut short by the pod's deletion or its grace period) kills its
//! process too. Nothing here blocks a thread: the output is read and the exit awaited (pidfd)
//! in the async runtime.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::time::Duration;

use baton_runtime::{ContainerRuntime, ExecConfig, RuntimeCallError, wait_for_exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// How much of each of stdout and stderr is kept (upstream keeps 10 KiB of the output).
pub const MAX_OUTPUT: usize = 10 * 1024;
/// How long output is still read after the process exited (its children may hold the pipes).
const DRAIN: Duration = Duration::from_millis(500);
/// How long a killed process may take to go away.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why a command could not be run (not: the command failed).
#[derive(Debug, thiserror::Error)]
pub enum ExecInContainerError {
    /// The pipes or /dev/null for its stdio could not be opened.
    #[error("prepare the stdio of {command:?}")]
    Stdio {
        command: Vec<String>,
        #[source]
        source: io::Error,
    },
    /// The runtime could not start it.
    #[error("start {command:?} in container {container}")]
    Start {
        command: Vec<String>,
        container: String,
        #[source]
        source: RuntimeCallError,
    },
    /// Its exit could not be awaited.
    #[error("wait for {command:?} (pid {pid})")]
    Wait {
        command: Vec<String>,
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// The runtime did not tell how it ended.
    #[error("exit status of {command:?} (pid {pid})")]
    Status {
        command: Vec<String>,
        pid: i32,
        #[source]
        source: RuntimeCallError,
    },
}

/// How a command ended and what it wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code (128 + the signal if one ended it); `None` when it timed out and was
    /// killed.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// stdout then stderr, at most 10 KiB, as text (as upstream's exec output).
    pub fn combined(&self) -> String {
        let mut all = self.stdout.clone();
        all.extend_from_slice(&self.stderr);
        all.truncate(MAX_OUTPUT);
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Kills the process when the run is dropped before the process was seen to exit.
struct KillOnDrop {
    pid: i32,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Runs `command` in container `container_id`; `timeout` (`None`: none) bounds the run.
pub async fn exec_in_container<R: ContainerRuntime>(
    runtime: &R,
    container_id: &str,
    command: &[String],
    timeout: Option<Duration>,
) -> Result<ExecOutput, ExecInContainerError> {
    let stdio = |source| ExecInContainerError::Stdio {
        command: command.to_vec(),
        source,
    };
    let (stdout_reader, stdout_writer) = io::pipe().map_err(stdio)?;
    let (stderr_reader, stderr_writer) = io::pipe().map_err(stdio)?;
    let stdin = File::open("/dev/null").map_err(stdio)?;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let config = ExecConfig {
        container_id: container_id.to_owned(),
        args: command.to_vec(),
        tty: false,
    };
    // The write ends go to the runtime with the call and are closed here when it returns, so
    // the pipes reach end of file once the process (and whatever inherited them) is gone.
    let pid = runtime
        .exec(
            config,
            [
                OwnedFd::from(stdin),
                OwnedFd::from(stdout_writer),
                OwnedFd::from(stderr_writer),
            ],
        )
        .await
        .map_err(|source| ExecInContainerError::Start {
            command: command.to_vec(),
            container: container_id.to_owned(),
            source,
        })?;
    let mut guard = KillOnDrop { pid, armed: true };
    let mut stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_reader)).map_err(stdio)?;
    let mut stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_reader)).map_err(stdio)?;
    let mut output = ExecOutput::default();
    let (mut stdout_done, mut stderr_done) = (false, false);
    let mut exit = pin!(wait_for_exit(pid));
    let mut exited = false;
    let mut drain_until = None;
    let timed_out = loop {
        if exited && stdout_done && stderr_done {
            break false;
        }
        let limit = if exited { drain_until } else { deadline };
        tokio::select! {
            waited = &mut exit, if !exited => {
                waited.map_err(|source| ExecInContainerError::Wait {
                    command: command.to_vec(),
                    pid,
                    source,
                })?;
                guard.armed = false;
                exited = true;
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            done = read_some(&mut stdout, &mut output.stdout), if !stdout_done => {
                stdout_done = done;
            }
            done = read_some(&mut stderr, &mut output.stderr), if !stderr_done => {
                stderr_done = done;
            }
            _ = sleep_until(limit), if limit.is_some() => break !exited,
        }
    };
    if timed_out {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        guard.armed = false;
        let _ = tokio::time::timeout(KILL_WAIT, exit).await;
        // Collects the runtime's record of the process; how it ended does not matter now.
        let _ = runtime.exec_status(pid).await;
        return Ok(output);
    }
    let status = runtime
        .exec_status(pid)
        .await
        .map_err(|source| ExecInContainerError::Status {
            command: command.to_vec(),
            pid,
            source,
        })?;
    output.exit_code = Some(status.map_or(-1, |s| s.exit_code));
    Ok(output)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads what is there into `kept` (up to [`MAX_OUTPUT`]; the rest is read and dropped);
/// true at end of file or on an error.
async fn read_some(from: &mut pipe::Receiver, kept: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match from.read(&mut chunk).await {
        Ok(0) | Err(_) => true,
        Ok(n) => {
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_output_is_stdout_then_stderr_cut_at_10_kib() {
        let output = ExecOutput {
            exit_code: Some(1),
            stdout: b"out\n".to_vec(),
            stderr: b"err\n".to_vec(),
        };
        assert_eq!(output.combined(), "out\nerr\n");
        let long = ExecOutput {
            exit_code: Some(0),
            stdout: vec![b'a'; MAX_OUTPUT],
            stderr: b"lost".to_vec(),
        };
        assert_eq!(long.combined().len(), MAX_OUTPUT);
        assert!(!long.combined().contains("lost"));
    }
}
