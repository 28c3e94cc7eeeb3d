//! The production environment: `std::fs` with real fsyncs, tokio's clock and spawner, and small
//! thread pools for the heavy part of reads and for encoding.
//!
//! File operations are blocking calls made from async functions. The store issues them from a
//! single coordinator task (plus small ones of reader tasks: footers, bloom filters, at most
//! [`READ_INLINE_BYTES_MAX`]), so on a multi-threaded tokio runtime they occupy at most a worker
//! or two, the same trade the upstream Go store makes. The heavy
//! part of reads runs on bounded pools of lower-priority threads: parquet decoding and filtering
//! ([`TokioSpawner`]'s [`BlockingPool`], whose decode jobs read their own row groups), and other
//! reads larger than [`READ_INLINE_BYTES_MAX`]. With the write lane ([`WRITE_LANE_THREADS`])
//! these are the only threads the store starts, and only here in the real environment.

use super::{
    read_then_run, BlockingPool, BoxFuture, Clock, Env, Foreground, Fs, FsFile, ReadAt,
    ReadBlocking, Spawner,
};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RealFs;

/// Reads up to this size are made on the calling task (a footer tail, a bloom filter: a few
/// microseconds); larger ones (row groups, whole files) go to a read pool of [`READ_SLOTS`]
/// threads, so a reader copying megabytes never holds an async worker. Measured at 256 KiB
/// (every 160 KB row group of a 500-block `get_logs` read on the async workers): reads with one
/// reader got steadier (the hop to a read thread waits for a time slice on busy cores), but
/// the commit p99 under eight readers went to 3.45-3.83x of idle in two full bench runs,
/// against 1.24x at 64 KiB: the coordinator shares those workers. A `get_logs` decode job now
/// reads its own row groups on its decode thread instead ([`BlockingPool::run_read`]).
pub const READ_INLINE_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub struct RealFile {
    /// Shared so a large read can run on a pool thread while the handle stays here.
    file: Arc<File>,
}

impl RealFile {
    fn new(file: File) -> RealFile {
        RealFile {
            file: Arc::new(file),
        }
    }
}

fn pread(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    pread_into_spare(file, offset, &mut buf, len)?;
    Ok(buf)
}

/// Reads exactly `len` bytes at `offset` into `buf`'s spare capacity, without zeroing it first
/// (`read_exact_at` needs an initialized buffer: zeroing every row group before the kernel
/// overwrote it was a tenth of a filtered `get_logs`'s read thread). Hand-written because std
/// has no stable positioned read into uninitialized memory.
#[cfg(target_os = "linux")]
fn pread_into_spare(file: &File, offset: u64, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn pread64(fd: i32, buf: *mut u8, count: usize, offset: i64) -> isize;
    }
    assert!(
        buf.is_empty() && buf.capacity() >= len,
        "reads into a fresh buffer"
    );
    let offset = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut done = 0usize;
    while done < len {
        // SAFETY: the pointer and count stay inside `buf`'s allocation (capacity >= len, and
        // `done < len`); the kernel writes at most `len - done` bytes there; `set_len` below
        // covers only bytes the kernel reported written.
        let n = unsafe {
            pread64(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(done),
                len - done,
                offset + done as i64,
            )
        };
        match n {
            n if n > 0 => {
                done += n as usize;
                // SAFETY: bytes [0, done) were written by the kernel.
                unsafe { buf.set_len(done) };
            }
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pread_into_spare(file: &File, offset: u64, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.resize(len, 0);
    file.read_exact_at(buf, offset)
}

impl ReadBlocking for RealFile {
    fn read_at_blocking(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        pread(&self.file, offset, len)
    }
}

impl FsFile for RealFile {
    async fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut file = &*self.file;
        file.seek(SeekFrom::End(0))?;
        file.write_all(buf)
    }
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len <= READ_INLINE_BYTES_MAX {
            return pread(&self.file, offset, len);
        }
        read_off_workers(self.file.clone(), offset, len).await
    }
    async fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    async fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    async fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn blocking(&self) -> Option<&dyn ReadBlocking> {
        Some(self)
    }
}

impl Fs for RealFs {
    type File = RealFile;
    async fn create(&self, path: &Path) -> io::Result<RealFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(RealFile::new(file))
    }
    async fn create_new(&self, path: &Path) -> io::Result<RealFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(RealFile::new(file))
    }
    async fn open(&self, path: &Path) -> io::Result<RealFile> {
        let file = File::open(path)?;
        Ok(RealFile::new(file))
    }
    async fn open_append(&self, path: &Path) -> io::Result<RealFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(RealFile::new(file))
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Reads a whole file through `std::fs`; used by the read-only CLI.
pub fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

#[derive(Clone, Debug)]
pub struct TokioClock {
    start: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }
}

/// Tokio's `spawn`, and a bounded pool for heavy read work (see [`BlockingPool`]).
///
/// The pool is [`decode_slots`] threads of this process, started on first use and shared by
/// every store in it: the bound is about the machine's cores, so two stores in one process
/// share it rather than each taking all but one core. The threads run at a lower OS priority
/// ([`POOL_THREAD_NICE`]) than the async workers, so when every core is busy the coordinator's
/// commit gets the CPU before a decode does.
#[derive(Clone, Debug)]
pub struct TokioSpawner {
    pool: &'static Pool,
}

impl Default for TokioSpawner {
    fn default() -> Self {
        static DECODE: OnceLock<Pool> = OnceLock::new();
        TokioSpawner {
            pool: DECODE.get_or_init(|| {
                Pool::start_gated(
                    "receipt-store-decode",
                    decode_slots(),
                    idle_decode_slots(),
                    &IDLE,
                )
            }),
        }
    }
}

/// Whether every coordinator of this process is idle: what opens the idle decode slots.
static IDLE: Gate = Gate::new();

/// How long every coordinator must have been idle before the idle decode slots take jobs: a
/// writer committing block after block leaves gaps of microseconds between its requests, and a
/// slot that took a job in such a gap would compete with the next commit (measured: commit p99
/// under 8 readers 1.59-1.85x idle with no settling time, 1.34x with no idle slots).
pub const IDLE_SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

/// Counts foreground work in progress (coordinators serving requests) and lets threads wait
/// until there has been none for [`IDLE_SETTLE`].
pub struct Gate {
    state: std::sync::Mutex<GateState>,
    open: std::sync::Condvar,
}

struct GateState {
    busy: usize,
    /// When `busy` last fell to 0 (`None` while busy; the start of the process counts as idle).
    idle_since: Option<std::time::Instant>,
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            state: std::sync::Mutex::new(GateState {
                busy: 0,
                idle_since: None,
            }),
            open: std::sync::Condvar::new(),
        }
    }

    fn enter(&self) {
        let mut s = self.state.lock().unwrap();
        s.busy += 1;
        s.idle_since = None;
    }

    fn exit(&self) {
        let mut s = self.state.lock().unwrap();
        s.busy = s.busy.checked_sub(1).expect("an exit for every enter");
        if s.busy == 0 {
            s.idle_since = Some(std::time::Instant::now());
            self.open.notify_all();
        }
    }

    /// Returns once no foreground work has run for [`IDLE_SETTLE`] (at once if that is so).
    fn wait_open(&self) {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.busy > 0 {
                s = self.open.wait(s).unwrap();
                continue;
            }
            let idle_for = s.idle_since.map_or(IDLE_SETTLE, |t| t.elapsed());
            if idle_for >= IDLE_SETTLE {
                return;
            }
            s = self.open.wait_timeout(s, IDLE_SETTLE - idle_for).unwrap().0;
        }
    }
}

/// Cores left to the async workers (the coordinator, the application's tasks) when every
/// decode slot is busy.
pub const CORES_RESERVED_FOR_ASYNC: usize = 1;
/// The fewest decode slots, whatever the core count: reads must make progress.
pub const DECODE_SLOTS_MIN: usize = 1;
/// Threads for large file reads (see [`READ_INLINE_BYTES_MAX`]). Their own pool, apart from
/// the decode slots: a row-group read queued behind every waiting decode would make a
/// 100-row-group query wait for a hundred decodes. Copying from the page cache is short next
/// to decoding, so one thread keeps a disk busy without taking a core for long.
pub const READ_SLOTS: usize = 1;
/// Threads of the write lane ([`BlockingPool::run_write`]): a flush's receipts and logs row
/// groups are encoded there side by side while the coordinator serves the next requests, so
/// two threads let a flush take about as long as its logs file alone. It runs apart from the
/// decode slots, at [`WRITE_LANE_NICE`]: a commit never waits for a read.
pub const WRITE_LANE_THREADS: usize = 2;
/// Nice value (Linux, per thread) of the write lane: below the async workers (0), so a commit
/// on the coordinator or a point lookup on a reader's task takes a busy core from a flush's
/// encoding, and above the decode pool ([`POOL_THREAD_NICE`]), so a flush still gets the CPU
/// before a `get_logs` decode.
pub const WRITE_LANE_NICE: i32 = 5;
/// Nice value (Linux, per thread) of the pool threads; the async workers keep the process's.
/// Best effort: where it cannot be set, the pool runs at the process's priority.
pub const POOL_THREAD_NICE: i32 = 10;

/// Decode slots that take a job only while no coordinator is serving a request: the cores
/// [`CORES_RESERVED_FOR_ASYNC`] keeps for commits, lent to reads while there is no commit (1
/// on this project's 2-core machine, where a read otherwise decodes on one core while DuckDB
/// uses two). A job such a slot took runs to its end even if a commit arrives meanwhile, which
/// is why reads split their decoding into jobs of at most `DECODE_JOB_GROUPS_MAX` row groups.
pub fn idle_decode_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(decode_slots())
}

/// Heavy read work allowed at once while a coordinator works: every core but
/// [`CORES_RESERVED_FOR_ASYNC`], at least [`DECODE_SLOTS_MIN`] (1 on this project's 2-core
/// machine).
pub fn decode_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores
        .saturating_sub(CORES_RESERVED_FOR_ASYNC)
        .max(DECODE_SLOTS_MIN)
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one queue. The threads never exit (a job's panic
/// is caught and handed to its caller), so the bound on concurrent work is the thread count.
#[derive(Debug)]
pub struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Pool {
    /// `threads` threads at nice value `nice` (never raised above the process's, see
    /// [`lower_this_thread_priority`]).
    fn start(name: &str, threads: usize, nice: i32) -> Pool {
        Self::start_threads(name, threads, 0, None, nice)
    }

    /// `threads` threads as [`Pool::start`] at [`POOL_THREAD_NICE`], plus `idle_threads` that
    /// each wait for `gate` to open before taking a job.
    fn start_gated(name: &str, threads: usize, idle_threads: usize, gate: &'static Gate) -> Pool {
        Self::start_threads(name, threads, idle_threads, Some(gate), POOL_THREAD_NICE)
    }

    fn start_threads(
        name: &str,
        threads: usize,
        idle_threads: usize,
        gate: Option<&'static Gate>,
        nice: i32,
    ) -> Pool {
        assert!(threads > 0, "a pool needs at least one thread");
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads + idle_threads {
            let queue = queue.clone();
            let gate = gate.filter(|_| i >= threads);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    lower_this_thread_priority(nice);
                    // Runs for the life of the process: the sender lives in a static.
                    loop {
                        if let Some(gate) = gate {
                            gate.wait_open();
                        }
                        let job = queue.lock().unwrap().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("starting a pool thread");
        }
        Pool { jobs }
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            // The caller may have gone (a dropped read): its result is thrown away.
            let _ = done.send(out);
        });
        let sent = self.jobs.send(job);
        async move {
            sent.expect("pool threads never exit");
            match result.await.expect("every job sends its result") {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_this_thread_priority(nice: i32) {
    extern "C" {
        fn gettid() -> i32;
        fn getpriority(which: u32, who: u32) -> i32;
        fn setpriority(which: u32, who: u32, prio: i32) -> i32;
    }
    const PRIO_PROCESS: u32 = 0;
    // SAFETY: syscalls about this thread only; no memory is passed or returned. On Linux a
    // thread id given to PRIO_PROCESS reads or sets that thread's nice value alone. Only ever
    // lowers the priority: in a process already nicer than `nice` (started under `nice -n 19`,
    // say) setting 10 would, for root, raise the pool above the async workers (found when the
    // test suite ran under `nice -n 19`). Results are ignored on purpose (best effort): where
    // the nice value cannot be set, the pool runs at the process's.
    unsafe {
        let tid = gettid() as u32;
        if getpriority(PRIO_PROCESS, tid) < nice {
            setpriority(PRIO_PROCESS, tid, nice);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread_priority(_nice: i32) {}

/// A large file read on the read pool ([`READ_SLOTS`] threads).
async fn read_off_workers(file: Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    static READS: OnceLock<Pool> = OnceLock::new();
    READS
        .get_or_init(|| Pool::start("receipt-store-read", READ_SLOTS, POOL_THREAD_NICE))
        .run(move || pread(&file, offset, len))
        .await
}

impl BlockingPool for TokioSpawner {
    fn parallelism(&self) -> usize {
        decode_slots() + idle_decode_slots()
    }

    fn foreground(&self) -> Foreground {
        IDLE.enter();
        Foreground(Some(Box::new(|| IDLE.exit())))
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        self.pool.run(work)
    }

    /// Reads of a real file are made on the decode thread that then decodes them: no hop to the
    /// read thread and back, nothing on the async workers.
    fn run_read<F: ReadAt + ?Sized, T: Send + 'static>(
        &self,
        file: Arc<F>,
        reads: Vec<(u64, usize)>,
        work: impl FnOnce(Vec<Vec<u8>>) -> T + Send + 'static,
    ) -> impl Future<Output = io::Result<T>> + Send {
        let job: Pin<Box<dyn Future<Output = io::Result<T>> + Send + '_>> =
            if file.blocking().is_some() {
                // Queued now, as `run_blocking` queues: a caller may start several jobs before
                // awaiting one.
                Box::pin(self.pool.run(move || {
                    let read = file.blocking().expect("checked before queueing");
                    let bytes = reads
                        .into_iter()
                        .map(|(offset, len)| read.read_at_blocking(offset, len))
                        .collect::<io::Result<Vec<_>>>()?;
                    Ok(work(bytes))
                }))
            } else {
                Box::pin(read_then_run(self, file, reads, work))
            };
        job
    }

    fn run_write<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        static WRITE: OnceLock<Pool> = OnceLock::new();
        WRITE
            .get_or_init(|| Pool::start("receipt-store-write", WRITE_LANE_THREADS, WRITE_LANE_NICE))
            .run(work)
    }
}

/// Tasks run on the application's tokio runtime. A thread of its own per task (a
/// single-threaded runtime each) was measured: the coordinator then competed with the tokio
/// workers as one more thread at the same priority, and commits under eight readers got slower
/// (`--only commit`, five runs each: loaded p99 8.7-13.8 ms on tokio's workers, 8.9-21.0 ms on
/// its own thread).
impl Spawner for TokioSpawner {
    fn spawn(&self, _name: &'static str, future: BoxFuture<()>) {
        tokio::spawn(future);
    }
}

/// std::fs + tokio. Must be used from inside a tokio runtime.
#[derive(Clone, Debug, Default)]
pub struct RealEnv {
    inner: Arc<(RealFs, TokioClock, TokioSpawner)>,
}

impl Env for RealEnv {
    type Fs = RealFs;
    type Clock = TokioClock;
    type Spawner = TokioSpawner;
    fn fs(&self) -> &RealFs {
        &self.inner.0
    }
    fn clock(&self) -> &TokioClock {
        &self.inner.1
    }
    fn spawner(&self) -> &TokioSpawner {
        &self.inner.2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// An idle decode slot waits while any coordinator serves a request, and after the last
    /// one stops it waits [`IDLE_SETTLE`] more before taking a job.
    #[test]
    fn the_idle_gate_opens_only_once_foreground_work_has_stopped_for_the_settle_time() {
        let gate: &'static Gate = Box::leak(Box::new(Gate::new()));
        gate.wait_open(); // Nothing ran yet: open at once.
        gate.enter();
        gate.enter();
        let (opened, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            gate.wait_open();
            opened.send(Instant::now()).unwrap();
        });
        gate.exit();
        std::thread::sleep(IDLE_SETTLE * 3);
        assert!(seen.try_recv().is_err(), "one coordinator still serves");
        let released = Instant::now();
        gate.exit();
        let at = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            at.duration_since(released) >= IDLE_SETTLE,
            "opened before settling"
        );
    }
}
