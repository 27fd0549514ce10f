//! A real OCI registry for tests: Debian's `docker-registry` (Distribution 2.8) serving plain
//! HTTP on a free loopback port, with its filesystem storage in a temporary directory. The
//! process is killed and the directory removed when the guard is dropped, also when the test
//! fails.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{TempDir, die_with_parent, free_port, kill, wait_until};

/// User name of [`Registry::start_with_basic_auth`] registries in tests.
pub const TEST_USERNAME: &str = "baton";
/// Password of [`TEST_USERNAME`].
pub const TEST_PASSWORD: &str = "baton-test-password";
/// bcrypt hash of [`TEST_PASSWORD`] (the registry's htpasswd files hold bcrypt only).
pub const TEST_PASSWORD_BCRYPT: &str =
    "$2b$12$yat9AOfA0mQYXO8VYd/2uu3GqRdIEyYnBpkg7Vao3d2zQgxk.pYZO";

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    address: Ipv4Addr,
    port: u16,
}

impl Registry {
    /// Starts an open (anonymous) registry and waits until it serves.
    pub async fn start() -> Result<Self> {
        Self::launch(Ipv4Addr::LOCALHOST, None).await
    }

    /// Starts an open registry listening on `address` (a lab's gateway, for nodes in their own
    /// network namespaces).
    pub async fn start_at(address: Ipv4Addr) -> Result<Self> {
        Self::launch(address, None).await
    }

    /// Starts a registry that requires HTTP basic authentication as `username` with the
    /// password whose bcrypt hash is `bcrypt_hash` (see [`TEST_PASSWORD_BCRYPT`]).
    pub async fn start_with_basic_auth(username: &str, bcrypt_hash: &str) -> Result<Self> {
        Self::launch(
            Ipv4Addr::LOCALHOST,
            Some(format!("{username}:{bcrypt_hash}\n")),
        )
        .await
    }

    /// Starts a registry requiring HTTP basic authentication (as
    /// [`start_with_basic_auth`](Self::start_with_basic_auth)) on `address:port`: a lab's
    /// gateway, on a port chosen before the nodes that must call it insecure are started.
    pub async fn start_with_basic_auth_at(
        address: Ipv4Addr,
        port: u16,
        username: &str,
        bcrypt_hash: &str,
    ) -> Result<Self> {
        Self::launch_on(address, port, Some(format!("{username}:{bcrypt_hash}\n"))).await
    }

    async fn launch(address: Ipv4Addr, htpasswd: Option<String>) -> Result<Self> {
        Self::launch_on(address, free_port()?, htpasswd).await
    }

    async fn launch_on(address: Ipv4Addr, port: u16, htpasswd: Option<String>) -> Result<Self> {
        let dir = TempDir::new("registry")?;
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}:{port}\n",
            storage.display()
        );
        if let Some(htpasswd) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, htpasswd)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: baton-test\n    path: {}\n",
                path.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = die_with_parent(&mut Command::new("docker-registry"))
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (is Debian's docker-registry installed? run scripts/setup)")?;
        let mut registry = Self {
            child: Some(child),
            dir,
            address,
            port,
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let addr = self.host();
        let child = &mut self.child;
        let ready = wait_until(
            &format!("docker-registry to listen on {addr}"),
            Duration::from_secs(20),
            || {
                let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let addr = addr.clone();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    tokio::net::TcpStream::connect(&addr)
                        .await
                        .ok()
                        .map(|_| Ok(()))
                }
            },
        )
        .await;
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => bail!("docker-registry exited with {status}: {}", self.log()),
            Err(err) => bail!("{err}: {}", self.log()),
        }
    }

    /// `<address>:<port>`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// The registry's storage root (Distribution's filesystem driver layout).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the content of blob `digest` (`sha256:<hex>`), for tests that
    /// corrupt it.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
