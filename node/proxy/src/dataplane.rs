//! The proxy's dataplane, whichever mode: render the desired state, apply it, clean up. A mode
//! that starts removes what the other modes left (upstream's behaviour when the mode changes).

use crate::args::ProxyMode;
use crate::iptables_rules::render_iptables;
use crate::iptables_sync::{IptablesError, IptablesProxier};
use crate::ipvs_sync::{IpvsError, IpvsProxier, clean_up_ipvs};
use crate::nftables_rules::RuleSettings;
use crate::nftables_sync::{NftablesProxier, SyncStats};
use crate::service_model::ProxyState;
use crate::userspace::{UserspaceError, UserspaceProxier, clean_up_addresses};

/// Programming the dataplane failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// An nf_tables batch was refused.
    #[error(transparent)]
    Nftables(#[from] baton_nftables::ApplyBatchError),
    /// iptables failed.
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    /// The userspace proxy could not be set up.
    #[error(transparent)]
    Userspace(#[from] UserspaceError),
    /// IPVS could not be programmed.
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
}

/// One mode's proxier.
#[derive(Debug)]
pub enum Dataplane {
    /// nftables.
    Nftables(NftablesProxier),
    /// iptables.
    Iptables(IptablesProxier),
    /// The proxy in the process.
    Userspace(UserspaceProxier),
    /// IPVS.
    Ipvs(IpvsProxier),
}

impl Dataplane {
    /// Opens `mode`'s dataplane.
    pub fn open(mode: ProxyMode) -> Result<Self, DataplaneError> {
        Ok(match mode {
            ProxyMode::Nftables => Dataplane::Nftables(NftablesProxier::new()?),
            ProxyMode::Iptables => Dataplane::Iptables(IptablesProxier::new()),
            ProxyMode::Userspace => Dataplane::Userspace(UserspaceProxier::new()),
            ProxyMode::Ipvs => Dataplane::Ipvs(IpvsProxier::new()),
        })
    }

    /// For the userspace mode: each service port and the endpoints its cluster IP leads to.
    pub fn userspace_backends(&self) -> Option<Vec<(String, usize)>> {
        match self {
            Dataplane::Userspace(proxier) => Some(proxier.backends()),
            _ => None,
        }
    }

    /// Removes the rules of the modes other than this one (what is not there is no error).
    pub fn clean_up_other_modes(&self) {
        let iptables = || {
            // Without iptables installed there is nothing of it to remove.
            if let Err(err) = IptablesProxier::new().clean_up()
                && !matches!(err, IptablesError::Start { .. })
            {
                tracing::warn!(%err, "removing the iptables mode's rules");
            }
        };
        let nftables = || {
            if let Err(err) = NftablesProxier::new().and_then(|mut p| p.clean_up()) {
                tracing::warn!(%err, "removing the nftables mode's rules");
            }
        };
        let userspace = || {
            if let Err(err) = clean_up_addresses() {
                tracing::warn!(%err, "removing the userspace mode's cluster IPs");
            }
        };
        let ipvs = || {
            if let Err(err) = clean_up_ipvs() {
                tracing::warn!(%err, "removing the ipvs mode's services");
            }
        };
        match self {
            Dataplane::Nftables(_) => {
                iptables();
                userspace();
                ipvs();
            }
            Dataplane::Iptables(_) => {
                nftables();
                userspace();
                ipvs();
            }
            Dataplane::Userspace(_) => {
                nftables();
                iptables();
                ipvs();
            }
            Dataplane::Ipvs(_) => {
                nftables();
                iptables();
                userspace();
            }
        }
    }

    /// Applies `state`; returns what was sent and the number of rules now programmed.
    pub fn sync(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
    ) -> Result<(SyncStats, usize), DataplaneError> {
        match self {
            Dataplane::Nftables(proxier) => {
                let stats = proxier.sync_state(state, settings)?;
                Ok((stats, proxier.rule_count()))
            }
            Dataplane::Iptables(proxier) => {
                let ruleset = render_iptables(state, settings);
                Ok((proxier.sync(&ruleset)?, ruleset.rule_count()))
            }
            Dataplane::Userspace(proxier) => {
                let listeners = proxier.sync(state, settings)?;
                Ok((SyncStats::default(), listeners))
            }
            Dataplane::Ipvs(proxier) => {
                let stats = proxier.sync(state, settings)?;
                Ok((stats, proxier.rule_count()))
            }
        }
    }

    /// Removes this mode's rules.
    pub fn clean_up(&mut self) -> Result<(), DataplaneError> {
        match self {
            Dataplane::Nftables(proxier) => proxier.clean_up()?,
            Dataplane::Iptables(proxier) => proxier.clean_up()?,
            Dataplane::Userspace(proxier) => proxier.clean_up()?,
            Dataplane::Ipvs(proxier) => proxier.clean_up()?,
        }
        Ok(())
    }
}
