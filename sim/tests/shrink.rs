//! The shrinker on a real failure: a planted bug (acking before the WAL fsync) fails a
//! power-loss plan; the shrunk plan is smaller, fails the same check, and passes once the bug is
//! gone. Runs only with `--features canary` (the README test command enables it).
#![cfg(feature = "canary")]

use receipt_sim::check::Check;
use receipt_sim::exec::run_plan;
use receipt_sim::plan::{generate, load_scenario};
use receipt_sim::shrink::{failing_check, shrink_with_budget};
use receipt_store::canary::{self, Canary};

/// Plan executions the test lets the shrinker spend (debug builds are slow).
const BUDGET: usize = 300;

#[test]
fn a_shrunk_plan_is_smaller_and_fails_the_same_check_only_with_the_bug() {
    let sc = load_scenario("power-loss").unwrap();
    std::thread::spawn(move || {
        canary::set(Some(Canary::AckBeforeWalFsync));
        let plan = (0..50)
            .map(|s| generate(s, &sc))
            .find(|p| failing_check(p).is_some())
            .expect("the canary is caught within 50 seeds");
        let want = failing_check(&plan).unwrap();
        let (small, runs) = shrink_with_budget(&plan, BUDGET);
        assert!(runs <= BUDGET);
        assert!(
            small.ops.len() < plan.ops.len(),
            "{} ops before, {} after",
            plan.ops.len(),
            small.ops.len()
        );
        assert_eq!(failing_check(&small), Some(want));
        assert_eq!(want, Some(Check::Recovery));
        canary::set(None);
        let clean = run_plan(&small, false);
        assert!(clean.failures.is_empty(), "{:?}", clean.failures);
    })
    .join()
    .unwrap();
}
