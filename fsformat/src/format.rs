//! The byte layout of a FileStorage file (`Data.fs`), as ZODB writes it
//! (ZODB `FileStorage/format.py`), with zero-copy views and encoders.
//!
//! All integers are big-endian; all positions are absolute file offsets.
//!
//! File:
//!
//! | offset | size | field                                        |
//! |-------:|-----:|----------------------------------------------|
//! | 0      | 4    | magic: `FS21` (Python 2 ZODB) or `FS30`      |
//! | 4      | ...  | transaction records, one after the other     |
//!
//! Transaction record (at `tpos`):
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! | 0      | 8    | tid                                                |
//! | 8      | 8    | tlen: record length minus the final 8 bytes        |
//! | 16     | 1    | status: `' '` done, `'p'` packed, `'c'` checkpoint (commit in progress), `'u'` undone (obsolete) |
//! | 17     | 2    | ulen: user name length                             |
//! | 19     | 2    | dlen: description length                           |
//! | 21     | 2    | elen: extension length (a pickled dict)            |
//! | 23     | ulen | user name                                          |
//! |        | dlen | description                                        |
//! |        | elen | extension                                          |
//! |        | ...  | data records, up to `tpos + tlen`                  |
//! | tlen   | 8    | tlen again (redundant, lets readers walk backward) |
//!
//! Data record (at `pos`):
//!
//! | offset | size | field                                               |
//! |-------:|-----:|-----------------------------------------------------|
//! | 0      | 8    | oid                                                 |
//! | 8      | 8    | serial: tid of the transaction holding the record   |
//! | 16     | 8    | prev: position of the object's previous record, 0 if none |
//! | 24     | 8    | tpos: position of the enclosing transaction         |
//! | 32     | 2    | vlen: version length, always 0 since ZODB 3.9      |
//! | 34     | 8    | plen: data length                                   |
//! | 42     | plen | data (the pickle), when `plen > 0`                  |
//! | 42     | 8    | backpointer, when `plen == 0`: position of a record holding the data; 0 means "no data" (creation undone, object deleted) |

use crate::error::{Error, Result};
use crate::{Oid, Tid};

/// Length of the magic at the start of the file.
pub const MAGIC_LEN: u64 = 4;
/// Magic written by ZODB on Python 2.
pub const MAGIC_FS21: [u8; 4] = *b"FS21";
/// Magic written by ZODB on Python 3 (ZODB 5+).
pub const MAGIC_FS30: [u8; 4] = *b"FS30";

/// Offset of the tid in a transaction header.
pub const TXN_TID: usize = 0;
/// Offset of the transaction length.
pub const TXN_TLEN: usize = 8;
/// Offset of the status byte.
pub const TXN_STATUS: usize = 16;
/// Offset of the user name length.
pub const TXN_ULEN: usize = 17;
/// Offset of the description length.
pub const TXN_DLEN: usize = 19;
/// Offset of the extension length.
pub const TXN_ELEN: usize = 21;
/// Length of the fixed part of a transaction header.
pub const TXN_HEADER_LEN: usize = 23;
/// Length of the redundant transaction length after the data records.
pub const TXN_TRAILER_LEN: usize = 8;

/// Offset of the oid in a data record header.
pub const DATA_OID: usize = 0;
/// Offset of the serial (tid).
pub const DATA_SERIAL: usize = 8;
/// Offset of the previous-record position.
pub const DATA_PREV: usize = 16;
/// Offset of the transaction position.
pub const DATA_TPOS: usize = 24;
/// Offset of the (always zero) version length.
pub const DATA_VLEN: usize = 32;
/// Offset of the data length.
pub const DATA_PLEN: usize = 34;
/// Length of a data record header.
pub const DATA_HEADER_LEN: usize = 42;
/// Length of a backpointer (written instead of data when `plen == 0`).
pub const BACKPOINTER_LEN: usize = 8;

/// Largest user, description or extension length (a 2-byte field).
pub const MAX_META_LEN: usize = u16::MAX as usize;

/// The two magics ZODB writes; a copy keeps its source's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Magic {
    /// `FS21`, written by ZODB on Python 2.
    Fs21,
    /// `FS30`, written by ZODB 5+ on Python 3.
    Fs30,
}

impl Magic {
    /// Recognises the first 4 bytes of a file.
    pub fn from_bytes(b: &[u8]) -> Option<Magic> {
        match b {
            b"FS21" => Some(Magic::Fs21),
            b"FS30" => Some(Magic::Fs30),
            _ => None,
        }
    }

    /// The 4 bytes on disk.
    pub fn bytes(self) -> [u8; 4] {
        match self {
            Magic::Fs21 => MAGIC_FS21,
            Magic::Fs30 => MAGIC_FS30,
        }
    }
}

/// Status byte of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnStatus {
    /// `' '`: a committed transaction.
    Committed,
    /// `'p'`: a committed transaction that has been packed.
    Packed,
    /// `'c'`: checkpoint, a commit in progress (written by `tpc_vote`,
    /// cleared by `tpc_finish`); readers stop there.
    Checkpoint,
    /// `'u'`: "uncertain", no longer written; its records are not indexed.
    Undone,
}

impl TxnStatus {
    /// From the status byte; `None` for anything else.
    pub fn from_byte(b: u8) -> Option<TxnStatus> {
        match b {
            b' ' => Some(TxnStatus::Committed),
            b'p' => Some(TxnStatus::Packed),
            b'c' => Some(TxnStatus::Checkpoint),
            b'u' => Some(TxnStatus::Undone),
            _ => None,
        }
    }

    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            TxnStatus::Committed => b' ',
            TxnStatus::Packed => b'p',
            TxnStatus::Checkpoint => b'c',
            TxnStatus::Undone => b'u',
        }
    }
}

#[inline]
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[inline]
fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// `file[pos..pos+len]`, or [`Error::Truncated`].
#[inline]
pub(crate) fn slice_at<'a>(
    file: &'a [u8],
    pos: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8]> {
    let flen = file.len() as u64;
    let have = flen.saturating_sub(pos);
    if len > have {
        return Err(Error::Truncated {
            pos,
            what,
            need: len,
            have,
        });
    }
    // Both fit in usize: they are bounded by file.len().
    Ok(&file[pos as usize..(pos + len) as usize])
}

/// Reads the 8-byte big-endian number at `pos` (a redundant length, a
/// backpointer).
#[inline]
pub fn read_u64(file: &[u8], pos: u64, what: &'static str) -> Result<u64> {
    Ok(be_u64(slice_at(file, pos, 8, what)?, 0))
}

/// The fixed 23 bytes of a transaction header, before its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnFixed {
    /// Offset of the transaction.
    pub pos: u64,
    /// Transaction id.
    pub tid: Tid,
    /// Length of the record minus the trailing redundant length.
    pub tlen: u64,
    /// Raw status byte (see [`TxnStatus`]).
    pub status: u8,
    /// User name length.
    pub ulen: u16,
    /// Description length.
    pub dlen: u16,
    /// Extension length.
    pub elen: u16,
}

impl TxnFixed {
    /// Parses the 23 fixed bytes at `pos` of `file` (the whole file).
    #[inline]
    pub fn parse(file: &[u8], pos: u64) -> Result<TxnFixed> {
        let b = slice_at(file, pos, TXN_HEADER_LEN as u64, "transaction header")?;
        Ok(TxnFixed {
            pos,
            tid: Tid(be_u64(b, TXN_TID)),
            tlen: be_u64(b, TXN_TLEN),
            status: b[TXN_STATUS],
            ulen: be_u16(b, TXN_ULEN),
            dlen: be_u16(b, TXN_DLEN),
            elen: be_u16(b, TXN_ELEN),
        })
    }

    /// 23 + user + description + extension lengths.
    #[inline]
    pub fn header_len(&self) -> u64 {
        TXN_HEADER_LEN as u64 + self.ulen as u64 + self.dlen as u64 + self.elen as u64
    }

    /// Offset of the redundant length: `pos + tlen` (saturating).
    #[inline]
    pub fn end(&self) -> u64 {
        self.pos.saturating_add(self.tlen)
    }

    /// Offset just after the transaction: `pos + tlen + 8` (saturating).
    #[inline]
    pub fn next_pos(&self) -> u64 {
        self.end().saturating_add(TXN_TRAILER_LEN as u64)
    }
}

/// A transaction header borrowed from the file: fixed fields plus metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnHeader<'a> {
    /// Offset of the transaction.
    pub pos: u64,
    /// Transaction id.
    pub tid: Tid,
    /// Length of the record minus the trailing redundant length.
    pub tlen: u64,
    /// Raw status byte (see [`TxnStatus`]).
    pub status: u8,
    /// User name, as stored.
    pub user: &'a [u8],
    /// Description, as stored.
    pub description: &'a [u8],
    /// Extension (a pickled dict, or empty), as stored.
    pub extension: &'a [u8],
}

impl<'a> TxnHeader<'a> {
    /// Parses the header at `pos` of `file` (the whole file): needs the 23
    /// fixed bytes and the metadata to be present and `tlen >= header_len`.
    /// The status is not checked (see [`TxnHeader::check_status`]) and the
    /// records and redundant length are not read.
    #[inline]
    pub fn parse(file: &'a [u8], pos: u64) -> Result<TxnHeader<'a>> {
        let f = TxnFixed::parse(file, pos)?;
        Self::from_fixed(file, &f)
    }

    /// Completes a [`TxnFixed`] with its metadata.
    #[inline]
    pub fn from_fixed(file: &'a [u8], f: &TxnFixed) -> Result<TxnHeader<'a>> {
        let header_len = f.header_len();
        if f.tlen < header_len {
            return Err(Error::TxnLengthTooSmall {
                pos: f.pos,
                tlen: f.tlen,
                header_len,
            });
        }
        let meta = slice_at(
            file,
            f.pos + TXN_HEADER_LEN as u64,
            header_len - TXN_HEADER_LEN as u64,
            "transaction metadata",
        )?;
        let (user, rest) = meta.split_at(f.ulen as usize);
        let (description, extension) = rest.split_at(f.dlen as usize);
        Ok(TxnHeader {
            pos: f.pos,
            tid: f.tid,
            tlen: f.tlen,
            status: f.status,
            user,
            description,
            extension,
        })
    }

    /// The status, `None` if the byte is not one of `' '`, `'p'`, `'c'`, `'u'`.
    #[inline]
    pub fn status(&self) -> Option<TxnStatus> {
        TxnStatus::from_byte(self.status)
    }

    /// The status, or [`Error::BadStatus`].
    pub fn check_status(&self) -> Result<TxnStatus> {
        self.status().ok_or(Error::BadStatus {
            pos: self.pos,
            status: self.status,
        })
    }

    /// 23 + user + description + extension lengths.
    #[inline]
    pub fn header_len(&self) -> u64 {
        (TXN_HEADER_LEN + self.user.len() + self.description.len() + self.extension.len()) as u64
    }

    /// Offset of the first data record.
    #[inline]
    pub fn data_pos(&self) -> u64 {
        self.pos + self.header_len()
    }

    /// Offset of the redundant length (end of the data records).
    #[inline]
    pub fn end(&self) -> u64 {
        self.pos.saturating_add(self.tlen)
    }

    /// Offset just after the transaction.
    #[inline]
    pub fn next_pos(&self) -> u64 {
        self.end().saturating_add(TXN_TRAILER_LEN as u64)
    }

    /// Reads the redundant length and checks it equals `tlen`.
    pub fn check_trailer(&self, file: &[u8]) -> Result<()> {
        let found = read_u64(file, self.end(), "redundant transaction length")?;
        if found != self.tlen {
            return Err(Error::RedundantLength {
                pos: self.pos,
                tlen: self.tlen,
                found,
            });
        }
        Ok(())
    }
}

/// What follows a data record header: the data, or a backpointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The object's pickle (never empty).
    Data(&'a [u8]),
    /// Position of an earlier record holding the data; 0 means no data
    /// (undone creation, deleted object).
    Back(u64),
}

/// A data record borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader<'a> {
    /// Offset of the record.
    pub pos: u64,
    /// Object id.
    pub oid: Oid,
    /// The tid of the transaction that wrote this record.
    pub serial: Tid,
    /// Offset of the object's previous record, 0 if none.
    pub prev: u64,
    /// Offset of the enclosing transaction.
    pub tpos: u64,
    /// Data or backpointer.
    pub payload: Payload<'a>,
}

impl<'a> DataHeader<'a> {
    /// Parses the data record at `pos` of `file` (the whole file), its data
    /// or backpointer included; the version length must be 0.
    #[inline]
    pub fn parse(file: &'a [u8], pos: u64) -> Result<DataHeader<'a>> {
        let b = slice_at(file, pos, DATA_HEADER_LEN as u64, "data record header")?;
        let vlen = be_u16(b, DATA_VLEN);
        if vlen != 0 {
            return Err(Error::Version { pos, vlen });
        }
        let plen = be_u64(b, DATA_PLEN);
        let body = pos + DATA_HEADER_LEN as u64;
        let payload = if plen > 0 {
            Payload::Data(slice_at(file, body, plen, "data record")?)
        } else {
            Payload::Back(read_u64(file, body, "data record backpointer")?)
        };
        Ok(DataHeader {
            pos,
            oid: Oid(be_u64(b, DATA_OID)),
            serial: Tid(be_u64(b, DATA_SERIAL)),
            prev: be_u64(b, DATA_PREV),
            tpos: be_u64(b, DATA_TPOS),
            payload,
        })
    }

    /// The data length field (0 for a backpointer record).
    #[inline]
    pub fn plen(&self) -> u64 {
        match self.payload {
            Payload::Data(d) => d.len() as u64,
            Payload::Back(_) => 0,
        }
    }

    /// The data, if the record holds it.
    #[inline]
    pub fn data(&self) -> Option<&'a [u8]> {
        match self.payload {
            Payload::Data(d) => Some(d),
            Payload::Back(_) => None,
        }
    }

    /// The backpointer, if the record has one (0 = no data).
    #[inline]
    pub fn back(&self) -> Option<u64> {
        match self.payload {
            Payload::Data(_) => None,
            Payload::Back(b) => Some(b),
        }
    }

    /// Length of the whole record: 42 + (plen or 8).
    #[inline]
    pub fn record_len(&self) -> u64 {
        DATA_HEADER_LEN as u64
            + match self.payload {
                Payload::Data(d) => d.len() as u64,
                Payload::Back(_) => BACKPOINTER_LEN as u64,
            }
    }

    /// Offset just after the record.
    #[inline]
    pub fn next_pos(&self) -> u64 {
        self.pos + self.record_len()
    }
}

/// Appends a transaction header (fixed part and metadata) to `out`.
/// Fails with [`Error::FieldTooLong`] if a metadata field exceeds 65535 bytes.
pub fn encode_txn_header(
    out: &mut Vec<u8>,
    tid: Tid,
    tlen: u64,
    status: TxnStatus,
    user: &[u8],
    description: &[u8],
    extension: &[u8],
) -> Result<()> {
    let len16 = |field: &'static str, v: &[u8]| -> Result<u16> {
        u16::try_from(v.len()).map_err(|_| Error::FieldTooLong {
            field,
            len: v.len(),
        })
    };
    let (ul, dl, el) = (
        len16("user name", user)?,
        len16("description", description)?,
        len16("extension", extension)?,
    );
    out.reserve(TXN_HEADER_LEN + user.len() + description.len() + extension.len());
    out.extend_from_slice(&tid.to_bytes());
    out.extend_from_slice(&tlen.to_be_bytes());
    out.push(status.byte());
    out.extend_from_slice(&ul.to_be_bytes());
    out.extend_from_slice(&dl.to_be_bytes());
    out.extend_from_slice(&el.to_be_bytes());
    out.extend_from_slice(user);
    out.extend_from_slice(description);
    out.extend_from_slice(extension);
    Ok(())
}

/// Appends a data record header (42 bytes, version length 0) to `out`;
/// the caller appends the `plen` bytes of data, or an 8-byte backpointer
/// when `plen == 0`.
pub fn encode_data_header(
    out: &mut Vec<u8>,
    oid: Oid,
    serial: Tid,
    prev: u64,
    tpos: u64,
    plen: u64,
) {
    out.extend_from_slice(&oid.to_bytes());
    out.extend_from_slice(&serial.to_bytes());
    out.extend_from_slice(&prev.to_be_bytes());
    out.extend_from_slice(&tpos.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&plen.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut f = MAGIC_FS30.to_vec();
        let tpos = f.len() as u64;
        let (u, d, e) = (&b"bob"[..], &b"desc"[..], &b""[..]);
        let hl = (TXN_HEADER_LEN + 7) as u64;
        let r1 = DATA_HEADER_LEN as u64 + 5;
        let r2 = DATA_HEADER_LEN as u64 + 8;
        let tlen = hl + r1 + r2;
        encode_txn_header(&mut f, Tid(10), tlen, TxnStatus::Committed, u, d, e).unwrap();
        encode_data_header(&mut f, Oid(1), Tid(10), 0, tpos, 5);
        f.extend_from_slice(b"hello");
        encode_data_header(&mut f, Oid(2), Tid(10), 0, tpos, 0);
        f.extend_from_slice(&0u64.to_be_bytes());
        f.extend_from_slice(&tlen.to_be_bytes());
        f
    }

    #[test]
    fn layout_sizes() {
        assert_eq!(TXN_ELEN + 2, TXN_HEADER_LEN);
        assert_eq!(DATA_PLEN + 8, DATA_HEADER_LEN);
        let mut v = Vec::new();
        encode_data_header(&mut v, Oid(1), Tid(2), 3, 4, 5);
        assert_eq!(v.len(), DATA_HEADER_LEN);
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let h = TxnHeader::parse(&f, 4).unwrap();
        assert_eq!(h.tid, Tid(10));
        assert_eq!(h.status(), Some(TxnStatus::Committed));
        assert_eq!(
            (h.user, h.description, h.extension),
            (&b"bob"[..], &b"desc"[..], &b""[..])
        );
        h.check_trailer(&f).unwrap();
        assert_eq!(h.next_pos(), f.len() as u64);
        let r1 = DataHeader::parse(&f, h.data_pos()).unwrap();
        assert_eq!((r1.oid, r1.serial, r1.tpos), (Oid(1), Tid(10), 4));
        assert_eq!(r1.data(), Some(&b"hello"[..]));
        let r2 = DataHeader::parse(&f, r1.next_pos()).unwrap();
        assert_eq!(r2.back(), Some(0));
        assert_eq!(r2.next_pos(), h.end());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = sample();
        for cut in 4..f.len() {
            let t = &f[..cut];
            let res = TxnHeader::parse(t, 4).and_then(|h| {
                h.check_trailer(t)?;
                let r = DataHeader::parse(t, h.data_pos())?;
                DataHeader::parse(t, r.next_pos()).map(|_| ())
            });
            assert!(
                matches!(res, Err(Error::Truncated { .. })),
                "cut {cut}: {res:?}"
            );
        }
    }

    #[test]
    fn bad_fields() {
        let mut f = sample();
        f[4 + TXN_TLEN + 7] = 3; // tlen 3 < header_len
        f[4 + TXN_TLEN..4 + TXN_TLEN + 7].fill(0);
        assert!(matches!(
            TxnHeader::parse(&f, 4),
            Err(Error::TxnLengthTooSmall {
                pos: 4,
                tlen: 3,
                ..
            })
        ));
        let mut f = sample();
        f[4 + TXN_STATUS] = b'x';
        let h = TxnHeader::parse(&f, 4).unwrap();
        assert!(matches!(
            h.check_status(),
            Err(Error::BadStatus { status: b'x', .. })
        ));
        let mut f = sample();
        let rpos = 4 + TXN_HEADER_LEN + 7;
        f[rpos + DATA_VLEN + 1] = 1;
        assert!(matches!(
            DataHeader::parse(&f, rpos as u64),
            Err(Error::Version { vlen: 1, .. })
        ));
        let long = vec![0u8; 70000];
        let mut out = Vec::new();
        assert!(matches!(
            encode_txn_header(&mut out, Tid(1), 0, TxnStatus::Committed, &long, b"", b""),
            Err(Error::FieldTooLong {
                field: "user name",
                len: 70000
            })
        ));
    }
}
