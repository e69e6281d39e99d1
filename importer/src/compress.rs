//! Compression of imported data, with NEO's rule and a cheaper path.
//!
//! NEO's Importer (`compress = true`, the default) stores
//! `zlib.compress(data)` (level 6) when it is smaller than `data`, else
//! `data` as is (`compression` 0). We keep that rule and its output format
//! (plain zlib streams: Python NEO reads them with `zlib.decompress`), and
//! make it cheaper:
//!
//! - one zlib stream per thread and level, reset between records (no
//!   allocation of the deflate state per record);
//! - the output buffer is capped at `data.len() - 1`: deflate stops as soon
//!   as the result cannot be smaller;
//! - **probe**: for data of at least [`PROBE_MIN`] bytes, a [`PROBE_LEN`]
//!   byte sample from the middle is deflated first at level 1; when the
//!   sample does not shrink to [`PROBE_RATIO`] of its size, the data is
//!   stored raw without compressing it whole. Random-looking payloads
//!   (already compressed blobs, encrypted or random bytes) are detected for
//!   the price of compressing 512 bytes. The probe may keep raw a record
//!   that would have shrunk by a few bytes: the stored bytes are raw data,
//!   which NEO reads as well.

use std::borrow::Cow;
use std::cell::RefCell;

use flate2::{Compress as Deflate, Compression, FlushCompress, Status};

use crate::config::Compress;

/// Data shorter than this is compressed whole without probing.
pub const PROBE_MIN: usize = 2048;
/// Length of the sample a probe deflates.
pub const PROBE_LEN: usize = 512;
/// A probe sample must shrink at least to this fraction of its length for
/// the data to be compressed whole.
pub const PROBE_RATIO: f64 = 0.95;

thread_local! {
    /// `(level, stream)`: the last used stream of this thread, per level.
    static STREAMS: RefCell<Vec<(u32, Deflate)>> = const { RefCell::new(Vec::new()) };
}

/// Deflates `data` into a zlib stream at `level` if the result is at most
/// `max` bytes, with this thread's stream for that level.
fn deflate_capped(level: u32, data: &[u8], max: usize) -> Option<Vec<u8>> {
    STREAMS.with(|s| {
        let mut streams = s.borrow_mut();
        let i = match streams.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                streams.push((level, Deflate::new(Compression::new(level), true)));
                streams.len() - 1
            }
        };
        let z = &mut streams[i].1;
        z.reset();
        let mut out = Vec::with_capacity(max);
        let r = z.compress_vec(data, &mut out, FlushCompress::Finish);
        match r {
            Ok(Status::StreamEnd) if out.len() <= max => Some(out),
            _ => None,
        }
    })
}

/// Whether a sample of `data` shrinks enough to compress it whole (see the
/// module documentation).
pub fn probe_compressible(data: &[u8]) -> bool {
    if data.len() < PROBE_MIN {
        return true;
    }
    let start = (data.len() - PROBE_LEN) / 2;
    let sample = &data[start..start + PROBE_LEN];
    let max = (PROBE_LEN as f64 * PROBE_RATIO) as usize;
    deflate_capped(1, sample, max).is_some()
}

/// Compresses like NEO: zlib output (`compression` 1) only when it is
/// smaller than the data, else the data as is (0); data whose probe says
/// it does not compress is kept raw at once.
pub fn compress_data(compress: Compress, data: &[u8]) -> (u8, Cow<'_, [u8]>) {
    let Compress::Zlib(level) = compress else {
        return (0, Cow::Borrowed(data));
    };
    if data.is_empty() || !probe_compressible(data) {
        return (0, Cow::Borrowed(data));
    }
    match deflate_capped(level, data, data.len() - 1) {
        Some(out) => (1, Cow::Owned(out)),
        None => (0, Cow::Borrowed(data)),
    }
}

/// [`compress_data`] without the probe: NEO's exact choice (for
/// comparisons and benchmarks).
pub fn compress_data_exact(compress: Compress, data: &[u8]) -> (u8, Cow<'_, [u8]>) {
    let Compress::Zlib(level) = compress else {
        return (0, Cow::Borrowed(data));
    };
    if data.is_empty() {
        return (0, Cow::Borrowed(data));
    }
    match deflate_capped(level, data, data.len() - 1) {
        Some(out) => (1, Cow::Owned(out)),
        None => (0, Cow::Borrowed(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(z)
            .read_to_end(&mut out)
            .expect("valid zlib");
        out
    }

    /// Deterministic pseudo-random bytes (xorshift).
    fn noise(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn compressible_data_is_zlib_and_round_trips() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("key{:06} ", i % 977).into_bytes())
            .collect();
        for level in [1, 6, 9] {
            let (c, out) = compress_data(Compress::Zlib(level), &text);
            assert_eq!(c, 1);
            assert!(out.len() < text.len() / 2);
            assert!(inflate(&out) == text);
            // The reused stream gives the same bytes again.
            let (_, again) = compress_data(Compress::Zlib(level), &text);
            assert!(again == out);
        }
        // Levels differ: the level is applied.
        let one = compress_data(Compress::Zlib(1), &text).1;
        let nine = compress_data(Compress::Zlib(9), &text).1;
        assert!(nine.len() < one.len(), "{} {}", nine.len(), one.len());
    }

    #[test]
    fn random_data_stays_raw_with_and_without_probe() {
        for n in [1, 100, 2047, 2048, 3000, 70_000] {
            let d = noise(n, n as u64 + 1);
            assert_eq!(compress_data(Compress::Zlib(6), &d).0, 0, "{n}");
            assert_eq!(compress_data_exact(Compress::Zlib(6), &d).0, 0, "{n}");
            assert!(!probe_compressible(&d) || n < PROBE_MIN, "{n}");
        }
        assert_eq!(compress_data(Compress::Zlib(6), b"").0, 0);
        assert_eq!(compress_data(Compress::Off, b"aaaaaaaaaaaaaaaa").0, 0);
    }

    #[test]
    fn probe_keeps_raw_only_what_barely_compresses() {
        // Pickle-like records: a compressible header, then random bytes
        // (what the bench file holds). The probe keeps them raw; NEO's rule
        // may compress them, but for a gain under 2 %.
        for reps in [1, 3] {
            let mut rec = b"cpersistent.mapping\nPersistentMapping\nq\x01.}q\x02".repeat(reps);
            rec.extend(noise(3000, 7));
            assert_eq!(compress_data(Compress::Zlib(6), &rec).0, 0);
            let exact = compress_data_exact(Compress::Zlib(6), &rec).1.len();
            assert!(exact as f64 > rec.len() as f64 * 0.98, "{reps}: {exact}");
        }
        // Mostly compressible: both compress.
        let mut mostly_text = b"abcabcabd".repeat(600);
        mostly_text.extend(noise(200, 9));
        assert_eq!(compress_data(Compress::Zlib(6), &mostly_text).0, 1);
        assert_eq!(compress_data_exact(Compress::Zlib(6), &mostly_text).0, 1);
    }

    #[test]
    fn output_never_longer_than_input_minus_one() {
        // Barely compressible: the cap decides.
        for n in [10, 50, 300] {
            let mut d = noise(n, 3);
            d.extend(std::iter::repeat_n(0u8, 12));
            let (c, out) = compress_data_exact(Compress::Zlib(6), &d);
            if c == 1 {
                assert!(out.len() < d.len());
                assert_eq!(inflate(&out), d);
            } else {
                assert_eq!(out.as_ref(), d.as_slice());
            }
        }
    }
}
