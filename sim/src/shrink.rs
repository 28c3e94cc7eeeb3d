//! Delta debugging over a failing plan's ops: remove chunks, then single ops, keeping any
//! removal after which the plan still fails. Bounded by `MAX_SHRINK_RUNS` plan executions.

use crate::exec::run_plan;
use crate::plan::Plan;

pub const MAX_SHRINK_RUNS: usize = 2_000;

pub fn fails(plan: &Plan) -> bool {
    !run_plan(plan, false).failures.is_empty()
}

/// Returns the smallest failing plan found and the number of runs it took.
pub fn shrink(plan: &Plan) -> (Plan, usize) {
    assert!(fails(plan), "only a failing plan can be shrunk");
    let mut best = plan.clone();
    let mut runs = 1;
    let mut chunk = best.ops.len().div_ceil(2).max(1);
    while chunk >= 1 && runs < MAX_SHRINK_RUNS {
        let mut i = 0;
        let mut progressed = false;
        while i < best.ops.len() && runs < MAX_SHRINK_RUNS {
            let mut candidate = best.clone();
            let end = (i + chunk).min(candidate.ops.len());
            candidate.ops.drain(i..end);
            runs += 1;
            if !candidate.ops.is_empty() && fails(&candidate) {
                best = candidate;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    (best, runs)
}
