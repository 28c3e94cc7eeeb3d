//! Unit-scale state-machine property: any short sequence of writes, empty blocks, crashes,
//! power losses, close/reopen and failpoints keeps every invariant the executor checks.
//! proptest shrinks a failing sequence to a minimal one.

use proptest::prelude::*;
use receipt_sim::exec::run_plan;
use receipt_sim::plan::{Op, Plan, Swarm};
use receipt_store::SyncPolicy;

#[derive(Clone, Debug)]
enum Step {
    Write(u64, u32),
    Empty(u64),
    Crash,
    PowerLoss,
    CloseReopen,
    Failpoint(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..3, 1u32..4).prop_map(|(gap, n)| Step::Write(gap, n)),
        1 => (1u64..3).prop_map(Step::Empty),
        1 => Just(Step::Crash),
        1 => Just(Step::PowerLoss),
        1 => Just(Step::CloseReopen),
        1 => (0usize..receipt_store::failpoints::ALL.len()).prop_map(Step::Failpoint),
    ]
}

fn plan(steps: &[Step], mbf: u64, always: bool) -> Plan {
    let mut height = 0;
    let ops = steps
        .iter()
        .map(|s| match *s {
            Step::Write(gap, n) => {
                height += gap;
                Op::Write {
                    height: height.max(1),
                    receipts: n,
                    logs: 2,
                }
            }
            Step::Empty(gap) => {
                height += gap;
                Op::Empty { height }
            }
            Step::Crash => Op::Crash,
            Step::PowerLoss => Op::PowerLoss,
            Step::CloseReopen => Op::CloseReopen,
            Step::Failpoint(i) => Op::Failpoint {
                name: receipt_store::failpoints::ALL[i].to_string(),
            },
        })
        .collect();
    Plan {
        seed: 7,
        scenario: "proptest".into(),
        swarm: Swarm {
            max_blocks_per_file: mbf,
            block_flush_interval: 1,
            keep_recent: 0,
            prune_interval_ms: 1000,
            sync_policy: if always {
                SyncPolicy::Always
            } else {
                SyncPolicy::Never
            },
            torn_bytes: 8,
            readers: 0,
        },
        ops,
        reason: String::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn op_sequences_keep_every_invariant(steps in prop::collection::vec(step(), 1..40), mbf in 1u64..5, always in any::<bool>()) {
        let o = run_plan(&plan(&steps, mbf, always), false);
        prop_assert!(o.failures.is_empty(), "{:?}", o.failures);
    }
}
