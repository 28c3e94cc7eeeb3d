//! `receipt-sim real`: many seeds under one or both sync policies, a summary table, failing
//! runs with their reproduction lines, and a JSON report.

use super::parent::{run_real_plan, RealOptions, RealOutcome};
use super::{policy_name, DEFAULT_KILLS, DEFAULT_SCENARIO};
use crate::check::Check;
use crate::plan::Plan;
use receipt_store::SyncPolicy;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Failing runs listed in one report, at most (the count is always complete).
pub const FAILING_LISTED_MAX: usize = 200;

/// A campaign: seeds `base_seed..base_seed + seeds`, each under every policy in `policies`.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub scenario: String,
    pub seeds: u64,
    pub base_seed: u64,
    pub policies: Vec<SyncPolicy>,
    pub jobs: usize,
    pub options: RealOptions,
    pub commit: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RealSummary {
    pub scenario: String,
    pub base_seed: u64,
    pub seeds: u64,
    pub policies: Vec<String>,
    pub kills_per_seed: usize,
    pub commit: Option<String>,
    /// Seed x policy runs.
    pub runs: usize,
    pub passed: usize,
    pub failed: usize,
    pub kills: usize,
    pub child_runs: usize,
    pub clean_closes: usize,
    pub checks: usize,
    pub writes_acked: usize,
    pub recovered_blocks: usize,
    pub in_flight_survived: usize,
    pub in_flight_lost: usize,
    pub kills_during: BTreeMap<String, usize>,
    /// Failing runs per check.
    pub failures_by_check: BTreeMap<String, usize>,
    pub seconds: f64,
    pub failing: Vec<RealFailing>,
}

#[derive(Debug, Serialize)]
pub struct RealFailing {
    pub seed: u64,
    pub policy: String,
    pub first_failure: String,
    pub repro: String,
    pub kept_dir: Option<PathBuf>,
}

/// The one-line reproduction of a failing run (the kill points are seeded; where a kill lands
/// in real time is not, so a rerun reproduces the plan and schedule, not the exact timing).
pub fn repro_command(seed: u64, policy: &str, scenario: &str, kills: usize) -> String {
    let mut s = format!(
        "cargo run --release -p receipt-sim -- real --seed {seed} --seeds 1 --policy {policy}"
    );
    if scenario != DEFAULT_SCENARIO {
        s.push_str(&format!(" --scenario {scenario}"));
    }
    if kills != DEFAULT_KILLS {
        s.push_str(&format!(" --kills {kills}"));
    }
    s
}

impl RealSummary {
    pub fn add(&mut self, o: &RealOutcome, commit: Option<&str>) {
        self.runs += 1;
        self.kills += o.kills;
        self.child_runs += o.child_runs;
        self.clean_closes += o.clean_closes;
        self.checks += o.checks;
        self.writes_acked += o.writes_acked;
        self.recovered_blocks += o.recovered_blocks;
        self.in_flight_survived += o.in_flight_survived;
        self.in_flight_lost += o.in_flight_lost;
        for (k, n) in &o.kills_during {
            *self.kills_during.entry(k.clone()).or_default() += n;
        }
        let Some(first) = o.failures.first() else {
            self.passed += 1;
            return;
        };
        self.failed += 1;
        let tag = Check::of(first).map_or("unknown", |c| c.tag()).to_string();
        *self.failures_by_check.entry(tag).or_default() += 1;
        if self.failing.len() < FAILING_LISTED_MAX {
            let mut repro = repro_command(o.seed, &o.policy, &o.scenario, self.kills_per_seed);
            if let Some(c) = commit {
                repro.push_str(&format!("   # at commit {c}"));
            }
            self.failing.push(RealFailing {
                seed: o.seed,
                policy: o.policy.clone(),
                first_failure: first.clone(),
                repro,
                kept_dir: o.kept_dir.clone(),
            });
        }
    }

    /// A markdown table of the campaign.
    pub fn table(&self) -> String {
        format!(
            "| scenario | runs | passed | failed | kills | child runs | clean closes | checks | acked writes | recovered blocks | in-flight kept/lost | seconds |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {:.1} |",
            self.scenario,
            self.runs,
            self.passed,
            self.failed,
            self.kills,
            self.child_runs,
            self.clean_closes,
            self.checks,
            self.writes_acked,
            self.recovered_blocks,
            self.in_flight_survived,
            self.in_flight_lost,
            self.seconds
        )
    }
}

/// Runs a campaign, printing one line per run; returns the summary.
pub fn campaign(c: &Campaign, plans: impl Fn(u64) -> Plan + Sync) -> RealSummary {
    let runs: Vec<(u64, SyncPolicy)> = (0..c.seeds)
        .map(|i| c.base_seed.wrapping_add(i))
        .flat_map(|s| c.policies.iter().map(move |p| (s, *p)))
        .collect();
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(Vec::with_capacity(runs.len()));
    std::thread::scope(|scope| {
        for _ in 0..c.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(seed, policy)) = runs.get(i) else {
                    break;
                };
                let mut plan = plans(seed);
                plan.swarm.sync_policy = policy;
                let o = run_real_plan(&plan, &c.options, None);
                println!(
                    "seed {seed} {}: {} kills, {} child runs, {} acked, {} checks{}",
                    o.policy,
                    o.kills,
                    o.child_runs,
                    o.writes_acked,
                    o.checks,
                    o.failures
                        .first()
                        .map(|f| format!(": FAILED {f}"))
                        .unwrap_or_default()
                );
                outcomes.lock().unwrap().push(o);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by(|a, b| (a.seed, &a.policy).cmp(&(b.seed, &b.policy)));
    let mut summary = RealSummary {
        scenario: c.scenario.clone(),
        base_seed: c.base_seed,
        seeds: c.seeds,
        policies: c.policies.iter().map(|p| policy_name(*p).into()).collect(),
        kills_per_seed: c.options.kills,
        commit: c.commit.clone(),
        ..Default::default()
    };
    for o in &outcomes {
        summary.add(o, c.commit.as_deref());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

/// `receipt-sim real`: runs the campaign, prints the table, the failing runs with their
/// reproduction lines, and writes the JSON report to `report`. Returns true when a run failed.
pub fn run_campaign(c: &Campaign, plans: impl Fn(u64) -> Plan + Sync, report: &Path) -> bool {
    let policies: Vec<&str> = c.policies.iter().map(|p| policy_name(*p)).collect();
    println!(
        "real-process campaign: scenario {}, seeds {}..{} (base seed {}), {} kills per seed, policies {}",
        c.scenario,
        c.base_seed,
        c.base_seed.wrapping_add(c.seeds),
        c.base_seed,
        c.options.kills,
        policies.join(", ")
    );
    let summary = campaign(c, plans);
    println!("{}", summary.table());
    println!("kills landed during: {:?}", summary.kills_during);
    if !summary.failures_by_check.is_empty() {
        println!("failing runs by check: {:?}", summary.failures_by_check);
    }
    for f in summary.failing.iter().take(20) {
        println!(
            "FAILED seed {} ({}): {}\n  reproduce: {}{}",
            f.seed,
            f.policy,
            f.first_failure,
            f.repro,
            f.kept_dir
                .as_ref()
                .map(|d| format!("\n  directory kept: {}", d.display()))
                .unwrap_or_default()
        );
    }
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        report,
        serde_json::to_string_pretty(&summary).expect("serialisable"),
    ) {
        Ok(()) => println!("report: {}", report.display()),
        Err(e) => eprintln!("could not write {}: {e}", report.display()),
    }
    summary.failed > 0
}

/// Parses `--policy`: `always`, `never` or `both`.
pub fn parse_policies(s: &str) -> Result<Vec<SyncPolicy>, String> {
    match s {
        "both" => Ok(vec![SyncPolicy::Always, SyncPolicy::Never]),
        one => one
            .parse::<SyncPolicy>()
            .map(|p| vec![p])
            .map_err(|e| format!("{e}, or both")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_flag_takes_one_policy_or_both() {
        assert_eq!(parse_policies("both").unwrap().len(), 2);
        assert_eq!(parse_policies("never").unwrap(), vec![SyncPolicy::Never]);
        assert!(parse_policies("sometimes").is_err());
    }
}
