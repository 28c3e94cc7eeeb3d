//! Seed + scenario -> an explicit, serialisable plan. Plans, not seeds, are what is shrunk,
//! saved in `seeds/` and attached to reports: a pinned plan means the same thing after a refactor.

use crate::fs::{Fault, FsOp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::SyncPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A workload and fault mix, read from `scenarios/<name>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Ops per plan.
    pub ops: usize,
    /// Relative weights of op kinds (see [`OpKind`]); missing kinds weigh 0.
    pub weights: BTreeMap<OpKind, u32>,
    pub sync_policies: Vec<SyncPolicy>,
    pub max_blocks_per_file: [u64; 2],
    pub block_flush_interval: [u64; 2],
    /// Keep-recent range; 0 disables pruning. Drawn only when `prune` is true.
    pub keep_recent: [u64; 2],
    pub prune: bool,
    pub readers: [u32; 2],
    pub fs_faults: Vec<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Write,
    SameBlockWrite,
    Empty,
    Stale,
    Oversized,
    ReadReceipt,
    ReadLogs,
    Prune,
    Crash,
    PowerLoss,
    CloseReopen,
    Failpoint,
    FsFault,
}

/// Per-seed configuration (swarm testing: every seed draws its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swarm {
    pub max_blocks_per_file: u64,
    pub block_flush_interval: u64,
    pub keep_recent: u64,
    pub prune_interval_ms: u64,
    pub sync_policy: SyncPolicy,
    pub torn_bytes: usize,
    pub readers: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Write `receipts` receipts (`logs` logs each, generated from the op index) at `height`.
    Write {
        height: u64,
        receipts: u32,
        logs: u32,
    },
    Empty {
        height: u64,
    },
    /// A write below the last height: must be rejected and stage nothing.
    Stale {
        height: u64,
    },
    /// A receipt whose log has five topics: must be rejected.
    Oversized {
        height: u64,
    },
    /// Read a receipt of write op `of_op` (or an unknown hash when None).
    ReadReceipt {
        of_op: Option<usize>,
    },
    ReadLogs {
        from: u64,
        to: u64,
        address: Option<u8>,
        topic0: Option<u8>,
    },
    /// Let virtual time pass beyond the prune interval, then also prune explicitly.
    Prune,
    Crash,
    PowerLoss,
    CloseReopen,
    /// Make the store's next visit to this failpoint fail.
    Failpoint {
        name: String,
    },
    /// Make the `after`-th next matching filesystem operation fail once.
    FsFault {
        fs_op: FsOp,
        fault: Fault,
        after: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub scenario: String,
    pub swarm: Swarm,
    pub ops: Vec<Op>,
    /// Why this plan is kept (corpus entries only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Directory holding the scenario files: `scenarios/` at the workspace root.
pub fn scenarios_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

pub fn load_scenario(name: &str) -> Result<Scenario, String> {
    let path = scenarios_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("scenario {name}: {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("scenario {name}: {e}"))
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, range: [T; 2]) -> T
where
    T: rand::distr::uniform::SampleUniform + PartialOrd,
{
    if range[0] < range[1] {
        rng.random_range(range[0]..=range[1])
    } else {
        range[0]
    }
}

/// Expands `seed` under `scenario`. Plan generation has its own RNG stream, so changing fault
/// decisions or scheduling never remaps the ops.
pub fn generate(seed: u64, sc: &Scenario) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9_1A4E);
    let sync_policy = sc.sync_policies[rng.random_range(0..sc.sync_policies.len())];
    let swarm = Swarm {
        max_blocks_per_file: pick(&mut rng, sc.max_blocks_per_file),
        block_flush_interval: pick(&mut rng, sc.block_flush_interval),
        keep_recent: if sc.prune {
            pick(&mut rng, sc.keep_recent)
        } else {
            0
        },
        prune_interval_ms: 1000,
        sync_policy,
        torn_bytes: [0usize, 8, 512][rng.random_range(0..3)],
        readers: pick(&mut rng, sc.readers),
    };
    let kinds: Vec<(OpKind, u32)> = sc
        .weights
        .iter()
        .map(|(k, w)| (*k, *w))
        .filter(|(_, w)| *w > 0)
        .collect();
    let total: u32 = kinds.iter().map(|(_, w)| w).sum();
    assert!(total > 0, "scenario {} has no op weights", sc.name);
    let mut ops = Vec::with_capacity(sc.ops);
    let mut height = 0u64;
    let mut writes: Vec<usize> = Vec::new();
    // Only scenarios with crashes get extra crash points after boundary writes.
    let crashy = [OpKind::Crash, OpKind::PowerLoss]
        .iter()
        .any(|k| sc.weights.get(k).is_some_and(|w| *w > 0));
    while ops.len() < sc.ops {
        let mut x = rng.random_range(0..total);
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .expect("weights")
            .0;
        let op = match kind {
            OpKind::Write | OpKind::SameBlockWrite => {
                if kind == OpKind::Write || height == 0 {
                    height += if rng.random_bool(0.8) {
                        1
                    } else {
                        rng.random_range(2..5)
                    };
                }
                writes.push(ops.len());
                Op::Write {
                    height,
                    receipts: rng.random_range(1..=4),
                    logs: rng.random_range(0..=3),
                }
            }
            OpKind::Empty => {
                height += 1;
                Op::Empty { height }
            }
            OpKind::Stale if height > 1 => Op::Stale {
                height: height - rng.random_range(1..height),
            },
            OpKind::Oversized => Op::Oversized {
                height: height.max(1),
            },
            OpKind::ReadReceipt => {
                let of_op = (!writes.is_empty() && rng.random_bool(0.8))
                    .then(|| writes[rng.random_range(0..writes.len())]);
                Op::ReadReceipt { of_op }
            }
            OpKind::ReadLogs => {
                let from = rng.random_range(0..=height);
                Op::ReadLogs {
                    from,
                    to: from + rng.random_range(0..8),
                    address: rng.random_bool(0.5).then(|| rng.random_range(0..3)),
                    topic0: rng.random_bool(0.5).then(|| rng.random_range(0..3)),
                }
            }
            OpKind::Prune => Op::Prune,
            OpKind::Crash => Op::Crash,
            OpKind::PowerLoss => Op::PowerLoss,
            OpKind::CloseReopen => Op::CloseReopen,
            OpKind::Failpoint => {
                let names = receipt_store::failpoints::ALL;
                Op::Failpoint {
                    name: names[rng.random_range(0..names.len())].to_string(),
                }
            }
            OpKind::FsFault if !sc.fs_faults.is_empty() => {
                let fault = sc.fs_faults[rng.random_range(0..sc.fs_faults.len())];
                let fs_op = match fault {
                    Fault::SyncLosesData => FsOp::Sync,
                    Fault::NoSpace => {
                        [FsOp::Append, FsOp::Sync, FsOp::Create][rng.random_range(0..3)]
                    }
                    Fault::Eio => [FsOp::ReadAt, FsOp::Append, FsOp::Sync, FsOp::Remove]
                        [rng.random_range(0..4)],
                };
                Op::FsFault {
                    fs_op,
                    fault,
                    after: rng.random_range(0..6),
                }
            }
            _ => continue,
        };
        // Bias crash points to just after boundary writes, where rotation happened.
        if let Op::Write { height: h, .. } = op {
            ops.push(op);
            if crashy && h % swarm.max_blocks_per_file == 0 && rng.random_bool(0.15) {
                ops.push(if rng.random_bool(0.5) {
                    Op::Crash
                } else {
                    Op::PowerLoss
                });
            }
            continue;
        }
        ops.push(op);
    }
    ops.truncate(sc.ops.max(1));
    Plan {
        seed,
        scenario: sc.name.clone(),
        swarm,
        ops,
        reason: String::new(),
    }
}
