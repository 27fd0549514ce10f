//! VM configuration: flags and the JSON file merged into one validated [`VmConfig`], checked
//! before any resource (KVM, memory, files for writing) is taken.

pub mod args;
pub mod boot_source;
pub mod console;
pub mod file;
pub mod machine;

use std::path::PathBuf;

pub use args::VmmArgs;
pub use boot_source::BootSourceConfig;
pub use console::ConsoleConfig;
pub use file::ConfigFile;
pub use machine::MachineConfig;

use boot_source::{DEFAULT_CMDLINE, MAX_CMDLINE_LEN};
use machine::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

/// A configuration that cannot be used; each message names the flag (and the file field).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No kernel given.
    #[error("--kernel (boot-source.kernel) is required")]
    MissingKernel,
    /// A file given cannot be opened for reading.
    #[error("{flag} {}: cannot be read", path.display())]
    Unreadable {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be opened.
        #[source]
        source: std::io::Error,
    },
    /// A path given is not a regular file.
    #[error("{flag} {}: not a regular file", path.display())]
    NotAFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error("--config {}: invalid configuration file", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What serde_json found (line, column, field).
        #[source]
        source: serde_json::Error,
    },
    /// The vCPU count is out of range.
    #[error("--cpus (machine.cpus) {cpus}: must be between 1 and {MAX_VCPUS}")]
    Cpus {
        /// The count given.
        cpus: u32,
    },
    /// The memory size is out of range.
    #[error(
        "--memory (machine.memory_mib) {memory_mib} MiB: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB"
    )]
    Memory {
        /// The size given.
        memory_mib: u64,
    },
    /// The command line is too long for the kernel.
    #[error("--cmdline (boot-source.cmdline): {len} bytes, at most {MAX_CMDLINE_LEN} fit")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The command line has a NUL byte.
    #[error("--cmdline (boot-source.cmdline): contains a NUL byte")]
    CmdlineNul,
    /// The console destination is not usable.
    #[error("--console (console) {value:?}: {reason}")]
    Console {
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

/// A complete, validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel, initramfs parts, command line.
    pub boot_source: BootSourceConfig,
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Serial console output.
    pub console: ConsoleConfig,
}

impl VmConfig {
    /// Builds the configuration from the flags, reading `--config` if given; flags win.
    pub fn from_args(args: &VmmArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => ConfigFile::read(path)?,
            None => ConfigFile::default(),
        };
        Self::merge(args, file)
    }

    /// Merges flags over a parsed file and validates the result.
    pub fn merge(args: &VmmArgs, file: ConfigFile) -> Result<Self, ConfigError> {
        let machine = MachineConfig::new(
            args.cpus.or(file.machine.cpus).unwrap_or(DEFAULT_VCPUS),
            args.memory
                .or(file.machine.memory_mib)
                .unwrap_or(DEFAULT_MEMORY_MIB),
        )?;
        let kernel = args
            .kernel
            .clone()
            .or(file.boot_source.kernel)
            .ok_or(ConfigError::MissingKernel)?;
        let initrds = if args.initrd.is_empty() {
            file.boot_source.initrds
        } else {
            args.initrd.clone()
        };
        let cmdline = args
            .cmdline
            .clone()
            .or(file.boot_source.cmdline)
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        let boot_source = BootSourceConfig::new(kernel, initrds, cmdline)?;
        let console = match args.console.as_deref().or(file.console.as_deref()) {
            Some(value) => ConsoleConfig::parse(value)?,
            None => ConsoleConfig::Stdout,
        };
        Ok(Self {
            boot_source,
            machine,
            console,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"not checked here").unwrap();
        path
    }

    fn args_with_kernel(kernel: PathBuf) -> VmmArgs {
        VmmArgs {
            kernel: Some(kernel),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let config =
            VmConfig::merge(&args_with_kernel(kernel.clone()), ConfigFile::default()).unwrap();
        assert_eq!(config.machine.cpus, 1);
        assert_eq!(config.machine.memory_mib, 128);
        assert_eq!(config.boot_source.cmdline, DEFAULT_CMDLINE);
        assert_eq!(config.boot_source.kernel, kernel);
        assert!(config.boot_source.initrds.is_empty());
        assert_eq!(config.console, ConsoleConfig::Stdout);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let a = dir.path().join("a.cpio");
        let b = dir.path().join("b.cpio");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let file = ConfigFile::parse(&format!(
            r#"{{"boot-source": {{"kernel": "{}", "initrds": ["{}"], "cmdline": "from-file"}},
                "machine": {{"cpus": 4, "memory_mib": 512}}, "console": "stdout"}}"#,
            kernel.display(),
            a.display()
        ))
        .unwrap();
        let from_file = VmConfig::merge(&VmmArgs::default(), file.clone()).unwrap();
        assert_eq!(from_file.machine, MachineConfig::new(4, 512).unwrap());
        assert_eq!(from_file.boot_source.initrds, vec![a.clone()]);
        assert_eq!(from_file.boot_source.cmdline, "from-file");

        let console = dir.path().join("console.log");
        let args = VmmArgs {
            initrd: vec![b.clone(), a.clone()],
            cmdline: Some("from-flag".into()),
            cpus: Some(2),
            console: Some(console.display().to_string()),
            ..Default::default()
        };
        let merged = VmConfig::merge(&args, file).unwrap();
        assert_eq!(merged.machine.cpus, 2);
        assert_eq!(
            merged.machine.memory_mib, 512,
            "unset flags keep the file's value"
        );
        assert_eq!(merged.boot_source.initrds, vec![b, a]);
        assert_eq!(merged.boot_source.cmdline, "from-flag");
        assert_eq!(merged.console, ConsoleConfig::File(console));
    }

    #[test]
    fn errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let check = |args: VmmArgs, flag: &str| {
            let err = VmConfig::merge(&args, ConfigFile::default()).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with(flag), "{message:?} should name {flag}");
        };
        check(VmmArgs::default(), "--kernel");
        check(args_with_kernel(dir.path().join("missing")), "--kernel");
        check(args_with_kernel(dir.path().to_owned()), "--kernel");
        check(
            VmmArgs {
                initrd: vec![dir.path().join("missing.cpio")],
                ..args_with_kernel(kernel.clone())
            },
            "--initrd",
        );
        check(
            VmmArgs {
                cpus: Some(0),
                ..args_with_kernel(kernel.clone())
            },
            "--cpus",
        );
        check(
            VmmArgs {
                cpus: Some(MAX_VCPUS + 1),
                ..args_with_kernel(kernel.clone())
            },
            "--cpus",
        );
        check(
            VmmArgs {
                memory: Some(63),
                ..args_with_kernel(kernel.clone())
            },
            "--memory",
        );
        check(
            VmmArgs {
                cmdline: Some("x".repeat(MAX_CMDLINE_LEN + 1)),
                ..args_with_kernel(kernel.clone())
            },
            "--cmdline",
        );
        check(
            VmmArgs {
                cmdline: Some("a\0b".into()),
                ..args_with_kernel(kernel.clone())
            },
            "--cmdline",
        );
        check(
            VmmArgs {
                console: Some(dir.path().join("no/such/dir/log").display().to_string()),
                ..args_with_kernel(kernel.clone())
            },
            "--console",
        );
        check(
            VmmArgs {
                console: Some(dir.path().display().to_string()),
                ..args_with_kernel(kernel)
            },
            "--console",
        );
    }

    #[test]
    fn boundaries_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_file(&dir);
        let args = VmmArgs {
            cpus: Some(MAX_VCPUS),
            memory: Some(64),
            cmdline: Some("x".repeat(MAX_CMDLINE_LEN)),
            ..args_with_kernel(kernel)
        };
        let config = VmConfig::merge(&args, ConfigFile::default()).unwrap();
        assert_eq!(config.machine.memory_bytes(), 64 << 20);
    }

    #[test]
    fn file_refuses_unknown_fields_and_reports_bad_files() {
        let err = ConfigFile::parse(r#"{"machine": {"cpu": 2}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cpu`"), "{err}");
        assert!(ConfigFile::parse(r#"{"boot_source": {}}"#).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, "{").unwrap();
        let args = VmmArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = VmConfig::from_args(&args).unwrap_err();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{err}");
        assert!(err.to_string().starts_with("--config"));
        let args = VmmArgs {
            config: Some(dir.path().join("absent.json")),
            ..Default::default()
        };
        assert!(matches!(
            VmConfig::from_args(&args).unwrap_err(),
            ConfigError::Unreadable {
                flag: "--config",
                ..
            }
        ));
    }
}
