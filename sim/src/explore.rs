//! Bounded exhaustive crash exploration (`receipt-sim explore`), after B3 and ALICE: short
//! fixed plans ("cases") around rotation, flush, prune, close and reopen, and replay. Each
//! targeted op is crashed after k = 0, 1, 2, ... of its disk-changing filesystem calls until it
//! makes no (k + 1)-th call, and once more right after its last call; at each crash point come
//! one process crash and every distinct power-loss image the salts 0..S draw. Every state runs
//! the whole plan through the executor, so every invariant of [`crate::check`] is checked after
//! the crash and to the end of the plan.
//!
//! A state is a distinct (case, op, crash point, kind, crash images) tuple, where the crash images
//! are the hashes of the disk right after each crash of the run ([`Outcome::crash_images`]).
//!
//! Wall-clock time is read here only to report seconds; it never feeds a simulation.

use crate::check::{Check, Failure};
use crate::exec::{run_plan, Outcome};
use crate::model::Fnv;
use crate::plan::{Op, Plan, Swarm, TxRef};
use receipt_store::SyncPolicy;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Default largest crash point tried inside one op (`--max-crash-point`): a rotation makes about
/// 20 disk-changing calls, a close and reopen about 30. An op that still reaches it is reported
/// as truncated, never silently cut.
pub const CRASH_POINT_MAX: u32 = 64;
/// Default salts tried per power-loss crash point (`--salts`).
pub const SALTS_MAX: u64 = 64;
/// Default salts in a row that may add no new power-loss image before the enumeration of that
/// crash point stops (`--salt-stall`).
pub const SALTS_STALL_MAX: u64 = 12;
/// Failing states saved (plan file and reproduction line) per case, at most; the count of
/// failures is always complete.
pub const FAILURES_SAVED_PER_CASE_MAX: usize = 5;
/// The seed of every case: it fixes the receipts' bytes and the task schedule.
pub const CASE_SEED: u64 = 11;
/// Virtual milliseconds between prune ticks: far beyond what a case's ops take, so a tick fires
/// only inside the prune op that sleeps past it.
const CASE_PRUNE_INTERVAL_MS: u64 = 60_000;
/// Largest garbage tail a power loss may leave.
const CASE_TORN_BYTES: usize = 8;

/// One base plan and the positions of the ops worth crashing inside.
#[derive(Clone, Debug)]
pub struct Case {
    /// `<family>/<policy>`, e.g. `rotate-write/always`.
    pub name: String,
    pub plan: Plan,
    /// Indices into `plan.ops` of the ops crashed inside, in increasing order.
    pub targets: Vec<usize>,
    /// Coverage marks the case exists to reach: each must be hit by the base plan or by one of
    /// its explored states, or the exploration fails (a case that silently stopped reaching its
    /// path proves nothing).
    pub claims: Vec<&'static str>,
}

/// Builds a case op by op; `target` marks an op to crash inside.
struct CaseBuilder {
    ops: Vec<Op>,
    targets: Vec<usize>,
    window: u64,
    flush_interval: u64,
    keep_recent: u64,
    claims: Vec<&'static str>,
}

impl CaseBuilder {
    /// A plan on windows of `window` blocks, no automatic flush, no pruning.
    fn new(window: u64) -> Self {
        CaseBuilder {
            ops: Vec::new(),
            targets: Vec::new(),
            window,
            flush_interval: 0,
            keep_recent: 0,
            claims: Vec::new(),
        }
    }

    fn flush_every(mut self, blocks: u64) -> Self {
        self.flush_interval = blocks;
        self
    }

    fn keep_recent(mut self, blocks: u64) -> Self {
        self.keep_recent = blocks;
        self
    }

    fn claims(mut self, marks: &[&'static str]) -> Self {
        self.claims.extend_from_slice(marks);
        self
    }

    fn op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    fn target(mut self, op: Op) -> Self {
        self.targets.push(self.ops.len());
        self.ops.push(op);
        self
    }

    /// Writes two receipts with one log each at every height of `heights`.
    fn writes(self, heights: std::ops::RangeInclusive<u64>) -> Self {
        heights.fold(self, |b, h| b.op(write(h)))
    }

    fn build(self, family: &str, policy: SyncPolicy) -> Case {
        let policy_name = match policy {
            SyncPolicy::Always => "always",
            SyncPolicy::Never => "never",
        };
        let name = format!("{family}/{policy_name}");
        assert!(!self.targets.is_empty(), "case {name} crashes inside no op");
        assert!(
            self.targets.iter().all(|&t| t < self.ops.len()),
            "case {name} targets an op it does not have"
        );
        Case {
            plan: Plan {
                seed: CASE_SEED,
                scenario: format!("explore:{name}"),
                swarm: Swarm {
                    max_blocks_per_file: self.window,
                    block_flush_interval: self.flush_interval,
                    keep_recent: self.keep_recent,
                    prune_interval_ms: CASE_PRUNE_INTERVAL_MS,
                    sync_policy: policy,
                    torn_bytes: CASE_TORN_BYTES,
                    readers: 0,
                    weights: BTreeMap::new(),
                    fs_faults: Vec::new(),
                    time_jump_per_mille: 0,
                    index_cache_files: 64,
                    page_rows: receipt_store::Config::default().page_rows,
                },
                ops: self.ops,
                reason: String::new(),
                reaches: Vec::new(),
                fault_salt: 0,
            },
            name,
            targets: self.targets,
            claims: self.claims,
        }
    }
}

fn write(height: u64) -> Op {
    Op::Write {
        height,
        first_tx: 0,
        receipts: 2,
        logs: 1,
        dup_hash_of: None,
        at_limit: false,
    }
}

fn read(height: u64) -> Op {
    Op::ReadReceipt {
        target: Some(TxRef { height, tx: 1 }),
        in_block: false,
        wrong_block: false,
    }
}

fn read_all_logs() -> Op {
    Op::ReadLogs {
        from: 0,
        to: 64,
        address: None,
        topics: Vec::new(),
        limit: None,
    }
}

/// Disk-changing calls a write at a boundary makes on the WAL before its rotation touches the
/// pair files, when the WAL segment rolls: under `always` create, directory sync, append, fsync;
/// under `never` fsync of the segment left, create, directory sync, append. A crash right after
/// them leaves the boundary record in the WAL and the closed pair unfinished, so the recovery
/// replays across the boundary (the case claims `replay-rotated` to prove it still does).
const WAL_CALLS_BEFORE_ROTATION: u32 = 4;

/// The operation families worth crashing inside, each a short plan, built for one sync policy.
fn families(policy: SyncPolicy) -> Vec<Case> {
    vec![
        // Rotation by a write at a window boundary: WAL roll, append, finalize the closed pair
        // (row group, footers, syncs, directory sync), open the next pair, drop the covered WAL
        // segments.
        CaseBuilder::new(4)
            .writes(1..=3)
            .target(write(4))
            .op(write(5))
            .op(read(4))
            .claims(&["rotate-on-write", "wal-segments-dropped"])
            .build("rotate-write", policy),
        // Rotation of a pair that already holds a flushed row group.
        CaseBuilder::new(4)
            .writes(1..=2)
            .op(Op::Flush)
            .op(write(3))
            .target(write(4))
            .op(read_all_logs())
            .claims(&["flush-explicit", "rotate-on-write"])
            .build("rotate-flushed", policy),
        // Rotation by an empty block at a boundary: the WAL is rolled after the pair is closed.
        CaseBuilder::new(4)
            .writes(1..=3)
            .target(Op::Empty { height: 4 })
            .op(write(5))
            .op(read(3))
            .claims(&["rotate-on-empty-boundary", "wal-segments-dropped"])
            .build("rotate-empty", policy),
        // Windows of one block from block 0: every new block rotates, by a write or empty.
        CaseBuilder::new(1)
            .op(write(0))
            .target(write(1))
            .target(Op::Empty { height: 2 })
            .op(write(3))
            .op(read(0))
            .claims(&["rotate-on-write", "rotate-on-empty-boundary"])
            .build("window-one", policy),
        // Explicit flushes: row groups appended to the open pair, nothing synced.
        CaseBuilder::new(4)
            .writes(1..=2)
            .target(Op::Flush)
            .op(write(3))
            .target(Op::Flush)
            .op(read_all_logs())
            .claims(&["flush-explicit"])
            .build("flush", policy),
        // Prune deleting two closed pairs (their files, then the directory sync), then a
        // rotation right after.
        CaseBuilder::new(2)
            .keep_recent(2)
            .writes(1..=7)
            .target(Op::Prune { explicit: true })
            .op(write(8))
            .op(read(7))
            .claims(&["prune-deleted"])
            .build("prune", policy),
        // Close (finalize the open pair, drop the WAL) and reopen (scan, replay).
        CaseBuilder::new(4)
            .writes(1..=5)
            .target(Op::CloseReopen)
            .op(write(6))
            .op(read(5))
            .claims(&["close-finalized"])
            .build("close-reopen", policy),
        // Replay across a window boundary after a crash: a first crash inside the rotation at
        // block 4 leaves records on both sides of the boundary in the WAL, and its recovery
        // rebuilds the closed pair by replay without dropping them. The explored crash points
        // fall in the open and replay after each later crash, which must skip the records
        // below the open pair's start and replay from exactly that block (replay flushes a row
        // group per block, so some crash points land with its open pair half written).
        CaseBuilder::new(4)
            .flush_every(1)
            .writes(1..=3)
            // Block 3's write seals block 2's rows and writes them after its ack: a round trip
            // to the coordinator (the flush interval it already has) lets that finish, so the
            // calls counted below are the boundary write's own.
            .op(Op::SetFlushInterval { blocks: 1 })
            .op(Op::CrashInside {
                after_fs_calls: WAL_CALLS_BEFORE_ROTATION,
                power_loss: false,
            })
            .op(write(4))
            .op(write(5))
            .target(Op::Crash)
            .op(write(6))
            .target(Op::Crash)
            .op(read(4))
            .claims(&[
                "replay-rotated",
                "wal-rewritten-at-open",
                "replay-failed-cleanup",
            ])
            .build("replay-boundary", policy),
        // A rotation that finalizes its pair and then fails to create the next one poisons the
        // store; the restart's open finds only WAL records the closed pair covers and rewrites
        // the WAL to an empty segment. Crash points inside that open (between the rewrite's
        // rename and its directory sync, say) leave a segment whose directory entry a power loss
        // undoes: the next open must make it durable before blocks are acked into it, which the
        // power loss after the following write checks. Reads fill the ops a poisoned store may
        // serve before its restart, so the write always lands on the restarted store.
        (0..=crate::exec::MAX_OPS_BEFORE_RESTART)
            .fold(
                CaseBuilder::new(4)
                    .writes(1..=3)
                    .op(Op::FsFault {
                        fs_op: crate::fs::FsOp::Create,
                        fault: crate::fs::Fault::Eio,
                        after: 1,
                    })
                    .target(Op::Empty { height: 4 }),
                |b, _| b.op(read(3)),
            )
            .op(write(5))
            .op(Op::PowerLoss)
            .op(read(5))
            .claims(&[
                "poison-empty-rotation",
                "wal-records-below-floor-dropped",
                "wal-reused-segment-made-durable",
            ])
            .build("poisoned-rotation-reopen", policy),
    ]
}

/// Every case: each family under policy `always`, then under `never`.
pub fn cases() -> Vec<Case> {
    let mut all = families(SyncPolicy::Always);
    all.extend(families(SyncPolicy::Never));
    all
}

/// The cases whose name starts with one of `prefixes` (every case when `prefixes` is empty).
pub fn select_cases(prefixes: &[String]) -> Result<Vec<Case>, String> {
    let all = cases();
    if prefixes.is_empty() {
        return Ok(all);
    }
    for p in prefixes {
        if !all.iter().any(|c| c.name.starts_with(p.as_str())) {
            let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "no case named {p:?}* (cases: {})",
                names.join(", ")
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| prefixes.iter().any(|p| c.name.starts_with(p.as_str())))
        .collect())
}

/// How far the exploration goes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bounds {
    /// Largest number of an op's disk-changing calls a crash inside it may follow.
    pub crash_point_max: u32,
    /// Salts tried per power-loss crash point.
    pub salts_max: u64,
    /// Salts in a row without a new image after which a crash point's enumeration stops.
    pub salts_stall_max: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            crash_point_max: CRASH_POINT_MAX,
            salts_max: SALTS_MAX,
            salts_stall_max: SALTS_STALL_MAX,
        }
    }
}

/// Where a state crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    /// The op crashed inside, as an index into the case's base plan.
    pub op: usize,
    /// Disk-changing filesystem calls of the op that happened before the crash.
    pub calls: u32,
    /// The crash follows the op's last call: the op completed, and a `crash` or `power_loss`
    /// op right after it ends the process.
    pub op_completed: bool,
    pub power_loss: bool,
    /// Mixed into the fault stream: which power-loss image is drawn.
    pub salt: u64,
}

impl Point {
    /// `base` with this crash: a `crash_inside` op right before the op (the process dies after
    /// `calls` more disk-changing calls), or a `crash` or `power_loss` op right after it.
    pub fn plan(&self, base: &Plan) -> Plan {
        let mut plan = base.clone();
        if self.op_completed {
            let crash = if self.power_loss {
                Op::PowerLoss
            } else {
                Op::Crash
            };
            plan.ops.insert(self.op + 1, crash);
        } else {
            plan.ops.insert(
                self.op,
                Op::CrashInside {
                    after_fs_calls: self.calls,
                    power_loss: self.power_loss,
                },
            );
        }
        plan.fault_salt = self.salt;
        plan
    }

    /// One line: `power loss after 3 fs call(s) inside op 4 (write), salt 2`.
    pub fn describe(&self, base: &Plan) -> String {
        let kind = if self.power_loss {
            "power loss"
        } else {
            "process crash"
        };
        let op_name = base.ops[self.op].kind_name();
        let salt = if self.power_loss {
            format!(", salt {}", self.salt)
        } else {
            String::new()
        };
        if self.op_completed {
            format!(
                "{kind} right after op {} ({op_name}) completed, its {} fs call(s) done{salt}",
                self.op, self.calls
            )
        } else {
            format!(
                "{kind} after {} fs call(s) inside op {} ({op_name}){salt}",
                self.calls, self.op
            )
        }
    }
}

/// Crashes that happened inside op `op` (from 0) of the plan the outcome ran.
fn crashes_inside(o: &Outcome, op: usize) -> usize {
    o.crash_points_reached
        .iter()
        .filter(|&&n| n == op + 1)
        .count()
}

/// A key for the disk images after every crash of a run: two states with the same key crashed
/// onto the same images.
fn images_key(o: &Outcome) -> u64 {
    let mut h = Fnv::default();
    for image in &o.crash_images {
        h.u64(*image);
    }
    h.0
}

/// A failing state.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub case: String,
    /// Where the state crashed (None: the base plan itself fails).
    pub at: Option<Point>,
    /// `at` in words.
    pub crash: String,
    /// The first failure line, `[check] detail`.
    pub failure: String,
    #[serde(skip)]
    pub plan: Plan,
    /// Where the plan was saved and how to replay it (filled by [`save_failures`]).
    pub plan_file: Option<PathBuf>,
    pub repro: Option<String>,
}

/// What exploring the crash points inside one op found.
#[derive(Clone, Debug, Default)]
struct OpResult {
    /// Crash points reached: after 0, 1, ... calls inside the op, and after its last call.
    crash_points: u32,
    /// Those crash points, in order (the power losses explore them).
    reached: Vec<Point>,
    /// The op still reached the largest crash point allowed: its exploration is cut.
    truncated: bool,
    process_states: usize,
    power_loss_images: usize,
    /// Every crash-images key seen, either kind.
    images: BTreeSet<u64>,
    failures: usize,
    found: Vec<Found>,
    /// Coverage marks hit, with the number of states hitting each.
    marks: BTreeMap<String, usize>,
    seconds: f64,
}

impl OpResult {
    /// Counts a process-crash state: a crash point reached.
    fn add_process_crash(&mut self, case: &Case, at: Point, o: &Outcome) {
        self.crash_points += 1;
        self.process_states += 1;
        self.images.insert(images_key(o));
        self.reached.push(at);
        self.add_run(case, at, o);
    }

    /// Counts one explored run: its marks and its failure, if any.
    fn add_run(&mut self, case: &Case, at: Point, o: &Outcome) {
        for mark in o.marks.keys() {
            *self.marks.entry(mark.clone()).or_default() += 1;
        }
        record_failure(self, case, at, o);
    }
}

/// Counts the state's failure, if any, and keeps it while fewer than the bound are kept.
fn record_failure(r: &mut OpResult, case: &Case, at: Point, o: &Outcome) {
    let Some(first) = o.failures.first() else {
        return;
    };
    r.failures += 1;
    if r.found.len() < FAILURES_SAVED_PER_CASE_MAX {
        r.found.push(Found {
            case: case.name.clone(),
            at: Some(at),
            crash: at.describe(&case.plan),
            failure: first.clone(),
            plan: at.plan(&case.plan),
            plan_file: None,
            repro: None,
        });
    }
}

/// Visits every crash point of op `op` of `case` as a process crash (one state each): after
/// k = 0, 1, 2, ... of its disk-changing calls until the op makes no (k + 1)-th call, then
/// after its last call (the op completed). `baseline` is the base plan's outcome.
fn process_crashes(case: &Case, op: usize, baseline: &Outcome, bounds: &Bounds) -> OpResult {
    let started = Instant::now();
    let mut r = OpResult::default();
    let before = crashes_inside(baseline, op);
    let mut calls = 0;
    loop {
        let at = Point {
            op,
            calls,
            op_completed: false,
            power_loss: false,
            salt: 0,
        };
        let o = run_plan(&at.plan(&case.plan), false);
        // With the crash op inserted before it, the target op runs at index op + 1.
        if crashes_inside(&o, op + 1) <= before {
            // The op makes `calls` disk-changing calls (the crash fell in a later op, or
            // nowhere): every crash point inside it was visited.
            break;
        }
        r.add_process_crash(case, at, &o);
        if calls == bounds.crash_point_max {
            r.truncated = true;
            break;
        }
        calls += 1;
    }
    if !r.truncated {
        let at = Point {
            op,
            calls,
            op_completed: true,
            power_loss: false,
            salt: 0,
        };
        let o = run_plan(&at.plan(&case.plan), false);
        r.add_process_crash(case, at, &o);
    }
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// Enumerates the power-loss images at a crash point a process crash reached: salts 0, 1, 2,
/// ... until the bound, or until `salts_stall_max` salts in a row add no new image. A salt that
/// draws an image seen before is the same state again: it must pass or fail as the first did.
fn power_losses(case: &Case, point: Point, bounds: &Bounds) -> OpResult {
    let started = Instant::now();
    let mut r = OpResult::default();
    // Crash-images key -> whether its state failed.
    let mut seen: BTreeMap<u64, bool> = BTreeMap::new();
    let mut stalled = 0;
    for salt in 0..bounds.salts_max {
        let at = Point {
            power_loss: true,
            salt,
            ..point
        };
        let mut o = run_plan(&at.plan(&case.plan), false);
        let key = images_key(&o);
        let failed = !o.failures.is_empty();
        match seen.get(&key) {
            None => {
                seen.insert(key, failed);
                r.images.insert(key);
                r.add_run(case, at, &o);
                stalled = 0;
            }
            Some(&first) => {
                if first != failed {
                    let verdict = |f: bool| if f { "failed" } else { "passed" };
                    let why = Failure::new(
                        Check::Determinism,
                        format!(
                            "salt {salt} drew crash images seen before: that state {}, this run {}",
                            verdict(first),
                            verdict(failed)
                        ),
                    );
                    o.failures.insert(0, why.to_string());
                    r.add_run(case, at, &o);
                }
                stalled += 1;
            }
        }
        if stalled >= bounds.salts_stall_max {
            break;
        }
    }
    r.power_loss_images = seen.len();
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// One row of the exploration table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaseReport {
    pub case: String,
    /// Ops crashed inside.
    pub ops: usize,
    /// Crash points visited, summed over the case's targeted ops.
    pub crash_points: u32,
    /// Targeted ops that still reached the largest crash point allowed.
    pub truncated_ops: usize,
    pub process_crash_states: usize,
    /// Distinct power-loss images, summed over crash points.
    pub power_loss_images: usize,
    /// process_crash_states + power_loss_images.
    pub states: usize,
    /// Distinct crash-image sequences over the whole case (states at different crash points or
    /// of different kinds may land on the same disk).
    pub distinct_images: usize,
    pub failures: usize,
    /// Coverage marks hit by the explored states, with the number of states hitting each.
    pub marks: BTreeMap<String, usize>,
    /// Claimed marks hit neither by the base plan nor by any explored state.
    pub unreached_claims: Vec<String>,
    /// Seconds of work (summed over threads).
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    pub bounds: Option<Bounds>,
    pub jobs: usize,
    pub cases: Vec<CaseReport>,
    pub crash_points: u32,
    pub states: usize,
    pub failures: usize,
    /// Claimed marks no run of their case hit, as `case: mark`.
    pub unreached_claims: Vec<String>,
    /// Wall-clock seconds of the whole exploration.
    pub seconds: f64,
    /// Saved failing states (at most [`FAILURES_SAVED_PER_CASE_MAX`] per case).
    pub found: Vec<Found>,
}

/// Runs `f` over `items` on `jobs` threads (each first calls `init`, e.g. to activate a planted
/// bug, which is per thread), and returns the results in the items' order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    init: &(dyn Fn() + Sync),
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Explores `cases` within `bounds` on `jobs` threads. `init` runs first on every worker thread.
/// The counts do not depend on `jobs`.
pub fn explore(cases: &[Case], bounds: &Bounds, jobs: usize, init: &(dyn Fn() + Sync)) -> Report {
    let started = Instant::now();
    let baselines = parallel_map(cases, jobs, init, |c| run_plan(&c.plan, false));
    let work: Vec<(usize, usize)> = cases
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.targets.iter().map(move |&op| (ci, op)))
        .collect();
    let crashed = parallel_map(&work, jobs, init, |&(ci, op)| {
        process_crashes(&cases[ci], op, &baselines[ci], bounds)
    });
    // Power losses only where a process crash reached: one work item per crash point, so the
    // threads stay busy to the end.
    let points: Vec<(usize, Point)> = work
        .iter()
        .zip(&crashed)
        .flat_map(|(&(ci, _), r)| r.reached.iter().map(move |&at| (ci, at)))
        .collect();
    let lost = parallel_map(&points, jobs, init, |&(ci, at)| {
        power_losses(&cases[ci], at, bounds)
    });
    let results: Vec<(usize, &OpResult)> = work
        .iter()
        .map(|&(ci, _)| ci)
        .zip(&crashed)
        .chain(points.iter().map(|&(ci, _)| ci).zip(&lost))
        .collect();
    let mut report = Report {
        bounds: Some(*bounds),
        jobs,
        ..Default::default()
    };
    for (ci, case) in cases.iter().enumerate() {
        let of_case = results
            .iter()
            .filter(|(rci, _)| *rci == ci)
            .map(|&(_, r)| r);
        let (row, found) = case_row(case, &baselines[ci], of_case);
        report.unreached_claims.extend(
            row.unreached_claims
                .iter()
                .map(|m| format!("{}: {m}", case.name)),
        );
        report.crash_points += row.crash_points;
        report.states += row.states;
        report.failures += row.failures;
        report.cases.push(row);
        report.found.extend(found);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Sums a case's results into its row, with the failing states kept for it (the base plan's
/// failure first, then at most [`FAILURES_SAVED_PER_CASE_MAX`]).
fn case_row<'r>(
    case: &Case,
    baseline: &Outcome,
    results: impl Iterator<Item = &'r OpResult>,
) -> (CaseReport, Vec<Found>) {
    let mut row = CaseReport {
        case: case.name.clone(),
        ops: case.targets.len(),
        ..Default::default()
    };
    let mut found = Vec::new();
    if let Some(first) = baseline.failures.first() {
        row.failures += 1;
        found.push(Found {
            case: case.name.clone(),
            at: None,
            crash: "none: the base plan fails".to_string(),
            failure: first.clone(),
            plan: case.plan.clone(),
            plan_file: None,
            repro: None,
        });
    }
    let mut images: BTreeSet<u64> = BTreeSet::new();
    let mut found_in_states = Vec::new();
    for r in results {
        row.crash_points += r.crash_points;
        row.truncated_ops += usize::from(r.truncated);
        row.process_crash_states += r.process_states;
        row.power_loss_images += r.power_loss_images;
        row.failures += r.failures;
        row.seconds += r.seconds;
        images.extend(&r.images);
        for (mark, n) in &r.marks {
            *row.marks.entry(mark.clone()).or_default() += n;
        }
        found_in_states.extend(r.found.iter().cloned());
    }
    found_in_states.truncate(FAILURES_SAVED_PER_CASE_MAX);
    found.extend(found_in_states);
    row.states = row.process_crash_states + row.power_loss_images;
    row.distinct_images = images.len();
    row.unreached_claims = case
        .claims
        .iter()
        .filter(|m| !row.marks.contains_key(**m) && !baseline.marks.contains_key(**m))
        .map(|m| m.to_string())
        .collect();
    (row, found)
}

/// Removes the plans an earlier exploration saved in `dir` (its `*.json` files), so what the
/// directory holds is what the last exploration found.
pub fn clear_failures(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "json") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Saves every found failing plan under `dir` and fills its file and one-line reproduction.
pub fn save_failures(report: &mut Report, dir: &Path) -> std::io::Result<()> {
    if report.found.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let canary = report.canary.clone();
    for f in &mut report.found {
        let case = f.case.replace('/', "-");
        let stem = match &f.at {
            Some(at) => format!(
                "{case}-op{}-{}{}-{}{}",
                at.op,
                if at.op_completed { "end" } else { "k" },
                at.calls,
                if at.power_loss { "power" } else { "process" },
                if at.power_loss {
                    format!("-salt{}", at.salt)
                } else {
                    String::new()
                }
            ),
            None => format!("{case}-base"),
        };
        let path = dir.join(format!("{stem}.json"));
        let mut plan = f.plan.clone();
        plan.reason = format!("explore, case {}, {}: {}", f.case, f.crash, f.failure);
        std::fs::write(&path, plan.to_json() + "\n")?;
        f.repro = Some(match &canary {
            None => format!(
                "cargo run --release -p receipt-sim -- replay --plan {}",
                path.display()
            ),
            Some(c) => format!(
                "cargo run --release -p receipt-sim --features canary -- replay --plan {} --canary {c}",
                path.display()
            ),
        });
        f.plan_file = Some(path);
    }
    Ok(())
}

/// The report as a table, one row per case, and the total line.
pub fn table(report: &Report) -> String {
    let w = report
        .cases
        .iter()
        .map(|r| r.case.len())
        .max()
        .unwrap_or(0)
        .max("case".len());
    let mut out = format!(
        "{:<w$} {:>6} {:>7} {:>5} {:>8} {:>10} {:>7} {:>7} {:>8} {:>8}\n",
        "case",
        "ops",
        "points",
        "cut",
        "process",
        "power-loss",
        "states",
        "images",
        "failures",
        "seconds"
    );
    for r in &report.cases {
        out += &format!(
            "{:<w$} {:>6} {:>7} {:>5} {:>8} {:>10} {:>7} {:>7} {:>8} {:>8.1}\n",
            r.case,
            r.ops,
            r.crash_points,
            r.truncated_ops,
            r.process_crash_states,
            r.power_loss_images,
            r.states,
            r.distinct_images,
            r.failures,
            r.seconds
        );
    }
    out += &format!(
        "explored {} states at {} crash points in {:.1} s; {} failure(s)",
        report.states, report.crash_points, report.seconds, report.failures
    );
    out
}

/// What `receipt-sim explore` was asked to do.
#[derive(Clone, Debug)]
pub struct Command {
    pub bounds: Bounds,
    /// Case name prefixes (all cases when empty).
    pub cases: Vec<String>,
    pub jobs: usize,
    pub canary: Option<String>,
    pub commit: Option<String>,
    /// The JSON report.
    pub report: PathBuf,
    /// Where failing plans are saved.
    pub failures_dir: PathBuf,
}

/// Default directory of failing plans.
pub const FAILURES_DIR: &str = "reports/explore-failures";

/// `receipt-sim explore`: explores, prints the table and every saved failure with its
/// reproduction, writes the report; returns the exit code (1 on any failure, 2 on bad input).
pub fn run_command(cmd: &Command, init: &(dyn Fn() + Sync)) -> i32 {
    let cases = match select_cases(&cmd.cases) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("receipt-sim: {e}");
            return 2;
        }
    };
    let b = &cmd.bounds;
    println!(
        "exploring {} case(s): crash points 0..={} per op, up to {} salt(s) per power loss (stop after {} without a new image), {} job(s)",
        cases.len(),
        b.crash_point_max,
        b.salts_max,
        b.salts_stall_max,
        cmd.jobs
    );
    let mut report = explore(&cases, b, cmd.jobs, init);
    report.commit = cmd.commit.clone();
    report.canary = cmd.canary.clone();
    let saved = clear_failures(&cmd.failures_dir)
        .and_then(|()| save_failures(&mut report, &cmd.failures_dir));
    if let Err(e) = saved {
        eprintln!(
            "could not save failing plans in {}: {e}",
            cmd.failures_dir.display()
        );
    }
    println!("{}", table(&report));
    let cut: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.truncated_ops > 0)
        .map(|c| c.case.as_str())
        .collect();
    if !cut.is_empty() {
        println!(
            "CUT: op(s) still reached crash point {} in {}: raise --max-crash-point for an exhaustive run",
            b.crash_point_max,
            cut.join(", ")
        );
    }
    for f in &report.found {
        println!("FAILED {} ({}): {}", f.case, f.crash, f.failure);
        if let Some(r) = &f.repro {
            println!("  reproduce: {r}");
        }
    }
    if let Some(dir) = cmd.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &cmd.report,
        serde_json::to_string_pretty(&report).expect("serialisable"),
    ) {
        Ok(()) => println!("report: {}", cmd.report.display()),
        Err(e) => eprintln!("could not write {}: {e}", cmd.report.display()),
    }
    if !report.unreached_claims.is_empty() {
        println!(
            "UNREACHED: {} claimed mark(s) hit by no run of their case: {}",
            report.unreached_claims.len(),
            report.unreached_claims.join(", ")
        );
    }
    i32::from(report.failures > 0 || !report.unreached_claims.is_empty())
}
