//! The entropy device's queue, registers and configuration space, from libFuzzer's inputs.
#![no_main]

use baton_vmm::devices::virtio::fuzz_cases::{FuzzInput, rng_case};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rng_case(&mut FuzzInput::new(data));
});
