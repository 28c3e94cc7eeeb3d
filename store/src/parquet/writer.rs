//! The pair writer: one receipts file and one logs file for the open window.
//!
//! parquet-rs encodes synchronously into memory; after each row group the encoded bytes are
//! drained and appended to the real file through the `Fs` seam, so the simulator sees (and can
//! tear) every write. A running crc32c of the bytes becomes footer metadata at finish, because
//! parquet-rs writes no page checksums.

use super::index::{FileIndex, RowGroupSpan};
use super::reader::FileKind;
use super::{footer_crc_span, kv_value_span, FOOTER_CRC_KEY, FOOTER_CRC_PLACEHOLDER};
use super::{
    log_schema, logs_to_batch_from, receipt_schema, BLOOM_CRC_KEY, BODY_CRC_KEY, BODY_LEN_KEY,
    LAST_SEEN_BLOCK_KEY, LAYOUT_VERSION, LAYOUT_VERSION_KEY, PAGE_CRC_KEY, PAGE_INDEX_CRC_KEY,
    ROW_GROUP_CRC_KEY,
};
use crate::env::{BlockingPool, BoxFuture, Fs, FsFile, ReadAt};
use crate::error::Error;
use crate::files::{discard, final_file_name, open_file_name};
use crate::types::LogRecord;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::column::page_store::{PageKey, PageStore, PageStoreArgs, PageStoreFactory};
use parquet::file::metadata::{KeyValue, RowGroupMetaData, SortingColumn};
use parquet::file::properties::{
    BloomFilterPosition, EnabledStatistics, WriterProperties, WriterVersion,
};
use parquet::schema::types::ColumnPath;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bloom filters are sized for this many distinct values per row group and folded down to fit
/// the real count when the row group closes.
pub const BLOOM_MAX_NDV: u64 = 16_384;
pub const BLOOM_FPP: f64 = 0.001;

/// Data pages: format v1 (`WriterVersion::PARQUET_1_0`), the one every reader of parquet
/// decodes; v2 pages buy little for these columns (no nulls, no dictionaries) and some readers
/// still skip or mishandle them.
pub const WRITER_VERSION: WriterVersion = WriterVersion::PARQUET_1_0;
/// Page size and row limits, spelled out so a dependency bump cannot change our files.
pub const DATA_PAGE_SIZE_LIMIT_BYTES: usize = 1024 * 1024;
/// Rows per data page by default ([`crate::Config::page_rows`]). A page is what a read can
/// skip without decompressing it (the offset index says where each starts and which rows it
/// holds), and a logs row group is sorted by address, then topic0 (see [`sorting_columns`]), so a filter on an address selects a run of
/// neighbouring pages that the column index's per-page min/max finds. At 20,000 rows (a whole
/// 3,000-row group in one page) a 2% address filter decompressed every page of every column.
pub const DATA_PAGE_ROW_COUNT_LIMIT: usize = 512;
/// Columns whose per-page min/max go into the column index (what reads prune pages by); the
/// others keep row-group statistics only, which keeps the page index small.
pub fn page_statistics_columns(kind: FileKind) -> &'static [&'static str] {
    match kind {
        FileKind::Receipts => &["block_number"],
        FileKind::Logs => &["block_number", "address", "topic0"],
    }
}

/// The order rows are written in within a row group, as parquet `sorting_columns` (column
/// indices in the schema): receipts by `block_number`; logs by `address`, `topic0`,
/// `block_number`, then `log_index` (block-wide, so it also orders transactions as the caller
/// gave them), which clusters each contract's logs, and within it each event's, into a few pages
/// (see [`DATA_PAGE_ROW_COUNT_LIMIT`]). Row groups still follow each other in block order.
/// `tx_index` is not declared: the store keeps the caller's transaction order and does not check
/// that tx indices increase.
pub fn sorting_columns(kind: FileKind) -> Vec<SortingColumn> {
    let col = |column_idx| SortingColumn {
        column_idx,
        descending: false,
        nulls_first: false,
    };
    match kind {
        FileKind::Receipts => vec![col(1)],
        FileKind::Logs => vec![col(4), col(7), col(0), col(3)],
    }
}

/// A log's topic0, empty when it has no topics (as the file stores it).
fn topic0(r: &LogRecord) -> &[u8] {
    r.topics.first().map_or(&[], |t| &t[..])
}

/// The row order of a logs row group, as declared by [`sorting_columns`].
pub fn log_row_order(a: &LogRecord, b: &LogRecord) -> std::cmp::Ordering {
    a.address
        .cmp(&b.address)
        .then_with(|| topic0(a).cmp(topic0(b)))
        .then(a.block_number.cmp(&b.block_number))
        .then(a.log_index.cmp(&b.log_index))
}

/// One logs row group's batch from a chunk's pieces (`len` rows in all), each a run of rows in
/// staged order with, when its writer sorted it, its own positions in [`log_row_order`]: when
/// every run is sorted the runs are merged (one pass, ties to the earlier run, so the order is
/// the one sorting them together gives), otherwise all rows are sorted
/// ([`log_row_permutation`]).
pub fn logs_row_group(runs: &[(&[LogRecord], Option<&[u32]>)], len: usize) -> RecordBatch {
    let rows: Vec<&LogRecord> = runs.iter().flat_map(|(r, _)| r.iter()).collect();
    debug_assert_eq!(rows.len(), len);
    let order = if runs.iter().all(|(_, o)| o.is_some()) {
        let mut base = 0u32;
        let mut merged: Vec<u32> = Vec::new();
        for (run, order) in runs {
            let order = order.expect("checked above");
            assert_eq!(order.len(), run.len(), "a run's order covers its rows");
            let run_order = order.iter().map(|&i| base + i);
            merged = merge_runs(&rows, merged, run_order);
            base += run.len() as u32;
        }
        merged
    } else {
        log_row_permutation(&rows)
    };
    let planted = crate::planted!(PartialKeyRowSort) || crate::planted!(PrefixPairRowSort);
    debug_assert!(
        planted
            || order
                .windows(2)
                .all(|w| log_row_order(rows[w[0] as usize], rows[w[1] as usize]).is_le())
    );
    logs_to_batch_from(order.iter().map(|&i| rows[i as usize]), len)
}

/// Merges two runs of positions into `rows`, each in [`log_row_order`], into one; on ties the
/// first run's position goes first (its rows were staged earlier).
fn merge_runs(rows: &[&LogRecord], first: Vec<u32>, second: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut out = Vec::with_capacity(first.len() + second.size_hint().0);
    let mut first = first.into_iter().peekable();
    for b in second {
        while let Some(&a) = first.peek() {
            if log_row_order(rows[b as usize], rows[a as usize]).is_lt() {
                break;
            }
            out.push(a);
            first.next();
        }
        out.push(b);
    }
    out.extend(first);
    out
}

/// The positions of `rows` in [`log_row_order`], ties kept in position order. It runs on the
/// coordinator for every flush, so the sort compares integers only: the first 8 bytes of the
/// address and of topic0 (distinct for distinct values nearly always: they are hashes or
/// contract addresses), then the position. Within a run of equal prefixes that leaves rows in
/// staged order, which is already block and log order. Each run is checked for that and sorted
/// by the full order only where the check fails: rows sharing an address prefix must share the
/// address, and rows sharing both prefixes must share topic0 and be in block and log order. A
/// comparison sort falling back to the full order on every tied prefix spent most of its time
/// there: a block's logs share a few dozen contracts and events.
pub fn log_row_permutation(rows: &[&LogRecord]) -> Vec<u32> {
    assert!(
        rows.len() <= u32::MAX as usize,
        "a row group's positions fit a u32"
    );
    let prefix = |bytes: &[u8]| {
        let mut p = [0u8; 8];
        let n = bytes.len().min(8);
        p[..n].copy_from_slice(&bytes[..n]);
        u64::from_be_bytes(p)
    };
    let mut keys: Vec<(u64, u64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (prefix(&r.address), prefix(topic0(r)), i as u32))
        .collect();
    if crate::planted!(PartialKeyRowSort) {
        // The planted bug: rows ordered by their address prefix alone.
        keys.sort_by_key(|k| (k.0, k.2));
        return keys.into_iter().map(|k| k.2).collect();
    }
    if crate::planted!(PrefixPairRowSort) {
        // The planted bug (this sort before b584cbe): the prefix pair first, the full order
        // only on equal pairs, so addresses sharing 8 bytes are ordered by topic0 first.
        keys.sort_unstable_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| {
                let (x, y) = (rows[a.2 as usize], rows[b.2 as usize]);
                log_row_order(x, y).then(a.2.cmp(&b.2))
            })
        });
        return keys.into_iter().map(|k| k.2).collect();
    }
    keys.sort_unstable();
    let full = |x: &(u64, u64, u32), y: &(u64, u64, u32)| {
        log_row_order(rows[x.2 as usize], rows[y.2 as usize]).then(x.2.cmp(&y.2))
    };
    for run in keys.chunk_by_mut(|x, y| x.0 == y.0) {
        // Rows with equal address prefixes: the prefix order is the full order only if they
        // have one address.
        let head = rows[run[0].2 as usize];
        if run
            .iter()
            .any(|k| rows[k.2 as usize].address != head.address)
        {
            run.sort_unstable_by(full);
            continue;
        }
        for run in run.chunk_by_mut(|x, y| x.1 == y.1) {
            let in_order = run.windows(2).all(|w| {
                let (x, y) = (rows[w[0].2 as usize], rows[w[1].2 as usize]);
                topic0(x) == topic0(y) && log_row_order(x, y).is_le()
            });
            if !in_order {
                run.sort_unstable_by(full);
            }
        }
    }
    debug_assert!(keys.windows(2).all(|w| log_row_order(
        rows[w[0].2 as usize],
        rows[w[1].2 as usize]
    )
    .is_le()));
    keys.into_iter().map(|k| k.2).collect()
}

pub fn properties(
    bloom_columns: &[&str],
    page_statistics: &[&str],
    page_rows: usize,
) -> WriterProperties {
    assert!(page_rows > 0, "a data page holds at least one row");
    let mut b = WriterProperties::builder()
        .set_writer_version(WRITER_VERSION)
        .set_data_page_size_limit(DATA_PAGE_SIZE_LIMIT_BYTES)
        .set_data_page_row_count_limit(page_rows)
        // The row limit is checked once per mini-batch of this many rows.
        .set_write_batch_size(page_rows)
        .set_bloom_filter_position(BloomFilterPosition::AfterRowGroup)
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // Page locations for every column, whatever its statistics: what lets a read skip a
        // page of any column it decodes.
        .set_offset_index_disabled(false)
        .set_max_row_group_row_count(None)
        .set_dictionary_enabled(false)
        .set_created_by("receipt-store".to_string());
    for c in page_statistics {
        b = b.set_column_statistics_enabled(ColumnPath::from(*c), EnabledStatistics::Page);
    }
    for c in bloom_columns {
        let path = ColumnPath::from(*c);
        b = b
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(path, BLOOM_MAX_NDV);
    }
    b.build()
}

/// The writer properties of one kind of file with the default page size.
pub fn properties_for(kind: FileKind) -> WriterProperties {
    properties_with_pages(kind, DATA_PAGE_ROW_COUNT_LIMIT)
}

/// The writer properties of one kind of file: [`properties`] plus its sort order.
pub fn properties_with_pages(kind: FileKind, page_rows: usize) -> WriterProperties {
    let bloom: &[&str] = match kind {
        FileKind::Receipts => &["tx_hash"],
        FileKind::Logs => &["tx_hash", "address", "topic0"],
    };
    properties(bloom, page_statistics_columns(kind), page_rows)
        .into_builder()
        .set_sorting_columns(Some(sorting_columns(kind)))
        .build()
}

/// The sizes of the pages parquet-rs encodes, per column chunk. The encoder keeps a column
/// chunk's pages in a [`PageStore`] until its row group is written, handing over each data page
/// as two blobs, its header and its data; this store keeps them on the heap as parquet's own
/// does and, once the chunk is written (the store dropped), reports their lengths. That is how
/// the writer finds each page in the bytes it appends and checksums it (parquet-rs writes no
/// page CRCs and exposes no page offsets before the file's close). Hand-written: no crate
/// offers this.
#[derive(Debug, Default, Clone)]
struct PageTally {
    chunks: Arc<Mutex<Vec<TalliedChunk>>>,
}

/// One column chunk's blob lengths, in the order the encoder stored them, and its column.
type TalliedChunk = (usize, Vec<usize>);

impl PageTally {
    /// The chunks reported since the last call, by column.
    fn take(&self) -> BTreeMap<usize, Vec<usize>> {
        std::mem::take(&mut *self.chunks.lock().unwrap())
            .into_iter()
            .collect()
    }
}

impl PageStoreFactory for PageTally {
    fn create(&self, args: &PageStoreArgs<'_>) -> parquet::errors::Result<Box<dyn PageStore>> {
        Ok(Box::new(TalliedStore {
            column: args.column_index(),
            blobs: Vec::new(),
            lens: Vec::new(),
            resident: 0,
            tally: self.clone(),
        }))
    }
}

/// One column chunk's pages (see [`PageTally`]).
struct TalliedStore {
    column: usize,
    blobs: Vec<Bytes>,
    lens: Vec<usize>,
    resident: usize,
    tally: PageTally,
}

impl PageStore for TalliedStore {
    fn put(&mut self, value: Bytes) -> parquet::errors::Result<PageKey> {
        let key = PageKey::new(self.blobs.len() as u64);
        self.lens.push(value.len());
        self.resident += value.len();
        self.blobs.push(value);
        Ok(key)
    }

    fn take(&mut self, key: PageKey) -> parquet::errors::Result<Bytes> {
        let blob = self
            .blobs
            .get_mut(key.get() as usize)
            .map(std::mem::take)
            .ok_or_else(|| parquet::errors::ParquetError::General("unknown page key".into()))?;
        self.resident -= blob.len();
        Ok(blob)
    }

    fn memory_size(&self) -> usize {
        self.resident
    }
}

impl Drop for TalliedStore {
    fn drop(&mut self) {
        let lens = std::mem::take(&mut self.lens);
        if let Ok(mut chunks) = self.tally.chunks.lock() {
            chunks.push((self.column, lens));
        }
    }
}

/// The crc32c of every page of the row group just flushed into `buf` (whose first byte lands at
/// file offset `base`), in the footer's [`PAGE_CRC_KEY`] form: columns separated by `;`. Empty
/// (the group is then verified whole) if the tallied pages do not tile a column chunk exactly,
/// or a chunk has a dictionary page (tallied out of order by the encoder); neither happens with
/// these writer properties.
fn page_checksums(
    buf: &[u8],
    base: u64,
    group: &RowGroupMetaData,
    mut tally: BTreeMap<usize, Vec<usize>>,
) -> String {
    let mut columns = Vec::with_capacity(group.num_columns());
    for (c, col) in group.columns().iter().enumerate() {
        let Some(blobs) = tally.remove(&c) else {
            return String::new();
        };
        let start = col.data_page_offset() as u64;
        let chunk = col.compressed_size() as usize;
        if col.dictionary_page_offset().is_some()
            || blobs.len() % 2 != 0
            || blobs.iter().sum::<usize>() != chunk
            || start < base
            || (start - base) as usize + chunk > buf.len()
        {
            debug_assert!(
                false,
                "pages of column {c} do not tile its chunk: {blobs:?}"
            );
            return String::new();
        }
        let mut at = (start - base) as usize;
        let mut crcs = String::with_capacity(blobs.len() / 2 * 8);
        // A data page is its header then its data: two blobs, one page.
        for pair in blobs.chunks(2) {
            let len = pair[0] + pair[1];
            let _ = write!(crcs, "{:08x}", crc32c::crc32c(&buf[at..at + len]));
            at += len;
        }
        columns.push(crcs);
    }
    columns.join(";")
}

/// One parquet file being written through the `Fs`, under the open pair's name (`path`) until
/// [`PairWriter::finish`] renames it to `final_path`.
struct FileWriter<F: Fs> {
    path: PathBuf,
    final_path: PathBuf,
    /// `None` only while a row group is being encoded on the write lane (see
    /// [`PairWriter::start_encode`]).
    encoder: Option<ArrowWriter<Vec<u8>>>,
    /// The encoder's page sizes (see [`PageTally`]).
    tally: PageTally,
    /// The row group encoded but not yet appended.
    pending: Option<EncodedGroup>,
    file: F::File,
    crc: u32,
    written: u64,
    /// `offset:length:crc32c` of every bloom filter written so far.
    bloom_crcs: Vec<String>,
    /// `offset:length:crc32c` of every row group's bytes written so far.
    row_group_crcs: Vec<String>,
    /// Every row group's page checksums ([`PAGE_CRC_KEY`]) so far.
    page_crcs: Vec<String>,
}

impl<F: Fs> FileWriter<F> {
    fn new(
        path: PathBuf,
        final_path: PathBuf,
        file: F::File,
        schema: SchemaRef,
        kind: FileKind,
        page_rows: usize,
    ) -> Result<Self, Error> {
        let properties = properties_with_pages(kind, page_rows);
        let tally = PageTally::default();
        let options = ArrowWriterOptions::new()
            .with_properties(properties)
            .with_page_store_factory(Arc::new(tally.clone()));
        let encoder =
            ArrowWriter::try_new_with_options(Vec::new(), schema, options).map_err(|e| {
                Error::Parquet {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(FileWriter {
            path,
            final_path,
            encoder: Some(encoder),
            tally,
            pending: None,
            file,
            crc: 0,
            written: 0,
            bloom_crcs: Vec::new(),
            row_group_crcs: Vec::new(),
            page_crcs: Vec::new(),
        })
    }

    /// Appends everything the encoder produced since the last drain and returns the file
    /// offset at which those bytes start, their length and their crc32c. The encoder's buffer
    /// is cleared, not replaced, so its capacity is reused by the next row group.
    async fn drain(&mut self) -> Result<(u64, usize, u32), Error> {
        let encoder = self
            .encoder
            .as_mut()
            .expect("the encoder is back after encoding");
        // The encoder buffers internally; push everything down to our Vec first.
        encoder.sync().map_err(|e| Error::io(&self.path, e))?;
        let base = self.written;
        let bytes = encoder.inner_mut();
        let (len, crc) = (bytes.len(), crc32c::crc32c(bytes));
        if len == 0 {
            return Ok((base, 0, 0));
        }
        // Extending the running crc over the bytes costs one more hardware pass over them;
        // `crc32c_combine` (GF(2) matrix powers per call) cost 7% of a simulator run.
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += len as u64;
        let r = self.file.append(bytes).await;
        encoder.inner_mut().clear();
        r.map_err(|e| Error::io(&self.path, e))?;
        Ok((base, len, crc))
    }

    /// Queues the encoding of the batch `batch` builds as one row group on `lane` (see
    /// [`encode_row_group`]); the job owns the encoder until [`FileWriter::take_back`].
    fn encode_on<P: BlockingPool>(
        &mut self,
        lane: &P,
        batch: impl FnOnce() -> RecordBatch + Send + 'static,
    ) -> BoxFuture<EncodeJobOutput> {
        let mut encoder = self.encoder.take().expect("no encode in flight");
        let (path, base) = (self.path.clone(), self.written);
        let tally = self.tally.clone();
        Box::pin(lane.run_write(move || {
            let batch = batch();
            assert!(batch.num_rows() > 0, "a row group has rows");
            let encoded = encode_row_group(&mut encoder, &tally, &path, base, &batch);
            (encoder, encoded)
        }))
    }

    /// Puts the encoder [`FileWriter::encode_on`] lent back, and keeps its row group to append.
    fn take_back(&mut self, (encoder, encoded): EncodeJobOutput) -> Result<(), Error> {
        assert!(self.encoder.is_none(), "the encoder was lent to this job");
        self.encoder = Some(encoder);
        self.pending = Some(encoded?);
        Ok(())
    }

    /// Appends the row group encoded last and returns its index, through which reads of the
    /// open window fetch it back from this file. One flush is one row group: the drained bytes
    /// are exactly that row group, its bloom filters and, before the first, the magic; their
    /// checksum lets a reader verify the row group alone.
    async fn append_encoded(&mut self, kind: FileKind) -> Result<Arc<FileIndex>, Error> {
        let encoded = self
            .pending
            .take()
            .expect("a row group was encoded before it is appended");
        self.bloom_crcs.extend(encoded.bloom_crcs);
        self.page_crcs.push(encoded.page_crcs);
        let (offset, len, crc) = self.drain().await?;
        self.row_group_crcs
            .push(format!("{offset}:{len}:{crc:08x}"));
        let span = RowGroupSpan { offset, len, crc };
        let index = FileIndex::written_group(
            &self.path,
            kind,
            encoded.metadata,
            encoded.blooms,
            span,
            self.written,
        )?;
        Ok(Arc::new(index))
    }

    /// Writes the footer (with the body checksum, the layout version and the store's last seen
    /// block) and fsyncs the file.
    async fn finish(mut self, last_seen_block: u64) -> Result<(), Error> {
        // The body is everything written so far: magic, row groups and their bloom filters.
        self.drain().await?;
        let (crc, len) = (self.crc, self.written);
        let encoder = self.encoder.as_mut().expect("no encode in flight");
        encoder.append_key_value_metadata(KeyValue::new(
            BODY_CRC_KEY.to_string(),
            format!("{crc:08x}"),
        ));
        encoder.append_key_value_metadata(KeyValue::new(BODY_LEN_KEY.to_string(), len.to_string()));
        encoder.append_key_value_metadata(KeyValue::new(
            BLOOM_CRC_KEY.to_string(),
            self.bloom_crcs.join(","),
        ));
        encoder.append_key_value_metadata(KeyValue::new(
            ROW_GROUP_CRC_KEY.to_string(),
            self.row_group_crcs.join(","),
        ));
        encoder.append_key_value_metadata(KeyValue::new(
            PAGE_CRC_KEY.to_string(),
            self.page_crcs.join(","),
        ));
        encoder.append_key_value_metadata(KeyValue::new(
            LAYOUT_VERSION_KEY.to_string(),
            LAYOUT_VERSION.to_string(),
        ));
        encoder.append_key_value_metadata(KeyValue::new(
            LAST_SEEN_BLOCK_KEY.to_string(),
            last_seen_block.to_string(),
        ));
        let placeholder = String::from_utf8(FOOTER_CRC_PLACEHOLDER.to_vec()).expect("ascii");
        encoder.append_key_value_metadata(KeyValue::new(
            PAGE_INDEX_CRC_KEY.to_string(),
            placeholder.clone(),
        ));
        encoder.append_key_value_metadata(KeyValue::new(FOOTER_CRC_KEY.to_string(), placeholder));
        encoder.finish().map_err(|e| Error::Parquet {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // The buffer holds the page indexes (written at close), then the footer, its length and
        // the magic. Checksum the page indexes into their placeholder, then the footer (with
        // its own placeholder still in it) into its own.
        let tail = encoder.inner_mut();
        let n = tail.len();
        let footer_len =
            u32::from_le_bytes(tail[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
        let footer = n - 8 - footer_len..n - 8;
        let page_index_sum = crc32c::crc32c(&tail[..footer.start]);
        let span = kv_value_span(
            &tail[footer.clone()],
            PAGE_INDEX_CRC_KEY,
            FOOTER_CRC_PLACEHOLDER,
        )
        .expect("the footer carries the page index checksum placeholder");
        let at = footer.start + span.start..footer.start + span.end;
        tail[at].copy_from_slice(format!("{page_index_sum:08x}").as_bytes());
        let span = footer_crc_span(&tail[footer.clone()], FOOTER_CRC_PLACEHOLDER)
            .expect("the footer carries the checksum placeholder");
        let sum = crc32c::crc32c(&tail[footer.clone()]);
        let at = footer.start + span.start..footer.start + span.end;
        tail[at].copy_from_slice(format!("{sum:08x}").as_bytes());
        self.drain().await?;
        if crate::planted!(DropWalBeforePairDurable) {
            return Ok(());
        }
        self.file
            .sync_all()
            .await
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// A row group encoded into its writer's buffer, not yet appended to the file.
struct EncodedGroup {
    /// `offset:length:crc32c` of each bloom filter written with it (the footer's list).
    bloom_crcs: Vec<String>,
    /// The bloom filters' bytes by file offset, and the group's metadata: what the open
    /// window's readers need to find and decode the group in the unfinished file.
    blooms: BTreeMap<u64, Bytes>,
    metadata: RowGroupMetaData,
    /// Its pages' checksums, in the footer's form ([`page_checksums`]).
    page_crcs: String,
}

/// Encodes `batch` as one row group into `encoder`'s buffer, whose first byte will land at file
/// offset `base`, and returns what the footer and the open window's readers need of it. Pure CPU
/// work (nothing is appended to the file), so it can run off the coordinator's task.
fn encode_row_group(
    encoder: &mut ArrowWriter<Vec<u8>>,
    tally: &PageTally,
    path: &Path,
    base: u64,
    batch: &RecordBatch,
) -> Result<EncodedGroup, Error> {
    let perr = |e: parquet::errors::ParquetError| Error::Parquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Chunks a failed encode left tallied are no part of this group.
    drop(tally.take());
    encoder.write(batch).map_err(perr)?;
    encoder.flush().map_err(perr)?;
    encoder.sync().map_err(|e| Error::io(path, e))?;
    // Bloom filters are written right after their row group, so they are in the encoder's
    // buffer (which starts at file offset `base`): checksum each one so the index can be
    // verified without reading data pages.
    let buf = encoder.inner();
    let rg = encoder.flushed_row_groups().last().expect("just flushed");
    let mut bloom_crcs = Vec::new();
    let mut blooms = BTreeMap::new();
    for col in rg.columns() {
        if let (Some(off), Some(len)) = (col.bloom_filter_offset(), col.bloom_filter_length()) {
            let (off, len) = (off as u64, len as usize);
            assert!(off >= base, "bloom filter written with its row group");
            let start = (off - base) as usize;
            let bytes = &buf[start..start + len];
            bloom_crcs.push(format!("{off}:{len}:{:08x}", crc32c::crc32c(bytes)));
            blooms.insert(off, Bytes::copy_from_slice(bytes));
        }
    }
    let page_crcs = page_checksums(buf, base, rg, tally.take());
    Ok(EncodedGroup {
        bloom_crcs,
        blooms,
        metadata: rg.clone(),
        page_crcs,
    })
}

/// What one encode job hands back: the encoder it borrowed, and the row group or why not.
type EncodeJobOutput = (ArrowWriter<Vec<u8>>, Result<EncodedGroup, Error>);

/// Both files' encode jobs of one flush, done (see [`PairWriter::start_encode`]).
pub struct EncodedPair {
    receipts: EncodeJobOutput,
    /// None when the flush had no logs.
    logs: Option<EncodeJobOutput>,
}

/// The writer of the open pair: `.receipts_<start>.parquet.open` / `.logs_<start>.parquet.open`
/// while it is written, `receipts_<start>.parquet` / `logs_<start>.parquet` once finished.
pub struct PairWriter<F: Fs> {
    pub start: u64,
    fs: F,
    receipts: FileWriter<F>,
    logs: FileWriter<F>,
    row_groups: usize,
    /// Read-only handles on the two files, shared with snapshots: reads of the open window
    /// fetch written row groups through them (see [`PairWriter::readers`]).
    readers: OpenReaders,
}

/// Read-only handles on the open pair's receipts and logs files. A snapshot that holds them
/// reads the row groups it was promised even after the pair is renamed or pruned.
#[derive(Clone)]
pub struct OpenReaders {
    pub receipts: Arc<dyn ReadAt>,
    pub logs: Arc<dyn ReadAt>,
}

impl<F: Fs> PairWriter<F> {
    /// Creates (truncating) both files under the open pair's names in `dir`. If the logs file
    /// cannot be created, the receipts file just created is removed again (its removal error,
    /// if any, is reported with the creation error).
    /// `page_rows` is [`crate::Config::page_rows`].
    pub async fn create(fs: &F, dir: &Path, start: u64, page_rows: usize) -> Result<Self, Error> {
        let open_path = |kind| dir.join(open_file_name(kind, start));
        let final_path = |kind| dir.join(final_file_name(kind, start));
        let receipt_path = open_path(FileKind::Receipts);
        let log_path = open_path(FileKind::Logs);
        let rf = fs
            .create(&receipt_path)
            .await
            .map_err(|e| Error::io(&receipt_path, e))?;
        let lf = match fs.create(&log_path).await {
            Ok(f) => f,
            Err(e) => {
                drop(rf);
                let created = Error::io(&log_path, e);
                return Err(match discard(fs, dir, &[receipt_path]).await {
                    Ok(()) => created,
                    Err(d) => Error::join(vec![created, d.into()]).expect("two errors"),
                });
            }
        };
        let readers = async {
            let receipts: Arc<dyn ReadAt> = Arc::new(
                fs.open(&receipt_path)
                    .await
                    .map_err(|e| Error::io(&receipt_path, e))?,
            );
            let logs: Arc<dyn ReadAt> = Arc::new(
                fs.open(&log_path)
                    .await
                    .map_err(|e| Error::io(&log_path, e))?,
            );
            Ok::<_, Error>(OpenReaders { receipts, logs })
        }
        .await;
        let readers = match readers {
            Ok(r) => r,
            Err(opened) => {
                drop((rf, lf));
                let paths = [receipt_path, log_path];
                return Err(match discard(fs, dir, &paths).await {
                    Ok(()) => opened,
                    Err(d) => Error::join(vec![opened, d.into()]).expect("two errors"),
                });
            }
        };
        let receipts = FileWriter::new(
            receipt_path,
            final_path(FileKind::Receipts),
            rf,
            receipt_schema(),
            FileKind::Receipts,
            page_rows,
        )?;
        let logs = FileWriter::new(
            log_path,
            final_path(FileKind::Logs),
            lf,
            log_schema(),
            FileKind::Logs,
            page_rows,
        )?;
        Ok(PairWriter {
            start,
            fs: fs.clone(),
            receipts,
            logs,
            row_groups: 0,
            readers,
        })
    }

    /// The read handles on the pair's files.
    pub fn readers(&self) -> &OpenReaders {
        &self.readers
    }

    /// Every name the pair's files may have: while open and once finished. Discarding the pair
    /// removes all four (a finalization that failed between its renames leaves a mix).
    pub fn all_paths(&self) -> [PathBuf; 4] {
        [
            self.receipts.path.clone(),
            self.logs.path.clone(),
            self.receipts.final_path.clone(),
            self.logs.final_path.clone(),
        ]
    }

    pub fn row_groups(&self) -> usize {
        self.row_groups
    }

    /// Starts encoding one row group of each file on `lane` (the env's write lane,
    /// [`BlockingPool::run_write`]), each job building its batch first (`logs`: none when the
    /// flush has no logs), and returns the two jobs as one future: the coordinator serves
    /// requests while they run, and encoding (with the batch builds and the logs sort) is most
    /// of a flush's cost, so a flush overlaps the next block's commit instead of delaying it.
    /// Nothing is appended: [`PairWriter::end_encode`] takes the future's output back, then
    /// [`PairWriter::append_receipt_row_group`] and [`PairWriter::append_log_row_group`] write
    /// the bytes, in that order. The writer's encoders are in the jobs until `end_encode`: it
    /// encodes nothing else meanwhile, and if the future is dropped it must not be used again
    /// (the store is poisoned or ending).
    pub fn start_encode<P: BlockingPool>(
        &mut self,
        lane: &P,
        receipts: impl FnOnce() -> RecordBatch + Send + 'static,
        logs: Option<impl FnOnce() -> RecordBatch + Send + 'static>,
    ) -> BoxFuture<EncodedPair> {
        let receipts_job = self.receipts.encode_on(lane, receipts);
        let logs_job = logs.map(|logs| self.logs.encode_on(lane, logs));
        Box::pin(async move {
            // Both jobs are already queued (`run_write` starts its work when called).
            let receipts = receipts_job.await;
            let logs = match logs_job {
                Some(job) => Some(job.await),
                None => None,
            };
            EncodedPair { receipts, logs }
        })
    }

    /// Takes back what [`PairWriter::start_encode`]'s jobs made: the encoders, and the row
    /// groups to append next. The first encode error is the result (the store is poisoned).
    pub fn end_encode(&mut self, done: EncodedPair) -> Result<(), Error> {
        let EncodedPair { receipts, logs } = done;
        let receipts = self.receipts.take_back(receipts);
        let logs = logs.map_or(Ok(()), |l| self.logs.take_back(l));
        receipts.and(logs)
    }

    /// Appends the receipts row group [`PairWriter::start_encode`] encoded and returns its
    /// index in the unfinished file.
    pub async fn append_receipt_row_group(&mut self) -> Result<Arc<FileIndex>, Error> {
        let index = self.receipts.append_encoded(FileKind::Receipts).await?;
        self.row_groups += 1;
        Ok(index)
    }

    /// Appends the logs row group [`PairWriter::start_encode`] encoded and returns its
    /// index (nothing when that flush had no logs).
    pub async fn append_log_row_group(&mut self) -> Result<Option<Arc<FileIndex>>, Error> {
        if self.logs.pending.is_none() {
            return Ok(None);
        }
        self.logs.append_encoded(FileKind::Logs).await.map(Some)
    }

    /// Finalizes both files: footers (recording `last_seen_block`), fsync, receipts first; then
    /// renames both to their final names, receipts first. Both files are durable before either
    /// rename, so a crash between the renames leaves two finished files that open completes.
    /// Does not sync the directory: the caller does, before relying on the renames.
    pub async fn finish(self, last_seen_block: u64) -> Result<(), Error> {
        let fs = self.fs;
        let names = [
            (self.receipts.path.clone(), self.receipts.final_path.clone()),
            (self.logs.path.clone(), self.logs.final_path.clone()),
        ];
        self.receipts.finish(last_seen_block).await?;
        self.logs.finish(last_seen_block).await?;
        for (from, to) in &names {
            fs.rename(from, to).await.map_err(|e| Error::io(from, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values that share their first 8 bytes and differ after them, so the prefix sort meets
    /// runs whose rows are not in the full order.
    fn address(k: u8) -> [u8; 20] {
        let mut a = [0x11; 20];
        a[19] = k;
        if k == 3 {
            a[0] = 0x22;
        }
        a
    }

    fn topic(k: u8) -> [u8; 32] {
        let mut t = [0x33; 32];
        t[31] = k;
        t
    }

    fn row(a: u8, t: Option<u8>, block: u64, log_index: u32) -> LogRecord {
        LogRecord {
            block_number: block,
            tx_hash: [0; 32],
            tx_index: 0,
            log_index,
            address: address(a),
            topics: t.map(topic).into_iter().collect(),
            data: Vec::new(),
        }
    }

    proptest! {
        #[test]
        fn the_row_permutation_is_the_full_row_order_with_ties_in_staged_order(
            specs in proptest::collection::vec(
                (0u8..4, proptest::option::of(0u8..3), 0u64..4, 0u32..3), 0..80),
            staged_order in any::<bool>(),
        ) {
            let mut rows: Vec<LogRecord> =
                specs.iter().map(|&(a, t, b, l)| row(a, t, b, l)).collect();
            if staged_order {
                // As the coordinator stages them: block and log order.
                rows.sort_by_key(|r| (r.block_number, r.log_index));
            }
            let refs: Vec<&LogRecord> = rows.iter().collect();
            let mut expected: Vec<u32> = (0..rows.len() as u32).collect();
            expected.sort_by(|&x, &y| {
                log_row_order(&rows[x as usize], &rows[y as usize]).then(x.cmp(&y))
            });
            prop_assert_eq!(log_row_permutation(&refs), expected);
        }

        #[test]
        fn merging_sorted_runs_gives_the_batch_sorting_them_together_gives(
            specs in proptest::collection::vec(
                (0u8..4, proptest::option::of(0u8..3), 0u64..4, 0u32..3), 0..80),
            cuts in proptest::collection::vec(0usize..80, 0..4),
        ) {
            let rows: Vec<LogRecord> =
                specs.iter().map(|&(a, t, b, l)| row(a, t, b, l)).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(rows.len())).collect();
            cuts.push(0);
            cuts.push(rows.len());
            cuts.sort_unstable();
            let runs: Vec<&[LogRecord]> = cuts.windows(2).map(|w| &rows[w[0]..w[1]]).collect();
            let orders: Vec<Vec<u32>> = runs
                .iter()
                .map(|run| log_row_permutation(&run.iter().collect::<Vec<_>>()))
                .collect();
            let sorted: Vec<_> = runs.iter().zip(&orders).map(|(r, o)| (*r, Some(&o[..]))).collect();
            let unsorted: Vec<_> = runs.iter().map(|r| (*r, None)).collect();
            prop_assert_eq!(
                logs_row_group(&sorted, rows.len()),
                logs_row_group(&unsorted, rows.len())
            );
        }
    }
}
