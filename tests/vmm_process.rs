//! `baton vmm` as a process. Every thread of it runs under a seccomp filter, the main thread
//! too. And `baton vmm --jail` as a user runs it: a tiny guest that writes to the console and then
//! loops, in a jail; checked from outside through /proc as an operator would: the jailed
//! VMM's root holds only the files the VM uses (the kernel and a disk read-only), it is PID 1
//! of its own PID namespace, runs as nobody with no capability and no_new_privs, sits in a
//! cgroup with the memory and CPU limits asked for, and still serves its API and vsock
//! sockets. Ending it (the API's shutdown, or SIGTERM to `baton vmm`) leaves no cgroup,
//! socket, mount point or process behind. Needs /dev/kvm, as vmm/tests/tiny_guests.rs
//! explains; runs as root (the jail makes namespaces and cgroups).

#[path = "../vmm/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Asm, Guest, elf_kernel, kvm_available, wait_until};

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

/// Writes "jailed\n" to COM1, then writes to port 0x80 forever.
fn looping_guest(guest: &Guest) -> PathBuf {
    let mut program = Asm::default();
    program.mov_dx(0x3f8);
    for byte in b"jailed\n" {
        program.out_al(*byte);
    }
    program
        .bytes(&[0xb0, 0x00]) // mov al, 0
        .label("loop")
        .bytes(&[0xe6, 0x80]) // out 0x80, al
        .rel(&[0xeb], "loop", 1);
    guest.file("vmlinux", &elf_kernel(&program.finish()))
}

/// A pinned network namespace holding tap `tap`; removed on drop.
struct TestNetns {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestNetns {
    fn new(tap: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net");
        let netns = baton_network::NetNs::create_pinned(&path).unwrap();
        netns
            .run(|| baton_network::create_tap(tap))
            .unwrap()
            .unwrap();
        Self { _dir: dir, path }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(error) = baton_network::NetNs::unpin(&self.path) {
            eprintln!("cannot remove the test network namespace: {error}");
        }
    }
}

/// A `baton vmm --jail` that is killed if the test fails before it ends.
struct Vmm {
    child: Option<Child>,
}

impl Vmm {
    fn start(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton vmm starts");
        Self { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The jailed child (host PID) of the outer process.
    fn jailed_pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.pid());
        let text = std::fs::read_to_string(&children).unwrap();
        let pids: Vec<u32> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 1, "one jailed child: {text:?}");
        pids[0]
    }

    /// Waits for the end, returning the exit status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let output = self
            .child
            .take()
            .unwrap()
            .wait_with_output()
            .expect("baton vmm ends");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Vmm {
    /// SIGTERM, so that a jailed VMM's outer process removes what it made.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// /proc/PID/task/*/status of every thread of `pid` that runs the VMM's code: not KVM's
/// NX huge page recovery worker (`kvm-nx-lpage-recovery`), a kernel thread that KVM adds
/// to the thread group of a process with a VM.
fn thread_statuses(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let task = task.unwrap().file_name();
            std::fs::read_to_string(format!(
                "/proc/{pid}/task/{}/status",
                task.to_str().unwrap()
            ))
            .unwrap()
        })
        .filter(|status| !status.starts_with("Name:\tkvm-nx-lpage-re"))
        .collect()
}

/// Every path below `dir`, relative to it (directories too), not following symbolic links.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            found.insert(path.strip_prefix(dir).unwrap().to_owned());
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    found
}

/// The cgroup directories of `pid` in the v1 memory and cpu hierarchies (the hosts these
/// tests run on), from /proc/PID/cgroup.
fn v1_cgroup_dirs(pid: u32) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let dir = |controller: &str| {
        text.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == controller).then(|| {
                Path::new("/sys/fs/cgroup")
                    .join(controllers)
                    .join(path.trim_start_matches('/'))
            })
        })
    };
    (
        dir("memory").expect("a v1 memory hierarchy"),
        dir("cpu").expect("a v1 cpu hierarchy"),
    )
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn every_thread_of_baton_vmm_runs_under_a_seccomp_filter() {
    if !kvm_available("every_thread_of_baton_vmm_runs_under_a_seccomp_filter") {
        return;
    }
    let guest = Guest::new();
    let kernel = looping_guest(&guest);
    let api = guest.console().with_file_name("api.sock");
    let mut vmm = Vmm::start(
        baton()
            .arg("vmm")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--console")
            .arg(guest.console())
            .arg("--api-sock")
            .arg(&api)
            .args(["--cpus", "2"]),
    );
    wait_until("the guest's console line", Duration::from_secs(20), || {
        std::fs::read_to_string(guest.console())
            .ok()
            .filter(|text| text.contains("jailed\n"))
    });
    // The main thread installs its filter once the vCPUs run, which may be just after the
    // guest's first line.
    let statuses = wait_until(
        "five threads, each under a seccomp filter",
        Duration::from_secs(10),
        || {
            let statuses = thread_statuses(vmm.pid());
            (statuses.len() == 5 && statuses.iter().all(|s| s.contains("\nSeccomp:\t2\n")))
                .then_some(statuses)
        },
    );
    let names: Vec<&str> = statuses.iter().map(|s| s.lines().next().unwrap()).collect();
    assert_eq!(
        statuses.len(),
        5,
        "main, two vCPU, virtio notification (the entropy device's queue) and API threads: {names:?}"
    );
    assert!(
        names.iter().any(|name| name.contains("virtio-notify")),
        "{names:?}"
    );
    for status in &statuses {
        assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    }
    // The main thread's filter lets it pause, resume and stop the VM and clean up.
    for request in ["pause", "resume"] {
        let answer = baton_vmm::api::request(&api, request).unwrap();
        assert!(!answer.contains("error"), "{request}: {answer}");
    }
    baton_vmm::api::request(&api, "shutdown 0.1").unwrap();
    let (status, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(!api.exists(), "socket removed");
}

#[test]
fn a_jailed_vmm_sees_only_its_files_runs_unprivileged_and_leaves_nothing() {
    if !kvm_available("a_jailed_vmm_sees_only_its_files_runs_unprivileged_and_leaves_nothing") {
        return;
    }
    let guest = Guest::new();
    let kernel = looping_guest(&guest);
    let disk = guest.file("disk.raw", &[0u8; 4096]);
    let sockets = guest.console().with_file_name("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let api = sockets.join("api.sock");
    let vsock = sockets.join("vsock.sock");
    let network = TestNetns::new("tap-jail");
    let mut vmm = Vmm::start(
        baton()
            .arg("vmm")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--console")
            .arg(guest.console())
            .arg("--disk")
            .arg(format!("{},ro", disk.display()))
            .arg("--api-sock")
            .arg(&api)
            .arg("--vsock")
            .arg(format!("3,{}", vsock.display()))
            .arg("--net")
            .arg(format!("tap-jail,netns={}", network.path.display()))
            .args([
                "--memory",
                "128",
                "--jail-memory",
                "200",
                "--jail-cpus",
                "0.5",
            ]),
    );
    wait_until(
        "the jailed VMM's API socket",
        Duration::from_secs(20),
        || api.exists().then_some(()),
    );
    wait_until("the guest's console line", Duration::from_secs(20), || {
        std::fs::read_to_string(guest.console())
            .ok()
            .filter(|text| text.contains("jailed\n"))
    });
    let pid = vmm.jailed_pid();
    let outer = vmm.pid();

    // PID 1 of its own PID namespace, in mount and IPC namespaces of its own.
    assert_eq!(status_field(pid, "NSpid"), format!("{pid}\t1"));
    for ns in ["mnt", "pid", "ipc"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "{ns} namespace"
        );
    }
    // nobody:nogroup, no capability in any set, no way back.
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "65534");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Every thread too (they started after the drop), each under a seccomp filter.
    let statuses = thread_statuses(pid);
    assert_eq!(
        statuses.len(),
        6,
        "main, vCPU, virtio notification, network receive, vsock and API threads"
    );
    for status in statuses {
        assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
        assert!(status.contains("\nUid:\t65534\t"), "{status}");
        assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    }

    // Its root holds the kernel, the disk, the console file, /dev/kvm and the sockets'
    // directory, each at its host path, and nothing else.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let real = std::fs::canonicalize(guest.console().parent().unwrap()).unwrap();
    let relative = |path: &Path| path.strip_prefix("/").unwrap().to_owned();
    let mut expected: BTreeSet<PathBuf> = BTreeSet::new();
    for file in [
        real.join("vmlinux"),
        real.join("disk.raw"),
        real.join("console.log"),
        real.join("sockets/api.sock"),
        real.join("sockets/vsock.sock"),
        PathBuf::from("/dev/kvm"),
        PathBuf::from("/dev/net/tun"),
        std::fs::canonicalize(&network.path).unwrap(),
    ] {
        for ancestor in relative(&file).ancestors() {
            if !ancestor.as_os_str().is_empty() {
                expected.insert(ancestor.to_owned());
            }
        }
    }
    assert_eq!(tree(&root), expected);
    // The kernel and the read-only disk are read-only mounts there; the root is too.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let options = |mount_point: &Path| {
        let point = mount_point.display().to_string();
        mountinfo
            .lines()
            .rev()
            .find(|line| line.split(' ').nth(4) == Some(point.as_str()))
            .unwrap_or_else(|| panic!("{point} in {mountinfo}"))
            .split(' ')
            .nth(5)
            .unwrap()
            .to_owned()
    };
    for read_only in [
        real.join("vmlinux"),
        real.join("disk.raw"),
        PathBuf::from("/"),
    ] {
        assert!(
            options(&read_only).starts_with("ro"),
            "{} is mounted {}",
            read_only.display(),
            options(&read_only)
        );
    }
    assert!(options(&real.join("console.log")).starts_with("rw"));
    // The host sees none of the jail's mounts.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains("baton-vmm-jail"),
        "no jail mount on the host"
    );

    // Its cgroup has the limits asked for.
    let (memory, cpu) = v1_cgroup_dirs(pid);
    assert!(
        memory
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("baton-vmm-{outer}-")),
        "{memory:?}"
    );
    assert_eq!(
        read_trimmed(&memory.join("memory.limit_in_bytes")),
        (200u64 << 20).to_string()
    );
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_period_us")), "100000");

    // The API still answers; shutdown ends the VM (exit code 5).
    let answer = baton_vmm::api::request(&api, "status").unwrap();
    assert!(answer.contains("\"state\":\"running\""), "{answer}");
    baton_vmm::api::request(&api, "shutdown 0.2").unwrap();
    let (status, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(5), "{stderr}");

    // Nothing left: sockets, cgroup directories, the mount point, the process.
    assert!(!api.exists() && !vsock.exists(), "sockets removed");
    assert!(!memory.exists() && !cpu.exists(), "cgroups removed");
    let mount_point = std::env::temp_dir().join(format!("baton-vmm-jail.{outer}"));
    assert!(!mount_point.exists(), "{}", mount_point.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "jailed VMM gone"
    );
    assert!(guest.serial().contains("jailed\n"), "the console is kept");
}

/// A jailed VMM with default limits, its API and console sockets in a directory of their
/// own; returns the sockets' directory.
fn start_jailed(guest: &Guest) -> (Vmm, PathBuf) {
    let kernel = looping_guest(guest);
    let sockets = guest.console().with_file_name("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let api = sockets.join("api.sock");
    let vmm = Vmm::start(
        baton()
            .arg("vmm")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--console")
            .arg(format!("socket:{}", sockets.join("console.sock").display()))
            .arg("--api-sock")
            .arg(&api)
            .arg("--jail"),
    );
    wait_until(
        "the jailed VMM's API and console sockets",
        Duration::from_secs(20),
        || (api.exists() && sockets.join("console.sock").exists()).then_some(()),
    );
    (vmm, sockets)
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

#[test]
fn sigterm_to_a_jailed_vmm_stops_it_and_leaves_nothing() {
    if !kvm_available("sigterm_to_a_jailed_vmm_stops_it_and_leaves_nothing") {
        return;
    }
    let guest = Guest::new();
    let (mut vmm, sockets) = start_jailed(&guest);
    let pid = vmm.jailed_pid();
    let outer = vmm.pid();
    // The console socket serves from inside the jail.
    let mut console =
        std::os::unix::net::UnixStream::connect(sockets.join("console.sock")).unwrap();
    console
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = [0u8; 7];
    std::io::Read::read_exact(&mut console, &mut line).unwrap();
    assert_eq!(&line, b"jailed\n");
    let (memory, cpu) = v1_cgroup_dirs(pid);
    // The defaults: the guest's 128 MiB and 128 MiB more; one CPU per vCPU.
    assert_eq!(
        read_trimmed(&memory.join("memory.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "100000");

    signal(outer, nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&sockets).unwrap().count(),
        0,
        "API and console sockets removed"
    );
    assert!(!memory.exists() && !cpu.exists(), "cgroups removed");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "jailed VMM gone"
    );
    assert!(
        !std::env::temp_dir()
            .join(format!("baton-vmm-jail.{outer}"))
            .exists()
    );
}

/// SIGKILL leaves the outer process no time to clean up, but the jailed VMM (which dropped
/// its privileges, and with them the kernel's memory of its parent-death signal, until it
/// asked again) must not outlive it. The test removes what the outer process could not.
#[test]
fn a_jailed_vmm_dies_with_its_killed_outer_process() {
    if !kvm_available("a_jailed_vmm_dies_with_its_killed_outer_process") {
        return;
    }
    let guest = Guest::new();
    let (mut vmm, sockets) = start_jailed(&guest);
    let pid = vmm.jailed_pid();
    let outer = vmm.pid();
    let (memory, cpu) = v1_cgroup_dirs(pid);
    signal(outer, nix::sys::signal::Signal::SIGKILL);
    let (status, _) = vmm.wait();
    assert_eq!(status.code(), None, "killed");
    wait_until("the jailed VMM to end", Duration::from_secs(10), || {
        (!running(pid)).then_some(())
    });
    let _ = std::fs::remove_file(sockets.join("api.sock"));
    let _ = std::fs::remove_file(sockets.join("console.sock"));
    for dir in [memory, cpu] {
        wait_until(
            "the cgroup to be removable",
            Duration::from_secs(10),
            || std::fs::remove_dir(&dir).ok(),
        );
    }
    let _ = std::fs::remove_dir(std::env::temp_dir().join(format!("baton-vmm-jail.{outer}")));
}

#[test]
fn jail_settings_that_cannot_hold_the_vm_are_refused_before_anything_starts() {
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&[0xf4]));
    let output = baton()
        .arg("vmm")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--console")
        .arg(guest.console())
        .args(["--memory", "128", "--jail-memory", "100"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --jail-memory (jail.memory_mib) 100: the guest's 128 MiB and 16 MiB for the VMM need at least 144 MiB"
    );
    assert!(!guest.console().exists(), "no console file made");
    if !kvm_available("jail_settings_that_cannot_hold_the_vm_are_refused_before_anything_starts") {
        return;
    }

    // A kernel that is not one: the jailed VMM reports it, and the console file the jail
    // made for it goes again with the cgroup.
    let not_a_kernel = guest.file("notakernel", b"just text");
    let child = baton()
        .arg("vmm")
        .arg("--kernel")
        .arg(&not_a_kernel)
        .arg("--console")
        .arg(guest.console())
        .arg("--jail")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let outer = child.id();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("error: ") && line.contains("notakernel")),
        "{stderr}"
    );
    assert!(!guest.console().exists(), "no console file left");
    // Its cgroups (made below this test's own) are gone too.
    let (memory, cpu) = v1_cgroup_dirs(std::process::id());
    for hierarchy in [memory, cpu] {
        let prefix = format!("baton-vmm-{outer}-");
        let left: Vec<_> = std::fs::read_dir(&hierarchy)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "{left:?} in {}", hierarchy.display());
    }
}
