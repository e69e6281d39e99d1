//! Timings of the Rust client against real daemons (one SQLite storage):
//! small commits, loads, and one iteration, every result checked. Ignored
//! by default (slow in debug builds); run with
//! `cargo test --release --test cluster_perf -- --ignored --nocapture`.

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::*;
use neo_proto::{Oid, ZERO_TID};
use neo_server::client::Client;

#[test]
#[ignore]
fn client_commit_and_load_rates() {
    const TXNS: u64 = 300;
    const PER_TXN: u64 = 10;
    let mut c = Cluster::new("perf", 1);
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    rt.block_on(within(Duration::from_secs(120), "perf", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let t0 = Instant::now();
        let mut serials = vec![ZERO_TID; (TXNS * PER_TXN) as usize];
        for t in 0..TXNS {
            let mut txn = a.tpc_begin(meta("perf")).await.expect("begin");
            for i in 0..PER_TXN {
                let oid = t * PER_TXN + i;
                let data = format!("object {oid} {}", "x".repeat(200));
                a.store(&mut txn, Oid(oid), ZERO_TID, data.as_bytes())
                    .await
                    .expect("store");
            }
            let tid = a.tpc_finish(txn).await.expect("finish");
            for i in 0..PER_TXN {
                serials[(t * PER_TXN + i) as usize] = tid;
            }
        }
        let commit = t0.elapsed();
        let t1 = Instant::now();
        for (oid, serial) in serials.iter().enumerate() {
            let r = a.load(Oid(oid as u64)).await.expect("load");
            assert_eq!(r.serial, *serial);
            assert!(r.data.starts_with(format!("object {oid} ").as_bytes()));
        }
        let load = t1.elapsed();
        let t2 = Instant::now();
        let all = a.iterator(ZERO_TID, None).await.expect("iterate");
        let iterate = t2.elapsed();
        assert_eq!(all.len() as u64, TXNS);
        let objects = TXNS * PER_TXN;
        eprintln!(
            "{TXNS} commits of {PER_TXN} objects: {commit:?} ({:.0} commits/s); \
             {objects} loads: {load:?} ({:.0} loads/s); iterate {TXNS} txns: {iterate:?}",
            TXNS as f64 / commit.as_secs_f64(),
            objects as f64 / load.as_secs_f64(),
        );
        a.close().await;
    }));
}
