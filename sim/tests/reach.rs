//! Proof of reach: every scenario names the coverage marks it exists to reach (`claims` in its
//! file), and a campaign in which a claimed mark is never hit fails. CI runs 1,000 seeds of each
//! scenario in release (`receipt-sim run` exits 1 on an unreached claim); this test runs the
//! first [`SEEDS`] seeds of each in the test build, so a change that loses reach fails here too.

use receipt_sim::exec::run_plan;
use receipt_sim::plan::{generate, load_scenario, scenario_names};
use receipt_sim::report::Summary;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seeds per scenario in the test build.
const SEEDS: u64 = 100;

fn campaign(name: &str) -> Summary {
    let sc = load_scenario(name).unwrap();
    let next = AtomicU64::new(0);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= SEEDS {
                    break;
                }
                let o = run_plan(&generate(seed, &sc), false);
                outcomes.lock().unwrap().push(o);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| o.seed);
    let mut summary = Summary {
        scenario: name.to_string(),
        ..Default::default()
    };
    for o in &outcomes {
        summary.add(o);
    }
    summary.check_claims(&sc.claims);
    summary
}

#[test]
fn every_scenario_claims_only_marks_the_store_has() {
    for name in scenario_names() {
        let sc = load_scenario(&name).unwrap();
        for c in &sc.claims {
            assert!(
                receipt_store::marks::known(c),
                "{name} claims unknown mark {c:?}"
            );
        }
    }
}

#[test]
fn every_mark_is_claimed_by_some_scenario_or_listed_as_unreachable_here() {
    let claimed: Vec<String> = scenario_names()
        .iter()
        .flat_map(|n| load_scenario(n).unwrap().claims)
        .collect();
    let unclaimed: Vec<&str> = receipt_store::marks::ALL
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !claimed.iter().any(|c| c == n) && !NOT_REACHED_BY_THE_SIMULATOR.contains(n))
        .collect();
    assert!(
        unclaimed.is_empty(),
        "marks no scenario claims: {unclaimed:?}"
    );
}

/// Marks the simulator does not reach today, each with the reason (the closing note of issue 11
/// carries them too). Store tests reach them instead.
const NOT_REACHED_BY_THE_SIMULATOR: &[&str] = &[
    // Files no crash leaves: an open-named file beside a complete pair, or a final-named file
    // without a footer (a directory written before open names existed).
    "open-stray-open-file-quarantined",
    "open-unfinished-pair-removed",
    // Reached, but by fewer than 10% of seeds (too rare to claim for the test build's seeds):
    // wal-duplicate-record-merged 0.3-1%, open-lone-pair-file-quarantined 0.5-3%,
    // wal-covered-corruption-quarantined 3% of wal-rot (a rotted record only closed files need),
    // quarantine-failed-copy-removed 2-2.4% of default, disk-full and power-loss,
    // wal-record-reencoded-at-open 4% of wal-rot and 1% of bit-rot (rot in the trailer of a
    // record that is not the last; store test
    // the_rewrite_at_open_copies_exact_frames_and_repairs_a_rotted_trailer reaches it).
    "wal-record-reencoded-at-open",
    "wal-duplicate-record-merged",
    "quarantine-failed-copy-removed",
    "open-lone-pair-file-quarantined",
    "wal-covered-corruption-quarantined",
    // read-page-checksum-failed: 1% of bit-rot seeds (a flip inside a page a page-selected read
    // decodes; store test a_rotted_page_fails_the_reads_that_decode_it_and_only_those);
    // read-decode-backpressure: 2.4% of default seeds (a file read with more than 4 waiting
    // decode jobs needs 9 or more candidate row groups in one file).
    "read-page-checksum-failed",
    "read-decode-backpressure",
];

#[test]
fn every_scenario_reaches_every_mark_it_claims() {
    let mut missed = Vec::new();
    for name in scenario_names() {
        let s = campaign(&name);
        assert_eq!(
            s.failures,
            0,
            "{name}: {:?}",
            s.failing.first().map(|f| &f.first_failure)
        );
        if !s.unreached_claims.is_empty() {
            missed.push(format!("{name}: {:?}", s.unreached_claims));
        }
    }
    assert!(
        missed.is_empty(),
        "claimed marks never hit in {SEEDS} seeds: {missed:?}"
    );
}
