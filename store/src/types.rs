//! Plain data: what callers hand the store, what reads give back, and the configuration.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A 32-byte transaction hash.
pub type TxHash = [u8; 32];
/// A 20-byte contract address.
pub type Address = [u8; 20];
/// A 32-byte log topic.
pub type Topic = [u8; 32];

/// EVM logs carry at most four topics (LOG0..LOG4); more is malformed input.
pub const MAX_TOPICS_PER_LOG: usize = 4;
/// Largest raw receipt accepted in one input (protects the WAL record size bound).
pub const MAX_RECEIPT_BYTES: usize = 8 * 1024 * 1024;
/// Largest log data accepted.
pub const MAX_LOG_DATA_BYTES: usize = 8 * 1024 * 1024;

/// One log emitted by a transaction, as the caller provides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogInput {
    pub address: Address,
    pub topics: Vec<Topic>,
    pub data: Vec<u8>,
}

/// One transaction receipt for a block. Everything replay needs is in here, so the WAL record
/// rebuilds the rows without any protobuf converter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptInput {
    pub tx_hash: TxHash,
    pub tx_index: u32,
    /// The opaque encoded receipt (protobuf upstream); stored as is in `receipt_bytes`.
    pub receipt_bytes: Vec<u8>,
    pub logs: Vec<LogInput>,
}

/// A receipt as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub tx_hash: TxHash,
    pub block_number: u64,
    pub receipt_bytes: Vec<u8>,
}

/// A log as read back (one row of a logs file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub block_number: u64,
    pub tx_hash: TxHash,
    pub tx_index: u32,
    /// Block-wide index: position of the log among all logs of its block, across write calls.
    pub log_index: u32,
    pub address: Address,
    /// Topics in order (the file stores them as topic0..topic3, empty when absent).
    pub topics: Vec<Topic>,
    pub data: Vec<u8>,
}

/// The rows one `write_receipts` call stages in the open window, built once from its receipts:
/// on the writer's task for a live write ([`Rows::of`]), by the WAL decoder at replay. Every row
/// is of one block; log indices count from 0 within the call (the coordinator adds the logs
/// earlier calls staged for the same block). The coordinator moves these vectors into the open
/// window as they are, so a block's rows are allocated once, where its input is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows {
    pub receipts: Vec<ReceiptRecord>,
    pub logs: Vec<LogRecord>,
    /// How many of `logs` are the first receipt's: a flush interval seals the open window
    /// right after a block's first receipt, so that receipt and its logs may go to another
    /// row group than the rest.
    pub first_receipt_logs: usize,
    /// The logs' positions in the logs file's row order, when the writer sorted them on its
    /// own task ([`Rows::with_log_order`]): the flush then merges a chunk's sorted pieces
    /// instead of sorting the chunk. Replay leaves it to the flush.
    pub log_order: Option<Vec<u32>>,
}

impl Rows {
    /// The rows of `receipts` at block `height`, moving their buffers (no copy of any byte
    /// string).
    pub fn of(height: u64, receipts: Vec<ReceiptInput>) -> Rows {
        let nlogs = receipts.iter().map(|r| r.logs.len()).sum();
        let mut rows = Rows {
            receipts: Vec::with_capacity(receipts.len()),
            logs: Vec::with_capacity(nlogs),
            ..Rows::default()
        };
        for r in receipts {
            rows.push_receipt(height, r.tx_hash, r.receipt_bytes, r.logs.len());
            for log in r.logs {
                rows.push_log(
                    height,
                    r.tx_hash,
                    r.tx_index,
                    log.address,
                    log.topics,
                    log.data,
                );
            }
        }
        rows
    }

    /// Appends a receipt of block `height` that has `logs` logs (pushed after it).
    pub(crate) fn push_receipt(
        &mut self,
        height: u64,
        tx_hash: TxHash,
        receipt_bytes: Vec<u8>,
        logs: usize,
    ) {
        if self.receipts.is_empty() {
            self.first_receipt_logs = logs;
        }
        self.receipts.push(ReceiptRecord {
            tx_hash,
            block_number: height,
            receipt_bytes,
        });
    }

    /// Appends a log of the last receipt pushed; its index is its position in the call.
    pub(crate) fn push_log(
        &mut self,
        height: u64,
        tx_hash: TxHash,
        tx_index: u32,
        address: Address,
        topics: Vec<Topic>,
        data: Vec<u8>,
    ) {
        let log_index = u32::try_from(self.logs.len()).unwrap_or(u32::MAX);
        self.logs.push(LogRecord {
            block_number: height,
            tx_hash,
            tx_index,
            log_index,
            address,
            topics,
            data,
        });
    }

    /// These rows with their logs' row order computed (see [`Rows::log_order`]).
    pub fn with_log_order(mut self) -> Rows {
        let logs: Vec<&LogRecord> = self.logs.iter().collect();
        self.log_order = Some(crate::parquet::writer::log_row_permutation(&logs));
        self
    }
}

/// A block recovered from the WAL at open, with its transaction hashes in write order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedBlock {
    pub block_number: u64,
    pub tx_hashes: Vec<TxHash>,
}

/// When the WAL is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Every write's WAL record is fsynced before the write is acknowledged: an acked block
    /// survives power loss.
    Always,
    /// No fsync on the write path (upstream behaviour): an acked block survives a process crash,
    /// not a power loss. Rotation still makes closed pairs durable before dropping WAL records.
    Never,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            other => Err(format!(
                "unknown sync policy {other:?} (expected always or never)"
            )),
        }
    }
}

pub const DEFAULT_MAX_BLOCKS_PER_FILE: u64 = 500;
pub const DEFAULT_BLOCK_FLUSH_INTERVAL: u64 = 1;
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Store configuration. `Config::new` applies the upstream defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Blocks per file window; 0 passed to [`Config::new`]-style constructors maps to 500.
    pub max_blocks_per_file: u64,
    /// Flush one row group every this many blocks; 0 disables automatic flushing.
    pub block_flush_interval: u64,
    /// Keep this many recent blocks; 0 disables pruning.
    pub keep_recent: u64,
    pub prune_interval: Duration,
    pub sync_policy: SyncPolicy,
    /// Roll to a new WAL segment once the current one passes this size.
    pub wal_segment_bytes: u64,
    /// Closed files whose index (row-group block ranges and bloom filters) stays in memory.
    #[serde(default = "default_index_cache_files")]
    pub index_cache_files: usize,
    /// Rows per data page of the files this store writes (at least 1): a page is what a filtered
    /// read skips without decompressing. Smaller pages skip more and cost more per row to scan.
    #[serde(default = "default_page_rows")]
    pub page_rows: usize,
}

fn default_index_cache_files() -> usize {
    DEFAULT_INDEX_CACHE_FILES
}

fn default_page_rows() -> usize {
    crate::parquet::writer::DATA_PAGE_ROW_COUNT_LIMIT
}

/// Default bound of the file index cache.
pub const DEFAULT_INDEX_CACHE_FILES: usize = 64;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_blocks_per_file: DEFAULT_MAX_BLOCKS_PER_FILE,
            block_flush_interval: DEFAULT_BLOCK_FLUSH_INTERVAL,
            keep_recent: 0,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            sync_policy: SyncPolicy::Always,
            wal_segment_bytes: 64 * 1024 * 1024,
            index_cache_files: DEFAULT_INDEX_CACHE_FILES,
            page_rows: default_page_rows(),
        }
    }
}

impl Config {
    /// Upstream constructor semantics: a zero window size or flush interval means "default".
    pub fn new(max_blocks_per_file: u64, block_flush_interval: u64) -> Self {
        Config {
            max_blocks_per_file: if max_blocks_per_file == 0 {
                DEFAULT_MAX_BLOCKS_PER_FILE
            } else {
                max_blocks_per_file
            },
            block_flush_interval: if block_flush_interval == 0 {
                DEFAULT_BLOCK_FLUSH_INTERVAL
            } else {
                block_flush_interval
            },
            ..Config::default()
        }
    }
}
