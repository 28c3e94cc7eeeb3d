//! The invariants of DESIGN.md as pure functions over the model and what the store returned.
//! The executor calls them after every op and every recovery; each failure names its check, so
//! shrinking can insist on the same failure and reports can group by it.

use crate::model::{Model, State, Tagged};
use receipt_store::{LogFilter, LogRecord, ReceiptRecord, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which invariant a failure broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// The store could not be opened (or reopened) without an injected fault to explain it.
    Open,
    /// 1, 2: recovered state is not the model on a prefix between acked and issued.
    Recovery,
    /// 2: a record that was never written, or a duplicate.
    Phantom,
    /// 3: a read disagreed with the model at every instant between its call and its reply.
    Read,
    /// Write-path answers (a valid write rejected, an invalid one accepted, a failure without a
    /// fault).
    Write,
    /// 4: recovering the same durable image twice gave different states.
    Idempotence,
    /// 5: a file handle left open.
    Handles,
    /// 5: a store task left running.
    Tasks,
    /// 6: files on disk (lone or orphan pair files, a pruned window back, an unknown file).
    Files,
    /// 7: the same seed twice gave different traces.
    Determinism,
    /// What must happen did not: a window prune may delete is still tracked after a prune, or
    /// a clean close left WAL records that closed pairs cover.
    Liveness,
    /// What an open recovered (or built on) is not durable yet: a directory entry a power loss
    /// would undo, or WAL bytes it would drop, right after open returned.
    Durability,
    /// The simulation itself stopped (deadlock, step limit).
    Sim,
}

impl Check {
    pub fn tag(self) -> &'static str {
        match self {
            Check::Open => "open",
            Check::Recovery => "recovery",
            Check::Phantom => "phantom",
            Check::Read => "read",
            Check::Write => "write",
            Check::Idempotence => "idempotence",
            Check::Handles => "handles",
            Check::Tasks => "tasks",
            Check::Files => "files",
            Check::Determinism => "determinism",
            Check::Liveness => "liveness",
            Check::Durability => "durability",
            Check::Sim => "sim",
        }
    }

    /// The check a formatted failure line (`[tag] detail`) belongs to.
    pub fn of(line: &str) -> Option<Check> {
        let tag = line.strip_prefix('[')?.split(']').next()?;
        ALL_CHECKS.iter().copied().find(|c| c.tag() == tag)
    }
}

pub const ALL_CHECKS: [Check; 13] = [
    Check::Open,
    Check::Recovery,
    Check::Phantom,
    Check::Read,
    Check::Write,
    Check::Idempotence,
    Check::Handles,
    Check::Tasks,
    Check::Files,
    Check::Determinism,
    Check::Liveness,
    Check::Durability,
    Check::Sim,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub check: Check,
    pub detail: String,
}

impl Failure {
    pub fn new(check: Check, detail: impl Into<String>) -> Self {
        Failure {
            check,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.check.tag(), self.detail)
    }
}

trait Block {
    fn block(&self) -> u64;
}

impl Block for ReceiptRecord {
    fn block(&self) -> u64 {
        self.block_number
    }
}

impl Block for LogRecord {
    fn block(&self) -> u64 {
        self.block_number
    }
}

/// `got` is `expected` with at most a leading run of prunable blocks missing (pruning drops
/// whole pairs, oldest first), cut to `limit` items when given.
fn consistent<T: Block + PartialEq>(
    expected: &[T],
    got: &[T],
    limit: Option<usize>,
    prunable: &dyn Fn(u64) -> bool,
) -> bool {
    let Some(first) = got.first() else {
        return limit == Some(0) || expected.iter().all(|e| prunable(e.block()));
    };
    let b0 = first.block();
    let skipped = expected.iter().take_while(|e| e.block() < b0);
    let mut n_skipped = 0;
    for e in skipped {
        if !prunable(e.block()) {
            return false;
        }
        n_skipped += 1;
    }
    let rest = &expected[n_skipped..];
    match limit {
        Some(n) if rest.len() > n => got == &rest[..n],
        _ => got == rest,
    }
}

/// Invariants 1 and 2: the smallest `k` in `lo..=hi` whose model state the recovered state is
/// (modulo a prunable leading run of blocks), or a description of the closest miss. Several `k`
/// match only when the writes between them lie wholly in prunable blocks and are absent: taking
/// the smallest never credits the store with writes it may have lost rather than pruned.
pub fn match_recovery(
    tagged: &Tagged,
    got: &State,
    lo: usize,
    hi: usize,
    prunable: &dyn Fn(u64) -> bool,
) -> Result<usize, Failure> {
    assert!(lo <= hi, "lower bound {lo} above issued {hi}");
    for k in lo..=hi {
        let e = tagged.prefix(k);
        if consistent(&e.receipts, &got.receipts, None, prunable)
            && consistent(&e.logs, &got.logs, None, prunable)
        {
            return Ok(k);
        }
    }
    let nearest = tagged.prefix(hi).without_blocks(prunable);
    let g = got.without_blocks(prunable);
    let (el, gl) = (nearest.lines(), g.lines());
    let first_diff = el
        .iter()
        .zip(gl.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(el.len().min(gl.len()));
    let show = |v: &[String]| v.get(first_diff).cloned().unwrap_or_else(|| "(end)".into());
    Err(Failure::new(
        Check::Recovery,
        format!(
            "recovered state matches no prefix of the issued writes in {lo}..={hi}: {} receipts / {} logs recovered, {} / {} issued; first difference from everything issued (prunable blocks left out): expected {} got {}",
            got.receipts.len(),
            got.logs.len(),
            tagged.prefix(hi).receipts.len(),
            tagged.prefix(hi).logs.len(),
            show(&el),
            show(&gl),
        ),
    ))
}

/// Invariant 2 beyond the prefix match: no recovered record the model never issued (this also
/// covers blocks that pruning may have removed), and no receipt twice.
pub fn phantoms(tagged: &Tagged, got: &State) -> Vec<Failure> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &got.receipts {
        if !seen.insert((r.tx_hash, r.block_number)) {
            out.push(Failure::new(
                Check::Phantom,
                format!("receipt recovered twice in block {}", r.block_number),
            ));
        }
        if !tagged.receipts.iter().any(|(_, e)| e == r) {
            out.push(Failure::new(
                Check::Phantom,
                format!(
                    "recovered a receipt in block {} that was never written",
                    r.block_number
                ),
            ));
        }
    }
    for l in &got.logs {
        if !tagged.logs.iter().any(|(_, e)| e == l) {
            out.push(Failure::new(
                Check::Phantom,
                format!(
                    "recovered a log (block {}, tx {}, log index {}) that was never written",
                    l.block_number, l.tx_index, l.log_index
                ),
            ));
        }
    }
    out
}

/// Invariant 6, by content: no recovered record lies in a window whose deletion by prune was
/// made durable (`pruned`: start -> end, exclusive). Judged by blocks, not file names: a reopen
/// with another window size may legitimately reuse a pruned window's start for newer blocks.
pub fn resurrected(got: &State, pruned: &BTreeMap<u64, u64>) -> Vec<Failure> {
    let in_pruned = |b: u64| {
        pruned
            .range(..=b)
            .next_back()
            .filter(|(_, &end)| b < end)
            .map(|(&s, _)| s)
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for b in got.receipts.iter().map(|r| r.block_number) {
        if let Some(s) = in_pruned(b) {
            if seen.insert(s) {
                out.push(Failure::new(
                    Check::Files,
                    format!("block {b} of window {s}, durably pruned, came back"),
                ));
            }
        }
    }
    out
}

/// Liveness of prune, from the spec (6.2) and not the store's code: with `keep_recent` > 0 a
/// closed pair may go once every block it holds is below `latest - keep_recent`, which (as
/// rotation only fires at boundaries) is known once the next pair starts at or below that line;
/// the newest pair always stays. Returns the tracked pairs a finished prune left behind.
pub fn overdue_for_prune(closed: &[u64], latest: u64, keep_recent: u64) -> Vec<u64> {
    if keep_recent == 0 {
        return Vec::new();
    }
    let line = latest.saturating_sub(keep_recent);
    let mut sorted = closed.to_vec();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .filter(|w| w[1] <= line)
        .map(|w| w[0])
        .collect()
}

/// Liveness of the WAL after a clean close: every record is in a closed pair, so no segment
/// may hold a byte (the active segment a close leaves is empty).
pub fn wal_left_after_close(files: &BTreeMap<PathBuf, usize>, dir: &Path) -> Vec<Failure> {
    let left: Vec<String> = files
        .iter()
        .filter(|(p, b)| classify(dir, p) == FileKind::WalSegment && **b > 0)
        .map(|(p, b)| format!("{} ({b} bytes)", p.display()))
        .collect();
    if left.is_empty() {
        return Vec::new();
    }
    vec![Failure::new(
        Check::Liveness,
        format!(
            "a clean close left WAL records closed pairs cover: {}",
            left.join(", ")
        ),
    )]
}

/// Invariant 3 for `get_receipt` / `get_receipt_in_block`: the answer agrees with the model on
/// some prefix `k` in `lo..=hi` (acked before the call .. issued at the reply).
pub fn check_receipt_read(
    model: &Model,
    hash: &[u8; 32],
    asked_block: Option<u64>,
    got: Option<&ReceiptRecord>,
    lo: usize,
    hi: usize,
) -> Result<(), Failure> {
    let prunable = model.prunable();
    let all = model.find_all(hash);
    // The answer is the earliest block holding the hash among those the read may see: an
    // earlier occurrence may be missing only when it may have been pruned or was not yet acked
    // at the call. With `asked_block`, only that block's occurrence counts.
    let candidates: Vec<_> = all
        .iter()
        .filter(|(_, h, _)| asked_block.is_none_or(|b| b == *h))
        .copied()
        .collect();
    let found = match got {
        Some(r) => candidates
            .iter()
            .find(|(_, h, _)| *h == r.block_number)
            .or(candidates.first())
            .copied(),
        None => candidates
            .iter()
            .find(|(w, h, _)| *w < lo && !prunable(*h))
            .copied(),
    };
    let fail = |d: String| Err(Failure::new(Check::Read, d));
    if let Some(r) = got {
        if let Some((w, h, _)) = candidates
            .iter()
            .find(|(w, h, _)| *h < r.block_number && *w < lo && !prunable(*h))
        {
            return fail(format!(
                "get_receipt returned block {} but the hash is in block {h} too (write {w}, acked before the call)",
                r.block_number
            ));
        }
    }
    match (got, found) {
        (Some(r), None) => fail(format!(
            "get_receipt returned a receipt in block {} that was never written",
            r.block_number
        )),
        (Some(r), Some((w, h, input))) => {
            if w >= hi {
                return fail(format!(
                    "get_receipt saw write {w} (block {h}) before it was issued ({hi} issued)"
                ));
            }
            if r.block_number != h || r.receipt_bytes != input.receipt_bytes || &r.tx_hash != hash {
                return fail(format!(
                    "get_receipt returned block {} / {} bytes for a receipt written in block {h} with {} bytes",
                    r.block_number,
                    r.receipt_bytes.len(),
                    input.receipt_bytes.len()
                ));
            }
            if asked_block.is_some_and(|b| b != h) {
                return fail(format!(
                    "get_receipt_in_block({:?}) returned the receipt of block {h}",
                    asked_block
                ));
            }
            Ok(())
        }
        (None, Some((w, h, _))) if w < lo && !prunable(h) && asked_block.is_none_or(|b| b == h) => {
            fail(format!(
                "acked receipt of block {h} (write {w}, {lo} acked before the call) not found"
            ))
        }
        (None, _) => Ok(()),
    }
}

/// Invariant 3 for `get_logs`: the answer is the filtered model state on some prefix in
/// `lo..=hi`, in block / tx index / log index order, cut to the limit.
pub fn check_logs_read(
    model: &Model,
    filter: &LogFilter,
    got: &[LogRecord],
    lo: usize,
    hi: usize,
) -> Result<(), Failure> {
    let prunable = model.prunable();
    let tagged = model.tagged();
    let filtered: Vec<(usize, LogRecord)> = tagged
        .logs
        .into_iter()
        .filter(|(_, l)| crate::model::log_matches(filter, l))
        .collect();
    let ok = (lo..=hi).any(|k| {
        let e: Vec<LogRecord> = filtered
            .iter()
            .filter(|(w, _)| *w < k)
            .map(|(_, l)| l.clone())
            .collect();
        consistent(&e, got, filter.limit, &prunable)
    });
    if ok {
        return Ok(());
    }
    let expected_hi = filtered.iter().filter(|(w, _)| *w < hi).count();
    Err(Failure::new(
        Check::Read,
        format!(
            "get_logs {:?}..={:?} (addresses {}, topic positions {}, limit {:?}) returned {} logs; the model has {} at the reply and agrees at no prefix in {lo}..={hi}",
            filter.from_block,
            filter.to_block,
            filter.addresses.len(),
            filter.topics.len(),
            filter.limit,
            got.len(),
            expected_hi
        ),
    ))
}

/// What a file under the data directory is.
#[derive(Debug, PartialEq, Eq)]
pub enum FileKind {
    Receipts(u64),
    Logs(u64),
    WalSegment,
    WalScratch,
    Quarantined,
    Unknown,
}

/// A decimal block number with nothing else around it (no sign, no spaces, fits a u64).
fn block_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The directory layout, written here from the README and DESIGN (file names are a documented
/// contract: DuckDB users glob on them) rather than taken from the store's own parsers, so a
/// naming bug in the store cannot hide in the oracle. `sim/tests/layout.rs` checks the two
/// grammars agree on a fixed list of names.
pub fn classify(dir: &Path, path: &Path) -> FileKind {
    let Ok(rel) = path.strip_prefix(dir) else {
        return FileKind::Unknown;
    };
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        [name] => {
            // Under its final name, or while its pair is open under the name globs skip.
            let final_name = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".open"))
                .unwrap_or(name);
            let stem = final_name.strip_suffix(".parquet");
            match stem.and_then(|s| s.split_once('_')) {
                Some(("receipts", n)) => {
                    block_digits(n).map_or(FileKind::Unknown, FileKind::Receipts)
                }
                Some(("logs", n)) => block_digits(n).map_or(FileKind::Unknown, FileKind::Logs),
                _ => FileKind::Unknown,
            }
        }
        ["quarantine", _] => FileKind::Quarantined,
        ["wal", name] => match name.strip_suffix(".wal") {
            Some(n) if n.len() == 20 && block_digits(n).is_some() => FileKind::WalSegment,
            _ if *name == "rewrite.tmp" => FileKind::WalScratch,
            _ => FileKind::Unknown,
        },
        _ => FileKind::Unknown,
    }
}

/// Invariant 6, right after an open: every pair file has its partner; every pair on disk is
/// tracked (closed or open) or awaiting deletion; every tracked pair is on disk; no window the
/// model saw pruned durably is back; nothing else but WAL segments lives in the directory.
pub fn check_files(files: &BTreeMap<PathBuf, usize>, dir: &Path, status: &Status) -> Vec<Failure> {
    let mut out = Vec::new();
    let mut pairs: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for path in files.keys() {
        match classify(dir, path) {
            FileKind::Receipts(s) => pairs.entry(s).or_default().0 = true,
            FileKind::Logs(s) => pairs.entry(s).or_default().1 = true,
            FileKind::WalSegment | FileKind::WalScratch | FileKind::Quarantined => {}
            FileKind::Unknown if path.starts_with(dir) => out.push(Failure::new(
                Check::Files,
                format!("unexpected file {} after open", path.display()),
            )),
            FileKind::Unknown => {}
        }
    }
    let tracked: BTreeSet<u64> = status
        .closed_pairs
        .iter()
        .copied()
        .chain(status.open_pair)
        .collect();
    let mut untracked = 0;
    for (&start, &(r, l)) in &pairs {
        // A lone file is only acceptable as the remains of a pair whose deletion is pending
        // (counted below); open removes every other lone file.
        if !tracked.contains(&start) {
            untracked += 1;
        } else if !(r && l) {
            out.push(Failure::new(
                Check::Files,
                format!(
                    "lone {} file of tracked pair {start} after open",
                    if r { "receipts" } else { "logs" }
                ),
            ));
        }
    }
    if untracked > status.pending_deletes {
        out.push(Failure::new(
            Check::Files,
            format!(
                "{untracked} orphan or lone pair file set(s) on disk, neither tracked nor pending deletion ({} pending): on disk {:?}, tracked {:?}",
                status.pending_deletes,
                pairs.keys().collect::<Vec<_>>(),
                tracked
            ),
        ));
    }
    for s in &status.closed_pairs {
        if pairs.get(s) != Some(&(true, true)) {
            out.push(Failure::new(
                Check::Files,
                format!("tracked closed pair {s} is not on disk"),
            ));
        }
    }
    out
}

/// Invariant 6, inside a finished pair file: every row group's rows are in the order its
/// footer declares (`sorting_columns`, ascending; integers compared as numbers, binary columns
/// as bytes). Reads put what they return in `get_logs` order whatever the file holds, so only
/// this sees a flush that wrote rows out of the declared order, which other engines may trust.
/// Read with parquet's own reader, not the store's. A file that does not parse or decode is not
/// this check's business (rot is injected; reads and open judge damaged files).
pub fn check_declared_order(path: &Path, bytes: Vec<u8>) -> Vec<Failure> {
    use arrow_array::{Array, BinaryArray, UInt32Array, UInt64Array};
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ProjectionMask;
    let bytes = bytes::Bytes::from(bytes);
    // The footer is parsed once; each row group's reader starts from it.
    let Ok(footer) = ArrowReaderMetadata::load(&bytes, Default::default()) else {
        return Vec::new();
    };
    let meta = footer.metadata().clone();
    let schema = meta.file_metadata().schema_descr_ptr();
    let mut out = Vec::new();
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let Some(sorting) = rg.sorting_columns() else {
            out.push(Failure::new(
                Check::Files,
                format!("{} row group {g} declares no sort order", path.display()),
            ));
            continue;
        };
        if let Some(c) = sorting.iter().find(|c| c.descending) {
            out.push(Failure::new(
                Check::Files,
                format!(
                    "{} row group {g} declares column {} descending",
                    path.display(),
                    c.column_idx
                ),
            ));
            continue;
        }
        let columns: Vec<usize> = sorting.iter().map(|c| c.column_idx as usize).collect();
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), footer.clone())
                .with_row_groups(vec![g])
                .with_projection(ProjectionMask::leaves(&schema, columns.iter().copied()))
                .build();
        let Ok(reader) = reader else {
            return out;
        };
        // Each row's key: each sorting column's value as bytes that compare as the values do;
        // each compared with the row before it.
        let mut before: Option<Vec<Vec<u8>>> = None;
        let mut row = 0;
        'rows: for batch in reader {
            let Ok(batch) = batch else {
                return out;
            };
            let cols: Vec<&dyn Array> = columns
                .iter()
                .map(|&c| {
                    let name = schema.column(c).name().to_string();
                    batch.column_by_name(&name).map(|a| a.as_ref())
                })
                .collect::<Option<_>>()
                .expect("the projected sorting columns are in the batch");
            for i in 0..batch.num_rows() {
                let key: Vec<Vec<u8>> = cols
                    .iter()
                    .map(|col| {
                        let any = col.as_any();
                        if let Some(a) = any.downcast_ref::<BinaryArray>() {
                            a.value(i).to_vec()
                        } else if let Some(a) = any.downcast_ref::<UInt64Array>() {
                            a.value(i).to_be_bytes().to_vec()
                        } else if let Some(a) = any.downcast_ref::<UInt32Array>() {
                            a.value(i).to_be_bytes().to_vec()
                        } else {
                            panic!(
                                "a sorting column of an unexpected type: {:?}",
                                col.data_type()
                            )
                        }
                    })
                    .collect();
                if before.as_ref().is_some_and(|b| *b > key) {
                    out.push(Failure::new(
                        Check::Files,
                        format!(
                            "{} row group {g}: row {row} comes after row {} against the declared order (columns {columns:?})",
                            path.display(),
                            row - 1
                        ),
                    ));
                    break 'rows;
                }
                before = Some(key);
                row += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::receipts_for;
    use receipt_store::SyncPolicy;

    fn model(heights: &[u64]) -> Model {
        let mut m = Model::new(SyncPolicy::Always, 0);
        for &h in heights {
            let i = m.begin(h, receipts_for(1, h, 0, 2, 2));
            m.ack(i);
        }
        m
    }

    fn none(_: u64) -> bool {
        false
    }

    /// A parquet file of (address, block) rows declaring the order `sorting` (column indices),
    /// written by parquet's own writer.
    fn declared(rows: &[(u8, u64)], sorting: Option<&[i32]>) -> Vec<u8> {
        use arrow_array::{ArrayRef, BinaryArray, RecordBatch, UInt64Array};
        use parquet::arrow::ArrowWriter;
        use parquet::file::metadata::SortingColumn;
        use parquet::file::properties::WriterProperties;
        use std::sync::Arc;
        let address: Vec<[u8; 20]> = rows.iter().map(|&(a, _)| [a; 20]).collect();
        let batch = RecordBatch::try_from_iter([
            (
                "address",
                Arc::new(BinaryArray::from_iter_values(address.iter())) as ArrayRef,
            ),
            (
                "block_number",
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|&(_, b)| b))) as ArrayRef,
            ),
        ])
        .unwrap();
        let columns = sorting.map(|cs| {
            cs.iter()
                .map(|&column_idx| SortingColumn {
                    column_idx,
                    descending: false,
                    nulls_first: false,
                })
                .collect()
        });
        let props = WriterProperties::builder()
            .set_sorting_columns(columns)
            .build();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    #[test]
    fn rows_out_of_their_declared_order_are_a_files_failure_and_rows_in_it_are_not() {
        let path = Path::new("/data/logs_0.parquet");
        let sorted = [(1, 5), (2, 1), (2, 3)];
        assert_eq!(
            check_declared_order(path, declared(&sorted, Some(&[0, 1]))),
            vec![]
        );
        // Sorted by address, not by (block, address).
        let f = check_declared_order(path, declared(&sorted, Some(&[1, 0])));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].check, Check::Files);
        assert!(
            f[0].detail
                .contains("row 1 comes after row 0 against the declared order"),
            "{f:?}"
        );
        // Equal keys are in order; a tie broken the wrong way by the second column is not.
        let tie = [(2, 3), (2, 3), (2, 1)];
        let f = check_declared_order(path, declared(&tie, Some(&[0, 1])));
        assert!(f[0].detail.contains("row 2 comes after row 1"), "{f:?}");
        let f = check_declared_order(path, declared(&sorted, None));
        assert!(f[0].detail.contains("declares no sort order"), "{f:?}");
        // Bytes that are not parquet are for the checks that judge damaged files.
        assert_eq!(check_declared_order(path, b"not parquet".to_vec()), vec![]);
    }

    #[test]
    fn a_recovered_prefix_matches_and_a_hole_does_not() {
        let m = model(&[1, 2, 3, 4]);
        let t = m.tagged();
        assert_eq!(match_recovery(&t, &m.state(3), 2, 4, &none), Ok(3));
        // Drop block 2 from the full state: a hole.
        let mut holed = m.state(4);
        holed.receipts.retain(|r| r.block_number != 2);
        holed.logs.retain(|l| l.block_number != 2);
        let e = match_recovery(&t, &holed, 0, 4, &none).unwrap_err();
        assert_eq!(e.check, Check::Recovery);
    }

    #[test]
    fn losing_an_acked_write_fails_the_lower_bound() {
        let m = model(&[1, 2, 3]);
        assert!(match_recovery(&m.tagged(), &m.state(2), 3, 3, &none).is_err());
    }

    #[test]
    fn a_duplicated_receipt_is_a_phantom_and_no_prefix() {
        let m = model(&[1, 2]);
        let mut dup = m.state(2);
        dup.receipts.push(dup.receipts[0].clone());
        assert!(match_recovery(&m.tagged(), &dup, 0, 2, &none).is_err());
        assert!(phantoms(&m.tagged(), &dup)
            .iter()
            .any(|f| f.detail.contains("twice")));
    }

    #[test]
    fn pruned_blocks_may_be_missing_only_as_a_leading_run() {
        let m = model(&[1, 2, 3, 4]);
        let t = m.tagged();
        let prunable = |b: u64| b < 3;
        let mut pruned = m.state(4);
        pruned.receipts.retain(|r| r.block_number >= 2);
        pruned.logs.retain(|l| l.block_number >= 2);
        assert_eq!(match_recovery(&t, &pruned, 4, 4, &prunable), Ok(4));
        let mut middle = m.state(4);
        middle.receipts.retain(|r| r.block_number != 3);
        middle.logs.retain(|l| l.block_number != 3);
        assert!(match_recovery(&t, &middle, 4, 4, &prunable).is_err());
    }

    #[test]
    fn absent_writes_in_prunable_blocks_are_not_credited_to_the_store() {
        let m = model(&[1, 2]);
        let nothing = State::default();
        assert_eq!(
            match_recovery(&m.tagged(), &nothing, 0, 2, &|b| b < 5),
            Ok(0)
        );
    }

    #[test]
    fn a_read_may_see_an_in_flight_write_but_not_miss_an_acked_one() {
        let m = model(&[1, 2]);
        let t = m.state(2);
        let r1 = &t.receipts[0];
        let hash = r1.tx_hash;
        assert!(check_receipt_read(&m, &hash, None, Some(r1), 0, 2).is_ok());
        assert!(check_receipt_read(&m, &hash, None, None, 0, 2).is_ok());
        assert!(check_receipt_read(&m, &hash, None, None, 1, 2).is_err());
        assert!(check_receipt_read(&m, &hash, Some(2), Some(r1), 0, 2).is_err());
        assert!(check_receipt_read(&m, &[9; 32], None, Some(r1), 0, 2).is_err());
        let mut wrong = r1.clone();
        wrong.block_number = 7;
        assert!(check_receipt_read(&m, &hash, None, Some(&wrong), 0, 2).is_err());
    }

    #[test]
    fn get_logs_must_match_a_prefix_and_respect_the_limit() {
        let m = model(&[1, 2, 3]);
        let all = LogFilter::default();
        let logs = m.state(3).logs;
        assert!(check_logs_read(&m, &all, &logs, 3, 3).is_ok());
        assert!(check_logs_read(&m, &all, &logs[1..], 0, 3).is_err());
        let limited = LogFilter {
            limit: Some(2),
            ..Default::default()
        };
        assert!(check_logs_read(&m, &limited, &logs[..2], 3, 3).is_ok());
        assert!(check_logs_read(&m, &limited, &logs[..3], 3, 3).is_err());
    }

    #[test]
    fn failure_lines_carry_their_check() {
        let f = Failure::new(Check::Handles, "x");
        assert_eq!(Check::of(&f.to_string()), Some(Check::Handles));
    }
}
