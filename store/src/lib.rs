//! `receipt-store`: EVM transaction receipts and logs in parquet file pairs, one pair per window
//! of `max_blocks_per_file` blocks, with a write-ahead log covering the open window and one
//! coordinator task owning all mutable state.
//!
//! The store is written against the seams in [`env`] so the simulator can drive it
//! deterministically. Durability contract: `write_receipts` returns `Ok` only once the block's
//! WAL record is durable under the configured [`SyncPolicy`] (`always`: fsynced, survives power
//! loss; `never`: written, survives a process crash). A rotation makes the closed pair durable
//! (data and directory entry) before the WAL segments it covers are removed.
//!
//! Departures from the upstream Go store (`sei-db` `parquet_v2`), each a fix:
//! * no zero sentinel: the last seen block is an `Option`, restored at open;
//! * a non-empty write below the file start block (a window already sealed in a closed file) is
//!   rejected instead of landing in a file named above its block (spec 11.1c, 11.9);
//! * any failure after the WAL append poisons the store: later writes fail until a reopen
//!   replays the WAL, so a failed flush never writes rows twice (11.15) and a failed rotation
//!   never leaves half-open writers (11.16); a failed fsync is never retried and trusted;
//! * log indices are block-wide across several calls for the same block (11.8);
//! * `get_receipt` returns the earliest block holding the hash (11.11); reads see the open
//!   window without a separate cache (11.10, 11.12) and never run on the coordinator (11.19);
//! * deletion failures are reported, never swallowed (11.3);
//! * files carry a crc32c of their body in the footer metadata, verified on first open;
//! * every `*.parquet` is a finished file (the open pair is written under hidden `.open` names),
//!   and nothing the WAL does not cover is ever deleted: it goes to `quarantine/` (issue 9);
//! * the last seen block survives a reopen (footer key) and empty blocks raise the latest block.

#[cfg(feature = "canary")]
pub mod canary;
pub mod coordinator;
pub mod env;
pub mod error;
pub mod files;
pub mod inspect;
#[cfg(feature = "marks")]
pub mod marks;
pub mod parquet;
pub mod query;
pub mod types;
pub mod wal;

/// True when the planted bug `$c` is active (always false without the `canary` feature).
macro_rules! planted {
    ($c:ident) => {{
        #[cfg(feature = "canary")]
        let on = crate::canary::active(crate::canary::Canary::$c);
        #[cfg(not(feature = "canary"))]
        let on = false;
        on
    }};
}
pub(crate) use planted;

/// Counts a hit of the named coverage mark (nothing without the `marks` feature); see `marks`.
macro_rules! mark {
    ($name:literal) => {{
        #[cfg(feature = "marks")]
        crate::marks::hit($name);
    }};
}
pub(crate) use mark;

pub use coordinator::{failpoints, FaultHook, Snapshot, Status};
pub use error::{Error, FilesError, Result};
pub use files::{QuarantineReason, QuarantinedFile};
pub use query::LogFilter;
pub use types::*;
pub use wal::{WalTailCut, WalTailKind};

use coordinator::{Ending, Prepared, Published, Request, SharedEnding};
use env::Env;
use query::{IndexCache, Reader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use wal::PendingFrame;

/// A handle to an open store. Cheap to clone; every clone talks to the same coordinator.
pub struct Store<E: Env> {
    env: E,
    dir: PathBuf,
    tx: mpsc::Sender<Request>,
    ending: SharedEnding,
    replayed: Arc<Mutex<Vec<ReplayedBlock>>>,
    cache: Arc<Mutex<IndexCache>>,
    published: Published,
}

impl<E: Env> Clone for Store<E> {
    fn clone(&self) -> Self {
        Store {
            env: self.env.clone(),
            dir: self.dir.clone(),
            tx: self.tx.clone(),
            ending: self.ending.clone(),
            replayed: self.replayed.clone(),
            cache: self.cache.clone(),
            published: self.published.clone(),
        }
    }
}

impl<E: Env> Store<E> {
    /// Opens (creating if needed) the store in `dir`: scans closed pairs (completing a
    /// finalization a crash interrupted, removing the open pair of a crashed store, moving what
    /// it cannot use to `quarantine/`), replays the WAL into the open window and starts the
    /// coordinator.
    pub async fn open(env: E, dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        Self::open_with_hook(env, dir, config, None).await
    }

    /// As [`Store::open`], with a per-store fault hook consulted at every failpoint.
    pub async fn open_with_hook(
        env: E,
        dir: impl AsRef<Path>,
        config: Config,
        hook: Option<Arc<dyn FaultHook>>,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let cache_files = config.index_cache_files.max(1);
        let opened = coordinator::open(env.clone(), dir.clone(), config, hook).await?;
        Ok(Store {
            env,
            dir,
            tx: opened.tx,
            ending: opened.ending,
            replayed: Arc::new(Mutex::new(opened.replayed)),
            cache: Arc::new(Mutex::new(IndexCache::new(cache_files))),
            published: opened.published,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Read-path counters: (bytes read to build file indexes, bytes of whole files read for
    /// rows, indexes cached now).
    pub fn read_stats(&self) -> (u64, u64, usize) {
        let c = self.cache.lock().unwrap();
        (c.index_bytes_read, c.data_bytes_read, c.len())
    }

    /// The blocks replayed from the WAL at open, with their tx hashes; take-and-clear.
    pub fn take_replayed_blocks(&self) -> Vec<ReplayedBlock> {
        std::mem::take(&mut *self.replayed.lock().unwrap())
    }

    fn gone(&self) -> Error {
        match &*self.ending.lock().unwrap() {
            Some(Ending::Crashed) => Error::Crashed,
            _ => Error::Closed,
        }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        self.request(make).await.unwrap_or_else(|| Err(self.gone()))
    }

    /// Sends a request and waits for its reply; `None` when the coordinator has ended.
    async fn request<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Request) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Stores one block's receipts (one WAL record per call). Empty `receipts` observes the
    /// block. Heights below the last seen block fail with `non-monotonic`.
    pub async fn write_receipts(&self, height: u64, receipts: Vec<ReceiptInput>) -> Result<()> {
        // The WAL payload is encoded and the rows are built here, on the caller's task, while
        // the coordinator may still be serving the previous block. Only valid input is
        // prepared; the coordinator checks everything again in its own order, so errors do not
        // change.
        let valid = !receipts.is_empty() && coordinator::check_input(&receipts).is_ok();
        let (receipts, prepared) = if valid {
            let frame = PendingFrame::encode(height, &receipts);
            let rows = Rows::of(height, receipts).with_log_order();
            (Vec::new(), Some(Prepared { frame, rows }))
        } else {
            (receipts, None)
        };
        let request = |reply| Request::Write {
            height,
            receipts,
            prepared,
            reply,
        };
        match self.request(request).await {
            // The rows this write retired are freed here, on the caller's thread.
            Some((r, retired)) => {
                drop(retired);
                r
            }
            None => Err(self.gone()),
        }
    }

    /// Changes the window size for future rotations; 0 is rejected.
    pub async fn set_max_blocks_per_file(&self, n: u64) -> Result<()> {
        self.call(|reply| Request::SetMaxBlocksPerFile { n, reply })
            .await
    }

    /// Sets the flush interval directly; 0 disables automatic flushing.
    pub async fn set_block_flush_interval(&self, n: u64) -> Result<()> {
        self.call(|reply| Request::SetBlockFlushInterval { n, reply })
            .await
    }

    /// Flushes buffered rows of the open pair as one row group.
    pub async fn flush(&self) -> Result<()> {
        self.call(|reply| Request::Flush { reply }).await
    }

    /// Runs one prune pass now (the same as a prune tick); returns the pairs deleted.
    pub async fn prune_now(&self) -> Result<usize> {
        self.call(|reply| Request::Prune { reply }).await
    }

    /// Prunes every closed pair whose blocks are all below `block`, whatever `keep_recent` says;
    /// returns the pairs deleted. The newest closed pair is always kept (it anchors the file
    /// start and last seen block after a reopen), and a pair a live read still uses is deleted
    /// once that read is done (it is no longer served from now on).
    pub async fn prune_below(&self, block: u64) -> Result<usize> {
        self.call(|reply| Request::PruneBelow { block, reply })
            .await
    }

    /// The latest block (upstream's `LatestVersion`): the highest block written or observed
    /// empty, remembered across reopens. `Ok(None)` before the first block.
    pub async fn latest_version(&self) -> Result<Option<u64>> {
        Ok(self.status().await?.latest_version)
    }

    /// The earliest block the store still holds a receipt for (closed files or the open
    /// window); it moves up as pruning deletes windows. `Ok(None)` when it holds none.
    pub async fn earliest_version(&self) -> Result<Option<u64>> {
        let snap = self.snapshot().await?;
        self.reader().earliest_block(&snap).await
    }

    pub async fn status(&self) -> Result<Status> {
        self.call(|reply| Request::Status { reply }).await
    }

    /// A read snapshot: the closed pairs and open-window rows visible now. Taken from what the
    /// coordinator last published, without waiting for it: a read never queues behind a write.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        match self.published.get() {
            Some(Ok(snapshot)) => Ok(snapshot),
            Some(Err(why)) => {
                mark!("poisoned-call-refused");
                Err(Error::Poisoned(why))
            }
            None => Err(self.gone()),
        }
    }

    fn reader(&self) -> Reader<'_, E::Fs, E::Spawner> {
        Reader {
            fs: self.env.fs(),
            pool: self.env.spawner(),
            cache: &self.cache,
        }
    }

    /// The receipt from the earliest block holding `hash`; `Ok(None)` when there is none.
    pub async fn get_receipt(&self, hash: &TxHash) -> Result<Option<ReceiptRecord>> {
        let snap = self.snapshot().await?;
        Ok(self
            .reader()
            .receipts_by_hash(&snap, hash, None, true)
            .await?
            .into_iter()
            .next())
    }

    /// The receipt for `hash` in `block`, if any.
    pub async fn get_receipt_in_block(
        &self,
        hash: &TxHash,
        block: u64,
    ) -> Result<Option<ReceiptRecord>> {
        let snap = self.snapshot().await?;
        Ok(self
            .reader()
            .receipts_by_hash(&snap, hash, Some(block), true)
            .await?
            .into_iter()
            .next())
    }

    /// eth_getLogs: ordered by block, tx index, log index.
    pub async fn get_logs(&self, filter: &LogFilter) -> Result<Vec<LogRecord>> {
        filter.validate()?;
        let snap = self.snapshot().await?;
        self.reader().logs(&snap, filter).await
    }

    /// Every receipt with a block in `[from, to]`, in block order (used to compare whole states).
    pub async fn receipts_in_range(&self, from: u64, to: u64) -> Result<Vec<ReceiptRecord>> {
        let snap = self.snapshot().await?;
        self.reader().receipts_in_range(&snap, from, to).await
    }

    /// Closes the store: finalizes the open pair (or discards it when that fails; its rows stay
    /// in the WAL), closes the WAL. Idempotent: every caller gets the same result. Afterwards
    /// every call fails with `store closed`.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Request::Close { reply }).await.is_ok();
        if sent {
            if let Ok(r) = rx.await {
                return r;
            }
        }
        match self.ending.lock().unwrap().clone() {
            Some(Ending::Closed(Ok(()))) => Ok(()),
            Some(Ending::Closed(Err(msg))) => Err(Error::Joined(msg)),
            Some(Ending::Crashed) => Err(Error::Crashed),
            None => Err(Error::Closed),
        }
    }

    /// Test and simulation helper: drops the open pair and the WAL without finalizing anything,
    /// as a kill -9 would. A later `close()` reports the crash instead of a clean close.
    pub async fn crash(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Crash { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}
