//! Randomized queue handling in the unit tests: the cases of `fuzz_cases.rs` with a seeded
//! xorshift choosing (the coverage-guided `cargo fuzz` targets in `vmm/fuzz` run the same
//! cases from libFuzzer's inputs). Each test runs for BATON_FUZZ_SECONDS (default 2) from a
//! seed printed first (BATON_FUZZ_SEED reproduces it).

use std::time::{Duration, Instant};

use super::fuzz_cases::{self, Entropy, FuzzInput, Xorshift};

/// Runs `case` with fresh randomness until the time budget is spent.
fn fuzz(name: &str, mut case: impl FnMut(&mut Xorshift)) {
    let seed = std::env::var("BATON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("getrandom");
            u64::from_le_bytes(bytes) | 1
        });
    let budget = std::env::var("BATON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    eprintln!("fuzz {name}: seed {seed} (BATON_FUZZ_SEED), {budget} s");
    let mut rng = Xorshift(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(budget);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        case(&mut rng);
        cases += 1;
    }
    eprintln!("fuzz {name}: {cases} cases");
    assert!(cases > 0);
}

#[test]
fn fuzz_block_queue() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![0u8; 64 * 512]).unwrap();
    fuzz("block", |rng| fuzz_cases::block_case(rng, file.path()));
}

#[test]
fn fuzz_net_queues() {
    fuzz("net", fuzz_cases::net_case);
}

#[test]
fn fuzz_vsock_transmit_parsing() {
    fuzz("vsock", fuzz_cases::vsock_case);
}

#[test]
fn fuzz_rng_queue_and_registers() {
    fuzz("rng", fuzz_cases::rng_case);
}

#[test]
fn a_fuzzer_input_gives_its_bytes_then_a_stream_of_its_own() {
    let mut input = FuzzInput::new(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 3]);
    assert_eq!(input.next(), 1);
    assert_eq!(input.next(), 0x0302);
    let after = [input.next(), input.next()];
    assert_ne!(after[0], after[1]);
    // The same input makes the same choices; another input others.
    let mut again = FuzzInput::new(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 3]);
    let replay: Vec<u64> = (0..4).map(|_| again.next()).collect();
    assert_eq!(replay, [1, 0x0302, after[0], after[1]]);
    let mut other = FuzzInput::new(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 4]);
    let other: Vec<u64> = (0..4).map(|_| other.next()).collect();
    assert_ne!(other[2], after[0]);
}
