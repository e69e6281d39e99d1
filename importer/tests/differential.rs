//! Once everything is imported the destination alone answers, with NEO's
//! SQL semantics. Every answer the Importer gives while importing (merged
//! from the source and the destination) must equal that final answer:
//! undo lookups, existing oids, range digests, tid windows.

mod common;

use common::*;
use fsformat::{Oid, Tid};
use neo_server::storage::Backend;
use serde_json::Value;

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap(), 16).unwrap()
}

/// Everything we compare, as a printable list.
fn snapshot<B: Backend>(db: &mut B, l: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let txns = l["transactions"].as_array().unwrap();
    let tids: Vec<Tid> = txns.iter().map(|t| Tid(hex(&t["tid"]))).collect();
    for t in txns {
        for r in t["records"].as_array().unwrap() {
            let (oid, tid) = (Oid(hex(&r["oid"])), Tid(hex(&t["tid"])));
            out.push(format!(
                "undo {oid} {tid}: {:?} {:?}",
                db.object_history_for_undo(oid, tid).unwrap(),
                db.find_undo_tid(oid, None, tid, None).unwrap()
            ));
            let mid = tids[tids.len() / 2];
            out.push(format!(
                "undo {oid} {tid} seen from {mid}: {:?}",
                db.find_undo_tid(oid, Some(mid), tid, None).unwrap()
            ));
        }
    }
    let max = Tid(u64::MAX >> 1);
    for p in 0..NP {
        for &at in [tids[0], tids[tids.len() / 3], tids[tids.len() - 1], max].iter() {
            out.push(format!(
                "oids_from {p} {at}: {:?}",
                db.oids_from(p, 1 << 20, Oid::ZERO, at).unwrap()
            ));
            out.push(format!(
                "oids_from {p} {at} by 5: {:?}",
                db.oids_from(p, 5, Oid(3), at).unwrap()
            ));
        }
        for w in tids.windows(2).step_by(3) {
            out.push(format!(
                "ranges {p} {}..{}: {:?} {:?} {:?}",
                w[0],
                w[1],
                db.check_tid_range(p, Some(3), w[0], max).unwrap(),
                db.check_serial_range(p, Some(4), w[0], max, Oid(2))
                    .unwrap(),
                db.replication_object_list(w[0], w[1], Some(3), p, Oid(1))
                    .unwrap()
            ));
        }
        out.push(format!(
            "first/last {p}: {:?} {:?}",
            db.first_tid_in(p).unwrap(),
            db.last_tid_in(p, Some(tids[tids.len() / 2])).unwrap()
        ));
    }
    let all: Vec<u32> = (0..NP).collect();
    for off in [0, 1, 5, 17] {
        out.push(format!(
            "tids {off}: {:?}",
            db.tid_list(off, 7, &all).unwrap()
        ));
        out.push(format!(
            "tids {off} in 1: {:?}",
            db.tid_list(off, 4, &[1]).unwrap()
        ));
    }
    out
}

#[test]
fn merged_answers_equal_the_destination_alone() {
    for name in GOOD {
        let l = listing(name);
        let cfg = config(&fixture(name), "");
        let mut imp = open(&cfg, memory_db());
        let mut states = vec![snapshot(&mut imp, &l)];
        while !imp.is_finished() {
            imp.import_some(2).unwrap();
            states.push(snapshot(&mut imp, &l));
        }
        let last = states.pop().unwrap();
        for (i, s) in states.iter().enumerate() {
            for (a, b) in s.iter().zip(&last) {
                assert_eq!(a, b, "{name}: after {} steps", i);
            }
            assert_eq!(s.len(), last.len());
        }
    }
}

/// The same with clients' transactions above the source's (a new object,
/// a change, an undo of a revision not imported yet).
#[test]
fn merged_answers_with_new_commits() {
    let name = "undo";
    let l = listing(name);
    let cfg = config(&fixture(name), "");
    let mut imp = open(&cfg, memory_db());
    let ltid = imp.last_source_tid();
    let loid = imp.last_ids().unwrap().1.unwrap();
    let t = |n: u64| Tid(ltid.0 + n);
    client_commit(
        &mut imp,
        t(3),
        &[
            (Oid(0), Some(b"root"), None),
            (Oid(loid.0 + 1), Some(b"new"), None),
        ],
    );
    let older = Tid(hex(&l["transactions"][3]["tid"]));
    let oid = Oid(hex(&l["transactions"][3]["records"][0]["oid"]));
    client_commit(&mut imp, t(5), &[(oid, None, Some(older))]);
    client_commit(&mut imp, t(8), &[(Oid(loid.0 + 1), None, None)]);
    let mut states = vec![snapshot(&mut imp, &l)];
    while !imp.is_finished() {
        imp.import_some(1).unwrap();
        states.push(snapshot(&mut imp, &l));
    }
    let last = states.pop().unwrap();
    assert!(
        last.iter().any(|s| s.contains(&format!("{:?}", t(8)))),
        "new tids are seen"
    );
    for (i, s) in states.iter().enumerate() {
        for (a, b) in s.iter().zip(&last) {
            assert_eq!(a, b, "{name}: after {i} steps");
        }
    }
}
