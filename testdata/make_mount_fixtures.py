#!/usr/bin/env python3
"""Make the mountpoint fixtures of testdata/ with the real ZODB.

usage (from the repository root, after scripts/setup-test-env.sh):

    .venv/bin/python testdata/make_mount_fixtures.py [OUTDIR]
    .venv/bin/python testdata/make_mount_fixtures.py --read-pids < HEX_LINES

Writes:
  mount_main.fs   the main database: a PersistentMapping root holding a few
                  persistent objects, an OOBTree, a weak reference
                  (['w', (oid,)]) and 'mnt', the mountpoint placeholder object
                  (its oid is the `sub=<oid>` line of the merged config);
  mount_sub.fs    the database mounted there: a root with its own objects;
  mount_pickles.json
                  pickles made by ZODB's ObjectWriter and by zodbpickle at
                  protocols 1, 2 and 3 with every form of persistent id
                  (hex), the persistent ids ZODB reads back from each,
                  and for every data record of the two files, the oids
                  ZODB's referencesf finds in it.
The clock is faked (one second per transaction) so that two runs give the
same bytes.
"""
import json
import os
import sys
import time as _time
from io import BytesIO

import BTrees.OOBTree
import persistent
import persistent.mapping
import transaction
import ZODB
import ZODB.BaseStorage
import ZODB.FileStorage
import ZODB.serialize
from zodbpickle import pickle as zpickle
from zodbpickle import pickle_3


class Py2Pickler(pickle_3._Pickler):
    """Protocols 1 and 2 as ZODB wrote them on Python 2: byte strings (oids,
    and the 'w'/'n'/'m' markers and database names, which were `str`) as
    SHORT_BINSTRING."""

    def save_bytes(self, obj):
        if self.proto >= 3:
            return pickle_3._Pickler.save_bytes(self, obj)
        self.write(b"U" + bytes([len(obj)]) + obj)
        self.memoize(obj)

    dispatch = dict(pickle_3._Pickler.dispatch)
    dispatch[bytes] = save_bytes


class FakeClock:
    def __init__(self, start):
        self.now = start

    def time(self):
        self.now += 1.0
        return self.now

    gmtime = staticmethod(_time.gmtime)
    localtime = staticmethod(_time.localtime)


def open_db(path):
    for ext in ("", ".index", ".lock", ".tmp", ".old"):
        if os.path.exists(path + ext):
            os.remove(path + ext)
    return ZODB.DB(ZODB.FileStorage.FileStorage(path))


def cleanup(path):
    for ext in (".index", ".lock", ".tmp", ".old"):
        if os.path.exists(path + ext):
            os.remove(path + ext)


def make_main(path):
    db = open_db(path)
    conn = db.open()
    root = conn.root()
    a = persistent.mapping.PersistentMapping(name="a")
    b = persistent.mapping.PersistentMapping(name="b", peer=a)
    root["a"] = a
    root["b"] = b
    transaction.commit()
    tree = BTrees.OOBTree.OOBTree()
    for i in range(5):
        tree["k%d" % i] = persistent.mapping.PersistentMapping(i=i, a=a)
    root["tree"] = tree
    root["weak"] = persistent.wref.WeakRef(b)
    transaction.commit()
    mnt = persistent.mapping.PersistentMapping(placeholder=True)
    root["mnt"] = mnt
    a["twice"] = [b, b]
    transaction.commit()
    mnt_oid = int.from_bytes(mnt._p_oid, "big")
    conn.close()
    db.close()
    cleanup(path)
    return mnt_oid


def make_sub(path):
    db = open_db(path)
    conn = db.open()
    root = conn.root()
    x = persistent.mapping.PersistentMapping(name="x")
    root["x"] = x
    transaction.commit()
    y = persistent.mapping.PersistentMapping(name="y", x=x, back=root)
    x["y"] = y
    root["weak"] = persistent.wref.WeakRef(y)
    transaction.commit()
    conn.close()
    db.close()
    cleanup(path)


class Glob:
    """A class referenced by (oid, class) ids: any global works."""


def pickle_cases():
    """(name, bytes) pickles with persistent ids in all forms."""
    oid = lambda n: n.to_bytes(8, "big")
    ids = [
        ("bare", oid(7)),
        ("tuple", (oid(8), persistent.mapping.PersistentMapping)),
        ("weak_legacy", [oid(9)]),
        ("weak", ["w", (oid(10),)]),
        ("weak_db", ["w", (oid(11), "sub")]),
        ("cross_oid", ["n", ("sub", oid(12))]),
        ("cross_class", ["m", ("sub", oid(13), persistent.mapping.PersistentMapping)]),
    ]
    cases = []
    for proto in (1, 2, 3):
        for name, pid in ids:
            buf = BytesIO()
            if proto < 3:
                pid = py2_strings(pid)
            p = Py2Pickler(buf, proto)
            p.persistent_id = lambda o: o.pid if isinstance(o, Ref) else None
            p.dump((persistent.mapping.PersistentMapping, None))
            p.dump({"ref": Ref(pid), "again": Ref(pid), "n": 1})
            cases.append(("p%d_%s" % (proto, name), buf.getvalue()))
    return cases


def py2_strings(x):
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (list, tuple)):
        return type(x)(py2_strings(i) for i in x)
    return x


class Ref:
    def __init__(self, pid):
        self.pid = pid


def read_pids(data):
    """The persistent ids ZODB's unpickler sees, in order, as JSON."""
    pids = []

    def load(pid):
        pids.append(pid_json(pid))
        return None

    class U(zpickle.Unpickler):
        def find_class(self, module, name):
            return (module, name)

        def persistent_load(self, pid):
            return load(pid)

    u = U(BytesIO(data), encoding="bytes")
    u.load()
    u.load()
    return pids


def pid_json(pid):
    if isinstance(pid, bytes):
        return {"oid": int.from_bytes(pid, "big")}
    if isinstance(pid, tuple):
        return {"oid": int.from_bytes(pid[0], "big"), "class": True}
    if isinstance(pid, list):
        if len(pid) == 1:
            return {"oid": int.from_bytes(pid[0], "big"), "weak": True}
        kind, args = pid
        kind = kind.decode() if isinstance(kind, bytes) else kind
        args = [a.decode() if isinstance(a, bytes) and len(a) != 8 else a for a in args]
        if kind == "w":
            d = {"oid": int.from_bytes(args[0], "big"), "weak": True}
            if len(args) > 1:
                d["db"] = args[1]
            return d
        if kind == "n":
            return {"oid": int.from_bytes(args[1], "big"), "db": args[0]}
        if kind == "m":
            return {"oid": int.from_bytes(args[1], "big"), "db": args[0], "class": True}
    raise ValueError(pid)


def main():
    if sys.argv[1:] == ["--read-pids"]:
        # Oracle mode for the tests: one hex record per stdin line, one
        # JSON line of the persistent ids zodbpickle reads in it.
        for line in sys.stdin:
            print(json.dumps(read_pids(bytes.fromhex(line.strip()))))
        return
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    clock = FakeClock(1704067200.0)
    saved = ZODB.BaseStorage.time
    ZODB.BaseStorage.time = clock
    try:
        mnt_oid = make_main(os.path.join(out, "mount_main.fs"))
        make_sub(os.path.join(out, "mount_sub.fs"))
    finally:
        ZODB.BaseStorage.time = saved
    records = {}
    for name in ("mount_main", "mount_sub"):
        fs = ZODB.FileStorage.FileStorage(os.path.join(out, name + ".fs"), read_only=True)
        records[name] = [
            {
                "oid": int.from_bytes(r.oid, "big"),
                "tid": r.tid.hex(),
                "refs": [int.from_bytes(o, "big") for o in ZODB.serialize.referencesf(r.data)],
            }
            for t in fs.iterator()
            for r in t
        ]
        fs.close()
        cleanup(os.path.join(out, name + ".fs"))
    cases = [{"name": n, "hex": d.hex(), "pids": read_pids(d)} for n, d in pickle_cases()]
    with open(os.path.join(out, "mount_pickles.json"), "w") as f:
        json.dump({"mnt_oid": mnt_oid, "cases": cases, "records": records}, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
