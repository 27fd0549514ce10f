//! The images a node starts with: OCI archives the image carries, imported into the kubelet's
//! image store before the kubelet starts, so that pods of those images run without a
//! registry.

use std::path::{Path, PathBuf};

/// Where the image keeps the archives (see baton-image-builder's `PRELOADED_IMAGES_DIR`).
pub const PRELOADED_IMAGES: &str = "/usr/share/baton/images";

/// Why the preloaded images could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum PreloadImagesError {
    /// The image store could not be opened.
    #[error("opening the image store {0}")]
    Open(PathBuf, #[source] baton_images::OpenStoreError),
    /// An archive could not be imported.
    #[error("importing preloaded image {0}")]
    Import(PathBuf, #[source] baton_images::ImportImageError),
}

/// Imports every `.tar` in `dir` into the store at `store_root`; returns the image names.
pub async fn preload_images(
    dir: &Path,
    store_root: &Path,
) -> Result<Vec<String>, PreloadImagesError> {
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect()
        })
        .unwrap_or_default();
    archives.sort();
    if archives.is_empty() {
        return Ok(Vec::new());
    }
    let store = baton_images::ImageStore::open(store_root)
        .map_err(|err| PreloadImagesError::Open(store_root.to_path_buf(), err))?;
    let mut names = Vec::new();
    for archive in archives {
        let images = store
            .import(&archive)
            .await
            .map_err(|err| PreloadImagesError::Import(archive.clone(), err))?;
        names.extend(images.into_iter().flat_map(|i| i.repo_tags));
    }
    Ok(names)
}
