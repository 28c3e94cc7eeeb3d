//! Coverage marks: named points on store paths worth reaching (TigerBeetle's idea). A passing
//! simulation seed proves nothing about a path it never took; each scenario names the marks it
//! exists to reach, and the simulator fails a campaign in which a claimed mark is never hit.
//!
//! `mark!("name")` compiles to nothing without the `marks` feature. With it, hits are counted per
//! thread (the simulator runs each seed on one thread, so parallel seeds never mix their counts),
//! and [`take`] hands them to the run that caused them.
//!
//! Every name used in `store/src` is listed once in [`ALL`] with what reaching it means; a test
//! keeps the list and the code in step.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Every mark, with the path it stands for.
pub const ALL: &[(&str, &str)] = &[
    // Write path.
    ("write-rejected-non-monotonic", "a non-empty write below the last seen block is refused"),
    ("write-rejected-sealed", "a late write into a window already sealed in a closed pair is refused"),
    ("write-rejected-invalid", "malformed input (size or topic count) is refused before the WAL"),
    ("write-same-block-continues-log-index", "a second write to the same block continues its log indices"),
    ("write-empty-block-observed", "an empty block moves the last seen block forward"),
    ("write-empty-block-stale", "an empty block at or below the last seen block is a no-op"),
    ("rotate-on-write", "a non-empty write at a window boundary rotates the open pair"),
    ("rotate-on-empty-boundary", "an empty block at a window boundary rotates the open pair"),
    ("pair-opened", "a new open pair is created"),
    ("flush-automatic", "the block flush interval writes a row group"),
    ("flush-explicit", "an explicit flush() writes a row group"),
    ("flush-sealed-at-replay", "replay seals a row group's rows without encoding them (open returns sooner)"),
    ("flush-backlog-written", "between requests, the coordinator appends a sealed chunk's row groups the write lane encoded"),
    ("flush-overlapped-request", "a request is served while the write lane encodes a sealed chunk's row groups"),
    ("finalize-failed-cleanup", "finalizing a pair failed and its half-written files are removed"),
    // Poisoning, by cause.
    ("poison-write", "a failure after the WAL append poisons the store"),
    ("poison-empty-rotation", "a failed rotation on an empty boundary poisons the store"),
    ("poison-flush", "a failed explicit flush poisons the store"),
    ("poison-flush-after-ack", "writing the row groups a write sealed fails after its ack and poisons the store"),
    ("poison-backlog", "a failed write of a sealed row group, between requests or before a status, poisons the store"),
    ("poisoned-call-refused", "a call on a poisoned store is refused until reopen"),
    // Close.
    ("close-finalized", "close finalizes a non-empty open pair"),
    ("close-discarded-empty", "close discards an open pair that holds no rows"),
    ("close-discarded-poisoned", "close on a poisoned store discards the open pair"),
    ("close-discarded-after-failed-finalize", "close falls back to discarding when finalizing fails"),
    ("crash-dropped-state", "crash() drops the open pair and the WAL without finalizing"),
    // Prune.
    ("prune-untracked", "a pass untracks a window wholly below the retention line"),
    ("prune-deferred-for-snapshot", "deleting a pruned pair waits because a live read holds it"),
    ("prune-deleted", "a pruned pair's files are deleted"),
    ("prune-delete-retried", "a pair whose delete was deferred or failed is deleted on a later pass"),
    ("prune-delete-failed", "deleting a pruned pair failed and is kept for a retry"),
    ("prune-skipped-poisoned", "a poisoned store does not prune"),
    // WAL.
    ("wal-roll", "the WAL starts a new segment"),
    ("wal-segments-dropped", "WAL segments covered by a durable pair are removed"),
    ("wal-torn-tail-cut", "open cuts a torn tail off the last WAL segment"),
    ("wal-corrupt-tail-quarantined", "open keeps a complete but corrupt last WAL record in quarantine and reports it"),
    ("wal-covered-corruption-quarantined", "open keeps corrupt WAL bytes that closed pairs cover in quarantine and goes on"),
    ("wal-duplicate-record-merged", "identical records under one sequence number are read once"),
    ("wal-rewritten-at-open", "open rewrites the needed records not known durable into a fresh fsynced segment"),
    ("wal-durable-segments-kept-at-open", "open keeps WAL segments a rolled successor proves durable instead of rewriting them"),
    ("wal-record-reencoded-at-open", "the rewrite at open encodes a v1 frame, or a v2 frame with a damaged trailer, anew"),
    (
        "quarantine-failed-copy-removed",
        "a quarantine copy whose write or fsync failed is removed, so only a retry's copy is kept",
    ),
    (
        "wal-reused-segment-made-durable",
        "open appends to a segment without records and syncs it and its directory first",
    ),
    ("wal-corrupt-record-refused", "a bad record before the tail fails the open, naming file and offset"),
    // Open and replay.
    ("open-lone-pair-file", "open finds a pair file whose partner is missing"),
    ("open-lone-pair-file-quarantined", "open moves a finished lone pair file no WAL record covers to quarantine"),
    ("open-rename-completed", "open completes a finalization a crash cut between its two renames"),
    ("open-open-pair-discarded", "open deletes the open-named files of a crashed store's open pair (its rows are in the WAL)"),
    ("open-stray-open-file-quarantined", "open moves an open-named file no crash can leave to quarantine"),
    ("open-unfinished-pair-removed", "open removes an unfinished trailing pair whose rows the WAL holds"),
    ("open-corrupt-closed-file", "open refuses a finalized pair file whose checksum fails"),
    ("wal-records-below-floor-dropped", "open drops WAL records below the replay floor (held by closed pairs or pruned)"),
    ("replay-rotated", "replay crosses a window boundary and finalizes a pair"),
    ("replay-applied", "replay stages at least one record into the open window"),
    ("replay-failed-cleanup", "a failed replay removes everything it produced"),
    // Reads.
    ("read-open-window", "a read scans open-window rows still in memory (unwritten chunks or the buffer)"),
    ("read-open-file", "a read fetches row groups already written to the open pair's unfinished files"),
    ("read-decoded-in-parallel", "a read splits one file's row groups into jobs decoded at once"),
    ("read-page-verified", "a read verifies only the pages it decodes of a row group, by their own checksums"),
    ("read-page-checksum-failed", "a rotted page a read decodes is refused by its page checksum"),
    ("read-decode-backpressure", "a read with its most decode jobs waiting awaits the oldest before reading more"),
    ("read-row-group-skipped", "a read skips a row group by its statistics or bloom filter"),
    ("read-page-skipped", "a read skips pages of a closed file by its column index's per-page min/max"),
    ("read-page-index-checksum-failed", "a file's page indexes fail their checksum and the read is refused"),
    ("open-footer-checksum-failed", "a file whose footer checksum fails is refused, naming it"),
    ("read-row-group-checksum-failed", "a row group whose checksum fails fails its read"),
    ("read-index-cache-evicted", "the file index cache evicts its least recently used entry"),
    ("read-limit-reached", "get_logs stops at its limit"),
];

thread_local! {
    static HITS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts one hit of `name` on this thread. Called through `mark!`.
pub fn hit(name: &'static str) {
    debug_assert!(
        ALL.iter().any(|(n, _)| *n == name),
        "mark {name:?} is not listed in marks::ALL"
    );
    HITS.with(|h| *h.borrow_mut().entry(name).or_insert(0) += 1);
}

/// The hits counted on this thread since the last call, and clears them.
pub fn take() -> BTreeMap<&'static str, u64> {
    HITS.with(|h| std::mem::take(&mut *h.borrow_mut()))
}

/// Whether `name` is a mark the store knows.
pub fn known(name: &str) -> bool {
    ALL.iter().any(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn marks_in(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                marks_in(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("marks.rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for piece in text.split("mark!(\"").skip(1) {
                    let name = piece.split('"').next().unwrap();
                    out.insert(name.to_string());
                }
            }
        }
    }

    #[test]
    fn every_mark_in_the_code_is_listed_and_every_listed_mark_is_in_the_code() {
        let mut used = BTreeSet::new();
        marks_in(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut used,
        );
        let listed: BTreeSet<String> = ALL.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(ALL.len(), listed.len(), "a mark is listed twice");
        let unlisted: Vec<_> = used.difference(&listed).collect();
        let unused: Vec<_> = listed.difference(&used).collect();
        assert!(
            unlisted.is_empty(),
            "marks used but not listed: {unlisted:?}"
        );
        assert!(
            unused.is_empty(),
            "marks listed but never placed: {unused:?}"
        );
    }

    #[test]
    fn hits_are_counted_per_thread_and_taken_once() {
        hit("wal-roll");
        hit("wal-roll");
        let other = std::thread::spawn(|| {
            hit("pair-opened");
            take()
        })
        .join()
        .unwrap();
        assert_eq!(other.get("pair-opened"), Some(&1));
        assert_eq!(other.get("wal-roll"), None);
        let mine = take();
        assert_eq!(mine.get("wal-roll"), Some(&2));
        assert!(take().is_empty());
    }
}
