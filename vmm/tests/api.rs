//! The VMM's API socket against a running tiny guest that writes to an unassigned port in a
//! loop: status, metrics (port-write exits growing), pause (they stop growing), resume
//! (they grow again), an unknown request, and shutdown, which stops a guest that does not
//! power off by itself (exit code 5) and removes the socket. Needs /dev/kvm, as
//! tests/tiny_guests.rs explains.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use baton_vmm::{VmExit, VmmArgs};
use common::{Guest, elf_kernel, kvm_available, port_writing_loop, spawn_vm, wait_until};
use serde_json::Value;

fn ask(socket: &Path, request: &str) -> Value {
    let answer = baton_vmm::api::request(socket, request).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
}

fn port_writes(socket: &Path) -> u64 {
    ask(socket, "metrics")["exits"]["io_out"].as_u64().unwrap()
}

#[test]
fn status_metrics_pause_resume_and_shutdown() {
    if !kvm_available("status_metrics_pause_resume_and_shutdown") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&port_writing_loop()));
    let disk = guest.file("disk.raw", &[0u8; 4096]);
    let socket = guest.console().with_file_name("api.sock");
    let args = VmmArgs {
        cpus: Some(2),
        disk: vec![disk.display().to_string()],
        api_sock: Some(socket.clone()),
        ..guest.args(kernel)
    };
    let done = spawn_vm(args);
    wait_until("the API socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });

    let status = ask(&socket, "status");
    assert_eq!(status["state"], "running");
    assert_eq!(status["cpus"], 2);
    assert_eq!(status["memory_mib"], 128);
    assert_eq!(status["devices"][0]["type"], "virtio-blk");
    assert_eq!(status["devices"][0]["address"], "0xd0000000");
    assert_eq!(status["devices"][1]["type"], "virtio-rng");

    let metrics = ask(&socket, "metrics");
    assert_eq!(metrics["devices"][0]["reads"], 0, "{metrics}");
    assert_eq!(metrics["devices"][0]["needs_reset"], 0, "{metrics}");
    let first = port_writes(&socket);
    wait_until(
        "the guest to write to the port",
        Duration::from_secs(10),
        || (port_writes(&socket) > first).then_some(()),
    );

    assert_eq!(ask(&socket, "pause")["state"], "paused");
    let paused = port_writes(&socket);
    // A window to see nothing happen in: a running guest makes hundreds of exits in it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(port_writes(&socket), paused, "no exits while paused");
    assert_eq!(ask(&socket, "status")["state"], "paused");

    assert_eq!(ask(&socket, "resume")["state"], "running");
    wait_until("the guest to run again", Duration::from_secs(10), || {
        (port_writes(&socket) > paused).then_some(())
    });

    let error = ask(&socket, "reboot");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("unknown request \"reboot\""),
        "{error}"
    );
    let error = ask(&socket, "shutdown soon");
    assert!(
        error["error"].as_str().unwrap().contains("SECONDS"),
        "{error}"
    );

    let requested_at = Instant::now();
    let shutdown = ask(&socket, "shutdown 0.3");
    assert_eq!(shutdown["shutdown"], "requested");
    assert_eq!(shutdown["guest_asked"], false, "no vsock device to ask on");
    let exit = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the VM stops");
    let waited = requested_at.elapsed();
    assert_eq!(exit, Ok(VmExit::Stopped));
    assert_eq!(VmExit::Stopped.exit_code(), 5);
    assert!(
        waited >= Duration::from_millis(300),
        "stopped after the timeout, not before: {waited:?}"
    );
    assert!(!socket.exists(), "the socket is removed");
}

#[test]
fn a_busy_api_socket_path_is_refused() {
    if !kvm_available("a_busy_api_socket_path_is_refused") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&[0xf4]));
    let busy = guest.file("api.sock", b"");
    let err = baton_vmm::run(&VmmArgs {
        api_sock: Some(busy.clone()),
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--api-sock (api-sock) {}: the path is busy: something exists there",
            busy.display()
        )
    );
    assert!(!guest.console().exists());
}

#[test]
fn queue_notifications_do_not_leave_kvm_run() {
    if !kvm_available("queue_notifications_do_not_leave_kvm_run") {
        return;
    }
    // A guest that writes QueueNotify (queue 0) of its first virtio device, the entropy
    // device at 0xd0000000, then port 0x80, in a loop: KVM signals the notification's
    // eventfd for the first write and exits to the VMM only for the second.
    let mut program = common::Asm::default();
    program
        .bytes(&[0xbb])
        .bytes(&0xd000_0000u32.to_le_bytes()) // mov ebx, 0xd0000000
        .bytes(&[0xb0, 0x00]) // mov al, 0
        .label("loop")
        .reg_write(0x050, 0) // mov dword [rbx + 0x50], 0: QueueNotify
        .bytes(&[0xe6, 0x80]) // out 0x80, al
        .rel(&[0xeb], "loop", 1);
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&program.finish()));
    let socket = guest.console().with_file_name("api.sock");
    let done = spawn_vm(VmmArgs {
        api_sock: Some(socket.clone()),
        ..guest.args(kernel)
    });
    wait_until("the API socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    wait_until("a thousand loops", Duration::from_secs(10), || {
        (port_writes(&socket) > 1000).then_some(())
    });
    let metrics = ask(&socket, "metrics");
    assert_eq!(
        metrics["exits"]["mmio_write"], 0,
        "no MMIO exit for the notifications: {metrics}"
    );
    assert_eq!(ask(&socket, "shutdown 0")["shutdown"], "requested");
    let exit = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the VM stops");
    assert_eq!(exit, Ok(VmExit::Stopped));
}
