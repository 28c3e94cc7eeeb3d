//! A probe for profiling one store operation over the benchmark's data set, outside the full
//! bench (run it under `perf record`). Figures in commit messages marked "example harness" came
//! from it.
//!
//! ```sh
//! cargo build --release -p receipt-bench --example probe
//! P=target/release/examples/probe
//! $P files /tmp/probe-files            # 501 blocks x 3000 receipts, closed into 2 pairs
//! $P logs /tmp/probe-files address 30  # 30 get_logs over blocks 1..=500 (filters: none,
//!                                      # address, topic0, address+topic0)
//! $P wal /tmp/probe-wal                # a 500-block window left in the WAL by a crash
//! $P open /tmp/probe-wal 5             # 5 opens replaying it
//! ```
//!
//! `files` takes the data page size from `PAGE_ROWS` (default: the store's). `logs` prints the
//! median, fastest and slowest query, and every time in run order with `PROBE_SEQ=1`.

#[path = "../src/data.rs"]
#[allow(dead_code)]
mod data;

use receipt_store::env::real::RealEnv;
use receipt_store::{Config, LogFilter, Store, SyncPolicy};
use std::path::PathBuf;
use std::time::Instant;

const BLOCKS: u64 = 500;
const RECEIPTS: u32 = 3000;

fn wal_config() -> Config {
    let mut c = Config::new(BLOCKS + 1, 1);
    c.sync_policy = SyncPolicy::Never;
    c
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: probe files|wal DIR | logs DIR none|address|topic0|both [N] | open DIR [N]";
    let (mode, dir) = match (args.get(1), args.get(2)) {
        (Some(m), Some(d)) => (m.as_str(), PathBuf::from(d)),
        _ => panic!("{usage}"),
    };
    let count = |i: usize, default: usize| args.get(i).map_or(default, |n| n.parse().expect("N"));
    match mode {
        "files" => {
            let page_rows = std::env::var("PAGE_ROWS").map_or(Config::default().page_rows, |v| {
                v.parse().expect("PAGE_ROWS")
            });
            let config = Config {
                page_rows,
                ..Config::default()
            };
            let s = Store::open(RealEnv::default(), &dir, config).await.unwrap();
            for b in 1..=BLOCKS + 1 {
                let block = data::block(b, RECEIPTS, BLOCKS);
                s.write_receipts(b, block).await.unwrap();
            }
            s.close().await.unwrap();
        }
        "wal" => {
            let s = Store::open(RealEnv::default(), &dir, wal_config())
                .await
                .unwrap();
            for b in 1..=BLOCKS {
                let block = data::block(b, RECEIPTS, BLOCKS);
                s.write_receipts(b, block).await.unwrap();
            }
            s.crash().await;
        }
        "logs" => {
            let s = Store::open(RealEnv::default(), &dir, Config::default())
                .await
                .unwrap();
            let mut filter = LogFilter {
                from_block: Some(1),
                to_block: Some(BLOCKS),
                ..Default::default()
            };
            let which = args.get(3).map_or("none", String::as_str);
            if matches!(which, "address" | "both") {
                filter.addresses = vec![data::popular_address(7)];
            }
            if matches!(which, "topic0" | "both") {
                filter.topics = vec![vec![data::event(3)]];
            }
            let n = count(4, 30).max(1);
            let mut times = Vec::with_capacity(n);
            let mut rows = 0;
            for _ in 0..n {
                let t = Instant::now();
                rows = s.get_logs(&filter).await.unwrap().len();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if std::env::var("PROBE_SEQ").is_ok() {
                println!("{times:.0?}");
            }
            times.sort_by(f64::total_cmp);
            println!(
                "logs {which}: {rows} rows, p50 {:.1} ms, min {:.1}, max {:.1} ({n} queries)",
                times[n / 2],
                times[0],
                times[n - 1]
            );
            s.close().await.unwrap();
        }
        "open" => {
            for _ in 0..count(3, 5) {
                let t = Instant::now();
                let s = Store::open(RealEnv::default(), &dir, wal_config())
                    .await
                    .unwrap();
                println!("open {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
                s.crash().await;
            }
        }
        _ => panic!("{usage}"),
    }
}
