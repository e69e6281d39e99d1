//! A progress bar on stderr for long passes over big files; hidden when
//! stderr is not a terminal or the file is small.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Files smaller than this get no bar (the pass takes well under a second).
const MIN_LEN: u64 = 64 << 20;

/// A byte-counting bar for a pass over `len` bytes, labelled `what`.
pub fn bytes_bar(len: u64, what: &str) -> ProgressBar {
    if len < MIN_LEN || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}
