//! A vsock round trip: a tiny guest connects to the host (CID 2) on port 1234, which the
//! VMM maps to the Unix socket `UDS_PATH_1234` the test listens on; it sends "ping", the
//! test answers "pong", and the guest prints the packets' operations and the answer. Needs
//! /dev/kvm, as tests/tiny_guests.rs explains.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel, kvm_available, spawn_vm};

const VSOCK: u32 = 0xd000_0000;
/// The receive queue's rings at BASE (+0x1000 available, +0x2000 used), the transmit
/// queue's at +0x10000, the event queue's at +0x20000; the packet sent at +0x30000; the
/// four receive buffers from +0x40000, 0x2000 apart.
const BASE: u32 = 0x20_0000;
const TX_PACKET: u32 = 0x3_0000;
const RX_BUFFER: u32 = 0x4_0000;

trait VsockAsm {
    /// Spins until the receive queue's used index reaches `count`.
    fn wait_received(&mut self, label: &'static str, count: u32) -> &mut Self;
}

impl VsockAsm for Asm {
    fn wait_received(&mut self, label: &'static str, count: u32) -> &mut Self {
        self.label(label)
            .bytes(&[0xf3, 0x90]) // pause
            .mem_op(&[0x0f, 0xb7], 0x87, 0x2002) // movzx eax, word [rdi + 0x2002]
            .bytes(&[0x3d])
            .bytes(&count.to_le_bytes()) // cmp eax, count
            .rel(&[0x0f, 0x82], label, 4) // jb label
    }
}

/// The guest's packet header (44 bytes) at TX_PACKET: from CID 3 port 5000 to CID 2 port
/// 1234, stream, operation `op`, `len` payload bytes, a 64 KiB receive buffer.
fn write_header(a: &mut Asm, op: u16, len: u32) {
    let at = |offset: u32| TX_PACKET + offset;
    a.mem_write(at(0), 3)
        .mem_write(at(4), 0)
        .mem_write(at(8), 2)
        .mem_write(at(12), 0)
        .mem_write(at(16), 5000)
        .mem_write(at(20), 1234)
        .mem_write(at(24), len)
        .mem_write(at(28), 1 | (u32::from(op) << 16))
        .mem_write(at(32), 0)
        .mem_write(at(36), 65536)
        .mem_write(at(40), 0);
}

fn vsock_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_dx(0x3f8)
        .mov_ebx(VSOCK)
        .mov_edi(BASE)
        .reg_write(0x070, 1)
        .reg_write(0x070, 3)
        .reg_write(0x024, 1)
        .reg_write(0x020, 1) // VIRTIO_F_VERSION_1
        .reg_write(0x024, 0)
        .reg_write(0x020, 0)
        .reg_write(0x070, 0xb);
    for queue in 0..3u32 {
        let base = BASE + queue * 0x1_0000;
        a.reg_write(0x030, queue)
            .reg_write(0x038, 8)
            .reg_write(0x080, base)
            .reg_write(0x090, base + 0x1000)
            .reg_write(0x0a0, base + 0x2000)
            .reg_write(0x044, 1);
    }
    a.reg_write(0x070, 0xf);
    // Four receive buffers: descriptors 0-3, available ring [0, 1, 2, 3].
    for i in 0..4u32 {
        a.mem_write(i * 16, BASE + RX_BUFFER + i * 0x2000)
            .mem_write(i * 16 + 8, 4096 + 44)
            .mem_write(i * 16 + 12, 2); // WRITE
    }
    a.mem_write(0x1004, 0x0001_0000) // ring[0] = 0, ring[1] = 1
        .mem_write(0x1008, 0x0003_0002) // ring[2] = 2, ring[3] = 3
        .mem_write(0x1000, 0x0004_0000) // idx 4
        .reg_write(0x050, 0);
    // REQUEST, through transmit descriptor 0.
    write_header(&mut a, 1, 0);
    a.mem_write(0x1_0000, BASE + TX_PACKET)
        .mem_write(0x1_0008, 44)
        .mem_write(0x1_1000, 0x0001_0000) // idx 1, ring[0] = 0
        .reg_write(0x050, 1)
        .wait_received("response", 1)
        .mem_op(&[0x0f, 0xb7], 0x87, RX_BUFFER + 30) // movzx eax, word [op of packet 0]
        .bytes(&[0x04, b'0', 0xee]) // add al, '0'; out dx, al
        .out_al(b' ');
    // RW "ping".
    write_header(&mut a, 5, 4);
    a.mem_write(TX_PACKET + 44, u32::from_le_bytes(*b"ping"))
        .mem_write(0x1_0008, 48)
        .mem_write(0x1_1000, 0x0002_0000) // idx 2 (ring[1] is 0)
        .reg_write(0x050, 1)
        .wait_received("answer", 2)
        .mem_op(&[0x0f, 0xb7], 0x87, RX_BUFFER + 0x2000 + 30) // op of packet 1
        .bytes(&[0x04, b'0', 0xee])
        .out_al(b' ')
        .mem_op(&[0x8b], 0x87, RX_BUFFER + 0x2000 + 44) // mov eax, [its payload]
        .bytes(&[
            0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee,
        ])
        .out_al(b'\n')
        .mov_dx(0x600)
        .out_al(0x34)
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    a.finish()
}

/// The seccomp mode (2: filtered) of this process's threads named `names`.
fn seccomp_modes(names: &[&str]) -> Vec<(String, u32)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !names.contains(&comm) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        modes.push((comm.to_string(), mode));
    }
    modes.sort();
    modes
}

#[test]
fn guest_reaches_a_host_socket_over_vsock_and_back() {
    if !kvm_available("guest_reaches_a_host_socket_over_vsock_and_back") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&vsock_program()));
    let uds = guest.console().with_file_name("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut ping = [0u8; 4];
        stream.read_exact(&mut ping).unwrap();
        // While the guest waits for the answer: the VMM's threads run under seccomp.
        let filtered = seccomp_modes(&["vcpu0", "vsock"]);
        stream.write_all(b"pong").unwrap();
        (ping, stream, filtered)
    });
    let args = VmmArgs {
        vsock: Some(format!("3,{}", uds.display())),
        ..guest.args(kernel)
    };
    let exit = spawn_vm(args)
        .recv_timeout(Duration::from_secs(60))
        .expect("the guest ends within a minute");
    assert_eq!(exit, Ok(VmExit::PowerOff));
    let (ping, _stream, filtered) = host.join().unwrap();
    assert_eq!(&ping, b"ping");
    assert_eq!(
        filtered,
        [("vcpu0".to_string(), 2), ("vsock".to_string(), 2)],
        "the vCPU and muxer threads are in seccomp filter mode"
    );
    assert_eq!(
        guest.serial(),
        "2 5 pong\n",
        "RESPONSE, then RW with the host's answer"
    );
    assert!(!uds.exists(), "the VMM removed its socket");
}

#[test]
fn a_busy_vsock_path_is_refused_before_the_vm_starts() {
    if !kvm_available("a_busy_vsock_path_is_refused_before_the_vm_starts") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&vsock_program()));
    let busy = guest.file("busy.sock", b"");
    let err = baton_vmm::run(&VmmArgs {
        vsock: Some(format!("3,{}", busy.display())),
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("--vsock (vsock)"), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(!guest.console().exists(), "nothing left behind");
    assert_eq!(std::fs::read(&busy).unwrap(), b"", "the file is left alone");
}
