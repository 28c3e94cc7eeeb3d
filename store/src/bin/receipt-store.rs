//! `receipt-store`: a read-only operator tool for a receipt store data directory.
//!
//! It never opens the store: `Store::open` replays the WAL and removes unfinished and lone files,
//! so it is no tool for looking at evidence. This program reads the files directly (closed
//! parquet pairs, WAL segments) and opens every file read-only; it creates, renames, truncates
//! and deletes nothing, so it is safe on the directory of a running or a crashed node.
//!
//! The data it serves is the data a store opened on the directory would serve: every finalized
//! pair, plus the open window rebuilt from the WAL records at or above the first block after
//! the newest finalized pair (rows, tx indices and block-wide log indices derived exactly as
//! replay derives them). A trailing pair without a footer is the open pair of a crashed store;
//! its rows are in the WAL, so it is reported and skipped.

use clap::{Parser, Subcommand};
use receipt_store::env::real::{read_whole, RealFs};
use receipt_store::files::{
    group_listing, log_file_name, parse_open_pair_name, parse_pair_name, parse_quarantine_name,
    receipt_file_name, QuarantineReason, QUARANTINE_DIR_NAME,
};
use receipt_store::parquet::index::FileIndex;
use receipt_store::parquet::reader::{FileKind, ParquetFile, UNFINISHED};
use receipt_store::query::MAX_TOPIC_POSITIONS;
use receipt_store::wal::{parse_segment_name, scan_segment, WalRecord, WAL_DIR_NAME};
use receipt_store::{Address, Error, LogFilter, LogRecord, ReceiptRecord, Topic, TxHash};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status of `receipt` when the hash is not in the directory.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status of a filter that is well-formed text but not a valid query (clap's own code).
const EXIT_USAGE: u8 = 2;
/// Exit status when the directory holds corrupt or unreadable data (clap uses 2 for bad usage).
const EXIT_DATA_ERROR: u8 = 3;
/// Block ranges printed per line of `inspect` before the rest is summarized.
const RANGES_SHOWN_MAX: usize = 8;

#[derive(Parser, Debug)]
#[command(
    name = "receipt-store",
    version,
    about = "Read-only inspection and queries of a receipt store data directory",
    long_about = "Read-only inspection and queries of a receipt store data directory.\n\n\
        Files are read directly and opened read-only: nothing is replayed, repaired or deleted, \
        so it is safe on the directory of a running or a crashed node. Queries see what a store \
        opened on the directory would serve: the finalized parquet pairs plus the open window \
        rebuilt from the WAL.\n\n\
        Exit status: 0 success; 1 receipt not found; 2 bad usage; 3 corrupt or unreadable data \
        (for inspect: a problem was found)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report pairs, WAL segments, orphans and corruption; change nothing.
    ///
    /// Every pair file is read whole and verified (body checksum, bloom filter checksums,
    /// blocks inside the pair's window). WAL segments are scanned record by record. Lone pair
    /// files, unknown files, an unfinished open pair and a torn WAL tail are reported as notes
    /// (opening the store cleans them up); corruption is reported as a problem (exit status 3).
    Inspect {
        /// The store's data directory (holds receipts_<N>.parquet, logs_<N>.parquet, wal/).
        dir: PathBuf,
    },
    /// Print the receipt with a transaction hash as one JSON line.
    ///
    /// The earliest block holding the hash wins, as in `Store::get_receipt`. Prints
    /// `not found` and exits with status 1 when no block holds it.
    Receipt {
        /// The store's data directory.
        dir: PathBuf,
        /// Transaction hash: 0x followed by 64 hex digits.
        #[arg(value_parser = parse_hash)]
        hash: TxHash,
        /// Only look in this block (as `Store::get_receipt_in_block`).
        #[arg(long)]
        block: Option<u64>,
    },
    /// Print logs matching an eth_getLogs filter as JSON lines.
    ///
    /// Ordered by block, tx index, log index. Bytes are 0x-hex; topics list the log's topics
    /// in order.
    Logs {
        /// The store's data directory.
        dir: PathBuf,
        /// First block (inclusive).
        #[arg(long)]
        from: Option<u64>,
        /// Last block (inclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Contract address (0x + 40 hex digits); repeat for an OR-set.
        #[arg(long = "address", value_name = "0x..", value_parser = parse_address)]
        addresses: Vec<Address>,
        /// Topic at a position, POS:0x + 64 hex digits (POS 0-3); repeat a position for an
        /// OR-set. A position not given matches anything; a log without a topic at a given
        /// position never matches.
        #[arg(long = "topic", value_name = "POS:0x..", value_parser = parse_topic)]
        topics: Vec<(usize, Topic)>,
        /// Return at most this many logs (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
}

// ---------------------------------------------------------------------------------------------
// Hex and argument parsing.

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("{s:?} does not start with 0x"))?;
    if digits.len() != 2 * N {
        return Err(format!(
            "{s:?} has {} hex digits, expected {}",
            digits.len(),
            2 * N
        ));
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| format!("{s:?} is not hex"))?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| format!("{s:?} is not hex"))?;
    }
    Ok(out)
}

fn parse_hash(s: &str) -> Result<TxHash, String> {
    parse_hex::<32>(s)
}

fn parse_address(s: &str) -> Result<Address, String> {
    parse_hex::<20>(s)
}

fn parse_topic(s: &str) -> Result<(usize, Topic), String> {
    let (pos, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not POS:0x.. (for example 0:0xddf2...)"))?;
    let pos: usize = pos
        .parse()
        .map_err(|_| format!("topic position {pos:?} is not a number"))?;
    if pos >= MAX_TOPIC_POSITIONS {
        return Err(format!(
            "topic position {pos} is out of range: eth_getLogs has at most \
             {MAX_TOPIC_POSITIONS} topic positions (0-{})",
            MAX_TOPIC_POSITIONS - 1
        ));
    }
    Ok((pos, parse_hex::<32>(value)?))
}

// ---------------------------------------------------------------------------------------------
// The directory, read without changing it.

/// What the top of the data directory holds.
struct Listing {
    /// Regular files, sorted.
    files: Vec<String>,
    /// Whether `wal/` exists.
    has_wal: bool,
    /// Whether `quarantine/` exists.
    has_quarantine: bool,
    /// Entries that are neither pair files nor `wal/` (directories get a trailing `/`).
    unknown: Vec<String>,
}

fn list_dir(dir: &Path) -> Result<Listing, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut listing = Listing {
        files: Vec::new(),
        has_wal: false,
        has_quarantine: false,
        unknown: Vec::new(),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {name}: {e}"))?;
        if kind.is_file() {
            if parse_pair_name(&name).is_none() && parse_open_pair_name(&name).is_none() {
                listing.unknown.push(name.clone());
            }
            listing.files.push(name);
        } else if kind.is_dir() && name == WAL_DIR_NAME {
            listing.has_wal = true;
        } else if kind.is_dir() && name == QUARANTINE_DIR_NAME {
            listing.has_quarantine = true;
        } else if kind.is_dir() {
            listing.unknown.push(format!("{name}/"));
        } else {
            listing.unknown.push(name);
        }
    }
    listing.files.sort();
    listing.unknown.sort();
    Ok(listing)
}

fn pair_path(dir: &Path, kind: FileKind, start: u64) -> PathBuf {
    match kind {
        FileKind::Receipts => dir.join(receipt_file_name(start)),
        FileKind::Logs => dir.join(log_file_name(start)),
    }
}

/// Reads and verifies a whole pair file (body checksum, schema).
fn open_file(dir: &Path, kind: FileKind, start: u64) -> Result<ParquetFile, Error> {
    let path = pair_path(dir, kind, start);
    let bytes = read_whole(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    ParquetFile::open(&path, kind, bytes)
}

/// Loads a file's index (footer and verified bloom filters) through a read-only open.
async fn load_index(dir: &Path, kind: FileKind, start: u64) -> Result<FileIndex, Error> {
    FileIndex::load(&RealFs, &pair_path(dir, kind, start), kind).await
}

fn is_unfinished(e: &Error) -> bool {
    matches!(e, Error::CorruptFile { reason, .. } if reason.starts_with(UNFINISHED))
}

/// The closed pairs a store would serve and where its open window starts, decided as the
/// store's startup scan decides: the newest pair may be unfinished (the open pair of a crashed
/// store, skipped); the pair before it must then be finalized.
struct Served {
    /// Finalized pairs, ascending by start.
    closed: Vec<u64>,
    /// The newest pair, when it is unfinished.
    unfinished: Option<u64>,
    /// First block of the open window: WAL records at or above it are its rows.
    open_floor: u64,
}

async fn served_pairs(dir: &Path, pairs: &[u64]) -> Result<Served, Error> {
    let mut closed = pairs.to_vec();
    let mut unfinished = None;
    while let Some(&newest) = closed.last() {
        let loaded = async {
            let receipts = load_index(dir, FileKind::Receipts, newest).await?;
            load_index(dir, FileKind::Logs, newest).await?;
            Ok::<_, Error>(receipts)
        }
        .await;
        match loaded {
            Ok(index) => {
                let max_block = index.row_groups.iter().filter_map(|g| g.max_block).max();
                let open_floor = match max_block {
                    Some(m) => m.saturating_add(1).max(newest + 1),
                    None => newest + 1,
                };
                return Ok(Served {
                    closed,
                    unfinished,
                    open_floor,
                });
            }
            Err(e) if unfinished.is_none() && is_unfinished(&e) => {
                unfinished = Some(newest);
                closed.pop();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Served {
        closed,
        unfinished,
        open_floor: 0,
    })
}

/// One WAL segment as scanned.
struct SegmentReport {
    name: String,
    size_bytes: u64,
    records: Vec<WalRecord>,
    /// (offset, reason) of the first bad bytes.
    bad: Option<(u64, String)>,
    /// The bad bytes are the tail (last segment, nothing valid after): the store cuts them.
    torn: bool,
    /// The tail is a completely written record damaged since (its trailer is valid), not an
    /// append a crash interrupted.
    corrupt_tail: bool,
}

/// Everything under `wal/`, scanned, and the records a store would replay, in order.
struct WalReport {
    segments: Vec<SegmentReport>,
    /// Files in `wal/` that are not segments.
    unknown: Vec<String>,
    /// Records of all segments, duplicates (an interrupted rewrite at open) counted once.
    records: Vec<WalRecord>,
    /// Corruption the store would refuse to open with.
    problems: Vec<String>,
}

fn read_wal(dir: &Path) -> Result<WalReport, String> {
    let wal_dir = dir.join(WAL_DIR_NAME);
    let mut report = WalReport {
        segments: Vec::new(),
        unknown: Vec::new(),
        records: Vec::new(),
        problems: Vec::new(),
    };
    let entries = match std::fs::read_dir(&wal_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(format!("cannot list {}: {e}", wal_dir.display())),
    };
    let mut segments: Vec<(u64, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", wal_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        match parse_segment_name(&name) {
            Some(first_seq) if is_file => segments.push((first_seq, name)),
            _ => report.unknown.push(name),
        }
    }
    segments.sort();
    report.unknown.sort();
    let count = segments.len();
    for (i, (first_seq, name)) in segments.into_iter().enumerate() {
        let path = wal_dir.join(&name);
        let bytes =
            read_whole(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let scan = scan_segment(&bytes, first_seq);
        let torn = scan.bad_offset.is_some() && i + 1 == count && !scan.valid_after_bad;
        let corrupt_tail = torn && scan.bad.first().is_some_and(|b| b.complete);
        if let (Some(offset), false) = (scan.bad_offset, torn) {
            report.problems.push(format!(
                "{WAL_DIR_NAME}/{name}: corrupt at offset {offset}: {}",
                scan.reason
            ));
        }
        for rec in &scan.records {
            match report.records.last() {
                Some(prev) if rec.seq <= prev.seq => {
                    let at = report.records.partition_point(|r| r.seq < rec.seq);
                    if report.records.get(at) != Some(rec) {
                        report.problems.push(format!(
                            "{WAL_DIR_NAME}/{name}: record {} differs from the one already read",
                            rec.seq
                        ));
                    }
                }
                _ => report.records.push(rec.clone()),
            }
        }
        report.segments.push(SegmentReport {
            name,
            size_bytes: bytes.len() as u64,
            records: scan.records,
            bad: scan.bad_offset.map(|o| (o, scan.reason)),
            torn,
            corrupt_tail,
        });
    }
    Ok(report)
}

/// The open window's rows, derived from WAL records as replay derives them: records below
/// `floor` (already in closed files) and empty records are skipped; log indices are block-wide,
/// counting the logs of every earlier record of the same block.
fn open_window_rows(
    records: &[WalRecord],
    floor: u64,
) -> Result<(Vec<ReceiptRecord>, Vec<LogRecord>), String> {
    let mut receipts = Vec::new();
    let mut logs = Vec::new();
    let mut cursor: Option<(u64, u32)> = None;
    for rec in records {
        if rec.receipts.is_empty() || rec.height < floor {
            continue;
        }
        if let Some((last, _)) = cursor.filter(|(last, _)| rec.height < *last) {
            return Err(format!(
                "wal record {} for block {} is below block {last} before it",
                rec.seq, rec.height
            ));
        }
        let mut log_index = match cursor {
            Some((b, n)) if b == rec.height => n,
            _ => 0,
        };
        for r in &rec.receipts {
            receipts.push(ReceiptRecord {
                tx_hash: r.tx_hash,
                block_number: rec.height,
                receipt_bytes: r.receipt_bytes.clone(),
            });
            for log in &r.logs {
                logs.push(LogRecord {
                    block_number: rec.height,
                    tx_hash: r.tx_hash,
                    tx_index: r.tx_index,
                    log_index,
                    address: log.address,
                    topics: log.topics.clone(),
                    data: log.data.clone(),
                });
                log_index = log_index.saturating_add(1);
            }
        }
        cursor = Some((rec.height, log_index));
    }
    Ok((receipts, logs))
}

/// What queries read: the served closed pairs and the open window's rows.
struct View {
    dir: PathBuf,
    served: Served,
    open_receipts: Vec<ReceiptRecord>,
    open_logs: Vec<LogRecord>,
}

async fn load_view(dir: &Path) -> Result<View, String> {
    let listing = list_dir(dir)?;
    let pairs = group_listing(&listing.files).pairs;
    let served = served_pairs(dir, &pairs).await.map_err(|e| e.to_string())?;
    let wal = read_wal(dir)?;
    if let Some(p) = wal.problems.first() {
        return Err(p.clone());
    }
    let (open_receipts, open_logs) = open_window_rows(&wal.records, served.open_floor)?;
    Ok(View {
        dir: dir.to_path_buf(),
        served,
        open_receipts,
        open_logs,
    })
}

impl View {
    /// Blocks of closed pair `i` lie below the next pair's start (or the open window's floor).
    fn pair_end_exclusive(&self, i: usize) -> u64 {
        self.served
            .closed
            .get(i + 1)
            .copied()
            .unwrap_or(self.served.open_floor)
    }

    async fn receipt(
        &self,
        hash: &TxHash,
        block: Option<u64>,
    ) -> Result<Option<(ReceiptRecord, String)>, Error> {
        let (from, to) = block.map_or((0, u64::MAX), |b| (b, b));
        for &start in &self.served.closed {
            if start > to {
                break;
            }
            let index = load_index(&self.dir, FileKind::Receipts, start).await?;
            let candidate = index
                .row_groups
                .iter()
                .any(|g| g.overlaps(from, to) && g.may_contain("tx_hash", hash));
            if !candidate {
                continue;
            }
            let file = open_file(&self.dir, FileKind::Receipts, start)?;
            if let Some(r) = file.receipts(Some(hash), from, to)?.into_iter().next() {
                return Ok(Some((r, receipt_file_name(start))));
            }
        }
        Ok(self
            .open_receipts
            .iter()
            .find(|r| &r.tx_hash == hash && r.block_number >= from && r.block_number <= to)
            .map(|r| (r.clone(), format!("{WAL_DIR_NAME}/"))))
    }

    async fn logs(&self, filter: &LogFilter) -> Result<Vec<LogRecord>, Error> {
        filter.validate()?;
        let from = filter.from_block.unwrap_or(0);
        let to = filter.to_block.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (i, &start) in self.served.closed.iter().enumerate() {
            if start > to {
                break;
            }
            if self.pair_end_exclusive(i) <= from {
                continue;
            }
            let index = load_index(&self.dir, FileKind::Logs, start).await?;
            if !index.row_groups.iter().any(|g| g.overlaps(from, to)) {
                continue;
            }
            let file = open_file(&self.dir, FileKind::Logs, start)?;
            out.extend(
                file.logs(from, to, &[])?
                    .into_iter()
                    .filter(|l| filter.matches(l)),
            );
        }
        out.extend(self.open_logs.iter().filter(|l| filter.matches(l)).cloned());
        out.sort_by_key(|l| (l.block_number, l.tx_index, l.log_index));
        if let Some(n) = filter.limit {
            out.truncate(n);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// One line of `receipt` output; fields in the parquet column order, then where it was found.
#[derive(Serialize)]
struct ReceiptLine {
    tx_hash: String,
    block_number: u64,
    receipt_bytes: String,
    /// The file (`receipts_<N>.parquet`) or `wal/` for the open window.
    source: String,
}

/// One line of `logs` output, fields in the order of the log record.
#[derive(Serialize)]
struct LogLine {
    block_number: u64,
    tx_hash: String,
    tx_index: u32,
    log_index: u32,
    address: String,
    topics: Vec<String>,
    data: String,
}

fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain structs of strings and integers serialize")
}

async fn cmd_receipt(dir: &Path, hash: &TxHash, block: Option<u64>) -> Result<ExitCode, String> {
    let view = load_view(dir).await?;
    match view.receipt(hash, block).await.map_err(|e| e.to_string())? {
        Some((r, source)) => {
            println!(
                "{}",
                json_line(&ReceiptLine {
                    tx_hash: hex(&r.tx_hash),
                    block_number: r.block_number,
                    receipt_bytes: hex(&r.receipt_bytes),
                    source,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("not found");
            Ok(ExitCode::from(EXIT_NOT_FOUND))
        }
    }
}

fn log_line(l: &LogRecord) -> LogLine {
    LogLine {
        block_number: l.block_number,
        tx_hash: hex(&l.tx_hash),
        tx_index: l.tx_index,
        log_index: l.log_index,
        address: hex(&l.address),
        topics: l.topics.iter().map(|t| hex(t)).collect(),
        data: hex(&l.data),
    }
}

async fn cmd_logs(dir: &Path, filter: LogFilter) -> Result<ExitCode, String> {
    let view = load_view(dir).await?;
    let logs = view.logs(&filter).await.map_err(|e| e.to_string())?;
    for l in &logs {
        println!("{}", json_line(&log_line(l)));
    }
    Ok(ExitCode::SUCCESS)
}

fn build_filter(
    from: Option<u64>,
    to: Option<u64>,
    addresses: Vec<Address>,
    topics: Vec<(usize, Topic)>,
    limit: Option<u64>,
) -> Result<LogFilter, String> {
    let positions = topics.iter().map(|(p, _)| p + 1).max().unwrap_or(0);
    let mut sets: Vec<Vec<Topic>> = vec![Vec::new(); positions];
    for (pos, topic) in topics {
        if !sets[pos].contains(&topic) {
            sets[pos].push(topic);
        }
    }
    let limit = limit
        .map(usize::try_from)
        .transpose()
        .map_err(|_| "limit does not fit in memory".to_string())?;
    let filter = LogFilter {
        from_block: from,
        to_block: to,
        addresses,
        topics: sets,
        limit,
    };
    filter.validate().map_err(|e| e.to_string())?;
    Ok(filter)
}

/// Sorted distinct blocks as compact ranges: `8..=10, 12, 14..=15`.
fn ranges(blocks: &BTreeSet<u64>) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(b) => *hi = b,
            _ => runs.push((b, b)),
        }
    }
    let mut parts: Vec<String> = runs
        .iter()
        .take(RANGES_SHOWN_MAX)
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}..={hi}")
            }
        })
        .collect();
    if runs.len() > RANGES_SHOWN_MAX {
        parts.push(format!("... ({} ranges in all)", runs.len()));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// Findings of `inspect`: problems make the exit status 3; notes do not.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    notes: Vec<String>,
}

/// One pair file, verified. Returns its block range when it is sound.
async fn inspect_file(
    dir: &Path,
    kind: FileKind,
    start: u64,
    end_exclusive: Option<u64>,
) -> Result<(Option<u64>, Option<u64>), Error> {
    let name = pair_path(dir, kind, start)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = open_file(dir, kind, start)?;
    let index = load_index(dir, kind, start).await?;
    let blooms: usize = index.row_groups.iter().map(|g| g.blooms.len()).sum();
    let (lo, hi) = (file.min_block(), file.max_block());
    let blocks = match (lo, hi) {
        (Some(lo), Some(hi)) => format!("blocks {lo}..={hi}"),
        _ => "no rows".to_string(),
    };
    println!(
        "  {name}: {} rows, {} row groups, {} bytes, checksum {}, {blooms} bloom filters \
         verified, {blocks}",
        file.num_rows(),
        file.row_groups.len(),
        file.size_bytes(),
        if file.checksummed {
            "verified"
        } else {
            "absent (not written by this store)"
        },
    );
    if lo.is_some_and(|lo| lo < start) {
        return Err(Error::CorruptFile {
            path: file.path.clone(),
            reason: format!("holds block {} below its start {start}", lo.unwrap_or(0)),
        });
    }
    if let (Some(hi), Some(end)) = (hi, end_exclusive) {
        if hi >= end {
            return Err(Error::CorruptFile {
                path: file.path.clone(),
                reason: format!("holds block {hi}, at or above the next pair's start {end}"),
            });
        }
    }
    Ok((lo, hi))
}

async fn inspect_pairs(dir: &Path, pairs: &[u64], served: &Served, f: &mut Findings) {
    println!("pairs: {}", pairs.len());
    for (i, &start) in pairs.iter().enumerate() {
        let next = pairs.get(i + 1).copied();
        if served.unfinished == Some(start) {
            println!("pair {start}: unfinished (the open pair of a crashed store)");
            for kind in [FileKind::Receipts, FileKind::Logs] {
                let path = pair_path(dir, kind, start);
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let state = match open_file(dir, kind, start) {
                    Ok(_) => "finalized".to_string(),
                    Err(e) => e.to_string(),
                };
                println!(
                    "  {}: {size} bytes, {state}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                );
            }
            f.notes.push(format!(
                "pair {start} is unfinished: its rows are in the WAL; opening the store removes \
                 it and replays them"
            ));
            continue;
        }
        println!("pair {start}: closed");
        let mut ranges = Vec::new();
        for kind in [FileKind::Receipts, FileKind::Logs] {
            match inspect_file(dir, kind, start, next).await {
                Ok(r) => ranges.push(r),
                Err(e) => {
                    println!("  {e}");
                    f.problems.push(e.to_string());
                }
            }
        }
        if let [(_, Some(r_hi)), (Some(l_lo), Some(l_hi))] = ranges.as_slice() {
            if *l_hi > *r_hi || *l_lo < start {
                f.problems.push(format!(
                    "pair {start}: logs cover blocks {l_lo}..={l_hi}, outside the receipts' \
                     blocks up to {r_hi}"
                ));
            }
        }
    }
}

fn inspect_wal(wal: &WalReport, floor: u64, f: &mut Findings) {
    if wal.segments.is_empty() && wal.unknown.is_empty() {
        println!("{WAL_DIR_NAME}/: no segments");
    } else {
        println!("{WAL_DIR_NAME}/: {} segments", wal.segments.len());
    }
    for seg in &wal.segments {
        let heights: BTreeSet<u64> = seg.records.iter().map(|r| r.height).collect();
        let seqs = match (seg.records.first(), seg.records.last()) {
            (Some(a), Some(b)) => format!(" (seq {}..={})", a.seq, b.seq),
            _ => String::new(),
        };
        let state = match &seg.bad {
            None => "clean".to_string(),
            Some((offset, reason)) if seg.corrupt_tail => {
                f.problems.push(format!(
                    "{WAL_DIR_NAME}/{}: the last record, completely written, is corrupt at \
                     offset {offset} ({reason}); opening the store cuts it and keeps its bytes \
                     in {QUARANTINE_DIR_NAME}/",
                    seg.name
                ));
                format!("CORRUPT last record at offset {offset}: {reason}")
            }
            Some((offset, reason)) if seg.torn => {
                f.notes.push(format!(
                    "{WAL_DIR_NAME}/{}: torn tail at offset {offset} ({reason}); opening the \
                     store cuts it",
                    seg.name
                ));
                format!("torn tail at offset {offset}: {reason}")
            }
            Some((offset, reason)) => format!("CORRUPT at offset {offset}: {reason}"),
        };
        println!(
            "  {}: {} records{seqs}, blocks {}, {} bytes, {state}",
            seg.name,
            seg.records.len(),
            ranges(&heights),
            seg.size_bytes
        );
    }
    for name in &wal.unknown {
        println!("  {name}: not a segment");
        f.notes.push(format!(
            "{WAL_DIR_NAME}/{name} is not a WAL segment (left alone by the store)"
        ));
    }
    f.problems.extend(wal.problems.iter().cloned());
    let covered = wal.records.iter().filter(|r| r.height < floor).count();
    if covered > 0 {
        println!(
            "  {covered} records are below block {floor}: already in closed files, skipped by \
             replay"
        );
    }
    match open_window_rows(&wal.records, floor) {
        Ok((receipts, logs)) => {
            let heights: BTreeSet<u64> = receipts.iter().map(|r| r.block_number).collect();
            println!(
                "open window (WAL records at or above block {floor}): blocks {}, {} receipts, \
                 {} logs",
                ranges(&heights),
                receipts.len(),
                logs.len()
            );
        }
        Err(e) => f.problems.push(e),
    }
}

/// Lists `quarantine/`: what earlier opens could not use. A torn WAL tail and corruption in
/// records closed files cover are notes; everything else may be data no longer served.
fn inspect_quarantine(dir: &Path, f: &mut Findings) -> Result<usize, String> {
    let qdir = dir.join(QUARANTINE_DIR_NAME);
    let mut names: Vec<(String, u64)> = Vec::new();
    for entry in
        std::fs::read_dir(&qdir).map_err(|e| format!("cannot list {}: {e}", qdir.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", qdir.display()))?;
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        names.push((entry.file_name().to_string_lossy().into_owned(), size));
    }
    names.sort();
    println!("{QUARANTINE_DIR_NAME}/: {} files", names.len());
    for (name, size) in &names {
        let (original, tag) = parse_quarantine_name(name).map_or(("?", "?"), |(o, t, _)| (o, t));
        println!("  {name}: {size} bytes, from {original} ({tag})");
        let finding = format!("{QUARANTINE_DIR_NAME}/{name} ({tag}, from {original})");
        if QuarantineReason::needs_attention(tag) {
            f.problems.push(format!(
                "{finding}: kept aside by an open; its data is not served"
            ));
        } else {
            f.notes.push(format!(
                "{finding}: kept aside by an open; nothing served was lost"
            ));
        }
    }
    Ok(names.len())
}

async fn cmd_inspect(dir: &Path) -> Result<ExitCode, String> {
    let listing = list_dir(dir)?;
    let grouped = group_listing(&listing.files);
    println!("data directory: {}", dir.display());
    let mut f = Findings::default();
    let served = match served_pairs(dir, &grouped.pairs).await {
        Ok(s) => s,
        Err(e) => {
            // The newest pair is corrupt (not merely unfinished): a store refuses to open.
            f.problems
                .push(format!("a store would refuse to open: {e}"));
            Served {
                closed: grouped.pairs.clone(),
                unfinished: None,
                open_floor: u64::MAX,
            }
        }
    };
    inspect_pairs(dir, &grouped.pairs, &served, &mut f).await;
    for (start, files) in &grouped.open {
        println!("pair {start}: unfinished (the open pair, named so globs skip it)");
        f.notes.push(format!(
            "pair {start} is the open pair of a running or crashed store ({:?}); its rows are in \
             the WAL",
            files
        ));
    }
    for name in &grouped.lone {
        println!("orphan: {name} (its counterpart is missing)");
        f.notes.push(format!(
            "{name} has no counterpart; opening the store deletes it"
        ));
    }
    for name in &listing.unknown {
        println!("unknown: {name}");
        f.notes.push(format!(
            "{name} is not a store file (left alone by the store)"
        ));
    }
    let wal = read_wal(dir)?;
    if !listing.has_wal {
        f.notes.push(format!("no {WAL_DIR_NAME}/ directory"));
    }
    inspect_wal(&wal, served.open_floor, &mut f);
    let quarantined = if listing.has_quarantine {
        inspect_quarantine(dir, &mut f)?
    } else {
        0
    };
    for n in &f.notes {
        println!("note: {n}");
    }
    for p in &f.problems {
        println!("problem: {p}");
    }
    println!(
        "summary: {} closed pairs, {} unfinished, {} WAL segments ({} records), {} orphans, \
         {} unknown, {quarantined} quarantined, {} problems",
        served.closed.len(),
        usize::from(served.unfinished.is_some()) + grouped.open.len(),
        wal.segments.len(),
        wal.records.len(),
        grouped.lone.len(),
        listing.unknown.len() + wal.unknown.len(),
        f.problems.len()
    );
    Ok(if f.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DATA_ERROR)
    })
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Inspect { dir } => cmd_inspect(&dir).await,
        Command::Receipt { dir, hash, block } => cmd_receipt(&dir, &hash, block).await,
        Command::Logs {
            dir,
            from,
            to,
            addresses,
            topics,
            limit,
        } => match build_filter(from, to, addresses, topics, limit) {
            Ok(filter) => cmd_logs(&dir, filter).await,
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(EXIT_USAGE))
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // File reads are blocking calls; one current-thread runtime drives the async index loader.
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::from(EXIT_DATA_ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_DATA_ERROR)
        }
    }
}
