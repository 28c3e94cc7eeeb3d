//! Runs one plan against the real store on the simulated environment and checks the invariants
//! of DESIGN.md (see [`crate::check`]) after every op and every recovery.
//!
//! One run = one seeded [`Runtime`] + one [`SimFs`]. The plan's ops run on the main task (the one
//! writer); `swarm.readers` reader tasks issue reads concurrently and check each answer against
//! the model at some instant between call and reply. A crash is modelled outside the store:
//! every store task is dropped by the runtime (as a killed process loses its threads), then the
//! filesystem crashes (process: nothing lost; power: unsynced data lost or torn), then the store
//! is opened again and its recovered state checked.

use crate::check::{self, Check, Failure};
use crate::fs::{Fault, FsOp, SimFs};
use crate::model::{self, receipts_for, tx_hash, Model, State};
use crate::plan::{Limit, Op, Plan, FAULT_STREAM, READER_STREAM, STALE_TX_BASE};
use crate::runtime::{yield_now, Handle, Runtime, SimEnv};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::{
    Config, Error, FaultHook, LogFilter, LogInput, ReceiptInput, Store, MAX_LOG_DATA_BYTES,
    MAX_RECEIPT_BYTES, MAX_TOPICS_PER_LOG,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
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

type S = Store<SimEnv>;

/// State shared with reader tasks.
#[derive(Default)]
struct ReaderShared {
    failures: Vec<Failure>,
    reads: usize,
}

struct Run<'p> {
    plan: &'p Plan,
    env: SimEnv,
    fs: SimFs,
    handle: Handle,
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
    c
}

/// Errors that say "nothing was staged".
fn rejected(e: &Error) -> bool {
    matches!(
        e,
        Error::NonMonotonic { .. } | Error::Sealed { .. } | Error::InvalidInput(_)
    )
}

/// Errors a read may legitimately return: the store is poisoned (reads fail until reopen), or
/// an injected I/O fault hit the read.
fn tolerated_read_error(e: &Error, rotted: &[String]) -> bool {
    matches!(e, Error::Poisoned(_))
        || e.to_string().contains("injected")
        || names_rotted(&e.to_string(), rotted)
}

/// An error that names a file bit rot hit: the right answer to anything that needs its bytes.
fn names_rotted(why: &str, rotted: &[String]) -> bool {
    rotted.iter().any(|p| why.contains(p.as_str()))
}

impl Run<'_> {
    fn log(&mut self, line: String) {
        self.trace_fnv =
            (self.trace_fnv ^ model::fnv(line.as_bytes())).wrapping_mul(0x1000_0000_01b3);
        if self.trace_on {
            let now = self.handle.now();
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

    /// How many of the WAL's last records open may have cut for bit rot. The evidence is the
    /// disk, not `Status`: every cut tail is kept in quarantine as
    /// `<segment>.<kind>-tail-at-<offset>.<k>` (an open that died after cutting reports nothing,
    /// and the next open finds a clean WAL), so the cuts are the quarantine files new since the
    /// last recovery. A rot spoils at most one record, so a tail cut as corrupt holding more
    /// records than rots lost intact ones. A tail cut as torn (no append in it completed) can
    /// hide an acked record only if rot also spoiled every trailer in it: two rots per record.
    /// Forgets the rots either way: open has read (and rewritten) the WAL.
    fn records_rot_may_cut(&mut self, files: &BTreeMap<PathBuf, Vec<u8>>) -> usize {
        let rots = std::mem::take(&mut self.wal_rots);
        let quarantine = Path::new(DATA_DIR).join("quarantine");
        // (segment, cut bytes, rots needed per lost record)
        let mut cuts: Vec<(String, std::ops::Range<u64>, usize)> = Vec::new();
        for (path, bytes) in files.range(quarantine.clone()..) {
            if !path.starts_with(&quarantine) {
                break;
            }
            if !self.quarantine_seen.insert(path.clone()) {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            // `<original>.<tag>.<k>`: the tag holds no dot, the original one (`N.wal`).
            let mut parts = name.rsplitn(3, '.');
            let (_k, tag, original) = (parts.next(), parts.next(), parts.next());
            let (Some(tag), Some(original)) = (tag, original) else {
                continue;
            };
            let cut = [("corrupt-tail-at-", 1), ("torn-tail-at-", 2)]
                .into_iter()
                .find_map(|(prefix, rots_per_record)| {
                    let offset = tag.strip_prefix(prefix)?.parse::<u64>().ok()?;
                    Some((offset, rots_per_record))
                });
            if let Some((offset, rots_per_record)) = cut {
                let segment = Path::new(DATA_DIR).join("wal").join(original);
                cuts.push((
                    segment.display().to_string(),
                    offset..offset + bytes.len() as u64,
                    rots_per_record,
                ));
            }
        }
        let mut may_lose = 0;
        for (segment, range, rots_per_record) in &cuts {
            let mut hit: Vec<u64> = rots
                .iter()
                .filter(|(path, at)| path == segment && range.contains(at))
                .map(|(_, at)| *at)
                .collect();
            hit.sort_unstable();
            hit.dedup();
            let records = hit.len() / rots_per_record;
            if !hit.is_empty() {
                self.log(format!(
                    "open cut {} rotted byte(s) with the WAL tail {range:?} of {segment} ({} rot(s) per lost record): up to {records} last record(s) may be gone",
                    hit.len(),
                    rots_per_record
                ));
            }
            may_lose += records;
        }
        may_lose
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

    async fn read_state(&mut self, store: &S) -> Result<State, Error> {
        let receipts = store.receipts_in_range(0, u64::MAX).await?;
        let logs = store.get_logs(&LogFilter::default()).await?;
        Ok(State { receipts, logs })
    }

    /// Reads the whole state; an armed read fault may fire once and is then disarmed.
    async fn read_state_retrying(&mut self, store: &S) -> Result<State, Error> {
        match self.read_state(store).await {
            Err(e) if e.to_string().contains("injected") => {
                self.log(format!("state read hit an injected fault, retrying: {e}"));
                *self.armed.fs.lock().unwrap() = None;
                self.read_state(store).await
            }
            r => r,
        }
    }

    fn check_no_leftovers(&mut self, when: &str) {
        let tasks = self.handle.live_tasks();
        if tasks != 0 {
            self.fail(Failure::new(
                Check::Tasks,
                format!("{tasks} store task(s) alive after {when}"),
            ));
        }
        if self.fs.open_handle_count() != 0 {
            let leaked = self.fs.open_handles();
            self.fail(Failure::new(
                Check::Handles,
                format!("file handles left open after {when}: {leaked:?}"),
            ));
        }
    }

    /// Opens the store. A failed open must leave no handle and no task; a failure an armed fault
    /// explains is retried once with every fault disarmed.
    async fn open(&mut self) -> Option<S> {
        self.settle_crash_point();
        let mut attempt = 0;
        // Bounded: a crash point fires once per arming, so at most one extra round.
        for _ in 0..MAX_OPEN_ATTEMPTS + 1 {
            attempt += 1;
            let faults_before = self.faults();
            let hook: Arc<dyn FaultHook> = Arc::new(Hook(self.armed.clone()));
            let r =
                Store::open_with_hook(self.env.clone(), DATA_DIR, config(self.plan), Some(hook))
                    .await;
            match r {
                Ok(s) => {
                    self.faults_at_open = self.faults();
                    return Some(s);
                }
                Err(e) => {
                    self.log(format!("open failed: {e}"));
                    yield_now().await;
                    self.check_no_leftovers("a failed open");
                    if self.settle_crash_point() {
                        // The process died inside open (or replay): that is a crash, not a
                        // failed attempt; the next open starts from the crashed image.
                        attempt -= 1;
                        continue;
                    }
                    if self.refused_rot("open", &e) {
                        return None;
                    }
                    let injected = self.faults() > faults_before;
                    if attempt == MAX_OPEN_ATTEMPTS || !injected {
                        self.fail(Failure::new(
                            Check::Open,
                            format!("store cannot be opened: {e}"),
                        ));
                        return None;
                    }
                    self.armed.clear();
                }
            }
        }
        None
    }

    /// Opens and checks recovery: files on disk, the recovered state against the model between
    /// the lower bound for this kind of crash and everything issued, and that recovering the same
    /// image again gives the same state. Spawns the readers on the store it returns.
    async fn recover(&mut self, power_loss: bool) -> Option<S> {
        self.out.reopens += 1;
        self.restart_in = None;
        self.poisoned_at_ops = None;
        let store = loop {
            let store = self.open().await?;
            if !self.fs.is_dead() {
                break store;
            }
            // The crash point fell in open's own work (after the coordinator started, say in
            // the prune at open): kill this incarnation and open the crashed image again.
            self.handle.abort_all();
            yield_now().await;
            drop(store);
            self.settle_crash_point();
        };
        // A crash point not reached by now is forgotten: the checks below read the store, and a
        // background prune tick must not kill it half way through them.
        self.fs.disarm_crash();
        let power_loss = power_loss || std::mem::take(&mut self.lost_power_unchecked);
        let status = match store.status().await {
            Ok(s) => s,
            Err(e) => {
                self.fail(Failure::new(Check::Open, format!("status after open: {e}")));
                return None;
            }
        };
        // Open recovered, rewrote or cut what it found and then answers from it: all of that
        // must survive a power loss right now (the WAL directory's entries and bytes, the data
        // directory's finished files, and what this open put in quarantine). A crash cannot
        // leave it to the next open, which would build on the same undurable state (found by
        // CI: a segment renamed by an open that died before its directory sync, reused by the
        // next open, lost the blocks acked into it). Exempt: the open pair's files (their rows
        // are in the WAL), removals (a prune may be half way through them in the background),
        // and quarantine copies an earlier, crashed open left half written (the copy this open
        // made is the evidence).
        let data = Path::new(DATA_DIR);
        let mut undurable = self.fs.undurable(&data.join("wal"));
        let kept: Vec<String> = status
            .quarantined
            .iter()
            .map(|q| format!("{}:", q.path.display()))
            .collect();
        undurable.extend(
            self.fs
                .undurable(&data.join("quarantine"))
                .into_iter()
                .filter(|line| kept.iter().any(|k| line.starts_with(k.as_str()))),
        );
        undurable.extend(self.fs.undurable(data).into_iter().filter(|line| {
            !line.contains("removed")
                && !line
                    .strip_prefix(&format!("{DATA_DIR}/"))
                    .is_some_and(|name| name.starts_with('.'))
        }));
        if !undurable.is_empty() {
            self.fail(Failure::new(
                Check::Durability,
                format!(
                    "right after open, a power loss would undo: {}",
                    undurable.join("; ")
                ),
            ));
        }
        let files = self.fs.snapshot_files();
        if self.trace_on {
            let listing: Vec<String> = files
                .iter()
                .map(|(p, b)| format!("{}:{}", p.display(), b.len()))
                .collect();
            self.log(format!("files after open: {}", listing.join(" ")));
        }
        for f in check::check_files(&files, Path::new(DATA_DIR), &status) {
            self.fail(f);
        }
        let got = match self.read_state_retrying(&store).await {
            Ok(s) => s,
            Err(e) if self.refused_rot("reading the recovered state", &e) => {
                // The run stops here: the state cannot be compared without the rotted file.
                self.handle.abort_all();
                yield_now().await;
                drop(store);
                return None;
            }
            Err(e) => {
                self.fail(Failure::new(
                    Check::Recovery,
                    format!("reading the recovered state failed: {e}"),
                ));
                return None;
            }
        };
        let rot_cut = self.records_rot_may_cut(&files);
        let (tagged, lo, hi, prunable) = {
            let m = self.model();
            let lo = m.lower_bound(power_loss);
            (
                m.tagged(),
                m.lower_bound_after_rotted_records_cut(lo, rot_cut),
                m.issued.len(),
                m.prunable(),
            )
        };
        match check::match_recovery(&tagged, &got, lo, hi, &prunable) {
            Ok(k) => {
                self.log(format!(
                    "recovered prefix {k} of {hi} issued (lower bound {lo}): {} receipts, {} logs; {status:?}",
                    got.receipts.len(),
                    got.logs.len()
                ));
                self.model().adopt(k);
            }
            Err(f) => {
                self.out.expected = Some(tagged.prefix(hi).without_blocks(&prunable));
                self.out.recovered = Some(got.without_blocks(&prunable));
                self.fail(f);
                return None;
            }
        }
        for f in check::phantoms(&tagged, &got) {
            self.fail(f);
        }
        let pruned = self.model().pruned.clone();
        for f in check::resurrected(&got, &pruned) {
            self.fail(f);
        }
        // Invariant 4: the same durable image, recovered again, gives the same state.
        self.handle.abort_all();
        yield_now().await;
        drop(store);
        self.check_no_leftovers("dropping every store task");
        self.fs.crash_process();
        let again = self.open().await?;
        match self.read_state_retrying(&again).await {
            Ok(s2) if s2 == got => {}
            Ok(s2) => self.fail(Failure::new(
                Check::Idempotence,
                format!(
                    "recovering the same image twice gave different states: {} then {} receipts, {} then {} logs",
                    got.receipts.len(),
                    s2.receipts.len(),
                    got.logs.len(),
                    s2.logs.len()
                ),
            )),
            Err(e) => self.fail(Failure::new(
                Check::Idempotence,
                format!("the second recovery could not read its state: {e}"),
            )),
        }
        self.out.state_hash = got.hash();
        self.out.final_state = Some(got);
        self.spawn_readers(&again);
        Some(again)
    }

    /// When the armed crash point was reached, crashes the filesystem as armed (process crash or
    /// power loss) and returns true. The store incarnation that was running must be gone.
    fn settle_crash_point(&mut self) -> bool {
        if !self.fs.is_dead() {
            return false;
        }
        self.out.crashes += 1;
        if self.crash_inside_power {
            self.log("crash point reached: power loss".into());
            self.out.power_losses += 1;
            // The store is gone, so which pairs were durable is unknown here: nothing below is
            // promised beyond what the sync policy promises by itself.
            self.model().durable_below = 0;
            self.lost_power_unchecked = true;
            self.fs.power_loss(&mut self.fault_rng);
        } else {
            self.log("crash point reached: process crash".into());
            self.fs.crash_process();
        }
        self.out.crash_images.push(self.fs.image_hash());
        self.out.crash_points_reached.push(self.crash_op());
        true
    }

    fn spawn_readers(&mut self, store: &S) {
        self.stop_readers = Arc::new(AtomicBool::new(false));
        for r in 0..self.plan.swarm.readers {
            let rng = ChaCha8Rng::seed_from_u64(
                self.plan.seed ^ READER_STREAM ^ ((r as u64) << 40) ^ self.out.reopens as u64,
            );
            let task = reader(
                self.rotted.clone(),
                self.handle.clone(),
                store.clone(),
                self.model.clone(),
                self.readers.clone(),
                self.stop_readers.clone(),
                rng,
                self.plan.seed,
            );
            self.handle.spawn(Box::pin(task));
        }
    }

    /// A process crash or power loss: every store task dies with its handles, then the
    /// filesystem crashes, then recovery is checked.
    async fn crash(&mut self, store: S, power_loss: bool) -> Option<S> {
        self.out.crashes += 1;
        if power_loss {
            self.out.power_losses += 1;
            // Blocks below the open pair sit in closed pairs, durable whatever the sync policy.
            // Recomputed at every power loss: after one, a stale height may be written again
            // into a new open pair below an earlier pair's start.
            let d = match store.status().await {
                Ok(st) => st.open_pair.unwrap_or(st.file_start_block),
                Err(_) => 0,
            };
            self.model().durable_below = d;
        }
        self.stop_readers.store(true, Ordering::Relaxed);
        self.handle.abort_all();
        yield_now().await;
        drop(store);
        self.check_no_leftovers(if power_loss {
            "a power loss"
        } else {
            "a process crash"
        });
        // A crash point armed and not reached yet survives this crash: it may fall in the
        // recovery's open and replay (the recovery disarms it once an open succeeds).
        let armed = self.fs.armed_crash_point();
        if power_loss {
            self.fs.power_loss(&mut self.fault_rng);
        } else {
            self.fs.crash_process();
        }
        if let Some(calls) = armed {
            self.fs.arm_crash_after(calls);
        }
        self.out.crash_images.push(self.fs.image_hash());
        self.recover(power_loss).await
    }

    /// Closes the store, lets the readers finish, and checks nothing is left behind.
    async fn close(&mut self, store: S) {
        self.stop_readers.store(true, Ordering::Relaxed);
        let r = store.close().await;
        self.log(format!("close: {r:?}"));
        if r.is_ok() && !self.fs.is_dead() {
            let files = self.fs.snapshot_files();
            for f in check::wal_left_after_close(&files, Path::new(DATA_DIR)) {
                self.fail(f);
            }
        }
        if let Err(e) = &r {
            if !self.faulted_since_open() {
                self.fail(Failure::new(
                    Check::Write,
                    format!("close failed without an injected fault: {e}"),
                ));
            }
        }
        drop(store);
        // Readers may be asleep on the clock: wait in virtual time, not only in yields.
        for _ in 0..MAX_DRAIN_ROUNDS {
            if self.handle.live_tasks() == 0 {
                break;
            }
            self.handle.sleep(Duration::from_millis(1)).await;
        }
        self.check_no_leftovers("close");
        self.drain_reader_failures();
    }

    /// The store reported (or must be in) the poisoned state: schedule a restart.
    fn poisoned(&mut self) {
        if self.restart_in.is_none() {
            self.restart_in = Some(self.fault_rng.random_range(0..=MAX_OPS_BEFORE_RESTART));
            self.poisoned_at_ops = Some(self.out.ops);
        }
    }

    /// A poisoned store is restarted the way an operator would: close (or kill) and reopen.
    async fn restart(&mut self, store: S) -> Option<S> {
        self.restart_in = None;
        self.restarting_for = self.poisoned_at_ops;
        let restarted = if self.fault_rng.random_bool(0.5) {
            self.log("restart after poisoning: close and reopen".into());
            self.close(store).await;
            self.recover(false).await
        } else {
            self.log("restart after poisoning: kill and reopen".into());
            self.crash(store, false).await
        };
        self.restarting_for = None;
        restarted
    }

    /// The op a crash happening now is inside, as `Outcome::crash_points_reached` counts it.
    fn crash_op(&self) -> usize {
        self.restarting_for.unwrap_or(self.out.ops)
    }

    fn drain_reader_failures(&mut self) {
        let (fails, reads) = {
            let mut r = self.readers.lock().unwrap();
            (
                std::mem::take(&mut r.failures),
                std::mem::take(&mut r.reads),
            )
        };
        self.out.reads += reads;
        for f in fails {
            self.fail(f);
        }
    }

    /// A write of `receipts` at `height`, with its outcome fed to the model and checked.
    async fn write(&mut self, store: &S, height: u64, receipts: Vec<ReceiptInput>, what: &str) {
        let (max_seen, last) = {
            let m = self.model();
            (m.max_seen, m.last_height())
        };
        let idx = self.model().begin(height, receipts.clone());
        let r = store.write_receipts(height, receipts).await;
        self.log(format!("  -> {r:?}"));
        match r {
            Ok(()) => {
                if what == "stale" && last.is_some_and(|l| l > height) {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a stale write at {height} below block {last:?} was accepted"),
                    ));
                }
                self.model().ack(idx);
                self.out.writes_acked += 1;
            }
            Err(e @ (Error::NonMonotonic { .. } | Error::Sealed { .. })) => {
                self.model().reject(idx);
                if height > max_seen {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a {what} at {height}, above every block seen ({max_seen}), was rejected: {e}"),
                    ));
                }
            }
            Err(e @ Error::InvalidInput(_)) => {
                self.model().reject(idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!("a valid {what} at {height} was rejected: {e}"),
                ));
            }
            Err(e @ Error::Poisoned(_)) => {
                self.model().reject(idx);
                self.poisoned();
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("the store is poisoned without an injected fault: {e}"),
                    ));
                }
            }
            Err(e @ (Error::Closed | Error::Crashed)) => {
                self.model().reject(idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!("a {what} on an open store failed with: {e}"),
                ));
            }
            Err(e) => {
                self.model().unknown(idx);
                self.poisoned();
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a {what} at {height} failed without an injected fault: {e}"),
                    ));
                }
            }
        }
    }

    async fn exec(&mut self) {
        let swarm = serde_json::to_string(&self.plan.swarm).expect("serialisable");
        self.log(format!("swarm {swarm}"));
        let Some(mut store) = self.recover(false).await else {
            return;
        };
        let seed = self.plan.seed;
        for (i, op) in self.plan.ops.iter().enumerate() {
            self.out.ops += 1;
            self.log(format!("op {i}: {op:?}"));
            match op {
                Op::Write { height, .. } => {
                    let rs = model::write_inputs(seed, op).expect("a write op");
                    self.write(&store, *height, rs, "write").await;
                }
                Op::Empty { height } => {
                    self.model().observe_empty(*height);
                    let r = store.write_receipts(*height, vec![]).await;
                    self.log(format!("  -> {r:?}"));
                    // An empty boundary block rotates; a failed rotation poisons the store.
                    if let Err(e) = r {
                        self.poisoned();
                        if !self.faulted_since_open() {
                            self.fail(Failure::new(
                                Check::Write,
                                format!(
                                    "empty block {height} failed without an injected fault: {e}"
                                ),
                            ));
                        }
                    }
                }
                Op::Stale { height } => {
                    let rs = receipts_for(seed, *height, STALE_TX_BASE + i as u32, 1, 1);
                    self.write(&store, *height, rs, "stale").await;
                }
                Op::Oversized { height, limit } => {
                    // One step past the limit (the limits themselves, in `write_inputs`, are
                    // accepted).
                    let (receipt_bytes, topics, data, what) = match limit {
                        Limit::Topics => (1, MAX_TOPICS_PER_LOG + 1, 0, "a log with five topics"),
                        Limit::ReceiptBytes => (
                            MAX_RECEIPT_BYTES + 1,
                            0,
                            0,
                            "receipt bytes one over the limit",
                        ),
                        Limit::LogData => {
                            (1, 0, MAX_LOG_DATA_BYTES + 1, "log data one over the limit")
                        }
                    };
                    let bad = ReceiptInput {
                        tx_hash: [0xFF; 32],
                        tx_index: 0,
                        receipt_bytes: vec![1; receipt_bytes],
                        logs: vec![LogInput {
                            address: [0; 20],
                            topics: vec![[0; 32]; topics],
                            data: vec![0; data],
                        }],
                    };
                    let r = store.write_receipts(*height, vec![bad]).await;
                    self.log(format!("  -> {:?}", r.as_ref().map_err(|e| e.to_string())));
                    match r {
                        Ok(()) => {
                            self.fail(Failure::new(Check::Write, format!("{what} was accepted")))
                        }
                        Err(e) if rejected(&e) => {}
                        Err(Error::Poisoned(_)) if self.faulted_since_open() => {}
                        Err(e) => self.fail(Failure::new(
                            Check::Write,
                            format!("bad input gave an unexpected error: {e}"),
                        )),
                    }
                }
                Op::ReadReceipt {
                    target,
                    in_block,
                    wrong_block,
                } => {
                    let hash = target.map_or([0xAB; 32], |t| tx_hash(seed, t.height, t.tx));
                    let asked = target
                        .filter(|_| *in_block)
                        .map(|t| t.height + u64::from(*wrong_block));
                    let (lo, _) = self.bounds();
                    let r = match asked {
                        Some(b) => store.get_receipt_in_block(&hash, b).await,
                        None => store.get_receipt(&hash).await,
                    };
                    let (_, hi) = self.bounds();
                    self.out.reads += 1;
                    match r {
                        Ok(got) => {
                            let c = check::check_receipt_read(
                                &self.model(),
                                &hash,
                                asked,
                                got.as_ref(),
                                lo,
                                hi,
                            );
                            if let Err(f) = c {
                                self.fail(f);
                            }
                        }
                        Err(e) if tolerated_read_error(&e, &self.rotted()) => {}
                        Err(e) => self.fail(Failure::new(
                            Check::Read,
                            format!("get_receipt failed: {e}"),
                        )),
                    }
                }
                Op::ReadLogs {
                    from,
                    to,
                    address,
                    topics,
                    limit,
                } => {
                    let filter = LogFilter {
                        from_block: Some(*from),
                        to_block: Some(*to),
                        addresses: address.map(|a| vec![model::address(a)]).unwrap_or_default(),
                        topics: topics
                            .iter()
                            .map(|t| t.map(|t| vec![model::topic(t)]).unwrap_or_default())
                            .collect(),
                        limit: *limit,
                    };
                    let (lo, _) = self.bounds();
                    let r = store.get_logs(&filter).await;
                    let (_, hi) = self.bounds();
                    self.out.reads += 1;
                    match r {
                        Ok(got) => {
                            let c = check::check_logs_read(&self.model(), &filter, &got, lo, hi);
                            if let Err(f) = c {
                                self.fail(f);
                            }
                        }
                        Err(e) if tolerated_read_error(&e, &self.rotted()) => {}
                        Err(e) => {
                            self.fail(Failure::new(Check::Read, format!("get_logs failed: {e}")))
                        }
                    }
                }
                Op::Prune { explicit } => {
                    let before = store.status().await.map(|s| s.closed_pairs).ok();
                    self.handle
                        .sleep(Duration::from_millis(self.plan.swarm.prune_interval_ms + 1))
                        .await;
                    // A time jump can wake this task before the coordinator has seen its tick,
                    // and the coordinator serves requests before ticks: give it the scheduler
                    // first, so the liveness check below sees the tick's prune.
                    for _ in 0..YIELDS_FOR_A_TICK {
                        yield_now().await;
                    }
                    if *explicit {
                        let r = store.prune_now().await;
                        self.log(format!("  prune_now -> {r:?}"));
                        match r {
                            // Deleting something synced the directory: every removal so far is
                            // durable, and a window gone from the catalogue must never return.
                            Ok(n) if n > 0 => {
                                if let (Some(before), Ok(after)) = (before, store.status().await) {
                                    if after.pending_deletes == 0 {
                                        let mut m = self.model();
                                        for (i, s) in before.iter().enumerate() {
                                            if !after.closed_pairs.contains(s) {
                                                // The newest pair is never pruned, so a next
                                                // start exists: the window ends there.
                                                let end = before[i + 1..].first().copied();
                                                m.pruned.insert(*s, end.expect("a newer pair"));
                                            }
                                        }
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(e) if self.faulted_since_open() => {
                                self.log(format!("  prune failed under an injected fault: {e}"));
                            }
                            Err(e) => self.fail(Failure::new(
                                Check::Write,
                                format!("prune failed without an injected fault: {e}"),
                            )),
                        }
                    }
                    // Liveness: a tick passed (and prune_now ran): nothing eligible is tracked.
                    if let Ok(st) = store.status().await {
                        if let (None, Some(latest)) = (&st.poisoned, st.latest_version) {
                            let keep = self.plan.swarm.keep_recent;
                            let overdue = check::overdue_for_prune(&st.closed_pairs, latest, keep);
                            if !overdue.is_empty() {
                                self.fail(Failure::new(
                                    Check::Liveness,
                                    format!(
                                        "after a prune tick, pairs {overdue:?} are still tracked although block {latest} minus keep-recent {keep} is past them (closed pairs {:?})",
                                        st.closed_pairs
                                    ),
                                ));
                            }
                        }
                    }
                }
                Op::Crash | Op::PowerLoss => {
                    match self.crash(store, matches!(op, Op::PowerLoss)).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
                Op::CloseReopen => {
                    self.close(store).await;
                    match self.recover(false).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
                Op::Resize {
                    max_blocks_per_file: n,
                } => {
                    let r = store.set_max_blocks_per_file(*n).await;
                    self.log(format!("  -> {r:?}"));
                    match (n, r) {
                        (0, Err(Error::ZeroMaxBlocksPerFile)) | (1.., Ok(())) => {}
                        (_, Err(Error::Poisoned(_))) if self.faulted_since_open() => {}
                        (_, r) => self.fail(Failure::new(
                            Check::Write,
                            format!("set_max_blocks_per_file({n}) answered {r:?}"),
                        )),
                    }
                }
                Op::SetFlushInterval { blocks } => {
                    let r = store.set_block_flush_interval(*blocks).await;
                    self.log(format!("  -> {r:?}"));
                    match r {
                        Ok(()) => {}
                        Err(Error::Poisoned(_)) if self.faulted_since_open() => {}
                        r => self.fail(Failure::new(
                            Check::Write,
                            format!("set_block_flush_interval({blocks}) answered {r:?}"),
                        )),
                    }
                }
                Op::Flush => {
                    let r = store.flush().await;
                    self.log(format!("  -> {r:?}"));
                    // A failed flush may have written a row group to one file of the pair
                    // only: the store must poison itself (a retried flush would write rows
                    // twice) and is restarted like after a failed write.
                    if let Err(e) = r {
                        self.poisoned();
                        let status = store.status().await;
                        if status.as_ref().map_or(true, |s| s.poisoned.is_none()) {
                            self.fail(Failure::new(
                                Check::Write,
                                format!(
                                    "flush failed ({e}) but the store is not poisoned: {status:?}"
                                ),
                            ));
                        }
                        if !self.faulted_since_open() {
                            self.fail(Failure::new(
                                Check::Write,
                                format!("flush failed without an injected fault: {e}"),
                            ));
                        }
                    }
                }
                Op::Failpoint { name } => {
                    *self.armed.failpoint.lock().unwrap() = Some(name.clone())
                }
                Op::FsFault {
                    fs_op,
                    fault,
                    after,
                } => *self.armed.fs.lock().unwrap() = Some((*fs_op, *fault, *after)),
                Op::CrashInside {
                    after_fs_calls,
                    power_loss,
                } => {
                    self.crash_inside_power = *power_loss;
                    self.fs.arm_crash_after(*after_fs_calls);
                }
                Op::BitRot {
                    nth,
                    per_mille,
                    bit,
                } => {
                    let files: Vec<(std::path::PathBuf, usize)> = self
                        .fs
                        .snapshot_files()
                        .into_iter()
                        .filter(|(p, _)| {
                            matches!(
                                check::classify(Path::new(DATA_DIR), p),
                                check::FileKind::Receipts(_) | check::FileKind::Logs(_)
                            ) && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        })
                        .map(|(p, b)| (p, b.len()))
                        .collect();
                    if !files.is_empty() {
                        let (path, len) = &files[*nth as usize % files.len()];
                        let at = (*per_mille as usize * len) / 1000;
                        if self.fs.rot_bit(path, at, *bit) {
                            self.log(format!(
                                "  bit {bit} of byte {at} of {} flipped",
                                path.display()
                            ));
                            self.rotted.lock().unwrap().push(path.display().to_string());
                        }
                    }
                }
                Op::WalRot {
                    nth,
                    per_mille,
                    bit,
                } => {
                    let segments: Vec<(std::path::PathBuf, usize)> = self
                        .fs
                        .snapshot_files()
                        .into_keys()
                        .filter(|p| {
                            check::classify(Path::new(DATA_DIR), p) == check::FileKind::WalSegment
                        })
                        .map(|p| {
                            let synced = self.fs.synced_len(&p);
                            (p, synced)
                        })
                        .filter(|(_, synced)| *synced > 0)
                        .collect();
                    if !segments.is_empty() {
                        let (path, synced) = &segments[*nth as usize % segments.len()];
                        let at = (*per_mille as usize * synced) / 1000;
                        if self.fs.rot_bit(path, at, *bit) {
                            let shown = path.display().to_string();
                            self.log(format!("  bit {bit} of byte {at} of {shown} flipped"));
                            self.rotted.lock().unwrap().push(shown.clone());
                            self.wal_rots.push((shown, at as u64));
                        }
                    }
                }
                Op::AfterEnd { crashed } => {
                    self.after_end(&store, *crashed).await;
                    match self.recover(false).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
            }
            if self.fs.is_dead() {
                // The armed crash point fell inside this op (or a background task of it).
                let power = self.crash_inside_power;
                self.out.crash_points_reached.push(self.crash_op());
                self.fs.disarm_crash();
                match self.crash(store, power).await {
                    Some(s) => store = s,
                    None => return,
                }
            }
            self.drain_reader_failures();
            if !self.out.failures.is_empty() {
                return;
            }
            match self.restart_in {
                Some(0) => match self.restart(store).await {
                    Some(s) => store = s,
                    None => return,
                },
                Some(n) => self.restart_in = Some(n - 1),
                None => {}
            }
        }
        // Final: a clean close, then a last recovery must give back everything acked.
        self.fs.disarm_crash();
        self.close(store).await;
        self.armed.clear();
        if !self.out.failures.is_empty() {
            return;
        }
        if let Some(s) = self.recover(false).await {
            self.close(s).await;
        }
    }

    /// Ends the store's life with `crash()` or `close()`, then checks every call answers the
    /// matching error (`Crashed` after a crash, `Closed` after a close; a second close repeats
    /// the first's answer) and that nothing is left running.
    async fn after_end(&mut self, store: &S, crashed: bool) {
        self.stop_readers.store(true, Ordering::Relaxed);
        let first_close = if crashed {
            store.crash().await;
            None
        } else {
            let r = store.close().await;
            self.log(format!("  close -> {r:?}"));
            if let Err(e) = &r {
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("close failed without an injected fault: {e}"),
                    ));
                }
            }
            Some(r.map_err(|e| e.to_string()))
        };
        let wanted = if crashed { "crashed" } else { "closed" };
        let is_end = |e: &Error| {
            if crashed {
                matches!(e, Error::Crashed)
            } else {
                matches!(e, Error::Closed)
            }
        };
        let hash = [0xAB; 32];
        let answers: Vec<(&str, Result<(), Error>)> = vec![
            (
                "write_receipts",
                store.write_receipts(u64::MAX / 2, vec![]).await,
            ),
            ("get_receipt", store.get_receipt(&hash).await.map(|_| ())),
            (
                "get_logs",
                store.get_logs(&LogFilter::default()).await.map(|_| ()),
            ),
            ("status", store.status().await.map(|_| ())),
            ("flush", store.flush().await),
            ("prune_now", store.prune_now().await.map(|_| ())),
            (
                "set_max_blocks_per_file",
                store.set_max_blocks_per_file(4).await,
            ),
        ];
        for (call, r) in answers {
            match r {
                Err(e) if is_end(&e) => {}
                other => self.fail(Failure::new(
                    Check::Write,
                    format!("{call} after the store {wanted} answered {other:?}"),
                )),
            }
        }
        let again = store.close().await.map_err(|e| e.to_string());
        let consistent = match &first_close {
            Some(first) => &again == first,
            None => again == Err(Error::Crashed.to_string()),
        };
        if !consistent {
            self.fail(Failure::new(
                Check::Write,
                format!("close after the store {wanted} answered {again:?} (first close: {first_close:?})"),
            ));
        }
        self.handle.abort_all();
        yield_now().await;
        self.check_no_leftovers(if crashed { "crash()" } else { "close" });
        self.drain_reader_failures();
        self.fs.crash_process();
    }

    /// (acked, issued) now: a read's answer must match a prefix between the acked count at its
    /// call and the issued count at its reply.
    fn bounds(&self) -> (usize, usize) {
        let m = self.model();
        (m.acked_count(), m.issued.len())
    }
}

/// A reader task: reads at random moments while the writer proceeds, checking every answer.
async fn reader(
    rotted: Arc<Mutex<Vec<String>>>,
    clock: Handle,
    store: S,
    model: Arc<Mutex<Model>>,
    shared: Arc<Mutex<ReaderShared>>,
    stop: Arc<AtomicBool>,
    mut rng: ChaCha8Rng,
    seed: u64,
) {
    for _ in 0..MAX_READS_PER_READER {
        if rng.random_bool(0.5) {
            for _ in 0..rng.random_range(1..=MAX_YIELDS_BETWEEN_READS) {
                yield_now().await;
            }
        } else {
            let pause_ms = rng.random_range(1..=MAX_READER_PAUSE_MS);
            clock.sleep(Duration::from_millis(pause_ms)).await;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (lo, target, max_height) = {
            let m = model.lock().unwrap();
            let hashes: Vec<([u8; 32], u64)> = m
                .issued
                .iter()
                .flat_map(|w| w.receipts.iter().map(move |r| (r.tx_hash, w.height)))
                .collect();
            let target = if hashes.is_empty() || rng.random_bool(0.1) {
                None
            } else {
                Some(hashes[rng.random_range(0..hashes.len())])
            };
            (m.acked_count(), target, m.max_seen)
        };
        let result = if rng.random_bool(0.7) {
            let hash = target.map_or_else(|| tx_hash(seed ^ 0xDEAD, 0, 0), |t| t.0);
            let r = store.get_receipt(&hash).await;
            let m = model.lock().unwrap();
            let hi = m.issued.len();
            match r {
                Ok(got) => check::check_receipt_read(&m, &hash, None, got.as_ref(), lo, hi)
                    .map_err(|f| f.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let from = rng.random_range(0..=max_height);
            let filter = LogFilter {
                from_block: Some(from),
                to_block: Some(from + rng.random_range(0..6)),
                addresses: if rng.random_bool(0.3) {
                    vec![model::address(rng.random_range(0..3))]
                } else {
                    vec![]
                },
                topics: vec![],
                limit: None,
            };
            let r = store.get_logs(&filter).await;
            let m = model.lock().unwrap();
            let hi = m.issued.len();
            match r {
                Ok(got) => {
                    check::check_logs_read(&m, &filter, &got, lo, hi).map_err(|f| f.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let mut sh = shared.lock().unwrap();
        sh.reads += 1;
        if let Err(why) = result {
            // A read may fail when the store is poisoned, closed under it, or hit by an injected
            // fault; any other failure (say, a concurrent prune deleting its file) is a bug.
            let tolerated = names_rotted(&why, &rotted.lock().unwrap())
                || why.contains("store closed")
                || why.contains("must be reopened")
                || why.contains("injected");
            if !tolerated {
                let detail = why.strip_prefix("[read] ").unwrap_or(&why).to_string();
                sh.failures
                    .push(Failure::new(Check::Read, format!("reader: {detail}")));
            }
        }
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
    let trace_on = trace != Trace::Off;
    // Marks are counted per thread: drop whatever an earlier run on this thread left.
    receipt_store::marks::take();
    let mut rt = Runtime::new(plan.seed);
    rt.set_time_jump_per_mille(plan.swarm.time_jump_per_mille);
    let handle = rt.handle();
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
    let env = SimEnv::new(handle.clone(), fs.clone());
    let mut run = Run {
        plan,
        env,
        fs: fs.clone(),
        handle,
        armed: armed.clone(),
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
        trace_on,
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
        lost_power_unchecked: false,
    };
    let r = rt.block_on(run.exec());
    if let Err(e) = r {
        run.fail(Failure::new(
            Check::Sim,
            format!("simulation stopped: {e:?} (deadlock or livelock)"),
        ));
    }
    run.out.faults = fs.stats().faults + armed.fired.load(Ordering::Relaxed);
    run.out.marks = receipt_store::marks::take()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    run.out.trace_hash =
        rt.trace_hash() ^ run.trace_fnv.rotate_left(13) ^ run.out.state_hash.rotate_left(29);
    run.out
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
