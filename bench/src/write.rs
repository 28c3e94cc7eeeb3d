//! Write path: the store under sync policies `never` and `always` against the ceiling, the same
//! rows written straight to parquet by `ArrowWriter` with the store's writer settings.

use crate::data;
use crate::rss;
use receipt_store::env::real::RealEnv;
use receipt_store::parquet::reader::FileKind;
use receipt_store::parquet::writer::properties_for;
use receipt_store::parquet::{log_schema, logs_to_batch, receipt_schema, receipts_to_batch};
use receipt_store::{Config, LogRecord, ReceiptInput, ReceiptRecord, Store, SyncPolicy};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WriteFigure {
    pub name: String,
    pub blocks: u64,
    pub receipts_per_block: u32,
    pub seconds: f64,
    pub receipts_per_s: f64,
    /// Bytes of the resulting files (parquet and WAL) per second of writing.
    pub mb_per_s: f64,
    pub bytes_on_disk: u64,
    /// Throughput relative to the ceiling measured in the same run.
    pub ratio_to_ceiling: f64,
    /// Peak RSS of the process that ran this writer alone (inputs generated up front included,
    /// the same for every writer).
    pub peak_rss_bytes: Option<u64>,
    /// The figure is the median run of `runs`; the spread of all runs follows.
    pub runs: usize,
    pub min_receipts_per_s: f64,
    pub max_receipts_per_s: f64,
}

/// Writes back dirty pages of earlier runs (`sync`), so one run's writeback does not throttle
/// the next: without it the same writer varied by 2x between runs on this machine.
pub fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// The median of `runs` (by throughput), carrying the spread and the highest peak RSS.
pub fn median_of(mut runs: Vec<WriteFigure>) -> WriteFigure {
    runs.sort_by(|a, b| a.receipts_per_s.total_cmp(&b.receipts_per_s));
    let mut m = runs[runs.len() / 2].clone();
    m.runs = runs.len();
    m.min_receipts_per_s = runs[0].receipts_per_s;
    m.max_receipts_per_s = runs[runs.len() - 1].receipts_per_s;
    m.peak_rss_bytes = runs.iter().filter_map(|r| r.peak_rss_bytes).max();
    m
}

pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn figure(
    name: &str,
    blocks: u64,
    n: u32,
    secs: f64,
    bytes: u64,
    peak: Option<u64>,
) -> WriteFigure {
    let receipts = (blocks * u64::from(n)) as f64;
    WriteFigure {
        name: name.into(),
        blocks,
        receipts_per_block: n,
        seconds: secs,
        receipts_per_s: receipts / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        bytes_on_disk: bytes,
        ratio_to_ceiling: 0.0,
        peak_rss_bytes: peak,
        runs: 1,
        min_receipts_per_s: receipts / secs,
        max_receipts_per_s: receipts / secs,
    }
}

/// Generates every block before the clock starts, so only writing is timed.
fn inputs(blocks: u64, n: u32) -> Vec<Vec<ReceiptInput>> {
    (1..=blocks).map(|b| data::block(b, n, blocks)).collect()
}

/// Writes `blocks` blocks through the store into `dir` and closes it.
pub async fn store_write(dir: &Path, blocks: u64, n: u32, policy: SyncPolicy) -> WriteFigure {
    let mut c = Config::default();
    c.sync_policy = policy;
    let all = inputs(blocks, n);
    rss::reset_peak();
    let s = Store::open(RealEnv::default(), dir, c).await.unwrap();
    let t = Instant::now();
    for (b, receipts) in (1..=blocks).zip(all) {
        s.write_receipts(b, receipts).await.unwrap();
    }
    s.close().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let name = format!("store, sync {policy:?}").to_lowercase();
    figure(&name, blocks, n, secs, dir_bytes(dir), rss::peak_bytes())
}

/// The ceiling: the same rows into two parquet files, one row group per block, no WAL, no
/// coordinator, no fsync.
pub fn ceiling_write(dir: &Path, blocks: u64, n: u32) -> WriteFigure {
    use parquet::arrow::ArrowWriter;
    let rf = std::fs::File::create(dir.join("r.parquet")).unwrap();
    let lf = std::fs::File::create(dir.join("l.parquet")).unwrap();
    let rp = properties_for(FileKind::Receipts);
    let lp = properties_for(FileKind::Logs);
    let mut rw = ArrowWriter::try_new(rf, receipt_schema(), Some(rp)).unwrap();
    let mut lw = ArrowWriter::try_new(lf, log_schema(), Some(lp)).unwrap();
    let all = inputs(blocks, n);
    rss::reset_peak();
    let t = Instant::now();
    for (b, receipts) in (1..=blocks).zip(all) {
        let mut rows = Vec::with_capacity(receipts.len());
        let mut logs = Vec::with_capacity(receipts.len());
        let mut log_index = 0u32;
        for r in receipts {
            for l in r.logs {
                logs.push(LogRecord {
                    block_number: b,
                    tx_hash: r.tx_hash,
                    tx_index: r.tx_index,
                    log_index,
                    address: l.address,
                    topics: l.topics,
                    data: l.data,
                });
                log_index += 1;
            }
            rows.push(ReceiptRecord {
                tx_hash: r.tx_hash,
                block_number: b,
                receipt_bytes: r.receipt_bytes,
            });
        }
        rw.write(&receipts_to_batch(&rows)).unwrap();
        rw.flush().unwrap();
        lw.write(&logs_to_batch(&logs)).unwrap();
        lw.flush().unwrap();
    }
    rw.close().unwrap();
    lw.close().unwrap();
    let secs = t.elapsed().as_secs_f64();
    figure(
        "ceiling: ArrowWriter only",
        blocks,
        n,
        secs,
        dir_bytes(dir),
        rss::peak_bytes(),
    )
}

/// Runs one writer (`ceiling`, `never` or `always`) in a child process of this binary, so its
/// peak RSS is its own (in one process the allocator keeps what earlier writers freed), and
/// returns the child's figure.
pub fn in_child(writer: &str, dir: &Path, blocks: u64, n: u32) -> WriteFigure {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let out = std::process::Command::new(exe)
        .args(["--child-writer", writer, "--child-dir"])
        .arg(dir)
        .args([
            "--blocks",
            &blocks.to_string(),
            "--receipts",
            &n.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("starting a writer child");
    assert!(
        out.status.success(),
        "writer child {writer} failed: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("the child prints its figure");
    serde_json::from_str(line).expect("the child's figure")
}
