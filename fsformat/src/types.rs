//! Object ids and transaction ids, the two 8-byte keys of ZODB.
//!
//! Both are big-endian 64-bit integers on disk and on NEO's wire; we keep
//! them as `u64` so they compare and hash cheaply, and convert at the edges.

use std::fmt;

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The all-zero id.
            pub const ZERO: $name = $name(0);

            /// From the 8 big-endian bytes used on disk and on the wire.
            pub fn from_bytes(b: [u8; 8]) -> Self {
                $name(u64::from_be_bytes(b))
            }

            /// From a slice that must be exactly 8 bytes long.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                Some(Self::from_bytes(b.try_into().ok()?))
            }

            /// The 8 big-endian bytes used on disk and on the wire.
            pub fn to_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:016x})", stringify!($name), self.0)
            }
        }

        /// Shown as ZODB shows it in its tools: 16 hex digits.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }
    };
}

id_type!(Oid, "A ZODB object id.");
id_type!(
    Tid,
    "A ZODB transaction id (a timestamp, see ZODB's `TimeStamp`)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bytes() {
        let t = Tid(0x03f1_2233_4455_6677);
        assert_eq!(Tid::from_bytes(t.to_bytes()), t);
        assert_eq!(t.to_bytes()[0], 0x03);
        assert_eq!(Oid::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]), Some(Oid(7)));
        assert_eq!(Oid::from_slice(&[0; 7]), None);
        assert_eq!(format!("{}", Oid(255)), "00000000000000ff");
    }
}
