//! `inspect::DirectoryView`: a read-only view of a data directory built from open's own
//! decisions. It must report exactly what `Store::open` then does, serve what the store then
//! serves, and change nothing.

use receipt_store::env::real::{RealEnv, RealFs};
use receipt_store::inspect::{DirectoryView, DiscardReason, RecoveryAction};
use receipt_store::wal::{WalTailKind, WAL_DIR_NAME};
use receipt_store::{Config, LogFilter, LogInput, QuarantineReason, ReceiptInput, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn receipt(block: u64, i: u32) -> ReceiptInput {
    let mut tx_hash = [0u8; 32];
    tx_hash[..8].copy_from_slice(&block.to_be_bytes());
    tx_hash[8..12].copy_from_slice(&i.to_be_bytes());
    ReceiptInput {
        tx_hash,
        tx_index: i,
        receipt_bytes: format!("receipt {block}/{i}").into_bytes(),
        logs: (0..=i as usize % 2)
            .map(|k| LogInput {
                address: [k as u8 + 1; 20],
                topics: vec![[7; 32], [block as u8; 32]],
                data: vec![k as u8; 3],
            })
            .collect(),
    }
}

/// A store in `dir` with windows of 4 blocks and two receipts in each of blocks 1..=`last`.
async fn store_with_blocks(dir: &Path, last: u64) -> (Store<RealEnv>, Config) {
    let config = Config::new(4, 1);
    let s = Store::open(RealEnv::default(), dir, config.clone())
        .await
        .unwrap();
    for b in 1..=last {
        s.write_receipts(b, vec![receipt(b, 0), receipt(b, 1)])
            .await
            .unwrap();
    }
    (s, config)
}

/// Every entry under `dir` with its bytes (directories map to `None`).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// A crashed store (pairs 0 and 4 closed, pair 8 open, blocks 8-10 only in the WAL) with a
/// finished lone file and a torn WAL tail: every kind of decision open makes is in the view,
/// in open's order, and open then does exactly that; the view serves what the store serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reports_what_open_then_does_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (s, config) = store_with_blocks(dir, 10).await;
    s.crash().await;
    std::fs::copy(dir.join("logs_4.parquet"), dir.join("logs_40.parquet")).unwrap();
    let segment = dir.join(WAL_DIR_NAME).join(
        std::fs::read_dir(dir.join(WAL_DIR_NAME))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .find(|n| n.to_string_lossy().ends_with(".wal"))
            .unwrap(),
    );
    let wal = std::fs::read(&segment).unwrap();
    std::fs::write(&segment, &wal[..wal.len() - 40]).unwrap();

    let before = tree(dir);
    let view = DirectoryView::load(&RealFs, dir, &config).await.unwrap();
    assert_eq!(tree(dir), before, "loading a view changes nothing");
    assert!(view.refusal().is_none());
    assert_eq!(
        view.actions(),
        &[
            RecoveryAction::Discard {
                paths: vec![
                    dir.join(".receipts_8.parquet.open"),
                    dir.join(".logs_8.parquet.open")
                ],
                reason: DiscardReason::OpenPairOfCrashedStore,
            },
            RecoveryAction::Quarantine {
                path: dir.join("logs_40.parquet"),
                reason: QuarantineReason::LonePairFile,
            },
        ]
    );
    let starts: Vec<u64> = view.closed_pairs().iter().map(|p| p.start).collect();
    assert_eq!(starts, vec![0, 4]);
    assert_eq!(view.open_floor(), 8);
    let tails = &view.wal_plan().tails;
    assert_eq!(tails.len(), 1);
    assert_eq!(tails[0].0, segment);
    assert_eq!(tails[0].2, WalTailKind::Torn);
    let window: BTreeSet<u64> = view
        .open_window()
        .receipts
        .iter()
        .map(|r| r.block_number)
        .collect();
    let all = LogFilter::default();
    let view_logs = view.get_logs(&all).await.unwrap();

    let s = Store::open(RealEnv::default(), dir, config).await.unwrap();
    let status = s.status().await.unwrap();
    let replayed: BTreeSet<u64> = s
        .take_replayed_blocks()
        .iter()
        .map(|b| b.block_number)
        .collect();
    assert_eq!(
        replayed, window,
        "the view's open window is what replay applied"
    );
    let cut = status
        .wal_tail_cut
        .as_ref()
        .expect("open cut the torn tail");
    assert_eq!((&cut.segment, cut.offset_bytes), (&tails[0].0, tails[0].1));
    let quarantined: Vec<&Path> = status
        .quarantined
        .iter()
        .filter(|q| q.reason == QuarantineReason::LonePairFile)
        .map(|q| q.original.as_path())
        .collect();
    assert_eq!(quarantined, vec![dir.join("logs_40.parquet").as_path()]);
    assert_eq!(s.get_logs(&all).await.unwrap(), view_logs);
    s.close().await.unwrap();
}

/// A finalization cut between its two renames: the view records the rename open will complete
/// and, without doing it, reads the pair under the name the file still has; it serves what the
/// store serves once open has completed the rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reads_a_pair_whose_rename_it_only_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (s, config) = store_with_blocks(dir, 6).await;
    s.close().await.unwrap();
    std::fs::rename(dir.join("logs_4.parquet"), dir.join(".logs_4.parquet.open")).unwrap();
    let before = tree(dir);
    let view = DirectoryView::load(&RealFs, dir, &config).await.unwrap();
    assert_eq!(tree(dir), before, "loading a view changes nothing");
    assert!(view.refusal().is_none());
    assert_eq!(
        view.actions(),
        &[RecoveryAction::CompleteRename {
            from: dir.join(".logs_4.parquet.open"),
            to: dir.join("logs_4.parquet"),
        }]
    );
    let starts: Vec<u64> = view.closed_pairs().iter().map(|p| p.start).collect();
    assert_eq!(starts, vec![0, 4]);
    let all = LogFilter::default();
    let view_logs = view.get_logs(&all).await.unwrap();
    assert_eq!(
        view_logs.len(),
        6 * 3,
        "every block's logs, pair 4's included"
    );
    let s = Store::open(RealEnv::default(), dir, config).await.unwrap();
    assert_eq!(s.get_logs(&all).await.unwrap(), view_logs);
    s.close().await.unwrap();
}

/// WAL records of a window a closed pair already holds (a crash between a rotation's
/// finalization and its WAL drop) are not part of the view's open window, as replay skips them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_views_open_window_leaves_out_records_closed_pairs_hold() {
    use receipt_store::{failpoints, FaultHook};
    use std::sync::{Arc, Mutex};
    struct Once(Mutex<bool>);
    impl FaultHook for Once {
        fn should_fail(&self, point: &'static str) -> bool {
            let mut armed = self.0.lock().unwrap();
            let fire = *armed && point == failpoints::AFTER_CLOSE_WRITERS;
            *armed &= !fire;
            fire
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = Config::new(4, 1);
    let hook = Arc::new(Once(Mutex::new(false)));
    let s = Store::open_with_hook(RealEnv::default(), dir, config.clone(), Some(hook.clone()))
        .await
        .unwrap();
    for b in 1..=7u64 {
        s.write_receipts(b, vec![receipt(b, 0)]).await.unwrap();
    }
    *hook.0.lock().unwrap() = true;
    assert!(s.write_receipts(8, vec![receipt(8, 0)]).await.is_err());
    s.crash().await;
    let view = DirectoryView::load(&RealFs, dir, &config).await.unwrap();
    assert_eq!(view.open_floor(), 8);
    let window: BTreeSet<u64> = view
        .open_window()
        .receipts
        .iter()
        .map(|r| r.block_number)
        .collect();
    assert_eq!(window, BTreeSet::from([8]), "blocks 4..=7 are in pair 4");
    let s = Store::open(RealEnv::default(), dir, config).await.unwrap();
    let replayed: BTreeSet<u64> = s
        .take_replayed_blocks()
        .iter()
        .map(|b| b.block_number)
        .collect();
    assert_eq!(replayed, window);
    s.close().await.unwrap();
}
