//! `baton proxy`: kube-proxy for Baton nodes.

pub mod service_model;
