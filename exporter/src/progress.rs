//! Progress reports of an export: an indicatif bar on a terminal
//! ([`Bar`]), periodic log lines otherwise ([`LogLines`]).

use std::time::{Duration, Instant};

use fsformat::Tid;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::export::{Progress, Summary};

/// A progress bar: transactions, bytes, rate, ETA.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    bytes: u64,
}

impl Bar {
    /// A hidden bar until [`Progress::begin`].
    pub fn new() -> Bar {
        Bar {
            bar: ProgressBar::hidden(),
            bytes: 0,
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn begin(&mut self, total: u64, _existing: u64) {
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} txns {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        self.bar = ProgressBar::new(total).with_style(style);
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }

    fn advance(&mut self, txns: u64, bytes: u64, _tid: Tid) {
        self.bytes += bytes;
        self.bar.inc(txns);
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "({:.0}/s) {} ({}/s)",
            self.bar.position() as f64 / secs,
            HumanBytes(self.bytes),
            HumanBytes((self.bytes as f64 / secs) as u64)
        ));
    }

    fn end(&mut self, _summary: &Summary) {
        self.bar.finish_and_clear();
    }
}

/// A log line every `every` (and at the end).
#[derive(Debug)]
pub struct LogLines {
    every: Duration,
    start: Instant,
    last: Instant,
    total: u64,
    txns: u64,
    bytes: u64,
}

impl LogLines {
    /// Logs every `every`.
    pub fn new(every: Duration) -> LogLines {
        let now = Instant::now();
        LogLines {
            every,
            start: now,
            last: now,
            total: 0,
            txns: 0,
            bytes: 0,
        }
    }
}

impl Progress for LogLines {
    fn begin(&mut self, total: u64, existing: u64) {
        self.total = total;
        self.start = Instant::now();
        self.last = self.start;
        log::info!("{total} transactions to export ({existing} already in the file)");
    }

    fn advance(&mut self, txns: u64, bytes: u64, tid: Tid) {
        self.txns += txns;
        self.bytes += bytes;
        let now = Instant::now();
        if now.duration_since(self.last) < self.every {
            return;
        }
        self.last = now;
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-3);
        let rate = self.txns as f64 / secs;
        let eta = if rate > 0.0 {
            self.total.saturating_sub(self.txns) as f64 / rate
        } else {
            0.0
        };
        log::info!(
            "{}/{} transactions, {}, {:.0} txn/s, {}/s, last tid {tid}, ETA {:.0}s",
            self.txns,
            self.total,
            HumanBytes(self.bytes),
            rate,
            HumanBytes((self.bytes as f64 / secs) as u64),
            eta
        );
    }

    fn end(&mut self, _summary: &Summary) {}
}
