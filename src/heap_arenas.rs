//! One glibc heap arena for the control-plane components whose memory is a cache that fills
//! and empties (the scheduler and the controller manager). glibc gives a thread that meets
//! another in the allocator an arena of its own, and what is freed in one arena cannot hold
//! what another thread allocates next: the scheduler's informer decodes a backlog of pending
//! pods on one runtime thread while its loop keeps the bound pods on the other, so each arena
//! grew to its own peak. With one arena the freed memory is reused (measured: the two
//! components' anonymous memory at 10,000 pods fell from 114 to 106 MiB, docs/benchmarks.md),
//! at the cost of threads taking one lock in malloc, which two cores barely notice.

/// Limits this process to glibc's main heap arena. Call before any thread starts.
#[allow(unsafe_code)] // one libc call, no memory of ours involved
pub fn use_one_arena() {
    // SAFETY: mallopt sets an allocator parameter; it touches no memory of ours.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        tracing::warn!("mallopt(M_ARENA_MAX, 1) failed; threads keep heap arenas of their own");
    }
}
