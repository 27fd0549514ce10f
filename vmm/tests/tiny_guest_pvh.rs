//! The PVH entry through the whole VMM: an ELF kernel whose note offers a 32-bit PVH entry
//! is entered there, in 32-bit protected mode without paging, with `ebx` pointing at the
//! start info. The guest program (32-bit code the test assembles) checks the start info's
//! magic, prints CR0's paging bit (0: not the long mode the 64-bit entry runs in), its module
//! count, memory map entry count, the command line and the
//! initramfs module's bytes, and powers off. The same kernel with `--no-pvh` runs its 64-bit
//! entry instead. Needs /dev/kvm, as tests/tiny_guests.rs explains.

mod common;

use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel_with_pvh_entry, kvm_available, run};

/// A 64-bit entry that prints "64\n" and powers off, then the 32-bit PVH program; returns
/// the code and the PVH program's offset in it.
fn kernel_code() -> (Vec<u8>, u32) {
    let mut long_mode = Asm::default();
    long_mode
        .mov_dx(0x3f8)
        .out_al(b'6')
        .out_al(b'4')
        .out_al(b'\n')
        .mov_dx(0x600)
        .out_al(0x34)
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    let mut code = long_mode.finish();
    let pvh_offset = code.len() as u32;

    // 32-bit code from here: no REX prefixes; `mov edx` and `mov esi` take 32-bit operands.
    let mut pvh = Asm::default();
    pvh.bytes(&[0xba, 0xf8, 0x03, 0, 0]) // mov edx, 0x3f8
        .bytes(&[0x81, 0x3b]) // cmp dword [ebx], XEN_HVM_START_MAGIC_VALUE
        .bytes(&0x336e_c578u32.to_le_bytes())
        .rel(&[0x75], "bad_magic", 1) // jne bad_magic
        .out_al(b'P')
        .out_al(b' ')
        .bytes(&[0x0f, 0x20, 0xc0]) // mov eax, cr0
        .bytes(&[0xc1, 0xe8, 0x1f]) // shr eax, 31: paging (1 in long mode)
        .bytes(&[0x04, b'0', 0xee]) // add al, '0'; out dx, al
        .out_al(b' ')
        .bytes(&[0x8b, 0x43, 0x0c]) // mov eax, [ebx + 12]: nr_modules
        .bytes(&[0x04, b'0', 0xee]) // add al, '0'; out dx, al
        .out_al(b' ')
        .bytes(&[0x8b, 0x43, 0x30]) // mov eax, [ebx + 48]: memmap_entries
        .bytes(&[0x04, b'0', 0xee])
        .out_al(b' ')
        .bytes(&[0x8b, 0x73, 0x18]) // mov esi, [ebx + 24]: cmdline_paddr
        .rel(&[0xe8], "puts", 4) // call puts
        .out_al(b'\n')
        .bytes(&[0x8b, 0x7b, 0x10]) // mov edi, [ebx + 16]: modlist_paddr
        .bytes(&[0x8b, 0x37]) // mov esi, [edi]: the module's paddr
        .bytes(&[0x8b, 0x4f, 0x08]) // mov ecx, [edi + 8]: its size
        .label("echo")
        .bytes(&[0xac, 0xee]) // lodsb; out dx, al
        .rel(&[0xe2], "echo", 1) // loop echo
        .out_al(b'\n')
        .bytes(&[0xba, 0x00, 0x06, 0, 0]) // mov edx, 0x600
        .out_al(0x34) // S5: power off
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1)
        .label("bad_magic")
        .out_al(b'?')
        .rel(&[0xeb], "halt", 1)
        .label("puts")
        .bytes(&[0xac, 0x84, 0xc0]) // lodsb; test al, al
        .rel(&[0x74], "done", 1) // jz done
        .bytes(&[0xee]) // out dx, al
        .rel(&[0xeb], "puts", 1)
        .label("done")
        .bytes(&[0xc3]); // ret
    code.extend_from_slice(&pvh.finish());
    (code, pvh_offset)
}

#[test]
fn a_kernel_offering_pvh_is_entered_there_with_its_start_info() {
    if !kvm_available("a_kernel_offering_pvh_is_entered_there_with_its_start_info") {
        return;
    }
    let guest = Guest::new();
    let (code, pvh_offset) = kernel_code();
    let kernel = guest.file("vmlinux", &elf_kernel_with_pvh_entry(&code, pvh_offset));
    let initrd = guest.file("initrd.cpio", b"module bytes");
    let args = VmmArgs {
        cmdline: Some("console=ttyS0 baton.test=pvh".into()),
        initrd: vec![initrd],
        ..guest.args(kernel.clone())
    };
    let (exit, elapsed) = run(&args);
    eprintln!("PVH tiny guest: start to exit {elapsed:?}");
    assert_eq!(exit.unwrap(), VmExit::PowerOff);
    assert_eq!(
        guest.serial(),
        "P 0 1 3 console=ttyS0 baton.test=pvh virtio_mmio.device=4K@0xd0000000:5\nmodule bytes\n",
        "magic, paging off, one module, the e820 map's 3 entries, the command line, the initramfs"
    );

    // --no-pvh: the 64-bit entry of the same kernel.
    std::fs::remove_file(guest.console()).unwrap();
    let (exit, _) = run(&VmmArgs {
        no_pvh: true,
        ..guest.args(kernel)
    });
    assert_eq!(exit.unwrap(), VmExit::PowerOff);
    assert_eq!(guest.serial(), "64\n");
}
