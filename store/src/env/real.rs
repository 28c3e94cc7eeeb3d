//! The production environment: `std::fs` with real fsyncs, tokio's clock and spawner.
//!
//! File operations are blocking calls made from async functions. The store issues them from a
//! single coordinator task (plus reader tasks), so on a multi-threaded tokio runtime they occupy
//! at most a worker or two, the same trade the upstream Go store makes. The heavy part of reads
//! runs on a bounded pool instead ([`TokioSpawner`]): parquet decoding and filtering, and reads
//! larger than [`READ_INLINE_BYTES_MAX`].

use super::{BlockingPool, BoxFuture, Clock, Env, Fs, FsFile, Spawner};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Default)]
pub struct RealFs;

/// Reads up to this size are made on the calling task (a footer tail, a bloom filter: a few
/// microseconds); larger ones (row groups, whole files) go to the [`TokioSpawner`] pool, so a
/// reader copying tens of megabytes never holds an async worker.
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
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
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
/// The pool is tokio's blocking threads behind a semaphore of [`decode_slots`] permits, one
/// semaphore for the whole process: the bound is about the machine's cores, so two stores in
/// one process share it rather than each taking all but one core.
#[derive(Clone, Debug)]
pub struct TokioSpawner {
    slots: Arc<Semaphore>,
}

impl Default for TokioSpawner {
    fn default() -> Self {
        static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
        TokioSpawner {
            slots: SLOTS
                .get_or_init(|| Arc::new(Semaphore::new(decode_slots())))
                .clone(),
        }
    }
}

/// Cores left to the async workers (the coordinator, the application's tasks) when every
/// decode slot is busy.
pub const CORES_RESERVED_FOR_ASYNC: usize = 1;
/// The fewest decode slots, whatever the core count: reads must make progress.
pub const DECODE_SLOTS_MIN: usize = 1;
/// Large file reads in flight at once (see [`READ_INLINE_BYTES_MAX`]). Their own bound, apart
/// from the decode slots: a row-group read queued behind every waiting decode would make a
/// 100-row-group query wait for a hundred decodes. Copying from the page cache is short next
/// to decoding, so one slot keeps a disk busy without taking a core from the async workers
/// for long.
pub const READ_SLOTS: usize = 1;

/// Heavy read work allowed at once: every core but [`CORES_RESERVED_FOR_ASYNC`], at least
/// [`DECODE_SLOTS_MIN`] (1 on this project's 2-core machine).
pub fn decode_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores
        .saturating_sub(CORES_RESERVED_FOR_ASYNC)
        .max(DECODE_SLOTS_MIN)
}

/// Runs `work` on a tokio blocking thread once a permit of `slots` is free.
async fn run_bounded<T: Send + 'static>(
    slots: Arc<Semaphore>,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    // Waiting for a slot is an async wait: a queued read holds no thread.
    let permit = slots
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let done = tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await;
    match done {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("heavy read work was cancelled (runtime shutting down): {e}"),
    }
}

/// A large file read on a blocking thread, behind the process's [`READ_SLOTS`].
async fn read_off_workers(file: Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let slots = SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(READ_SLOTS)))
        .clone();
    run_bounded(slots, move || pread(&file, offset, len)).await
}

impl BlockingPool for TokioSpawner {
    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        run_bounded(self.slots.clone(), work)
    }
}

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
