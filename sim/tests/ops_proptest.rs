//! Unit-scale state-machine property: any short sequence of writes (new blocks and more receipts
//! for the same block), empty blocks, reads, prunes, crashes, power losses, close/reopen,
//! failpoints and fsync failures keeps every invariant the executor checks against the model.
//! proptest shrinks a failing sequence to a minimal one.

use proptest::prelude::*;
use receipt_sim::fs::{Fault, FsOp};
use receipt_sim::plan::{Op, Plan, Swarm, TxRef};
use receipt_store::SyncPolicy;

#[derive(Clone, Debug)]
enum Step {
    /// Write `n` receipts, `gap` blocks after the last (0: the same block again).
    Write(u64, u32),
    Empty(u64),
    ReadBack,
    ReadLogs(u64),
    Prune,
    Crash,
    PowerLoss,
    CloseReopen,
    Failpoint(usize),
    FsyncFails,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u64..3, 1u32..4).prop_map(|(gap, n)| Step::Write(gap, n)),
        1 => (1u64..3).prop_map(Step::Empty),
        1 => Just(Step::ReadBack),
        1 => (0u64..8).prop_map(Step::ReadLogs),
        1 => Just(Step::Prune),
        1 => Just(Step::Crash),
        1 => Just(Step::PowerLoss),
        1 => Just(Step::CloseReopen),
        1 => (0usize..receipt_store::failpoints::ALL.len()).prop_map(Step::Failpoint),
        1 => Just(Step::FsyncFails),
    ]
}

fn plan(steps: &[Step], mbf: u64, keep_recent: u64, always: bool, readers: u32) -> Plan {
    let (mut height, mut next_tx) = (0u64, 0u32);
    let mut last_write: Option<TxRef> = None;
    let mut ops = Vec::new();
    for s in steps {
        ops.push(match *s {
            Step::Write(gap, n) => {
                if gap > 0 || height == 0 {
                    height += gap.max(1);
                    next_tx = 0;
                }
                let op = Op::Write {
                    height,
                    first_tx: next_tx,
                    receipts: n,
                    logs: 2,
                    dup_hash_of: None,
                    at_limit: false,
                };
                last_write = Some(TxRef {
                    height,
                    tx: next_tx,
                });
                next_tx += n;
                op
            }
            Step::Empty(gap) => {
                height += gap;
                next_tx = 0;
                Op::Empty { height }
            }
            Step::ReadBack => Op::ReadReceipt {
                target: last_write,
                in_block: false,
                wrong_block: false,
            },
            Step::ReadLogs(from) => Op::ReadLogs {
                from,
                to: from + 4,
                address: None,
                topics: vec![],
                limit: None,
            },
            Step::Prune => Op::Prune { explicit: true },
            Step::Crash => Op::Crash,
            Step::PowerLoss => Op::PowerLoss,
            Step::CloseReopen => Op::CloseReopen,
            Step::Failpoint(i) => Op::Failpoint {
                name: receipt_store::failpoints::ALL[i].to_string(),
            },
            Step::FsyncFails => Op::FsFault {
                fs_op: FsOp::Sync,
                fault: Fault::SyncLosesData,
                after: 0,
            },
        });
    }
    Plan {
        seed: 7,
        scenario: "proptest".into(),
        swarm: Swarm {
            max_blocks_per_file: mbf,
            block_flush_interval: 1,
            keep_recent,
            prune_interval_ms: 1000,
            sync_policy: if always {
                SyncPolicy::Always
            } else {
                SyncPolicy::Never
            },
            torn_bytes: 8,
            readers,
            weights: Default::default(),
            fs_faults: vec![],
            time_jump_per_mille: 20,
            index_cache_files: 64,
            page_rows: receipt_store::Config::default().page_rows,
        },
        ops,
        reason: String::new(),
        reaches: Vec::new(),
        fault_salt: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn op_sequences_keep_every_invariant(
        steps in prop::collection::vec(step(), 1..40),
        mbf in 1u64..5,
        keep_recent in prop_oneof![Just(0u64), 2u64..6],
        always in any::<bool>(),
        readers in 0u32..3,
    ) {
        let o = receipt_sim::exec::run_plan(&plan(&steps, mbf, keep_recent, always, readers), false);
        prop_assert!(o.failures.is_empty(), "{:?}", o.failures);
    }
}
