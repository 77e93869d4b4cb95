//! Progress of a long byte-counting job (a download, a disk import, a clone) on stderr: a bar
//! when stderr is a terminal, otherwise plain lines at most once a second and at 100%, such as
//! `pull debian-12: 40% (409.6 MiB of 1 GiB)`, which read well in logs and CI.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use virtkit::ByteSize;

/// The least time between two plain lines.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
const SPINNER_TEMPLATE: &str = "{msg} {spinner} {bytes} {bytes_per_sec}";

/// Progress of one job, labelled (`pull debian-12`), counted in bytes.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    view: View,
}

enum View {
    Bar(ProgressBar),
    Lines {
        last_line: Option<Instant>,
        /// The `done` value of the last line, so `finish` does not repeat it.
        last_done: Option<u64>,
    },
}

impl Progress {
    /// Starts showing progress; `total` is the byte count when known.
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Progress {
        let label = label.into();
        let view = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0).with_message(label.clone());
            View::Bar(bar)
        } else {
            View::Lines {
                last_line: None,
                last_done: None,
            }
        };
        let mut progress = Progress {
            label,
            total: None,
            done: 0,
            view,
        };
        progress.apply_total(total);
        progress
    }

    /// Sets or clears the total, for jobs that learn it once under way.
    pub fn set_total(&mut self, total: Option<u64>) {
        if total != self.total {
            self.apply_total(total);
        }
    }

    /// `done` bytes of the total are finished.
    pub fn update(&mut self, done: u64) {
        self.done = done;
        match &mut self.view {
            View::Bar(bar) => bar.set_position(done),
            View::Lines { last_line, last_done } => {
                let complete = self.total.is_some_and(|t| done >= t);
                let due = last_line.is_none_or(|t| t.elapsed() >= LINE_INTERVAL);
                if (due || complete) && *last_done != Some(done) {
                    errln!("{}", line(&self.label, done, self.total));
                    *last_line = Some(Instant::now());
                    *last_done = Some(done);
                }
            }
        }
    }

    /// The job is done: the bar is completed, or a last line is printed if the newest count has
    /// not been. (Dropped without `finish`, as on an error, the bar stays where it stopped.)
    pub fn finish(self) {
        match &self.view {
            View::Bar(bar) => bar.finish(),
            View::Lines { last_done, .. } => {
                if *last_done != Some(self.done) {
                    errln!("{}", line(&self.label, self.done, self.total));
                }
            }
        }
    }

    fn apply_total(&mut self, total: Option<u64>) {
        self.total = total;
        if let View::Bar(bar) = &self.view {
            let template = match total {
                Some(t) => {
                    bar.set_length(t);
                    BAR_TEMPLATE
                }
                None => {
                    bar.unset_length();
                    SPINNER_TEMPLATE
                }
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
    }
}

/// `label: 40% (409.6 MiB of 1 GiB)`, or `label: 409.6 MiB` when the total is unknown.
fn line(label: &str, done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => {
            let percent = (u128::from(done.min(total)) * 100 / u128::from(total)) as u64;
            format!("{label}: {percent}% ({} of {})", ByteSize(done), ByteSize(total))
        }
        _ => format!("{label}: {}", ByteSize(done)),
    }
}

/// A `(done, total)` report for framework calls that learn the total only as they go: the
/// display starts at the first report.
pub struct LazyProgress {
    label: String,
    progress: Option<Progress>,
}

impl LazyProgress {
    pub fn new(label: impl Into<String>) -> LazyProgress {
        LazyProgress {
            label: label.into(),
            progress: None,
        }
    }

    pub fn report(&mut self, done: u64, total: u64) {
        let label = &self.label;
        self.progress
            .get_or_insert_with(|| Progress::new(label.clone(), Some(total)))
            .update(done);
    }

    pub fn finish(self) {
        if let Some(p) = self.progress {
            p.finish();
        }
    }
}
