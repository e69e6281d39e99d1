//! The partition table, shared by every role: `np` partitions ("offsets"),
//! `nr` replicas, an id (`ptid`, bumped by the master at each change) and,
//! per partition, a row of cells `(storage node id, CellState)`.
//!
//! Also here: conversion from/to the packets' `row_list` (SendPartitionTable,
//! AnswerPartitionTable, AnswerPartitionList) and `cell_list`
//! (NotifyPartitionChanges), NEO's initial layout (`make`, master/pt.py), the
//! outdating of cells of nodes that are gone, the `operational` test, and the
//! text of `neoctl print pt` / the master's log (lib/pt.py `_format`):
//!
//! ```text
//!               10v       20v          <- only when np > 10
//! S1 R U.FOF.U.FOF.U.FOF.U.FOF.U.
//! S2 R .U.FOF.U.FOF.U.FOF.U.FOF.U
//! ```
//!
//! (node id, node state letter, one letter per partition: `U`p-to-date,
//! `O`ut-of-date, `F`eeding, `C`orrupted, `.` no cell).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use fsformat::{Oid, Tid};
use neo_proto::{Cell, CellState, NodeId, NodeState, Offset, Ptid};

/// One change of a cell as NotifyPartitionChanges carries it.
pub type CellChange = (Offset, NodeId, CellState);

/// What can go wrong when changing a partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PtError {
    /// A cell change names a partition the table does not have.
    OffsetOutOfRange { offset: Offset, np: u32 },
    /// An update does not have a newer ptid than the table.
    StalePtid { current: Option<Ptid>, update: Ptid },
    /// `make` was called without storage nodes.
    NoStorage,
    /// `make` was called on a table that already has an id.
    AlreadyMade { ptid: Ptid },
    /// A table must have at least one partition.
    NoPartition,
}

impl fmt::Display for PtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PtError::OffsetOutOfRange { offset, np } => {
                write!(f, "partition {offset} out of range (np = {np})")
            }
            PtError::StalePtid { current, update } => {
                write!(
                    f,
                    "partition table update {update} not newer than {current:?}"
                )
            }
            PtError::NoStorage => f.write_str("no storage node to make a partition table"),
            PtError::AlreadyMade { ptid } => {
                write!(f, "partition table already made (ptid {ptid})")
            }
            PtError::NoPartition => f.write_str("a partition table needs at least 1 partition"),
        }
    }
}

impl std::error::Error for PtError {}

/// NEO's letter for a cell state (`cell_state_prefix_dict`).
pub fn cell_state_letter(state: CellState) -> char {
    match state {
        CellState::UpToDate => 'U',
        CellState::OutOfDate => 'O',
        CellState::Feeding => 'F',
        CellState::Discarded => 'D',
        CellState::Corrupted => 'C',
    }
}

/// NEO's letter for a node state (`node_state_prefix_dict`).
pub fn node_state_letter(state: NodeState) -> char {
    match state {
        NodeState::Running => 'R',
        NodeState::Down => 'D',
        NodeState::Unknown => 'U',
        NodeState::Pending => 'P',
    }
}

/// Whether a cell in this state can serve reads (UP_TO_DATE or FEEDING).
pub fn is_readable(state: CellState) -> bool {
    matches!(state, CellState::UpToDate | CellState::Feeding)
}

/// A partition table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionTable {
    nr: u32,
    ptid: Option<Ptid>,
    rows: Vec<Vec<Cell>>,
}

impl PartitionTable {
    /// An empty table (no id, no cell) of `np` partitions and `nr` replicas.
    pub fn new(np: u32, nr: u32) -> Result<PartitionTable, PtError> {
        if np == 0 {
            return Err(PtError::NoPartition);
        }
        Ok(PartitionTable {
            nr,
            ptid: None,
            rows: vec![Vec::new(); np as usize],
        })
    }

    /// A table from a packet's `(ptid, num_replicas, row_list)`; `np` is the
    /// number of rows. Discarded cells in the list are dropped.
    pub fn from_rows(
        ptid: Option<Ptid>,
        nr: u32,
        row_list: Vec<Vec<Cell>>,
    ) -> Result<PartitionTable, PtError> {
        if row_list.is_empty() {
            return Err(PtError::NoPartition);
        }
        let rows = row_list
            .into_iter()
            .map(|row| {
                let mut out: Vec<Cell> = Vec::with_capacity(row.len());
                for cell in row {
                    if cell.state == CellState::Discarded {
                        continue;
                    }
                    match out.iter_mut().find(|c| c.uuid == cell.uuid) {
                        Some(c) => c.state = cell.state,
                        None => out.push(cell),
                    }
                }
                out
            })
            .collect();
        Ok(PartitionTable { nr, ptid, rows })
    }

    /// Number of partitions.
    pub fn np(&self) -> u32 {
        self.rows.len() as u32
    }

    /// Number of replicas (each partition wants `nr + 1` readable cells).
    pub fn nr(&self) -> u32 {
        self.nr
    }

    /// Sets the number of replicas (the master's `set replicas`).
    pub fn set_nr(&mut self, nr: u32) {
        self.nr = nr;
    }

    /// The table's id, `None` before the table is made.
    pub fn ptid(&self) -> Option<Ptid> {
        self.ptid
    }

    /// Sets the id (the master, after loading a table or changing it).
    pub fn set_ptid(&mut self, ptid: Option<Ptid>) {
        self.ptid = ptid;
    }

    /// Increments the id and returns it (the master, before announcing
    /// changes). A table without id gets 1.
    pub fn next_ptid(&mut self) -> Ptid {
        let id = self.ptid.map_or(1, |p| p + 1);
        self.ptid = Some(id);
        id
    }

    /// Forgets every cell and the id, keeping np and nr.
    pub fn clear(&mut self) {
        self.ptid = None;
        for row in &mut self.rows {
            row.clear();
        }
    }

    /// The partition of an oid or tid: `value % np`.
    pub fn partition(&self, oid_or_tid: u64) -> Offset {
        (oid_or_tid % u64::from(self.np())) as Offset
    }

    /// The partition of an oid.
    pub fn partition_of_oid(&self, oid: Oid) -> Offset {
        self.partition(oid.0)
    }

    /// The partition of a tid.
    pub fn partition_of_tid(&self, tid: Tid) -> Offset {
        self.partition(tid.0)
    }

    /// Every row, in partition order.
    pub fn rows(&self) -> &[Vec<Cell>] {
        &self.rows
    }

    /// The cells of partition `offset` (empty if out of range).
    pub fn row(&self, offset: Offset) -> &[Cell] {
        self.rows.get(offset as usize).map_or(&[], Vec::as_slice)
    }

    /// The rows as packets carry them.
    pub fn row_list(&self) -> Vec<Vec<Cell>> {
        self.rows.clone()
    }

    /// Rows `min..max` (`max` 0 = to the end) keeping, if `uuid` is given,
    /// only that node's cells: what AskPartitionList answers.
    pub fn row_list_filtered(&self, min: u32, max: u32, uuid: Option<NodeId>) -> Vec<Vec<Cell>> {
        let end = if max == 0 {
            self.np()
        } else {
            max.min(self.np())
        };
        (min.min(end)..end)
            .map(|offset| {
                self.row(offset)
                    .iter()
                    .filter(|c| uuid.is_none_or(|u| c.uuid == u))
                    .cloned()
                    .collect()
            })
            .collect()
    }

    /// Every cell as a list of changes (offset, node, state).
    pub fn cell_list(&self) -> Vec<CellChange> {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(o, row)| row.iter().map(move |c| (o as Offset, c.uuid, c.state)))
            .collect()
    }

    /// The state of `uuid`'s cell in partition `offset`.
    pub fn cell(&self, offset: Offset, uuid: NodeId) -> Option<CellState> {
        self.row(offset)
            .iter()
            .find(|c| c.uuid == uuid)
            .map(|c| c.state)
    }

    /// The nodes with a readable cell (UP_TO_DATE or FEEDING) in `offset`.
    pub fn readable_cells(&self, offset: Offset) -> Vec<NodeId> {
        self.row(offset)
            .iter()
            .filter(|c| is_readable(c.state))
            .map(|c| c.uuid)
            .collect()
    }

    /// The partitions where `uuid` has a readable cell.
    pub fn readable_offsets(&self, uuid: NodeId) -> Vec<Offset> {
        self.offsets_where(uuid, is_readable)
    }

    /// The partitions where `uuid` has a cell, whatever its state.
    pub fn assigned_offsets(&self, uuid: NodeId) -> Vec<Offset> {
        self.offsets_where(uuid, |_| true)
    }

    /// The partitions where `uuid` has an OUT_OF_DATE cell.
    pub fn outdated_offsets(&self, uuid: NodeId) -> Vec<Offset> {
        self.offsets_where(uuid, |s| s == CellState::OutOfDate)
    }

    fn offsets_where(&self, uuid: NodeId, f: impl Fn(CellState) -> bool) -> Vec<Offset> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.iter().any(|c| c.uuid == uuid && f(c.state)))
            .map(|(o, _)| o as Offset)
            .collect()
    }

    /// Whether `uuid` has a cell in the partition of `oid`.
    pub fn is_assigned(&self, oid: Oid, uuid: NodeId) -> bool {
        self.cell(self.partition_of_oid(oid), uuid).is_some()
    }

    /// Every node having at least one cell.
    pub fn node_ids(&self) -> BTreeSet<NodeId> {
        self.rows.iter().flatten().map(|c| c.uuid).collect()
    }

    /// Whether every partition has at least one cell.
    pub fn filled(&self) -> bool {
        self.rows.iter().all(|r| !r.is_empty())
    }

    /// Whether the cluster can serve: every partition has a readable cell on
    /// a node for which `is_running` holds.
    pub fn operational(&self, is_running: impl Fn(NodeId) -> bool) -> bool {
        self.filled()
            && self.rows.iter().all(|row| {
                row.iter()
                    .any(|c| is_readable(c.state) && is_running(c.uuid))
            })
    }

    /// Sets one cell; DISCARDED removes it.
    pub fn set_cell(
        &mut self,
        offset: Offset,
        uuid: NodeId,
        state: CellState,
    ) -> Result<(), PtError> {
        let np = self.np();
        let row = self
            .rows
            .get_mut(offset as usize)
            .ok_or(PtError::OffsetOutOfRange { offset, np })?;
        let pos = row.iter().position(|c| c.uuid == uuid);
        match (pos, state) {
            (Some(i), CellState::Discarded) => {
                row.remove(i);
            }
            (None, CellState::Discarded) => {}
            (Some(i), _) => row[i].state = state,
            (None, _) => row.push(Cell { uuid, state }),
        }
        Ok(())
    }

    /// Applies NotifyPartitionChanges: `ptid` must be newer than ours; on
    /// error nothing is changed.
    pub fn apply_changes(
        &mut self,
        ptid: Ptid,
        nr: u32,
        cell_list: &[CellChange],
    ) -> Result<(), PtError> {
        if self.ptid.is_some_and(|p| p >= ptid) {
            return Err(PtError::StalePtid {
                current: self.ptid,
                update: ptid,
            });
        }
        if let Some(&(offset, _, _)) = cell_list.iter().find(|c| c.0 >= self.np()) {
            return Err(PtError::OffsetOutOfRange {
                offset,
                np: self.np(),
            });
        }
        for &(offset, uuid, state) in cell_list {
            self.set_cell(offset, uuid, state)?;
        }
        self.ptid = Some(ptid);
        self.nr = nr;
        Ok(())
    }

    /// NEO's initial layout (master/pt.py `make` + `tweak` on an empty
    /// table): the storages sorted by node id, partition `o` assigned
    /// round-robin `min(nr + 1, n)` times, the resulting per-node offset
    /// sets sorted (biggest first, then lexicographically) and given in
    /// that order to the nodes. Every cell is UP_TO_DATE and the id becomes
    /// one. Returns the cells as changes. (Topology, i.e. `devpath`, is
    /// not taken into account.)
    pub fn make(&mut self, storages: &[NodeId]) -> Result<Vec<CellChange>, PtError> {
        if let Some(ptid) = self.ptid {
            return Err(PtError::AlreadyMade { ptid });
        }
        let nodes: BTreeSet<NodeId> = storages.iter().copied().collect();
        if nodes.is_empty() {
            return Err(PtError::NoStorage);
        }
        let nodes: Vec<NodeId> = nodes.into_iter().collect();
        let n = nodes.len();
        let repeats = (self.nr as usize + 1).min(n);
        let mut options: Vec<Vec<Offset>> = vec![Vec::new(); n];
        let mut i = 0;
        for offset in 0..self.np() {
            for _ in 0..repeats {
                options[i % n].push(offset);
                i += 1;
            }
        }
        options.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        for row in &mut self.rows {
            row.clear();
        }
        for (node, option) in nodes.iter().zip(&options) {
            for &offset in option {
                self.rows[offset as usize].push(Cell {
                    uuid: *node,
                    state: CellState::UpToDate,
                });
            }
        }
        self.ptid = Some(1);
        Ok(self.cell_list())
    }

    /// NEO's `tweak` (master/pt.py) without topology: reassigns the cells
    /// so that the nodes of `keep` (the others are dropped) hold the same
    /// number of cells, off by one, in the pattern of [`Self::make`],
    /// choosing for each node the pattern that moves the least data. New
    /// cells are OUT_OF_DATE (UP_TO_DATE if the table has no id yet); cells
    /// to drop stay FEEDING as long as the partition lacks readable cells,
    /// otherwise they are discarded. Returns the changes, in NEO's order.
    pub fn tweak(&mut self, keep: &[NodeId]) -> Result<Vec<CellChange>, PtError> {
        let nodes: Vec<NodeId> = keep
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if nodes.is_empty() {
            return Err(PtError::NoStorage);
        }
        let np = self.np();
        let n = nodes.len();
        let repeats = (self.nr as usize + 1).min(n);
        let mut patterns: Vec<Vec<Offset>> = vec![Vec::new(); n];
        let mut i = 0;
        for offset in 0..np {
            for _ in 0..repeats {
                patterns[i % n].push(offset);
                i += 1;
            }
        }
        // Distinct options (biggest first, then lexicographic) and counts.
        let mut counts: BTreeMap<Vec<Offset>, usize> = BTreeMap::new();
        for p in patterns {
            *counts.entry(p).or_insert(0) += 1;
        }
        let mut options: Vec<Vec<Offset>> = counts.keys().cloned().collect();
        options.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let mut count: Vec<usize> = options.iter().map(|o| counts[o]).collect();
        // Each node's cells: offset -> state.
        let cells_of = |node: NodeId| -> BTreeMap<Offset, CellState> {
            self.rows
                .iter()
                .enumerate()
                .filter_map(|(o, row)| {
                    row.iter()
                        .find(|c| c.uuid == node)
                        .map(|c| (o as Offset, c.state))
                })
                .collect()
        };
        let node_cells: Vec<BTreeMap<Offset, CellState>> =
            nodes.iter().map(|n| cells_of(*n)).collect();

        // Strategy 1: every node keeps its non-feeding cells.
        let mut strategies: Vec<NodeOptions> = Vec::new();
        let first: Option<NodeOptions> = node_cells
            .iter()
            .enumerate()
            .map(|(i, cells)| {
                let own: Vec<Offset> = cells
                    .iter()
                    .filter(|(_, s)| **s != CellState::Feeding)
                    .map(|(o, _)| *o)
                    .collect();
                let fit: Vec<usize> = (0..options.len())
                    .filter(|x| own.iter().all(|o| options[*x].contains(o)))
                    .collect();
                (!fit.is_empty()).then_some((i, fit))
            })
            .collect();
        strategies.extend(first);
        // Strategy 2: nodes whose best and worst choices differ most first.
        let mut second: Vec<((i64, i64), usize, Vec<usize>)> = Vec::new();
        for (i, cells) in node_cells.iter().enumerate() {
            let mut costs: Vec<((usize, usize), usize)> = (0..options.len())
                .map(|x| {
                    let mut discard = (0, 0);
                    for (o, s) in cells {
                        if !options[x].contains(o) {
                            if is_readable(*s) {
                                discard.0 += 1;
                            } else {
                                discard.1 += 1;
                            }
                        }
                    }
                    (discard, x)
                })
                .collect();
            costs.sort();
            let (min, max) = (costs[0].0, costs[costs.len() - 1].0);
            let key = (min.0 as i64 - max.0 as i64, min.1 as i64 - max.1 as i64);
            second.push((key, i, costs.into_iter().map(|c| c.1).collect()));
        }
        second.sort();
        strategies.push(second.into_iter().map(|(_, i, o)| (i, o)).collect());

        let mut solution: Option<(NodeOptions, Vec<usize>)> = None;
        for order in strategies {
            if let Some(chosen) = assign(&order, &mut count) {
                solution = Some((order, chosen));
                break;
            }
        }
        let Some((order, chosen)) = solution else {
            return Err(PtError::NoStorage);
        };

        let new_state = if self.ptid.is_none() {
            self.ptid = Some(1);
            CellState::UpToDate
        } else {
            CellState::OutOfDate
        };
        let mut changes = Vec::new();
        let mut outdated = vec![repeats; np as usize];
        let mut discard: Vec<Vec<NodeId>> = vec![Vec::new(); np as usize];
        for ((node_index, _), x) in order.iter().zip(&chosen) {
            let node = nodes[*node_index];
            let mut cells = node_cells[*node_index].clone();
            for &offset in &options[*x] {
                match cells.remove(&offset) {
                    None => {
                        self.rows[offset as usize].push(Cell {
                            uuid: node,
                            state: new_state,
                        });
                        changes.push((offset, node, new_state));
                    }
                    Some(state) if is_readable(state) => {
                        if state == CellState::Feeding {
                            self.set_cell(offset, node, CellState::UpToDate)?;
                            changes.push((offset, node, CellState::UpToDate));
                        }
                        outdated[offset as usize] -= 1;
                    }
                    Some(_) => {}
                }
            }
            for offset in cells.keys() {
                discard[*offset as usize].push(node);
            }
        }
        for (offset, row) in self.rows.iter().enumerate() {
            for c in row {
                if !nodes.contains(&c.uuid) {
                    discard[offset].push(c.uuid);
                }
            }
        }
        for (offset, list) in discard.into_iter().enumerate() {
            let offset = offset as Offset;
            let mut left = outdated[offset as usize];
            for node in list {
                let state = self.cell(offset, node).unwrap_or(CellState::Discarded);
                if left > 0 && is_readable(state) {
                    left -= 1;
                    if state == CellState::Feeding {
                        continue;
                    }
                    self.set_cell(offset, node, CellState::Feeding)?;
                    changes.push((offset, node, CellState::Feeding));
                } else {
                    self.set_cell(offset, node, CellState::Discarded)?;
                    changes.push((offset, node, CellState::Discarded));
                }
            }
        }
        Ok(changes)
    }

    /// Outdates the readable cells of nodes that are not running (master/pt.py
    /// `outdate`): FEEDING cells are discarded, UP_TO_DATE ones become
    /// OUT_OF_DATE — except, in a partition no running node can serve any
    /// more, the cells of `lost` (the node that just went down), so that the
    /// cluster can restart from it. Returns the changes (the caller bumps
    /// the ptid and broadcasts them if not empty).
    pub fn outdate(
        &mut self,
        lost: Option<NodeId>,
        is_running: impl Fn(NodeId) -> bool,
    ) -> Vec<CellChange> {
        let mut changes = Vec::new();
        for (offset, row) in self.rows.iter_mut().enumerate() {
            let served = row
                .iter()
                .any(|c| is_readable(c.state) && is_running(c.uuid));
            let keep = if served { None } else { lost };
            let mut i = 0;
            while i < row.len() {
                let c = row[i].clone();
                if is_readable(c.state) && !is_running(c.uuid) && Some(c.uuid) != keep {
                    if c.state == CellState::Feeding {
                        row.remove(i);
                        changes.push((offset as Offset, c.uuid, CellState::Discarded));
                        continue;
                    }
                    row[i].state = CellState::OutOfDate;
                    changes.push((offset as Offset, c.uuid, CellState::OutOfDate));
                }
                i += 1;
            }
        }
        changes
    }

    /// The lines of NEO's `_format` without the `pt: ` prefix (what
    /// `neoctl print pt` shows): one line per node having cells plus the
    /// nodes of `extra` (neoctl adds the running storages), sorted by node
    /// id, each with the state `node_state` gives (UNKNOWN if `None`).
    pub fn format_lines(
        &self,
        node_state: impl Fn(NodeId) -> Option<NodeState>,
        extra: &[NodeId],
    ) -> Vec<String> {
        let np = self.rows.len();
        let mut nodes: BTreeMap<NodeId, Vec<u8>> = BTreeMap::new();
        for id in extra {
            nodes.entry(*id).or_insert_with(|| vec![b'.'; np]);
        }
        for (offset, row) in self.rows.iter().enumerate() {
            for c in row {
                let line = nodes.entry(c.uuid).or_insert_with(|| vec![b'.'; np]);
                line[offset] = cell_state_letter(c.state) as u8;
            }
        }
        let Some(last) = nodes.keys().next_back() else {
            return Vec::new();
        };
        let width = last.to_string().len();
        let mut out = Vec::with_capacity(nodes.len() + 1);
        if np > 10 {
            let mut head = " ".repeat(4 + width);
            for x in (10..np).step_by(10) {
                head.push_str(&format!("{x:>9}v"));
            }
            out.push(head);
        }
        for (id, line) in nodes {
            let state = node_state(id).unwrap_or(NodeState::Unknown);
            out.push(format!(
                "{:<width$} {} {}",
                id.to_string(),
                node_state_letter(state),
                String::from_utf8_lossy(&line)
            ));
        }
        out
    }

    /// `format_lines` joined with newlines, each line prefixed with `pt: `
    /// like in NEO's logs.
    pub fn format_log(&self, node_state: impl Fn(NodeId) -> Option<NodeState>) -> String {
        self.format_lines(node_state, &[])
            .iter()
            .map(|l| format!("pt: {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Nodes (by index) with their options (by index), in search order.
type NodeOptions = Vec<(usize, Vec<usize>)>;

/// Backtracking over nodes (in `order`, each with its options by
/// preference): one option per node, each option used at most `count`
/// times. Returns the chosen option of each node.
fn assign(order: &[(usize, Vec<usize>)], count: &mut [usize]) -> Option<Vec<usize>> {
    // stack of (index into the node's options list)
    let mut chosen: Vec<usize> = Vec::new();
    let mut cursor: Vec<usize> = vec![0];
    let mut budget = 1_000_000u32;
    while !cursor.is_empty() {
        budget = budget.checked_sub(1)?;
        let depth = cursor.len() - 1;
        if depth == order.len() {
            return Some(chosen);
        }
        let opts = &order[depth].1;
        let c = cursor[depth];
        if c >= opts.len() {
            cursor.pop();
            if let Some(x) = chosen.pop() {
                count[x] += 1;
                if let Some(last) = cursor.last_mut() {
                    *last += 1;
                }
            }
            continue;
        }
        let x = opts[c];
        if count[x] > 0 {
            count[x] -= 1;
            chosen.push(x);
            cursor.push(0);
        } else {
            cursor[depth] += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::NodeType;

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    fn layout(pt: &PartitionTable) -> Vec<String> {
        let nodes = pt.node_ids();
        pt.rows()
            .iter()
            .map(|row| {
                nodes
                    .iter()
                    .map(|n| {
                        row.iter()
                            .find(|c| c.uuid == *n)
                            .map_or('.', |c| cell_state_letter(c.state))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn make_matches_neo_doc_example() {
        // master/pt.py tweak's docstring: np=10, nr=1, 5 nodes.
        let mut pt = PartitionTable::new(10, 1).unwrap();
        let changes = pt.make(&[s(5), s(3), s(1), s(2), s(4)]).unwrap();
        assert_eq!(changes.len(), 20);
        assert_eq!(pt.ptid(), Some(1));
        assert_eq!(
            layout(&pt),
            [
                "UU...", "..UU.", "U...U", ".UU..", "...UU", "UU...", "..UU.", "U...U", ".UU..",
                "...UU"
            ]
        );
        assert!(pt.operational(|_| true));
        assert!(!pt.operational(|n| n != s(1) && n != s(2)));
        assert!(pt.operational(|n| n != s(1)));
    }

    #[test]
    fn make_one_storage_like_bootstrap() {
        let mut pt = PartitionTable::new(4, 0).unwrap();
        pt.make(&[s(1)]).unwrap();
        let row = vec![Cell {
            uuid: s(1),
            state: CellState::UpToDate,
        }];
        assert_eq!(
            pt.row_list(),
            vec![row.clone(), row.clone(), row.clone(), row]
        );
        assert!(matches!(
            pt.make(&[s(1)]),
            Err(PtError::AlreadyMade { ptid: 1 })
        ));
        let mut empty = PartitionTable::new(4, 0).unwrap();
        assert_eq!(empty.make(&[]), Err(PtError::NoStorage));
        assert!(!empty.operational(|_| true));
    }

    #[test]
    fn make_uneven_np3_nr1_two_nodes() {
        let mut pt = PartitionTable::new(3, 1).unwrap();
        pt.make(&[s(1), s(2)]).unwrap();
        assert_eq!(layout(&pt), ["UU", "UU", "UU"]);
        let mut pt = PartitionTable::new(3, 0).unwrap();
        pt.make(&[s(1), s(2)]).unwrap();
        // options [0, 2] and [1]: the longest first.
        assert_eq!(layout(&pt), ["U.", ".U", "U."]);
    }

    #[test]
    fn partition_and_lookups() {
        let mut pt = PartitionTable::new(4, 0).unwrap();
        pt.make(&[s(1), s(2)]).unwrap();
        assert_eq!(pt.partition_of_oid(Oid(7)), 3);
        assert_eq!(pt.partition_of_tid(Tid(8)), 0);
        assert_eq!(pt.readable_offsets(s(1)), [0, 2]);
        assert_eq!(pt.readable_cells(1), [s(2)]);
        assert!(pt.is_assigned(Oid(5), s(2)));
        assert!(!pt.is_assigned(Oid(5), s(1)));
        assert_eq!(pt.row(9), &[]);
        assert_eq!(pt.row_list_filtered(1, 3, Some(s(2))).len(), 2);
        assert_eq!(pt.row_list_filtered(0, 0, Some(s(2)))[0], vec![]);
    }

    #[test]
    fn apply_changes_checks_ptid_and_offsets() {
        let mut pt = PartitionTable::new(2, 0).unwrap();
        pt.make(&[s(1)]).unwrap();
        let bad = pt.apply_changes(1, 0, &[(0, s(2), CellState::OutOfDate)]);
        assert!(matches!(bad, Err(PtError::StalePtid { .. })));
        let bad = pt.apply_changes(2, 0, &[(5, s(2), CellState::OutOfDate)]);
        assert!(matches!(
            bad,
            Err(PtError::OffsetOutOfRange { offset: 5, np: 2 })
        ));
        assert_eq!(pt.ptid(), Some(1));
        pt.apply_changes(
            2,
            1,
            &[
                (0, s(2), CellState::OutOfDate),
                (1, s(1), CellState::Discarded),
                (1, s(2), CellState::UpToDate),
            ],
        )
        .unwrap();
        assert_eq!((pt.ptid(), pt.nr()), (Some(2), 1));
        assert_eq!(layout(&pt), ["UO", ".U"]);
        assert_eq!(pt.outdated_offsets(s(2)), [0]);
        let copy = PartitionTable::from_rows(pt.ptid(), pt.nr(), pt.row_list()).unwrap();
        assert_eq!(copy, pt);
    }

    #[test]
    fn outdate_keeps_last_copy_of_lost_node() {
        let mut pt = PartitionTable::new(2, 1).unwrap();
        pt.make(&[s(1), s(2)]).unwrap();
        let changes = pt.outdate(Some(s(2)), |n| n == s(1));
        assert_eq!(
            changes,
            [
                (0, s(2), CellState::OutOfDate),
                (1, s(2), CellState::OutOfDate)
            ]
        );
        // S1 down too: it was the last to serve, it stays readable.
        let changes = pt.outdate(Some(s(1)), |_| false);
        assert!(changes.is_empty());
        assert!(pt.operational(|n| n == s(1)));
    }

    #[test]
    fn format_like_neo() {
        let mut pt = PartitionTable::new(4, 0).unwrap();
        pt.make(&[s(1)]).unwrap();
        let state = |_| Some(NodeState::Running);
        assert_eq!(pt.format_lines(state, &[]), ["S1 R UUUU"]);
        assert_eq!(pt.format_log(state), "pt: S1 R UUUU");
        let empty = PartitionTable::new(4, 0).unwrap();
        assert!(empty.format_lines(state, &[]).is_empty());
        assert_eq!(
            empty.format_lines(|_| Some(NodeState::Pending), &[s(1)]),
            ["S1 P ...."]
        );

        // the docstring of lib/pt.py _format (np=48, nr=0).
        let mut rows = vec![Vec::new(); 48];
        let pattern = ["U.FOF.", ".U.FOF", "..O..O"];
        for (n, p) in pattern.iter().enumerate() {
            for (o, ch) in p.chars().cycle().take(48).enumerate() {
                let state = match ch {
                    'U' => CellState::UpToDate,
                    'F' => CellState::Feeding,
                    'O' => CellState::OutOfDate,
                    _ => continue,
                };
                rows[o].push(Cell {
                    uuid: s(n as u32 + 1),
                    state,
                });
            }
        }
        let pt = PartitionTable::from_rows(Some(7), 0, rows).unwrap();
        let lines = pt.format_lines(state, &[]);
        assert_eq!(
            lines,
            [
                "             10v       20v       30v       40v",
                "S1 R U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.",
                "S2 R .U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF.U.FOF",
                "S3 R ..O..O..O..O..O..O..O..O..O..O..O..O..O..O..O..O",
            ]
        );
    }

    #[test]
    fn tweak_like_conversation_05() {
        // np=4, nr=0, S1 holds everything, S2 added: 05-storage-join, line 72.
        let mut pt = PartitionTable::new(4, 0).unwrap();
        pt.make(&[s(1)]).unwrap();
        let changes = pt.tweak(&[s(1), s(2)]).unwrap();
        assert_eq!(
            changes,
            [
                (1, s(2), CellState::OutOfDate),
                (3, s(2), CellState::OutOfDate),
                (1, s(1), CellState::Feeding),
                (3, s(1), CellState::Feeding),
            ]
        );
        assert_eq!(layout(&pt), ["U.", "FO", "U.", "FO"]);
        // Replication done, feeding cells dropped, then nr=1 (line 416).
        for o in [1, 3] {
            pt.set_cell(o, s(2), CellState::UpToDate).unwrap();
            pt.set_cell(o, s(1), CellState::Discarded).unwrap();
        }
        pt.set_nr(1);
        let changes = pt.tweak(&[s(1), s(2)]).unwrap();
        assert_eq!(
            changes,
            [
                (1, s(1), CellState::OutOfDate),
                (3, s(1), CellState::OutOfDate),
                (0, s(2), CellState::OutOfDate),
                (2, s(2), CellState::OutOfDate),
            ]
        );
        // A second tweak changes nothing.
        assert!(pt.tweak(&[s(1), s(2)]).unwrap().is_empty());
        assert_eq!(pt.tweak(&[]), Err(PtError::NoStorage));
    }

    #[test]
    fn tweak_on_empty_table_is_make() {
        let mut a = PartitionTable::new(10, 1).unwrap();
        a.make(&[s(1), s(2), s(3), s(4), s(5)]).unwrap();
        let mut b = PartitionTable::new(10, 1).unwrap();
        b.tweak(&[s(1), s(2), s(3), s(4), s(5)]).unwrap();
        assert_eq!(layout(&a), layout(&b));
        assert_eq!(b.ptid(), Some(1));
    }

    /// Replication finished: OUT_OF_DATE cells become readable, FEEDING
    /// ones go away (what the master does on NotifyReplicationDone).
    fn replicate_all(pt: &mut PartitionTable) {
        for (offset, uuid, state) in pt.cell_list() {
            match state {
                CellState::OutOfDate => pt.set_cell(offset, uuid, CellState::UpToDate).unwrap(),
                CellState::Feeding => pt.set_cell(offset, uuid, CellState::Discarded).unwrap(),
                _ => {}
            }
        }
    }

    #[test]
    fn tweak_keeps_tables_operational_and_balanced() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let np = 1 + rand(12) as u32;
            let nr = rand(3) as u32;
            let mut nodes: Vec<NodeId> = (1..=1 + rand(4) as u32).map(s).collect();
            let mut pt = PartitionTable::new(np, nr).unwrap();
            pt.make(&nodes).unwrap();
            let mut next = nodes.len() as u32 + 1;
            for _ in 0..6 {
                // Add a node or drop one, then tweak.
                if nodes.len() == 1 || rand(2) == 0 {
                    nodes.push(s(next));
                    next += 1;
                } else {
                    let i = rand(nodes.len() as u64) as usize;
                    nodes.remove(i);
                }
                pt.tweak(&nodes).unwrap();
                assert!(pt.operational(|_| true), "{pt:?}");
                replicate_all(&mut pt);
                let repeats = (nr as usize + 1).min(nodes.len());
                for row in pt.rows() {
                    assert_eq!(row.len(), repeats, "{pt:?}");
                    assert!(row.iter().all(|c| nodes.contains(&c.uuid)));
                }
                let total = np as usize * repeats;
                for n in &nodes {
                    let count = pt.assigned_offsets(*n).len();
                    let (lo, hi) = (total / nodes.len(), total.div_ceil(nodes.len()));
                    assert!((lo..=hi).contains(&count), "{n}: {count} {pt:?}");
                }
                // Stable: a second tweak changes nothing.
                assert!(pt.tweak(&nodes).unwrap().is_empty(), "{pt:?}");
            }
        }
    }
}
