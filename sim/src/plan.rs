//! Seed + scenario -> an explicit, serialisable plan. Plans, not seeds, are what is shrunk,
//! saved in `seeds/` and attached to reports: a pinned plan means the same thing after a refactor.
//!
//! Ops never refer to each other by position: a write names its block and first transaction
//! index, a read names the (block, tx index) it looks for. Dropping ops while shrinking therefore
//! never changes what the remaining ops do.

use crate::fs::{Fault, FsOp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::SyncPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Seed-derivation constants: one independent ChaCha stream per concern, so an extra draw in one
/// (say, a new fault decision) never remaps the others (say, every crash point).
pub const PLAN_STREAM: u64 = 0x9_1A4E;
pub const FAULT_STREAM: u64 = 0xFA_0175;
pub const READER_STREAM: u64 = 0x4EAD_E45;
/// The stream of file-layout draws (page size), apart from the plan's so adding them left every
/// seed's ops as they were.
pub const LAYOUT_STREAM: u64 = 0x1A_4073;

/// Probability that a write at a window boundary (where rotation happens) is followed at once by
/// a crash or power loss.
const BOUNDARY_CRASH_BIAS: f64 = 0.15;
/// Probability that a prune op is followed at once by a crash or power loss.
const PRUNE_CRASH_BIAS: f64 = 0.10;
/// Largest gap between consecutive written heights (gaps skip rotation boundaries).
const MAX_HEIGHT_GAP: u64 = 4;
/// Op-kind draws per op, at most (kinds that cannot apply yet are redrawn).
const MAX_DRAWS_PER_OP: usize = 64;
/// Disk-changing filesystem calls a crash inside an operation may follow, at most (a rotation
/// with a flush makes about 20).
pub const MAX_CRASH_POINT: u32 = 32;
/// Probability that a plan's first write lands on block 0.
const FIRST_WRITE_AT_ZERO: f64 = 0.3;
/// Probability that a write's first receipt reuses an earlier block's tx hash.
const DUPLICATE_HASH: f64 = 0.05;
/// Probability that an empty block is at or below the last height (a no-op).
const STALE_EMPTY: f64 = 0.15;
/// Transaction indices of stale writes start here, so their hashes never collide with real ones.
pub const STALE_TX_BASE: u32 = 1_000;

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
    /// Prune ticker interval range (virtual milliseconds).
    #[serde(default = "default_prune_interval_ms")]
    pub prune_interval_ms: [u64; 2],
    /// Largest garbage tail a power loss may leave; one of these per seed.
    #[serde(default = "default_torn_bytes")]
    pub torn_bytes: Vec<usize>,
    /// Swarm testing: each seed switches every fault kind off with this probability and scales
    /// the rest by 1..=3, so some seeds hammer one fault and others see none of it.
    #[serde(default = "default_swarm_off")]
    pub swarm_off_probability: f64,
    /// Range of the per-mille chance, per scheduler step, that virtual time jumps to the next
    /// timer although tasks are ready (prune ticks landing inside reads and writes).
    #[serde(default = "default_time_jump_per_mille")]
    pub time_jump_per_mille: [u32; 2],
    /// Coverage marks this scenario exists to reach: a campaign in which one is never hit fails.
    #[serde(default)]
    pub claims: Vec<String>,
    /// Probability that a write carries a receipt exactly at the size limits (8 MiB: rare, as
    /// every read check copies the model's state).
    #[serde(default)]
    pub at_limit_probability: f64,
}

fn default_prune_interval_ms() -> [u64; 2] {
    [250, 2_000]
}

fn default_torn_bytes() -> Vec<usize> {
    vec![0, 8, 512]
}

fn default_swarm_off() -> f64 {
    0.25
}

fn default_time_jump_per_mille() -> [u32; 2] {
    [0, 40]
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
    Resize,
    Flush,
    /// A crash or power loss after the k-th disk-changing filesystem call of what follows.
    CrashInside,
    /// API paths after the end of a store's life: calls after crash() and after close.
    AfterEnd,
    /// One flipped bit at rest in a finished parquet file.
    BitRot,
    /// One flipped bit at rest in the synced bytes of a WAL segment.
    WalRot,
    /// Change the automatic flush interval mid-run (0 switches automatic flushes off).
    SetFlushInterval,
}

impl OpKind {
    /// Kinds that swarm testing may switch off or scale per seed (faults and maintenance; the
    /// workload itself is always on).
    pub fn is_swarmed(self) -> bool {
        matches!(
            self,
            OpKind::Stale
                | OpKind::Oversized
                | OpKind::Prune
                | OpKind::Crash
                | OpKind::PowerLoss
                | OpKind::CloseReopen
                | OpKind::Failpoint
                | OpKind::FsFault
                | OpKind::Resize
                | OpKind::Flush
                | OpKind::CrashInside
                | OpKind::AfterEnd
                | OpKind::BitRot
                | OpKind::WalRot
                | OpKind::SetFlushInterval
        )
    }
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
    /// The op mix this seed drew (fault rates); informational once the ops exist.
    #[serde(default)]
    pub weights: BTreeMap<OpKind, u32>,
    /// The filesystem faults this seed may arm.
    #[serde(default)]
    pub fs_faults: Vec<Fault>,
    /// Per-mille chance per scheduler step that time jumps to the next timer (see runtime).
    #[serde(default)]
    pub time_jump_per_mille: u32,
    /// File indexes the store caches (small values make reads evict).
    #[serde(default = "default_index_cache_files")]
    pub index_cache_files: usize,
    /// Rows per data page of the files the store writes (small values give the simulator's
    /// small row groups several pages, so filtered reads skip some by the page index).
    #[serde(default = "default_page_rows")]
    pub page_rows: usize,
}

fn default_index_cache_files() -> usize {
    receipt_store::Config::default().index_cache_files
}

fn default_page_rows() -> usize {
    receipt_store::Config::default().page_rows
}

/// Rows per data page for one seed: most seeds a handful (the simulator's row groups hold a few
/// to a few dozen logs), the rest the store's default (one page per row group there).
fn draw_page_rows(rng: &mut ChaCha8Rng) -> usize {
    if rng.random_bool(0.75) {
        rng.random_range(1..=6)
    } else {
        default_page_rows()
    }
}

/// Which input limit an oversized write crosses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    #[default]
    Topics,
    ReceiptBytes,
    LogData,
}

/// A transaction a read looks for: its block and index (see [`crate::model::tx_hash`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRef {
    pub height: u64,
    pub tx: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Write `receipts` receipts with tx indices `first_tx..` at `height`; `logs` seeds how many
    /// logs each carries (0..=3, see [`crate::model::receipts_for`]).
    Write {
        height: u64,
        #[serde(default)]
        first_tx: u32,
        receipts: u32,
        logs: u32,
        /// The first receipt reuses the hash of an earlier transaction (the same tx hash in two
        /// blocks: `get_receipt` must answer the earliest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dup_hash_of: Option<TxRef>,
        /// The first receipt's bytes and its first log's data are exactly at the size limits.
        #[serde(default, skip_serializing_if = "is_false")]
        at_limit: bool,
    },
    /// An empty block: moves the store's cursor (and may rotate) without a receipt.
    Empty {
        height: u64,
    },
    /// A write below the last height: must be rejected and stage nothing.
    Stale {
        height: u64,
    },
    /// A receipt one step past a limit (five topics, or receipt bytes or log data one byte
    /// over): must be rejected.
    Oversized {
        height: u64,
        #[serde(default)]
        limit: Limit,
    },
    /// Read one receipt by hash (an unknown hash when `target` is None); with `in_block`, ask
    /// for it in a given block (its own, or the next one when `wrong_block`).
    ReadReceipt {
        target: Option<TxRef>,
        #[serde(default)]
        in_block: bool,
        #[serde(default)]
        wrong_block: bool,
    },
    /// eth_getLogs over `[from, to]` with an optional address and up to two topic positions
    /// (indices into the model's alphabets; None is a wildcard).
    ReadLogs {
        from: u64,
        to: u64,
        address: Option<u8>,
        #[serde(default)]
        topics: Vec<Option<u8>>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Let virtual time pass beyond the prune interval (the ticker prunes); with `explicit`, also
    /// call `prune_now`.
    Prune {
        #[serde(default)]
        explicit: bool,
    },
    /// Process crash: every store task dies, nothing written is lost.
    Crash,
    /// Power loss: unsynced data and namespace changes are lost, tails may be torn.
    PowerLoss,
    CloseReopen,
    /// Make the store's next visit to this failpoint fail.
    Failpoint {
        name: String,
    },
    /// Make the `after`-th next matching filesystem operation under the data dir fail once.
    FsFault {
        fs_op: FsOp,
        fault: Fault,
        after: u32,
    },
    /// Change the window size for future rotations (0 must be rejected); a reopen restores the
    /// configured size.
    Resize {
        max_blocks_per_file: u64,
    },
    /// Flush the open pair's buffered rows as a row group.
    Flush,
    /// Set the automatic flush interval to `blocks` (0: no automatic flush) until the next
    /// reopen, which restores the configured one.
    SetFlushInterval {
        blocks: u64,
    },
    /// The process dies after `after_fs_calls` more disk-changing filesystem calls (whatever op
    /// or background task makes them, open and replay included), with a power loss when
    /// `power_loss`. The op that follows is chosen to be one worth crashing inside.
    CrashInside {
        after_fs_calls: u32,
        power_loss: bool,
    },
    /// End the store's life (`crash()` when `crashed`, else `close()`), check that every call
    /// then answers the matching error (close twice included), and reopen.
    AfterEnd {
        crashed: bool,
    },
    /// Flip bit `bit` of the byte at `per_mille`/1000 of the `nth` (modulo their count)
    /// finished parquet file, at rest. From then on an error naming that file is the right
    /// answer to anything that needs its bytes; a wrong answer never is.
    BitRot {
        nth: u32,
        per_mille: u32,
        bit: u8,
        /// Rot one of the open pair's unfinished files instead (reads fetch its written row
        /// groups from there, verified like a finished file's). Absent in older plans: false.
        #[serde(default)]
        open_pair: bool,
    },
    /// Flip bit `bit` of the byte at `per_mille`/1000 of the synced bytes of the `nth` (modulo
    /// their count) WAL segment, at rest. The next open must refuse naming the segment, keep a
    /// covered record's bytes aside, or cut a rotted last record and report the cut in
    /// `Status::wal_tail_cut` (then, and only then, the block that record held may be missing).
    WalRot {
        nth: u32,
        per_mille: u32,
        bit: u8,
    },
}

impl Op {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Empty { .. } => "empty",
            Op::Stale { .. } => "stale",
            Op::Oversized { .. } => "oversized",
            Op::ReadReceipt { .. } => "read_receipt",
            Op::ReadLogs { .. } => "read_logs",
            Op::Prune { .. } => "prune",
            Op::Crash => "crash",
            Op::PowerLoss => "power_loss",
            Op::CloseReopen => "close_reopen",
            Op::Failpoint { .. } => "failpoint",
            Op::FsFault { .. } => "fs_fault",
            Op::Resize { .. } => "resize",
            Op::Flush => "flush",
            Op::SetFlushInterval { .. } => "set_flush_interval",
            Op::CrashInside { .. } => "crash_inside",
            Op::AfterEnd { .. } => "after_end",
            Op::BitRot { .. } => "bit_rot",
            Op::WalRot { .. } => "wal_rot",
        }
    }
}

/// `BitRot::nth` at or above this rots the open pair (see [`Op::BitRot`]).
const BIT_ROT_OPEN_PAIR_NTH_MIN: u32 = 48;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub scenario: String,
    pub swarm: Swarm,
    pub ops: Vec<Op>,
    /// Why this plan is kept (corpus entries only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Coverage marks the plan is kept to hit (corpus entries only): the corpus test fails when
    /// a run misses one, so a change that moves the plan away from the state it was kept for
    /// (a new timing, a new layout) says so instead of passing on a plan that tests nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reaches: Vec<String>,
    /// Mixed into the fault stream: the same ops with another salt see other power-loss images
    /// and fault draws (how `explore` enumerates durable images).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fault_salt: u64,
}

fn is_false(x: &bool) -> bool {
    !*x
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl Plan {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan is serialisable")
    }

    pub fn from_json(text: &str) -> Result<Plan, String> {
        serde_json::from_str(text).map_err(|e| format!("not a plan: {e}"))
    }
}

/// Directory holding the scenario files: `scenarios/` at the workspace root.
pub fn scenarios_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// Scenario names found in `scenarios/`, sorted.
pub fn scenario_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Loads a scenario by name from `scenarios/`, or from a file when `name` ends in `.json`
/// (a variant written by hand or by the benchmarks).
pub fn load_scenario(name: &str) -> Result<Scenario, String> {
    let path = if name.ends_with(".json") {
        PathBuf::from(name)
    } else {
        scenarios_dir().join(format!("{name}.json"))
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "scenario {name}: {}: {e} (known: {})",
            path.display(),
            scenario_names().join(", ")
        )
    })?;
    let sc: Scenario = serde_json::from_str(&text).map_err(|e| format!("scenario {name}: {e}"))?;
    sc.validate().map_err(|e| format!("scenario {name}: {e}"))?;
    Ok(sc)
}

impl Scenario {
    pub fn validate(&self) -> Result<(), String> {
        if self.sync_policies.is_empty() {
            return Err("sync_policies is empty".into());
        }
        if self.max_blocks_per_file[0] == 0 {
            return Err("max_blocks_per_file must start at 1 or more".into());
        }
        if self.weights.values().all(|w| *w == 0) {
            return Err("no op has a weight".into());
        }
        if !self.weights.get(&OpKind::Write).is_some_and(|w| *w > 0) {
            return Err("write must have a weight".into());
        }
        if self.torn_bytes.is_empty() {
            return Err("torn_bytes is empty".into());
        }
        Ok(())
    }
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

fn choose<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Draws this seed's configuration.
pub fn draw_swarm(rng: &mut ChaCha8Rng, sc: &Scenario) -> Swarm {
    let sync_policy = choose(rng, &sc.sync_policies);
    let max_blocks_per_file = pick(rng, sc.max_blocks_per_file);
    let block_flush_interval = pick(rng, sc.block_flush_interval);
    let keep_recent = if sc.prune {
        pick(rng, sc.keep_recent)
    } else {
        0
    };
    let prune_interval_ms = pick(rng, sc.prune_interval_ms);
    let torn_bytes = choose(rng, &sc.torn_bytes);
    let readers = pick(rng, sc.readers);
    let mut weights = BTreeMap::new();
    for (&kind, &w) in &sc.weights {
        let w = if kind.is_swarmed() && w > 0 {
            if rng.random_bool(sc.swarm_off_probability.clamp(0.0, 1.0)) {
                0
            } else {
                w * rng.random_range(1..=3)
            }
        } else {
            w
        };
        if w > 0 {
            weights.insert(kind, w);
        }
    }
    let fs_faults: Vec<Fault> = sc
        .fs_faults
        .iter()
        .copied()
        .filter(|_| !rng.random_bool(sc.swarm_off_probability.clamp(0.0, 1.0) / 2.0))
        .collect();
    if fs_faults.is_empty() {
        weights.remove(&OpKind::FsFault);
    }
    let time_jump_per_mille = pick(rng, sc.time_jump_per_mille).min(1000);
    let index_cache_files = if rng.random_bool(0.5) {
        rng.random_range(1..=4)
    } else {
        default_index_cache_files()
    };
    Swarm {
        index_cache_files,
        page_rows: default_page_rows(),
        time_jump_per_mille,
        max_blocks_per_file,
        block_flush_interval,
        keep_recent,
        prune_interval_ms,
        sync_policy,
        torn_bytes,
        readers,
        weights,
        fs_faults,
    }
}

/// Where the plan generator is: the last height written and the next tx index in that block.
#[derive(Default)]
struct Cursor {
    height: u64,
    next_tx: u32,
    /// Whether anything was written yet (the first write may land on block 0).
    started: bool,
    /// Every (height, first tx, count) written so far, for reads to aim at.
    written: Vec<(u64, u32, u32)>,
}

fn crash_op(rng: &mut ChaCha8Rng, weights: &BTreeMap<OpKind, u32>) -> Option<Op> {
    let crash = weights.contains_key(&OpKind::Crash);
    let power = weights.contains_key(&OpKind::PowerLoss);
    match (crash, power) {
        (true, true) => Some(if rng.random_bool(0.5) {
            Op::Crash
        } else {
            Op::PowerLoss
        }),
        (true, false) => Some(Op::Crash),
        (false, true) => Some(Op::PowerLoss),
        (false, false) => None,
    }
}

/// Expands `seed` under `scenario`. Plan generation has its own RNG stream, so changing fault
/// decisions or scheduling never remaps the ops.
pub fn generate(seed: u64, sc: &Scenario) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PLAN_STREAM);
    let mut swarm = draw_swarm(&mut rng, sc);
    swarm.page_rows = draw_page_rows(&mut ChaCha8Rng::seed_from_u64(seed ^ LAYOUT_STREAM));
    let kinds: Vec<(OpKind, u32)> = swarm.weights.iter().map(|(k, w)| (*k, *w)).collect();
    let total: u32 = kinds.iter().map(|(_, w)| w).sum();
    assert!(total > 0, "scenario {} has no op weights", sc.name);
    let target = sc.ops.max(1);
    let mut ops = Vec::with_capacity(target + 1);
    let mut cur = Cursor::default();
    // Bounded: every iteration either pushes an op or skips a kind that cannot apply yet, and
    // `write` (always weighted) can always apply.
    let max_draws = target * MAX_DRAWS_PER_OP;
    let mut draws = 0;
    while ops.len() < target && draws < max_draws {
        draws += 1;
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
            .expect("x < total")
            .0;
        let op = match kind {
            OpKind::Write | OpKind::SameBlockWrite => {
                if !cur.started && rng.random_bool(FIRST_WRITE_AT_ZERO) {
                    // Block 0 is a height like any other (no zero sentinel).
                    cur.next_tx = 0;
                } else if kind == OpKind::Write || !cur.started {
                    cur.height += if rng.random_bool(0.8) {
                        1
                    } else {
                        rng.random_range(2..=MAX_HEIGHT_GAP)
                    };
                    cur.next_tx = 0;
                }
                cur.started = true;
                let receipts = rng.random_range(1..=4);
                // The same tx hash in two blocks: reuse an earlier block's transaction.
                // Only a write that starts a block: a block never holds one hash twice.
                let dup_hash_of = (kind == OpKind::Write
                    && rng.random_bool(DUPLICATE_HASH)
                    && cur.written.iter().any(|w| w.0 < cur.height))
                .then(|| {
                    let earlier: Vec<_> = cur
                        .written
                        .iter()
                        .filter(|w| w.0 < cur.height)
                        .copied()
                        .collect();
                    let (height, first, n) = choose(&mut rng, &earlier);
                    TxRef {
                        height,
                        tx: first + rng.random_range(0..n),
                    }
                });
                let op = Op::Write {
                    height: cur.height,
                    first_tx: cur.next_tx,
                    receipts,
                    logs: rng.random_range(0..=3),
                    dup_hash_of,
                    at_limit: rng.random_bool(sc.at_limit_probability),
                };
                cur.written.push((cur.height, cur.next_tx, receipts));
                cur.next_tx += receipts;
                op
            }
            OpKind::Empty => {
                if cur.started && rng.random_bool(STALE_EMPTY) {
                    // An empty block at or below the last one: a no-op the store must accept.
                    Op::Empty {
                        height: cur.height - rng.random_range(0..=cur.height.min(2)),
                    }
                } else {
                    cur.height += 1;
                    cur.next_tx = 0;
                    Op::Empty { height: cur.height }
                }
            }
            OpKind::Stale if cur.height > 1 => Op::Stale {
                height: cur.height - rng.random_range(1..cur.height),
            },
            OpKind::Oversized => Op::Oversized {
                height: cur.height.max(1),
                limit: choose(
                    &mut rng,
                    &[Limit::Topics, Limit::ReceiptBytes, Limit::LogData],
                ),
            },
            OpKind::ReadReceipt => {
                let target = (!cur.written.is_empty() && rng.random_bool(0.85)).then(|| {
                    let (height, first, n) = choose(&mut rng, &cur.written);
                    TxRef {
                        height,
                        tx: first + rng.random_range(0..n),
                    }
                });
                let in_block = target.is_some() && rng.random_bool(0.3);
                Op::ReadReceipt {
                    target,
                    in_block,
                    wrong_block: in_block && rng.random_bool(0.3),
                }
            }
            OpKind::ReadLogs => {
                let from = rng.random_range(0..=cur.height);
                // Up to the four positions eth_getLogs allows (logs carry 0..=4 topics).
                let positions = rng.random_range(0..=4);
                Op::ReadLogs {
                    from,
                    to: from + rng.random_range(0..8),
                    address: rng.random_bool(0.4).then(|| rng.random_range(0..3)),
                    topics: (0..positions)
                        .map(|_| rng.random_bool(0.7).then(|| rng.random_range(0..3)))
                        .collect(),
                    limit: rng.random_bool(0.2).then(|| rng.random_range(1..6)),
                }
            }
            OpKind::Prune => Op::Prune {
                explicit: rng.random_bool(0.5),
            },
            OpKind::Crash => Op::Crash,
            OpKind::PowerLoss => Op::PowerLoss,
            OpKind::CloseReopen => Op::CloseReopen,
            OpKind::Failpoint => Op::Failpoint {
                name: choose(&mut rng, &receipt_store::failpoints::ALL).to_string(),
            },
            OpKind::FsFault if !swarm.fs_faults.is_empty() => {
                let fault = choose(&mut rng, &swarm.fs_faults);
                let fs_op = match fault {
                    Fault::SyncLosesData => FsOp::Sync,
                    Fault::NoSpace => choose(&mut rng, &[FsOp::Append, FsOp::Sync, FsOp::Create]),
                    Fault::Eio => choose(
                        &mut rng,
                        &[
                            FsOp::ReadAt,
                            FsOp::Append,
                            FsOp::Sync,
                            FsOp::Remove,
                            FsOp::SyncDir,
                            FsOp::Rename,
                            FsOp::Create,
                            FsOp::List,
                            FsOp::Len,
                        ],
                    ),
                };
                Op::FsFault {
                    fs_op,
                    fault,
                    after: rng.random_range(0..6),
                }
            }
            OpKind::Resize => Op::Resize {
                max_blocks_per_file: if rng.random_bool(0.1) {
                    0
                } else {
                    rng.random_range(1..=16)
                },
            },
            OpKind::Flush => Op::Flush,
            OpKind::SetFlushInterval => Op::SetFlushInterval {
                blocks: rng.random_range(0..=8),
            },
            OpKind::CrashInside => {
                let power_loss = match (
                    swarm.weights.contains_key(&OpKind::Crash),
                    swarm.weights.contains_key(&OpKind::PowerLoss),
                ) {
                    (true, true) => rng.random_bool(0.5),
                    (false, true) => true,
                    _ => false,
                };
                ops.push(Op::CrashInside {
                    after_fs_calls: rng.random_range(0..=MAX_CRASH_POINT),
                    power_loss,
                });
                // Something worth crashing inside: a rotation (a write or an empty block at the
                // next boundary), a prune, a flush, or a close and reopen (open and replay).
                let mbf = swarm.max_blocks_per_file;
                match rng.random_range(0..5u8) {
                    0 | 1 => {
                        let boundary = (cur.height / mbf + 1) * mbf;
                        cur.height = boundary;
                        cur.next_tx = 0;
                        if rng.random_bool(0.7) {
                            let receipts = rng.random_range(1..=4);
                            cur.written.push((cur.height, 0, receipts));
                            cur.next_tx = receipts;
                            cur.started = true;
                            Op::Write {
                                height: boundary,
                                first_tx: 0,
                                receipts,
                                logs: rng.random_range(0..=3),
                                dup_hash_of: None,
                                at_limit: false,
                            }
                        } else {
                            Op::Empty { height: boundary }
                        }
                    }
                    2 => Op::Prune { explicit: true },
                    3 => Op::Flush,
                    _ => Op::CloseReopen,
                }
            }
            OpKind::AfterEnd => Op::AfterEnd {
                crashed: rng.random_bool(0.5),
            },
            OpKind::BitRot => {
                let nth = rng.random_range(0..64);
                Op::BitRot {
                    nth,
                    per_mille: rng.random_range(0..1000),
                    bit: rng.random_range(0..8),
                    // A quarter of the rots hit the open pair, drawn from `nth` so the plan's
                    // random stream (and every other op of a seed) stays as it was.
                    open_pair: nth >= BIT_ROT_OPEN_PAIR_NTH_MIN,
                }
            }
            OpKind::WalRot => Op::WalRot {
                nth: rng.random_range(0..64),
                per_mille: rng.random_range(0..1000),
                bit: rng.random_range(0..8),
            },
            _ => continue,
        };
        // Bias crash points to just after rotation (a write or empty block at a window
        // boundary) and just after pruning.
        let bias = match &op {
            Op::Write { height, .. } | Op::Empty { height }
                if height % swarm.max_blocks_per_file == 0 =>
            {
                BOUNDARY_CRASH_BIAS
            }
            Op::Prune { .. } => PRUNE_CRASH_BIAS,
            _ => 0.0,
        };
        ops.push(op);
        if bias > 0.0 && rng.random_bool(bias) {
            if let Some(c) = crash_op(&mut rng, &swarm.weights) {
                ops.push(c);
            }
        }
    }
    ops.truncate(target);
    Plan {
        seed,
        scenario: sc.name.clone(),
        swarm,
        ops,
        reason: String::new(),
        reaches: Vec::new(),
        fault_salt: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        load_scenario("default").expect("default scenario")
    }

    #[test]
    fn the_same_seed_expands_to_the_same_plan() {
        let sc = scenario();
        assert_eq!(generate(42, &sc), generate(42, &sc));
        assert_ne!(generate(42, &sc).ops, generate(43, &sc).ops);
    }

    #[test]
    fn plans_round_trip_through_json() {
        let p = generate(7, &scenario());
        assert_eq!(Plan::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn written_tx_indices_are_unique_per_block() {
        let sc = scenario();
        for seed in 0..50 {
            let mut seen = std::collections::BTreeSet::new();
            for op in generate(seed, &sc).ops {
                if let Op::Write {
                    height,
                    first_tx,
                    receipts,
                    ..
                } = op
                {
                    for tx in first_tx..first_tx + receipts {
                        assert!(seen.insert((height, tx)), "seed {seed}: ({height}, {tx})");
                    }
                }
            }
        }
    }

    #[test]
    fn every_scenario_file_loads_and_generates_its_op_count() {
        let names = scenario_names();
        assert!(names.contains(&"default".to_string()), "{names:?}");
        for name in names {
            let sc = load_scenario(&name).unwrap();
            for seed in 0..5 {
                assert_eq!(generate(seed, &sc).ops.len(), sc.ops, "{name} seed {seed}");
            }
        }
    }
}
