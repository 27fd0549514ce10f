//! The console socket when the VMM is out of file descriptors: a client that connects then
//! cannot be accepted; the console thread waits and tries again instead of spinning on the
//! listener, and takes the client once descriptors are free again. In a test binary of its
//! own, because it lowers the whole process's descriptor limit. Needs /dev/kvm, as
//! tests/tiny_guests.rs explains.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use baton_vmm::{VmExit, VmmArgs};
use common::{Guest, echo_program, elf_kernel, kvm_available, read_until, spawn_vm, wait_until};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Nanoseconds the thread named `name` of this process has spent on a CPU (`None` while there
/// is no such thread).
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return schedstat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

#[test]
fn a_console_out_of_descriptors_waits_and_then_takes_the_client() {
    if !kvm_available("a_console_out_of_descriptors_waits_and_then_takes_the_client") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&echo_program()));
    let socket = guest.console().with_file_name("console.sock");
    let done = spawn_vm(VmmArgs {
        console: Some(format!("socket:{}", socket.display())),
        ..guest.args(kernel)
    });
    let before = wait_until("the console thread", Duration::from_secs(10), || {
        thread_cpu_ns("console").filter(|_| socket.exists())
    });

    // The client's socket is made first; then no descriptor is left for the VMM to accept
    // it with.
    let client = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let original = getrlimit(Resource::Nofile);
    // No new descriptor at all (those open stay usable), until the limit is restored.
    let none = Rlimit {
        current: Some(0),
        maximum: original.maximum,
    };
    setrlimit(Resource::Nofile, none).unwrap();
    connect(&client, &SocketAddrUnix::new(&socket).unwrap()).unwrap();

    // Its connection waits in the listener's queue: the console thread must not spin on it.
    std::thread::sleep(Duration::from_millis(500));
    setrlimit(Resource::Nofile, original).unwrap();
    let spent = thread_cpu_ns("console").expect("the console thread") - before;
    assert!(
        spent < 100_000_000,
        "the console thread ran {} ms of 500",
        spent / 1_000_000
    );

    // With descriptors free again it takes the client, which gets the early output.
    let mut client = UnixStream::from(client);
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    read_until(&mut client, &mut received, b"ready\n");
    assert_eq!(received, b"ready\n");
    client.write_all(b"\n").unwrap();
    read_until(&mut client, &mut received, b"bye\n");
    let exit = done
        .recv_timeout(Duration::from_secs(20))
        .expect("the VM ends");
    assert_eq!(exit, Ok(VmExit::PowerOff));
}
