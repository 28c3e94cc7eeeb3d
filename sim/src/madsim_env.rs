//! The store inside madsim: an [`Env`] whose clock and tasks are madsim's, for a team whose
//! application is tested under madsim and wants this store in the same simulation. Only built
//! with `RUSTFLAGS="--cfg madsim"` (see README, "The seeded executor, and madsim").
//!
//! Who simulates what:
//! * **time and tasks: madsim.** [`MadsimClock`] reads madsim's virtual clock and sleeps on its
//!   timers (an hour-long prune interval passes in no wall time); [`MadsimSpawner`] spawns the
//!   store's coordinator (and anything else spawned through it) as a madsim task on the calling
//!   task's node, so madsim's seeded scheduler chooses the interleavings and killing that node
//!   kills the coordinator too.
//! * **the filesystem, power loss included: this crate's [`SimFs`].** `madsim::fs` has no rename,
//!   remove, directories or power-failure model (its `sync_all` is a no-op), all of which the
//!   store's durability depends on. A crash is: kill the store's tasks (madsim's node kill, or
//!   [`MadsimSpawner::kill_tasks`]), then [`SimFs::crash_process`] or [`SimFs::power_loss`] (give
//!   it an RNG seeded from `madsim::runtime::Handle::current().seed()` to keep the run a function
//!   of the seed), then open the store again on the same `SimFs`.
//!
//! Traps, each verified with madsim 0.2.34:
//! * Build [`MadsimEnv`] inside the runtime: its clock measures from madsim's `now` at creation.
//! * No OS threads: a `std::thread::spawn` inside the simulation panics ("attempt to spawn a
//!   system thread in simulation"). [`MadsimSpawner`]'s `run_blocking` therefore runs the work
//!   inline, on the calling task, as the seeded executor's does.
//! * HashMap order is seeded by madsim only if the OS thread has created no `RandomState` before
//!   the runtime starts; otherwise it is random again, silently. `#[madsim::test]` runs each seed
//!   on a fresh thread; when building `madsim::runtime::Runtime` by hand, do the same.
//! * madsim's default seed is the wall-clock time: pin `MADSIM_TEST_SEED` (and print it) in CI.
//!   `MADSIM_TEST_NUM` runs that many consecutive seeds; `MADSIM_TEST_CHECK_DETERMINISM=1` runs
//!   one seed twice and panics at the first random draw that differs.
//! * The store's channels are real `tokio::sync` ones, which work under madsim; real tokio
//!   runtimes, timers and `tokio::fs` do not, and the store uses none of them.

use crate::exec::{self, PlanEnv, Trace};
use crate::fs::SimFs;
use crate::plan::Plan;
use receipt_store::env::{BlockingPool, BoxFuture, Clock, Env, Spawner};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// madsim's virtual clock, measured from the moment the clock was made.
#[derive(Clone)]
pub struct MadsimClock {
    time: madsim::time::TimeHandle,
    start: Instant,
}

impl MadsimClock {
    /// Panics outside a madsim runtime.
    pub fn new() -> Self {
        let time = madsim::time::TimeHandle::try_current()
            .expect("MadsimClock (and MadsimEnv) must be made inside a madsim runtime");
        let start = time.now_instant();
        MadsimClock { time, start }
    }
}

impl Default for MadsimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MadsimClock {
    fn now(&self) -> Duration {
        self.time.now_instant() - self.start
    }
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.time.sleep(duration)
    }
}

/// Spawns on madsim's executor and remembers what it spawned, so that a crash can drop those
/// tasks ([`MadsimSpawner::kill_tasks`]) and a test can count the ones alive.
#[derive(Clone, Default)]
pub struct MadsimSpawner {
    tasks: Arc<Mutex<Vec<madsim::task::JoinHandle<()>>>>,
}

impl MadsimSpawner {
    /// Tasks spawned through this spawner whose futures still exist.
    pub fn live_tasks(&self) -> usize {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.len()
    }

    /// Aborts every task spawned through this spawner and waits until madsim has dropped their
    /// futures. An abort alone only marks a madsim task: its future (with the file handles it
    /// holds) is dropped when the scheduler next picks it, in a random order among ready tasks.
    pub async fn kill_tasks(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in &mut tasks {
            // Err(cancelled) once madsim has dropped the future; Ok if it had finished.
            let _ = t.await;
        }
        // All finished now; kept so that `live_tasks` counts, rather than assumes, that.
        self.tasks.lock().unwrap().extend(tasks);
    }
}

/// The work runs inline, on the task that awaits it: madsim forbids OS threads, and madsim's
/// own `spawn_blocking` runs inline too (and is deprecated under simulation).
impl BlockingPool for MadsimSpawner {
    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        async move { work() }
    }
}

impl Spawner for MadsimSpawner {
    fn spawn(&self, name: &'static str, future: BoxFuture<()>) {
        // Detached: dropping the JoinHandle would not stop the task; it runs until it returns,
        // is killed with its node, or `kill_tasks` aborts it.
        let task = madsim::task::Builder::new().name(name).spawn(future);
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// The store's environment on madsim: madsim's clock and executor, the simulator's [`SimFs`].
#[derive(Clone)]
pub struct MadsimEnv {
    pub fs: SimFs,
    pub clock: MadsimClock,
    pub spawner: MadsimSpawner,
}

impl MadsimEnv {
    /// Panics outside a madsim runtime (see [`MadsimClock::new`]).
    pub fn new(fs: SimFs) -> Self {
        MadsimEnv {
            fs,
            clock: MadsimClock::new(),
            spawner: MadsimSpawner::default(),
        }
    }
}

impl Env for MadsimEnv {
    type Fs = SimFs;
    type Clock = MadsimClock;
    type Spawner = MadsimSpawner;
    fn fs(&self) -> &SimFs {
        &self.fs
    }
    fn clock(&self) -> &MadsimClock {
        &self.clock
    }
    fn spawner(&self) -> &MadsimSpawner {
        &self.spawner
    }
}

impl PlanEnv for MadsimEnv {
    fn kill_tasks(&self) -> impl Future<Output = ()> + Send {
        self.spawner.kill_tasks()
    }
    fn live_tasks(&self) -> usize {
        self.spawner.live_tasks()
    }
}

/// Runs `plan` with every check of [`exec::run_plan_with`], on the madsim runtime that polls
/// the returned future. The schedule is madsim's (seeded by its runtime seed), not the plan's:
/// the plan's seed still draws its ops, faults, power-loss images and reader choices, while its
/// `time_jump_per_mille` (a knob of the seeded executor) has no effect here.
pub async fn run_plan(plan: &Plan, trace: Trace) -> exec::Outcome {
    exec::run_plan_on(plan, trace, MadsimEnv::new).await
}
