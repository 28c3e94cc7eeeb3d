//! A read-only view of a data directory: what [`crate::Store::open`] would decide and serve,
//! without doing any of it.
//!
//! [`DirectoryView::load`] runs open's own decision code, not a copy of it: the WAL is read by
//! `Wal::read_only` (open's reader, minus creating the folder), the pairs are scanned by the
//! startup scan of `coordinator::replay` with its effects written down as [`RecoveryAction`]s
//! instead of carried out, the floor of the open window is open's, the WAL's bad bytes are
//! judged by the WAL's own table ([`WalPlan`]), and the open window keeps exactly the records
//! replay applies. Files are only opened for reading: nothing is created, renamed, truncated or
//! deleted, so a view is safe on the directory of a running or a crashed node.
//!
//! Queries run through the store's reader (`query`) over the closed pairs a store would serve
//! and the open window rebuilt from the WAL.
//!
//! One difference by design: where a store refuses to open because of the WAL (a corrupt record
//! that may hold needed blocks), the view still serves the closed pairs and reports the refusal
//! ([`DirectoryView::refusal`]); the open window is then empty.

use crate::coordinator::replay::{open_floor, replay_skips, scan, wal_heights, Effects, Scan};
pub use crate::coordinator::replay::{DiscardReason, RecoveryAction};
use crate::coordinator::write::number_logs_block_wide;
use crate::coordinator::{Chunk, Snapshot};
use crate::env::Fs;
use crate::error::{Error, Result, WalError};
use crate::files::{group_listing, ClosedPair};
use crate::query::{IndexCache, LogFilter, Reader};
use crate::types::{Config, LogRecord, ReceiptRecord, TxHash};
pub use crate::wal::{SegmentView, WalPlan};
use crate::wal::{Wal, WalContents, WalRecord, WAL_DIR_NAME};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Index cache size of a view: one query touches each file once, so a small cache is enough.
const VIEW_INDEX_CACHE_FILES: usize = 16;

/// What a store opened on a directory would serve, and what opening it would change.
pub struct DirectoryView<F: Fs> {
    fs: F,
    dir: PathBuf,
    /// Whether the directory holds any pair file (finished or open-named) or a `wal/` folder.
    holds_store_files: bool,
    wal_dir_present: bool,
    closed: Vec<Arc<ClosedPair>>,
    last_seen_block: Option<u64>,
    open_floor: u64,
    actions: Vec<RecoveryAction>,
    wal: Option<WalContents<F>>,
    wal_plan: WalPlan,
    refusal: Option<Error>,
    open: Arc<Chunk>,
    cache: Mutex<IndexCache>,
}

impl<F: Fs + Clone> DirectoryView<F> {
    /// Reads the directory as `Store::open` with `config` would (only `keep_recent` matters: it
    /// decides whether a lone file lies in a window prune deletes). Errors are the ones open
    /// returns, with the same texts, except a refusal caused by the WAL (see the module doc).
    pub async fn load(fs: &F, dir: &Path, config: &Config) -> Result<Self> {
        let names = fs.list(dir).await.map_err(|e| Error::io(dir, e))?;
        let listing = group_listing(&names);
        let any_pair_file = !(listing.pairs.is_empty()
            && listing.lone.is_empty()
            && listing.open.is_empty()
            && listing.stray_open.is_empty());
        let wal_dir = dir.join(WAL_DIR_NAME);
        let wal_dir_present = match fs.list(&wal_dir).await {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(&wal_dir, e)),
        };
        let (wal, mut refusal) = match Wal::read_only(fs.clone(), dir).await {
            Ok(c) => (Some(c), None),
            Err(e @ WalError::Corrupt { .. }) => (None, Some(Error::Wal(e))),
            Err(e) => return Err(e.into()),
        };
        let records: &[WalRecord] = wal.as_ref().map_or(&[], |w| &w.records[..]);
        let mut effects = Effects::Record {
            actions: Vec::new(),
        };
        let Scan { catalogue, seen } =
            scan(fs, dir, config, &wal_heights(records), &mut effects).await?;
        let Effects::Record { actions } = effects else {
            unreachable!("a view records its scan")
        };
        let floor = open_floor(&catalogue);
        let wal_plan = wal.as_ref().map(|w| w.plan(floor)).unwrap_or_default();
        if let Some(e) = &wal_plan.refused {
            refusal = Some(Error::Joined(e.to_string()));
        }
        let mut open = Chunk::default();
        if refusal.is_none() {
            if let Err(e) = stage_open_window(records, floor, seen, &mut open) {
                refusal = Some(e);
                open = Chunk::default();
            }
        }
        Ok(DirectoryView {
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            holds_store_files: any_pair_file || wal_dir_present,
            wal_dir_present,
            closed: catalogue.into_values().collect(),
            last_seen_block: seen,
            open_floor: floor,
            actions,
            wal,
            wal_plan,
            refusal,
            open: Arc::new(open),
            cache: Mutex::new(IndexCache::new(VIEW_INDEX_CACHE_FILES)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// False for a directory with no pair file and no `wal/` (an empty or a wrong directory).
    pub fn holds_store_files(&self) -> bool {
        self.holds_store_files
    }

    pub fn wal_dir_present(&self) -> bool {
        self.wal_dir_present
    }

    /// The closed pairs a store would serve, ascending; paths are where the files are now (a
    /// file whose rename open would complete is still under its open-pair name).
    pub fn closed_pairs(&self) -> &[Arc<ClosedPair>] {
        &self.closed
    }

    /// The last seen block the closed pairs record (a store's `Status::last_seen_block` right
    /// after open, before replay).
    pub fn last_seen_block(&self) -> Option<u64> {
        self.last_seen_block
    }

    /// The first block not in a closed file: WAL records at or above it form the open window.
    pub fn open_floor(&self) -> u64 {
        self.open_floor
    }

    /// What opening the store would rename, delete and quarantine, in the order open does it.
    pub fn actions(&self) -> &[RecoveryAction] {
        &self.actions
    }

    /// The WAL's segments as read (none when the WAL could not be read: see `refusal`).
    pub fn wal_segments(&self) -> Vec<SegmentView<'_>> {
        self.wal
            .as_ref()
            .map(|w| w.segments().collect())
            .unwrap_or_default()
    }

    /// Every valid WAL record, duplicates merged, in sequence order.
    pub fn wal_records(&self) -> &[WalRecord] {
        self.wal.as_ref().map_or(&[], |w| &w.records[..])
    }

    /// What open would do with the WAL's bad bytes.
    pub fn wal_plan(&self) -> &WalPlan {
        &self.wal_plan
    }

    /// Why a store would refuse to open on the WAL, if it would; the open window is then not
    /// served (it is empty), while the closed pairs still are.
    pub fn refusal(&self) -> Option<&Error> {
        self.refusal.as_ref()
    }

    /// The open window's rows: the WAL records replay applies, staged as replay stages them.
    pub fn open_window(&self) -> &Chunk {
        &self.open
    }

    /// The CLI answers one query and exits: its decoding runs on the calling task.
    fn reader(&self) -> Reader<'_, F, crate::env::Inline> {
        Reader {
            fs: &self.fs,
            pool: &crate::env::Inline,
            cache: &self.cache,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            closed: self.closed.clone(),
            written: None,
            open: vec![self.open.clone()],
        }
    }

    /// Where a served block's rows are: its closed pair's receipts file, or the WAL folder for
    /// the open window.
    pub fn source_of(&self, block: u64) -> PathBuf {
        if block >= self.open_floor {
            return self.dir.join(WAL_DIR_NAME);
        }
        self.closed
            .iter()
            .rev()
            .find(|p| p.start <= block)
            .map_or_else(|| self.dir.join(WAL_DIR_NAME), |p| p.receipt_path.clone())
    }

    /// As `Store::get_receipt` (earliest block first) or, with `block`,
    /// `Store::get_receipt_in_block`.
    pub async fn get_receipt(
        &self,
        hash: &TxHash,
        block: Option<u64>,
    ) -> Result<Option<ReceiptRecord>> {
        Ok(self
            .reader()
            .receipts_by_hash(&self.snapshot(), hash, block, true)
            .await?
            .into_iter()
            .next())
    }

    /// As `Store::get_logs`.
    pub async fn get_logs(&self, filter: &LogFilter) -> Result<Vec<LogRecord>> {
        filter.validate()?;
        self.reader().logs(&self.snapshot(), filter).await
    }
}

/// The open window's rows from the records replay stages (the same skip rule, the same
/// refusal of a block below one replayed before it, the same block-wide log indices), in
/// staged order.
fn stage_open_window(
    records: &[WalRecord],
    floor: u64,
    seen: Option<u64>,
    open: &mut Chunk,
) -> Result<()> {
    let mut last_seen = seen;
    let mut log_cursor: Option<(u64, u32)> = None;
    for rec in records {
        if replay_skips(rec, floor) {
            continue;
        }
        if let Some(l) = last_seen.filter(|&l| rec.height < l) {
            return Err(Error::Joined(format!(
                "wal record {} for block {} is below block {l} replayed before it",
                rec.seq, rec.height
            )));
        }
        last_seen = Some(rec.height);
        let mut rows = rec.rows();
        number_logs_block_wide(&mut log_cursor, rec.height, &mut rows);
        open.receipts.extend(rows.receipts);
        open.logs.extend(rows.logs);
    }
    Ok(())
}
