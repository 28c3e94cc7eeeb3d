//! One seed: a chain of child processes on one directory, each killed at a seeded point (or
//! closing cleanly), the directory opened and checked in this process after each.

use super::protocol::{ErrorKind, Msg};
use super::{parent_config, policy_name, write_of, KILL_STREAM};
use crate::check::{self, Check, Failure};
use crate::model::{Model, State};
use crate::plan::{Op, Plan};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, Error, LogFilter, Store};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kill delays after the chosen ack, at most (microseconds). Most draws are far shorter.
pub const KILL_DELAY_US_MAX: u64 = 5_000;
/// A child that prints nothing for this long is hung: it is killed and the seed fails.
pub const CHILD_SILENCE_MAX: Duration = Duration::from_secs(60);
/// Lines of a failed child's stderr quoted in the failure.
const STDERR_TAIL_LINES: usize = 12;

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

/// Called after each kill with the data directory, the kill's number (from 1) and the model as
/// the child's lines left it, before the parent reopens: tests damage the directory here to prove
/// the checks catch it.
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

/// Every file under `dir` (recursively) and its length, as the sim fs's `file_sizes` gives
/// [`check::check_files`].
fn read_tree(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, usize>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                files.insert(path.clone(), entry.metadata()?.len() as usize);
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

/// Invariant 4: the directory, recovered again, gives the same state.
async fn same_state_again(data: &Path, config: Config, got: &State) -> Option<Failure> {
    let again = match Store::open(RealEnv::default(), data, config).await {
        Ok(s) => s,
        Err(e) => {
            return Some(Failure::new(
                Check::Idempotence,
                format!("the second open failed: {e}"),
            ))
        }
    };
    let f = match read_state(&again).await {
        Ok(s) if &s == got => None,
        Ok(s) => Some(Failure::new(
            Check::Idempotence,
            format!(
                "recovering the same directory twice gave different states: {} then {} receipts, {} then {} logs",
                got.receipts.len(),
                s.receipts.len(),
                got.logs.len(),
                s.logs.len()
            ),
        )),
        Err(e) => Some(Failure::new(
            Check::Idempotence,
            format!("the second recovery could not read its state: {e}"),
        )),
    };
    again.crash().await;
    f
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
            Msg::Pruned { windows, .. } => self.model.pruned.extend(windows),
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
        if i >= self.plan.ops.len() || self.pending.is_some() {
            self.fail(Failure::new(
                Check::Sim,
                format!(
                    "child protocol: issued {i} with {} ops in the plan and {:?} in flight",
                    self.plan.ops.len(),
                    self.pending.map(|p| p.op)
                ),
            ));
            return;
        }
        self.resume = i + 1;
        self.doing = self.op_name(i);
        if let Op::Empty { height } = &self.plan.ops[i] {
            self.model.observe_empty(*height);
        }
        let Some((height, receipts, stale)) = write_of(self.plan, i) else {
            return;
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
                out.extend(check::check_files(&files, &self.data, &status));
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
        out.extend(check::resurrected(&got, &self.model.pruned));
        let blocks: BTreeSet<u64> = got.receipts.iter().map(|r| r.block_number).collect();
        self.out.recovered_blocks += blocks.len();
        // `crash` drops the store as a kill would, leaving the image for the second open and
        // then for the next child.
        store.crash().await;
        drop(store);
        out.extend(same_state_again(&self.data, config, &got).await);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
