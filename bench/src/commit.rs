//! Block-commit latency with and without concurrent heavy readers: the claim that a long
//! `get_logs` never delays a block commit, measured. The store runs in the bench's own tokio
//! runtime (default workers), as an application would run it; readers are ordinary tasks.
//!
//! Layout: [`HISTORY_BLOCKS`] blocks of history in [`WINDOW_BLOCKS`]-block pairs (written with
//! sync `never`, then the store is reopened with `always`). Each phase then writes one window:
//! its first [`COMMITS_PER_PHASE`] blocks are timed, the rest (up to and including the block
//! that rotates into the next window) are written untimed with the readers stopped, so no
//! timed commit is a rotation and every phase starts from the same state. Idle and loaded
//! phases alternate, so a slow spell of the shared machine hits both alike.

use crate::data;
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, LogFilter, Store, SyncPolicy};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Blocks per file window in this cell.
pub const WINDOW_BLOCKS: u64 = 100;
/// Closed history the readers query: three pairs.
pub const HISTORY_BLOCKS: u64 = 3 * WINDOW_BLOCKS;
/// Timed commits per phase (the program: 60).
pub const COMMITS_PER_PHASE: u64 = 60;
const _: () = assert!(
    COMMITS_PER_PHASE < WINDOW_BLOCKS,
    "a timed commit must not rotate"
);
/// Concurrent readers of a loaded phase.
pub const READERS_LOADED: usize = 8;
/// Idle/loaded phase pairs; the figures are medians over them.
pub const RUNS: usize = 3;

#[derive(Serialize, Debug, Clone)]
pub struct Phase {
    pub readers: usize,
    pub commits: usize,
    pub p50_ms: f64,
    /// With 60 commits p99 is the largest; p90 says whether a tail is one stall or many.
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// `get_logs` calls the readers completed while the commits were timed.
    pub reads_done: u64,
    /// Readers' throughput over the whole phase (from their start to their stop).
    pub reads_per_s: f64,
    /// Median latency of the readers' `get_logs` calls that ended in the phase (0 when idle).
    pub read_p50_ms: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Run {
    pub idle: Phase,
    pub loaded: Phase,
    pub p50_ratio: f64,
    pub p90_ratio: f64,
    pub p99_ratio: f64,
}

/// Median and range of one figure over the runs.
#[derive(Serialize, Debug, Clone)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct CommitLatency {
    pub receipts_per_block: u32,
    pub sync_policy: String,
    pub history_blocks: u64,
    pub window_blocks: u64,
    pub readers: usize,
    pub reader_query: String,
    pub reader_rows: usize,
    pub runs: Vec<Run>,
    pub idle_p50_ms: Spread,
    pub idle_p99_ms: Spread,
    pub loaded_p50_ms: Spread,
    pub loaded_p99_ms: Spread,
    pub idle_p90_ms: Spread,
    pub loaded_p90_ms: Spread,
    pub p50_ratio: Spread,
    pub p90_ratio: Spread,
    pub p99_ratio: Spread,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// The p-th quantile of sorted samples (nearest rank; with 60 samples p99 is the largest).
fn pick(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The readers' query: topic0 over the middle closed pair (100 blocks).
fn reader_filter() -> LogFilter {
    LogFilter {
        from_block: Some(WINDOW_BLOCKS + 1),
        to_block: Some(2 * WINDOW_BLOCKS),
        addresses: vec![],
        topics: vec![vec![data::event(3)]],
        limit: None,
    }
}

/// Writes one window starting at `first`, timing the first [`COMMITS_PER_PHASE`] commits while
/// `readers` tasks loop on `get_logs`. Returns the phase and the next block to write.
async fn phase(
    s: &Arc<Store<RealEnv>>,
    first: u64,
    receipts: u32,
    readers: usize,
    rows: usize,
) -> (Phase, u64) {
    let window_end = (first / WINDOW_BLOCKS + 1) * WINDOW_BLOCKS;
    let inputs: Vec<_> = (first..=window_end)
        .map(|b| data::block(b, receipts, HISTORY_BLOCKS))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers_started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (s, stop, reads) = (s.clone(), stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let f = reader_filter();
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let n = s.get_logs(&f).await.expect("get_logs").len();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(n, rows, "reader got a different answer under write load");
                reads.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    if readers > 0 {
        // Let every reader get into its first decode before the first timed commit.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let writer = {
        let (s, reads) = (s.clone(), reads.clone());
        tokio::spawn(async move {
            let reads_before = reads.load(Ordering::Relaxed);
            let mut lat = Vec::new();
            let mut rest = Vec::new();
            for (b, rs) in (first..).zip(inputs) {
                if lat.len() as u64 == COMMITS_PER_PHASE {
                    rest.push((b, rs));
                    continue;
                }
                let t = Instant::now();
                s.write_receipts(b, rs).await.expect("write");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            (lat, reads.load(Ordering::Relaxed) - reads_before, rest)
        })
    };
    let (mut lat, reads_done, rest) = writer.await.expect("writer task");
    stop.store(true, Ordering::Relaxed);
    let mut read_lat = Vec::new();
    for t in tasks {
        read_lat.extend(t.await.expect("reader task"));
    }
    let readers_s = readers_started.elapsed().as_secs_f64();
    read_lat.sort_by(f64::total_cmp);
    for (b, rs) in rest {
        s.write_receipts(b, rs).await.expect("untimed write");
    }
    lat.sort_by(f64::total_cmp);
    let p = Phase {
        readers,
        commits: lat.len(),
        p50_ms: pick(&lat, 0.50),
        p90_ms: pick(&lat, 0.90),
        p99_ms: pick(&lat, 0.99),
        max_ms: lat[lat.len() - 1],
        reads_done,
        reads_per_s: read_lat.len() as f64 / readers_s,
        read_p50_ms: if read_lat.is_empty() {
            0.0
        } else {
            pick(&read_lat, 0.50)
        },
    };
    (p, window_end + 1)
}

/// Runs the cell in `dir`: [`RUNS`] pairs of an idle and a loaded phase.
pub async fn measure(dir: &Path, receipts: u32) -> CommitLatency {
    let config = |policy| Config {
        max_blocks_per_file: WINDOW_BLOCKS,
        sync_policy: policy,
        ..Config::default()
    };
    let history = Store::open(RealEnv::default(), dir, config(SyncPolicy::Never))
        .await
        .expect("open history");
    for b in 1..=HISTORY_BLOCKS {
        history
            .write_receipts(b, data::block(b, receipts, HISTORY_BLOCKS))
            .await
            .expect("history write");
    }
    history.close().await.expect("close history");
    let s = Arc::new(
        Store::open(RealEnv::default(), dir, config(SyncPolicy::Always))
            .await
            .expect("reopen with sync always"),
    );
    let rows = s.get_logs(&reader_filter()).await.expect("warm-up").len();
    assert!(rows > 0, "the readers' query must return rows");
    let mut next = HISTORY_BLOCKS + 1;
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let (idle, n) = phase(&s, next, receipts, 0, rows).await;
        let (loaded, n) = phase(&s, n, receipts, READERS_LOADED, rows).await;
        next = n;
        eprintln!(
            "  run {run}: commit p50 {:.1} -> {:.1} ms, p90 {:.1} -> {:.1} ms, p99 {:.1} -> {:.1} ms ({:.1} reads/s, read p50 {:.0} ms)",
            idle.p50_ms, loaded.p50_ms, idle.p90_ms, loaded.p90_ms, idle.p99_ms, loaded.p99_ms, loaded.reads_per_s, loaded.read_p50_ms
        );
        runs.push(Run {
            p50_ratio: loaded.p50_ms / idle.p50_ms,
            p90_ratio: loaded.p90_ms / idle.p90_ms,
            p99_ratio: loaded.p99_ms / idle.p99_ms,
            idle,
            loaded,
        });
    }
    Arc::try_unwrap(s)
        .ok()
        .expect("readers done")
        .close()
        .await
        .expect("close");
    let of = |f: fn(&Run) -> f64| spread(runs.iter().map(f).collect());
    CommitLatency {
        receipts_per_block: receipts,
        sync_policy: "always".into(),
        history_blocks: HISTORY_BLOCKS,
        window_blocks: WINDOW_BLOCKS,
        readers: READERS_LOADED,
        reader_query: format!(
            "get_logs topic0 over blocks {}..={}",
            WINDOW_BLOCKS + 1,
            2 * WINDOW_BLOCKS
        ),
        reader_rows: rows,
        idle_p50_ms: of(|r| r.idle.p50_ms),
        idle_p99_ms: of(|r| r.idle.p99_ms),
        loaded_p50_ms: of(|r| r.loaded.p50_ms),
        loaded_p99_ms: of(|r| r.loaded.p99_ms),
        idle_p90_ms: of(|r| r.idle.p90_ms),
        loaded_p90_ms: of(|r| r.loaded.p90_ms),
        p50_ratio: of(|r| r.p50_ratio),
        p90_ratio: of(|r| r.p90_ratio),
        p99_ratio: of(|r| r.p99_ratio),
        runs,
    }
}
