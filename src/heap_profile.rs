//! Heap profiling for memory work, built only with `--features dhat-heap`: dhat becomes the
//! global allocator, and a process whose role is listed in `BATON_DHAT_ROLES`
//! (comma-separated: `scheduler,controller-manager`) writes `dhat-ROLE-PID.json` in
//! `BATON_DHAT_DIR` (default: its working directory) `BATON_DHAT_SECONDS` seconds (default
//! 120) after it starts, or as soon as a file named `dump-ROLE` appears in that directory (a
//! benchmark creates it when it measures memory): every allocation site with its bytes live
//! at that moment and at the peak, for dhat's viewer (dh_view.html). Processes of other roles
//! allocate through dhat's pass-through, unprofiled but still behind dhat's one global lock,
//! as every allocation of this build is: never take a benchmark's figures from it. A process
//! that exits before the time writes nothing.

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Starts profiling this process when `role` is listed in `BATON_DHAT_ROLES`.
pub fn start(role: &str) {
    let listed = std::env::var("BATON_DHAT_ROLES")
        .is_ok_and(|roles| roles.split(',').any(|r| r.trim() == role));
    if !listed {
        return;
    }
    let seconds = std::env::var("BATON_DHAT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir =
        std::path::PathBuf::from(std::env::var_os("BATON_DHAT_DIR").unwrap_or_else(|| ".".into()));
    let file = dir.join(format!("dhat-{role}-{}.json", std::process::id()));
    let trigger = dir.join(format!("dump-{role}"));
    // A trigger left from an earlier process is not a request to this one.
    let _ = std::fs::remove_file(&trigger);
    let profiler = dhat::Profiler::builder().file_name(file).build();
    std::thread::spawn(move || {
        let started = Instant::now();
        // A deliberate poll, in profiling builds only: one stat of the trigger every 200 ms
        // answers a benchmark's request well within the time it waits.
        while started.elapsed() < Duration::from_secs(seconds) && !trigger.exists() {
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(profiler);
        let _ = std::fs::remove_file(&trigger);
    });
}
