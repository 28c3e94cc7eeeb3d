//! Parquet layout: the upstream column names, types and order, row <-> Arrow conversion, the
//! pair writer and file verification.

pub mod index;
pub mod reader;
pub mod writer;

use crate::types::{LogRecord, ReceiptRecord, Topic, TxHash};
use arrow_array::builder::{BinaryBuilder, BooleanBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::sync::{Arc, OnceLock};

/// Key of the footer metadata entry holding the crc32c of every byte before the footer section.
pub const BODY_CRC_KEY: &str = "receipt_store.body_crc32c";
/// Key of the footer metadata entry holding the length of the checksummed body.
pub const BODY_LEN_KEY: &str = "receipt_store.body_len";
/// Key of the footer metadata entry listing `offset:length:crc32c` for every bloom filter, so
/// the index of a file can be loaded and verified without reading its data pages.
pub const BLOOM_CRC_KEY: &str = "receipt_store.bloom_crc32c";
/// Footer key: `offset:length:crc32c` of the bytes of every row group (its column chunks and
/// bloom filters, plus the leading magic for the first), in row-group order, so a read can fetch
/// and verify only the row groups it needs instead of the whole file.
pub const ROW_GROUP_CRC_KEY: &str = "receipt_store.row_group_crc32c";
/// Footer key: the file layout version ([`LAYOUT_VERSION`]). Files without it are version 1.
pub const LAYOUT_VERSION_KEY: &str = "receipt_store.layout_version";
/// Version 1: these schemas, the footer keys above, data pages v1, the sort order declared in
/// `sorting_columns`. A file with a higher version is refused with a clear error.
pub const LAYOUT_VERSION: u32 = 1;
/// Footer key: the store's last seen block when the file was finalized: the highest block
/// written or observed empty, including the block whose arrival closed the window. Open seeds
/// the last seen and latest block from it, so empty blocks that closed windows are remembered.
pub const LAST_SEEN_BLOCK_KEY: &str = "receipt_store.last_seen_block";
/// crc32c (hex) of the footer's own bytes, computed with this value as [`FOOTER_CRC_PLACEHOLDER`]
/// and written into the footer last. Without it a flipped bit in the footer (row-group
/// statistics, a bloom filter's offset) could make a read skip rows silently: found by the
/// simulator's bit-rot scenario (a rotted receipts footer hid a receipt from get_receipt).
pub const FOOTER_CRC_KEY: &str = "receipt_store.footer_crc32c";
pub const FOOTER_CRC_PLACEHOLDER: &[u8; 8] = b"00000000";
/// Footer key: crc32c (hex) of the page indexes, the bytes between the body
/// ([`BODY_LEN_KEY`]) and the footer. The encoder writes them at close, after the body checksum
/// is fixed, so they get a checksum of their own, patched in like [`FOOTER_CRC_KEY`]'s (and
/// covered by it). A read prunes pages by them only when it is present and matches: a rotted
/// min/max would otherwise hide rows.
pub const PAGE_INDEX_CRC_KEY: &str = "receipt_store.page_index_crc32c";
/// Footer key: crc32c of every data page (header and data, the bytes the offset index locates),
/// so a read that decodes a few pages of a row group verifies those pages only. Row groups are
/// separated by `,`, a row group's columns by `;`, and a column is its pages' checksums as
/// 8 hex digits each, in page order. A row group written without them has an empty entry and
/// is verified whole ([`ROW_GROUP_CRC_KEY`]).
pub const PAGE_CRC_KEY: &str = "receipt_store.page_crc32c";

/// Where the footer checksum's value sits in the raw footer bytes (see [`kv_value_span`]).
pub(crate) fn footer_crc_span(footer: &[u8], value: &[u8]) -> Option<std::ops::Range<usize>> {
    kv_value_span(footer, FOOTER_CRC_KEY, value)
}

/// Where `value`, the value of footer entry `key`, sits in the raw footer bytes: the first
/// occurrence of `value` after the key's bytes (thrift puts a field header and a length byte
/// between them). How the writer patches a checksum into a footer it has already encoded.
pub(crate) fn kv_value_span(
    footer: &[u8],
    key: &str,
    value: &[u8],
) -> Option<std::ops::Range<usize>> {
    let key = key.as_bytes();
    let key_end = footer.windows(key.len()).position(|w| w == key)? + key.len();
    let search = &footer[key_end..footer.len().min(key_end + 8 + value.len())];
    let at = key_end + search.windows(value.len()).position(|w| w == value)?;
    Some(at..at + value.len())
}

/// Checks a footer against the checksum it carries (files without one pass: written before it).
pub(crate) fn footer_crc_ok(footer: &[u8], stored_hex: Option<&str>) -> bool {
    let Some(hex) = stored_hex else {
        return true;
    };
    let (Ok(stored), Some(span)) = (
        u32::from_str_radix(hex, 16),
        footer_crc_span(footer, hex.as_bytes()),
    ) else {
        return false;
    };
    let mut copy = footer.to_vec();
    copy[span].copy_from_slice(FOOTER_CRC_PLACEHOLDER);
    crc32c::crc32c(&copy) == stored
}

pub fn receipt_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("tx_hash", DataType::Binary, false),
            Field::new("block_number", DataType::UInt64, false),
            Field::new("receipt_bytes", DataType::Binary, false),
        ]))
    })
    .clone()
}

pub fn log_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("block_number", DataType::UInt64, false),
            Field::new("tx_hash", DataType::Binary, false),
            Field::new("tx_index", DataType::UInt32, false),
            Field::new("log_index", DataType::UInt32, false),
            Field::new("address", DataType::Binary, false),
            Field::new("block_hash", DataType::Binary, false),
            Field::new("removed", DataType::Boolean, false),
            Field::new("topic0", DataType::Binary, false),
            Field::new("topic1", DataType::Binary, false),
            Field::new("topic2", DataType::Binary, false),
            Field::new("topic3", DataType::Binary, false),
            Field::new("data", DataType::Binary, false),
        ]))
    })
    .clone()
}

pub fn receipts_to_batch(rows: &[ReceiptRecord]) -> RecordBatch {
    receipts_to_batch_from(rows, rows.len())
}

/// [`receipts_to_batch`] over `len` rows that may lie in several slices (the pieces of a chunk).
pub fn receipts_to_batch_from<'a>(
    rows: impl IntoIterator<Item = &'a ReceiptRecord>,
    len: usize,
) -> RecordBatch {
    let mut hash = BinaryBuilder::with_capacity(len, len * 32);
    let mut block = UInt64Builder::with_capacity(len);
    let mut bytes = BinaryBuilder::new();
    for r in rows {
        hash.append_value(r.tx_hash);
        block.append_value(r.block_number);
        bytes.append_value(&r.receipt_bytes);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(hash.finish()),
        Arc::new(block.finish()),
        Arc::new(bytes.finish()),
    ];
    RecordBatch::try_new(receipt_schema(), cols).expect("receipt columns match the schema")
}

pub fn logs_to_batch(rows: &[LogRecord]) -> RecordBatch {
    logs_to_batch_from(rows, rows.len())
}

/// [`logs_to_batch`] over `len` rows that may lie in several slices (the pieces of a chunk).
pub fn logs_to_batch_from<'a>(
    rows: impl IntoIterator<Item = &'a LogRecord>,
    len: usize,
) -> RecordBatch {
    let zero_hash = [0u8; 32];
    let mut block = UInt64Builder::with_capacity(len);
    let mut hash = BinaryBuilder::new();
    let mut tx_index = UInt32Builder::with_capacity(len);
    let mut log_index = UInt32Builder::with_capacity(len);
    let mut address = BinaryBuilder::new();
    let mut block_hash = BinaryBuilder::new();
    let mut removed = BooleanBuilder::with_capacity(len);
    let mut topics: [BinaryBuilder; 4] = std::array::from_fn(|_| BinaryBuilder::new());
    let mut data = BinaryBuilder::new();
    for r in rows {
        block.append_value(r.block_number);
        hash.append_value(r.tx_hash);
        tx_index.append_value(r.tx_index);
        log_index.append_value(r.log_index);
        address.append_value(r.address);
        block_hash.append_value(zero_hash);
        removed.append_value(false);
        for (i, t) in topics.iter_mut().enumerate() {
            match r.topics.get(i) {
                Some(topic) => t.append_value(topic),
                None => t.append_value(b""),
            }
        }
        data.append_value(&r.data);
    }
    let [t0, t1, t2, t3] = topics.map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(block.finish()),
        Arc::new(hash.finish()),
        Arc::new(tx_index.finish()),
        Arc::new(log_index.finish()),
        Arc::new(address.finish()),
        Arc::new(block_hash.finish()),
        Arc::new(removed.finish()),
        t0,
        t1,
        t2,
        t3,
        Arc::new(data.finish()),
    ];
    RecordBatch::try_new(log_schema(), cols).expect("log columns match the schema")
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column {name} has an unexpected type"))
}

fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("{what} has {} bytes, expected {N}", v.len()))
}

pub fn batch_to_receipts(batch: &RecordBatch) -> Result<Vec<ReceiptRecord>, String> {
    batch_to_receipts_where(batch, |_, _| true)
}

/// The receipts of `batch` for which `keep(tx_hash, block)` holds. Every row's hash is checked
/// (a malformed one is an error wherever it is), but only kept rows are materialized: a lookup
/// by hash copies one receipt, not the row group's thousands.
pub fn batch_to_receipts_where(
    batch: &RecordBatch,
    keep: impl Fn(&TxHash, u64) -> bool,
) -> Result<Vec<ReceiptRecord>, String> {
    let hash = col::<BinaryArray>(batch, "tx_hash")?;
    let block = col::<UInt64Array>(batch, "block_number")?;
    let bytes = col::<BinaryArray>(batch, "receipt_bytes")?;
    let mut out = Vec::new();
    for i in 0..batch.num_rows() {
        let tx_hash = fixed(hash.value(i), "tx_hash")?;
        if keep(&tx_hash, block.value(i)) {
            out.push(ReceiptRecord {
                tx_hash,
                block_number: block.value(i),
                receipt_bytes: bytes.value(i).to_vec(),
            });
        }
    }
    Ok(out)
}

pub fn batch_to_logs(batch: &RecordBatch) -> Result<Vec<LogRecord>, String> {
    batch_to_logs_where(batch, |_, _, _| true)
}

/// The logs of `batch` for which `keep(block, address, [topic0..topic3])` holds (absent topics
/// are empty slices), in the batch's row order. The predicate runs on the column values, so
/// rows it rejects are never materialized.
pub fn batch_to_logs_where(
    batch: &RecordBatch,
    keep: impl Fn(u64, &[u8], [&[u8]; 4]) -> bool,
) -> Result<Vec<LogRecord>, String> {
    let cols = LogColumns::of(batch)?;
    (0..batch.num_rows())
        .filter(|&i| cols.keeps(i, &keep))
        .map(|i| cols.record(i))
        .collect()
}

/// The columns of a decoded logs batch, typed once.
pub(crate) struct LogColumns<'a> {
    block: &'a UInt64Array,
    hash: &'a BinaryArray,
    tx_index: &'a UInt32Array,
    log_index: &'a UInt32Array,
    address: &'a BinaryArray,
    topics: [&'a BinaryArray; 4],
    data: &'a BinaryArray,
}

impl<'a> LogColumns<'a> {
    pub(crate) fn of(batch: &'a RecordBatch) -> Result<LogColumns<'a>, String> {
        Ok(LogColumns {
            block: col::<UInt64Array>(batch, "block_number")?,
            hash: col::<BinaryArray>(batch, "tx_hash")?,
            tx_index: col::<UInt32Array>(batch, "tx_index")?,
            log_index: col::<UInt32Array>(batch, "log_index")?,
            address: col::<BinaryArray>(batch, "address")?,
            topics: [
                col::<BinaryArray>(batch, "topic0")?,
                col::<BinaryArray>(batch, "topic1")?,
                col::<BinaryArray>(batch, "topic2")?,
                col::<BinaryArray>(batch, "topic3")?,
            ],
            data: col::<BinaryArray>(batch, "data")?,
        })
    }

    /// Whether `keep(block, address, topics)` holds for row `i`.
    pub(crate) fn keeps(&self, i: usize, keep: impl Fn(u64, &[u8], [&[u8]; 4]) -> bool) -> bool {
        keep(
            self.block.value(i),
            self.address.value(i),
            self.topics.map(|t| t.value(i)),
        )
    }

    /// Row `i`'s place in `get_logs` order: block, the caller's tx index, log index.
    pub(crate) fn order_key(&self, i: usize) -> (u64, u32, u32) {
        (
            self.block.value(i),
            self.tx_index.value(i),
            self.log_index.value(i),
        )
    }

    pub(crate) fn record(&self, i: usize) -> Result<LogRecord, String> {
        let mut ts: Vec<Topic> = Vec::new();
        for t in self.topics {
            let v = t.value(i);
            if v.is_empty() {
                break;
            }
            ts.push(fixed(v, "topic")?);
        }
        Ok(LogRecord {
            block_number: self.block.value(i),
            tx_hash: fixed(self.hash.value(i), "tx_hash")?,
            tx_index: self.tx_index.value(i),
            log_index: self.log_index.value(i),
            address: fixed(self.address.value(i), "address")?,
            topics: ts,
            data: self.data.value(i).to_vec(),
        })
    }
}
