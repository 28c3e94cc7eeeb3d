//! Delta debugging over a failing plan: remove chunks of ops (halving the chunk size down to
//! single ops), keeping any removal after which the plan still fails the same check; then try
//! simpler settings (no readers, fewer receipts and logs). Bounded by `MAX_SHRINK_RUNS`.

use crate::check::Check;
use crate::exec::run_plan;
use crate::plan::{Op, Plan};

/// Plan executions one shrink may spend.
pub const MAX_SHRINK_RUNS: usize = 2_000;

/// The check the plan's first failure belongs to, if it fails.
pub fn failing_check(plan: &Plan) -> Option<Option<Check>> {
    run_plan(plan, false).failures.first().map(|f| Check::of(f))
}

pub fn fails(plan: &Plan) -> bool {
    failing_check(plan).is_some()
}

struct Shrinker {
    want: Option<Check>,
    runs: usize,
    max_runs: usize,
}

impl Shrinker {
    /// Still failing, and for the same reason (so shrinking cannot slide onto another bug).
    fn keeps_failing(&mut self, candidate: &Plan) -> bool {
        self.runs += 1;
        !candidate.ops.is_empty() && failing_check(candidate) == Some(self.want)
    }

    fn budget_left(&self) -> bool {
        self.runs < self.max_runs
    }
}

/// Returns the smallest failing plan found and the number of runs it took.
pub fn shrink(plan: &Plan) -> (Plan, usize) {
    shrink_with_budget(plan, MAX_SHRINK_RUNS)
}

/// As [`shrink`], spending at most `max_runs` plan executions.
pub fn shrink_with_budget(plan: &Plan, max_runs: usize) -> (Plan, usize) {
    let want = failing_check(plan).expect("only a failing plan can be shrunk");
    let mut s = Shrinker {
        want,
        runs: 1,
        max_runs,
    };
    let mut best = plan.clone();
    // 1. Ops: chunks, halving down to single ops.
    let mut chunk = best.ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progressed = false;
        while i < best.ops.len() && s.budget_left() {
            let mut candidate = best.clone();
            let end = (i + chunk).min(candidate.ops.len());
            candidate.ops.drain(i..end);
            if s.keeps_failing(&candidate) {
                best = candidate;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !s.budget_left() || (!progressed && chunk == 1) {
            break;
        }
        if !progressed {
            chunk = chunk.div_ceil(2).max(1).min(chunk - 1).max(1);
        }
    }
    // 2. Settings and op contents: each simplification kept only if the failure stays.
    if best.swarm.readers > 0 && s.budget_left() {
        let mut c = best.clone();
        c.swarm.readers = 0;
        if s.keeps_failing(&c) {
            best = c;
        }
    }
    for i in 0..best.ops.len() {
        if !s.budget_left() {
            break;
        }
        if let Op::Write { receipts, logs, .. } = &best.ops[i] {
            if *receipts > 1 || *logs > 0 {
                let mut c = best.clone();
                if let Op::Write { receipts, logs, .. } = &mut c.ops[i] {
                    *receipts = 1;
                    *logs = 0;
                }
                if s.keeps_failing(&c) {
                    best = c;
                }
            }
        }
    }
    (best, s.runs)
}
