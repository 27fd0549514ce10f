//! Baton's microVM monitor on KVM and the rust-vmm crates: Linux direct boot (bzImage or ELF
//! vmlinux, initramfs, command line) with N vCPUs, a serial console and the i8042 reset line,
//! in the spirit of Firecracker. `run` is `baton vmm`, `check` is `baton vmm check`.
//! See vmm/README.md for what works, the exit codes and what is not built yet.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("baton-vmm supports x86_64 only");

pub mod api;
pub mod arch;
pub mod check;
pub mod config;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod memory;
pub mod microvm;
pub mod seccomp;
pub mod stoppable_thread;
pub mod unix_socket;
pub mod vstate;

pub use check::{KvmCheck, KvmKind, check};
pub use config::{ConfigError, VmConfig, VmmArgs};
pub use exit::{ResetCause, VmExit};
pub use microvm::{RunVmError, run, run_config, run_process};
pub use vstate::vcpu_run::RunOutcome;
