//! What the VMM's API shares with the vCPU threads: the pause gate and the exit counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The gate vCPU threads park at while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    /// vCPU threads parked at the gate.
    parked: usize,
    /// Set when the VM stops: nobody parks any more.
    stopping: bool,
}

impl PauseGate {
    /// Closes (`true`) or opens the gate.
    pub fn set_paused(&self, paused: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.paused = paused;
        self.changed.notify_all();
    }

    /// Whether the gate is closed.
    pub fn is_paused(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .paused
    }

    /// Opens the gate for good: the VM is stopping.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.stopping = true;
        state.paused = false;
        self.changed.notify_all();
    }

    /// Called by a vCPU thread between two KVM_RUNs: waits while the gate is closed.
    pub fn wait_while_paused(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.paused || state.stopping {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !state.stopping {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Waits until `count` vCPU threads are parked; false after `timeout` without.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.parked < count && s.paused)
            .unwrap_or_else(PoisonError::into_inner);
        state.parked >= count
    }
}

/// vCPU exits by reason, for the API's metrics.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// KVM_RUN interrupted (a kick or a signal).
    pub interrupted: AtomicU64,
    /// Everything else (shutdown, system events, errors).
    pub other: AtomicU64,
}

impl ExitCounters {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("io_in", &self.io_in),
            ("io_out", &self.io_out),
            ("mmio_read", &self.mmio_read),
            ("mmio_write", &self.mmio_write),
            ("interrupted", &self.interrupted),
            ("other", &self.other),
        ]
        .into_iter()
        .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)))
        .collect()
    }
}

/// The pause gate and counters of one VM.
#[derive(Debug, Default)]
pub struct VcpuControl {
    /// Where vCPU threads park while paused.
    pub gate: PauseGate,
    /// Exits by reason.
    pub exits: ExitCounters,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn threads_park_until_resumed_or_released() {
        let gate = Arc::new(PauseGate::default());
        gate.set_paused(true);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || gate.wait_while_paused())
            })
            .collect();
        assert!(gate.wait_parked(2, Duration::from_secs(5)));
        gate.set_paused(false);
        for thread in threads {
            thread.join().unwrap();
        }
        gate.set_paused(true);
        let parked = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait_while_paused())
        };
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        gate.release();
        parked.join().unwrap();
        gate.wait_while_paused();
        assert!(!gate.is_paused());
    }
}
