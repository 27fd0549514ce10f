//! Two VMMs' network devices exchange frames through tap devices on a bridge, in a network
//! namespace the test makes (nothing leaves it). Each tiny guest sets up its receive and
//! transmit queues as a driver does, reads its MAC address from the device, broadcasts a
//! frame from it until a frame from the other guest arrives (skipping any other frame),
//! and prints who it heard.
//! Needs /dev/kvm and root, as tests/tiny_guests.rs explains.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_network::{NetNs, RouteSocket, create_tap};
use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel, kvm_available, spawn_vm};

const NET: u32 = 0xd000_0000;
/// Queue memory: the receive queue's descriptors at BASE, its available ring at +0x1000,
/// its used ring at +0x2000; the transmit queue's at +0x10000; the receive buffer at
/// +0x20000, the frame to send at +0x30000.
const BASE: u32 = 0x20_0000;
/// The frame's offset from BASE, after the 12-byte virtio-net header.
const FRAME: u32 = 0x3_000c;

fn net_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_dx(0x3f8)
        .mov_ebx(NET)
        .mov_edi(BASE)
        .reg_write(0x070, 1)
        .reg_write(0x070, 3)
        .reg_write(0x024, 1)
        .reg_write(0x020, 1) // VIRTIO_F_VERSION_1
        .reg_write(0x024, 0)
        .reg_write(0x020, 1 << 5) // VIRTIO_NET_F_MAC
        .reg_write(0x070, 0xb);
    for (queue, base) in [(0u32, BASE), (1, BASE + 0x1_0000)] {
        a.reg_write(0x030, queue)
            .reg_write(0x038, 8)
            .reg_write(0x080, base)
            .reg_write(0x090, base + 0x1000)
            .reg_write(0x0a0, base + 0x2000)
            .reg_write(0x044, 1);
    }
    a.reg_write(0x070, 0xf)
        // "mac X\n", X the last byte of the MAC in the configuration space.
        .out_al(b'm')
        .out_al(b'a')
        .out_al(b'c')
        .out_al(b' ')
        .reg_op(&[0x8b], 0x83, 0x104) // mov eax, [rbx + 0x104]: mac[4], mac[5]
        .bytes(&[0xc1, 0xe8, 0x08, 0xee]) // shr eax, 8; out dx, al
        .out_al(b'\n')
        // The frame: broadcast, from our MAC, EtherType 0x88b5, payload "hi".
        .mem_write(FRAME, 0xffff_ffff)
        .reg_op(&[0x8b], 0x83, 0x100) // mov eax, [rbx + 0x100]: mac[0..4]
        .bytes(&[0xc1, 0xe0, 0x10, 0x0d, 0xff, 0xff, 0, 0]) // shl eax, 16; or eax, 0xffff
        .mem_op(&[0x89], 0x87, FRAME + 4) // mov [rdi + FRAME + 4], eax
        .reg_op(&[0x8b], 0x83, 0x100)
        .bytes(&[0xc1, 0xe8, 0x10]) // shr eax, 16: mac[2], mac[3]
        .reg_op(&[0x8b], 0x8b, 0x104) // mov ecx, [rbx + 0x104]: mac[4], mac[5]
        .bytes(&[0xc1, 0xe1, 0x10, 0x09, 0xc8]) // shl ecx, 16; or eax, ecx
        .mem_op(&[0x89], 0x87, FRAME + 8)
        .mem_write(FRAME + 12, u32::from_le_bytes([0x88, 0xb5, b'h', b'i']))
        // Transmit descriptor 0: header and a 60-byte frame.
        .mem_write(0x1_0000, BASE + 0x3_0000)
        .mem_write(0x1_0008, 12 + 60)
        // Receive descriptor 0: 2 KiB, device-writable; offered and notified.
        .mem_write(0x0, BASE + 0x2_0000)
        .mem_write(0x8, 2048)
        .mem_write(0xc, 2)
        .mem_write(0x1000, 0x0001_0000)
        .reg_write(0x050, 0)
        .bytes(&[0x31, 0xf6]) // xor esi, esi: transmit available index
        .bytes(&[0x45, 0x31, 0xc9]) // xor r9d, r9d: receive used index seen
        .bytes(&[0x41, 0xba, 1, 0, 0, 0]) // mov r10d, 1: receive available index
        .label("send")
        // The device sends on its notification thread: wait (bounded) until it has used
        // every frame offered so far, so the available ring never runs a queue ahead.
        .bytes(&[0xb9])
        .bytes(&50_000_000u32.to_le_bytes()) // mov ecx, 50000000
        .label("sent")
        .bytes(&[0xf3, 0x90]) // pause
        .mem_op(&[0x0f, 0xb7], 0x87, 0x1_2002) // movzx eax, word [rdi + 0x12002]: tx used idx
        .bytes(&[0x39, 0xf0]) // cmp eax, esi
        .rel(&[0xe0], "sent", 1) // loopne sent
        .bytes(&[0xff, 0xc6]) // inc esi
        .bytes(&[0x66, 0x89, 0xb7])
        .bytes(&(0x1_1002u32).to_le_bytes()) // mov [rdi + 0x11002], si
        .reg_write(0x050, 1)
        .bytes(&[0xb9])
        .bytes(&200_000u32.to_le_bytes()) // mov ecx, 200000
        .label("wait")
        .mem_op(&[0x0f, 0xb7], 0x87, 0x2002) // movzx eax, word [rdi + 0x2002]
        .bytes(&[0x44, 0x39, 0xc8]) // cmp eax, r9d
        .rel(&[0x0f, 0x85], "arrived", 4) // jne arrived
        .bytes(&[0xf3, 0x90]) // pause
        .rel(&[0xe2], "wait", 1) // loop wait
        .rel(&[0xe9], "send", 4) // jmp send
        // A frame arrived: ours if its EtherType is 0x88b5; anything else (the bridge's
        // own IGMP report, say) is skipped and the buffer offered again.
        .label("arrived")
        .bytes(&[0x41, 0xff, 0xc1]) // inc r9d
        .mem_op(&[0x0f, 0xb7], 0x87, 0x2_0000 + 12 + 12) // movzx eax, word [EtherType]
        .bytes(&[0x3d, 0x88, 0xb5, 0, 0]) // cmp eax, 0xb588
        .rel(&[0x0f, 0x84], "got", 4) // je got
        .bytes(&[0x41, 0xff, 0xc2]) // inc r10d
        .bytes(&[0x66, 0x44, 0x89, 0x97])
        .bytes(&0x1002u32.to_le_bytes()) // mov [rdi + 0x1002], r10w
        .reg_write(0x050, 0)
        .rel(&[0xe9], "wait", 4) // jmp wait
        .label("got")
        // Once more, for a peer whose receive buffer came after our last frame.
        .bytes(&[0xff, 0xc6])
        .bytes(&[0x66, 0x89, 0xb7])
        .bytes(&(0x1_1002u32).to_le_bytes())
        .reg_write(0x050, 1)
        // "got X hi\n": the sender's last MAC byte and the payload.
        .out_al(b'g')
        .out_al(b'o')
        .out_al(b't')
        .out_al(b' ')
        .mem_op(&[0x0f, 0xb6], 0x87, 0x2_0000 + 12 + 11) // movzx eax, byte [source MAC 5]
        .bytes(&[0xee])
        .out_al(b' ')
        .mem_op(&[0x0f, 0xb6], 0x87, 0x2_0000 + 12 + 14)
        .bytes(&[0xee])
        .mem_op(&[0x0f, 0xb6], 0x87, 0x2_0000 + 12 + 15)
        .bytes(&[0xee])
        .out_al(b'\n')
        .mov_dx(0x600)
        .out_al(0x34)
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    a.finish()
}

/// A pinned network namespace with bridge br0 and taps `tap-a`, `tap-b` on it, IPv6 off
/// (fewer frames of the kernel's own); removed on drop.
struct TestNetwork {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestNetwork {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net");
        let ns = NetNs::create_pinned(&path).unwrap();
        ns.run(|| {
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")
                    .unwrap();
            }
            let mut socket = RouteSocket::open().unwrap();
            socket.create_bridge("br0").unwrap();
            let bridge = socket.link("br0").unwrap().unwrap();
            socket.set_link(bridge.index, None, None).unwrap();
            for tap in ["tap-a", "tap-b"] {
                create_tap(tap).unwrap();
                let link = socket.link(tap).unwrap().unwrap();
                socket
                    .set_link(link.index, Some(bridge.index), None)
                    .unwrap();
            }
        })
        .unwrap();
        Self { _dir: dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(error) = NetNs::unpin(&self.path) {
            eprintln!("cannot remove the test network namespace: {error}");
        }
    }
}

#[test]
fn two_guests_exchange_frames_through_taps_on_a_bridge() {
    if !kvm_available("two_guests_exchange_frames_through_taps_on_a_bridge") {
        return;
    }
    let network = TestNetwork::new();
    let kernel_bytes = elf_kernel(&net_program());
    let mut ends = Vec::new();
    let guests: Vec<Guest> = (0..2).map(|_| Guest::new()).collect();
    for (guest, (tap, mac)) in guests.iter().zip([
        ("tap-a", "02:00:00:00:00:41"),
        ("tap-b", "02:00:00:00:00:42"),
    ]) {
        let args = VmmArgs {
            net: vec![format!(
                "{tap},mac={mac},netns={}",
                network.path().display()
            )],
            ..guest.args(guest.file("vmlinux", &kernel_bytes))
        };
        ends.push((tap, spawn_vm(args)));
    }
    for (tap, end) in ends {
        let exit = end
            .recv_timeout(Duration::from_secs(60))
            .expect("both guests end within a minute");
        assert_eq!(exit, Ok(VmExit::PowerOff), "{tap}");
    }
    assert_eq!(guests[0].serial(), "mac A\ngot B hi\n");
    assert_eq!(guests[1].serial(), "mac B\ngot A hi\n");
}

#[test]
fn a_tap_that_cannot_be_opened_is_refused_naming_the_flag() {
    if !kvm_available("a_tap_that_cannot_be_opened_is_refused_naming_the_flag") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&net_program()));
    let not_a_namespace = guest.file("not-a-netns", b"");
    let err = baton_vmm::run(&VmmArgs {
        net: vec![format!("tap-x,netns={}", not_a_namespace.display())],
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--net tap-x: cannot open the tap device"),
        "{err}"
    );
    assert!(!guest.console().exists(), "nothing left behind");
}
