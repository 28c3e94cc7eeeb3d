//! The regression corpus: every plan in `seeds/` must pass, and its recovered state must match
//! the committed insta snapshot (a compact canonical view plus the full state hash).

use receipt_sim::exec::run_plan;
use receipt_sim::plan::Plan;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

fn corpus() -> Vec<(String, Plan)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("seeds/ exists") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let plan: Plan = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            assert!(!plan.reason.is_empty(), "{} has no reason", p.display());
            out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), plan));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty());
    out
}

#[test]
fn every_corpus_plan_passes_and_recovers_the_snapshotted_state() {
    for (name, plan) in corpus() {
        let o = run_plan(&plan, false);
        assert!(o.failures.is_empty(), "{name}: {:?}", o.failures);
        let state = o.final_state.expect("recovered at least once");
        let mut blocks: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for r in &state.receipts {
            blocks.entry(r.block_number).or_default().0 += 1;
        }
        for l in &state.logs {
            blocks.entry(l.block_number).or_default().1 += 1;
        }
        let view = json!({
            "reason": plan.reason,
            "receipts": state.receipts.len(),
            "logs": state.logs.len(),
            "blocks": blocks.iter().map(|(b, (r, l))| format!("{b}: {r} receipts, {l} logs")).collect::<Vec<_>>(),
            "state_hash": format!("{:016x}", state.hash()),
        });
        insta::assert_json_snapshot!(name, view);
    }
}

#[test]
fn the_same_plan_twice_gives_the_same_trace_and_state() {
    for (name, plan) in corpus().into_iter().take(3) {
        let (a, b) = (run_plan(&plan, false), run_plan(&plan, false));
        assert_eq!(a.trace_hash, b.trace_hash, "{name}");
        assert_eq!(a.state_hash, b.state_hash, "{name}");
    }
}
