//! `receipt-bench`: the project's figures in one run, each next to its reference: the store's
//! write path next to the same rows written by `ArrowWriter` alone (the ceiling), its reads next
//! to DuckDB running upstream's SQL over the same files, recovery times and the simulator's
//! throughput. Writes `reports/bench.json` and the table between the bench markers of README.md.

mod commit;
mod data;
mod reads;
mod recovery;
mod rss;
mod sim;
mod write;

use clap::Parser;
use reads::{Budget, Latency, Query};
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, Store, SyncPolicy};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks receipt-store; writes reports/bench.json and the README table")]
struct Args {
    /// Blocks to write (upstream's benchmark: 500).
    #[arg(long, default_value_t = 500)]
    blocks: u64,
    /// Receipts per block, one log each (upstream's benchmark: 3000).
    #[arg(long, default_value_t = 3000)]
    receipts: u32,
    /// Seconds each read cell (query, readers, engine) runs.
    #[arg(long, default_value_t = 1.5)]
    read_budget_s: f64,
    /// Seeds of the 2-job default campaign (the goal: 10,000 in under 2 minutes).
    #[arg(long, default_value_t = 10_000)]
    sim_seeds: u64,
    /// Seeds of each scaling campaign (jobs 1, longer plans).
    #[arg(long, default_value_t = 1_000)]
    sim_scaling_seeds: u64,
    /// A few seconds' smoke run with tiny sizes (figures meaningless; checks the harness).
    #[arg(long)]
    quick: bool,
    /// Skip the DuckDB comparison (it needs python3 and PyPI on first use).
    #[arg(long)]
    no_duckdb: bool,
    /// Run one part only (write, reads, load, commit, recovery, sim), e.g. under a profiler;
    /// its table is printed, the report and README are not written (the commit part still
    /// writes its own `commit-latency.json` next to the report). Reads and load still write
    /// their chain first.
    #[arg(long)]
    only: Option<String>,
    /// Run only the read queries whose name contains this text (e.g. "receipt by hash").
    #[arg(long)]
    query: Option<String>,
    /// Internal: run one writer (ceiling, never, always) into `--child-dir` in this process and
    /// print its figure as JSON (the parent runs every writer in a child of its own, so each
    /// peak RSS is that writer's alone).
    #[arg(long, hide = true)]
    child_writer: Option<String>,
    #[arg(long, hide = true)]
    child_dir: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "reports/bench.json")]
    out: PathBuf,
    /// README whose bench section is rewritten (nothing is written if it has no markers).
    #[arg(long, default_value = "README.md")]
    readme: PathBuf,
}

/// Runs of each writer; the median is reported.
const WRITE_RUNS: usize = 3;

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0))
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut a = Args::parse();
    if a.quick {
        (a.blocks, a.receipts, a.read_budget_s) = (20, 300, 0.05);
        (a.sim_seeds, a.sim_scaling_seeds) = (40, 20);
    }
    if let Some(writer) = &a.child_writer {
        let dir = a
            .child_dir
            .as_deref()
            .expect("--child-dir with --child-writer");
        let fig = match writer.as_str() {
            "ceiling" => write::ceiling_write(dir, a.blocks, a.receipts),
            "never" => write::store_write(dir, a.blocks, a.receipts, SyncPolicy::Never).await,
            "always" => write::store_write(dir, a.blocks, a.receipts, SyncPolicy::Always).await,
            other => panic!("unknown writer {other}"),
        };
        println!("{}", serde_json::to_string(&fig).unwrap());
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let sub = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };

    // 1. Write path. The `never` directory is kept: the reads run over its files.
    eprintln!("write path: {} blocks x {} receipts", a.blocks, a.receipts);
    let on = |part: &str| a.only.as_deref().is_none_or(|o| o == part);
    let mut writes = Vec::new();
    let runs = if a.quick { 1 } else { WRITE_RUNS };
    let chain = sub("never");
    if on("write") {
        // Interleaved rounds, so a slow spell of the disk hits every writer alike.
        let mut rounds: [Vec<write::WriteFigure>; 3] = Default::default();
        for round in 0..runs {
            let fresh = |name: &str| {
                let p = sub(&format!("{name}-{round}"));
                write::settle();
                p
            };
            rounds[0].push(write::in_child(
                "ceiling",
                &fresh("ceiling"),
                a.blocks,
                a.receipts,
            ));
            let never = if round + 1 == runs {
                chain.clone()
            } else {
                fresh("never")
            };
            write::settle();
            rounds[1].push(write::in_child("never", &never, a.blocks, a.receipts));
            let always = fresh("always");
            rounds[2].push(write::in_child("always", &always, a.blocks, a.receipts));
            for name in ["ceiling", "never", "always"] {
                if !(name == "never" && round + 1 == runs) {
                    let _ = std::fs::remove_dir_all(tmp.path().join(format!("{name}-{round}")));
                }
            }
        }
        writes = rounds.into_iter().map(write::median_of).collect();
    } else if on("reads") || on("load") {
        writes.push(write::store_write(&chain, a.blocks, a.receipts, SyncPolicy::Never).await);
    }
    let ceiling = writes.first().map_or(1.0, |w| w.receipts_per_s);
    for w in &mut writes {
        w.ratio_to_ceiling = w.receipts_per_s / ceiling;
        eprintln!(
            "  {:<28} {:>7.2} s {:>10.0} receipts/s  {:.2}x ceiling",
            w.name, w.seconds, w.receipts_per_s, w.ratio_to_ceiling
        );
    }

    // 2. Reads, store and DuckDB over the same closed files.
    let qs: Vec<Query> = reads::queries(a.blocks, a.receipts)
        .into_iter()
        .filter(|q| a.query.as_deref().is_none_or(|t| q.name.contains(t)))
        .collect();
    let budget = Budget {
        budget_s: a.read_budget_s,
        max_iters: 500,
    };
    let readers = [1usize, 8];
    eprintln!("reads: {} queries x {:?} readers", qs.len(), readers);
    let store = Arc::new(
        Store::open(RealEnv::default(), &chain, Config::default())
            .await
            .expect("reopen the written chain"),
    );
    let mut store_lat: Vec<Latency> = Vec::new();
    for q in qs.iter().filter(|_| on("reads")) {
        for &r in &readers {
            let l = reads::measure_store(&store, q, r, budget).await;
            eprintln!(
                "  {:<36} {r} readers: p50 {} p99 {}, {:.0} data bytes/query",
                q.name,
                ms(l.p50_us),
                ms(l.p99_us),
                l.data_bytes_per_query.unwrap_or(f64::NAN)
            );
            store_lat.push(l);
        }
    }
    let duck = if a.no_duckdb || !on("reads") {
        Err("skipped (--no-duckdb)".to_string())
    } else {
        reads::measure_duckdb(&chain, &qs, &readers, budget)
    };
    if let Err(e) = &duck {
        eprintln!("  duckdb: {e}");
    }
    let duck_lat = duck.clone().unwrap_or_default();
    for d in &duck_lat {
        let s = store_lat
            .iter()
            .find(|s| s.query == d.query && s.readers == d.readers)
            .expect("same cells");
        assert_eq!(
            s.rows, d.rows,
            "{}: the store and DuckDB disagree on the answer",
            d.query
        );
    }

    // 3. Reads under write load (blocks appended after the chain, one every 100 ms).
    let load_qs: Vec<Query> = qs
        .iter()
        .filter(|q| on("load") && q.selective)
        .filter(|q| !q.name.contains(&format!("{} blocks", a.blocks)))
        .cloned()
        .collect();
    eprintln!("reads under write load: {} queries", load_qs.len());
    let interval = Duration::from_millis(100);
    let load = reads::under_write_load(
        &store,
        &load_qs,
        a.blocks + 1,
        a.receipts,
        a.blocks,
        interval,
        budget,
    )
    .await;
    Arc::try_unwrap(store)
        .ok()
        .expect("readers done")
        .close()
        .await
        .unwrap();

    // 4. Block-commit latency, idle and with heavy readers (its own store and directory).
    let commit = if on("commit") {
        eprintln!(
            "block commits: {} receipts, sync always, 0 vs {} readers",
            a.receipts,
            commit::READERS_LOADED
        );
        let c = commit::measure(&sub("commit"), a.receipts).await;
        if !a.quick {
            let path = a.out.with_file_name("commit-latency.json");
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).unwrap();
            }
            let doc = json!({ "machine": machine(), "commit_latency": c });
            std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
            eprintln!("  wrote {}", path.display());
        }
        Some(c)
    } else {
        None
    };

    // 5. Recovery.
    eprintln!("recovery");
    let pairs = if a.quick { 20 } else { 1000 };
    let mut recovery = Vec::new();
    if on("recovery") {
        recovery.push(recovery::many_pairs(&sub("pairs"), pairs, 10, 5).await);
        recovery.push(recovery::full_window_replay(&sub("replay"), a.blocks, a.receipts, 3).await);
    }
    for r in &recovery {
        eprintln!(
            "  {:<40} {:>9.1} ms (+ flush {:.1} ms)",
            r.name, r.open_ms, r.open_then_flush_ms
        );
    }

    // 6. Simulator.
    eprintln!("simulator campaigns");
    // Built only when its part runs: `--only commit` must not start a release build.
    let built = if on("sim") {
        sim::build_sim()
    } else {
        Err("skipped (--only)".into())
    };
    let sims = match built {
        Ok(bin) => {
            let mut v = Vec::new();
            for (seeds, jobs, ops) in [
                (a.sim_seeds, 2, 80),
                (a.sim_scaling_seeds, 1, 80),
                (a.sim_scaling_seeds, 2, 160),
                (a.sim_scaling_seeds, 2, 320),
            ] {
                match sim::campaign(&bin, tmp.path(), seeds, jobs, ops) {
                    Ok(f) => {
                        eprintln!("  {:<36} {:>7.1} seeds/s", f.name, f.seeds_per_s);
                        v.push(f)
                    }
                    Err(e) => eprintln!("  campaign failed to run: {e}"),
                }
            }
            v
        }
        Err(e) => {
            eprintln!("  {e}");
            Vec::new()
        }
    };

    let report = json!({
        "machine": machine(),
        "quick": a.quick,
        "seconds": started.elapsed().as_secs_f64(),
        "write": writes,
        "reads": { "store": store_lat, "duckdb": duck_lat, "duckdb_error": duck.err() },
        "reads_under_write_load": load,
        "commit_latency": commit,
        "recovery": recovery,
        "simulator": sims,
    });
    if let Some(part) = &a.only {
        println!("{}", tables(&report, &a));
        eprintln!("--only {part}: report and README not written");
        return;
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let table = tables(&report, &a);
    println!("{table}");
    update_readme(&a.readme, &table);
    eprintln!(
        "wrote {} in {:.0} s",
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// The README section: one table per part, from the JSON report.
fn tables(r: &serde_json::Value, a: &Args) -> String {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // A part that did not run (`--only`) has no rows and gets no table.
    let rows = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let mut t = format!(
        "Measured by `cargo run --release -p receipt-bench` on {} ({:.0} s in all{}).\n\n",
        r["machine"].as_str().unwrap_or("?"),
        f(r, "seconds"),
        if a.quick { ", QUICK SMOKE SIZES" } else { "" }
    );
    if !rows(&r["write"]).is_empty() {
        t += &format!(
        "**Write path**, {} blocks x {} receipts, one log each, median of {WRITE_RUNS} runs:\n\n| writer | receipts/s | range | MB/s | vs ceiling | peak RSS (own process) | RSS vs ceiling |\n|---|---:|---:|---:|---:|---:|---:|\n",
        a.blocks, a.receipts
    );
        let ceiling_rss = r["write"][0]["peak_rss_bytes"].as_u64();
        for w in r["write"].as_array().unwrap() {
            let rss = w["peak_rss_bytes"].as_u64();
            let rss_ratio = match (rss, ceiling_rss) {
                (Some(a), Some(c)) if c > 0 => format!("{:.2}x", a as f64 / c as f64),
                _ => "n/a".into(),
            };
            t += &format!(
                "| {} | {:.0} | {:.0}k..{:.0}k | {:.1} | {:.2}x | {} | {rss_ratio} |\n",
                w["name"].as_str().unwrap(),
                f(w, "receipts_per_s"),
                f(w, "min_receipts_per_s") / 1e3,
                f(w, "max_receipts_per_s") / 1e3,
                f(w, "mb_per_s"),
                f(w, "ratio_to_ceiling"),
                mib(w["peak_rss_bytes"].as_u64())
            );
        }
    }
    if !rows(&r["reads"]["store"]).is_empty() {
        t += "\n**Reads**, warm, same files (DuckDB runs upstream's `read_parquet` SQL):\n\n| query | readers | rows | store p50 / p99 | DuckDB p50 / p99 | DuckDB p50 / store p50 | store µs/log |\n|---|---:|---:|---:|---:|---:|---:|\n";
        let duck = r["reads"]["duckdb"].as_array().cloned().unwrap_or_default();
        for s in r["reads"]["store"].as_array().unwrap() {
            let d = duck
                .iter()
                .find(|d| d["query"] == s["query"] && d["readers"] == s["readers"]);
            let rows = s["rows"].as_u64().unwrap_or(0);
            let per_log = if rows > 0 && s["query"].as_str().unwrap().starts_with("logs") {
                format!("{:.2}", f(s, "p50_us") / rows as f64)
            } else {
                "".into()
            };
            t += &format!(
                "| {} | {} | {} | {} / {} | {} | {} | {} |\n",
                s["query"].as_str().unwrap(),
                s["readers"],
                rows,
                ms(f(s, "p50_us")),
                ms(f(s, "p99_us")),
                d.map_or("n/a".into(), |d| format!(
                    "{} / {}",
                    ms(f(d, "p50_us")),
                    ms(f(d, "p99_us"))
                )),
                d.map_or("n/a".into(), |d| format!(
                    "{:.1}x",
                    f(d, "p50_us") / f(s, "p50_us")
                )),
                per_log
            );
        }
    }
    if !rows(&r["reads_under_write_load"]).is_empty() {
        t += "\n**Reads under write load** (one reader; a writer commits a block every 100 ms):\n\n| query | idle p99 | loaded p99 | ratio |\n|---|---:|---:|---:|\n";
        for u in r["reads_under_write_load"].as_array().unwrap() {
            t += &format!(
                "| {} | {} | {} | {:.2}x |\n",
                u["query"].as_str().unwrap(),
                ms(f(&u["idle"], "p99_us")),
                ms(f(&u["loaded"], "p99_us")),
                f(u, "p99_ratio")
            );
        }
    }
    if let Some(c) = r["commit_latency"].as_object() {
        let c = serde_json::Value::Object(c.clone());
        let cell = |k: &str| {
            format!(
                "{:.1} ms ({:.1}..{:.1})",
                f(&c[k], "median"),
                f(&c[k], "min"),
                f(&c[k], "max")
            )
        };
        let ratio = |k: &str| {
            format!(
                "{:.2}x ({:.2}..{:.2})",
                f(&c[k], "median"),
                f(&c[k], "min"),
                f(&c[k], "max")
            )
        };
        t += &format!(
            "\n**Block commits** ({} receipts, sync always, {} blocks of history in {}-block pairs; readers loop on {}; median of {} runs, range in brackets):\n\n| | idle | {} readers | loaded / idle |\n|---|---:|---:|---:|\n",
            c["receipts_per_block"],
            c["history_blocks"],
            c["window_blocks"],
            c["reader_query"].as_str().unwrap_or("?"),
            rows(&c["runs"]).len(),
            c["readers"],
        );
        t += &format!(
            "| commit p50 | {} | {} | {} |\n| commit p90 | {} | {} | {} |\n| commit p99 | {} | {} | {} |\n",
            cell("idle_p50_ms"),
            cell("loaded_p50_ms"),
            ratio("p50_ratio"),
            cell("idle_p90_ms"),
            cell("loaded_p90_ms"),
            ratio("p90_ratio"),
            cell("idle_p99_ms"),
            cell("loaded_p99_ms"),
            ratio("p99_ratio")
        );
    }
    if !rows(&r["recovery"]).is_empty() {
        t += "\n**Recovery** (median of the runs; open returns once the window is staged, and a `flush()` right after it returns once the replayed row groups are written too):\n\n| case | open | open + flush | WAL bytes |\n|---|---:|---:|---:|\n";
        for o in r["recovery"].as_array().unwrap() {
            t += &format!(
                "| {} | {:.1} ms | {:.1} ms | {} |\n",
                o["name"].as_str().unwrap(),
                f(o, "open_ms"),
                f(o, "open_then_flush_ms"),
                o["wal_bytes"]
            );
        }
    }
    if !rows(&r["simulator"]).is_empty() {
        t += "\n**Simulator** (default scenario, release):\n\n| campaign | seeds | seconds | seeds/s | ops/s per core | peak RSS |\n|---|---:|---:|---:|---:|---:|\n";
        for s in r["simulator"].as_array().unwrap() {
            t += &format!(
                "| {} | {} | {:.1} | {:.1} | {:.0} | {} |\n",
                s["name"].as_str().unwrap(),
                s["seeds"],
                f(s, "seconds"),
                f(s, "seeds_per_s"),
                f(s, "ops_per_s_per_core"),
                mib(s["peak_rss_bytes"].as_u64())
            );
        }
    }
    t
}

fn update_readme(path: &Path, table: &str) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!(
            "{} has no bench markers; table printed only",
            path.display()
        );
        return;
    };
    let new = format!("{}{BEGIN}\n{table}\n{}", &text[..b], &text[e..]);
    std::fs::write(path, new).unwrap();
}
