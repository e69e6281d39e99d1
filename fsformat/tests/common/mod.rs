//! Shared by the integration tests: ZODB's listing schema
//! (`testdata/README.md`) compared with what we read, and the oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fsformat::{DataFs, FileStorage, Oid, Stop, Tid, TxnStatus};
use serde_json::Value;
use sha1::{Digest, Sha1};

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha1_hex(b: &[u8]) -> String {
    hex(&Sha1::digest(b))
}

pub fn parse_id(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hex id"), 16).expect("hex id")
}

pub fn opt_str(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Compares our result with ZODB's `{"data_sha1", "error", ...}`.
pub fn check_error<T>(ctx: &str, ours: &fsformat::Result<T>, zodb_err: Option<&str>) -> bool {
    match (ours, zodb_err) {
        (Ok(_), None) => true,
        (Err(e), Some(z)) => {
            if z.starts_with("POSKeyError") {
                assert!(e.is_pos_key_error(), "{ctx}: ZODB {z}, we {e}");
            }
            false
        }
        (Ok(_), Some(z)) => panic!("{ctx}: ZODB fails with {z}, we succeed"),
        (Err(e), None) => panic!("{ctx}: ZODB succeeds, we fail: {e}"),
    }
}

pub fn check_iteration(name: &str, fs: &DataFs, listing: &Value) {
    let txns = listing["transactions"].as_array().unwrap();
    let mut it = fs.iter();
    for (i, jt) in txns.iter().enumerate() {
        let ctx = format!("{name} txn #{i}");
        let t = it
            .next()
            .unwrap_or_else(|| panic!("{ctx}: missing"))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(t.tid.0, parse_id(&jt["tid"]), "{ctx} tid");
        assert_eq!(t.pos, jt["pos"].as_u64().unwrap(), "{ctx} pos");
        assert_eq!(
            char::from(t.status).to_string(),
            jt["status"].as_str().unwrap(),
            "{ctx} status"
        );
        assert_eq!(hex(t.user), jt["user_hex"].as_str().unwrap(), "{ctx} user");
        assert_eq!(
            hex(t.description),
            jt["description_hex"].as_str().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            hex(t.extension),
            jt["extension_hex"].as_str().unwrap(),
            "{ctx}"
        );
        let recs = jt["records"].as_array().unwrap();
        let mut ri = t.records();
        for (j, jr) in recs.iter().enumerate() {
            let ctx = format!("{ctx} record #{j}");
            let r = ri
                .next()
                .unwrap_or_else(|| panic!("{ctx}: missing"))
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(r.oid.0, parse_id(&jr["oid"]), "{ctx} oid");
            assert_eq!(r.serial.0, parse_id(&jr["serial"]), "{ctx} serial");
            assert_eq!(r.pos, jr["pos"].as_u64().unwrap(), "{ctx} pos");
            assert_eq!(r.prev, jr["prev"].as_u64().unwrap(), "{ctx} prev");
            assert_eq!(r.plen(), jr["stored_len"].as_u64().unwrap(), "{ctx} plen");
            assert_eq!(r.back(), jr["back"].as_u64(), "{ctx} back");
            let data = fs.record_data(&r).unwrap();
            assert_eq!(
                data.map(sha1_hex).as_deref(),
                opt_str(&jr["data_sha1"]),
                "{ctx} data"
            );
            assert_eq!(
                data.map(|d| d.len() as u64),
                jr["data_len"].as_u64(),
                "{ctx}"
            );
            let data_txn = match r.back() {
                Some(b) if b != 0 => Some(fs.back_tid(r.oid, b).unwrap().0),
                _ => None,
            };
            assert_eq!(
                data_txn,
                jr["data_txn"].as_str().map(|_| parse_id(&jr["data_txn"]))
            );
        }
        match jt["records_error"].as_str() {
            None => assert!(ri.next().is_none(), "{ctx}: extra records"),
            Some(z) => {
                let e = ri.next().expect("an error").expect_err("an error");
                if z.contains("Non-zero version length") {
                    assert!(matches!(e, fsformat::Error::Version { .. }), "{ctx}: {e}");
                }
            }
        }
    }
    match listing["iter_error"].as_str() {
        None => {
            assert!(it.next().is_none(), "{name}: extra transactions");
            assert!(!matches!(it.stop(), Some(Stop::Corrupt(_))), "{name}");
        }
        Some(z) => match it.next() {
            // ZODB's FileIterator crashes on 'u' (UnboundLocalError).
            Some(Ok(t)) => {
                assert_eq!(t.status(), Some(TxnStatus::Undone), "{name}: ZODB {z}");
            }
            Some(Err(_)) => {}
            None => assert!(
                !it.stop().unwrap().is_clean(),
                "{name}: ZODB fails ({z}), we end cleanly"
            ),
        },
    }
}

pub fn check_storage(name: &str, st: &FileStorage, listing: &Value) {
    assert_eq!(
        st.last_transaction().0,
        parse_id(&listing["last_transaction"]),
        "{name}"
    );
    assert_eq!(
        st.max_oid().0,
        parse_id(&listing["new_oid"]),
        "{name} max oid"
    );
    assert_eq!(
        st.len() as u64,
        listing["len"].as_u64().unwrap(),
        "{name} len"
    );
    let objs = listing["objects"].as_array().unwrap();
    let ours: Vec<(Oid, u64)> = st.index().iter().collect();
    assert_eq!(ours.len(), objs.len(), "{name} objects");
    for ((oid, pos), jo) in ours.iter().zip(objs) {
        let ctx = format!("{name} oid {oid}");
        assert_eq!(oid.0, parse_id(&jo["oid"]), "{ctx}");
        assert_eq!(*pos, jo["pos"].as_u64().unwrap(), "{ctx} pos");
        let load = st.load(*oid);
        if check_error(&ctx, &load, opt_str(&jo["load"]["error"])) {
            let (data, serial) = load.unwrap();
            assert_eq!(
                sha1_hex(data),
                jo["load"]["data_sha1"].as_str().unwrap(),
                "{ctx}"
            );
            assert_eq!(serial.0, parse_id(&jo["load"]["serial"]), "{ctx}");
        }
        let hist: Vec<_> = st.history(*oid).unwrap().collect();
        let jh = jo["history"].as_array().unwrap();
        let ok: Vec<_> = hist.iter().filter_map(|h| h.as_ref().ok()).collect();
        assert_eq!(ok.len(), jh.len(), "{ctx} history length");
        for (h, j) in ok.iter().zip(jh) {
            assert_eq!(h.tid.0, parse_id(&j["tid"]), "{ctx} history tid");
            assert_eq!(h.size, j["size"].as_u64().unwrap(), "{ctx} history size");
        }
        assert_eq!(
            hist.iter().any(|h| h.is_err()),
            !jo["history_error"].is_null(),
            "{ctx} history error"
        );
        for jr in jo["revisions"].as_array().unwrap() {
            let serial = Tid(parse_id(&jr["serial"]));
            let ctx = format!("{ctx} rev {serial}");
            for (before, key) in [
                (serial, "load_before"),
                (Tid(serial.0 + 1), "load_before_next"),
            ] {
                let ours = st.load_before(*oid, before);
                let j = &jr[key];
                if j.is_null() {
                    assert!(matches!(ours, Ok(None)), "{ctx} {key}: {ours:?}");
                    continue;
                }
                if check_error(&ctx, &ours, opt_str(&j["error"])) {
                    let rev = ours.unwrap().unwrap_or_else(|| panic!("{ctx} {key}: None"));
                    assert_eq!(
                        sha1_hex(rev.data),
                        j["data_sha1"].as_str().unwrap(),
                        "{ctx}"
                    );
                    assert_eq!(rev.tid.0, parse_id(&j["start"]), "{ctx} {key} start");
                    assert_eq!(
                        rev.end_tid.map(|t| t.0),
                        j["end"].as_str().map(|_| parse_id(&j["end"]))
                    );
                }
            }
            let ours = st.load_serial(*oid, serial);
            let j = &jr["load_serial"];
            if check_error(&ctx, &ours, opt_str(&j["error"])) {
                assert_eq!(
                    sha1_hex(ours.unwrap()),
                    j["data_sha1"].as_str().unwrap(),
                    "{ctx}"
                );
            }
        }
    }
}

/// The oracle Python (`$NEO_TEST_PYTHON`, else `<repo>/.venv/bin/python`).
pub fn oracle_python() -> PathBuf {
    match std::env::var_os("NEO_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

/// ZODB's verdict and listing of `path` (`scripts/oracle/zodb_check.py`).
pub fn zodb_check(path: &Path) -> Value {
    let py = oracle_python();
    assert!(
        py.exists(),
        "oracle Python {} missing: run scripts/setup-test-env.sh",
        py.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oracle/zodb_check.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(path)
        .output()
        .expect("run the oracle");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}
