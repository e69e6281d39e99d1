#!/usr/bin/env python3
"""Measure the real ZODB on a Data.fs and print JSON of timings.

usage: zodb_bench.py FILE [--loads N] [--tmpdir DIR] [--seed S]
                          [--no-copy-fsync-each]

Run with the oracle interpreter (.venv/bin/python), typically on the file of
gen_bench_fs.py.  FILE is only read.  Steps, each timed on its own with
time.perf_counter(), after one full read of FILE so it sits in the page
cache for every step (the copies below write elsewhere):

  iterate_s        FileIterator over every transaction and record, touching
                   each record's data (backpointers are followed by ZODB).
  index_rebuild_s  FileStorage(FILE, read_only=True) with its index rebuilt
                   by scanning (an existing FILE.index is ignored, nothing
                   is written).
  fstest_s         ZODB.scripts.fstest.check(FILE).
  copy_s           a new FileStorage in a temporary directory (on --tmpdir,
                   default: FILE's directory, i.e. the same disk), then
                   copyTransactionsFrom(the read-only storage) as ZODB does
                   it: one fsync per copied transaction.  Skipped with
                   --no-copy-fsync-each (null).
  copy_one_fsync_s the same copy with ZODB's per-transaction fsync switched
                   off, plus one fsync of the new file at the end.
  load_us          microseconds per load(oid) of N random existing oids
                   (default 100,000, seeded), after the same N loads once to
                   warm up: "hot" loads, the file in the page cache.

Counts (transactions, records, objects) and the file size are printed too.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import FileIterator
from ZODB.scripts import fstest

fsmod = sys.modules['ZODB.FileStorage.FileStorage']


class NoIndexFileStorage(FileStorage):
    """Never reads FILE.index: the index is rebuilt by read_index()."""

    def _restore_index(self):
        return None


def warm_page_cache(path):
    with open(path, 'rb') as f:
        while f.read(1 << 24):
            pass


def timed(fn, *args):
    t0 = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t0, r


def iterate(path):
    txns = records = nbytes = 0
    it = FileIterator(path)
    try:
        for t in it:
            txns += 1
            for r in t:
                records += 1
                if r.data is not None:
                    nbytes += len(r.data)
    finally:
        it.close()
    return txns, records, nbytes


def copy(src, tmpdir, fsync_each):
    d = tempfile.mkdtemp(prefix='zodb-bench-', dir=tmpdir)
    try:
        saved = fsmod.fsync
        if not fsync_each:
            fsmod.fsync = None
        try:
            dest = FileStorage(os.path.join(d, 'copy.fs'), create=True)
            t0 = time.perf_counter()
            dest.copyTransactionsFrom(src)
            os.fsync(dest._file.fileno())
            elapsed = time.perf_counter() - t0
            size = dest.getSize()
            dest.close()
        finally:
            fsmod.fsync = saved
        return elapsed, size
    finally:
        shutil.rmtree(d)


def hot_loads(storage, n, seed):
    oids = list(storage._index.keys())
    if not oids:
        return None
    rng = random.Random(seed)
    sample = [rng.choice(oids) for _ in range(n)]
    load = storage.load
    for oid in sample:  # warm up
        load(oid)
    t0 = time.perf_counter()
    for oid in sample:
        load(oid)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('file')
    ap.add_argument('--loads', type=int, default=100000)
    ap.add_argument('--tmpdir', default=None)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--no-copy-fsync-each', action='store_true')
    a = ap.parse_args(argv)
    path = a.file
    tmpdir = a.tmpdir or os.path.dirname(os.path.abspath(path))

    out = {'file': os.path.basename(path), 'size': os.path.getsize(path)}
    warm_page_cache(path)

    out['iterate_s'], (txns, records, nbytes) = timed(iterate, path)
    out['transactions'], out['records'], out['data_bytes'] = \
        txns, records, nbytes

    out['index_rebuild_s'], storage = timed(
        lambda: NoIndexFileStorage(path, read_only=True))
    try:
        out['objects'] = len(storage)
        out['fstest_s'], _ = timed(fstest.check, path)
        if a.no_copy_fsync_each:
            out['copy_s'] = None
        else:
            out['copy_s'], _ = copy(storage, tmpdir, True)
        out['copy_one_fsync_s'], copied = copy(storage, tmpdir, False)
        out['copy_size'] = copied
        out['loads'] = a.loads
        out['load_us'] = hot_loads(storage, a.loads, a.seed)
    finally:
        storage.close()
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
