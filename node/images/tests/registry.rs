//! Pulls from a real registry (Debian's docker-registry, started by the test harness on a
//! loopback port) of the busybox test images built by baton-image-builder and pushed with
//! oci-client. Runs as root (layers keep their owners; the overlay test mounts).

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use baton_image_builder::{
    BuiltImage, DEFAULT_BUSYBOX, LAYERED_MOTD, build_busybox_image, build_layered_test_image,
    push_layout, push_layout_with_credentials,
};
use baton_images::{
    ImageStore, PullImageError, PullOptions, RegistryCredentials, mount_overlay, unmount_overlay,
};
use baton_test_harness::registry::{Registry, TEST_PASSWORD, TEST_PASSWORD_BCRYPT, TEST_USERNAME};

/// A registry with the busybox image pushed as `<host>/busybox:1` and a store to pull into.
struct Fixture {
    registry: Registry,
    dir: tempfile::TempDir,
    busybox: BuiltImage,
    store: ImageStore,
}

impl Fixture {
    async fn new() -> Result<Self> {
        let registry = Registry::start().await?;
        let dir = tempfile::tempdir()?;
        let reference = format!("{}/busybox:1", registry.host());
        let busybox = build_busybox_image(
            Path::new(DEFAULT_BUSYBOX),
            &dir.path().join("layout"),
            &reference,
        )?;
        let pushed = push_layout(&dir.path().join("layout"), &reference, true).await?;
        assert_eq!(pushed, busybox.manifest_digest);
        let store = ImageStore::open(&dir.path().join("store"))?;
        Ok(Self {
            registry,
            dir,
            busybox,
            store,
        })
    }

    fn options(&self) -> PullOptions {
        PullOptions {
            insecure_registries: vec![self.registry.host()],
            auth: None,
        }
    }

    /// Pushes the layered image as `<host>/layered:1`.
    async fn push_layered(&self) -> Result<BuiltImage> {
        let reference = format!("{}/layered:1", self.registry.host());
        let layout = self.dir.path().join("layered");
        let built = build_layered_test_image(Path::new(DEFAULT_BUSYBOX), &layout, &reference)?;
        push_layout(&layout, &reference, true).await?;
        Ok(built)
    }

    /// How many blob downloads of `repository` the registry has served.
    fn blob_gets(&self, repository: &str) -> usize {
        let needle = format!("\"GET /v2/{repository}/blobs/");
        self.registry.log().matches(&needle).count()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.store
            .root()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}

#[tokio::test]
async fn pulls_busybox_and_does_not_fetch_or_unpack_twice() -> Result<()> {
    let f = Fixture::new().await?;
    let reference = format!("{}/busybox:1", f.registry.host());
    let image = f.store.pull(&reference, &f.options()).await?;
    assert_eq!(image.id, f.busybox.config_digest);
    assert_eq!(image.manifest_digest, f.busybox.manifest_digest);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert_eq!(
        image.repo_digests,
        [format!(
            "{}/busybox@{}",
            f.registry.host(),
            f.busybox.manifest_digest
        )]
    );
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.env[0].starts_with("PATH="));
    assert_eq!(image.layers.len(), 1);

    let dirs = f.store.layer_dirs(&image);
    let busybox = std::fs::metadata(dirs[0].join("bin/busybox"))?;
    assert!(busybox.is_file() && busybox.mode() & 0o111 != 0);
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh"))?,
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(dirs[0].join("tmp"))?.mode() & 0o7777,
        0o1777
    );

    // Pull again: same image, no blob downloaded, nothing rewritten or unpacked again.
    let gets = f.blob_gets("busybox");
    assert_eq!(gets, 2, "config and layer: {}", f.registry.log());
    let layer_blob = f.blob_path(&image.layers[0].digest);
    let blob_mtime = std::fs::metadata(&layer_blob)?.modified()?;
    let busybox_inode = busybox.ino();
    let again = f.store.pull(&reference, &f.options()).await?;
    assert_eq!(again.id, image.id);
    assert_eq!(f.blob_gets("busybox"), gets);
    assert_eq!(std::fs::metadata(&layer_blob)?.modified()?, blob_mtime);
    assert_eq!(
        std::fs::metadata(dirs[0].join("bin/busybox"))?.ino(),
        busybox_inode
    );

    // Lookups by the names users type, and by ID.
    assert_eq!(
        f.store.get(&reference).map(|i| i.id),
        Some(image.id.clone())
    );
    assert_eq!(
        f.store
            .get(&format!(
                "{}/busybox@{}",
                f.registry.host(),
                f.busybox.manifest_digest
            ))
            .map(|i| i.id),
        Some(image.id.clone())
    );
    assert!(f.store.get(&image.id).is_some());

    // A reopened store (a restarted kubelet) knows the image.
    let reopened = ImageStore::open(f.store.root())?;
    assert_eq!(reopened.list().len(), 1);
    Ok(())
}

#[tokio::test]
async fn layered_image_shares_the_base_layer_and_mounts_with_the_whiteout() -> Result<()> {
    let f = Fixture::new().await?;
    let busybox = f
        .store
        .pull(&format!("{}/busybox:1", f.registry.host()), &f.options())
        .await?;
    let base_dir = f.store.layer_dirs(&busybox)[0].clone();
    let base_inode = std::fs::metadata(base_dir.join("bin/busybox"))?.ino();

    let built = f.push_layered().await?;
    let layered = f
        .store
        .pull(&format!("{}/layered:1", f.registry.host()), &f.options())
        .await?;
    assert_eq!(layered.id, built.config_digest);
    assert_eq!(layered.layers.len(), 2);
    let dirs = f.store.layer_dirs(&layered);
    // Top first; the base is the busybox image's layer, not unpacked again.
    assert_eq!(dirs[1], base_dir);
    assert_eq!(
        std::fs::metadata(base_dir.join("bin/busybox"))?.ino(),
        base_inode
    );
    assert_eq!(
        f.blob_gets("layered"),
        2,
        "config and top layer only: {}",
        f.registry.log()
    );
    let whiteout = std::fs::symlink_metadata(dirs[0].join("etc/os-release"))?;
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);

    let container = f.dir.path().join("containers/c1");
    let guard = UnmountGuard(container.clone());
    let rootfs = mount_overlay(&dirs, &container)?;
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd"))?,
        LAYERED_MOTD
    );
    assert!(!rootfs.join("etc/os-release").exists());
    assert!(rootfs.join("etc/passwd").exists());
    assert!(rootfs.join("bin/busybox").is_file());
    drop(guard);
    assert!(!baton_images::is_mount_point(&rootfs));

    // Removing the layered image keeps the shared base layer for busybox.
    f.store.remove(&layered.id).await?;
    assert!(!dirs[0].exists());
    assert!(base_dir.join("bin/busybox").exists());
    assert!(f.store.get(&busybox.id).is_some());
    Ok(())
}

#[tokio::test]
async fn concurrent_pulls_fetch_and_unpack_once() -> Result<()> {
    let f = Fixture::new().await?;
    let reference = format!("{}/busybox:1", f.registry.host());
    let options = f.options();
    let (a, b) = tokio::join!(
        f.store.pull(&reference, &options),
        f.store.pull(&reference, &options)
    );
    assert_eq!(a?.id, b?.id);
    assert_eq!(f.blob_gets("busybox"), 2, "{}", f.registry.log());
    assert_eq!(std::fs::read_dir(f.store.root().join("layers"))?.count(), 1);
    Ok(())
}

#[tokio::test]
async fn a_missing_tag_is_not_found() -> Result<()> {
    let f = Fixture::new().await?;
    let reference = format!("{}/busybox:nope", f.registry.host());
    let err = f.store.pull(&reference, &f.options()).await.unwrap_err();
    assert!(matches!(err, PullImageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to pull and unpack image \"{reference}\": failed to resolve reference \"{reference}\": {reference}: not found"
        )
    );
    let missing_repo = format!("{}/nothing-here:1", f.registry.host());
    let err = f.store.pull(&missing_repo, &f.options()).await.unwrap_err();
    assert!(matches!(err, PullImageError::NotFound { .. }), "{err:?}");
    assert!(f.store.list().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_closed_port_is_unreachable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let port = baton_test_harness::free_port()?;
    let host = format!("127.0.0.1:{port}");
    let reference = format!("{host}/busybox:1");
    let options = PullOptions {
        insecure_registries: vec![host.clone()],
        auth: None,
    };
    let err = store.pull(&reference, &options).await.unwrap_err();
    match &err {
        PullImageError::Unreachable {
            registry, cause, ..
        } => {
            assert_eq!(registry, &host);
            assert_eq!(cause, "connection refused");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&reference), "{err}");
    Ok(())
}

#[tokio::test]
async fn digests_that_do_not_match_are_refused_and_leave_nothing() -> Result<()> {
    let f = Fixture::new().await?;
    let host = f.registry.host();

    // Pinned to a digest the registry does not have: not found.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let err = f
        .store
        .pull(&format!("{host}/busybox@{unknown}"), &f.options())
        .await
        .unwrap_err();
    assert!(matches!(err, PullImageError::NotFound { .. }), "{err:?}");

    // The registry serves other bytes than the pinned digest (its stored manifest altered,
    // still valid JSON): a digest mismatch.
    let manifest = f.registry.blob_data_path(&f.busybox.manifest_digest);
    let mut bytes = std::fs::read(&manifest).context("registry manifest blob")?;
    bytes.insert(1, b' ');
    std::fs::write(&manifest, &bytes)?;
    let pinned = format!("{host}/busybox@{}", f.busybox.manifest_digest);
    let err = f.store.pull(&pinned, &f.options()).await.unwrap_err();
    assert!(
        matches!(err, PullImageError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("digest mismatch"), "{err}");

    // A corrupt layer blob: refused while downloading; no blob, layer or image is left.
    let built = f.push_layered().await?;
    let top = &built.layers[1];
    let data = f.registry.blob_data_path(&top.digest);
    let mut bytes = std::fs::read(&data)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes)?;
    let err = f
        .store
        .pull(&format!("{host}/layered:1"), &f.options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullImageError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(!f.blob_path(&top.digest).exists());
    let chain = baton_images::chain_ids(&[built.layers[0].diff_id.clone(), top.diff_id.clone()]);
    assert!(
        !f.store
            .root()
            .join("layers")
            .join(chain[1].trim_start_matches("sha256:"))
            .exists()
    );
    assert_eq!(std::fs::read_dir(f.store.root().join("tmp"))?.count(), 0);
    assert!(f.store.list().is_empty());
    Ok(())
}

#[tokio::test]
async fn basic_auth_is_sent_and_refusals_are_unauthorized() -> Result<()> {
    let registry = Registry::start_with_basic_auth(TEST_USERNAME, TEST_PASSWORD_BCRYPT).await?;
    let dir = tempfile::tempdir()?;
    let reference = format!("{}/private:1", registry.host());
    let layout = dir.path().join("layout");
    let built = build_busybox_image(Path::new(DEFAULT_BUSYBOX), &layout, &reference)?;
    assert!(push_layout(&layout, &reference, true).await.is_err());
    push_layout_with_credentials(
        &layout,
        &reference,
        true,
        Some((TEST_USERNAME, TEST_PASSWORD)),
    )
    .await?;

    let store = ImageStore::open(&dir.path().join("store"))?;
    let options = |auth| PullOptions {
        insecure_registries: vec![registry.host()],
        auth,
    };
    for auth in [
        None,
        Some(RegistryCredentials::Basic {
            username: TEST_USERNAME.into(),
            password: "wrong".into(),
        }),
    ] {
        let err = store.pull(&reference, &options(auth)).await.unwrap_err();
        assert!(
            matches!(err, PullImageError::Unauthorized { .. }),
            "{err:?}"
        );
    }
    let image = store
        .pull(
            &reference,
            &options(Some(RegistryCredentials::Basic {
                username: TEST_USERNAME.into(),
                password: TEST_PASSWORD.into(),
            })),
        )
        .await?;
    assert_eq!(image.id, built.config_digest);
    Ok(())
}

#[tokio::test]
async fn images_in_use_survive_garbage_collection() -> Result<()> {
    let f = Fixture::new().await?;
    let busybox = f
        .store
        .pull(&format!("{}/busybox:1", f.registry.host()), &f.options())
        .await?;
    f.push_layered().await?;
    let layered = f
        .store
        .pull(&format!("{}/layered:1", f.registry.host()), &f.options())
        .await?;
    f.store.mark_used(&busybox.id)?;
    // A high threshold of 1% is always passed: every unused image goes.
    let in_use = HashSet::from([busybox.id.clone()]);
    let result = f.store.garbage_collect(&in_use, 1, 0).await;
    let removed = match result {
        Ok(report) => report.removed,
        Err(baton_images::GarbageCollectError::NotEnoughFreed { removed, .. }) => removed,
        Err(e) => return Err(e.into()),
    };
    assert_eq!(removed, std::slice::from_ref(&layered.id));
    assert!(f.store.get(&layered.id).is_none());
    let base = &f.store.layer_dirs(&busybox)[0];
    assert!(base.join("bin/busybox").exists());
    Ok(())
}

/// Unmounts a container's rootfs on drop, also when the test fails.
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        if let Err(e) = unmount_overlay(&self.0) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}
