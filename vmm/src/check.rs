//! `baton vmm check`: what kind of KVM this host has, whether a tiny guest runs on it, and
//! whether Linux guests can boot.
//!
//! Hardware KVM (Intel VMX, AMD SVM) boots Linux. PVM (the `kvm_pvm` module, pagetable-based
//! virtualization for hosts that are themselves VMs without nested virtualization) runs tiny
//! guests but only boots kernels built as PVM guests: stock kernels stop on emulation
//! failures. Anything else is reported as unknown and not usable for Linux.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::layout::{HIMEM_START, ZERO_PAGE_ADDR};
use crate::arch::x86_64::linux_boot::{BootEntry, write_boot_tables};
use crate::devices::serial::{ConsoleOutput, InputRoom};
use crate::devices::{Bus, Buses};
use crate::exit::{ResetCause, VmExit};
use crate::memory::create_guest_memory;
use crate::microvm::legacy_bus;
use crate::seccomp::ThreadFilters;
use crate::vstate::kvm::{KVM_PATH, open_kvm};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vcpu_run::run_vcpus;
use crate::vstate::vm::Vm;

/// The kind of KVM behind /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Intel VT-x (`kvm_intel`, CPU flag `vmx`).
    Vmx,
    /// AMD-V (`kvm_amd`, CPU flag `svm`).
    Svm,
    /// Pagetable-based virtualization (`kvm_pvm`).
    Pvm,
    /// /dev/kvm exists but none of the above is loaded.
    Unknown,
    /// No /dev/kvm.
    Absent,
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmKind::Vmx => "hardware (Intel VMX, kvm_intel)",
            KvmKind::Svm => "hardware (AMD SVM, kvm_amd)",
            KvmKind::Pvm => "PVM (kvm_pvm, no hardware virtualization)",
            KvmKind::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module)",
            KvmKind::Absent => "none (/dev/kvm is absent)",
        })
    }
}

/// What the host shows about virtualization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// /dev/kvm exists.
    pub dev_kvm: bool,
    /// /proc/cpuinfo lists `vmx`.
    pub cpu_vmx: bool,
    /// /proc/cpuinfo lists `svm`.
    pub cpu_svm: bool,
    /// /sys/module/kvm_intel exists.
    pub kvm_intel: bool,
    /// /sys/module/kvm_amd exists.
    pub kvm_amd: bool,
    /// /sys/module/kvm_pvm exists.
    pub kvm_pvm: bool,
}

impl HostFacts {
    /// Reads the facts from /dev, /proc/cpuinfo and /sys/module.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, flags)| flags.split_whitespace().collect())
            .unwrap_or_default();
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        Self {
            dev_kvm: Path::new(KVM_PATH).exists(),
            cpu_vmx: flags.contains(&"vmx"),
            cpu_svm: flags.contains(&"svm"),
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            kvm_pvm: module("kvm_pvm"),
        }
    }

    /// The kind of KVM these facts show.
    pub fn kind(&self) -> KvmKind {
        if !self.dev_kvm {
            KvmKind::Absent
        } else if self.kvm_intel && self.cpu_vmx {
            KvmKind::Vmx
        } else if self.kvm_amd && self.cpu_svm {
            KvmKind::Svm
        } else if self.kvm_pvm {
            KvmKind::Pvm
        } else {
            KvmKind::Unknown
        }
    }
}

/// A tiny guest's run.
#[derive(Debug, Clone)]
pub struct TinyGuestRun {
    /// What it wrote to COM1.
    pub serial: String,
    /// How it ended.
    pub exit: VmExit,
    /// From creating the VM to its end.
    pub elapsed: Duration,
}

/// The self-test's findings.
#[derive(Debug, Clone)]
pub struct KvmCheck {
    /// The host's facts.
    pub facts: HostFacts,
    /// The kind of KVM.
    pub kind: KvmKind,
    /// The tiny guest's run, or why it could not run.
    pub tiny_guest: Result<TinyGuestRun, String>,
    /// Whether Linux guests can boot here.
    pub linux_usable: bool,
    /// Why, in one sentence.
    pub reason: String,
}

impl KvmCheck {
    /// 0 when Linux guests can boot, 1 when not.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.linux_usable)
    }
}

impl std::fmt::Display for KvmCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "KVM: {}", self.kind)?;
        match &self.tiny_guest {
            Ok(run) => writeln!(
                f,
                "tiny guest: ran in {} us, wrote {:?}, ended: {}",
                run.elapsed.as_micros(),
                run.serial,
                run.exit
            )?,
            Err(why) => writeln!(f, "tiny guest: failed: {why}")?,
        }
        let verdict = if self.linux_usable { "yes" } else { "no" };
        writeln!(f, "Linux guests: {verdict}: {}", self.reason)
    }
}

/// What the tiny guest writes before it resets the VM.
pub const TINY_GUEST_GREETING: &str = "baton\n";

/// A 64-bit program entered like a kernel (long mode, identity map): it writes
/// [`TINY_GUEST_GREETING`] to COM1 byte by byte, then resets through the i8042.
fn tiny_guest_program() -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x0d, 0x00, 0x00, 0x00, // lea rsi, [rip + 13] (the message)
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xb0, 0xfe, // done: mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
    ];
    code.extend_from_slice(TINY_GUEST_GREETING.as_bytes());
    code.push(0);
    code
}

/// Runs the tiny guest through the VMM's own VM, vCPU, boot tables and devices.
pub fn run_tiny_guest() -> Result<TinyGuestRun, String> {
    let started = Instant::now();
    let kvm = open_kvm().map_err(|e| e.to_string())?;
    let memory = create_guest_memory(2 << 20, false).map_err(|e| e.to_string())?;
    let vm = Vm::new(&kvm, &memory).map_err(|e| format!("{e}: {}", source_of(&e)))?;
    write_boot_tables(&memory).map_err(|e| e.to_string())?;
    memory
        .write_slice(&tiny_guest_program(), GuestAddress(HIMEM_START))
        .map_err(|e| format!("cannot write the program: {e}"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID failed: {e}"))?;
    let vcpu = Vcpu::new(&vm, 0).map_err(|e| format!("{e}: {}", source_of(&e)))?;
    vcpu.configure(&supported, 1)
        .map_err(|e| format!("{e}: {}", source_of(&e)))?;
    vcpu.set_boot_entry(BootEntry::Linux64 {
        entry: HIMEM_START,
        zero_page: ZERO_PAGE_ADDR,
    })
    .map_err(|e| format!("{e}: {}", source_of(&e)))?;
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let (exits_tx, exits) = std::sync::mpsc::channel();
    let (bus, _) = legacy_bus(
        &vm,
        ConsoleOutput::Buffer(buffer.clone()),
        InputRoom::default(),
        &exits_tx,
    )
    .map_err(|e| e.to_string())?;
    let buses = Buses {
        pio: bus,
        mmio: Bus::mmio(),
    };
    let outcome = run_vcpus(
        vec![vcpu],
        Arc::new(buses),
        exits_tx,
        exits,
        started,
        &ThreadFilters::disabled(),
        Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let serial =
        String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    Ok(TinyGuestRun {
        serial,
        exit: outcome.exit,
        elapsed: started.elapsed(),
    })
}

fn source_of(error: &dyn std::error::Error) -> String {
    error.source().map(|s| s.to_string()).unwrap_or_default()
}

/// Decides from the facts and the tiny guest's run whether Linux can boot.
pub fn verdict(kind: KvmKind, tiny_guest: &Result<TinyGuestRun, String>) -> (bool, String) {
    let tiny_ok = matches!(tiny_guest, Ok(run)
        if run.serial == TINY_GUEST_GREETING && run.exit == VmExit::Reset(ResetCause::I8042));
    match (kind, tiny_ok) {
        (KvmKind::Absent, _) => (false, format!("{KVM_PATH} is absent")),
        (_, false) => (
            false,
            "the tiny guest did not write its greeting and reset as expected".into(),
        ),
        (KvmKind::Vmx | KvmKind::Svm, true) => (
            true,
            "hardware virtualization, and the tiny guest ran".into(),
        ),
        (KvmKind::Pvm, true) => (
            false,
            "PVM runs tiny guests, but boots only kernels built as PVM guests; stock Linux \
             stops on emulation failures (use QEMU's software emulation here)"
                .into(),
        ),
        (KvmKind::Unknown, true) => (
            false,
            "the tiny guest ran, but no hardware virtualization module (kvm_intel, kvm_amd) \
             is loaded, so Linux guests are not known to boot"
                .into(),
        ),
    }
}

/// Runs the self-test.
pub fn check() -> KvmCheck {
    let facts = HostFacts::read();
    let kind = facts.kind();
    let tiny_guest = if kind == KvmKind::Absent {
        Err(format!("{KVM_PATH} is absent"))
    } else {
        run_tiny_guest()
    };
    let (linux_usable, reason) = verdict(kind, &tiny_guest);
    KvmCheck {
        facts,
        kind,
        tiny_guest,
        linux_usable,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_facts() {
        let base = HostFacts {
            dev_kvm: true,
            ..Default::default()
        };
        assert_eq!(HostFacts::default().kind(), KvmKind::Absent);
        assert_eq!(base.kind(), KvmKind::Unknown);
        let vmx = HostFacts {
            cpu_vmx: true,
            kvm_intel: true,
            ..base.clone()
        };
        assert_eq!(vmx.kind(), KvmKind::Vmx);
        let svm = HostFacts {
            cpu_svm: true,
            kvm_amd: true,
            ..base.clone()
        };
        assert_eq!(svm.kind(), KvmKind::Svm);
        // This machine: no vmx flag, kvm_pvm loaded.
        let pvm = HostFacts {
            kvm_pvm: true,
            ..base.clone()
        };
        assert_eq!(pvm.kind(), KvmKind::Pvm);
        // kvm_intel loaded without the CPU flag is not hardware KVM.
        let odd = HostFacts {
            kvm_intel: true,
            kvm_pvm: true,
            ..base
        };
        assert_eq!(odd.kind(), KvmKind::Pvm);
    }

    #[test]
    fn verdicts() {
        let good = Ok(TinyGuestRun {
            serial: TINY_GUEST_GREETING.into(),
            exit: VmExit::Reset(ResetCause::I8042),
            elapsed: Duration::from_millis(1),
        });
        assert!(verdict(KvmKind::Vmx, &good).0);
        assert!(verdict(KvmKind::Svm, &good).0);
        let (usable, reason) = verdict(KvmKind::Pvm, &good);
        assert!(!usable);
        assert!(reason.contains("PVM"), "{reason}");
        assert!(!verdict(KvmKind::Unknown, &good).0);
        let bad = Ok(TinyGuestRun {
            serial: "bat".into(),
            exit: VmExit::Reset(ResetCause::TripleFault),
            elapsed: Duration::from_millis(1),
        });
        assert!(!verdict(KvmKind::Vmx, &bad).0);
        assert!(!verdict(KvmKind::Vmx, &Err("x".into())).0);
    }

    #[test]
    fn tiny_program_message_offset() {
        let code = tiny_guest_program();
        // lea's displacement is relative to the next instruction (offset 11).
        let msg = 11 + code[7] as usize;
        assert_eq!(&code[msg..msg + 6], TINY_GUEST_GREETING.as_bytes());
        assert_eq!(code[14..16], [0x74, 0x03]);
        assert_eq!(code[16 + 3], 0xb0, "jz lands on `mov al, 0xfe`");
    }
}
