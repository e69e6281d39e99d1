//! The node table every role keeps: the nodes of the cluster (type, node
//! id, listening address, state, the master's identification timestamp)
//! and, for the ones we talk to, the connection. Converts from/to NEO's
//! `NodeInfo` tuples (NotifyNodeInformation, AnswerNodeList) and applies
//! NotifyNodeInformation like NEO's `NodeManager.update` (lib/node.py).
//! Also the text of `neoctl print node` (lib/protocol.py `formatNodeList`).

use neo_proto::{Address, NodeId, NodeInfo, NodeState, NodeType};

use crate::runtime::ConnId;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its type.
    pub node_type: NodeType,
    /// Its id, once the master gave one.
    pub nid: Option<NodeId>,
    /// Where it listens (none for clients).
    pub address: Option<Address>,
    /// Its state.
    pub state: NodeState,
    /// When the primary master identified it (seconds since the epoch).
    pub id_timestamp: Option<f64>,
    /// The connection we have with it, if any.
    pub conn: Option<ConnId>,
}

impl Node {
    /// A node of this type and state, without id, address nor connection.
    pub fn new(node_type: NodeType, state: NodeState) -> Node {
        Node {
            node_type,
            nid: None,
            address: None,
            state,
            id_timestamp: None,
            conn: None,
        }
    }

    /// The node from NEO's tuple (no connection).
    pub fn from_info(info: &NodeInfo) -> Node {
        Node {
            node_type: info.node_type,
            nid: info.uuid,
            address: info.address.clone(),
            state: info.state,
            id_timestamp: info.id_timestamp,
            conn: None,
        }
    }

    /// NEO's tuple of this node.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            node_type: self.node_type,
            address: self.address.clone(),
            uuid: self.nid,
            state: self.state,
            id_timestamp: self.id_timestamp,
        }
    }

    /// Whether the node is RUNNING.
    pub fn is_running(&self) -> bool {
        self.state == NodeState::Running
    }

    /// Whether the node is PENDING.
    pub fn is_pending(&self) -> bool {
        self.state == NodeState::Pending
    }

    /// Whether we have a connection with it.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }
}

/// What `NodeTable::update` did to one entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NodeUpdate {
    /// A node we did not know.
    Added(NodeInfo),
    /// A known node changed (the new tuple).
    Changed(NodeInfo),
    /// A node was dropped (state UNKNOWN); its connection, if we had one,
    /// should be closed.
    Removed {
        info: NodeInfo,
        conn: Option<ConnId>,
    },
}

/// The node table.
#[derive(Debug, Clone, Default)]
pub struct NodeTable {
    nodes: Vec<Node>,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> NodeTable {
        NodeTable::default()
    }

    /// Every node, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Every node, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.nodes.iter_mut()
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds a node (replacing one with the same id) and returns it.
    pub fn add(&mut self, node: Node) -> &mut Node {
        if let Some(nid) = node.nid {
            self.nodes.retain(|n| n.nid != Some(nid));
        }
        self.nodes.push(node);
        let last = self.nodes.len() - 1;
        &mut self.nodes[last]
    }

    /// The node with this id.
    pub fn by_nid(&self, nid: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.nid == Some(nid))
    }

    /// The node with this id, mutably.
    pub fn by_nid_mut(&mut self, nid: NodeId) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.nid == Some(nid))
    }

    /// The node listening at this address.
    pub fn by_address(&self, addr: &Address) -> Option<&Node> {
        self.nodes.iter().find(|n| n.address.as_ref() == Some(addr))
    }

    /// The node listening at this address, mutably.
    pub fn by_address_mut(&mut self, addr: &Address) -> Option<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.address.as_ref() == Some(addr))
    }

    /// The node on this connection.
    pub fn by_conn(&self, conn: ConnId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.conn == Some(conn))
    }

    /// The node on this connection, mutably.
    pub fn by_conn_mut(&mut self, conn: ConnId) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.conn == Some(conn))
    }

    /// The nodes of one type.
    pub fn of_type(&self, t: NodeType) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.node_type == t)
    }

    /// The ids of the nodes of one type in one state.
    pub fn nids(&self, t: NodeType, state: NodeState) -> Vec<NodeId> {
        self.of_type(t)
            .filter(|n| n.state == state)
            .filter_map(|n| n.nid)
            .collect()
    }

    /// The state of the node with this id.
    pub fn state(&self, nid: NodeId) -> Option<NodeState> {
        self.by_nid(nid).map(|n| n.state)
    }

    /// Whether the node with this id is RUNNING.
    pub fn is_running(&self, nid: NodeId) -> bool {
        self.state(nid) == Some(NodeState::Running)
    }

    /// Removes the node with this id; returns it.
    pub fn remove(&mut self, nid: NodeId) -> Option<Node> {
        let i = self.nodes.iter().position(|n| n.nid == Some(nid))?;
        Some(self.nodes.remove(i))
    }

    /// Removes the node on this connection; returns it.
    pub fn remove_by_conn(&mut self, conn: ConnId) -> Option<Node> {
        let i = self.nodes.iter().position(|n| n.conn == Some(conn))?;
        Some(self.nodes.remove(i))
    }

    /// Every node as NEO's tuples, optionally of one type (AnswerNodeList).
    pub fn infos(&self, t: Option<NodeType>) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .filter(|n| t.is_none_or(|t| n.node_type == t))
            .map(Node::info)
            .collect()
    }

    /// Applies a NotifyNodeInformation list like NEO: a node is found by
    /// address then id; unknown ones are created (unless UNKNOWN), UNKNOWN
    /// drops a known one, otherwise id, address, state and id_timestamp are
    /// updated. Returns what changed, in order.
    pub fn update(&mut self, node_list: &[NodeInfo]) -> Vec<NodeUpdate> {
        let mut out = Vec::new();
        for info in node_list {
            let by_addr = info.address.as_ref().and_then(|a| {
                self.nodes
                    .iter()
                    .position(|n| n.address.as_ref() == Some(a))
            });
            let by_nid = info
                .uuid
                .and_then(|u| self.nodes.iter().position(|n| n.nid == Some(u)));
            let Some(i) = by_addr.or(by_nid) else {
                if info.state != NodeState::Unknown {
                    self.nodes.push(Node::from_info(info));
                    out.push(NodeUpdate::Added(info.clone()));
                }
                continue;
            };
            if let (Some(a), Some(u)) = (by_addr, by_nid) {
                if a != u {
                    // The id moved to the node at this address.
                    self.nodes[u].nid = None;
                }
            }
            if info.state == NodeState::Unknown {
                let node = self.nodes.remove(i);
                out.push(NodeUpdate::Removed {
                    info: info.clone(),
                    conn: node.conn,
                });
                continue;
            }
            let node = &mut self.nodes[i];
            node.node_type = info.node_type;
            node.nid = info.uuid;
            node.address = info.address.clone();
            node.state = info.state;
            node.id_timestamp = info.id_timestamp;
            out.push(NodeUpdate::Changed(info.clone()));
        }
        out
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` of a UNIX timestamp, as Python's
/// `str(datetime.utcfromtimestamp(t))`.
pub fn format_utc(t: f64) -> String {
    let micros_total = (t * 1e6).round() as i64;
    let secs = micros_total.div_euclid(1_000_000);
    let micros = micros_total.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    s
}

/// NEO's `formatNodeList`: one line per node, sorted (nodes with an id
/// first, by id; then by address), columns `id | TYPE | address | STATE |
/// identification time`, each padded to its widest value.
pub fn format_node_list(node_list: &[NodeInfo], prefix: &str) -> Vec<String> {
    let mut sorted: Vec<&NodeInfo> = node_list.iter().collect();
    sorted.sort_by(|a, b| match (a.uuid, b.uuid) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => {
            let key = |n: &NodeInfo| n.address.as_ref().map(|a| (a.host.clone(), a.port));
            key(a).cmp(&key(b))
        }
    });
    let rows: Vec<[String; 5]> = sorted
        .iter()
        .map(|n| {
            [
                n.uuid.map_or("None".to_owned(), |u| u.to_string()),
                n.node_type.to_string(),
                n.address
                    .as_ref()
                    .map_or("None".to_owned(), |a| a.to_string()),
                n.state.to_string(),
                match n.id_timestamp {
                    Some(t) if t != 0.0 => format_utc(t),
                    Some(_) => "0.0".to_owned(),
                    None => "None".to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(v.len());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = prefix.to_owned();
            for (w, v) in widths.iter().zip(r.iter()) {
                line.push_str(&format!("{v:<w$} | "));
            }
            line.push_str(&r[4]);
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(n: u32, port: u16, state: NodeState) -> NodeInfo {
        NodeInfo {
            node_type: NodeType::Storage,
            address: Some(Address::new("127.0.0.1", port)),
            uuid: Some(NodeId::new(NodeType::Storage, n)),
            state,
            id_timestamp: Some(1_795_542_385.777_528_3),
        }
    }

    #[test]
    fn update_adds_changes_and_drops() {
        let mut t = NodeTable::new();
        let s1 = storage(1, 31100, NodeState::Pending);
        assert_eq!(
            t.update(std::slice::from_ref(&s1)),
            [NodeUpdate::Added(s1.clone())]
        );
        let s1r = storage(1, 31100, NodeState::Running);
        assert_eq!(
            t.update(std::slice::from_ref(&s1r)),
            [NodeUpdate::Changed(s1r.clone())]
        );
        assert!(t.is_running(NodeId(1)));
        t.by_nid_mut(NodeId(1)).unwrap().conn = Some(7);
        assert_eq!(t.by_conn(7).map(|n| n.nid), Some(Some(NodeId(1))));
        let gone = storage(1, 31100, NodeState::Unknown);
        assert_eq!(
            t.update(&[gone.clone(), storage(2, 1, NodeState::Unknown)]),
            [NodeUpdate::Removed {
                info: gone,
                conn: Some(7)
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn update_moves_an_id_to_the_address() {
        let mut t = NodeTable::new();
        t.update(&[
            storage(1, 1000, NodeState::Running),
            storage(2, 2000, NodeState::Down),
        ]);
        // S1 now listens where S2 was.
        t.update(&[storage(1, 2000, NodeState::Running)]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.by_nid(NodeId(1)).and_then(|n| n.address.clone()),
            Some(Address::new("127.0.0.1", 2000))
        );
        assert_eq!(t.nids(NodeType::Storage, NodeState::Running), [NodeId(1)]);
        assert_eq!(t.infos(Some(NodeType::Storage)).len(), 2);
        assert!(t.infos(Some(NodeType::Client)).is_empty());
    }

    #[test]
    fn formats_like_neoctl() {
        assert_eq!(format_utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(
            format_utc(1_795_542_385.777_528_3),
            "2026-11-24 17:46:25.777528"
        );
        assert_eq!(format_utc(951_782_400.5), "2000-02-29 00:00:00.500000");
        let master = NodeInfo {
            node_type: NodeType::Master,
            address: Some(Address::new("127.0.0.1", 31000)),
            uuid: Some(NodeId::new(NodeType::Master, 1)),
            state: NodeState::Running,
            id_timestamp: None,
        };
        let lines = format_node_list(&[storage(1, 31100, NodeState::Running), master], "");
        assert_eq!(
            lines,
            [
                "M1 | MASTER  | 127.0.0.1:31000 | RUNNING | None",
                "S1 | STORAGE | 127.0.0.1:31100 | RUNNING | 2026-11-24 17:46:25.777528",
            ]
        );
    }
}
