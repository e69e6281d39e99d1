//! Text as ZODB's tools print it: Python's `repr` of bytes and
//! `persistent.TimeStamp`'s `str` of a tid.

use fsformat::Tid;

/// Python's `repr(b)` for a `bytes` value: `b'...'`.
pub fn bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut s = String::with_capacity(b.len() + 3);
    s.push('b');
    s.push(quote);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            c if char::from(c) == quote => {
                s.push('\\');
                s.push(quote);
            }
            0x20..=0x7e => s.push(char::from(c)),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push(quote);
    s
}

/// What `str(TimeStamp(tid))` prints: `YYYY-MM-DD HH:MM:SS.ffffff` (UTC).
pub fn timestamp(tid: Tid) -> String {
    let a = tid.0 >> 32;
    let b = tid.0 & 0xffff_ffff;
    let minute = a % 60;
    let hour = a / 60 % 24;
    let day = a / (60 * 24) % 31 + 1;
    let month = a / (60 * 24 * 31) % 12 + 1;
    let year = a / (60 * 24 * 31 * 12) + 1900;
    // persistent's SCONV: 60 / 2**32, exact in binary, as is b * SCONV.
    let second = b as f64 * (60.0 / 65536.0 / 65536.0);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:09.6}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_like_python() {
        assert_eq!(bytes_repr(b""), "b''");
        assert_eq!(bytes_repr(b"alice"), "b'alice'");
        assert_eq!(bytes_repr(b"it's"), "b\"it's\"");
        assert_eq!(bytes_repr(b"'\""), "b'\\'\"'");
        assert_eq!(
            bytes_repr(b"a\\b\n\t\r\x00\x7f\xc3\xab"),
            "b'a\\\\b\\n\\t\\r\\x00\\x7f\\xc3\\xab'"
        );
    }

    #[test]
    fn timestamps() {
        // 2024-01-01 00:00:01 UTC as ZODB's fake clock makes it.
        assert_eq!(
            timestamp(Tid(0x03f5_8e00_0444_4444)),
            "2024-01-01 00:00:01.000000"
        );
        assert_eq!(timestamp(Tid(0)), "1900-01-01 00:00:00.000000");
    }
}
