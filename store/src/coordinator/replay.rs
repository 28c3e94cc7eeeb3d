//! Open: startup scan, seeding, and WAL replay (spec 2.5, 2.6, 4.6), with replay failure
//! discarding everything replay produced (spec 4.8).

use super::write::FlushRule;
use super::{
    prune, FaultHook, Published, Publisher, Request, SharedEnding, State, REQUEST_QUEUE_CAPACITY,
};
use crate::env::{BlockingPool, Env, Fs, FsFile, Spawner};
use crate::error::{Error, Result};
use crate::files::{
    discard, final_file_name, group_listing, open_file_name, parse_pair_name, quarantine,
    ClosedPair, Evidence, Named, PairFiles, QuarantineReason, QuarantinedFile, QUARANTINE_DIR_NAME,
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
use tokio::sync::oneshot;

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

/// One change the startup scan makes to the data directory (a row of the table at [`scan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// A finished file under the open pair's name gets its final name: a crash cut a
    /// finalization between its two renames.
    CompleteRename { from: PathBuf, to: PathBuf },
    /// Files deleted because they are provably covered elsewhere.
    Discard {
        paths: Vec<PathBuf>,
        reason: DiscardReason,
    },
    /// A file moved to `quarantine/`: the store cannot use it and keeps it.
    Quarantine {
        path: PathBuf,
        reason: QuarantineReason,
    },
}

/// Why the scan may delete a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardReason {
    /// The open pair of a crashed store (or an unfinished file of it): its rows are in the WAL.
    OpenPairOfCrashedStore,
    /// A final-named pair without a footer, the newest, whose window WAL records cover: the
    /// open pair of a store before issue 9.
    UnfinishedNewestPair,
    /// A final-named file without a footer whose partner is missing, in a window WAL records
    /// hold rows of: an old store's open pair.
    UnfinishedLoneFile,
    /// A lone file in a window prune deletes anyway (a prune interrupted between its deletes).
    LoneFileInPrunedWindow,
}

impl std::fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryAction::CompleteRename { from, to } => write!(
                f,
                "opening the store renames {} to {} (a finalization a crash cut short)",
                from.display(),
                to.display()
            ),
            RecoveryAction::Discard { paths, reason } => {
                let why = match reason {
                    DiscardReason::OpenPairOfCrashedStore => {
                        "the open pair of a crashed store; its rows are in the WAL"
                    }
                    DiscardReason::UnfinishedNewestPair => {
                        "an unfinished pair whose rows are in the WAL"
                    }
                    DiscardReason::UnfinishedLoneFile => {
                        "an unfinished file without its partner; its rows are in the WAL"
                    }
                    DiscardReason::LoneFileInPrunedWindow => {
                        "a lone file in a window prune deletes anyway"
                    }
                };
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "opening the store deletes {} ({why})", names.join(", "))
            }
            RecoveryAction::Quarantine { path, reason } => write!(
                f,
                "opening the store moves {} to {QUARANTINE_DIR_NAME}/ ({}); its rows are not served",
                path.display(),
                reason.tag()
            ),
        }
    }
}

/// Where the scan's decisions go: carried out at once by `open` (the same filesystem calls in
/// the same order as always), or written down by `inspect`, which changes nothing.
pub(crate) enum Effects {
    Apply { quarantined: Vec<QuarantinedFile> },
    Record { actions: Vec<RecoveryAction> },
}

impl Effects {
    async fn rename<F: Fs>(&mut self, fs: &F, from: PathBuf, to: PathBuf) -> Result<()> {
        match self {
            Effects::Apply { .. } => fs.rename(&from, &to).await.map_err(|e| Error::io(&from, e)),
            Effects::Record { actions } => {
                actions.push(RecoveryAction::CompleteRename { from, to });
                Ok(())
            }
        }
    }

    async fn discard<F: Fs>(
        &mut self,
        fs: &F,
        dir: &Path,
        paths: Vec<PathBuf>,
        reason: DiscardReason,
    ) -> Result<()> {
        match self {
            Effects::Apply { .. } => Ok(discard(fs, dir, &paths).await?),
            Effects::Record { actions } => {
                actions.push(RecoveryAction::Discard { paths, reason });
                Ok(())
            }
        }
    }

    async fn quarantine<F: Fs>(
        &mut self,
        fs: &F,
        dir: &Path,
        path: PathBuf,
        reason: QuarantineReason,
    ) -> Result<()> {
        match self {
            Effects::Apply { quarantined } => {
                let q = quarantine(fs, dir, Evidence::File(&path), reason).await?;
                quarantined.push(q);
                Ok(())
            }
            Effects::Record { actions } => {
                actions.push(RecoveryAction::Quarantine { path, reason });
                Ok(())
            }
        }
    }

    async fn sync_dir<F: Fs>(&mut self, fs: &F, dir: &Path) -> Result<()> {
        match self {
            Effects::Apply { .. } => fs.sync_dir(dir).await.map_err(|e| Error::io(dir, e)),
            Effects::Record { .. } => Ok(()),
        }
    }

    /// Where a file is now: under a recorded rename's old name until the rename is done.
    fn current(&self, path: PathBuf) -> PathBuf {
        match self {
            Effects::Apply { .. } => path,
            Effects::Record { actions } => actions
                .iter()
                .find_map(|a| match a {
                    RecoveryAction::CompleteRename { from, to } if *to == path => {
                        Some(from.clone())
                    }
                    _ => None,
                })
                .unwrap_or(path),
        }
    }

    /// The closed pair at `start`, its files where they are now.
    fn pair(&self, dir: &Path, start: u64, max_block: Option<u64>) -> ClosedPair {
        let mut p = ClosedPair::new(dir, start, max_block);
        p.receipt_path = self.current(p.receipt_path);
        p.log_path = self.current(p.log_path);
        p
    }
}

/// What the startup scan decided: the closed pairs and the last seen block they record.
pub(crate) struct Scan {
    pub catalogue: BTreeMap<u64, Arc<ClosedPair>>,
    pub seen: Option<u64>,
}

/// The first block not in a closed file: the open window (and replay) starts there.
pub(crate) fn open_floor(catalogue: &BTreeMap<u64, Arc<ClosedPair>>) -> u64 {
    match catalogue.values().next_back() {
        Some(t) => match t.max_block {
            Some(m) => m.saturating_add(1).max(t.start + 1),
            None => t.start + 1,
        },
        None => 0,
    }
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
/// | one final, partner missing, no footer, WAL records hold rows of its window | deleted (the open pair of a store before issue 9; its rows are in the WAL) |
/// | one final, partner missing, in a window prune would delete | deleted, as prune would (a prune interrupted between its two deletes leaves one) |
/// | one final, partner missing, otherwise (finished, or footerless with no WAL row of its window) | quarantined: its rows are in no WAL record (a footerless one may be a finished file whose trailer rotted) |
pub(crate) async fn scan<F: Fs>(
    fs: &F,
    dir: &Path,
    config: &Config,
    wal_heights: &std::collections::BTreeSet<u64>,
    effects: &mut Effects,
) -> Result<Scan> {
    let names = fs.list(dir).await.map_err(|e| Error::io(dir, e))?;
    let mut listing = group_listing(&names);
    let open_starts: std::collections::BTreeSet<u64> = listing.open.keys().copied().collect();
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
                if complete_rename(fs, dir, start, open_kind, effects).await? {
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
                            quarantine_stray(fs, dir, path, effects).await?;
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
                effects
                    .discard(fs, dir, paths, DiscardReason::OpenPairOfCrashedStore)
                    .await?;
            }
        }
    }
    for name in &listing.stray_open {
        quarantine_stray(fs, dir, dir.join(name), effects).await?;
    }
    if renamed {
        effects.sync_dir(fs, dir).await?;
    }
    listing.pairs.sort_unstable();
    listing.lone.sort();
    let (catalogue, seen) =
        closed_pairs(fs, dir, listing.pairs, &open_starts, wal_heights, effects).await?;
    for name in &listing.lone {
        let lone = Lone {
            name,
            open_starts: &open_starts,
            wal_heights,
        };
        lone_file(fs, dir, lone, &catalogue, seen, config, effects).await?;
    }
    Ok(Scan { catalogue, seen })
}

/// Moves an open-named file no crash leaves behind to quarantine.
async fn quarantine_stray<F: Fs>(
    fs: &F,
    dir: &Path,
    path: PathBuf,
    effects: &mut Effects,
) -> Result<()> {
    mark!("open-stray-open-file-quarantined");
    effects
        .quarantine(fs, dir, path, QuarantineReason::StrayOpenPairFile)
        .await
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
async fn complete_rename<F: Fs>(
    fs: &F,
    dir: &Path,
    start: u64,
    kind: FileKind,
    effects: &mut Effects,
) -> Result<bool> {
    let from = dir.join(open_file_name(kind, start));
    match ParquetFile::open(&from, kind, read_file(fs, &from).await?) {
        Ok(_) => {
            let to = dir.join(final_file_name(kind, start));
            effects.rename(fs, from, to).await?;
            Ok(true)
        }
        Err(e) if is_unfinished(&e) => {
            effects
                .discard(fs, dir, vec![from], DiscardReason::OpenPairOfCrashedStore)
                .await?;
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
    effects: &mut Effects,
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
        let trailing = effects.pair(dir, last, None);
        match load_pair(fs, &trailing).await {
            Ok((r, _)) => {
                seen = r.last_seen_block.max(r.max_block());
                catalogue.insert(last, Arc::new(effects.pair(dir, last, r.max_block())));
                break;
            }
            // Only when the WAL still holds rows of its window: a final-named file without a
            // footer that no record covers is not an old store's open pair but a finished file
            // whose trailer rotted, and deleting it would destroy the only copy (found by the
            // simulator's bit-rot scenario: a flipped bit in "PAR1" lost block 0).
            Err(e) if may_remove_unfinished && is_unfinished(&e) && wal_covers(last) => {
                mark!("open-unfinished-pair-removed");
                let paths = vec![trailing.receipt_path.clone(), trailing.log_path.clone()];
                effects
                    .discard(fs, dir, paths, DiscardReason::UnfinishedNewestPair)
                    .await?;
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
        let path = effects.current(dir.join(final_file_name(FileKind::Receipts, *s)));
        let index = FileIndex::load(fs, &path, FileKind::Receipts).await?;
        let max_block = index.row_groups.iter().filter_map(|g| g.max_block).max();
        seen = index.last_seen_block.max(max_block);
    }
    for s in starts {
        catalogue.insert(s, Arc::new(effects.pair(dir, s, None)));
    }
    Ok((catalogue, seen))
}

/// A final-named pair file whose partner is missing, with what tells whether the WAL holds
/// its rows.
struct Lone<'a> {
    name: &'a str,
    /// Starts of open-named pairs (a window also ends where one starts).
    open_starts: &'a std::collections::BTreeSet<u64>,
    wal_heights: &'a std::collections::BTreeSet<u64>,
}

/// Decides the fate of a final-named pair file whose partner is missing (see [`scan`]).
async fn lone_file<F: Fs>(
    fs: &F,
    dir: &Path,
    lone: Lone<'_>,
    catalogue: &BTreeMap<u64, Arc<ClosedPair>>,
    seen: Option<u64>,
    config: &Config,
    effects: &mut Effects,
) -> Result<()> {
    mark!("open-lone-pair-file");
    let name = lone.name;
    let path = dir.join(name);
    let start = parse_pair_name(name).map_or(0, |(_, s)| s);
    let unfinished = match ParquetFile::open(&path, kind_of(name), read_file(fs, &path).await?) {
        Ok(_) => false,
        Err(e) => is_unfinished(&e),
    };
    // Its window ends where the next pair on disk (final or open-named) starts. A footerless
    // file is an old store's open pair only when WAL records hold rows of that window; without
    // them it may be a finished file whose trailer rotted, the only copy of its rows.
    let end = catalogue
        .keys()
        .chain(lone.open_starts)
        .copied()
        .filter(|&s| s > start)
        .min()
        .unwrap_or(u64::MAX);
    let wal_holds_rows = lone.wal_heights.range(start..end).next().is_some();
    let prunable = config.keep_recent > 0
        && seen.is_some_and(|latest| {
            let mut starts: Vec<u64> = catalogue.keys().copied().collect();
            starts.push(start);
            starts.sort_unstable();
            starts.dedup();
            prune::select(&starts, latest.saturating_sub(config.keep_recent)).contains(&start)
        });
    if (unfinished && wal_holds_rows) || prunable {
        let reason = if prunable {
            DiscardReason::LoneFileInPrunedWindow
        } else {
            DiscardReason::UnfinishedLoneFile
        };
        return effects.discard(fs, dir, vec![path], reason).await;
    }
    mark!("open-lone-pair-file-quarantined");
    effects
        .quarantine(fs, dir, path, QuarantineReason::LonePairFile)
        .await
}

/// The blocks WAL records hold rows of: the scan may delete an unfinished pair only over them.
pub(crate) fn wal_heights(records: &[WalRecord]) -> std::collections::BTreeSet<u64> {
    records
        .iter()
        .filter(|r| r.receipts > 0)
        .map(|r| r.height)
        .collect()
}

/// Whether replay skips a record: it is empty, or its block is below the floor (in closed
/// files). The one rule replay and `inspect`'s open window share.
pub(crate) fn replay_skips(rec: &WalRecord, floor: u64) -> bool {
    let below = if crate::planted!(ReplayBoundaryOffByOne) {
        rec.height <= floor && floor > 0
    } else {
        rec.height < floor
    };
    rec.receipts == 0 || below
}

/// What `open` hands back besides the request channel.
pub(crate) struct Opened {
    pub tx: mpsc::Sender<Request>,
    pub ending: SharedEnding,
    pub replayed: Vec<ReplayedBlock>,
    pub published: Published,
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
    let mut effects = Effects::Apply {
        quarantined: Vec::new(),
    };
    let Scan {
        catalogue,
        seen: last_seen,
    } = scan(
        &fs,
        &dir,
        &config,
        &wal_heights(&contents.records),
        &mut effects,
    )
    .await?;
    let Effects::Apply {
        mut quarantined, ..
    } = effects
    else {
        unreachable!("open applies its scan")
    };
    let file_start_block = open_floor(&catalogue);
    // The pairs trusted above may have reached their final names in a finalization a crash cut
    // before its directory sync: make the directory durable before the WAL rewrite drops the
    // records those pairs hold (found by crash points inside close: a power loss after such an
    // open undid the renames, and the WAL no longer held the blocks).
    fs.sync_dir(&dir).await.map_err(|e| Error::io(&dir, e))?;
    let (records, rewrite, wal_report) = contents.prepare(file_start_block).await?;
    quarantined.extend(wal_report.quarantined);
    let (policy, segment_bytes) = (config.sync_policy, config.wal_segment_bytes);
    let ending: SharedEnding = Arc::new(Mutex::new(None));
    let mut state = State {
        env: env.clone(),
        dir,
        config,
        wal: None,
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
        retired: Vec::new(),
        encoding: None,
        published: Publisher(Published::default()),
        last_prune_error: None,
        ending: ending.clone(),
        quarantined,
        wal_tail_cut: wal_report.tail_cut,
    };
    let before: Vec<u64> = state.catalogue.keys().copied().collect();
    // The WAL rewrite (writing and fsyncing the needed records anew, see `WalRewrite`) touches
    // only the WAL folder and replay never touches it, so the two run at once: replay's
    // staging and encoding overlap the rewrite's writes and fsync. Nothing is acked or served
    // before both are done.
    let (done, rewritten) = oneshot::channel();
    env.spawner().spawn(
        "receipt-store-wal-rewrite",
        Box::pin(async move {
            let _ = done.send(rewrite.finish(policy, segment_bytes).await);
        }),
    );
    let replayed = state.replay(records).await;
    let rewritten = rewritten
        .await
        .expect("the rewrite task runs to its end and sends its result");
    let replayed = match rewritten {
        Ok((wal, replaced)) => {
            state.wal = Some(wal);
            // Freeing the segments as read (their memory, and the page cache of those the
            // rewrite replaced) runs on the write lane, not on the way to serving.
            if crate::planted!(LeakReplacedWalSegments) {
                std::mem::forget(replaced);
            } else {
                drop(env.spawner().run_write(move || drop(replaced)));
            }
            replayed
        }
        // The records stay in the old segments (the rewrite replaces them only by a rename):
        // what replay made goes, as when replay fails.
        Err(e) => replayed.and(Err(e.into())),
    };
    let replayed = match replayed {
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
    state.publish();
    let published = state.published.0.clone();
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
    env.spawner()
        .spawn("receipt-store-coordinator", Box::pin(state.run(rx)));
    Ok(Opened {
        tx,
        ending,
        replayed,
        published,
    })
}

impl<E: Env> State<E> {
    /// Re-stages every WAL record at or above the file start into the open window, rotating on
    /// boundaries without dropping WAL segments.
    async fn replay(&mut self, records: Vec<WalRecord>) -> Result<Vec<ReplayedBlock>> {
        let mut out: Vec<ReplayedBlock> = Vec::new();
        for rec in records {
            if replay_skips(&rec, self.file_start_block) {
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
            // The rotation rule of a live write (`State::rotates_at`), written once.
            if self.rotates_at(rec.height) {
                mark!("replay-rotated");
                self.rotate(rec.height, None, false).await?;
            }
            mark!("replay-applied");
            let rows = rec.rows();
            let hashes: Vec<_> = rows.receipts.iter().map(|r| r.tx_hash).collect();
            self.stage(rec.height, rows, FlushRule::WhenIdle).await?;
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
