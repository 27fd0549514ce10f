//! Building a microVM from a [`VmConfig`] and running it until the guest ends it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiContext, ApiDevice, ApiServer};
use crate::arch::x86_64::acpi::{AcpiVirtioDevice, WriteAcpiError, write_acpi_tables};
use crate::arch::x86_64::linux_boot::{LinuxBootError, load_linux};
use crate::arch::x86_64::mptable::{WriteMpTableError, write_mp_table};
use crate::config::{BootSourceConfig, ConfigError, ConsoleConfig, VmConfig, VmmArgs};
use crate::config::{NetConfig, VirtioDeviceKind, VirtioSlot};
use crate::devices::console_socket::{ConsoleBacklog, ConsoleSocket};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::power::{PowerControl, SLEEP_CONTROL_LEN, SLEEP_CONTROL_PORT};
use crate::devices::serial::{
    COM1_IRQ, COM1_PORT, ConsoleOutput, InputRoom, IrqLine, SERIAL_PORT_LEN, SerialDevice,
};
use crate::devices::virtio::block::{Block, OpenDiskError};
use crate::devices::virtio::mmio::reg::QUEUE_NOTIFY as QUEUE_NOTIFY_OFFSET;
use crate::devices::virtio::net::{Net, NetReceiver};
use crate::devices::virtio::notify_thread::{NotifyThread, QueueNotification};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockMuxer};
use crate::devices::virtio::{Interrupt, MMIO_SLOT_LEN, MmioTransport, VirtioDevice};
use crate::devices::{AddBusDeviceError, Bus, Buses};
use crate::exit::{ExitTrigger, ResetCause, VmEvent, VmExit};
use crate::jail::privileges::{DropPrivileges, DropPrivilegesError};
use crate::memory::{CreateMemoryError, create_guest_memory};
use crate::seccomp::{SeccompError, ThreadFilters};
use crate::unix_socket::BoundSocket;
use crate::vstate::control::VcpuControl;
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
    /// The ACPI tables cannot be written.
    #[error(transparent)]
    Acpi(#[from] WriteAcpiError),
    /// The MP table cannot be written.
    #[error(transparent)]
    MpTable(#[from] WriteMpTableError),
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
    /// A queue's notification cannot be handed to KVM.
    #[error("cannot register the {device} queue notifications")]
    QueueNotification {
        /// The device.
        device: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A device cannot be placed on the bus.
    #[error("cannot place a device")]
    Device(#[from] AddBusDeviceError),
    /// A disk image cannot be opened.
    #[error(transparent)]
    Disk(#[from] OpenDiskError),
    /// A tap device cannot be opened.
    #[error("--net {tap}: cannot open the tap device")]
    Tap {
        /// The tap's name.
        tap: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The vsock device's socket cannot be made.
    #[error("--vsock {}: cannot listen on the socket", path.display())]
    VsockSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The console socket cannot be made.
    #[error("--console socket:{}: cannot listen on the socket", path.display())]
    ConsoleSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The API socket cannot be made.
    #[error("--api-sock {}: cannot listen on the socket", path.display())]
    ApiSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The seccomp filters cannot be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A device thread cannot be started.
    #[error("cannot start the {device} thread")]
    DeviceThread {
        /// The device.
        device: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The jailed VMM cannot drop its privileges.
    #[error(transparent)]
    DropPrivileges(#[from] DropPrivilegesError),
    /// The vCPU threads cannot be started.
    #[error("cannot start the vCPUs")]
    StartVcpus(#[from] StartVcpusError),
}

/// Runs a VM from `baton vmm` flags until the guest ends it; the [`VmExit`]'s
/// [`exit_code`](VmExit::exit_code) is the process exit code. For tests and embedders: the
/// calling thread is not filtered and a jail in the flags is not acted on (see
/// [`run_process`] and `crate::jail`).
pub fn run(args: &VmmArgs) -> Result<VmExit, RunVmError> {
    let started = Instant::now();
    let config = VmConfig::from_args(args)?;
    Ok(run_config(&config, started)?.exit)
}

/// Runs a VM from a validated configuration; `started` is when the VMM began, for the
/// time-to-first-entry figure in the outcome. `config.jail` is not acted on here: the jail is
/// `baton vmm`'s (`crate::jail::run_jailed`), which forks.
pub fn run_config(config: &VmConfig, started: Instant) -> Result<RunOutcome, RunVmError> {
    start_vm(config, started, None, false)
}

/// Runs a VM from a validated configuration as the whole process (`baton vmm`): as
/// [`run_config`], and the calling thread installs a seccomp filter of its own once the
/// vCPUs run, so it must be the only thread of the process not serving the VM.
pub fn run_process(config: &VmConfig, started: Instant) -> Result<RunOutcome, RunVmError> {
    start_vm(config, started, None, true)
}

/// Builds the VM of `config` and runs it. With `privileges`, they are dropped once every
/// device, socket and file is open and before any thread starts (a thread already running
/// would keep them, and a filtered one could not change them). With `whole_process`, the
/// calling thread is filtered once the vCPUs run.
pub(crate) fn start_vm(
    config: &VmConfig,
    started: Instant,
    privileges: Option<&DropPrivileges>,
    whole_process: bool,
) -> Result<RunOutcome, RunVmError> {
    let cpus = config.machine.cpus;
    let mut filters = ThreadFilters::new(config.seccomp)?;
    if whole_process {
        filters = filters.with_main_thread();
    }
    let kvm = open_kvm()?;
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        return Err(RunVmError::TooManyVcpus { cpus, max });
    }
    let memory = create_guest_memory(config.machine.memory_bytes(), config.machine.hugepages)?;
    let vm = Vm::new(&kvm, &memory)?;
    let boot_source = BootSourceConfig {
        cmdline: config.kernel_cmdline(),
        ..config.boot_source.clone()
    };
    let acpi_devices: Vec<AcpiVirtioDevice> = config
        .virtio_slots()
        .iter()
        .map(|slot| AcpiVirtioDevice {
            base: slot.base,
            len: MMIO_SLOT_LEN,
            irq: slot.irq,
        })
        .collect();
    let rsdp = write_acpi_tables(&memory, cpus, &acpi_devices)?;
    write_mp_table(&memory, cpus)?;
    let boot = load_linux(&memory, &boot_source, Some(rsdp), config.boot_protocol)?;

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

    // The devices first: a tap that cannot be opened leaves no console file behind.
    // A jailed VMM's sockets are removed by the jail's outer process.
    let remove_sockets = privileges.is_none();
    let (mmio, device_threads, api_devices) = virtio_bus(&vm, config, remove_sockets)?;
    let (exits_tx, exits) = std::sync::mpsc::channel();
    let control = Arc::new(VcpuControl::default());
    let api = match &config.api_sock {
        Some(path) => {
            let socket = BoundSocket::bind(path.clone(), remove_sockets).map_err(|source| {
                RunVmError::ApiSocket {
                    path: path.clone(),
                    source,
                }
            })?;
            let context = ApiContext {
                cpus,
                memory_mib: config.machine.memory_mib,
                started,
                devices: api_devices,
                control: control.clone(),
                events: exits_tx.clone(),
                vsock_socket: config.vsock.as_ref().map(|v| v.uds_path.clone()),
            };
            Some((socket, context))
        }
        None => None,
    };
    let console = open_console(&config.console, remove_sockets)?;
    let (pio, serial) = legacy_bus(&vm, console.output, console.room, &exits_tx)?;
    let buses = Buses { pio, mmio };
    if let Some(privileges) = privileges {
        privileges.apply()?;
    }
    let device_threads = device_threads.spawn(&filters)?;
    let api = match api {
        Some((socket, context)) => Some(ApiServer::spawn(socket, context, &filters).map_err(
            |source| RunVmError::DeviceThread {
                device: "api".into(),
                source,
            },
        )?),
        None => None,
    };
    let console_socket = match console.socket {
        Some((socket, backlog, room)) => Some(
            ConsoleSocket::spawn(socket, backlog, serial, room, &filters).map_err(|source| {
                RunVmError::DeviceThread {
                    device: "console".into(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    tracing::info!(
        cpus,
        memory_mib = config.machine.memory_mib,
        kernel = %config.boot_source.kernel.display(),
        setup_us = started.elapsed().as_micros() as u64,
        "starting the VM"
    );
    let outcome = run_vcpus(
        vcpus,
        Arc::new(buses),
        exits_tx,
        exits,
        started,
        &filters,
        control,
    )?;
    drop(api);
    drop(console_socket);
    drop(device_threads);
    drop(vm);
    Ok(outcome)
}

/// The console as opened: where COM1's output goes, what its UART reports input room to,
/// and for a console socket, the socket, its backlog and the room eventfd for its thread.
struct OpenConsole {
    output: ConsoleOutput,
    room: InputRoom,
    socket: Option<(BoundSocket, Arc<ConsoleBacklog>, EventFd)>,
}

fn open_console(console: &ConsoleConfig, remove_socket: bool) -> Result<OpenConsole, RunVmError> {
    let output = match console {
        ConsoleConfig::Stdout => ConsoleOutput::Stdout(std::io::stdout()),
        // Appended to, as a serial log should be: a VMM started again after its guest
        // rebooted (a cluster node's monitor does that) keeps the earlier boots' lines.
        ConsoleConfig::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(ConsoleOutput::File)
            .map_err(|source| RunVmError::Console {
                path: path.clone(),
                source,
            })?,
        ConsoleConfig::Socket(path) => {
            let socket_error = |source| RunVmError::ConsoleSocket {
                path: path.clone(),
                source,
            };
            let socket = BoundSocket::bind(path.clone(), remove_socket).map_err(socket_error)?;
            let backlog = ConsoleBacklog::new().map_err(socket_error)?;
            let room = EventFd::new(libc::EFD_NONBLOCK).map_err(socket_error)?;
            let uart_room = room.try_clone().map_err(socket_error)?;
            return Ok(OpenConsole {
                output: ConsoleOutput::Socket(backlog.clone()),
                room: InputRoom(Some(uart_room)),
                socket: Some((socket, backlog, room)),
            });
        }
    };
    Ok(OpenConsole {
        output,
        room: InputRoom::default(),
        socket: None,
    })
}

/// Threads serving virtio devices; dropping them stops them (and removes the vsock socket).
#[derive(Debug, Default)]
pub struct DeviceThreads {
    notify: Option<NotifyThread>,
    net: Vec<NetReceiver>,
    vsock: Option<VsockMuxer>,
}

/// A network device's receive thread, ready to start.
struct PendingNetReceiver {
    name: String,
    tap: Arc<File>,
    wake: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

/// The vsock muxer thread, ready to start.
struct PendingVsockMuxer {
    guest_cid: u32,
    socket: BoundSocket,
    wake: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
}

/// The device threads of a VM whose devices are open, not started yet.
#[derive(Default)]
pub struct PendingDeviceThreads {
    notifications: Vec<QueueNotification>,
    net: Vec<PendingNetReceiver>,
    vsock: Option<PendingVsockMuxer>,
}

impl std::fmt::Debug for PendingDeviceThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDeviceThreads")
            .field("notifications", &self.notifications.len())
            .field("net", &self.net.len())
            .field("vsock", &self.vsock.is_some())
            .finish()
    }
}

impl PendingDeviceThreads {
    /// Starts the threads, each under its seccomp filter.
    pub fn spawn(self, filters: &ThreadFilters) -> Result<DeviceThreads, RunVmError> {
        let mut threads = DeviceThreads::default();
        if !self.notifications.is_empty() {
            threads.notify = Some(NotifyThread::spawn(self.notifications, filters).map_err(
                |source| RunVmError::DeviceThread {
                    device: "virtio-notify".into(),
                    source,
                },
            )?);
        }
        for pending in self.net {
            let thread_name = format!("net-{}", pending.name);
            threads.net.push(
                NetReceiver::spawn(
                    thread_name.clone(),
                    pending.tap,
                    pending.wake,
                    pending.transport,
                    pending.received,
                    filters,
                )
                .map_err(|source| RunVmError::DeviceThread {
                    device: thread_name,
                    source,
                })?,
            );
        }
        if let Some(pending) = self.vsock {
            threads.vsock = Some(
                VsockMuxer::spawn(
                    u64::from(pending.guest_cid),
                    pending.socket,
                    pending.wake,
                    pending.transport,
                    filters,
                )
                .map_err(|source| RunVmError::DeviceThread {
                    device: "vsock".into(),
                    source,
                })?,
            );
        }
        Ok(threads)
    }
}

/// The virtio devices of `config` on the MMIO bus, each on its own interrupt line, and the
/// threads that will serve them (started with [`PendingDeviceThreads::spawn`]). The vsock
/// socket's file is removed when its thread ends if `remove_sockets`.
pub fn virtio_bus(
    vm: &Vm,
    config: &VmConfig,
    remove_sockets: bool,
) -> Result<(Bus, PendingDeviceThreads, Vec<ApiDevice>), RunVmError> {
    let mut bus = Bus::mmio();
    let mut api_devices = Vec::new();
    let mut threads = PendingDeviceThreads::default();
    let mut vsock_muxer = None;
    for VirtioSlot { kind, base, irq } in config.virtio_slots() {
        let event_fd = |what: &'static str| {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| RunVmError::EventFd { what, source })
        };
        let mut receiver = None;
        let (name, device): (&'static str, Box<dyn VirtioDevice>) = match kind {
            VirtioDeviceKind::Block(index) => {
                let drive = &config.drives[index];
                let id = format!("baton-vd{}", (b'a' + index as u8) as char);
                (
                    "virtio-blk",
                    Box::new(Block::open(&drive.path, drive.read_only, &id)?),
                )
            }
            VirtioDeviceKind::Net(index) => {
                let net = &config.nets[index];
                let tap = Arc::new(open_tap(net)?);
                let buffers_added = event_fd("virtio-net")?;
                let wake = buffers_added
                    .try_clone()
                    .map_err(|source| RunVmError::EventFd {
                        what: "virtio-net",
                        source,
                    })?;
                let device = Net::new(tap.clone(), net.mac, buffers_added);
                receiver = Some((net.tap.clone(), tap, wake, device.frames_received()));
                ("virtio-net", Box::new(device))
            }
            VirtioDeviceKind::Vsock => {
                let vsock = config.vsock.as_ref().expect("a vsock slot has a vsock");
                let socket = BoundSocket::bind(vsock.uds_path.clone(), remove_sockets).map_err(
                    |source| RunVmError::VsockSocket {
                        path: vsock.uds_path.clone(),
                        source,
                    },
                )?;
                let kick = event_fd("virtio-vsock")?;
                let wake = kick.try_clone().map_err(|source| RunVmError::EventFd {
                    what: "virtio-vsock",
                    source,
                })?;
                vsock_muxer = Some((vsock.guest_cid, socket, wake));
                (
                    "virtio-vsock",
                    Box::new(Vsock::new(u64::from(vsock.guest_cid), kick)),
                )
            }
            VirtioDeviceKind::Rng => ("virtio-rng", Box::new(Rng::new())),
        };
        let line = event_fd(name)?;
        vm.register_irqfd(&line, irq)
            .map_err(|source| RunVmError::Irq {
                device: name,
                source,
            })?;
        let queues = device.queue_max_sizes().len() as u32;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            format!("{name}@{base:#x}"),
            device,
            vm.memory().clone(),
            Arc::new(Interrupt::new(line)),
        )));
        bus.insert(name, base, MMIO_SLOT_LEN, transport.clone())?;
        for queue in 0..queues {
            let event = event_fd(name)?;
            vm.register_mmio_notification(&event, base + QUEUE_NOTIFY_OFFSET, queue)
                .map_err(|source| RunVmError::QueueNotification {
                    device: name,
                    source,
                })?;
            threads.notifications.push(QueueNotification {
                event,
                transport: transport.clone(),
                queue,
            });
        }
        api_devices.push(ApiDevice {
            kind: name,
            base,
            irq,
            transport: transport.clone(),
        });
        if let Some((tap_name, tap, wake, received)) = receiver {
            threads.net.push(PendingNetReceiver {
                name: tap_name,
                tap,
                wake,
                transport: transport.clone(),
                received,
            });
        }
        if let Some((guest_cid, socket, wake)) = vsock_muxer.take() {
            threads.vsock = Some(PendingVsockMuxer {
                guest_cid,
                socket,
                wake,
                transport,
            });
        }
    }
    Ok((bus, threads, api_devices))
}

/// Opens the tap of `net`, in its network namespace if it names one.
fn open_tap(net: &NetConfig) -> Result<File, RunVmError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| RunVmError::Tap {
        tap: net.tap.clone(),
        source,
    };
    match &net.netns {
        None => baton_network::open_tap(&net.tap).map_err(|e| error(Box::new(e))),
        Some(path) => {
            let netns = baton_network::NetNs::open(path).map_err(|e| error(Box::new(e)))?;
            netns
                .run(|| baton_network::open_tap(&net.tap))
                .map_err(|e| error(Box::new(e)))?
                .map_err(|e| error(Box::new(e)))
        }
    }
}

/// The legacy devices every VM has: COM1 on IRQ 4 writing to `console` (and reporting
/// input room to `room`), the i8042 whose reset ends the VM, and the sleep control register
/// whose S5 powers it off. Also returns COM1, for its input.
pub fn legacy_bus(
    vm: &Vm,
    console: ConsoleOutput,
    room: InputRoom,
    exits: &Sender<VmEvent>,
) -> Result<(Bus, Arc<Mutex<SerialDevice>>), RunVmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| RunVmError::EventFd {
        what: "COM1",
        source,
    })?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(|source| RunVmError::Irq {
            device: "COM1",
            source,
        })?;
    let mut bus = Bus::port_io();
    let serial = Arc::new(Mutex::new(SerialDevice::new(IrqLine(irq), console, room)));
    bus.insert(
        "COM1",
        COM1_PORT.into(),
        SERIAL_PORT_LEN.into(),
        serial.clone(),
    )?;
    bus.insert(
        "i8042",
        I8042_PORT.into(),
        I8042_PORT_LEN.into(),
        Arc::new(Mutex::new(I8042::new(ExitTrigger::new(
            exits.clone(),
            VmExit::Reset(ResetCause::I8042),
        )))),
    )?;
    bus.insert(
        "sleep control",
        SLEEP_CONTROL_PORT.into(),
        SLEEP_CONTROL_LEN.into(),
        Arc::new(Mutex::new(PowerControl::new(ExitTrigger::new(
            exits.clone(),
            VmExit::PowerOff,
        )))),
    )?;
    Ok((bus, serial))
}
