#!/usr/bin/env python3
"""One client process of neo-bench driven by Python NEO's own client.

usage: neo_worker.py --masters ADDR --cluster NAME --oids N --duration SECS
                     --commit-ratio R --objects-per-commit K --seed S
                     --start-at UNIX_MS

Run with an interpreter where `neo` (Python NEO) and ZODB are importable
(e.g. /tmp/neovenv/bin/python); neo-bench starts several at once.  Opens
neo.client.Storage and empties its cache before every load (untimed), so
that every load of a random oid in 0..N goes to the storage; the cache
keeps its 1 MiB size because NEO's client also uses it to bound the data
of stores in flight (with cache_size=0, store() waits forever).  Connects, loads one
object, waits until START-AT, then for DURATION seconds mixes loads with
commits of K new objects of 100 B - 1 KiB (tpc_begin, store, tpc_vote,
tpc_finish), timing each with time.perf_counter().  Prints one JSON line:
counts, errors, CPU seconds, and latency histograms in the buckets of
neo-bench (nanoseconds: exact below 64, then 32 buckets per power of two).
"""

import argparse
import json
import random
import sys
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--masters', required=True)
    p.add_argument('--cluster', required=True)
    p.add_argument('--oids', type=int, required=True)
    p.add_argument('--duration', type=float, required=True)
    p.add_argument('--commit-ratio', type=float, default=0.0)
    p.add_argument('--objects-per-commit', type=int, default=3)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--start-at', type=int, default=0)
    a = p.parse_args()

    rng = random.Random(a.seed)
    st = Storage(master_nodes=a.masters, name=a.cluster, cache_size=1 << 20)
    cache = st.app._cache
    st.load(p64(rng.randrange(a.oids)))
    wait = a.start_at / 1000.0 - time.time()
    if wait > 0:
        time.sleep(wait)
    cpu0 = time.process_time()
    loads, commits = {}, {}
    nloads = ncommits = errors = 0
    first_error = None
    clock = time.perf_counter
    t0 = now = clock()
    end = t0 + a.duration
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
                record(commits, after - now)
                ncommits += 1
            else:
                cache.clear()
                now = clock()
                st.load(p64(rng.randrange(a.oids)))
                after = clock()
                record(loads, after - now)
                nloads += 1
        except Exception as e:
            after = clock()
            errors += 1
            if first_error is None:
                first_error = repr(e)
        now = after
    elapsed = clock() - t0
    cpu = time.process_time() - cpu0
    st.close()
    print(json.dumps({
        'client': 'python',
        'elapsed_s': elapsed,
        'loads': nloads,
        'commits': ncommits,
        'errors': errors,
        'first_error': first_error,
        'cpu_s': cpu,
        'load_hist': sorted(loads.items()),
        'commit_hist': sorted(commits.items()),
    }))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
