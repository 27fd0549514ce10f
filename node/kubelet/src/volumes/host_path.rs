//! hostPath volumes: a path of the node, checked against the volume's `type` (and created for
//! `DirectoryOrCreate` and `FileOrCreate`) as upstream's hostPath type checker does.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

/// A hostPath volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("hostPath type check failed: {path} is not a {expected}")]
    TypeCheck {
        path: String,
        expected: &'static str,
    },
    #[error("invalid hostPath type {0:?}")]
    InvalidType(String),
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HostPathError {
    let path = path.to_path_buf();
    move |source| HostPathError::Io {
        operation,
        path,
        source,
    }
}

/// Checks (or creates) the host path and returns it.
pub fn set_up(source: &HostPathVolumeSource) -> Result<PathBuf, HostPathError> {
    let path = PathBuf::from(&source.path);
    let metadata = fs::metadata(&path).ok();
    let file_type = metadata.as_ref().map(fs::Metadata::file_type);
    let wrong = |expected| {
        Err(HostPathError::TypeCheck {
            path: source.path.clone(),
            expected,
        })
    };
    match source.type_.as_deref().unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => match &metadata {
            None => {
                fs::create_dir_all(&path).map_err(io_error("create the directory", &path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("chmod", &path))?;
            }
            Some(m) if !m.is_dir() => return wrong("directory"),
            Some(_) => {}
        },
        "Directory" if !metadata.as_ref().is_some_and(fs::Metadata::is_dir) => {
            return wrong("directory");
        }
        "FileOrCreate" => match &metadata {
            None => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_error("create the directory", parent))?;
                }
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_error("create", &path))?;
            }
            Some(m) if !m.is_file() => return wrong("file"),
            Some(_) => {}
        },
        "File" if !metadata.as_ref().is_some_and(fs::Metadata::is_file) => return wrong("file"),
        "Socket" if !file_type.is_some_and(|t| t.is_socket()) => return wrong("socket"),
        "CharDevice" if !file_type.is_some_and(|t| t.is_char_device()) => {
            return wrong("character device");
        }
        "BlockDevice" if !file_type.is_some_and(|t| t.is_block_device()) => {
            return wrong("block device");
        }
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => return Err(HostPathError::InvalidType(other.to_owned())),
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some(kind.into()),
        }
    }

    #[test]
    fn or_create_types_create_and_others_check() {
        let dir = tempfile::tempdir().unwrap();
        let new_dir = dir.path().join("a/b");
        assert_eq!(
            set_up(&source(&new_dir, "DirectoryOrCreate")).unwrap(),
            new_dir
        );
        assert!(new_dir.is_dir());
        let new_file = dir.path().join("c/file");
        set_up(&source(&new_file, "FileOrCreate")).unwrap();
        assert!(new_file.is_file());
        assert_eq!(
            set_up(&source(&new_file, "Directory"))
                .unwrap_err()
                .to_string(),
            format!(
                "hostPath type check failed: {} is not a directory",
                new_file.display()
            )
        );
        assert!(set_up(&source(&new_dir, "Socket")).is_err());
        assert!(set_up(&source(&new_dir, "Directory")).is_ok());
        assert!(matches!(
            set_up(&source(&new_dir, "Bogus")),
            Err(HostPathError::InvalidType(_))
        ));
    }
}
