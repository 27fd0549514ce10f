//! A control-plane machine on QEMU's user network, for the test and the benchmark that boot
//! the node image under QEMU: its machine configuration, and the admin's credentials as files
//! (for kubectl through a forwarded port, and for `baton node`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use baton_init::MachineConfig;
use baton_init::machine_config::{ControlPlaneMember, Interface, StaticRoute};
use baton_pki::{CertAndKey, ClusterCa};

/// The guest's address on QEMU's user network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// QEMU's user-network gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// The configuration of control-plane node `control-plane-1` of a one-node cluster of `ca`, at
/// [`GUEST_IP`] on QEMU's user network.
pub fn user_network_control_plane(ca: &ClusterCa) -> MachineConfig {
    let planned = baton_cluster::configs::plan_nodes(1, 0);
    let service_account = baton_pki::ServiceAccountKey::generate().expect("a key");
    let mut config = baton_cluster::configs::machine_config(
        "qemu",
        ca,
        &service_account,
        &planned,
        &planned[0],
        &[],
    )
    .expect("a configuration");
    config.machine.network.interfaces = vec![Interface {
        name: "eth0".into(),
        addresses: vec![ipnet::Ipv4Net::new(GUEST_IP, 24).expect("a valid prefix")],
        routes: vec![StaticRoute {
            to: "0.0.0.0/0".parse().expect("a valid network"),
            via: GATEWAY,
        }],
        mtu: None,
        dhcp: false,
    }];
    config.cluster.control_plane = vec![ControlPlaneMember {
        name: planned[0].name.clone(),
        address: GUEST_IP,
    }];
    config.cluster.endpoint = format!("https://{GUEST_IP}:6443");
    config
}

/// The cluster CA and a fresh admin identity (group system:masters), written as PEM files.
#[derive(Debug)]
pub struct AdminFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The admin's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    ca_pem: String,
    admin: CertAndKey,
}

impl AdminFiles {
    /// Issues the admin identity from `ca` and writes the files into `dir`.
    pub fn write(ca: &ClusterCa, dir: &Path) -> Self {
        let admin = ca
            .issue_client(baton_pki::ADMIN_USER, Some(baton_pki::ADMIN_GROUP))
            .expect("an admin certificate");
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).expect("writing a PEM file");
            path
        };
        AdminFiles {
            ca: write("ca.crt", ca.cert_pem()),
            cert: write("admin.crt", &admin.cert_pem),
            key: write("admin.key", &admin.key_pem),
            ca_pem: ca.cert_pem().to_string(),
            admin,
        }
    }

    /// Writes an admin kubeconfig for the API server at 127.0.0.1:`port` into `dir`.
    pub fn kubeconfig(&self, dir: &Path, port: u16) -> PathBuf {
        let path = dir.join(format!("admin-{port}.kubeconfig"));
        let server = format!("https://127.0.0.1:{port}");
        let text = baton_pki::render_kubeconfig(&baton_pki::Kubeconfig {
            cluster: "qemu",
            server: &server,
            ca_pem: &self.ca_pem,
            user: baton_pki::ADMIN_USER,
            client: &self.admin,
        });
        std::fs::write(&path, text).expect("writing a kubeconfig");
        path
    }
}

/// Debian's OVMF firmware code, and the variable store a machine's copy is made from.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// See [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Adds to `qemu` what a UEFI boot of the image's system disk needs: OVMF with a copy of its
/// variables, the system disk under a copy-on-write overlay (so the built disk stays as it
/// was), and the configuration disk read-only, both as virtio disks. The copy and the overlay
/// are made in `dir`, named by `name`.
pub fn add_uefi_disks(
    qemu: &mut std::process::Command,
    dir: &Path,
    name: &str,
    system_disk: &Path,
    config_disk: &Path,
) {
    let overlay = dir.join(format!("{name}.qcow2"));
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(system_disk)
        .arg(&overlay)
        .output()
        .expect("qemu-img runs (scripts/setup installs qemu-utils)");
    assert!(
        made.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let vars = dir.join(format!("{name}-vars.fd"));
    std::fs::copy(OVMF_VARS, &vars).expect("OVMF is installed (scripts/setup installs ovmf)");
    qemu.arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "if=virtio,format=raw,readonly=on,file={}",
            config_disk.display()
        ));
}
