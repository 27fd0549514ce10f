//! Progress of a long command: on a terminal, a spinner per step that turns into a line with
//! its time; otherwise plain lines, one when a step starts and one when it ends.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports the steps of a command on stderr.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    started: Instant,
}

/// One step in progress.
#[derive(Debug)]
pub struct Step {
    name: String,
    started: Instant,
    spinner: Option<ProgressBar>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }
}

impl Progress {
    /// Starts step `name`.
    pub fn step(&self, name: &str) -> Step {
        let spinner = if self.terminal {
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            spinner.set_message(name.to_string());
            spinner.enable_steady_tick(Duration::from_millis(100));
            Some(spinner)
        } else {
            eprintln!("... {name}");
            None
        };
        Step {
            name: name.to_string(),
            started: Instant::now(),
            spinner,
        }
    }

    /// Time since the command started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints a line that is not a step.
    pub fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

impl Step {
    /// Ends the step as done, with `detail` when given.
    pub fn done(self, detail: &str) -> Duration {
        self.finish("✓", detail)
    }

    /// Ends the step as failed.
    pub fn failed(self) -> Duration {
        self.finish("✗", "failed")
    }

    fn finish(self, mark: &str, detail: &str) -> Duration {
        let took = self.started.elapsed();
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let line = format!("{mark} {}{detail} ({:.1}s)", self.name, took.as_secs_f64());
        match self.spinner {
            Some(spinner) => {
                spinner.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
                spinner.finish_with_message(line);
            }
            None => eprintln!("{line}"),
        }
        took
    }
}
