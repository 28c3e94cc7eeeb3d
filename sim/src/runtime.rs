//! A deterministic single-threaded executor with virtual time.
//!
//! Written by hand rather than on madsim: the store is seam-driven (it never touches the OS clock,
//! threads or the real filesystem), so a small seeded executor gives the same determinism without
//! a `--cfg madsim` build of the whole dependency graph, and `cargo run -p receipt-sim` just works.
//! Each step polls a ready task chosen by a seeded ChaCha stream: that choice is how interleavings
//! of the writer, readers and the prune ticker are explored.
//!
//! Virtual time also moves while tasks are runnable: before each poll, with a per-run seeded
//! probability, the earliest timer fires first (as if the ready work took that long). Without
//! it, time would stand still for as long as any task can run, so a prune tick could never land
//! while a read holds its snapshot, nor a rotation race a reader that paces itself by sleeping.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_store::env::{BlockingPool, BoxFuture, Clock, Env, Spawner};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Polls allowed in one `block_on` before the run is declared livelocked.
pub const MAX_POLLS: u64 = 20_000_000;
const MAIN_TASK: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    Deadlock { now: Duration },
    StepLimit,
}

#[derive(Default)]
struct Shared {
    ready: BTreeSet<u64>,
    spawned: Vec<(u64, BoxFuture<()>)>,
    timers: BTreeMap<(Duration, u64), Waker>,
    now: Duration,
    next_id: u64,
    live: BTreeSet<u64>,
    abort_requested: bool,
}

/// A handle to the runtime, shared by the clock, the spawner and wakers.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Mutex<Shared>>,
}

struct TaskWaker {
    id: u64,
    shared: Arc<Mutex<Shared>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.shared.lock().unwrap().ready.insert(self.id);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.lock().unwrap().ready.insert(self.id);
    }
}

impl Handle {
    pub fn now(&self) -> Duration {
        self.shared.lock().unwrap().now
    }
    pub fn spawn(&self, fut: BoxFuture<()>) {
        let mut s = self.shared.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.spawned.push((id, fut));
        s.ready.insert(id);
        s.live.insert(id);
    }
    /// Spawned tasks still alive (the main future is not counted).
    pub fn live_tasks(&self) -> usize {
        self.shared.lock().unwrap().live.len()
    }
    /// Drops every spawned task at the next scheduling point, as a process crash would.
    pub fn abort_all(&self) {
        self.shared.lock().unwrap().abort_requested = true;
    }
    pub fn sleep(&self, d: Duration) -> Sleep {
        let deadline = self.now() + d;
        Sleep {
            handle: self.clone(),
            deadline,
            seq: None,
        }
    }
}

/// Virtual-time sleep.
pub struct Sleep {
    handle: Handle,
    deadline: Duration,
    seq: Option<u64>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.handle.shared.lock().unwrap();
        if s.now >= self.deadline {
            return Poll::Ready(());
        }
        let seq = match self.seq {
            Some(q) => q,
            None => {
                s.next_id += 1;
                s.next_id
            }
        };
        s.timers.insert((self.deadline, seq), cx.waker().clone());
        drop(s);
        self.seq = Some(seq);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            if let Ok(mut s) = self.handle.shared.lock() {
                s.timers.remove(&(self.deadline, seq));
            }
        }
    }
}

/// Yields once to the scheduler.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}

pub struct Runtime {
    handle: Handle,
    rng: ChaCha8Rng,
    /// Per mille of polls before which the earliest timer fires although tasks are ready.
    time_jump_per_mille: u32,
    trace: u64,
    polls: u64,
}

impl Runtime {
    pub fn new(seed: u64) -> Self {
        Runtime {
            handle: Handle {
                shared: Arc::new(Mutex::new(Shared::default())),
            },
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5CED_0001),
            time_jump_per_mille: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            polls: 0,
        }
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Lets virtual time jump to the next timer before `per_mille`/1000 of polls, even while
    /// tasks are ready (0: time moves only when every task waits).
    pub fn set_time_jump_per_mille(&mut self, per_mille: u32) {
        assert!(
            per_mille <= 1000,
            "a probability in per mille is at most 1000"
        );
        self.time_jump_per_mille = per_mille;
    }

    /// A running FNV-style hash of (task polled, virtual time) for every poll.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    pub fn polls(&self) -> u64 {
        self.polls
    }

    pub fn block_on<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, SimError> {
        let mut main = std::pin::pin!(fut);
        let mut tasks: BTreeMap<u64, BoxFuture<()>> = BTreeMap::new();
        self.handle.shared.lock().unwrap().ready.insert(MAIN_TASK);
        loop {
            let (new, abort) = {
                let mut s = self.handle.shared.lock().unwrap();
                let abort = std::mem::take(&mut s.abort_requested);
                (std::mem::take(&mut s.spawned), abort)
            };
            tasks.extend(new);
            if abort {
                // Drop outside the lock: dropping futures drops wakers and handles.
                let dropped = std::mem::take(&mut tasks);
                drop(dropped);
                let mut s = self.handle.shared.lock().unwrap();
                s.live.clear();
                s.ready.retain(|&id| id == MAIN_TASK);
                continue;
            }
            let pick = {
                let mut s = self.handle.shared.lock().unwrap();
                let jump = self.time_jump_per_mille > 0
                    && !s.timers.is_empty()
                    && self.rng.random_range(0..1000) < self.time_jump_per_mille;
                if s.ready.is_empty() || jump {
                    match s.timers.keys().next().copied() {
                        Some(key) => {
                            let waker = s.timers.remove(&key).expect("just seen");
                            s.now = s.now.max(key.0);
                            drop(s);
                            waker.wake();
                            continue;
                        }
                        None => return Err(SimError::Deadlock { now: s.now }),
                    }
                }
                let n = s.ready.len();
                let i = self.rng.random_range(0..n);
                let id = *s.ready.iter().nth(i).expect("in range");
                s.ready.remove(&id);
                (id, s.now)
            };
            let (id, now) = pick;
            self.polls += 1;
            if self.polls > MAX_POLLS {
                return Err(SimError::StepLimit);
            }
            self.trace = (self.trace ^ id.wrapping_mul(0x9E37_79B9) ^ now.as_nanos() as u64)
                .wrapping_mul(0x1000_0000_01b3);
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                shared: self.handle.shared.clone(),
            }));
            let mut cx = Context::from_waker(&waker);
            if id == MAIN_TASK {
                if let Poll::Ready(v) = main.as_mut().poll(&mut cx) {
                    return Ok(v);
                }
            } else if let Some(mut task) = tasks.remove(&id) {
                match task.as_mut().poll(&mut cx) {
                    Poll::Ready(()) => {
                        self.handle.shared.lock().unwrap().live.remove(&id);
                        drop(task);
                    }
                    Poll::Pending => {
                        tasks.insert(id, task);
                    }
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct SimClock(pub Handle);

impl Clock for SimClock {
    fn now(&self) -> Duration {
        self.0.now()
    }
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.0.sleep(duration)
    }
}

#[derive(Clone)]
pub struct SimSpawner(pub Handle);

/// [`BlockingPool::parallelism`] of the simulator's pool.
pub const SIM_DECODE_PARALLELISM: usize = 2;

/// Heavy read work runs inline, on the reading task when it is polled: no thread, no added
/// await point, so the schedule (and every seed's trace) is what it was without the pool.
impl BlockingPool for SimSpawner {
    /// Two, so a read splits its decoding as on a machine with spare cores and the simulator
    /// checks the split rows come back whole and in order (the parts still run one at a time).
    fn parallelism(&self) -> usize {
        SIM_DECODE_PARALLELISM
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        async move { work() }
    }

    /// The write lane: the work runs inline too, but only after one yield to the scheduler, as
    /// a lane thread would finish some time after the coordinator started it. Meanwhile the
    /// seeded scheduler may run the workload, so requests (writes, reads, crashes) land while a
    /// flush's row groups are being encoded, as they do on a real machine.
    fn run_write<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        async move {
            yield_now().await;
            work()
        }
    }
}

impl Spawner for SimSpawner {
    fn spawn(&self, _name: &'static str, future: BoxFuture<()>) {
        self.0.spawn(future);
    }
}

/// The simulated environment: sim filesystem, virtual clock, seeded executor.
#[derive(Clone)]
pub struct SimEnv {
    pub fs: crate::fs::SimFs,
    pub clock: SimClock,
    pub spawner: SimSpawner,
}

impl SimEnv {
    pub fn new(handle: Handle, fs: crate::fs::SimFs) -> Self {
        SimEnv {
            fs,
            clock: SimClock(handle.clone()),
            spawner: SimSpawner(handle),
        }
    }
}

impl Env for SimEnv {
    type Fs = crate::fs::SimFs;
    type Clock = SimClock;
    type Spawner = SimSpawner;
    fn fs(&self) -> &crate::fs::SimFs {
        &self.fs
    }
    fn clock(&self) -> &SimClock {
        &self.clock
    }
    fn spawner(&self) -> &SimSpawner {
        &self.spawner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn racing(seed: u64) -> (Vec<u32>, u64, Duration) {
        let mut rt = Runtime::new(seed);
        let h = rt.handle();
        let order = Arc::new(Mutex::new(Vec::new()));
        let out = rt
            .block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(16);
                for t in 0..4u32 {
                    let (tx, order, h2) = (tx.clone(), order.clone(), h.clone());
                    h.spawn(Box::pin(async move {
                        for k in 0..3 {
                            yield_now().await;
                            order.lock().unwrap().push(t * 10 + k);
                        }
                        h2.sleep(Duration::from_secs(3600)).await;
                        tx.send(t).await.unwrap();
                    }));
                }
                drop(tx);
                let mut got = 0;
                while rx.recv().await.is_some() {
                    got += 1;
                }
                got
            })
            .unwrap();
        assert_eq!(out, 4);
        let v = order.lock().unwrap().clone();
        (v, rt.trace_hash(), h.now())
    }

    #[test]
    fn same_seed_gives_the_same_interleaving_and_trace() {
        assert_eq!(racing(7), racing(7));
    }

    #[test]
    fn different_seeds_explore_different_interleavings() {
        let orders: BTreeSet<Vec<u32>> = (0..8).map(|s| racing(s).0).collect();
        assert!(orders.len() > 1);
    }

    #[test]
    fn sleeping_an_hour_takes_virtual_time_only() {
        let (_, _, now) = racing(1);
        assert_eq!(now, Duration::from_secs(3600));
    }

    #[test]
    fn a_future_that_can_never_finish_is_a_deadlock() {
        let mut rt = Runtime::new(1);
        let r = rt.block_on(std::future::pending::<()>());
        assert!(matches!(r, Err(SimError::Deadlock { .. })));
    }

    /// A task that never waits, and a timer: without time jumps the timer fires only after the
    /// busy task is done; with them it fires while the busy task still runs.
    fn timer_fires_during_busy_work(per_mille: u32, seed: u64) -> bool {
        let mut rt = Runtime::new(seed);
        rt.set_time_jump_per_mille(per_mille);
        let h = rt.handle();
        let busy_done = Arc::new(AtomicBool::new(false));
        let fired_while_busy = Arc::new(AtomicBool::new(false));
        let (b, f, h2) = (busy_done.clone(), fired_while_busy.clone(), h.clone());
        rt.block_on(async move {
            h.spawn(Box::pin(async move {
                h2.sleep(Duration::from_millis(5)).await;
                f.store(!b.load(Ordering::SeqCst), Ordering::SeqCst);
            }));
            for _ in 0..500 {
                yield_now().await;
            }
            busy_done.store(true, Ordering::SeqCst);
            h.sleep(Duration::from_millis(10)).await;
        })
        .unwrap();
        fired_while_busy.load(Ordering::SeqCst)
    }

    #[test]
    fn time_stands_still_while_tasks_run_unless_jumps_are_on() {
        assert!(!(0..8).any(|s| timer_fires_during_busy_work(0, s)));
        assert!((0..8).all(|s| timer_fires_during_busy_work(50, s)));
    }

    #[test]
    fn abort_all_drops_spawned_tasks() {
        let mut rt = Runtime::new(3);
        let h = rt.handle();
        rt.block_on(async {
            h.spawn(Box::pin(std::future::pending()));
            yield_now().await;
            assert_eq!(h.live_tasks(), 1);
            h.abort_all();
            yield_now().await;
            assert_eq!(h.live_tasks(), 0);
        })
        .unwrap();
    }
}
