//! Model-based test: random histories (stores, undo-style backpointers,
//! chains of them, deletions) written by the writer, then every load,
//! loadBefore, loadSerial and history compared with a plain model of ZODB's
//! semantics.

use std::collections::BTreeMap;

use fsformat::{Error, FileStorage, Oid, SyncMode, Tid, TxnStatus, Writer};
use proptest::prelude::*;

/// One record of the model: its tid, its offset, the data it stands for
/// (`None`: no data), and whether it is a backpointer record.
#[derive(Clone, Debug)]
struct Rev {
    tid: Tid,
    pos: u64,
    data: Option<Vec<u8>>,
    back: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Store(u8, u8),
    /// Backpointer of object .0 to one of its earlier records (index .1).
    Back(u8, prop::sample::Index),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..12, any::<u8>()).prop_map(|(o, v)| Op::Store(o, v)),
        2 => (0u8..12, any::<prop::sample::Index>()).prop_map(|(o, i)| Op::Back(o, i)),
        1 => (0u8..12).prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_load_like_the_model(
        txns in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..25)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Data.fs");
        let mut w = Writer::create(&path, fsformat::Magic::Fs30).unwrap();
        w.set_sync(SyncMode::OnFinish);
        let mut model: BTreeMap<u64, Vec<Rev>> = BTreeMap::new();
        for (i, ops) in txns.iter().enumerate() {
            let tid = Tid(0x03f5_8e00_0000_0000 + (i as u64 + 1) * 0x1111);
            let mut t = w.begin(tid, TxnStatus::Committed, b"", b"", b"").unwrap();
            let mut touched = std::collections::HashSet::new();
            let mut new: Vec<(u64, Rev)> = Vec::new();
            for op in ops {
                let oid = match op { Op::Store(o, _) | Op::Back(o, _) | Op::Delete(o) => *o as u64 };
                if !touched.insert(oid) {
                    continue; // one record per object per transaction
                }
                let revs = model.get(&oid).cloned().unwrap_or_default();
                match op {
                    Op::Store(_, v) => {
                        let data = vec![*v; 1 + (*v as usize % 7)];
                        let pos = t.store(Oid(oid), &data).unwrap();
                        new.push((oid, Rev { tid, pos, data: Some(data), back: false }));
                    }
                    Op::Back(_, ix) if !revs.is_empty() => {
                        let target = &revs[ix.index(revs.len())];
                        let pos = t.store_back(Oid(oid), target.pos).unwrap();
                        new.push((oid, Rev { tid, pos, data: target.data.clone(), back: true }));
                    }
                    Op::Back(..) => {}
                    Op::Delete(_) => {
                        let pos = t.store_back(Oid(oid), 0).unwrap();
                        new.push((oid, Rev { tid, pos, data: None, back: true }));
                    }
                }
            }
            t.commit().unwrap();
            for (oid, rev) in new {
                model.entry(oid).or_default().push(rev);
            }
        }
        w.finish().unwrap();

        let st = FileStorage::open(&path).unwrap();
        prop_assert_eq!(st.len(), model.len());
        prop_assert_eq!(st.max_oid().0, model.keys().last().copied().unwrap_or(0));
        for (&oid, revs) in &model {
            let oid_ = Oid(oid);
            let cur = revs.last().unwrap();
            match (st.load(oid_), &cur.data) {
                (Ok((d, s)), Some(want)) => {
                    prop_assert_eq!(d, &want[..]);
                    prop_assert_eq!(s, cur.tid);
                }
                (Err(Error::NoData { .. }), None) => {}
                (got, want) => prop_assert!(false, "load {oid}: {got:?} vs {want:?}"),
            }
            let hist: Vec<(Tid, u64)> = st
                .history(oid_)
                .unwrap()
                .map(|h| h.map(|h| (h.tid, h.size)))
                .collect::<Result<_, _>>()
                .unwrap();
            let want: Vec<(Tid, u64)> = revs
                .iter()
                .rev()
                .map(|r| (r.tid, if r.back { 0 } else { r.data.as_ref().unwrap().len() as u64 }))
                .collect();
            prop_assert_eq!(hist, want);
            for (k, r) in revs.iter().enumerate() {
                // loadSerial
                match (st.load_serial(oid_, r.tid), &r.data) {
                    (Ok(d), Some(want)) => prop_assert_eq!(d, &want[..]),
                    (Err(e), None) => prop_assert!(e.is_pos_key_error()),
                    (got, want) => prop_assert!(false, "loadSerial: {got:?} vs {want:?}"),
                }
                // loadBefore(tid + 1) is this revision, ending at the next.
                let end = revs.get(k + 1).map(|n| n.tid);
                match (st.load_before(oid_, Tid(r.tid.0 + 1)), &r.data) {
                    (Ok(Some(rev)), Some(want)) => {
                        prop_assert_eq!(rev.data, &want[..]);
                        prop_assert_eq!(rev.tid, r.tid);
                        prop_assert_eq!(rev.end_tid, end);
                    }
                    (Err(e), None) => prop_assert!(e.is_pos_key_error()),
                    (got, want) => prop_assert!(false, "loadBefore: {got:?} vs {want:?}"),
                }
                // loadBefore(tid) is the previous revision, or nothing.
                let got = st.load_before(oid_, r.tid);
                match (k.checked_sub(1).map(|p| &revs[p]), got) {
                    (None, Ok(None)) => {}
                    (Some(p), Ok(Some(rev))) => {
                        prop_assert_eq!(Some(rev.data), p.data.as_deref());
                        prop_assert_eq!(rev.end_tid, Some(r.tid));
                    }
                    (Some(p), Err(e)) => prop_assert!(p.data.is_none() && e.is_pos_key_error()),
                    (p, got) => prop_assert!(false, "loadBefore prev: {p:?} vs {got:?}"),
                }
            }
        }
        prop_assert!(st.load(Oid(99)).unwrap_err().is_pos_key_error());
    }
}
