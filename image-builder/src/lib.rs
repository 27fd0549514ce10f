//! Reproducible image builds for Baton. For now: the OCI test images built from Debian's
//! busybox-static ([`build_busybox_image`], [`build_layered_test_image`]), the two archive
//! formats users import ([`write_oci_archive`], [`write_docker_archive`]), and a push to a
//! registry ([`push_layout`]); the node image's initramfs ([`build_node_image`]) and its
//! unpacking ([`unpack_initramfs`]) with Debian's cloud kernel beside it and the modules the
//! node needs inside; for UEFI machines, a unified kernel image ([`uki`]) and GPT disk images
//! ([`disk_image`]): the system disk and a configuration disk ([`write_config_disk`]).

mod archive;
pub mod disk_image;
mod initramfs;
mod kernel;
mod layer;
mod node_disk;
mod node_image;
mod oci_layout;
mod push;
mod test_image;
pub mod uki;

pub use archive::{WriteArchiveError, write_docker_archive, write_oci_archive};
pub use initramfs::{Entry, EntryKind, InitramfsError, Tree, unpack_initramfs};
pub use kernel::{KERNEL_METAPACKAGE, KERNEL_NAME, NODE_MODULES, modinfo_field};
pub use layer::{BuildLayerError, BuiltLayerBlob, LayerBuilder, sha256_digest};
pub use node_disk::{
    CONFIG_DISK_SIZE, CONFIG_FILE, CONFIG_PARTITION, DEFAULT_DISK_SIZE, DISK_QCOW2_NAME,
    DISK_RAW_NAME, ESP_PARTITION, ESP_SIZE, SLOT_FILES, STATE_PARTITION, UKI_CMDLINE, UKI_NAME,
    UefiArtifacts, write_config_disk,
};
pub use node_image::{
    BuildNodeImageError, CONFIG_IN_IMAGE, INITRAMFS_NAME, MANIFEST_NAME, NodeImage,
    NodeImageOptions, PRELOADED_BUSYBOX, PRELOADED_IMAGES_DIR, ROLE_LINKS, build_node_image,
    default_cache_dir, sha256_hex, write_config_archive,
};
pub use oci_layout::{
    ANNOTATION_REF_NAME, Descriptor, Index, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST, Manifest, OciLayout, Platform, ReadLayoutError,
    WriteLayoutError,
};
pub use push::{PushImageError, push_layout, push_layout_with_credentials};
pub use test_image::{
    BuildImageError, BuiltImage, BuiltLayer, DEFAULT_BUSYBOX, IMAGE_PATH_ENV, LAYERED_ADDED_FILE,
    LAYERED_DELETED_FILE, LAYERED_MOTD, REQUIRED_APPLETS, build_busybox_image,
    build_layered_test_image, source_date_epoch,
};
