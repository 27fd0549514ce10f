//! A tiny guest drives the VMM's virtio-mmio devices as a driver does: it probes each
//! device's registers, negotiates features, sets up a split queue in its memory and submits
//! virtio-blk requests through it; the test reads what the guest wrote to the disk image and
//! what it printed. Needs /dev/kvm, as tests/tiny_guests.rs explains.

mod common;

use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel, kvm_available, run};

const BLOCK: u32 = 0xd000_0000;
const RNG: u32 = 0xd000_1000;
/// The guest's queue: descriptors at QUEUE, the available ring at +0x1000, the used ring at
/// +0x2000, the request header at +0x3000, the status byte at +0x3100, the data to write at
/// +0x4000 and the buffer read into at +0x5000.
const QUEUE: u32 = 0x20_0000;

/// Instructions the virtio program needs, on top of the common assembler.
trait VirtioAsm {
    /// `mov eax, [rbx + disp32]`: a device register read.
    fn reg_read(&mut self, offset: u32) -> &mut Self;
    /// Writes al as a digit, eax's four bytes as text, al or ax in hex.
    fn put_digit(&mut self) -> &mut Self;
    fn put_text4(&mut self) -> &mut Self;
    fn put_hex8(&mut self) -> &mut Self;
    fn put_hex16(&mut self) -> &mut Self;
    /// Waits (a bounded spin) for the used ring's index to reach `index`: the device runs
    /// the queue on its notification thread, not during the QueueNotify write. `label` names
    /// the loop.
    fn wait_used_index(&mut self, label: &'static str, index: u32) -> &mut Self;
}

impl VirtioAsm for Asm {
    fn reg_read(&mut self, offset: u32) -> &mut Self {
        self.reg_op(&[0x8b], 0x83, offset)
    }
    fn put_digit(&mut self) -> &mut Self {
        self.bytes(&[0x04, b'0', 0xee]) // add al, '0'; out dx, al
    }
    fn put_text4(&mut self) -> &mut Self {
        for _ in 0..3 {
            self.bytes(&[0xee, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
        }
        self.bytes(&[0xee])
    }
    fn put_hex8(&mut self) -> &mut Self {
        self.rel(&[0xe8], "hex8", 4) // call hex8
    }
    fn put_hex16(&mut self) -> &mut Self {
        self.bytes(&[0x89, 0xc5, 0xc1, 0xe8, 0x08]) // mov ebp, eax; shr eax, 8
            .put_hex8()
            .bytes(&[0x89, 0xe8]) // mov eax, ebp
            .put_hex8()
    }
    fn wait_used_index(&mut self, label: &'static str, index: u32) -> &mut Self {
        self.bytes(&[0xb9])
            .bytes(&50_000_000u32.to_le_bytes()) // mov ecx, 50000000
            .label(label)
            .bytes(&[0xf3, 0x90]) // pause
            .mem_op(&[0x0f, 0xb7], 0x87, 0x2002) // movzx eax, word [rdi + 0x2002]
            .bytes(&[0x3d])
            .bytes(&index.to_le_bytes()) // cmp eax, index
            .rel(&[0xe0], label, 1) // loopne label
    }
}

/// Probes the block device and the entropy device, then writes "guestblk" and zeros to
/// sector 1 and reads sector 0 back through the block device's queue, printing each
/// request's status, the used index and the used length; then powers off.
fn virtio_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_dx(0x3f8);
    for base in [BLOCK, RNG] {
        a.mov_ebx(base)
            .reg_read(0x000) // MagicValue
            .put_text4()
            .out_al(b' ')
            .reg_read(0x004) // Version
            .put_digit()
            .out_al(b' ')
            .reg_read(0x008) // DeviceID
            .put_digit()
            .out_al(b'\n');
    }
    a.mov_ebx(BLOCK)
        .reg_write(0x070, 1) // Status: ACKNOWLEDGE
        .reg_write(0x070, 3) // | DRIVER
        .reg_write(0x024, 1) // DriverFeaturesSel 1
        .reg_write(0x020, 1) // VIRTIO_F_VERSION_1 (bit 32)
        .reg_write(0x024, 0)
        .reg_write(0x020, 0)
        .reg_write(0x070, 0xb) // | FEATURES_OK
        .reg_write(0x030, 0) // QueueSel
        .reg_write(0x038, 8) // QueueNum
        .reg_write(0x080, QUEUE)
        .reg_write(0x084, 0)
        .reg_write(0x090, QUEUE + 0x1000)
        .reg_write(0x094, 0)
        .reg_write(0x0a0, QUEUE + 0x2000)
        .reg_write(0x0a4, 0)
        .reg_write(0x044, 1) // QueueReady
        .reg_write(0x070, 0xf) // | DRIVER_OK
        .reg_read(0x070)
        .put_hex8()
        .out_al(b' ');
    // Request 1: OUT (write) of sector 1 from QUEUE + 0x4000.
    a.mov_edi(QUEUE)
        .mem_write(0x00, QUEUE + 0x3000) // desc 0: the header, 16 bytes, NEXT -> 1
        .mem_write(0x04, 0)
        .mem_write(0x08, 16)
        .mem_write(0x0c, 0x0001_0001)
        .mem_write(0x10, QUEUE + 0x4000) // desc 1: the data, 512 bytes, NEXT -> 2
        .mem_write(0x14, 0)
        .mem_write(0x18, 512)
        .mem_write(0x1c, 0x0002_0001)
        .mem_write(0x20, QUEUE + 0x3100) // desc 2: the status byte, WRITE
        .mem_write(0x24, 0)
        .mem_write(0x28, 1)
        .mem_write(0x2c, 0x0000_0002)
        .mem_write(0x3000, 1) // type OUT
        .mem_write(0x3004, 0)
        .mem_write(0x3008, 1) // sector 1
        .mem_write(0x300c, 0)
        .mem_write(0x3100, 0xff)
        .bytes(&[0x48, 0xb8])
        .bytes(b"guestblk") // mov rax, "guestblk"
        .bytes(&[0x48, 0x89, 0x87])
        .bytes(&0x4000u32.to_le_bytes()) // mov [rdi + 0x4000], rax
        .mem_write(0x1004, 0) // avail ring[0] = 0, ring[1] = 0
        .mem_write(0x1000, 0x0001_0000) // avail flags 0, idx 1
        .reg_write(0x050, 0) // QueueNotify
        .wait_used_index("first", 1)
        .bytes(&[0x0f, 0xb6, 0x87])
        .bytes(&0x3100u32.to_le_bytes()) // movzx eax, byte [rdi + 0x3100]
        .put_hex8()
        .out_al(b' ')
        .bytes(&[0x0f, 0xb7, 0x87])
        .bytes(&0x2002u32.to_le_bytes()) // movzx eax, word [rdi + 0x2002]: used idx
        .put_hex16()
        .out_al(b' ')
        .bytes(&[0x8b, 0x87])
        .bytes(&0x2008u32.to_le_bytes()) // mov eax, [rdi + 0x2008]: used[0].len
        .put_hex16()
        .out_al(b'\n');
    // Request 2: IN (read) of sector 0 into QUEUE + 0x5000.
    a.mem_write(0x3000, 0) // type IN
        .mem_write(0x3008, 0) // sector 0
        .mem_write(0x10, QUEUE + 0x5000)
        .mem_write(0x1c, 0x0002_0003) // NEXT | WRITE -> 2
        .mem_write(0x3100, 0xff)
        .mem_write(0x1000, 0x0002_0000) // avail idx 2
        .reg_write(0x050, 0)
        .wait_used_index("second", 2)
        .bytes(&[0x0f, 0xb6, 0x87])
        .bytes(&0x3100u32.to_le_bytes())
        .put_hex8()
        .out_al(b' ')
        .bytes(&[0x0f, 0xb7, 0x87])
        .bytes(&0x2002u32.to_le_bytes())
        .put_hex16()
        .out_al(b' ')
        .bytes(&[0x8b, 0x87])
        .bytes(&0x2010u32.to_le_bytes()) // used[1].len
        .put_hex16()
        .out_al(b' ')
        .bytes(&[0x48, 0x8d, 0xb7])
        .bytes(&0x5000u32.to_le_bytes()) // lea rsi, [rdi + 0x5000]
        .bytes(&[0xb9, 8, 0, 0, 0]) // mov ecx, 8
        .label("echo")
        .bytes(&[0xac, 0xee]) // lodsb; out dx, al
        .rel(&[0xe2], "echo", 1) // loop echo
        .out_al(b'\n')
        .mov_dx(0x600)
        .out_al(0x34) // poweroff
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    // hex8: al as two hex digits (clobbers ecx).
    a.label("hex8")
        .bytes(&[0x89, 0xc1, 0xc0, 0xe8, 0x04]) // mov ecx, eax; shr al, 4
        .rel(&[0xe8], "nibble", 4)
        .bytes(&[0x89, 0xc8, 0x24, 0x0f]) // mov eax, ecx; and al, 0x0f
        .rel(&[0xe8], "nibble", 4)
        .bytes(&[0xc3])
        .label("nibble")
        .bytes(&[0x24, 0x0f, 0x3c, 0x0a]) // and al, 0x0f; cmp al, 10
        .rel(&[0x72], "digit", 1) // jb digit
        .bytes(&[0x04, 0x07]) // add al, 7
        .label("digit")
        .bytes(&[0x04, b'0', 0xee, 0xc3]); // add al, '0'; out dx, al; ret
    a.finish()
}

#[test]
fn guest_probes_virtio_devices_and_writes_and_reads_a_disk() {
    if !kvm_available("guest_probes_virtio_devices_and_writes_and_reads_a_disk") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&virtio_program()));
    let mut image = vec![0x5au8; 4096];
    image[..8].copy_from_slice(b"hostdisk");
    let disk = guest.file("disk.raw", &image);
    let args = VmmArgs {
        disk: vec![disk.display().to_string()],
        ..guest.args(kernel)
    };
    let (exit, elapsed) = run(&args);
    let exit = exit.unwrap();
    eprintln!("virtio tiny guest: start to exit {elapsed:?}");
    assert_eq!(
        guest.serial(),
        "virt 2 2\nvirt 2 4\n0F 00 0001 0001\n00 0002 0201 hostdisk\n",
        "magic, version and device ID of the block and entropy devices; DRIVER_OK; \
         the write's status, used index and length; the read's, and what it read"
    );
    assert_eq!(exit, VmExit::PowerOff);
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[512..520],
        b"guestblk",
        "sector 1 holds what the guest wrote"
    );
    assert!(after[520..1024].iter().all(|&b| b == 0));
    assert_eq!(&after[..512], &image[..512], "sector 0 untouched");
    assert_eq!(&after[1024..], &image[1024..], "sectors 2-7 untouched");
}

#[test]
fn a_read_only_disk_refuses_the_guests_write() {
    if !kvm_available("a_read_only_disk_refuses_the_guests_write") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&virtio_program()));
    let mut image = vec![0u8; 4096];
    image[..8].copy_from_slice(b"readonly");
    let disk = guest.file("disk.raw", &image);
    let args = VmmArgs {
        disk: vec![format!("{},ro", disk.display())],
        ..guest.args(kernel)
    };
    let (exit, _) = run(&args);
    assert_eq!(exit.unwrap(), VmExit::PowerOff);
    assert_eq!(
        guest.serial().lines().skip(2).collect::<Vec<_>>(),
        ["0F 01 0001 0001", "00 0002 0201 readonly"],
        "the write ends with VIRTIO_BLK_S_IOERR, the read works"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), image);
}

#[test]
fn bad_disks_are_refused_before_the_vm_starts() {
    if !kvm_available("bad_disks_are_refused_before_the_vm_starts") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&virtio_program()));
    let missing = guest.file("x", b"").with_file_name("missing.raw");
    let err = baton_vmm::run(&VmmArgs {
        disk: vec![missing.display().to_string()],
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "--disk (drives) {}: cannot be opened read-write",
            missing.display()
        )),
        "{err}"
    );
    assert!(!guest.console().exists(), "nothing left behind");
    assert!(!missing.exists());
}
