//! What the tiny-guest tests share: the KVM availability rule, a few-instruction assembler,
//! the ELF and bzImage wrappers, and a guest's files (kernel, console, disks).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use baton_vmm::{RunVmError, VmExit, VmmArgs};

/// Returns false (after printing why) when the test must not run; panics when KVM is
/// missing and skipping was not asked for.
pub fn kvm_available(test: &str) -> bool {
    let why = if !Path::new("/dev/kvm").exists() {
        "/dev/kvm is absent"
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        "/dev/kvm cannot be opened read-write (run as root or in the kvm group)"
    } else {
        return true;
    };
    if std::env::var("BATON_VMM_TESTS_WITHOUT_KVM").as_deref() == Ok("skip") {
        eprintln!("SKIPPED {test}: {why}");
        false
    } else {
        panic!("{test}: {why}; set BATON_VMM_TESTS_WITHOUT_KVM=skip to skip tiny-guest tests");
    }
}

/// A few x86-64 instructions, with labels for jumps and calls.
#[derive(Default)]
pub struct Asm {
    code: Vec<u8>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str, usize)>,
}

impl Asm {
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        assert!(
            self.labels.insert(name, self.code.len()).is_none(),
            "{name} twice"
        );
        self
    }
    /// `opcode` followed by a `width`-byte displacement to `label` from the next instruction.
    pub fn rel(&mut self, opcode: &[u8], label: &'static str, width: usize) -> &mut Self {
        self.code.extend_from_slice(opcode);
        self.fixups.push((self.code.len(), label, width));
        self.code.extend(std::iter::repeat_n(0, width));
        self
    }
    pub fn mov_dx(&mut self, port: u16) -> &mut Self {
        let [lo, hi] = port.to_le_bytes();
        self.bytes(&[0x66, 0xba, lo, hi])
    }
    pub fn out_al(&mut self, value: u8) -> &mut Self {
        self.bytes(&[0xb0, value, 0xee]) // mov al, value; out dx, al
    }
    /// `op reg, [r12 + disp32]` with ModRM `modrm` (mod=10, rm=100) and a SIB of r12.
    pub fn r12_disp(&mut self, opcode: &[u8], modrm: u8, disp: u32) -> &mut Self {
        self.bytes(&[0x41]).bytes(opcode).bytes(&[modrm, 0x24]);
        self.bytes(&disp.to_le_bytes())
    }
    /// `mov ebx, imm32` (the device registers' base, in the virtio programs).
    pub fn mov_ebx(&mut self, value: u32) -> &mut Self {
        self.bytes(&[0xbb]).bytes(&value.to_le_bytes())
    }
    /// `mov edi, imm32` (the queue area's base, in the virtio programs).
    pub fn mov_edi(&mut self, value: u32) -> &mut Self {
        self.bytes(&[0xbf]).bytes(&value.to_le_bytes())
    }
    /// `mov dword [rbx + offset], value`: a device register write.
    pub fn reg_write(&mut self, offset: u32, value: u32) -> &mut Self {
        self.bytes(&[0xc7, 0x83])
            .bytes(&offset.to_le_bytes())
            .bytes(&value.to_le_bytes())
    }
    /// `opcode reg, [rbx + offset]` with ModRM `modrm` (mod=10, rm=011): a register read.
    pub fn reg_op(&mut self, opcode: &[u8], modrm: u8, offset: u32) -> &mut Self {
        self.bytes(opcode)
            .bytes(&[modrm])
            .bytes(&offset.to_le_bytes())
    }
    /// `mov dword [rdi + offset], value`: a store into the queue area.
    pub fn mem_write(&mut self, offset: u32, value: u32) -> &mut Self {
        self.bytes(&[0xc7, 0x87])
            .bytes(&offset.to_le_bytes())
            .bytes(&value.to_le_bytes())
    }
    /// `opcode reg, [rdi + offset]` with ModRM `modrm` (mod=10, rm=111).
    pub fn mem_op(&mut self, opcode: &[u8], modrm: u8, offset: u32) -> &mut Self {
        self.bytes(opcode)
            .bytes(&[modrm])
            .bytes(&offset.to_le_bytes())
    }
    pub fn finish(&mut self) -> Vec<u8> {
        for &(at, label, width) in &self.fixups {
            let target = self.labels[label] as i64;
            let rel = target - (at + width) as i64;
            let bytes = rel.to_le_bytes();
            if width == 1 {
                assert!(i8::try_from(rel).is_ok(), "{label} out of rel8 range");
            }
            self.code[at..at + width].copy_from_slice(&bytes[..width]);
        }
        self.code.clone()
    }
}

/// A guest that writes to the unassigned port 0x80 forever (until the API stops it).
pub fn port_writing_loop() -> Vec<u8> {
    let mut program = Asm::default();
    program
        .bytes(&[0xb0, 0x00]) // mov al, 0
        .label("loop")
        .bytes(&[0xe6, 0x80]) // out 0x80, al
        .rel(&[0xeb], "loop", 1);
    program.finish()
}

/// A console guest: writes "ready", then reads COM1 by polling its line status and echoes
/// each byte with its case flipped until a newline, says "bye" and powers off.
pub fn echo_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_dx(0x3f8);
    for byte in b"ready\n" {
        a.out_al(*byte);
    }
    a.label("poll")
        .mov_dx(0x3fd) // line status
        .bytes(&[0xec]) // in al, dx
        .bytes(&[0xa8, 0x01]) // test al, 1: data ready
        .rel(&[0x74], "poll", 1) // jz poll
        .mov_dx(0x3f8)
        .bytes(&[0xec]) // in al, dx: the byte
        .bytes(&[0x3c, b'\n']) // cmp al, '\n'
        .rel(&[0x74], "done", 1) // je done
        .bytes(&[0x34, 0x20, 0xee]) // xor al, 0x20; out dx, al
        .rel(&[0xeb], "poll", 1)
        .label("done");
    for byte in b"\nbye\n" {
        a.out_al(*byte);
    }
    a.mov_dx(0x600)
        .out_al(0x34)
        .label("halt")
        .bytes(&[0xf4])
        .rel(&[0xeb], "halt", 1);
    a.finish()
}

/// Reads from `stream` until `received` ends with `end`.
pub fn read_until(stream: &mut std::os::unix::net::UnixStream, received: &mut Vec<u8>, end: &[u8]) {
    let mut chunk = [0u8; 1024];
    while !received.ends_with(end) {
        let n = std::io::Read::read(stream, &mut chunk).expect("console output");
        assert!(
            n > 0,
            "console closed after {:?}",
            String::from_utf8_lossy(received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
}

/// An ELF64 executable with one PT_LOAD of `code` at physical 1 MiB, entered there.
pub fn elf_kernel(code: &[u8]) -> Vec<u8> {
    elf_kernel_with_note(code, None)
}

/// As [`elf_kernel`], with a PT_NOTE holding Xen's `XEN_ELFNOTE_PHYS32_ENTRY` note: the PVH
/// entry at `pvh_offset` bytes into `code`.
pub fn elf_kernel_with_pvh_entry(code: &[u8], pvh_offset: u32) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(0x10_0000 + pvh_offset).to_le_bytes());
    elf_kernel_with_note(code, Some(&note))
}

fn elf_kernel_with_note(code: &[u8], note: Option<&[u8]>) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let phnum: u16 = if note.is_some() { 2 } else { 1 };
    let headers = 64 + 56 * u64::from(phnum);
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, phnum, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
    for word in [
        headers,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&word.to_le_bytes());
    }
    if let Some(note) = note {
        elf.extend_from_slice(&4u32.to_le_bytes()); // p_type: NOTE
        elf.extend_from_slice(&4u32.to_le_bytes()); // p_flags: R
        let offset = (headers + code.len() as u64).next_multiple_of(4);
        for word in [offset, 0, 0, note.len() as u64, note.len() as u64, 4] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
    }
    assert_eq!(elf.len() as u64, headers);
    elf.extend_from_slice(code);
    if let Some(note) = note {
        elf.resize(elf.len().next_multiple_of(4), 0);
        elf.extend_from_slice(note);
    }
    elf
}

/// A bzImage (boot protocol 2.15, one setup sector, 64-bit entry) whose protected-mode part
/// holds `code` at the 64-bit entry (load address + 0x200), needing `init_size` bytes.
pub fn bzimage_kernel(code: &[u8], init_size: u32) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    let mut put = |offset: usize, bytes: &[u8]| {
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0x1f1, &[1]); // setup_sects
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // version
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x260, &init_size.to_le_bytes()); // init_size
    image.extend(std::iter::repeat_n(0xf4, 0x200)); // the 32-bit entry: hlt
    image.extend_from_slice(code);
    image
}

pub struct Guest {
    dir: tempfile::TempDir,
}

impl Guest {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
    pub fn console(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }
    pub fn args(&self, kernel: PathBuf) -> VmmArgs {
        VmmArgs {
            kernel: Some(kernel),
            console: Some(self.console().display().to_string()),
            ..Default::default()
        }
    }
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.console()).unwrap()).into_owned()
    }
}

pub fn run(args: &VmmArgs) -> (Result<VmExit, RunVmError>, std::time::Duration) {
    let started = Instant::now();
    let result = baton_vmm::run(args);
    (result, started.elapsed())
}

/// Runs a VM from `args` on a thread of its own; its end arrives on the returned channel (the
/// error as text), so that a test can wait for it with a deadline.
pub fn spawn_vm(args: VmmArgs) -> std::sync::mpsc::Receiver<Result<VmExit, String>> {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(baton_vmm::run(&args).map_err(|e| e.to_string()));
    });
    done
}

/// Polls `ready` every few milliseconds until it gives a value; panics naming `what` once
/// `timeout` has passed.
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut ready: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
