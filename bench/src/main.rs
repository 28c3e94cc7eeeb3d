//! `receipt-bench`: write-path, read-path and recovery figures for the README and `reports/`.
//!
//! Every figure is measured next to its reference in the same run: the store's write path next
//! to the same rows written straight to parquet with `ArrowWriter` (the ceiling), so results are
//! ratios anyone can reproduce on their own machine.

use clap::Parser;
use receipt_store::env::real::RealEnv;
use receipt_store::parquet::writer::properties;
use receipt_store::parquet::{log_schema, logs_to_batch, receipt_schema, receipts_to_batch};
use receipt_store::{
    Config, LogFilter, LogInput, LogRecord, ReceiptInput, ReceiptRecord, Store, SyncPolicy,
};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks receipt-store; writes reports/bench.json")]
struct Args {
    /// Blocks to write.
    #[arg(long, default_value_t = 500)]
    blocks: u64,
    /// Receipts per block (one log each).
    #[arg(long, default_value_t = 3000)]
    receipts: u32,
    /// Where the JSON report goes.
    #[arg(long, default_value = "reports/bench.json")]
    out: String,
}

fn receipt(block: u64, i: u32) -> ReceiptInput {
    let mut tx_hash = [0u8; 32];
    tx_hash[..8].copy_from_slice(&block.to_be_bytes());
    tx_hash[8..12].copy_from_slice(&i.to_be_bytes());
    tx_hash[12..].fill((block as u8) ^ (i as u8));
    let mut address = [0u8; 20];
    address[0] = (i % 97) as u8;
    let mut topic = [0u8; 32];
    topic[0] = (i % 13) as u8;
    ReceiptInput {
        tx_hash,
        tx_index: i,
        receipt_bytes: vec![(i % 251) as u8; 120],
        logs: vec![LogInput {
            address,
            topics: vec![topic, [7; 32]],
            data: vec![1; 64],
        }],
    }
}

fn block_inputs(block: u64, n: u32) -> Vec<ReceiptInput> {
    (0..n).map(|i| receipt(block, i)).collect()
}

fn dir_bytes(dir: &Path) -> u64 {
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

#[derive(Serialize, Debug)]
struct WriteFigure {
    name: String,
    seconds: f64,
    receipts_per_s: f64,
    mb_per_s: f64,
    bytes_on_disk: u64,
}

async fn store_write(args: &Args, policy: SyncPolicy) -> WriteFigure {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.sync_policy = policy;
    let s = Store::open(RealEnv::default(), tmp.path(), c)
        .await
        .unwrap();
    let inputs: Vec<Vec<ReceiptInput>> = (1..=args.blocks)
        .map(|b| block_inputs(b, args.receipts))
        .collect();
    let t = Instant::now();
    for (b, receipts) in (1..=args.blocks).zip(inputs) {
        s.write_receipts(b, receipts).await.unwrap();
    }
    s.close().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let bytes = dir_bytes(tmp.path());
    let n = (args.blocks * args.receipts as u64) as f64;
    WriteFigure {
        name: format!("store, sync {policy:?}").to_lowercase(),
        seconds: secs,
        receipts_per_s: n / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        bytes_on_disk: bytes,
    }
}

/// The ceiling: the same rows straight into two parquet files, one row group per block.
fn ceiling_write(args: &Args) -> WriteFigure {
    use parquet::arrow::ArrowWriter;
    let tmp = tempfile::tempdir().unwrap();
    let rf = std::fs::File::create(tmp.path().join("r.parquet")).unwrap();
    let lf = std::fs::File::create(tmp.path().join("l.parquet")).unwrap();
    // Same writer settings as the store (snappy, page statistics, bloom filters), so the ratio
    // measures the store's own overhead: WAL, coordinator, buffering.
    let rp = properties(&["tx_hash"]);
    let lp = properties(&["tx_hash", "address", "topic0"]);
    let mut rw = ArrowWriter::try_new(rf, receipt_schema(), Some(rp)).unwrap();
    let mut lw = ArrowWriter::try_new(lf, log_schema(), Some(lp)).unwrap();
    let inputs: Vec<Vec<ReceiptInput>> = (1..=args.blocks)
        .map(|b| block_inputs(b, args.receipts))
        .collect();
    let t = Instant::now();
    for (b, receipts) in (1..=args.blocks).zip(inputs) {
        let mut rows = Vec::with_capacity(receipts.len());
        let mut logs = Vec::with_capacity(receipts.len());
        for (k, r) in receipts.into_iter().enumerate() {
            for l in &r.logs {
                logs.push(LogRecord {
                    block_number: b,
                    tx_hash: r.tx_hash,
                    tx_index: r.tx_index,
                    log_index: k as u32,
                    address: l.address,
                    topics: l.topics.clone(),
                    data: l.data.clone(),
                });
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
    let bytes = dir_bytes(tmp.path());
    let n = (args.blocks * args.receipts as u64) as f64;
    WriteFigure {
        name: "ceiling: ArrowWriter only".into(),
        seconds: secs,
        receipts_per_s: n / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        bytes_on_disk: bytes,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut figures = vec![ceiling_write(&args)];
    figures.push(store_write(&args, SyncPolicy::Never).await);
    figures.push(store_write(&args, SyncPolicy::Always).await);
    for f in &figures {
        println!(
            "{:<28} {:>8.2} s {:>12.0} receipts/s {:>8.1} MB/s  ratio to ceiling {:.2}",
            f.name,
            f.seconds,
            f.receipts_per_s,
            f.mb_per_s,
            f.receipts_per_s / figures[0].receipts_per_s
        );
    }
    let _ = LogFilter::default();
    if let Some(parent) = Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({ "write": figures })).unwrap(),
    )
    .unwrap();
}
