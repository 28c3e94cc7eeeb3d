//! The store on madsim's runtime (`receipt_sim::madsim_env`): time and tasks from madsim, the
//! filesystem (and its power loss) from `SimFs`. Built only with `--cfg madsim`:
//!
//! ```text
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim cargo test -p receipt-sim --test on_madsim
//! ```
//!
//! `#[madsim::test]` tests take their seed from `MADSIM_TEST_SEED` (default: the wall clock, so
//! pin it) and run `MADSIM_TEST_NUM` consecutive seeds; the tests that build the runtime by hand
//! read `MADSIM_TEST_SEED` too. Every test prints its seed.
#![cfg(madsim)]

use madsim::runtime::{Handle, Runtime};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use receipt_sim::exec::{Outcome, PlanEnv, Trace};
use receipt_sim::fs::SimFs;
use receipt_sim::madsim_env::{run_plan, MadsimEnv};
use receipt_sim::plan::{generate, load_scenario, Op, Plan};
use receipt_store::env::{Clock, Env};
use receipt_store::{Config, LogInput, ReceiptInput, Store, SyncPolicy, TxHash};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Scenarios every madsim seed runs a generated plan of: crashes and power loss inside and
/// between ops, fs faults and failpoints, readers racing the prune ticker.
const SCENARIOS: &[&str] = &[
    "default",
    "power-loss",
    "crash-storm",
    "readers-vs-prune",
    "prune-heavy",
];
/// The seed of the hand-built runtimes when `MADSIM_TEST_SEED` is not set.
const DEFAULT_SEED: u64 = 1;
const DIR: &str = "/data";

fn seed_from_env() -> u64 {
    match std::env::var("MADSIM_TEST_SEED") {
        Ok(s) => s.parse().expect("MADSIM_TEST_SEED should be an integer"),
        Err(_) => DEFAULT_SEED,
    }
}

/// Runs `f` on a madsim runtime seeded with `seed`, on a fresh OS thread: a thread that has
/// made a `RandomState` before the runtime starts would make HashMap order random again.
fn on_fresh_runtime<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    seed: u64,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(f())
    })
    .join()
    .unwrap_or_else(|e| {
        eprintln!("madsim seed {seed} panicked");
        std::panic::resume_unwind(e)
    })
}

/// A receipt with one log; the hash names the block and index, the bytes name the block, the
/// index and `tag` (so a rejected write's receipt differs from an accepted one's).
fn receipt(block: u64, i: u32, tag: &str) -> ReceiptInput {
    let mut tx_hash = [0u8; 32];
    tx_hash[..8].copy_from_slice(&block.to_be_bytes());
    tx_hash[8..12].copy_from_slice(&i.to_be_bytes());
    tx_hash[12..12 + tag.len().min(20)].copy_from_slice(&tag.as_bytes()[..tag.len().min(20)]);
    ReceiptInput {
        tx_hash,
        tx_index: i,
        receipt_bytes: format!("{tag} {block}/{i}").into_bytes(),
        logs: vec![LogInput {
            address: [1; 20],
            topics: vec![[7; 32]],
            data: vec![i as u8; 3],
        }],
    }
}

/// Everything the store holds, as tx hash -> (block, receipt bytes).
async fn everything<E: Env>(store: &Store<E>, last: u64) -> BTreeMap<TxHash, (u64, Vec<u8>)> {
    store
        .receipts_in_range(0, last)
        .await
        .expect("reading every receipt back")
        .into_iter()
        .map(|r| (r.tx_hash, (r.block_number, r.receipt_bytes)))
        .collect()
}

/// The receipts of `a` that `b` lacks or holds otherwise, as "block: receipt bytes".
fn differences(
    a: &BTreeMap<TxHash, (u64, Vec<u8>)>,
    b: &BTreeMap<TxHash, (u64, Vec<u8>)>,
) -> Vec<String> {
    a.iter()
        .filter(|(hash, v)| b.get(*hash) != Some(*v))
        .map(|(_, (block, bytes))| format!("{block}: {}", String::from_utf8_lossy(bytes)))
        .collect()
}

/// (a) A generated plan of each scenario, run on madsim's scheduler and clock, passes every
/// check of the seeded executor: after each crash and power loss the recovered state is a
/// prefix of the writes between the model's lower bound (every acked write, under `always`)
/// and everything issued, reads match the model, no task or handle outlives a crash.
#[madsim::test]
async fn generated_plans_pass_every_check_on_madsims_scheduler_and_clock() {
    let seed = Handle::current().seed();
    eprintln!("madsim seed {seed} (reproduce: MADSIM_TEST_SEED={seed})");
    for name in SCENARIOS {
        let sc = load_scenario(name).unwrap();
        // Swarm testing switches op kinds off per seed: for the power-loss scenario take the
        // first plan from this seed on that has a power loss op.
        let plan = (seed..)
            .map(|s| generate(s, &sc))
            .find(|p| *name != "power-loss" || p.ops.contains(&Op::PowerLoss))
            .expect("some seed draws a power loss");
        let o = run_plan(&plan, Trace::Off).await;
        eprintln!(
            "  {name} (plan seed {}): {} ops, {} writes acked, {} reads, {} crashes ({} power losses), {} reopens, {} faults",
            plan.seed, o.ops, o.writes_acked, o.reads, o.crashes, o.power_losses, o.reopens, o.faults
        );
        assert!(
            o.failures.is_empty(),
            "scenario {name}, madsim seed {seed}, plan seed {}: {:#?}",
            plan.seed,
            o.failures
        );
        assert!(
            o.writes_acked > 0 && o.reopens > 0,
            "scenario {name}, seed {seed}: a plan that wrote nothing or never reopened checks little: {o:?}"
        );
        if *name == "power-loss" {
            assert!(
                o.power_losses > 0,
                "seed {seed}: the plan lost no power, so recovery from power loss went unchecked"
            );
        }
    }
}

/// (a, by hand) Writes of random sizes across window rotations, with a power loss (SimFs drops
/// what was not synced, tears tails) and a reopen between rounds: under `always` the store
/// holds exactly the receipts it acked, byte for byte, and none of the rejected stale writes.
/// The expectation is the test's own ledger of acked writes, not the store's.
#[madsim::test]
async fn exactly_the_acked_receipts_survive_power_losses_between_opens() {
    let seed = Handle::current().seed();
    eprintln!("madsim seed {seed} (reproduce: MADSIM_TEST_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fs = SimFs::new(512);
    let env = MadsimEnv::new(fs.clone());
    let mut config = Config::new(3, 2);
    config.sync_policy = SyncPolicy::Always;
    config.wal_segment_bytes = 2048;
    let mut acked: BTreeMap<TxHash, (u64, Vec<u8>)> = BTreeMap::new();
    let mut next = 0u64;
    const POWER_LOSSES: usize = 6;
    for round in 0..=POWER_LOSSES {
        let store = Store::open(env.clone(), DIR, config.clone()).await.unwrap();
        let got = everything(&store, next + 10).await;
        let (missing, extra) = (differences(&acked, &got), differences(&got, &acked));
        assert!(
            missing.is_empty() && extra.is_empty(),
            "seed {seed}, after power loss {round}: acked and missing: {missing:?}; \
             recovered but not acked (or with other bytes): {extra:?}"
        );
        if round == POWER_LOSSES {
            store.close().await.unwrap();
            break;
        }
        for _ in 0..rng.random_range(1..=7u32) {
            let receipts: Vec<ReceiptInput> = (0..rng.random_range(1..=3u32))
                .map(|i| receipt(next, i, "acked"))
                .collect();
            store.write_receipts(next, receipts.clone()).await.unwrap();
            for r in receipts {
                acked.insert(r.tx_hash, (next, r.receipt_bytes));
            }
            // Below the last written block: must be refused and leave nothing behind.
            if let Some(below) = next.checked_sub(1).filter(|_| rng.random_bool(0.3)) {
                let stale = vec![receipt(below, 9, "stale")];
                assert!(store.write_receipts(below, stale).await.is_err());
            }
            next += rng.random_range(1..=2u64);
        }
        env.kill_tasks().await;
        drop(store);
        fs.power_loss(&mut rng);
    }
    assert!(
        next >= 6,
        "the rounds wrote across at least two windows of 3 blocks"
    );
}

/// (b) The coordinator's prune tick sleeps on madsim's clock: with an hour's interval, nothing
/// is pruned a second before the hour, the old windows are pruned a second after it, and the
/// whole run takes (far) less than a minute of wall time.
#[test]
fn the_prune_tick_fires_on_madsims_clock_after_the_interval_and_not_before() {
    let seed = seed_from_env();
    eprintln!("madsim seed {seed}");
    let interval = Duration::from_secs(3600);
    let wall = std::time::Instant::now(); // outside the runtime: the real clock
    let (before, after, slept) = on_fresh_runtime(seed, move || async move {
        let fs = SimFs::new(0);
        let env = MadsimEnv::new(fs.clone());
        let mut config = Config::new(2, 1);
        config.keep_recent = 2;
        config.prune_interval = interval;
        // The test waits on madsim's own clock, not on the env's under test.
        let opened_at = madsim::time::Instant::now();
        let env_opened_at = env.clock().now();
        let store = Store::open(env.clone(), DIR, config).await.unwrap();
        for b in 0..10 {
            store
                .write_receipts(b, vec![receipt(b, 0, "acked")])
                .await
                .unwrap();
        }
        madsim::time::sleep_until(opened_at + interval - Duration::from_secs(1)).await;
        let before = store.status().await.unwrap().closed_pairs;
        madsim::time::sleep_until(opened_at + interval + Duration::from_secs(1)).await;
        let after = store.status().await.unwrap().closed_pairs;
        let slept = env.clock().now() - env_opened_at;
        store.close().await.unwrap();
        (before, after, slept)
    });
    assert_eq!(
        before,
        vec![0, 2, 4, 6],
        "nothing may be pruned before the interval"
    );
    // keep_recent 2 below the latest block 9: every pair wholly below block 7 goes.
    assert_eq!(after, vec![6], "the tick after the interval prunes");
    assert!(
        slept > interval && slept < interval + Duration::from_secs(2),
        "the env's clock says {slept:?} passed while madsim's passed the interval and a second"
    );
    assert!(
        wall.elapsed() < Duration::from_secs(60),
        "an hour of virtual time took {:?} of wall time",
        wall.elapsed()
    );
}

/// What two runs of a plan are compared on: the outcome, its event trace (with virtual times)
/// and the virtual time at the end, which madsim advances by a seeded 50-100 ns per poll, so it
/// fingerprints the schedule.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    failures: Vec<String>,
    trace_hash: u64,
    state_hash: u64,
    crash_images: Vec<u64>,
    reads: usize,
    marks: BTreeMap<String, u64>,
    trace: Vec<String>,
    end: Duration,
}

fn fingerprint(plan: &Plan, madsim_seed: u64) -> Fingerprint {
    let plan = plan.clone();
    on_fresh_runtime(madsim_seed, move || async move {
        let o: Outcome = run_plan(&plan, Trace::Events).await;
        Fingerprint {
            failures: o.failures,
            trace_hash: o.trace_hash,
            state_hash: o.state_hash,
            crash_images: o.crash_images,
            reads: o.reads,
            marks: o.marks,
            trace: o.trace,
            end: madsim::time::TimeHandle::current().elapsed(),
        }
    })
}

/// (c) The same madsim seed gives the same run twice (outcome, trace with virtual times, end
/// time), and another madsim seed schedules the same plan differently, so the comparison is
/// not vacuous.
#[test]
fn the_same_madsim_seed_replays_a_plan_identically_and_another_schedules_it_differently() {
    let base = seed_from_env();
    let sc = load_scenario("readers-vs-prune").unwrap();
    // A plan with concurrent readers: their interleaving with the writer is what madsim picks.
    let plan = (base..)
        .map(|s| generate(s, &sc))
        .find(|p| p.swarm.readers >= 2)
        .expect("some seed draws readers");
    eprintln!("madsim seed {base}, plan seed {}", plan.seed);
    let a = fingerprint(&plan, base);
    assert!(a.failures.is_empty(), "{:#?}", a.failures);
    assert!(a.reads > 0, "the readers read");
    let b = fingerprint(&plan, base);
    assert_eq!(a, b, "madsim seed {base} gave two different runs");
    let c = fingerprint(&plan, base.wrapping_add(1));
    assert_ne!(
        a.end,
        c.end,
        "madsim seeds {base} and {} scheduled the plan identically",
        base.wrapping_add(1)
    );
}

/// A crash kills the store's coordinator at once: after `kill_tasks` no task spawned through
/// the env is alive, calls fail, and once the handle is dropped no file handle is open (madsim
/// drops an aborted task's future only when it next schedules it; `kill_tasks` waits for that).
#[madsim::test]
async fn killing_the_store_tasks_drops_the_coordinator_and_its_file_handles() {
    let seed = Handle::current().seed();
    eprintln!("madsim seed {seed}");
    let fs = SimFs::new(0);
    let env = MadsimEnv::new(fs.clone());
    let store = Store::open(env.clone(), DIR, Config::new(4, 1))
        .await
        .unwrap();
    store
        .write_receipts(0, vec![receipt(0, 0, "acked")])
        .await
        .unwrap();
    assert_eq!(env.live_tasks(), 1, "the coordinator runs");
    assert!(
        fs.open_handle_count() > 0,
        "the coordinator holds its files"
    );
    env.kill_tasks().await;
    assert_eq!(env.live_tasks(), 0, "no task survives kill_tasks");
    assert_eq!(
        fs.open_handle_count(),
        0,
        "the coordinator's files are closed when kill_tasks returns: {:?}",
        fs.open_handles()
    );
    assert!(store
        .write_receipts(1, vec![receipt(1, 0, "acked")])
        .await
        .is_err());
    drop(store);
    assert_eq!(
        fs.open_handle_count(),
        0,
        "handles left open: {:?}",
        fs.open_handles()
    );
    assert!(fs
        .file_sizes()
        .keys()
        .any(|p| p.starts_with(Path::new(DIR))));
}

#[test]
#[should_panic(expected = "inside a madsim runtime")]
fn a_madsim_env_made_outside_the_runtime_is_refused() {
    let _ = MadsimEnv::new(SimFs::new(0));
}
