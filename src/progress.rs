//! Backfill progress: a bar with rows, rate and ETA on a terminal, a log line
//! every few seconds otherwise, or nothing.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Receives backfill progress.
pub trait Progress: Send {
    fn start(&mut self, table: &str, total: u64, done: u64);
    fn advance(&mut self, rows: u64, batch_size: u64);
    fn finish(&mut self);
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    None,
}

/// The reporter for `mode`.
pub fn reporter(mode: ProgressMode) -> Box<dyn Progress> {
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Log,
        m => m,
    };
    match mode {
        ProgressMode::Bar => Box::new(Bar { bar: None }),
        ProgressMode::Log => Box::new(LogLines::default()),
        _ => Box::new(Silent),
    }
}

struct Silent;
impl Progress for Silent {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64, _: u64) {}
    fn finish(&mut self) {}
}

struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn start(&mut self, table: &str, total: u64, done: u64) {
        let bar = ProgressBar::new(total.max(done));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("backfill {table}"));
        bar.set_position(done);
        self.bar = Some(bar);
    }
    fn advance(&mut self, rows: u64, batch_size: u64) {
        if let Some(b) = &self.bar {
            if b.position() + rows > b.length().unwrap_or(0) {
                b.set_length(b.position() + rows);
            }
            b.inc(rows);
            b.set_message(format!("batch {batch_size}"));
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

#[derive(Default)]
struct LogLines {
    table: String,
    total: u64,
    done: u64,
    began: Option<Instant>,
    since_start: u64,
    last: Option<Instant>,
}

impl LogLines {
    fn line(&self) {
        let secs = self
            .began
            .map(|b| b.elapsed().as_secs_f64())
            .unwrap_or(0.0)
            .max(1e-3);
        let rate = self.since_start as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".into()
        };
        tracing::info!(
            "backfill {}: {}/{} rows ({:.1}%), {:.0} rows/s, ETA {eta}",
            self.table,
            self.done,
            self.total,
            if self.total > 0 {
                100.0 * self.done as f64 / self.total as f64
            } else {
                100.0
            },
            rate
        );
    }
}

impl Progress for LogLines {
    fn start(&mut self, table: &str, total: u64, done: u64) {
        *self = LogLines {
            table: table.to_string(),
            total,
            done,
            began: Some(Instant::now()),
            since_start: 0,
            last: Some(Instant::now()),
        };
    }
    fn advance(&mut self, rows: u64, _: u64) {
        self.done += rows;
        self.since_start += rows;
        if self
            .last
            .is_some_and(|l| l.elapsed() >= Duration::from_secs(3))
        {
            self.line();
            self.last = Some(Instant::now());
        }
    }
    fn finish(&mut self) {
        if self.began.is_some() {
            self.line();
        }
    }
}
