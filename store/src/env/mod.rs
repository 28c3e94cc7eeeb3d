//! The three seams the store is written against: a filesystem, a clock and a task spawner
//! (with its pool for heavy work).
//!
//! Production plugs in [`real::RealEnv`] (std::fs with real fsyncs, tokio time and spawn); the
//! simulator plugs in deterministic implementations. Nothing in the store touches the OS except
//! through these traits, which is what makes a seed replayable.

pub mod real;

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, sendable future; the spawner's currency.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An open file. Dropping the value closes it (and a handle table, if any, forgets it).
///
/// Writes only ever append: the store never rewrites bytes in place, which keeps the crash model
/// (a prefix of unsynced appends survives, possibly torn) simple and honest.
#[allow(clippy::len_without_is_empty)]
pub trait FsFile: Send + Sync + 'static {
    /// Appends `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads exactly `len` bytes at `offset`; a read past the end is `UnexpectedEof`.
    fn read_at(&self, offset: u64, len: usize) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// The current length in bytes, including unsynced appends.
    fn len(&self) -> impl Future<Output = io::Result<u64>> + Send;
    /// Shrinks the file to `len` bytes (used to cut a torn WAL tail).
    fn truncate(&mut self, len: u64) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes the file's data and metadata durable (fsync).
    fn sync_all(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// The same file, read by blocking the calling thread, where the implementation allows it
    /// (a real file: a pool thread reads its own bytes instead of waiting for a read thread).
    /// `None` where every read must be awaited (the simulator's: a read is a scheduled event).
    fn blocking(&self) -> Option<&dyn ReadBlocking> {
        None
    }
}

/// Positioned reads that block the calling thread ([`FsFile::blocking`]); made only from a
/// [`BlockingPool`]'s own threads, never from an async task.
pub trait ReadBlocking: Send + Sync {
    /// [`FsFile::read_at`], on the calling thread.
    fn read_at_blocking(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// A read-only view of an open file that can be shared without naming its `Fs`: snapshots hold
/// the open pair's files this way, so a read finishes on the bytes it was promised even after
/// the pair is renamed to its final names or pruned (an open handle keeps an unlinked file).
pub trait ReadAt: Send + Sync + 'static {
    /// [`FsFile::read_at`], boxed.
    fn read_at_boxed(
        &self,
        offset: u64,
        len: usize,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send + '_>>;
    /// [`FsFile::blocking`].
    fn blocking(&self) -> Option<&dyn ReadBlocking>;
}

impl<T: FsFile> ReadAt for T {
    fn read_at_boxed(
        &self,
        offset: u64,
        len: usize,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(self.read_at(offset, len))
    }
    fn blocking(&self) -> Option<&dyn ReadBlocking> {
        FsFile::blocking(self)
    }
}

/// A filesystem. Namespace changes (create, rename, remove) are durable only after
/// [`Fs::sync_dir`] on the parent directory.
pub trait Fs: Clone + Send + Sync + 'static {
    type File: FsFile;
    /// Creates or truncates `path`, opened for append and read.
    fn create(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>> + Send;
    /// Creates `path`, failing with `AlreadyExists` if it exists.
    fn create_new(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>> + Send;
    /// Opens an existing file for reading only.
    fn open(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>> + Send;
    /// Opens an existing file for reading and appending.
    fn open_append(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>> + Send;
    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send;
    fn remove(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// File names (not paths) directly inside `dir`, sorted bytewise.
    fn list(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send;
    fn create_dir_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
}

/// Monotonic time since the environment started, and sleeping on it.
pub trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;
}

/// Runs CPU-heavy work (decoding parquet, filtering decoded rows) where it cannot starve the
/// async tasks, above all the coordinator, which owns every write: a reader decoding a 100-block
/// `get_logs` on an async worker held that worker for tens of milliseconds and block commits
/// waited for it (issue 10: commit p99 5 -> 126 ms under 8 readers).
///
/// Contract: awaited to the end, the future runs `work` once and yields its result; a panic in
/// `work` resumes in the caller. Dropped early, `work` may never start, or may still run to
/// its end with the result thrown away (so it must not leave shared state half-changed, and
/// what it holds, a file for one, stays held until it ends). `work` does no I/O through the
/// seams (it cannot await): the caller reads the bytes first, or hands the reads to
/// [`BlockingPool::run_read`]. Implementations bound how many run at once, so reads queue for
/// a slot rather than for the cores. Coverage marks and canaries are per thread: only an
/// implementation that runs `work` on the calling thread (the simulator's) counts marks hit in
/// it, so `work` should leave marks to its caller where a count matters.
pub trait BlockingPool: Clone + Send + Sync + 'static {
    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send;

    /// How many `run_blocking` jobs run at once: one read splits its decoding into at least
    /// this many jobs (each a contiguous run of row groups). 1 where work runs inline.
    fn parallelism(&self) -> usize {
        1
    }

    /// Marks foreground work while the returned value lives: the coordinator holds one while
    /// it serves requests and drops it while it waits for the next. A pool may keep some of its
    /// slots for idle time only (the real one does), so a read never takes the core a commit
    /// needs. No effect by default.
    fn foreground(&self) -> Foreground {
        Foreground(None)
    }

    /// Runs CPU work of the coordinator's own writes: a flush's two row groups are encoded
    /// here while the coordinator serves the next requests. Same contract as
    /// [`BlockingPool::run_blocking`], but never queued behind reads: a block commit must not
    /// wait for a `get_logs` decode (the real env gives it a lane of its own at the async
    /// workers' priority). The work may start when this is called, before the future is polled,
    /// and the future borrows nothing: the coordinator keeps it while it serves other requests.
    /// By default it is `run_blocking`, which is right for environments that run work inline.
    fn run_write<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let pool = self.clone();
        async move { pool.run_blocking(work).await }
    }

    /// Reads `reads` (offset, length) from `file`, then runs `work` on the bytes, in order:
    /// as [`BlockingPool::run_blocking`], with the reads part of the job. The first failed read
    /// is the result and `work` does not run. By default the reads are awaited on the caller's
    /// task and only `work` goes to the pool; a pool whose threads may block reads there
    /// instead, where the file allows it ([`FsFile::blocking`]): a filtered `get_logs` makes a
    /// read per pair of row groups, and each hop from a task to a read thread and back waited
    /// for a time slice on busy cores (the same query ran in streaks of 44 and 65-75 ms).
    fn run_read<F: ReadAt + ?Sized, T: Send + 'static>(
        &self,
        file: Arc<F>,
        reads: Vec<(u64, usize)>,
        work: impl FnOnce(Vec<Vec<u8>>) -> T + Send + 'static,
    ) -> impl Future<Output = io::Result<T>> + Send {
        read_then_run(self, file, reads, work)
    }
}

/// [`BlockingPool::run_read`] where the reads cannot block a pool thread: each read awaited on
/// the caller's task in turn ([`read_each`]), then `work` on `pool`.
pub async fn read_then_run<P: BlockingPool, F: ReadAt + ?Sized, T: Send + 'static>(
    pool: &P,
    file: Arc<F>,
    reads: Vec<(u64, usize)>,
    work: impl FnOnce(Vec<Vec<u8>>) -> T + Send + 'static,
) -> io::Result<T> {
    let bytes = read_each(file.as_ref(), reads).await?;
    Ok(pool.run_blocking(move || work(bytes)).await)
}

/// Reads `reads` (offset, length) from `file` one after another, awaiting each.
pub async fn read_each<F: ReadAt + ?Sized>(
    file: &F,
    reads: Vec<(u64, usize)>,
) -> io::Result<Vec<Vec<u8>>> {
    let mut bytes = Vec::with_capacity(reads.len());
    for (offset, len) in reads {
        bytes.push(file.read_at_boxed(offset, len).await?);
    }
    Ok(bytes)
}

/// Foreground work in progress ([`BlockingPool::foreground`]); ends when dropped.
pub struct Foreground(pub Option<Box<dyn FnOnce() + Send>>);

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

/// Runs the work on the caller's task, when it is polled. For callers that are one task on
/// their own anyway: the open-time scan (before the coordinator runs) and the read-only CLI.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inline;

impl BlockingPool for Inline {
    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        work()
    }
}

/// Spawns tasks. The store spawns exactly one: its coordinator. Heavy work of reads goes to
/// the spawner's [`BlockingPool`].
pub trait Spawner: BlockingPool {
    fn spawn(&self, name: &'static str, future: BoxFuture<()>);
}

/// The bundle a store is opened with.
pub trait Env: Clone + Send + Sync + 'static {
    type Fs: Fs;
    type Clock: Clock;
    type Spawner: Spawner;
    fn fs(&self) -> &Self::Fs;
    fn clock(&self) -> &Self::Clock;
    fn spawner(&self) -> &Self::Spawner;
}
