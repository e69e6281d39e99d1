//! End-to-end TLS: real `neomaster`, `neostorage` and `neoadmin` started
//! with NEO's `--ca/--cert/--key`, `neoctl` and the Rust client with the
//! same options. The cluster bootstraps, commits and restarts over TLS
//! only: a plain client and a plain `neoctl` get nowhere.

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_proto::{Oid, ZERO_TID};
use neo_server::client::Client;

const OP: Duration = Duration::from_secs(10);

#[test]
fn cluster_over_tls() {
    let mut c = Cluster::new("tls", 1);
    c.tls = Some(Pki::write(c.dir.path()));
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    let root = Oid(0);
    let t1 = rt.block_on(within(OP, "TLS client", async {
        let a = Client::connect(c.client_config())
            .await
            .expect("TLS client");
        let t1 = commit(&a, "over TLS", &[(root, ZERO_TID, b"secret root")])
            .await
            .expect("commit");
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data.as_slice(), r.serial), (&b"secret root"[..], t1));
        a.close().await;
        t1
    }));

    // Without TLS nothing is served: the client cannot identify and
    // neoctl fails.
    let mut plain = c.client_config();
    plain.tls = None;
    plain.connect_timeout = Duration::from_secs(2);
    let refused = rt.block_on(within(OP, "plain client", Client::connect(plain)));
    assert!(
        refused.is_err(),
        "a plain client was served by a TLS cluster"
    );
    let out = std::process::Command::new(&c.bins.neoctl)
        .args(["-a", &c.admin_addr().to_string(), "print", "cluster"])
        .output()
        .expect("run neoctl");
    assert!(
        !out.status.success(),
        "plain neoctl answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // STOPPING (through the TLS neoctl) and restart: the data is there.
    c.stop();
    c.start_all();
    c.wait_state("RUNNING", STEP);
    rt.block_on(within(OP, "after restart", async {
        let a = Client::connect(c.client_config())
            .await
            .expect("TLS client");
        let r = a.load(root).await.expect("load");
        assert_eq!(r.serial, t1);
        a.close().await;
    }));
}
