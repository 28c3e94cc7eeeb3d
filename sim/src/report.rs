//! Campaign summaries and JSON reports.

use crate::exec::Outcome;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub base_seed: u64,
    pub seeds: usize,
    pub ops: usize,
    pub crashes: usize,
    pub faults: u64,
    pub reopens: usize,
    pub failures: usize,
    pub seconds: f64,
    pub seeds_per_s: f64,
    pub ops_per_s: f64,
    pub failing: Vec<Failing>,
}

#[derive(Debug, Serialize)]
pub struct Failing {
    pub seed: u64,
    pub first_failure: String,
    pub repro: String,
}

pub fn repro_command(seed: u64, scenario: &str) -> String {
    format!("cargo run --release -p receipt-sim -- repro --seed {seed} --scenario {scenario}")
}

impl Summary {
    pub fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        self.ops += o.ops;
        self.crashes += o.crashes;
        self.faults += o.faults;
        self.reopens += o.reopens;
        if let Some(first) = o.failures.first() {
            self.failures += 1;
            self.failing.push(Failing {
                seed: o.seed,
                first_failure: first.clone(),
                repro: repro_command(o.seed, &o.scenario),
            });
        }
    }

    pub fn table(&self) -> String {
        format!(
            "| scenario | seeds | ops | crashes | faults | reopens | failures | seeds/s | ops/s |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            self.scenario, self.seeds, self.ops, self.crashes, self.faults, self.reopens, self.failures, self.seeds_per_s, self.ops_per_s
        )
    }
}
