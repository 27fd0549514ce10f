//! Building a microVM from a [`VmConfig`] and running it until the guest ends it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::linux_boot::{LinuxBootError, load_linux};
use crate::config::{ConfigError, ConsoleConfig, VmConfig, VmmArgs};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::power::{PowerControl, SLEEP_CONTROL_LEN, SLEEP_CONTROL_PORT};
use crate::devices::serial::{
    COM1_IRQ, COM1_PORT, ConsoleOutput, IrqLine, SERIAL_PORT_LEN, SerialDevice,
};
use crate::devices::{AddPioDeviceError, PioBus};
use crate::exit::{ExitTrigger, ResetCause, VmExit};
use crate::memory::{CreateMemoryError, create_guest_memory};
use crate::vstate::kvm::{OpenKvmError, open_kvm};
use crate::vstate::vcpu::{ConfigureVcpuError, Vcpu};
use crate::vstate::vcpu_run::{RunOutcome, StartVcpusError, run_vcpus};
use crate::vstate::vm::{CreateVmError, RegisterIrqError, Vm};

/// The VM cannot be started (or its vCPUs cannot be run).
#[derive(Debug, thiserror::Error)]
pub enum RunVmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// /dev/kvm cannot be used.
    #[error(transparent)]
    Kvm(#[from] OpenKvmError),
    /// More vCPUs than KVM allows.
    #[error("--cpus {cpus}: this host's KVM allows at most {max}")]
    TooManyVcpus {
        /// vCPUs asked for.
        cpus: u32,
        /// KVM_CAP_MAX_VCPUS.
        max: usize,
    },
    /// Guest memory cannot be mapped.
    #[error(transparent)]
    Memory(#[from] CreateMemoryError),
    /// The KVM VM cannot be created.
    #[error("cannot create the VM")]
    CreateVm(#[from] CreateVmError),
    /// The kernel, initramfs or boot structures cannot be loaded.
    #[error(transparent)]
    Boot(#[from] LinuxBootError),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// A vCPU cannot be created or set up.
    #[error(transparent)]
    Vcpu(#[from] ConfigureVcpuError),
    /// The console file cannot be opened.
    #[error("--console {}: cannot be opened for writing", path.display())]
    Console {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd cannot be created.
    #[error("cannot create an eventfd for {what}")]
    EventFd {
        /// Its use.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An interrupt line cannot be connected.
    #[error("cannot connect the {device} interrupt")]
    Irq {
        /// The device.
        device: &'static str,
        /// KVM's error.
        #[source]
        source: RegisterIrqError,
    },
    /// A device cannot be placed on the bus.
    #[error("cannot place a device")]
    Device(#[from] AddPioDeviceError),
    /// The vCPU threads cannot be started.
    #[error("cannot start the vCPUs")]
    StartVcpus(#[from] StartVcpusError),
}

/// Runs a VM from `baton vmm` flags until the guest ends it; the [`VmExit`]'s
/// [`exit_code`](VmExit::exit_code) is the process exit code.
pub fn run(args: &VmmArgs) -> Result<VmExit, RunVmError> {
    let started = Instant::now();
    let config = VmConfig::from_args(args)?;
    Ok(run_config(&config, started)?.exit)
}

/// Runs a VM from a validated configuration; `started` is when the VMM began, for the
/// time-to-first-entry figure in the outcome.
pub fn run_config(config: &VmConfig, started: Instant) -> Result<RunOutcome, RunVmError> {
    let cpus = config.machine.cpus;
    let kvm = open_kvm()?;
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        return Err(RunVmError::TooManyVcpus { cpus, max });
    }
    let memory = create_guest_memory(config.machine.memory_bytes())?;
    let vm = Vm::new(&kvm, &memory)?;
    let boot = load_linux(&memory, &config.boot_source)?;

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(RunVmError::SupportedCpuid)?;
    let mut vcpus = Vec::with_capacity(cpus as usize);
    for index in 0..cpus {
        let vcpu = Vcpu::new(&vm, index)?;
        vcpu.configure(&supported, cpus)?;
        if index == 0 {
            vcpu.set_boot_entry(boot)?;
        }
        vcpus.push(vcpu);
    }

    let console = open_console(&config.console)?;
    let (exits_tx, exits) = std::sync::mpsc::channel();
    let bus = legacy_bus(&vm, console, &exits_tx)?;
    tracing::info!(
        cpus,
        memory_mib = config.machine.memory_mib,
        kernel = %config.boot_source.kernel.display(),
        setup_us = started.elapsed().as_micros() as u64,
        "starting the VM"
    );
    let outcome = run_vcpus(vcpus, Arc::new(bus), exits_tx, exits, started)?;
    drop(vm);
    Ok(outcome)
}

fn open_console(console: &ConsoleConfig) -> Result<ConsoleOutput, RunVmError> {
    match console {
        ConsoleConfig::Stdout => Ok(ConsoleOutput::Stdout(std::io::stdout())),
        ConsoleConfig::File(path) => {
            File::create(path)
                .map(ConsoleOutput::File)
                .map_err(|source| RunVmError::Console {
                    path: path.clone(),
                    source,
                })
        }
    }
}

/// The legacy devices every VM has: COM1 on IRQ 4 writing to `console`, the i8042 whose
/// reset ends the VM, and the sleep control register whose S5 powers it off.
pub fn legacy_bus(
    vm: &Vm,
    console: ConsoleOutput,
    exits: &Sender<VmExit>,
) -> Result<PioBus, RunVmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| RunVmError::EventFd {
        what: "COM1",
        source,
    })?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(|source| RunVmError::Irq {
            device: "COM1",
            source,
        })?;
    let mut bus = PioBus::new();
    bus.insert(
        "COM1",
        COM1_PORT,
        SERIAL_PORT_LEN,
        Arc::new(Mutex::new(SerialDevice::new(IrqLine(irq), console))),
    )?;
    bus.insert(
        "i8042",
        I8042_PORT,
        I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(ExitTrigger::new(
            exits.clone(),
            VmExit::Reset(ResetCause::I8042),
        )))),
    )?;
    bus.insert(
        "sleep control",
        SLEEP_CONTROL_PORT,
        SLEEP_CONTROL_LEN,
        Arc::new(Mutex::new(PowerControl::new(ExitTrigger::new(
            exits.clone(),
            VmExit::PowerOff,
        )))),
    )?;
    Ok(bus)
}
