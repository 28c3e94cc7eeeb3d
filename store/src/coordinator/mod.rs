//! The coordinator: one task owns every piece of mutable state and serves requests from a
//! bounded channel. Request families live in their own modules: `write` (write, rotate, flush),
//! `replay` (open and WAL replay), `prune`, and `close` (close and crash).

mod close;
mod prune;
pub(crate) mod replay;
pub(crate) mod write;

pub(crate) use replay::open;
pub(crate) use write::check_input;
use write::SEALED_CHUNKS_AFTER_ACK_MAX;

use crate::env::{BlockingPool, BoxFuture, Clock, Env};
use crate::error::{Error, Result};
use crate::files::{ClosedPair, QuarantinedFile};
use crate::parquet::index::FileIndex;
use crate::parquet::writer::{EncodedPair, OpenReaders, PairWriter};
use crate::types::{Config, LogRecord, ReceiptInput, ReceiptRecord, Rows};
use crate::wal::{PendingFrame, Wal, WalTailCut};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Bound on queued requests; callers wait (asynchronously) when it is full.
pub const REQUEST_QUEUE_CAPACITY: usize = 1024;

/// Named failure points, in the order a write meets them.
pub mod failpoints {
    pub const AFTER_WAL_APPEND: &str = "after-wal-append";
    pub const BEFORE_FLUSH: &str = "before-flush";
    pub const AFTER_RECEIPT_ROW_GROUP: &str = "after-receipt-row-group";
    pub const AFTER_FLUSH: &str = "after-flush";
    pub const AFTER_CLOSE_WRITERS: &str = "after-close-writers";
    pub const AFTER_WAL_CLEAR: &str = "after-wal-clear";
    pub const MID_PRUNE: &str = "mid-prune";
    pub const ALL: [&str; 7] = [
        AFTER_WAL_APPEND,
        BEFORE_FLUSH,
        AFTER_RECEIPT_ROW_GROUP,
        AFTER_FLUSH,
        AFTER_CLOSE_WRITERS,
        AFTER_WAL_CLEAR,
        MID_PRUNE,
    ];
}

/// Per-store fault hook: asked at every failpoint; `true` makes that step fail. It belongs to
/// one store instance, so concurrent tests and simulator runs never see each other's faults
/// (unlike the process-global `fail` registry, which is also consulted under the `failpoints`
/// feature).
pub trait FaultHook: Send + Sync + 'static {
    fn should_fail(&self, point: &'static str) -> bool;
}

/// Rows of the open window held in memory (a piece one write staged, or a chunk of pieces sealed
/// for a flush), shared with readers. Rows written to the open pair's files are read from there.
#[derive(Debug, Default, Clone)]
pub struct Chunk {
    pub receipts: Vec<ReceiptRecord>,
    pub logs: Vec<LogRecord>,
    /// `logs`' positions in the logs file's row order, when its writer sorted them.
    pub log_order: Option<Vec<u32>>,
}

impl Chunk {
    /// Whether the chunk may hold rows of blocks in `[from, to]`. Rows are appended in block
    /// order (writes are monotonic), so the first and last receipt bound the chunk.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        match (self.receipts.first(), self.receipts.last()) {
            (Some(first), Some(last)) => {
                debug_assert!(first.block_number <= last.block_number);
                first.block_number <= to && last.block_number >= from
            }
            _ => false,
        }
    }
}

/// The open pair's row groups already written to its unfinished files, and handles to read
/// them (a snapshot holding them reads its row groups even after the pair is renamed or pruned).
#[derive(Clone)]
pub struct OpenFiles {
    pub readers: OpenReaders,
    /// One index per written row group, in block order (each flush writes one of each kind; a
    /// flush without logs writes no logs row group).
    pub receipt_groups: Vec<Arc<FileIndex>>,
    pub log_groups: Vec<Arc<FileIndex>>,
}

/// What a read needs: closed pairs (kept alive by the `Arc`s, so prune defers their deletion) and
/// the open window: its row groups in the unfinished files, then its rows still in memory (all
/// of them in later blocks than the written ones).
#[derive(Clone, Default)]
pub struct Snapshot {
    pub closed: Vec<Arc<ClosedPair>>,
    pub written: Option<OpenFiles>,
    pub open: Vec<Arc<Chunk>>,
}

/// The snapshot readers take without a message to the coordinator (which may be busy with a
/// write for milliseconds): the coordinator publishes a new one after every change a reader
/// may see, before it answers the call that made it. `Err` holds why the store is poisoned;
/// `None` once the coordinator has ended (the store is closed or crashed).
#[derive(Clone, Default)]
pub(crate) struct Published(Arc<Mutex<Option<std::result::Result<Snapshot, String>>>>);

impl Published {
    pub fn get(&self) -> Option<std::result::Result<Snapshot, String>> {
        self.0.lock().unwrap().clone()
    }

    fn set(&self, value: Option<std::result::Result<Snapshot, String>>) {
        // The old snapshot is dropped outside the lock.
        let old = std::mem::replace(&mut *self.0.lock().unwrap(), value);
        drop(old);
    }
}

/// The coordinator's side of [`Published`]: whatever way the coordinator ends (close, crash,
/// every handle dropped, its task killed), nothing stays published, so no snapshot keeps a
/// file open after it.
pub(crate) struct Publisher(pub Published);

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// Observable state, for tests, the simulator and the inspector.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub last_seen_block: Option<u64>,
    pub latest_version: Option<u64>,
    pub file_start_block: u64,
    pub closed_pairs: Vec<u64>,
    pub open_pair: Option<u64>,
    pub wal_segments: usize,
    pub poisoned: Option<String>,
    pub max_blocks_per_file: u64,
    /// The last prune pass's error, if it failed (the pass is retried on the next tick).
    pub last_prune_error: Option<String>,
    /// Pruned pairs whose files are not deleted yet (in use by a snapshot, or a delete failed).
    pub pending_deletes: usize,
    /// What the last open moved or copied to `<dir>/quarantine/` because it could not use it
    /// (see `files::QuarantineReason`); earlier opens' files are still there, listed by
    /// `receipt-store inspect`.
    pub quarantined: Vec<QuarantinedFile>,
    /// Bytes the last open cut from the end of the WAL (kept in quarantine), if any.
    pub wal_tail_cut: Option<WalTailCut>,
    /// Receipts row groups written to the open pair's (unfinished) receipts file.
    pub open_row_groups_written: usize,
    /// Sealed chunks not written to the open pair's files yet: a replay's backlog, which the
    /// coordinator encodes one chunk at a time on the write lane while it serves requests.
    pub open_chunks_unwritten: usize,
    /// Receipts of the open window held in memory: unwritten chunks and the buffer since the
    /// last flush. Everything else of the window is read from its files.
    pub open_receipts_in_memory: usize,
}

/// What serving a request left the coordinator to do.
enum Served {
    /// Take the next request.
    Going,
    /// End (a close or a crash): drop the state, then give the caller this answer.
    Ended(Box<dyn FnOnce() + Send>),
}

/// A valid write's work done on the caller's task before the coordinator gets it: the WAL
/// payload encoded (most of an append's CPU) and the rows built (one allocation pass over the
/// block, on the thread that allocated its input).
pub(crate) struct Prepared {
    pub frame: PendingFrame,
    pub rows: Rows,
}

pub(crate) enum Request {
    /// The reply carries the chunks this write retired (rows now in the pair's files), for
    /// the caller to free on its own thread: the caller allocated most of those rows, and
    /// glibc frees a block's thousands of them several times faster on the thread whose arena
    /// they came from (freeing them on the write lane cost 8% of a 500-block write).
    ///
    /// `prepared`: the WAL record's payload and the rows, both built by the caller when its
    /// input is valid (then `receipts` is empty: its buffers moved into the rows).
    Write {
        height: u64,
        receipts: Vec<ReceiptInput>,
        prepared: Option<Prepared>,
        reply: oneshot::Sender<(Result<()>, Vec<Arc<Chunk>>)>,
    },
    SetMaxBlocksPerFile {
        n: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    SetBlockFlushInterval {
        n: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Flush {
        reply: oneshot::Sender<Result<()>>,
    },
    Status {
        reply: oneshot::Sender<Result<Status>>,
    },
    Prune {
        reply: oneshot::Sender<Result<usize>>,
    },
    PruneBelow {
        block: u64,
        reply: oneshot::Sender<Result<usize>>,
    },
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
    Crash {
        reply: oneshot::Sender<()>,
    },
}

/// How the store ended, shared with every handle so late callers get the same answer.
#[derive(Clone, Debug)]
pub(crate) enum Ending {
    Closed(std::result::Result<(), String>),
    Crashed,
}

pub(crate) type SharedEnding = Arc<Mutex<Option<Ending>>>;

/// The open pair and the rows of its window. Rows move one way: piece -> sealed chunk -> row
/// group in the pair's files; only the first two are in memory.
pub(crate) struct OpenPair<E: Env> {
    pub writer: PairWriter<E::Fs>,
    /// Rows staged since the last seal, one immutable piece per write (its [`crate::Rows`] as the
    /// writer built them, see [`State::stage`]), so a published snapshot shares them instead of
    /// copying them.
    pub pieces: Vec<Arc<Chunk>>,
    /// Sealed chunks not yet written, in block order, each the pieces of one row group (the
    /// backlog replay leaves, see [`State::replay`]; a live write's are written right after its
    /// ack): in memory until the coordinator writes them, before any later flush.
    pub sealed: VecDeque<Vec<Arc<Chunk>>>,
    /// Indexes of the row groups written to the pair's files, in block order.
    pub receipt_groups: Vec<Arc<FileIndex>>,
    pub log_groups: Vec<Arc<FileIndex>>,
    pub rows: u64,
}

impl<E: Env> OpenPair<E> {
    /// Sealed chunks not yet written to the pair's files.
    pub fn backlog(&self) -> usize {
        self.sealed.len()
    }

    /// Seals the pieces staged since the last seal as one chunk (one row group per file).
    pub fn seal_pieces(&mut self) {
        if !self.pieces.is_empty() {
            self.sealed.push_back(std::mem::take(&mut self.pieces));
        }
    }

    /// Receipts of the window held in memory.
    fn receipts_in_memory(&self) -> usize {
        let pieces = self.sealed.iter().flatten().chain(&self.pieces);
        pieces.map(|c| c.receipts.len()).sum::<usize>()
    }
}

pub(crate) struct State<E: Env> {
    pub env: E,
    pub dir: PathBuf,
    pub config: Config,
    pub wal: Option<Wal<E::Fs>>,
    /// Closed pairs by start block.
    pub catalogue: BTreeMap<u64, Arc<ClosedPair>>,
    pub open: Option<OpenPair<E>>,
    /// Start of the next pair to open (`fileStartBlock`).
    pub file_start_block: u64,
    pub last_seen: Option<u64>,
    pub latest: Option<u64>,
    pub blocks_since_flush: u64,
    /// (block, logs already indexed in it): makes log indices block-wide across calls.
    pub log_cursor: Option<(u64, u32)>,
    /// Set by any failure after the WAL append: only a reopen (replay) restores a known state.
    pub poisoned: Option<String>,
    pub hook: Option<Arc<dyn FaultHook>>,
    /// Pruned pairs whose files are still used by a live snapshot.
    pub doomed: Vec<Arc<ClosedPair>>,
    /// Chunks written to the open pair's files since the last request was answered: a write's
    /// reply hands them to its caller to free (see [`Request::Write`]); after any other
    /// request the write lane frees them.
    pub retired: Vec<Arc<Chunk>>,
    /// The oldest sealed chunk's row groups being encoded on the write lane (see
    /// [`State::start_encoding`]); at most one at a time, appended in block order.
    pub encoding: Option<BoxFuture<EncodedPair>>,
    pub published: Publisher,
    pub last_prune_error: Option<String>,
    pub ending: SharedEnding,
    /// What open quarantined, and the WAL tail it cut: reported in `Status`.
    pub quarantined: Vec<QuarantinedFile>,
    pub wal_tail_cut: Option<WalTailCut>,
}

impl<E: Env> State<E> {
    pub(crate) fn failpoint(&self, point: &'static str) -> Result<()> {
        if self.hook.as_ref().is_some_and(|h| h.should_fail(point)) {
            return Err(Error::Failpoint(point.to_string()));
        }
        #[cfg(feature = "failpoints")]
        {
            fail::fail_point!(point, |_| Err(Error::Failpoint(point.to_string())));
        }
        Ok(())
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => {
                crate::mark!("poisoned-call-refused");
                Err(Error::Poisoned(why.clone()))
            }
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&mut self, err: &Error) {
        if self.poisoned.is_none() {
            self.poisoned = Some(err.to_string());
        }
        // Nothing more is written until a reopen: an encode in flight is thrown away (its job
        // holds the pair's encoders, so the writer is no longer usable, and never used again).
        self.encoding = None;
    }

    fn status(&self) -> Status {
        Status {
            last_seen_block: self.last_seen,
            latest_version: self.latest,
            file_start_block: self.file_start_block,
            closed_pairs: self.catalogue.keys().copied().collect(),
            open_pair: self.open.as_ref().map(|o| o.writer.start),
            wal_segments: self.wal.as_ref().map(|w| w.segment_count()).unwrap_or(0),
            poisoned: self.poisoned.clone(),
            max_blocks_per_file: self.config.max_blocks_per_file,
            last_prune_error: self.last_prune_error.clone(),
            pending_deletes: self.doomed.len(),
            quarantined: self.quarantined.clone(),
            wal_tail_cut: self.wal_tail_cut.clone(),
            open_row_groups_written: self.open.as_ref().map_or(0, |o| o.receipt_groups.len()),
            open_chunks_unwritten: self.open.as_ref().map_or(0, |o| o.backlog()),
            open_receipts_in_memory: self.open.as_ref().map_or(0, |o| o.receipts_in_memory()),
        }
    }

    /// What reads see now; the staged buffers must be pieces already (see [`State::publish`]).
    fn snapshot(&self) -> Snapshot {
        let mut open = Vec::new();
        let mut written = None;
        if let Some(o) = &self.open {
            if !o.receipt_groups.is_empty() {
                let mut files = OpenFiles {
                    readers: o.writer.readers().clone(),
                    receipt_groups: o.receipt_groups.clone(),
                    log_groups: o.log_groups.clone(),
                };
                if crate::planted!(SkipNewestOpenRowGroup) {
                    files.receipt_groups.pop();
                    files.log_groups.pop();
                }
                written = Some(files);
            }
            // The planted bug: the chunk being encoded leaves what reads see too early.
            let encoding =
                self.encoding.is_some() && crate::planted!(ChunkUnpublishedWhileEncoding);
            open.extend(
                o.sealed
                    .iter()
                    .skip(usize::from(encoding))
                    .flatten()
                    .cloned(),
            );
            open.extend(o.pieces.iter().cloned());
        }
        Snapshot {
            closed: self.catalogue.values().cloned().collect(),
            written,
            open,
        }
    }

    /// Publishes what reads see now (see [`Published`]). A poisoned store's open window may
    /// hold half a write: it publishes only why, and reads fail until a reopen replays the WAL.
    pub(crate) fn publish(&mut self) {
        let value = match &self.poisoned {
            Some(why) => Err(why.clone()),
            None => Ok(self.snapshot()),
        };
        self.published.0.set(Some(value));
    }

    /// Serves requests until close, crash, or every handle is gone. Between requests it
    /// appends the row groups the write lane finished encoding and starts the next sealed
    /// chunk's (a replay's backlog, or a live write's flush).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let prune_on = self.config.keep_recent > 0 && !self.config.prune_interval.is_zero();
        let clock = self.env.clock().clone();
        let mut tick = Box::pin(clock.sleep(self.config.prune_interval));
        // Held while serving or encoding, dropped while only waiting for a request: the pool
        // lends the cores kept for commits to reads only while it is dropped (see
        // `BlockingPool::foreground`).
        let mut busy = Some(self.env.spawner().foreground());
        enum Event {
            Request(Option<Request>),
            Encoded(Box<EncodedPair>),
            PruneDue,
        }
        loop {
            self.publish();
            if let Err(e) = self.start_encoding() {
                crate::mark!("poison-backlog");
                self.poison(&e);
                continue;
            }
            if rx.is_empty() && self.encoding.is_none() {
                busy = None;
            }
            let event = {
                let encoded = async {
                    match self.encoding.as_mut() {
                        Some(job) => job.await,
                        None => std::future::pending().await,
                    }
                };
                let prune_due = async {
                    match prune_on {
                        true => (&mut tick).await,
                        false => std::future::pending().await,
                    }
                };
                // Requests first: a commit waits for no encode, only for its own work.
                tokio::select! {
                    biased;
                    req = rx.recv() => Event::Request(req),
                    done = encoded => Event::Encoded(Box::new(done)),
                    () = prune_due => Event::PruneDue,
                }
            };
            busy.get_or_insert_with(|| self.env.spawner().foreground());
            match event {
                Event::Request(Some(req)) => {
                    if let Served::Ended(answer) = self.serve(req).await {
                        return self.end(answer);
                    }
                }
                // Every handle dropped without close: leave the open pair unfinished; its rows
                // are in the WAL and the next open replays them.
                Event::Request(None) => return,
                Event::Encoded(done) => {
                    self.encoding = None;
                    crate::mark!("flush-backlog-written");
                    // Chunks retired before this one go to the write lane; this one waits for
                    // the next write's caller to free it (see `Request::Write`).
                    self.free_retired();
                    if let Err(e) = self.append_encoded(*done).await {
                        crate::mark!("poison-backlog");
                        self.poison(&e);
                    }
                }
                Event::PruneDue => {
                    tick = Box::pin(clock.sleep(self.config.prune_interval));
                    let _ = self.prune().await;
                }
            }
        }
    }

    /// Serves one request (see [`Served`]).
    async fn serve(&mut self, req: Request) -> Served {
        if self.encoding.is_some() {
            crate::mark!("flush-overlapped-request");
        }
        match req {
            Request::Write {
                height,
                receipts,
                prepared,
                reply,
            } => {
                let r = self.write(height, receipts, prepared).await;
                // Published before the answer: a read after an acked write sees it.
                self.publish();
                let _ = reply.send((r, std::mem::take(&mut self.retired)));
                // After the ack: the caller builds its next block while the row groups this
                // write sealed are encoded (their chunks go back to it with the next reply).
                self.advance_after_ack().await;
                return Served::Going;
            }
            Request::SetMaxBlocksPerFile { n, reply } => {
                let r = if n == 0 {
                    Err(Error::ZeroMaxBlocksPerFile)
                } else {
                    self.config.max_blocks_per_file = n;
                    Ok(())
                };
                let _ = reply.send(r);
            }
            Request::SetBlockFlushInterval { n, reply } => {
                self.config.block_flush_interval = n;
                let _ = reply.send(Ok(()));
            }
            Request::Flush { reply } => {
                // A flush that fails part way may have written a row group to one file of
                // the pair and not the other, or left the encoder holding bytes it already
                // counted: the open window can no longer be trusted, so the store poisons
                // itself like a failed write (a retry would write rows twice).
                let r = match self.check_usable() {
                    Ok(()) => {
                        crate::mark!("flush-explicit");
                        let r = self.flush_open().await;
                        if let Err(e) = &r {
                            crate::mark!("poison-flush");
                            self.poison(e);
                        }
                        r
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Request::Status { reply } => {
                // What status reports is settled: the chunks the last writes left to the
                // write lane are appended first (a replay's longer backlog shows as unwritten).
                if let Err(e) = self.write_sealed_up_to(SEALED_CHUNKS_AFTER_ACK_MAX).await {
                    crate::mark!("poison-backlog");
                    self.poison(&e);
                }
                // Published before the answer: a read after the status sees what it reports.
                self.publish();
                let _ = reply.send(Ok(self.status()));
            }
            Request::Prune { reply } => {
                let r = self.prune().await;
                let _ = reply.send(r);
            }
            Request::PruneBelow { block, reply } => {
                let r = self.prune_below(Some(block)).await;
                let _ = reply.send(r);
            }
            Request::Close { reply } => {
                let r = self.close().await;
                let ending = Ending::Closed(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                *self.ending.lock().unwrap() = Some(ending);
                // After the ending: a read that finds nothing published reports it.
                self.published.0.set(None);
                return Served::Ended(Box::new(move || {
                    let _ = reply.send(r);
                }));
            }
            Request::Crash { reply } => {
                self.crash();
                *self.ending.lock().unwrap() = Some(Ending::Crashed);
                self.published.0.set(None);
                return Served::Ended(Box::new(move || {
                    let _ = reply.send(());
                }));
            }
        }
        self.free_retired();
        Served::Going
    }

    /// Ends the coordinator: drops every piece of its state (closing every file it holds) and
    /// only then answers the close or crash that ended it, so a caller whose close returned
    /// finds no file of the store open (the coordinator may run on another thread than
    /// the caller, a multi-threaded runtime's other worker).
    fn end(self, answer: Box<dyn FnOnce() + Send>) {
        drop(self);
        answer();
    }

    /// Frees the chunks retired serving anything but a write (whose caller frees them): a flush,
    /// the replay backlog. The write lane frees them; an env that runs work inline frees them
    /// here, when the unpolled job is dropped.
    fn free_retired(&mut self) {
        if !self.retired.is_empty() {
            let retired = std::mem::take(&mut self.retired);
            drop(self.env.spawner().run_write(move || drop(retired)));
        }
    }
}
