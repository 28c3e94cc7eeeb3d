//! The real-process crash campaign: plans run in child processes on real directories, killed
//! with SIGKILL, and checked by the simulator's model. These tests run the built `receipt-sim`
//! binary as the child (and, for the campaign, as the parent too).

use receipt_sim::model::Model;
use receipt_sim::plan::{Op, Plan, Swarm};
use receipt_sim::realproc::{run_real_plan, RealOptions, RealOutcome, RealSummary};
use receipt_store::SyncPolicy;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const EXE: &str = env!("CARGO_BIN_EXE_receipt-sim");

/// Seeds and kills of the short campaign: a few seconds in a debug build.
const CAMPAIGN_SEEDS: u64 = 3;
const CAMPAIGN_KILLS: usize = 4;

/// Fields of the JSON report the campaign test reads.
fn field(report: &serde_json::Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("report field {name} missing: {report}"))
}

// A short campaign through the CLI, both policies: every seed is killed the number of times it
// claims, every recovery is checked, and nothing fails.
#[test]
fn a_short_campaign_kills_children_under_both_policies_and_finds_no_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("real.json");
    let out = Command::new(EXE)
        .args(["real", "--seed", "100", "--policy", "both"])
        .args(["--seeds", &CAMPAIGN_SEEDS.to_string()])
        .args(["--kills", &CAMPAIGN_KILLS.to_string()])
        .arg("--work-dir")
        .arg(tmp.path())
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "campaign failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(field(&r, "runs"), 2 * CAMPAIGN_SEEDS, "{r}");
    assert_eq!(field(&r, "failed"), 0, "{r}");
    let kills = field(&r, "kills");
    assert!(kills > 0, "no child was killed: {r}");
    assert!(kills <= 2 * CAMPAIGN_SEEDS * CAMPAIGN_KILLS as u64, "{r}");
    // What the kills landed in adds up to the kills counted from the children's exit statuses.
    let during: u64 = r["kills_during"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(during, kills, "{r}");
    // One check after every kill and every clean close, and each ran on recovered data.
    assert_eq!(
        field(&r, "checks"),
        kills + field(&r, "clean_closes"),
        "{r}"
    );
    assert!(field(&r, "writes_acked") > 0, "{r}");
    assert!(field(&r, "recovered_blocks") > 0, "{r}");
    assert!(stdout.contains("base seed 100"), "{stdout}");
    // Passing runs leave no directory behind.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A plan of `writes` one-block writes at heights 1.. under `window` blocks per file, no
/// pruning: every acked block must come back.
fn writes_plan(seed: u64, writes: u64, window: u64) -> Plan {
    Plan {
        seed,
        scenario: "hand-written".into(),
        swarm: Swarm {
            max_blocks_per_file: window,
            block_flush_interval: 1,
            keep_recent: 0,
            prune_interval_ms: 1_000,
            sync_policy: SyncPolicy::Always,
            torn_bytes: 0,
            readers: 0,
            weights: Default::default(),
            fs_faults: vec![],
            time_jump_per_mille: 0,
            index_cache_files: 64,
            page_rows: receipt_store::Config::default().page_rows,
        },
        ops: (1..=writes)
            .map(|height| Op::Write {
                height,
                first_tx: 0,
                receipts: 2,
                logs: 1,
                dup_hash_of: None,
                at_limit: false,
            })
            .collect(),
        reason: String::new(),
        reaches: Vec::new(),
        fault_salt: 0,
    }
}

fn run_with(
    plan: &Plan,
    kills: usize,
    damage: &(dyn Fn(&Path, usize, &Model) + Sync),
) -> RealOutcome {
    let tmp = tempfile::tempdir().unwrap();
    let opts = RealOptions {
        exe: EXE.into(),
        kills,
        work_dir: tmp.path().to_path_buf(),
        keep_failed: false,
    };
    run_real_plan(plan, &opts, Some(damage))
}

fn pair_starts(data: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("receipts_")?
                .strip_suffix(".parquet")?
                .parse()
                .ok()
        })
        .collect();
    starts.sort();
    starts
}

// The check can fail: WAL segments removed between a kill and the reopen lose acked writes of
// the open window, and the recovery check says so.
#[test]
fn a_wal_removed_between_kill_and_reopen_is_reported_as_lost_acked_writes() {
    // One window for the whole plan: every acked write lives only in the WAL.
    let plan = writes_plan(7, 40, 1_000);
    let damaged = AtomicUsize::new(0);
    let damage = |data: &Path, _kill: usize, model: &Model| {
        if model.acked_count() == 0 || damaged.load(Ordering::Relaxed) > 0 {
            return;
        }
        for e in std::fs::read_dir(data.join("wal")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        damaged.fetch_add(1, Ordering::Relaxed);
    };
    let o = run_with(&plan, 3, &damage);
    assert_eq!(
        damaged.load(Ordering::Relaxed),
        1,
        "no kill after an ack: {o:?}"
    );
    let first = o
        .failures
        .first()
        .unwrap_or_else(|| panic!("not caught: {o:?}"));
    eprintln!("caught after {} kill(s): {first}", o.kills);
    assert!(first.starts_with("[recovery]"), "{first}");
}

// The check can fail: a closed pair removed between a kill and the reopen loses acked blocks
// that had left the WAL, and the recovery check says so.
#[test]
fn a_closed_pair_removed_between_kill_and_reopen_is_reported_as_lost_acked_blocks() {
    // Windows of 4 blocks: by the first kill after the first rotation, blocks 1..=3 sit in the
    // closed pair starting at 0 and nowhere else.
    let plan = writes_plan(8, 40, 4);
    let damaged = AtomicUsize::new(0);
    let damage = |data: &Path, _kill: usize, _: &Model| {
        let starts = pair_starts(data);
        // Two pairs on disk: the lower one is closed (the open pair is the newest).
        if starts.len() < 2 || damaged.load(Ordering::Relaxed) > 0 {
            return;
        }
        for kind in ["receipts", "logs"] {
            std::fs::remove_file(data.join(format!("{kind}_{}.parquet", starts[0]))).unwrap();
        }
        damaged.fetch_add(1, Ordering::Relaxed);
    };
    let o = run_with(&plan, 4, &damage);
    assert_eq!(
        damaged.load(Ordering::Relaxed),
        1,
        "no kill after a rotation: {o:?}"
    );
    let first = o
        .failures
        .first()
        .unwrap_or_else(|| panic!("not caught: {o:?}"));
    eprintln!("caught after {} kill(s): {first}", o.kills);
    assert!(first.starts_with("[recovery]"), "{first}");
}

// The same plans without damage pass: the failures above come from the damage alone.
#[test]
fn the_hand_written_plans_pass_when_nothing_is_damaged() {
    for plan in [writes_plan(7, 40, 1_000), writes_plan(8, 40, 4)] {
        let o = run_with(&plan, 3, &|_: &Path, _: usize, _: &Model| {});
        assert!(o.failures.is_empty(), "{o:?}");
        assert!(o.kills > 0, "{o:?}");
        assert_eq!(o.checks, o.kills + o.clean_closes, "{o:?}");
    }
}

#[test]
fn a_failing_run_gets_a_one_line_reproduction() {
    let mut s = RealSummary {
        kills_per_seed: receipt_sim::realproc::DEFAULT_KILLS,
        ..Default::default()
    };
    s.add(
        &RealOutcome {
            seed: 12,
            policy: "never".into(),
            scenario: receipt_sim::realproc::DEFAULT_SCENARIO.into(),
            failures: vec!["[recovery] x".into()],
            ..Default::default()
        },
        Some("abc123"),
    );
    assert_eq!(s.failed, 1);
    assert_eq!(s.failures_by_check.get("recovery"), Some(&1));
    assert_eq!(
        s.failing[0].repro,
        "cargo run --release -p receipt-sim -- real --seed 12 --seeds 1 --policy never   # at commit abc123"
    );
}

// Harness strength on a real directory: a store bug, not only damage, is caught. The planted
// replay bug skips the WAL record at the open window's first block; it is active on this
// thread, where the parent opens and checks the directory after each kill (the children replay
// correctly), and the check finds the acked block missing.
#[cfg(feature = "canary")]
#[test]
fn a_replay_that_skips_the_window_start_record_is_caught_after_a_kill() {
    use receipt_store::canary::{self, Canary};
    canary::set(Some(Canary::ReplayBoundaryOffByOne));
    let o = run_with(
        &writes_plan(9, 40, 4),
        4,
        &|_: &Path, _: usize, _: &Model| {},
    );
    canary::set(None);
    let first = o
        .failures
        .first()
        .unwrap_or_else(|| panic!("not caught: {o:?}"));
    eprintln!("caught after {} kill(s): {first}", o.kills);
    assert!(o.kills > 0, "{o:?}");
    assert!(first.starts_with("[recovery]"), "{first}");
}
