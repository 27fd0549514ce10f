//! `baton vmm` flags.

use std::path::PathBuf;

/// Flags of `baton vmm`. Each flag overrides the same setting in `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmmArgs {
    /// Kernel image: a bzImage or an ELF vmlinux with a 64-bit entry point.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio archive, compressed or not); repeat to concatenate several in order.
    #[arg(long, value_name = "PATH")]
    pub initrd: Vec<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB, at least 64 [default: 128].
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u64>,
    /// Serial console output: `stdout` or a file path [default: stdout].
    #[arg(long, value_name = "stdout|PATH")]
    pub console: Option<String>,
    /// JSON configuration file (sections `boot-source`, `machine`, `console`); flags override it.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
}
