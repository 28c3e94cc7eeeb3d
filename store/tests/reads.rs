//! The read side on real temporary directories: eth_getLogs semantics against a brute-force
//! reference, receipts by hash, reads of the open window, and reads racing writes, rotation and
//! prune.

use proptest::prelude::*;
use receipt_store::env::real::RealEnv;
use receipt_store::parquet::reader::{FileKind, ParquetFile};
use receipt_store::{
    Config, LogFilter, LogInput, LogRecord, ReceiptInput, ReceiptRecord, Store, SyncPolicy, Topic,
    TxHash,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type S = Store<RealEnv>;

/// Bound on any single await that a broken store could turn into a hang; never a synchronizer.
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

/// A tx hash unique to (block, ordinal within the block).
fn hash_of(block: u64, ordinal: u32) -> TxHash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&block.to_be_bytes());
    h[8..12].copy_from_slice(&ordinal.to_be_bytes());
    h[31] = 0x5A;
    h
}

fn receipt_bytes_of(block: u64, ordinal: u32) -> Vec<u8> {
    format!("receipt {block}/{ordinal}").into_bytes()
}

/// A receipt with `logs` logs: address and topics vary with the log's position.
fn receipt(block: u64, ordinal: u32, logs: usize) -> ReceiptInput {
    ReceiptInput {
        tx_hash: hash_of(block, ordinal),
        tx_index: ordinal,
        receipt_bytes: receipt_bytes_of(block, ordinal),
        logs: (0..logs)
            .map(|k| LogInput {
                address: [k as u8 + 1; 20],
                topics: vec![[7; 32], [k as u8; 32]],
                data: vec![k as u8, ordinal as u8, block as u8],
            })
            .collect(),
    }
}

fn record(block: u64, ordinal: u32) -> ReceiptRecord {
    ReceiptRecord {
        tx_hash: hash_of(block, ordinal),
        block_number: block,
        receipt_bytes: receipt_bytes_of(block, ordinal),
    }
}

async fn open(dir: &Path, c: Config) -> S {
    Store::open(RealEnv::default(), dir, c).await.expect("open")
}

fn blocks(from: Option<u64>, to: Option<u64>) -> LogFilter {
    LogFilter {
        from_block: from,
        to_block: to,
        ..Default::default()
    }
}

fn pair_exists(dir: &Path, start: u64) -> bool {
    dir.join(format!("receipts_{start}.parquet")).exists()
        || dir.join(format!("logs_{start}.parquet")).exists()
}

// ---------------------------------------------------------------------------------------------
// eth_getLogs against a brute-force reference.

const ADDRESSES: [[u8; 20]; 3] = [[0xA1; 20], [0xA2; 20], [0xA3; 20]];
/// In a filter but in no log: an address set holding only it matches nothing.
const ADDRESS_UNUSED: [u8; 20] = [0xEE; 20];
const TOPICS: [Topic; 3] = [[0x11; 32], [0x22; 32], [0x33; 32]];
const TOPIC_UNUSED: Topic = [0xEE; 32];

#[derive(Clone, Debug)]
struct LogSpec {
    address: usize,
    topics: Vec<usize>,
    data_len: usize,
}

#[derive(Clone, Debug)]
struct BlockSpec {
    /// Height step from the previous block (2 and 3 can skip a rotation boundary).
    gap: u64,
    /// Write calls for this block; each call is its receipts, each receipt its logs.
    calls: Vec<Vec<Vec<LogSpec>>>,
}

/// Whether the store restarts once in the middle of the writes, and how.
#[derive(Clone, Copy, Debug)]
enum Restart {
    None,
    /// `Store::crash()` then reopen: the open window comes back from the WAL.
    Crash,
    /// A clean close then reopen: the next pair may start unaligned (last block + 1).
    Close,
}

fn log_spec() -> impl Strategy<Value = LogSpec> {
    (
        0..ADDRESSES.len(),
        proptest::collection::vec(0..TOPICS.len(), 0..=4),
        0usize..4,
    )
        .prop_map(|(address, topics, data_len)| LogSpec {
            address,
            topics,
            data_len,
        })
}

fn block_spec() -> impl Strategy<Value = BlockSpec> {
    let receipt = proptest::collection::vec(log_spec(), 0..=3);
    let call = proptest::collection::vec(receipt, 0..=3);
    (
        prop_oneof![6 => Just(1u64), 1 => Just(2u64), 1 => Just(3u64)],
        proptest::collection::vec(call, 1..=2),
    )
        .prop_map(|(gap, calls)| BlockSpec { gap, calls })
}

fn filter_spec(height_max: u64) -> impl Strategy<Value = LogFilter> {
    let bound = proptest::option::of(0..=height_max + 2);
    // Index ADDRESSES.len() / TOPICS.len() stands for a value no log carries.
    let addresses = proptest::collection::vec(0..=ADDRESSES.len(), 0..=2);
    let topics =
        proptest::collection::vec(proptest::collection::vec(0..=TOPICS.len(), 0..=2), 0..=4);
    let limit = proptest::option::of(1usize..=12);
    (bound.clone(), bound, addresses, topics, limit).prop_map(|(a, b, addrs, topics, limit)| {
        let (from_block, to_block) = match (a, b) {
            (Some(x), Some(y)) if x > y => (Some(y), Some(x)),
            other => other,
        };
        LogFilter {
            from_block,
            to_block,
            addresses: addrs
                .into_iter()
                .map(|i| ADDRESSES.get(i).copied().unwrap_or(ADDRESS_UNUSED))
                .collect(),
            topics: topics
                .into_iter()
                .map(|set| {
                    set.into_iter()
                        .map(|i| TOPICS.get(i).copied().unwrap_or(TOPIC_UNUSED))
                        .collect()
                })
                .collect(),
            limit,
        }
    })
}

/// The writes a chain of block specs turns into, and the rows a correct store must return.
struct Chain {
    writes: Vec<(u64, Vec<ReceiptInput>)>,
    receipts: Vec<ReceiptRecord>,
    /// Sorted by (block, tx index, log index).
    logs: Vec<LogRecord>,
}

/// Builds the chain and its reference rows. Log indices are block-wide: they count every log of
/// the block written before, across write calls; tx indices count receipts across calls too.
fn chain(base: u64, specs: &[BlockSpec]) -> Chain {
    let mut out = Chain {
        writes: Vec::new(),
        receipts: Vec::new(),
        logs: Vec::new(),
    };
    let mut height = base;
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            height += spec.gap;
        }
        let mut ordinal = 0u32;
        let mut log_index = 0u32;
        for call in &spec.calls {
            let mut inputs = Vec::new();
            for log_specs in call {
                let tx_hash = hash_of(height, ordinal);
                let logs: Vec<LogInput> = log_specs
                    .iter()
                    .map(|l| LogInput {
                        address: ADDRESSES[l.address],
                        topics: l.topics.iter().map(|&t| TOPICS[t]).collect(),
                        data: vec![ordinal as u8; l.data_len],
                    })
                    .collect();
                for l in &logs {
                    out.logs.push(LogRecord {
                        block_number: height,
                        tx_hash,
                        tx_index: ordinal,
                        log_index,
                        address: l.address,
                        topics: l.topics.clone(),
                        data: l.data.clone(),
                    });
                    log_index += 1;
                }
                out.receipts.push(ReceiptRecord {
                    tx_hash,
                    block_number: height,
                    receipt_bytes: receipt_bytes_of(height, ordinal),
                });
                inputs.push(ReceiptInput {
                    tx_hash,
                    tx_index: ordinal,
                    receipt_bytes: receipt_bytes_of(height, ordinal),
                    logs,
                });
                ordinal += 1;
            }
            out.writes.push((height, inputs));
        }
    }
    out.logs
        .sort_by_key(|l| (l.block_number, l.tx_index, l.log_index));
    out
}

/// eth_getLogs, written out from the spec (5.4) without the store's code: inclusive optional
/// bounds, an address OR-set, positional topic OR-sets where empty is a wildcard and a position
/// the log lacks never matches, then the limit over the ordered rows.
fn reference_logs(all: &[LogRecord], f: &LogFilter) -> Vec<LogRecord> {
    let matches = |l: &LogRecord| {
        let in_range = f.from_block.is_none_or(|b| l.block_number >= b)
            && f.to_block.is_none_or(|b| l.block_number <= b);
        let address_ok = f.addresses.is_empty() || f.addresses.contains(&l.address);
        let topics_ok = f.topics.iter().enumerate().all(|(pos, set)| {
            set.is_empty()
                || match l.topics.get(pos) {
                    Some(t) => set.iter().any(|s| s == t),
                    None => false,
                }
        });
        in_range && address_ok && topics_ok
    };
    let mut out: Vec<LogRecord> = all.iter().filter(|l| matches(l)).cloned().collect();
    if let Some(n) = f.limit {
        out.truncate(n);
    }
    out
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        // A failing case prints its inputs; no regression file is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn restart_store(s: S, dir: &Path, config: &Config, restart: Restart) -> S {
    match restart {
        Restart::None => s,
        Restart::Crash => {
            s.crash().await;
            open(dir, config.clone()).await
        }
        Restart::Close => {
            s.close().await.expect("close");
            open(dir, config.clone()).await
        }
    }
}

/// Writes the chain with max_blocks_per_file 4 (several closed pairs plus an open window),
/// restarting the store as asked before the first write at or above `restart_at` (or after the
/// last write), and returns the store to read from.
async fn store_with(dir: &Path, c: &Chain, bfi: u64, restart: Restart, restart_at: u64) -> S {
    let config = Config {
        block_flush_interval: bfi,
        sync_policy: SyncPolicy::Never,
        ..Config::new(4, 1)
    };
    let mut s = open(dir, config.clone()).await;
    let mut restarted = false;
    for (height, inputs) in &c.writes {
        if !restarted && *height >= restart_at {
            s = restart_store(s, dir, &config, restart).await;
            restarted = true;
        }
        s.write_receipts(*height, inputs.clone())
            .await
            .expect("write");
    }
    if !restarted {
        s = restart_store(s, dir, &config, restart).await;
    }
    s
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Every filter dimension at once, over random chains: the store returns exactly the
    /// reference rows, in (block, tx index, log index) order, whether the rows sit in closed
    /// pairs (aligned, or unaligned after a reopen), flushed or buffered in the open window, or
    /// were replayed from the WAL.
    #[test]
    fn get_logs_equals_brute_force_reference_for_every_filter_dimension(
        base in 0u64..3,
        specs in proptest::collection::vec(block_spec(), 8..=36),
        bfi in 0u64..=3,
        restart in prop_oneof![Just(Restart::None), Just(Restart::Crash), Just(Restart::Close)],
        restart_at in 0u64..=3 * 36 + 4,
        filters in proptest::collection::vec(filter_spec(3 * 36 + 3), 12),
    ) {
        let c = chain(base, &specs);
        let tmp = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let s = store_with(tmp.path(), &c, bfi, restart, restart_at).await;
            let everything = s.get_logs(&LogFilter::default()).await.unwrap();
            assert_eq!(everything, c.logs, "the unfiltered query returns every log");
            for f in &filters {
                let got = s.get_logs(f).await.unwrap();
                assert!(
                    got.windows(2).all(|w| (w[0].block_number, w[0].tx_index, w[0].log_index)
                        < (w[1].block_number, w[1].tx_index, w[1].log_index)),
                    "rows are strictly ordered by block, tx index, log index"
                );
                assert_eq!(got, reference_logs(&c.logs, f), "filter {f:?}");
            }
            for r in &c.receipts {
                assert_eq!(s.get_receipt(&r.tx_hash).await.unwrap().as_ref(), Some(r));
                assert_eq!(
                    s.get_receipt_in_block(&r.tx_hash, r.block_number).await.unwrap().as_ref(),
                    Some(r)
                );
            }
            assert_eq!(
                s.receipts_in_range(0, u64::MAX).await.unwrap(),
                c.receipts,
                "every receipt, in write order"
            );
            s.close().await.unwrap();
        });
    }
}

/// Log indices count every log of the block written before, across separate write calls and
/// across a flush between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_index_is_block_wide_across_write_calls_for_the_same_block() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Config::new(4, 1)).await;
    s.write_receipts(5, vec![receipt(5, 0, 2)]).await.unwrap();
    s.flush().await.unwrap();
    s.write_receipts(5, vec![receipt(5, 1, 1), receipt(5, 2, 2)])
        .await
        .unwrap();
    s.write_receipts(6, vec![receipt(6, 0, 1)]).await.unwrap();
    let got = s.get_logs(&blocks(Some(5), Some(6))).await.unwrap();
    let keys: Vec<(u64, u32, u32)> = got
        .iter()
        .map(|l| (l.block_number, l.tx_index, l.log_index))
        .collect();
    assert_eq!(
        keys,
        vec![
            (5, 0, 0),
            (5, 0, 1),
            (5, 1, 2),
            (5, 2, 3),
            (5, 2, 4),
            (6, 0, 0)
        ]
    );
    // The same indices come back from the WAL after a crash.
    s.crash().await;
    let s = open(tmp.path(), Config::new(4, 1)).await;
    assert_eq!(s.get_logs(&blocks(Some(5), Some(6))).await.unwrap(), got);
    s.close().await.unwrap();
}

/// Unsigned block numbers above i64::MAX: parquet stores them as INT64, so row-group statistics
/// must be compared unsigned or ranges around the sign boundary go missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_above_i64_max_filter_and_look_up_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    // One window and one row group (no automatic flush) holding blocks on both sides of 2^63.
    let config = Config {
        block_flush_interval: 0,
        ..Config::new(1000, 1)
    };
    let s = open(tmp.path(), config.clone()).await;
    let first = (1u64 << 63) - 3;
    let heights: Vec<u64> = (first..first + 6).collect();
    for &h in &heights {
        s.write_receipts(h, vec![receipt(h, 0, 1)]).await.unwrap();
    }
    s.close().await.unwrap();
    let s = open(tmp.path(), config).await;
    assert_eq!(
        s.status().await.unwrap().closed_pairs,
        vec![(1u64 << 63) - 808],
        "the rows are in one closed file"
    );
    for &h in &heights {
        assert_eq!(
            s.get_receipt(&hash_of(h, 0)).await.unwrap(),
            Some(record(h, 0)),
            "block {h}"
        );
        let one = s.get_logs(&blocks(Some(h), Some(h))).await.unwrap();
        assert_eq!(
            one.iter().map(|l| l.block_number).collect::<Vec<_>>(),
            vec![h]
        );
    }
    let across = s
        .get_logs(&blocks(Some((1 << 63) - 1), Some(1 << 63)))
        .await
        .unwrap();
    assert_eq!(
        across.iter().map(|l| l.block_number).collect::<Vec<_>>(),
        vec![(1 << 63) - 1, 1 << 63]
    );
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad filters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_after_to_is_an_error_and_from_equal_to_is_one_block() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Config::new(4, 1)).await;
    for b in 1..=3 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    let err = s
        .get_logs(&blocks(Some(3), Some(2)))
        .await
        .unwrap_err()
        .to_string();
    for part in ["from block 3", "to block 2"] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    let one = s.get_logs(&blocks(Some(2), Some(2))).await.unwrap();
    assert_eq!(
        one.iter().map(|l| l.block_number).collect::<Vec<_>>(),
        vec![2]
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_four_topic_positions_is_a_clear_error_and_four_are_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Config::new(4, 1)).await;
    s.write_receipts(1, vec![receipt(1, 0, 1)]).await.unwrap();
    let mut f = LogFilter {
        topics: vec![vec![]; 4],
        ..Default::default()
    };
    assert_eq!(
        s.get_logs(&f).await.unwrap().len(),
        1,
        "four wildcard positions match any log"
    );
    f.topics.push(vec![[7; 32]]);
    let err = s.get_logs(&f).await.unwrap_err().to_string();
    assert!(err.contains("topic positions"), "{err}");
    assert!(err.contains('5') && err.contains('4'), "{err}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_is_a_clear_error_not_an_empty_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Config::new(4, 1)).await;
    s.write_receipts(1, vec![receipt(1, 0, 2)]).await.unwrap();
    let mut f = LogFilter {
        limit: Some(0),
        ..Default::default()
    };
    let err = s.get_logs(&f).await.unwrap_err().to_string();
    assert!(err.contains("limit 0 is not allowed"), "{err}");
    f.limit = Some(1);
    assert_eq!(s.get_logs(&f).await.unwrap().len(), 1);
    f.limit = None;
    assert_eq!(s.get_logs(&f).await.unwrap().len(), 2);
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Receipts by hash.

/// The hash written several times: in blocks 2 and 3 (closed pair 0), block 6 (closed pair 4)
/// and block 9 (the open window).
fn dup_hash() -> TxHash {
    hash_of(99, 99)
}

fn dup_input(block: u64) -> ReceiptInput {
    ReceiptInput {
        tx_hash: dup_hash(),
        tx_index: 1,
        receipt_bytes: format!("dup in {block}").into_bytes(),
        logs: vec![],
    }
}

fn dup_record(block: u64) -> ReceiptRecord {
    ReceiptRecord {
        tx_hash: dup_hash(),
        block_number: block,
        receipt_bytes: format!("dup in {block}").into_bytes(),
    }
}

async fn assert_duplicate_hash_reads(s: &S, round: &str) {
    let dup = dup_hash();
    assert_eq!(
        s.get_receipt(&dup).await.unwrap(),
        Some(dup_record(2)),
        "{round}: the earliest block wins"
    );
    for b in [2, 3, 6, 9] {
        assert_eq!(
            s.get_receipt_in_block(&dup, b).await.unwrap(),
            Some(dup_record(b)),
            "{round}: block {b}"
        );
    }
    for b in [1, 4, 5, 7, 8, 10, 11] {
        assert_eq!(
            s.get_receipt_in_block(&dup, b).await.unwrap(),
            None,
            "{round}: block {b} does not hold it"
        );
    }
    assert_eq!(
        s.get_receipt_in_block(&hash_of(9, 0), 9).await.unwrap(),
        Some(record(9, 0)),
        "{round}"
    );
    assert_eq!(
        s.get_receipt_in_block(&hash_of(9, 0), 8).await.unwrap(),
        None,
        "{round}: the right hash in the wrong block"
    );
    assert_eq!(
        s.get_receipt(&[0xFF; 32]).await.unwrap(),
        None,
        "{round}: not found is Ok(None)"
    );
    assert_eq!(
        s.get_receipt(&hash_of(11, 0)).await.unwrap(),
        None,
        "{round}: a block never written"
    );
}

/// A hash written in several blocks reads as the earliest one, whether the later copies are in
/// a closed file or in the open window (live, and replayed from the WAL after a crash); the
/// in-block lookup returns the copy in the asked block and nothing for any other block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_receipt_returns_the_earliest_block_holding_a_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Config::new(4, 1)).await;
    for b in 1..=10u64 {
        let mut rs = vec![receipt(b, 0, 1)];
        if [2, 3, 6, 9].contains(&b) {
            rs.push(dup_input(b));
        }
        s.write_receipts(b, rs).await.unwrap();
    }
    let st = s.status().await.unwrap();
    assert_eq!(
        st.closed_pairs,
        vec![0, 4],
        "blocks 2 and 3 in pair 0, 6 in pair 4"
    );
    assert_eq!(st.open_pair, Some(8), "block 9 is in the open window");
    assert_duplicate_hash_reads(&s, "live").await;
    s.crash().await;
    let s = open(tmp.path(), Config::new(4, 1)).await;
    assert_duplicate_hash_reads(&s, "after crash").await;
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The open window.

/// With automatic flushing off, written rows stay buffered in memory, yet reads see them; a
/// flush writes them as a row group and reads are unchanged; later writes are seen on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_window_rows_are_readable_before_and_after_a_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        block_flush_interval: 0,
        ..Config::new(100, 1)
    };
    let s = open(tmp.path(), config.clone()).await;
    for b in 1..=3 {
        s.write_receipts(b, vec![receipt(b, 0, 2), receipt(b, 1, 1)])
            .await
            .unwrap();
    }
    let open_file = tmp.path().join(".receipts_0.parquet.open");
    let size_buffered = std::fs::metadata(&open_file).map(|m| m.len()).unwrap_or(0);
    let expect_logs = |to: u64| -> Vec<(u64, u32, u32)> {
        (1..=to)
            .flat_map(|b| [(b, 0, 0), (b, 0, 1), (b, 1, 2)])
            .collect()
    };
    let keys = |v: &[LogRecord]| -> Vec<(u64, u32, u32)> {
        v.iter()
            .map(|l| (l.block_number, l.tx_index, l.log_index))
            .collect()
    };
    let before = s.get_logs(&LogFilter::default()).await.unwrap();
    assert_eq!(keys(&before), expect_logs(3), "buffered rows are visible");
    assert_eq!(
        s.get_receipt(&hash_of(2, 1)).await.unwrap(),
        Some(record(2, 1))
    );
    s.flush().await.unwrap();
    let size_flushed = std::fs::metadata(&open_file).unwrap().len();
    assert!(
        size_flushed > size_buffered,
        "the flush wrote a row group ({size_buffered} -> {size_flushed} bytes)"
    );
    assert_eq!(
        s.get_logs(&LogFilter::default()).await.unwrap(),
        before,
        "a flush changes nothing a reader sees"
    );
    assert_eq!(
        s.get_receipt_in_block(&hash_of(2, 1), 2).await.unwrap(),
        Some(record(2, 1))
    );
    s.write_receipts(4, vec![receipt(4, 0, 2), receipt(4, 1, 1)])
        .await
        .unwrap();
    assert_eq!(
        keys(&s.get_logs(&LogFilter::default()).await.unwrap()),
        expect_logs(4),
        "flushed and buffered rows read together"
    );
    assert_eq!(
        s.receipts_in_range(0, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|r| r.block_number)
            .collect::<Vec<_>>(),
        vec![1, 1, 2, 2, 3, 3, 4, 4]
    );
    s.close().await.unwrap();
}

/// Block 1's logs (row group 0 of their file) fail to read, the error naming `file` and the
/// row group's checksum.
async fn assert_block_1_refused_naming(s: &S, file: &str) {
    let err = s
        .get_logs(&blocks(Some(1), Some(1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(file) && err.contains("row group 0 checksum mismatch"),
        "{err}"
    );
}

/// Flushed rows of the open window leave memory and are read back from the unfinished files,
/// verified like a closed file's row groups: a rotted byte there fails the reads of its row
/// group and spares the others, and after a crash the WAL rebuilds the window whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_open_window_rows_are_read_from_the_unfinished_files_not_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::new(100, 1);
    let s = open(tmp.path(), config.clone()).await;
    for b in 1..=4u64 {
        s.write_receipts(b, (0..20).map(|i| receipt(b, i, 2)).collect())
            .await
            .unwrap();
    }
    let st = s.status().await.unwrap();
    assert_eq!(
        (
            st.open_row_groups_written,
            st.open_chunks_unwritten,
            st.open_receipts_in_memory
        ),
        (3, 0, 19),
        "a flush runs when a later block's first receipt arrives and takes it along (spec 3.2): \
         three row groups written, only block 4's other 19 receipts in memory"
    );
    let (_, fetched_before, _) = s.read_stats();
    assert_eq!(
        s.get_receipt(&hash_of(3, 7)).await.unwrap(),
        Some(record(3, 7))
    );
    let (_, fetched_after, _) = s.read_stats();
    assert!(
        fetched_after > fetched_before,
        "the receipt's row group was fetched from the open file"
    );
    // Byte 20 lies in the logs file's first row group (block 1), just past the leading magic.
    let path = tmp.path().join(".logs_0.parquet.open");
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(20)).unwrap();
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(20)).unwrap();
        f.write_all(&[byte[0] ^ 0xFF]).unwrap();
    }
    assert_block_1_refused_naming(&s, ".logs_0.parquet.open").await;
    assert_eq!(
        s.get_logs(&blocks(Some(3), Some(4))).await.unwrap().len(),
        80,
        "verified row groups are still served"
    );
    s.crash().await;
    drop(s);
    let s = open(tmp.path(), config).await;
    assert_eq!(
        s.get_logs(&blocks(Some(1), Some(1))).await.unwrap().len(),
        40,
        "the WAL rebuilt the window the rot hit"
    );
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Prune and reads.

/// A pruned window reads as not found, by hash, in block and by logs; the newest closed pair is
/// kept even when its whole window is older than the retention, by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_windows_read_as_not_found_and_the_newest_closed_pair_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        keep_recent: 1,
        ..Config::new(4, 1)
    };
    let s = open(tmp.path(), config).await;
    for b in 1..=13u64 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    assert_eq!(s.status().await.unwrap().closed_pairs, vec![0, 4, 8]);
    assert_eq!(s.prune_now().await.unwrap(), 2, "pairs 0 and 4 go");
    let st = s.status().await.unwrap();
    assert_eq!(
        st.closed_pairs,
        vec![8],
        "pair 8 ends below 13-1 but is the newest closed pair"
    );
    assert_eq!(st.pending_deletes, 0);
    assert!(!pair_exists(tmp.path(), 0) && !pair_exists(tmp.path(), 4));
    for b in 1..=7u64 {
        assert_eq!(
            s.get_receipt(&hash_of(b, 0)).await.unwrap(),
            None,
            "block {b}"
        );
        assert_eq!(
            s.get_receipt_in_block(&hash_of(b, 0), b).await.unwrap(),
            None,
            "block {b}"
        );
    }
    assert_eq!(
        s.get_logs(&blocks(None, Some(7))).await.unwrap(),
        vec![],
        "no logs of pruned windows"
    );
    for b in 8..=13u64 {
        assert_eq!(
            s.get_receipt(&hash_of(b, 0)).await.unwrap(),
            Some(record(b, 0))
        );
    }
    let kept = s.get_logs(&LogFilter::default()).await.unwrap();
    assert_eq!(
        kept.iter().map(|l| l.block_number).collect::<Vec<_>>(),
        (8..=13).collect::<Vec<_>>()
    );
    assert_eq!(
        s.prune_now().await.unwrap(),
        0,
        "a second pass has nothing to do"
    );
    s.close().await.unwrap();
}

/// A read holds a snapshot while writes and rotations go on: they complete without waiting for
/// it. A pair pruned while the snapshot holds it stays on disk (readable) until the snapshot is
/// dropped and a later prune pass runs; then it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_never_wait_for_a_read_and_prune_defers_deleting_what_a_read_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        keep_recent: 2,
        ..Config::new(4, 1)
    };
    let s = open(tmp.path(), config).await;
    for b in 1..=5u64 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.closed.iter().map(|p| p.start).collect::<Vec<_>>(),
        vec![0]
    );
    // Writes across three rotations finish while the snapshot is alive.
    let writes = async {
        for b in 6..=17u64 {
            s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
        }
    };
    tokio::time::timeout(LIVENESS_BOUND, writes)
        .await
        .expect("writes complete while a snapshot is held");
    assert_eq!(s.status().await.unwrap().closed_pairs, vec![0, 4, 8, 12]);

    // Pair 0 (and 4) are now old enough; 0 is held by the snapshot.
    let deleted = s.prune_now().await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(
        st.closed_pairs,
        vec![12],
        "pruned pairs are untracked at once"
    );
    assert_eq!(deleted, 2, "pairs 4 and 8 are not held and go now");
    assert_eq!(st.pending_deletes, 1, "pair 0 waits for the snapshot");
    assert!(!pair_exists(tmp.path(), 4) && !pair_exists(tmp.path(), 8));
    let held = &snap.closed[0];
    let bytes = std::fs::read(&held.receipt_path).expect("a held pair's files stay on disk");
    let file = ParquetFile::open(&held.receipt_path, FileKind::Receipts, bytes).unwrap();
    assert_eq!(
        file.receipts(None, 0, u64::MAX).unwrap(),
        (1..=3).map(|b| record(b, 0)).collect::<Vec<_>>(),
        "and stay whole and readable"
    );
    assert_eq!(
        s.get_receipt(&hash_of(2, 0)).await.unwrap(),
        None,
        "new reads no longer see a pruned pair"
    );
    assert_eq!(s.prune_now().await.unwrap(), 0, "still held");
    assert!(pair_exists(tmp.path(), 0));

    drop(snap);
    assert!(
        pair_exists(tmp.path(), 0),
        "dropping the snapshot deletes nothing by itself"
    );
    assert_eq!(s.prune_now().await.unwrap(), 1, "the next pass deletes it");
    assert!(!pair_exists(tmp.path(), 0));
    let st = s.status().await.unwrap();
    assert_eq!(st.pending_deletes, 0);
    assert_eq!(st.last_prune_error, None);
    s.close().await.unwrap();
}

/// A delete that fails (here: the log file's path is a non-empty directory, which `unlink`
/// refuses even for root) is reported, kept pending and retried; once the obstacle is gone the
/// next pass deletes the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_is_reported_and_retried_until_the_pair_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        keep_recent: 2,
        ..Config::new(4, 1)
    };
    let s = open(tmp.path(), config).await;
    for b in 1..=13u64 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    assert_eq!(s.status().await.unwrap().closed_pairs, vec![0, 4, 8]);
    let doomed_log = tmp.path().join("logs_0.parquet");
    std::fs::remove_file(&doomed_log).unwrap();
    std::fs::create_dir(&doomed_log).unwrap();
    std::fs::write(doomed_log.join("obstacle"), b"x").unwrap();

    let err = s.prune_now().await.unwrap_err().to_string();
    assert!(err.contains("logs_0.parquet"), "{err}");
    let st = s.status().await.unwrap();
    assert_eq!(st.closed_pairs, vec![8], "both pairs are untracked");
    assert_eq!(st.pending_deletes, 1, "pair 0 is kept for a retry");
    assert!(
        st.last_prune_error
            .as_deref()
            .is_some_and(|e| e.contains("logs_0.parquet")),
        "{st:?}"
    );
    assert!(!pair_exists(tmp.path(), 4), "pair 4 was deleted");
    assert!(
        !tmp.path().join("receipts_0.parquet").exists(),
        "pair 0's receipt file went"
    );
    assert_eq!(s.get_receipt(&hash_of(2, 0)).await.unwrap(), None);
    assert!(s.prune_now().await.is_err(), "retried and still failing");
    assert_eq!(s.status().await.unwrap().pending_deletes, 1);

    std::fs::remove_dir_all(&doomed_log).unwrap();
    assert_eq!(
        s.prune_now().await.unwrap(),
        1,
        "the retry deletes the pair"
    );
    let st = s.status().await.unwrap();
    assert_eq!(st.pending_deletes, 0);
    assert_eq!(st.last_prune_error, None);
    assert!(!pair_exists(tmp.path(), 0));
    s.close().await.unwrap();
}

/// Writer progress, shared with readers: `issued` is set before a write is sent, `acked` after
/// it returns, so a reader knows which blocks must exist and which may already be pruned.
#[derive(Default)]
struct Progress {
    issued: AtomicU64,
    acked: AtomicU64,
}

const RACE_BLOCKS: u64 = 240;
const RACE_KEEP_RECENT: u64 = 6;
const RACE_READERS: u64 = 2;
/// How far behind the newest acked block readers look: past the retention, into pruned windows.
const RACE_LOOKBACK_BLOCKS: u64 = 3 * RACE_KEEP_RECENT + 8;
const RACE_READS_PER_READER_MAX: u64 = 1_000_000;

fn race_block(b: u64) -> Vec<ReceiptInput> {
    vec![receipt(b, 0, 1), receipt(b, 1, 2)]
}

/// Expected logs of block `b` as the store returns them.
fn race_logs(b: u64) -> Vec<(u64, u32, u32, TxHash)> {
    vec![
        (b, 0, 0, hash_of(b, 0)),
        (b, 1, 1, hash_of(b, 1)),
        (b, 1, 2, hash_of(b, 1)),
    ]
}

/// One reader: looks up recent and old blocks until the writer is done. Every read succeeds;
/// a result is the written data exactly; "not found" happens only for a block a prune may have
/// taken (below `issued - keep_recent` once the read returned). Returns (found, not found).
async fn race_reader(
    s: S,
    progress: Arc<Progress>,
    mut done: tokio::sync::watch::Receiver<bool>,
    seed: u64,
) -> (u64, u64) {
    let mut rng = seed | 1;
    let (mut found, mut missing) = (0, 0);
    for _ in 0..RACE_READS_PER_READER_MAX {
        if *done.borrow_and_update() {
            break;
        }
        let acked = progress.acked.load(Ordering::SeqCst);
        if acked == 0 {
            // Nothing written yet: wait for the writer's first ack (or its end).
            let _ = done.changed().await;
            continue;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let low = acked.saturating_sub(RACE_LOOKBACK_BLOCKS).max(1);
        let b = low + rng % (acked - low + 1);
        let by_hash = s.get_receipt(&hash_of(b, 1)).await.expect("read error");
        let in_block = s
            .get_receipt_in_block(&hash_of(b, 0), b)
            .await
            .expect("read error");
        let logs = s
            .get_logs(&blocks(Some(b), Some(b)))
            .await
            .expect("read error");
        let issued = progress.issued.load(Ordering::SeqCst);
        let must_exist = b + RACE_KEEP_RECENT >= issued;
        let logs: Vec<_> = logs
            .iter()
            .map(|l| (l.block_number, l.tx_index, l.log_index, l.tx_hash))
            .collect();
        for (what, ok, present) in [
            (
                "by hash",
                by_hash.as_ref().is_none_or(|r| *r == record(b, 1)),
                by_hash.is_some(),
            ),
            (
                "in block",
                in_block.as_ref().is_none_or(|r| *r == record(b, 0)),
                in_block.is_some(),
            ),
            (
                "logs",
                logs.is_empty() || logs == race_logs(b),
                !logs.is_empty(),
            ),
        ] {
            assert!(ok, "block {b} {what}: wrong data returned");
            assert!(
                present || !must_exist,
                "block {b} {what}: not found although it is within keep_recent of {issued}"
            );
            if present {
                found += 1;
            } else {
                missing += 1;
            }
        }
    }
    (found, missing)
}

/// Readers looping in their own tasks race a writer (rotating every 4 blocks) and a pruner
/// (prune_now in a loop): no read ever fails, every returned row is the written one, only blocks
/// a prune may have taken read as not found, and every pruned pair is deleted exactly once even
/// though reads held some of them when they were pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_writes_rotation_and_prune_never_fail_and_are_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        keep_recent: RACE_KEEP_RECENT,
        // No ticker: every deletion is counted by the prune_now calls below.
        prune_interval: Duration::ZERO,
        sync_policy: SyncPolicy::Never,
        ..Config::new(4, 1)
    };
    let s = open(tmp.path(), config).await;
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);

    let writer = {
        let (s, progress) = (s.clone(), progress.clone());
        tokio::spawn(async move {
            for b in 1..=RACE_BLOCKS {
                progress.issued.store(b, Ordering::SeqCst);
                s.write_receipts(b, race_block(b)).await.expect("write");
                progress.acked.store(b, Ordering::SeqCst);
                if b == 1 {
                    // Wakes readers waiting for the first ack.
                    done_tx.send_modify(|_| {});
                }
            }
            done_tx.send(true).expect("a receiver is alive");
        })
    };
    let pruner = {
        let (s, mut done) = (s.clone(), done_rx.clone());
        tokio::spawn(async move {
            let (mut deleted, mut passes) = (0, 0u64);
            while !*done.borrow_and_update() && passes < RACE_READS_PER_READER_MAX {
                deleted += s.prune_now().await.expect("prune");
                passes += 1;
                tokio::task::yield_now().await;
            }
            deleted
        })
    };
    let readers: Vec<_> = (0..RACE_READERS)
        .map(|i| {
            tokio::spawn(race_reader(
                s.clone(),
                progress.clone(),
                done_rx.clone(),
                0x9E37_79B9_7F4A_7C15 ^ i,
            ))
        })
        .collect();

    writer.await.expect("writer");
    let deleted_while_racing = pruner.await.expect("pruner");
    let (mut found, mut missing) = (0, 0);
    for r in readers {
        let (f, m) = r.await.expect("reader");
        found += f;
        missing += m;
    }
    println!(
        "race: {found} reads found, {missing} not found, {deleted_while_racing} pairs pruned \
         while racing"
    );
    assert!(
        deleted_while_racing > 0,
        "prune ran while the writer and readers did"
    );
    assert!(found > 0, "readers read while the writer wrote");

    // Quiet now: one pass deletes whatever reads were holding, and what stays is all readable.
    let deleted_after = s.prune_now().await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(st.pending_deletes, 0, "no snapshot is left to hold a pair");
    assert_eq!(st.last_prune_error, None);
    let pairs_closed = (RACE_BLOCKS / 4) as usize;
    assert_eq!(
        st.closed_pairs,
        vec![RACE_BLOCKS - 8, RACE_BLOCKS - 4],
        "pairs wholly below {RACE_BLOCKS}-{RACE_KEEP_RECENT} are gone"
    );
    assert_eq!(
        deleted_while_racing + deleted_after,
        pairs_closed - st.closed_pairs.len(),
        "every pruned pair was deleted exactly once"
    );
    let on_disk = |ext: &str| {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == ext)
            })
            .count()
    };
    assert_eq!(on_disk("parquet"), 2 * st.closed_pairs.len(), "kept pairs");
    assert_eq!(
        on_disk("open"),
        2,
        "and the open pair, under its open names"
    );
    let latest = RACE_BLOCKS;
    for b in latest - RACE_KEEP_RECENT..=latest {
        assert_eq!(
            s.get_receipt(&hash_of(b, 1)).await.unwrap(),
            Some(record(b, 1))
        );
    }
    let oldest_kept = st.closed_pairs[0];
    assert_eq!(
        s.get_logs(&blocks(None, Some(oldest_kept.saturating_sub(1))))
            .await
            .unwrap(),
        vec![],
        "everything below the oldest kept pair is pruned"
    );
    s.close().await.unwrap();
}

/// Sixteen one-block row groups in pair 0 (blocks 1..=15) closed by block 16, then reopened.
async fn one_pair_of_row_groups(dir: &Path) -> S {
    let c = Config::new(16, 1);
    let s = open(dir, c.clone()).await;
    for b in 1..=16u64 {
        s.write_receipts(b, (0..20).map(|i| receipt(b, i, 2)).collect())
            .await
            .unwrap();
    }
    s.close().await.unwrap();
    open(dir, c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_block_query_reads_its_row_group_not_the_whole_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = one_pair_of_row_groups(tmp.path()).await;
    let file_len = std::fs::metadata(tmp.path().join("logs_0.parquet"))
        .unwrap()
        .len();
    let logs = s.get_logs(&blocks(Some(7), Some(7))).await.unwrap();
    assert_eq!(logs.len(), 40);
    assert!(logs.iter().all(|l| l.block_number == 7));
    let (_, data_bytes, _) = s.read_stats();
    assert!(
        data_bytes * 8 < file_len,
        "one of 15 row groups read: {data_bytes} of {file_len} bytes"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotted_row_group_fails_its_reads_and_spares_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    drop(one_pair_of_row_groups(tmp.path()).await);
    // Byte 20 lies in the first row group (block 1), just past the leading magic.
    let path = tmp.path().join("logs_0.parquet");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let s = open(tmp.path(), Config::new(16, 1)).await;
    assert_block_1_refused_naming(&s, "logs_0.parquet").await;
    let logs = s.get_logs(&blocks(Some(10), Some(10))).await.unwrap();
    assert_eq!(logs.len(), 40, "verified row groups are still served");
    s.close().await.unwrap();
}
