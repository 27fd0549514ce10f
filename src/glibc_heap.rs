//! How the long-lived components use glibc's heap.
//!
//! **One arena** for the components whose memory is a cache that fills and empties (the
//! scheduler and the controller manager). glibc gives a thread that meets another in the
//! allocator an arena of its own, and what is freed in one arena cannot hold what another
//! thread allocates next: the scheduler's informer decodes a backlog of pending pods on one
//! runtime thread while its loop keeps the bound pods on the other, so each arena grew to its
//! own peak. With one arena the freed memory is reused (measured: the two components'
//! anonymous memory at 10,000 pods fell from 114 to 106 MiB, docs/benchmarks.md), at the cost
//! of threads taking one lock in malloc, which two cores barely notice.
//!
//! **Free memory given back.** glibc returns memory to the kernel only from the top of the
//! heap, so the pages of a burst's freed objects (a backlog's pending pods, the buffers of a
//! re-list) stay resident below whatever is still live. Go's runtime, which upstream's
//! components run on, scavenges such pages in the background; [`return_free_memory`] does the
//! same with `malloc_trim`, which releases every free page of the heap (MADV_DONTNEED), once
//! the resident free heap has grown by more than [`FREE_TO_KEEP`] since the last trim.

use std::time::Duration;

/// Free heap memory left resident before it is given back: below this, trimming would only
/// make the next allocations fault their pages in again.
const FREE_TO_KEEP: usize = 4 << 20;

/// How often [`return_free_memory`] looks at the heap.
const SCAVENGE_INTERVAL: Duration = Duration::from_secs(5);

/// Limits this process to glibc's main heap arena. Call before any thread starts.
#[allow(unsafe_code)] // one libc call, no memory of ours involved
pub fn use_one_arena() {
    // SAFETY: mallopt sets an allocator parameter; it touches no memory of ours.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        tracing::warn!("mallopt(M_ARENA_MAX, 1) failed; threads keep heap arenas of their own");
    }
}

/// Starts a thread that, every few seconds, gives the heap's free pages back to the kernel
/// once the resident free heap has grown by more than [`FREE_TO_KEEP`] since it last did
/// (what a trim leaves, such as the threads' stacks, does not make it trim again and again).
pub fn return_free_memory() {
    let started = std::thread::Builder::new()
        .name("heap-scavenger".into())
        .spawn(|| {
            let mut left_after_trim = 0;
            loop {
                // The scavenger's period, not a wait for anything: a burst's freed pages are
                // given back within SCAVENGE_INTERVAL.
                std::thread::sleep(SCAVENGE_INTERVAL);
                let free = resident_free_heap();
                if free > left_after_trim + FREE_TO_KEEP {
                    trim();
                    left_after_trim = resident_free_heap();
                    tracing::debug!(free, left_after_trim, "gave free heap pages back");
                }
            }
        });
    if let Err(err) = started {
        tracing::warn!("no heap scavenger thread ({err}); freed heap pages stay resident");
    }
}

/// The process's resident anonymous memory that the heap holds but no allocation uses:
/// resident anonymous pages (from /proc/self/statm) less the bytes allocated. An estimate (it
/// counts the threads' stacks as free), enough to tell a heap that kept a burst's pages.
fn resident_free_heap() -> usize {
    let anonymous = resident_anonymous().unwrap_or(0);
    anonymous.saturating_sub(allocated())
}

/// Resident anonymous memory in bytes: statm's resident pages less its shared (file-backed)
/// ones.
fn resident_anonymous() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().skip(1).map(|f| f.parse::<usize>());
    let resident = fields.next()?.ok()?;
    let shared = fields.next()?.ok()?;
    Some(resident.saturating_sub(shared) * page_size())
}

/// Bytes the program has allocated and not freed (glibc's in-use chunks and mmapped blocks).
#[allow(unsafe_code)] // one libc call that returns a struct by value
fn allocated() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's own statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// Gives every free page of the heap back to the kernel.
#[allow(unsafe_code)] // one libc call, no memory of ours involved
fn trim() {
    // SAFETY: malloc_trim releases only pages of free chunks, under the allocator's lock.
    unsafe { libc::malloc_trim(0) };
}

/// The kernel's page size in bytes.
#[allow(unsafe_code)] // one libc call
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_gives_the_pages_of_a_bursts_freed_objects_back() {
        const MIB: usize = 1 << 20;
        // A burst of 64 MiB in small objects (below glibc's mmap threshold, so on the heap),
        // then one object that lives on above them, then the burst freed.
        let burst: Vec<Vec<u8>> = (0..64 * MIB / 4096).map(|_| vec![1u8; 4096]).collect();
        let survivor = vec![2u8; 4096];
        drop(burst);
        let before = resident_free_heap();
        assert!(
            before > 32 * MIB,
            "the freed burst stays resident: {before} bytes"
        );
        trim();
        let after = resident_free_heap();
        assert!(
            after + 32 * MIB < before,
            "resident free heap {before} bytes before the trim, {after} after"
        );
        assert_eq!(survivor[4095], 2);
    }
}
