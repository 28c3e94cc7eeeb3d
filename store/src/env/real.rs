//! The production environment: `std::fs` with real fsyncs, tokio's clock and spawner.
//!
//! File operations are blocking calls made from async functions. The store issues them from a
//! single coordinator task (plus reader tasks), so on a multi-threaded tokio runtime they occupy
//! at most a worker or two, the same trade the upstream Go store makes.

use super::{BoxFuture, Clock, Env, Fs, FsFile, Spawner};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
pub struct RealFile {
    file: File,
}

impl FsFile for RealFile {
    async fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(buf)
    }
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
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
        Ok(RealFile { file })
    }
    async fn create_new(&self, path: &Path) -> io::Result<RealFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(RealFile { file })
    }
    async fn open(&self, path: &Path) -> io::Result<RealFile> {
        let file = File::open(path)?;
        Ok(RealFile { file })
    }
    async fn open_append(&self, path: &Path) -> io::Result<RealFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(RealFile { file })
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

#[derive(Clone, Debug, Default)]
pub struct TokioSpawner;

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
