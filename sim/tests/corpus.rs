//! The regression corpus: every plan in `seeds/` (each with a one-line reason) must pass, hit
//! every coverage mark it lists under `reaches` (the state it is kept for), and the
//! state it recovers at the end must match its committed insta snapshot (one compact line per
//! receipt and per log, in store order, plus the canonical state hash). A snapshot change means
//! recovery changed.

use receipt_sim::exec::run_plan;
use receipt_sim::plan::Plan;
use serde_json::json;
use std::path::Path;

fn corpus() -> Vec<(String, Plan)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("seeds/ exists") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            let plan = Plan::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!plan.reason.is_empty(), "{} has no reason", p.display());
            assert!(
                !plan.reason.contains('\n'),
                "{}: the reason is one line",
                p.display()
            );
            out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), plan));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "the corpus is empty");
    out
}

#[test]
fn every_corpus_plan_passes_and_recovers_its_snapshotted_state() {
    for (name, plan) in corpus() {
        let o = run_plan(&plan, false);
        assert!(o.failures.is_empty(), "{name}: {:?}", o.failures);
        let missed: Vec<&String> = plan
            .reaches
            .iter()
            .filter(|m| !o.marks.contains_key(*m))
            .collect();
        assert!(
            missed.is_empty(),
            "{name} no longer reaches {missed:?}, the state it is kept for ({})",
            plan.reason
        );
        let state = o.final_state.expect("recovered at least once");
        let (receipts, logs) = state.compact_lines();
        let view = json!({
            "reason": plan.reason,
            "ops": o.ops,
            "crashes": o.crashes,
            "reopens": o.reopens,
            "state_hash": format!("{:016x}", state.hash()),
            "receipts": receipts,
            "logs": logs,
        });
        insta::assert_json_snapshot!(name, view);
    }
}

#[test]
fn the_same_corpus_plan_twice_gives_the_same_trace_and_state() {
    for (name, plan) in corpus().into_iter().take(3) {
        let (a, b) = (run_plan(&plan, false), run_plan(&plan, false));
        assert_eq!(a.trace_hash, b.trace_hash, "{name}");
        assert_eq!(a.state_hash, b.state_hash, "{name}");
    }
}

/// Corpus plans named `canary-<bug>` are minimal plans that catch a planted bug: with the bug
/// active they must fail, with the same check their reason names.
#[cfg(feature = "canary")]
#[test]
fn every_canary_plan_fails_with_its_planted_bug_active() {
    use receipt_store::canary::{self, Canary};
    for (name, plan) in corpus() {
        let Some(bug) = name.strip_prefix("canary-") else {
            continue;
        };
        let c: Canary = serde_json::from_value(serde_json::Value::String(bug.to_string()))
            .unwrap_or_else(|_| panic!("{name}: no planted bug named {bug}"));
        let failures = std::thread::spawn(move || {
            canary::set(Some(c));
            run_plan(&plan, false).failures
        })
        .join()
        .unwrap();
        let first = failures
            .first()
            .unwrap_or_else(|| panic!("{name}: passes with {c:?} active"));
        let check = first.split(']').next().unwrap_or_default();
        let plan = corpus().into_iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(
            plan.reason.contains(&format!("{check}]")),
            "{name}: fails with {first}, its reason says: {}",
            plan.reason
        );
    }
}

/// Plans in `seeds/known-failing/` reproduce store bugs that are found but not fixed yet. They
/// must keep failing; once one passes, its bug is fixed: move it to `seeds/` (its reason
/// rewritten as a regression) and let insta record its snapshot.
#[test]
fn known_failing_plans_still_fail_until_their_bug_is_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/known-failing");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let plan = Plan::from_json(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert!(!plan.reason.is_empty(), "{} has no reason", p.display());
        let o = run_plan(&plan, false);
        assert!(
            !o.failures.is_empty(),
            "{} passes now: its bug is fixed; move it to seeds/ with a regression reason",
            p.display()
        );
    }
}
