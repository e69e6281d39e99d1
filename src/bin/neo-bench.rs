//! `neo-bench`: load and commit rates and latencies of a NEO cluster with
//! several client processes, our storage against Python NEO's.
//!
//! The coordinator starts, for each storage implementation asked
//! (`rust`: our `neomaster` + `neostorage -a SQLite`; `python`: NEO's), a
//! master and one storage on loopback on the same SQLite database, then
//! for each number of workers runs that many client PROCESSES at once for
//! a fixed duration: our client (this binary with `--worker`) or NEO's
//! (`scripts/bench/neo_worker.py`, `neo.client.Storage` without cache).
//! Each worker mixes random loads of existing objects (oids `0..N`, every
//! load goes to the storage: our client has no cache) with small commits
//! of new objects, and prints a JSON line with its counts and latency
//! histograms; the coordinator merges them, measures the storage's CPU
//! time over the same window, and prints a table.
//!
//! A missing database is filled first through our client (`--fill N`
//! objects of 100 B - 1 KiB, oids `0..N`, N noted in `DB.oids`); for
//! another database, N is the first oid the master hands out.
//!
//! ```text
//!   neo-bench ──spawn──▶ neomaster, neostorage (rust | python) on --db
//!             ──spawn──▶ N × neo-bench --worker | neo_worker.py ──▶ JSON line each
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use neo_proto::{Oid, ZERO_TID};
use neo_server::client::{Client, ClientConfig, ClientError, TxnMeta};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: neo-bench [--db PATH] [--fill N] [--storages rust,python] [--clients rust,python]
                 [--workers 1,4] [--duration SECS] [--commit-ratio R] [--objects-per-commit K]
                 [--python PATH] [--logs DIR] [--bin-dir DIR]
       neo-bench --masters ADDR --cluster NAME --oids N [--workers ...] [--storage-pid PID] ...
       neo-bench --worker --masters ADDR --cluster NAME --oids N --duration SECS
                 --commit-ratio R --objects-per-commit K --seed S --start-at UNIX_MS

  --db            SQLite database of the storage (default bench-data/bench.sqlite);
                  filled with --fill objects (default 100000) if missing
  --storages      storage implementations to measure, in order (default rust,python)
  --clients       client implementations driving each storage (default rust,python)
  --workers       numbers of concurrent client processes (default 1,4)
  --duration      seconds per measurement (default 5)
  --commit-ratio  fraction of operations that are commits (default 0.01)
  --objects-per-commit  new objects per commit, 100 B - 1 KiB each (default 3)
  --python        interpreter with NEO importable (default /tmp/neovenv/bin/python)
  --bin-dir       where our neomaster and neostorage are (default: next to neo-bench)
  --masters       drive an existing cluster instead (no daemons started)
";

const CLUSTER: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("neo-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let result = if opts.worker {
        worker(&opts)
    } else {
        coordinator(&opts)
    };
    if let Err(e) = result {
        eprintln!("neo-bench: {e}");
        std::process::exit(1);
    }
}

// ----- options -----

#[derive(Debug, Clone)]
struct Opts {
    worker: bool,
    db: PathBuf,
    fill: u64,
    storages: Vec<String>,
    clients: Vec<String>,
    workers: Vec<usize>,
    duration: f64,
    commit_ratio: f64,
    per_commit: usize,
    python: PathBuf,
    logs: PathBuf,
    bin_dir: Option<PathBuf>,
    masters: Option<SocketAddr>,
    cluster: String,
    oids: Option<u64>,
    seed: u64,
    start_at: u64,
    storage_pid: Option<u32>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let root = neo_e2e::repo_root();
        let mut o = Opts {
            worker: false,
            db: root.join("bench-data/bench.sqlite"),
            fill: 100_000,
            storages: list("rust,python"),
            clients: list("rust,python"),
            workers: vec![1, 4],
            duration: 5.0,
            commit_ratio: 0.01,
            per_commit: 3,
            python: PathBuf::from("/tmp/neovenv/bin/python"),
            logs: root.join("bench-data/logs"),
            bin_dir: None,
            masters: None,
            cluster: CLUSTER.to_owned(),
            oids: None,
            seed: 1,
            start_at: 0,
            storage_pid: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--worker" {
                o.worker = true;
                continue;
            }
            if a == "-h" || a == "--help" {
                print!("{USAGE}");
                std::process::exit(0);
            }
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            let num = |what: &str| format!("{a}: bad {what} {v:?}");
            match a.as_str() {
                "--db" => o.db = PathBuf::from(v),
                "--fill" => o.fill = v.parse().map_err(|_| num("count"))?,
                "--storages" => o.storages = list(v),
                "--clients" => o.clients = list(v),
                "--workers" => {
                    o.workers = list(v)
                        .iter()
                        .map(|s| s.parse().map_err(|_| num("count")))
                        .collect::<Result<_, _>>()?
                }
                "--duration" => o.duration = v.parse().map_err(|_| num("duration"))?,
                "--commit-ratio" => o.commit_ratio = v.parse().map_err(|_| num("ratio"))?,
                "--objects-per-commit" => o.per_commit = v.parse().map_err(|_| num("count"))?,
                "--python" => o.python = PathBuf::from(v),
                "--logs" => o.logs = PathBuf::from(v),
                "--bin-dir" => o.bin_dir = Some(PathBuf::from(v)),
                "--masters" => o.masters = Some(v.parse().map_err(|_| num("address"))?),
                "--cluster" => o.cluster = v.clone(),
                "--oids" => o.oids = Some(v.parse().map_err(|_| num("count"))?),
                "--seed" => o.seed = v.parse().map_err(|_| num("seed"))?,
                "--start-at" => o.start_at = v.parse().map_err(|_| num("time"))?,
                "--storage-pid" => o.storage_pid = Some(v.parse().map_err(|_| num("pid"))?),
                _ => return Err(format!("unknown option {a}")),
            }
        }
        for s in &o.storages {
            if s != "rust" && s != "python" {
                return Err(format!("--storages: {s} is neither rust nor python"));
            }
        }
        for s in &o.clients {
            if s != "rust" && s != "python" {
                return Err(format!("--clients: {s} is neither rust nor python"));
            }
        }
        if !(0.0..=1.0).contains(&o.commit_ratio) {
            return Err("--commit-ratio must be within 0..1".into());
        }
        Ok(o)
    }
}

// ----- latency histogram (log-linear, ~3 % precision) -----

/// Counts of latencies in nanoseconds: exact below 64 ns, then 32 buckets
/// per power of two. `scripts/bench/neo_worker.py` uses the same buckets.
#[derive(Debug, Default, Clone)]
struct Hist {
    counts: BTreeMap<usize, u64>,
    total: u64,
}

fn bucket(ns: u64) -> usize {
    if ns < 64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize;
    64 + (e - 6) * 32 + ((ns >> (e - 5)) & 31) as usize
}

/// The middle of bucket `i`, in nanoseconds.
fn bucket_value(i: usize) -> u64 {
    if i < 64 {
        return i as u64;
    }
    let e = (i - 64) / 32 + 6;
    let sub = ((i - 64) % 32) as u64;
    ((32 + sub) << (e - 5)) + ((1u64 << (e - 5)) >> 1)
}

impl Hist {
    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        *self.counts.entry(bucket(ns)).or_insert(0) += 1;
        self.total += 1;
    }

    fn merge(&mut self, other: &Hist) {
        for (&b, &c) in &other.counts {
            *self.counts.entry(b).or_insert(0) += c;
        }
        self.total += other.total;
    }

    /// The latency under which a fraction `q` of the samples fall, in µs.
    fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (&b, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b) as f64 / 1000.0);
            }
        }
        None
    }

    fn to_json(&self) -> Value {
        Value::Array(
            self.counts
                .iter()
                .map(|(b, c)| json!([b, c]))
                .collect::<Vec<_>>(),
        )
    }

    fn from_json(v: &Value) -> Result<Hist, String> {
        let mut h = Hist::default();
        for pair in v.as_array().ok_or("histogram is no array")? {
            let b = pair.get(0).and_then(Value::as_u64).ok_or("bad bucket")?;
            let c = pair.get(1).and_then(Value::as_u64).ok_or("bad count")?;
            let b = usize::try_from(b).map_err(|_| "bucket out of range")?;
            *h.counts.entry(b).or_insert(0) += c;
            h.total += c;
        }
        Ok(h)
    }
}

// ----- small helpers -----

/// xorshift64*: enough randomness for picking oids and sizes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An object of 100 B - 1 KiB: a readable head, then pseudo-random bytes
/// (about half of which compress away).
fn object_data(rng: &mut Rng, oid: u64) -> Vec<u8> {
    let len = 100 + rng.below(925) as usize;
    let mut d = format!("bench object {oid} ").into_bytes();
    while d.len() < len {
        let r = rng.next();
        d.push(if r & 1 == 0 { b'x' } else { (r >> 8) as u8 });
    }
    d.truncate(len);
    d
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sleep_until_unix_ms(t: u64) {
    let now = unix_ms();
    if t > now {
        std::thread::sleep(Duration::from_millis(t - now));
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Context switches (voluntary + involuntary) of every thread of `pid`:
/// the hand-offs a request costs, a figure that a busy machine blurs less
/// than latencies.
fn context_switches(pid: u32) -> Option<u64> {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
        for l in status.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(n)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn meta(what: &str) -> TxnMeta {
    TxnMeta {
        user: b"/ neo-bench".to_vec(),
        description: what.as_bytes().to_vec(),
        extension: Vec::new(),
    }
}

async fn connect(master: SocketAddr, cluster: &str) -> Result<Client, ClientError> {
    let mut cfg = ClientConfig::new(vec![master], cluster);
    cfg.connect_timeout = Duration::from_secs(60);
    Client::connect(cfg).await
}

// ----- the worker -----

fn worker(o: &Opts) -> Result<(), String> {
    let master = o.masters.ok_or("--worker needs --masters")?;
    let oids = o.oids.ok_or("--worker needs --oids")?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let c = connect(master, &o.cluster)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut rng = Rng::new(o.seed);
        // Warm-up: the storage connection is opened by the first load.
        c.load(Oid(rng.below(oids)))
            .await
            .map_err(|e| format!("first load: {e}"))?;
        sleep_until_unix_ms(o.start_at);
        let cpu0 = cpu_seconds(std::process::id());
        let (mut loads, mut commits) = (Hist::default(), Hist::default());
        let mut errors = 0u64;
        let mut first_error = None;
        let mut bytes = 0u64;
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(o.duration);
        let mut now = t0;
        while now < end {
            let r = if rng.unit() < o.commit_ratio {
                let r = commit(&c, &mut rng, o.per_commit).await;
                let after = Instant::now();
                if r.is_ok() {
                    commits.record(after - now);
                }
                now = after;
                r.map(|_| ())
            } else {
                let oid = rng.below(oids);
                let r = c.load(Oid(oid)).await;
                let after = Instant::now();
                if let Ok(l) = &r {
                    loads.record(after - now);
                    bytes += l.data.len() as u64;
                }
                now = after;
                r.map(|_| ())
            };
            if let Err(e) = r {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = match (cpu0, cpu_seconds(std::process::id())) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        c.close().await;
        Ok::<_, String>(json!({
            "client": "rust",
            "elapsed_s": elapsed,
            "loads": loads.total,
            "commits": commits.total,
            "errors": errors,
            "first_error": first_error,
            "bytes": bytes,
            "cpu_s": cpu,
            "load_hist": loads.to_json(),
            "commit_hist": commits.to_json(),
        }))
    })?;
    println!("{result}");
    Ok(())
}

async fn commit(c: &Client, rng: &mut Rng, n: usize) -> Result<(), ClientError> {
    let mut txn = c.tpc_begin(meta("neo-bench commit")).await?;
    for _ in 0..n {
        let oid = c.new_oid().await?;
        let data = object_data(rng, oid.0);
        if let Err(e) = c.store(&mut txn, oid, ZERO_TID, &data).await {
            c.tpc_abort(txn).await;
            return Err(e);
        }
    }
    c.tpc_finish(txn).await.map(|_| ())
}

// ----- the coordinator -----

/// A daemon started by the coordinator; killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> Result<Proc, String> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited: {st} (see its log)", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_listening(p: &mut Proc, addr: SocketAddr) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        p.check_running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{} does not listen on {addr}", p.name))
}

/// A master and one storage on `--db`.
struct Cluster {
    master_addr: SocketAddr,
    master: Proc,
    storage: Proc,
}

fn sibling(o: &Opts, name: &str) -> Result<PathBuf, String> {
    let p = match &o.bin_dir {
        Some(d) => d.join(name),
        None => std::env::current_exe()
            .map_err(|e| format!("current exe: {e}"))?
            .with_file_name(name),
    };
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing: cargo build --release -p neo-server --bin neomaster -p neo-importer --bin neostorage",
            p.display()
        ))
    }
}

fn python_cmd(o: &Opts, module: &str) -> Command {
    let mut c = Command::new(&o.python);
    c.arg("-c").arg(format!(
        "import sys; from neo.scripts.{module} import main; sys.exit(main())"
    ));
    c
}

fn start_cluster(o: &Opts, kind: &str, tag: &str) -> Result<Cluster, String> {
    let master_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let storage_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let margs = [
        "-c".to_owned(),
        CLUSTER.to_owned(),
        "-b".to_owned(),
        master_addr.to_string(),
        "-A".to_owned(),
        "1".to_owned(),
        "-p".to_owned(),
        "12".to_owned(),
        "-r".to_owned(),
        "0".to_owned(),
    ];
    let sargs = [
        "-c".to_owned(),
        CLUSTER.to_owned(),
        "-m".to_owned(),
        master_addr.to_string(),
        "-b".to_owned(),
        storage_addr.to_string(),
        "-a".to_owned(),
        "SQLite".to_owned(),
        "-d".to_owned(),
        o.db.display().to_string(),
    ];
    let (mut mcmd, mut scmd) = match kind {
        "rust" => (
            Command::new(sibling(o, "neomaster")?),
            Command::new(sibling(o, "neostorage")?),
        ),
        _ => (python_cmd(o, "neomaster"), python_cmd(o, "neostorage")),
    };
    mcmd.args(margs).env("RUST_LOG", "warn");
    scmd.args(sargs).env("RUST_LOG", "warn");
    let mut master = Proc::spawn(&format!("{tag}-master"), &mut mcmd, &o.logs)?;
    wait_listening(&mut master, master_addr)?;
    let mut storage = Proc::spawn(&format!("{tag}-storage"), &mut scmd, &o.logs)?;
    wait_listening(&mut storage, storage_addr)?;
    Ok(Cluster {
        master_addr,
        master,
        storage,
    })
}

/// Fills a new database with objects `0..n` through our client.
fn fill(o: &Opts) -> Result<(), String> {
    eprintln!("filling {} with {} objects", o.db.display(), o.fill);
    let cluster = start_cluster(o, "rust", "fill")?;
    let rt = runtime()?;
    let t0 = Instant::now();
    rt.block_on(async {
        let c = connect(cluster.master_addr, CLUSTER)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut rng = Rng::new(42);
        let per_txn = 200;
        let mut oid = 0;
        while oid < o.fill {
            let mut txn = c
                .tpc_begin(meta("neo-bench fill"))
                .await
                .map_err(|e| e.to_string())?;
            for _ in 0..per_txn.min(o.fill - oid) {
                let data = object_data(&mut rng, oid);
                c.store(&mut txn, Oid(oid), ZERO_TID, &data)
                    .await
                    .map_err(|e| format!("store {oid}: {e}"))?;
                oid += 1;
            }
            c.tpc_finish(txn).await.map_err(|e| e.to_string())?;
        }
        c.close().await;
        Ok::<_, String>(())
    })?;
    eprintln!("filled in {:.1} s", t0.elapsed().as_secs_f64());
    let side = oids_file(&o.db);
    std::fs::write(&side, o.fill.to_string()).map_err(|e| format!("{}: {e}", side.display()))?;
    drop(cluster);
    Ok(())
}

/// `DB.oids`: the number of objects `--fill` wrote (oids `0..N`); later
/// commits leave gaps above (oids taken and not stored), so loads stay
/// below N.
fn oids_file(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".oids");
    PathBuf::from(s)
}

/// The number of oids in use: the next oid the master gives (the master
/// learns the last oid from the storage when it starts).
fn probe_oids(master: SocketAddr, cluster: &str) -> Result<u64, String> {
    runtime()?.block_on(async {
        let c = connect(master, cluster)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let first = c
            .new_oids(1)
            .await
            .map_err(|e| format!("new oid: {e}"))?
            .first()
            .copied()
            .ok_or("no new oid")?;
        c.close().await;
        Ok(first.0)
    })
}

/// Waits until the cluster serves clients.
fn wait_operational(master: SocketAddr, cluster: &str) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect(master, cluster)
            .await
            .map_err(|e| format!("cluster not operational: {e}"))?;
        c.close().await;
        Ok(())
    })
}

/// The merged results of one measurement.
#[derive(Debug, Default)]
struct Row {
    storage: String,
    client: String,
    workers: usize,
    duration: f64,
    loads: Hist,
    commits: Hist,
    load_rate: f64,
    commit_rate: f64,
    errors: u64,
    first_error: Option<String>,
    storage_cpu: Option<f64>,
    storage_switches: Option<u64>,
    client_cpu: f64,
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        Some(v) => format!("{v:.1} µs"),
        None => "-".into(),
    }
}

impl Row {
    fn line(&self) -> String {
        let ops = (self.loads.total + self.commits.total) as f64;
        let per_op = self
            .storage_cpu
            .filter(|_| ops > 0.0)
            .map(|c| c / ops * 1e6);
        let switches = self
            .storage_switches
            .filter(|_| ops > 0.0)
            .map(|c| c as f64 / ops);
        format!(
            "| {:6} | {:6} | {:3} | {:>9.0} | {:>9} | {:>9} | {:>9} | {:>7.1} | {:>9} | {:>9} | {:>9} | {:>6} | {:>7} | {:>6} | {:>3} |",
            self.storage,
            self.client,
            self.workers,
            self.load_rate,
            fmt_us(self.loads.quantile_us(0.5)),
            fmt_us(self.loads.quantile_us(0.99)),
            fmt_us(self.loads.quantile_us(0.999)),
            self.commit_rate,
            fmt_us(self.commits.quantile_us(0.5)),
            fmt_us(self.commits.quantile_us(0.99)),
            fmt_us(self.commits.quantile_us(0.999)),
            self.storage_cpu
                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            per_op.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            switches.map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            self.errors,
        )
    }
}

const HEADER: &str = "\
| storage | client | N | loads/s | load p50 | load p99 | load p999 | commits/s | commit p50 | commit p99 | commit p999 | stor CPU s | CPU µs/op | cs/op | err |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn measure(
    o: &Opts,
    master: SocketAddr,
    storage_pid: Option<u32>,
    storage: &str,
    client: &str,
    workers: usize,
    oids: u64,
) -> Result<Row, String> {
    let lead_ms = if client == "python" { 4000 } else { 1500 };
    let start_at = unix_ms() + lead_ms;
    let me = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let script = neo_e2e::repo_root().join("scripts/bench/neo_worker.py");
    let mut children = Vec::new();
    for i in 0..workers {
        let mut cmd = match client {
            "rust" => {
                let mut c = Command::new(&me);
                c.arg("--worker");
                c
            }
            _ => {
                let mut c = Command::new(&o.python);
                c.arg(&script);
                c
            }
        };
        cmd.args([
            "--masters",
            &master.to_string(),
            "--cluster",
            &o.cluster,
            "--oids",
            &oids.to_string(),
            "--duration",
            &o.duration.to_string(),
            "--commit-ratio",
            &o.commit_ratio.to_string(),
            "--objects-per-commit",
            &o.per_commit.to_string(),
            "--seed",
            &(o.seed * 1000 + i as u64 + 1).to_string(),
            "--start-at",
            &start_at.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot start a {client} worker: {e}"))?,
        );
    }
    sleep_until_unix_ms(start_at);
    let cpu0 = storage_pid.and_then(cpu_seconds);
    let cs0 = storage_pid.and_then(context_switches);
    std::thread::sleep(Duration::from_secs_f64(o.duration));
    let cpu1 = storage_pid.and_then(cpu_seconds);
    let cs1 = storage_pid.and_then(context_switches);
    let mut row = Row {
        storage: storage.to_owned(),
        client: client.to_owned(),
        workers,
        duration: o.duration,
        storage_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        storage_switches: cs0.zip(cs1).map(|(a, b)| b.saturating_sub(a)),
        ..Row::default()
    };
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("worker: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
            return Err(format!(
                "a {client} worker printed no result ({})",
                out.status
            ));
        };
        let v: Value = serde_json::from_str(line).map_err(|e| format!("worker output: {e}"))?;
        let loads = Hist::from_json(&v["load_hist"])?;
        let commits = Hist::from_json(&v["commit_hist"])?;
        let elapsed = v["elapsed_s"].as_f64().unwrap_or(o.duration).max(1e-9);
        row.load_rate += loads.total as f64 / elapsed;
        row.commit_rate += commits.total as f64 / elapsed;
        row.loads.merge(&loads);
        row.commits.merge(&commits);
        row.errors += v["errors"].as_u64().unwrap_or(0);
        row.client_cpu += v["cpu_s"].as_f64().unwrap_or(0.0);
        if row.first_error.is_none() {
            row.first_error = v["first_error"].as_str().map(str::to_owned);
        }
    }
    Ok(row)
}

fn coordinator(o: &Opts) -> Result<(), String> {
    let cmdline: Vec<String> = std::env::args().collect();
    println!("command: {}", cmdline.join(" "));
    println!(
        "machine: {} CPUs, load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    std::fs::create_dir_all(&o.logs).map_err(|e| format!("{}: {e}", o.logs.display()))?;
    let mut rows = Vec::new();
    if let Some(master) = o.masters {
        let oids = match o.oids {
            Some(n) => n,
            None => probe_oids(master, &o.cluster)?,
        };
        for client in &o.clients {
            for &n in &o.workers {
                let row = measure(o, master, o.storage_pid, "given", client, n, oids)?;
                println!("{HEADER}\n{}", row.line());
                rows.push(row);
            }
        }
    } else {
        if !o.db.exists() {
            fill(o)?;
        }
        let mut oids = o.oids.or_else(|| {
            std::fs::read_to_string(oids_file(&o.db))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        for storage in &o.storages {
            let mut cluster = start_cluster(o, storage, storage)?;
            wait_operational(cluster.master_addr, CLUSTER)?;
            let n = match oids {
                Some(n) => n,
                None => probe_oids(cluster.master_addr, CLUSTER)?,
            };
            oids = Some(n);
            println!(
                "{storage} storage (pid {}) on {}: {n} oids",
                cluster.storage.pid(),
                o.db.display()
            );
            for client in &o.clients {
                for &w in &o.workers {
                    let row = measure(
                        o,
                        cluster.master_addr,
                        Some(cluster.storage.pid()),
                        storage,
                        client,
                        w,
                        n,
                    )?;
                    cluster.storage.check_running()?;
                    cluster.master.check_running()?;
                    println!("{HEADER}\n{}", row.line());
                    if let Some(e) = &row.first_error {
                        println!("  first error: {e}");
                    }
                    rows.push(row);
                }
            }
        }
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nsummary ({:.0} s per row, commit ratio {}, {} objects per commit, load average {} at end):",
        o.duration,
        o.commit_ratio,
        o.per_commit,
        loadavg()
    );
    let _ = writeln!(table, "{HEADER}");
    for r in &rows {
        let _ = writeln!(table, "{}", r.line());
    }
    for r in &rows {
        let _ = writeln!(
            table,
            "{}/{} x{}: client CPU {:.2} s over {:.0} s",
            r.storage, r.client, r.workers, r.client_cpu, r.duration
        );
    }
    print!("{table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for ns in (0..200_000u64).chain([1 << 30, u64::MAX / 2]) {
            let b = bucket(ns);
            assert!(b >= last, "bucket({ns}) went back");
            last = b;
            let v = bucket_value(b) as f64;
            let err = (v - ns as f64).abs() / (ns.max(1) as f64);
            assert!(err <= 0.032, "ns {ns}: bucket value {v}");
        }
    }

    #[test]
    fn quantiles_of_known_samples() {
        let mut h = Hist::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((p50 - 500.0).abs() < 16.0, "{p50}");
        assert!((p99 - 990.0).abs() < 32.0, "{p99}");
        let back = Hist::from_json(&h.to_json()).unwrap();
        assert_eq!(back.total, 1000);
        assert_eq!(back.quantile_us(0.5), h.quantile_us(0.5));
    }
}
