//! The node's content-addressed OCI image store.
//!
//! [`ImageStore`] keeps blobs under `blobs/sha256/`, each layer unpacked once under
//! `layers/<chain ID>/` in the form overlayfs expects of a lower directory (OCI whiteouts and
//! opaque directories converted), and an index of images (`images.json`). Images come from
//! [`ImageStore::import`] (OCI layouts and archives, `docker save` archives) and
//! [`ImageStore::pull`] (OCI registries, through `oci-client`). Containers get their root
//! filesystem from [`ImageStore::layer_dirs`] and [`mount_overlay`]. Nothing is ever
//! half-written: content is verified, written to `tmp/` and renamed into place.

mod blobs;
mod digest;
mod gc;
mod image;
mod import;
mod index;
mod layers;
mod locks;
mod manifest;
mod pull;
mod reference;
mod rootfs;
mod source;
mod store;
mod unpack;

pub use blobs::WriteBlobError;
pub use digest::{InvalidDigestError, chain_ids};
pub use gc::{DiskUsage, DiskUsageError, GarbageCollectError, GcReport};
pub use image::{Image, ImageConfig, ImageLayer};
pub use import::ImportImageError;
pub use index::ImageIndexError;
pub use manifest::InvalidImageError;
pub use pull::{PullImageError, PullOptions, RegistryCredentials};
pub use reference::{ImageReference, ParseReferenceError, is_image_id, normalize_reference};
pub use rootfs::{MountRootfsError, is_mount_point, mount_overlay, unmount_overlay};
pub use store::{DEFAULT_ROOT, ImageStore, OpenStoreError, RemoveImageError};
pub use unpack::{OVERLAY_OPAQUE_XATTR, UnpackLayerError};

/// `error` and its causes joined with ": " (for messages that must say everything in one
/// line, such as a pod's ErrImagePull message).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
