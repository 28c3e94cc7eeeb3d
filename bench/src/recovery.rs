//! Recovery: how long `Store::open` takes over many closed pairs, and over a full open window
//! that must be replayed from the WAL after a crash.

use crate::data;
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, Store, SyncPolicy};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Serialize, Debug)]
pub struct OpenFigure {
    pub name: String,
    pub closed_pairs: usize,
    pub blocks_replayed: usize,
    pub receipts_replayed: u64,
    pub wal_bytes: u64,
    /// Median of `runs` opens (each followed by a crash, so nothing is rewritten at close).
    pub open_ms: f64,
    /// Median of the same opens followed by a `flush()`, which returns once every row group
    /// replay left to the coordinator is written (the work open no longer waits for).
    pub open_then_flush_ms: f64,
    pub runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn wal_bytes(dir: &Path) -> u64 {
    crate::write::dir_bytes(&dir.join("wal"))
}

/// Times `runs` opens of `dir`; each open is ended by a crash so the directory is unchanged
/// for the next (the WAL is rewritten at open, with the same records).
async fn time_opens(dir: &Path, c: &Config, runs: usize) -> (f64, f64, usize, usize, u64) {
    let mut times = Vec::new();
    let mut flushed_times = Vec::new();
    let (mut pairs, mut blocks, mut receipts) = (0, 0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let s = Store::open(RealEnv::default(), dir, c.clone())
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        s.flush().await.unwrap();
        flushed_times.push(t.elapsed().as_secs_f64() * 1e3);
        pairs = s.status().await.unwrap().closed_pairs.len();
        let replayed = s.take_replayed_blocks();
        blocks = replayed.len();
        receipts = replayed.iter().map(|b| b.tx_hashes.len() as u64).sum();
        s.crash().await;
    }
    (
        median(times),
        median(flushed_times),
        pairs,
        blocks,
        receipts,
    )
}

/// Writes blocks `1..=blocks` of `receipts` receipts each into a store at `dir`.
async fn write_chain(dir: &Path, c: &Config, blocks: u64, receipts: u32) -> Store<RealEnv> {
    let s = Store::open(RealEnv::default(), dir, c.clone())
        .await
        .unwrap();
    for b in 1..=blocks {
        s.write_receipts(b, data::block(b, receipts, blocks))
            .await
            .unwrap();
    }
    s
}

/// Times `runs` opens of `dir` and names the figure from what the opens found.
async fn measure(
    dir: &Path,
    c: &Config,
    runs: usize,
    name: impl Fn(usize) -> String,
) -> OpenFigure {
    let (open_ms, open_then_flush_ms, closed_pairs, replayed, n) = time_opens(dir, c, runs).await;
    OpenFigure {
        name: name(closed_pairs),
        closed_pairs,
        blocks_replayed: replayed,
        receipts_replayed: n,
        wal_bytes: wal_bytes(dir),
        open_ms,
        open_then_flush_ms,
        runs,
    }
}

/// Open over `pairs` closed pairs of `receipts` receipts per block (window of 2 blocks).
pub async fn many_pairs(dir: &Path, pairs: u64, receipts: u32, runs: usize) -> OpenFigure {
    let mut c = Config::new(2, 1);
    c.sync_policy = SyncPolicy::Never;
    write_chain(dir, &c, pairs * 2, receipts)
        .await
        .close()
        .await
        .unwrap();
    measure(dir, &c, runs, |n| format!("open with {n} closed pairs")).await
}

/// Open after a crash with a full open window: `blocks` blocks of `receipts` receipts in the
/// WAL, none in a closed pair (window of `blocks + 1`).
pub async fn full_window_replay(dir: &Path, blocks: u64, receipts: u32, runs: usize) -> OpenFigure {
    let mut c = Config::new(blocks + 1, 1);
    c.sync_policy = SyncPolicy::Never;
    write_chain(dir, &c, blocks, receipts).await.crash().await;
    let f = measure(dir, &c, runs, |_| {
        format!("open replaying a {blocks}-block WAL window")
    })
    .await;
    assert_eq!(
        f.blocks_replayed as u64, blocks,
        "every block comes back from the WAL"
    );
    f
}
