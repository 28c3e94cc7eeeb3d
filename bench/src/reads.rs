//! Reads: the store's `get_logs` and `get_receipt` next to DuckDB running upstream's SQL over the
//! same files, at 1 and 8 concurrent readers, idle and under write load.

use crate::data;
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, LogFilter, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type S = Store<RealEnv>;

/// One query, in a form both engines take (byte values as hex).
#[derive(Serialize, Clone, Debug)]
pub struct Query {
    pub name: String,
    pub kind: &'static str,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub addresses: Vec<String>,
    pub topic0: Vec<String>,
    pub hash: Option<String>,
    /// A selective query: it returns a small part of what its block range holds.
    pub selective: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Latency {
    pub engine: String,
    pub query: String,
    pub readers: usize,
    pub samples: usize,
    pub rows: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Bytes of data files (row groups) the store read per query; absent for DuckDB.
    #[serde(default)]
    pub data_bytes_per_query: Option<f64>,
}

/// How long each (query, readers) cell runs, and its most iterations per reader.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Budget {
    pub budget_s: f64,
    pub max_iters: usize,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// The query set over a chain of `blocks` blocks: ranges of 100 blocks (the middle of the
/// chain) and of all `blocks`, with no filter, an address, a topic0, both, and a rare address;
/// receipts by hash, present and absent.
pub fn queries(blocks: u64, receipts: u32) -> Vec<Query> {
    let mid = data::rare_block(blocks);
    // 100 blocks around the middle (half the chain on small smoke runs).
    let half = (blocks / 4).clamp(1, 50);
    let short = (
        mid.saturating_sub(half - 1).max(1),
        (mid + half).min(blocks),
    );
    let long = (1, blocks);
    let addr = hex(&data::popular_address(7));
    let topic = hex(&data::event(3));
    let mut out = Vec::new();
    for (label, (from, to)) in [(to_label(short), short), (to_label(long), long)] {
        let q = |name: &str, addresses: Vec<String>, topic0: Vec<String>, selective| Query {
            name: format!("logs {label}: {name}"),
            kind: "logs",
            from: Some(from),
            to: Some(to),
            addresses,
            topic0,
            hash: None,
            selective,
        };
        out.push(q("no filter", vec![], vec![], false));
        out.push(q("address", vec![addr.clone()], vec![], true));
        out.push(q("topic0", vec![], vec![topic.clone()], true));
        out.push(q(
            "address+topic0",
            vec![addr.clone()],
            vec![topic.clone()],
            true,
        ));
        out.push(q(
            "rare address",
            vec![hex(&data::RARE_ADDRESS)],
            vec![],
            true,
        ));
    }
    let receipt = |name: &str, hash: [u8; 32]| Query {
        name: name.into(),
        kind: "receipt",
        from: None,
        to: None,
        addresses: vec![],
        topic0: vec![],
        hash: Some(hex(&hash)),
        selective: true,
    };
    out.push(receipt(
        "receipt by hash: present",
        data::tx_hash(mid + 7, receipts / 3),
    ));
    out.push(receipt("receipt by hash: absent", [0xCD; 32]));
    out
}

fn to_label((from, to): (u64, u64)) -> String {
    format!("{} blocks", to - from + 1)
}

/// Runs one query on the store; returns the number of rows.
async fn run_once(s: &S, q: &Query) -> usize {
    match q.kind {
        "logs" => {
            let f = LogFilter {
                from_block: q.from,
                to_block: q.to,
                addresses: q.addresses.iter().map(|a| unhex::<20>(a)).collect(),
                topics: if q.topic0.is_empty() {
                    vec![]
                } else {
                    vec![q.topic0.iter().map(|t| unhex::<32>(t)).collect()]
                },
                limit: None,
            };
            s.get_logs(&f).await.expect("get_logs").len()
        }
        _ => {
            let h = unhex::<32>(q.hash.as_deref().expect("receipt query has a hash"));
            usize::from(s.get_receipt(&h).await.expect("get_receipt").is_some())
        }
    }
}

fn summarize(engine: &str, q: &Query, readers: usize, rows: usize, mut lat: Vec<f64>) -> Latency {
    lat.sort_by(f64::total_cmp);
    let pick = |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)];
    Latency {
        engine: engine.into(),
        query: q.name.clone(),
        readers,
        samples: lat.len(),
        rows,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        mean_us: lat.iter().sum::<f64>() / lat.len() as f64,
        data_bytes_per_query: None,
    }
}

/// `readers` tasks run `q` repeatedly for the budget (at least twice each); every run must
/// return the same number of rows.
pub async fn measure_store(s: &Arc<S>, q: &Query, readers: usize, budget: Budget) -> Latency {
    let rows = run_once(s, q).await; // warm-up: file indexes and page cache
    let (_, data_before, _) = s.read_stats();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (s, q) = (s.clone(), q.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs_f64(budget.budget_s);
            let mut mine = Vec::new();
            while mine.len() < budget.max_iters && (mine.len() < 2 || Instant::now() < deadline) {
                let t = Instant::now();
                let n = run_once(&s, &q).await;
                mine.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(n, rows, "{}: row count changed between runs", q.name);
            }
            mine
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("reader task"));
    }
    let (_, data_after, _) = s.read_stats();
    let mut l = summarize("receipt-store", q, readers, rows, lat);
    l.data_bytes_per_query = Some((data_after - data_before) as f64 / l.samples as f64);
    l
}

/// A Python virtualenv under `target/` with DuckDB and pyarrow, created on first use.
fn duckdb_python() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv");
    let py = venv.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", "import duckdb, pyarrow"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    eprintln!("setting up {} (duckdb, pyarrow from PyPI)", venv.display());
    let run = |cmd: &mut Command| {
        let st = cmd.status().map_err(|e| e.to_string())?;
        st.success().then_some(()).ok_or(format!("{cmd:?} failed"))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "duckdb==2.0.1",
        "pyarrow==26.0.1",
    ]))?;
    if ok(&py) {
        Ok(py)
    } else {
        Err("duckdb did not import after install".into())
    }
}

/// Runs the DuckDB side over `dir`; an error (no Python, no network) is reported, not fatal.
pub fn measure_duckdb(
    dir: &Path,
    qs: &[Query],
    readers: &[usize],
    budget: Budget,
) -> Result<Vec<Latency>, String> {
    let py = duckdb_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_reads.py");
    let job = serde_json::json!({
        "dir": dir,
        "max_blocks_per_file": Config::default().max_blocks_per_file,
        "readers": readers,
        "budget_s": budget.budget_s,
        "max_iters": budget.max_iters,
        "queries": qs,
    });
    let mut child = Command::new(py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    serde_json::to_writer(child.stdin.take().expect("piped"), &job).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("duckdb_reads.py exited with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[derive(Serialize, Debug)]
pub struct UnderLoad {
    pub query: String,
    pub idle: Latency,
    pub loaded: Latency,
    pub p99_ratio: f64,
    /// Blocks the writer committed while the loaded reads ran, and its pace.
    pub blocks_written: u64,
    pub block_interval_ms: u64,
}

/// p99 of `qs` at one reader while a writer commits a block of `receipts` receipts every
/// `interval`, against the same queries with no writer. The writer appends after the chain.
pub async fn under_write_load(
    s: &Arc<S>,
    qs: &[Query],
    first_block: u64,
    receipts: u32,
    blocks: u64,
    interval: Duration,
    budget: Budget,
) -> Vec<UnderLoad> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut idle = Vec::new();
    for q in qs {
        idle.push(measure_store(s, q, 1, budget).await);
    }
    // Enough blocks for the loaded pass; the writer stops when told or when they run out.
    let max_blocks =
        (qs.len() as f64 * (budget.budget_s + 1.0) * 2.0 / interval.as_secs_f64()).ceil() as u64;
    let inputs: Vec<_> = (first_block..first_block + max_blocks)
        .map(|b| data::block(b, receipts, blocks))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (s, stop, written) = (s.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut next = Instant::now();
            for (b, rs) in (first_block..).zip(inputs) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                s.write_receipts(b, rs).await.expect("write");
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let the writer reach its pace before measuring.
    tokio::time::sleep(interval * 2).await;
    let before = written.load(Ordering::Relaxed);
    let mut out = Vec::new();
    for (q, idle) in qs.iter().zip(idle) {
        let loaded = measure_store(s, q, 1, budget).await;
        out.push(UnderLoad {
            query: q.name.clone(),
            p99_ratio: loaded.p99_us / idle.p99_us,
            idle,
            loaded,
            blocks_written: 0,
            block_interval_ms: interval.as_millis() as u64,
        });
    }
    let during = written.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    for u in &mut out {
        u.blocks_written = during;
    }
    out
}
