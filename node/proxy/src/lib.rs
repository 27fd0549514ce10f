//! `baton proxy`: kube-proxy for Baton nodes. It watches Services and EndpointSlices
//! ([`service_model`]), renders the node's rules ([`nftables_rules`]) and applies only what
//! changed ([`nftables_sync`]), reporting on /metrics and /healthz ([`metrics`]).

pub mod args;
pub mod dataplane;
pub mod iptables_rules;
pub mod iptables_sync;
pub mod metrics;
pub mod nftables_rules;
pub mod nftables_sync;
pub mod proxy;
pub mod service_model;

pub use args::ProxyArgs;
pub use proxy::{RunProxyError, run};
