//! Reading closed parquet files: verification of the body checksum, and row extraction with
//! row-group skipping by statistics and bloom filters.

use super::{
    batch_to_receipts_where, log_schema, receipt_schema, LogColumns, BODY_CRC_KEY, BODY_LEN_KEY,
    LAST_SEEN_BLOCK_KEY, LAYOUT_VERSION, LAYOUT_VERSION_KEY,
};
use super::{footer_crc_ok, FOOTER_CRC_KEY};
use crate::error::Error;
use crate::types::{LogRecord, ReceiptRecord, TxHash};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::ChunkReader;
use parquet::file::statistics::Statistics;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Receipts,
    Logs,
}

impl FileKind {
    pub(crate) fn schema(self) -> SchemaRef {
        match self {
            FileKind::Receipts => receipt_schema(),
            FileKind::Logs => log_schema(),
        }
    }
}

/// Per row group facts kept in memory: the block range and the bloom filters we index on.
#[derive(Clone, Debug)]
pub struct RowGroupIndex {
    pub rows: u64,
    pub min_block: Option<u64>,
    pub max_block: Option<u64>,
    /// Bloom filters by column name (tx_hash; for logs also address and topic0).
    pub blooms: Vec<(String, Sbbf)>,
}

impl RowGroupIndex {
    /// False only when the bloom filter on `column` proves `value` absent.
    pub fn may_contain(&self, column: &str, value: &[u8]) -> bool {
        self.blooms
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, f)| f.check(value))
            .unwrap_or(true)
    }
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        match (self.min_block, self.max_block) {
            (Some(lo), Some(hi)) => lo <= to && hi >= from,
            _ => self.rows > 0,
        }
    }
}

/// A closed, verified parquet file held in memory.
#[derive(Clone)]
pub struct ParquetFile {
    pub path: PathBuf,
    pub kind: FileKind,
    bytes: Bytes,
    pub metadata: Arc<ParquetMetaData>,
    pub row_groups: Vec<RowGroupIndex>,
    /// Whether the body checksum was present and matched (false for foreign files without one).
    pub checksummed: bool,
    /// The store's last seen block when the file was finalized (absent in older files).
    pub last_seen_block: Option<u64>,
}

const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
/// Reason prefix of a file that was never finalized (the only kind the startup scan deletes).
pub const UNFINISHED: &str = "unfinished";

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks the layout version and reads the last seen block from a footer's key-value entries.
/// A file of a newer layout is refused (not called corrupt: a newer store wrote it).
pub(crate) fn footer_facts(
    path: &Path,
    footer: &[u8],
    find: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<u64>, Error> {
    if !footer_crc_ok(footer, find(FOOTER_CRC_KEY).as_deref()) {
        crate::mark!("open-footer-checksum-failed");
        return Err(corrupt(path, "footer checksum mismatch"));
    }
    if let Some(v) = find(LAYOUT_VERSION_KEY) {
        match v.parse::<u32>() {
            Ok(n) if n <= LAYOUT_VERSION => {}
            Ok(n) => {
                return Err(Error::Parquet {
                    path: path.to_path_buf(),
                    reason: format!(
                        "written by a newer store: layout version {n}, this store reads up to \
                         {LAYOUT_VERSION}"
                    ),
                })
            }
            Err(_) => return Err(corrupt(path, format!("unreadable layout version {v:?}"))),
        }
    }
    match find(LAST_SEEN_BLOCK_KEY) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(path, format!("unreadable last seen block {v:?}"))),
    }
}

fn u64_stat(s: Option<&Statistics>) -> (Option<u64>, Option<u64>) {
    match s {
        Some(Statistics::Int64(v)) => (
            v.min_opt().map(|x| *x as u64),
            v.max_opt().map(|x| *x as u64),
        ),
        _ => (None, None),
    }
}

impl ParquetFile {
    /// Parses and verifies a whole file. A file that does not parse, whose schema is not ours, or
    /// whose body checksum does not match is `CorruptFile` naming the path.
    pub fn open(path: &Path, kind: FileKind, bytes: Vec<u8>) -> Result<ParquetFile, Error> {
        let bytes = Bytes::from(bytes);
        if bytes.len() < 8 || &bytes[bytes.len() - 4..] != PARQUET_MAGIC {
            // Our writer appends the footer last, in one piece: a file without the trailing
            // magic was never finalized.
            return Err(corrupt(path, format!("{UNFINISHED}: no parquet footer")));
        }
        let footer = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .map_err(|e| corrupt(path, format!("footer: {e}")))?;
        let kv = footer.file_metadata().key_value_metadata();
        let find = |k: &str| {
            kv.and_then(|kv| kv.iter().find(|e| e.key == k))
                .and_then(|e| e.value.clone())
        };
        let footer_len = u32::from_le_bytes(
            bytes[bytes.len() - 8..bytes.len() - 4]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let footer_bytes = &bytes[bytes.len() - 8 - footer_len..bytes.len() - 8];
        let last_seen_block = footer_facts(path, footer_bytes, &find)?;
        // Verify the body before decoding a single page: rot is an error, not wrong data.
        let checksummed = match (find(BODY_CRC_KEY), find(BODY_LEN_KEY)) {
            (Some(crc), Some(len)) => {
                let crc = u32::from_str_radix(&crc, 16)
                    .map_err(|_| corrupt(path, "unreadable body checksum"))?;
                let len: usize = len
                    .parse()
                    .map_err(|_| corrupt(path, "unreadable body length"))?;
                if len > bytes.len() {
                    return Err(corrupt(
                        path,
                        format!("body length {len} exceeds file size {}", bytes.len()),
                    ));
                }
                let got = crc32c::crc32c(&bytes[..len]);
                if got != crc {
                    return Err(corrupt(
                        path,
                        format!("body checksum mismatch: stored {crc:08x}, computed {got:08x}"),
                    ));
                }
                true
            }
            _ => false,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .map_err(|e| corrupt(path, e.to_string()))?;
        let metadata = builder.metadata().clone();
        let row_groups = row_group_index(path, kind, &builder)?;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            kind,
            bytes,
            metadata,
            row_groups,
            checksummed,
            last_seen_block,
        })
    }

    pub fn num_rows(&self) -> u64 {
        self.row_groups.iter().map(|r| r.rows).sum()
    }

    pub fn size_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Highest block number in the file, from row-group statistics.
    pub fn max_block(&self) -> Option<u64> {
        self.row_groups.iter().filter_map(|r| r.max_block).max()
    }

    pub fn min_block(&self) -> Option<u64> {
        self.row_groups.iter().filter_map(|r| r.min_block).min()
    }

    /// Decodes the given row groups of the (already verified) file.
    pub fn batches(&self, groups: Vec<usize>) -> Result<Vec<arrow_array::RecordBatch>, Error> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let builder = ParquetRecordBatchReaderBuilder::try_new(self.bytes.clone())
            .map_err(|e| corrupt(&self.path, e.to_string()))?;
        decode_groups(&self.path, builder, groups)
    }

    /// Row groups that may hold rows matching the block range and (optional) column values.
    pub fn candidate_groups(
        &self,
        from: u64,
        to: u64,
        must_match: &[(&str, &[&[u8]])],
    ) -> Vec<usize> {
        candidate_groups(&self.row_groups, from, to, must_match)
    }

    /// Receipts in the file, optionally only those with `hash`, in file order.
    pub fn receipts(
        &self,
        hash: Option<&TxHash>,
        from: u64,
        to: u64,
    ) -> Result<Vec<ReceiptRecord>, Error> {
        assert_eq!(self.kind, FileKind::Receipts);
        let hashes: Vec<&[u8]> = hash.map(|h| vec![&h[..]]).unwrap_or_default();
        let groups = self.candidate_groups(from, to, &[("tx_hash", &hashes)]);
        receipts_from(&self.path, self.batches(groups)?, hash, from, to)
    }

    /// Logs in row groups that may match; the caller applies the exact filter.
    pub fn logs(
        &self,
        from: u64,
        to: u64,
        must_match: &[(&str, &[&[u8]])],
    ) -> Result<Vec<LogRecord>, Error> {
        assert_eq!(self.kind, FileKind::Logs);
        let groups = self.candidate_groups(from, to, must_match);
        let mut out = Vec::new();
        logs_into(
            &self.path,
            self.batches(groups)?,
            |_, _, _| true,
            &mut out,
            1,
        )?;
        Ok(out)
    }
}

/// Row groups (indices into `row_groups`) that may hold rows in `[from, to]` whose columns match
/// every `(column, values)` pair, judged by statistics and bloom filters; empty `values` match all.
pub(crate) fn candidate_groups(
    row_groups: &[RowGroupIndex],
    from: u64,
    to: u64,
    must_match: &[(&str, &[&[u8]])],
) -> Vec<usize> {
    (0..row_groups.len())
        .filter(|&i| {
            let rg = &row_groups[i];
            rg.overlaps(from, to)
                && must_match.iter().all(|(col, values)| {
                    values.is_empty() || values.iter().any(|v| rg.may_contain(col, v))
                })
        })
        .collect()
}

/// Decodes the given row groups; any decoding error is `CorruptFile` naming `path`.
pub(crate) fn decode_groups<T: ChunkReader + 'static>(
    path: &Path,
    builder: ParquetRecordBatchReaderBuilder<T>,
    groups: Vec<usize>,
) -> Result<Vec<arrow_array::RecordBatch>, Error> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let err = |e: String| corrupt(path, e);
    let reader = builder
        .with_row_groups(groups)
        .with_batch_size(8192)
        .build()
        .map_err(|e| err(e.to_string()))?;
    reader.map(|b| b.map_err(|e| err(e.to_string()))).collect()
}

/// Receipts of decoded batches, only those with `hash` (if given) and a block in `[from, to]`.
pub(crate) fn receipts_from(
    path: &Path,
    batches: Vec<arrow_array::RecordBatch>,
    hash: Option<&TxHash>,
    from: u64,
    to: u64,
) -> Result<Vec<ReceiptRecord>, Error> {
    let mut out = Vec::new();
    for batch in batches {
        out.extend(
            batch_to_receipts_where(&batch, |h, block| {
                hash.is_none_or(|want| h == want) && block >= from && block <= to
            })
            .map_err(|e| corrupt(path, e))?,
        );
    }
    Ok(out)
}

/// Appends to `out` the logs of decoded batches for which `keep(block, address, topics)`
/// holds, in `get_logs` order (block, tx index, log index). A logs row group is stored in
/// address order, so the kept rows' keys are sorted first and each record is built straight
/// into its place. `out` gets room for `alike` times the rows kept here when it has less (the
/// caller's next groups are expected to keep about as many): a job's rows then land in one
/// allocation instead of being copied again to be joined.
pub(crate) fn logs_into(
    path: &Path,
    batches: Vec<arrow_array::RecordBatch>,
    keep: impl Fn(u64, &[u8], [&[u8]; 4]) -> bool,
    out: &mut Vec<LogRecord>,
    alike: usize,
) -> Result<(), Error> {
    let cols = batches
        .iter()
        .map(LogColumns::of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(path, e))?;
    // (block, tx index, log index) packed into one integer, and where the row is.
    let mut order: Vec<(u128, (u32, u32))> = Vec::new();
    for (b, c) in cols.iter().enumerate() {
        for i in 0..batches[b].num_rows() {
            if c.keeps(i, &keep) {
                let (block, tx, log) = c.order_key(i);
                let key = (u128::from(block) << 64) | (u128::from(tx) << 32) | u128::from(log);
                order.push((key, (b as u32, i as u32)));
            }
        }
    }
    order.sort_unstable_by_key(|&(key, _)| key);
    if out.capacity() - out.len() < order.len() {
        out.reserve(order.len() * alike.max(1));
    }
    for &(_, (b, i)) in &order {
        out.push(
            cols[b as usize]
                .record(i as usize)
                .map_err(|e| corrupt(path, e))?,
        );
    }
    Ok(())
}

/// Per row group block ranges (from statistics) and bloom filters, after checking the columns.
pub(crate) fn row_group_index<T: ChunkReader + 'static>(
    path: &Path,
    kind: FileKind,
    builder: &ParquetRecordBatchReaderBuilder<T>,
) -> Result<Vec<RowGroupIndex>, Error> {
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let want: Vec<String> = kind
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if names != want {
        return Err(corrupt(path, format!("unexpected columns {names:?}")));
    }
    let metadata = builder.metadata().clone();
    let schema = builder.parquet_schema();
    let col_index =
        |name: &str| (0..schema.num_columns()).find(|&i| schema.column(i).name() == name);
    let block_col = col_index("block_number").expect("schema checked above");
    let bloom_cols: &[&str] = match kind {
        FileKind::Receipts => &["tx_hash"],
        FileKind::Logs => &["tx_hash", "address", "topic0"],
    };
    let mut row_groups = Vec::with_capacity(metadata.num_row_groups());
    for rg in 0..metadata.num_row_groups() {
        let meta = metadata.row_group(rg);
        let (min_block, max_block) = u64_stat(meta.column(block_col).statistics());
        let mut blooms = Vec::new();
        for c in bloom_cols {
            let idx = col_index(c).expect("schema checked above");
            if let Some(f) = builder
                .get_row_group_column_bloom_filter(rg, idx)
                .map_err(|e| corrupt(path, e.to_string()))?
            {
                blooms.push((c.to_string(), f));
            }
        }
        row_groups.push(RowGroupIndex {
            rows: meta.num_rows() as u64,
            min_block,
            max_block,
            blooms,
        });
    }
    Ok(row_groups)
}
