//! `receipt-sim`: seeded simulation campaigns against receipt-store.
//!
//! Every seed expands (with a scenario) into a plan; a plan runs on its own deterministic
//! runtime and in-memory filesystem, so seeds run in parallel on plain threads without
//! interfering. Wall-clock time is read here only, for the seeds/s figure.

use clap::{Parser, Subcommand};

/// Allocation-heavy runs (see sim/Cargo.toml): mimalloc in the simulator binary only.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use receipt_sim::exec::{run_plan, run_plan_twice, run_plan_with, Outcome, Trace};
use receipt_sim::plan::{generate, load_scenario, Plan};
use receipt_sim::report::{line_diff, repro_command_with, Summary};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Default campaign size: about a minute in release on two cores.
const DEFAULT_SEEDS: u64 = 4_000;

#[derive(Parser)]
#[command(
    name = "receipt-sim",
    version,
    about = "Deterministic simulation of receipt-store: seeded plans of writes, reads, rotations, prunes, crashes, power loss and injected faults, checked against a reference model",
    after_help = "Scenarios live in scenarios/*.json; failing plans are kept in seeds/. Every failure prints a one-line repro."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a campaign of seeds; exits 1 on any failure and writes a JSON report.
    Run {
        /// Scenario name (a file in scenarios/).
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Number of seeds.
        #[arg(long, default_value_t = DEFAULT_SEEDS)]
        seeds: u64,
        /// Base seed: the campaign runs seeds base..base+N.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Worker threads (each runs whole seeds, one simulation at a time).
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Run only shard K of N (the seeds whose index modulo N is K), written K/N.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
        /// Run every seed twice and fail when the two traces differ.
        #[arg(long)]
        check_determinism: bool,
        /// Activate a planted bug (builds with --features canary only).
        #[arg(long)]
        canary: Option<String>,
        /// Report path (default reports/run-<scenario>-<seed>.json).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Print the table of coverage marks (seeds hitting each, share, hits).
        #[arg(long)]
        marks: bool,
    },
    /// Measure harness strength: run every planted bug against the scenario meant to catch it
    /// and report the share of seeds that catch it (builds with --features canary only). Exits
    /// 1 when a bug is caught by fewer than 5% of the seeds, or its first catching seed also
    /// fails without it.
    Canaries {
        /// Seeds per planted bug (0..N).
        #[arg(long, default_value_t = 1_000)]
        seeds: u64,
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Only this planted bug (kebab-case name).
        #[arg(long)]
        only: Option<String>,
        /// Report path.
        #[arg(long, default_value = "reports/canaries.json")]
        report: PathBuf,
    },
    /// Run one seed and print its full event trace.
    Repro {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Print the plan (JSON) before the trace.
        #[arg(long)]
        plan: bool,
        /// Also print every filesystem call and its outcome, before the event it belongs to.
        #[arg(long)]
        fs_calls: bool,
        /// Activate a planted bug (builds with --features canary only).
        #[arg(long)]
        canary: Option<String>,
    },
    /// Run a saved plan (JSON, e.g. from seeds/) and print its trace.
    Replay {
        /// The plan file.
        #[arg(long)]
        plan: PathBuf,
        /// Also print every filesystem call and its outcome, before the event it belongs to.
        #[arg(long)]
        fs_calls: bool,
        #[arg(long)]
        canary: Option<String>,
    },
    /// Shrink a failing seed to a minimal plan failing the same check, and save it.
    Shrink {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Corpus name: saved as seeds/<name>.json (default shrunk-<scenario>-<seed>).
        #[arg(long)]
        name: Option<String>,
        /// Output file (overrides --name).
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
        /// Equal lines shown around each difference.
        #[arg(long, default_value_t = 3)]
        context: usize,
        #[arg(long)]
        canary: Option<String>,
    },
    /// Real-process crash campaign: run plans in a child process on a real directory, SIGKILL
    /// it at seeded points, reopen and check with the model; exits 1 on any failure.
    Real {
        /// Scenario name (a file in scenarios/).
        #[arg(long, default_value = receipt_sim::realproc::DEFAULT_SCENARIO)]
        scenario: String,
        /// Number of seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Base seed: the campaign runs seeds base..base+N.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Kills per seed (fewer when the plan ends first).
        #[arg(long, default_value_t = receipt_sim::realproc::DEFAULT_KILLS)]
        kills: usize,
        /// Sync policy: always, never or both (each seed under each).
        #[arg(long, default_value = "both")]
        policy: String,
        /// Seeds run at once (each a chain of child processes).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Where the per-run directories are made (default: the system temp dir); failing
        /// runs' directories are kept.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Report path (default reports/real-<policy>-<seed>.json).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The README's table of coverage marks by scenario, from campaign reports (`run --report`,
    /// e.g. `reports/ci-*-SEED.json` of one CI run): the share of seeds hitting each mark, claims
    /// in bold, marks no scenario reaches listed too.
    MarksTable {
        /// Campaign reports, one per scenario.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Bounded exhaustive crash exploration: short plans around rotation, flush, prune, close
    /// and reopen, and replay; a crash after every disk-changing filesystem call of each op
    /// crashed inside, as a process crash and as every distinct power-loss image the salts draw.
    /// Prints the states explored; exits 1 on any failure and writes a JSON report.
    Explore {
        /// Largest crash point (disk-changing calls before the crash) tried inside one op.
        #[arg(long, default_value_t = receipt_sim::explore::CRASH_POINT_MAX)]
        max_crash_point: u32,
        /// Salts tried per power-loss crash point (each may draw another durable image).
        #[arg(long, default_value_t = receipt_sim::explore::SALTS_MAX)]
        salts: u64,
        /// Stop a crash point's salts after this many in a row add no new image.
        #[arg(long, default_value_t = receipt_sim::explore::SALTS_STALL_MAX)]
        salt_stall: u64,
        /// Only the cases whose name starts with this (repeatable): e.g. prune, flush/never.
        #[arg(long)]
        case: Vec<String>,
        /// Worker threads.
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Activate a planted bug (builds with --features canary only).
        #[arg(long)]
        canary: Option<String>,
        /// Report path; failing plans go to reports/explore-failures/.
        #[arg(long, default_value = "reports/explore.json")]
        report: PathBuf,
    },
    /// The child of `real` (internal): runs a plan from an op on the store in a directory.
    #[command(hide = true)]
    Child {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value_t = 0)]
        from_op: usize,
    },
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
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

fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn print_outcome(o: &Outcome) {
    for line in &o.trace {
        println!("{line}");
    }
    println!(
        "seed {} scenario {}: {} ops, {} crashes ({} power losses), {} faults, {} reopens, {} reads, trace {:016x}, state {:016x}",
        o.seed,
        o.scenario,
        o.ops,
        o.crashes,
        o.power_losses,
        o.faults,
        o.reopens,
        o.reads,
        o.trace_hash,
        o.state_hash
    );
    for f in &o.failures {
        println!("FAILED: {f}");
    }
}

fn parse_shard(shard: Option<&str>) -> (u64, u64) {
    let Some(s) = shard else { return (0, 1) };
    let Some((k, n)) = s.split_once('/') else {
        die("--shard takes K/N")
    };
    let (k, n): (u64, u64) = (
        k.parse().unwrap_or_else(|_| die("bad --shard K")),
        n.parse().unwrap_or_else(|_| die("bad --shard N")),
    );
    if n == 0 || k >= n {
        die("--shard K/N needs K < N");
    }
    (k, n)
}

#[allow(clippy::too_many_arguments)]
/// See [`Cmd::MarksTable`].
fn marks_table(reports: &[PathBuf]) -> String {
    // (scenario, seeds, mark -> seeds hitting it, claims)
    let mut columns: Vec<(
        String,
        u64,
        std::collections::BTreeMap<String, u64>,
        Vec<String>,
    )> = Vec::new();
    for path in reports {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
        let field = |name: &str| {
            v.get(name)
                .unwrap_or_else(|| die(&format!("{}: no field {name:?}", path.display())))
        };
        let scenario = field("scenario").as_str().unwrap_or("?").to_string();
        let seeds = field("seeds").as_u64().unwrap_or(0);
        let marks = field("marks")
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["seeds"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let claims = field("claimed_marks")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        columns.push((scenario, seeds, marks, claims));
    }
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from("| mark |");
    for (name, seeds, ..) in &columns {
        out += &format!(" {name} ({seeds}) |");
    }
    out += "\n|---|";
    out += &"---:|".repeat(columns.len());
    out += "\n";
    for (mark, _) in receipt_store::marks::ALL {
        out += &format!("| `{mark}` |");
        for (_, seeds, marks, claims) in &columns {
            let hit = marks.get(*mark).copied().unwrap_or(0);
            let pct = 100.0 * hit as f64 / (*seeds).max(1) as f64;
            let shown = if hit == 0 {
                "0".to_string()
            } else if pct >= 10.0 {
                format!("{pct:.0}")
            } else {
                format!("{pct:.1}")
            };
            if claims.iter().any(|c| c == mark) {
                out += &format!(" **{shown}** |");
            } else {
                out += &format!(" {shown} |");
            }
        }
        out += "\n";
    }
    out
}

fn campaign(
    scenario: String,
    seeds: u64,
    base: u64,
    jobs: usize,
    shard: Option<String>,
    check_determinism: bool,
    canary: Option<String>,
    report: Option<PathBuf>,
    marks: bool,
) {
    let sc = load_scenario(&scenario).unwrap_or_else(|e| die(&e));
    let (k, n) = parse_shard(shard.as_deref());
    let list: Vec<u64> = (0..seeds)
        .filter(|i| i % n == k)
        .map(|i| base.wrapping_add(i))
        .collect();
    let bar = ProgressBar::new(list.len() as u64);
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if !std::io::stderr().is_terminal() || ci {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds  {per_sec}  eta {eta}  failures {msg}",
        )
        .expect("template"),
    );
    bar.set_message("0");
    let mut summary = Summary {
        scenario: scenario.clone(),
        base_seed: base,
        commit: commit(),
        canary: canary.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::with_capacity(list.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                set_canary(&canary);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&s) = list.get(i) else { break };
                    let plan = generate(s, &sc);
                    let o = if check_determinism {
                        run_plan_twice(&plan)
                    } else {
                        run_plan(&plan, false)
                    };
                    if !o.failures.is_empty() {
                        let f = failed.fetch_add(1, Ordering::Relaxed) + 1;
                        bar.set_message(f.to_string());
                    }
                    bar.inc(1);
                    outcomes.lock().unwrap().push(o);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| o.seed);
    for o in &outcomes {
        summary.add(o);
    }
    summary.finish(started.elapsed().as_secs_f64());
    summary.check_claims(&sc.claims);
    println!("{}", summary.table());
    if marks {
        let known: Vec<&str> = receipt_store::marks::ALL.iter().map(|(n, _)| *n).collect();
        print!("{}", summary.marks_table(&known));
    }
    if !summary.unreached_claims.is_empty() {
        println!(
            "UNREACHED: {} of {} claimed mark(s) were hit by no seed: {}",
            summary.unreached_claims.len(),
            summary.claimed_marks.len(),
            summary.unreached_claims.join(", ")
        );
    } else if !summary.claimed_marks.is_empty() {
        println!("all {} claimed marks reached", summary.claimed_marks.len());
    }
    if !summary.failures_by_check.is_empty() {
        println!("failing seeds by check: {:?}", summary.failures_by_check);
    }
    for f in summary.failing.iter().take(20) {
        println!(
            "FAILED seed {}: {}\n  reproduce: {}",
            f.seed, f.first_failure, f.repro
        );
    }
    let path = report.unwrap_or_else(|| {
        // A scenario given as a file path is named by its file stem.
        let tag = Path::new(&scenario)
            .file_stem()
            .map_or(scenario.clone(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("reports/run-{tag}-{base}.json"))
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("serialisable"),
    ) {
        Ok(()) => println!("report: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if summary.failures > 0 || !summary.unreached_claims.is_empty() {
        std::process::exit(1);
    }
}

#[cfg(feature = "canary")]
fn canaries(seeds: u64, jobs: usize, only: Option<String>, report: PathBuf) {
    use receipt_sim::canaries::{measure, MIN_CATCH_RATE, TABLE};
    let started = Instant::now();
    let mut rows = Vec::new();
    println!("| planted bug | scenario | seeds | caught | share | first catching seed | passes without |");
    println!("|---|---|---:|---:|---:|---|:-:|");
    for (c, sc) in TABLE {
        let name = serde_json::to_value(c).expect("serialisable");
        let name = name.as_str().unwrap_or_default().to_string();
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let r = measure(c, sc, seeds, jobs).unwrap_or_else(|e| die(&e));
        println!(
            "| {name} | {sc} | {} | {} | {:.1}% | {} | {} |",
            r.seeds,
            r.caught,
            100.0 * r.rate(),
            r.first.as_ref().map_or("none".into(), |(s, f)| format!(
                "{s}: {}",
                f.split(']').next().unwrap_or("").trim_start_matches('[')
            )),
            match r.first_passes_without {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
        rows.push(r);
    }
    let weak: Vec<_> = rows.iter().filter(|r| !r.ok()).collect();
    println!(
        "{} planted bug(s) in {:.0} s; each must be caught by at least {:.0}% of its scenario's seeds",
        rows.len(),
        started.elapsed().as_secs_f64(),
        100.0 * MIN_CATCH_RATE
    );
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(
        &report,
        serde_json::to_string_pretty(&rows).expect("serialisable"),
    );
    for r in &weak {
        println!(
            "WEAK: {:?} caught by {:.1}% of {} seeds (passes without: {:?})",
            r.canary,
            100.0 * r.rate(),
            r.scenario,
            r.first_passes_without
        );
    }
    if !weak.is_empty() {
        std::process::exit(1);
    }
}

#[cfg(not(feature = "canary"))]
fn canaries(_: u64, _: usize, _: Option<String>, _: PathBuf) {
    die("planted bugs need a canary build: cargo run --release -p receipt-sim --features canary -- canaries");
}

fn save_plan(path: &Path, plan: &Plan) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, plan.to_json() + "\n").unwrap_or_else(|e| die(&e.to_string()));
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
            marks,
        } => campaign(
            scenario,
            seeds,
            seed,
            jobs,
            shard,
            check_determinism,
            canary,
            report,
            marks,
        ),
        Cmd::Canaries {
            seeds,
            jobs,
            only,
            report,
        } => canaries(seeds, jobs, only, report),
        Cmd::Repro {
            seed,
            scenario,
            plan,
            fs_calls,
            canary,
        } => {
            set_canary(&canary);
            let p = plan_for(seed, &scenario);
            if plan {
                println!("{}", p.to_json());
            }
            let o = run_plan_with(&p, Trace::chosen(fs_calls));
            print_outcome(&o);
            if !o.failures.is_empty() {
                println!(
                    "reproduce: {}",
                    repro_command_with(seed, &scenario, canary.as_deref())
                );
                std::process::exit(1);
            }
        }
        Cmd::Replay {
            plan,
            fs_calls,
            canary,
        } => {
            set_canary(&canary);
            let text = std::fs::read_to_string(&plan)
                .unwrap_or_else(|e| die(&format!("{}: {e}", plan.display())));
            let p =
                Plan::from_json(&text).unwrap_or_else(|e| die(&format!("{}: {e}", plan.display())));
            if !p.reason.is_empty() {
                println!("plan kept because: {}", p.reason);
            }
            let o = run_plan_with(&p, Trace::chosen(fs_calls));
            print_outcome(&o);
            std::process::exit(if o.failures.is_empty() { 0 } else { 1 });
        }
        Cmd::Shrink {
            seed,
            scenario,
            name,
            out,
            canary,
        } => {
            set_canary(&canary);
            let plan = plan_for(seed, &scenario);
            let first = run_plan(&plan, false);
            let Some(why) = first.failures.first() else {
                die(&format!(
                    "seed {seed} of {scenario} passes; nothing to shrink"
                ))
            };
            println!(
                "seed {seed} fails: {why}\nshrinking {} ops...",
                plan.ops.len()
            );
            let (mut small, runs) = receipt_sim::shrink::shrink(&plan);
            let after = run_plan(&small, false);
            small.reason = format!(
                "shrunk from seed {seed} of {scenario}{}: {}",
                canary
                    .as_deref()
                    .map(|c| format!(" with canary {c}"))
                    .unwrap_or_default(),
                after.failures.first().cloned().unwrap_or_default()
            );
            let path = out.unwrap_or_else(|| {
                let name = name.unwrap_or_else(|| format!("shrunk-{scenario}-{seed}"));
                PathBuf::from(format!("seeds/{name}.json"))
            });
            save_plan(&path, &small);
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
            match out {
                Some(path) => save_plan(&path, &p),
                None => println!("{}", p.to_json()),
            }
        }
        Cmd::Diff {
            seed,
            scenario,
            context,
            canary,
        } => {
            set_canary(&canary);
            let o = run_plan(&plan_for(seed, &scenario), false);
            let (Some(exp), Some(got)) = (&o.expected, &o.recovered) else {
                println!(
                    "seed {seed}: no recovered-state mismatch to diff ({} failure(s))",
                    o.failures.len()
                );
                for f in &o.failures {
                    println!("FAILED: {f}");
                }
                return;
            };
            println!("--- expected (the model on everything issued, pruned blocks left out)");
            println!("+++ recovered");
            for l in line_diff(&exp.lines(), &got.lines(), context) {
                println!("{l}");
            }
            for f in &o.failures {
                println!("FAILED: {f}");
            }
            println!(
                "reproduce: {}",
                repro_command_with(seed, &scenario, canary.as_deref())
            );
            std::process::exit(1);
        }
        Cmd::Real {
            scenario,
            seeds,
            seed,
            kills,
            policy,
            jobs,
            work_dir,
            report,
        } => {
            let policies =
                receipt_sim::realproc::parse_policies(&policy).unwrap_or_else(|e| die(&e));
            let sc = load_scenario(&scenario).unwrap_or_else(|e| die(&e));
            let exe = std::env::current_exe().unwrap_or_else(|e| die(&e.to_string()));
            let c = receipt_sim::realproc::Campaign {
                scenario,
                seeds,
                base_seed: seed,
                policies,
                jobs,
                options: receipt_sim::realproc::RealOptions {
                    exe,
                    kills,
                    work_dir: work_dir.unwrap_or_else(std::env::temp_dir),
                    keep_failed: true,
                },
                commit: commit(),
            };
            let report = report
                .unwrap_or_else(|| PathBuf::from(format!("reports/real-{policy}-{seed}.json")));
            let failed = receipt_sim::realproc::run_campaign(&c, |s| generate(s, &sc), &report);
            std::process::exit(i32::from(failed));
        }
        Cmd::MarksTable { reports } => print!("{}", marks_table(&reports)),
        Cmd::Explore {
            max_crash_point,
            salts,
            salt_stall,
            case,
            jobs,
            canary,
            report,
        } => {
            // Here first, so an unknown name stops before any thread starts.
            set_canary(&canary);
            let cmd = receipt_sim::explore::Command {
                bounds: receipt_sim::explore::Bounds {
                    crash_point_max: max_crash_point,
                    salts_max: salts,
                    salts_stall_max: salt_stall,
                },
                cases: case,
                jobs,
                canary: canary.clone(),
                commit: commit(),
                report,
                failures_dir: PathBuf::from(receipt_sim::explore::FAILURES_DIR),
            };
            std::process::exit(receipt_sim::explore::run_command(&cmd, &|| {
                set_canary(&canary)
            }));
        }
        Cmd::Child { dir, plan, from_op } => {
            std::process::exit(receipt_sim::realproc::child_main(&dir, &plan, from_op));
        }
    }
}
