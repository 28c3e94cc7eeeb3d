//! Runs one plan against the real store on the simulated environment and checks the invariants
//! of DESIGN.md after every op and every recovery.

use crate::fs::{Fault, FsOp, SimFs};
use crate::model::{receipts_for, Model, State};
use crate::plan::{Op, Plan};
use crate::runtime::{Runtime, SimEnv};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::{Config, Error, FaultHook, LogFilter, LogInput, ReceiptInput, Store};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DATA_DIR: &str = "/data";
/// Reads each background reader issues per store incarnation.
const READS_PER_READER: usize = 12;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: String,
    pub failures: Vec<String>,
    pub ops: usize,
    pub crashes: usize,
    pub faults: u64,
    pub reopens: usize,
    pub trace_hash: u64,
    pub state_hash: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
    #[serde(skip)]
    pub recovered: Option<State>,
    #[serde(skip)]
    pub expected: Option<State>,
    /// The state read back at the last successful recovery (what the corpus snapshots).
    #[serde(skip)]
    pub final_state: Option<State>,
}

/// Failpoints armed by the plan; consulted by the store through its per-instance hook.
#[derive(Default)]
struct Armed {
    failpoint: Mutex<Option<String>>,
    fs: Mutex<Option<(FsOp, Fault, u32)>>,
}

struct Hook(Arc<Armed>);

impl FaultHook for Hook {
    fn should_fail(&self, point: &'static str) -> bool {
        let mut a = self.0.failpoint.lock().unwrap();
        if a.as_deref() == Some(point) {
            *a = None;
            return true;
        }
        false
    }
}

type S = Store<SimEnv>;

struct Run<'p> {
    plan: &'p Plan,
    env: SimEnv,
    fs: SimFs,
    handle: crate::runtime::Handle,
    armed: Arc<Armed>,
    model: Arc<Mutex<Model>>,
    out: Outcome,
    fault_rng: ChaCha8Rng,
    trace_on: bool,
    read_failures: Arc<Mutex<Vec<String>>>,
}

fn config(plan: &Plan) -> Config {
    let s = &plan.swarm;
    let mut c = Config::new(s.max_blocks_per_file, s.block_flush_interval.max(1));
    c.block_flush_interval = s.block_flush_interval;
    c.keep_recent = s.keep_recent;
    c.prune_interval = Duration::from_millis(s.prune_interval_ms);
    c.sync_policy = s.sync_policy;
    c.wal_segment_bytes = 4096;
    c
}

/// Errors that mean "nothing was staged": the write's outcome is known to be "not written".
fn rejected(e: &Error) -> bool {
    matches!(
        e,
        Error::NonMonotonic { .. }
            | Error::Sealed { .. }
            | Error::InvalidInput(_)
            | Error::Poisoned(_)
            | Error::Closed
    )
}

impl Run<'_> {
    fn log(&mut self, line: String) {
        if self.trace_on {
            self.out
                .trace
                .push(format!("[{:>10?}] {line}", self.handle.now()));
        }
    }

    fn fail(&mut self, what: String) {
        self.log(format!("FAILURE: {what}"));
        self.out.failures.push(what);
    }

    fn prunable(&self) -> impl Fn(u64) -> bool {
        let keep = self.plan.swarm.keep_recent;
        let prune_before = self.model.lock().unwrap().max_height.saturating_sub(keep);
        move |b| keep > 0 && b < prune_before
    }

    async fn read_state(&mut self, store: &S) -> Result<State, Error> {
        let receipts = store.receipts_in_range(0, u64::MAX).await?;
        let mut logs = store.get_logs(&LogFilter::default()).await?;
        logs.sort_by_key(|l| (l.block_number, l.tx_index, l.log_index));
        Ok(State { receipts, logs })
    }

    /// Opens the store; a failed open (from an armed fault) must leave no handle, then faults are
    /// cleared and the open retried.
    async fn open(&mut self) -> Option<S> {
        for attempt in 0..2 {
            let hook: Arc<dyn FaultHook> = Arc::new(Hook(self.armed.clone()));
            match Store::open_with_hook(self.env.clone(), DATA_DIR, config(self.plan), Some(hook))
                .await
            {
                Ok(s) => return Some(s),
                Err(e) => {
                    self.log(format!("open failed: {e}"));
                    if self.fs.open_handle_count() != 0 {
                        let leaked = self.fs.open_handles();
                        self.fail(format!(
                            "file handles left open after a failed open: {leaked:?}"
                        ));
                    }
                    // A fault armed by the plan may fire inside open (replay flushes and rotates):
                    // that failure is legitimate once; a second failure is not.
                    let injected =
                        matches!(e, Error::Failpoint(_)) || e.to_string().contains("injected");
                    if attempt == 1 || !injected {
                        self.fail(format!("store cannot be opened: {e}"));
                        return None;
                    }
                    *self.armed.fs.lock().unwrap() = None;
                    *self.armed.failpoint.lock().unwrap() = None;
                }
            }
        }
        None
    }

    /// Recovery check: the recovered state equals the model on a prefix between the lower bound
    /// and everything issued; recovering the same image again gives the same state.
    async fn recover(&mut self, power_loss: bool) -> Option<S> {
        self.out.reopens += 1;
        let store = self.open().await?;
        let mut first = self.read_state(&store).await;
        if first
            .as_ref()
            .is_err_and(|e| e.to_string().contains("injected"))
        {
            // An armed read fault fired; the state itself is what is checked.
            *self.armed.fs.lock().unwrap() = None;
            first = self.read_state(&store).await;
        }
        let got = match first {
            Ok(s) => s,
            Err(e) => {
                self.fail(format!("reading recovered state failed: {e}"));
                return Some(store);
            }
        };
        let prunable = self.prunable();
        let got_cmp = got.without_blocks(&prunable);
        let (lo, hi) = {
            let m = self.model.lock().unwrap();
            (m.lower_bound(power_loss), m.issued.len())
        };
        let matched = (lo..=hi).rev().find(|&k| {
            self.model
                .lock()
                .unwrap()
                .state(k)
                .without_blocks(&prunable)
                == got_cmp
        });
        match matched {
            Some(k) => {
                self.log(format!(
                    "recovered prefix {k} of {hi} issued (lower bound {lo}); status {:?}",
                    store.status().await.ok()
                ));
                self.model.lock().unwrap().adopt(k);
            }
            None => {
                let expected = self.model.lock().unwrap().state(hi);
                self.fail(format!(
                    "recovered state matches no prefix in {lo}..={hi}: {} receipts / {} logs recovered, {} receipts / {} logs issued",
                    got.receipts.len(),
                    got.logs.len(),
                    expected.receipts.len(),
                    expected.logs.len()
                ));
                self.out.expected = Some(expected.without_blocks(&prunable));
                self.out.recovered = Some(got_cmp);
                return Some(store);
            }
        }
        // Every block must be whole or absent where pruning may have acted.
        for r in &got.receipts {
            if self
                .model
                .lock()
                .unwrap()
                .find(&r.tx_hash)
                .is_none_or(|(h, w, _)| h != r.block_number || w.receipt_bytes != r.receipt_bytes)
            {
                self.fail(format!("phantom receipt in block {}", r.block_number));
            }
        }
        // Same durable image, recovered twice: same state.
        self.handle.abort_all();
        crate::runtime::yield_now().await;
        drop(store);
        self.fs.crash_process();
        let again = self.open().await?;
        match self.read_state(&again).await {
            Ok(s2) if s2.hash() == got.hash() => {}
            Ok(_) => self.fail("recovering the same image twice gave different states".into()),
            Err(e) => self.fail(format!("second recovery read failed: {e}")),
        }
        self.out.state_hash = got.hash();
        self.out.final_state = Some(got);
        self.spawn_readers(&again);
        Some(again)
    }

    fn spawn_readers(&mut self, store: &S) {
        for r in 0..self.plan.swarm.readers {
            let (store, model, fails, handle) = (
                store.clone(),
                self.model.clone(),
                self.read_failures.clone(),
                self.handle.clone(),
            );
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.plan.seed ^ (r as u64) << 32 ^ self.out.reopens as u64,
            );
            let prunable = self.prunable();
            self.handle.spawn(Box::pin(async move {
                for _ in 0..READS_PER_READER {
                    handle
                        .sleep(Duration::from_micros(rng.random_range(1..500)))
                        .await;
                    let target = {
                        let m = model.lock().unwrap();
                        let all: Vec<_> = m
                            .issued
                            .iter()
                            .flat_map(|w| w.receipts.iter().map(|r| r.tx_hash))
                            .collect();
                        if all.is_empty() {
                            continue;
                        }
                        all[rng.random_range(0..all.len())]
                    };
                    let acked_before = model
                        .lock()
                        .unwrap()
                        .find(&target)
                        .is_some_and(|(_, _, a)| a);
                    let got = store.get_receipt(&target).await;
                    let m = model.lock().unwrap();
                    match got {
                        Ok(Some(r)) => {
                            if m.find(&target).is_none_or(|(h, w, _)| {
                                h != r.block_number || w.receipt_bytes != r.receipt_bytes
                            }) {
                                fails.lock().unwrap().push(format!(
                                    "reader got a receipt that was never written at block {}",
                                    r.block_number
                                ));
                            }
                        }
                        Ok(None) => {
                            if let Some((h, _, _)) = m.find(&target) {
                                if acked_before && !prunable(h) {
                                    fails.lock().unwrap().push(format!(
                                        "acked receipt in block {h} not visible to a reader"
                                    ));
                                }
                            }
                        }
                        Err(e)
                            if matches!(e, Error::Closed | Error::Poisoned(_))
                                || e.to_string().contains("injected") => {}
                        Err(e) => fails.lock().unwrap().push(format!("read failed: {e}")),
                    }
                }
            }));
        }
    }

    async fn crash(&mut self, store: S, power_loss: bool) -> Option<S> {
        self.out.crashes += 1;
        if power_loss {
            if let Ok(st) = store.status().await {
                self.model.lock().unwrap().durable_below =
                    st.open_pair.unwrap_or(st.file_start_block);
            }
        }
        self.handle.abort_all();
        crate::runtime::yield_now().await;
        drop(store);
        if self.handle.live_tasks() != 0 {
            self.fail(format!(
                "{} tasks alive after a crash",
                self.handle.live_tasks()
            ));
        }
        if power_loss {
            self.fs.power_loss(&mut self.fault_rng);
        } else {
            self.fs.crash_process();
        }
        self.recover(power_loss).await
    }

    async fn close(&mut self, store: S) {
        let r = store.close().await;
        self.log(format!("close: {r:?}"));
        // Let readers observe the closed store and finish.
        self.handle.sleep(Duration::from_millis(1)).await;
        drop(store);
        for _ in 0..READS_PER_READER * 2 {
            if self.handle.live_tasks() == 0 {
                break;
            }
            self.handle.sleep(Duration::from_millis(1)).await;
        }
        if self.handle.live_tasks() != 0 {
            self.fail(format!(
                "{} tasks alive after close",
                self.handle.live_tasks()
            ));
        }
        if self.fs.open_handle_count() != 0 {
            let h = self.fs.open_handles();
            self.fail(format!("file handles open after close: {h:?}"));
        }
    }

    async fn exec(&mut self) {
        let swarm = serde_json::to_string(&self.plan.swarm).expect("serialisable");
        self.log(format!("swarm {swarm}"));
        let Some(mut store) = self.recover(false).await else {
            return;
        };
        for (i, op) in self.plan.ops.iter().enumerate() {
            self.out.ops += 1;
            self.log(format!("op {i}: {op:?}"));
            match op {
                Op::Write {
                    height,
                    receipts,
                    logs,
                } => {
                    let rs = receipts_for(self.plan.seed, i, *height, *receipts, *logs);
                    let r = store.write_receipts(*height, rs.clone()).await;
                    self.log(format!("  -> {r:?}"));
                    match r {
                        Ok(()) => self.model.lock().unwrap().issue(*height, rs, true),
                        Err(e) if rejected(&e) => {}
                        Err(_) => self.model.lock().unwrap().issue(*height, rs, false),
                    }
                }
                Op::Empty { height } => {
                    let _ = store.write_receipts(*height, vec![]).await;
                }
                Op::Stale { height } => {
                    let last = self.model.lock().unwrap().issued.last().map(|w| w.height);
                    let rs = receipts_for(self.plan.seed, i, *height, 1, 1);
                    match store.write_receipts(*height, rs).await {
                        Ok(()) if last.is_some_and(|l| l > *height) => self.fail(format!(
                            "stale write at {height} below {last:?} was accepted"
                        )),
                        Ok(()) => {
                            let rs = receipts_for(self.plan.seed, i, *height, 1, 1);
                            self.model.lock().unwrap().issue(*height, rs, true);
                        }
                        Err(e) if rejected(&e) => {}
                        // Accepted (earlier writes were rejected), then a fault hit it: unknown outcome.
                        Err(_) => {
                            let rs = receipts_for(self.plan.seed, i, *height, 1, 1);
                            self.model.lock().unwrap().issue(*height, rs, false);
                        }
                    }
                }
                Op::Oversized { height } => {
                    let bad = ReceiptInput {
                        tx_hash: [0xFF; 32],
                        tx_index: 0,
                        receipt_bytes: vec![1],
                        logs: vec![LogInput {
                            address: [0; 20],
                            topics: vec![[0; 32]; 5],
                            data: vec![],
                        }],
                    };
                    match store.write_receipts(*height, vec![bad]).await {
                        Ok(()) => self.fail("a log with five topics was accepted".into()),
                        Err(e) if rejected(&e) => {}
                        Err(e) => self.fail(format!("bad input gave an unexpected error: {e}")),
                    }
                }
                Op::ReadReceipt { of_op } => {
                    let target = of_op.and_then(|o| match &self.plan.ops.get(o) {
                        Some(Op::Write {
                            height,
                            receipts,
                            logs,
                        }) => receipts_for(self.plan.seed, o, *height, *receipts, *logs)
                            .first()
                            .map(|r| r.tx_hash),
                        _ => None,
                    });
                    let hash = target.unwrap_or([0xAB; 32]);
                    let (acked, block) = {
                        let m = self.model.lock().unwrap();
                        m.find(&hash).map_or((false, 0), |(h, _, a)| (a, h))
                    };
                    match store.get_receipt(&hash).await {
                        Ok(Some(r)) if target.is_none() => {
                            self.fail(format!("unknown hash found in block {}", r.block_number))
                        }
                        Ok(None) if acked && !(self.prunable())(block) => {
                            self.fail(format!("acked receipt in block {block} not found"))
                        }
                        Err(e)
                            if !e.to_string().contains("injected")
                                && !matches!(e, Error::Poisoned(_)) =>
                        {
                            self.fail(format!("read failed: {e}"))
                        }
                        _ => {}
                    }
                }
                Op::ReadLogs {
                    from,
                    to,
                    address,
                    topic0,
                } => {
                    let filter = LogFilter {
                        from_block: Some(*from),
                        to_block: Some(*to),
                        addresses: address.map(|a| vec![[a; 20]]).unwrap_or_default(),
                        topics: topic0.map(|t| vec![vec![[t; 32]]]).unwrap_or_default(),
                        limit: None,
                    };
                    match store.get_logs(&filter).await {
                        Ok(got) => {
                            let m = self.model.lock().unwrap();
                            let expect: Vec<_> = m
                                .state(m.issued.len())
                                .logs
                                .into_iter()
                                .filter(|l| filter.matches(l))
                                .collect();
                            let acked: Vec<_> = m
                                .state(m.acked_count())
                                .logs
                                .into_iter()
                                .filter(|l| filter.matches(l))
                                .collect();
                            drop(m);
                            let prunable = self.prunable();
                            let keep = |v: &Vec<receipt_store::LogRecord>| {
                                v.iter()
                                    .filter(|l| !prunable(l.block_number))
                                    .cloned()
                                    .collect::<Vec<_>>()
                            };
                            let g = keep(&got);
                            if g != keep(&expect) && g != keep(&acked) {
                                self.fail(format!(
                                    "get_logs {from}..={to} returned {} logs, model has {}",
                                    got.len(),
                                    expect.len()
                                ));
                            }
                        }
                        Err(e)
                            if e.to_string().contains("injected")
                                || matches!(e, Error::Poisoned(_)) => {}
                        Err(e) => self.fail(format!("get_logs failed: {e}")),
                    }
                }
                Op::Prune => {
                    self.handle
                        .sleep(Duration::from_millis(self.plan.swarm.prune_interval_ms + 1))
                        .await;
                    let _ = store.prune_now().await;
                }
                Op::Crash => match self.crash(store, false).await {
                    Some(s) => store = s,
                    None => return,
                },
                Op::PowerLoss => match self.crash(store, true).await {
                    Some(s) => store = s,
                    None => return,
                },
                Op::CloseReopen => {
                    self.close(store).await;
                    match self.recover(false).await {
                        Some(s) => store = s,
                        None => return,
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
            }
            let fails: Vec<String> = std::mem::take(&mut *self.read_failures.lock().unwrap());
            for f in fails {
                self.fail(f);
            }
            if !self.out.failures.is_empty() {
                return;
            }
        }
        // Final: clean close, then a last recovery must give back everything issued.
        self.close(store).await;
        *self.armed.fs.lock().unwrap() = None;
        *self.armed.failpoint.lock().unwrap() = None;
        if let Some(s) = self.recover(false).await {
            self.close(s).await;
        }
    }
}

/// Runs `plan`; `trace_on` keeps a human-readable event trace.
pub fn run_plan(plan: &Plan, trace_on: bool) -> Outcome {
    let mut rt = Runtime::new(plan.seed);
    let handle = rt.handle();
    let fs = SimFs::new(plan.swarm.torn_bytes);
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
        armed,
        model: Arc::new(Mutex::new(Model::new(plan.swarm.sync_policy))),
        out: Outcome {
            seed: plan.seed,
            scenario: plan.scenario.clone(),
            ..Default::default()
        },
        fault_rng: ChaCha8Rng::seed_from_u64(plan.seed ^ 0xFA_0175),
        trace_on,
        read_failures: Arc::new(Mutex::new(Vec::new())),
    };
    let r = rt.block_on(async {
        run.exec().await;
    });
    if let Err(e) = r {
        run.out
            .failures
            .push(format!("simulation stopped: {e:?} (deadlock or livelock)"));
    }
    run.out.trace_hash = rt.trace_hash() ^ run.out.state_hash.rotate_left(17);
    run.out.faults = fs.stats().faults;
    run.out
}
