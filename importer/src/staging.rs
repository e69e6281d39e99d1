//! Several sources merged at mountpoints, for the live [`Importer`]: the
//! merged database is first written as one FileStorage (the *staging
//! file*), which the Importer then serves and imports like a single
//! source.
//!
//! NEO's Importer keeps one iterator per source and merges them on the
//! fly, remapping oids and repickling at every read. Here the merge is done
//! once, at the first open: transactions of all sources in tid order (as
//! NEO, by [`MountLayout`], see [`mount`](crate::mount)), each record at
//! its destination oid with its pickle rewritten, backpointers pointing to
//! the same revision in the staging file. Every read before the import
//! and the import itself then see exactly what NEO's would (the merged
//! oids and pickles), with the single-source code paths. The cost: the
//! staging file takes about the size of the sources, and writing it takes
//! one sequential copy (fsformat's writer, one fsync).
//!
//! Crash safety and resumption: the staging file is written to
//! `PATH.tmp`, synced, then renamed to `PATH`; only then is the layout
//! recorded in the destination's `config` table (key [`KEY_LAYOUT`], in
//! the same commit as the import bounds), so a restart either finds the
//! layout and its complete staging file, or rebuilds the file from
//! scratch (the build is deterministic). Once recorded, the layout is
//! what counts, like NEO's pickled `zodb` state: later edits of the
//! mountpoints in `importer.conf` are ignored with a warning.
//!
//! Transactions of several sources with the same tid are merged into one
//! with the metadata of the first by shift, as NEO does. Writeback needs a
//! single source (as NEO).
//!
//! The recorded text (`importer_layout`):
//!
//! ```text
//! merged 1                       # format version
//! db SECTION SHIFT NEXT_OID      # one line per source, by shift
//! path /abs/path/importer.conf.merged.fs   # the staging file (last line)
//! ```

use std::path::{Path, PathBuf};

use fsformat::{Magic, Oid, Payload, SyncMode, TxnStatus, Writer};

use crate::config::ImporterConfig;
use crate::error::ImportError;
use crate::mount::MountLayout;
use crate::source::Source;

/// `config` key: the merged layout and the staging file (see the module
/// documentation).
pub const KEY_LAYOUT: &str = "importer_layout";

/// The default staging file of `config`: `importer.conf.merged.fs` next
/// to it.
pub fn default_staging_path(config: &ImporterConfig) -> PathBuf {
    let mut p = config.path.clone().into_os_string();
    p.push(".merged.fs");
    PathBuf::from(p)
}

/// What [`build`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The oid layout.
    pub layout: MountLayout,
    /// The staging file.
    pub path: PathBuf,
    /// Transactions written.
    pub txns: u64,
    /// Records written.
    pub records: u64,
}

impl Staged {
    /// The text recorded under [`KEY_LAYOUT`].
    pub fn layout_text(&self) -> String {
        let mut s = String::from("merged 1\n");
        for d in self.layout.dbs() {
            s.push_str(&format!("db {} {} {}\n", d.section, d.shift, d.next_oid));
        }
        s.push_str(&format!("path {}", self.path.display()));
        s
    }
}

/// The staging file named by a recorded layout text.
pub fn recorded_path(text: &str) -> Result<PathBuf, ImportError> {
    let bad = || ImportError::Unsupported {
        what: format!("config.{KEY_LAYOUT} is not a layout this version reads: {text:?}"),
    };
    if text.lines().next() != Some("merged 1") {
        return Err(bad());
    }
    text.lines()
        .last()
        .and_then(|l| l.strip_prefix("path "))
        .map(PathBuf::from)
        .ok_or_else(bad)
}

/// `(old offset, new offset)` of the records of one source, by old offset.
type PosMap = Vec<(u64, u64)>;

fn new_pos(map: &PosMap, old: u64) -> Option<u64> {
    map.binary_search_by_key(&old, |p| p.0)
        .ok()
        .map(|i| map[i].1)
}

/// What merging `config`'s sources needs: the opened sources, the oid
/// layout, and every transaction as `(tid, index in layout.dbs(), index
/// in that source's txns)` sorted by tid, then by shift (NEO's
/// ZODBIterator order). Shared by [`build`] and `import_merged`.
pub(crate) struct MergePlan {
    pub sources: Vec<Source>,
    pub layout: MountLayout,
    pub order: Vec<(fsformat::Tid, usize, usize)>,
}

impl MergePlan {
    pub fn new(config: &ImporterConfig) -> Result<MergePlan, ImportError> {
        let mut sources = Vec::with_capacity(config.sources.len());
        for s in &config.sources {
            sources.push(Source::open(&s.storage.path, None)?);
        }
        let layout = MountLayout::new(config, &mut |i| sources[i].loid().0 + 1).map_err(|e| {
            ImportError::Unsupported {
                what: format!("{}: {e}", config.path.display()),
            }
        })?;
        let mut order = Vec::new();
        for (d, m) in layout.dbs().iter().enumerate() {
            for (i, t) in sources[m.source].txns().iter().enumerate() {
                order.push((t.tid, d, i));
            }
        }
        order.sort_unstable();
        Ok(MergePlan {
            sources,
            layout,
            order,
        })
    }
}

/// Writes the merged database of `config`'s sources to `path` (through
/// `path.tmp`, renamed once synced).
pub fn build(config: &ImporterConfig, path: &Path) -> Result<Staged, ImportError> {
    let MergePlan {
        sources,
        layout,
        order,
    } = MergePlan::new(config)?;
    let mut tmp = path.to_owned().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let werr = |error| ImportError::Source {
        path: tmp.clone(),
        error,
    };
    for p in [&tmp, &fsformat::sidecar_path(&tmp)] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ImportError::Unsupported {
                    what: format!("cannot remove {}: {e}", p.display()),
                })
            }
        }
    }
    let magic = sources[layout.dbs()[0].source].storage().datafs().magic();
    let magic = if magic == Magic::Fs21 {
        Magic::Fs21
    } else {
        Magic::Fs30
    };
    let mut w = Writer::create(&tmp, magic).map_err(werr)?;
    w.set_sync(SyncMode::OnFinish);
    let mut maps: Vec<PosMap> = vec![Vec::new(); layout.dbs().len()];
    let mut records = 0u64;
    let mut txns = 0u64;
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        let (tid, d0, i0) = group[0];
        // Transactions of several sources with the same tid become one,
        // with the metadata of the first (NEO keeps it too).
        let head = {
            let src = &sources[layout.dbs()[d0].source];
            src.txn_at(i0).map_err(|e| src.err(e))?.header
        };
        let status = TxnStatus::from_byte(head.status).unwrap_or(TxnStatus::Committed);
        let mut tw = w
            .begin(tid, status, head.user, head.description, head.extension)
            .map_err(werr)?;
        let mut written: Vec<(usize, u64, u64)> = Vec::new();
        for &(_, d, i) in group {
            let src = &sources[layout.dbs()[d].source];
            let t = src.txn_at(i).map_err(|e| src.err(e))?;
            for r in t.records() {
                let r = r.map_err(|e| src.err(e))?;
                let oid = Oid(layout.new_oid(d, r.oid.0));
                let pos = match r.payload {
                    Payload::Data(data) => {
                        let pickle =
                            layout
                                .repickle(d, data)
                                .map_err(|e| ImportError::SourceDamaged {
                                    path: src.path().to_owned(),
                                    pos: r.pos,
                                    reason: format!("pickle of oid {}: {e}", r.oid),
                                })?;
                        tw.store(oid, &pickle)
                    }
                    Payload::Back(0) => tw.store_back(oid, 0),
                    Payload::Back(b) => {
                        let Some(nb) = new_pos(&maps[d], b) else {
                            return Err(ImportError::MissingData {
                                path: src.path().to_owned(),
                                tid,
                                reason: format!(
                                    "the record of oid {} at {} points to offset {b}, \
                                     not a record of an earlier transaction",
                                    r.oid, r.pos
                                ),
                            });
                        };
                        tw.store_back(oid, nb)
                    }
                }
                .map_err(werr)?;
                written.push((d, r.pos, pos));
            }
        }
        tw.commit().map_err(werr)?;
        records += written.len() as u64;
        txns += 1;
        for (d, old, new) in written {
            maps[d].push((old, new));
        }
    }
    w.finish().map_err(werr)?;
    let mut lock = tmp.clone().into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);
    std::fs::rename(&tmp, path).map_err(|e| ImportError::Unsupported {
        what: format!("cannot rename {} to {}: {e}", tmp.display(), path.display()),
    })?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    log::info!(
        "merged {} sources into {}: {} transactions, {records} records",
        layout.dbs().len(),
        path.display(),
        txns
    );
    Ok(Staged {
        layout,
        path: path.to_owned(),
        txns,
        records,
    })
}

/// The staging file to import for `config` (several sources) into a
/// destination whose `config.importer_layout` is `recorded`: the recorded
/// one if any (the configuration's mountpoints are then ignored), else a
/// new one built at [`default_staging_path`]; with the layout text to
/// record when new.
pub(crate) fn staging_for(
    config: &ImporterConfig,
    recorded: Option<&str>,
) -> Result<(PathBuf, Option<String>), ImportError> {
    if let Some(text) = recorded {
        let path = recorded_path(text)?;
        if !path.exists() {
            return Err(ImportError::SourceChanged {
                path,
                reason: "the staging file of the merged sources is gone".into(),
            });
        }
        log::warn!(
            "ignoring the mountpoints of {}: importing the merged sources recorded in the \
             destination ({})",
            config.path.display(),
            path.display()
        );
        return Ok((path, None));
    }
    let staged = build(config, &default_staging_path(config))?;
    Ok((staged.path.clone(), Some(staged.layout_text())))
}
