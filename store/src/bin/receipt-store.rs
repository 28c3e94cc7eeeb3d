//! `receipt-store`: a read-only operator tool for a receipt store data directory.
//!
//! It never opens the store: `Store::open` replays the WAL, removes unfinished files and moves
//! what it cannot use to `quarantine/`, so it is no tool for looking at evidence. This program
//! asks the library for a read-only view of the directory (`inspect::DirectoryView`): open's own
//! decisions (which pairs are served, where the open window starts, which WAL records replay
//! applies, what open would rename, delete, quarantine, cut or refuse), written down instead of
//! carried out. Every file is opened read-only; nothing is created, renamed, truncated or
//! deleted, so it is safe on the directory of a running or a crashed node. Queries run through
//! the store's own reader over that view.
//!
//! Output contract: stdout carries only the answer (JSON lines for `receipt` and `logs`, the
//! report for `inspect`); notes and errors go to stderr. Paths are printed as the store prints
//! them (the data directory joined with the file's name). A closed stdout (`| head -1`) ends the
//! program quietly with status 0.

use clap::{Parser, Subcommand};
use receipt_store::env::real::{read_whole, RealFs};
use receipt_store::files::{
    group_listing, parse_open_pair_name, parse_pair_name, parse_quarantine_name, QuarantineReason,
    QUARANTINE_DIR_NAME,
};
use receipt_store::inspect::{DirectoryView, RecoveryAction};
use receipt_store::parquet::index::FileIndex;
use receipt_store::parquet::reader::{FileKind, ParquetFile};
use receipt_store::query::MAX_TOPIC_POSITIONS;
use receipt_store::wal::{WalTailKind, WAL_DIR_NAME};
use receipt_store::{Address, Config, Error, LogFilter, LogRecord, Topic, TxHash};
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status of `receipt` when the hash is not in the directory.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status of bad usage (clap's own code).
const EXIT_USAGE: u8 = 2;
/// Exit status when the directory is missing, is no store directory, or holds corrupt or
/// unreadable data (for inspect: a problem was found).
const EXIT_DATA_ERROR: u8 = 3;
/// Exit status of a query answered from the closed files only, because a store would refuse to
/// open on the WAL (a corrupt record that may hold blocks of the open window); stderr says why.
const EXIT_PARTIAL: u8 = 4;
/// Block ranges printed per line of `inspect` before the rest is summarized.
const RANGES_SHOWN_MAX: usize = 8;
/// The spelling of an explicit topic wildcard, as eth_getLogs' `null`.
const TOPIC_WILDCARD: &str = "null";

#[derive(Parser, Debug)]
#[command(
    name = "receipt-store",
    version,
    about = "Read-only inspection and queries of a receipt store data directory",
    long_about = "Read-only inspection and queries of a receipt store data directory.\n\n\
        Files are opened read-only: nothing is replayed, repaired or deleted, so it is safe on \
        the directory of a running or a crashed node. Queries see what a store opened on the \
        directory would serve: the finalized parquet pairs plus the open window rebuilt from the \
        WAL, decided by the store's own recovery code.\n\n\
        stdout carries only answers (JSON lines for receipt and logs); notes and errors go to \
        stderr. Block numbers are decimal or 0x-hex (as JSON-RPC quantities).\n\n\
        Exit status: 0 success; 1 receipt not found; 2 bad usage; 3 missing or empty \
        directory, corrupt or unreadable data (for inspect: a problem was found); 4 answered \
        from the closed files only, because the WAL is corrupt where a store would refuse to \
        open (the problem is on stderr)."
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
    /// blocks inside the pair's window). WAL segments are scanned record by record. What opening
    /// the store would do (complete a rename, delete an unfinished pair, cut a torn WAL tail)
    /// is reported as a note; corruption and files a store would not serve are problems
    /// (exit status 3).
    Inspect {
        /// The store's data directory (holds receipts_<N>.parquet, logs_<N>.parquet, wal/).
        dir: PathBuf,
    },
    /// Print the receipt with a transaction hash as one JSON line.
    ///
    /// The earliest block holding the hash wins, as in `Store::get_receipt`. When no block holds
    /// it, stdout stays empty, stderr says `not found`, and the exit status is 1.
    Receipt {
        /// The store's data directory.
        dir: PathBuf,
        /// Transaction hash: 0x followed by 64 hex digits.
        #[arg(value_parser = parse_hash)]
        hash: TxHash,
        /// Only look in this block (decimal or 0x-hex), as `Store::get_receipt_in_block`.
        #[arg(long, value_name = "BLOCK", value_parser = parse_block)]
        block: Option<u64>,
    },
    /// Print logs matching an eth_getLogs filter as JSON lines.
    ///
    /// Ordered by block, tx index, log index. Bytes are 0x-hex; topics list the log's topics
    /// in order.
    Logs {
        /// The store's data directory.
        dir: PathBuf,
        /// First block (inclusive), decimal or 0x-hex.
        #[arg(long, value_name = "BLOCK", value_parser = parse_block)]
        from: Option<u64>,
        /// Last block (inclusive), decimal or 0x-hex.
        #[arg(long, value_name = "BLOCK", value_parser = parse_block)]
        to: Option<u64>,
        /// Contract address (0x + 40 hex digits); repeat for an OR-set.
        #[arg(long = "address", value_name = "0x..", value_parser = parse_address)]
        addresses: Vec<Address>,
        /// Topic at a position: POS:0x + 64 hex digits (POS 0-3); repeat a position for an
        /// OR-set. POS:null matches anything at that position, as null in eth_getLogs (the same
        /// as leaving the position out: `--topic 0:null --topic 1:0x..` is eth_getLogs'
        /// [null, "0x.."]). A log without a topic at a position that is not null never matches.
        #[arg(long = "topic", value_name = "POS:0x..|POS:null", value_parser = parse_topic)]
        topics: Vec<(usize, Option<Topic>)>,
        /// Return at most this many logs (at least 1; leave it out for every matching log).
        #[arg(long)]
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

/// A block number as JSON-RPC writes a quantity (`0x` and hex digits) or in decimal.
fn parse_block(s: &str) -> Result<u64, String> {
    let garbage = || {
        format!(
            "block number {s:?} is neither decimal nor 0x-hex (for example 1234 or 0x4d2); \
             at most {}",
            u64::MAX
        )
    };
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(digits, 16).map_err(|_| garbage())
        }
        Some(_) => Err(garbage()),
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| garbage())
        }
        None => Err(garbage()),
    }
}

/// `POS:0x..` (a topic) or `POS:null` (the explicit wildcard, `None`).
fn parse_topic(s: &str) -> Result<(usize, Option<Topic>), String> {
    let (pos, value) = s.split_once(':').ok_or_else(|| {
        format!("{s:?} is not POS:0x.. or POS:{TOPIC_WILDCARD} (for example 0:0xddf2...)")
    })?;
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
    if value == TOPIC_WILDCARD {
        return Ok((pos, None));
    }
    Ok((pos, Some(parse_hex::<32>(value)?)))
}

fn build_filter(
    from: Option<u64>,
    to: Option<u64>,
    addresses: Vec<Address>,
    topics: Vec<(usize, Option<Topic>)>,
    limit: Option<u64>,
) -> Result<LogFilter, String> {
    if limit == Some(0) {
        return Err("--limit 0 is not allowed; leave --limit out for every matching log".into());
    }
    let positions = topics.iter().map(|(p, _)| p + 1).max().unwrap_or(0);
    let mut sets: Vec<Vec<Topic>> = vec![Vec::new(); positions];
    let mut wildcards = [false; MAX_TOPIC_POSITIONS];
    for (pos, topic) in topics {
        match topic {
            None => wildcards[pos] = true,
            Some(t) if !sets[pos].contains(&t) => sets[pos].push(t),
            Some(_) => {}
        }
    }
    if let Some(pos) = (0..positions).find(|&p| wildcards[p] && !sets[p].is_empty()) {
        return Err(format!(
            "topic position {pos} is both {TOPIC_WILDCARD} (anything) and a set of topics; \
             give one or the other"
        ));
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

// ---------------------------------------------------------------------------------------------
// Output.

/// How a command ends early: the reader closed stdout (quiet, status 0), or an error (stderr,
/// status 3).
enum Stop {
    ReaderGone,
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Self {
        Stop::Failed(e)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e.to_string())
    }
}

/// One line to stdout. A reader that closed the pipe (`| head -1`) is no error: the command
/// stops writing and exits quietly.
fn out(line: std::fmt::Arguments<'_>) -> Result<(), Stop> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::ReaderGone),
        Err(e) => Err(Stop::Failed(format!("cannot write to stdout: {e}"))),
    }
}

macro_rules! outln {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain structs of strings and integers serialize")
}

// ---------------------------------------------------------------------------------------------
// The directory, read without changing it.

/// The store's read-only view of `dir`. A missing directory is the store's io error; a
/// directory with no pair file and no `wal/` is no store directory: both are errors, never an
/// empty answer.
async fn load_view(dir: &Path) -> Result<DirectoryView<RealFs>, String> {
    let view = DirectoryView::load(&RealFs, dir, &Config::default())
        .await
        .map_err(|e| e.to_string())?;
    if !view.holds_store_files() {
        return Err(format!(
            "{}: not a receipt store data directory (no pair files and no {WAL_DIR_NAME}/)",
            dir.display()
        ));
    }
    Ok(view)
}

/// A query's answer came from the closed files only: says why on stderr.
fn partial(view: &DirectoryView<RealFs>) -> Option<ExitCode> {
    let e = view.refusal()?;
    eprintln!(
        "problem: a store would refuse to open: {e}; answered from the closed files only (blocks \
         below {}), the open window in {} is not served",
        view.open_floor(),
        view.dir().join(WAL_DIR_NAME).display()
    );
    Some(ExitCode::from(EXIT_PARTIAL))
}

// ---------------------------------------------------------------------------------------------
// Queries.

/// One line of `receipt` output; fields in the parquet column order, then where it was found.
#[derive(Serialize)]
struct ReceiptLine {
    tx_hash: String,
    block_number: u64,
    receipt_bytes: String,
    /// The receipts file (`<dir>/receipts_<N>.parquet`) or `<dir>/wal` for the open window.
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

async fn cmd_receipt(dir: &Path, hash: &TxHash, block: Option<u64>) -> Result<ExitCode, Stop> {
    let view = load_view(dir).await?;
    let found = view.get_receipt(hash, block).await?;
    if let Some(r) = &found {
        outln!(
            "{}",
            json_line(&ReceiptLine {
                tx_hash: hex(&r.tx_hash),
                block_number: r.block_number,
                receipt_bytes: hex(&r.receipt_bytes),
                source: view.source_of(r.block_number).display().to_string(),
            })
        )?;
    }
    if let Some(code) = partial(&view) {
        return Ok(code);
    }
    if found.is_none() {
        eprintln!("not found");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_logs(dir: &Path, filter: LogFilter) -> Result<ExitCode, Stop> {
    let view = load_view(dir).await?;
    let logs = view.get_logs(&filter).await?;
    for l in &logs {
        outln!("{}", json_line(&log_line(l)))?;
    }
    Ok(partial(&view).unwrap_or(ExitCode::SUCCESS))
}

// ---------------------------------------------------------------------------------------------
// inspect.

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

/// Entries of the data directory that are neither pair files nor the store's folders
/// (directories get a trailing `/`), and whether `quarantine/` exists. The store's `Fs` lists
/// files only, so this one listing is the CLI's own.
fn unknown_entries(dir: &Path) -> Result<(Vec<String>, bool), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut unknown = Vec::new();
    let mut has_quarantine = false;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", dir.join(&name).display()))?;
        let pair_file = parse_pair_name(&name).is_some() || parse_open_pair_name(&name).is_some();
        if kind.is_file() && !pair_file {
            unknown.push(name);
        } else if kind.is_dir() && name == QUARANTINE_DIR_NAME {
            has_quarantine = true;
        } else if kind.is_dir() && name != WAL_DIR_NAME {
            unknown.push(format!("{name}/"));
        } else if !kind.is_file() && !kind.is_dir() {
            unknown.push(name);
        }
    }
    unknown.sort();
    Ok((unknown, has_quarantine))
}

/// One pair file, read whole and verified; prints its line. Returns its block range.
async fn inspect_file(
    path: &Path,
    kind: FileKind,
    start: u64,
    end_exclusive: Option<u64>,
) -> Result<(Option<u64>, Option<u64>), Error> {
    let bytes = read_whole(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = ParquetFile::open(path, kind, bytes)?;
    let index = FileIndex::load(&RealFs, path, kind).await?;
    let blooms: usize = index.row_groups.iter().map(|g| g.blooms.len()).sum();
    let (lo, hi) = (file.min_block(), file.max_block());
    let blocks = match (lo, hi) {
        (Some(lo), Some(hi)) => format!("blocks {lo}..={hi}"),
        _ => "no rows".to_string(),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // The line is best effort: a closed stdout ends the report at the next `outln!`.
    let _ = outln!(
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
    if let Some(lo) = lo.filter(|&lo| lo < start) {
        return Err(Error::CorruptFile {
            path: file.path.clone(),
            reason: format!("holds block {lo} below its start {start}"),
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

/// Verifies every served closed pair and reports the pairs open would not serve.
async fn inspect_pairs(
    view: &DirectoryView<RealFs>,
    listing: &receipt_store::files::Listing,
    f: &mut Findings,
) -> Result<(), Stop> {
    outln!("pairs: {}", view.closed_pairs().len())?;
    let starts: Vec<u64> = view.closed_pairs().iter().map(|p| p.start).collect();
    for (i, pair) in view.closed_pairs().iter().enumerate() {
        let start = pair.start;
        let next = starts.get(i + 1).copied();
        outln!("pair {start}: closed")?;
        let mut found = Vec::new();
        for (kind, path) in [
            (FileKind::Receipts, &pair.receipt_path),
            (FileKind::Logs, &pair.log_path),
        ] {
            match inspect_file(path, kind, start, next).await {
                Ok(r) => found.push(r),
                Err(e) => {
                    outln!("  {e}")?;
                    f.problems.push(e.to_string());
                }
            }
        }
        if let [(_, Some(r_hi)), (Some(l_lo), Some(l_hi))] = found.as_slice() {
            if *l_hi > *r_hi || *l_lo < start {
                f.problems.push(format!(
                    "pair {start}: logs cover blocks {l_lo}..={l_hi}, outside the receipts' \
                     blocks up to {r_hi}"
                ));
            }
        }
    }
    for start in listing.pairs.iter().filter(|s| !starts.contains(s)) {
        outln!("pair {start}: unfinished (the open pair of a crashed store)")?;
    }
    for start in listing.open.keys().filter(|s| !starts.contains(s)) {
        outln!("pair {start}: unfinished (the open pair, named so globs skip it)")?;
    }
    for name in &listing.lone {
        outln!("orphan: {name} (its counterpart is missing)")?;
    }
    for action in view.actions() {
        match action {
            RecoveryAction::Quarantine { reason, .. }
                if QuarantineReason::needs_attention(&reason.tag()) =>
            {
                f.problems.push(action.to_string());
            }
            _ => f.notes.push(action.to_string()),
        }
    }
    Ok(())
}

/// The WAL's segments, what open would do with their bad bytes, and the open window.
fn inspect_wal(view: &DirectoryView<RealFs>, f: &mut Findings) -> Result<(), Stop> {
    let segments = view.wal_segments();
    let plan = view.wal_plan();
    let wal_dir = view.dir().join(WAL_DIR_NAME);
    if !view.wal_dir_present() {
        f.notes.push(format!("no {} directory", wal_dir.display()));
    }
    outln!("{WAL_DIR_NAME}/: {} segments", segments.len())?;
    for seg in &segments {
        let heights: BTreeSet<u64> = seg.scan.frames.iter().map(|f| f.height).collect();
        let seqs = match (seg.scan.frames.first(), seg.scan.frames.last()) {
            (Some(a), Some(b)) => format!(" (seq {}..={})", a.seq, b.seq),
            _ => String::new(),
        };
        let tail = plan.tails.iter().find(|t| t.0 == seg.path);
        let covered = plan.covered.iter().find(|c| c.0 == seg.path);
        let state = match (seg.scan.bad_offset, tail, covered) {
            (None, _, _) => "clean".to_string(),
            (_, Some((_, offset, WalTailKind::Torn, _)), _) => {
                format!("torn tail at offset {offset}: {}", seg.scan.reason)
            }
            (_, Some((_, offset, WalTailKind::Corrupt, _)), _) => {
                format!(
                    "CORRUPT last record at offset {offset}: {}",
                    seg.scan.reason
                )
            }
            (Some(offset), None, Some(_)) => format!(
                "corrupt at offset {offset}: {} (every block it can hold is in a closed file)",
                seg.scan.reason
            ),
            (Some(offset), None, None) => {
                format!("CORRUPT at offset {offset}: {}", seg.scan.reason)
            }
        };
        outln!(
            "  {}: {} records{seqs}, blocks {}, {} bytes, {state}",
            seg.path.file_name().unwrap_or_default().to_string_lossy(),
            seg.scan.frames.len(),
            ranges(&heights),
            seg.size_bytes
        )?;
    }
    for (segment, offset, kind, covered) in &plan.tails {
        let at = format!("{} at offset {offset}", segment.display());
        match (kind, covered) {
            (WalTailKind::Torn, _) => f.notes.push(format!(
                "{at}: torn tail (an append a crash interrupted); opening the store cuts it and \
                 keeps its bytes in {QUARANTINE_DIR_NAME}/"
            )),
            (WalTailKind::Corrupt, true) => f.notes.push(format!(
                "{at}: the last record, completely written, is corrupt; its block is in a closed \
                 file; opening the store cuts it and keeps its bytes in {QUARANTINE_DIR_NAME}/"
            )),
            (WalTailKind::Corrupt, false) => f.problems.push(format!(
                "{at}: the last record, completely written, is corrupt; opening the store cuts \
                 it and keeps its bytes in {QUARANTINE_DIR_NAME}/; its block is lost"
            )),
        }
    }
    for (segment, offset) in &plan.covered {
        f.notes.push(format!(
            "{} at offset {offset}: corrupt records whose blocks are all in closed files; \
             opening the store copies the segment to {QUARANTINE_DIR_NAME}/",
            segment.display()
        ));
    }
    if let Some(e) = view.refusal() {
        f.problems
            .push(format!("a store would refuse to open: {e}"));
    }
    let floor = view.open_floor();
    let covered = view
        .wal_records()
        .iter()
        .filter(|r| r.height < floor)
        .count();
    if covered > 0 {
        outln!(
            "  {covered} records are below block {floor}: already in closed files, skipped by \
             replay"
        )?;
    }
    let open = view.open_window();
    let heights: BTreeSet<u64> = open.receipts.iter().map(|r| r.block_number).collect();
    let served = if view.refusal().is_some() {
        " (not served: a store would refuse to open)"
    } else {
        ""
    };
    outln!(
        "open window (WAL records at or above block {floor}): blocks {}, {} receipts, {} logs{served}",
        ranges(&heights),
        open.receipts.len(),
        open.logs.len()
    )?;
    Ok(())
}

/// Lists `quarantine/`: what earlier opens could not use. A torn WAL tail and corruption in
/// records closed files cover are notes; everything else may be data no longer served.
fn inspect_quarantine(dir: &Path, f: &mut Findings) -> Result<usize, Stop> {
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
    outln!("{QUARANTINE_DIR_NAME}/: {} files", names.len())?;
    for (name, size) in &names {
        let (original, tag) = parse_quarantine_name(name).map_or(("?", "?"), |(o, t, _)| (o, t));
        outln!("  {name}: {size} bytes, from {original} ({tag})")?;
        let finding = format!("{} ({tag}, from {original})", qdir.join(name).display());
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

async fn cmd_inspect(dir: &Path) -> Result<ExitCode, Stop> {
    let view = load_view(dir).await?;
    let (unknown, has_quarantine) = unknown_entries(dir)?;
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listing = group_listing(&names);
    outln!("data directory: {}", dir.display())?;
    let mut f = Findings::default();
    inspect_pairs(&view, &listing, &mut f).await?;
    for name in &unknown {
        outln!("unknown: {name}")?;
        f.notes.push(format!(
            "{} is not a store file (left alone by the store)",
            dir.join(name).display()
        ));
    }
    inspect_wal(&view, &mut f)?;
    let quarantined = if has_quarantine {
        inspect_quarantine(dir, &mut f)?
    } else {
        0
    };
    for n in &f.notes {
        outln!("note: {n}")?;
    }
    for p in &f.problems {
        outln!("problem: {p}")?;
    }
    let served: BTreeSet<u64> = view.closed_pairs().iter().map(|p| p.start).collect();
    let unfinished = listing
        .pairs
        .iter()
        .chain(listing.open.keys())
        .filter(|s| !served.contains(s))
        .count();
    outln!(
        "summary: {} closed pairs, {unfinished} unfinished, {} WAL segments ({} records), {} \
         orphans, {} unknown, {quarantined} quarantined, {} problems",
        view.closed_pairs().len(),
        view.wal_segments().len(),
        view.wal_records().len(),
        listing.lone.len(),
        unknown.len(),
        f.problems.len()
    )?;
    Ok(if f.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DATA_ERROR)
    })
}

async fn run(cli: Cli) -> Result<ExitCode, Stop> {
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
    // File reads are blocking calls; one current-thread runtime drives the async readers.
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::from(EXIT_DATA_ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(Stop::ReaderGone) => ExitCode::SUCCESS,
        Err(Stop::Failed(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_DATA_ERROR)
        }
    }
}
