//! The serial console on a Unix socket (`--console socket:PATH`): a tiny guest writes
//! "ready" before anyone is connected (the client still gets it), then reads COM1 by polling
//! its line status, echoes each byte with its case flipped until a newline, says "bye" and
//! powers off. The client sends 5,000 letters at once, far more than the UART's 64-byte FIFO
//! (and the console's 4 KiB reads) hold, shuts down its sending side, and still gets every
//! one back in order. A client that sends and closes at once, leaving output unread (which
//! resets the connection), loses nothing either: the guest gets the whole line. Needs /dev/kvm, as tests/tiny_guests.rs explains.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use baton_vmm::{VmExit, VmmArgs};
use common::{Guest, echo_program, elf_kernel, kvm_available, read_until, spawn_vm, wait_until};

#[test]
fn a_console_socket_client_sees_early_output_and_types_more_than_the_fifo_holds() {
    if !kvm_available(
        "a_console_socket_client_sees_early_output_and_types_more_than_the_fifo_holds",
    ) {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&echo_program()));
    let socket = guest.console().with_file_name("console.sock");
    let api = guest.console().with_file_name("api.sock");
    let done = spawn_vm(VmmArgs {
        console: Some(format!("socket:{}", socket.display())),
        api_sock: Some(api.clone()),
        ..guest.args(kernel)
    });
    wait_until("the API socket", Duration::from_secs(10), || {
        api.exists().then_some(())
    });
    // The guest has written "ready" (six port writes) before the client connects.
    wait_until("the guest's first line", Duration::from_secs(10), || {
        let answer = baton_vmm::api::request(&api, "metrics").ok()?;
        let metrics: serde_json::Value = serde_json::from_str(&answer).ok()?;
        (metrics["exits"]["io_out"].as_u64()? >= 6).then_some(())
    });
    let mut client = UnixStream::connect(&socket).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    read_until(&mut client, &mut received, b"ready\n");
    assert_eq!(received, b"ready\n");

    let letters: Vec<u8> = (0..5000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = letters.clone();
    input.push(b'\n');
    client.write_all(&input).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    received.clear();
    read_until(&mut client, &mut received, b"bye\n");
    let mut expected: Vec<u8> = letters.iter().map(|b| b ^ 0x20).collect();
    expected.extend_from_slice(b"\nbye\n");
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(&expected),
        "every letter echoed once, in order"
    );
    let exit = done
        .recv_timeout(Duration::from_secs(20))
        .expect("the VM ends");
    assert_eq!(exit, Ok(VmExit::PowerOff));
    assert!(!socket.exists(), "the console socket is removed");
    assert!(!guest.console().exists(), "no console file was made");
}

#[test]
fn input_of_a_client_that_closed_at_once_still_reaches_the_guest() {
    if !kvm_available("input_of_a_client_that_closed_at_once_still_reaches_the_guest") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&echo_program()));
    let socket = guest.console().with_file_name("console.sock");
    let done = spawn_vm(VmmArgs {
        console: Some(format!("socket:{}", socket.display())),
        ..guest.args(kernel)
    });
    wait_until("the console socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    let mut client = UnixStream::connect(&socket).unwrap();
    // One byte of "ready" read, the rest left unread: closing then resets the connection
    // (the console sees an error, not just a hang-up), the hardest case for the input.
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"r");
    let mut input = vec![b'x'; 9000];
    input.push(b'\n');
    client.write_all(&input).unwrap();
    drop(client);
    // The guest powers off only once it has read the newline after the 9,000 bytes.
    let exit = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the VM ends");
    assert_eq!(exit, Ok(VmExit::PowerOff));
}

#[test]
fn a_busy_console_socket_path_is_refused() {
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&[0xf4]));
    let busy = guest.file("console.sock", b"");
    let err = baton_vmm::run(&VmmArgs {
        console: Some(format!("socket:{}", busy.display())),
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--console (console) \"socket:{}\": the path is busy: something exists there",
            busy.display()
        )
    );
}
