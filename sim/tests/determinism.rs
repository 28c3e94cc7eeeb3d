//! Invariant 7: the same seed twice gives the same trace hash, state hash and failures, for
//! every scenario (the runs use separate runtimes and filesystems in one process, so any
//! unseeded randomness or HashMap order that reaches the store's behaviour shows up here).

use receipt_sim::exec::run_plan_twice;
use receipt_sim::plan::{generate, load_scenario, scenario_names};

/// Seeds per scenario: enough to cover crashes, faults and readers in each.
const SEEDS_PER_SCENARIO: u64 = 3;

#[test]
fn every_scenario_replays_the_same_seed_identically() {
    for name in scenario_names() {
        let sc = load_scenario(&name).unwrap();
        for seed in 0..SEEDS_PER_SCENARIO {
            let o = run_plan_twice(&generate(seed, &sc));
            assert!(
                !o.failures.iter().any(|f| f.starts_with("[determinism]")),
                "{name} seed {seed}: {:?}",
                o.failures
            );
        }
    }
}
