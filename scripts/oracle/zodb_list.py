#!/usr/bin/env python3
"""Print, as JSON, how the real ZODB sees a FileStorage file (Data.fs).

usage: zodb_list.py PATH

Run it with the oracle interpreter (.venv/bin/python, made by
scripts/setup-test-env.sh).  Nothing is written next to PATH: the storage is
opened read-only and any PATH.index is ignored, so ZODB rebuilds its index by
scanning the file.  Every failure ZODB raises is recorded as a string
"ExceptionClass: message" in the matching *_error / "error" field instead of
aborting, so broken files get a listing too.  Messages that ZODB logs while
reading go to "log".  Paths inside messages are replaced by the file's base
name so listings are reproducible.

The JSON schema is described in testdata/README.md ("Listing schema").
"""

import binascii
import hashlib
import json
import logging
import os
import struct
import sys

from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import FileIterator
from ZODB.utils import p64
from ZODB.utils import u64

DATA_HDR = ">8s8sQQHQ"
DATA_HDR_LEN = 42


def hx(b):
    """Bytes as lower-case hex, None stays None."""
    return None if b is None else binascii.hexlify(b).decode()


def sha1(b):
    return None if b is None else hashlib.sha1(b).hexdigest()


class _Scrubber:
    """Replaces the file's path (as given and absolute) by its base name."""

    def __init__(self, path):
        self.base = os.path.basename(path)
        self.paths = sorted({path, os.path.abspath(path)}, key=len,
                            reverse=True)

    def __call__(self, text):
        for p in self.paths:
            text = text.replace(p, self.base)
        return text


class _LogCapture(logging.Handler):
    """Collects what the ZODB loggers say while we read the file."""

    def __init__(self, scrub):
        super().__init__(logging.DEBUG)
        self.scrub = scrub
        self.lines = []

    def emit(self, record):
        self.lines.append("%s %s: %s" % (record.levelname, record.name,
                                         self.scrub(record.getMessage())))


class NoIndexFileStorage(FileStorage):
    """A FileStorage that never uses PATH.index: the index is always rebuilt
    by ZODB's own read_index() scan."""

    def _restore_index(self):
        return None


def err(scrub, e):
    return scrub("%s: %s" % (type(e).__name__, e))


def raw_record_fields(f, pos):
    """(prev pointer, stored data length, backpointer or None) read from the
    data record header at pos; Nones when the header cannot be read."""
    f.seek(pos)
    h = f.read(DATA_HDR_LEN)
    if len(h) != DATA_HDR_LEN:
        return None, None, None
    _, _, prev, _, _, plen = struct.unpack(DATA_HDR, h)
    if plen:
        return prev, plen, None
    b = f.read(8)
    return prev, plen, (u64(b) if len(b) == 8 else None)


def list_transactions(path, scrub):
    """Walks ZODB's FileIterator; returns (transactions, error)."""
    txns = []
    raw = open(path, 'rb')
    try:
        it = FileIterator(path)
    except Exception as e:
        raw.close()
        return txns, err(scrub, e)
    error = None
    try:
        for t in it:
            recs = []
            rec_error = None
            try:
                for r in t:
                    prev, plen, back = raw_record_fields(raw, r.pos)
                    recs.append({
                        "oid": hx(r.oid),
                        "serial": hx(r.tid),
                        "pos": r.pos,
                        "data_sha1": sha1(r.data),
                        "data_len": None if r.data is None else len(r.data),
                        "data_txn": hx(r.data_txn),
                        "prev": prev,
                        "stored_len": plen,
                        "back": back,
                    })
            except Exception as e:
                rec_error = err(scrub, e)
            txns.append({
                "tid": hx(t.tid),
                "status": t.status,
                "user_hex": hx(t.user),
                "description_hex": hx(t.description),
                "extension_hex": hx(t.extension_bytes),
                "pos": t._tpos,
                "records": recs,
                "records_error": rec_error,
            })
    except Exception as e:
        error = err(scrub, e)
    finally:
        it.close()
        raw.close()
    return txns, error


def _call(scrub, fn, *args):
    try:
        return fn(*args), None
    except Exception as e:
        return None, err(scrub, e)


def list_object(fs, oid, scrub):
    obj = {"oid": hx(oid), "pos": fs._index[oid]}

    r, e = _call(scrub, fs.load, oid)
    obj["load"] = {"serial": hx(r[1]) if r else None,
                   "data_sha1": sha1(r[0]) if r else None,
                   "error": e}

    hist, e = _call(scrub, fs.history, oid, 1 << 30)
    obj["history"] = [{"tid": hx(d["tid"]), "size": d["size"]}
                      for d in (hist or [])]
    obj["history_error"] = e

    def before(tid):
        r, e = _call(scrub, fs.loadBefore, oid, tid)
        if r is None and e is None:
            return None
        return {"data_sha1": sha1(r[0]) if r else None,
                "start": hx(r[1]) if r else None,
                "end": hx(r[2]) if r else None,
                "error": e}

    revs = []
    for d in hist or []:
        s = d["tid"]
        ls, e = _call(scrub, fs.loadSerial, oid, s)
        revs.append({
            "serial": hx(s),
            "load_before": before(s),
            "load_before_next": before(p64(u64(s) + 1)),
            "load_serial": {"data_sha1": sha1(ls), "error": e},
        })
    obj["revisions"] = revs
    return obj


def list_storage(path, scrub):
    out = {"open_error": None, "last_transaction": None, "new_oid": None,
           "len": None, "objects": []}
    try:
        fs = NoIndexFileStorage(path, read_only=True)
    except Exception as e:
        out["open_error"] = err(scrub, e)
        return out
    try:
        out["last_transaction"] = hx(fs.lastTransaction())
        out["new_oid"] = hx(fs._oid)
        out["len"] = len(fs)
        out["objects"] = [list_object(fs, oid, scrub)
                          for oid in sorted(fs._index.keys())]
    finally:
        fs.close()
    return out


def listing(path):
    """The listing of PATH as a JSON-ready dict."""
    scrub = _Scrubber(path)
    cap = _LogCapture(scrub)
    zlog = logging.getLogger('ZODB')
    old_level = zlog.level
    zlog.addHandler(cap)
    zlog.setLevel(logging.INFO)
    try:
        with open(path, 'rb') as f:
            magic = f.read(4)
            f.seek(0, 2)
            size = f.tell()
        out = {"file": os.path.basename(path),
               "magic": magic.decode('latin-1'),
               "magic_hex": hx(magic),
               "size": size}
        out["transactions"], out["iter_error"] = list_transactions(path,
                                                                   scrub)
        out.update(list_storage(path, scrub))
        out["log"] = cap.lines
    finally:
        zlog.removeHandler(cap)
        zlog.setLevel(old_level)
    return out


def dump(obj):
    return json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=True)


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    print(dump(listing(argv[1])))


if __name__ == '__main__':
    main(sys.argv)
