//! Harness strength, measured: every planted bug (`receipt_store::canary`) runs against the
//! scenario meant to catch it, and the share of seeds that catch it is reported. A planted bug
//! caught by fewer than [`MIN_CATCH_RATE`] of the seeds would be missed by a short CI run by
//! luck, so that counts as a harness failure too. Only with the `canary` feature.

use crate::exec::run_plan;
use crate::plan::{generate, load_scenario};
use receipt_store::canary::{self, Canary};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Least share of a scenario's seeds that must catch its planted bug.
pub const MIN_CATCH_RATE: f64 = 0.05;

/// Each planted bug and the scenario that exists to catch it.
pub const TABLE: [(Canary, &str); 19] = [
    (Canary::AckBeforeWalFsync, "power-loss"),
    (Canary::SkipRotationDirSync, "power-loss"),
    (Canary::DropWalBeforePairDurable, "power-loss"),
    (Canary::TrustRetriedFsync, "fsync-failure"),
    (Canary::ReplayBoundaryOffByOne, "crash-storm"),
    (Canary::LeakHandleOnFailedOpen, "crash-storm"),
    (Canary::DeleteUnderLiveSnapshot, "readers-vs-prune"),
    (Canary::DirSyncAfterWalDrop, "power-loss"),
    (Canary::MissingTopicMatches, "default"),
    (Canary::ZeroHeightSentinel, "edges"),
    (Canary::SkipReusedSegmentSync, "crash-storm"),
    (Canary::SkipNewestOpenRowGroup, "default"),
    (Canary::PageMinExclusive, "default"),
    (Canary::JobPagesFromFirstRun, "default"),
    (Canary::LeakReplacedWalSegments, "crash-storm"),
    (Canary::PartialKeyRowSort, "default"),
    (Canary::ChunkUnpublishedWhileEncoding, "default"),
    (Canary::PrefixPairRowSort, "default"),
    (Canary::TrustEverySegmentDurable, "fsync-failure"),
];

#[derive(Debug, Clone, Serialize)]
pub struct CatchRate {
    pub canary: Canary,
    pub scenario: String,
    pub seeds: u64,
    pub caught: u64,
    /// The first seed that caught it and its first failure.
    pub first: Option<(u64, String)>,
    /// Whether that seed passes with no planted bug (it must: the failure is the bug's).
    pub first_passes_without: Option<bool>,
}

impl CatchRate {
    pub fn rate(&self) -> f64 {
        self.caught as f64 / self.seeds.max(1) as f64
    }

    pub fn ok(&self) -> bool {
        self.rate() >= MIN_CATCH_RATE && self.first_passes_without == Some(true)
    }
}

/// Runs seeds `0..seeds` of `scenario` with `c` planted, on `jobs` threads.
pub fn measure(c: Canary, scenario: &str, seeds: u64, jobs: usize) -> Result<CatchRate, String> {
    let sc = load_scenario(scenario)?;
    let next = AtomicU64::new(0);
    let caught = AtomicUsize::new(0);
    let first: Mutex<Option<(u64, String)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                canary::set(Some(c));
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds {
                        break;
                    }
                    let o = run_plan(&generate(seed, &sc), false);
                    if let Some(f) = o.failures.first() {
                        caught.fetch_add(1, Ordering::Relaxed);
                        let mut first = first.lock().unwrap();
                        if first.as_ref().is_none_or(|(s0, _)| seed < *s0) {
                            *first = Some((seed, f.clone()));
                        }
                    }
                }
                canary::set(None);
            });
        }
    });
    let first = first.into_inner().unwrap();
    let first_passes_without = first.as_ref().map(|(seed, _)| {
        let sc = sc.clone();
        let seed = *seed;
        std::thread::spawn(move || {
            canary::set(None);
            run_plan(&generate(seed, &sc), false).failures.is_empty()
        })
        .join()
        .expect("clean rerun")
    });
    Ok(CatchRate {
        canary: c,
        scenario: scenario.to_string(),
        seeds,
        caught: caught.into_inner() as u64,
        first,
        first_passes_without,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_planted_bug_has_a_scenario_that_loads() {
        for c in Canary::ALL {
            let (_, sc) = TABLE
                .iter()
                .find(|(t, _)| *t == c)
                .unwrap_or_else(|| panic!("{c:?} has no scenario in TABLE"));
            load_scenario(sc).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }
}
