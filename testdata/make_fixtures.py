#!/usr/bin/env python3
"""Make the FileStorage fixtures of testdata/ with the real ZODB.

usage (from the repository root, after scripts/setup-test-env.sh):

    .venv/bin/python testdata/make_fixtures.py [OUTDIR]

OUTDIR defaults to the directory of this script (testdata/).  For every
fixture NAME it writes NAME.fs and NAME.json; NAME.json is the output of
scripts/oracle/zodb_check.py: ZODB's fstest verdict plus ZODB's listing of the
file (see testdata/README.md for the schema).  Only .fs and .json files are
left behind (ZODB's .index/.lock/.tmp/.old side files are removed).

Determinism: ZODB takes transaction ids from time.time() in ZODB.BaseStorage;
we replace that clock by a fake one that starts at 2024-01-01 00:00:00 UTC
for every fixture and advances one second per transaction, and all random
content comes from seeded random.Random objects.  Running the script twice
gives byte-identical files.

Fixtures made by ZODB through its public API (DB, transaction, BTrees,
FileStorage):
  basic        40 transactions, 324 objects, OOBTree with split buckets,
               non-ASCII user/description/extension, a hot object.
  undo         undo, undo of undo, backpointer chains, undone creation
               (backpointer 0), undo of that, more commits after.
  packed       history, pack at a time in the middle, commits after it.
  large        one data record > 1 MiB plus small ones.
  empty        only the 4-byte magic.
  small        6 small transactions; the base of the crafted files below.
  empty_txn    a transaction without data records, in mid-file (storage
               API: tpc_begin, tpc_vote, tpc_finish without store; a
               transaction.commit() that changed nothing writes nothing).
  dup_oid      one transaction that stores the same oid twice (storage API:
               two store() calls in one tpc).

Crafted by editing the bytes of a ZODB-made file (one small function each,
see "Crafted files" below); what ZODB does with each is in its .json:
  fs21              small.fs with the ZODB-on-Python-2 magic "FS21".
  checkpoint_mid    small.fs, 3rd transaction's status set to 'c'.
  checkpoint_last   small.fs, last transaction's status set to 'c' (what a
                    crash between tpc_vote and tpc_finish leaves).
  status_u          small.fs, 3rd transaction's status set to 'u'.
  truncated_data    small.fs cut inside the last transaction's data record.
  truncated_header  small.fs cut inside the last transaction's header.
  version_record    small.fs whose last data record carries a version
                    (non-zero version length, pre-ZODB-3.9 layout).
"""

import base64
import contextlib
import glob
import json
import os
import random
import struct
import subprocess
import sys
import time as _time

import transaction
from BTrees.OOBTree import OOBTree
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

import ZODB.BaseStorage
from ZODB.Connection import TransactionMetaData
from ZODB.DB import DB
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, os.pardir, 'scripts', 'oracle', 'zodb_check.py')

# 2024-01-01 00:00:00 UTC
EPOCH = 1704067200.0

TRANS_HDR = ">8sQcHHH"
TRANS_HDR_LEN = 23
DATA_HDR = ">8s8sQQHQ"
DATA_HDR_LEN = 42


# ---------------------------------------------------------------------------
# A deterministic clock for ZODB's transaction ids

class FakeClock:
    """Stands in for the `time` module inside ZODB.BaseStorage: time()
    returns EPOCH, EPOCH+1, ... (one call per tpc_begin)."""

    def __init__(self, start=EPOCH, step=1.0):
        self.now = start
        self.step = step

    def time(self):
        t = self.now
        self.now += self.step
        return t

    gmtime = staticmethod(_time.gmtime)


@contextlib.contextmanager
def fake_clock():
    clock = FakeClock()
    saved = ZODB.BaseStorage.time
    ZODB.BaseStorage.time = clock
    try:
        yield clock
    finally:
        ZODB.BaseStorage.time = saved


def remove_side_files(path):
    for suffix in ('.index', '.index_tmp', '.lock', '.tmp', '.old', '.pack'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    for tr in glob.glob(path + '.tr*'):
        os.remove(tr)


def fresh(path):
    if os.path.exists(path):
        os.remove(path)
    remove_side_files(path)


@contextlib.contextmanager
def database(path):
    """A fresh DB on a new FileStorage at path, with the fake clock."""
    fresh(path)
    with fake_clock() as clock:
        db = DB(FileStorage(path))
        try:
            yield db, clock
        finally:
            db.close()
    remove_side_files(path)


def commit(user='', description='', ext=None):
    t = transaction.get()
    t.user = user
    t.description = description
    for k, v in (ext or {}).items():
        t.setExtendedInfo(k, v)
    transaction.commit()


def undo_id(tid):
    """The undo id ZODB's undoLog() gives for transaction tid."""
    return base64.encodebytes(tid)[:-1]


def text(rng, n):
    return ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz ') for _ in range(n))


# ---------------------------------------------------------------------------
# Fixtures made through ZODB's API

USERS = ['', 'alice', 'Zoë Ærøskøbing', '/ bob', '用户']
DESCRIPTIONS = ['', 'add items', 'Änderung der Einträge — v2', 'fix ✓',
                'import batch']


def make_basic(path):
    rng = random.Random(1)
    with database(path) as (db, _):
        conn = db.open()
        root = conn.root()
        root['tree'] = OOBTree()
        root['config'] = PersistentMapping({'name': 'basic', 'version': 1})
        root['counter'] = PersistentMapping({'n': 0})
        root['log'] = PersistentList()
        commit('Zoë Ünicode', 'create the containers — “basic”',
               {'comment': 'naïve café ✓', 'bytes': b'\x00\xff', 'n': 1})
        tree = root['tree']
        next_key = 0
        for i in range(38):
            for _ in range(8):
                k = 'key%04d' % rng.randrange(10000)
                while k in tree:
                    k = 'key%04d' % rng.randrange(10000)
                tree[k] = PersistentMapping(
                    {'i': next_key, 'payload': text(rng, rng.randrange(5, 200))})
                next_key += 1
            # modify a few existing values
            keys = list(tree.keys())
            for _ in range(3):
                tree[rng.choice(keys)]['payload'] = text(rng, 40)
            root['counter']['n'] += 1  # the hot object
            if i % 4 == 0:
                root['log'].append('step %d' % i)
            if i % 10 == 5:
                root['config']['version'] += 1
            ext = {}
            if i % 3 == 0:
                ext = {'step': i, 'note': 'étape %d' % i}
            commit(USERS[i % len(USERS)], DESCRIPTIONS[i % len(DESCRIPTIONS)],
                   ext)
        conn.close()


def make_undo(path):
    with database(path) as (db, _):
        storage = db.storage
        conn = db.open()
        root = conn.root()
        tids = {}

        def step(name, description):
            commit('undo-test', description)
            tids[name] = storage.lastTransaction()

        def undo(name, description):
            db.undo(undo_id(tids[name]))
            step('undo-' + name, description)

        root['a'] = PersistentMapping({'v': 1})
        root['b'] = PersistentMapping({'v': 'b1'})
        step('T2', 'create a and b')
        root['a']['v'] = 2
        step('T3', 'a=2')
        root['a']['v'] = 3
        root['b']['v'] = 'b2'
        step('T4', 'a=3 b=b2')
        # backpointers to T3 (a) and T2 (b)
        undo('T4', 'undo T4')
        # undo of undo: backpointers to the records of T4
        undo('undo-T4', 'undo the undo of T4')
        conn.sync()
        root['a']['v'] = 4
        step('T7', 'a=4')
        # a's new record points back to the record of the previous undo,
        # which itself is a backpointer: a chain
        undo('T7', 'undo T7 (chain)')
        conn.sync()
        root['c'] = PersistentMapping({'v': 'new'})
        step('T9', 'create c')
        # undo of a creation: c gets a record with backpointer 0
        undo('T9', 'undo creation of c')
        # undo of that: c comes back (backpointer to T9's record)
        undo('undo-T9', 'undo the undo of the creation of c')
        # undo again: c's record points to the backpointer-0 record
        undo('undo-undo-T9', 'delete c again (chain to backpointer 0)')
        conn.sync()
        root['b']['v'] = 'b3'
        root['d'] = PersistentMapping({'v': 'd1'})
        step('T13', 'b=b3 create d')
        root['a']['v'] = 5
        step('T14', 'a=5')
        conn.close()


def make_packed(path):
    rng = random.Random(3)
    with database(path) as (db, clock):
        storage = db.storage
        conn = db.open()
        root = conn.root()
        root['tree'] = OOBTree()
        root['counter'] = PersistentMapping({'n': 0})
        root['u'] = PersistentMapping({'v': 0})
        commit('packer', 'create')
        for i in range(14):
            if i == 5:
                # a change that is undone right away; the undo record's
                # backpointer points before the pack time
                root['u']['v'] = 5
                commit('packer', 'step 5: u=5')
                db.undo(undo_id(storage.lastTransaction()))
                commit('packer', 'undo step 5')
                conn.sync()
                continue
            tree = root['tree']
            for _ in range(5):
                tree['k%03d' % rng.randrange(1000)] = PersistentMapping(
                    {'i': i, 'p': text(rng, 30)})
            root['counter']['n'] += 1
            if i == 1:
                root['tmp'] = PersistentMapping({'garbage': True})
            if i == 3:
                root['tmp']['more'] = 1
            if i == 4:
                del root['tmp']  # garbage after this
            commit('packer', 'step %d' % i)
            if i == 9:
                pack_time = clock.now - 0.5  # after step 9, before step 10
        db.pack(t=pack_time)
        conn.sync()
        root = conn.root()
        for i in range(14, 19):
            root['tree']['after%d' % i] = PersistentMapping({'i': i})
            root['counter']['n'] += 1
            commit('packer', 'after pack %d' % i)
        conn.close()


def make_large(path):
    rng = random.Random(4)
    with database(path) as (db, _):
        conn = db.open()
        root = conn.root()
        root['small'] = PersistentMapping({'v': 0})
        commit('', 'small object')
        # one data record of ~1.2 MiB (random, so it stays that big)
        root['big'] = PersistentMapping({'data': rng.randbytes(1258291)})
        commit('', 'one 1.2 MiB object')
        for i in range(1, 4):
            root['small']['v'] = i
            root['s%d' % i] = PersistentMapping({'v': text(rng, 100)})
            commit('', 'small change %d' % i)
        conn.close()


def make_empty(path):
    fresh(path)
    FileStorage(path).close()
    remove_side_files(path)


def make_small(path):
    with database(path) as (db, _):
        conn = db.open()
        root = conn.root()
        root['x'] = PersistentMapping({'v': 1})
        commit('small', 'create x')
        root['y'] = PersistentMapping({'v': 'y'})
        root['x']['v'] = 2
        commit('small', 'create y, x=2')
        root['x']['v'] = 3
        commit('small', 'x=3')
        root['y']['v'] = 'yy'
        commit('small', 'y=yy')
        root['x']['v'] = 4
        commit('small', 'x=4 (last, one record)')
        conn.close()


def _tpc(storage, description, stores=()):
    """One transaction through the bare storage API; returns its tid."""
    t = TransactionMetaData('api', description)
    storage.tpc_begin(t)
    for oid, serial, data in stores:
        storage.store(oid, serial, data, '', t)
    storage.tpc_vote(t)
    return storage.tpc_finish(t)


def make_empty_txn(path):
    """A transaction without data records: ZODB's FileStorage writes one when
    a tpc_begin/tpc_vote/tpc_finish cycle stores nothing."""
    with database(path) as (db, _):
        conn = db.open()
        root = conn.root()
        root['x'] = PersistentMapping({'v': 1})
        commit('', 'create x')
        _tpc(db.storage, 'empty transaction')
        root['x']['v'] = 2
        commit('', 'x=2 after the empty transaction')
        conn.close()


def make_dup_oid(path):
    """One transaction storing the same oid twice: FileStorage writes two
    data records, both with the same prev pointer; the index keeps the
    second."""
    with database(path) as (db, _):
        conn = db.open()
        root = conn.root()
        root['x'] = PersistentMapping({'v': 1})
        commit('', 'create x')
        oid = root['x']._p_oid
        serial = root['x']._p_serial
        conn.close()
        storage = db.storage
        # the pickle ZODB wrote for {'v': 1}, with the int changed in place
        first = storage.loadSerial(oid, serial)
        assert first.count(b'K\x01') == 1, first
        _tpc(storage, 'x stored twice', [
            (oid, serial, first.replace(b'K\x01', b'K\x02')),
            (oid, serial, first.replace(b'K\x01', b'K\x03')),
        ])
        _tpc(storage, 'x once more', [
            (oid, storage.load(oid)[1], first.replace(b'K\x01', b'K\x04')),
        ])


# ---------------------------------------------------------------------------
# Crafted files: small byte edits of a ZODB-made file

def txn_positions(data):
    """File positions of the transaction headers of a well-formed file."""
    pos, out = 4, []
    while pos < len(data):
        out.append(pos)
        tlen = struct.unpack('>Q', data[pos + 8:pos + 16])[0]
        pos += tlen + 8
    return out


def with_magic(data, magic):
    """The file with its 4-byte magic replaced."""
    return magic + data[4:]


def with_status(data, index, status):
    """The file with the status byte (offset 16 of the header) of its
    index-th transaction (0-based) replaced."""
    pos = txn_positions(data)[index]
    return data[:pos + 16] + status + data[pos + 17:]


def truncated_in_data(data):
    """The file cut in the middle of the last transaction's first data
    record's data (header intact, data half there)."""
    pos = txn_positions(data)[-1]
    _, _, _, ul, dl, el = struct.unpack(TRANS_HDR, data[pos:pos + 23])
    rec = pos + TRANS_HDR_LEN + ul + dl + el
    plen = struct.unpack(DATA_HDR, data[rec:rec + DATA_HDR_LEN])[5]
    return data[:rec + DATA_HDR_LEN + plen // 2]


def truncated_in_header(data):
    """The file cut 10 bytes into the last transaction's header."""
    return data[:txn_positions(data)[-1] + 10]


def with_version(data, version=b'v1'):
    """The last transaction (which must hold exactly one data record) with
    that record rewritten in the pre-ZODB-3.9 layout with a version:
        42-byte header with vlen = len(version)
        8-byte pnv (position of the non-version record: the old prev)
        8-byte vprev (previous record in this version: 0)
        version bytes, then the data.
    The transaction length (header and redundant copy) grows by
    16 + len(version)."""
    pos = txn_positions(data)[-1]
    tid, tlen, st, ul, dl, el = struct.unpack(TRANS_HDR, data[pos:pos + 23])
    rec = pos + TRANS_HDR_LEN + ul + dl + el
    oid, serial, prev, tloc, vlen, plen = struct.unpack(
        DATA_HDR, data[rec:rec + DATA_HDR_LEN])
    assert vlen == 0 and plen and rec + DATA_HDR_LEN + plen == pos + tlen, \
        "last transaction must hold one data record with data"
    body = data[rec + DATA_HDR_LEN:rec + DATA_HDR_LEN + plen]
    extra = 16 + len(version)
    new_tlen = tlen + extra
    out = (data[:pos]
           + struct.pack(TRANS_HDR, tid, new_tlen, st, ul, dl, el)
           + data[pos + TRANS_HDR_LEN:rec]
           + struct.pack(DATA_HDR, oid, serial, prev, tloc, len(version),
                         plen)
           + p64(prev) + p64(0) + version + body
           + p64(new_tlen))
    return out


CRAFTED = {
    'fs21': lambda d: with_magic(d, b'FS21'),
    'checkpoint_mid': lambda d: with_status(d, 2, b'c'),
    'checkpoint_last': lambda d: with_status(d, -1, b'c'),
    'status_u': lambda d: with_status(d, 2, b'u'),
    'truncated_data': truncated_in_data,
    'truncated_header': truncated_in_header,
    'version_record': with_version,
}

MADE = {
    'basic': make_basic,
    'undo': make_undo,
    'packed': make_packed,
    'large': make_large,
    'empty': make_empty,
    'small': make_small,
    'empty_txn': make_empty_txn,
    'dup_oid': make_dup_oid,
}


def write_listing(outdir, name):
    fs = os.path.join(outdir, name + '.fs')
    res = subprocess.run([sys.executable, ORACLE, fs], capture_output=True,
                         check=False)
    if res.returncode not in (0, 1):
        raise SystemExit('oracle failed on %s: %s' % (fs, res.stderr.decode()))
    # re-indent through json to make sure it parses
    obj = json.loads(res.stdout)
    with open(os.path.join(outdir, name + '.json'), 'w') as f:
        json.dump(obj, f, indent=1, ensure_ascii=True)
        f.write('\n')
    print('%-18s %8d bytes  fstest: %s' % (name, os.path.getsize(fs),
                                          obj['fstest']))


def main(argv):
    outdir = argv[1] if len(argv) > 1 else HERE
    os.makedirs(outdir, exist_ok=True)
    for name, make in MADE.items():
        make(os.path.join(outdir, name + '.fs'))
    with open(os.path.join(outdir, 'small.fs'), 'rb') as f:
        small = f.read()
    for name, craft in CRAFTED.items():
        with open(os.path.join(outdir, name + '.fs'), 'wb') as f:
            f.write(craft(small))
    for name in list(MADE) + list(CRAFTED):
        write_listing(outdir, name)


if __name__ == '__main__':
    main(sys.argv)
