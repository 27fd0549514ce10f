//! A service's recent output: a ring of lines bounded in bytes, which readers copy or follow.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// The lines a service wrote last, oldest first, at most `capacity` bytes of them.
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    inner: Mutex<Lines>,
    follow: broadcast::Sender<String>,
}

#[derive(Debug, Default)]
struct Lines {
    lines: VecDeque<String>,
    bytes: usize,
}

impl LogRing {
    /// An empty ring keeping at most `capacity` bytes of lines.
    pub fn new(capacity: usize) -> Self {
        LogRing {
            capacity,
            inner: Mutex::new(Lines::default()),
            follow: broadcast::channel(1024).0,
        }
    }

    /// Appends a line, dropping the oldest ones beyond the capacity.
    pub fn push(&self, line: String) {
        let mut inner = self.inner.lock().expect("log ring lock");
        inner.bytes += line.len();
        inner.lines.push_back(line.clone());
        while inner.bytes > self.capacity && inner.lines.len() > 1 {
            let dropped = inner.lines.pop_front().expect("more than one line");
            inner.bytes -= dropped.len();
        }
        // Sent under the lock, so that a follower's copy and its receiver never both hold
        // this line. No follower is not an error.
        let _ = self.follow.send(line);
        drop(inner);
    }

    /// The lines kept now, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("log ring lock")
            .lines
            .iter()
            .cloned()
            .collect()
    }

    /// The lines kept now and a receiver of every later line, with nothing lost between them.
    pub fn follow(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let inner = self.inner.lock().expect("log ring lock");
        let receiver = self.follow.subscribe();
        (inner.lines.iter().cloned().collect(), receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_its_capacity() {
        let ring = LogRing::new(10);
        for line in ["aaaa", "bbbb", "cccc"] {
            ring.push(line.into());
        }
        assert_eq!(ring.lines(), ["bbbb", "cccc"]);
        ring.push("a line longer than the ring".into());
        assert_eq!(ring.lines(), ["a line longer than the ring"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn followers_get_what_comes_after_the_copy() {
        let ring = LogRing::new(1024);
        ring.push("before".into());
        let (past, mut later) = ring.follow();
        ring.push("after".into());
        assert_eq!(past, ["before"]);
        assert_eq!(later.recv().await.unwrap(), "after");
    }
}
