#!/usr/bin/env python3
"""One client process of neo-bench driven by Python NEO's own client.

usage: neo_worker.py --masters ADDR --cluster NAME --oids N --duration SECS
                     --commit-ratio R --objects-per-commit K --inflight K
                     --seed S --start-at UNIX_MS

Run with an interpreter where `neo` (Python NEO) and ZODB are importable
(e.g. /tmp/neovenv/bin/python); neo-bench starts several at once.  Opens
neo.client.Storage and empties its cache before every load (untimed), so
that every load of a random oid in 0..N goes to the storage; the cache
keeps its 1 MiB size because NEO's client also uses it to bound the data
of stores in flight (with cache_size=0, store() waits forever).  Connects, loads one
object, waits until START-AT, then for DURATION seconds mixes loads with
commits of K new objects of 100 B - 1 KiB (tpc_begin, store, tpc_vote,
tpc_finish), timing each with time.perf_counter().  With --inflight K,
K threads do so at once on the one Storage (NEO's client is thread-safe:
each thread waits for its own answers on the shared storage connection,
so K loads are in flight; the GIL lets one thread run Python at a time).
Prints one JSON line:
counts, errors, CPU seconds, and latency histograms in the buckets of
neo-bench (nanoseconds: exact below 64, then 32 buckets per power of two).
"""

import argparse
import json
import random
import sys
import threading
import time

from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, z64
from neo.client.Storage import Storage


def bucket(ns):
    if ns < 64:
        return ns
    e = ns.bit_length() - 1
    return 64 + (e - 6) * 32 + ((ns >> (e - 5)) & 31)


def record(hist, seconds):
    b = bucket(max(0, int(seconds * 1e9)))
    hist[b] = hist.get(b, 0) + 1


def object_data(rng, oid):
    n = rng.randint(100, 1024)
    head = b'bench object %d ' % oid
    body = bytes(rng.choice((0x78, rng.randrange(256))) for _ in range(n))
    return (head + body)[:n]


class Lane(object):
    """One thread's sequence of timed operations."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.loads = {}
        self.commits = {}
        self.nloads = self.ncommits = self.errors = 0
        self.first_error = None

    def run(self, st, a, end):
        rng = self.rng
        app = st.app
        cache = app._cache
        clock = time.perf_counter
        now = clock()
        while now < end:
            try:
                if rng.random() < a.commit_ratio:
                    txn = TransactionMetaData(u'neo-bench', u'neo-bench commit')
                    st.tpc_begin(txn)
                    try:
                        for _ in range(a.objects_per_commit):
                            oid = st.new_oid()
                            data = object_data(rng, int.from_bytes(oid, 'big'))
                            st.store(oid, z64, data, '', txn)
                        st.tpc_vote(txn)
                        st.tpc_finish(txn)
                    except BaseException:
                        st.tpc_abort(txn)
                        raise
                    after = clock()
                    record(self.commits, after - now)
                    self.ncommits += 1
                else:
                    # Untimed; under the lock the client's load() takes
                    # around its own cache accesses (other threads).
                    with app._cache_lock:
                        cache.clear()
                    now = clock()
                    st.load(p64(rng.randrange(a.oids)))
                    after = clock()
                    record(self.loads, after - now)
                    self.nloads += 1
            except Exception as e:
                after = clock()
                self.errors += 1
                if self.first_error is None:
                    self.first_error = repr(e)
            now = after


def merged(hists):
    out = {}
    for h in hists:
        for b, c in h.items():
            out[b] = out.get(b, 0) + c
    return sorted(out.items())


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--masters', required=True)
    p.add_argument('--cluster', required=True)
    p.add_argument('--oids', type=int, required=True)
    p.add_argument('--duration', type=float, required=True)
    p.add_argument('--commit-ratio', type=float, default=0.0)
    p.add_argument('--objects-per-commit', type=int, default=3)
    p.add_argument('--inflight', type=int, default=1)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--start-at', type=int, default=0)
    a = p.parse_args()
    if a.inflight < 1:
        p.error('--inflight must be at least 1')

    rng = random.Random(a.seed)
    st = Storage(master_nodes=a.masters, name=a.cluster, cache_size=1 << 20)
    st.load(p64(rng.randrange(a.oids)))
    # Lane 0 draws the same oids as a worker without --inflight.
    lanes = [Lane(a.seed if k == 0 else a.seed + (k << 32))
             for k in range(a.inflight)]
    wait = a.start_at / 1000.0 - time.time()
    if wait > 0:
        time.sleep(wait)
    cpu0 = time.process_time()
    clock = time.perf_counter
    t0 = clock()
    end = t0 + a.duration
    if a.inflight == 1:
        lanes[0].run(st, a, end)
    else:
        threads = [threading.Thread(target=lane.run, args=(st, a, end))
                   for lane in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = clock() - t0
    cpu = time.process_time() - cpu0
    st.close()
    first_error = next((l.first_error for l in lanes if l.first_error), None)
    print(json.dumps({
        'client': 'python',
        'inflight': a.inflight,
        'elapsed_s': elapsed,
        'loads': sum(l.nloads for l in lanes),
        'commits': sum(l.ncommits for l in lanes),
        'errors': sum(l.errors for l in lanes),
        'first_error': first_error,
        'cpu_s': cpu,
        'load_hist': merged(l.loads for l in lanes),
        'commit_hist': merged(l.commits for l in lanes),
    }))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
