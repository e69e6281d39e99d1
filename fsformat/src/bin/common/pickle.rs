//! The class of a ZODB record, read from its first pickle without
//! unpickling anything (ZODB's `get_pickle_metadata` and `analyze.py`'s
//! `get_type`).
//!
//! A ZODB record holds two pickles; the first names the object's class.
//! The forms ZODB writes (protocols 1 to 3, and 4's `STACK_GLOBAL`):
//!
//! | first pickle                         | opcodes                              |
//! |--------------------------------------|--------------------------------------|
//! | the class                            | `c module\nname\n` (`GLOBAL`)        |
//! | `(class, newargs)`                   | `GLOBAL` ... `TUPLE2`                |
//! | `(module, name)`                     | two strings, `TUPLE2` / `MARK TUPLE` |
//! | `((module, name), newargs)`          | the above nested in a tuple          |
//!
//! Anything else is "unknown" to us (`None`).

/// A value on the little pickle machine's stack.
#[derive(Clone, Debug)]
enum V {
    Str(String),
    Global(String, String),
    Tuple(Vec<V>),
    Mark,
    Other,
}

/// Reads opcodes from the start of `data`.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Option<u64> {
        let b = self.take(n)?;
        Some(
            b.iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
        )
    }

    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        self.pos += n + 1;
        Some(&rest[..n])
    }

    fn string(&mut self, len: u64) -> Option<V> {
        let b = self.take(usize::try_from(len).ok()?)?;
        Some(V::Str(String::from_utf8_lossy(b).into_owned()))
    }
}

/// `(module, class name)` of the record whose data is `data`, or `None`
/// when the first pickle is not one of the forms ZODB writes.
pub fn class_of(data: &[u8]) -> Option<(String, String)> {
    let mut c = Cursor { data, pos: 0 };
    let mut stack: Vec<V> = Vec::new();
    let mut memo: Vec<(u64, V)> = Vec::new();
    loop {
        let op = c.byte()?;
        match op {
            0x80 => {
                c.take(1)?; // PROTO n
            }
            0x95 => {
                c.take(8)?; // FRAME
            }
            b'(' => stack.push(V::Mark),
            b'c' => {
                let module = String::from_utf8_lossy(c.line()?).into_owned();
                let name = String::from_utf8_lossy(c.line()?).into_owned();
                stack.push(V::Global(module, name));
            }
            0x93 => {
                let name = stack.pop()?;
                let module = stack.pop()?;
                match (module, name) {
                    (V::Str(m), V::Str(n)) => stack.push(V::Global(m, n)),
                    _ => return None,
                }
            }
            b'X' => {
                let n = c.le(4)?;
                stack.push(c.string(n)?);
            }
            0x8c | b'U' => {
                let n = c.le(1)?;
                stack.push(c.string(n)?);
            }
            0x8d => {
                let n = c.le(8)?;
                stack.push(c.string(n)?);
            }
            b'T' => {
                let n = c.le(4)?;
                stack.push(c.string(n)?);
            }
            b'S' => {
                let l = c.line()?;
                let s = l
                    .strip_prefix(b"'")
                    .and_then(|l| l.strip_suffix(b"'"))
                    .or_else(|| l.strip_prefix(b"\"").and_then(|l| l.strip_suffix(b"\"")))?;
                stack.push(V::Str(String::from_utf8_lossy(s).into_owned()));
            }
            b'V' => {
                let l = c.line()?;
                stack.push(V::Str(String::from_utf8_lossy(l).into_owned()));
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => c.le(1)?,
                    b'r' => c.le(4)?,
                    _ => memo.len() as u64,
                };
                let top = stack.last()?.clone();
                memo.push((key, top));
            }
            b'h' | b'j' => {
                let key = if op == b'h' { c.le(1)? } else { c.le(4)? };
                let v = memo.iter().rev().find(|(k, _)| *k == key)?.1.clone();
                stack.push(v);
            }
            b')' => stack.push(V::Tuple(Vec::new())),
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = stack.len().checked_sub(n)?;
                let items = stack.split_off(at);
                stack.push(V::Tuple(items));
            }
            b't' => {
                let at = stack.iter().rposition(|v| matches!(v, V::Mark))?;
                let items = stack.split_off(at + 1);
                stack.pop();
                stack.push(V::Tuple(items));
            }
            b'N' | 0x88 | 0x89 => stack.push(V::Other),
            b'K' => {
                c.take(1)?;
                stack.push(V::Other);
            }
            b'M' => {
                c.take(2)?;
                stack.push(V::Other);
            }
            b'J' => {
                c.take(4)?;
                stack.push(V::Other);
            }
            b'.' => break,
            _ => return None,
        }
        // The common case: the class itself, first thing in the pickle.
        if let [V::Global(m, n)] | [V::Mark, V::Global(m, n)] = stack.as_slice() {
            return Some((m.clone(), n.clone()));
        }
    }
    match stack.pop()? {
        V::Global(m, n) => Some((m, n)),
        V::Tuple(items) => match items.as_slice() {
            [V::Str(m), V::Str(n)] => Some((m.clone(), n.clone())),
            [V::Global(m, n), ..] => Some((m.clone(), n.clone())),
            [V::Tuple(inner), ..] => match inner.as_slice() {
                [V::Str(m), V::Str(n)] => Some((m.clone(), n.clone())),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// `module.name`, or `unknown`.
pub fn class_name(data: &[u8]) -> String {
    match class_of(data) {
        Some((m, n)) => format!("{m}.{n}"),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mn(m: &str, n: &str) -> Option<(String, String)> {
        Some((m.to_owned(), n.to_owned()))
    }

    #[test]
    fn forms_zodb_writes() {
        // Protocol 3, the class as GLOBAL (what ZODB 5+ writes).
        let p = b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\x80\x03}q\x01.";
        assert_eq!(class_of(p), mn("persistent.mapping", "PersistentMapping"));
        // Protocol 1, MARK GLOBAL ... (class, args).
        assert_eq!(class_of(b"(cfoo\nBar\nq\x01)tq\x02."), mn("foo", "Bar"));
        // (module, name) as a tuple of BINUNICODE strings.
        let p = b"\x80\x03X\x03\x00\x00\x00fooq\x00X\x03\x00\x00\x00Barq\x01\x86q\x02.";
        assert_eq!(class_of(p), mn("foo", "Bar"));
        // ((module, name), None), protocol 1 with SHORT_BINSTRING.
        let p = b"((U\x03fooq\x01U\x03Barq\x02tq\x03Ntq\x04.";
        assert_eq!(class_of(p), mn("foo", "Bar"));
        // Protocol 4 STACK_GLOBAL.
        let p =
            b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x03foo\x94\x8c\x03Bar\x94\x93\x94.";
        assert_eq!(class_of(p), mn("foo", "Bar"));
        // A memo reference to an earlier string: ("foo", "foo").
        let p = b"(X\x03\x00\x00\x00fooq\x01h\x01t.";
        assert_eq!(class_of(p), mn("foo", "foo"));
    }

    #[test]
    fn unknown_forms() {
        assert_eq!(class_of(b""), None);
        assert_eq!(class_of(b"\x80\x03}q\x00."), None);
        assert_eq!(class_of(b"\x80\x03K\x05."), None);
        assert_eq!(class_of(b"cfoo"), None);
        assert_eq!(class_name(b"garbage"), "unknown");
        assert_eq!(class_of(b"X\xff\xff\xff\xff"), None);
    }
}
