//! `baton proxy`: kube-proxy for Baton nodes. It watches Services and EndpointSlices
//! ([`service_model`]), renders the node's rules ([`nftables_rules`]) and applies only what
//! changed ([`nftables_sync`]), reporting on /metrics and /healthz ([`metrics`]) and on the
//! health check node ports of Services with a Local external policy ([`health_check`]). The other
//! modes: upstream's iptables chains ([`iptables_rules`]), IPVS virtual services
//! ([`ipvs_rules`], applied by [`ipvs_sync`]) and a proxy in the process ([`userspace`]).

pub mod args;
pub mod dataplane;
pub mod health_check;
pub mod iptables_rules;
pub mod iptables_sync;
pub mod ipvs_rules;
pub mod ipvs_sync;
pub mod metrics;
pub mod nftables_rules;
pub mod nftables_sync;
pub mod proxy;
pub mod service_model;
pub mod stale_flows;
pub mod userspace;

pub use args::ProxyArgs;
pub use proxy::{RunProxyError, run};
