//! The pod address allocator: addresses of the node's pod CIDR, each handed to one owner (a pod
//! sandbox id) and persisted as a file named for the address, created exclusively, so that no
//! address is handed out twice, also across kubelet restarts, and none leaks: at start the
//! kubelet releases every address whose owner no longer exists.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Allocating or releasing a pod address failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocateAddressError {
    /// Every address of the range is in use.
    #[error("no free address left in pod CIDR {0}")]
    Exhausted(Ipv4Net),
    /// The range has no room for a gateway and pods.
    #[error("pod CIDR {0} is too small (at most /30)")]
    TooSmall(Ipv4Net),
    /// The owner id cannot name a holder.
    #[error("invalid address owner {0:?}")]
    InvalidOwner(String),
    /// The state directory could not be read or written.
    #[error("{}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

fn state(path: &Path) -> impl FnOnce(io::Error) -> AllocateAddressError + '_ {
    move |source| AllocateAddressError::State {
        path: path.to_owned(),
        source,
    }
}

/// The addresses of one pod CIDR: the first is the gateway (the bridge's), the others go to
/// pods.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    dir: PathBuf,
    range: Ipv4Net,
}

/// The file that remembers the last address handed out, so the next one follows it (an
/// address freed a moment ago is not reused at once).
const LAST_RESERVED: &str = "last_reserved";

impl AddressAllocator {
    /// The allocator of `pod_cidr`, keeping its state under `state_dir` (created if needed).
    pub fn new(state_dir: &Path, pod_cidr: Ipv4Net) -> Result<Self, AllocateAddressError> {
        let range = pod_cidr.trunc();
        if range.prefix_len() > 30 {
            return Err(AllocateAddressError::TooSmall(range));
        }
        let dir = state_dir.join(format!("{}_{}", range.network(), range.prefix_len()));
        fs::create_dir_all(&dir).map_err(state(&dir))?;
        Ok(Self { dir, range })
    }

    /// The range's gateway address (its first host address), with the range's prefix length.
    pub fn gateway(&self) -> Ipv4Net {
        let first = u32::from(self.range.network()) + 1;
        Ipv4Net::new(Ipv4Addr::from(first), self.range.prefix_len()).expect("valid prefix length")
    }

    /// The pod CIDR.
    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// The address held by `owner`, or a newly allocated one.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, AllocateAddressError> {
        check_owner(owner)?;
        if let Some(held) = self.held_by(owner)? {
            return Ok(held);
        }
        let first = u32::from(self.range.network()) + 2;
        let last = u32::from(self.range.broadcast()) - 1;
        let count = last - first + 1;
        let start = self
            .last_reserved()
            .map(|ip| u32::from(ip).wrapping_add(1))
            .filter(|ip| (first..=last).contains(ip))
            .unwrap_or(first);
        for step in 0..count {
            let candidate = Ipv4Addr::from(first + (start - first + step) % count);
            let path = self.dir.join(candidate.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(state(&path))?;
                    let last_path = self.dir.join(LAST_RESERVED);
                    fs::write(&last_path, candidate.to_string()).map_err(state(&last_path))?;
                    return Ok(candidate);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(state(&path)(err)),
            }
        }
        Err(AllocateAddressError::Exhausted(self.range))
    }

    /// Releases the address `owner` holds; returns it, or `None` when it held none.
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>, AllocateAddressError> {
        check_owner(owner)?;
        let Some(held) = self.held_by(owner)? else {
            return Ok(None);
        };
        let path = self.dir.join(held.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(held)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(state(&path)(err)),
        }
    }

    /// Every address handed out, with its owner.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, AllocateAddressError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(state(&self.dir))? {
            let entry = entry.map_err(state(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let owner = match fs::read_to_string(&path) {
                Ok(owner) => owner,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(state(&path)(err)),
            };
            found.push((ip, owner));
        }
        found.sort();
        Ok(found)
    }

    /// Releases every address whose owner is not in `live` (pods that died while the kubelet
    /// was not looking); returns what it released.
    pub fn release_all_but(
        &self,
        live: &HashSet<String>,
    ) -> Result<Vec<(Ipv4Addr, String)>, AllocateAddressError> {
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            if live.contains(&owner) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push((ip, owner)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(state(&path)(err)),
            }
        }
        Ok(released)
    }

    /// The address `owner` holds, if any.
    pub fn held_by(&self, owner: &str) -> Result<Option<Ipv4Addr>, AllocateAddressError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, holder)| holder == owner)
            .map(|(ip, _)| ip))
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn check_owner(owner: &str) -> Result<(), AllocateAddressError> {
    if owner.is_empty() || owner.contains(['/', '\n', '\0']) {
        return Err(AllocateAddressError::InvalidOwner(owner.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator(dir: &Path, cidr: &str) -> AddressAllocator {
        AddressAllocator::new(dir, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn hands_out_each_address_once_and_skips_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = allocator(dir.path(), "10.244.1.0/24");
        assert_eq!(ipam.gateway().to_string(), "10.244.1.1/24");
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        // The same owner asking again gets the same address.
        assert_eq!(ipam.allocate("pod-a").unwrap(), a);
    }

    #[test]
    fn survives_a_restart_and_does_not_reuse_a_released_address_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = allocator(dir.path(), "10.244.1.0/24");
        let a = first.allocate("pod-a").unwrap();
        assert_eq!(first.release("pod-a").unwrap(), Some(a));
        assert_eq!(first.release("pod-a").unwrap(), None);
        let restarted = allocator(dir.path(), "10.244.1.0/24");
        let b = restarted.allocate("pod-b").unwrap();
        assert_ne!(a, b, "the address freed last is not handed out next");
        assert_eq!(restarted.allocations().unwrap(), vec![(b, "pod-b".into())]);
    }

    #[test]
    fn a_full_range_is_exhausted_and_wraps_around_after_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = allocator(dir.path(), "10.0.0.0/29");
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 for pods.
        let held: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("pod-{i}")).unwrap())
            .collect();
        assert_eq!(held.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(held.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        let err = ipam.allocate("pod-5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address left in pod CIDR 10.0.0.0/29"
        );
        ipam.release("pod-1").unwrap();
        assert_eq!(ipam.allocate("pod-5").unwrap(), Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn releases_the_addresses_of_owners_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = allocator(dir.path(), "10.244.1.0/24");
        let kept = ipam.allocate("alive").unwrap();
        let gone = ipam.allocate("dead").unwrap();
        let live: HashSet<String> = ["alive".to_string()].into();
        assert_eq!(
            ipam.release_all_but(&live).unwrap(),
            vec![(gone, "dead".to_string())]
        );
        assert_eq!(ipam.allocations().unwrap(), vec![(kept, "alive".into())]);
    }

    #[test]
    fn refuses_bad_owners_and_tiny_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = allocator(dir.path(), "10.244.1.0/24");
        assert!(matches!(
            ipam.allocate("../x"),
            Err(AllocateAddressError::InvalidOwner(_))
        ));
        let err = AddressAllocator::new(dir.path(), "10.0.0.0/31".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod CIDR 10.0.0.0/31 is too small (at most /30)"
        );
    }
}
