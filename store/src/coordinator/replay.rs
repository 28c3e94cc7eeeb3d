//! Open: startup scan, seeding, and WAL replay (spec 2.5, 2.6, 4.6), with replay failure
//! discarding everything replay produced (spec 4.8).

use super::{FaultHook, Request, SharedEnding, State, REQUEST_QUEUE_CAPACITY};
use crate::env::{Env, Fs, FsFile, Spawner};
use crate::error::{Error, Result};
use crate::files::{group_listing, ClosedPair};
use crate::mark;
use crate::parquet::reader::{FileKind, ParquetFile, UNFINISHED};
use crate::types::{Config, ReplayedBlock};
use crate::wal::{Wal, WalRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub(crate) async fn read_file<F: Fs>(fs: &F, path: &Path) -> Result<Vec<u8>> {
    let f = fs.open(path).await.map_err(|e| Error::io(path, e))?;
    let len = f.len().await.map_err(|e| Error::io(path, e))?;
    f.read_at(0, len as usize)
        .await
        .map_err(|e| Error::io(path, e))
}

/// Loads and verifies both files of a pair.
pub(crate) async fn load_pair<F: Fs>(
    fs: &F,
    pair: &ClosedPair,
) -> Result<(ParquetFile, ParquetFile)> {
    let r = ParquetFile::open(
        &pair.receipt_path,
        FileKind::Receipts,
        read_file(fs, &pair.receipt_path).await?,
    )?;
    let l = ParquetFile::open(
        &pair.log_path,
        FileKind::Logs,
        read_file(fs, &pair.log_path).await?,
    )?;
    Ok((r, l))
}

async fn remove_synced<F: Fs>(fs: &F, dir: &Path, paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match fs.remove(p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    fs.sync_dir(dir).await.map_err(|e| Error::io(dir, e))
}

/// Scans the directory: lone pair files are removed (a pair is only ever relied on once both of
/// its files are durable), an unfinished trailing pair (no parseable footer) is removed (its rows
/// are still in the WAL), and a finalized file whose checksum fails is an error naming it.
///
/// A finished trailing pair whose every receipt the WAL still holds (`wal_receipts`: receipts per
/// block in the WAL's records) is removed too: its closing rotation never got as far as dropping
/// those records, so nothing proves its bytes ever reached the disk. After a process crash they
/// can sit in the page cache, parse fine, and vanish at the next power loss (or, after a failed
/// fsync, never reach the disk at all); replay rebuilds the pair from the WAL. When the WAL holds
/// only some of them, a drop was under way, which only ever starts once the pair is durable.
async fn scan<F: Fs>(
    fs: &F,
    dir: &Path,
    wal_receipts: &BTreeMap<u64, u64>,
) -> Result<Scanned> {
    let names = fs.list(dir).await.map_err(|e| Error::io(dir, e))?;
    let listing = group_listing(&names);
    if !listing.lone.is_empty() {
        mark!("open-lone-pair-file");
        let paths: Vec<PathBuf> = listing.lone.iter().map(|n| dir.join(n)).collect();
        remove_synced(fs, dir, &paths).await?;
    }
    let mut catalogue = BTreeMap::new();
    let mut starts = listing.pairs;
    // Only the newest pair can be unfinished (it was the open pair); it is removed and the pair
    // before it becomes the trailing one, which must then be finalized.
    let mut may_remove_unfinished = true;
    let mut lowest_removed = None;
    while let Some(last) = starts.pop() {
        let trailing = ClosedPair::new(dir, last, None);
        match load_pair(fs, &trailing).await {
            Ok((r, _)) => {
                let max_block = r.max_block();
                let in_wal: u64 = wal_receipts
                    .range(last..=max_block.unwrap_or(last))
                    .map(|(_, n)| n)
                    .sum();
                if in_wal > 0 && in_wal >= r.num_rows() {
                    mark!("open-unconfirmed-pair-rebuilt");
                    let paths = [trailing.receipt_path.clone(), trailing.log_path.clone()];
                    remove_synced(fs, dir, &paths).await?;
                    may_remove_unfinished = false;
                    lowest_removed = Some(last);
                    continue;
                }
                catalogue.insert(last, Arc::new(ClosedPair::new(dir, last, max_block)));
                break;
            }
            // The newest pair torn by a power loss inside its finalize (footer bytes written but
            // never synced) looks corrupt rather than unfinished; its closing rotation never
            // dropped a WAL record, so the WAL still holds its window and replay rebuilds it.
            Err(Error::CorruptFile { ref reason, .. })
                if may_remove_unfinished
                    && !reason.starts_with(UNFINISHED)
                    && wal_receipts.range(last..).next().is_some() =>
            {
                mark!("open-torn-pair-rebuilt");
                let paths = [trailing.receipt_path.clone(), trailing.log_path.clone()];
                remove_synced(fs, dir, &paths).await?;
                may_remove_unfinished = false;
                lowest_removed = Some(last);
            }
            Err(Error::CorruptFile { path, reason })
                if !may_remove_unfinished || !reason.starts_with(UNFINISHED) =>
            {
                mark!("open-corrupt-closed-file");
                return Err(Error::CorruptFile { path, reason });
            }
            Err(Error::CorruptFile { .. }) => {
                mark!("open-unfinished-pair-removed");
                let paths = [trailing.receipt_path.clone(), trailing.log_path.clone()];
                remove_synced(fs, dir, &paths).await?;
                may_remove_unfinished = false;
                lowest_removed = Some(last);
            }
            Err(e) => return Err(e),
        }
    }
    for s in starts {
        catalogue.insert(s, Arc::new(ClosedPair::new(dir, s, None)));
    }
    Ok(Scanned {
        catalogue,
        lowest_removed,
    })
}

/// What the startup scan keeps, and the start of the lowest pair it removed for replay to
/// rebuild (records below it belong to windows that were closed and pruned).
struct Scanned {
    catalogue: BTreeMap<u64, Arc<ClosedPair>>,
    lowest_removed: Option<u64>,
}

/// What `open` hands back besides the request channel.
pub(crate) struct Opened {
    pub tx: mpsc::Sender<Request>,
    pub ending: SharedEnding,
    pub replayed: Vec<ReplayedBlock>,
}

pub(crate) async fn open<E: Env>(
    env: E,
    dir: PathBuf,
    config: Config,
    hook: Option<Arc<dyn FaultHook>>,
) -> Result<Opened> {
    if config.max_blocks_per_file == 0 {
        return Err(Error::ZeroMaxBlocksPerFile);
    }
    let fs = env.fs().clone();
    fs.create_dir_all(&dir)
        .await
        .map_err(|e| Error::io(&dir, e))?;
    let contents = Wal::read(fs.clone(), &dir).await?;
    let mut wal_receipts: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &contents.records {
        *wal_receipts.entry(r.height).or_default() += r.receipts.len() as u64;
    }
    let Scanned {
        catalogue,
        lowest_removed,
    } = scan(&fs, &dir, &wal_receipts).await?;
    let (file_start_block, last_seen) = match catalogue.values().next_back() {
        Some(t) => match t.max_block {
            Some(m) => (m.saturating_add(1).max(t.start + 1), Some(m)),
            None => (t.start + 1, None),
        },
        // With every pair removed for replay to rebuild, the lowest one's start is the floor:
        // WAL records below it belong to windows already pruned, which must not come back.
        None => (lowest_removed.unwrap_or(0), None),
    };
    let (wal, records) = contents
        .open(config.sync_policy, config.wal_segment_bytes, file_start_block)
        .await?;
    let ending: SharedEnding = Arc::new(Mutex::new(None));
    let mut state = State {
        env: env.clone(),
        dir,
        config,
        wal: Some(wal),
        catalogue,
        open: None,
        file_start_block,
        last_seen,
        latest: last_seen,
        blocks_since_flush: 0,
        log_cursor: None,
        poisoned: None,
        hook,
        doomed: Vec::new(),
        last_prune_error: None,
        ending: ending.clone(),
    };
    let before: Vec<u64> = state.catalogue.keys().copied().collect();
    let replayed = match state.replay(records).await {
        Ok(r) => r,
        Err(e) => {
            mark!("replay-failed-cleanup");
            let cleanup = state.discard_replay(&before).await;
            return Err(match cleanup {
                Ok(()) => e,
                Err(c) => Error::join(vec![e, c]).expect("two errors"),
            });
        }
    };
    // A pair untracked by a prune before a crash may still be on disk: prune again before
    // serving anything, so a pruned window never comes back. A failed delete is kept, reported
    // in `Status`, and retried on the next tick.
    let _ = state.prune().await;
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
    env.spawner()
        .spawn("receipt-store-coordinator", Box::pin(state.run(rx)));
    Ok(Opened {
        tx,
        ending,
        replayed,
    })
}

impl<E: Env> State<E> {
    /// Re-stages every WAL record at or above the file start into the open window, rotating on
    /// boundaries without dropping WAL segments.
    async fn replay(&mut self, records: Vec<WalRecord>) -> Result<Vec<ReplayedBlock>> {
        let mut out: Vec<ReplayedBlock> = Vec::new();
        for rec in records {
            let below = if crate::planted!(ReplayBoundaryOffByOne) {
                rec.height <= self.file_start_block && self.file_start_block > 0
            } else {
                rec.height < self.file_start_block
            };
            if rec.receipts.is_empty() {
                continue;
            }
            if below {
                continue;
            }
            if self.last_seen.is_some_and(|l| rec.height < l) {
                return Err(Error::Joined(format!(
                    "wal record {} for block {} is below block {} replayed before it",
                    rec.seq,
                    rec.height,
                    self.last_seen.unwrap_or(0)
                )));
            }
            if self.open.is_some()
                && self.last_seen != Some(rec.height)
                && rec.height % self.config.max_blocks_per_file == 0
            {
                mark!("replay-rotated");
                self.rotate(rec.height, None, false).await?;
            }
            mark!("replay-applied");
            let hashes: Vec<_> = rec.receipts.iter().map(|r| r.tx_hash).collect();
            for r in rec.receipts {
                self.apply(rec.height, r).await?;
            }
            self.latest = Some(self.latest.map_or(rec.height, |l| l.max(rec.height)));
            match out.last_mut() {
                Some(b) if b.block_number == rec.height => b.tx_hashes.extend(hashes),
                _ => out.push(ReplayedBlock {
                    block_number: rec.height,
                    tx_hashes: hashes,
                }),
            }
        }
        Ok(out)
    }

    /// Undoes a failed replay: the open pair and every pair replay closed are deleted (errors
    /// reported, never swallowed); the WAL is untouched so the next open replays from scratch.
    async fn discard_replay(&mut self, before: &[u64]) -> Result<()> {
        let fs = self.env.fs().clone();
        let mut paths = Vec::new();
        if let Some(open) = self.open.take() {
            paths.push(open.writer.receipt_path().to_path_buf());
            paths.push(open.writer.log_path().to_path_buf());
            if crate::planted!(LeakHandleOnFailedOpen) {
                std::mem::forget(open);
            } else {
                drop(open);
            }
        }
        let created: Vec<u64> = self
            .catalogue
            .keys()
            .filter(|s| !before.contains(s))
            .copied()
            .collect();
        for s in created {
            let p = self.catalogue.remove(&s).expect("listed above");
            paths.push(p.receipt_path.clone());
            paths.push(p.log_path.clone());
        }
        self.wal = None;
        remove_synced(&fs, &self.dir, &paths).await
    }
}
