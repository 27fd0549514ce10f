//! The `microvm` provider's nodes: the image booted by Baton's own VMM (`baton vmm`: direct
//! kernel boot of its vmlinuz, the initramfs with an archive of the node's configuration
//! appended as the initrd, a virtio-mmio NIC on a tap device plugged into the cluster's bridge), one VMM per
//! node, as Firecracker runs one per microVM. The VMM ends when its guest reboots (exit code
//! 3), as Firecracker's does, so each node runs under a monitor (`baton cluster vm-monitor`)
//! that starts it again then; a power-off ends both. It needs KVM that can boot Linux (`baton
//! vmm check`), which this project's machines lack: `create` refuses it there, naming why.

use std::ffi::OsString;
use std::path::Path;

use baton_image_builder::KERNEL_NAME;

/// The guest kernel's command line: the console on the serial port, a reboot through the
/// keyboard controller (the VMM's i8042 turns it into exit code 3), and a reboot at once on
/// panic (the monitor starts the node again).
pub const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// How one node's VMM runs.
#[derive(Clone, Debug)]
pub struct MicrovmNode<'a> {
    /// The machine.
    pub machine: crate::vm_machine::VmMachine<'a>,
    /// The cluster's network namespace, where the tap is.
    pub netns: &'a Path,
    /// The VMM's API socket.
    pub api_socket: &'a Path,
}

impl MicrovmNode<'_> {
    /// The arguments of `baton vmm`. The console path is also how `stop` and `destroy`
    /// recognise the node's monitor.
    pub fn vmm_args(&self) -> Vec<OsString> {
        let path = |p: &Path| p.as_os_str().to_owned();
        vec![
            "--kernel".into(),
            path(&self.machine.image_dir.join(KERNEL_NAME)),
            "--initrd".into(),
            path(self.machine.initrd),
            "--cmdline".into(),
            KERNEL_CMDLINE.into(),
            "--cpus".into(),
            self.machine.cpus.to_string().into(),
            "--memory".into(),
            self.machine.memory_mib.to_string().into(),
            "--console".into(),
            path(self.machine.console),
            "--net".into(),
            format!(
                "{},mac={},netns={}",
                self.machine.tap,
                self.machine.mac,
                self.netns.display()
            )
            .into(),
            "--disk".into(),
            // `,rw` so that a comma in the path is not taken for the option's.
            format!("{},rw", self.machine.data_disk.display()).into(),
            "--api-sock".into(),
            path(self.api_socket),
        ]
    }
}

/// `baton cluster vm-monitor` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct VmMonitorArgs {
    /// The arguments of `baton vmm`, after `--`.
    #[arg(last = true, required = true)]
    pub vmm_args: Vec<OsString>,
}

/// How many reboots within [`REBOOT_WINDOW`] the monitor follows before it gives up (a guest
/// that panics at every boot would otherwise loop for ever).
pub const MAX_REBOOTS: usize = 5;
/// See [`MAX_REBOOTS`].
pub const REBOOT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether one more reboot, after reboots at `recent` (oldest first), is still followed; keeps
/// only the reboots within the window in `recent`.
fn follow_reboot(recent: &mut Vec<std::time::Instant>, now: std::time::Instant) -> bool {
    recent.retain(|at| now.duration_since(*at) < REBOOT_WINDOW);
    recent.push(now);
    recent.len() <= MAX_REBOOTS
}

/// Runs `baton vmm VMM_ARGS` again each time its guest reboots (exit code 3), at most
/// [`MAX_REBOOTS`] times a minute; returns the exit code of the run that ended otherwise (0
/// when the guest powered off, 1 when it could not run, a signal ended it, or it rebooted too
/// often). Its lines go to its log (`nodes/NODE/vmm.log`).
pub fn run_vm_monitor(args: &VmMonitorArgs) -> i32 {
    // This very binary, also if the file was replaced since (an upgrade while the node runs).
    let exe = std::path::Path::new("/proc/self/exe");
    let mut reboots = Vec::new();
    loop {
        let status = std::process::Command::new(exe)
            .arg("vmm")
            .args(&args.vmm_args)
            .status();
        match status.map(|s| s.code()) {
            Ok(Some(3)) => {
                if !follow_reboot(&mut reboots, std::time::Instant::now()) {
                    eprintln!(
                        "the node rebooted {MAX_REBOOTS} times within {}s: giving up",
                        REBOOT_WINDOW.as_secs()
                    );
                    return 1;
                }
                eprintln!("the node rebooted: starting its VMM again");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Ok(Some(code)) => return code,
            // Ended by a signal (stop, destroy).
            Ok(None) => return 1,
            Err(err) => {
                eprintln!("error: starting baton vmm: {err}");
                return 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboots_are_followed_until_they_come_too_fast() {
        let start = std::time::Instant::now();
        let at = |secs: u64| start + std::time::Duration::from_secs(secs);
        let mut recent = Vec::new();
        for second in 0..MAX_REBOOTS as u64 {
            assert!(follow_reboot(&mut recent, at(second)));
        }
        // One more within the minute: too many.
        assert!(!follow_reboot(&mut recent, at(10)));
        // Spread out, they are followed for ever.
        let mut spread = Vec::new();
        for minute in 0..20 {
            assert!(follow_reboot(&mut spread, at(minute * 30)));
        }
    }

    #[test]
    fn a_node_vm_boots_the_image_with_its_initrd_on_its_tap() {
        let mac = crate::qemu_node::mac_address(1);
        let node = MicrovmNode {
            machine: crate::vm_machine::VmMachine {
                image_dir: Path::new("/cache/images/abc"),
                initrd: Path::new("/state/nodes/worker-1/initrd.cpio.gz"),
                console: Path::new("/state/nodes/worker-1/console.log"),
                tap: "tap-node1",
                mac: &mac,
                data_disk: Path::new("/state/nodes/worker-1/data.img"),
                memory_mib: 1024,
                cpus: 2,
            },
            netns: Path::new("/run/netns/baton-c1"),
            api_socket: Path::new("/state/nodes/worker-1/vmm.sock"),
        };
        let args: Vec<String> = node
            .vmm_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--kernel /cache/images/abc/vmlinuz --initrd /state/nodes/worker-1/initrd.cpio.gz \
             --cmdline console=ttyS0 reboot=k panic=-1 --cpus 2 --memory 1024 \
             --console /state/nodes/worker-1/console.log \
             --net tap-node1,mac=52:54:00:ba:00:01,netns=/run/netns/baton-c1 \
             --disk /state/nodes/worker-1/data.img,rw --api-sock /state/nodes/worker-1/vmm.sock"
        );
    }
}
