//! Simulator throughput: the `receipt-sim` release binary run as a child process on the default
//! scenario, varying `--jobs` and plan length; figures come from its JSON report.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Serialize, Debug)]
pub struct SimFigure {
    pub name: String,
    pub seeds: u64,
    pub jobs: usize,
    pub ops_per_plan: u64,
    pub seconds: f64,
    pub seeds_per_s: f64,
    pub ops_per_s: f64,
    pub ops_per_s_per_core: f64,
    pub failures: u64,
    pub peak_rss_bytes: Option<u64>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the simulator (release) and returns its path.
pub fn build_sim() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--release", "--quiet", "-p", "receipt-sim"])
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("cargo build -p receipt-sim failed".into());
    }
    Ok(root().join("target/release/receipt-sim"))
}

/// The default scenario with plans of `ops` ops, written to `dir`; returns its path.
fn scenario_with_ops(dir: &Path, ops: u64) -> String {
    let text = std::fs::read_to_string(root().join("scenarios/default.json")).expect("default");
    let mut sc: serde_json::Value = serde_json::from_str(&text).expect("scenario json");
    sc["name"] = format!("default-ops{ops}").into();
    sc["ops"] = ops.into();
    let path = dir.join(format!("default-ops{ops}.json"));
    std::fs::write(&path, sc.to_string()).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// One campaign of `seeds` seeds (from base seed 0) with `jobs` workers and `ops` ops per plan.
pub fn campaign(
    sim: &Path,
    tmp: &Path,
    seeds: u64,
    jobs: usize,
    ops: u64,
) -> Result<SimFigure, String> {
    let scenario = if ops == 80 {
        "default".to_string()
    } else {
        scenario_with_ops(tmp, ops)
    };
    let report = tmp.join(format!("sim-{seeds}-{jobs}-{ops}.json"));
    let out = Command::new(sim)
        .current_dir(root())
        .env("CI", "true") // no progress bar
        .args([
            "run",
            "--scenario",
            &scenario,
            "--seeds",
            &seeds.to_string(),
        ])
        .args(["--jobs", &jobs.to_string(), "--report"])
        .arg(&report)
        .output()
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&report)
        .map_err(|e| format!("no report ({e}): {}", String::from_utf8_lossy(&out.stdout)))?;
    let r: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    Ok(SimFigure {
        name: format!("default, {ops} ops/plan, --jobs {jobs}"),
        seeds,
        jobs,
        ops_per_plan: ops,
        seconds: f("seconds"),
        seeds_per_s: f("seeds_per_s"),
        ops_per_s: f("ops_per_s"),
        ops_per_s_per_core: f("ops_per_s") / jobs as f64,
        failures: r["failures"].as_u64().unwrap_or(0),
        peak_rss_bytes: r["peak_rss_bytes"].as_u64(),
    })
}
