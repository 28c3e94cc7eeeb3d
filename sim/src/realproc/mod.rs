//! The real-process crash campaign: the simulator's plans run against a child process that owns
//! the store on a real directory (`std::fs`, real fsyncs, tokio), and the parent kills it with
//! SIGKILL at seeded points, then opens the directory itself and checks the recovered state with
//! the simulator's own model and checks ([`crate::check::match_recovery`],
//! [`crate::check::phantoms`], [`crate::check::check_files`]). The sim filesystem's crash model
//! and the real one must agree.
//!
//! One seed = one plan (its sync policy overridden) run as a chain of child processes on one
//! directory. Each child runs `receipt-sim child --dir D --plan P --from-op N`: it opens the
//! store, runs the plan's write-path ops from op `N` (writes, same-block writes, stale writes,
//! empty blocks, flushes, prunes, resizes, close-and-reopen; reads and in-process fault ops are
//! skipped) and reports every step on stdout as one flushed line ([`Msg`]). The parent feeds the
//! model from those lines as the in-sim executor does (`begin` at `issued`, `ack`, `reject`,
//! `unknown`), kills the child after a seeded number of acks plus a seeded delay of up to a few
//! milliseconds (so kills land inside writes, rotations, flushes, prunes, opens and closes),
//! reopens, checks and adopts the recovered prefix, and starts the next child at the op after
//! the last one issued. After the last kill the plan runs to its end and a clean close; a last
//! check follows.
//!
//! A SIGKILL is a process crash: data the child wrote is in the page cache, so under both sync
//! policies every acked write must survive (`lower_bound(false)`). Power loss stays with the
//! simulator. Unlike a sim run this is not deterministic: the plan and the kill schedule come
//! from the seed, where a kill lands in the child depends on real time.
//!
//! Modules: [`protocol`] (the child's stdout lines), [`child`] (the `receipt-sim child` side),
//! [`parent`] (one seed: spawn, kill, reopen, check), [`campaign`] (many seeds, the report).

pub mod campaign;
pub mod child;
pub mod parent;
pub mod protocol;

pub use campaign::{
    parse_policies, repro_command, run_campaign, Campaign, RealFailing, RealSummary,
};
pub use child::child_main;
pub use parent::{draw_kill, run_real_plan, AfterKill, KillPoint, RealOptions, RealOutcome};
pub use protocol::{ErrorKind, Msg};

use crate::exec;
use crate::model::receipts_for;
use crate::plan::{Op, Plan, STALE_TX_BASE};
use receipt_store::{Config, ReceiptInput, SyncPolicy};
use std::time::Duration;

/// Seed-derivation constant of the kill schedule: its own ChaCha stream, so the kill points
/// never remap the plan's ops (see [`crate::plan::PLAN_STREAM`]).
pub const KILL_STREAM: u64 = 0x5_1691_4B11;
/// The scenario `receipt-sim real` runs by default: write-path ops only.
pub const DEFAULT_SCENARIO: &str = "real-process";
/// Kills per seed by default.
pub const DEFAULT_KILLS: usize = 6;

/// The child's prune ticker period, at most: plans draw 250..2,000 virtual ms, which would
/// rarely tick during a child that lives a few hundred real milliseconds.
const CHILD_PRUNE_INTERVAL_MS_MAX: u64 = 50;
/// The parent's prune ticker period: it must not prune while the parent lists files and reads
/// the state it is checking.
const PARENT_PRUNE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The child's store configuration: the sim's, with a prune ticker that fires in real time.
pub fn child_config(plan: &Plan) -> Config {
    let mut c = exec::config(plan);
    c.prune_interval = c
        .prune_interval
        .min(Duration::from_millis(CHILD_PRUNE_INTERVAL_MS_MAX));
    c
}

/// The parent's configuration when it opens a directory to check it: the child's, without a
/// prune tick while it lists files and reads.
pub(crate) fn parent_config(plan: &Plan) -> Config {
    let mut c = exec::config(plan);
    c.prune_interval = PARENT_PRUNE_INTERVAL;
    c
}

/// What write op `i` sends: its height, its receipts, and whether it is a stale write (one that
/// must be rejected). None when op `i` is not a write. Child and parent both derive it from the
/// plan, so the model holds exactly what the child sent.
pub fn write_of(plan: &Plan, i: usize) -> Option<(u64, Vec<ReceiptInput>, bool)> {
    match plan.ops.get(i)? {
        op @ Op::Write { height, .. } => Some((
            *height,
            crate::model::write_inputs(plan.seed, op).expect("a write op"),
            false,
        )),
        // The in-sim executor's stale write, tx indices past every real one.
        Op::Stale { height } => Some((
            *height,
            receipts_for(plan.seed, *height, STALE_TX_BASE + i as u32, 1, 1),
            true,
        )),
        _ => None,
    }
}

pub(crate) fn policy_name(p: SyncPolicy) -> &'static str {
    match p {
        SyncPolicy::Always => "always",
        SyncPolicy::Never => "never",
    }
}
