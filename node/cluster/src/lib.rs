//! `baton cluster`: a whole Kubernetes cluster on this one machine. `create` makes the PKI
//! and a machine configuration per node, an isolated network (a namespace named for the
//! cluster with a bridge, one veth per node), boots the nodes from the Baton image with a
//! provider (`process`: the image's root and init in namespaces of their own; `qemu`: the
//! image booted by QEMU with a tap on the cluster's bridge), starts a
//! forwarder from 127.0.0.1 to the API server, waits for every node to be Ready and DNS to
//! answer, and merges a `baton-NAME` context into the kubeconfig. `list`, `status`, `stop`,
//! `start` and `destroy` find clusters again from their state on disk; `start` boots a stopped
//! cluster (also after a host restart) from the directory it kept.

pub mod boot;
pub mod configs;
pub mod create;
pub mod destroy;
pub mod dns_probe;
pub mod forwarder;
pub mod image_cache;
pub mod kubeconfig;
pub mod microvm_node;
pub mod network;
pub mod node_access;
pub mod progress;
pub mod qemu_node;
pub mod start;
pub mod state;
pub mod status;
pub mod stop;
pub mod vm_machine;

pub use create::{CreateArgs, CreateClusterError, CreatedCluster, Provider, create_cluster};
pub use destroy::{DestroyClusterError, destroy_cluster};
pub use forwarder::{ForwardArgs, run_forwarder};
pub use start::{StartArgs, StartClusterError, start_cluster};
pub use state::{ClusterState, cluster_dir};
pub use stop::{StopClusterError, stop_cluster};
