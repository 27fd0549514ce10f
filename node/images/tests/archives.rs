//! Import of the archives baton-image-builder writes (an OCI layout directory, an OCI layout
//! tar, a `docker save` tar) of the busybox test images: each gives the built image, under its
//! normalised name, with its layers unpacked.

use std::path::Path;

use anyhow::Result;
use baton_image_builder::{
    DEFAULT_BUSYBOX, LAYERED_ADDED_FILE, build_busybox_image, build_layered_test_image,
    write_docker_archive, write_oci_archive,
};
use baton_images::ImageStore;

#[tokio::test]
async fn imports_the_builder_archives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let busybox = build_busybox_image(Path::new(DEFAULT_BUSYBOX), &layout, "busybox:test")?;
    let layered = build_layered_test_image(
        Path::new(DEFAULT_BUSYBOX),
        &layout,
        "localhost:5000/layered:test",
    )?;
    let oci_tar = dir.path().join("oci.tar");
    let docker_tar = dir.path().join("docker.tar");
    write_oci_archive(&layout, &oci_tar)?;
    write_docker_archive(&layout, &docker_tar)?;

    for source in [&layout, &oci_tar, &docker_tar] {
        let store = ImageStore::open(&dir.path().join(format!(
            "store-{}",
            source.file_name().unwrap().to_string_lossy()
        )))?;
        let mut imported = store.import(source).await?;
        imported.sort_by_key(|i| i.layers.len());
        assert_eq!(imported.len(), 2, "{}", source.display());
        assert_eq!(imported[0].id, busybox.config_digest);
        assert_eq!(imported[1].id, layered.config_digest);
        assert_eq!(
            imported[0].repo_tags,
            ["docker.io/library/busybox:test"],
            "{}",
            source.display()
        );
        assert_eq!(imported[1].repo_tags, ["localhost:5000/layered:test"]);
        let dirs = store.layer_dirs(&imported[1]);
        assert!(dirs[0].join(LAYERED_ADDED_FILE).is_file());
        assert!(dirs[1].join("bin/busybox").is_file());
        assert_eq!(store.layer_dirs(&imported[0]), dirs[1..]);
        assert_eq!(
            store.get("busybox:test").map(|i| i.id),
            Some(busybox.config_digest.clone())
        );
    }
    Ok(())
}
