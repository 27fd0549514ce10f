//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/sha256/<hex>`): writing
//! blobs and index entries reproducibly (compact JSON with a fixed field order), and reading
//! them back for the archive writers and the push.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layer::sha256_digest;

/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation naming an image in an index (`org.opencontainers.image.ref.name`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The `oci-layout` marker file's content.
const LAYOUT_MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Errors writing to an OCI layout directory.
#[derive(Debug, thiserror::Error)]
pub enum WriteLayoutError {
    /// A file or directory of the layout could not be written.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The existing index.json could not be read.
    #[error("updating the index of {dir}")]
    ReadIndex {
        /// The layout directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<ReadLayoutError>,
    },
}

/// Errors reading an OCI layout directory.
#[derive(Debug, thiserror::Error)]
pub enum ReadLayoutError {
    /// A file of the layout could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// index.json or a manifest is not valid JSON of the expected shape.
    #[error("parsing {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("unsupported digest {digest:?}")]
    InvalidDigest {
        /// The digest.
        digest: String,
    },
    /// A blob's content does not hash to its name.
    #[error("blob {digest} does not match its digest")]
    CorruptBlob {
        /// The digest.
        digest: String,
    },
    /// No index entry carries the requested name (or, without a name, there is not exactly
    /// one entry).
    #[error("no image {reference:?} in {dir}")]
    ImageNotFound {
        /// The requested name ("" for "the only image").
        reference: String,
        /// The layout directory.
        dir: PathBuf,
    },
}

/// A platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, on index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (sorted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// A descriptor of `data`.
    pub fn of(media_type: &str, data: &[u8]) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: sha256_digest(data),
            size: data.len() as u64,
            platform: None,
            annotations: None,
        }
    }

    /// The `org.opencontainers.image.ref.name` annotation.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str)
    }
}

/// An OCI image index (`index.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The images.
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Creates the layout's directories and `oci-layout` marker (keeping existing content).
    pub fn create(dir: &Path) -> Result<Self, WriteLayoutError> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|source| WriteLayoutError::Io {
            path: blobs.clone(),
            source,
        })?;
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        layout.write_file(&dir.join("oci-layout"), LAYOUT_MARKER.as_bytes())?;
        Ok(layout)
    }

    /// Opens an existing layout directory.
    pub fn open(dir: &Path) -> Result<Self, ReadLayoutError> {
        let marker = dir.join("oci-layout");
        std::fs::metadata(&marker).map_err(|source| ReadLayoutError::Io {
            path: marker,
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of blob `digest` (which must be a well-formed sha256 digest).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ReadLayoutError> {
        let hex = digest_hex(digest)?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Stores `data` as a blob and returns its descriptor.
    pub fn write_blob(
        &self,
        media_type: &str,
        data: &[u8],
    ) -> Result<Descriptor, WriteLayoutError> {
        let descriptor = Descriptor::of(media_type, data);
        let path = self
            .blob_path(&descriptor.digest)
            .expect("sha256_digest gives a valid digest");
        self.write_file(&path, data)?;
        Ok(descriptor)
    }

    /// Reads blob `digest`, checking its content against the digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ReadLayoutError> {
        let path = self.blob_path(digest)?;
        let data = std::fs::read(&path).map_err(|source| ReadLayoutError::Io { path, source })?;
        if sha256_digest(&data) != digest {
            return Err(ReadLayoutError::CorruptBlob {
                digest: digest.to_string(),
            });
        }
        Ok(data)
    }

    /// Reads and parses manifest `digest`.
    pub fn read_manifest(&self, digest: &str) -> Result<Manifest, ReadLayoutError> {
        let data = self.read_blob(digest)?;
        serde_json::from_slice(&data).map_err(|source| ReadLayoutError::Json {
            path: self.blob_path(digest).expect("checked by read_blob"),
            source,
        })
    }

    /// Reads `index.json` (an empty index when there is none yet).
    pub fn index(&self) -> Result<Index, ReadLayoutError> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| ReadLayoutError::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(MEDIA_TYPE_INDEX.to_string()),
                manifests: Vec::new(),
            }),
            Err(source) => Err(ReadLayoutError::Io { path, source }),
        }
    }

    /// Adds `entry` to `index.json`, replacing an entry with the same ref name.
    pub fn add_to_index(&self, entry: Descriptor) -> Result<(), WriteLayoutError> {
        let mut index = self.index().map_err(|e| WriteLayoutError::ReadIndex {
            dir: self.dir.clone(),
            source: Box::new(e),
        })?;
        let name = entry.ref_name().map(str::to_string);
        index
            .manifests
            .retain(|m| name.is_none() || m.ref_name() != name.as_deref());
        index.manifests.push(entry);
        let json = serde_json::to_vec(&index).expect("an index serialises");
        self.write_file(&self.dir.join("index.json"), &json)
    }

    /// The index entry named `reference`, or the only entry when `reference` is `None`.
    pub fn find_image(&self, reference: Option<&str>) -> Result<Descriptor, ReadLayoutError> {
        let index = self.index()?;
        let found = match reference {
            Some(name) => index
                .manifests
                .iter()
                .find(|m| m.ref_name() == Some(name))
                .cloned(),
            None if index.manifests.len() == 1 => index.manifests.first().cloned(),
            None => None,
        };
        found.ok_or_else(|| ReadLayoutError::ImageNotFound {
            reference: reference.unwrap_or_default().to_string(),
            dir: self.dir.clone(),
        })
    }

    /// Writes `data` to `path` through a temporary file in the same directory.
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<(), WriteLayoutError> {
        let io = |source| WriteLayoutError::Io {
            path: path.to_path_buf(),
            source,
        };
        let parent = path.parent().unwrap_or(&self.dir);
        let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
        tmp.write_all(data).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        set_readable(path).map_err(io)
    }
}

/// Temporary files are created 0600; layout files are world-readable like any other build
/// output.
fn set_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// The hex part of a `sha256:<64 hex>` digest.
pub fn digest_hex(digest: &str) -> Result<&str, ReadLayoutError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(ReadLayoutError::InvalidDigest {
            digest: digest.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_index_entries_replace_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let blob = layout.write_blob(MEDIA_TYPE_CONFIG, b"{}").unwrap();
        assert_eq!(layout.read_blob(&blob.digest).unwrap(), b"{}");
        let named = |name: &str, digest: &str| Descriptor {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_REF_NAME.to_string(),
                name.to_string(),
            )])),
            ..Descriptor::of(MEDIA_TYPE_MANIFEST, digest.as_bytes())
        };
        layout.add_to_index(named("a:1", "x")).unwrap();
        layout.add_to_index(named("b:1", "y")).unwrap();
        layout.add_to_index(named("a:1", "z")).unwrap();
        let index = OciLayout::open(dir.path()).unwrap().index().unwrap();
        let names: Vec<_> = index.manifests.iter().map(|m| m.ref_name()).collect();
        assert_eq!(names, [Some("b:1"), Some("a:1")]);
        assert_eq!(
            layout.find_image(Some("a:1")).unwrap().digest,
            sha256_digest(b"z")
        );
        assert!(layout.find_image(None).is_err());
    }

    #[test]
    fn rejects_bad_digests_and_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        assert!(matches!(
            layout.blob_path("sha256:../../etc/passwd"),
            Err(ReadLayoutError::InvalidDigest { .. })
        ));
        let blob = layout.write_blob(MEDIA_TYPE_CONFIG, b"{}").unwrap();
        std::fs::write(layout.blob_path(&blob.digest).unwrap(), b"{ }").unwrap();
        assert!(matches!(
            layout.read_blob(&blob.digest),
            Err(ReadLayoutError::CorruptBlob { .. })
        ));
    }
}
