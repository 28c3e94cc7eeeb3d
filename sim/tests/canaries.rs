//! Harness strength: every planted bug must be caught within 1,000 seeds of the scenario that
//! exercises it. Runs only with `--features canary` (the README test command enables it).
#![cfg(feature = "canary")]

use receipt_sim::exec::run_plan;
use receipt_sim::plan::{generate, load_scenario};
use receipt_store::canary::{self, Canary};

/// Seeds tried per canary before declaring the harness too weak.
const MAX_SEEDS: u64 = 1_000;

fn first_catch(c: Canary, scenario: &str) -> Option<(u64, String)> {
    let sc = load_scenario(scenario).unwrap();
    // Each canary runs on its own thread: the selection is per thread.
    std::thread::spawn(move || {
        canary::set(Some(c));
        (0..MAX_SEEDS).find_map(|seed| {
            run_plan(&generate(seed, &sc), false)
                .failures
                .first()
                .map(|f| (seed, f.clone()))
        })
    })
    .join()
    .unwrap()
}

fn assert_caught(c: Canary, scenario: &str) {
    match first_catch(c, scenario) {
        Some((seed, why)) => {
            eprintln!("{c:?} caught by {scenario} seed {seed}: {why}");
            let sc = load_scenario(scenario).unwrap();
            let clean = run_plan(&generate(seed, &sc), false);
            assert!(
                clean.failures.is_empty(),
                "seed {seed} fails without the canary too: {:?}",
                clean.failures
            );
        }
        None => panic!("{c:?} survived {MAX_SEEDS} seeds of {scenario}"),
    }
}

/// `c` is caught in the default scenario first by the check that closed files hold their rows
/// in the order they declare (reads sort what they return and cannot see such a bug).
fn assert_caught_by_the_file_order_check(c: Canary) {
    let (_, why) = first_catch(c, "default").expect("caught");
    assert!(
        why.starts_with("[files]") && why.contains("against the declared order"),
        "{why}"
    );
}

#[test]
fn the_leaked_handle_is_reported_as_a_leak() {
    let (_, why) = first_catch(Canary::LeakHandleOnFailedOpen, "crash-storm").expect("caught");
    assert!(why.contains("handles left open"), "{why}");
}

#[test]
fn acking_before_the_wal_fsync_is_caught() {
    assert_caught(Canary::AckBeforeWalFsync, "power-loss");
}

#[test]
fn skipping_the_directory_sync_at_rotation_is_caught() {
    assert_caught(Canary::SkipRotationDirSync, "power-loss");
}

#[test]
fn dropping_wal_records_before_the_closed_pair_is_durable_is_caught() {
    assert_caught(Canary::DropWalBeforePairDurable, "power-loss");
}

#[test]
fn trusting_a_retried_fsync_is_caught() {
    assert_caught(Canary::TrustRetriedFsync, "fsync-failure");
}

#[test]
fn keeping_the_last_wal_segment_unrewritten_at_open_is_caught() {
    assert_caught(Canary::TrustEverySegmentDurable, "fsync-failure");
}

#[test]
fn an_off_by_one_at_the_replay_boundary_is_caught() {
    assert_caught(Canary::ReplayBoundaryOffByOne, "crash-storm");
}

#[test]
fn a_handle_leaked_by_a_failed_open_is_caught() {
    assert_caught(Canary::LeakHandleOnFailedOpen, "crash-storm");
}

#[test]
fn deleting_files_under_a_live_read_snapshot_is_caught() {
    let (_, why) =
        first_catch(Canary::DeleteUnderLiveSnapshot, "readers-vs-prune").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
    assert_caught(Canary::DeleteUnderLiveSnapshot, "readers-vs-prune");
}

#[test]
fn a_directory_sync_moved_after_the_wal_drop_within_rotation_is_caught() {
    assert_caught(Canary::DirSyncAfterWalDrop, "power-loss");
}

#[test]
fn a_missing_topic_position_matching_is_caught_by_the_independent_oracle() {
    let (_, why) = first_catch(Canary::MissingTopicMatches, "default").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
}

#[test]
fn a_zero_height_sentinel_is_caught() {
    assert_caught(Canary::ZeroHeightSentinel, "edges");
}

/// An open that appends to a WAL segment without syncing it and its directory leaves state a
/// power loss would undo; the durability check after every open says so directly, long before
/// a power loss happens to land on it (which took 13,000 seeds of CI to find).
#[test]
fn reusing_a_wal_segment_without_syncing_it_is_caught_as_undurable() {
    let (_, why) = first_catch(Canary::SkipReusedSegmentSync, "crash-storm").expect("caught");
    assert!(why.starts_with("[durability]"), "{why}");
}

/// Rows written to the open pair's unfinished files are read back from there, not from memory:
/// a snapshot that leaves out the newest written row group loses acked rows, and a reader
/// checked against the model says so.
#[test]
fn a_snapshot_missing_the_newest_open_row_group_is_caught_by_a_reader() {
    let (_, why) = first_catch(Canary::SkipNewestOpenRowGroup, "default").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
}

/// Closed files are pruned page by page on their column index: a comparison that treats a
/// page's minimum as exclusive skips the page where the asked-for address starts, and a reader
/// checked against the model misses its rows.
#[test]
fn pruning_a_page_that_starts_with_the_wanted_value_is_caught_by_a_reader() {
    let (_, why) = first_catch(Canary::PageMinExclusive, "default").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
}

/// A read fetches and hands its row groups to the decoders a job at a time: a job given the
/// page selections of other groups skips pages its own groups needed, and a reader checked
/// against the model misses their rows.
#[test]
fn a_decode_job_pruned_by_another_jobs_pages_is_caught_by_a_reader() {
    let (_, why) = first_catch(Canary::JobPagesFromFirstRun, "default").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
}

/// Open's WAL rewrite keeps the segments it replaced open until the write lane frees them: a
/// store that never closes them leaks a handle per replaced segment, and the handle count
/// after close says so.
#[test]
fn never_closing_the_wal_segments_a_rewrite_replaced_is_caught_as_a_leak() {
    let (_, why) = first_catch(Canary::LeakReplacedWalSegments, "crash-storm").expect("caught");
    assert!(why.contains("handle"), "{why}");
}

/// A flush that sorts a logs row group by address alone writes it out of the order its footer
/// declares; reads sort what they return and cannot see it, the file check after each open
/// does.
#[test]
fn a_row_group_sorted_by_a_partial_key_is_caught_by_the_file_order_check() {
    assert_caught_by_the_file_order_check(Canary::PartialKeyRowSort);
}

/// A flush's row groups are encoded on the write lane while the coordinator serves the next
/// requests; its rows must stay readable from memory until they are appended. A chunk that
/// leaves what reads see when its encoding starts is missed by a reader that comes meanwhile.
#[test]
fn a_chunk_unpublished_while_its_row_groups_are_encoded_is_caught_by_a_reader() {
    let (_, why) = first_catch(Canary::ChunkUnpublishedWhileEncoding, "default").expect("caught");
    assert!(why.starts_with("[read]"), "{why}");
}

/// The flush's sort before b584cbe compared address and topic0 prefixes before the full values:
/// the model's addresses share their first 8 bytes (as precompiles do), so its row groups land
/// out of their declared order, which the file order check after each open sees.
#[test]
fn a_sort_by_address_and_topic0_prefixes_is_caught_by_the_file_order_check() {
    assert_caught_by_the_file_order_check(Canary::PrefixPairRowSort);
}

#[test]
fn without_a_canary_the_same_seeds_pass() {
    let sc = load_scenario("power-loss").unwrap();
    for seed in 0..50 {
        let o = run_plan(&generate(seed, &sc), false);
        assert!(o.failures.is_empty(), "seed {seed}: {:?}", o.failures);
    }
}
