//! The env's blocking pool (issue 10, "nothing heavy on the async workers"): reads hand their
//! heavy part to it, so a block commits while a read's decode is still running, even on a
//! runtime with a single async worker; the real pool runs work on other threads within its
//! bound, passes panics on, and large file reads made through it return the right bytes.

use receipt_store::env::real::{
    decode_slots, RealFs, TokioClock, TokioSpawner, POOL_THREAD_NICE, READ_INLINE_BYTES_MAX,
};
use receipt_store::env::{BlockingPool, BoxFuture, Env, Fs, FsFile, Spawner};
use receipt_store::{Config, LogFilter, LogInput, ReceiptInput, Store};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Bound on any single wait that a broken store could turn into a hang; never a synchronizer.
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

/// Holds the first piece of pool work after [`Gate::arm`] on its thread until released.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Mutex<Option<mpsc::Sender<()>>>,
    held: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Gate {
    fn arm(&self) {
        let (tx, rx) = mpsc::channel();
        *self.release.lock().unwrap() = Some(tx);
        *self.held.lock().unwrap() = Some(rx);
        self.armed.store(true, Ordering::SeqCst);
    }
    fn open(&self) {
        if let Some(tx) = self.release.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

/// Tokio's spawner with a pool that runs work on tokio's blocking threads (no bound: this
/// test is about where the work runs) and can hold one piece of it.
#[derive(Clone)]
struct GatedSpawner {
    gate: Arc<Gate>,
}

impl BlockingPool for GatedSpawner {
    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        let gate = self.gate.clone();
        async move {
            let held = if gate.armed.swap(false, Ordering::SeqCst) {
                gate.held.lock().unwrap().take()
            } else {
                None
            };
            let entered = held.is_some();
            let run = tokio::task::spawn_blocking(move || {
                if let Some(rx) = held {
                    // A pool that ran work on the async worker would block that worker here;
                    // the bound turns such a hang into a failed assertion below.
                    let _ = rx.recv_timeout(LIVENESS_BOUND);
                }
                work()
            });
            if entered {
                gate.entered.notify_one();
            }
            run.await.expect("pool work")
        }
    }
}

impl Spawner for GatedSpawner {
    fn spawn(&self, _name: &'static str, future: BoxFuture<()>) {
        tokio::spawn(future);
    }
}

#[derive(Clone)]
struct GatedEnv {
    fs: RealFs,
    clock: TokioClock,
    spawner: GatedSpawner,
}

impl Env for GatedEnv {
    type Fs = RealFs;
    type Clock = TokioClock;
    type Spawner = GatedSpawner;
    fn fs(&self) -> &RealFs {
        &self.fs
    }
    fn clock(&self) -> &TokioClock {
        &self.clock
    }
    fn spawner(&self) -> &GatedSpawner {
        &self.spawner
    }
}

fn block(b: u64) -> Vec<ReceiptInput> {
    (0..20u32)
        .map(|i| {
            let mut tx_hash = [0u8; 32];
            tx_hash[..8].copy_from_slice(&b.to_be_bytes());
            tx_hash[8..12].copy_from_slice(&i.to_be_bytes());
            ReceiptInput {
                tx_hash,
                tx_index: i,
                receipt_bytes: vec![i as u8; 40],
                logs: vec![LogInput {
                    address: [(i % 3) as u8 + 1; 20],
                    topics: vec![[(i % 2) as u8 + 7; 32]],
                    data: vec![b as u8; 8],
                }],
            }
        })
        .collect()
}

/// The claim of issue 10's first item, on the smallest runtime where it can fail: with one
/// async worker, a read whose decode is held on the pool does not stop a block from
/// committing, and once released the read returns exactly what it returned unheld.
#[tokio::test(flavor = "current_thread")]
async fn a_block_commits_while_a_get_logs_decode_is_held_on_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let env = GatedEnv {
        fs: RealFs,
        clock: TokioClock::default(),
        spawner: GatedSpawner { gate: gate.clone() },
    };
    let config = Config {
        max_blocks_per_file: 10,
        ..Config::default()
    };
    let s = Arc::new(Store::open(env, dir.path(), config).await.expect("open"));
    for b in 1..=12 {
        s.write_receipts(b, block(b)).await.expect("write");
    }
    let filter = LogFilter {
        from_block: Some(1),
        to_block: Some(9),
        topics: vec![vec![[7; 32]]],
        ..Default::default()
    };
    let unheld = s.get_logs(&filter).await.expect("unheld read");
    assert_eq!(
        unheld.len(),
        9 * 10,
        "half the logs of blocks 1..=9 have topic0 7"
    );

    gate.arm();
    let reader = {
        let (s, filter) = (s.clone(), filter.clone());
        tokio::spawn(async move { s.get_logs(&filter).await })
    };
    tokio::time::timeout(LIVENESS_BOUND, gate.entered.notified())
        .await
        .expect("the read reached the pool");
    tokio::time::timeout(LIVENESS_BOUND, s.write_receipts(13, block(13)))
        .await
        .expect("the commit did not wait for the held decode")
        .expect("write");
    assert!(
        !reader.is_finished(),
        "the read must still be held while the block commits"
    );
    gate.open();
    let held = tokio::time::timeout(LIVENESS_BOUND, reader)
        .await
        .expect("the read finishes once released")
        .expect("reader task")
        .expect("held read");
    assert_eq!(
        held, unheld,
        "a read held on the pool returns the same rows"
    );
    Arc::try_unwrap(s)
        .ok()
        .expect("reader done")
        .close()
        .await
        .unwrap();
}

/// The real pool runs work off the calling thread and never runs more pieces at once than
/// its decode slots, however many are queued.
#[tokio::test(flavor = "current_thread")]
async fn the_real_pool_runs_work_off_the_caller_thread_within_its_slots() {
    let pool = TokioSpawner::default();
    let caller = std::thread::current().id();
    let running = Arc::new(AtomicUsize::new(0));
    let running_max = Arc::new(AtomicUsize::new(0));
    let pieces = 4 * decode_slots() + 2;
    let mut tasks = Vec::new();
    for _ in 0..pieces {
        let (pool, running, running_max) = (pool.clone(), running.clone(), running_max.clone());
        tasks.push(tokio::spawn(async move {
            pool.run_blocking(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                running_max.fetch_max(now, Ordering::SeqCst);
                // Long enough that unbounded pieces would overlap.
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                std::thread::current().id()
            })
            .await
        }));
    }
    for t in tasks {
        let ran_on = t.await.expect("task");
        assert_ne!(ran_on, caller, "pool work must not run on the async worker");
    }
    let max = running_max.load(Ordering::SeqCst);
    assert!(
        (1..=decode_slots()).contains(&max),
        "{max} pieces ran at once; the bound is {}",
        decode_slots()
    );
}

/// Our bugs panic: a panic in pool work reaches the task that awaited it, with its message.
#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_pool_work_resumes_in_the_awaiting_task() {
    let pool = TokioSpawner::default();
    let task = tokio::spawn(async move {
        pool.run_blocking(|| -> u32 { panic!("decoder bug 42") })
            .await
    });
    let err = task
        .await
        .expect_err("the panic must reach the awaiting task");
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .expect("a &str panic payload");
    assert_eq!(msg, "decoder bug 42");
    // The pool thread survived the panic: the pool still runs work.
    assert_eq!(TokioSpawner::default().run_blocking(|| 7).await, 7);
}

/// A read above the inline bound goes through the pool and returns the same bytes as reads
/// below it.
#[tokio::test(flavor = "current_thread")]
async fn reads_above_the_inline_bound_return_the_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let bytes: Vec<u8> = (0..3 * READ_INLINE_BYTES_MAX)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = RealFs.open(&path).await.unwrap();
    let large = 2 * READ_INLINE_BYTES_MAX + 3;
    assert_eq!(
        file.read_at(5, large).await.unwrap(),
        &bytes[5..5 + large],
        "a large read"
    );
    assert_eq!(
        file.read_at(11, 100).await.unwrap(),
        &bytes[11..111],
        "a small read"
    );
    let past_end = file.read_at(bytes.len() as u64 - 10, large).await;
    assert_eq!(
        past_end
            .expect_err("a large read past the end fails")
            .kind(),
        std::io::ErrorKind::UnexpectedEof
    );
}

/// A pool job that reads a real file makes its reads on the pool thread that then runs the
/// work (no hop through a read thread), in the order asked; a failed read is the job's result
/// and the work never runs.
#[tokio::test(flavor = "current_thread")]
async fn a_read_job_reads_a_real_file_on_the_pool_thread_that_runs_its_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let bytes: Vec<u8> = (0..3 * READ_INLINE_BYTES_MAX)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = Arc::new(RealFs.open(&path).await.unwrap());
    let pool = TokioSpawner::default();
    let large = 2 * READ_INLINE_BYTES_MAX + 3;
    let (read, ran_on) = pool
        .run_read(file.clone(), vec![(5, large), (11, 100)], |read| {
            (read, std::thread::current().name().map(str::to_owned))
        })
        .await
        .expect("both reads lie inside the file");
    assert_eq!(
        read,
        vec![bytes[5..5 + large].to_vec(), bytes[11..111].to_vec()]
    );
    let ran_on = ran_on.expect("pool threads are named");
    assert!(
        ran_on.starts_with("receipt-store-decode"),
        "the work ran on {ran_on}, not a decode thread"
    );

    let ran = Arc::new(AtomicBool::new(false));
    let ran_too = ran.clone();
    let past_end = pool
        .run_read(
            file,
            vec![(0, 10), (bytes.len() as u64 - 10, 20)],
            move |_| ran_too.store(true, Ordering::SeqCst),
        )
        .await;
    assert_eq!(
        past_end.expect_err("a read past the end fails").kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    assert!(!ran.load(Ordering::SeqCst), "work ran without its bytes");
}

/// This thread's nice value, from `/proc/thread-self/stat` (field 19).
#[cfg(target_os = "linux")]
fn this_thread_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    // Fields after the name start at field 3 (state); nice is field 19.
    after_name.split(' ').nth(19 - 3).unwrap().parse().unwrap()
}

/// Pool work runs below the async workers in the OS scheduler, so a busy machine gives a
/// commit the CPU before a decode.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn pool_threads_run_at_the_pool_nice_value() {
    let caller = this_thread_nice();
    let pool = TokioSpawner::default().run_blocking(this_thread_nice).await;
    assert!(
        pool >= i64::from(POOL_THREAD_NICE) && pool >= caller,
        "pool thread nice {pool}, caller {caller}, wanted at least {POOL_THREAD_NICE}"
    );
}
