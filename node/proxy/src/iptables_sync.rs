//! Applies an [`IptablesRuleset`] with `iptables-restore --noflush` (Debian's iptables package:
//! the one program a node runs for the proxy, and only in this mode), then makes sure the
//! built-in chains jump into the proxy's. The first sync also removes `KUBE-` chains a previous
//! run left that are not wanted; later syncs send only the chains that changed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::iptables_rules::{IptablesRuleset, JUMPS, Table, restore_input};
use crate::nftables_sync::SyncStats;

/// Running iptables failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The program could not be started (not installed?).
    #[error("run {program} (the iptables mode needs Debian's iptables package)")]
    Start {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program} failed: {stderr}")]
    Failed {
        /// The program.
        program: &'static str,
        /// What it said.
        stderr: String,
    },
}

fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, IptablesError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Start { program, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| IptablesError::Start { program, source })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| IptablesError::Start { program, source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(IptablesError::Failed {
            program,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The proxy's chains of `table` that exist now.
fn existing_chains(table: Table) -> Result<Vec<String>, IptablesError> {
    let saved = run("iptables-save", &["-t", table.name()], None)?;
    Ok(saved
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|chain| is_proxy_chain(chain))
        .map(str::to_owned)
        .collect())
}

/// The chains this mode owns (other `KUBE-` chains, such as the kubelet's `KUBE-FIREWALL`
/// elsewhere, are left alone).
fn is_proxy_chain(chain: &str) -> bool {
    matches!(
        chain,
        "KUBE-SERVICES"
            | "KUBE-NODEPORTS"
            | "KUBE-POSTROUTING"
            | "KUBE-MARK-MASQ"
            | "KUBE-EXTERNAL-SERVICES"
    ) || ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-"]
        .iter()
        .any(|prefix| chain.starts_with(prefix))
}

/// Adds the built-in chains' jumps that are missing.
fn ensure_jumps() -> Result<(), IptablesError> {
    for (table, chain, rule) in JUMPS {
        let mut check = vec!["-w", "-t", table.name(), "-C", chain];
        check.extend_from_slice(rule);
        if run("iptables", &check, None).is_ok() {
            continue;
        }
        let mut insert = vec!["-w", "-t", table.name(), "-I", chain, "1"];
        insert.extend_from_slice(rule);
        run("iptables", &insert, None)?;
    }
    Ok(())
}

/// The iptables dataplane and what it last applied.
#[derive(Debug, Default)]
pub struct IptablesProxier {
    applied: Option<IptablesRuleset>,
}

impl IptablesProxier {
    /// A proxier that has applied nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the proxy's chains hold `wanted`.
    pub fn sync(&mut self, wanted: &IptablesRuleset) -> Result<SyncStats, IptablesError> {
        let full = self.applied.is_none();
        let mut input = restore_input(self.applied.as_ref(), wanted);
        if full {
            // Chains of a previous run that are not wanted any more.
            let mut stale = IptablesRuleset::default();
            for table in [Table::Nat, Table::Filter] {
                for chain in existing_chains(table)? {
                    if !wanted.chains.contains_key(&(table, chain.clone())) {
                        stale.chains.insert((table, chain), Vec::new());
                    }
                }
            }
            // Everything wanted is written; what a previous run left is flushed and deleted.
            input = restore_input(Some(&stale), wanted);
        }
        let changes = input
            .lines()
            .filter(|l| l.starts_with("-A") || l.starts_with("-X"))
            .count();
        let started = std::time::Instant::now();
        let result = if input.is_empty() {
            Ok(String::new())
        } else {
            run("iptables-restore", &["-w", "--noflush"], Some(&input))
        };
        match result.and_then(|_| ensure_jumps()) {
            Ok(()) => {
                self.applied = Some(wanted.clone());
                Ok(SyncStats {
                    full,
                    changes,
                    apply_time: started.elapsed(),
                })
            }
            Err(err) => {
                self.applied = None;
                Err(err)
            }
        }
    }

    /// Removes the jumps and every `KUBE-` chain.
    pub fn clean_up(&mut self) -> Result<(), IptablesError> {
        self.applied = None;
        for (table, chain, rule) in JUMPS {
            let mut delete = vec!["-w", "-t", table.name(), "-D", chain];
            delete.extend_from_slice(rule);
            while run("iptables", &delete, None).is_ok() {}
        }
        let mut input = String::new();
        for table in [Table::Filter, Table::Nat] {
            let chains = existing_chains(table)?;
            if chains.is_empty() {
                continue;
            }
            input.push_str(&format!("*{}\n", table.name()));
            for chain in &chains {
                input.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for chain in &chains {
                input.push_str(&format!("-X {chain}\n"));
            }
            input.push_str("COMMIT\n");
        }
        if !input.is_empty() {
            run("iptables-restore", &["-w", "--noflush"], Some(&input))?;
        }
        Ok(())
    }
}
