//! Writes, rotation and flushing (spec 3.1-3.5), with the fixes listed in the module docs of
//! `lib.rs`: no zero sentinel, sealed windows reject late writes, every failure after the WAL
//! append poisons the store instead of leaving half-applied state behind.

use super::{failpoints as fp, Chunk, OpenPair, State};
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use crate::files::{discard, ClosedPair};
use crate::mark;
use crate::parquet::receipts_to_batch_from;
use crate::parquet::writer::logs_row_group;
use crate::parquet::writer::{EncodedPair, PairWriter};
use crate::types::{
    LogRecord, ReceiptInput, ReceiptRecord, MAX_LOG_DATA_BYTES, MAX_RECEIPT_BYTES,
    MAX_TOPICS_PER_LOG,
};
use crate::wal::PendingFrame;
use std::collections::VecDeque;
use std::sync::Arc;

/// Rejects malformed input before anything is staged or logged.
pub(crate) fn validate(receipts: &[ReceiptInput]) -> Result<()> {
    let r = check_input(receipts);
    if r.is_err() {
        mark!("write-rejected-invalid");
    }
    r
}

/// [`validate`] without its mark: writers ask it before they encode a payload.
pub(crate) fn check_input(receipts: &[ReceiptInput]) -> Result<()> {
    for (i, r) in receipts.iter().enumerate() {
        if r.receipt_bytes.len() > MAX_RECEIPT_BYTES {
            return Err(Error::InvalidInput(format!(
                "receipt {i} is {} bytes, over the {MAX_RECEIPT_BYTES}-byte limit",
                r.receipt_bytes.len()
            )));
        }
        for (j, log) in r.logs.iter().enumerate() {
            if log.topics.len() > MAX_TOPICS_PER_LOG {
                return Err(Error::InvalidInput(format!(
                    "receipt {i} log {j} has {} topics; at most {MAX_TOPICS_PER_LOG} allowed",
                    log.topics.len()
                )));
            }
            if log.data.len() > MAX_LOG_DATA_BYTES {
                return Err(Error::InvalidInput(format!(
                    "receipt {i} log {j} data is over {MAX_LOG_DATA_BYTES} bytes"
                )));
            }
        }
    }
    Ok(())
}

/// Most sealed chunks a write leaves when it returns to the coordinator's loop, the one being
/// encoded included: the write lane encodes a block's row groups while the next block commits,
/// and a write waits (after its ack) only for the flush of the block two before it. Bounds the
/// open window's rows in memory when writes come faster than the lane encodes them.
pub const SEALED_CHUNKS_AFTER_ACK_MAX: usize = 2;

/// Who writes the rows the block flush interval seals. Either way the rows are sealed as a
/// chunk at the same boundary (so a replayed window gets the row groups a live run wrote), served
/// from memory until written, and written in block order before anything later, one chunk
/// encoded at a time on the write lane while the coordinator serves requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushRule {
    /// Live writes: the chunk's encoding starts right after the write's ack (the WAL already
    /// holds the rows), while the caller prepares its next block (see
    /// [`State::advance_after_ack`]).
    AfterAck,
    /// Replay: open returns once the window is staged; the coordinator encodes the chunks one
    /// after another while it serves requests, or at the next flush.
    WhenIdle,
}

impl<E: Env> State<E> {
    fn is_boundary(&self, height: u64) -> bool {
        height.is_multiple_of(self.config.max_blocks_per_file)
    }

    /// The rotation condition: a writer is open, the height is new, and it is a boundary.
    fn rotates_at(&self, height: u64) -> bool {
        let last_seen = self
            .last_seen
            .filter(|&l| !(l == 0 && crate::planted!(ZeroHeightSentinel)));
        self.open.is_some() && last_seen != Some(height) && self.is_boundary(height)
    }

    /// `write_receipts(height, receipts)`.
    /// `frame`: the WAL payload the caller encoded, if it did (see [`PendingFrame`]).
    pub(crate) async fn write(
        &mut self,
        height: u64,
        receipts: Vec<ReceiptInput>,
        frame: Option<PendingFrame>,
    ) -> Result<()> {
        self.check_usable()?;
        if receipts.is_empty() {
            return self.observe(height).await;
        }
        if let Some(last) = self.last_seen {
            if height < last {
                mark!("write-rejected-non-monotonic");
                return Err(Error::NonMonotonic {
                    height,
                    last_seen: last,
                });
            }
        }
        let floor = self
            .open
            .as_ref()
            .map(|o| o.writer.start)
            .unwrap_or(self.file_start_block);
        if height < floor {
            mark!("write-rejected-sealed");
            return Err(Error::Sealed {
                height,
                sealed: floor - 1,
                last_seen: self.last_seen.unwrap_or(floor - 1),
            });
        }
        // A caller sends a frame only for input `check_input` accepted (`Store::write_receipts`):
        // checking those receipts again here would find nothing, on the coordinator's time.
        if frame.is_none() {
            validate(&receipts)?;
        }
        debug_assert!(check_input(&receipts).is_ok(), "framed input was checked");
        let rotate = self.rotates_at(height);
        let frame = match frame {
            Some(f) => {
                assert_eq!(
                    f.height(),
                    height,
                    "the caller encoded this block's payload"
                );
                f
            }
            None => PendingFrame::encode(height, &receipts),
        };
        let r = self.write_logged(height, receipts, frame, rotate).await;
        if let Err(e) = &r {
            mark!("poison-write");
            self.poison(e);
        }
        r
    }

    async fn write_logged(
        &mut self,
        height: u64,
        receipts: Vec<ReceiptInput>,
        frame: PendingFrame,
        rotate: bool,
    ) -> Result<()> {
        let wal = self.wal.as_mut().expect("a usable store has a WAL");
        if rotate {
            // The boundary record starts a fresh segment, so dropping everything before it
            // later is a whole-segment removal.
            wal.roll().await?;
        }
        let seq = wal.append_pending(frame).await?;
        self.failpoint(fp::AFTER_WAL_APPEND)?;
        if rotate {
            mark!("rotate-on-write");
            self.rotate(height, Some(seq), true).await?;
        }
        for r in receipts {
            self.apply(height, r, FlushRule::AfterAck).await?;
        }
        self.latest = Some(self.latest.map_or(height, |l| l.max(height)));
        Ok(())
    }

    /// An empty block: moves the cursor forward and rotates on an empty boundary (spec 3.4).
    async fn observe(&mut self, height: u64) -> Result<()> {
        if self.last_seen.is_some_and(|l| height <= l) {
            mark!("write-empty-block-stale");
            return Ok(());
        }
        if self.rotates_at(height) {
            mark!("rotate-on-empty-boundary");
            if let Err(e) = self.rotate(height, None, true).await {
                mark!("poison-empty-rotation");
                self.poison(&e);
                return Err(e);
            }
        }
        mark!("write-empty-block-observed");
        self.last_seen = Some(height);
        // Empty blocks move the latest block too: a quiet chain must keep pruning.
        self.latest = Some(self.latest.map_or(height, |l| l.max(height)));
        Ok(())
    }

    /// Stages one receipt (spec 3.2): lazy aligned start, block counter, buffers, flush rule.
    pub(crate) async fn apply(
        &mut self,
        block: u64,
        input: ReceiptInput,
        rule: FlushRule,
    ) -> Result<()> {
        if self.open.is_none() {
            let aligned = block / self.config.max_blocks_per_file * self.config.max_blocks_per_file;
            if aligned >= self.file_start_block {
                self.file_start_block = aligned;
            }
            assert!(
                self.file_start_block <= block,
                "a pair never starts above its first block"
            );
            assert!(
                !self.catalogue.contains_key(&self.file_start_block),
                "never re-create a tracked closed pair"
            );
            self.open_pair(self.file_start_block).await?;
        }
        if self.last_seen != Some(block) {
            if self.last_seen.is_some() {
                self.blocks_since_flush += 1;
            }
            self.last_seen = Some(block);
        }
        let mut log_index = match self.log_cursor {
            Some((b, n)) if b == block => {
                mark!("write-same-block-continues-log-index");
                n
            }
            _ => 0,
        };
        let open = self.open.as_mut().expect("opened above");
        open.buf_receipts.push(ReceiptRecord {
            tx_hash: input.tx_hash,
            block_number: block,
            receipt_bytes: input.receipt_bytes,
        });
        for log in input.logs {
            open.buf_logs.push(LogRecord {
                block_number: block,
                tx_hash: input.tx_hash,
                tx_index: input.tx_index,
                log_index,
                address: log.address,
                topics: log.topics,
                data: log.data,
            });
            log_index = log_index.saturating_add(1);
        }
        open.rows += 1;
        self.log_cursor = Some((block, log_index));
        let bfi = self.config.block_flush_interval;
        if bfi > 0 && self.blocks_since_flush >= bfi {
            match rule {
                FlushRule::AfterAck => mark!("flush-automatic"),
                FlushRule::WhenIdle => mark!("flush-sealed-at-replay"),
            }
            self.seal_buffers();
            self.blocks_since_flush = 0;
        }
        Ok(())
    }

    /// Moves the buffered rows into an immutable piece (see [`OpenPair::pieces`]). The next
    /// buffers start at this piece's size: blocks are alike, and growing a buffer from empty
    /// re-copied it a dozen times per block.
    pub(crate) fn piece_buffers(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if open.buf_receipts.is_empty() {
            debug_assert!(open.buf_logs.is_empty(), "logs come with their receipt");
            return;
        }
        let (receipts, logs) = (open.buf_receipts.len(), open.buf_logs.len());
        open.pieces.push(Arc::new(Chunk {
            receipts: std::mem::replace(&mut open.buf_receipts, Vec::with_capacity(receipts)),
            logs: std::mem::replace(&mut open.buf_logs, Vec::with_capacity(logs)),
        }));
    }

    /// Seals the rows staged since the last seal (same row-group boundaries as a flush), to be
    /// written by the next flush or by the coordinator.
    fn seal_buffers(&mut self) {
        self.piece_buffers();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if !open.pieces.is_empty() {
            open.sealed.push_back(std::mem::take(&mut open.pieces));
        }
    }

    /// Whether sealed chunks wait to be written (never on a poisoned store: nothing more is
    /// written until a reopen replays the WAL).
    pub(crate) fn has_backlog(&self) -> bool {
        self.poisoned.is_none() && self.open.as_ref().is_some_and(|o| o.backlog() > 0)
    }

    /// Keeps the write lane busy after a write's ack (see [`FlushRule::AfterAck`]): starts
    /// encoding the oldest sealed chunk if nothing is being encoded, and waits only while more
    /// than [`SEALED_CHUNKS_AFTER_ACK_MAX`] chunks are sealed (a replay's backlog, or writes
    /// faster than the lane). The caller already has its answer, so a failure poisons the
    /// store and the next call reports it; the rows are in the WAL, and readable in memory
    /// until the poison.
    pub(crate) async fn advance_after_ack(&mut self) {
        let r = async {
            self.start_encoding()?;
            let backlog = self.open.as_ref().map_or(0, |o| o.backlog());
            // Each turn appends one chunk, so the backlog at the start bounds the turns.
            for _ in 0..backlog.saturating_sub(SEALED_CHUNKS_AFTER_ACK_MAX) {
                self.settle_encoding().await?;
                self.start_encoding()?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = r {
            mark!("poison-flush-after-ack");
            self.poison(&e);
        }
        debug_assert!(
            self.poisoned.is_some()
                || self.open.as_ref().map_or(0, |o| o.backlog()) <= SEALED_CHUNKS_AFTER_ACK_MAX
        );
    }

    /// Starts encoding the oldest sealed chunk's row groups on the write lane, unless a chunk is
    /// being encoded already or the store is poisoned. The chunk stays sealed, so reads find its
    /// rows in memory until [`State::settle_encoding`] appends them to the pair's files.
    pub(crate) fn start_encoding(&mut self) -> Result<()> {
        if self.encoding.is_some() || !self.has_backlog() {
            return Ok(());
        }
        self.failpoint(fp::BEFORE_FLUSH)?;
        let open = self.open.as_mut().expect("a backlog has an open pair");
        let chunk = open.sealed.front().expect("a backlog").clone();
        let logs_len: usize = chunk.iter().map(|p| p.logs.len()).sum();
        let logs = (logs_len > 0).then(|| {
            let pieces = chunk.clone();
            move || logs_row_group(pieces.iter().flat_map(|p| &p.logs), logs_len)
        });
        let receipts = move || {
            let n = chunk.iter().map(|p| p.receipts.len()).sum();
            receipts_to_batch_from(chunk.iter().flat_map(|p| &p.receipts), n)
        };
        let job = open.writer.start_encode(self.env.spawner(), receipts, logs);
        self.encoding = Some(job);
        Ok(())
    }

    /// Waits for the chunk being encoded, if any, and appends its row groups (see
    /// [`State::append_encoded`]).
    pub(crate) async fn settle_encoding(&mut self) -> Result<()> {
        match self.encoding.take() {
            Some(job) => self.append_encoded(job.await).await,
            None => Ok(()),
        }
    }

    /// Appends the row groups of the oldest sealed chunk, encoded: receipts first, then logs
    /// (none when the chunk has none). From then on reads fetch those rows from the pair's
    /// files and the chunk leaves memory. The caller took `self.encoding`.
    pub(crate) async fn append_encoded(&mut self, done: EncodedPair) -> Result<()> {
        debug_assert!(self.encoding.is_none(), "one chunk is encoded at a time");
        let open = self.open.as_mut().expect("a flush has an open pair");
        open.writer.end_encode(done)?;
        let receipts = open.writer.append_receipt_row_group().await?;
        self.failpoint(fp::AFTER_RECEIPT_ROW_GROUP)?;
        let open = self.open.as_mut().expect("a flush has an open pair");
        let logs = open.writer.append_log_row_group().await?;
        self.failpoint(fp::AFTER_FLUSH)?;
        let open = self.open.as_mut().expect("a flush has an open pair");
        let chunk = open.sealed.pop_front().expect("the chunk just written");
        open.receipt_groups.push(receipts);
        open.log_groups.extend(logs);
        // Freed by whoever the coordinator answers next (see `State::retired`); readers
        // holding the pieces keep them alive either way.
        self.retired.extend(chunk);
        Ok(())
    }

    /// Writes every sealed chunk, oldest first, the one being encoded included.
    async fn write_sealed(&mut self) -> Result<()> {
        let backlog = self.open.as_ref().map_or(0, |o| o.backlog());
        self.write_sealed_up_to(backlog).await
    }

    /// Writes up to `max_chunks` sealed chunks, oldest first, the one being encoded included
    /// (it is always written, even when `max_chunks` is 0).
    pub(crate) async fn write_sealed_up_to(&mut self, max_chunks: usize) -> Result<()> {
        let in_flight = usize::from(self.encoding.is_some());
        // Each turn appends one chunk.
        for _ in 0..max_chunks.max(in_flight) {
            self.start_encoding()?;
            self.settle_encoding().await?;
        }
        debug_assert!(self.encoding.is_none());
        Ok(())
    }

    async fn open_pair(&mut self, start: u64) -> Result<()> {
        let page_rows = self.config.page_rows.max(1);
        let writer = PairWriter::create(self.env.fs(), &self.dir, start, page_rows).await?;
        mark!("pair-opened");
        self.open = Some(OpenPair {
            writer,
            buf_receipts: Vec::new(),
            buf_logs: Vec::new(),
            pieces: Vec::new(),
            sealed: VecDeque::new(),
            receipt_groups: Vec::new(),
            log_groups: Vec::new(),
            rows: 0,
        });
        Ok(())
    }

    /// Writes the buffered rows as one row group per file (spec 3.5), after any sealed chunks
    /// still waiting (file order is block order). No fsync: the WAL covers the open window. On
    /// failure the store is poisoned by the caller, so rows are never written twice by a later
    /// flush; the unwritten chunks stay readable in memory.
    pub(crate) async fn flush_open(&mut self) -> Result<()> {
        self.seal_buffers();
        self.write_sealed().await
    }

    /// Finalizes the open pair and makes it durable (data, final names, directory entries), then
    /// tracks it. `seen` is the last seen block to record in its footer: the block whose arrival
    /// closes the window, or the last seen block at close. On failure the pair's files, under
    /// whichever names they have, are removed so nothing untracked survives (their rows are in
    /// the WAL: segments are dropped only after a pair is durable).
    pub(crate) async fn finalize_open(&mut self, seen: u64) -> Result<Option<Arc<ClosedPair>>> {
        self.flush_open().await?;
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        debug_assert_eq!(open.backlog(), 0, "flushed above");
        debug_assert!(
            open.buf_receipts.is_empty() && open.pieces.is_empty(),
            "flushed above"
        );
        let start = open.writer.start;
        // Every row is in a written row group now; the last one holds the highest block.
        let max_block = open
            .receipt_groups
            .last()
            .and_then(|g| g.row_groups.iter().filter_map(|rg| rg.max_block).max());
        let paths = open.writer.all_paths();
        let writer = open.writer;
        let finished = async {
            writer.finish(seen).await?;
            if crate::planted!(SkipRotationDirSync) || crate::planted!(DirSyncAfterWalDrop) {
                return Ok(());
            }
            self.env
                .fs()
                .sync_dir(&self.dir)
                .await
                .map_err(|e| Error::io(&self.dir, e))
        }
        .await;
        if let Err(e) = finished {
            mark!("finalize-failed-cleanup");
            let mut errors = vec![e];
            if let Err(d) = discard(self.env.fs(), &self.dir, &paths).await {
                errors.push(d.into());
            }
            return Err(Error::join(errors).expect("at least one error"));
        }
        let pair = Arc::new(ClosedPair::new(&self.dir, start, max_block));
        self.catalogue.insert(start, pair.clone());
        Ok(Some(pair))
    }

    /// Rotation (spec 3.3): flush, finalize and track the old pair, open the new one, and (live
    /// only) drop the WAL segments the closed pair now covers.
    pub(crate) async fn rotate(
        &mut self,
        new_start: u64,
        boundary_seq: Option<u64>,
        live: bool,
    ) -> Result<()> {
        if self.open.is_none() {
            return Ok(());
        }
        self.finalize_open(new_start).await?;
        self.failpoint(fp::AFTER_CLOSE_WRITERS)?;
        self.file_start_block = new_start;
        self.blocks_since_flush = 0;
        self.open_pair(new_start).await?;
        if live {
            let wal = self.wal.as_mut().expect("a usable store has a WAL");
            let keep_from = match boundary_seq {
                Some(seq) => seq,
                None => {
                    wal.roll().await?;
                    wal.next_seq()
                }
            };
            wal.drop_before(keep_from).await?;
            if crate::planted!(DirSyncAfterWalDrop) {
                self.env
                    .fs()
                    .sync_dir(&self.dir)
                    .await
                    .map_err(|e| Error::io(&self.dir, e))?;
            }
            self.failpoint(fp::AFTER_WAL_CLEAR)?;
        }
        Ok(())
    }
}
