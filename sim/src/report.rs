//! Campaign summaries, JSON reports, reproduction lines and state diffs.

use crate::check::Check;
use crate::exec::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;

/// Failing seeds listed in one report, at most (the count is always complete).
pub const MAX_FAILING_LISTED: usize = 200;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub base_seed: u64,
    /// `git rev-parse --short HEAD` when the run started, if known.
    pub commit: Option<String>,
    /// The planted bug active during the run (canary builds only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    pub seeds: usize,
    pub ops: usize,
    pub crashes: usize,
    pub power_losses: usize,
    pub faults: u64,
    pub reopens: usize,
    pub writes_acked: usize,
    pub reads: usize,
    pub failures: usize,
    /// Failing seeds per check.
    pub failures_by_check: BTreeMap<String, usize>,
    pub seconds: f64,
    pub seeds_per_s: f64,
    pub ops_per_s: f64,
    /// Peak resident set size of the campaign process (Linux `VmHWM`), if known. Measurement
    /// only: it never feeds back into a simulation.
    pub peak_rss_bytes: Option<u64>,
    /// Coverage marks hit during the campaign: seeds that hit each, and total hits.
    pub marks: BTreeMap<String, MarkHits>,
    /// The marks this scenario claims to reach (from its file).
    pub claimed_marks: Vec<String>,
    /// Claimed marks no seed of this campaign hit: the campaign fails when this is not empty.
    pub unreached_claims: Vec<String>,
    pub failing: Vec<Failing>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct MarkHits {
    pub seeds: usize,
    pub hits: u64,
}

/// Peak resident set size of this process in bytes, read from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Serialize)]
pub struct Failing {
    pub seed: u64,
    pub first_failure: String,
    pub repro: String,
}

/// The one-line reproduction of a failing seed.
pub fn repro_command(seed: u64, scenario: &str) -> String {
    repro_command_with(seed, scenario, None)
}

/// The one-line reproduction of a failing seed, with the planted bug that was active.
pub fn repro_command_with(seed: u64, scenario: &str, canary: Option<&str>) -> String {
    match canary {
        None => format!(
            "cargo run --release -p receipt-sim -- repro --seed {seed} --scenario {scenario}"
        ),
        Some(c) => format!(
            "cargo run --release -p receipt-sim --features canary -- repro --seed {seed} --scenario {scenario} --canary {c}"
        ),
    }
}

impl Summary {
    pub fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        self.ops += o.ops;
        self.crashes += o.crashes;
        self.power_losses += o.power_losses;
        self.faults += o.faults;
        self.reopens += o.reopens;
        self.writes_acked += o.writes_acked;
        self.reads += o.reads;
        for (name, &n) in &o.marks {
            let m = self.marks.entry(name.clone()).or_default();
            m.seeds += 1;
            m.hits += n;
        }
        if let Some(first) = o.failures.first() {
            self.failures += 1;
            let tag = Check::of(first).map_or("unknown", |c| c.tag()).to_string();
            *self.failures_by_check.entry(tag).or_default() += 1;
            if self.failing.len() < MAX_FAILING_LISTED {
                let mut repro = repro_command_with(o.seed, &o.scenario, self.canary.as_deref());
                if let Some(c) = &self.commit {
                    repro.push_str(&format!("   # at commit {c}"));
                }
                self.failing.push(Failing {
                    seed: o.seed,
                    first_failure: first.clone(),
                    repro,
                });
            }
        }
    }

    pub fn finish(&mut self, seconds: f64) {
        self.seconds = seconds;
        let s = seconds.max(1e-9);
        self.seeds_per_s = self.seeds as f64 / s;
        self.ops_per_s = self.ops as f64 / s;
        self.peak_rss_bytes = peak_rss_bytes();
    }

    /// Records the scenario's claimed marks and which of them no seed reached.
    pub fn check_claims(&mut self, claims: &[String]) {
        self.claimed_marks = claims.to_vec();
        self.unreached_claims = claims
            .iter()
            .filter(|c| self.marks.get(*c).is_none_or(|m| m.seeds == 0))
            .cloned()
            .collect();
    }

    /// Fraction of seeds that hit `mark` (0 when none ran).
    pub fn mark_rate(&self, mark: &str) -> f64 {
        let seeds = self.marks.get(mark).map_or(0, |m| m.seeds);
        seeds as f64 / self.seeds.max(1) as f64
    }

    /// A markdown table of every known mark: seeds hitting it (and the share), total hits, and
    /// whether the scenario claims it. Marks never hit are listed too: that is the point.
    pub fn marks_table(&self, known: &[&str]) -> String {
        let mut out = String::from(
            "| mark | claimed | seeds hitting | share | hits |\n|---|:-:|---:|---:|---:|\n",
        );
        for name in known {
            let m = self.marks.get(*name).copied().unwrap_or_default();
            let claimed = if self.claimed_marks.iter().any(|c| c == name) {
                "yes"
            } else {
                ""
            };
            out.push_str(&format!(
                "| {name} | {claimed} | {} | {:.1}% | {} |\n",
                m.seeds,
                100.0 * self.mark_rate(name),
                m.hits
            ));
        }
        out
    }

    /// A markdown table of the campaign.
    pub fn table(&self) -> String {
        format!(
            "| scenario | seeds | ops | crashes | power losses | faults | reopens | reads | failures | seeds/s | ops/s |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            self.scenario,
            self.seeds,
            self.ops,
            self.crashes,
            self.power_losses,
            self.faults,
            self.reopens,
            self.reads,
            self.failures,
            self.seeds_per_s,
            self.ops_per_s
        )
    }
}

/// A line diff (longest common subsequence): `  ` common, `- ` expected only, `+ ` got only.
/// Runs of more than `context` common lines are elided.
pub fn line_diff(expected: &[String], got: &[String], context: usize) -> Vec<String> {
    let (n, m) = (expected.len(), got.len());
    // lcs[i][j] = LCS length of expected[i..] and got[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &String)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == got[j] {
            ops.push((' ', &expected[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', &got[j]));
            j += 1;
        } else {
            ops.push(('-', &expected[i]));
            i += 1;
        }
    }
    let changed: Vec<bool> = ops.iter().map(|(c, _)| *c != ' ').collect();
    let near_change = |k: usize| {
        let lo = k.saturating_sub(context);
        let hi = (k + context + 1).min(ops.len());
        changed[lo..hi].iter().any(|c| *c)
    };
    let mut out = Vec::new();
    let mut elided = 0;
    for (k, (c, line)) in ops.iter().enumerate() {
        if *c == ' ' && !near_change(k) {
            elided += 1;
            continue;
        }
        if elided > 0 {
            out.push(format!("  ... {elided} equal line(s)"));
            elided = 0;
        }
        out.push(format!("{c} {line}"));
    }
    if elided > 0 {
        out.push(format!("  ... {elided} equal line(s)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_mark_no_seed_hit_is_reported_unreached() {
        let mut s = Summary::default();
        let mut hit = Outcome::default();
        hit.marks.insert("wal-roll".into(), 3);
        s.add(&hit);
        s.add(&Outcome::default());
        s.check_claims(&["wal-roll".into(), "prune-deleted".into()]);
        assert_eq!(s.unreached_claims, vec!["prune-deleted".to_string()]);
        assert_eq!(s.marks["wal-roll"], MarkHits { seeds: 1, hits: 3 });
        assert!((s.mark_rate("wal-roll") - 0.5).abs() < 1e-9);
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_line_diff_marks_missing_and_extra_lines() {
        let d = line_diff(&v(&["a", "b", "c", "d"]), &v(&["a", "c", "d", "e"]), 0);
        assert_eq!(
            d,
            v(&[
                "  ... 1 equal line(s)",
                "- b",
                "  ... 2 equal line(s)",
                "+ e"
            ])
        );
    }

    #[test]
    fn a_failing_outcome_gets_a_repro_line() {
        let mut s = Summary::default();
        s.add(&Outcome {
            seed: 9,
            scenario: "steady".into(),
            failures: vec!["[recovery] x".into()],
            ..Default::default()
        });
        assert_eq!(s.failures_by_check.get("recovery"), Some(&1));
        assert!(s.failing[0].first_failure.starts_with("[recovery]"));
        assert_eq!(
            s.failing[0].repro,
            "cargo run --release -p receipt-sim -- repro --seed 9 --scenario steady"
        );
    }
}
