//! The object index: oid -> position of the object's newest data record
//! (ZODB's `fsIndex`), and its sidecar file beside `Data.fs`.
//!
//! In memory the index is two sorted parallel arrays (oids, positions):
//! 16 bytes per object, binary search for lookups. Updates after the bulk
//! build (appended transactions, the writer) go to a small hash overlay
//! that is merged into the arrays when it grows.
//!
//! The sidecar, `<Data.fs>.neoindex`, is our own format (ZODB's `.index`
//! is a pickle); it is a cache and never trusted: it is checked against the
//! file before use and rebuilt when anything is off. Layout (big-endian):
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! | 0      | 8    | magic `NEOFSIDX`                                       |
//! | 8      | 4    | format version (1)                                     |
//! | 12     | 4    | magic of the `Data.fs` (`FS21`/`FS30`)                 |
//! | 16     | 8    | covered end: the index covers transactions before it   |
//! | 24     | 8    | offset of the last covered transaction (0: none)       |
//! | 32     | 8    | tid of that transaction                                |
//! | 40     | 8    | tid of the first transaction of the file (0: none)     |
//! | 48     | 8    | n: number of entries                                   |
//! | 56     | 16n  | entries: oid (8), position (8), oids strictly rising   |
//! | 56+16n | 4    | CRC-32 (`crc32fast`) of all the bytes before           |

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{Magic, MAGIC_LEN};
use crate::{Oid, Tid};

/// Sidecar magic.
pub const SIDECAR_MAGIC: [u8; 8] = *b"NEOFSIDX";
/// Sidecar format version.
pub const SIDECAR_VERSION: u32 = 1;
/// Sidecar header length (before the entries).
pub const SIDECAR_HEADER_LEN: usize = 56;
/// Suffix appended to the `Data.fs` path to name its sidecar.
pub const SIDECAR_SUFFIX: &str = ".neoindex";

/// A fast hasher for u64 keys (splitmix64 finaliser).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Overlay = HashMap<u64, u64, BuildHasherDefault<IdHasher>>;

/// oid -> position of the object's newest data record.
#[derive(Clone, Default)]
pub struct Index {
    oids: Vec<u64>,
    poss: Vec<u64>,
    overlay: Overlay,
    len: usize,
    max_oid: Option<u64>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("len", &self.len)
            .field("max_oid", &self.max_oid)
            .finish()
    }
}

impl PartialEq for Index {
    fn eq(&self, other: &Index) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    fn from_sorted(oids: Vec<u64>, poss: Vec<u64>) -> Index {
        let max_oid = oids.last().copied();
        Index {
            len: oids.len(),
            oids,
            poss,
            overlay: Overlay::default(),
            max_oid,
        }
    }

    /// Position of the newest record of `oid`.
    #[inline]
    pub fn get(&self, oid: Oid) -> Option<u64> {
        if !self.overlay.is_empty() {
            if let Some(&p) = self.overlay.get(&oid.0) {
                return Some(p);
            }
        }
        self.oids.binary_search(&oid.0).ok().map(|i| self.poss[i])
    }

    /// Sets the position of the newest record of `oid`.
    pub fn insert(&mut self, oid: Oid, pos: u64) {
        if let Ok(i) = self.oids.binary_search(&oid.0) {
            self.poss[i] = pos;
            return;
        }
        if self.overlay.insert(oid.0, pos).is_none() {
            self.len += 1;
        }
        if self.max_oid < Some(oid.0) {
            self.max_oid = Some(oid.0);
        }
        if self.overlay.len() >= (self.oids.len() / 8).max(1 << 14) {
            self.compact();
        }
    }

    /// Merges the overlay into the sorted arrays and trims their capacity.
    pub fn compact(&mut self) {
        if !self.overlay.is_empty() {
            let mut new: Vec<(u64, u64)> = self.overlay.drain().collect();
            new.sort_unstable_by_key(|e| e.0);
            merge_into(&mut self.oids, &mut self.poss, &new);
        }
        self.overlay = Overlay::default();
        self.oids.shrink_to_fit();
        self.poss.shrink_to_fit();
    }

    /// Number of objects (ZODB's `len(storage)`), deleted ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no object is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest oid (ZODB's new-oid high-water mark), if any.
    pub fn max_oid(&self) -> Option<Oid> {
        self.max_oid.map(Oid)
    }

    /// Heap bytes used (arrays' capacity plus an estimate of the overlay).
    pub fn heap_bytes(&self) -> usize {
        (self.oids.capacity() + self.poss.capacity()) * 8 + self.overlay.capacity() * 17
    }

    /// All (oid, position) pairs in oid order.
    pub fn iter(&self) -> impl Iterator<Item = (Oid, u64)> + '_ {
        let mut extra: Vec<(u64, u64)> = self.overlay.iter().map(|(&o, &p)| (o, p)).collect();
        extra.sort_unstable_by_key(|e| e.0);
        MergeIter {
            a: self
                .oids
                .iter()
                .copied()
                .zip(self.poss.iter().copied())
                .peekable(),
            b: extra.into_iter().peekable(),
        }
        .map(|(o, p)| (Oid(o), p))
    }
}

struct MergeIter<A: Iterator<Item = (u64, u64)>, B: Iterator<Item = (u64, u64)>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = (u64, u64)>, B: Iterator<Item = (u64, u64)>> Iterator for MergeIter<A, B> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) => {
                if x.0 < y.0 {
                    self.a.next()
                } else if y.0 < x.0 {
                    self.b.next()
                } else {
                    self.a.next();
                    self.b.next()
                }
            }
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// Merges sorted `new` (oids unique) into the sorted arrays, in place
/// (from the back, after growing them by the number of new oids): `new`
/// wins. Peak memory is the merged arrays plus `new`.
fn merge_into(oids: &mut Vec<u64>, poss: &mut Vec<u64>, new: &[(u64, u64)]) {
    // How many oids of `new` are not in the arrays yet.
    let (mut i, mut j, mut fresh) = (0, 0, 0);
    while j < new.len() {
        if i < oids.len() && oids[i] < new[j].0 {
            i += 1;
        } else {
            if i >= oids.len() || oids[i] != new[j].0 {
                fresh += 1;
            }
            j += 1;
        }
    }
    let n = oids.len();
    oids.resize(n + fresh, 0);
    poss.resize(n + fresh, 0);
    let (mut i, mut j, mut k) = (n, new.len(), n + fresh);
    while j > 0 {
        let (no, np) = new[j - 1];
        k -= 1;
        if i > 0 && oids[i - 1] > no {
            oids[k] = oids[i - 1];
            poss[k] = poss[i - 1];
            i -= 1;
        } else {
            if i > 0 && oids[i - 1] == no {
                i -= 1;
            }
            oids[k] = no;
            poss[k] = np;
            j -= 1;
        }
    }
    debug_assert_eq!(i, k);
}

/// Builds an [`Index`] from records met in file order (later positions
/// win), sorting in batches: no per-record allocation, no hashing.
pub struct IndexBuilder {
    oids: Vec<u64>,
    poss: Vec<u64>,
    buf: Vec<(u64, u64)>,
    batch_min: usize,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder {
            oids: Vec::new(),
            poss: Vec::new(),
            buf: Vec::new(),
            batch_min: 1 << 20,
        }
    }
}

impl IndexBuilder {
    /// Starts from an existing index (e.g. loaded from a sidecar).
    pub fn from_index(mut index: Index) -> IndexBuilder {
        index.compact();
        IndexBuilder {
            oids: index.oids,
            poss: index.poss,
            ..IndexBuilder::default()
        }
    }

    /// Records that `oid` has a record at `pos`, newer than all before.
    #[inline]
    pub fn push(&mut self, oid: Oid, pos: u64) {
        self.buf.push((oid.0, pos));
        if self.buf.len() >= (self.oids.len() / 2).max(self.batch_min) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // Positions rise with push order, so sorting by (oid, pos) and
        // keeping the last of each oid keeps the newest record.
        self.buf.sort_unstable();
        let mut w = 0;
        for r in 0..self.buf.len() {
            if r + 1 < self.buf.len() && self.buf[r + 1].0 == self.buf[r].0 {
                continue;
            }
            self.buf[w] = self.buf[r];
            w += 1;
        }
        self.buf.truncate(w);
        merge_into(&mut self.oids, &mut self.poss, &self.buf);
        self.buf.clear();
    }

    /// The finished index, compact.
    pub fn finish(mut self) -> Index {
        self.flush();
        let mut idx = Index::from_sorted(self.oids, self.poss);
        idx.compact();
        idx
    }
}

/// What a sidecar says about the `Data.fs` prefix it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidecarInfo {
    /// Magic of the `Data.fs`.
    pub magic: Magic,
    /// The index covers the transactions before this offset.
    pub end: u64,
    /// Offset and tid of the last covered transaction.
    pub last_txn: Option<(u64, Tid)>,
    /// Tid of the file's first transaction.
    pub first_tid: Option<Tid>,
}

/// The sidecar path of a `Data.fs`: its path with `.neoindex` appended.
pub fn sidecar_path(datafs: &Path) -> PathBuf {
    let mut s = datafs.as_os_str().to_owned();
    s.push(SIDECAR_SUFFIX);
    PathBuf::from(s)
}

/// Writes the sidecar of `index` atomically (temporary file, then rename).
pub fn save_sidecar(path: &Path, index: &Index, info: &SidecarInfo) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut crc = crc32fast::Hasher::new();
    let mut put = |w: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| -> Result<()> {
        crc.update(b);
        w.write_all(b).map_err(|e| Error::io(&tmp, "write", e))
    };
    let (ltpos, lttid) = info.last_txn.map_or((0, 0), |(p, t)| (p, t.0));
    let mut head = Vec::with_capacity(SIDECAR_HEADER_LEN);
    head.extend_from_slice(&SIDECAR_MAGIC);
    head.extend_from_slice(&SIDECAR_VERSION.to_be_bytes());
    head.extend_from_slice(&info.magic.bytes());
    head.extend_from_slice(&info.end.to_be_bytes());
    head.extend_from_slice(&ltpos.to_be_bytes());
    head.extend_from_slice(&lttid.to_be_bytes());
    head.extend_from_slice(&info.first_tid.map_or(0, |t| t.0).to_be_bytes());
    head.extend_from_slice(&(index.len() as u64).to_be_bytes());
    put(&mut w, &head)?;
    for (oid, pos) in index.iter() {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&oid.to_bytes());
        e[8..].copy_from_slice(&pos.to_be_bytes());
        put(&mut w, &e)?;
    }
    let sum = crc.finalize();
    w.write_all(&sum.to_be_bytes())
        .map_err(|e| Error::io(&tmp, "write", e))?;
    w.flush().map_err(|e| Error::io(&tmp, "write", e))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename", e))
}

/// Why a sidecar was not used.
fn bad(path: &Path, why: &str) -> Option<(Index, SidecarInfo)> {
    log::warn!("ignoring index {}: {why}", path.display());
    None
}

/// Reads a sidecar; `None` (logged) if absent, unreadable or malformed.
/// The caller must still check it against the `Data.fs`.
pub fn load_sidecar(path: &Path) -> Option<(Index, SidecarInfo)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return bad(path, &e.to_string()),
    };
    if bytes.len() < SIDECAR_HEADER_LEN + 4 {
        return bad(path, "too short");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    let sum = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if crc32fast::hash(body) != sum {
        return bad(path, "checksum mismatch");
    }
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[at..at + 8]);
        u64::from_be_bytes(a)
    };
    if body[..8] != SIDECAR_MAGIC {
        return bad(path, "bad magic");
    }
    if body[8..12] != SIDECAR_VERSION.to_be_bytes() {
        return bad(path, "unknown version");
    }
    let Some(magic) = Magic::from_bytes(&body[12..16]) else {
        return bad(path, "bad Data.fs magic");
    };
    let end = u64_at(16);
    let (ltpos, lttid, first) = (u64_at(24), u64_at(32), u64_at(40));
    let n = u64_at(48);
    let entries = &body[SIDECAR_HEADER_LEN..];
    if n.checked_mul(16) != Some(entries.len() as u64) {
        return bad(path, "entry count mismatch");
    }
    let n = n as usize;
    let mut oids = Vec::with_capacity(n);
    let mut poss = Vec::with_capacity(n);
    for e in entries.chunks_exact(16) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&e[..8]);
        let oid = u64::from_be_bytes(a);
        a.copy_from_slice(&e[8..]);
        let pos = u64::from_be_bytes(a);
        if oids.last().is_some_and(|&l| l >= oid) {
            return bad(path, "entries not sorted");
        }
        if pos < MAGIC_LEN || pos >= end {
            return bad(path, "entry position out of range");
        }
        oids.push(oid);
        poss.push(pos);
    }
    let info = SidecarInfo {
        magic,
        end,
        last_txn: (ltpos != 0).then_some((ltpos, Tid(lttid))),
        first_tid: (ltpos != 0).then_some(Tid(first)),
    };
    if info.last_txn.is_none() && (end != MAGIC_LEN || n != 0) {
        return bad(path, "inconsistent empty index");
    }
    Some((Index::from_sorted(oids, poss), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_newest_and_sorts() {
        for batch_min in [1 << 20, 1000, 7] {
            builder_case(batch_min);
        }
    }

    fn builder_case(batch_min: usize) {
        let mut b = IndexBuilder {
            batch_min,
            ..IndexBuilder::default()
        };
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 12345;
        for pos in 1..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let oid = (x >> 33) % (pos / 2 + 10);
            b.push(Oid(oid), pos * 10);
            model.insert(oid, pos * 10);
        }
        let idx = b.finish();
        assert_eq!(idx.len(), model.len());
        assert!(idx
            .iter()
            .map(|(o, p)| (o.0, p))
            .eq(model.iter().map(|(&o, &p)| (o, p))));
        assert_eq!(idx.max_oid().map(|o| o.0), model.keys().last().copied());
        assert_eq!(idx.heap_bytes(), idx.len() * 16);
    }

    #[test]
    fn insert_overlay_and_compact() {
        let mut idx = Index::new();
        let mut model = std::collections::BTreeMap::new();
        for i in 0..100_000u64 {
            let oid = (i * 7919) % 30_011;
            idx.insert(Oid(oid), i + 4);
            model.insert(oid, i + 4);
            if i % 9973 == 0 {
                assert_eq!(idx.get(Oid(oid)), Some(i + 4));
            }
        }
        assert_eq!(idx.len(), model.len());
        assert!(idx
            .iter()
            .map(|(o, p)| (o.0, p))
            .eq(model.iter().map(|(&o, &p)| (o, p))));
        for (&o, &p) in &model {
            assert_eq!(idx.get(Oid(o)), Some(p));
        }
        assert_eq!(idx.get(Oid(1 << 40)), None);
        idx.compact();
        assert_eq!(idx.heap_bytes(), idx.len() * 16);
        assert!(idx
            .iter()
            .map(|(o, p)| (o.0, p))
            .eq(model.iter().map(|(&o, &p)| (o, p))));
    }

    #[test]
    fn sidecar_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.neoindex");
        let mut idx = Index::new();
        for i in 0..1000u64 {
            idx.insert(Oid(i * 3), 4 + i * 50);
        }
        let info = SidecarInfo {
            magic: Magic::Fs30,
            end: 100_000,
            last_txn: Some((99_000, Tid(77))),
            first_tid: Some(Tid(5)),
        };
        save_sidecar(&p, &idx, &info).unwrap();
        let (back, binfo) = load_sidecar(&p).unwrap();
        assert_eq!(back, idx);
        assert_eq!(binfo, info);
        let good = std::fs::read(&p).unwrap();
        for at in [0, 9, 13, 20, 60, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            std::fs::write(&p, &b).unwrap();
            assert!(load_sidecar(&p).is_none(), "flip at {at}");
        }
        std::fs::write(&p, &good[..good.len() - 5]).unwrap();
        assert!(load_sidecar(&p).is_none());
        assert!(load_sidecar(&dir.path().join("absent")).is_none());
    }
}
