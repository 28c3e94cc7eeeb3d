//! Integration tests of the store core on real temporary directories.

use receipt_store::env::real::RealEnv;
use receipt_store::{failpoints, Config, Error, FaultHook, LogFilter, Store, SyncPolicy};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod common;
use common::receipt;

type S = Store<RealEnv>;

fn config(mbf: u64, bfi: u64) -> Config {
    Config::new(mbf, bfi)
}

async fn open(dir: &Path, c: Config) -> S {
    Store::open(RealEnv::default(), dir, c).await.expect("open")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn wal_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open descriptors of this process that point into `dir` (exact even with parallel tests).
fn fds_under(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .collect()
}

async fn all_blocks(s: &S) -> Vec<u64> {
    s.receipts_in_range(0, u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|r| r.block_number)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_rotates_at_boundaries_and_rejects_going_back() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=3 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    assert_eq!(
        names(tmp.path()),
        vec![".logs_0.parquet.open", ".receipts_0.parquet.open"],
        "the open pair is named so that `*.parquet` globs skip it"
    );
    s.write_receipts(4, vec![receipt(4, 0, 1)]).await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(st.closed_pairs, vec![0]);
    assert_eq!(st.open_pair, Some(4));
    assert_eq!(
        wal_segments(tmp.path()),
        1,
        "the WAL keeps only the boundary record's segment"
    );
    s.write_receipts(6, vec![]).await.unwrap();
    assert_eq!(s.status().await.unwrap().last_seen_block, Some(6));
    s.write_receipts(8, vec![]).await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(st.closed_pairs, vec![0, 4], "empty boundary block rotates");
    assert_eq!(st.open_pair, Some(8));
    let err = s
        .write_receipts(5, vec![receipt(5, 0, 0)])
        .await
        .unwrap_err()
        .to_string();
    for part in ["non-monotonic", "height 5", "last seen block 8"] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    assert_eq!(
        all_blocks(&s).await,
        vec![1, 2, 3, 4],
        "nothing of the rejected write was staged"
    );
    // The closed pair 0 holds blocks 1-3, pair 4 holds block 4 only.
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.closed
            .iter()
            .map(|p| (p.start, p.max_block))
            .collect::<Vec<_>>(),
        vec![(0, Some(3)), (4, Some(4))]
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_follow_the_flush_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(100, 2)).await;
    for b in 1..=7 {
        s.write_receipts(b, vec![receipt(b, 0, 0), receipt(b, 1, 0)])
            .await
            .unwrap();
    }
    s.close().await.unwrap();
    let bytes = std::fs::read(tmp.path().join("receipts_0.parquet")).unwrap();
    let f = receipt_store::parquet::reader::ParquetFile::open(
        Path::new("receipts_0.parquet"),
        receipt_store::parquet::reader::FileKind::Receipts,
        bytes,
    )
    .unwrap();
    assert!(f.checksummed);
    assert_eq!(f.num_rows(), 14);
    // Flushes fire at the first receipt of blocks 3, 5 and 7, plus the final flush at close.
    assert_eq!(f.row_groups.len(), 4);
}

/// Replay stages the window without encoding it (open returns sooner); the idle coordinator
/// writes the sealed row groups afterwards, and the pair closes with the same row groups a live
/// run writes (`row_groups_follow_the_flush_interval`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_window_is_served_at_once_and_written_by_the_idle_coordinator() {
    use receipt_store::files::open_file_name;
    use receipt_store::parquet::reader::{FileKind, ParquetFile};
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(100, 2)).await;
    for b in 1..=7 {
        s.write_receipts(b, vec![receipt(b, 0, 1), receipt(b, 1, 0)])
            .await
            .unwrap();
    }
    s.crash().await;
    let s = open(tmp.path(), config(100, 2)).await;
    assert_eq!(s.take_replayed_blocks().len(), 7);
    assert_eq!(
        all_blocks(&s).await,
        vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    );
    // Blocks 1..=6 are three sealed row groups; block 7 stays buffered. Nothing but the idle
    // coordinator writes them: no write, no flush is asked for.
    let open_receipts = tmp.path().join(open_file_name(FileKind::Receipts, 0));
    let len = || std::fs::metadata(&open_receipts).map_or(0, |m| m.len());
    // A new pair's file holds only the 4-byte parquet magic.
    let empty = 4;
    const POLLS_MAX: usize = 500;
    let mut grown = false;
    for _ in 0..POLLS_MAX {
        // Each status waits for the chunk being written, if any.
        s.status().await.unwrap();
        if len() > empty {
            grown = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        grown,
        "the sealed row groups were never written ({empty} bytes)"
    );
    s.write_receipts(8, vec![receipt(8, 0, 0)]).await.unwrap();
    s.close().await.unwrap();
    // The same blocks written live, without a crash.
    let live = tempfile::tempdir().unwrap();
    let s = open(live.path(), config(100, 2)).await;
    for b in 1..=7 {
        s.write_receipts(b, vec![receipt(b, 0, 1), receipt(b, 1, 0)])
            .await
            .unwrap();
    }
    s.write_receipts(8, vec![receipt(8, 0, 0)]).await.unwrap();
    s.close().await.unwrap();
    let groups = |dir: &Path| {
        let f = ParquetFile::open(
            Path::new("receipts_0.parquet"),
            FileKind::Receipts,
            std::fs::read(dir.join("receipts_0.parquet")).unwrap(),
        )
        .unwrap();
        f.row_groups
            .iter()
            .map(|g| (g.rows, g.min_block, g.max_block))
            .collect::<Vec<_>>()
    };
    // A flush fires at the first receipt of blocks 3, 5 and 7 (that receipt included).
    let want = [(5, 1, 3), (4, 3, 5), (4, 5, 7), (2, 7, 8)].map(|(n, a, b)| (n, Some(a), Some(b)));
    assert_eq!(groups(live.path()), want);
    assert_eq!(groups(tmp.path()), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_clean_close_restores_data_and_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=6 {
        s.write_receipts(b, vec![receipt(b, 0, 2)]).await.unwrap();
    }
    s.close().await.unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    assert!(
        s.take_replayed_blocks().is_empty(),
        "a clean close leaves nothing to replay"
    );
    let st = s.status().await.unwrap();
    assert_eq!(st.last_seen_block, Some(6));
    assert_eq!(st.latest_version, Some(6));
    assert_eq!(st.file_start_block, 7);
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3, 4, 5, 6]);
    let err = s
        .write_receipts(3, vec![receipt(3, 9, 0)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-monotonic")
            && err.contains("height 3")
            && err.contains("last seen block 6"),
        "{err}"
    );
    let err = s
        .write_receipts(6, vec![receipt(6, 9, 0)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-monotonic") && err.contains("height 6"),
        "a sealed block takes no more receipts: {err}"
    );
    s.write_receipts(7, vec![receipt(7, 0, 0)]).await.unwrap();
    s.write_receipts(8, vec![receipt(8, 0, 0)]).await.unwrap();
    assert_eq!(s.status().await.unwrap().closed_pairs, vec![0, 4, 7]);
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_reopen_replays_the_open_window_from_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=6 {
        s.write_receipts(b, vec![receipt(b, 0, 1), receipt(b, 1, 1)])
            .await
            .unwrap();
    }
    s.crash().await;
    assert!(
        s.close().await.unwrap_err().to_string().contains("crash"),
        "close after crash says so"
    );
    let s = open(tmp.path(), config(4, 1)).await;
    let replayed = s.take_replayed_blocks();
    assert_eq!(
        replayed.iter().map(|b| b.block_number).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(
        replayed[0].tx_hashes,
        vec![receipt(4, 0, 0).tx_hash, receipt(4, 1, 0).tx_hash]
    );
    assert!(s.take_replayed_blocks().is_empty(), "take-and-clear");
    assert_eq!(
        all_blocks(&s).await,
        vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    );
    let logs = s
        .get_logs(&LogFilter {
            from_block: Some(5),
            to_block: Some(5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        logs.iter().map(|l| l.log_index).collect::<Vec<_>>(),
        vec![0, 1],
        "log indices are block-wide"
    );
    s.close().await.unwrap();
}

/// Writes acked after a replay continue the WAL's sequence, so they survive the next crash and
/// replay as well as the replayed ones do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acked_after_a_replay_survive_the_next_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    for round in 0..3u64 {
        let s = open(tmp.path(), config(100, 1)).await;
        for b in round * 3 + 1..=round * 3 + 3 {
            s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
            acked.push(b);
        }
        assert_eq!(all_blocks(&s).await, acked, "round {round}");
        s.crash().await;
    }
    let s = open(tmp.path(), config(100, 1)).await;
    assert_eq!(all_blocks(&s).await, acked);
    s.close().await.unwrap();
}

/// A block written in two calls is one replayed block holding both calls' hashes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_written_in_two_calls_replays_as_one_block() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(100, 1)).await;
    s.write_receipts(1, vec![receipt(1, 0, 1)]).await.unwrap();
    s.write_receipts(2, vec![receipt(2, 0, 1)]).await.unwrap();
    s.write_receipts(2, vec![receipt(2, 1, 1)]).await.unwrap();
    s.crash().await;
    let s = open(tmp.path(), config(100, 1)).await;
    let replayed = s.take_replayed_blocks();
    assert_eq!(
        replayed
            .iter()
            .map(|b| (b.block_number, b.tx_hashes.clone()))
            .collect::<Vec<_>>(),
        vec![
            (1, vec![receipt(1, 0, 0).tx_hash]),
            (2, vec![receipt(2, 0, 0).tx_hash, receipt(2, 1, 0).tx_hash]),
        ]
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_footerless_trailing_pair_is_deleted_only_when_the_wal_holds_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=5 {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    s.crash().await;
    // The open pair 4 has no footer: unfinished, and its rows are in the WAL.
    let s = open(tmp.path(), config(4, 1)).await;
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3, 4, 5]);
    s.close().await.unwrap();
    // A trailing pair without a footer that no WAL record covers (garbage here; a rotted
    // trailer in real life) is refused, naming the file, and left untouched: deleting it could
    // destroy the only copy of its blocks.
    std::fs::write(tmp.path().join("receipts_12.parquet"), b"garbage").unwrap();
    std::fs::write(tmp.path().join("logs_12.parquet"), b"").unwrap();
    let err = Store::open(RealEnv::default(), tmp.path(), config(4, 1))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("receipts_12.parquet"), "{err}");
    let n = names(tmp.path());
    assert!(n.iter().any(|x| x == "receipts_12.parquet"), "{n:?}");
    // Once an operator moves them away, the store opens with every block.
    std::fs::remove_file(tmp.path().join("receipts_12.parquet")).unwrap();
    std::fs::remove_file(tmp.path().join("logs_12.parquet")).unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3, 4, 5]);
    s.close().await.unwrap();
}

/// A store from before issue 9 kept its open pair under the final names: after a crash that
/// pair has no footer, and open removes it only because the WAL still holds rows of its window
/// (which ends where the next pair on disk starts); replay then rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_stores_final_named_open_pair_is_removed_when_the_wal_holds_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=5 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    s.crash().await;
    for kind in ["receipts", "logs"] {
        std::fs::rename(
            tmp.path().join(format!(".{kind}_4.parquet.open")),
            tmp.path().join(format!("{kind}_4.parquet")),
        )
        .unwrap();
    }
    let s = open(tmp.path(), config(4, 1)).await;
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3, 4, 5]);
    let st = s.status().await.unwrap();
    assert_eq!((st.closed_pairs, st.open_pair), (vec![0], Some(4)));
    assert!(st.quarantined.is_empty(), "{:?}", st.quarantined);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_rot_in_a_closed_file_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=9 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    s.close().await.unwrap();
    let p = tmp.path().join("receipts_0.parquet");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    let err = s
        .receipts_in_range(0, u64::MAX)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("receipts_0.parquet") && err.contains("corrupt"),
        "{err}"
    );
    // Rot in the trailing pair is found at open and refuses it, without deleting anything.
    s.close().await.unwrap();
    let p = tmp.path().join("receipts_8.parquet");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let before = names(tmp.path());
    let err = Store::open(RealEnv::default(), tmp.path(), config(4, 1))
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("receipts_8.parquet"), "{err}");
    assert_eq!(
        names(tmp.path()),
        before,
        "a corrupt finalized file is never deleted"
    );
    assert!(fds_under(tmp.path()).is_empty());
}

struct ArmOnce {
    point: &'static str,
    armed: Mutex<bool>,
}

impl FaultHook for ArmOnce {
    fn should_fail(&self, point: &'static str) -> bool {
        let mut a = self.armed.lock().unwrap();
        if *a && point == self.point {
            *a = false;
            return true;
        }
        false
    }
}

/// Writes blocks `1..failing` (windows of 4), makes the write of block `failing` fail at
/// `point`, then crashes the store.
async fn crash_after_a_failed_write(dir: &Path, point: &'static str, failing: u64) {
    let hook = Arc::new(ArmOnce {
        point,
        armed: Mutex::new(false),
    });
    let s = Store::open_with_hook(RealEnv::default(), dir, config(4, 1), Some(hook.clone()))
        .await
        .unwrap();
    for b in 1..failing {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    *hook.armed.lock().unwrap() = true;
    let r = s
        .write_receipts(failing, vec![receipt(failing, 0, 1)])
        .await;
    assert!(matches!(r, Err(Error::Failpoint(_))), "{r:?}");
    s.crash().await;
}

/// A boundary block whose WAL record landed before its rotation could run (the write failed
/// right after the append, then the process died): replay meets a new window and rotates there,
/// so every pair holds only its own window's blocks, as a live run leaves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rotates_at_a_boundary_record_the_crash_left_unrotated() {
    let tmp = tempfile::tempdir().unwrap();
    crash_after_a_failed_write(tmp.path(), failpoints::AFTER_WAL_APPEND, 4).await;
    let s = open(tmp.path(), config(4, 1)).await;
    let replayed: Vec<u64> = s
        .take_replayed_blocks()
        .iter()
        .map(|b| b.block_number)
        .collect();
    assert_eq!(
        replayed,
        vec![1, 2, 3, 4],
        "the appended record is replayed"
    );
    let st = s.status().await.unwrap();
    assert_eq!(
        st.closed_pairs,
        vec![0],
        "replay closed window 0 at block 4"
    );
    assert_eq!(st.open_pair, Some(4));
    s.write_receipts(5, vec![receipt(5, 0, 1)]).await.unwrap();
    s.close().await.unwrap();
    for (name, want) in [
        ("receipts_0.parquet", (1, 3)),
        ("receipts_4.parquet", (4, 5)),
    ] {
        let f = receipt_store::parquet::reader::ParquetFile::open(
            Path::new(name),
            receipt_store::parquet::reader::FileKind::Receipts,
            std::fs::read(tmp.path().join(name)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (f.min_block(), f.max_block()),
            (Some(want.0), Some(want.1)),
            "{name}"
        );
    }
}

/// Only a footerless newest pair is the open pair of an old store: one with a footer whose
/// checksum fails is refused, naming it, and kept, even while the WAL still holds its window (a
/// crash between its finalization and the WAL drop), since its bytes may be the only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotted_newest_pair_the_wal_still_covers_is_refused_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    crash_after_a_failed_write(tmp.path(), failpoints::AFTER_CLOSE_WRITERS, 8).await;
    let p = tmp.path().join("receipts_4.parquet");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&p, &bytes).unwrap();
    let err = Store::open(RealEnv::default(), tmp.path(), config(4, 1))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("receipts_4.parquet"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), bytes, "kept as it is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_failpoint_loses_nothing_acked() {
    for point in failpoints::ALL {
        for policy in [SyncPolicy::Always, SyncPolicy::Never] {
            let tmp = tempfile::tempdir().unwrap();
            let hook = Arc::new(ArmOnce {
                point,
                armed: Mutex::new(false),
            });
            let mut c = config(4, 1);
            c.sync_policy = policy;
            c.keep_recent = 2;
            let s = Store::open_with_hook(
                RealEnv::default(),
                tmp.path(),
                c.clone(),
                Some(hook.clone()),
            )
            .await
            .unwrap();
            let mut acked = Vec::new();
            let mut failed = None;
            for b in 1..=14u64 {
                if b == 8 {
                    *hook.armed.lock().unwrap() = true;
                }
                let r = s.write_receipts(b, vec![receipt(b, 0, 1)]).await;
                if point == failpoints::MID_PRUNE && b == 9 {
                    let _ = s.prune_now().await;
                }
                match r {
                    Ok(()) => acked.push(b),
                    Err(e) => {
                        assert!(
                            matches!(e, Error::Failpoint(_) | Error::Poisoned(_)),
                            "{point}: {e}"
                        );
                        failed.get_or_insert(b);
                    }
                }
            }
            if let Some(f) = failed {
                assert!(
                    acked.iter().all(|&b| b < f),
                    "{point}: a poisoned store acks nothing after the failure"
                );
            }
            s.crash().await;
            let s = Store::open(RealEnv::default(), tmp.path(), c)
                .await
                .unwrap();
            let got = all_blocks(&s).await;
            let floor = got.first().copied().unwrap_or(0);
            for b in acked.iter().filter(|&&b| b >= floor) {
                assert!(
                    got.contains(b),
                    "{point} {policy:?}: acked block {b} lost; recovered {got:?}"
                );
            }
            let mut dedup = got.clone();
            dedup.dedup();
            assert_eq!(dedup, got, "{point}: no duplicates");
            s.close().await.unwrap();
        }
    }
}

/// A block's row groups are written after its write is acked (its WAL record already holds
/// it), while the coordinator serves the next calls: a failure there poisons the store, a
/// status (which waits for the row groups being written) shows it, every call after says so,
/// and a reopen replays the acked blocks once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_failing_after_the_ack_poisons_until_reopen_and_replay_restores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(ArmOnce {
        point: failpoints::AFTER_RECEIPT_ROW_GROUP,
        armed: Mutex::new(true),
    });
    let s = Store::open_with_hook(RealEnv::default(), tmp.path(), config(4, 1), Some(hook))
        .await
        .unwrap();
    s.write_receipts(1, vec![receipt(1, 0, 1)]).await.unwrap();
    // Block 2's first receipt seals block 1's rows; their row group fails after the ack.
    s.write_receipts(2, vec![receipt(2, 0, 1)]).await.unwrap();
    let poisoned = s.status().await.unwrap().poisoned;
    assert!(
        poisoned
            .as_deref()
            .is_some_and(|p| p.contains(failpoints::AFTER_RECEIPT_ROW_GROUP)),
        "{poisoned:?}"
    );
    let err = s
        .write_receipts(3, vec![receipt(3, 0, 1)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("reopened"), "{err}");
    assert!(
        s.close().await.is_err(),
        "close reports that the open pair was discarded"
    );
    let s = open(tmp.path(), config(4, 1)).await;
    assert_eq!(
        all_blocks(&s).await,
        vec![1, 2],
        "the acked write was in the WAL and comes back once, not twice"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_failure_leaves_no_files_and_no_open_handles() {
    let tmp = tempfile::tempdir().unwrap();
    // One window of 100 blocks: the WAL keeps blocks 1..=10 and no pair is closed.
    let s = open(tmp.path(), config(100, 1)).await;
    for b in 1..=10 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    s.crash().await;
    drop(s);
    for n in &names(tmp.path()) {
        std::fs::remove_file(tmp.path().join(n)).unwrap();
    }
    // Reopened with windows of 4, replay closes pairs 0 and 4, then fails creating pair 8
    // (a directory of the same name blocks it): everything replay made must go.
    let blocker = tmp.path().join(".receipts_8.parquet.open");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let err = Store::open(RealEnv::default(), tmp.path(), config(4, 1))
        .await
        .err()
        .expect("replay must fail");
    assert!(
        err.to_string().contains(".receipts_8.parquet.open"),
        "{err}"
    );
    assert_eq!(
        names(tmp.path()),
        Vec::<String>::new(),
        "replay output discarded"
    );
    assert_eq!(
        fds_under(tmp.path()),
        Vec::<std::path::PathBuf>::new(),
        "no handle left open after a failed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_torn_tail_is_cut_and_mid_file_corruption_names_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(100, 1)).await;
    for b in 1..=3 {
        s.write_receipts(b, vec![receipt(b, 0, 1)]).await.unwrap();
    }
    s.crash().await;
    let seg = tmp.path().join("wal").join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let full = bytes.len();
    bytes.extend_from_slice(&[0xAB; 11]); // a torn, partial record
    std::fs::write(&seg, &bytes).unwrap();
    let s = open(tmp.path(), config(100, 1)).await;
    assert_eq!(all_blocks(&s).await, vec![1, 2, 3]);
    s.crash().await;
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len() as usize,
        full,
        "torn tail cut at the last valid record"
    );
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0xFF; // inside the first record, with valid records after it
    std::fs::write(&seg, &bytes).unwrap();
    let err = Store::open(RealEnv::default(), tmp.path(), config(100, 1))
        .await
        .err()
        .expect("corrupt")
        .to_string();
    assert!(
        err.contains("00000000000000000001.wal") && err.contains("offset 0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_are_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(0, 0)).await;
    assert_eq!(
        s.status().await.unwrap().max_blocks_per_file,
        500,
        "constructor maps 0 to 500"
    );
    assert_eq!(
        s.set_max_blocks_per_file(0).await.unwrap_err().to_string(),
        "max blocks per file must be greater than 0"
    );
    let mut bad = receipt(1, 0, 1);
    bad.logs[0].topics = vec![[1; 32]; 5];
    let err = s
        .write_receipts(1, vec![bad])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 topics"), "{err}");
    assert!(
        s.receipts_in_range(0, u64::MAX).await.unwrap().is_empty(),
        "rejected input stages nothing"
    );
    s.close().await.unwrap();
    s.close().await.unwrap();
    for e in [
        s.write_receipts(2, vec![]).await.unwrap_err(),
        s.status().await.unwrap_err(),
        s.get_receipt(&[0; 32]).await.unwrap_err(),
    ] {
        assert!(e.to_string().contains("store closed"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_the_same_error_to_every_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(ArmOnce {
        point: failpoints::BEFORE_FLUSH,
        armed: Mutex::new(false),
    });
    let s = Store::open_with_hook(
        RealEnv::default(),
        tmp.path(),
        config(4, 0),
        Some(hook.clone()),
    )
    .await
    .unwrap();
    s.write_receipts(1, vec![receipt(1, 0, 0)]).await.unwrap();
    *hook.armed.lock().unwrap() = true;
    let (a, b) = tokio::join!(s.close(), s.close());
    let (a, b) = (a.unwrap_err().to_string(), b.unwrap_err().to_string());
    assert!(a.contains("flush"), "{a}");
    assert_eq!(a, b);
    assert_eq!(s.close().await.unwrap_err().to_string(), a);
    assert!(
        names(tmp.path()).is_empty(),
        "unflushable open pair discarded"
    );
    let s = open(tmp.path(), config(4, 0)).await;
    assert_eq!(all_blocks(&s).await, vec![1], "its rows stayed in the WAL");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_disappears_never_wedges_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=50u64 {
        let s2 = s.clone();
        let h = tokio::spawn(async move { s2.write_receipts(b, vec![receipt(b, 0, 1)]).await });
        if b % 3 == 0 {
            h.abort();
        }
        let _ = h.await;
    }
    s.write_receipts(51, vec![receipt(51, 0, 0)]).await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(st.last_seen_block, Some(51));
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blocks_never_move_the_cursor_back_and_empty_pairs_are_not_kept_at_close() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    s.write_receipts(1, vec![receipt(1, 0, 0)]).await.unwrap();
    s.write_receipts(4, vec![]).await.unwrap();
    s.write_receipts(3, vec![]).await.unwrap();
    assert_eq!(s.status().await.unwrap().last_seen_block, Some(4));
    s.close().await.unwrap();
    assert_eq!(
        names(tmp.path()),
        vec!["logs_0.parquet", "receipts_0.parquet"]
    );
    let s = open(tmp.path(), config(4, 1)).await;
    s.write_receipts(4, vec![receipt(4, 0, 0)]).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        names(tmp.path()),
        vec![
            "logs_0.parquet",
            "logs_4.parquet",
            "receipts_0.parquet",
            "receipts_4.parquet"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_hash_lookup_over_hundreds_of_files_reads_no_data_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(2, 1);
    c.index_cache_files = 16; // far fewer than the files, so indexes are rebuilt
    let s = open(tmp.path(), c.clone()).await;
    for b in 1..=400u64 {
        s.write_receipts(b, vec![receipt(b, 0, 1), receipt(b, 1, 0)])
            .await
            .unwrap();
    }
    s.close().await.unwrap();
    let total: u64 = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let s = open(tmp.path(), c).await;
    assert!(s.status().await.unwrap().closed_pairs.len() >= 200);
    for _ in 0..2 {
        assert_eq!(s.get_receipt(&[0xEE; 32]).await.unwrap(), None);
    }
    let (index_bytes, data_bytes, cached) = s.read_stats();
    assert_eq!(data_bytes, 0, "bloom filters rule every file out");
    assert!(cached <= 16, "index cache is bounded: {cached}");
    assert!(
        index_bytes < total,
        "only footers and bloom filters were read ({index_bytes} of {total})"
    );
    let hit = s
        .get_receipt(&receipt(257, 1, 0).tx_hash)
        .await
        .unwrap()
        .expect("present");
    assert_eq!(hit.block_number, 257);
    assert!(s.read_stats().1 > 0);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotted_bloom_filter_is_an_error_not_a_false_negative() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=9 {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    s.close().await.unwrap();
    let p = tmp.path().join("receipts_0.parquet");
    let bytes = std::fs::read(&p).unwrap();
    let f = receipt_store::parquet::reader::ParquetFile::open(
        &p,
        receipt_store::parquet::reader::FileKind::Receipts,
        bytes.clone(),
    )
    .unwrap();
    let bloom_at = f
        .metadata
        .row_group(0)
        .column(0)
        .bloom_filter_offset()
        .expect("tx_hash has a bloom filter") as usize;
    let mut rotten = bytes;
    for b in &mut rotten[bloom_at + 20..bloom_at + 60] {
        *b = 0;
    }
    std::fs::write(&p, rotten).unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    let err = s
        .get_receipt(&receipt(1, 0, 0).tx_hash)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("receipts_0.parquet") && err.contains("bloom filter checksum"),
        "{err}"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_pruned_before_a_crash_never_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(2, 1);
    c.keep_recent = 4;
    let s = open(tmp.path(), c.clone()).await;
    for b in 1..=12u64 {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    let snap = s.snapshot().await.unwrap(); // a live read holds every closed pair
    s.prune_now().await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(
        st.closed_pairs,
        vec![8, 10],
        "windows ending at or below 12-4 are untracked"
    );
    assert_eq!(st.pending_deletes, 4, "their files wait for the snapshot");
    assert!(tmp.path().join("receipts_0.parquet").exists());
    assert_eq!(
        s.get_receipt(&receipt(3, 0, 0).tx_hash).await.unwrap(),
        None,
        "pruned reads as not found"
    );
    s.crash().await;
    drop(snap);
    let s = open(tmp.path(), c).await;
    assert!(
        !tmp.path().join("receipts_0.parquet").exists(),
        "prune at open deletes it again"
    );
    assert_eq!(all_blocks(&s).await, vec![8, 9, 10, 11, 12]);
    assert_eq!(
        s.get_receipt(&receipt(3, 0, 0).tx_hash).await.unwrap(),
        None
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_a_pair_whose_blocks_run_past_its_nominal_window() {
    // Found by the simulator (prune-heavy seed 5): writes skipped the boundary at 18, so pair
    // 16 also holds blocks 19 and 21; upstream's `start + MBF <= prune_before` rule pruned it.
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(2, 1);
    c.keep_recent = 6;
    let s = open(tmp.path(), c).await;
    for b in [16u64, 19, 21, 22, 23, 24] {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    s.prune_now().await.unwrap();
    assert_eq!(
        all_blocks(&s).await,
        vec![16, 19, 21, 22, 23, 24],
        "nothing at or above 24-6 may go"
    );
    s.write_receipts(30, vec![receipt(30, 0, 0)]).await.unwrap();
    s.write_receipts(32, vec![receipt(32, 0, 0)]).await.unwrap();
    s.prune_now().await.unwrap();
    assert_eq!(
        all_blocks(&s).await,
        vec![24, 30, 32],
        "pairs 16 and 22 are wholly below 32-6"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_applied_write_is_never_visible_to_reads() {
    // Found by the simulator (crash-storm seed 56): a write failing after its first receipt's
    // row group left part of it in the open window, and reads served that torn state.
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(ArmOnce {
        point: failpoints::AFTER_RECEIPT_ROW_GROUP,
        armed: Mutex::new(false),
    });
    let s = Store::open_with_hook(
        RealEnv::default(),
        tmp.path(),
        config(8, 1),
        Some(hook.clone()),
    )
    .await
    .unwrap();
    s.write_receipts(3, vec![receipt(3, 0, 2)]).await.unwrap();
    *hook.armed.lock().unwrap() = true;
    // Acked (its WAL record is durable); the row groups it sealed fail after the ack.
    s.write_receipts(
        4,
        vec![receipt(4, 0, 2), receipt(4, 1, 2), receipt(4, 2, 2)],
    )
    .await
    .unwrap();
    // Once the coordinator has moved past the failed flush (a status call is served after it),
    // reads refuse the poisoned window.
    let poisoned = s.status().await.unwrap().poisoned;
    assert!(poisoned.is_some(), "the flush after the ack failed");
    let err = s
        .get_logs(&LogFilter::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("reopened"), "{err}");
    s.crash().await;
    let s = open(tmp.path(), config(8, 1)).await;
    let logs = s
        .get_logs(&LogFilter {
            from_block: Some(4),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.len(), 6, "after replay the write is whole");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_explicit_flush_poisons_so_no_row_is_written_twice() {
    // Found by the simulator (default seed 200109): a flush() failing after the receipts row
    // group left the rows buffered; close flushed them again and the pair held them twice.
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(ArmOnce {
        point: failpoints::AFTER_RECEIPT_ROW_GROUP,
        armed: Mutex::new(false),
    });
    // A flush interval longer than the window: rows stay buffered until the explicit flush.
    let s = Store::open_with_hook(
        RealEnv::default(),
        tmp.path(),
        config(8, 100),
        Some(hook.clone()),
    )
    .await
    .unwrap();
    s.write_receipts(1, vec![receipt(1, 0, 1)]).await.unwrap();
    *hook.armed.lock().unwrap() = true;
    assert!(s.flush().await.is_err());
    let status = s.status().await.unwrap();
    assert!(status.poisoned.is_some(), "{status:?}");
    let err = s.flush().await.unwrap_err().to_string();
    assert!(
        err.contains("reopened"),
        "a retried flush is refused: {err}"
    );
    let _ = s.close().await;
    let s = open(tmp.path(), config(8, 100)).await;
    assert_eq!(
        all_blocks(&s).await,
        vec![1],
        "the receipt is back exactly once"
    );
    s.close().await.unwrap();
}

/// Liveness of the periodic prune: with nothing but writes (no `prune_now`), the tick alone
/// untracks and deletes every window wholly below the retention line within a few intervals.
/// (A coordinator whose tick never prunes passed every other store test: cargo-mutants.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_tick_alone_prunes_eligible_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(2, 1);
    c.keep_recent = 4;
    c.prune_interval = std::time::Duration::from_millis(20);
    let s = open(tmp.path(), c).await;
    for b in 1..=12u64 {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    // Generous bound: a liveness check, not a timing one (the tick is every 20 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut st = s.status().await.unwrap();
    while st.closed_pairs != vec![8, 10] && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        st = s.status().await.unwrap();
    }
    assert_eq!(
        st.closed_pairs,
        vec![8, 10],
        "windows ending at or below 12-4 go"
    );
    assert_eq!(st.pending_deletes, 0, "no read holds them: deleted at once");
    assert!(!tmp.path().join("receipts_0.parquet").exists());
    assert!(!tmp.path().join("logs_6.parquet").exists());
    s.close().await.unwrap();
}

/// Sizes at the limits are accepted and one byte over is refused before anything is logged
/// (cargo-mutants: the limits were off by one without any test noticing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_at_the_limits_are_accepted_and_one_byte_over_is_refused() {
    use receipt_store::{MAX_LOG_DATA_BYTES, MAX_RECEIPT_BYTES};
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(100, 1)).await;
    let mut at = receipt(1, 0, 1);
    at.receipt_bytes = vec![1; MAX_RECEIPT_BYTES];
    at.logs[0].data = vec![2; MAX_LOG_DATA_BYTES];
    s.write_receipts(1, vec![at.clone()]).await.unwrap();
    let mut big_receipt = receipt(2, 0, 0);
    big_receipt.receipt_bytes = vec![1; MAX_RECEIPT_BYTES + 1];
    let mut big_data = receipt(2, 1, 1);
    big_data.logs[0].data = vec![2; MAX_LOG_DATA_BYTES + 1];
    for over in [big_receipt, big_data] {
        let err = s.write_receipts(2, vec![over]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
    let got = s
        .get_receipt(&at.tx_hash)
        .await
        .unwrap()
        .expect("at the limit");
    assert_eq!(got.receipt_bytes.len(), MAX_RECEIPT_BYTES);
    s.write_receipts(2, vec![receipt(2, 2, 0)]).await.unwrap();
    assert_eq!(
        all_blocks(&s).await,
        vec![1, 2],
        "refused writes staged nothing"
    );
    s.close().await.unwrap();
}

/// A write into a window already closed (after a reopen, at the last seen block) is refused with
/// the sealed window's last block and the last seen block, both exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_into_a_closed_window_names_its_last_block() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    for b in 1..=7 {
        s.write_receipts(b, vec![receipt(b, 0, 0)]).await.unwrap();
    }
    s.close().await.unwrap();
    let s = open(tmp.path(), config(4, 1)).await;
    match s.write_receipts(7, vec![receipt(7, 5, 0)]).await {
        Err(Error::Sealed {
            height,
            sealed,
            last_seen,
        }) => assert_eq!((height, sealed, last_seen), (7, 7, 7)),
        other => panic!("a sealed window refuses the write: {other:?}"),
    }
    s.close().await.unwrap();
}
