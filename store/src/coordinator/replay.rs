//! Open: startup scan, seeding, and WAL replay (spec 2.5, 2.6, 4.6), with replay failure
//! discarding everything replay produced (spec 4.8).

use super::{prune, FaultHook, Request, SharedEnding, State, REQUEST_QUEUE_CAPACITY};
use crate::env::{Env, Fs, FsFile, Spawner};
use crate::error::{Error, Result};
use crate::files::{
    discard, final_file_name, group_listing, open_file_name, parse_pair_name, quarantine,
    ClosedPair, Evidence, Named, PairFiles, QuarantineReason, QuarantinedFile,
};
use crate::mark;
use crate::parquet::index::FileIndex;
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

fn is_unfinished(e: &Error) -> bool {
    matches!(e, Error::CorruptFile { reason, .. } if reason.starts_with(UNFINISHED))
}

fn kind_of(name: &str) -> FileKind {
    parse_pair_name(name).map_or(FileKind::Receipts, |(k, _)| k)
}

/// What the startup scan decided: the closed pairs, the last seen block they record, and what it
/// moved to quarantine.
struct Scan {
    catalogue: BTreeMap<u64, Arc<ClosedPair>>,
    seen: Option<u64>,
    quarantined: Vec<QuarantinedFile>,
}

/// The startup scan. Every file that looks like a pair file ends in exactly one of these rows:
///
/// | files of a start                               | action                                       |
/// |------------------------------------------------|----------------------------------------------|
/// | both final, the newest, no parquet footer      | deleted (a store before issue 9 crashed with it open; its rows are in the WAL), the one before becomes the newest |
/// | both final, the newest, footer but bad checksum | error naming the file: nothing is deleted   |
/// | both final                                      | tracked as a closed pair                     |
/// | one final, one open-named and finished          | the rename is completed (a crash between the two renames of a finalization) |
/// | both open-named, or one open-named alone        | deleted: the open pair of a crashed store; its rows are in the WAL, whose segments are dropped only after both renames are durable |
/// | open-named below the newest closed pair, or beside a complete final pair | quarantined (no crash leaves one) |
/// | one final, partner missing, no footer           | deleted (the open pair of a store before issue 9; its rows are in the WAL) |
/// | one final, partner missing, in a window prune would delete | deleted, as prune would (a prune interrupted between its two deletes leaves one) |
/// | one final, partner missing, otherwise           | quarantined: its rows are in no WAL record    |
async fn scan<F: Fs>(
    fs: &F,
    dir: &Path,
    config: &Config,
    wal_heights: &std::collections::BTreeSet<u64>,
) -> Result<Scan> {
    let names = fs.list(dir).await.map_err(|e| Error::io(dir, e))?;
    let mut listing = group_listing(&names);
    let open_starts: std::collections::BTreeSet<u64> = listing.open.keys().copied().collect();
    let mut quarantined = Vec::new();
    let newest_final = listing.pairs.last().copied();
    let mut renamed = false;
    for (&start, files) in &listing.open {
        let stray = newest_final.is_some_and(|n| start < n);
        match (files.receipts, files.logs) {
            (Some(Named::Open), Some(Named::Final)) | (Some(Named::Final), Some(Named::Open))
                if !stray =>
            {
                let open_kind = if files.receipts == Some(Named::Open) {
                    FileKind::Receipts
                } else {
                    FileKind::Logs
                };
                if complete_rename(fs, dir, start, open_kind).await? {
                    mark!("open-rename-completed");
                    listing.pairs.push(start);
                    renamed = true;
                } else {
                    let final_kind = match open_kind {
                        FileKind::Receipts => FileKind::Logs,
                        FileKind::Logs => FileKind::Receipts,
                    };
                    listing.lone.push(final_file_name(final_kind, start));
                }
            }
            _ if stray => {
                for (kind, named) in named_files(files) {
                    match named {
                        Named::Open => {
                            let path = dir.join(open_file_name(kind, start));
                            quarantined.push(quarantine_stray(fs, dir, &path).await?);
                        }
                        Named::Final => listing.lone.push(final_file_name(kind, start)),
                    }
                }
            }
            _ => {
                mark!("open-open-pair-discarded");
                let paths: Vec<PathBuf> = named_files(files)
                    .map(|(kind, _)| dir.join(open_file_name(kind, start)))
                    .collect();
                discard(fs, dir, &paths).await?;
            }
        }
    }
    for name in &listing.stray_open {
        quarantined.push(quarantine_stray(fs, dir, &dir.join(name)).await?);
    }
    if renamed {
        fs.sync_dir(dir).await.map_err(|e| Error::io(dir, e))?;
    }
    listing.pairs.sort_unstable();
    listing.lone.sort();
    let (catalogue, seen) = closed_pairs(fs, dir, listing.pairs, &open_starts, wal_heights).await?;
    for name in &listing.lone {
        if let Some(q) = lone_file(fs, dir, name, &catalogue, seen, config).await? {
            quarantined.push(q);
        }
    }
    Ok(Scan {
        catalogue,
        seen,
        quarantined,
    })
}

/// Moves an open-named file no crash leaves behind to quarantine.
async fn quarantine_stray<F: Fs>(fs: &F, dir: &Path, path: &Path) -> Result<QuarantinedFile> {
    mark!("open-stray-open-file-quarantined");
    let q = quarantine(
        fs,
        dir,
        Evidence::File(path),
        QuarantineReason::StrayOpenPairFile,
    )
    .await?;
    Ok(q)
}

/// The files of a listed start and how each is named.
fn named_files(files: &PairFiles) -> impl Iterator<Item = (FileKind, Named)> {
    [
        (FileKind::Receipts, files.receipts),
        (FileKind::Logs, files.logs),
    ]
    .into_iter()
    .filter_map(|(k, n)| n.map(|n| (k, n)))
}

/// Completes a finalization a crash interrupted between its two renames: the file still under
/// the open pair's name is renamed to its final name if it is a finished, verified file (both
/// files were fsynced before the first rename). Returns false, after deleting it, when it is
/// unfinished (then no finalization reached the renames; its rows are in the WAL).
async fn complete_rename<F: Fs>(fs: &F, dir: &Path, start: u64, kind: FileKind) -> Result<bool> {
    let from = dir.join(open_file_name(kind, start));
    match ParquetFile::open(&from, kind, read_file(fs, &from).await?) {
        Ok(_) => {
            let to = dir.join(final_file_name(kind, start));
            fs.rename(&from, &to)
                .await
                .map_err(|e| Error::io(&from, e))?;
            Ok(true)
        }
        Err(e) if is_unfinished(&e) => {
            discard(fs, dir, &[from]).await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Verifies the newest pair (an unfinished one is deleted and the one before it becomes the
/// newest) and seeds the last seen block: the newest pair's footer records it; pairs written
/// before that key existed give their highest block, taken from the newest pair with rows.
async fn closed_pairs<F: Fs>(
    fs: &F,
    dir: &Path,
    mut starts: Vec<u64>,
    open_starts: &std::collections::BTreeSet<u64>,
    wal_heights: &std::collections::BTreeSet<u64>,
) -> Result<(BTreeMap<u64, Arc<ClosedPair>>, Option<u64>)> {
    // A window ends where the next pair on disk (final or open-named) starts.
    let mut all_starts: std::collections::BTreeSet<u64> = starts.iter().copied().collect();
    all_starts.extend(open_starts);
    let wal_covers = |start: u64| {
        let end = all_starts
            .range(start + 1..)
            .next()
            .copied()
            .unwrap_or(u64::MAX);
        wal_heights.range(start..end).next().is_some()
    };
    let mut catalogue = BTreeMap::new();
    let mut seen = None;
    // Only the newest pair can be unfinished (it was the open pair); it is removed and the pair
    // before it becomes the trailing one, which must then be finalized.
    let mut may_remove_unfinished = true;
    while let Some(last) = starts.pop() {
        let trailing = ClosedPair::new(dir, last, None);
        match load_pair(fs, &trailing).await {
            Ok((r, _)) => {
                seen = r.last_seen_block.max(r.max_block());
                catalogue.insert(last, Arc::new(ClosedPair::new(dir, last, r.max_block())));
                break;
            }
            // Only when the WAL still holds rows of its window: a final-named file without a
            // footer that no record covers is not an old store's open pair but a finished file
            // whose trailer rotted, and deleting it would destroy the only copy (found by the
            // simulator's bit-rot scenario: a flipped bit in "PAR1" lost block 0).
            Err(e) if may_remove_unfinished && is_unfinished(&e) && wal_covers(last) => {
                mark!("open-unfinished-pair-removed");
                let paths = [trailing.receipt_path.clone(), trailing.log_path.clone()];
                discard(fs, dir, &paths).await?;
                may_remove_unfinished = false;
            }
            Err(e) => {
                if matches!(e, Error::CorruptFile { .. }) {
                    mark!("open-corrupt-closed-file");
                }
                return Err(e);
            }
        }
    }
    for s in starts.iter().rev() {
        if seen.is_some() {
            break;
        }
        let path = dir.join(final_file_name(FileKind::Receipts, *s));
        let index = FileIndex::load(fs, &path, FileKind::Receipts).await?;
        let max_block = index.row_groups.iter().filter_map(|g| g.max_block).max();
        seen = index.last_seen_block.max(max_block);
    }
    for s in starts {
        catalogue.insert(s, Arc::new(ClosedPair::new(dir, s, None)));
    }
    Ok((catalogue, seen))
}

/// Decides the fate of a final-named pair file whose partner is missing (see [`scan`]).
async fn lone_file<F: Fs>(
    fs: &F,
    dir: &Path,
    name: &str,
    catalogue: &BTreeMap<u64, Arc<ClosedPair>>,
    seen: Option<u64>,
    config: &Config,
) -> Result<Option<QuarantinedFile>> {
    mark!("open-lone-pair-file");
    let path = dir.join(name);
    let start = parse_pair_name(name).map_or(0, |(_, s)| s);
    let unfinished = match ParquetFile::open(&path, kind_of(name), read_file(fs, &path).await?) {
        Ok(_) => false,
        Err(e) => is_unfinished(&e),
    };
    let prunable = config.keep_recent > 0
        && seen.is_some_and(|latest| {
            let mut starts: Vec<u64> = catalogue.keys().copied().collect();
            starts.push(start);
            starts.sort_unstable();
            starts.dedup();
            prune::select(&starts, latest.saturating_sub(config.keep_recent)).contains(&start)
        });
    if unfinished || prunable {
        discard(fs, dir, &[path]).await?;
        return Ok(None);
    }
    mark!("open-lone-pair-file-quarantined");
    let q = quarantine(
        fs,
        dir,
        Evidence::File(&path),
        QuarantineReason::LonePairFile,
    )
    .await?;
    Ok(Some(q))
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
    // Read (nothing written yet) before the scan: whether the WAL still covers a window decides
    // what the scan may delete.
    let contents = Wal::read(fs.clone(), &dir).await?;
    let wal_heights: std::collections::BTreeSet<u64> = contents
        .records
        .iter()
        .filter(|r| !r.receipts.is_empty())
        .map(|r| r.height)
        .collect();
    let Scan {
        catalogue,
        seen: last_seen,
        mut quarantined,
    } = scan(&fs, &dir, &config, &wal_heights).await?;
    let file_start_block = match catalogue.values().next_back() {
        Some(t) => match t.max_block {
            Some(m) => m.saturating_add(1).max(t.start + 1),
            None => t.start + 1,
        },
        None => 0,
    };
    // The pairs trusted above may have reached their final names in a finalization a crash cut
    // before its directory sync: make the directory durable before the WAL rewrite drops the
    // records those pairs hold (found by crash points inside close: a power loss after such an
    // open undid the renames, and the WAL no longer held the blocks).
    fs.sync_dir(&dir).await.map_err(|e| Error::io(&dir, e))?;
    let (wal, records, wal_report) = contents
        .open(
            config.sync_policy,
            config.wal_segment_bytes,
            file_start_block,
        )
        .await?;
    quarantined.extend(wal_report.quarantined);
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
        quarantined,
        wal_tail_cut: wal_report.tail_cut,
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
            if rec.receipts.is_empty() || below {
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
            paths.extend(open.writer.all_paths());
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
        Ok(discard(&fs, &self.dir, &paths).await?)
    }
}
