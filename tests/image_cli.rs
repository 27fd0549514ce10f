//! `baton image`: build the busybox test image, import it as an OCI archive and as a
//! `docker save` archive, list, pull from a real registry, remove; bad input names the file.

use std::process::Command;

use baton_test_harness::TempDir;
use baton_test_harness::registry::Registry;

fn baton(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .output()
        .expect("run baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn images_are_built_imported_listed_pulled_and_removed() -> anyhow::Result<()> {
    let dir = TempDir::new("image-cli")?;
    let path = |leaf: &str| dir.path().join(leaf).display().to_string();
    let store = format!("--store={}", path("store"));
    let (ok, out, err) = baton(&[
        "image",
        "build-test-image",
        "--output",
        &path("layout"),
        "--archive",
        &path("busybox.tar"),
        "--reference",
        "docker.io/library/busybox:test",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("docker.io/library/busybox:test sha256:"),
        "{out}"
    );

    let (ok, out, err) = baton(&["image", "import", &path("busybox.tar"), &store]);
    assert!(ok, "{err}");
    assert!(out.contains("docker.io/library/busybox:test"), "{out}");
    // The same image as a docker-save archive under another name imports too.
    baton_image_builder::write_docker_archive(
        &dir.path().join("layout"),
        &dir.path().join("docker.tar"),
    )?;
    let (ok, _, err) = baton(&["image", "import", &path("docker.tar"), &store]);
    assert!(ok, "{err}");
    let (ok, out, _) = baton(&["image", "list", &store]);
    assert!(ok);
    assert!(out.lines().next().unwrap().starts_with("IMAGE"), "{out}");
    assert!(out.contains("docker.io/library/busybox:test"), "{out}");

    // Pull from a registry (plain HTTP on loopback).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start().await?;
    let reference = format!("{}/tools/busybox:1", registry.host());
    baton_image_builder::push_layout(&dir.path().join("layout"), &reference, true).await?;
    let insecure = format!("--insecure-registry={}", registry.host());
    let (ok, out, err) = baton(&["image", "pull", &reference, &insecure, &store]);
    assert!(ok, "{err}");
    assert!(out.starts_with("pulled "), "{out}");
    let (ok, out, _) = baton(&["image", "list", &store]);
    assert!(ok && out.contains(&reference), "{out}");

    // Bad input: the error names the file, and the store is unchanged.
    let (_, before, _) = baton(&["image", "list", &store]);
    let (ok, _, err) = baton(&["image", "import", &path("missing.tar"), &store]);
    assert!(!ok);
    assert!(err.contains("missing.tar"), "{err}");
    let (_, after, _) = baton(&["image", "list", &store]);
    assert_eq!(before, after);

    // Removing the image removes it under every name.
    let (ok, out, err) = baton(&["image", "remove", &reference, &store]);
    assert!(ok, "{err}");
    assert!(out.starts_with("removed "), "{out}");
    let (_, after, _) = baton(&["image", "list", &store]);
    assert_eq!(after.lines().count(), 1, "{after}");
    Ok(())
}
