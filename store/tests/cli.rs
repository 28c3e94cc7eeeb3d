//! The operator CLI run as a process on a directory the store wrote (closed pairs plus an open
//! window that exists only in the WAL after a crash). It must report what is there, answer
//! queries exactly as a store opened on the directory would, and never change a byte.

use receipt_store::env::real::RealEnv;
use receipt_store::{Config, LogFilter, LogInput, LogRecord, ReceiptInput, Store, TxHash};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_receipt-store");

const ADDRESS_A: [u8; 20] = [0xA1; 20];
const ADDRESS_B: [u8; 20] = [0xB2; 20];
const TOPIC_TRANSFER: [u8; 32] = [0x7F; 32];
const TOPIC_APPROVAL: [u8; 32] = [0x8E; 32];

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hash_of(block: u64, ordinal: u32) -> TxHash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&block.to_be_bytes());
    h[8..12].copy_from_slice(&ordinal.to_be_bytes());
    h
}

/// Receipt `ordinal` of `block`: even ordinals log a Transfer from A, odd ones an Approval from
/// B with a second topic, so filters by address and topic split the rows.
fn receipt(block: u64, ordinal: u32) -> ReceiptInput {
    let log = |k: u8| {
        if ordinal.is_multiple_of(2) {
            LogInput {
                address: ADDRESS_A,
                topics: vec![TOPIC_TRANSFER],
                data: vec![block as u8, k],
            }
        } else {
            LogInput {
                address: ADDRESS_B,
                topics: vec![TOPIC_APPROVAL, [block as u8; 32]],
                data: vec![],
            }
        }
    };
    ReceiptInput {
        tx_hash: hash_of(block, ordinal),
        tx_index: ordinal,
        receipt_bytes: format!("receipt {block}/{ordinal}").into_bytes(),
        logs: (0..=(ordinal as u8 % 2)).map(log).collect(),
    }
}

/// Blocks 1-10 with max_blocks_per_file 4, then a crash: pairs 0 and 4 are closed, pair 8 is
/// the unfinished open pair and blocks 8-10 exist only in the WAL (block 9 in two write calls).
async fn write_fixture(dir: &Path) {
    let s = Store::open(RealEnv::default(), dir, Config::new(4, 1))
        .await
        .expect("open");
    for b in 1..=10u64 {
        if b == 9 {
            s.write_receipts(b, vec![receipt(b, 0), receipt(b, 1)])
                .await
                .unwrap();
            s.write_receipts(b, vec![receipt(b, 2), receipt(b, 3)])
                .await
                .unwrap();
        } else {
            s.write_receipts(b, vec![receipt(b, 0), receipt(b, 1)])
                .await
                .unwrap();
        }
    }
    let st = s.status().await.unwrap();
    assert_eq!(st.closed_pairs, vec![0, 4]);
    assert_eq!(st.open_pair, Some(8));
    s.crash().await;
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(BIN).args(args).output().expect("run the CLI");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn arg(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp path")
}

/// Every entry under `dir` (recursively) with its bytes; directories map to `None`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        match bytes {
            None => std::fs::create_dir_all(to.join(rel)).unwrap(),
            Some(b) => {
                std::fs::create_dir_all(to.join(&rel).parent().unwrap()).unwrap();
                std::fs::write(to.join(rel), b).unwrap();
            }
        }
    }
}

/// The CLI's JSON line for a log, built from the store's record.
fn log_line(l: &LogRecord) -> String {
    serde_json::json!({
        "block_number": l.block_number,
        "tx_hash": hex(&l.tx_hash),
        "tx_index": l.tx_index,
        "log_index": l.log_index,
        "address": hex(&l.address),
        "topics": l.topics.iter().map(|t| hex(t)).collect::<Vec<_>>(),
        "data": hex(&l.data),
    })
    .to_string()
}

fn parse_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_closed_pairs_the_unfinished_pair_and_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let r = run(&["inspect", arg(tmp.path())]);
    assert_eq!(
        r.code, 0,
        "a crashed directory has no problem: {}{}",
        r.stdout, r.stderr
    );
    let out = &r.stdout;
    for part in [
        "pair 0: closed",
        "receipts_0.parquet: 6 rows",
        "logs_0.parquet: 9 rows",
        "pair 4: closed",
        "blocks 4..=7",
        "checksum verified",
        "pair 8: unfinished",
        "4 records",
        "blocks 8..=10",
        "open window (WAL records at or above block 8): blocks 8..=10, 8 receipts, 12 logs",
        "summary: 2 closed pairs, 1 unfinished, 1 WAL segments (4 records), 0 orphans, 0 unknown, \
         0 quarantined, 0 problems",
    ] {
        assert!(out.contains(part), "inspect output lacks {part:?}:\n{out}");
    }
    assert!(!out.contains("problem:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_finds_closed_file_and_wal_only_receipts_and_says_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let dir = arg(tmp.path());
    for (block, ordinal, source) in [
        (2u64, 1u32, "receipts_0.parquet"),
        (7, 0, "receipts_4.parquet"),
        (9, 3, "wal"),
        (10, 1, "wal"),
    ] {
        let r = run(&["receipt", dir, &hex(&hash_of(block, ordinal))]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let lines = parse_lines(&r.stdout);
        assert_eq!(lines.len(), 1, "{}", r.stdout);
        let v = &lines[0];
        assert_eq!(v["tx_hash"], hex(&hash_of(block, ordinal)));
        assert_eq!(v["block_number"], block);
        assert_eq!(
            v["receipt_bytes"],
            hex(format!("receipt {block}/{ordinal}").as_bytes())
        );
        assert_eq!(
            v["source"],
            tmp.path().join(source).display().to_string(),
            "block {block}: paths are printed as the store prints them"
        );
    }
    let in_block = run(&["receipt", dir, &hex(&hash_of(9, 2)), "--block", "9"]);
    assert_eq!(in_block.code, 0);
    assert_eq!(parse_lines(&in_block.stdout)[0]["block_number"], 9);
    for args in [
        vec![hex(&[0xEE; 32])],
        vec![hex(&hash_of(2, 1)), "--block".into(), "3".into()],
        vec![hex(&hash_of(11, 0))],
    ] {
        let mut full = vec!["receipt", dir];
        full.extend(args.iter().map(String::as_str));
        let r = run(&full);
        assert_eq!(r.code, 1, "{args:?}");
        assert_eq!(r.stdout, "", "{args:?}: stdout carries JSON lines only");
        assert_eq!(r.stderr.trim(), "not found", "{args:?}");
    }
    let bad = run(&["receipt", dir, "0x1234"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("64"), "{}", bad.stderr);
}

/// The CLI's logs equal what a store opened on a copy of the directory serves after replaying
/// the WAL: same rows, same order, same block-wide log indices (block 9 spans two writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_equal_what_the_store_serves_after_replay() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let copy = tempfile::tempdir().unwrap();
    copy_tree(tmp.path(), copy.path());
    let s = Store::open(RealEnv::default(), copy.path(), Config::new(4, 1))
        .await
        .unwrap();
    let dir = arg(tmp.path());
    let a = hex(&ADDRESS_A);
    let b = hex(&ADDRESS_B);
    let transfer = hex(&TOPIC_TRANSFER);
    let approval = hex(&TOPIC_APPROVAL);
    let block9_topic = hex(&[9u8; 32]);
    let cases: Vec<(Vec<String>, LogFilter)> = vec![
        (vec![], LogFilter::default()),
        (
            vec!["--from".into(), "3".into(), "--to".into(), "9".into()],
            LogFilter {
                from_block: Some(3),
                to_block: Some(9),
                ..Default::default()
            },
        ),
        (
            vec!["--address".into(), b.clone()],
            LogFilter {
                addresses: vec![ADDRESS_B],
                ..Default::default()
            },
        ),
        (
            vec!["--address".into(), a.clone(), "--address".into(), b.clone()],
            LogFilter {
                addresses: vec![ADDRESS_A, ADDRESS_B],
                ..Default::default()
            },
        ),
        (
            vec![
                "--topic".into(),
                format!("0:{transfer}"),
                "--from".into(),
                "6".into(),
            ],
            LogFilter {
                from_block: Some(6),
                topics: vec![vec![TOPIC_TRANSFER]],
                ..Default::default()
            },
        ),
        (
            vec!["--topic".into(), format!("1:{block9_topic}")],
            LogFilter {
                topics: vec![vec![], vec![[9u8; 32]]],
                ..Default::default()
            },
        ),
        (
            vec![
                "--topic".into(),
                format!("0:{transfer}"),
                "--topic".into(),
                format!("0:{approval}"),
                "--limit".into(),
                "5".into(),
                "--from".into(),
                "2".into(),
            ],
            LogFilter {
                from_block: Some(2),
                topics: vec![vec![TOPIC_TRANSFER, TOPIC_APPROVAL]],
                limit: Some(5),
                ..Default::default()
            },
        ),
        (
            vec!["--topic".into(), format!("1:{transfer}")],
            LogFilter {
                topics: vec![vec![], vec![TOPIC_TRANSFER]],
                ..Default::default()
            },
        ),
    ];
    for (args, filter) in cases {
        let expected: Vec<String> = s
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .map(log_line)
            .collect();
        let mut full = vec!["logs", dir];
        full.extend(args.iter().map(String::as_str));
        let r = run(&full);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let got: Vec<String> = parse_lines(&r.stdout)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(got, expected, "{args:?}");
    }
    let all = run(&["logs", dir]);
    let block9: Vec<(u64, u64)> = parse_lines(&all.stdout)
        .iter()
        .filter(|v| v["block_number"] == 9)
        .map(|v| {
            (
                v["tx_index"].as_u64().unwrap(),
                v["log_index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        block9,
        vec![(0, 0), (1, 1), (1, 2), (2, 3), (3, 4), (3, 5)],
        "log indices run on across block 9's two WAL records"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_usage_errors_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let dir = arg(tmp.path());
    let topic = format!("4:{}", hex(&TOPIC_TRANSFER));
    for (args, needle) in [
        (vec!["--topic", topic.as_str()], "topic positions"),
        (vec!["--from", "5", "--to", "4"], "after to block"),
        (vec!["--limit", "0"], "limit"),
        (vec!["--address", "0xabc"], "hex digits"),
        (vec!["--topic", "0x7f7f"], "POS:0x"),
    ] {
        let mut full = vec!["logs", dir];
        full.extend(args.iter().copied());
        let r = run(&full);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn help_works_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["inspect", "--help"],
        vec!["receipt", "--help"],
        vec!["logs", "--help"],
        vec!["help", "logs"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("Usage: receipt-store"),
            "{args:?}: {}",
            r.stdout
        );
    }
    assert!(run(&["--help"]).stdout.contains("read-only"));
    assert_eq!(run(&[]).code, 2, "no command is a usage error");
}

/// Unknown files, a torn WAL tail, a lone pair file, rotted parquet bytes and a corrupt WAL
/// record are reported (notes for what opening the store cleans up, problems for corruption and
/// for data open would set aside) and nothing is fixed: the directory is byte-for-byte the same
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_orphans_and_corruption_and_fixes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let root = tmp.path();
    std::fs::write(root.join("notes.txt"), b"operator notes").unwrap();
    std::fs::create_dir(root.join("tx-hash-index")).unwrap();
    let segment = std::fs::read_dir(root.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a WAL segment");
    let wal_bytes = std::fs::read(&segment).unwrap();

    // Notes only: unknown entries, a torn tail (the last record's trailer and the end of its
    // payload missing).
    std::fs::write(&segment, &wal_bytes[..wal_bytes.len() - 40]).unwrap();
    let before = tree(root);
    let r = run(&["inspect", arg(root)]);
    assert_eq!(r.code, 0, "notes are no problem:\n{}", r.stdout);
    for part in [
        "unknown: notes.txt",
        "unknown: tx-hash-index/",
        "torn tail",
        "3 records",
        "open window (WAL records at or above block 8): blocks 8..=9",
    ] {
        assert!(r.stdout.contains(part), "lacks {part:?}:\n{}", r.stdout);
    }
    let wal_only = run(&["receipt", arg(root), &hex(&hash_of(9, 3))]);
    assert_eq!(wal_only.code, 0, "records before a torn tail are served");
    let torn_away = run(&["receipt", arg(root), &hex(&hash_of(10, 0))]);
    assert_eq!(torn_away.code, 1, "the torn record is not");
    assert_eq!(tree(root), before, "nothing was repaired or removed");

    // Problems: a lone pair file without a footer in a window no WAL record holds (it may be a
    // finished file whose trailer rotted: open sets it aside), rot in a closed file, and a bad
    // record in the middle of the WAL.
    std::fs::write(root.join("logs_40.parquet"), b"lone").unwrap();
    let rotted = root.join("receipts_0.parquet");
    let mut bytes = std::fs::read(&rotted).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&rotted, bytes).unwrap();
    let mut wal = wal_bytes.clone();
    wal[20] ^= 0xFF; // inside the first record's payload
    std::fs::write(&segment, &wal).unwrap();
    let before = tree(root);
    let r = run(&["inspect", arg(root)]);
    assert_eq!(r.code, 3, "corruption is a problem:\n{}", r.stdout);
    assert!(
        r.stdout.contains("problem: corrupt file") && r.stdout.contains("receipts_0.parquet"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("checksum mismatch"), "{}", r.stdout);
    assert!(r.stdout.contains("orphan: logs_40.parquet"), "{}", r.stdout);
    let lone = format!(
        "problem: opening the store moves {} to quarantine/ (lone)",
        root.join("logs_40.parquet").display()
    );
    assert!(r.stdout.contains(&lone), "{}", r.stdout);
    let refusal = format!(
        "problem: a store would refuse to open: wal corrupt: {} at offset 0",
        segment.display()
    );
    assert!(
        r.stdout.contains("CORRUPT at offset 0") && r.stdout.contains(&refusal),
        "{}",
        r.stdout
    );
    let q = run(&["logs", arg(root)]);
    assert_eq!(
        q.code, 4,
        "closed files are served, the WAL problem reported"
    );
    assert!(q.stderr.contains(&refusal), "{}", q.stderr);
    assert_eq!(tree(root), before, "nothing was repaired or removed");
}

/// Every command, run on a crashed store's directory, leaves every file and directory as it
/// was: the listing and every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_changes_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let dir = arg(tmp.path());
    let before = tree(tmp.path());
    assert!(
        before
            .keys()
            .any(|p| p.ends_with(".receipts_8.parquet.open")),
        "the unfinished pair a store would delete is there: {:?}",
        before.keys()
    );
    let topic = format!("0:{}", hex(&TOPIC_TRANSFER));
    let hash = hex(&hash_of(9, 1));
    let runs = [
        vec!["inspect", dir],
        vec!["receipt", dir, hash.as_str()],
        vec!["receipt", dir, hash.as_str(), "--block", "9"],
        vec!["logs", dir],
        vec![
            "logs",
            dir,
            "--from",
            "2",
            "--to",
            "9",
            "--topic",
            topic.as_str(),
        ],
    ];
    for args in &runs {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
    assert_eq!(tree(tmp.path()), before, "listing and bytes unchanged");
}

/// A directory that is missing, or exists but holds no pair file and no `wal/`, is an error
/// with a non-zero exit for every command that reads one: never an empty answer. The missing
/// directory is reported as the store reports an io error, and it is not created.
#[test]
fn a_missing_or_empty_directory_is_an_error_with_a_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let hash = hex(&hash_of(1, 0));
    for dir in [&missing, &empty] {
        for cmd in [
            vec!["inspect", arg(dir)],
            vec!["receipt", arg(dir), hash.as_str()],
            vec!["logs", arg(dir)],
        ] {
            let r = run(&cmd);
            assert_eq!(r.code, 3, "{cmd:?}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.stdout, "", "{cmd:?}: no answer on stdout");
            let expected = if dir == &missing {
                format!("error: io error on {}: ", missing.display())
            } else {
                format!(
                    "error: {}: not a receipt store data directory (no pair files and no wal/)",
                    empty.display()
                )
            };
            assert!(r.stderr.starts_with(&expected), "{cmd:?}: {}", r.stderr);
        }
    }
    assert!(!missing.exists(), "the CLI creates nothing");
    assert_eq!(tree(&empty).len(), 0, "the CLI creates nothing");
}

/// `logs ... | head -1`: a reader that goes away ends the program quietly with status 0, both
/// when stdout is closed before anything is written and after the first line was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_logs_quietly_with_status_zero() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    for read_first_line in [false, true] {
        let mut child = Command::new(BIN)
            .args(["logs", arg(tmp.path())])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        if read_first_line {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            assert!(line.starts_with("{\"block_number\":1,"), "{line}");
        } else {
            drop(stdout);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{read_first_line}: {stderr}");
        assert_eq!(stderr, "", "{read_first_line}: nothing on stderr, no panic");
    }
}

/// A corrupt WAL record a store would refuse to open over does not stop reads of blocks in
/// closed files: they are served (the same rows the store serves), and the problem is on
/// stderr, with exit status 4. Its text is the store's own open error, path included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_wal_record_still_serves_closed_files_and_reports_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let pristine = tempfile::tempdir().unwrap();
    copy_tree(tmp.path(), pristine.path());
    let root = tmp.path();
    let segment = std::fs::read_dir(root.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a WAL segment");
    let mut wal = std::fs::read(&segment).unwrap();
    wal[20] ^= 0xFF; // the first record's header: valid records follow, so no torn tail
    std::fs::write(&segment, &wal).unwrap();

    let logs = run(&["logs", arg(root)]);
    let reference = Store::open(RealEnv::default(), pristine.path(), Config::new(4, 1))
        .await
        .unwrap();
    let closed_only: Vec<String> = reference
        .get_logs(&LogFilter {
            to_block: Some(7),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(log_line)
        .collect();
    reference.close().await.unwrap();
    assert_eq!(logs.code, 4, "{}", logs.stderr);
    let got: Vec<String> = parse_lines(&logs.stdout)
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert!(!got.is_empty());
    assert_eq!(
        got, closed_only,
        "every block of the closed files is served"
    );

    let in_closed = run(&["receipt", arg(root), &hex(&hash_of(2, 1))]);
    assert_eq!(in_closed.code, 4);
    assert_eq!(parse_lines(&in_closed.stdout)[0]["block_number"], 2);
    let in_wal = run(&["receipt", arg(root), &hex(&hash_of(9, 3))]);
    assert_eq!(
        in_wal.code, 4,
        "not 'not found': the open window is unknown"
    );
    assert_eq!(in_wal.stdout, "");

    let refused = Store::open(RealEnv::default(), root, Config::new(4, 1))
        .await
        .err()
        .expect("a store refuses to open over the corrupt record");
    for r in [&logs, &in_closed, &in_wal] {
        assert!(
            r.stderr
                .contains(&format!("problem: a store would refuse to open: {refused}")),
            "the store's text {refused:?} in {:?}",
            r.stderr
        );
    }
}

/// Paths in the CLI's output are the store's: what `inspect` says open would quarantine is
/// the `original` that `Status::quarantined` then reports, and the quarantined file is listed
/// under the `path` it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_printed_as_the_store_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let root = tmp.path();
    // A finished logs file whose receipts partner is missing: open keeps it in quarantine.
    std::fs::copy(root.join("logs_4.parquet"), root.join("logs_40.parquet")).unwrap();
    let before = run(&["inspect", arg(root)]);
    let s = Store::open(RealEnv::default(), root, Config::new(4, 1))
        .await
        .unwrap();
    let status = s.status().await.unwrap();
    s.close().await.unwrap();
    let q = &status.quarantined[0];
    assert!(
        before.stdout.contains(&format!(
            "problem: opening the store moves {} to quarantine/",
            q.original.display()
        )),
        "{}",
        before.stdout
    );
    assert_eq!(before.code, 3, "unserved data is a problem");
    let after = run(&["inspect", arg(root)]);
    assert!(
        after.stdout.contains(&format!(
            "problem: {} (lone, from logs_40.parquet)",
            q.path.display()
        )),
        "{}",
        after.stdout
    );
}

/// Block numbers are JSON-RPC quantities (0x-hex) or decimal, with one clear error for
/// anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_accept_0x_hex_as_json_rpc_and_decimal() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let dir = arg(tmp.path());
    let decimal = run(&["logs", dir, "--from", "3", "--to", "9"]);
    let hexed = run(&["logs", dir, "--from", "0x3", "--to", "0X9"]);
    assert_eq!(hexed.code, 0, "{}", hexed.stderr);
    assert!(!decimal.stdout.is_empty());
    assert_eq!(hexed.stdout, decimal.stdout);
    let in_block = run(&["receipt", dir, &hex(&hash_of(10, 1)), "--block", "0xa"]);
    assert_eq!(in_block.code, 0, "{}", in_block.stderr);
    assert_eq!(parse_lines(&in_block.stdout)[0]["block_number"], 10);
    for garbage in ["0x", "0xZZ", "nine", "-1", "1e3", "0x10000000000000000"] {
        let r = run(&["logs", dir, &format!("--from={garbage}")]);
        assert_eq!(r.code, 2, "{garbage}");
        assert!(
            r.stderr.contains("is neither decimal nor 0x-hex"),
            "{garbage}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "");
    }
}

/// `POS:null` is eth_getLogs' null: a wildcard at that position, written out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_null_is_an_explicit_wildcard_as_in_eth_get_logs() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let dir = arg(tmp.path());
    let block9_topic = hex(&[9u8; 32]);
    let implicit = run(&["logs", dir, "--topic", &format!("1:{block9_topic}")]);
    let explicit = run(&[
        "logs",
        dir,
        "--topic",
        "0:null",
        "--topic",
        &format!("1:{block9_topic}"),
    ]);
    assert_eq!(explicit.code, 0, "{}", explicit.stderr);
    assert_eq!(
        parse_lines(&explicit.stdout).len(),
        4,
        "block 9's approvals: two receipts, two logs each"
    );
    assert_eq!(explicit.stdout, implicit.stdout);
    let all = run(&["logs", dir]);
    assert_eq!(run(&["logs", dir, "--topic", "3:null"]).stdout, all.stdout);
    let both = run(&[
        "logs",
        dir,
        "--topic",
        "0:null",
        "--topic",
        &format!("0:{}", hex(&TOPIC_TRANSFER)),
    ]);
    assert_eq!(both.code, 2);
    assert!(
        both.stderr
            .contains("topic position 0 is both null (anything) and a set of topics"),
        "{}",
        both.stderr
    );
    let help = run(&["logs", "--help"]);
    assert!(help.stdout.contains("POS:null"), "{}", help.stdout);
}

/// `--limit 0` gets one plain sentence, not a range from the argument parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_zero_gets_a_plain_message_and_a_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path()).await;
    let r = run(&["logs", arg(tmp.path()), "--limit", "0"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "error: --limit 0 is not allowed; leave --limit out for every matching log\n"
    );
}
