//! The runtime process through its client, as the kubelet uses it: real libcontainer
//! containers (namespaces, cgroups, seccomp-capable build) from a busybox root filesystem, as
//! root. Each test has its own runtime root and shuts its runtime process down at the end,
//! killing every container and removing every sandbox and cgroup it made.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_runtime::{
    ContainerConfig, ContainerRuntime, ContainerState, ExecConfig, RuntimeClient, SandboxConfig,
    wait_for_exit,
};
use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, ProcessBuilder, Spec,
};

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "hostname", "dd", "head", "ls", "true", "readlink", "tty", "stty",
];

/// A runtime process under a fresh root, shut down (with everything it made) on drop.
struct Runtime {
    client: RuntimeClient,
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Runtime {
    fn new() -> Self {
        Self::with_processes(1)
    }

    /// Pods spread over `processes` runtime processes, as a kubelet on that many CPUs runs.
    fn with_processes(processes: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("baton-rt")
            .tempdir()
            .unwrap();
        let client = RuntimeClient::with_processes(
            dir.path().join("root"),
            env!("CARGO_BIN_EXE_baton"),
            processes,
        );
        let cgroup_parent = format!("/baton-test-{}", std::process::id());
        Self {
            client,
            dir,
            cgroup_parent,
        }
    }

    /// A busybox root filesystem and a bundle whose process runs `args` with `customize`
    /// applied to its spec.
    fn bundle(&self, id: &str, args: &[&str], customize: impl FnOnce(&mut Spec)) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        for dir in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let mut spec = Spec::default();
        let process = ProcessBuilder::default()
            .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .env(vec!["PATH=/bin".to_string()])
            .cwd("/")
            .build()
            .unwrap();
        spec.set_process(Some(process));
        let mut linux = spec
            .linux()
            .clone()
            .unwrap_or_else(|| LinuxBuilder::default().build().unwrap());
        linux.set_cgroups_path(Some(PathBuf::from(format!("{}/{id}", self.cgroup_parent))));
        spec.set_linux(Some(linux));
        customize(&mut spec);
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    }

    fn config(&self, id: &str, bundle: PathBuf) -> ContainerConfig {
        ContainerConfig {
            id: id.to_owned(),
            bundle,
            log_path: self.log_path(id),
            log_max_size: 0,
            log_max_files: 1,
            stdin: false,
            tty: false,
        }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(id).join("0.log")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(client.shutdown())
        })
        .join();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(
                hierarchy
                    .path()
                    .join(self.cgroup_parent.trim_start_matches('/')),
            );
        }
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup").join(self.cgroup_parent.trim_start_matches('/')),
        );
    }
}

/// The messages of a CRI log file as (stream, text) pairs.
fn log_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let _time = parts.next();
            let stream = parts.next().unwrap_or_default().to_owned();
            let _tag = parts.next();
            (stream, parts.next().unwrap_or_default().to_owned())
        })
        .collect()
}

async fn run_to_exit(runtime: &Runtime, id: &str, bundle: PathBuf) -> baton_runtime::ExitStatus {
    let pid = runtime
        .client
        .create_container(runtime.config(id, bundle))
        .await
        .unwrap();
    runtime.client.start_container(id).await.unwrap();
    exited(pid).await;
    let status = runtime.client.container_status(id).await.unwrap();
    assert_eq!(status.state, ContainerState::Exited, "{status:?}");
    status.exit.expect("an exited container has an exit status")
}

#[tokio::test]
async fn a_container_runs_and_its_output_and_exit_code_are_kept() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle(
        "echo",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        |_| {},
    );
    let exit = run_to_exit(&runtime, "echo", bundle).await;
    assert_eq!(exit.exit_code, 3);
    assert!(!exit.unknown && !exit.oom_killed);
    let lines = log_lines(&runtime.log_path("echo"));
    assert!(
        lines.contains(&("stdout".into(), "hello".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "oops".into())),
        "{lines:?}"
    );
    runtime.client.remove_container("echo").await.unwrap();
    let err = runtime.client.container_status("echo").await.unwrap_err();
    assert!(err.to_string().contains("no container echo"), "{err}");
}

#[tokio::test]
async fn a_container_with_stdin_reads_its_fifo_until_the_runtime_lets_go() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle(
        "reader",
        &[
            "sh",
            "-c",
            "while read line; do echo \"got $line\"; done; echo end-of-input",
        ],
        |_| {},
    );
    let mut config = runtime.config("reader", bundle);
    config.stdin = true;
    let pid = runtime.client.create_container(config).await.unwrap();
    runtime.client.start_container("reader").await.unwrap();
    let fifo = baton_runtime::stdin_path(runtime.client.container_root("reader"), "reader");
    let log = runtime.log_path("reader");
    // Two writers in turn, as two attaches would be; each one's going does not end the input
    // (the runtime holds a writer too). A non-blocking open fails (ENXIO) if nobody reads.
    for line in ["one", "two"] {
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .expect("the container reads its stdin");
        std::io::Write::write_all(&mut writer, format!("{line}\n").as_bytes()).unwrap();
        drop(writer);
        let expected = ("stdout".to_owned(), format!("got {line}"));
        wait_until("the line in the log", || {
            log_lines(&log).contains(&expected)
        })
        .await;
    }
    let status = runtime.client.container_status("reader").await.unwrap();
    assert_eq!(status.state, ContainerState::Running, "{status:?}");
    assert!(!log_lines(&log).contains(&("stdout".into(), "end-of-input".into())));
    // stdinOnce: once the runtime lets go and no writer is left, the container reads the end.
    runtime.client.close_stdin("reader").await.unwrap();
    exited(pid).await;
    wait_until("the end of input in the log", || {
        log_lines(&log).contains(&("stdout".into(), "end-of-input".into()))
    })
    .await;
    runtime.client.remove_container("reader").await.unwrap();
    assert!(!fifo.exists(), "the FIFO goes with the container");
}

#[tokio::test]
async fn a_container_with_a_terminal_gets_input_and_window_size_through_it() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle(
        "term",
        &["sh", "-c", "tty; read line; echo \"got $line\"; stty size"],
        |spec| {
            let mut process = spec.process().clone().unwrap();
            process.set_terminal(Some(true));
            spec.set_process(Some(process));
        },
    );
    let mut config = runtime.config("term", bundle);
    config.stdin = true;
    config.tty = true;
    let pid = runtime.client.create_container(config).await.unwrap();
    runtime.client.start_container("term").await.unwrap();
    runtime
        .client
        .resize_terminal("term", 100, 40)
        .await
        .unwrap();
    let fifo = baton_runtime::stdin_path(runtime.client.container_root("term"), "term");
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, b"hello\n").unwrap();
    exited(pid).await;
    let log = runtime.log_path("term");
    let terminal_lines = || -> Vec<(String, String)> {
        log_lines(&log)
            .into_iter()
            .map(|(stream, text)| (stream, text.trim_end_matches('\r').to_owned()))
            .collect()
    };
    // The runtime copies the terminal's last output after the exit.
    wait_until("the terminal's last line in the log", || {
        terminal_lines().contains(&("stdout".into(), "40 100".into()))
    })
    .await;
    let lines = terminal_lines();
    // The terminal's output is stdout; it echoes the input, as terminals do.
    for expected in ["/dev/pts/0", "hello", "got hello", "40 100"] {
        assert!(
            lines.contains(&("stdout".into(), expected.into())),
            "{expected} in {lines:?}"
        );
    }
    // A container without a terminal has no size to set.
    let plain = runtime.bundle("plain", &["sleep", "30"], |_| {});
    runtime
        .client
        .create_container(runtime.config("plain", plain))
        .await
        .unwrap();
    let err = runtime
        .client
        .resize_terminal("plain", 80, 24)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("container plain has no terminal"),
        "{err}"
    );
    runtime.client.remove_container("plain").await.unwrap();
    runtime.client.remove_container("term").await.unwrap();
}

#[tokio::test]
async fn a_sandbox_gives_containers_their_hostname_and_network_namespace() {
    let runtime = Runtime::new();
    let sandbox = runtime
        .client
        .create_sandbox(SandboxConfig {
            id: "pod-1".into(),
            hostname: "web-0".into(),
            host_network: false,
            host_ipc: false,
            shm_size: 64 << 20,
            share_pid: false,
        })
        .await
        .unwrap();
    let network = sandbox.network.clone().expect("a pod network namespace");
    let uts = sandbox.uts.clone().expect("a pod UTS namespace");
    let bundle = runtime.bundle("hostname", &["sh", "-c", "hostname; sleep 1000"], |spec| {
        let mut linux = spec.linux().clone().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|ns| {
            !matches!(
                ns.typ(),
                LinuxNamespaceType::Network | LinuxNamespaceType::Uts
            )
        });
        for (typ, path) in [
            (LinuxNamespaceType::Network, &network),
            (LinuxNamespaceType::Uts, &uts),
        ] {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(path.clone())
                    .build()
                    .unwrap(),
            );
        }
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
    });
    let pid = runtime
        .client
        .create_container(runtime.config("hostname", bundle))
        .await
        .unwrap();
    runtime.client.start_container("hostname").await.unwrap();
    // The container's network namespace is the sandbox's, not the node's.
    let in_container = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let pinned = std::fs::metadata(&network).unwrap();
    let node = std::fs::metadata("/proc/self/ns/net").unwrap();
    assert_eq!(in_container.ino(), pinned.ino());
    assert_ne!(in_container.ino(), node.ino());
    wait_until("the hostname in the log", || {
        log_lines(&runtime.log_path("hostname")).contains(&("stdout".into(), "web-0".into()))
    })
    .await;
    let status = runtime.client.container_status("hostname").await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.pid, Some(pid));

    // The shell is its pid namespace's init and has no SIGTERM handler, so SIGTERM does
    // nothing (that is why the kubelet follows up with SIGKILL); SIGKILL ends it: 128 + 9.
    runtime
        .client
        .signal_container("hostname", 15)
        .await
        .unwrap();
    let status = runtime.client.container_status("hostname").await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    runtime
        .client
        .signal_container("hostname", 9)
        .await
        .unwrap();
    exited(pid).await;
    let exit = runtime
        .client
        .container_status("hostname")
        .await
        .unwrap()
        .exit
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    runtime.client.remove_container("hostname").await.unwrap();

    runtime.client.remove_sandbox("pod-1").await.unwrap();
    assert!(!network.exists());
    // Removing again is not an error.
    runtime.client.remove_sandbox("pod-1").await.unwrap();
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
        |spec| {
            let mut linux = spec.linux().clone().unwrap();
            let memory = LinuxMemoryBuilder::default()
                .limit(16 << 20)
                .swap(16 << 20)
                .build()
                .unwrap();
            linux.set_resources(Some(
                LinuxResourcesBuilder::default()
                    .memory(memory)
                    .build()
                    .unwrap(),
            ));
            spec.set_linux(Some(linux));
        },
    );
    let exit = run_to_exit(&runtime, "hog", bundle).await;
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)), "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
}

#[tokio::test]
async fn errors_name_the_missing_command_and_root_filesystem() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle("nocmd", &["/bin/does-not-exist"], |_| {});
    let err = runtime
        .client
        .create_container(runtime.config("nocmd", bundle.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nocmd") && err.contains("does-not-exist"),
        "{err}"
    );
    // Nothing is left behind: the id can be used again.
    std::fs::remove_dir_all(bundle.join("rootfs")).unwrap();
    let err = runtime
        .client
        .create_container(runtime.config("nocmd", bundle.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nocmd") && err.contains(&bundle.join("rootfs").display().to_string()),
        "{err}"
    );
    assert!(runtime.client.list_containers().await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_runs_in_the_container_and_reports_its_exit_code() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle("target", &["sleep", "1000"], |_| {});
    runtime
        .client
        .create_container(runtime.config("target", bundle))
        .await
        .unwrap();
    runtime.client.start_container("target").await.unwrap();
    let (stdout_reader, stdout_writer) = std::io::pipe().unwrap();
    let stdin = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let stderr = OwnedFd::from(stdout_writer.try_clone().unwrap());
    let pid = runtime
        .client
        .exec(
            ExecConfig {
                container_id: "target".into(),
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "hostname; echo in-exec; exit 7".into(),
                ],
                tty: false,
            },
            [stdin, OwnedFd::from(stdout_writer), stderr],
        )
        .await
        .unwrap();
    let output =
        tokio::task::spawn_blocking(move || std::io::read_to_string(stdout_reader).unwrap())
            .await
            .unwrap();
    assert!(output.contains("in-exec"), "{output}");
    assert_eq!(exec_exit(&runtime.client, pid).await.exit_code, 7);
}

#[tokio::test]
async fn pods_spread_over_several_runtime_processes_and_stay_reachable() {
    let runtime = Runtime::with_processes(2);
    let root = runtime.dir.path().join("root");
    let pids = runtime.client.connect().await.unwrap();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1]);
    // Each pod's sandbox and container land in one process's directory; six pods use both.
    let mut used = std::collections::BTreeSet::new();
    for pod in 0..6 {
        let uid = format!("pod{pod}");
        let id = format!("{uid}_main_0");
        runtime
            .client
            .create_sandbox(SandboxConfig {
                id: uid.clone(),
                hostname: uid.clone(),
                host_network: true,
                host_ipc: true,
                shm_size: 1 << 20,
                share_pid: false,
            })
            .await
            .unwrap();
        let bundle = runtime.bundle(&id, &["sleep", "1000"], |_| {});
        runtime
            .client
            .create_container(runtime.config(&id, bundle))
            .await
            .unwrap();
        runtime.client.start_container(&id).await.unwrap();
        let home = runtime.client.container_root(&id).to_owned();
        assert_eq!(runtime.client.sandbox_root(&uid), home);
        assert!(home.join("containers").join(&id).is_dir());
        assert!(home.join("sandboxes").join(&uid).is_dir());
        used.insert(home);
    }
    assert_eq!(
        used,
        [root.clone(), baton_runtime::process_root(&root, 1)].into()
    );
    assert_eq!(runtime.client.list_containers().await.unwrap().len(), 6);

    // An exec in a container of the second process is asked about there.
    let second = (0..6)
        .map(|pod| format!("pod{pod}_main_0"))
        .find(|id| runtime.client.container_root(id) != root)
        .unwrap();
    let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let pid = runtime
        .client
        .exec(
            ExecConfig {
                container_id: second.clone(),
                args: vec!["sh".into(), "-c".into(), "exit 3".into()],
                tty: false,
            },
            [null(), null(), null()],
        )
        .await
        .unwrap();
    assert_eq!(exec_exit(&runtime.client, pid).await.exit_code, 3);

    // A client configured for one process (the kubelet restarted with fewer) still reaches
    // every container and sandbox where it lives.
    let fewer = RuntimeClient::new(&root, env!("CARGO_BIN_EXE_baton"));
    assert_eq!(fewer.list_containers().await.unwrap().len(), 6);
    let status = fewer.container_status(&second).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    fewer.remove_container(&second).await.unwrap();
    let uid_of_second = second.split('_').next().unwrap().to_owned();
    let uid = uid_of_second.as_str();
    fewer.remove_sandbox(uid).await.unwrap();
    assert!(
        !baton_runtime::process_root(&root, 1)
            .join("sandboxes")
            .join(uid)
            .exists()
    );
    assert_eq!(runtime.client.list_containers().await.unwrap().len(), 5);
    // A new container of a pod whose sandbox is in the second process goes there too, whatever
    // the count the client was made with.
    let sibling = (0..6)
        .map(|pod| format!("pod{pod}"))
        .find(|uid| *uid != uid_of_second && runtime.client.sandbox_root(uid) != root)
        .unwrap();
    let next = format!("{sibling}_sidecar_0");
    let bundle = runtime.bundle(&next, &["sleep", "1000"], |_| {});
    fewer
        .create_container(runtime.config(&next, bundle))
        .await
        .unwrap();
    let second_root = baton_runtime::process_root(&root, 1);
    assert_eq!(fewer.container_root(&next), second_root);
    assert!(second_root.join("containers").join(&next).is_dir());

    // Shutting down stops both processes and everything they ran.
    let container_pids: Vec<i32> = runtime
        .client
        .list_containers()
        .await
        .unwrap()
        .iter()
        .filter_map(|status| status.pid)
        .collect();
    runtime.client.shutdown().await.unwrap();
    for pid in pids.into_iter().chain(container_pids) {
        exited(pid).await;
    }
    // A later client starts no process for the second directory, which holds nothing now.
    let later = RuntimeClient::new(&root, env!("CARGO_BIN_EXE_baton"));
    assert_eq!(later.roots().collect::<Vec<_>>(), [root.as_path()]);
    // But it reaches one that runs there, idle, to stop it.
    let idle = RuntimeClient::of_process(
        baton_runtime::process_root(&root, 1),
        env!("CARGO_BIN_EXE_baton"),
    );
    let [idle_pid] = idle.connect().await.unwrap()[..] else {
        panic!("one runtime process");
    };
    let later = RuntimeClient::new(&root, env!("CARGO_BIN_EXE_baton"));
    assert_eq!(later.roots().count(), 2);
    later.shutdown().await.unwrap();
    exited(idle_pid).await;
}

#[tokio::test]
async fn a_restarted_runtime_process_adopts_running_containers() {
    let runtime = Runtime::new();
    let bundle = runtime.bundle(
        "ticker",
        &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
        |_| {},
    );
    let pid = runtime
        .client
        .create_container(runtime.config("ticker", bundle))
        .await
        .unwrap();
    runtime.client.start_container("ticker").await.unwrap();
    let [first] = runtime.client.connect().await.unwrap()[..] else {
        panic!("one runtime process");
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::SIGKILL).unwrap();
    exited(first).await;
    // The next call starts a new runtime process, which finds the container still running.
    let client = runtime.client.clone();
    let status =
        baton_test_harness::wait_until("a new runtime process", Duration::from_secs(30), || {
            let client = client.clone();
            async move { client.container_status("ticker").await.ok() }
        })
        .await
        .unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.pid, Some(pid));
    assert_ne!(runtime.client.connect().await.unwrap(), [first]);
    // And goes on copying its output.
    let before = log_lines(&runtime.log_path("ticker")).len();
    wait_until("more output after the restart", || {
        log_lines(&runtime.log_path("ticker")).len() > before + 3
    })
    .await;
}

/// Waits (30 s at most) until `condition` holds.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    baton_test_harness::wait_until(what, Duration::from_secs(30), || async {
        condition().then_some(())
    })
    .await
    .unwrap();
}

/// How exec'd process `pid` ended, once it has (30 s at most).
async fn exec_exit(client: &RuntimeClient, pid: i32) -> baton_runtime::ExitStatus {
    exited(pid).await;
    client.exec_status(pid).await.unwrap().expect("exited")
}

/// Waits (30 s at most) until process `pid` has exited.
async fn exited(pid: i32) {
    tokio::time::timeout(Duration::from_secs(30), wait_for_exit(pid))
        .await
        .expect("the process exits within 30 s")
        .unwrap();
}
