//! The console resource: where the serial port's output goes.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// Where the guest's serial console output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or appended to when the VM starts.
    File(PathBuf),
    /// A Unix socket the VMM listens on (`socket:PATH`): its client reads the output and
    /// types the input.
    Socket(PathBuf),
}

impl ConsoleConfig {
    /// Parses `stdout`, `socket:PATH` or a file path, as `--console` takes it.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        if value == "stdout" {
            return Ok(Self::Stdout);
        }
        if let Some(path) = value.strip_prefix("socket:") {
            let path = PathBuf::from(path);
            super::check_free_socket_path(&path).map_err(|reason| ConfigError::Console {
                value: value.to_owned(),
                reason,
            })?;
            return Ok(Self::Socket(path));
        }
        if value.is_empty() {
            return Err(ConfigError::Console {
                value: value.to_owned(),
                reason: "expected `stdout`, `socket:PATH` or a file path",
            });
        }
        let path = PathBuf::from(value);
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(ConfigError::Console {
                value: value.to_owned(),
                reason: "its directory does not exist",
            });
        }
        if path.is_dir() {
            return Err(ConfigError::Console {
                value: value.to_owned(),
                reason: "it is a directory",
            });
        }
        Ok(Self::File(path))
    }
}
