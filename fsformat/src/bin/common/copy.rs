//! Copying every complete transaction of a file into a [`Writer`], as
//! ZODB's `copyTransactionsFrom` does with `restore` (shared by `neo-fs copy`
//! and `fs-bench`).

use anyhow::{bail, Result};
use fsformat::{DataFs, Stop, TxnStatus, Writer};

/// Restores every visible transaction of `fs` into `w`; returns the counts.
/// Positions are checked to be the source's, so backpointers (offsets in
/// the file) stay valid unchanged.
pub fn copy_into(fs: &DataFs, w: &mut Writer, progress: &mut dyn FnMut(u64)) -> Result<(u64, u64)> {
    let (mut txns, mut records) = (0u64, 0u64);
    let mut it = fs.iter();
    for t in it.by_ref() {
        let t = t?;
        let Some(status) = TxnStatus::from_byte(t.status) else {
            bail!(
                "transaction at {} has status {:?}, which cannot be written",
                t.pos,
                char::from(t.status)
            );
        };
        let mut tw = w.begin(t.tid, status, t.user, t.description, t.extension)?;
        if tw.pos() != t.pos {
            bail!(
                "copy diverged: transaction at {} would be written at {}",
                t.pos,
                tw.pos()
            );
        }
        for r in t.records() {
            let r = r?;
            let at = tw.restore(r.oid, r.serial, r.payload)?;
            if at != r.pos {
                bail!(
                    "copy diverged: record at {} would be written at {at}",
                    r.pos
                );
            }
            records += 1;
        }
        tw.commit()?;
        txns += 1;
        progress(t.next_pos());
    }
    match it.stop() {
        Some(Stop::Eof) | None => {}
        Some(stop) => log::warn!(
            "{}: not copied: the {} bytes from {} ({stop:?})",
            fs.path().display(),
            fs.len() - it.pos(),
            it.pos()
        ),
    }
    Ok((txns, records))
}
