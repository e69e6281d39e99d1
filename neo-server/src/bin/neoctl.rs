//! `neoctl`: NEO's command-line control tool. It talks to an admin node
//! (`-a HOST:PORT`, default 127.0.0.1:9999) without identifying, and
//! prints what NEO's neoctl prints, since scripts parse it:
//!
//! ```text
//! print cluster | node [TYPE] | pt [min [max [node]]] | ids | summary | primary | import
//! set cluster STATE | set replicas N | set node NID STATE
//! start | add NID...|all | tweak [-n] [NID...] | drop NID | kill NID
//! truncate TID | flush_log | check [partition]:[reference]... [min_tid [max_tid]]
//! prune_orphan 0|1 NID...|all
//! ```
//!
//! `print import` is ours: the storage nodes' status lines of the summary
//! (`S1: import of PATH: imported 12/30 transactions, ..., ETA 8 s`, see
//! `neo_server::admin`), or `no import` when no storage has one (always
//! so with a Python NEO admin, which has none).
//!
//! Exit status 1 with `ERROR: ...` when the admin is not ready or not
//! reachable, with the admin's message when it answers DENIED.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use neo_proto::conn::{ConnConfig, Connection};
use neo_proto::tls::TlsConfig;
use neo_proto::{
    AddPendingNodes, AskClusterState, AskLastIDs, AskLastTransaction, AskMonitorInformation,
    AskNodeList, AskPartitionList, AskPrimary, AskRecovery, Body, Cell, CheckReplicas,
    ClusterState, ErrorCode, FlushLog, Map, NodeId, NodeInfo, NodeState, NodeType, Repair,
    SetClusterState, SetNodeState, SetNumReplicas, Tid, Truncate, TweakPartitionTable, ZERO_TID,
};
use neo_server::admin::{datetime_from_tid, tid_from_time};
use neo_server::nodes::format_node_list;
use neo_server::pt::PartitionTable;

const USAGE: &str = "Available commands:
print
  ids
  pt [min [max [node]]]
  node [type]
  cluster
  primary
  summary
  import
set
  cluster STATE
  replicas NR
  node NODE STATE
check [partition]:[reference] ... [min_tid [max_tid]]
start
add node [node [...]] | all
tweak [-n] [node [...]]
drop node
kill node
prune_orphan dry_run node [node [...]] | all
truncate tid
flush_log
The syntax of « TID » arguments is either tid:<integer> (case insensitive) for a TID or <float> for a UNIX timestamp, e.g. 'tid:257684787499560686', 'tid:0x3937af2eeeeeeee' or '1325421296' for 2012-01-01 12:34:56 UTC.";

/// How a command fails, and what neoctl then prints.
enum Fail {
    /// `sys.exit(message)`: the message alone, status 1.
    Exit(String),
    /// NotReadyException: `ERROR: message`, status 1.
    NotReady(String),
}

type Res<T> = Result<T, Fail>;

struct Ctl {
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    conn: Option<Connection>,
}

impl Ctl {
    async fn conn(&mut self) -> Res<Connection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let cfg = ConnConfig {
            request_timeout: Some(Duration::from_secs(60)),
            ..ConnConfig::default()
        };
        let (conn, mut events) = Connection::connect(self.addr, self.tls.as_ref(), cfg)
            .await
            .map_err(|e| {
                log::debug!("{e}");
                Fail::NotReady("not connected".into())
            })?;
        // Nothing unsolicited is expected: drain so the reader never stalls.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn ask(&mut self, body: impl Into<Body>) -> Res<Body> {
        let conn = self.conn().await?;
        let answer = conn
            .ask(body)
            .await
            .map_err(|_| Fail::NotReady("Connection closed".into()))?;
        match answer {
            Body::Error(e) if e.code == ErrorCode::NotReady => Err(Fail::NotReady(msg(&e.message))),
            Body::Error(e) if e.code == ErrorCode::Denied => Err(Fail::Exit(msg(&e.message))),
            other => Ok(other),
        }
    }

    /// A request NEO answers with `Error ACK`: its message.
    async fn ask_ack(&mut self, body: impl Into<Body>) -> Res<String> {
        match self.ask(body).await? {
            Body::Error(e) if e.code == ErrorCode::Ack => Ok(msg(&e.message)),
            other => Err(unexpected(other)),
        }
    }

    async fn node_list(&mut self, node_type: Option<NodeType>) -> Res<Vec<NodeInfo>> {
        match self.ask(AskNodeList { node_type }).await? {
            Body::AnswerNodeList(a) => Ok(a.node_list),
            other => Err(unexpected(other)),
        }
    }

    async fn partition_list(
        &mut self,
        min: u32,
        max: u32,
        node: Option<NodeId>,
    ) -> Res<(Option<u64>, u32, Vec<Vec<Cell>>)> {
        let req = AskPartitionList {
            min_offset: min,
            max_offset: max,
            uuid: node,
        };
        match self.ask(req).await? {
            Body::AnswerPartitionList(a) => Ok((a.ptid, a.num_replicas, a.row_list)),
            other => Err(unexpected(other)),
        }
    }

    /// neoctl's formatPartitionTable: the table with the running storages.
    async fn format_pt(&mut self, row_list: Vec<Vec<Cell>>) -> Res<String> {
        let storages = self.node_list(Some(NodeType::Storage)).await?;
        let Ok(pt) = PartitionTable::from_rows(None, 0, row_list) else {
            return Ok(String::new());
        };
        let state = |nid: NodeId| {
            storages
                .iter()
                .find(|n| n.uuid == Some(nid))
                .map(|n| n.state)
        };
        let running: Vec<NodeId> = storages
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .filter_map(|n| n.uuid)
            .collect();
        Ok(pt.format_lines(state, &running).join("\n"))
    }

    async fn storage_list(&mut self, params: &[String]) -> Res<Vec<NodeId>> {
        if params.len() == 1 && params[0] == "all" {
            let list = self.node_list(Some(NodeType::Storage)).await?;
            return Ok(list.iter().filter_map(|n| n.uuid).collect());
        }
        params.iter().map(|p| as_node(p)).collect()
    }

    async fn execute(&mut self, args: &[String]) -> Res<Option<String>> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let invalid = || Fail::Exit(format!("invalid command: {}", args.join(" ")));
        let (cmd, params): (&str, &[String]) = match words.as_slice() {
            [] => return Ok(Some(USAGE.to_owned())),
            ["print" | "set", sub, ..] => {
                let joined = if words[0] == "print" {
                    "print "
                } else {
                    "set "
                };
                // Static command names keep the match below simple.
                let name = match (joined, *sub) {
                    ("print ", "ids") => "print ids",
                    ("print ", "pt") => "print pt",
                    ("print ", "node") => "print node",
                    ("print ", "cluster") => "print cluster",
                    ("print ", "primary") => "print primary",
                    ("print ", "summary") => "print summary",
                    ("print ", "import") => "print import",
                    ("set ", "cluster") => "set cluster",
                    ("set ", "replicas") => "set replicas",
                    ("set ", "node") => "set node",
                    _ => return Err(invalid()),
                };
                (name, &args[2..])
            }
            ["print" | "set"] => return Err(invalid()),
            [c, ..] => (*c, &args[1..]),
        };
        match cmd {
            "print ids" => {
                let (ptid, backup_tid) = match self.ask(AskRecovery {}).await? {
                    Body::AnswerRecovery(a) => (a.ptid, a.backup_tid),
                    other => return Err(unexpected(other)),
                };
                let (head, ltid) = match backup_tid {
                    Some(b) if b != ZERO_TID => {
                        let ltid = match self.ask(AskLastTransaction {}).await? {
                            Body::AnswerLastTransaction(a) => a.tid,
                            other => return Err(unexpected(other)),
                        };
                        (
                            format!("backup_tid = 0x{:x} ({})", b.0, datetime_from_tid(b)),
                            ltid,
                        )
                    }
                    _ => match self.ask(AskLastIDs {}).await? {
                        Body::AnswerLastIDs(a) => (
                            format!("last_oid = 0x{:x}", a.last_oid.map_or(0, |o| o.0)),
                            a.last_tid.unwrap_or(ZERO_TID),
                        ),
                        other => return Err(unexpected(other)),
                    },
                };
                Ok(Some(format!(
                    "{head}\nlast_tid = 0x{:x} ({})\nlast_ptid = {}",
                    ltid.0,
                    datetime_from_tid(ltid),
                    py_opt(ptid)
                )))
            }
            "print pt" => {
                let min: u32 = parse_num(params.first(), 0)?;
                let max: u32 = parse_num(params.get(1), 0)?;
                let node = params.get(2).map(|n| as_node(n)).transpose()?;
                let (ptid, nr, rows) = self.partition_list(min, max, node).await?;
                let body = if min != 0 || max != 0 {
                    format_row_list(min, &rows)
                } else {
                    self.format_pt(rows).await?
                };
                Ok(Some(format!(
                    "# ptid: {}, replicas: {nr}\n{body}",
                    py_opt(ptid)
                )))
            }
            "print node" => {
                let node_type = match params {
                    [] => None,
                    [t] => Some(NodeType::from_name(&t.to_uppercase()).ok_or_else(invalid)?),
                    _ => return Err(invalid()),
                };
                let list = self.node_list(node_type).await?;
                let lines = format_node_list(&list, "");
                Ok(Some(if lines.is_empty() {
                    "Empty list!".to_owned()
                } else {
                    lines.join("\n")
                }))
            }
            "print cluster" => match self.ask(AskClusterState {}).await? {
                Body::AnswerClusterState(a) => Ok(Some(a.state.to_string())),
                other => Err(unexpected(other)),
            },
            "print primary" => match self.ask(AskPrimary {}).await? {
                Body::AnswerPrimary(a) => Ok(Some(a.primary_uuid.to_string())),
                other => Err(unexpected(other)),
            },
            "print import" => match self.ask(AskMonitorInformation {}).await? {
                Body::AnswerMonitorInformation(a) => {
                    let text = msg(&a.summary);
                    let lines: Vec<&str> = text.lines().skip(1).collect();
                    if lines.is_empty() {
                        Ok(Some("no import".to_owned()))
                    } else {
                        Ok(Some(lines.join("\n")))
                    }
                }
                other => Err(unexpected(other)),
            },
            "print summary" => match self.ask(AskMonitorInformation {}).await? {
                Body::AnswerMonitorInformation(a) => {
                    let mut parts = Vec::new();
                    for (k, v) in [("warning", &a.warning), ("problem", &a.problem)] {
                        if !v.is_empty() {
                            let items: Vec<String> = v
                                .iter()
                                .map(|x| match x {
                                    Some(b) => format!("{:?}", msg(b)),
                                    None => "null".to_owned(),
                                })
                                .collect();
                            parts.push(format!("\"{k}\": [{}]", items.join(", ")));
                        }
                    }
                    Ok(Some(format!(
                        "# {{{}}}\n{}",
                        parts.join(", "),
                        msg(&a.summary)
                    )))
                }
                other => Err(unexpected(other)),
            },
            "set cluster" => {
                let [state] = params else {
                    return Err(invalid());
                };
                let state = ClusterState::from_name(&state.to_uppercase()).ok_or_else(invalid)?;
                self.ask_ack(SetClusterState { state }).await.map(Some)
            }
            "set replicas" => {
                let [nr] = params else { return Err(invalid()) };
                let nr: i64 = nr.parse().map_err(|_| invalid())?;
                let Ok(num_replicas) = u32::try_from(nr) else {
                    return Err(Fail::Exit("invalid number of replicas".into()));
                };
                self.ask_ack(SetNumReplicas { num_replicas })
                    .await
                    .map(Some)
            }
            "set node" => {
                let [nid, state] = params else {
                    return Err(invalid());
                };
                let uuid = as_node(nid)?;
                let state = NodeState::from_name(&state.to_uppercase()).ok_or_else(invalid)?;
                self.ask_ack(SetNodeState { uuid, state }).await.map(Some)
            }
            "start" if params.is_empty() => self
                .ask_ack(SetClusterState {
                    state: ClusterState::Verifying,
                })
                .await
                .map(Some),
            "add" => {
                let uuid_list = self.storage_list(params).await?;
                self.ask_ack(AddPendingNodes { uuid_list }).await.map(Some)
            }
            "tweak" => {
                let dry_run = params.first().is_some_and(|p| p == "-n");
                let nodes = &params[usize::from(dry_run)..];
                let uuid_list = nodes.iter().map(|n| as_node(n)).collect::<Res<Vec<_>>>()?;
                match self.ask(TweakPartitionTable { dry_run, uuid_list }).await? {
                    Body::AnswerTweakPartitionTable(a) if a.changed => {
                        self.format_pt(a.row_list).await.map(Some)
                    }
                    Body::AnswerTweakPartitionTable(_) => Ok(Some("No change done.".into())),
                    other => Err(unexpected(other)),
                }
            }
            "kill" | "drop" => {
                let [nid] = params else { return Err(invalid()) };
                let uuid = as_node(nid)?;
                let state = if cmd == "kill" {
                    NodeState::Down
                } else {
                    NodeState::Unknown
                };
                self.ask_ack(SetNodeState { uuid, state }).await.map(Some)
            }
            "prune_orphan" => {
                let Some((flag, nodes)) = params.split_first() else {
                    return Err(invalid());
                };
                let dry_run = match flag.as_str() {
                    "0" => false,
                    "1" => true,
                    _ => return Err(invalid()),
                };
                let uuid_list = self.storage_list(nodes).await?;
                self.ask_ack(Repair { uuid_list, dry_run }).await.map(Some)
            }
            "truncate" => {
                let [tid] = params else { return Err(invalid()) };
                let tid = as_tid(tid)?;
                self.ask_ack(Truncate { tid }).await.map(|_| None)
            }
            "check" => {
                let req = self.check_request(params).await?;
                self.ask_ack(req).await.map(|_| None)
            }
            "flush_log" if params.is_empty() => {
                let conn = self.conn().await?;
                conn.notify(FlushLog {})
                    .await
                    .map_err(|_| Fail::NotReady("Connection closed".into()))?;
                conn.close().await;
                self.conn = None;
                Ok(None)
            }
            _ => Err(invalid()),
        }
    }

    async fn check_request(&mut self, params: &[String]) -> Res<CheckReplicas> {
        let mut partition_dict: Vec<(u32, Option<NodeId>)> = Vec::new();
        let mut min_tid = ZERO_TID;
        let mut max_tid = None;
        let mut it = params.iter();
        while let Some(p) = it.next() {
            let Some((partition, source)) = p.split_once(':') else {
                min_tid = as_tid(p)?;
                max_tid = it.next().map(|t| as_tid(t)).transpose()?;
                break;
            };
            let source = if source.is_empty() {
                None
            } else {
                Some(as_node(source)?)
            };
            if partition.is_empty() {
                let (_, _, rows) = self.partition_list(0, 0, None).await?;
                partition_dict = (0..rows.len() as u32).map(|p| (p, source)).collect();
            } else {
                let p: u32 = partition
                    .parse()
                    .map_err(|_| Fail::Exit(format!("invalid partition: {partition}")))?;
                partition_dict.push((p, source));
            }
        }
        Ok(CheckReplicas {
            partition_dict: Map(partition_dict),
            min_tid,
            max_tid,
        })
    }
}

fn msg(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("None".to_owned(), |v| v.to_string())
}

fn unexpected(b: Body) -> Fail {
    match b {
        Body::Error(e) => Fail::Exit(format!("ERROR: {}: {}", e.code, msg(&e.message))),
        other => Fail::Exit(format!("ERROR: unexpected answer {}", other.name())),
    }
}

fn parse_num(v: Option<&String>, default: u32) -> Res<u32> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| Fail::Exit(format!("invalid number: {s}"))),
    }
}

/// neoctl's `uuid_int`: `S1`, `M1`, `C2`, `A1` → node id.
fn as_node(s: &str) -> Res<NodeId> {
    let bad = || Fail::Exit(format!("invalid node id: {s}"));
    let mut chars = s.chars();
    let t = match chars.next().map(|c| c.to_ascii_uppercase()) {
        Some('S') => NodeType::Storage,
        Some('M') => NodeType::Master,
        Some('C') => NodeType::Client,
        Some('A') => NodeType::Admin,
        _ => return Err(bad()),
    };
    let n: u32 = chars.as_str().parse().map_err(|_| bad())?;
    Ok(NodeId::new(t, n))
}

/// neoctl's `asTID`: `tid:<int>` (Python int literal) or a UNIX time.
fn as_tid(s: &str) -> Res<Tid> {
    let bad = || Fail::Exit(format!("invalid tid: {s}"));
    if s.len() >= 4 && s[..4].eq_ignore_ascii_case("tid:") {
        let v = s[4..].trim().replace('_', "");
        let lower = v.to_ascii_lowercase();
        let n = if let Some(h) = lower.strip_prefix("0x") {
            u64::from_str_radix(h, 16)
        } else if let Some(o) = lower.strip_prefix("0o") {
            u64::from_str_radix(o, 8)
        } else if let Some(b) = lower.strip_prefix("0b") {
            u64::from_str_radix(b, 2)
        } else {
            lower.parse()
        };
        return n.map(Tid).map_err(|_| bad());
    }
    let t: f64 = s.trim().parse().map_err(|_| bad())?;
    Ok(tid_from_time(t))
}

/// neoctl's formatRowList: `%03d | S1 - UP_TO_DATE |...`.
fn format_row_list(min: u32, rows: &[Vec<Cell>]) -> String {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let cells: String = row
                .iter()
                .map(|c| format!(" {} - {} |", c.uuid, c.state))
                .collect();
            format!("{:03} |{cells}", min as usize + i)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Options {
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    cmd: Vec<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut address = "127.0.0.1:9999".to_owned();
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut cmd = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("option {name} needs a value"));
        match a.as_str() {
            "-a" | "--address" => address = value(&a)?,
            "--ca" => ca = Some(value(&a)?),
            "--cert" => cert = Some(value(&a)?),
            "--key" => key = Some(value(&a)?),
            "-l" | "--logfile" => {
                value(&a)?;
            }
            "-h" | "--help" => {
                cmd.clear();
                break;
            }
            _ if a.starts_with("--address=") => address = a["--address=".len()..].to_owned(),
            _ if a.starts_with("-a") && a.len() > 2 => address = a[2..].to_owned(),
            _ => {
                cmd.push(a);
                cmd.extend(args.by_ref());
            }
        }
    }
    let addr =
        neo_server::config::parse_address(&address, Some(9999)).map_err(|e| e.to_string())?;
    let tls = match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Some(
            TlsConfig::from_pem_files(ca.as_ref(), cert.as_ref(), key.as_ref())
                .map_err(|e| e.to_string())?,
        ),
        (None, None, None) => None,
        _ => return Err("To enable encryption, 3 files must be provided: the CA certificate, and the certificate of this node with its private key.".into()),
    };
    Ok(Options { addr, tls, cmd })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("neoctl: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("neoctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ctl = Ctl {
        addr: opts.addr,
        tls: opts.tls,
        conn: None,
    };
    let result = rt.block_on(async {
        let r = ctl.execute(&opts.cmd).await;
        if let Some(c) = ctl.conn.take() {
            c.close().await;
        }
        r
    });
    match result {
        Ok(Some(out)) => {
            // A reader that went away (`neoctl print node | grep -q ...`)
            // is not an error of ours: no panic, nothing more to say.
            use std::io::Write;
            match writeln!(std::io::stdout().lock(), "{out}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("neoctl: writing the answer: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(Fail::Exit(m)) => {
            eprintln!("{m}");
            ExitCode::FAILURE
        }
        Err(Fail::NotReady(m)) => {
            eprintln!("ERROR: {m}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::CellState;

    #[test]
    fn node_ids_like_uuid_int() {
        assert!(matches!(as_node("S1"), Ok(NodeId(1))));
        assert!(matches!(as_node("M1"), Ok(NodeId(-268_435_455))));
        assert!(matches!(as_node("a1"), Ok(NodeId(-805_306_367))));
        assert!(matches!(as_node("C2"), Ok(NodeId(-536_870_910))));
        assert!(as_node("X1").is_err());
        assert!(as_node("S").is_err());
        assert!(as_node("").is_err());
    }

    #[test]
    fn tids_like_as_tid() {
        let tid = |s| match as_tid(s) {
            Ok(t) => t.0,
            Err(_) => panic!("{s} refused"),
        };
        assert_eq!(tid("tid:257684787499560686"), 0x0393_7af2_eeee_eeee);
        assert_eq!(tid("TID:0x3937af2eeeeeeee"), 0x0393_7af2_eeee_eeee);
        assert_eq!(tid("tid:0o17"), 15);
        assert_eq!(tid("1325421296"), 0x0393_7af2_eeee_eeee);
        assert!(as_tid("tid:zz").is_err());
        assert!(as_tid("yesterday").is_err());
    }

    #[test]
    fn row_list_like_format_row_list() {
        let cell = |n, state| Cell {
            uuid: NodeId(n),
            state,
        };
        let rows = vec![
            vec![cell(1, CellState::UpToDate), cell(2, CellState::OutOfDate)],
            vec![],
        ];
        assert_eq!(
            format_row_list(9, &rows),
            "009 | S1 - UP_TO_DATE | S2 - OUT_OF_DATE |\n010 |"
        );
        assert_eq!(py_opt::<u64>(None), "None");
        assert_eq!(py_opt(Some(3)), "3");
    }
}
