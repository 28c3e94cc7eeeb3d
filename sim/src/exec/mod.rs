//! Runs one plan against the real store on the simulated environment and checks the invariants
//! of DESIGN.md (see [`crate::check`]) after every op and every recovery.
//!
//! One run = one seeded [`Runtime`] + one [`SimFs`]. The plan's ops run on the main task (the one
//! writer); `swarm.readers` reader tasks issue reads concurrently and check each answer against
//! the model at some instant between call and reply. A crash is modelled outside the store:
//! every store task is dropped by the runtime (as a killed process loses its threads), then the
//! filesystem crashes (process: nothing lost; power: unsynced data lost or torn), then the store
//! is opened again and its recovered state checked.

mod ops;
mod readers;
mod recovery;

use crate::check::{self, Check, Failure};
use crate::fs::{Fault, FsOp, SimFs};
use crate::model::{self, receipts_for, tx_hash, Model, State};
use crate::plan::{Limit, Op, Plan, FAULT_STREAM, READER_STREAM, STALE_TX_BASE};
use crate::runtime::{yield_now, Runtime, SimEnv};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readers::{names_rotted, tolerated_read_error, ReaderShared};
use receipt_store::env::{Clock, Env, Spawner};
use receipt_store::{
    Config, Error, FaultHook, LogFilter, LogInput, ReceiptInput, Store, MAX_LOG_DATA_BYTES,
    MAX_RECEIPT_BYTES, MAX_TOPICS_PER_LOG,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const DATA_DIR: &str = "/data";
/// Reads one reader task issues per store incarnation, at most.
pub const MAX_READS_PER_READER: usize = 48;
/// Scheduler yields a reader waits between two reads, at most (drawn per read).
pub const MAX_YIELDS_BETWEEN_READS: u32 = 48;
/// Virtual milliseconds a reader sleeps between two reads, at most, when it paces itself by the
/// clock instead of yielding (drawn per read; half the reads).
pub const MAX_READER_PAUSE_MS: u64 = 400;
/// Scheduling rounds close waits for reader tasks to notice and finish.
const MAX_DRAIN_ROUNDS: usize = 10_000;
/// Scheduler yields the writer gives the coordinator to serve a prune tick that is due.
const YIELDS_FOR_A_TICK: usize = 64;
/// Opens attempted per recovery: an armed fault may fail the first one legitimately.
const MAX_OPEN_ATTEMPTS: usize = 2;
/// Ops a poisoned store keeps serving (failing) before the executor restarts it, at most.
pub const MAX_OPS_BEFORE_RESTART: u32 = 3;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: String,
    /// One line per failure, `[check] detail`; empty when the plan passed.
    pub failures: Vec<String>,
    pub ops: usize,
    pub crashes: usize,
    pub power_losses: usize,
    /// Faults injected (filesystem faults and failpoints that fired).
    pub faults: u64,
    pub reopens: usize,
    pub writes_acked: usize,
    pub reads: usize,
    pub trace_hash: u64,
    pub state_hash: u64,
    /// Coverage marks the store hit during this run, with their hit counts.
    pub marks: BTreeMap<String, u64>,
    /// A hash of the on-disk image right after each crash or power loss, in order.
    pub crash_images: Vec<u64>,
    /// For each armed crash point (`crash_inside`) the run reached, how many plan ops had
    /// started when it was reached: one inside op i (from 0; the recovery of op i and the restart
    /// its poisoning causes included) records i + 1.
    pub crash_points_reached: Vec<usize>,
    #[serde(skip)]
    pub trace: Vec<String>,
    /// On a recovery mismatch: the state recovered and the nearest expected state.
    #[serde(skip)]
    pub recovered: Option<State>,
    #[serde(skip)]
    pub expected: Option<State>,
    /// The state read back at the last successful recovery (after the final clean close when
    /// the run got that far): what the corpus snapshots.
    #[serde(skip)]
    pub final_state: Option<State>,
}

/// Faults armed by the plan; consulted by the store (failpoints) and by the sim fs (fs faults).
#[derive(Default)]
struct Armed {
    failpoint: Mutex<Option<String>>,
    fs: Mutex<Option<(FsOp, Fault, u32)>>,
    /// Failpoints that fired.
    fired: AtomicU64,
}

impl Armed {
    fn clear(&self) {
        *self.failpoint.lock().unwrap() = None;
        *self.fs.lock().unwrap() = None;
    }
}

struct Hook(Arc<Armed>);

impl FaultHook for Hook {
    fn should_fail(&self, point: &'static str) -> bool {
        let mut a = self.0.failpoint.lock().unwrap();
        if a.as_deref() == Some(point) {
            *a = None;
            self.0.fired.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// What the executor needs of an environment besides the store's seams: the simulator's
/// filesystem (crashes and power loss are applied to it), and the tasks spawned through its
/// spawner, to kill them all as a crash does and to count those alive. [`SimEnv`] (the seeded
/// executor) is the default; `MadsimEnv` (with `--cfg madsim`) runs the same plans on madsim.
pub trait PlanEnv: Env<Fs = SimFs> {
    /// Drops every task spawned through this env's spawner, as a killed process loses its
    /// threads; when the future is done, their futures (and the file handles they held) are gone.
    fn kill_tasks(&self) -> impl Future<Output = ()> + Send;
    /// Tasks spawned through this env's spawner that are still alive.
    fn live_tasks(&self) -> usize;
}

impl PlanEnv for SimEnv {
    async fn kill_tasks(&self) {
        self.clock.0.abort_all();
        yield_now().await;
    }
    fn live_tasks(&self) -> usize {
        self.clock.0.live_tasks()
    }
}

type S<E> = Store<E>;

struct Run<'p, E: PlanEnv> {
    plan: &'p Plan,
    env: E,
    fs: SimFs,
    armed: Arc<Armed>,
    model: Arc<Mutex<Model>>,
    out: Outcome,
    fault_rng: ChaCha8Rng,
    trace_on: bool,
    trace_fnv: u64,
    readers: Arc<Mutex<ReaderShared>>,
    stop_readers: Arc<AtomicBool>,
    /// Faults injected when the current store was opened.
    faults_at_open: u64,
    /// A write failed after validation, so the store is poisoned: it is restarted after this
    /// many more ops (a few, so reads and writes against a poisoned store are exercised too).
    restart_in: Option<u32>,
    /// `out.ops` when the store was found poisoned (until a recovery).
    poisoned_at_ops: Option<usize>,
    /// During a restart after poisoning, `poisoned_at_ops`: crashes in the restart are recorded
    /// as inside the op that poisoned the store (the restart recovers from its failure), so the
    /// explorer's crash points of an op reach into the restart it causes.
    restarting_for: Option<usize>,
    /// Whether the crash point armed inside an operation is a power loss.
    crash_inside_power: bool,
    /// Files bit rot hit (paths as the store prints them), shared with the readers.
    rotted: Arc<Mutex<Vec<String>>>,
    /// WAL bytes bit rot hit since the last recovery: (segment as the store prints it, offset).
    wal_rots: Vec<(String, u64)>,
    /// Files found in the quarantine folder at an earlier recovery.
    quarantine_seen: BTreeSet<PathBuf>,
    /// Closed pair files whose rows an earlier recovery found in their declared order, by path
    /// and crc32c of their bytes (a finished file does not change; rechecking every file at
    /// every recovery cost 14% of a campaign).
    order_checked: BTreeSet<(PathBuf, u32)>,
    /// A crash point reached outside an op's own crash handling (inside close or open) was a
    /// power loss: the next recovery's lower bound is a power loss's.
    lost_power_unchecked: bool,
}

pub fn config(plan: &Plan) -> Config {
    let s = &plan.swarm;
    let mut c = Config::new(s.max_blocks_per_file, s.block_flush_interval.max(1));
    c.block_flush_interval = s.block_flush_interval;
    c.keep_recent = s.keep_recent;
    c.prune_interval = Duration::from_millis(s.prune_interval_ms.max(1));
    c.sync_policy = s.sync_policy;
    c.wal_segment_bytes = 4096;
    c.index_cache_files = s.index_cache_files;
    c.page_rows = s.page_rows;
    c
}

/// Errors that say "nothing was staged".
fn rejected(e: &Error) -> bool {
    matches!(
        e,
        Error::NonMonotonic { .. } | Error::Sealed { .. } | Error::InvalidInput(_)
    )
}

impl<E: PlanEnv> Run<'_, E> {
    fn log(&mut self, line: String) {
        self.trace_fnv =
            (self.trace_fnv ^ model::fnv(line.as_bytes())).wrapping_mul(0x1000_0000_01b3);
        if self.trace_on {
            let now = self.env.clock().now();
            for call in self.fs.take_calls() {
                self.out.trace.push(format!("[{now:>12?}]     fs: {call}"));
            }
            self.out.trace.push(format!("[{now:>12?}] {line}"));
        }
    }

    fn fail(&mut self, f: Failure) {
        let line = f.to_string();
        self.log(format!("FAILURE: {line}"));
        self.out.failures.push(line);
    }

    fn rotted(&self) -> Vec<String> {
        self.rotted.lock().unwrap().clone()
    }

    /// Whether `e` is the store rightly refusing bytes bit rot hit; logs it when so.
    fn refused_rot(&mut self, what: &str, e: &Error) -> bool {
        let why = e.to_string();
        if names_rotted(&why, &self.rotted()) {
            self.log(format!("{what} refused a rotted file, as it must: {why}"));
            return true;
        }
        false
    }

    fn faults(&self) -> u64 {
        self.fs.stats().faults + self.armed.fired.load(Ordering::Relaxed)
    }

    fn faulted_since_open(&self) -> bool {
        self.faults() > self.faults_at_open
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }
}

/// How much of a run the trace keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trace {
    Off,
    /// Ops, results, recoveries and checks.
    Events,
    /// Events and, before each, every filesystem call with its outcome.
    EventsAndFsCalls,
}

impl Trace {
    /// Events, and filesystem calls too when `fs_calls`.
    pub fn chosen(fs_calls: bool) -> Trace {
        if fs_calls {
            Trace::EventsAndFsCalls
        } else {
            Trace::Events
        }
    }
}

/// Runs `plan`; `trace_on` keeps a human-readable event trace.
pub fn run_plan(plan: &Plan, trace_on: bool) -> Outcome {
    run_plan_with(plan, if trace_on { Trace::Events } else { Trace::Off })
}

/// Runs `plan`, keeping the trace `trace` asks for.
pub fn run_plan_with(plan: &Plan, trace: Trace) -> Outcome {
    // Marks are counted per thread: drop whatever an earlier run on this thread left.
    receipt_store::marks::take();
    let mut rt = Runtime::new(plan.seed);
    rt.set_time_jump_per_mille(plan.swarm.time_jump_per_mille);
    let handle = rt.handle();
    let mut run = Run::new(plan, trace, |fs| SimEnv::new(handle, fs));
    let r = rt.block_on(run.exec());
    if let Err(e) = r {
        run.fail(Failure::new(
            Check::Sim,
            format!("simulation stopped: {e:?} (deadlock or livelock)"),
        ));
    }
    run.finish(rt.trace_hash())
}

/// Runs `plan` on whatever runtime polls the returned future, with the env `make_env` builds
/// around the run's [`SimFs`]: madsim's, with `MadsimEnv` (see `crate::madsim_env`). The same
/// ops, faults, crashes and checks as [`run_plan_with`]; only the scheduler and the clock
/// differ, so the trace hash covers the run's events and final state but not the schedule.
pub async fn run_plan_on<E: PlanEnv>(
    plan: &Plan,
    trace: Trace,
    make_env: impl FnOnce(SimFs) -> E,
) -> Outcome {
    receipt_store::marks::take();
    let mut run = Run::new(plan, trace, make_env);
    run.exec().await;
    run.finish(0)
}

impl<'p, E: PlanEnv> Run<'p, E> {
    fn new(plan: &'p Plan, trace: Trace, make_env: impl FnOnce(SimFs) -> E) -> Self {
        let fs = SimFs::new(plan.swarm.torn_bytes);
        if trace == Trace::EventsAndFsCalls {
            fs.record_calls();
        }
        let armed = Arc::new(Armed::default());
        let hook_armed = armed.clone();
        fs.set_fault_hook(Some(Arc::new(move |op, path: &Path| {
            if !path.starts_with(DATA_DIR) {
                return None;
            }
            let mut a = hook_armed.fs.lock().unwrap();
            match *a {
                Some((want, fault, 0)) if want == op => {
                    *a = None;
                    Some(fault)
                }
                Some((want, fault, n)) if want == op => {
                    *a = Some((want, fault, n - 1));
                    None
                }
                _ => None,
            }
        })));
        Run {
            plan,
            env: make_env(fs.clone()),
            fs,
            armed,
            model: Arc::new(Mutex::new(Model::new(
                plan.swarm.sync_policy,
                plan.swarm.keep_recent,
            ))),
            out: Outcome {
                seed: plan.seed,
                scenario: plan.scenario.clone(),
                ..Default::default()
            },
            fault_rng: ChaCha8Rng::seed_from_u64(
                plan.seed ^ FAULT_STREAM ^ plan.fault_salt.rotate_left(17),
            ),
            trace_on: trace != Trace::Off,
            trace_fnv: 0xcbf2_9ce4_8422_2325,
            readers: Arc::new(Mutex::new(ReaderShared::default())),
            stop_readers: Arc::new(AtomicBool::new(false)),
            faults_at_open: 0,
            restart_in: None,
            poisoned_at_ops: None,
            restarting_for: None,
            crash_inside_power: false,
            rotted: Arc::new(Mutex::new(Vec::new())),
            wal_rots: Vec::new(),
            quarantine_seen: BTreeSet::new(),
            order_checked: BTreeSet::new(),
            lost_power_unchecked: false,
        }
    }

    /// The outcome, with the runtime's own trace hash (0 when it has none) folded in.
    fn finish(mut self, runtime_trace: u64) -> Outcome {
        self.out.faults = self.faults();
        self.out.marks = receipt_store::marks::take()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.out.trace_hash =
            runtime_trace ^ self.trace_fnv.rotate_left(13) ^ self.out.state_hash.rotate_left(29);
        self.out
    }
}

/// Runs `plan` twice and reports a [`Check::Determinism`] failure when the traces differ.
pub fn run_plan_twice(plan: &Plan) -> Outcome {
    let mut o = run_plan(plan, false);
    let again = run_plan(plan, false);
    if again.trace_hash != o.trace_hash || again.failures != o.failures {
        o.failures.push(
            Failure::new(
                Check::Determinism,
                format!(
                    "the same plan twice gave traces {:016x} and {:016x}",
                    o.trace_hash, again.trace_hash
                ),
            )
            .to_string(),
        );
    }
    o
}
