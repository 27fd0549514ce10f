//! Container operations through libcontainer, one function per operation, plus what the
//! runtime keeps beside libcontainer's own state: a `meta/<id>.json` per container (log
//! settings, start time, exit) and the container's stdout/stderr FIFOs under `io/<id>/`.
//!
//! Stdout and stderr are FIFOs, not pipes, and the container holds its end open read-write:
//! a container never gets SIGPIPE because nobody reads, and a restarted runtime process opens
//! the FIFOs again and goes on copying. A container that asks for stdin gets a third FIFO,
//! `io/<id>/stdin`, which it reads; the runtime holds a writer of it (so the container waits
//! for input rather than reading end-of-file while nobody is attached) until `CloseStdin`
//! (`stdinOnce`), and `kubectl attach -i` writes to it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus as LibStatus};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::terminal::{ConsoleSocket, MASTER_TIMEOUT, Terminal};
use super::{check_id, error_chain};
use crate::types::{ContainerConfig, ContainerState, ContainerStatus, ExecConfig, ExitStatus};

/// What the runtime records of a container beside libcontainer's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub log_path: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub started_at: Option<String>,
    pub exit: Option<ExitStatus>,
    /// The runtime let go of the container's stdin (`CloseStdin`): a new runtime process must
    /// not hold it open again.
    #[serde(default)]
    pub stdin_closed: bool,
}

/// What the runtime reads a container's output from: its stdout and stderr FIFOs, or the
/// master of its terminal (then stdout only), and the terminal itself.
#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: OwnedFd,
    pub stderr: Option<OwnedFd>,
    pub terminal: Option<Terminal>,
    /// The runtime's writer of the container's stdin FIFO: while it is open the container
    /// never reads end-of-file.
    pub stdin_writer: Option<OwnedFd>,
}

/// libcontainer's root under the runtime's: one state directory per container.
pub(crate) const STATE_DIR: &str = "containers";

/// The runtime's container directories.
#[derive(Debug)]
pub(crate) struct Containers {
    /// The runtime's root directory.
    root: PathBuf,
    /// libcontainer's root: one state directory per container.
    pub state: PathBuf,
    meta: PathBuf,
    io: PathBuf,
    /// The host's root is the kernel's initial rootfs (a node booted from its initramfs),
    /// which pivot_root(2) cannot leave: containers move their root over `/` and chroot
    /// instead (runc's and youki's `--no-pivot`).
    no_pivot: bool,
}

impl Containers {
    pub(crate) fn new(root: &Path) -> std::io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let no_pivot = root_is_initial_rootfs(&mountinfo);
        if no_pivot {
            tracing::info!(
                "the root file system is the initramfs: containers start without pivot_root"
            );
        }
        let this = Self {
            root: root.to_owned(),
            state: root.join(STATE_DIR),
            meta: root.join("meta"),
            io: root.join("io"),
            no_pivot,
        };
        for dir in [&this.state, &this.meta, &this.io] {
            fs::create_dir_all(dir)?;
        }
        Ok(this)
    }

    /// Creates the container: its process exists, in its namespaces and cgroup, and waits to
    /// be started. Returns its pid and the readers of its output.
    pub(crate) fn create(&self, config: &ContainerConfig) -> Result<(i32, Output), String> {
        let id = &config.id;
        check_id(id)?;
        let context = || {
            format!(
                "create container {id} from bundle {}",
                config.bundle.display()
            )
        };
        check_bundle(&config.bundle).map_err(|err| format!("{}: {err}", context()))?;
        if self.state.join(id).exists() {
            return Err(format!("{}: container {id} exists", context()));
        }
        let (output, stdout, stderr) = self
            .open_fifos(id)
            .map_err(|err| format!("{}: {err}", context()))?;
        self.write_meta(
            id,
            &Meta {
                log_path: config.log_path.clone(),
                log_max_size: config.log_max_size,
                log_max_files: config.log_max_files,
                ..Meta::default()
            },
        )
        .map_err(|err| format!("{}: {err}", context()))?;
        let fail = |err: &dyn std::fmt::Display| {
            self.forget(id);
            format!("{}: {err}", context())
        };
        let null = || File::open("/dev/null").map(OwnedFd::from);
        // With a terminal the container's stdio is the terminal's slave (libcontainer puts it
        // there); the stdin FIFO is then the runtime's to read (without blocking: it polls).
        let (stdin_reader, stdin_writer) = if config.stdin {
            let (reader, writer) = self
                .open_stdin(id, config.tty)
                .map_err(|err| fail(&format!("stdin: {err}")))?;
            (Some(reader), Some(writer))
        } else {
            (None, None)
        };
        let (stdin_reader, stdin, stdout, stderr) = match (config.tty, stdin_reader) {
            (false, Some(reader)) => (None, reader, stdout, stderr),
            (false, None) => (None, null().map_err(|err| fail(&err))?, stdout, stderr),
            (true, reader) => (
                reader,
                null().map_err(|err| fail(&err))?,
                null().map_err(|err| fail(&err))?,
                null().map_err(|err| fail(&err))?,
            ),
        };
        let console = if config.tty {
            Some(
                ConsoleSocket::bind(&self.root)
                    .map_err(|err| fail(&format!("console socket: {err}")))?,
            )
        } else {
            None
        };
        let built = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(&self.state)
            .and_then(|builder| builder.validate_id())
            .map(|builder| {
                builder
                    .with_console_socket(console.as_ref().map(|c| c.path().to_path_buf()))
                    .with_stdin(stdin)
                    .with_stdout(stdout)
                    .with_stderr(stderr)
                    .as_init(&config.bundle)
                    .with_systemd(false)
                    .with_no_pivot(self.no_pivot)
                    .with_detach(true)
            })
            .and_then(|builder| builder.build());
        let pid = match built {
            Ok(container) => container.pid().map(|pid| pid.as_raw()),
            Err(err) => {
                self.forget(id);
                return Err(format!("{}: {}", context(), error_chain(&err)));
            }
        };
        let Some(pid) = pid else {
            if let Err(err) = self.remove(id) {
                tracing::warn!(container = %id, %err, "removing a container created without a pid");
            }
            return Err(format!("{}: libcontainer returned no pid", context()));
        };
        let mut output = output;
        output.stdin_writer = stdin_writer;
        if let Some(console) = console {
            let terminal = console
                .receive_master(MASTER_TIMEOUT)
                .and_then(|master| Ok((master.try_clone()?, master)));
            match terminal {
                Ok((reader, master)) => {
                    output = Output {
                        stdout: reader,
                        stderr: None,
                        terminal: Some(Terminal {
                            master,
                            input: stdin_reader,
                            dropped_reported: false,
                        }),
                        stdin_writer: output.stdin_writer,
                    };
                }
                Err(err) => {
                    // The init is this process's child: killed by the removal, then reaped.
                    if let Err(err) = self.remove(id) {
                        tracing::warn!(container = %id, %err, "removing a container without its terminal");
                    }
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                    return Err(format!("{}: terminal: {err}", context()));
                }
            }
        }
        Ok((pid, output))
    }

    /// Lets the created container's process run its command.
    pub(crate) fn start(&self, id: &str) -> Result<(), String> {
        let mut container = self
            .load(id)
            .map_err(|err| format!("start container {id}: {err}"))?;
        container
            .start()
            .map_err(|err| format!("start container {id}: {}", error_chain(&err)))?;
        let mut meta = self.read_meta(id);
        meta.started_at = Some(jiff::Timestamp::now().to_string());
        self.write_meta(id, &meta)
            .map_err(|err| format!("start container {id}: {err}"))
    }

    /// Sends `signal` to the container's init process; a container that has exited already is
    /// left alone.
    pub(crate) fn signal(&self, id: &str, signal: i32) -> Result<(), String> {
        let context = || format!("signal {signal} to container {id}");
        let signal = Signal::try_from(signal).map_err(|err| format!("{}: {err}", context()))?;
        let mut container = self
            .load(id)
            .map_err(|err| format!("{}: {err}", context()))?;
        if container.status() == LibStatus::Stopped {
            return Ok(());
        }
        match container.kill(signal, false) {
            Ok(()) => Ok(()),
            Err(_)
                if container.refresh_status().is_ok()
                    && container.status() == LibStatus::Stopped =>
            {
                Ok(())
            }
            Err(err) => Err(format!("{}: {}", context(), error_chain(&err))),
        }
    }

    /// Kills what is left of the container and removes it with its cgroup, state and FIFOs.
    /// Removing a container that does not exist succeeds.
    pub(crate) fn remove(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        if self.state.join(id).exists() {
            let mut container = self
                .load(id)
                .map_err(|err| format!("remove container {id}: {err}"))?;
            container
                .delete(true)
                .map_err(|err| format!("remove container {id}: {}", error_chain(&err)))?;
        }
        self.forget(id);
        Ok(())
    }

    /// The container's status, or an error when there is no such container.
    pub(crate) fn status(&self, id: &str) -> Result<ContainerStatus, String> {
        check_id(id)?;
        let container = self
            .load(id)
            .map_err(|err| format!("status of container {id}: {err}"))?;
        let meta = self.read_meta(id);
        let state = match container.status() {
            LibStatus::Creating | LibStatus::Created => ContainerState::Created,
            LibStatus::Running | LibStatus::Paused => ContainerState::Running,
            LibStatus::Stopped => ContainerState::Exited,
        };
        let exit = match state {
            ContainerState::Exited => Some(meta.exit.clone().unwrap_or_else(unknown_exit)),
            _ => None,
        };
        Ok(ContainerStatus {
            id: id.to_owned(),
            state,
            pid: (state != ContainerState::Exited)
                .then(|| container.pid().map(|pid| pid.as_raw()))
                .flatten(),
            created_at: container.created().map(|time| time.to_rfc3339()),
            started_at: meta.started_at.clone(),
            exit,
            bundle: container.bundle().clone(),
        })
    }

    /// The ids of every container on disk.
    pub(crate) fn ids(&self) -> Vec<String> {
        fs::read_dir(&self.state)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `config.args` inside the running container with the given stdio; returns its pid.
    pub(crate) fn exec(&self, config: &ExecConfig, stdio: Vec<OwnedFd>) -> Result<i32, String> {
        let id = &config.container_id;
        check_id(id)?;
        let context = || format!("exec {:?} in container {id}", config.args);
        let [stdin, stdout, stderr]: [OwnedFd; 3] = stdio
            .try_into()
            .map_err(|_| format!("{}: expected stdin, stdout and stderr", context()))?;
        if config.args.is_empty() {
            return Err(format!("{}: no command given", context()));
        }
        let pid = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(&self.state)
            .map(|builder| {
                builder
                    .with_stdin(stdin)
                    .with_stdout(stdout)
                    .with_stderr(stderr)
                    .as_tenant()
                    .with_container_args(config.args.clone())
                    .with_detach(true)
            })
            .and_then(|builder| builder.build())
            .map_err(|err| format!("{}: {}", context(), error_chain(&err)))?;
        Ok(pid.as_raw())
    }

    /// Records how the container's process ended.
    pub(crate) fn record_exit(&self, id: &str, exit: ExitStatus) {
        let mut meta = self.read_meta(id);
        meta.exit = Some(exit);
        if let Err(err) = self.write_meta(id, &meta) {
            tracing::warn!(container = %id, %err, "recording a container's exit");
        }
    }

    /// The cgroup path the container's config asked for.
    pub(crate) fn cgroup_path(&self, id: &str) -> Option<PathBuf> {
        let container = self.load(id).ok()?;
        container.spec().ok().map(|config| config.cgroup_path)
    }

    /// Opens the readers of an existing container's FIFOs again (a restarted runtime process).
    pub(crate) fn reopen_output(&self, id: &str) -> std::io::Result<Output> {
        let dir = self.io.join(id);
        // The stdin FIFO is held open again unless the last runtime let go of it; a container
        // that no longer reads it (ENXIO) has none.
        let stdin_writer = if self.read_meta(id).stdin_closed {
            None
        } else {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(crate::stdin_path(&self.root, id))
                .ok()
                .map(OwnedFd::from)
        };
        Ok(Output {
            stdout: open_reader(&dir.join("stdout"))?,
            stderr: Some(open_reader(&dir.join("stderr"))?),
            terminal: None,
            stdin_writer,
        })
    }

    pub(crate) fn read_meta(&self, id: &str) -> Meta {
        fs::read(self.meta.join(format!("{id}.json")))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_meta(&self, id: &str, meta: &Meta) -> std::io::Result<()> {
        let path = self.meta.join(format!("{id}.json"));
        let temporary = self.meta.join(format!(".{id}.json.tmp"));
        fs::write(
            &temporary,
            serde_json::to_vec(meta).map_err(std::io::Error::other)?,
        )?;
        fs::rename(&temporary, &path)
    }

    fn load(&self, id: &str) -> Result<Container, String> {
        let dir = self.state.join(id);
        if !dir.exists() {
            return Err(format!("no container {id}"));
        }
        let mut container = Container::load(dir).map_err(|err| error_chain(&err))?;
        container
            .refresh_status()
            .map_err(|err| error_chain(&err))?;
        Ok(container)
    }

    /// Makes the container's FIFOs; returns the runtime's readers and the container's ends.
    fn open_fifos(&self, id: &str) -> std::io::Result<(Output, OwnedFd, OwnedFd)> {
        let dir = self.io.join(id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut ends = Vec::new();
        for name in ["stdout", "stderr"] {
            let path = dir.join(name);
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))?;
            let reader = open_reader(&path)?;
            let writer: OwnedFd = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?
                .into();
            ends.push((reader, writer));
        }
        let (stderr_reader, stderr) = ends.pop().expect("two fifos");
        let (stdout_reader, stdout) = ends.pop().expect("two fifos");
        Ok((
            Output {
                stdout: stdout_reader,
                stderr: Some(stderr_reader),
                terminal: None,
                stdin_writer: None,
            },
            stdout,
            stderr,
        ))
    }

    /// Makes the container's stdin FIFO (after [`open_fifos`](Self::open_fifos), which makes
    /// the directory): its reading end (non-blocking only for `runtime_reads`, a terminal's
    /// input the runtime polls) and the runtime's writer, which keeps the reader from seeing
    /// end-of-file while nobody is attached.
    fn open_stdin(&self, id: &str, runtime_reads: bool) -> std::io::Result<(OwnedFd, OwnedFd)> {
        let path = crate::stdin_path(&self.root, id);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))?;
        // Opening the reader first without blocking lets the writer open at once.
        let reader: OwnedFd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?
            .into();
        let writer: OwnedFd = OpenOptions::new().write(true).open(&path)?.into();
        if !runtime_reads {
            rustix::io::ioctl_fionbio(&reader, false)?;
        }
        Ok((reader, writer))
    }

    /// Records that the runtime let go of the container's stdin.
    pub(crate) fn record_stdin_closed(&self, id: &str) {
        let mut meta = self.read_meta(id);
        meta.stdin_closed = true;
        if let Err(err) = self.write_meta(id, &meta) {
            tracing::warn!(container = %id, %err, "recording a closed stdin");
        }
    }

    /// Forgets the runtime's own records of the container.
    fn forget(&self, id: &str) {
        let _ = fs::remove_file(self.meta.join(format!("{id}.json")));
        let _ = fs::remove_dir_all(self.io.join(id));
    }
}

fn open_reader(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?
        .into())
}

/// libcontainer's errors for a missing bundle or root filesystem do not name the path; check
/// both first so that the error does.
fn check_bundle(bundle: &Path) -> Result<(), String> {
    let config = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config)
        .map_err(|err| format!("{}: {err}", config.display()))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| format!("{}: no root filesystem named", config.display()))?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(format!(
            "root filesystem {} does not exist",
            rootfs.display()
        ));
    }
    Ok(())
}

/// Whether `/` in `mountinfo` (/proc/self/mountinfo) is the kernel's initial rootfs.
pub(crate) fn root_is_initial_rootfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(mount), Some(fs)) = (halves.next(), halves.next()) else {
            return false;
        };
        mount.split_whitespace().nth(4) == Some("/")
            && fs.split_whitespace().next() == Some("rootfs")
    })
}

/// What is reported for a container whose exit the runtime did not see.
pub(crate) fn unknown_exit() -> ExitStatus {
    ExitStatus {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        finished_at: jiff::Timestamp::now().to_string(),
        unknown: true,
    }
}

/// How many times the kernel's OOM killer struck in the cgroup at `path` (cgroup v1 memory
/// controller or v2, whichever holds it).
pub(crate) fn oom_kills(path: &Path) -> u64 {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let candidates = [
        (Path::new("/sys/fs/cgroup/memory")
            .join(relative)
            .join("memory.oom_control")),
        (Path::new("/sys/fs/cgroup")
            .join(relative)
            .join("memory.events")),
        (Path::new("/sys/fs/cgroup/unified")
            .join(relative)
            .join("memory.events")),
    ];
    candidates
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("oom_kill "))
                .and_then(|count| count.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::root_is_initial_rootfs;

    #[test]
    fn the_initramfs_root_is_recognised() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=1002540k\n\
                         22 1 0:20 / /proc rw,nosuid - proc proc rw\n";
        assert!(root_is_initial_rootfs(initramfs));
        let disk = "25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    30 25 0:2 / /initrd rw - rootfs rootfs rw\n";
        assert!(!root_is_initial_rootfs(disk));
    }
}
