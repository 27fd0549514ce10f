//! Seeding the kernel's random pool at boot, as systemd-random-seed does: the seed the previous
//! boot saved on /var (the data disk) is written to /dev/urandom, which mixes it into the pool
//! without crediting it as entropy (a copied disk image would otherwise credit the same seed on
//! every copy), and a new seed is saved for the next boot. The kernel itself credits what the
//! virtio RNG and the CPU's RDRAND give.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Fills `bytes` from the kernel's pool without waiting for it to be initialized
/// (GRND_INSECURE), for identifiers that must differ, not stay secret (DHCP transaction IDs,
/// a new file system's UUID): early in a boot without RDRAND or a virtio RNG the pool may take
/// minutes, and a plain `getrandom` waits that long. Where the kernel cannot give that
/// (before Linux 5.6), the clock fills them. Never for keys.
pub fn identifier_bytes(bytes: &mut [u8]) {
    use rustix::rand::{GetRandomFlags, getrandom};
    for flags in [GetRandomFlags::INSECURE, GetRandomFlags::NONBLOCK] {
        if matches!(getrandom(&mut *bytes, flags), Ok(n) if n == bytes.len()) {
            return;
        }
    }
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    for byte in bytes.iter_mut() {
        // xorshift64: spreads the clock's bits over every byte.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
}

/// Where the seed for the next boot is kept.
pub const SEED_FILE: &str = "/var/lib/baton/random-seed";
/// The seed's size: the kernel pool's (256 bits) many times over, as systemd saves 512 bytes.
pub const SEED_BYTES: usize = 512;

/// What seeding did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeded {
    /// A saved seed of this many bytes was mixed into the pool.
    Mixed(usize),
    /// There was no saved seed (a first boot, or /var is not kept across boots).
    NoSavedSeed,
}

/// Seeding the random pool failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedEntropyError {
    /// The saved seed could not be read.
    #[error("reading the saved seed {path}")]
    Read {
        /// The seed file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel's pool did not take it.
    #[error("writing the seed to {pool}")]
    Mix {
        /// The pool's device.
        pool: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The next boot's seed could not be saved.
    #[error("saving the next seed to {path}")]
    Save {
        /// The seed file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Mixes the seed saved at `seed` into `pool` (/dev/urandom), then saves a new one there.
pub fn seed_entropy(seed: &Path, pool: &Path) -> Result<Seeded, SeedEntropyError> {
    let seeded = match std::fs::read(seed) {
        Ok(saved) if !saved.is_empty() => {
            std::fs::OpenOptions::new()
                .write(true)
                .open(pool)
                .and_then(|mut pool| pool.write_all(&saved))
                .map_err(|source| SeedEntropyError::Mix {
                    pool: pool.to_path_buf(),
                    source,
                })?;
            Seeded::Mixed(saved.len())
        }
        Ok(_) => Seeded::NoSavedSeed,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Seeded::NoSavedSeed,
        Err(source) => {
            return Err(SeedEntropyError::Read {
                path: seed.to_path_buf(),
                source,
            });
        }
    };
    save_seed(seed).map_err(|source| SeedEntropyError::Save {
        path: seed.to_path_buf(),
        source,
    })?;
    Ok(seeded)
}

/// Writes a new seed from the kernel's generator to `seed` (readable by root only), through a
/// temporary file and a rename, so that a crash leaves the old seed or the new one.
fn save_seed(seed: &Path) -> std::io::Result<()> {
    if let Some(dir) = seed.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; SEED_BYTES];
    rand::fill(&mut bytes[..]);
    let temporary = seed.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_differ_from_one_call_to_the_next() {
        let mut first = [0u8; 36];
        let mut second = [0u8; 36];
        identifier_bytes(&mut first);
        identifier_bytes(&mut second);
        assert_ne!(first, second);
        assert_ne!(first, [0u8; 36]);
    }

    #[test]
    fn the_saved_seed_is_mixed_in_and_a_new_one_saved() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("lib/baton/random-seed");
        // A regular file stands for /dev/urandom: what is written to it is what was mixed in.
        let pool = dir.path().join("urandom");
        std::fs::write(&pool, "").unwrap();

        assert_eq!(seed_entropy(&seed, &pool).unwrap(), Seeded::NoSavedSeed);
        let first = std::fs::read(&seed).unwrap();
        assert_eq!(first.len(), SEED_BYTES);
        assert_eq!(std::fs::read(&pool).unwrap(), Vec::<u8>::new());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777,
            0o600
        );

        assert_eq!(
            seed_entropy(&seed, &pool).unwrap(),
            Seeded::Mixed(SEED_BYTES)
        );
        assert_eq!(
            std::fs::read(&pool).unwrap(),
            first,
            "the saved seed mixed in"
        );
        let second = std::fs::read(&seed).unwrap();
        assert_eq!(second.len(), SEED_BYTES);
        assert_ne!(second, first, "a new seed for the next boot");
        assert!(!seed.with_extension("new").exists());
    }

    #[test]
    fn a_pool_that_refuses_the_seed_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("random-seed");
        std::fs::write(&seed, [1u8; 16]).unwrap();
        let err = seed_entropy(&seed, &dir.path().join("missing/urandom")).unwrap_err();
        assert!(err.to_string().starts_with("writing the seed to "), "{err}");
        // The saved seed stays for the next try.
        assert_eq!(std::fs::read(&seed).unwrap(), vec![1u8; 16]);
    }
}
