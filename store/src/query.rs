//! Read queries over a snapshot: receipts by hash and eth_getLogs filters. Reads run on the
//! caller's task, never on the coordinator, and their heavy part runs on the env's blocking pool,
//! so a slow query does not hold up block commits.

use crate::coordinator::{replay::read_file, Chunk, OpenFiles, Snapshot};
use crate::env::{BlockingPool, Fs, ReadAt};
use crate::error::{Error, Result};
use crate::files::ClosedPair;
use crate::parquet::index::{consecutive_runs, FetchedGroups, FileIndex, PageRows};
use crate::parquet::reader::{candidate_groups, logs_into, receipts_from, FileKind, ParquetFile};
use crate::types::{Address, LogRecord, ReceiptRecord, Topic, TxHash};
use arrow_array::{Array, BinaryArray, BooleanArray, RecordBatch, UInt64Array};
use arrow_schema::ArrowError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of the open pair's row groups one read fetches before it decodes them (and, when it
/// has enough rows, stops): a scan of a whole open window never holds the window in memory.
pub const OPEN_FILE_READ_BATCH_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// eth_getLogs positions: at most four topic positions.
pub const MAX_TOPIC_POSITIONS: usize = 4;

/// An eth_getLogs filter. Empty address set or empty topic position means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFilter {
    pub from_block: Option<u64>,
    pub to_block: Option<u64>,
    pub addresses: Vec<Address>,
    pub topics: Vec<Vec<Topic>>,
    pub limit: Option<usize>,
}

impl LogFilter {
    pub fn validate(&self) -> Result<()> {
        if let (Some(f), Some(t)) = (self.from_block, self.to_block) {
            if f > t {
                return Err(Error::InvalidInput(format!(
                    "from block {f} is after to block {t}"
                )));
            }
        }
        if self.topics.len() > MAX_TOPIC_POSITIONS {
            return Err(Error::InvalidInput(format!(
                "filter has {} topic positions; at most {MAX_TOPIC_POSITIONS} allowed",
                self.topics.len()
            )));
        }
        if self.limit == Some(0) {
            // Upstream reads a limit of 0 as "no limit"; an Option says that with None, so 0 is
            // a caller mistake rather than a request for nothing.
            return Err(Error::InvalidInput(
                "limit 0 is not allowed; omit the limit for all matching logs".into(),
            ));
        }
        Ok(())
    }

    fn range(&self) -> (u64, u64) {
        (
            self.from_block.unwrap_or(0),
            self.to_block.unwrap_or(u64::MAX),
        )
    }

    /// The exact eth_getLogs predicate.
    pub fn matches(&self, log: &LogRecord) -> bool {
        let topic = |i: usize| log.topics.get(i).map_or(&[][..], |t| &t[..]);
        self.matches_raw(
            log.block_number,
            &log.address,
            [topic(0), topic(1), topic(2), topic(3)],
        )
    }

    /// The log columns [`LogFilter::matches_raw`] reads for this filter: the block, the address
    /// when addresses are given, and topics up to the last constrained position (a constraint
    /// at position `i` also needs every topic before it to be present).
    fn columns(&self) -> Vec<&'static str> {
        const TOPICS: [&str; MAX_TOPIC_POSITIONS] = ["topic0", "topic1", "topic2", "topic3"];
        let mut cols = vec!["block_number"];
        if !self.addresses.is_empty() {
            cols.push("address");
        }
        let last = self.topics.iter().rposition(|set| !set.is_empty());
        cols.extend(last.map_or(&[][..], |i| &TOPICS[..=i]));
        cols
    }

    /// [`LogFilter::matches_raw`] over a batch holding (at least) [`LogFilter::columns`]; a
    /// column the filter does not read may be absent and reads as empty.
    fn keep_rows(&self, batch: &RecordBatch) -> std::result::Result<BooleanArray, ArrowError> {
        let binary = |name| binary_column(batch, name);
        let block = batch
            .column_by_name("block_number")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| ArrowError::SchemaError("no u64 column block_number".into()))?;
        let address = binary("address")?;
        let topics = [
            binary("topic0")?,
            binary("topic1")?,
            binary("topic2")?,
            binary("topic3")?,
        ];
        fn value(a: Option<&BinaryArray>, i: usize) -> &[u8] {
            a.map_or(&[][..], |a| a.value(i))
        }
        Ok((0..batch.num_rows())
            .map(|i| {
                Some(self.matches_raw(
                    block.value(i),
                    value(address, i),
                    topics.map(|t| value(t, i)),
                ))
            })
            .collect())
    }

    /// The filter on column values as stored: absent topics are empty. A log lacking a topic
    /// never matches a non-wildcard position (nor any later one: topics are stored in order).
    pub fn matches_raw(&self, block: u64, address: &[u8], topics: [&[u8]; 4]) -> bool {
        let (from, to) = self.range();
        if block < from || block > to {
            return false;
        }
        if !self.addresses.is_empty() && !self.addresses.iter().any(|a| a[..] == *address) {
            return false;
        }
        self.topics.iter().enumerate().all(|(i, set)| {
            set.is_empty()
                || (crate::planted!(MissingTopicMatches) && topics[i].is_empty())
                || (topics[..=i].iter().all(|t| !t.is_empty())
                    && set.iter().any(|t| t[..] == *topics[i]))
        })
    }
}

/// A bounded LRU of file indexes (row-group block ranges and verified bloom filters). Building
/// one reads only the file's footer and bloom filters.
pub struct IndexCache {
    capacity: usize,
    tick: u64,
    entries: BTreeMap<(u64, bool), (u64, Arc<FileIndex>)>,
    /// Bytes read from disk to build indexes, for tests and the benchmarks.
    pub index_bytes_read: u64,
    /// Bytes of files read to answer queries (row groups, or whole files without row-group
    /// checksums).
    pub data_bytes_read: u64,
}

impl IndexCache {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        IndexCache {
            capacity,
            tick: 0,
            entries: BTreeMap::new(),
            index_bytes_read: 0,
            data_bytes_read: 0,
        }
    }
    fn get(&mut self, key: (u64, bool)) -> Option<Arc<FileIndex>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|e| {
            e.0 = tick;
            e.1.clone()
        })
    }
    fn put(&mut self, key: (u64, bool), index: Arc<FileIndex>) {
        self.tick += 1;
        self.index_bytes_read += index.bytes_read;
        self.entries.insert(key, (self.tick, index));
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| *k)
                .expect("non-empty");
            crate::mark!("read-index-cache-evicted");
            self.entries.remove(&oldest);
        }
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The most row groups one decode job takes (a few milliseconds of decoding for blocks of
/// thousands of logs): what bounds how long a commit can wait for a decode slot lent to reads.
pub const DECODE_JOB_GROUPS_MAX: usize = 2;

/// How many read-and-not-yet-decoded jobs of one file read may wait per decode slot.
pub const DECODE_JOBS_IN_FLIGHT_PER_SLOT: usize = 2;

/// One file's candidate row groups, read and verified, not yet decoded (decoding is the
/// pool's work).
pub(crate) enum Candidates {
    /// No row group can match.
    Nothing(PathBuf),
    /// Ranged reads of the candidate row groups.
    Ranged(Arc<FileIndex>, FetchedGroups),
    /// A file without row-group checksums, read whole; verified when parsed.
    Whole(Arc<FileIndex>, Vec<u8>, Vec<usize>),
}

impl Candidates {
    fn path(&self) -> &Path {
        match self {
            Candidates::Nothing(path) => path,
            Candidates::Ranged(idx, _) | Candidates::Whole(idx, _, _) => &idx.path,
        }
    }

    /// The same candidates, one row group each (a whole file stays one).
    fn per_group(self) -> Vec<Candidates> {
        match self {
            Candidates::Ranged(idx, fetched) => {
                let n = fetched.len();
                idx.split_fetched(fetched, n)
                    .into_iter()
                    .map(|part| Candidates::Ranged(idx.clone(), part))
                    .collect()
            }
            other => vec![other],
        }
    }

    /// Decodes every candidate row group.
    fn decode(self) -> Result<Vec<RecordBatch>> {
        match self {
            Candidates::Nothing(_) => Ok(Vec::new()),
            Candidates::Ranged(idx, fetched) => idx.decode(fetched),
            Candidates::Whole(idx, bytes, groups) => {
                ParquetFile::open(&idx.path, idx.kind, bytes)?.batches(groups)
            }
        }
    }

    /// Decodes the rows of the candidate row groups that `filter` keeps: ranged reads decode
    /// the filter's columns first and the rest for kept rows only (see
    /// [`FileIndex::decode_where`]); a whole file is decoded whole. Rows it returns may still
    /// include some the filter drops (whole files): callers filter again.
    fn decode_logs_where(self, filter: Arc<LogFilter>) -> Result<Vec<RecordBatch>> {
        match self {
            Candidates::Ranged(idx, fetched) => {
                let columns = filter.columns();
                idx.decode_where(fetched, &columns, move |batch| filter.keep_rows(&batch))
            }
            other => other.decode(),
        }
    }

    /// Decodes the rows of the candidate row groups whose `tx_hash` is `hash`: a ranged read
    /// decodes that column alone and materializes only the matching rows (a bloom false positive
    /// costs one column's decode, a hit one row); a whole file is decoded as before.
    fn decode_holding(self, hash: &TxHash) -> Result<Vec<RecordBatch>> {
        match self {
            Candidates::Ranged(idx, fetched) => {
                let hash = *hash;
                idx.decode_where(fetched, &["tx_hash"], move |batch| {
                    let column = binary_column(&batch, "tx_hash")?
                        .ok_or_else(|| ArrowError::SchemaError("no column tx_hash".into()))?;
                    Ok(column.iter().map(|h| Some(h == Some(&hash[..]))).collect())
                })
            }
            other => other.decode(),
        }
    }
}

/// Awaits the oldest of the `running` decode jobs and adds its rows to `out`. If it failed,
/// every other job is awaited too (results thrown away) before the error is returned: a job
/// holds the file it reads until it ends, so a read that fails leaves none of the store's files
/// open behind it (dropping the jobs would not stop those already queued on a pool's threads).
async fn finish_oldest<T>(
    running: &mut VecDeque<impl Future<Output = Result<Vec<T>>>>,
    out: &mut Vec<T>,
) -> Result<()> {
    let oldest = running.pop_front().expect("a decode job is running");
    match oldest.await {
        Ok(rows) => {
            out.extend(rows);
            Ok(())
        }
        Err(failed) => {
            for job in running.drain(..) {
                let _ = job.await;
            }
            Err(failed)
        }
    }
}

/// The binary column `name` of a predicate's batch, `None` when the batch lacks it.
fn binary_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> std::result::Result<Option<&'a BinaryArray>, ArrowError> {
    batch
        .column_by_name(name)
        .map(|c| {
            c.as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| ArrowError::SchemaError(format!("column {name} is not binary")))
        })
        .transpose()
}

/// Runs reads over a snapshot. File bytes come through `fs` (async); everything CPU-heavy
/// (decoding footers and row groups, filtering rows, scanning the open window) runs on `pool`,
/// so a long `get_logs` never holds an async worker the coordinator needs.
pub(crate) struct Reader<'a, F: Fs, P: BlockingPool> {
    pub fs: &'a F,
    pub pool: &'a P,
    pub cache: &'a Mutex<IndexCache>,
}

/// Rows of the open window's chunks that `keep` selects, and how many chunks were scanned;
/// with `first_only`, the scan stops after the first chunk that yields a row.
fn scan_open<T: Clone>(
    chunks: &[Arc<Chunk>],
    rows: impl Fn(&Chunk) -> &[T],
    keep: impl Fn(&T) -> bool,
    first_only: bool,
) -> (Vec<T>, usize) {
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend(rows(chunk).iter().filter(|x| keep(x)).cloned());
        if first_only && !out.is_empty() {
            return (out, i + 1);
        }
    }
    (out, chunks.len())
}

/// A handle on one of the open pair's files and its row groups a read fetches, with the
/// candidate group (always 0) of each.
type OpenCandidates = (Arc<dyn ReadAt>, Vec<(Arc<FileIndex>, Vec<usize>)>);

/// The open pair's written row groups of `kind` that may hold rows in `[from, to]` matching
/// every `(column, values)` pair (statistics and bloom filters), in block order. A plain
/// function, so the filter's borrowed values are never held across an await.
fn open_candidates(
    files: &OpenFiles,
    kind: FileKind,
    from: u64,
    to: u64,
    must_match: &[(&str, &[&[u8]])],
) -> OpenCandidates {
    let (handle, groups) = match kind {
        FileKind::Receipts => (&files.readers.receipts, &files.receipt_groups),
        FileKind::Logs => (&files.readers.logs, &files.log_groups),
    };
    let wanted: Vec<_> = groups
        .iter()
        .filter_map(|idx| {
            let candidates = candidate_groups(&idx.row_groups, from, to, must_match);
            Some((idx.clone(), candidates)).filter(|(_, c)| !c.is_empty())
        })
        .collect();
    if wanted.len() < groups.len() {
        crate::mark!("read-row-group-skipped");
    }
    (handle.clone(), wanted)
}

fn overlapping(snap: &Snapshot, from: u64, to: u64) -> Vec<Arc<Chunk>> {
    snap.open
        .iter()
        .filter(|c| c.overlaps(from, to))
        .cloned()
        .collect()
}

impl<F: Fs, P: BlockingPool> Reader<'_, F, P> {
    async fn index(&self, pair: &ClosedPair, kind: FileKind) -> Result<Arc<FileIndex>> {
        let key = (pair.start, kind == FileKind::Logs);
        if let Some(i) = self.cache.lock().unwrap().get(key) {
            return Ok(i);
        }
        let path = match kind {
            FileKind::Receipts => &pair.receipt_path,
            FileKind::Logs => &pair.log_path,
        };
        let index = Arc::new(FileIndex::load_on(self.fs, self.pool, path, kind).await?);
        self.cache.lock().unwrap().put(key, index.clone());
        Ok(index)
    }

    /// Rows of one file: the row groups that may hold rows in `[from, to]` matching every
    /// `(column, values)` pair are read (each verified against its checksum; a file without
    /// row-group checksums is read and verified whole), then `rows` decodes them on the pool,
    /// in jobs of consecutive row groups (at least [`BlockingPool::parallelism`], at most
    /// [`DECODE_JOB_GROUPS_MAX`] groups each), each handed over as soon as its groups are read;
    /// their rows are returned in file order. With no candidate row group, `rows` runs here on
    /// nothing.
    async fn file_rows<T: Send + 'static>(
        &self,
        pair: &ClosedPair,
        kind: FileKind,
        (from, to): (u64, u64),
        must_match: &[(&str, &[&[u8]])],
        rows: impl Fn(Candidates) -> Result<Vec<T>> + Clone + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        let idx = self.index(pair, kind).await?;
        // Groups whose pages all fail the filter are dropped before anything is read.
        let (groups, pages): (Vec<usize>, Vec<PageRows>) =
            candidate_groups(&idx.row_groups, from, to, must_match)
                .into_iter()
                .map(|g| (g, idx.page_rows(g, must_match)))
                .filter(|(_, pages)| pages.as_ref().is_none_or(|p| p.iter().any(|r| !r.skip)))
                .unzip();
        if groups.len() < idx.row_groups.len() {
            crate::mark!("read-row-group-skipped");
        }
        let candidates = if groups.is_empty() {
            return rows(Candidates::Nothing(idx.path.clone()));
        } else if idx.spans.is_some() {
            // At least one job per decode slot, and none longer than
            // `DECODE_JOB_GROUPS_MAX` row groups: a slot lent to reads while no commit runs
            // finishes the job it took before a commit gets its core back.
            let jobs = groups
                .len()
                .div_ceil(DECODE_JOB_GROUPS_MAX)
                .max(self.pool.parallelism());
            let runs = consecutive_runs(groups.len(), jobs);
            if runs.len() > 1 {
                crate::mark!("read-decoded-in-parallel");
            }
            // Each job reads its own groups and decodes them (on the pool, where the pool's
            // threads may block), so decoding starts with the first job's bytes, not after the
            // whole file's; at most `in_flight_max` jobs are queued, which bounds the bytes a
            // read holds (and lets the allocator reuse them instead of faulting in fresh pages
            // for every group).
            let in_flight_max = DECODE_JOBS_IN_FLIGHT_PER_SLOT * self.pool.parallelism();
            let file = Arc::new(
                self.fs
                    .open(&idx.path)
                    .await
                    .map_err(|e| Error::io(&idx.path, e))?,
            );
            let mut running = VecDeque::with_capacity(in_flight_max);
            let mut out = Vec::new();
            for run in runs {
                if running.len() == in_flight_max {
                    crate::mark!("read-decode-backpressure");
                    finish_oldest(&mut running, &mut out).await?;
                }
                let pages = if crate::planted!(JobPagesFromFirstRun) {
                    pages[..run.len()].to_vec()
                } else {
                    pages[run.clone()].to_vec()
                };
                let groups = groups[run].to_vec();
                let reads = idx.group_reads(&groups);
                let bytes: u64 = reads.iter().map(|&(_, len)| len as u64).sum();
                self.cache.lock().unwrap().data_bytes_read += bytes;
                let (rows, job_idx) = (rows.clone(), idx.clone());
                // Called here, not in the async block: the pool queues the job when called.
                let job = self.pool.run_read(file.clone(), reads, move |bytes| {
                    let fetched = job_idx.fetched(groups, bytes)?.with_pages(pages);
                    rows(Candidates::Ranged(job_idx, fetched))
                });
                let path = &idx.path;
                running.push_back(async move { job.await.map_err(|e| Error::io(path, e))? });
            }
            while !running.is_empty() {
                finish_oldest(&mut running, &mut out).await?;
            }
            return Ok(out);
        } else {
            let bytes = read_file(self.fs, &idx.path).await?;
            self.cache.lock().unwrap().data_bytes_read += bytes.len() as u64;
            Candidates::Whole(idx, bytes, groups)
        };
        self.pool.run_blocking(move || rows(candidates)).await
    }

    /// Rows of the open pair's row groups that [`open_candidates`] picked, in block order: a
    /// pool job reads a batch of them (at most [`OPEN_FILE_READ_BATCH_BYTES_MAX`] bytes)
    /// through the snapshot's handle, then `rows` verifies and decodes them. Stops after the
    /// batch that brings the rows to `enough`, counting `rows_in` each item `rows` returns.
    async fn open_file_rows<T: Send + 'static>(
        &self,
        (handle, wanted): OpenCandidates,
        enough: usize,
        rows_in: fn(&T) -> usize,
        rows: impl Fn(Candidates) -> Result<Vec<T>> + Clone + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut got = 0;
        let mut pending = wanted.into_iter().peekable();
        while pending.peek().is_some() && got < enough {
            // Each item: a written row group's index, its candidate groups, and how many of
            // the batch's reads are theirs.
            let mut batch = Vec::new();
            let mut reads = Vec::new();
            let mut batch_bytes = 0;
            while batch_bytes < OPEN_FILE_READ_BATCH_BYTES_MAX {
                let Some((idx, candidates)) = pending.next() else {
                    break;
                };
                let these = idx.group_reads(&candidates);
                batch_bytes += these.iter().map(|&(_, len)| len as u64).sum::<u64>();
                batch.push((idx, candidates, these.len()));
                reads.extend(these);
            }
            if batch.is_empty() {
                continue;
            }
            crate::mark!("read-open-file");
            self.cache.lock().unwrap().data_bytes_read += batch_bytes;
            let rows = rows.clone();
            let path = batch[0].0.path.clone();
            // Boxed as a `Send` future here: without it rustc rejected the future of
            // `Store::get_logs` as not `Send` ("implementation of `Send` is not general
            // enough", a limit of its inference for closures in async fns).
            let job: std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(self.pool.run_read(handle.clone(), reads, move |bytes| {
                    let mut bytes = bytes.into_iter();
                    let mut found = Vec::new();
                    for (idx, candidates, n) in batch {
                        let fetched = idx.fetched(candidates, bytes.by_ref().take(n).collect())?;
                        found.extend(rows(Candidates::Ranged(idx, fetched))?);
                    }
                    Ok::<_, Error>(found)
                }));
            let found = job.await.map_err(|e| Error::io(&path, e))??;
            got += found.iter().map(rows_in).sum::<usize>();
            out.extend(found);
        }
        Ok(out)
    }

    /// The lowest block with a receipt: the first closed pair with rows (its index's row-group
    /// statistics), else the open window's first row.
    pub async fn earliest_block(&self, snap: &Snapshot) -> Result<Option<u64>> {
        for pair in &snap.closed {
            let idx = self.index(pair, FileKind::Receipts).await?;
            if let Some(b) = idx.row_groups.iter().filter_map(|g| g.min_block).min() {
                return Ok(Some(b));
            }
        }
        let written = snap.written.iter().flat_map(|f| &f.receipt_groups);
        if let Some(b) = written
            .flat_map(|g| g.row_groups.iter().filter_map(|rg| rg.min_block))
            .next()
        {
            return Ok(Some(b));
        }
        Ok(snap
            .open
            .iter()
            .find_map(|c| c.receipts.first().map(|r| r.block_number)))
    }

    /// Receipts with `hash` (all, or only in `block`), earliest block first.
    pub async fn receipts_by_hash(
        &self,
        snap: &Snapshot,
        hash: &TxHash,
        block: Option<u64>,
        first_only: bool,
    ) -> Result<Vec<ReceiptRecord>> {
        let (from, to) = block.map_or((0, u64::MAX), |b| (b, b));
        let hash = *hash;
        // The same decoder for closed files and the open pair's written row groups.
        let rows = move |c: Candidates| {
            let path = c.path().to_path_buf();
            receipts_from(&path, c.decode_holding(&hash)?, Some(&hash), from, to)
        };
        let mut out = Vec::new();
        for pair in &snap.closed {
            if pair.start > to {
                break;
            }
            let hashes: [&[u8]; 1] = [&hash[..]];
            out.extend(
                self.file_rows(
                    pair,
                    FileKind::Receipts,
                    (from, to),
                    &[("tx_hash", &hashes)],
                    rows,
                )
                .await?,
            );
            if first_only && !out.is_empty() {
                return Ok(out);
            }
        }
        if let Some(files) = &snap.written {
            let enough = if first_only { 1 } else { usize::MAX };
            let wanted = {
                let hashes: [&[u8]; 1] = [&hash[..]];
                open_candidates(files, FileKind::Receipts, from, to, &[("tx_hash", &hashes)])
            };
            let found = self.open_file_rows(wanted, enough, |_| 1, rows).await?;
            out.extend(found);
            if first_only && !out.is_empty() {
                return Ok(out);
            }
        }
        let chunks = overlapping(snap, from, to);
        if chunks.is_empty() {
            return Ok(out);
        }
        let (found, scanned) = self
            .pool
            .run_blocking(move || {
                scan_open(
                    &chunks,
                    |c| &c.receipts,
                    |r: &ReceiptRecord| {
                        r.tx_hash == hash && r.block_number >= from && r.block_number <= to
                    },
                    first_only,
                )
            })
            .await;
        for _ in 0..scanned {
            crate::mark!("read-open-window");
        }
        out.extend(found);
        Ok(out)
    }

    /// All receipts with blocks in `[from, to]`, in block order.
    pub async fn receipts_in_range(
        &self,
        snap: &Snapshot,
        from: u64,
        to: u64,
    ) -> Result<Vec<ReceiptRecord>> {
        let rows = move |c: Candidates| {
            let path = c.path().to_path_buf();
            receipts_from(&path, c.decode()?, None, from, to)
        };
        let mut out = Vec::new();
        for pair in &snap.closed {
            if pair.start > to {
                break;
            }
            out.extend(
                self.file_rows(pair, FileKind::Receipts, (from, to), &[], rows)
                    .await?,
            );
        }
        if let Some(files) = &snap.written {
            let wanted = open_candidates(files, FileKind::Receipts, from, to, &[]);
            let found = self.open_file_rows(wanted, usize::MAX, |_| 1, rows).await?;
            out.extend(found);
        }
        let chunks = overlapping(snap, from, to);
        if !chunks.is_empty() {
            let (found, _) = self
                .pool
                .run_blocking(move || {
                    scan_open(
                        &chunks,
                        |c| &c.receipts,
                        |r: &ReceiptRecord| r.block_number >= from && r.block_number <= to,
                        false,
                    )
                })
                .await;
            out.extend(found);
        }
        Ok(out)
    }

    pub async fn logs(&self, snap: &Snapshot, filter: &LogFilter) -> Result<Vec<LogRecord>> {
        filter.validate()?;
        let (from, to) = filter.range();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let addrs: Vec<&[u8]> = filter.addresses.iter().map(|a| &a[..]).collect();
        let topic0: Vec<&[u8]> = filter
            .topics
            .first()
            .map(|s| s.iter().map(|t| &t[..]).collect())
            .unwrap_or_default();
        let shared = Arc::new(filter.clone());
        // Runs of rows, each in get_logs order: one per decode job.
        let mut runs: Vec<Vec<LogRecord>> = Vec::new();
        let found = |runs: &Vec<Vec<LogRecord>>| runs.iter().map(Vec::len).sum::<usize>();
        // The same decoder for closed files and the open pair's written row groups. Row groups
        // are decoded one at a time and their rows put in order while the decoded columns are
        // still in cache: a logs row group is stored in address order, and gathering rows in
        // block order from columns decoded long before (a whole file's, 390 MB for 500 blocks)
        // missed the cache on nearly every value (1.5x the time of a scan). Each job hands back
        // one run in order.
        let rows = {
            let filter = shared.clone();
            move |c: Candidates| {
                let path = c.path().to_path_buf();
                let groups = c.per_group();
                let n = groups.len();
                let mut run = Vec::new();
                let mut in_order = true;
                for (k, c) in groups.into_iter().enumerate() {
                    let batches = c.decode_logs_where(filter.clone())?;
                    let before = run.len();
                    let keep = |b, a: &[u8], t: [&[u8]; 4]| filter.matches_raw(b, a, t);
                    logs_into(&path, batches, keep, &mut run, n - k)?;
                    // Each group's rows are in order; where they meet, they may not be.
                    if let (Some(last), Some(first)) =
                        (before.checked_sub(1).map(|i| &run[i]), run.get(before))
                    {
                        in_order &= log_key(last) <= log_key(first);
                    }
                }
                Ok(vec![if in_order { run } else { sort_logs(run) }])
            }
        };
        for pair in &snap.closed {
            if found(&runs) >= limit || pair.start > to {
                break;
            }
            runs.extend(
                self.file_rows(
                    pair,
                    FileKind::Logs,
                    (from, to),
                    &[("address", &addrs), ("topic0", &topic0)],
                    rows.clone(),
                )
                .await?,
            );
        }
        if let Some(files) = snap.written.as_ref().filter(|_| found(&runs) < limit) {
            let wanted = open_candidates(
                files,
                FileKind::Logs,
                from,
                to,
                &[("address", &addrs), ("topic0", &topic0)],
            );
            let enough = limit - found(&runs);
            runs.extend(self.open_file_rows(wanted, enough, Vec::len, rows).await?);
        }
        if found(&runs) < limit {
            let chunks = overlapping(snap, from, to);
            if !chunks.is_empty() {
                let filter = shared.clone();
                let run = self
                    .pool
                    .run_blocking(move || {
                        sort_logs(scan_open(&chunks, |c| &c.logs, |x| filter.matches(x), false).0)
                    })
                    .await;
                runs.push(run);
            }
        }
        if filter.limit.is_some_and(|l| found(&runs) >= l) {
            crate::mark!("read-limit-reached");
        }
        // One join of the runs, on the pool: a block's rows can straddle row groups, decode
        // jobs or the written/in-memory boundary, and the caller's tx indices need not
        // increase, so runs that do not follow each other in order are sorted as a whole.
        let mut out = self.pool.run_blocking(move || join_runs(runs)).await;
        out.truncate(limit);
        Ok(out)
    }
}

/// The place of a log in `get_logs` order: block, the caller's tx index, log index (unique
/// within a block, so the order is total).
fn log_key(l: &LogRecord) -> (u64, u32, u32) {
    (l.block_number, l.tx_index, l.log_index)
}

/// Runs each in `get_logs` order joined into one: concatenated when each starts at or after
/// where the one before ended (checked at the joins only), else sorted whole.
fn join_runs(runs: Vec<Vec<LogRecord>>) -> Vec<LogRecord> {
    debug_assert!(
        runs.iter().all(|r| r.is_sorted_by_key(log_key)),
        "runs are in order"
    );
    let total = runs.iter().map(Vec::len).sum::<usize>();
    let mut runs = runs.into_iter();
    // The first run becomes the result: its rows are not copied.
    let mut out = runs.next().unwrap_or_default();
    out.reserve(total - out.len());
    let mut in_order = true;
    for run in runs {
        if let (Some(last), Some(first)) = (out.last(), run.first()) {
            in_order &= log_key(last) <= log_key(first);
        }
        out.extend(run);
    }
    if in_order {
        out
    } else {
        sort_logs(out)
    }
}

/// Logs in `get_logs` order ([`log_key`]). Sorts a compact array of keys and positions, then
/// moves each record once into place: moving 120-byte records through a sort cost more than
/// decoding them. Runs already in order make the key sort a merge.
fn sort_logs(logs: Vec<LogRecord>) -> Vec<LogRecord> {
    let key = log_key;
    if logs.is_sorted_by_key(key) {
        return logs;
    }
    let mut order: Vec<((u64, u32, u32), u32)> = logs
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                key(l),
                u32::try_from(i).expect("a read returns under 4G logs"),
            )
        })
        .collect();
    order.sort();
    let mut slots: Vec<Option<LogRecord>> = logs.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&(_, i)| slots[i as usize].take().expect("every position once"))
        .collect()
}
