//! The `process` provider's node. `baton sandbox run` is one node: a monitor process that
//! joins the node's cgroups and starts a boot process, again each time the node reboots; the
//! boot process enters the node's network namespace, makes new mount, UTS, IPC, cgroup and PID
//! namespaces, mounts the node's root (the image's unpacked initramfs as the read-only lower
//! layer of an overlay, the node's own directory as the upper, and a /var of its own on the
//! host's file system so that the kubelet's overlays work), pivots into it and starts the
//! image's /init as PID 1. Everything above the kernel is the code a VM runs.

pub mod cgroups;
pub mod launch;
pub mod node_root;

pub use cgroups::{NodeCgroups, kill_and_remove_cgroups};
pub use launch::{SandboxArgs, run_sandbox};
