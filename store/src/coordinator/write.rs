//! Writes, rotation and flushing (spec 3.1-3.5), with the fixes listed in the module docs of
//! `lib.rs`: no zero sentinel, sealed windows reject late writes, every failure after the WAL
//! append poisons the store instead of leaving half-applied state behind.

use super::{failpoints as fp, Chunk, OpenPair, Prepared, State};
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use crate::files::{discard, ClosedPair};
use crate::mark;
use crate::parquet::receipts_to_batch_from;
use crate::parquet::writer::logs_row_group;
use crate::parquet::writer::{EncodedPair, PairWriter};
use crate::types::{ReceiptInput, Rows, MAX_LOG_DATA_BYTES, MAX_RECEIPT_BYTES, MAX_TOPICS_PER_LOG};
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

/// Numbers `rows`' logs block-wide: after the logs earlier writes of `block` staged, as
/// `cursor` (the block and its logs so far) counts them, and moves the cursor past them. Returns
/// whether the write continues a block. Replay and `inspect` stage a window with this one rule.
pub(crate) fn number_logs_block_wide(
    cursor: &mut Option<(u64, u32)>,
    block: u64,
    rows: &mut Rows,
) -> bool {
    let before = match *cursor {
        Some((b, n)) if b == block => Some(n),
        _ => None,
    };
    let base = before.unwrap_or(0);
    if base > 0 {
        for log in &mut rows.logs {
            log.log_index = base.saturating_add(log.log_index);
        }
    }
    let count = u32::try_from(rows.logs.len()).unwrap_or(u32::MAX);
    *cursor = Some((block, base.saturating_add(count)));
    before.is_some()
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

    /// The rotation condition: a writer is open, the height is new, and it is a boundary. Live
    /// writes and replay both ask it.
    pub(crate) fn rotates_at(&self, height: u64) -> bool {
        let last_seen = self
            .last_seen
            .filter(|&l| !(l == 0 && crate::planted!(ZeroHeightSentinel)));
        self.open.is_some() && last_seen != Some(height) && self.is_boundary(height)
    }

    /// `write_receipts(height, receipts)`.
    /// `prepared`: the WAL payload and rows the caller built, if it did (see [`Prepared`]).
    pub(crate) async fn write(
        &mut self,
        height: u64,
        receipts: Vec<ReceiptInput>,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        self.check_usable()?;
        let empty = match &prepared {
            Some(p) => p.rows.receipts.is_empty(),
            None => receipts.is_empty(),
        };
        if empty {
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
        // A caller prepares only input `check_input` accepted (`Store::write_receipts`):
        // checking those receipts again here would find nothing, on the coordinator's time.
        let rotate = self.rotates_at(height);
        let (frame, rows) = match prepared {
            Some(Prepared { frame, rows }) => {
                assert_eq!(
                    frame.height(),
                    height,
                    "the caller encoded this block's payload"
                );
                (frame, rows)
            }
            None => {
                validate(&receipts)?;
                (
                    PendingFrame::encode(height, &receipts),
                    Rows::of(height, receipts),
                )
            }
        };
        let r = self.write_logged(height, rows, frame, rotate).await;
        if let Err(e) = &r {
            mark!("poison-write");
            self.poison(e);
        }
        r
    }

    async fn write_logged(
        &mut self,
        height: u64,
        rows: Rows,
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
        self.stage(height, rows, FlushRule::AfterAck).await?;
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

    /// Stages one write's rows (spec 3.2): lazy aligned start, block counter, log indices
    /// block-wide, flush rule. The rows' vectors become a piece of the open window as they are.
    /// The flush interval is checked after the first receipt, as upstream checks it after
    /// every receipt: the counters move only on a block's first receipt, so that is the one
    /// place a seal can fall, and the first receipt (with its logs) closes the sealed chunk.
    pub(crate) async fn stage(
        &mut self,
        block: u64,
        mut rows: Rows,
        rule: FlushRule,
    ) -> Result<()> {
        assert!(!rows.receipts.is_empty(), "an empty write stages nothing");
        debug_assert!(rows.receipts.iter().all(|r| r.block_number == block));
        debug_assert!(rows.logs.iter().all(|l| l.block_number == block));
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
        if number_logs_block_wide(&mut self.log_cursor, block, &mut rows) {
            mark!("write-same-block-continues-log-index");
        }
        let bfi = self.config.block_flush_interval;
        let open = self.open.as_mut().expect("opened above");
        open.rows += rows.receipts.len() as u64;
        if bfi > 0 && self.blocks_since_flush >= bfi {
            match rule {
                FlushRule::AfterAck => mark!("flush-automatic"),
                FlushRule::WhenIdle => mark!("flush-sealed-at-replay"),
            }
            // The first receipt closes the chunk being sealed; the rest start the next one.
            let k = rows.first_receipt_logs;
            let (head_order, rest_order) = match rows.log_order.take() {
                Some(order) => {
                    let (head, rest): (Vec<u32>, Vec<u32>) =
                        order.into_iter().partition(|&i| (i as usize) < k);
                    let rest = rest.into_iter().map(|i| i - k as u32).collect();
                    (Some(head), Some(rest))
                }
                None => (None, None),
            };
            rows.log_order = rest_order;
            let first = Chunk {
                receipts: vec![rows.receipts.remove(0)],
                logs: rows.logs.drain(..k).collect(),
                log_order: head_order,
            };
            open.pieces.push(Arc::new(first));
            open.seal_pieces();
            self.blocks_since_flush = 0;
        }
        if !rows.receipts.is_empty() {
            open.pieces.push(Arc::new(Chunk {
                receipts: rows.receipts,
                logs: rows.logs,
                log_order: rows.log_order,
            }));
        }
        Ok(())
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
            move || {
                let runs: Vec<_> = pieces
                    .iter()
                    .map(|p| (&p.logs[..], p.log_order.as_deref()))
                    .collect();
                logs_row_group(&runs, logs_len)
            }
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
        if let Some(open) = self.open.as_mut() {
            open.seal_pieces();
        }
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
        debug_assert!(open.pieces.is_empty(), "flushed above");
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
