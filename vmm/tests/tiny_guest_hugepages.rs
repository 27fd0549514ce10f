//! Guest memory on 2 MiB huge pages (`--hugepages`): the test grows the host's huge page
//! pool (vm.nr_hugepages) by what a 64 MiB guest needs, runs a tiny guest that writes to
//! the serial port in a loop, sees the pool's free pages drop by 32 while it runs and come
//! back after, and puts the pool back as it found it. A guest larger than the pool is
//! refused before it starts, naming `--hugepages` and the pool. Needs /dev/kvm and root, as
//! tests/tiny_guests.rs explains.

mod common;

use std::time::Duration;

use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel, kvm_available, spawn_vm, wait_until};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// The host's huge page pool, grown for the test and put back on drop.
struct HugepagePool {
    before: u64,
}

impl HugepagePool {
    fn grow_by(pages: u64) -> Self {
        let before: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string()).unwrap();
        Self { before }
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(NR_HUGEPAGES, self.before.to_string()) {
            eprintln!("cannot put {NR_HUGEPAGES} back to {}: {error}", self.before);
        }
    }
}

/// Writes to port 0x80 forever.
fn looping_kernel(guest: &Guest) -> std::path::PathBuf {
    let mut program = Asm::default();
    program
        .bytes(&[0xb0, 0x00]) // mov al, 0
        .label("loop")
        .bytes(&[0xe6, 0x80]) // out 0x80, al
        .rel(&[0xeb], "loop", 1);
    guest.file("vmlinux", &elf_kernel(&program.finish()))
}

#[test]
fn guest_memory_comes_from_the_huge_page_pool_and_goes_back() {
    if !kvm_available("guest_memory_comes_from_the_huge_page_pool_and_goes_back") {
        return;
    }
    let pool = HugepagePool::grow_by(32);
    let free_before = baton_vmm::memory::free_hugepages();
    assert!(
        free_before >= 32,
        "the host could not make 32 huge pages ({free_before} free in the pool)"
    );
    let guest = Guest::new();
    let kernel = looping_kernel(&guest);

    // More than the pool holds: refused before the VM starts.
    let err = baton_vmm::run(&VmmArgs {
        memory: Some(2 * free_before + 64),
        hugepages: true,
        ..guest.args(kernel.clone())
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with("--hugepages: cannot map")
            && err.to_string().contains("vm.nr_hugepages"),
        "{err}"
    );
    assert_eq!(baton_vmm::memory::free_hugepages(), free_before);

    let api = guest.console().with_file_name("api.sock");
    let done = spawn_vm(VmmArgs {
        memory: Some(64),
        hugepages: true,
        api_sock: Some(api.clone()),
        ..guest.args(kernel)
    });
    wait_until("the API socket", Duration::from_secs(10), || {
        api.exists().then_some(())
    });
    assert_eq!(
        baton_vmm::memory::free_hugepages(),
        free_before - 32,
        "64 MiB of guest memory is 32 huge pages, taken from the pool"
    );
    baton_vmm::api::request(&api, "shutdown 0").unwrap();
    let exit = done
        .recv_timeout(Duration::from_secs(20))
        .expect("the VM ends");
    assert_eq!(exit, Ok(VmExit::Stopped));
    assert_eq!(
        baton_vmm::memory::free_hugepages(),
        free_before,
        "given back"
    );
    drop(pool);
}

#[test]
fn an_odd_size_is_refused_with_hugepages() {
    let guest = Guest::new();
    let kernel = guest.file("vmlinux", &elf_kernel(&[0xf4]));
    let err = baton_vmm::VmConfig::from_args(&VmmArgs {
        memory: Some(65),
        hugepages: true,
        ..guest.args(kernel)
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--memory (machine.memory_mib) 65 MiB: with --hugepages it must be a multiple of 2 MiB"
    );
}
