#!/usr/bin/env python3
"""Write the benchmark Data.fs with the real ZODB, deterministically.

usage: gen_bench_fs.py OUT [--transactions N] [--seed S]

Run with the oracle interpreter (.venv/bin/python).  OUT is overwritten.
The file holds N transactions (default 30,000) after ZODB's root creation
and one set-up transaction.  Each transaction writes 10 objects of 50-3000
bytes of seeded-random data: `PersistentMapping({'d': bytes})` values kept in
one OOBTree under the root, ~70% new keys and ~30% updates of existing ones
(so objects have history), plus the OOBTree buckets/nodes those changes
touch.  The default file is 765,303,954 bytes (30,002 transactions,
529,390 data records, 220,122 objects), made in ~40 s.

Same N and seed give a byte-identical file: ZODB's clock (ZODB.BaseStorage)
is replaced by a fake one (2024-01-01 00:00:00 UTC, +1 s per transaction).

Speed: the DB has a large object cache and nothing is packed.  ZODB fsyncs
the file at every tpc_finish; that changes nothing in the bytes written, so
it is switched off while generating and replaced by one fsync at the end.
"""

import argparse
import os
import random
import sys
import time as _time

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import ZODB.BaseStorage
from ZODB.DB import DB
from ZODB.FileStorage import FileStorage

# the module (the package attribute of the same name is the class)
fsmod = sys.modules['ZODB.FileStorage.FileStorage']

EPOCH = 1704067200.0  # 2024-01-01 00:00:00 UTC
OBJECTS_PER_TXN = 10
MIN_SIZE, MAX_SIZE = 50, 3000
UPDATE_RATIO = 0.3


class FakeClock:
    """Stands in for the `time` module inside ZODB.BaseStorage."""

    def __init__(self, start=EPOCH, step=1.0):
        self.now = start
        self.step = step

    def time(self):
        t = self.now
        self.now += self.step
        return t

    gmtime = staticmethod(_time.gmtime)


def remove(path):
    for p in (path, path + '.index', path + '.lock', path + '.tmp',
              path + '.old', path + '.index_tmp'):
        if os.path.exists(p):
            os.remove(p)


def generate(out, transactions, seed=0, progress=True):
    rng = random.Random(seed)
    remove(out)
    saved_time, saved_fsync = ZODB.BaseStorage.time, fsmod.fsync
    ZODB.BaseStorage.time = FakeClock()
    fsmod.fsync = None  # no fsync per transaction (see the docstring)
    try:
        db = DB(FileStorage(out), cache_size=200000, cache_size_bytes=0)
        conn = db.open()
        root = conn.root()
        root['tree'] = OOBTree()
        transaction.get().note('bench set-up')
        transaction.commit()
        tree = root['tree']
        keys = []
        t0 = _time.time()
        for i in range(transactions):
            for _ in range(OBJECTS_PER_TXN):
                data = rng.randbytes(rng.randint(MIN_SIZE, MAX_SIZE))
                if keys and rng.random() < UPDATE_RATIO:
                    tree[rng.choice(keys)]['d'] = data
                else:
                    k = 'k%09d' % rng.randrange(10 ** 9)
                    while k in tree:
                        k = 'k%09d' % rng.randrange(10 ** 9)
                    keys.append(k)
                    tree[k] = PersistentMapping({'d': data})
            t = transaction.get()
            t.user = 'bench'
            t.description = 'txn %d' % i
            transaction.commit()
            if progress and (i + 1) % 1000 == 0:
                sys.stderr.write('%d/%d transactions, %.0f s\n'
                                 % (i + 1, transactions, _time.time() - t0))
        conn.close()
        storage = db.storage
        os.fsync(storage._file.fileno())
        db.close()
    finally:
        ZODB.BaseStorage.time = saved_time
        fsmod.fsync = saved_fsync
    for suffix in ('.index', '.lock', '.tmp'):
        if os.path.exists(out + suffix):
            os.remove(out + suffix)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('out')
    ap.add_argument('--transactions', type=int, default=30000)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--quiet', action='store_true')
    a = ap.parse_args(argv)
    t0 = _time.time()
    generate(a.out, a.transactions, a.seed, progress=not a.quiet)
    sys.stderr.write('%s: %d bytes in %.1f s\n'
                     % (a.out, os.path.getsize(a.out), _time.time() - t0))


if __name__ == '__main__':
    main()
