//! `baton cluster list` and `baton cluster status NAME`.

use std::fmt::Write;

use crate::state::{ClusterState, node_running, now_secs};

/// The table `baton cluster list` prints.
pub fn list_table(clusters: &[ClusterState]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:>7} {:>10}\n",
        "NAME", "PROVIDER", "RUNNING", "AGE"
    );
    for cluster in clusters {
        let running = cluster
            .nodes
            .iter()
            .filter(|node| node_running(cluster, node))
            .count();
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>7} {:>10}",
            cluster.name,
            cluster.provider,
            format!("{running}/{}", cluster.nodes.len()),
            age(cluster.created_at)
        );
    }
    out
}

/// The table `baton cluster status NAME` prints.
pub fn status_table(cluster: &ClusterState) -> String {
    let mut out = format!(
        "cluster {} (provider {}, API server https://127.0.0.1:{}, kubeconfig context baton-{})\n",
        cluster.name, cluster.provider, cluster.api_port, cluster.name
    );
    let _ = writeln!(
        out,
        "{:<18} {:<14} {:<14} {:>8} {:<8} {:>8} {:>12}",
        "NODE", "ROLE", "ADDRESS", "PID", "PROCESS", "AGE", "READY AFTER"
    );
    for node in &cluster.nodes {
        let running = node_running(cluster, node);
        let _ = writeln!(
            out,
            "{:<18} {:<14} {:<14} {:>8} {:<8} {:>8} {:>12}",
            node.name,
            node.role,
            node.ip,
            node.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            if running { "running" } else { "stopped" },
            age(node.started_at),
            node.ready_after_ms
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
        );
    }
    out
}

/// An age like kubectl shows it (`45s`, `3m`, `2h`, `4d`).
fn age(since: u64) -> String {
    let secs = now_secs().saturating_sub(since);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
