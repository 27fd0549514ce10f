//! The vsock device's queues and its muxer's packet parsing, from libFuzzer's inputs.
#![no_main]

use baton_vmm::devices::virtio::fuzz_cases::{FuzzInput, vsock_case};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vsock_case(&mut FuzzInput::new(data));
});
