//! Gives the heap memory a burst freed back to the kernel, in the long-running components.
//! glibc keeps freed memory in its arenas, mapped and resident, and trims only the top of
//! the main heap by itself: a scheduler that held a backlog of 10,000 pending pods kept their
//! memory after binding them. Every few seconds, when more than a quarter of the heap (and at
//! least 8 MiB) lies free, `malloc_trim(0)` hands the free pages of every arena back
//! (MADV_DONTNEED), in the manner of Go's background scavenger.

use std::time::Duration;

/// How often the free part of the heap is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Free heap below this is left alone (trimming it would gain little).
const MIN_FREE_BYTES: usize = 8 << 20;

/// Starts the trimming thread of this process.
pub fn start() {
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(CHECK_EVERY);
                let (free, used) = heap_bytes();
                if worth_trimming(free, used) {
                    trim();
                    let (after, _) = heap_bytes();
                    tracing::debug!(free, used, after, "heap trimmed");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting the heap-trim thread failed; freed heap stays resident");
    }
}

/// Whether `free` bytes lying in the allocator's arenas, beside `used` bytes in use, are worth
/// handing back.
fn worth_trimming(free: usize, used: usize) -> bool {
    free >= MIN_FREE_BYTES && free.saturating_mul(4) >= used
}

/// (free, in use) bytes of the allocator's arenas, all arenas summed.
#[allow(unsafe_code)]
fn heap_bytes() -> (usize, usize) {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics (under the arenas' locks)
    // and returns them by value.
    let info = unsafe { libc::mallinfo2() };
    (info.fordblks, info.uordblks)
}

/// Hands the free pages of every arena back to the kernel.
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes the arenas' locks and releases only free memory; no pointer of
    // ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_a_free_quarter_of_at_least_eight_mebibytes() {
        assert!(!worth_trimming(4 << 20, 4 << 20), "under 8 MiB free");
        assert!(!worth_trimming(10 << 20, 100 << 20), "under a quarter free");
        assert!(worth_trimming(30 << 20, 100 << 20));
        assert!(worth_trimming(8 << 20, 8 << 20));
    }

    #[test]
    fn trimming_hands_freed_memory_back() {
        // 80 MiB of blocks below glibc's mmap threshold (so they live in an arena), each
        // followed by a small block that stays: freeing the large ones leaves holes that
        // glibc's own trimming of the heap's top cannot give back.
        let (large, small): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..5_000)
            .map(|_| (vec![1u8; 16 << 10], vec![2u8; 16]))
            .unzip();
        drop(large);
        let (free_before, _) = heap_bytes();
        assert!(
            free_before >= 64 << 20,
            "the freed blocks lie free: {free_before}"
        );
        let resident_before = resident_bytes();
        trim();
        let resident_after = resident_bytes();
        assert!(
            resident_after + (32 << 20) <= resident_before,
            "resident {resident_before} -> {resident_after}"
        );
        assert!(
            small.iter().all(|b| b == &[2u8; 16]),
            "live blocks untouched"
        );
    }

    /// This process's resident set, from /proc/self/statm.
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }
}
