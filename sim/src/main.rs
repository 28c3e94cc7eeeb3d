//! `receipt-sim`: seeded simulation campaigns against receipt-store.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use receipt_sim::exec::{run_plan, Outcome};
use receipt_sim::plan::{generate, load_scenario, Plan};
use receipt_sim::report::{repro_command, Summary};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "receipt-sim",
    about = "Deterministic simulation of receipt-store: seeded plans, crashes, power loss, fault injection"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a campaign of seeds; exits non-zero on any failure.
    Run {
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Number of seeds.
        #[arg(long, default_value_t = 5000)]
        seeds: u64,
        /// Base seed (seeds base..base+N); defaults to 0.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Parallel workers (one OS thread each, one simulation per seed).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Run only shard K of N (seed index % N == K), written K/N.
        #[arg(long)]
        shard: Option<String>,
        /// Run every seed twice and fail when the trace hashes differ.
        #[arg(long)]
        check_determinism: bool,
        /// Activate a planted bug (needs `--features canary`).
        #[arg(long)]
        canary: Option<String>,
        /// Where the JSON report goes (default reports/run-<scenario>-<seed>.json).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run one seed and print its full event trace.
    Repro {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        #[arg(long)]
        canary: Option<String>,
    },
    /// Run a saved plan (JSON) and print its trace.
    Replay {
        #[arg(long)]
        plan: PathBuf,
    },
    /// Shrink a failing seed to a minimal plan and save it.
    Shrink {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Output file (default seeds/shrunk-<scenario>-<seed>.json).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        canary: Option<String>,
    },
    /// Write the plan a seed expands to (JSON), e.g. to add it to the corpus in seeds/.
    Plan {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        /// One line on why the plan is kept.
        #[arg(long, default_value = "")]
        reason: String,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show recovered vs expected state of a failing seed as a line diff of canonical JSON.
    Diff {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        #[arg(long)]
        canary: Option<String>,
    },
}

fn set_canary(name: &Option<String>) {
    let Some(name) = name else { return };
    #[cfg(feature = "canary")]
    {
        let c: receipt_store::canary::Canary =
            serde_json::from_value(serde_json::Value::String(name.clone()))
                .unwrap_or_else(|_| die(&format!("unknown canary {name:?}")));
        receipt_store::canary::set(Some(c));
    }
    #[cfg(not(feature = "canary"))]
    die(&format!(
        "--canary {name} needs a build with --features canary"
    ));
}

fn die(msg: &str) -> ! {
    eprintln!("receipt-sim: {msg}");
    std::process::exit(2)
}

fn plan_for(seed: u64, scenario: &str) -> Plan {
    let sc = load_scenario(scenario).unwrap_or_else(|e| die(&e));
    generate(seed, &sc)
}

fn print_outcome(o: &Outcome) {
    for line in &o.trace {
        println!("{line}");
    }
    println!(
        "seed {} scenario {}: {} ops, {} crashes, {} reopens, trace {:016x}",
        o.seed, o.scenario, o.ops, o.crashes, o.reopens, o.trace_hash
    );
    for f in &o.failures {
        println!("FAILED: {f}");
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            scenario,
            seeds,
            seed,
            jobs,
            shard,
            check_determinism,
            canary,
            report,
        } => {
            let sc = load_scenario(&scenario).unwrap_or_else(|e| die(&e));
            let (k, n) = match shard.as_deref().map(|s| s.split_once('/')) {
                None => (0, 1),
                Some(Some((k, n))) => (
                    k.parse().unwrap_or_else(|_| die("bad --shard")),
                    n.parse().unwrap_or_else(|_| die("bad --shard")),
                ),
                Some(None) => die("--shard takes K/N"),
            };
            if n == 0 || k >= n {
                die("--shard K/N needs K < N");
            }
            let list: Vec<u64> = (0..seeds)
                .filter(|i| i % n == k)
                .map(|i| seed.wrapping_add(i))
                .collect();
            let bar = ProgressBar::new(list.len() as u64);
            if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} eta {eta}")
                    .expect("template"),
            );
            let started = Instant::now();
            let next = Arc::new(AtomicUsize::new(0));
            let outcomes = Arc::new(Mutex::new(Vec::new()));
            std::thread::scope(|scope| {
                for _ in 0..jobs.max(1) {
                    let (next, outcomes, list, sc, bar, canary) =
                        (next.clone(), outcomes.clone(), &list, &sc, &bar, &canary);
                    scope.spawn(move || {
                        set_canary(canary);
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&s) = list.get(i) else { break };
                            let plan = generate(s, sc);
                            let mut o = run_plan(&plan, false);
                            if check_determinism {
                                let again = run_plan(&plan, false);
                                if again.trace_hash != o.trace_hash {
                                    o.failures.push(format!(
                                        "non-deterministic: trace {:016x} then {:016x}",
                                        o.trace_hash, again.trace_hash
                                    ));
                                }
                            }
                            bar.inc(1);
                            outcomes.lock().unwrap().push(o);
                        }
                    });
                }
            });
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
            outcomes.sort_by_key(|o| o.seed);
            let mut summary = Summary {
                scenario: scenario.clone(),
                base_seed: seed,
                seconds: secs,
                ..Default::default()
            };
            for o in &outcomes {
                summary.add(o);
            }
            summary.seeds_per_s = summary.seeds as f64 / secs;
            summary.ops_per_s = summary.ops as f64 / secs;
            println!("{}", summary.table());
            for f in &summary.failing {
                println!(
                    "FAILED seed {}: {}\n  reproduce: {}",
                    f.seed, f.first_failure, f.repro
                );
            }
            let path = report
                .unwrap_or_else(|| PathBuf::from(format!("reports/run-{scenario}-{seed}.json")));
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(
                &path,
                serde_json::to_string_pretty(&summary).expect("serialisable"),
            ) {
                Ok(()) => println!("report: {}", path.display()),
                Err(e) => eprintln!("could not write {}: {e}", path.display()),
            }
            if summary.failures > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Repro {
            seed,
            scenario,
            canary,
        } => {
            set_canary(&canary);
            let o = run_plan(&plan_for(seed, &scenario), true);
            print_outcome(&o);
            std::process::exit(if o.failures.is_empty() { 0 } else { 1 });
        }
        Cmd::Replay { plan } => {
            let text = std::fs::read_to_string(&plan)
                .unwrap_or_else(|e| die(&format!("{}: {e}", plan.display())));
            let p: Plan = serde_json::from_str(&text)
                .unwrap_or_else(|e| die(&format!("{}: {e}", plan.display())));
            let o = run_plan(&p, true);
            print_outcome(&o);
            std::process::exit(if o.failures.is_empty() { 0 } else { 1 });
        }
        Cmd::Shrink {
            seed,
            scenario,
            out,
            canary,
        } => {
            set_canary(&canary);
            let plan = plan_for(seed, &scenario);
            if !receipt_sim::shrink::fails(&plan) {
                die(&format!("seed {seed} passes; nothing to shrink"));
            }
            let (mut small, runs) = receipt_sim::shrink::shrink(&plan);
            small.reason = run_plan(&small, false)
                .failures
                .first()
                .cloned()
                .unwrap_or_default();
            let path = out
                .unwrap_or_else(|| PathBuf::from(format!("seeds/shrunk-{scenario}-{seed}.json")));
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&small).expect("serialisable"),
            )
            .unwrap_or_else(|e| die(&e.to_string()));
            println!(
                "shrunk {} ops to {} in {runs} runs: {}",
                plan.ops.len(),
                small.ops.len(),
                path.display()
            );
            println!(
                "replay: cargo run --release -p receipt-sim -- replay --plan {}",
                path.display()
            );
        }
        Cmd::Plan {
            seed,
            scenario,
            reason,
            out,
        } => {
            let mut p = plan_for(seed, &scenario);
            p.reason = reason;
            let text = serde_json::to_string_pretty(&p).expect("serialisable");
            match out {
                Some(path) => {
                    std::fs::write(&path, text + "\n").unwrap_or_else(|e| die(&e.to_string()))
                }
                None => println!("{text}"),
            }
        }
        Cmd::Diff {
            seed,
            scenario,
            canary,
        } => {
            set_canary(&canary);
            let o = run_plan(&plan_for(seed, &scenario), false);
            let (Some(exp), Some(got)) = (&o.expected, &o.recovered) else {
                println!(
                    "seed {seed}: no state mismatch to diff ({} failures)",
                    o.failures.len()
                );
                for f in &o.failures {
                    println!("FAILED: {f}");
                }
                return;
            };
            let lines = |s: &receipt_sim::model::State| -> Vec<String> {
                s.receipts
                    .iter()
                    .map(|r| serde_json::to_string(r).unwrap())
                    .chain(s.logs.iter().map(|l| serde_json::to_string(l).unwrap()))
                    .collect()
            };
            let (e, g) = (lines(exp), lines(got));
            for l in e.iter().filter(|l| !g.contains(l)) {
                println!("- {l}");
            }
            for l in g.iter().filter(|l| !e.contains(l)) {
                println!("+ {l}");
            }
            println!("({} expected lines, {} recovered; '-' expected only, '+' recovered only)\nreproduce: {}", e.len(), g.len(), repro_command(seed, &scenario));
        }
    }
}
