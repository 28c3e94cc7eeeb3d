//! The exhaustive crash explorer (`receipt-sim explore`): it visits every crash point of the ops
//! it targets and stops where an op makes no more filesystem calls, passes on the store as it
//! is, gives the same counts on any number of threads, and fails when a planted bug is active.

use receipt_sim::explore::{explore, select_cases, Bounds, Case, Report};

/// Bounds small enough for a debug build: every crash point, few power-loss images each.
fn small() -> Bounds {
    Bounds {
        crash_point_max: 64,
        salts_max: 3,
        salts_stall_max: 2,
    }
}

fn cases(names: &[&str]) -> Vec<Case> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    select_cases(&names).unwrap()
}

fn explore_quietly(cases: &[Case], bounds: &Bounds, jobs: usize) -> Report {
    explore(cases, bounds, jobs, &|| {})
}

// A short exploration around rotation and flushing visits states, reaches what its cases claim,
// and finds no failure in the store as it is.
#[test]
fn a_small_exploration_visits_states_and_finds_no_failure() {
    let cs = cases(&["rotate-write/always", "flush/never"]);
    let r = explore_quietly(&cs, &small(), 2);
    assert_eq!(r.failures, 0, "{:#?}", r.found);
    assert!(r.unreached_claims.is_empty(), "{:?}", r.unreached_claims);
    assert_eq!(r.cases.len(), 2);
    for c in &r.cases {
        assert_eq!(c.truncated_ops, 0, "{}: an op was cut", c.case);
        // At least one crash point inside each op, and the one after its last call.
        assert!(c.crash_points > 2 * c.ops as u32, "{c:?}");
        assert_eq!(c.process_crash_states, c.crash_points as usize, "{c:?}");
        assert!(c.power_loss_images >= c.crash_points as usize, "{c:?}");
        assert_eq!(c.states, c.process_crash_states + c.power_loss_images);
    }
    assert_eq!(r.states, r.cases.iter().map(|c| c.states).sum::<usize>());
    assert!(r.states > 0);
}

// The exploration is deterministic: one thread or two, the same states and counts.
#[test]
fn the_counts_do_not_depend_on_the_thread_count() {
    let cs = cases(&["prune/never"]);
    let rows = |r: &Report| {
        let mut v = serde_json::to_value(&r.cases).unwrap();
        for row in v.as_array_mut().unwrap() {
            row.as_object_mut().unwrap().remove("seconds");
        }
        v
    };
    let one = explore_quietly(&cs, &small(), 1);
    let two = explore_quietly(&cs, &small(), 2);
    assert_eq!(rows(&one), rows(&two));
    assert!(one.states > 0);
}

// An op that makes no disk-changing call has exactly one crash point: after it.
#[test]
fn a_read_has_no_crash_point_inside_it() {
    let mut c = cases(&["rotate-write/always"]).remove(0);
    let read = c
        .plan
        .ops
        .iter()
        .position(|op| op.kind_name() == "read_receipt")
        .expect("the case reads");
    c.targets = vec![read];
    let r = explore_quietly(&[c], &small(), 1);
    let row = &r.cases[0];
    assert_eq!(row.crash_points, 1, "{row:?}");
    assert_eq!(row.process_crash_states, 1, "{row:?}");
    assert_eq!(r.failures, 0, "{:#?}", r.found);
}

// A bound below the number of calls an op makes cuts its exploration, and says so.
#[test]
fn a_crash_point_bound_below_an_ops_calls_is_reported_as_cut() {
    let cs = cases(&["rotate-write/always"]);
    let bounds = Bounds {
        crash_point_max: 2,
        salts_max: 1,
        salts_stall_max: 1,
    };
    let r = explore_quietly(&cs, &bounds, 1);
    let row = &r.cases[0];
    assert_eq!(row.truncated_ops, 1, "{row:?}");
    // Crash points after 0, 1 and 2 calls; the one after the op's last call is never reached.
    assert_eq!(row.crash_points, 3, "{row:?}");
}

// The cases stay short plans, each crashing inside at least one op, each family under both sync
// policies, and every mark a case claims exists in the store (a misspelt claim could never be
// reached, but it should fail here, not in CI's exploration).
#[test]
fn every_case_is_short_targets_an_op_and_claims_known_marks() {
    let all = receipt_sim::explore::cases();
    let known: Vec<&str> = receipt_store::marks::ALL.iter().map(|(n, _)| *n).collect();
    let mut names = std::collections::BTreeSet::new();
    for c in &all {
        assert!(names.insert(c.name.clone()), "{} twice", c.name);
        assert!(
            c.plan.ops.len() <= 12,
            "{}: {} ops",
            c.name,
            c.plan.ops.len()
        );
        assert!(!c.targets.is_empty(), "{}", c.name);
        assert!(!c.claims.is_empty(), "{} claims no mark", c.name);
        for m in &c.claims {
            assert!(known.contains(m), "{} claims unknown mark {m}", c.name);
        }
    }
    for c in &all {
        let (family, _) = c.name.split_once('/').expect("family/policy");
        for policy in ["always", "never"] {
            assert!(
                names.contains(&format!("{family}/{policy}")),
                "{family}/{policy}"
            );
        }
    }
}

#[test]
fn an_unknown_case_name_is_refused_with_the_known_names() {
    let e = select_cases(&["no-such-case".to_string()]).unwrap_err();
    assert!(e.contains("rotate-write/always"), "{e}");
}

/// Planted bugs the explorer must find (`--features canary`).
#[cfg(feature = "canary")]
mod canaries {
    use super::*;
    use receipt_sim::exec::run_plan;
    use receipt_store::canary::{self, Canary};

    /// Explores with `bug` active on every worker thread, and checks that a failure is found
    /// and that its plan passes without the bug.
    fn assert_found(bug: Canary, names: &[&str]) {
        let cs = cases(names);
        let clean = explore_quietly(&cs, &small(), 2);
        assert_eq!(
            clean.failures, 0,
            "fails without {bug:?}: {:#?}",
            clean.found
        );
        let r = explore(&cs, &small(), 2, &move || canary::set(Some(bug)));
        assert!(r.failures > 0, "{bug:?} survived {} states", r.states);
        let f = &r.found[0];
        eprintln!("{bug:?} found in {}: {}: {}", f.case, f.crash, f.failure);
        // Lost blocks ([recovery]), a pair torn by the power loss that open refuses as corrupt
        // ([open]: since footers carry their own checksum), or state an open built on that a
        // power loss would undo ([durability]).
        assert!(
            f.failure.starts_with("[recovery]")
                || f.failure.starts_with("[open]")
                || f.failure.starts_with("[durability]"),
            "{}",
            f.failure
        );
        let again = std::thread::spawn({
            let plan = f.plan.clone();
            move || run_plan(&plan, false)
        })
        .join()
        .unwrap();
        assert!(
            again.failures.is_empty(),
            "the failing plan fails without {bug:?} too: {:?}",
            again.failures
        );
    }

    #[test]
    fn skipping_the_directory_sync_at_rotation_fails_the_exploration() {
        assert_found(Canary::SkipRotationDirSync, &["rotate-write/always"]);
    }

    #[test]
    fn reusing_a_wal_segment_without_syncing_it_fails_the_exploration() {
        assert_found(
            Canary::SkipReusedSegmentSync,
            &["poisoned-rotation-reopen/always"],
        );
    }

    #[test]
    fn dropping_wal_records_before_the_pair_is_durable_fails_the_exploration() {
        assert_found(Canary::DropWalBeforePairDurable, &["rotate-write/never"]);
    }
}
