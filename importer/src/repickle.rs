//! Persistent references inside ZODB pickles: find them and rewrite their
//! oids, keeping every other byte as it is (what NEO's `Repickler` does in
//! `neo/storage/database/importer.py` when it merges databases at
//! mountpoints, but by patching bytes instead of unpickling and pickling
//! again).
//!
//! A ZODB data record is two pickles sharing one memo (ZODB's
//! `ObjectWriter` dumps both with one pickler): the class pickle, then the
//! state pickle. References are `BINPERSID` (`Q`) opcodes applied to the
//! persistent id on the stack; the forms ZODB's `serialize.py` writes are:
//!
//! | persistent id                  | [`RefKind`]            |
//! |--------------------------------|------------------------|
//! | `oid`                          | `Oid`                  |
//! | `(oid, class)`                 | `OidClass`             |
//! | `[oid]`                        | `WeakLegacy`           |
//! | `['w', (oid,)]` / `['w', (oid, db)]` | `Weak { db }`    |
//! | `['n', (db, oid)]`             | `Cross { db }`         |
//! | `['m', (db, oid, class)]`      | `CrossClass { db }`    |
//!
//! The oid is always an 8-byte string (`U\x08`, `T`, `C\x08` or `B`
//! opcodes, protocols 1 to 3), so a new oid is written over the old one.
//! Dropping the class of an `(oid, class)` id (NEO does so when the oid is
//! a mountpoint: the class of the placeholder is not the class of the
//! mounted root) turns the `TUPLE2` opcode into `POP`, or, for a tuple
//! built on a `MARK`, removes the `MARK` and turns `TUPLE` into `POP`: the
//! memo keeps the same slots.
//!
//! Protocol 0 string ids (`PERSID`) and protocol 4 framing are refused:
//! ZODB never writes them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// What a persistent id looks like (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefKind {
    /// A bare oid.
    Oid,
    /// `(oid, class)`.
    OidClass,
    /// `[oid]`, the weak reference of old ZODBs.
    WeakLegacy,
    /// `['w', (oid,)]`, or `['w', (oid, db)]` to another database.
    Weak {
        /// The database name, if any.
        db: Option<String>,
    },
    /// `['n', (db, oid)]`: a reference to another database.
    Cross {
        /// The database name.
        db: String,
    },
    /// `['m', (db, oid, class)]`: a reference to another database.
    CrossClass {
        /// The database name.
        db: String,
    },
}

/// One persistent reference of a pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentRef {
    /// The oid referred to.
    pub oid: u64,
    /// Its form.
    pub kind: RefKind,
    /// Offset of the `BINPERSID` opcode.
    pub at: usize,
}

/// What to do with one reference: point it to `oid`; `drop_class` turns
/// an `(oid, class)` id into a bare oid (ignored for other forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remap {
    /// The new oid.
    pub oid: u64,
    /// Whether to forget the class of an `(oid, class)` id.
    pub drop_class: bool,
}

/// A pickle the scanner cannot follow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PickleError {
    /// The data ends inside an opcode (or is empty).
    Truncated {
        /// Offset of the opcode.
        at: usize,
    },
    /// An opcode this scanner does not know (or refuses, see the module
    /// documentation).
    Opcode {
        /// Offset of the opcode.
        at: usize,
        /// The opcode byte.
        op: u8,
    },
    /// The opcodes do not make a valid pickle (stack underflow, missing
    /// mark, unknown memo slot, bad argument).
    Invalid {
        /// Offset of the opcode.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A persistent id none of ZODB's forms.
    UnknownReference {
        /// Offset of the `BINPERSID` opcode.
        at: usize,
    },
    /// The same oid bytes (shared through the memo) would get two
    /// different new values.
    Conflict {
        /// Offset of the oid bytes.
        at: usize,
    },
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Truncated { at } => write!(f, "pickle truncated in opcode at {at}"),
            PickleError::Opcode { at, op } => {
                write!(f, "unsupported pickle opcode 0x{op:02x} at {at}")
            }
            PickleError::Invalid { at, what } => write!(f, "invalid pickle at {at}: {what}"),
            PickleError::UnknownReference { at } => {
                write!(f, "persistent id of unknown form at {at}")
            }
            PickleError::Conflict { at } => {
                write!(f, "oid at {at} is shared by references mapped differently")
            }
        }
    }
}

impl std::error::Error for PickleError {}

/// How a 2-tuple was built, to take its class away.
#[derive(Debug, Clone, Copy)]
enum Build {
    /// `TUPLE2` at this offset.
    Tuple2(usize),
    /// `MARK` at the first offset, `TUPLE` at the second.
    Mark(usize, usize),
    /// Anything else (`TUPLE3`, ...).
    Other,
}

#[derive(Debug, Clone)]
enum Node {
    /// A byte string whose payload starts at `start`.
    Bytes {
        start: usize,
        len: usize,
    },
    /// A text string (or a short byte string kept for its value).
    Text(Vec<u8>),
    Tuple(Vec<usize>, Build),
    List(Vec<usize>),
    Other,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Mark(usize),
    Node(usize),
}

struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Item>,
    memo: HashMap<u64, usize>,
}

/// A reference found by the scanner, with what rewriting it needs.
struct Found {
    r: PersistentRef,
    oid_start: usize,
    build: Option<Build>,
}

impl<'a> Scanner<'a> {
    fn take(&mut self, at: usize, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated { at })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn line(&mut self, at: usize) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated { at })?;
        let s = &rest[..n];
        self.pos += n + 1;
        Ok(s)
    }

    fn le(&mut self, at: usize, n: usize) -> Result<u64, PickleError> {
        let b = self.take(at, n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn push(&mut self, n: Node) {
        self.nodes.push(n);
        self.stack.push(Item::Node(self.nodes.len() - 1));
    }

    fn pop(&mut self, at: usize) -> Result<usize, PickleError> {
        match self.stack.pop() {
            Some(Item::Node(n)) => Ok(n),
            Some(Item::Mark(_)) => Err(PickleError::Invalid {
                at,
                what: "mark where an object was expected",
            }),
            None => Err(PickleError::Invalid {
                at,
                what: "stack underflow",
            }),
        }
    }

    fn top(&self, at: usize) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Item::Node(n)) => Ok(*n),
            _ => Err(PickleError::Invalid {
                at,
                what: "no object on the stack",
            }),
        }
    }

    /// Pops down to the last mark: its offset and the items above it.
    fn pop_mark(&mut self, at: usize) -> Result<(usize, Vec<usize>), PickleError> {
        let i = self
            .stack
            .iter()
            .rposition(|x| matches!(x, Item::Mark(_)))
            .ok_or(PickleError::Invalid {
                at,
                what: "no mark on the stack",
            })?;
        let items = self.stack.split_off(i + 1);
        let Some(Item::Mark(m)) = self.stack.pop() else {
            return Err(PickleError::Invalid {
                at,
                what: "no mark on the stack",
            });
        };
        // No mark above the last one.
        let items = items
            .into_iter()
            .filter_map(|x| match x {
                Item::Node(n) => Some(n),
                Item::Mark(_) => None,
            })
            .collect();
        Ok((m, items))
    }

    fn put(&mut self, at: usize, slot: u64) -> Result<(), PickleError> {
        let n = self.top(at)?;
        self.memo.insert(slot, n);
        Ok(())
    }

    fn get(&mut self, at: usize, slot: u64) -> Result<(), PickleError> {
        let n = *self.memo.get(&slot).ok_or(PickleError::Invalid {
            at,
            what: "unknown memo slot",
        })?;
        self.stack.push(Item::Node(n));
        Ok(())
    }

    fn text_line(line: &[u8], at: usize) -> Result<u64, PickleError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(PickleError::Invalid {
                at,
                what: "bad decimal memo slot",
            })
    }

    fn string(&mut self, at: usize, len: u64) -> Result<(), PickleError> {
        let len = usize::try_from(len).map_err(|_| PickleError::Truncated { at })?;
        let start = self.pos;
        self.take(at, len)?;
        self.push(Node::Bytes { start, len });
        Ok(())
    }

    fn text(&mut self, at: usize, len: u64) -> Result<(), PickleError> {
        let len = usize::try_from(len).map_err(|_| PickleError::Truncated { at })?;
        let s = self.take(at, len)?.to_vec();
        self.push(Node::Text(s));
        Ok(())
    }

    /// Runs over all the pickles of `data`, calling `found` for each
    /// `BINPERSID`.
    fn run(
        &mut self,
        found: &mut dyn FnMut(Found) -> Result<(), PickleError>,
    ) -> Result<(), PickleError> {
        if self.data.is_empty() {
            return Err(PickleError::Truncated { at: 0 });
        }
        let mut stops = 0;
        while self.pos < self.data.len() {
            let at = self.pos;
            if stops == 2 {
                return Err(PickleError::Invalid {
                    at,
                    what: "data after the state pickle",
                });
            }
            let op = self.data[at];
            self.pos += 1;
            match op {
                b'.' => {
                    if self.stack.len() != 1 {
                        return Err(PickleError::Invalid {
                            at,
                            what: "STOP without exactly one object on the stack",
                        });
                    }
                    self.stack.clear();
                    stops += 1;
                }
                b'(' => self.stack.push(Item::Mark(at)),
                b'0' => {
                    if self.stack.pop().is_none() {
                        return Err(PickleError::Invalid {
                            at,
                            what: "stack underflow",
                        });
                    }
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let n = self.top(at)?;
                    self.stack.push(Item::Node(n));
                }
                b'F' | b'I' | b'L' => {
                    self.line(at)?;
                    self.push(Node::Other);
                }
                b'S' | b'V' => {
                    let s = self.line(at)?.to_vec();
                    self.push(Node::Text(s));
                }
                b'J' => {
                    self.take(at, 4)?;
                    self.push(Node::Other);
                }
                b'K' => {
                    self.take(at, 1)?;
                    self.push(Node::Other);
                }
                b'M' => {
                    self.take(at, 2)?;
                    self.push(Node::Other);
                }
                b'G' => {
                    self.take(at, 8)?;
                    self.push(Node::Other);
                }
                b'N' | b'\x88' | b'\x89' => self.push(Node::Other),
                b'\x8a' => {
                    let n = self.le(at, 1)?;
                    self.string(at, n)?;
                    self.stack.pop();
                    self.push(Node::Other);
                }
                b'\x8b' => {
                    let n = self.le(at, 4)?;
                    self.string(at, n)?;
                    self.stack.pop();
                    self.push(Node::Other);
                }
                b'T' | b'B' => {
                    let n = self.le(at, 4)?;
                    self.string(at, n)?;
                }
                b'U' | b'C' => {
                    let n = self.le(at, 1)?;
                    self.string(at, n)?;
                }
                b'X' => {
                    let n = self.le(at, 4)?;
                    self.text(at, n)?;
                }
                b'c' => {
                    self.line(at)?;
                    self.line(at)?;
                    self.push(Node::Other);
                }
                b'i' => {
                    self.line(at)?;
                    self.line(at)?;
                    self.pop_mark(at)?;
                    self.push(Node::Other);
                }
                b')' => self.push(Node::Tuple(Vec::new(), Build::Other)),
                b'}' => self.push(Node::Other),
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let (_, items) = self.pop_mark(at)?;
                    self.push(Node::List(items));
                }
                b't' => {
                    let (m, items) = self.pop_mark(at)?;
                    self.push(Node::Tuple(items, Build::Mark(m, at)));
                }
                b'd' | b'o' => {
                    self.pop_mark(at)?;
                    self.push(Node::Other);
                }
                b'\x85' | b'\x86' | b'\x87' => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    let build = if n == 2 {
                        Build::Tuple2(at)
                    } else {
                        Build::Other
                    };
                    self.push(Node::Tuple(items, build));
                }
                b'a' => {
                    let x = self.pop(at)?;
                    let l = self.top(at)?;
                    if let Node::List(items) = &mut self.nodes[l] {
                        items.push(x);
                    }
                }
                b'e' => {
                    let (_, xs) = self.pop_mark(at)?;
                    let l = self.top(at)?;
                    if let Node::List(items) = &mut self.nodes[l] {
                        items.extend(xs);
                    }
                }
                b's' => {
                    self.pop(at)?;
                    self.pop(at)?;
                    self.top(at)?;
                }
                b'u' => {
                    self.pop_mark(at)?;
                    self.top(at)?;
                }
                b'b' => {
                    self.pop(at)?;
                    self.top(at)?;
                }
                b'R' | b'\x81' => {
                    self.pop(at)?;
                    self.pop(at)?;
                    self.push(Node::Other);
                }
                b'g' => {
                    let l = self.line(at)?;
                    let slot = Self::text_line(l, at)?;
                    self.get(at, slot)?;
                }
                b'h' => {
                    let slot = self.le(at, 1)?;
                    self.get(at, slot)?;
                }
                b'j' => {
                    let slot = self.le(at, 4)?;
                    self.get(at, slot)?;
                }
                b'p' => {
                    let l = self.line(at)?;
                    let slot = Self::text_line(l, at)?;
                    self.put(at, slot)?;
                }
                b'q' => {
                    let slot = self.le(at, 1)?;
                    self.put(at, slot)?;
                }
                b'r' => {
                    let slot = self.le(at, 4)?;
                    self.put(at, slot)?;
                }
                b'\x80' => {
                    let proto = self.le(at, 1)?;
                    if proto > 3 {
                        return Err(PickleError::Opcode { at, op });
                    }
                }
                b'\x82' | b'\x83' | b'\x84' => {
                    let n = [1, 2, 4][usize::from(op - 0x82)];
                    self.take(at, n)?;
                    self.push(Node::Other);
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let f = self.classify(pid, at)?;
                    found(f)?;
                    self.push(Node::Other);
                }
                _ => return Err(PickleError::Opcode { at, op }),
            }
        }
        if stops < 2 {
            return Err(PickleError::Truncated {
                at: self.data.len(),
            });
        }
        Ok(())
    }

    /// The 8-byte oid at node `n`: (its value, offset of its bytes).
    fn oid(&self, n: usize) -> Option<(u64, usize)> {
        match self.nodes[n] {
            Node::Bytes { start, len: 8 } => {
                let b: [u8; 8] = self.data[start..start + 8].try_into().ok()?;
                Some((u64::from_be_bytes(b), start))
            }
            _ => None,
        }
    }

    fn str_value(&self, n: usize) -> Option<String> {
        let b = match &self.nodes[n] {
            Node::Bytes { start, len } => &self.data[*start..*start + *len],
            Node::Text(t) => t.as_slice(),
            _ => return None,
        };
        String::from_utf8(b.to_vec()).ok()
    }

    fn classify(&self, pid: usize, at: usize) -> Result<Found, PickleError> {
        let unknown = PickleError::UnknownReference { at };
        let done = |(oid, oid_start): (u64, usize), kind: RefKind, build: Option<Build>| Found {
            r: PersistentRef { oid, kind, at },
            oid_start,
            build,
        };
        if let Some(o) = self.oid(pid) {
            return Ok(done(o, RefKind::Oid, None));
        }
        match &self.nodes[pid] {
            Node::Tuple(items, build) if items.len() == 2 => {
                let o = self.oid(items[0]).ok_or(unknown)?;
                Ok(done(o, RefKind::OidClass, Some(*build)))
            }
            Node::List(items) if items.len() == 1 => {
                let o = self.oid(items[0]).ok_or(unknown)?;
                Ok(done(o, RefKind::WeakLegacy, None))
            }
            Node::List(items) if items.len() == 2 => {
                let marker = self.str_value(items[0]).ok_or(unknown.clone())?;
                let Node::Tuple(args, _) = &self.nodes[items[1]] else {
                    return Err(unknown);
                };
                let db = |i: usize| self.str_value(args[i]).ok_or(unknown.clone());
                match (marker.as_str(), args.len()) {
                    ("w", 1) => {
                        let o = self.oid(args[0]).ok_or(unknown)?;
                        Ok(done(o, RefKind::Weak { db: None }, None))
                    }
                    ("w", 2) => {
                        let o = self.oid(args[0]).ok_or(unknown.clone())?;
                        Ok(done(o, RefKind::Weak { db: Some(db(1)?) }, None))
                    }
                    ("n", 2) => {
                        let o = self.oid(args[1]).ok_or(unknown.clone())?;
                        Ok(done(o, RefKind::Cross { db: db(0)? }, None))
                    }
                    ("m", 3) => {
                        let o = self.oid(args[1]).ok_or(unknown.clone())?;
                        Ok(done(o, RefKind::CrossClass { db: db(0)? }, None))
                    }
                    _ => Err(unknown),
                }
            }
            _ => Err(unknown),
        }
    }
}

fn scanner(data: &[u8]) -> Scanner<'_> {
    Scanner {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    }
}

/// The persistent references of `data` (a ZODB record: a class pickle then
/// a state pickle sharing one memo), in order; a reference repeated
/// through the memo is listed at each use.
pub fn persistent_refs(data: &[u8]) -> Result<Vec<PersistentRef>, PickleError> {
    let mut out = Vec::new();
    scanner(data).run(&mut |f| {
        out.push(f.r);
        Ok(())
    })?;
    Ok(out)
}

/// Rewrites the references of `data`: `map` is called for each one and
/// returns where it must point now (`None`: unchanged). Everything else is
/// kept byte for byte; `Cow::Borrowed` when nothing changed.
pub fn rewrite<'d>(
    data: &'d [u8],
    map: &mut dyn FnMut(&PersistentRef) -> Option<Remap>,
) -> Result<Cow<'d, [u8]>, PickleError> {
    // offset -> (bytes removed, bytes inserted)
    let mut edits: HashMap<usize, (usize, Vec<u8>)> = HashMap::new();
    scanner(data).run(&mut |f| {
        let Some(to) = map(&f.r) else {
            return Ok(());
        };
        let new = to.oid.to_be_bytes().to_vec();
        if to.oid != f.r.oid {
            match edits.get(&f.oid_start) {
                Some((_, old)) if *old != new => {
                    return Err(PickleError::Conflict { at: f.oid_start })
                }
                _ => {
                    edits.insert(f.oid_start, (8, new));
                }
            }
        }
        if to.drop_class {
            match f.build {
                Some(Build::Tuple2(t)) => {
                    edits.insert(t, (1, b"0".to_vec()));
                }
                Some(Build::Mark(m, t)) => {
                    edits.insert(m, (1, Vec::new()));
                    edits.insert(t, (1, b"0".to_vec()));
                }
                Some(Build::Other) => {
                    return Err(PickleError::Invalid {
                        at: f.r.at,
                        what: "cannot drop the class of this persistent id",
                    })
                }
                None => {}
            }
        }
        Ok(())
    })?;
    if edits.is_empty() {
        return Ok(Cow::Borrowed(data));
    }
    let mut at: Vec<_> = edits.into_iter().collect();
    at.sort_unstable_by_key(|(k, _)| *k);
    let mut out = Vec::with_capacity(data.len());
    let mut pos = 0;
    for (k, (del, ins)) in at {
        out.extend_from_slice(&data[pos..k]);
        out.extend_from_slice(&ins);
        pos = k + del;
    }
    out.extend_from_slice(&data[pos..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    fn testdata() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    fn fixtures() -> Value {
        let text = std::fs::read_to_string(testdata().join("mount_pickles.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A reference as the fixture's JSON spells what ZODB read.
    fn as_json(r: &PersistentRef) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("oid".into(), r.oid.into());
        match &r.kind {
            RefKind::Oid => {}
            RefKind::OidClass => {
                m.insert("class".into(), true.into());
            }
            RefKind::WeakLegacy => {
                m.insert("weak".into(), true.into());
            }
            RefKind::Weak { db } => {
                m.insert("weak".into(), true.into());
                if let Some(db) = db {
                    m.insert("db".into(), db.clone().into());
                }
            }
            RefKind::Cross { db } => {
                m.insert("db".into(), db.clone().into());
            }
            RefKind::CrossClass { db } => {
                m.insert("db".into(), db.clone().into());
                m.insert("class".into(), true.into());
            }
        }
        Value::Object(m)
    }

    fn cases() -> Vec<(String, Vec<u8>, Vec<Value>)> {
        let f = fixtures();
        let cases = f["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 21);
        cases
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    unhex(c["hex"].as_str().unwrap()),
                    c["pids"].as_array().unwrap().clone(),
                )
            })
            .collect()
    }

    #[test]
    fn finds_what_zodb_reads_in_every_form_and_protocol() {
        for (name, data, pids) in cases() {
            let refs = persistent_refs(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got: Vec<Value> = refs.iter().map(as_json).collect();
            assert_eq!(got, pids, "{name}");
        }
    }

    #[test]
    fn shifting_changes_only_the_oid_bytes() {
        for (name, data, pids) in cases() {
            let out = rewrite(&data, &mut |r| {
                Some(Remap {
                    oid: r.oid + 0x1234,
                    drop_class: false,
                })
            })
            .unwrap();
            assert_eq!(out.len(), data.len(), "{name}");
            let diff = data.iter().zip(out.iter()).filter(|(a, b)| a != b).count();
            assert!((1..=2).contains(&diff), "{name}: {diff} bytes differ");
            let refs = persistent_refs(&out).unwrap();
            assert_eq!(refs.len(), pids.len(), "{name}");
            for (r, p) in refs.iter().zip(&pids) {
                assert_eq!(r.oid, p["oid"].as_u64().unwrap() + 0x1234, "{name}");
                assert_eq!(as_json(r)["class"], p["class"], "{name}");
            }
        }
    }

    #[test]
    fn unchanged_is_borrowed() {
        for (_, data, _) in cases() {
            let out = rewrite(&data, &mut |_| None).unwrap();
            assert!(matches!(out, Cow::Borrowed(_)));
            let same = rewrite(&data, &mut |r| {
                Some(Remap {
                    oid: r.oid,
                    drop_class: false,
                })
            })
            .unwrap();
            assert!(matches!(same, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn dropping_the_class_leaves_a_bare_oid() {
        for (name, data, _) in cases() {
            if !name.ends_with("_tuple") {
                continue;
            }
            let out = rewrite(&data, &mut |_| {
                Some(Remap {
                    oid: 77,
                    drop_class: true,
                })
            })
            .unwrap();
            let refs = persistent_refs(&out).unwrap();
            assert_eq!(refs.len(), 2, "{name}");
            for r in refs {
                assert_eq!((r.oid, r.kind), (77, RefKind::Oid), "{name}");
            }
            let shrink = if name.starts_with("p1") { 1 } else { 0 };
            assert_eq!(out.len() + shrink, data.len(), "{name}");
        }
    }

    #[test]
    fn zodb_records_have_the_references_zodb_finds() {
        let f = fixtures();
        for name in ["mount_main", "mount_sub"] {
            let fs = fsformat::DataFs::open(testdata().join(format!("{name}.fs"))).unwrap();
            let expected = f["records"][name].as_array().unwrap();
            let mut n = 0;
            for txn in fs.iter() {
                let txn = txn.unwrap();
                for rec in txn.records() {
                    let rec = rec.unwrap();
                    let data = rec.data().unwrap();
                    let e = &expected[n];
                    assert_eq!(rec.oid.0, e["oid"].as_u64().unwrap());
                    // referencesf leaves weak references out.
                    let got: Vec<u64> = persistent_refs(data)
                        .unwrap()
                        .into_iter()
                        .filter(|r| !matches!(r.kind, RefKind::Weak { .. } | RefKind::WeakLegacy))
                        .map(|r| r.oid)
                        .collect();
                    let want: Vec<u64> = e["refs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap())
                        .collect();
                    assert_eq!(got, want, "{name} record {n}");
                    n += 1;
                }
            }
            assert_eq!(n, expected.len());
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (_, data, _) = cases().pop().unwrap();
        for cut in 0..data.len() - 1 {
            assert!(persistent_refs(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            persistent_refs(b"\x80\x04N.N."),
            Err(PickleError::Opcode { at: 0, .. })
        ));
        assert!(matches!(
            persistent_refs(b"K\x01Q.N."),
            Err(PickleError::UnknownReference { at: 2 })
        ));
        assert!(matches!(
            persistent_refs(b"h\x05."),
            Err(PickleError::Invalid { at: 0, .. })
        ));
        assert!(persistent_refs(b"t.").is_err());
        assert!(persistent_refs(b"N.N.N.").is_err());
        assert!(persistent_refs(b"NN.N.").is_err());
        assert!(persistent_refs(b"N.N.").unwrap().is_empty());
    }
}
