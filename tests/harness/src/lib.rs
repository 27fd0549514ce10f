//! The test harness: real etcd and real `baton apiserver` processes on free loopback ports,
//! with temporary directories, kubeconfigs for kube-rs and kubectl, and `wait_until`.
//!
//! Everything a test starts is stopped and removed when its guard is dropped, also when the
//! test fails.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod components;
mod lab;
mod local_cluster;
mod node;
mod node_cluster;
pub mod qemu_machine;
pub mod registry;

pub use components::{Component, ControlPlane, kubectl_apply, kubectl_ok};
pub use lab::{Lab, LabNode};
pub use local_cluster::{CONTROL_PLANE_SERVICES, LocalCluster, services_running_and_ready};
pub use node::KubeletNode;
pub use node_cluster::{NodeCluster, main_status, merge_json, pod_phase, waiting_reason};

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes a fresh directory under the system temp dir.
    pub fn new(label: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("baton-{label}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_until`] for synchronous tests: polls `check` every 50 ms until it returns `Some`, or
/// fails after `timeout` naming `what`.
pub fn wait_until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a child process die with the test process, even when the test is killed before its
/// guards can stop it (a SIGKILLed `cargo test` must not leave etcd running). The signal
/// follows the spawning thread: spawn from the test's own thread or a runtime worker, never
/// from a short-lived blocking-pool thread.
fn die_with_parent(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Makes a child process start in the network namespace `netns` (it joins it between fork and
/// exec; the spawning thread stays where it is).
fn in_netns<'a>(command: &'a mut Command, netns: &baton_network::NetNs) -> &'a mut Command {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;
    let fd = netns.as_fd().as_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls setns(2), which is
    // async-signal-safe; the descriptor is inherited from the parent and stays open until
    // exec (the namespace handle outlives the spawn).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A real etcd server on free loopback ports with its own data directory.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: bool,
}

/// The files of an etcd started with TLS: its CA, and a client certificate it accepts.
#[derive(Debug, Clone)]
pub struct EtcdClientTls {
    /// CA that signed etcd's serving certificate and the client certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
}

impl Etcd {
    /// Starts etcd and waits until it serves.
    pub async fn start() -> Result<Self> {
        let dir = TempDir::new("etcd")?;
        let mut etcd = Self {
            child: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls: false,
        };
        etcd.launch().await?;
        Ok(etcd)
    }

    /// Starts etcd serving HTTPS and requiring client certificates, with a CA of its own.
    pub async fn start_tls() -> Result<(Self, EtcdClientTls)> {
        let dir = TempDir::new("etcd")?;
        let ca = baton_pki::ClusterCa::generate("etcd-ca")?;
        let server =
            ca.issue_server("etcd", &["127.0.0.1".to_string(), "localhost".to_string()])?;
        let client = ca.issue_client("kube-apiserver-etcd-client", None)?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        write("server.crt", &server.cert_pem)?;
        write("server.key", &server.key_pem)?;
        let files = EtcdClientTls {
            ca: write("ca.crt", ca.cert_pem())?,
            cert: write("client.crt", &client.cert_pem)?,
            key: write("client.key", &client.key_pem)?,
        };
        let mut etcd = Self {
            child: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls: true,
        };
        etcd.launch().await?;
        Ok((etcd, files))
    }

    async fn launch(&mut self) -> Result<()> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))?;
        let mut command = Command::new("etcd");
        if self.tls {
            let d = self.dir.path();
            command
                .arg(format!("--cert-file={}", d.join("server.crt").display()))
                .arg(format!("--key-file={}", d.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", d.join("ca.crt").display()))
                .arg("--client-cert-auth");
        }
        let child = die_with_parent(&mut command)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (is Debian's etcd-server installed? run scripts/setup)")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.client_port);
        wait_until(
            "etcd to accept connections",
            Duration::from_secs(20),
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await
    }

    /// The client URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// etcd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops etcd, keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch().await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locates the `baton` binary of this build (tests pass `env!("CARGO_BIN_EXE_baton")`).
#[derive(Debug, Clone)]
pub struct Binary(pub PathBuf);

/// A running `baton apiserver` with its PKI and an admin kubeconfig.
#[derive(Debug)]
pub struct ApiServer {
    child: Option<Child>,
    binary: Binary,
    etcd_url: String,
    dir: TempDir,
    address: Ipv4Addr,
    port: u16,
    /// Extra flags given at start.
    extra: Vec<String>,
}

impl ApiServer {
    /// Makes a PKI and starts the API server against `etcd_url`.
    pub async fn start(binary: &Binary, etcd_url: &str, extra: &[&str]) -> Result<Self> {
        Self::start_at(binary, etcd_url, Ipv4Addr::LOCALHOST, extra).await
    }

    /// Makes a PKI and starts the API server listening on `address` (a lab's gateway, so that
    /// nodes in their own network namespaces reach it); the kubeconfig names that address.
    pub async fn start_at(
        binary: &Binary,
        etcd_url: &str,
        address: Ipv4Addr,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = TempDir::new("apiserver")?;
        let port = free_port()?;
        baton_pki::init(&baton_pki::PkiInitOptions {
            dir: dir.path().join("pki"),
            server: format!("https://{address}:{port}"),
            sans: vec![address.to_string()],
        })?;
        let mut server = Self {
            child: None,
            binary: binary.clone(),
            etcd_url: etcd_url.to_string(),
            dir,
            address,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> Result<()> {
        let pki = self.dir.path().join("pki");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("apiserver.log"))?;
        let child = die_with_parent(&mut Command::new(&self.binary.0))
            .arg("apiserver")
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--bind-address={}", self.address))
            .arg(format!("--secure-port={}", self.port))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("apiserver.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.join("apiserver-kubelet-client.crt").display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                pki.join("apiserver-kubelet-client.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting baton apiserver")?;
        self.child = Some(child);
        let client = self.client().await?;
        let child = self.child.as_mut().expect("just started");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("baton apiserver exited with {status}: {}", self.log());
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("valid request");
            let ok = client.request_text(request).await.is_ok_and(|t| t == "ok");
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("baton apiserver did not become ready: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// The HTTPS URL.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.address, self.port)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("pki").join("admin.kubeconfig")
    }

    /// Writes a kubeconfig (named `name`) that authenticates with `token` alone, no client
    /// certificate; returns its path.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: baton\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context: {{cluster: baton, user: {name}}}\ncurrent-context: {name}\n",
            self.url(),
            self.pki_dir().join("ca.crt").display()
        );
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The PKI directory (ca.crt, ca.key ...).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A kube-rs client authenticated as the admin.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Restarts the server on the same port, PKI and etcd.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch().await
    }

    /// Runs a kubectl binary against this server.
    pub fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Output {
        self.kubectl_with_input(kubectl, args, None)
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose output collects in a file; it is
    /// stopped when the returned guard is dropped.
    pub fn kubectl_background(&self, kubectl: &Path, args: &[&str]) -> Result<BackgroundKubectl> {
        self.kubectl_background_with_env(kubectl, args, &[])
    }

    /// [`kubectl_background`](Self::kubectl_background) with extra environment variables.
    pub fn kubectl_background_with_env(
        &self,
        kubectl: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<BackgroundKubectl> {
        let stem = self.dir.path().join(format!("kubectl-{}", free_port()?));
        let out = stem.with_extension("out");
        let err = stem.with_extension("err");
        let child = die_with_parent(&mut Command::new(kubectl))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("running {}", kubectl.display()))?;
        Ok(BackgroundKubectl { child, out, err })
    }

    /// Runs kubectl with `input` on its standard input.
    pub fn kubectl_with_input(&self, kubectl: &Path, args: &[&str], input: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(kubectl)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())
                .expect("writing kubectl stdin");
        }
        child.wait_with_output().expect("waiting for kubectl")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kubectl running in the background; killed on drop.
#[derive(Debug)]
pub struct BackgroundKubectl {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl BackgroundKubectl {
    /// What it has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it has printed on its standard error so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for BackgroundKubectl {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The kubectl binaries to test with: v1.32 and v1.33 where installed (as on these machines),
/// otherwise the `kubectl` on the PATH.
pub fn kubectl_binaries() -> Vec<PathBuf> {
    let dir = Path::new("/usr/lib/google-cloud-sdk/bin");
    let found: Vec<PathBuf> = ["kubectl.1.32", "kubectl.1.33"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    if found.is_empty() {
        vec![PathBuf::from("kubectl")]
    } else {
        found
    }
}
