//! `neo-bench`: load and commit rates and latencies of a NEO cluster with
//! several client processes, our storage against Python NEO's, and how
//! many loads per second each storage could serve per core.
//!
//! The coordinator starts, for each database adapter asked (`SQLite`: one
//! file; `MySQL`: one database on the private MariaDB server of
//! `scripts/mysql-test-server.sh`) and each storage implementation
//! (`rust`: our `neomaster` + `neostorage`; `python`: NEO's), a master and
//! one storage on loopback on the same database, then for each step of
//! W workers × K loads in flight runs W client PROCESSES at once for a
//! fixed duration: our client (this binary with `--worker`, K concurrent
//! tasks on one connection) or NEO's (`scripts/bench/neo_worker.py`,
//! `neo.client.Storage` without cache, K threads). Each task mixes random
//! loads of existing objects (oids `0..N`, every load goes to the storage:
//! our client has no cache) with small commits of new objects, and each
//! worker prints a JSON line with its counts and latency histograms; the
//! coordinator merges them, measures the CPU time of the storage (and of
//! the MySQL server) over the same window, and prints a table.
//!
//! Saturation: the workers share the machine's cores with the storage, so
//! the loads/s measured can be bounded by the clients. Next to it the
//! coordinator prints the storage's CPU seconds per load and its inverse,
//! the capacity in loads/s per core the storage would serve if it had a
//! core for itself; `--saturate` steps W × K (`--steps`) to show where the
//! measured rate stops growing.
//!
//! A missing database is filled first through our client (`--fill N`
//! objects of 100 B - 1 KiB, oids `0..N`, N noted in `DB.oids`, or
//! `DATABASE.oids` next to the MySQL socket); for another database, N is
//! the first oid the master hands out.
//!
//! ```text
//!   neo-bench ──spawn──▶ [mysql-test-server.sh start] neomaster, neostorage (rust | python)
//!             ──spawn──▶ W × neo-bench --worker | neo_worker.py (K loads in flight each)
//!                                            ──▶ JSON line each
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
usage: neo-bench [--db PATH] [--adapter SQLite,MySQL] [--fill N] [--storages rust,python]
                 [--clients rust,python] [--workers 1,4] [--inflight K] [--duration SECS]
                 [--saturate [--steps 1x1,4x1,2x8,4x16]] [--commit-ratio R]
                 [--objects-per-commit K] [--python PATH] [--logs DIR] [--bin-dir DIR]
                 [--mysql-socket PATH] [--mysql-dir DIR] [--mysql-db NAME] [--busy-poll US]
       neo-bench --masters ADDR --cluster NAME --oids N [--workers ...] [--storage-pid PID] ...
       neo-bench --worker --masters ADDR --cluster NAME --oids N --duration SECS
                 --commit-ratio R --objects-per-commit K --inflight K --seed S --start-at UNIX_MS
                 [--busy-poll US]

  --db            SQLite database of the storage (default bench-data/bench.sqlite);
                  filled with --fill objects (default 100000) if missing
  --adapter       database adapters of the storages, in order (default SQLite); MySQL
                  uses a database (--mysql-db, default neo_bench) on the server of
                  --mysql-socket, else $NEO_TEST_MYSQL_SOCKET, else a private server
                  that scripts/mysql-test-server.sh starts in --mysql-dir (default
                  bench-data/mysql) and stops at the end; filled like --db if empty
  --storages      storage implementations to measure, in order (default rust,python)
  --clients       client implementations driving each storage (default rust,python)
  --workers       numbers of concurrent client processes (default 1,4)
  --inflight      loads each worker keeps in flight on its connection (default 1):
                  K tasks on our client's one connection, K threads sharing one
                  neo.client.Storage for NEO's client (its connection is thread-safe);
                  each task or thread also commits at --commit-ratio
  --saturate      measure the steps of --steps (WORKERSxINFLIGHT, default
                  1x1,4x1,2x8,4x16) instead of --workers x --inflight, one line each,
                  with the commit ratio 0 unless --commit-ratio is given
  --duration      seconds per measurement (default 5)
  --commit-ratio  fraction of operations that are commits (default 0.01)
  --objects-per-commit  new objects per commit, 100 B - 1 KiB each (default 3)
  --python        interpreter with NEO importable (default /tmp/neovenv/bin/python;
                  NEO's MySQL adapter needs PyMySQL or MySQLdb there)
  --bin-dir       where our neomaster and neostorage are (default: next to neo-bench)
  --busy-poll US  microseconds our storage's network thread and our client's loads
                  poll before they sleep (neostorage --busy-poll, ClientConfig::
                  busy_poll; default: theirs); a polling storage burns CPU while it
                  waits, which raises its CPU per load below saturation
  --masters       drive an existing cluster instead (no daemons started)

Saturation columns: CPU µs/load is the CPU time of the storage process (plus the
MySQL server's) over the window divided by the loads served (commits included:
use --commit-ratio 0 for loads alone); capacity = 1 / (CPU s per load), the
loads/s one core would serve; stor/db/clients/machine CPU % are shares of one
core (machine: every process, on all cores); limit: storage when it used 90 %
of a core or more, stor+db when the storage and the MySQL server together did
(NEO's storage waits for each query), cores when the machine was 90 % busy,
else latency.
";

const CLUSTER: &str = "bench";

/// The default steps of `--saturate`: workers x loads in flight.
const SATURATE_STEPS: &str = "1x1,4x1,2x8,4x16";

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

/// The storage's database backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Sqlite,
    Mysql,
}

impl Adapter {
    fn parse(s: &str) -> Result<Adapter, String> {
        if s.eq_ignore_ascii_case("sqlite") {
            Ok(Adapter::Sqlite)
        } else if s.eq_ignore_ascii_case("mysql") {
            Ok(Adapter::Mysql)
        } else {
            Err(format!("--adapter: {s} is neither SQLite nor MySQL"))
        }
    }

    /// The name `neostorage -a` takes.
    fn name(self) -> &'static str {
        match self {
            Adapter::Sqlite => "SQLite",
            Adapter::Mysql => "MySQL",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    worker: bool,
    db: PathBuf,
    adapters: Vec<Adapter>,
    fill: u64,
    storages: Vec<String>,
    clients: Vec<String>,
    workers: Vec<usize>,
    inflight: usize,
    saturate: bool,
    steps: Vec<(usize, usize)>,
    duration: f64,
    commit_ratio: f64,
    commit_ratio_given: bool,
    per_commit: usize,
    python: PathBuf,
    logs: PathBuf,
    bin_dir: Option<PathBuf>,
    mysql_socket: Option<PathBuf>,
    mysql_dir: PathBuf,
    mysql_db: String,
    masters: Option<SocketAddr>,
    cluster: String,
    oids: Option<u64>,
    seed: u64,
    start_at: u64,
    storage_pid: Option<u32>,
    busy_poll: Option<u64>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `WxK`: W workers with K loads in flight each, both at least 1.
fn parse_step(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--steps: bad step {s:?} (WORKERSxINFLIGHT, e.g. 2x8)");
    let (w, k) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    if w == 0 || k == 0 {
        return Err(bad());
    }
    Ok((w, k))
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let root = neo_e2e::repo_root();
        let mut o = Opts {
            worker: false,
            db: root.join("bench-data/bench.sqlite"),
            adapters: vec![Adapter::Sqlite],
            fill: 100_000,
            storages: list("rust,python"),
            clients: list("rust,python"),
            workers: vec![1, 4],
            inflight: 1,
            saturate: false,
            steps: Vec::new(),
            duration: 5.0,
            commit_ratio: 0.01,
            commit_ratio_given: false,
            per_commit: 3,
            python: PathBuf::from("/tmp/neovenv/bin/python"),
            logs: root.join("bench-data/logs"),
            bin_dir: None,
            mysql_socket: None,
            mysql_dir: root.join("bench-data/mysql"),
            mysql_db: "neo_bench".to_owned(),
            masters: None,
            cluster: CLUSTER.to_owned(),
            oids: None,
            seed: 1,
            start_at: 0,
            storage_pid: None,
            busy_poll: None,
        };
        let mut steps = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--worker" => {
                    o.worker = true;
                    continue;
                }
                "--saturate" => {
                    o.saturate = true;
                    continue;
                }
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                _ => {}
            }
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            let num = |what: &str| format!("{a}: bad {what} {v:?}");
            match a.as_str() {
                "--db" => o.db = PathBuf::from(v),
                "--adapter" | "--adapters" => {
                    o.adapters = list(v)
                        .iter()
                        .map(|s| Adapter::parse(s))
                        .collect::<Result<_, _>>()?
                }
                "--fill" => o.fill = v.parse().map_err(|_| num("count"))?,
                "--storages" => o.storages = list(v),
                "--clients" => o.clients = list(v),
                "--workers" => {
                    o.workers = list(v)
                        .iter()
                        .map(|s| s.parse().map_err(|_| num("count")))
                        .collect::<Result<_, _>>()?
                }
                "--inflight" => o.inflight = v.parse().map_err(|_| num("count"))?,
                "--steps" => {
                    steps = Some(
                        list(v)
                            .iter()
                            .map(|s| parse_step(s))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
                "--duration" => o.duration = v.parse().map_err(|_| num("duration"))?,
                "--commit-ratio" => {
                    o.commit_ratio = v.parse().map_err(|_| num("ratio"))?;
                    o.commit_ratio_given = true;
                }
                "--objects-per-commit" => o.per_commit = v.parse().map_err(|_| num("count"))?,
                "--python" => o.python = PathBuf::from(v),
                "--logs" => o.logs = PathBuf::from(v),
                "--bin-dir" => o.bin_dir = Some(PathBuf::from(v)),
                "--mysql-socket" => o.mysql_socket = Some(PathBuf::from(v)),
                "--mysql-dir" => o.mysql_dir = PathBuf::from(v),
                "--mysql-db" => o.mysql_db = v.clone(),
                "--masters" => o.masters = Some(v.parse().map_err(|_| num("address"))?),
                "--cluster" => o.cluster = v.clone(),
                "--oids" => o.oids = Some(v.parse().map_err(|_| num("count"))?),
                "--seed" => o.seed = v.parse().map_err(|_| num("seed"))?,
                "--start-at" => o.start_at = v.parse().map_err(|_| num("time"))?,
                "--storage-pid" => o.storage_pid = Some(v.parse().map_err(|_| num("pid"))?),
                "--busy-poll" => o.busy_poll = Some(v.parse().map_err(|_| num("duration"))?),
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
        if o.inflight == 0 {
            return Err("--inflight must be at least 1".into());
        }
        if o.workers.contains(&0) {
            return Err("--workers: a step of 0 workers".into());
        }
        if o.mysql_db.is_empty()
            || !o
                .mysql_db
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "--mysql-db: {:?} is no plain database name ([A-Za-z0-9_]+)",
                o.mysql_db
            ));
        }
        o.steps = if o.saturate {
            if !o.commit_ratio_given {
                o.commit_ratio = 0.0;
            }
            match steps {
                Some(s) => s,
                None => list(SATURATE_STEPS)
                    .iter()
                    .map(|s| parse_step(s))
                    .collect::<Result<_, _>>()?,
            }
        } else {
            if steps.is_some() {
                return Err("--steps goes with --saturate".into());
            }
            o.workers.iter().map(|&w| (w, o.inflight)).collect()
        };
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

/// CPU seconds all cores of the machine spent busy (neither idle nor
/// waiting for I/O) since boot, from the first line of `/proc/stat`.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // counted in user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle) as f64 / clock_ticks())
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

async fn connect(
    master: SocketAddr,
    cluster: &str,
    busy_poll: Option<u64>,
) -> Result<Client, ClientError> {
    let mut cfg = ClientConfig::new(vec![master], cluster);
    cfg.connect_timeout = Duration::from_secs(60);
    if let Some(us) = busy_poll {
        cfg.busy_poll = Duration::from_micros(us);
    }
    Client::connect(cfg).await
}

// ----- the worker -----

/// What one task of a worker does: its seed, the oids it loads, when it stops.
#[derive(Debug, Clone, Copy)]
struct LaneSpec {
    seed: u64,
    oids: u64,
    end: Instant,
    commit_ratio: f64,
    per_commit: usize,
}

/// The counts of one task.
#[derive(Debug, Default)]
struct Lane {
    loads: Hist,
    commits: Hist,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
}

impl Lane {
    fn merge(&mut self, other: Lane) {
        self.loads.merge(&other.loads);
        self.commits.merge(&other.commits);
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One sequence of operations, each timed from the end of the previous one
/// until `s.end`; several run at once on the worker's one client.
async fn lane(c: Client, s: LaneSpec) -> Lane {
    let mut rng = Rng::new(s.seed);
    let mut r = Lane::default();
    let mut now = Instant::now();
    while now < s.end {
        let res = if rng.unit() < s.commit_ratio {
            let res = commit(&c, &mut rng, s.per_commit).await;
            let after = Instant::now();
            if res.is_ok() {
                r.commits.record(after - now);
            }
            now = after;
            res
        } else {
            let res = c.load(Oid(rng.below(s.oids))).await;
            let after = Instant::now();
            let res = res.map(|l| {
                r.loads.record(after - now);
                r.bytes += l.data.len() as u64;
            });
            now = after;
            res
        };
        if let Err(e) = res {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| e.to_string());
        }
    }
    r
}

fn worker(o: &Opts) -> Result<(), String> {
    let master = o.masters.ok_or("--worker needs --masters")?;
    let oids = o.oids.ok_or("--worker needs --oids")?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let c = connect(master, &o.cluster, o.busy_poll)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut rng = Rng::new(o.seed);
        // Warm-up: the storage connection is opened by the first load.
        c.load(Oid(rng.below(oids)))
            .await
            .map_err(|e| format!("first load: {e}"))?;
        // Asynchronous sleep: the client's connection tasks keep running.
        let wait = o.start_at.saturating_sub(unix_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let cpu0 = cpu_seconds(std::process::id());
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(o.duration);
        let tasks: Vec<_> = (0..o.inflight)
            .map(|k| {
                let spec = LaneSpec {
                    // Task 0 draws the same oids as a worker without --inflight.
                    seed: o.seed ^ ((k as u64) << 32),
                    oids,
                    end,
                    commit_ratio: o.commit_ratio,
                    per_commit: o.per_commit,
                };
                tokio::spawn(lane(c.clone(), spec))
            })
            .collect();
        let mut all = Lane::default();
        for t in tasks {
            all.merge(t.await.map_err(|e| format!("load task: {e}"))?);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = match (cpu0, cpu_seconds(std::process::id())) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        c.close().await;
        Ok::<_, String>(json!({
            "client": "rust",
            "inflight": o.inflight,
            "elapsed_s": elapsed,
            "loads": all.loads.total,
            "commits": all.commits.total,
            "errors": all.errors,
            "first_error": all.first_error,
            "bytes": all.bytes,
            "cpu_s": cpu,
            "load_hist": all.loads.to_json(),
            "commit_hist": all.commits.to_json(),
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

/// The MySQL/MariaDB server the MySQL storages use: a given one
/// (`--mysql-socket`, `$NEO_TEST_MYSQL_SOCKET`) or a private one started
/// by `scripts/mysql-test-server.sh` and stopped when dropped.
struct MysqlServer {
    socket: PathBuf,
    /// The directory given to `mysql-test-server.sh` when we started it.
    started_in: Option<PathBuf>,
}

impl MysqlServer {
    fn open(o: &Opts) -> Result<MysqlServer, String> {
        let given = o
            .mysql_socket
            .clone()
            .or_else(|| std::env::var_os("NEO_TEST_MYSQL_SOCKET").map(PathBuf::from));
        if let Some(socket) = given {
            return Ok(MysqlServer {
                socket,
                started_in: None,
            });
        }
        let dir = &o.mysql_dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!("starting a MariaDB server in {}", dir.display());
        let out = Command::new(mysql_script())
            .arg("start")
            .arg(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("mysql-test-server.sh: {e}"))?;
        let socket = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        if !out.status.success() || socket.is_empty() {
            return Err(format!(
                "mysql-test-server.sh start {} failed ({})",
                dir.display(),
                out.status
            ));
        }
        Ok(MysqlServer {
            socket: PathBuf::from(socket),
            started_in: Some(dir.clone()),
        })
    }

    /// The server's pid, from the pid file `mysql-test-server.sh` writes
    /// next to its socket.
    fn pid(&self) -> Option<u32> {
        let f = self.socket.parent()?.join("mysqld.pid");
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    }

    /// Runs `sql` with the command-line client; its tab-separated output.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let mut last = String::from("no mariadb/mysql client found");
        for prog in ["mariadb", "mysql"] {
            let out = Command::new(prog)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "-N", "-B", "-e", sql])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(out) if out.status.success() => {
                    return Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                }
                Ok(out) => {
                    return Err(format!(
                        "{prog}: {sql}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
                Err(e) => last = format!("{prog}: {e}"),
            }
        }
        Err(last)
    }
}

impl Drop for MysqlServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.started_in {
            let st = Command::new(mysql_script())
                .arg("stop")
                .arg(dir)
                .stdin(Stdio::null())
                .status();
            if !st.is_ok_and(|s| s.success()) {
                eprintln!(
                    "neo-bench: could not stop the MariaDB server in {}",
                    dir.display()
                );
            }
        }
    }
}

fn mysql_script() -> PathBuf {
    neo_e2e::repo_root().join("scripts/mysql-test-server.sh")
}

/// Where the storages keep the objects.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(PathBuf),
    Mysql { socket: PathBuf, database: String },
}

impl Backend {
    fn adapter(&self) -> Adapter {
        match self {
            Backend::Sqlite(_) => Adapter::Sqlite,
            Backend::Mysql { .. } => Adapter::Mysql,
        }
    }

    /// `neostorage -d`: a path, or NEO's `user@database/socket`.
    fn database_arg(&self) -> String {
        match self {
            Backend::Sqlite(p) => p.display().to_string(),
            Backend::Mysql { socket, database } => {
                format!("root@{database}{}", socket.display())
            }
        }
    }

    /// The file noting how many objects `--fill` wrote.
    fn oids_file(&self) -> PathBuf {
        match self {
            Backend::Sqlite(p) => oids_file(p),
            Backend::Mysql { socket, database } => socket
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{database}.oids")),
        }
    }
}

/// A master and one storage on a database.
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

fn start_cluster(o: &Opts, kind: &str, tag: &str, backend: &Backend) -> Result<Cluster, String> {
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
        backend.adapter().name().to_owned(),
        "-d".to_owned(),
        match (kind, backend) {
            // Each storage as its users run it: NEO leaves SQLite's
            // rollback journal (ours switches the file to WAL, which NEO
            // would otherwise keep using).
            ("python", Backend::Sqlite(p)) => format!("file:{}?journal_mode=DELETE", p.display()),
            _ => backend.database_arg(),
        },
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
    if let (Some(us), "rust") = (o.busy_poll, kind) {
        scmd.arg("--busy-poll").arg(us.to_string());
    }
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
fn fill(o: &Opts, backend: &Backend) -> Result<(), String> {
    eprintln!("filling {} with {} objects", backend.database_arg(), o.fill);
    let tag = format!("fill-{}", backend.adapter().name());
    let cluster = start_cluster(o, "rust", &tag, backend)?;
    let rt = runtime()?;
    let t0 = Instant::now();
    rt.block_on(async {
        let c = connect(cluster.master_addr, CLUSTER, None)
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
    let side = backend.oids_file();
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
        let c = connect(master, cluster, None)
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
        let c = connect(master, cluster, None)
            .await
            .map_err(|e| format!("cluster not operational: {e}"))?;
        c.close().await;
        Ok(())
    })
}

/// The merged results of one measurement.
#[derive(Debug, Default)]
struct Row {
    adapter: String,
    storage: String,
    client: String,
    workers: usize,
    inflight: usize,
    duration: f64,
    loads: Hist,
    commits: Hist,
    load_rate: f64,
    commit_rate: f64,
    errors: u64,
    first_error: Option<String>,
    storage_cpu: Option<f64>,
    /// CPU seconds of the MySQL server over the window.
    db_cpu: Option<f64>,
    /// Busy CPU seconds of the whole machine over the window (every
    /// process, ours or not).
    machine_cpu: Option<f64>,
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

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0} %"))
}

impl Row {
    /// `rust/SQLite`: the storage and its adapter.
    fn storage_label(&self) -> String {
        if self.adapter.is_empty() {
            self.storage.clone()
        } else {
            format!("{}/{}", self.storage, self.adapter)
        }
    }

    /// `4` workers, or `4x16` with 16 loads in flight each.
    fn step_label(&self) -> String {
        if self.inflight == 1 {
            self.workers.to_string()
        } else {
            format!("{}x{}", self.workers, self.inflight)
        }
    }

    /// Storage (+ MySQL server) CPU seconds per load.
    fn cpu_per_load(&self) -> Option<f64> {
        let cpu = self.storage_cpu? + self.db_cpu.unwrap_or(0.0);
        (self.loads.total > 0 && cpu > 0.0).then(|| cpu / self.loads.total as f64)
    }

    /// Loads/s one core would serve: 1 / CPU seconds per load.
    fn capacity(&self) -> Option<f64> {
        self.cpu_per_load().map(|c| 1.0 / c)
    }

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
            self.storage_label(),
            self.client,
            self.step_label(),
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

    /// What most likely bounds the loads/s measured: the storage (it used
    /// 90 % of a core or more: NEO's storage runs on one thread), the
    /// storage and the MySQL server together (90 % of a core: a storage
    /// thread waits for each query), the machine's cores (90 % busy or
    /// more, whoever used them), else the latency of K loads in flight per
    /// worker.
    fn limit(&self) -> &'static str {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = |cpu: Option<f64>, of: f64| cpu.is_some_and(|c| c >= 0.9 * of * self.duration);
        let with_db = self.db_cpu.and_then(|d| self.storage_cpu.map(|s| s + d));
        if busy(self.storage_cpu, 1.0) {
            "storage"
        } else if busy(with_db, 1.0) {
            "stor+db"
        } else if busy(self.machine_cpu, cores) {
            "cores"
        } else {
            "latency"
        }
    }

    /// The saturation figures: loads/s measured next to the capacity.
    fn saturation_line(&self) -> String {
        let share = |cpu: Option<f64>| cpu.map(|c| c / self.duration * 100.0);
        format!(
            "| {:12} | {:6} | {:>2}x{:<3} | {:>9.0} | {:>9} | {:>8} | {:>5} | {:>5} | {:>5} | {:>5} | {:7} | {:>9} | {:>9} |",
            self.storage_label(),
            self.client,
            self.workers,
            self.inflight,
            self.load_rate,
            self.capacity()
                .map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            self.cpu_per_load()
                .map_or_else(|| "-".into(), |c| format!("{:.1}", c * 1e6)),
            fmt_pct(share(self.storage_cpu)),
            fmt_pct(share(self.db_cpu)),
            fmt_pct(share(Some(self.client_cpu))),
            fmt_pct(share(self.machine_cpu)),
            self.limit(),
            fmt_us(self.loads.quantile_us(0.5)),
            fmt_us(self.loads.quantile_us(0.99)),
        )
    }
}

const HEADER: &str = "\
| storage | client | N | loads/s | load p50 | load p99 | load p999 | commits/s | commit p50 | commit p99 | commit p999 | stor CPU s | CPU µs/op | cs/op | err |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

const SAT_HEADER: &str = "\
| storage | client | W x K | loads/s | capacity loads/s/core | CPU µs/load | stor CPU | db CPU | clients CPU | machine CPU | limit | load p50 | load p99 |
|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The cluster a measurement drives.
struct Target<'a> {
    master: SocketAddr,
    storage_pid: Option<u32>,
    /// The MySQL server's pid, whose CPU counts with the storage's.
    db_pid: Option<u32>,
    storage: &'a str,
    adapter: &'a str,
    oids: u64,
}

fn measure(
    o: &Opts,
    t: &Target,
    client: &str,
    (workers, inflight): (usize, usize),
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
                if let Some(us) = o.busy_poll {
                    c.arg("--busy-poll").arg(us.to_string());
                }
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
            &t.master.to_string(),
            "--cluster",
            &o.cluster,
            "--oids",
            &t.oids.to_string(),
            "--duration",
            &o.duration.to_string(),
            "--commit-ratio",
            &o.commit_ratio.to_string(),
            "--objects-per-commit",
            &o.per_commit.to_string(),
            "--inflight",
            &inflight.to_string(),
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
    let cpu0 = t.storage_pid.and_then(cpu_seconds);
    let db0 = t.db_pid.and_then(cpu_seconds);
    let cs0 = t.storage_pid.and_then(context_switches);
    let m0 = machine_busy_seconds();
    std::thread::sleep(Duration::from_secs_f64(o.duration));
    let m1 = machine_busy_seconds();
    let cpu1 = t.storage_pid.and_then(cpu_seconds);
    let db1 = t.db_pid.and_then(cpu_seconds);
    let cs1 = t.storage_pid.and_then(context_switches);
    let mut row = Row {
        adapter: t.adapter.to_owned(),
        storage: t.storage.to_owned(),
        client: client.to_owned(),
        workers,
        inflight,
        duration: o.duration,
        storage_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        db_cpu: db0.zip(db1).map(|(a, b)| b - a),
        machine_cpu: m0.zip(m1).map(|(a, b)| b - a),
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

/// Prints a finished measurement: the full row (unless `--saturate`) and
/// its saturation line.
fn report(o: &Opts, row: &Row) {
    if !o.saturate {
        println!("{HEADER}\n{}", row.line());
        println!("saturation: {}", row.saturation_line());
    } else {
        println!("{}", row.saturation_line());
    }
    if let Some(e) = &row.first_error {
        println!("  first error: {e}");
    }
}

/// Per adapter and client, each storage's peak loads/s and best capacity,
/// and the ratios of ours (`rust`, else the first storage) to the others'.
fn comparison(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.adapter.as_str(), r.client.as_str())) {
            groups.push((r.adapter.as_str(), r.client.as_str()));
        }
    }
    for (adapter, client) in groups {
        // (storage, peak loads/s, best capacity), storages in run order.
        let mut best: Vec<(&str, f64, Option<f64>)> = Vec::new();
        for r in rows
            .iter()
            .filter(|r| r.adapter == adapter && r.client == client)
        {
            let i = match best.iter().position(|b| b.0 == r.storage) {
                Some(i) => i,
                None => {
                    best.push((r.storage.as_str(), 0.0, None));
                    best.len() - 1
                }
            };
            let b = &mut best[i];
            b.1 = b.1.max(r.load_rate);
            b.2 = match (b.2, r.capacity()) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
        }
        let on = if adapter.is_empty() { "given" } else { adapter };
        let _ = write!(out, "{on} {client} clients:");
        for (s, peak, cap) in &best {
            let cap = cap.map_or_else(|| "-".into(), |c| format!("{c:.0}"));
            let _ = write!(
                out,
                " {s} storage peak {peak:.0} loads/s, capacity {cap} loads/s/core;"
            );
        }
        // Ratios of ours (else of the first storage) to the others.
        let reference = best.iter().position(|b| b.0 == "rust").unwrap_or(0);
        if let Some(&(first, p0, c0)) = best.get(reference) {
            for (i, (s, p, c)) in best.iter().enumerate() {
                if i == reference {
                    continue;
                }
                let _ = write!(out, " {first}/{s}: measured x{:.1}", p0 / p.max(1e-9));
                if let (Some(c0), Some(c)) = (c0, c) {
                    let _ = write!(out, ", capacity x{:.1}", c0 / c);
                }
                out.push(';');
            }
        }
        out.push('\n');
    }
    out
}

/// The databases to measure: the SQLite file, or a database on the MySQL
/// server; filled when new. Returns the backend and the number of oids if
/// known.
fn prepare(
    o: &Opts,
    adapter: Adapter,
    mysql: &mut Option<MysqlServer>,
) -> Result<(Backend, Option<u64>), String> {
    let (backend, new) = match adapter {
        Adapter::Sqlite => (Backend::Sqlite(o.db.clone()), !o.db.exists()),
        Adapter::Mysql => {
            if mysql.is_none() {
                *mysql = Some(MysqlServer::open(o)?);
            }
            let server = mysql.as_ref().ok_or("no MySQL server")?;
            let db = &o.mysql_db;
            let tables = server.sql(&format!(
                "CREATE DATABASE IF NOT EXISTS {db}; \
                 SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = '{db}' AND table_name = 'obj'"
            ))?;
            let backend = Backend::Mysql {
                socket: server.socket.clone(),
                database: db.clone(),
            };
            (backend, tables.trim() == "0")
        }
    };
    if new {
        fill(o, &backend)?;
    }
    let oids = o.oids.or_else(|| {
        std::fs::read_to_string(backend.oids_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    Ok((backend, oids))
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
        let target = Target {
            master,
            storage_pid: o.storage_pid,
            db_pid: None,
            storage: "given",
            adapter: "",
            oids,
        };
        for client in &o.clients {
            if o.saturate {
                println!("{SAT_HEADER}");
            }
            for &step in &o.steps {
                let row = measure(o, &target, client, step)?;
                report(o, &row);
                rows.push(row);
            }
        }
    } else {
        let mut mysql = None;
        for &adapter in &o.adapters {
            let (backend, mut oids) = prepare(o, adapter, &mut mysql)?;
            let db_pid = match adapter {
                Adapter::Mysql => mysql.as_ref().and_then(MysqlServer::pid),
                Adapter::Sqlite => None,
            };
            for storage in &o.storages {
                let tag = format!("{storage}-{}", adapter.name());
                let mut cluster = start_cluster(o, storage, &tag, &backend)?;
                wait_operational(cluster.master_addr, CLUSTER)?;
                let n = match oids {
                    Some(n) => n,
                    None => probe_oids(cluster.master_addr, CLUSTER)?,
                };
                oids = Some(n);
                println!(
                    "{storage} storage (pid {}) on {} {}: {n} oids",
                    cluster.storage.pid(),
                    adapter.name(),
                    backend.database_arg()
                );
                let target = Target {
                    master: cluster.master_addr,
                    storage_pid: Some(cluster.storage.pid()),
                    db_pid,
                    storage,
                    adapter: adapter.name(),
                    oids: n,
                };
                for client in &o.clients {
                    if o.saturate {
                        println!("{SAT_HEADER}");
                    }
                    for &step in &o.steps {
                        let row = measure(o, &target, client, step)?;
                        cluster.storage.check_running()?;
                        cluster.master.check_running()?;
                        report(o, &row);
                        rows.push(row);
                    }
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
    let _ = writeln!(table, "\nsaturation:\n{SAT_HEADER}");
    for r in &rows {
        let _ = writeln!(table, "{}", r.saturation_line());
    }
    let _ = writeln!(table);
    for r in &rows {
        let _ = writeln!(
            table,
            "{} {} {}: client CPU {:.2} s over {:.0} s",
            r.storage_label(),
            r.client,
            r.step_label(),
            r.client_cpu,
            r.duration
        );
    }
    table.push('\n');
    table.push_str(&comparison(&rows));
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

    #[test]
    fn steps_and_inflight_options() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let o = Opts::parse(&args("--workers 1,4 --inflight 8")).unwrap();
        assert_eq!(o.steps, vec![(1, 8), (4, 8)]);
        assert!((o.commit_ratio - 0.01).abs() < 1e-12);
        let o = Opts::parse(&args("--saturate --steps 2x3,5X1")).unwrap();
        assert_eq!(o.steps, vec![(2, 3), (5, 1)]);
        assert_eq!(o.commit_ratio, 0.0);
        let o = Opts::parse(&args("--saturate --commit-ratio 0.5")).unwrap();
        assert_eq!(o.steps.len(), SATURATE_STEPS.split(',').count());
        assert_eq!(o.commit_ratio, 0.5);
        let o = Opts::parse(&args("--adapter mysql,SQLite --mysql-db b_1")).unwrap();
        assert_eq!(o.adapters, vec![Adapter::Mysql, Adapter::Sqlite]);
        assert_eq!(o.busy_poll, None);
        let o = Opts::parse(&args("--busy-poll 0")).unwrap();
        assert_eq!(o.busy_poll, Some(0));
        for bad in [
            "--inflight 0",
            "--steps 2x2",
            "--saturate --steps 0x4",
            "--saturate --steps 4",
            "--adapter Oracle",
            "--mysql-db a;drop",
        ] {
            assert!(Opts::parse(&args(bad)).is_err(), "{bad} accepted");
        }
    }

    fn row(storage: &str, loads: u64, rate: f64, cpu: f64, db: Option<f64>) -> Row {
        let mut r = Row {
            adapter: "MySQL".into(),
            storage: storage.into(),
            client: "rust".into(),
            workers: 2,
            inflight: 8,
            duration: 5.0,
            load_rate: rate,
            storage_cpu: Some(cpu),
            db_cpu: db,
            ..Row::default()
        };
        for _ in 0..loads {
            r.loads.record(Duration::from_micros(100));
        }
        r
    }

    #[test]
    fn capacity_and_comparison() {
        // 1000 loads for 0.5 s of storage + 0.5 s of MySQL: 1 ms each.
        let a = row("rust", 1000, 200.0, 0.5, Some(0.5));
        assert!((a.capacity().unwrap() - 1000.0).abs() < 1e-6);
        assert!(a.saturation_line().contains("rust/MySQL"));
        assert!(a.saturation_line().contains(" 2x8 "));
        assert_eq!(a.step_label(), "2x8");
        let b = row("python", 100, 20.0, 1.0, Some(1.0));
        assert!((b.capacity().unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(a.limit(), "latency");
        // 3 s of storage and 1.6 s of MySQL in 5 s.
        assert_eq!(row("rust", 10, 2.0, 3.0, Some(1.6)).limit(), "stor+db");
        // 4.6 s of storage CPU in 5 s: 92 % of a core.
        let busy = row("python", 10, 2.0, 4.6, None);
        assert_eq!(busy.limit(), "storage");
        let idle = row("python", 0, 0.0, 0.0, None);
        assert_eq!(idle.capacity(), None);
        // Ours is the reference whatever the order of the runs.
        let c = comparison(&[b, a, idle]);
        assert!(
            c.contains("rust/python: measured x10.0, capacity x20.0"),
            "{c}"
        );
        assert!(
            c.contains("python storage peak 20 loads/s, capacity 50 loads/s/core"),
            "{c}"
        );
    }
}
