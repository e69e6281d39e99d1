//! The msgpack codec of packet fields: the [`Encode`] / [`Decode`] traits,
//! the [`Writer`] and [`Reader`] they work on, and their implementations for
//! the leaf types of NEO's layout grammar.
//!
//! Encoding follows NEO's `Packer(use_bin_type=True, strict_types=True)`:
//! integers in their smallest encoding (non-negative ones always unsigned),
//! floats always as float 64 (`cb`), bytes as bin, sequences as arrays, maps
//! in the order given. The msgpack primitives come from the `rmp` crate.
//!
//! | NEO type   | Rust type                    | msgpack                          |
//! |------------|------------------------------|----------------------------------|
//! | `int`      | `u8`..`u64`, `i32`, `i64`    | smallest int                     |
//! | `float`    | `f64`                        | `cb` + 8 bytes                   |
//! | `bool`     | `bool`                       | `c2` / `c3`                      |
//! | `bin`      | [`Bytes`]                    | `c4` / `c5` / `c6`               |
//! | `tid` `oid`| [`Tid`] / [`Oid`]            | bin of exactly 8 bytes           |
//! | `?T`       | `Option<T>`                  | nil or T                         |
//! | `[T]`      | `Vec<T>`                     | array                            |
//! | `(A, B..)` | tuples up to 5               | fixed-length array               |
//! | `{K: V}`   | [`Map<K, V>`]                | map, entries in order            |
//!
//! Decoding never allocates more than the input can hold: a declared array
//! length only reserves as many slots as there are bytes left.

use std::convert::Infallible;
use std::fmt;

use bytes::Bytes;
use fsformat::{Oid, Tid};
use rmp::decode::{NumValueReadError, ValueReadError};
use rmp::encode::{ByteBuf, ValueWriteError};
use rmp::Marker;

/// Deepest nesting of arrays and maps accepted in a frame. Real NEO packets
/// nest at most 6 deep; python-msgpack stops at 1024. We are stricter so
/// that recursive decoding of [`crate::Value`] can never exhaust a stack.
pub const MAX_DEPTH: usize = 128;

/// Why a value could not be decoded, and where (byte offset in the frame).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeError {
    /// Offset in the frame of the value that failed.
    pub offset: usize,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended inside a value.
    Truncated,
    /// Another msgpack type was found (`found` is the marker byte).
    TypeMismatch {
        /// What the layout wants.
        expected: &'static str,
        /// The msgpack marker byte found.
        found: u8,
    },
    /// An integer does not fit the field.
    OutOfRange {
        /// What the layout wants.
        expected: &'static str,
    },
    /// A fixed-size array or bin has another length.
    BadLength {
        /// What the layout wants.
        expected: &'static str,
        /// Length wanted.
        want: usize,
        /// Length found.
        got: usize,
    },
    /// An ext value of the wrong type or with an unknown item.
    BadEnum {
        /// The enum wanted.
        expected: &'static str,
        /// ext type found.
        ext_type: i8,
        /// item value found, if it was readable.
        value: Option<i64>,
    },
    /// An Error packet's code that is no `ErrorCodes` item.
    UnknownErrorCode(u64),
    /// A msgpack str that is not UTF-8.
    InvalidUtf8,
    /// The byte 0xc1, which msgpack never uses.
    ReservedMarker,
    /// Arrays or maps nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left after the value.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::Truncated => write!(f, "truncated value"),
            DecodeErrorKind::TypeMismatch { expected, found } => {
                write!(f, "expected {expected}, found marker 0x{found:02x}")
            }
            DecodeErrorKind::OutOfRange { expected } => {
                write!(f, "integer out of range for {expected}")
            }
            DecodeErrorKind::BadLength {
                expected,
                want,
                got,
            } => write!(f, "{expected}: length {got}, want {want}"),
            DecodeErrorKind::BadEnum {
                expected,
                ext_type,
                value,
            } => write!(
                f,
                "expected {expected}, found ext type {ext_type} item {value:?}"
            ),
            DecodeErrorKind::UnknownErrorCode(c) => write!(f, "unknown error code {c}"),
            DecodeErrorKind::InvalidUtf8 => write!(f, "str is not UTF-8"),
            DecodeErrorKind::ReservedMarker => write!(f, "reserved marker 0xc1"),
            DecodeErrorKind::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            DecodeErrorKind::TrailingBytes(n) => write!(f, "{n} bytes after the value"),
        }?;
        write!(f, " at offset {}", self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// Something that can be written as msgpack, byte-exact with NEO.
pub trait Encode {
    /// Appends the msgpack encoding of `self`.
    fn encode(&self, w: &mut Writer);
}

/// Something that can be read from msgpack.
pub trait Decode: Sized {
    /// Reads one value at the reader's position.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Appends msgpack to a growing buffer (never fails: it writes to memory).
#[derive(Default)]
pub struct Writer {
    buf: ByteBuf,
}

fn infallible<T>(r: Result<T, ValueWriteError<Infallible>>) -> T {
    match r {
        Ok(v) => v,
        Err(ValueWriteError::InvalidMarkerWrite(e) | ValueWriteError::InvalidDataWrite(e)) => {
            match e {}
        }
    }
}

/// A length as msgpack wants it. Lengths above `u32::MAX` cannot be
/// encoded; they only occur in frames far above NEO's 64 MiB limit, which
/// [`crate::Packet::encode`] refuses, so saturating here is harmless.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.as_slice().len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf.into_vec()
    }

    /// nil (`c0`).
    pub fn nil(&mut self) {
        match rmp::encode::write_nil(&mut self.buf) {
            Ok(()) => {}
            Err(e) => match e {},
        }
    }

    /// true / false.
    pub fn bool(&mut self, v: bool) {
        match rmp::encode::write_bool(&mut self.buf, v) {
            Ok(()) => {}
            Err(e) => match e {},
        }
    }

    /// A non-negative integer, smallest encoding.
    pub fn uint(&mut self, v: u64) {
        infallible(rmp::encode::write_uint(&mut self.buf, v));
    }

    /// A signed integer, smallest encoding (unsigned formats if >= 0, as
    /// python-msgpack does).
    pub fn sint(&mut self, v: i64) {
        infallible(rmp::encode::write_sint(&mut self.buf, v));
    }

    /// A float 64 (`cb`).
    pub fn f64(&mut self, v: f64) {
        infallible(rmp::encode::write_f64(&mut self.buf, v));
    }

    /// A bin.
    pub fn bin(&mut self, v: &[u8]) {
        infallible(rmp::encode::write_bin_len(&mut self.buf, len32(v.len())));
        self.buf.as_mut_vec().extend_from_slice(v);
    }

    /// A str.
    pub fn str(&mut self, v: &str) {
        infallible(rmp::encode::write_str_len(&mut self.buf, len32(v.len())));
        self.buf.as_mut_vec().extend_from_slice(v.as_bytes());
    }

    /// The header of an array of `n` items.
    pub fn array_len(&mut self, n: usize) {
        infallible(rmp::encode::write_array_len(&mut self.buf, len32(n)));
    }

    /// The header of a map of `n` entries.
    pub fn map_len(&mut self, n: usize) {
        infallible(rmp::encode::write_map_len(&mut self.buf, len32(n)));
    }

    /// An ext value (fixext1 for a 1-byte payload, as NEO's enums).
    pub fn ext(&mut self, ty: i8, data: &[u8]) {
        infallible(rmp::encode::write_ext_meta(
            &mut self.buf,
            len32(data.len()),
            ty,
        ));
        self.buf.as_mut_vec().extend_from_slice(data);
    }
}

/// Reads msgpack values from one frame held in a [`Bytes`], so that bin
/// fields are zero-copy slices of the frame.
pub struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `frame`.
    pub fn new(frame: &'a Bytes) -> Self {
        Reader {
            frame,
            pos: 0,
            depth: 0,
        }
    }

    /// Current offset in the frame.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.frame.len() - self.pos
    }

    /// The next byte (marker) without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.frame.get(self.pos).copied()
    }

    /// An error of `kind` at the current offset.
    pub fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    /// Fails unless the whole frame was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(DecodeErrorKind::TrailingBytes(n))),
        }
    }

    /// Runs an `rmp` reading function on the rest of the frame and advances
    /// past what it consumed.
    fn rmp<T, E>(&mut self, f: impl FnOnce(&mut &[u8]) -> Result<T, E>) -> Result<T, E> {
        let mut rd: &[u8] = &self.frame[self.pos..];
        let before = rd.len();
        let r = f(&mut rd);
        if r.is_ok() {
            self.pos += before - rd.len();
        }
        r
    }

    fn value_err(&self, e: ValueReadError, expected: &'static str) -> DecodeError {
        self.error(match e {
            ValueReadError::TypeMismatch(m) => DecodeErrorKind::TypeMismatch {
                expected,
                found: m.to_u8(),
            },
            _ => DecodeErrorKind::Truncated,
        })
    }

    fn num_err(&self, e: NumValueReadError, expected: &'static str) -> DecodeError {
        self.error(match e {
            NumValueReadError::TypeMismatch(m) => DecodeErrorKind::TypeMismatch {
                expected,
                found: m.to_u8(),
            },
            NumValueReadError::OutOfRange => DecodeErrorKind::OutOfRange { expected },
            _ => DecodeErrorKind::Truncated,
        })
    }

    /// Takes `n` raw bytes as a slice of the frame.
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.error(DecodeErrorKind::Truncated));
        }
        let b = self.frame.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// If the next value is nil, consumes it and returns true.
    pub fn nil(&mut self) -> bool {
        if self.peek() == Some(0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// An integer of any msgpack width that fits `T`.
    pub fn int<T: num_traits::FromPrimitive>(
        &mut self,
        expected: &'static str,
    ) -> Result<T, DecodeError> {
        let start = self.pos;
        match self.rmp(|rd| rmp::decode::read_int::<T, _>(rd)) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.pos = start;
                Err(self.num_err(e, expected))
            }
        }
    }

    /// A bool.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        self.rmp(|rd| rmp::decode::read_bool(rd))
            .map_err(|e| self.value_err(e, "bool"))
    }

    /// A float: float 64 as NEO writes, or float 32.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        match self.peek().map(Marker::from_u8) {
            Some(Marker::F32) => self
                .rmp(|rd| rmp::decode::read_f32(rd))
                .map(f64::from)
                .map_err(|e| self.value_err(e, "float")),
            _ => self
                .rmp(|rd| rmp::decode::read_f64(rd))
                .map_err(|e| self.value_err(e, "float")),
        }
    }

    /// A bin (zero-copy).
    pub fn bin(&mut self) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        let n = self
            .rmp(|rd| rmp::decode::read_bin_len(rd))
            .map_err(|e| self.value_err(e, "bin"))?;
        self.take(n as usize).inspect_err(|_| self.pos = start)
    }

    /// A bin of exactly `N` bytes.
    pub fn bin_array<const N: usize>(
        &mut self,
        expected: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let start = self.pos;
        let b = self.bin()?;
        <[u8; N]>::try_from(&b[..]).map_err(|_| DecodeError {
            offset: start,
            kind: DecodeErrorKind::BadLength {
                expected,
                want: N,
                got: b.len(),
            },
        })
    }

    /// A str.
    pub fn str(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let n = self
            .rmp(|rd| rmp::decode::read_str_len(rd))
            .map_err(|e| self.value_err(e, "str"))?;
        let b = self.take(n as usize).inspect_err(|_| self.pos = start)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError {
            offset: start,
            kind: DecodeErrorKind::InvalidUtf8,
        })
    }

    /// The header of an array; returns its length.
    pub fn array_len(&mut self) -> Result<usize, DecodeError> {
        self.rmp(|rd| rmp::decode::read_array_len(rd))
            .map(|n| n as usize)
            .map_err(|e| self.value_err(e, "array"))
    }

    /// The header of an array that must have `n` items.
    pub fn fixed_array(&mut self, n: usize, expected: &'static str) -> Result<(), DecodeError> {
        let start = self.pos;
        let got = self.array_len()?;
        if got != n {
            return Err(DecodeError {
                offset: start,
                kind: DecodeErrorKind::BadLength {
                    expected,
                    want: n,
                    got,
                },
            });
        }
        Ok(())
    }

    /// The header of a map; returns its number of entries.
    pub fn map_len(&mut self) -> Result<usize, DecodeError> {
        self.rmp(|rd| rmp::decode::read_map_len(rd))
            .map(|n| n as usize)
            .map_err(|e| self.value_err(e, "map"))
    }

    /// An ext value: its type and payload.
    pub fn ext(&mut self) -> Result<(i8, Bytes), DecodeError> {
        let start = self.pos;
        let meta = self
            .rmp(|rd| rmp::decode::read_ext_meta(rd))
            .map_err(|e| self.value_err(e, "ext"))?;
        let data = self
            .take(meta.size as usize)
            .inspect_err(|_| self.pos = start)?;
        Ok((meta.typeid, data))
    }

    /// A vector capacity for `n` declared items: never more than the bytes
    /// left, since every item takes at least one byte.
    pub fn capacity(&self, n: usize) -> usize {
        n.min(self.remaining())
    }

    /// Enters a nested container (for recursive values).
    pub fn enter(&mut self) -> Result<(), DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(DecodeErrorKind::TooDeep));
        }
        self.depth += 1;
        Ok(())
    }

    /// Leaves a nested container.
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

macro_rules! int_codec {
    ($($t:ty => $w:ident),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.$w((*self).into());
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                r.int(stringify!($t))
            }
        }
    )*};
}
int_codec!(u8 => uint, u16 => uint, u32 => uint, u64 => uint, i32 => sint, i64 => sint);

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        w.bool(*self);
    }
}
impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bool()
    }
}

impl Encode for f64 {
    fn encode(&self, w: &mut Writer) {
        w.f64(*self);
    }
}
impl Decode for f64 {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.f64()
    }
}

impl Encode for Bytes {
    fn encode(&self, w: &mut Writer) {
        w.bin(self);
    }
}
impl Decode for Bytes {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bin()
    }
}

impl Encode for Tid {
    fn encode(&self, w: &mut Writer) {
        w.bin(&self.to_bytes());
    }
}
impl Decode for Tid {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bin_array::<8>("tid").map(Tid::from_bytes)
    }
}

impl Encode for Oid {
    fn encode(&self, w: &mut Writer) {
        w.bin(&self.to_bytes());
    }
}
impl Decode for Oid {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bin_array::<8>("oid").map(Oid::from_bytes)
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            None => w.nil(),
            Some(v) => v.encode(w),
        }
    }
}
impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.nil() {
            Ok(None)
        } else {
            T::decode(r).map(Some)
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        w.array_len(self.len());
        for v in self {
            v.encode(w);
        }
    }
}
impl<T: Decode> Decode for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.array_len()?;
        r.enter()?;
        let mut v = Vec::with_capacity(r.capacity(n));
        for _ in 0..n {
            v.push(T::decode(r)?);
        }
        r.leave();
        Ok(v)
    }
}

/// A msgpack map, entries kept in wire order (NEO sends Python dicts in
/// insertion order; duplicates are kept as they came).
#[derive(Debug, Clone, PartialEq)]
pub struct Map<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Map<K, V> {
    fn default() -> Self {
        Map(Vec::new())
    }
}

impl<K, V> Map<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Map(Vec::new())
    }

    /// Appends an entry (wire order is insertion order, as Python dicts).
    pub fn push(&mut self, k: K, v: V) {
        self.0.push((k, v));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of the first entry whose key equals `k`.
    pub fn get<Q: PartialEq<K> + ?Sized>(&self, k: &Q) -> Option<&V> {
        self.0.iter().find(|(key, _)| k == key).map(|(_, v)| v)
    }

    /// Iterates over the entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.0.iter()
    }
}

impl<K, V> FromIterator<(K, V)> for Map<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Map(iter.into_iter().collect())
    }
}

impl<K: Encode, V: Encode> Encode for Map<K, V> {
    fn encode(&self, w: &mut Writer) {
        w.map_len(self.0.len());
        for (k, v) in &self.0 {
            k.encode(w);
            v.encode(w);
        }
    }
}
impl<K: Decode, V: Decode> Decode for Map<K, V> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.map_len()?;
        r.enter()?;
        let mut v = Vec::with_capacity(r.capacity(n));
        for _ in 0..n {
            let k = K::decode(r)?;
            v.push((k, V::decode(r)?));
        }
        r.leave();
        Ok(Map(v))
    }
}

macro_rules! tuple_codec {
    ($n:literal: $($t:ident $i:tt),*) => {
        impl<$($t: Encode),*> Encode for ($($t,)*) {
            fn encode(&self, w: &mut Writer) {
                w.array_len($n);
                $(self.$i.encode(w);)*
            }
        }
        impl<$($t: Decode),*> Decode for ($($t,)*) {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                r.fixed_array($n, "tuple")?;
                Ok(($($t::decode(r)?,)*))
            }
        }
    };
}
tuple_codec!(2: A 0, B 1);
tuple_codec!(3: A 0, B 1, C 2);
tuple_codec!(4: A 0, B 1, C 2, D 3);
tuple_codec!(5: A 0, B 1, C 2, D 3, E 4);

/// Encodes one value into a fresh buffer.
pub fn to_vec<T: Encode + ?Sized>(v: &T) -> Vec<u8> {
    let mut w = Writer::new();
    v.encode(&mut w);
    w.into_vec()
}

/// Decodes one value that must fill all of `bytes`.
pub fn from_bytes<T: Decode>(bytes: &Bytes) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Defines a struct that travels as a fixed-length msgpack array of its
/// fields, in declaration order (NEO's tuples such as `node` or `cell`,
/// and the argument lists of packets).
#[macro_export]
macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        impl $name {
            /// Number of fields (length of the msgpack array).
            pub const ARITY: usize = <[&str]>::len(&[$(stringify!($f)),*]);
        }

        impl $crate::codec::Encode for $name {
            #[allow(unused_variables)]
            fn encode(&self, w: &mut $crate::codec::Writer) {
                w.array_len(Self::ARITY);
                $($crate::codec::Encode::encode(&self.$f, w);)*
            }
        }

        impl $crate::codec::Decode for $name {
            fn decode(r: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::codec::DecodeError> {
                r.fixed_array(Self::ARITY, stringify!($name))?;
                Ok($name { $($f: $crate::codec::Decode::decode(r)?),* })
            }
        }
    };
}
