//! The real-process crash campaign: the simulator's plans run against a child process that owns
//! the store on a real directory (`std::fs`, real fsyncs, tokio), and the parent kills it with
//! SIGKILL at seeded points, then opens the directory itself and checks the recovered state with
//! the simulator's own model and checks ([`check::match_recovery`], [`check::phantoms`],
//! [`check::check_files`]). The sim filesystem's crash model and the real one must agree.
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

use crate::check::{self, Check, Failure};
use crate::exec;
use crate::model::{receipts_for, Model, State};
use crate::plan::{Op, Plan, STALE_TX_BASE};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, Error, LogFilter, Store, SyncPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Seed-derivation constant of the kill schedule: its own ChaCha stream, so the kill points
/// never remap the plan's ops (see [`crate::plan::PLAN_STREAM`]).
pub const KILL_STREAM: u64 = 0x5_1691_4B11;
/// The scenario `receipt-sim real` runs by default: write-path ops only.
pub const DEFAULT_SCENARIO: &str = "real-process";
/// Kill delays after the chosen ack, at most (microseconds). Most draws are far shorter.
pub const KILL_DELAY_US_MAX: u64 = 5_000;
/// The child's prune ticker period, at most: plans draw 250..2,000 virtual ms, which would
/// rarely tick during a child that lives a few hundred real milliseconds.
const CHILD_PRUNE_INTERVAL_MS_MAX: u64 = 50;
/// The parent's prune ticker period: it must not prune while the parent lists files and reads
/// the state it is checking.
const PARENT_PRUNE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// A child that prints nothing for this long is hung: it is killed and the seed fails.
pub const CHILD_SILENCE_MAX: Duration = Duration::from_secs(60);
/// Lines of a failed child's stderr quoted in the failure.
const STDERR_TAIL_LINES: usize = 12;
/// Worker threads of the child's tokio runtime (production runs the store multi-threaded).
const CHILD_WORKER_THREADS: usize = 2;
/// Failing runs listed in one report, at most (the count is always complete).
pub const FAILING_LISTED_MAX: usize = 200;

// ---------------------------------------------------------------------------------------------
// The protocol
// ---------------------------------------------------------------------------------------------

/// What an error returned to the child was, as far as the parent's checks care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NonMonotonic,
    Sealed,
    InvalidInput,
    ZeroMaxBlocksPerFile,
    Poisoned,
    Closed,
    Other,
}

const ERROR_KINDS: [(ErrorKind, &str); 7] = [
    (ErrorKind::NonMonotonic, "non_monotonic"),
    (ErrorKind::Sealed, "sealed"),
    (ErrorKind::InvalidInput, "invalid_input"),
    (ErrorKind::ZeroMaxBlocksPerFile, "zero_max_blocks_per_file"),
    (ErrorKind::Poisoned, "poisoned"),
    (ErrorKind::Closed, "closed"),
    (ErrorKind::Other, "other"),
];

impl ErrorKind {
    pub fn of(e: &Error) -> Self {
        match e {
            Error::NonMonotonic { .. } => ErrorKind::NonMonotonic,
            Error::Sealed { .. } => ErrorKind::Sealed,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::ZeroMaxBlocksPerFile => ErrorKind::ZeroMaxBlocksPerFile,
            Error::Poisoned(_) => ErrorKind::Poisoned,
            Error::Closed | Error::Crashed => ErrorKind::Closed,
            _ => ErrorKind::Other,
        }
    }

    pub fn tag(self) -> &'static str {
        ERROR_KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, t)| *t)
            .expect("every kind has a tag")
    }

    fn from_tag(tag: &str) -> Option<Self> {
        ERROR_KINDS.iter().find(|(_, t)| *t == tag).map(|(k, _)| *k)
    }
}

/// One line the child prints on stdout (and flushes) as it goes. A line the parent reads
/// describes something that happened before the kill; what happened after the last line is
/// unknown, which the model already allows for (an issued write may or may not be durable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The store opened: recovery is done.
    Opened,
    /// Op `i` of the plan is about to be called.
    Issued(usize),
    /// Write op `i` returned `Ok`: it is acknowledged.
    Ack(usize),
    /// Op `i` (not a write) returned `Ok`.
    Done(usize),
    /// Op `i` returned an error.
    Failed {
        op: usize,
        kind: ErrorKind,
        detail: String,
    },
    /// Explicit prune op `i` removed these windows and left no deletion pending: the removals
    /// are durable and the windows must never come back.
    Pruned {
        op: usize,
        starts: Vec<u64>,
    },
    /// The child is about to close the store cleanly; the next child starts at `next_op`.
    Closing {
        next_op: usize,
    },
    /// The store closed cleanly; the child exits 0.
    Closed {
        next_op: usize,
    },
    CloseFailed {
        next_op: usize,
        detail: String,
    },
    OpenFailed(String),
}

/// Error texts travel on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Opened => write!(f, "opened"),
            Msg::Issued(i) => write!(f, "issued {i}"),
            Msg::Ack(i) => write!(f, "ack {i}"),
            Msg::Done(i) => write!(f, "done {i}"),
            Msg::Failed { op, kind, detail } => {
                write!(f, "failed {op} {} {}", kind.tag(), one_line(detail))
            }
            Msg::Pruned { op, starts } => {
                write!(f, "pruned {op}")?;
                for s in starts {
                    write!(f, " {s}")?;
                }
                Ok(())
            }
            Msg::Closing { next_op } => write!(f, "closing {next_op}"),
            Msg::Closed { next_op } => write!(f, "closed {next_op}"),
            Msg::CloseFailed { next_op, detail } => {
                write!(f, "close_failed {next_op} {}", one_line(detail))
            }
            Msg::OpenFailed(detail) => write!(f, "open_failed {}", one_line(detail)),
        }
    }
}

impl Msg {
    pub fn parse(line: &str) -> Option<Msg> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: &str| s.parse::<usize>().ok();
        // `<number> <text>`, the text possibly empty.
        let num_text = |s: &str| {
            let (n, t) = s.split_once(' ').unwrap_or((s, ""));
            Some((num(n)?, t.to_string()))
        };
        Some(match word {
            "opened" if rest.is_empty() => Msg::Opened,
            "issued" => Msg::Issued(num(rest)?),
            "ack" => Msg::Ack(num(rest)?),
            "done" => Msg::Done(num(rest)?),
            "failed" => {
                let (op, t) = num_text(rest)?;
                let (tag, detail) = t.split_once(' ').unwrap_or((&t, ""));
                Msg::Failed {
                    op,
                    kind: ErrorKind::from_tag(tag)?,
                    detail: detail.to_string(),
                }
            }
            "pruned" => {
                let mut it = rest.split(' ');
                let op = num(it.next()?)?;
                let starts = it.map(|s| s.parse().ok()).collect::<Option<Vec<u64>>>()?;
                Msg::Pruned { op, starts }
            }
            "closing" => Msg::Closing {
                next_op: num(rest)?,
            },
            "closed" => Msg::Closed {
                next_op: num(rest)?,
            },
            "close_failed" => {
                let (next_op, detail) = num_text(rest)?;
                Msg::CloseFailed { next_op, detail }
            }
            "open_failed" => Msg::OpenFailed(rest.to_string()),
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

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
fn parent_config(plan: &Plan) -> Config {
    let mut c = exec::config(plan);
    c.prune_interval = PARENT_PRUNE_INTERVAL;
    c
}

/// Entry point of `receipt-sim child`: runs `plan` from op `from_op` on the store in `dir`,
/// reporting on stdout. Returns the process exit code (0 after a clean close).
pub fn child_main(dir: &Path, plan_path: &Path, from_op: usize) -> i32 {
    let plan = match std::fs::read_to_string(plan_path)
        .map_err(|e| e.to_string())
        .and_then(|t| Plan::from_json(&t))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("receipt-sim child: {}: {e}", plan_path.display());
            return 2;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CHILD_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(child_run(&plan, dir, from_op))
}

fn emit(m: &Msg) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone (it was killed, or gave up on us): nothing left to report to.
    if writeln!(out, "{m}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Reports op `i`'s outcome: `ok_msg` on success, `Failed` otherwise.
fn emit_result<T>(i: usize, r: &Result<T, Error>, ok_msg: Msg) {
    match r {
        Ok(_) => emit(&ok_msg),
        Err(e) => emit(&Msg::Failed {
            op: i,
            kind: ErrorKind::of(e),
            detail: e.to_string(),
        }),
    }
}

async fn child_run(plan: &Plan, dir: &Path, from_op: usize) -> i32 {
    let store = match Store::open(RealEnv::default(), dir, child_config(plan)).await {
        Ok(s) => s,
        Err(e) => {
            emit(&Msg::OpenFailed(e.to_string()));
            return 1;
        }
    };
    emit(&Msg::Opened);
    let seed = plan.seed;
    for (i, op) in plan.ops.iter().enumerate().skip(from_op) {
        match op {
            Op::Write {
                height,
                first_tx,
                receipts,
                logs,
            } => {
                let rs = receipts_for(seed, *height, *first_tx, *receipts, *logs);
                emit(&Msg::Issued(i));
                let r = store.write_receipts(*height, rs).await;
                emit_result(i, &r, Msg::Ack(i));
            }
            Op::Stale { height } => {
                let rs = receipts_for(seed, *height, STALE_TX_BASE + i as u32, 1, 1);
                emit(&Msg::Issued(i));
                let r = store.write_receipts(*height, rs).await;
                emit_result(i, &r, Msg::Ack(i));
            }
            Op::Empty { height } => {
                emit(&Msg::Issued(i));
                let r = store.write_receipts(*height, vec![]).await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Prune { explicit: true } => {
                emit(&Msg::Issued(i));
                let before = store.status().await.map(|s| s.closed_pairs).ok();
                let r = store.prune_now().await;
                if let (Ok(n), Some(before)) = (&r, before) {
                    if *n > 0 {
                        if let Ok(after) = store.status().await {
                            if after.pending_deletes == 0 {
                                let starts = before
                                    .into_iter()
                                    .filter(|s| !after.closed_pairs.contains(s))
                                    .collect();
                                emit(&Msg::Pruned { op: i, starts });
                            }
                        }
                    }
                }
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Prune { explicit: false } => {
                // Let the ticker run (it prunes on the coordinator in the background).
                emit(&Msg::Issued(i));
                if plan.swarm.keep_recent > 0 {
                    tokio::time::sleep(child_config(plan).prune_interval).await;
                }
                emit(&Msg::Done(i));
            }
            Op::Resize {
                max_blocks_per_file: n,
            } => {
                emit(&Msg::Issued(i));
                let r = store.set_max_blocks_per_file(*n).await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Flush => {
                emit(&Msg::Issued(i));
                let r = store.flush().await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::CloseReopen => {
                emit(&Msg::Issued(i));
                return child_close(&store, i + 1).await;
            }
            // Reads are checked in the simulator; crashes, power losses and injected faults
            // are in-process fault ops: the kills replace them here.
            Op::Oversized { .. }
            | Op::ReadReceipt { .. }
            | Op::ReadLogs { .. }
            | Op::Crash
            | Op::PowerLoss
            | Op::Failpoint { .. }
            | Op::FsFault { .. } => {}
        }
    }
    child_close(&store, plan.ops.len()).await
}

async fn child_close(store: &Store<RealEnv>, next_op: usize) -> i32 {
    emit(&Msg::Closing { next_op });
    match store.close().await {
        Ok(()) => {
            emit(&Msg::Closed { next_op });
            0
        }
        Err(e) => {
            emit(&Msg::CloseFailed {
                next_op,
                detail: e.to_string(),
            });
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// How a seed is run.
#[derive(Clone, Debug)]
pub struct RealOptions {
    /// The `receipt-sim` binary run as the child.
    pub exe: PathBuf,
    /// Kills per seed (fewer when the plan ends first).
    pub kills: usize,
    /// Where each run's temporary directory is made.
    pub work_dir: PathBuf,
    /// Keep a failing run's directory (its path is in the outcome).
    pub keep_failed: bool,
}

/// Called after each kill with the data directory and the kill's number (from 1), before the
/// parent reopens: tests damage the directory here to prove the checks catch it.
pub type AfterKill<'a> = &'a (dyn Fn(&Path, usize, &Model) + Sync);

/// The outcome of one seed under one sync policy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RealOutcome {
    pub seed: u64,
    pub policy: String,
    pub scenario: String,
    /// One line per failure, `[check] detail`; empty when the run passed.
    pub failures: Vec<String>,
    /// Children that died of our SIGKILL.
    pub kills: usize,
    pub child_runs: usize,
    /// Children that closed the store cleanly (a close-and-reopen op or the plan's end).
    pub clean_closes: usize,
    /// Recoveries checked (one after every kill and every clean close).
    pub checks: usize,
    pub writes_acked: usize,
    /// Blocks holding receipts in the recovered state, summed over the checks.
    pub recovered_blocks: usize,
    /// Kills with a write in flight whose write was recovered, and whose write was not.
    pub in_flight_survived: usize,
    pub in_flight_lost: usize,
    /// What the child was doing when each kill landed (the op in flight, or between ops).
    pub kills_during: BTreeMap<String, usize>,
    /// The run's directory, kept because it failed.
    pub kept_dir: Option<PathBuf>,
}

/// A write whose `issued` line was read and whose outcome was not (yet).
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    op: usize,
    idx: usize,
    height: u64,
    /// The model's highest seen block and last write height before the write was issued.
    max_seen: u64,
    last: Option<u64>,
    stale: bool,
}

/// How one child run ended.
enum RunEnd {
    Killed,
    Closed,
    /// A failure was recorded.
    Failed,
}

struct SeedRun<'a> {
    plan: &'a Plan,
    opts: &'a RealOptions,
    data: PathBuf,
    plan_path: PathBuf,
    model: Model,
    out: RealOutcome,
    pending: Option<PendingWrite>,
    /// The op the next child starts at.
    resume: usize,
    /// Per child run: acks read, what it is doing, the window size it rotates at.
    acks: usize,
    doing: String,
    window: u64,
    closed: bool,
}

fn policy_name(p: SyncPolicy) -> &'static str {
    match p {
        SyncPolicy::Always => "always",
        SyncPolicy::Never => "never",
    }
}

/// Where a kill lands: after `acks` acknowledged writes of the child run, plus `delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillPoint {
    pub acks: usize,
    pub delay: Duration,
}

/// Draws the next kill point: acks spread so the remaining kills cover the remaining writes,
/// and a delay that is mostly sub-millisecond (inside the next write) and sometimes a few
/// milliseconds (inside a rotation, a flush, a prune or the close).
pub fn draw_kill(rng: &mut ChaCha8Rng, writes_left: usize, kills_left: usize) -> KillPoint {
    let spread = (writes_left / (kills_left + 1)).max(1);
    let acks = rng.random_range(0..=2 * spread);
    let delay_us = match rng.random_range(0..10) {
        0..=3 => rng.random_range(0..200),
        4..=7 => rng.random_range(200..2_000),
        _ => rng.random_range(2_000..=KILL_DELAY_US_MAX),
    };
    KillPoint {
        acks,
        delay: Duration::from_micros(delay_us),
    }
}

/// Reads every file under `dir` (recursively) into a map keyed by path, as the sim fs's
/// snapshot gives [`check::check_files`].
fn read_tree(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

async fn read_state(store: &Store<RealEnv>) -> Result<State, Error> {
    let receipts = store.receipts_in_range(0, u64::MAX).await?;
    let logs = store.get_logs(&LogFilter::default()).await?;
    Ok(State { receipts, logs })
}

impl SeedRun<'_> {
    fn fail(&mut self, f: Failure) {
        self.out.failures.push(f.to_string());
    }

    fn op_name(&self, i: usize) -> String {
        let op = &self.plan.ops[i];
        let boundary = match op {
            Op::Write { height, .. } | Op::Empty { height } => {
                height.is_multiple_of(self.window.max(1))
            }
            _ => false,
        };
        format!(
            "{}{}",
            op.kind_name(),
            if boundary {
                " at a window boundary"
            } else {
                ""
            }
        )
    }

    /// Feeds one line of the child to the model, as the in-sim executor feeds it a call and
    /// its answer. Failures are recorded; the caller stops after the line.
    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Opened => self.doing = "between ops".into(),
            Msg::Issued(i) => self.on_issued(i),
            Msg::Ack(i) => self.on_ack(i),
            Msg::Done(i) => {
                self.doing = "between ops".into();
                match self.plan.ops.get(i) {
                    Some(Op::Resize {
                        max_blocks_per_file: 0,
                    }) => self.fail(Failure::new(
                        Check::Write,
                        "set_max_blocks_per_file(0) answered Ok",
                    )),
                    Some(Op::Resize {
                        max_blocks_per_file: n,
                    }) => self.window = *n,
                    _ => {}
                }
            }
            Msg::Failed { op, kind, detail } => self.on_failed(op, kind, &detail),
            Msg::Pruned { starts, .. } => self.model.pruned.extend(starts),
            Msg::Closing { next_op } => {
                self.resume = next_op;
                self.doing = "close".into();
            }
            Msg::Closed { .. } => self.closed = true,
            Msg::CloseFailed { detail, .. } => self.fail(Failure::new(
                Check::Write,
                format!("close failed in a real process (no injected fault): {detail}"),
            )),
            Msg::OpenFailed(detail) => self.fail(Failure::new(
                Check::Open,
                format!("the child cannot open the store: {detail}"),
            )),
        }
    }

    fn on_issued(&mut self, i: usize) {
        self.resume = i + 1;
        self.doing = self.op_name(i);
        let (height, receipts, stale) = match &self.plan.ops[i] {
            Op::Write {
                height,
                first_tx,
                receipts,
                logs,
            } => (
                *height,
                receipts_for(self.plan.seed, *height, *first_tx, *receipts, *logs),
                false,
            ),
            Op::Stale { height } => (
                *height,
                receipts_for(self.plan.seed, *height, STALE_TX_BASE + i as u32, 1, 1),
                true,
            ),
            Op::Empty { height } => {
                self.model.observe_empty(*height);
                return;
            }
            _ => return,
        };
        let (max_seen, last) = (self.model.max_seen, self.model.last_height());
        let idx = self.model.begin(height, receipts);
        self.pending = Some(PendingWrite {
            op: i,
            idx,
            height,
            max_seen,
            last,
            stale,
        });
    }

    fn take_pending(&mut self, op: usize) -> Option<PendingWrite> {
        match self.pending {
            Some(p) if p.op == op => self.pending.take(),
            _ => None,
        }
    }

    fn on_ack(&mut self, op: usize) {
        self.doing = "between ops".into();
        let Some(p) = self.take_pending(op) else {
            self.fail(Failure::new(
                Check::Sim,
                format!("child protocol: ack {op} without a write issued"),
            ));
            return;
        };
        if p.stale && p.last.is_some_and(|l| l > p.height) {
            self.fail(Failure::new(
                Check::Write,
                format!(
                    "a stale write at {} below block {:?} was accepted",
                    p.height, p.last
                ),
            ));
        }
        self.model.ack(p.idx);
        self.out.writes_acked += 1;
        self.acks += 1;
    }

    /// An op failed. A real process has no injected faults, so only a stale write's rejection
    /// and a zero window size's refusal are expected; a valid write may also be refused when
    /// it is at or below a block already seen (exactly as in the simulator).
    fn on_failed(&mut self, op: usize, kind: ErrorKind, detail: &str) {
        self.doing = "between ops".into();
        let Some(p) = self.take_pending(op) else {
            let expected = matches!(
                (self.plan.ops.get(op), kind),
                (
                    Some(Op::Resize {
                        max_blocks_per_file: 0
                    }),
                    ErrorKind::ZeroMaxBlocksPerFile
                )
            );
            if !expected {
                let what = self.op_name(op);
                self.fail(Failure::new(
                    Check::Write,
                    format!("{what} (op {op}) failed without an injected fault: {detail}"),
                ));
            }
            return;
        };
        let what = if p.stale { "stale write" } else { "write" };
        match kind {
            ErrorKind::NonMonotonic | ErrorKind::Sealed => {
                self.model.reject(p.idx);
                if p.height > p.max_seen {
                    self.fail(Failure::new(
                        Check::Write,
                        format!(
                            "a {what} at {}, above every block seen ({}), was rejected: {detail}",
                            p.height, p.max_seen
                        ),
                    ));
                }
            }
            ErrorKind::InvalidInput
            | ErrorKind::Poisoned
            | ErrorKind::Closed
            | ErrorKind::ZeroMaxBlocksPerFile => {
                self.model.reject(p.idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!("a {what} at {} was refused: {detail}", p.height),
                ));
            }
            ErrorKind::Other => {
                self.model.unknown(p.idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!(
                        "a {what} at {} failed without an injected fault: {detail}",
                        p.height
                    ),
                ));
            }
        }
    }

    /// Runs one child from `self.resume`, killing it at `kill` if it gets there first.
    fn child_run(&mut self, kill: Option<KillPoint>) -> RunEnd {
        self.out.child_runs += 1;
        self.acks = 0;
        self.doing = "open".into();
        self.window = self.plan.swarm.max_blocks_per_file;
        self.closed = false;
        let from = self.resume;
        let spawned = Command::new(&self.opts.exe)
            .arg("child")
            .arg("--dir")
            .arg(&self.data)
            .arg("--plan")
            .arg(&self.plan_path)
            .arg("--from-op")
            .arg(from.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                self.fail(Failure::new(
                    Check::Sim,
                    format!("cannot start {}: {e}", self.opts.exe.display()),
                ));
                return RunEnd::Failed;
            }
        };
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let sent_kill = self.watch(&mut child, &rx, kill);
        let status = child.wait();
        // Lines written before the child died are still in the pipe: they happened.
        for line in rx.iter() {
            self.on_line(&line);
        }
        let _ = reader.join();
        let stderr = err_reader.join().unwrap_or_default();
        self.classify_end(status, sent_kill, &stderr)
    }

    /// Reads the child's lines until it exits, is due for its kill, or falls silent. Returns
    /// whether it sent SIGKILL.
    fn watch(
        &mut self,
        child: &mut Child,
        rx: &mpsc::Receiver<String>,
        kill: Option<KillPoint>,
    ) -> bool {
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() {
                if let Some(k) = kill.filter(|k| self.acks >= k.acks) {
                    deadline = Some(Instant::now() + k.delay);
                }
            }
            // Checked before reading: a child printing faster than we read must not outrun
            // its kill.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // On Unix `Child::kill` sends SIGKILL. A child that exited meanwhile is a
                // zombie until waited for, so the signal cannot reach another process.
                let _ = child.kill();
                return true;
            }
            let wait = deadline.map_or(CHILD_SILENCE_MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    self.on_line(&line);
                    if !self.out.failures.is_empty() {
                        // Stop the child: nothing it does next can be trusted to the model.
                        let _ = child.kill();
                        return false;
                    }
                }
                // The deadline passed: the check above kills.
                Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    self.fail(Failure::new(
                        Check::Sim,
                        format!(
                            "the child printed nothing for {} s while in {}; killed",
                            CHILD_SILENCE_MAX.as_secs(),
                            self.doing
                        ),
                    ));
                    return false;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn on_line(&mut self, line: &str) {
        match Msg::parse(line) {
            Some(m) => self.on_msg(m),
            None => self.fail(Failure::new(
                Check::Sim,
                format!("child protocol: unreadable line {line:?}"),
            )),
        }
    }

    fn classify_end(
        &mut self,
        status: std::io::Result<ExitStatus>,
        sent_kill: bool,
        stderr: &str,
    ) -> RunEnd {
        if !self.out.failures.is_empty() {
            return RunEnd::Failed;
        }
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                self.fail(Failure::new(
                    Check::Sim,
                    format!("waiting for the child: {e}"),
                ));
                return RunEnd::Failed;
            }
        };
        // SIGKILL is signal 9 on every Unix. Otherwise the kill came too late: the child had
        // ended on its own.
        if sent_kill && status.signal() == Some(9) {
            self.out.kills += 1;
            // Every line it printed has been read: this is what it was doing when it died.
            *self.out.kills_during.entry(self.doing.clone()).or_default() += 1;
            return RunEnd::Killed;
        }
        if status.success() && self.closed {
            self.out.clean_closes += 1;
            return RunEnd::Closed;
        }
        let tail: Vec<&str> = stderr.lines().rev().take(STDERR_TAIL_LINES).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        self.fail(Failure::new(
            Check::Sim,
            format!(
                "the child (from op {}) ended with {status} while in {}; stderr: {}",
                self.resume,
                self.doing,
                tail.join(" | ")
            ),
        ));
        RunEnd::Failed
    }

    /// Opens the directory in this process and checks it: files on disk, the recovered state
    /// against the model on a prefix between acked and issued, no phantoms, and the same state
    /// again after a second open. Adopts the prefix recovered. Returns false on a failure.
    fn check_recovery(&mut self) -> bool {
        self.out.checks += 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let failures = rt.block_on(self.check_recovery_async());
        let ok = failures.is_empty();
        for f in failures {
            self.fail(f);
        }
        ok
    }

    async fn check_recovery_async(&mut self) -> Vec<Failure> {
        let config = parent_config(self.plan);
        let store = match Store::open(RealEnv::default(), &self.data, config.clone()).await {
            Ok(s) => s,
            Err(e) => {
                return vec![Failure::new(
                    Check::Open,
                    format!("store cannot be opened after the child died: {e}"),
                )]
            }
        };
        let mut out = Vec::new();
        match (store.status().await, read_tree(&self.data)) {
            (Ok(status), Ok(files)) => {
                out.extend(check::check_files(
                    &files,
                    &self.data,
                    &status,
                    &self.model.pruned,
                ));
            }
            (Err(e), _) => out.push(Failure::new(Check::Open, format!("status after open: {e}"))),
            (_, Err(e)) => out.push(Failure::new(
                Check::Sim,
                format!("listing {}: {e}", self.data.display()),
            )),
        }
        let got = match read_state(&store).await {
            Ok(s) => s,
            Err(e) => {
                out.push(Failure::new(
                    Check::Recovery,
                    format!("reading the recovered state failed: {e}"),
                ));
                return out;
            }
        };
        let tagged = self.model.tagged();
        let (lo, hi) = (self.model.lower_bound(false), self.model.issued.len());
        let prunable = self.model.prunable();
        match check::match_recovery(&tagged, &got, lo, hi, &prunable) {
            Ok(k) => {
                if hi > lo && self.pending.is_some() {
                    if k > lo {
                        self.out.in_flight_survived += 1;
                    } else {
                        self.out.in_flight_lost += 1;
                    }
                }
                self.model.adopt(k);
                self.pending = None;
            }
            Err(f) => {
                out.push(f);
                return out;
            }
        }
        out.extend(check::phantoms(&tagged, &got));
        let blocks: BTreeSet<u64> = got.receipts.iter().map(|r| r.block_number).collect();
        self.out.recovered_blocks += blocks.len();
        // Invariant 4: the same image, recovered again, gives the same state. `crash` drops the
        // store as a kill would, leaving the image for the next child.
        store.crash().await;
        drop(store);
        match Store::open(RealEnv::default(), &self.data, config).await {
            Ok(again) => {
                match read_state(&again).await {
                    Ok(s) if s == got => {}
                    Ok(s) => out.push(Failure::new(
                        Check::Idempotence,
                        format!(
                            "recovering the same directory twice gave different states: {} then {} receipts, {} then {} logs",
                            got.receipts.len(),
                            s.receipts.len(),
                            got.logs.len(),
                            s.logs.len()
                        ),
                    )),
                    Err(e) => out.push(Failure::new(
                        Check::Idempotence,
                        format!("the second recovery could not read its state: {e}"),
                    )),
                }
                again.crash().await;
            }
            Err(e) => out.push(Failure::new(
                Check::Idempotence,
                format!("the second open failed: {e}"),
            )),
        }
        out
    }

    fn writes_left(&self) -> usize {
        self.plan.ops[self.resume.min(self.plan.ops.len())..]
            .iter()
            .filter(|op| matches!(op, Op::Write { .. }))
            .count()
    }

    fn run(&mut self, after_kill: Option<AfterKill<'_>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.plan.seed ^ KILL_STREAM);
        let close_reopens = self
            .plan
            .ops
            .iter()
            .filter(|op| matches!(op, Op::CloseReopen))
            .count();
        // Every child run ends in a kill (at most `kills`), a close-and-reopen op or the end.
        let runs_max = self.opts.kills + close_reopens + 1;
        let mut kills_left = self.opts.kills;
        for _ in 0..runs_max {
            let kill =
                (kills_left > 0).then(|| draw_kill(&mut rng, self.writes_left(), kills_left));
            match self.child_run(kill) {
                RunEnd::Failed => return,
                RunEnd::Killed => {
                    kills_left -= 1;
                    if let Some(hook) = after_kill {
                        hook(&self.data, self.out.kills, &self.model);
                    }
                    if !self.check_recovery() {
                        return;
                    }
                }
                RunEnd::Closed => {
                    if !self.check_recovery() {
                        return;
                    }
                    if self.resume >= self.plan.ops.len() {
                        return;
                    }
                }
            }
        }
        self.fail(Failure::new(
            Check::Sim,
            format!("the plan did not finish in {runs_max} child runs"),
        ));
    }
}

/// Runs `plan` (with its sync policy) as a chain of killed child processes on a fresh directory
/// under `opts.work_dir`, checking every recovery. `after_kill` may damage the directory after
/// each kill (tests prove the checks fail then).
pub fn run_real_plan(
    plan: &Plan,
    opts: &RealOptions,
    after_kill: Option<AfterKill<'_>>,
) -> RealOutcome {
    let mut out = RealOutcome {
        seed: plan.seed,
        policy: policy_name(plan.swarm.sync_policy).into(),
        scenario: plan.scenario.clone(),
        ..Default::default()
    };
    // Absolute, so the child (and a kept directory's report line) names the same place.
    let work_dir = std::path::absolute(&opts.work_dir).unwrap_or_else(|_| opts.work_dir.clone());
    let tmp = match std::fs::create_dir_all(&work_dir).and_then(|()| {
        tempfile::Builder::new()
            .prefix(&format!("real-{}-{}-", plan.seed, out.policy))
            .tempdir_in(&work_dir)
    }) {
        Ok(t) => t,
        Err(e) => {
            out.failures.push(
                Failure::new(
                    Check::Sim,
                    format!(
                        "cannot make a directory in {}: {e}",
                        opts.work_dir.display()
                    ),
                )
                .to_string(),
            );
            return out;
        }
    };
    let plan_path = tmp.path().join("plan.json");
    let data = tmp.path().join("data");
    if let Err(e) = std::fs::write(&plan_path, plan.to_json()) {
        out.failures
            .push(Failure::new(Check::Sim, format!("{}: {e}", plan_path.display())).to_string());
        return out;
    }
    let mut run = SeedRun {
        plan,
        opts,
        data,
        plan_path,
        model: Model::new(plan.swarm.sync_policy, plan.swarm.keep_recent),
        out,
        pending: None,
        resume: 0,
        acks: 0,
        doing: String::new(),
        window: plan.swarm.max_blocks_per_file,
        closed: false,
    };
    run.run(after_kill);
    let mut out = run.out;
    if !out.failures.is_empty() && opts.keep_failed {
        out.kept_dir = Some(tmp.keep());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The campaign
// ---------------------------------------------------------------------------------------------

/// A campaign: seeds `base_seed..base_seed + seeds`, each under every policy in `policies`.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub scenario: String,
    pub seeds: u64,
    pub base_seed: u64,
    pub policies: Vec<SyncPolicy>,
    pub jobs: usize,
    pub options: RealOptions,
    pub commit: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RealSummary {
    pub scenario: String,
    pub base_seed: u64,
    pub seeds: u64,
    pub policies: Vec<String>,
    pub kills_per_seed: usize,
    pub commit: Option<String>,
    /// Seed x policy runs.
    pub runs: usize,
    pub passed: usize,
    pub failed: usize,
    pub kills: usize,
    pub child_runs: usize,
    pub clean_closes: usize,
    pub checks: usize,
    pub writes_acked: usize,
    pub recovered_blocks: usize,
    pub in_flight_survived: usize,
    pub in_flight_lost: usize,
    pub kills_during: BTreeMap<String, usize>,
    /// Failing runs per check.
    pub failures_by_check: BTreeMap<String, usize>,
    pub seconds: f64,
    pub failing: Vec<RealFailing>,
}

#[derive(Debug, Serialize)]
pub struct RealFailing {
    pub seed: u64,
    pub policy: String,
    pub first_failure: String,
    pub repro: String,
    pub kept_dir: Option<PathBuf>,
}

/// The one-line reproduction of a failing run (the kill points are seeded; where a kill lands
/// in real time is not, so a rerun reproduces the plan and schedule, not the exact timing).
pub fn repro_command(seed: u64, policy: &str, scenario: &str, kills: usize) -> String {
    let mut s = format!(
        "cargo run --release -p receipt-sim -- real --seed {seed} --seeds 1 --policy {policy}"
    );
    if scenario != DEFAULT_SCENARIO {
        s.push_str(&format!(" --scenario {scenario}"));
    }
    if kills != DEFAULT_KILLS {
        s.push_str(&format!(" --kills {kills}"));
    }
    s
}

/// Kills per seed by default.
pub const DEFAULT_KILLS: usize = 6;

impl RealSummary {
    pub fn add(&mut self, o: &RealOutcome, commit: Option<&str>) {
        self.runs += 1;
        self.kills += o.kills;
        self.child_runs += o.child_runs;
        self.clean_closes += o.clean_closes;
        self.checks += o.checks;
        self.writes_acked += o.writes_acked;
        self.recovered_blocks += o.recovered_blocks;
        self.in_flight_survived += o.in_flight_survived;
        self.in_flight_lost += o.in_flight_lost;
        for (k, n) in &o.kills_during {
            *self.kills_during.entry(k.clone()).or_default() += n;
        }
        let Some(first) = o.failures.first() else {
            self.passed += 1;
            return;
        };
        self.failed += 1;
        let tag = Check::of(first).map_or("unknown", |c| c.tag()).to_string();
        *self.failures_by_check.entry(tag).or_default() += 1;
        if self.failing.len() < FAILING_LISTED_MAX {
            let mut repro = repro_command(o.seed, &o.policy, &o.scenario, self.kills_per_seed);
            if let Some(c) = commit {
                repro.push_str(&format!("   # at commit {c}"));
            }
            self.failing.push(RealFailing {
                seed: o.seed,
                policy: o.policy.clone(),
                first_failure: first.clone(),
                repro,
                kept_dir: o.kept_dir.clone(),
            });
        }
    }

    /// A markdown table of the campaign.
    pub fn table(&self) -> String {
        format!(
            "| scenario | runs | passed | failed | kills | child runs | clean closes | checks | acked writes | recovered blocks | in-flight kept/lost | seconds |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {:.1} |",
            self.scenario,
            self.runs,
            self.passed,
            self.failed,
            self.kills,
            self.child_runs,
            self.clean_closes,
            self.checks,
            self.writes_acked,
            self.recovered_blocks,
            self.in_flight_survived,
            self.in_flight_lost,
            self.seconds
        )
    }
}

/// Runs a campaign, printing one line per run; returns the summary.
pub fn campaign(c: &Campaign, plans: impl Fn(u64) -> Plan + Sync) -> RealSummary {
    let runs: Vec<(u64, SyncPolicy)> = (0..c.seeds)
        .map(|i| c.base_seed.wrapping_add(i))
        .flat_map(|s| c.policies.iter().map(move |p| (s, *p)))
        .collect();
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(Vec::with_capacity(runs.len()));
    std::thread::scope(|scope| {
        for _ in 0..c.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(seed, policy)) = runs.get(i) else {
                    break;
                };
                let mut plan = plans(seed);
                plan.swarm.sync_policy = policy;
                let o = run_real_plan(&plan, &c.options, None);
                println!(
                    "seed {seed} {}: {} kills, {} child runs, {} acked, {} checks{}",
                    o.policy,
                    o.kills,
                    o.child_runs,
                    o.writes_acked,
                    o.checks,
                    o.failures
                        .first()
                        .map(|f| format!(": FAILED {f}"))
                        .unwrap_or_default()
                );
                outcomes.lock().unwrap().push(o);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by(|a, b| (a.seed, &a.policy).cmp(&(b.seed, &b.policy)));
    let mut summary = RealSummary {
        scenario: c.scenario.clone(),
        base_seed: c.base_seed,
        seeds: c.seeds,
        policies: c.policies.iter().map(|p| policy_name(*p).into()).collect(),
        kills_per_seed: c.options.kills,
        commit: c.commit.clone(),
        ..Default::default()
    };
    for o in &outcomes {
        summary.add(o, c.commit.as_deref());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

/// `receipt-sim real`: runs the campaign, prints the table, the failing runs with their
/// reproduction lines, and writes the JSON report to `report`. Returns true when a run failed.
pub fn run_campaign(c: &Campaign, plans: impl Fn(u64) -> Plan + Sync, report: &Path) -> bool {
    let policies: Vec<&str> = c.policies.iter().map(|p| policy_name(*p)).collect();
    println!(
        "real-process campaign: scenario {}, seeds {}..{} (base seed {}), {} kills per seed, policies {}",
        c.scenario,
        c.base_seed,
        c.base_seed.wrapping_add(c.seeds),
        c.base_seed,
        c.options.kills,
        policies.join(", ")
    );
    let summary = campaign(c, plans);
    println!("{}", summary.table());
    println!("kills landed during: {:?}", summary.kills_during);
    if !summary.failures_by_check.is_empty() {
        println!("failing runs by check: {:?}", summary.failures_by_check);
    }
    for f in summary.failing.iter().take(20) {
        println!(
            "FAILED seed {} ({}): {}\n  reproduce: {}{}",
            f.seed,
            f.policy,
            f.first_failure,
            f.repro,
            f.kept_dir
                .as_ref()
                .map(|d| format!("\n  directory kept: {}", d.display()))
                .unwrap_or_default()
        );
    }
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        report,
        serde_json::to_string_pretty(&summary).expect("serialisable"),
    ) {
        Ok(()) => println!("report: {}", report.display()),
        Err(e) => eprintln!("could not write {}: {e}", report.display()),
    }
    summary.failed > 0
}

/// Parses `--policy`: `always`, `never` or `both`.
pub fn parse_policies(s: &str) -> Result<Vec<SyncPolicy>, String> {
    match s {
        "both" => Ok(vec![SyncPolicy::Always, SyncPolicy::Never]),
        one => one
            .parse::<SyncPolicy>()
            .map(|p| vec![p])
            .map_err(|e| format!("{e}, or both")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_line_round_trips_through_its_text() {
        let msgs = [
            Msg::Opened,
            Msg::Issued(3),
            Msg::Ack(3),
            Msg::Done(4),
            Msg::Failed {
                op: 5,
                kind: ErrorKind::Sealed,
                detail: "non-monotonic write: height 2".into(),
            },
            Msg::Failed {
                op: 6,
                kind: ErrorKind::Other,
                detail: String::new(),
            },
            Msg::Pruned {
                op: 7,
                starts: vec![0, 16],
            },
            Msg::Pruned {
                op: 8,
                starts: vec![],
            },
            Msg::Closing { next_op: 80 },
            Msg::Closed { next_op: 80 },
            Msg::CloseFailed {
                next_op: 9,
                detail: "io error".into(),
            },
            Msg::OpenFailed("wal corrupt: x at offset 3".into()),
        ];
        for m in msgs {
            assert_eq!(Msg::parse(&m.to_string()), Some(m.clone()), "{m}");
        }
        for kind in ERROR_KINDS.map(|(k, _)| k) {
            assert_eq!(ErrorKind::from_tag(kind.tag()), Some(kind));
        }
    }

    #[test]
    fn a_multi_line_error_stays_on_one_protocol_line() {
        let m = Msg::OpenFailed("a\nb".into());
        assert_eq!(m.to_string().lines().count(), 1);
    }

    #[test]
    fn garbage_is_not_a_protocol_line() {
        for l in [
            "",
            "ack",
            "ack x",
            "failed 3 bogus x",
            "pruned",
            "opened 1",
            "thread 'main' panicked",
        ] {
            assert_eq!(Msg::parse(l), None, "{l:?}");
        }
    }

    #[test]
    fn kill_points_stay_within_their_bounds_and_follow_the_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ KILL_STREAM);
            (0..50)
                .map(|_| draw_kill(&mut rng, 30, 3))
                .collect::<Vec<_>>()
        };
        let ks = draw(1);
        assert_eq!(ks, draw(1));
        assert_ne!(ks, draw(2));
        for k in &ks {
            assert!(k.acks <= 2 * (30 / 4), "{k:?}");
            assert!(k.delay <= Duration::from_micros(KILL_DELAY_US_MAX), "{k:?}");
        }
        assert!(ks.iter().any(|k| k.delay < Duration::from_micros(200)));
        assert!(ks.iter().any(|k| k.delay >= Duration::from_millis(2)));
    }

    #[test]
    fn the_policy_flag_takes_one_policy_or_both() {
        assert_eq!(parse_policies("both").unwrap().len(), 2);
        assert_eq!(parse_policies("never").unwrap(), vec![SyncPolicy::Never]);
        assert!(parse_policies("sometimes").is_err());
    }
}
