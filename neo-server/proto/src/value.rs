//! A generic msgpack value tree, for the few `any` fields of NEO packets
//! (`extra` of RequestIdentification, NotifyMonitorInformation's `info`,
//! a storage's raw pack oids) and for tools that inspect unknown frames.

use bytes::Bytes;
use rmp::Marker;

use crate::codec::{Decode, DecodeError, DecodeErrorKind, Encode, Reader, Writer};

/// Any msgpack value, as NEO's decoder sees it (arrays and tuples alike,
/// str and bin distinct, maps with keys of any type, in wire order).
///
/// Integers are normalized: non-negative ones are always [`Value::UInt`],
/// [`Value::Int`] only holds negative numbers (use [`Value::int`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// nil (Python None).
    Nil,
    /// true / false.
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A float (always float 64 on NEO's wire).
    Float(f64),
    /// bin (Python bytes).
    Bin(Bytes),
    /// str (Python str; inside NEO packets only in odd places).
    Str(String),
    /// array (Python tuple or list).
    Array(Vec<Value>),
    /// map, entries in wire order.
    Map(Vec<(Value, Value)>),
    /// ext: type and payload (NEO's enums are ext types 0..=4 with the
    /// msgpack int of the item as payload).
    Ext(i8, Bytes),
}

impl Value {
    /// A normalized integer value.
    pub fn int(v: i64) -> Value {
        match u64::try_from(v) {
            Ok(u) => Value::UInt(u),
            Err(_) => Value::Int(v),
        }
    }

    /// A bin value.
    pub fn bin(v: impl Into<Bytes>) -> Value {
        Value::Bin(v.into())
    }
}

impl Encode for Value {
    fn encode(&self, w: &mut Writer) {
        match self {
            Value::Nil => w.nil(),
            Value::Bool(b) => w.bool(*b),
            Value::UInt(u) => w.uint(*u),
            Value::Int(i) => w.sint(*i),
            Value::Float(f) => w.f64(*f),
            Value::Bin(b) => w.bin(b),
            Value::Str(s) => w.str(s),
            Value::Array(a) => {
                w.array_len(a.len());
                for v in a {
                    v.encode(w);
                }
            }
            Value::Map(m) => {
                w.map_len(m.len());
                for (k, v) in m {
                    k.encode(w);
                    v.encode(w);
                }
            }
            Value::Ext(t, d) => w.ext(*t, d),
        }
    }
}

impl Decode for Value {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let Some(b) = r.peek() else {
            return Err(r.error(DecodeErrorKind::Truncated));
        };
        Ok(match Marker::from_u8(b) {
            Marker::Null => {
                r.nil();
                Value::Nil
            }
            Marker::True | Marker::False => Value::Bool(r.bool()?),
            Marker::FixPos(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => {
                Value::UInt(r.int("int")?)
            }
            Marker::FixNeg(_) | Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                // Signed formats may carry non-negative numbers too.
                Value::int(r.int("int")?)
            }
            Marker::F32 | Marker::F64 => Value::Float(r.f64()?),
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => Value::Bin(r.bin()?),
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                Value::Str(r.str()?)
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                let n = r.array_len()?;
                r.enter()?;
                let mut a = Vec::with_capacity(r.capacity(n));
                for _ in 0..n {
                    a.push(Value::decode(r)?);
                }
                r.leave();
                Value::Array(a)
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let n = r.map_len()?;
                r.enter()?;
                let mut m = Vec::with_capacity(r.capacity(n));
                for _ in 0..n {
                    let k = Value::decode(r)?;
                    m.push((k, Value::decode(r)?));
                }
                r.leave();
                Value::Map(m)
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                let (t, d) = r.ext()?;
                Value::Ext(t, d)
            }
            Marker::Reserved => return Err(r.error(DecodeErrorKind::ReservedMarker)),
        })
    }
}
