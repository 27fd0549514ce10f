//! Baton's kubelet: the node agent that runs the pods bound to its node. It registers the
//! node and keeps its status and Lease ([`node_status`]), gives each pod bound to it a worker
//! ([`pod_worker`]) that runs the pod's containers through the runtime process
//! (`baton-runtime`, libcontainer) from images of the node's store (`baton-images`), and posts
//! the pods' statuses ([`pod_status`]).

pub mod args;
pub mod backoff;
pub mod cgroup_names;
pub mod cgroups;
pub mod cni_network;
pub mod container_spec;
pub mod container_start;
pub mod container_stop;
pub mod context;
pub mod env;
pub mod ephemeral_containers;
pub mod events;
pub mod hooks;
pub mod image_gc;
pub mod kubelet;
pub mod machine;
pub mod node_network;
pub mod node_status;
pub mod pod_dirs;
pub mod pod_network;
pub mod pod_status;
pub mod pod_worker;
pub mod probes;
pub mod pull_secrets;
pub mod qos;
pub use baton_quantity as quantity;
pub mod server;
pub mod stats;
pub mod volumes;

pub use args::KubeletArgs;
pub use kubelet::{RunKubeletError, run};

/// The Kubernetes version the kubelet reports (nodeInfo.kubeletVersion).
pub const KUBELET_VERSION: &str = "v1.33.0";
