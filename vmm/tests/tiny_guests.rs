//! Tiny guests through the whole VMM: programs assembled here are wrapped as an ELF vmlinux
//! or a bzImage, booted through `baton_vmm::run` (flags, kernel loader, zero page, page
//! tables, long-mode entry, CPUID, devices) and checked by what they write to the serial
//! console and how they end the VM. They need /dev/kvm (as root); without it they fail
//! naming the cause, unless BATON_VMM_TESTS_WITHOUT_KVM=skip, which makes them print
//! "SKIPPED" with the reason instead.

mod common;

use std::time::Instant;

use baton_vmm::{KvmKind, ResetCause, VmExit, VmmArgs};
use common::{Asm, Guest, bzimage_kernel, elf_kernel, kvm_available, run};

/// Zero page offsets (Linux boot protocol).
const E820_ENTRIES: u32 = 0x1e8;
const RAMDISK_IMAGE: u32 = 0x218;
const RAMDISK_SIZE: u32 = 0x21c;
const CMD_LINE_PTR: u32 = 0x228;

/// How the program ends the VM.
#[derive(Clone, Copy)]
enum Ending {
    I8042Reset,
    PowerOff,
    TripleFault,
}

/// The guest program, entered at the 64-bit entry with rsi = zero page. It writes
/// "hello\n", then "<e820 entries> <CPUID.1 logical processors> <cmdline>\n", then, when
/// `echo_initrd`, the initramfs bytes and "\n", then ends as `ending` says.
fn program(echo_initrd: bool, ending: Ending) -> Vec<u8> {
    let mut a = Asm::default();
    a.bytes(&[0x49, 0x89, 0xf4]) // mov r12, rsi
        .mov_dx(0x3f8)
        .rel(&[0x48, 0x8d, 0x35], "hello", 4) // lea rsi, [rip + hello]
        .rel(&[0xe8], "puts", 4) // call puts
        .r12_disp(&[0x0f, 0xb6], 0x84, E820_ENTRIES) // movzx eax, byte [r12 + e820_entries]
        .bytes(&[0x04, b'0', 0xee]) // add al, '0'; out dx, al
        .out_al(b' ')
        .bytes(&[0xb8, 1, 0, 0, 0, 0x0f, 0xa2]) // mov eax, 1; cpuid
        .bytes(&[0x89, 0xd8, 0xc1, 0xe8, 0x10]) // mov eax, ebx; shr eax, 16
        .bytes(&[0x04, b'0']) // add al, '0'
        .mov_dx(0x3f8)
        .bytes(&[0xee])
        .out_al(b' ')
        .r12_disp(&[0x8b], 0xb4, CMD_LINE_PTR) // mov esi, [r12 + cmd_line_ptr]
        .rel(&[0xe8], "puts", 4)
        .out_al(b'\n');
    if echo_initrd {
        a.r12_disp(&[0x8b], 0xb4, RAMDISK_IMAGE) // mov esi, [r12 + ramdisk_image]
            .r12_disp(&[0x8b], 0x8c, RAMDISK_SIZE) // mov ecx, [r12 + ramdisk_size]
            .rel(&[0xe3], "echoed", 1) // jecxz echoed
            .label("echo")
            .bytes(&[0xac, 0xee]) // lodsb; out dx, al
            .rel(&[0xe2], "echo", 1) // loop echo
            .label("echoed")
            .out_al(b'\n');
    }
    match ending {
        Ending::I8042Reset => a.bytes(&[0xb0, 0xfe, 0xe6, 0x64]), // mov al, 0xfe; out 0x64, al
        Ending::PowerOff => a.mov_dx(0x600).out_al(0x34),
        Ending::TripleFault => a.bytes(&[0xcc]), // int3 with an empty IDT
    };
    a.label("halt")
        .bytes(&[0xf4]) // hlt
        .rel(&[0xeb], "halt", 1)
        .label("puts")
        .bytes(&[0xac, 0x84, 0xc0]) // lodsb; test al, al
        .rel(&[0x74], "done", 1) // jz done
        .bytes(&[0xee]) // out dx, al
        .rel(&[0xeb], "puts", 1)
        .label("done")
        .bytes(&[0xc3]) // ret
        .label("hello")
        .bytes(b"hello\n\0");
    a.finish()
}

#[test]
fn elf_guest_reads_boot_params_and_resets_through_the_i8042() {
    if !kvm_available("elf_guest_reads_boot_params_and_resets_through_the_i8042") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&program(false, Ending::I8042Reset)));
    let args = VmmArgs {
        cmdline: Some("console=ttyS0 baton.test=elf".into()),
        ..guest.args(kernel)
    };
    let (exit, elapsed) = run(&args);
    let exit = exit.unwrap();
    eprintln!("ELF tiny guest: start to exit {elapsed:?}");
    assert_eq!(
        guest.serial(),
        "hello\n3 1 console=ttyS0 baton.test=elf virtio_mmio.device=4K@0xd0000000:5\n",
        "e820 entries, CPUID logical processors, command line with the entropy device announced"
    );
    assert_eq!(exit, VmExit::Reset(ResetCause::I8042));
    assert_eq!(exit.exit_code(), 3);
}

#[test]
fn bzimage_guest_reads_concatenated_initrds_and_powers_off() {
    if !kvm_available("bzimage_guest_reads_concatenated_initrds_and_powers_off") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file(
        "bzImage",
        &bzimage_kernel(&program(true, Ending::PowerOff), 4 << 20),
    );
    let a = guest.file("a.cpio", b"abc");
    let b = guest.file("b.cpio", b"defg");
    let args = VmmArgs {
        initrd: vec![a, b],
        memory: Some(64),
        ..guest.args(kernel)
    };
    let (exit, elapsed) = run(&args);
    let exit = exit.unwrap();
    eprintln!("bzImage tiny guest: start to exit {elapsed:?}");
    assert_eq!(
        guest.serial(),
        "hello\n3 1 console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5\nabc\0defg\n",
        "default command line; parts padded to 4 bytes"
    );
    assert_eq!(exit, VmExit::PowerOff);
    assert_eq!(exit.exit_code(), 0);
}

#[test]
fn one_two_and_four_vcpus_start_and_stop() {
    if !kvm_available("one_two_and_four_vcpus_start_and_stop") {
        return;
    }
    for cpus in [1u32, 2, 4] {
        let guest = Guest::new();
        let kernel = guest.file("vmlinux", &elf_kernel(&program(false, Ending::I8042Reset)));
        let args = VmmArgs {
            cpus: Some(cpus),
            cmdline: Some("x".into()),
            ..guest.args(kernel)
        };
        let started = Instant::now();
        let outcome =
            baton_vmm::run_config(&baton_vmm::VmConfig::from_args(&args).unwrap(), started)
                .unwrap();
        eprintln!(
            "{cpus} vCPUs: first entry of vCPU 0 after {:?}, all threads joined after {:?}",
            outcome.first_entry,
            started.elapsed()
        );
        assert_eq!(
            guest.serial(),
            format!("hello\n3 {cpus} x virtio_mmio.device=4K@0xd0000000:5\n"),
            "CPUID leaf 1 counts {cpus} logical processors"
        );
        assert_eq!(outcome.exit, VmExit::Reset(ResetCause::I8042));
        assert!(outcome.first_entry.is_some());
    }
}

/// On hardware KVM a triple fault is KVM_EXIT_SHUTDOWN, which the VMM reports as a reset
/// (exit code 3). PVM does not deliver the faults through the guest's IDT: KVM_RUN ends with
/// an internal error at the faulting instruction, which the VMM reports as a vCPU fault
/// (exit code 4). The test asserts whichever this host's KVM kind does, and says which.
#[test]
fn triple_fault_ends_the_vm() {
    if !kvm_available("triple_fault_ends_the_vm") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&program(false, Ending::TripleFault)));
    let (exit, _) = run(&guest.args(kernel));
    let exit = exit.unwrap();
    assert!(guest.serial().starts_with("hello\n"));
    let kind = baton_vmm::check::HostFacts::read().kind();
    if kind == KvmKind::Pvm {
        eprintln!(
            "triple_fault_ends_the_vm: this host's KVM is PVM, which ends KVM_RUN with an \
             internal error instead of KVM_EXIT_SHUTDOWN; asserting that (vCPU fault, exit \
             code 4); the triple fault -> reset (exit code 3) mapping needs hardware KVM"
        );
        match &exit {
            VmExit::VcpuFault { vcpu: 0, reason } => {
                assert!(
                    reason.starts_with("KVM internal error at rip 0x10"),
                    "{reason}"
                )
            }
            other => panic!("expected a vCPU fault on PVM, got {other:?}"),
        }
        assert_eq!(exit.exit_code(), 4);
    } else {
        assert_eq!(exit, VmExit::Reset(ResetCause::TripleFault));
        assert_eq!(exit.exit_code(), 3);
    }
}

#[test]
fn bad_kernels_are_refused_naming_the_flag_and_leave_nothing_behind() {
    if !kvm_available("bad_kernels_are_refused_naming_the_flag_and_leave_nothing_behind") {
        return;
    }
    let guest = Guest::new();
    let junk = guest.file("junk", &[0x5a; 4096]);
    let err = baton_vmm::run(&guest.args(junk)).unwrap_err();
    assert!(
        err.to_string().starts_with("--kernel") && err.to_string().contains("not a kernel"),
        "{err}"
    );
    assert!(!guest.console().exists(), "no console file left behind");

    let huge = guest.file("bzImage", &bzimage_kernel(&[0xf4], 100 << 20));
    let args = VmmArgs {
        memory: Some(64),
        ..guest.args(huge)
    };
    let err = baton_vmm::run(&args).unwrap_err();
    assert!(
        err.to_string().starts_with("--kernel")
            && err.to_string().contains("--memory gives 64 MiB"),
        "{err}"
    );

    let kernel = guest.file("vmlinux", &elf_kernel(&[0xf4]));
    let initrd = guest.file("big.cpio", &vec![0u8; 64 << 20]);
    let args = VmmArgs {
        memory: Some(64),
        initrd: vec![initrd],
        ..guest.args(kernel)
    };
    let err = baton_vmm::run(&args).unwrap_err();
    assert!(
        err.to_string().starts_with("--initrd") && err.to_string().contains("raise --memory"),
        "{err}"
    );
    assert!(!guest.console().exists(), "no console file left behind");
}

#[test]
fn check_reports_this_hosts_kvm_and_runs_the_tiny_guest() {
    if !kvm_available("check_reports_this_hosts_kvm_and_runs_the_tiny_guest") {
        return;
    }
    let report = baton_vmm::check();
    eprint!("{report}");
    let run = report.tiny_guest.as_ref().expect("the tiny guest runs");
    assert_eq!(run.serial, "baton\n");
    assert_eq!(run.exit, VmExit::Reset(ResetCause::I8042));
    assert_eq!(report.kind, report.facts.kind());
    match report.kind {
        KvmKind::Vmx | KvmKind::Svm => assert!(report.linux_usable),
        KvmKind::Pvm | KvmKind::Unknown => {
            assert!(!report.linux_usable);
            assert_eq!(report.exit_code(), 1);
        }
        KvmKind::Absent => unreachable!("/dev/kvm was opened"),
    }
}

/// Writes `n` bytes from rsi to COM1 (clobbers rcx, al).
fn put_bytes(a: &mut Asm, label: &'static str, n: u8) {
    a.bytes(&[0xb9, n, 0, 0, 0]) // mov ecx, n
        .label(label)
        .bytes(&[0xac, 0xee]) // lodsb; out dx, al
        .rel(&[0xe2], label, 1); // loop
}

/// Follows the zero page's `acpi_rsdp_addr` to the RSDP, the XSDT, its two tables and the
/// FADT's DSDT, then the MP floating pointer in the last KiB of base memory to its
/// configuration table, writing each signature, then powers off through the FADT's port.
fn acpi_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.bytes(&[0x49, 0x89, 0xf4]) // mov r12, rsi (zero page)
        .mov_dx(0x3f8)
        .bytes(&[0x49, 0x8b, 0x9c, 0x24, 0x70, 0, 0, 0]) // mov rbx, [r12 + 0x70]
        .bytes(&[0x48, 0x89, 0xde]); // mov rsi, rbx
    put_bytes(&mut a, "rsdp", 8);
    a.out_al(b' ')
        .bytes(&[0x48, 0x8b, 0x5b, 0x18]) // mov rbx, [rbx + 24]: the XSDT
        .bytes(&[0x48, 0x89, 0xde]);
    put_bytes(&mut a, "xsdt", 4);
    a.out_al(b' ')
        .bytes(&[0x4c, 0x8b, 0x6b, 0x24]) // mov r13, [rbx + 36]: entry 0
        .bytes(&[0x4c, 0x89, 0xee]); // mov rsi, r13
    put_bytes(&mut a, "entry0", 4);
    a.out_al(b' ')
        .bytes(&[0x4c, 0x8b, 0x73, 0x2c]) // mov r14, [rbx + 44]: entry 1
        .bytes(&[0x4c, 0x89, 0xf6]); // mov rsi, r14
    put_bytes(&mut a, "entry1", 4);
    a.out_al(b' ')
        .bytes(&[0x4d, 0x8b, 0xbd, 140, 0, 0, 0]) // mov r15, [r13 + 140]: X_DSDT
        .bytes(&[0x4c, 0x89, 0xfe]); // mov rsi, r15
    put_bytes(&mut a, "dsdt", 4);
    a.out_al(b' ').bytes(&[0xbe, 0x00, 0xfc, 0x09, 0x00]); // mov esi, 0x9fc00: the MP floating pointer
    put_bytes(&mut a, "mp", 4);
    a.out_al(b' ')
        .bytes(&[0x8b, 0x34, 0x25, 0x04, 0xfc, 0x09, 0x00]); // mov esi, [0x9fc04]: its table
    put_bytes(&mut a, "pcmp", 4);
    a.out_al(b'\n')
        .mov_dx(0x600)
        .out_al(0x34)
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    a.finish()
}

#[test]
fn guest_finds_the_acpi_and_mp_tables_and_powers_off_through_the_fadt_port() {
    if !kvm_available("guest_finds_the_acpi_and_mp_tables_and_powers_off_through_the_fadt_port") {
        return;
    }
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&acpi_program()));
    let (exit, _) = run(&VmmArgs {
        cpus: Some(2),
        ..guest.args(kernel)
    });
    assert_eq!(guest.serial(), "RSD PTR  XSDT FACP APIC DSDT _MP_ PCMP\n");
    assert_eq!(exit.unwrap(), VmExit::PowerOff);
}
