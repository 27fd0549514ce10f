//! Baton's PID 1. It boots the node as a list of named phases (mounts, cgroups, modules,
//! machine configuration, hostname, sysctls, state, network, credentials), then runs the
//! node's services under a supervisor (dependency order, readiness, restart with backoff, log
//! rings, reaping of every child) until a power request, and shuts down in reverse order. The
//! same code runs on a machine and as PID 1 of a namespace sandbox (the `process` provider),
//! where it skips only what belongs to a machine.

pub mod api_balancer;
pub mod apply_config;
pub mod boot;
pub mod bootstrap_network;
pub mod cgroups;
pub mod config_fetch;
pub mod config_source;
pub mod credentials;
pub mod data_disk;
pub mod dhcp;
pub mod entropy;
pub mod environment;
pub mod log_ring;
pub mod machine_config;
pub mod modules;
pub mod mounts;
pub mod network_setup;
pub mod node_api;
pub mod node_services;
pub mod partitions;
pub mod phases;
pub mod power;
pub mod preload;
pub mod readiness;
pub mod service;
pub mod supervisor;
pub mod sysctls;
pub mod time_sync;
pub mod vsock_host;
pub mod vsock_power;

pub use boot::run_init;
pub use environment::Environment;
pub use machine_config::{LoadMachineConfigError, MachineConfig, Role};
pub use power::{PowerAction, REBOOT_EXIT_CODE};
pub use service::{Backoff, Readiness, RestartPolicy, ServiceSpec};
pub use supervisor::{
    ReapMode, ServiceState, ServiceStatus, Supervisor, SupervisorHandle, SupervisorOptions,
};
