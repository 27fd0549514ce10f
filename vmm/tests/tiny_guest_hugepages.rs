//! Guest memory on 2 MiB huge pages (`--hugepages`): the test grows the host's pool of 2 MiB
//! pages (with no surplus allowed) by what a 64 MiB guest needs, runs a tiny guest that
//! writes to a port in a loop, sees the pool's free pages drop by 32 while it runs and come
//! back after, and puts the pool back as it found it. A guest larger than the pool is refused
//! before it starts, naming `--hugepages` and the pool. Needs /dev/kvm and root, as
//! tests/tiny_guests.rs explains.

mod common;

use std::time::Duration;

use baton_vmm::memory::{HUGEPAGES_2MB, free_hugepages};
use baton_vmm::{VmExit, VmmArgs};
use common::{Asm, Guest, elf_kernel, kvm_available, port_writing_loop, spawn_vm, wait_until};

/// The host's pool of 2 MiB pages, grown for the test without surplus pages (which could
/// let a guest larger than the pool start), and put back on drop.
struct HugepagePool {
    before: Vec<(String, String)>,
}

fn pool_file(name: &str) -> String {
    format!("{HUGEPAGES_2MB}/{name}")
}

fn read_pool(name: &str) -> String {
    std::fs::read_to_string(pool_file(name))
        .unwrap_or_else(|e| panic!("{}: {e}", pool_file(name)))
        .trim()
        .to_owned()
}

fn write_pool(name: &str, value: &str) {
    std::fs::write(pool_file(name), value)
        .unwrap_or_else(|e| panic!("{} (run as root): {e}", pool_file(name)));
}

impl HugepagePool {
    fn grow_by(pages: u64) -> Self {
        let pool = Self {
            before: ["nr_overcommit_hugepages", "nr_hugepages"]
                .iter()
                .map(|name| (name.to_string(), read_pool(name)))
                .collect(),
        };
        write_pool("nr_overcommit_hugepages", "0");
        let total: u64 = read_pool("nr_hugepages").parse().unwrap();
        write_pool("nr_hugepages", &(total + pages).to_string());
        pool
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        for (name, value) in self.before.iter().rev() {
            if let Err(error) = std::fs::write(pool_file(name), value) {
                eprintln!("cannot put {} back to {value}: {error}", pool_file(name));
            }
        }
    }
}

/// Powers off at once.
fn power_off_kernel(guest: &Guest) -> std::path::PathBuf {
    let mut program = Asm::default();
    program.mov_dx(0x600).out_al(0x34).bytes(&[0xf4]);
    guest.file("poweroff", &elf_kernel(&program.finish()))
}

#[test]
fn guest_memory_comes_from_the_huge_page_pool_and_goes_back() {
    if !kvm_available("guest_memory_comes_from_the_huge_page_pool_and_goes_back") {
        return;
    }
    let pool = HugepagePool::grow_by(32);
    let free_before = free_hugepages().expect("the host describes its 2 MiB pages");
    assert!(
        free_before >= 32,
        "the host could not make 32 huge pages ({free_before} free in the pool)"
    );
    let guest = Guest::new();

    // More than the pool holds: refused before the VM starts (with a guest that powers off
    // at once, so that a wrong start ends too).
    let too_large = 2 * free_before + 64;
    let err = baton_vmm::run(&VmmArgs {
        memory: Some(too_large),
        hugepages: true,
        ..guest.args(power_off_kernel(&guest))
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--hugepages: cannot map {too_large} MiB of guest memory on 2 MiB huge pages; \
             the host's pool ({HUGEPAGES_2MB}/nr_hugepages) has {free_before} free"
        )
    );
    assert_eq!(free_hugepages(), Some(free_before));

    let api = guest.console().with_file_name("api.sock");
    let done = spawn_vm(VmmArgs {
        memory: Some(64),
        hugepages: true,
        api_sock: Some(api.clone()),
        ..guest.args(guest.file("vmlinux", &elf_kernel(&port_writing_loop())))
    });
    wait_until("the API socket", Duration::from_secs(10), || {
        api.exists().then_some(())
    });
    assert_eq!(
        free_hugepages(),
        Some(free_before - 32),
        "64 MiB of guest memory is 32 huge pages, taken from the pool"
    );
    baton_vmm::api::request(&api, "shutdown 0").unwrap();
    let exit = done
        .recv_timeout(Duration::from_secs(20))
        .expect("the VM ends");
    assert_eq!(exit, Ok(VmExit::Stopped));
    assert_eq!(free_hugepages(), Some(free_before), "given back");
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
