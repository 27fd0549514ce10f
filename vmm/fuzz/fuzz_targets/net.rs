//! The net device's transmit and receive queues, from libFuzzer's inputs.
#![no_main]

use baton_vmm::devices::virtio::fuzz_cases::{FuzzInput, net_case};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net_case(&mut FuzzInput::new(data));
});
