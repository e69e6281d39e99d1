//! [`Writer`]: appends transactions to a new or existing `Data.fs`, as
//! ZODB's `FileStorage` does in `tpc_vote`/`tpc_finish`.
//!
//! A transaction is assembled in memory, then written at the end of the
//! file in one write with the checkpoint status `'c'` and its redundant
//! length (ZODB's `tpc_vote`); then its real status byte is written over
//! the `'c'` and the file is fsynced (ZODB's `_finish`). A crash before the
//! status flip leaves a `'c'` transaction or a torn tail, which readers
//! (ours and ZODB's) ignore; a failed write is truncated away. After a
//! failed fsync the writer refuses further work (it is "poisoned": the page
//! cache may have dropped the data, retrying could report false success).
//!
//! Record fields are as ZODB writes them: `serial` = the transaction's tid
//! (or the given serial for restore-style copies), `prev` = the object's
//! newest record in the transactions committed before this one (so two
//! records of one object in one transaction have the same `prev`), `tpos`
//! = the transaction's offset. Records of a `'u'` transaction are not
//! indexed, like ZODB's `read_index`.
//!
//! Like ZODB, a writer holds an exclusive `flock` on `<path>.lock` (writing
//! its pid in it, as `zc.lockfile` does), so it never appends to a file a
//! ZODB `FileStorage` (or another writer) has open for writing.

use std::fs::{File, OpenOptions as FsOpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    encode_data_header, encode_txn_header, Magic, Payload, TxnStatus, MAGIC_LEN, TXN_STATUS,
    TXN_TLEN,
};
use crate::index::{save_sidecar, sidecar_path, Index, SidecarInfo};
use crate::storage::{FileStorage, OpenOptions};
use crate::{Oid, Tid};

/// When the writer calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// After every commit, like ZODB (default).
    EveryCommit,
    /// Only in [`Writer::sync`] and [`Writer::finish`] (bulk copies).
    OnFinish,
}

/// What [`TxnWriter::commit`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The transaction id.
    pub tid: Tid,
    /// Offset of the transaction.
    pub pos: u64,
    /// Offset just after it (the new end of the file).
    pub end: u64,
}

/// Appends transactions to a `Data.fs`.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    _lock: File,
    magic: Magic,
    index: Index,
    end: u64,
    last_txn: Option<(u64, Tid)>,
    first_tid: Option<Tid>,
    sync: SyncMode,
    dirty: bool,
    poisoned: bool,
    buf: Vec<u8>,
    tindex: Vec<(Oid, u64)>,
}

impl Writer {
    /// Creates a new file (it must not exist) holding only `magic`.
    pub fn create(path: impl AsRef<Path>, magic: Magic) -> Result<Writer> {
        let path = path.as_ref().to_path_buf();
        let lock = lock(&path)?;
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "create", e))?;
        file.write_all_at(&magic.bytes(), 0)
            .map_err(|e| Error::io(&path, "write", e))?;
        Ok(Writer {
            path,
            file,
            _lock: lock,
            magic,
            index: Index::new(),
            end: MAGIC_LEN,
            last_txn: None,
            first_tid: None,
            sync: SyncMode::EveryCommit,
            dirty: true,
            poisoned: false,
            buf: Vec::new(),
            tindex: Vec::new(),
        })
    }

    /// Opens an existing file to append to it, keeping its magic. Builds
    /// the index (from a valid sidecar when there is one). Like ZODB's
    /// read-write open, a torn tail or a `'c'` transaction at the end is
    /// cut off, its bytes saved first to `<path>.tr<N>`; an empty file gets
    /// the `FS30` magic.
    pub fn open(path: impl AsRef<Path>) -> Result<Writer> {
        let path = path.as_ref().to_path_buf();
        let lock = lock(&path)?;
        let st = FileStorage::open_with(&path, OpenOptions::default())?;
        let (end, last_txn, len) = (st.size(), st.last_txn(), st.datafs().len());
        let magic = st.datafs().magic();
        let first_tid = st.iter().next().and_then(|t| t.ok()).map(|t| t.tid);
        let index = st.index().clone();
        drop(st);
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "open", e))?;
        if len == 0 {
            file.write_all_at(&magic.bytes(), 0)
                .map_err(|e| Error::io(&path, "write", e))?;
        } else if len > end {
            save_tail(&path, &file, end, len)?;
            file.set_len(end)
                .map_err(|e| Error::io(&path, "truncate", e))?;
        }
        Ok(Writer {
            path,
            file,
            _lock: lock,
            magic,
            index,
            end: end.max(MAGIC_LEN),
            last_txn,
            first_tid,
            sync: SyncMode::EveryCommit,
            dirty: false,
            poisoned: false,
            buf: Vec::new(),
            tindex: Vec::new(),
        })
    }

    /// Sets when fsync happens.
    pub fn set_sync(&mut self, sync: SyncMode) {
        self.sync = sync;
    }

    /// The file's magic.
    pub fn magic(&self) -> Magic {
        self.magic
    }

    /// Offset where the next transaction goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Offset and tid of the last transaction.
    pub fn last_txn(&self) -> Option<(u64, Tid)> {
        self.last_txn
    }

    /// The index of the file written so far.
    pub fn index(&self) -> &Index {
        &self.index
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Writer {
                reason: format!(
                    "{}: an earlier write or fsync failed; refusing to go on",
                    self.path.display()
                ),
            });
        }
        Ok(())
    }

    /// Starts a transaction; nothing reaches the file before
    /// [`TxnWriter::commit`]. `tid` must be above the last one; `status`
    /// may not be `'c'`.
    pub fn begin(
        &mut self,
        tid: Tid,
        status: TxnStatus,
        user: &[u8],
        description: &[u8],
        extension: &[u8],
    ) -> Result<TxnWriter<'_>> {
        self.check_usable()?;
        if let Some((_, last)) = self.last_txn {
            if tid <= last {
                return Err(Error::TidNotIncreasing { tid, last });
            }
        }
        if status == TxnStatus::Checkpoint {
            return Err(Error::Writer {
                reason: "a transaction cannot be committed with status 'c'".into(),
            });
        }
        self.buf.clear();
        self.tindex.clear();
        encode_txn_header(
            &mut self.buf,
            tid,
            0,
            TxnStatus::Checkpoint,
            user,
            description,
            extension,
        )?;
        let tpos = self.end;
        Ok(TxnWriter {
            w: self,
            tid,
            status,
            tpos,
        })
    }

    /// Flushes written transactions to disk (fsync).
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(Error::io(&self.path, "fsync", e));
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Syncs and closes the file.
    pub fn finish(mut self) -> Result<()> {
        self.sync()
    }

    /// Writes the sidecar index `<path>.neoindex` for the file as written.
    pub fn save_index(&self) -> Result<()> {
        let info = SidecarInfo {
            magic: self.magic,
            end: self.end,
            last_txn: self.last_txn,
            first_tid: self.first_tid,
        };
        save_sidecar(&sidecar_path(&self.path), &self.index, &info)
    }

    /// Removes a partly written transaction; poisons the writer if that fails.
    fn undo_append(&mut self, tpos: u64) {
        if let Err(e) = self.file.set_len(tpos) {
            log::error!("{}: cannot truncate to {tpos}: {e}", self.path.display());
            self.poisoned = true;
        }
    }
}

impl Drop for Writer {
    /// Syncs what [`Writer::finish`] was not called for (errors are logged).
    fn drop(&mut self) {
        if self.dirty && !self.poisoned {
            if let Err(e) = self.file.sync_data() {
                log::error!("{}: fsync on close: {e}", self.path.display());
            }
        }
    }
}

/// Takes the exclusive lock `<path>.lock` as ZODB's `zc.lockfile` does.
fn lock(path: &Path) -> Result<File> {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    let lpath = PathBuf::from(s);
    let mut f = FsOpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lpath)
        .map_err(|e| Error::io(&lpath, "open", e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: lpath }),
        Err(TryLockError::Error(e)) => return Err(Error::io(&lpath, "lock", e)),
    }
    let pid = format!(" {}\n", std::process::id());
    f.write_all(pid.as_bytes())
        .and_then(|()| f.set_len(pid.len() as u64))
        .map_err(|e| Error::io(&lpath, "write", e))?;
    Ok(f)
}

/// Copies the bytes from `end` to `len` to `<path>.tr<N>` (ZODB's `_truncate`).
fn save_tail(path: &Path, file: &File, end: u64, len: u64) -> Result<()> {
    let mut i = 0;
    let tr = loop {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".tr{i}"));
        let p = PathBuf::from(s);
        if !p.exists() {
            break p;
        }
        i += 1;
    };
    log::warn!(
        "{}: truncating damaged or unfinished data at {end} ({} bytes saved to {})",
        path.display(),
        len - end,
        tr.display()
    );
    let n = usize::try_from(len - end).map_err(|_| Error::Writer {
        reason: "tail too large".into(),
    })?;
    let mut tail = vec![0u8; n];
    file.read_exact_at(&mut tail, end)
        .map_err(|e| Error::io(path, "read", e))?;
    std::fs::write(&tr, &tail).map_err(|e| Error::io(&tr, "write", e))
}

/// A transaction being assembled; dropped without [`TxnWriter::commit`],
/// it leaves the file untouched.
#[derive(Debug)]
pub struct TxnWriter<'w> {
    w: &'w mut Writer,
    tid: Tid,
    status: TxnStatus,
    tpos: u64,
}

impl TxnWriter<'_> {
    /// Offset the transaction will have.
    pub fn pos(&self) -> u64 {
        self.tpos
    }

    /// Appends a data record of `oid` with `data` (ZODB's `store`);
    /// returns the record's offset.
    pub fn store(&mut self, oid: Oid, data: &[u8]) -> Result<u64> {
        self.restore(oid, self.tid, Payload::Data(data))
    }

    /// Appends a backpointer record of `oid` (ZODB's undo): `back` is the
    /// offset of an earlier record holding the data, or 0 for "no data"
    /// (undone creation, deletion). Returns the record's offset.
    pub fn store_back(&mut self, oid: Oid, back: u64) -> Result<u64> {
        self.restore(oid, self.tid, Payload::Back(back))
    }

    /// Appends a record as ZODB's `restore` writes it when copying: any
    /// `serial`, data or a backpointer (an offset in *this* file, before
    /// this transaction: the caller maps source offsets). Returns the
    /// record's offset.
    pub fn restore(&mut self, oid: Oid, serial: Tid, payload: Payload<'_>) -> Result<u64> {
        let pos = self.tpos + self.w.buf.len() as u64;
        let prev = self.w.index.get(oid).unwrap_or(0);
        match payload {
            Payload::Data(d) => {
                if d.is_empty() {
                    return Err(Error::Writer {
                        reason: format!("empty data for oid {oid} cannot be stored"),
                    });
                }
                encode_data_header(
                    &mut self.w.buf,
                    oid,
                    serial,
                    prev,
                    self.tpos,
                    d.len() as u64,
                );
                self.w.buf.extend_from_slice(d);
            }
            Payload::Back(b) => {
                if b != 0 && (b < MAGIC_LEN || b >= self.tpos) {
                    return Err(Error::Writer {
                        reason: format!(
                            "backpointer {b} of oid {oid} is not before the transaction at {}",
                            self.tpos
                        ),
                    });
                }
                encode_data_header(&mut self.w.buf, oid, serial, prev, self.tpos, 0);
                self.w.buf.extend_from_slice(&b.to_be_bytes());
            }
        }
        self.w.tindex.push((oid, pos));
        Ok(pos)
    }

    /// Writes the transaction: with status `'c'` first, then the real
    /// status over it, then fsync (per [`SyncMode`]).
    pub fn commit(self) -> Result<Committed> {
        let w = self.w;
        w.check_usable()?;
        let tlen = w.buf.len() as u64;
        w.buf[TXN_TLEN..TXN_TLEN + 8].copy_from_slice(&tlen.to_be_bytes());
        w.buf.extend_from_slice(&tlen.to_be_bytes());
        let tpos = self.tpos;
        if let Err(e) = w.file.write_all_at(&w.buf, tpos) {
            w.undo_append(tpos);
            return Err(Error::io(&w.path, "write", e));
        }
        if let Err(e) = w
            .file
            .write_all_at(&[self.status.byte()], tpos + TXN_STATUS as u64)
        {
            w.undo_append(tpos);
            return Err(Error::io(&w.path, "write", e));
        }
        w.dirty = true;
        if w.sync == SyncMode::EveryCommit {
            w.sync()?;
        }
        if self.status != TxnStatus::Undone {
            for &(oid, pos) in &w.tindex {
                w.index.insert(oid, pos);
            }
        }
        w.end = tpos + w.buf.len() as u64;
        w.last_txn = Some((tpos, self.tid));
        if w.first_tid.is_none() {
            w.first_tid = Some(self.tid);
        }
        Ok(Committed {
            tid: self.tid,
            pos: tpos,
            end: w.end,
        })
    }
}
