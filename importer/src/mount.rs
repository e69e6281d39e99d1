//! Merging several source databases at mountpoints: where each source's
//! oids land in the destination, and how their pickles are rewritten
//! (NEO's `ZODB.setup` and `ZODB.repickle` in
//! `neo/storage/database/importer.py`).
//!
//! The rule, from the main database (shift 0) down through its `name=oid`
//! mountpoints in file order, depth first:
//!
//! - a database gets the current shift, then the shift grows by its
//!   `next_oid` (its highest oid + 1, what `FileStorage.new_oid()` gives);
//! - for each mountpoint `name=oid` of it, section `name` is set up at the
//!   current shift if it has not been yet, and references to `oid` in the
//!   mounting database now point to `name`'s own `oid` plus `name`'s
//!   shift (and lose their class: it is the placeholder's one);
//! - any other reference of a database is shifted by its shift.
//!
//! Cross-database references (`['w', (oid, db)]`, `['n', ...]`, `['m',
//! ...]`) whose database name is a section of the configuration are shifted
//! by that section's shift; other names are left alone.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::ImporterConfig;
use crate::repickle::{self, PersistentRef, PickleError, RefKind, Remap};

/// One source database in the merged oid space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedDb {
    /// Its section name.
    pub section: String,
    /// Index of its section in [`ImporterConfig::sources`].
    pub source: usize,
    /// What is added to its oids.
    pub shift: u64,
    /// Its highest oid + 1.
    pub next_oid: u64,
    /// Mountpoints: an oid of this database -> the destination oid that
    /// references to it now reach.
    pub mapping: BTreeMap<u64, u64>,
}

/// The oid layout of a merged import (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLayout {
    /// The databases, by increasing shift (the main one first).
    dbs: Vec<MountedDb>,
}

/// A configuration whose layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MountError {
    /// A section that no mountpoint chain reaches from the main database.
    Unreachable {
        /// The section.
        section: String,
    },
    /// A mountpoint naming a section that does not exist or has no `oid`
    /// (`ImporterConfig::check` refuses those already).
    BadMountpoint {
        /// The mounting section.
        section: String,
        /// The name it gives.
        target: String,
    },
    /// The oids of the merged databases do not fit in 64 bits.
    Overflow {
        /// The section being placed.
        section: String,
    },
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::Unreachable { section } => write!(
                f,
                "section [{section}] is not mounted from the main database"
            ),
            MountError::BadMountpoint { section, target } => write!(
                f,
                "section [{section}]: mountpoint {target:?} names no section with an 'oid'"
            ),
            MountError::Overflow { section } => {
                write!(f, "section [{section}]: merged oids overflow 64 bits")
            }
        }
    }
}

impl std::error::Error for MountError {}

impl MountLayout {
    /// Places the sources of `config`; `next_oid(i)` is the highest oid of
    /// `config.sources[i]` plus one.
    pub fn new(
        config: &ImporterConfig,
        next_oid: &mut dyn FnMut(usize) -> u64,
    ) -> Result<MountLayout, MountError> {
        let main = config
            .sources
            .iter()
            .position(|s| s.oid.is_none())
            .unwrap_or(0);
        let mut placed: Vec<Option<MountedDb>> = vec![None; config.sources.len()];
        place(config, main, 0, next_oid, &mut placed)?;
        let mut dbs = Vec::with_capacity(placed.len());
        for (i, p) in placed.into_iter().enumerate() {
            dbs.push(p.ok_or_else(|| MountError::Unreachable {
                section: config.sources[i].name.clone(),
            })?);
        }
        dbs.sort_by_key(|d| d.shift);
        Ok(MountLayout { dbs })
    }

    /// The databases, by increasing shift (the main one first).
    pub fn dbs(&self) -> &[MountedDb] {
        &self.dbs
    }

    /// The highest destination oid of the merged sources.
    pub fn last_oid(&self) -> u64 {
        self.dbs
            .last()
            .map_or(0, |d| (d.shift + d.next_oid).saturating_sub(1))
    }

    /// Which database (index in [`MountLayout::dbs`]) a destination oid
    /// comes from, and its oid there; `None` above [`MountLayout::last_oid`].
    pub fn locate(&self, oid: u64) -> Option<(usize, u64)> {
        let i = self
            .dbs
            .partition_point(|d| d.shift <= oid)
            .checked_sub(1)?;
        let d = &self.dbs[i];
        let o = oid - d.shift;
        (o < d.next_oid).then_some((i, o))
    }

    /// The destination oid of `oid` of database `db`.
    pub fn new_oid(&self, db: usize, oid: u64) -> u64 {
        oid + self.dbs[db].shift
    }

    /// Where the reference `r` found in database `db` must point.
    pub fn remap_ref(&self, db: usize, r: &PersistentRef) -> Option<Remap> {
        let d = &self.dbs[db];
        let other = |name: &String| self.dbs.iter().find(|x| &x.section == name);
        let (shift, mapping) = match &r.kind {
            RefKind::Oid | RefKind::OidClass | RefKind::WeakLegacy | RefKind::Weak { db: None } => {
                (d.shift, Some(&d.mapping))
            }
            RefKind::Weak { db: Some(name) }
            | RefKind::Cross { db: name }
            | RefKind::CrossClass { db: name } => (other(name)?.shift, None),
        };
        if let Some(&to) = mapping.and_then(|m| m.get(&r.oid)) {
            return Some(Remap {
                oid: to,
                drop_class: true,
            });
        }
        (shift != 0).then(|| Remap {
            oid: r.oid + shift,
            drop_class: false,
        })
    }

    /// The pickle of a record of database `db` as the destination stores
    /// it.
    pub fn repickle<'d>(&self, db: usize, data: &'d [u8]) -> Result<Cow<'d, [u8]>, PickleError> {
        let d = &self.dbs[db];
        if d.shift == 0 && d.mapping.is_empty() && self.dbs.len() == 1 {
            return Ok(Cow::Borrowed(data));
        }
        repickle::rewrite(data, &mut |r| self.remap_ref(db, r))
    }
}

/// NEO's `ZODB.setup`: places source `i` at `shift`, then its mountpoints;
/// returns the shift after all of them.
fn place(
    config: &ImporterConfig,
    i: usize,
    shift: u64,
    next_oid: &mut dyn FnMut(usize) -> u64,
    placed: &mut Vec<Option<MountedDb>>,
) -> Result<u64, MountError> {
    let s = &config.sources[i];
    let overflow = || MountError::Overflow {
        section: s.name.clone(),
    };
    let n = next_oid(i);
    placed[i] = Some(MountedDb {
        section: s.name.clone(),
        source: i,
        shift,
        next_oid: n,
        mapping: BTreeMap::new(),
    });
    let mut shift = shift.checked_add(n).ok_or_else(overflow)?;
    for (name, oid) in &s.mountpoints {
        let bad = || MountError::BadMountpoint {
            section: s.name.clone(),
            target: name.clone(),
        };
        let j = config
            .sources
            .iter()
            .position(|x| &x.name == name)
            .ok_or_else(bad)?;
        let root = config.sources[j].oid.ok_or_else(bad)?;
        let base = match &placed[j] {
            Some(d) => d.shift,
            None => {
                let at = shift;
                shift = place(config, j, shift, next_oid, placed)?;
                at
            }
        };
        let to = root.checked_add(base).ok_or_else(overflow)?;
        if let Some(d) = placed[i].as_mut() {
            d.mapping.insert(*oid, to);
        }
    }
    Ok(shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsformat::{FileStorage, Oid};
    use serde_json::Value;
    use std::collections::{BTreeSet, HashMap};
    use std::path::{Path, PathBuf};

    fn config(text: &str) -> ImporterConfig {
        ImporterConfig::parse(text, Path::new("/x/importer.conf")).unwrap()
    }

    /// NEO's `importer.conf` example shape: nested mountpoints, placed
    /// depth first in file order.
    type Placed<'a> = (&'a str, u64, Vec<(u64, u64)>);

    #[test]
    fn nested_mountpoints_depth_first() {
        let c = config(
            "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\n\
             [root]\nstorage=\n  <filestorage>\n    path root.fs\n  </filestorage>\nfoo=5\nbar=6\n\
             [foo]\noid=1\nstorage=\n  <filestorage>\n    path foo.fs\n  </filestorage>\nbaz=7\n\
             [bar]\noid=2\nstorage=\n  <filestorage>\n    path bar.fs\n  </filestorage>\n\
             [baz]\noid=3\nstorage=\n  <filestorage>\n    path baz.fs\n  </filestorage>\n",
        );
        let sizes = [100, 50, 20, 10];
        let l = MountLayout::new(&c, &mut |i| sizes[i]).unwrap();
        let got: Vec<Placed> = l
            .dbs()
            .iter()
            .map(|d| {
                let m = d.mapping.iter().map(|(a, b)| (*a, *b)).collect();
                (d.section.as_str(), d.shift, m)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("root", 0, vec![(5, 101), (6, 162)]),
                ("foo", 100, vec![(7, 153)]),
                ("baz", 150, vec![]),
                ("bar", 160, vec![]),
            ]
        );
        assert_eq!(l.last_oid(), 179);
        assert_eq!(l.locate(0), Some((0, 0)));
        assert_eq!(l.locate(99), Some((0, 99)));
        assert_eq!(l.locate(153), Some((2, 3)));
        assert_eq!(l.locate(179), Some((3, 19)));
        assert_eq!(l.locate(180), None);
    }

    #[test]
    fn unreachable_section_is_refused() {
        let c = config(
            "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\n\
             [root]\nstorage=\n  <filestorage>\n    path root.fs\n  </filestorage>\n\
             [foo]\noid=1\nstorage=\n  <filestorage>\n    path foo.fs\n  </filestorage>\n",
        );
        assert_eq!(
            MountLayout::new(&c, &mut |_| 3),
            Err(MountError::Unreachable {
                section: "foo".into()
            })
        );
    }

    fn testdata() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    /// The fixtures merged: the main database's placeholder (oid
    /// `mnt_oid`) replaced by the sub database's `x` (oid 1); every object of
    /// both reachable from the merged root at its new oid, with the
    /// references ZODB's referencesf reads in the sources, remapped.
    #[test]
    fn merged_fixtures_reachable_with_zodb_references() {
        let fx: Value = serde_json::from_str(
            &std::fs::read_to_string(testdata().join("mount_pickles.json")).unwrap(),
        )
        .unwrap();
        let mnt = fx["mnt_oid"].as_u64().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for f in ["mount_main.fs", "mount_sub.fs"] {
            std::fs::copy(testdata().join(f), dir.path().join(f)).unwrap();
        }
        let c = config(&format!(
            "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\n\
             [main]\nstorage=\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\n\
             sub={mnt}\n\
             [sub]\noid=1\nstorage=\n  <filestorage>\n    path {0}/mount_sub.fs\n  </filestorage>\n",
            dir.path().display()
        ));
        let fs: Vec<FileStorage> = c
            .sources
            .iter()
            .map(|s| FileStorage::open(&s.storage.path).unwrap())
            .collect();
        let l = MountLayout::new(&c, &mut |i| fs[i].max_oid().0 + 1).unwrap();
        let main_next = fs[0].max_oid().0 + 1;
        assert_eq!(l.dbs()[1].shift, main_next);
        // [sub]'s `oid=1` (NEO takes an `oid` of 0 for the main database).
        assert_eq!(l.dbs()[0].mapping.get(&mnt), Some(&(main_next + 1)));

        // ZODB's references of the newest revision of each object, remapped.
        let mut zodb: HashMap<u64, Vec<u64>> = HashMap::new();
        for (db, name) in [(0, "mount_main"), (1, "mount_sub")] {
            for r in fx["records"][name].as_array().unwrap() {
                let oid = l.new_oid(db, r["oid"].as_u64().unwrap());
                let refs = r["refs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        let o = x.as_u64().unwrap();
                        match l.dbs()[db].mapping.get(&o) {
                            Some(to) => *to,
                            None => l.new_oid(db, o),
                        }
                    })
                    .collect();
                zodb.insert(oid, refs); // the last record is the newest
            }
        }

        // Walk the merged database from its root.
        let mut seen = BTreeSet::new();
        let mut todo = vec![0u64];
        while let Some(oid) = todo.pop() {
            if !seen.insert(oid) {
                continue;
            }
            let (db, src_oid) = l.locate(oid).unwrap();
            let (data, _) = fs[l.dbs()[db].source].load(Oid(src_oid)).unwrap();
            let data = l.repickle(db, data).unwrap();
            let refs = repickle::persistent_refs(&data).unwrap();
            let strong: Vec<u64> = refs
                .iter()
                .filter(|r| !matches!(r.kind, RefKind::Weak { .. } | RefKind::WeakLegacy))
                .map(|r| r.oid)
                .collect();
            assert_eq!(Some(&strong), zodb.get(&oid), "oid {oid}");
            todo.extend(refs.iter().map(|r| r.oid));
        }
        let mut all: BTreeSet<u64> = zodb.keys().copied().collect();
        assert!(all.remove(&mnt), "the placeholder is no longer reachable");
        assert_eq!(seen, all);
        assert_eq!(l.last_oid(), *all.iter().max().unwrap());
    }
}
