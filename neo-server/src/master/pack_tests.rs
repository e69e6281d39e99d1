//! The master's part of pack (NEO's `master/pack.py`): the order of a
//! committed pack transaction is signed (`NotifyPackSigned`), WaitForPack
//! is answered once every storage completed it, a storage that becomes
//! ready later is told the signed orders (`setStorageReady`).

use super::*;

fn begin(sim: &mut Sim, cl: usize) -> Tid {
    ask(sim, cl, p::AskBeginTransaction { tid: None });
    let Body::AnswerBeginTransaction(b) = last(sim, cl).body.clone() else {
        panic!("{:?}", last(sim, cl))
    };
    b.ttid
}

fn finish(sim: &mut Sim, cl: usize, ttid: Tid, oids: &[u64], pack: Option<p::PackOrder>) -> Tid {
    ask(
        sim,
        cl,
        p::AskFinishTransaction {
            ttid,
            oid_list: oids.iter().map(|&o| Oid(o)).collect(),
            deleted: vec![],
            checked: vec![],
            pack,
        },
    );
    let Body::AnswerTransactionFinished(done) = last(sim, cl).body.clone() else {
        panic!("{:?}", last(sim, cl))
    };
    done.tid
}

fn signed(sim: &Sim, st: usize) -> Vec<p::NotifyPackSigned> {
    fake(sim, st)
        .log
        .iter()
        .filter_map(|p| match &p.body {
            Body::NotifyPackSigned(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn wait_for_pack_is_answered_once_the_storages_completed_it() {
    let mut sim = Sim::new();
    let (_, st, _) = running(&mut sim, 4, 1, 2, &StorageScript::empty());
    let (s1, s2) = (st[0], st[1]);
    let cl = client(&mut sim);
    let ttid = begin(&mut sim, cl);
    let t1 = finish(&mut sim, cl, ttid, &[0], None);
    sim.node_mut::<Fake>(s1).take();
    let ttid = begin(&mut sim, cl);
    let pack_id = finish(&mut sim, cl, ttid, &[], Some((None, t1)));
    // The lock says it carries a pack order; the order is signed at once.
    let locks: Vec<bool> = fake(&sim, s1)
        .log
        .iter()
        .filter_map(|p| match &p.body {
            Body::AskLockInformation(l) => Some(l.pack),
            _ => None,
        })
        .collect();
    assert_eq!(locks, [true]);
    let order = p::NotifyPackSigned {
        approved: vec![pack_id],
        rejected: vec![],
    };
    for st in [s1, s2] {
        assert_eq!(signed(&sim, st), std::slice::from_ref(&order));
    }
    // A storage asks for the order: the master has it.
    ask(&mut sim, s1, p::AskPackOrders { pack_id: Tid(1) });
    assert_eq!(
        last(&sim, s1).body,
        Body::AnswerPackOrders(p::AnswerPackOrders {
            pack_list: vec![(pack_id, Some(true), false, None, t1)],
        })
    );
    // WaitForPack waits for every storage.
    let answered = |sim: &Sim, id: u32| {
        fake(sim, cl)
            .log
            .iter()
            .any(|p| p.id == id && matches!(p.body, Body::WaitedForPack(_)))
    };
    let wait = ask(&mut sim, cl, p::WaitForPack { tid: pack_id });
    assert!(!answered(&sim, wait));
    notify(&mut sim, s1, p::NotifyPackCompleted { pack_id });
    assert!(!answered(&sim, wait));
    notify(&mut sim, s2, p::NotifyPackCompleted { pack_id });
    assert!(answered(&sim, wait));
    // Once completed, WaitForPack is answered at once.
    let again = ask(&mut sim, cl, p::WaitForPack { tid: pack_id });
    assert!(answered(&sim, again));
    // A storage that comes back hears of the completed pack when ready.
    sim.kill(s2);
    sim.run();
    let script = after_s2_lost();
    let s2b = sim.add(None, Fake::storage(Some(2), 31101, script));
    sim.run();
    assert_eq!(signed(&sim, s2b), [order]);
}
