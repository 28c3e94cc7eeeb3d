//! The simulator's own file-name grammar (`check::classify`) must agree with the store's on a
//! fixed list of names, including names that almost parse: the oracle is written apart from the
//! store, and this test is what catches the two drifting.

use receipt_sim::check::{classify, FileKind};
use std::path::Path;

const NAMES: &[&str] = &[
    "receipts_0.parquet",
    "logs_0.parquet",
    "receipts_18446744073709551615.parquet",
    "logs_120.parquet",
    "receipts_18446744073709551616.parquet",
    "receipts_.parquet",
    "receipts_-1.parquet",
    "receipts_+1.parquet",
    "receipts_1 .parquet",
    "receipts_1.parquet.tmp",
    "receipts_1.PARQUET",
    "receipt_1.parquet",
    "logs__1.parquet",
    "logs_0x10.parquet",
    "logs_1_2.parquet",
    "other.parquet",
    "README",
    ".receipts_5.parquet.open",
    ".logs_0.parquet.open",
    ".logs_x.parquet.open",
    "receipts_5.parquet.open",
    ".receipts_5.parquet",
    "..receipts_5.parquet.open",
];

const WAL_NAMES: &[&str] = &[
    "00000000000000000001.wal",
    "18446744073709551615.wal",
    "0000000000000000001.wal",
    "000000000000000000001.wal",
    "0000000000000000000a.wal",
    "00000000000000000001.wal.tmp",
    "rewrite.tmp",
    "notes.txt",
];

#[test]
fn the_simulators_pair_name_grammar_agrees_with_the_stores() {
    let dir = Path::new("/data");
    for name in NAMES {
        let ours = classify(dir, &dir.join(name));
        let theirs = receipt_store::files::parse_pair_name(name)
            .or_else(|| receipt_store::files::parse_open_pair_name(name));
        let agree = match (&ours, theirs) {
            (
                FileKind::Receipts(a),
                Some((receipt_store::parquet::reader::FileKind::Receipts, b)),
            ) => *a == b,
            (FileKind::Logs(a), Some((receipt_store::parquet::reader::FileKind::Logs, b))) => {
                *a == b
            }
            (FileKind::Unknown, None) => true,
            _ => false,
        };
        assert!(
            agree,
            "{name}: simulator says {ours:?}, store says {theirs:?}"
        );
    }
}

#[test]
fn the_simulators_wal_name_grammar_agrees_with_the_stores() {
    let dir = Path::new("/data");
    for name in WAL_NAMES {
        let ours = classify(dir, &dir.join("wal").join(name));
        let theirs = receipt_store::wal::parse_segment_name(name).is_some();
        let agree = match ours {
            FileKind::WalSegment => theirs,
            FileKind::WalScratch => *name == "rewrite.tmp" && !theirs,
            _ => !theirs,
        };
        assert!(
            agree,
            "wal/{name}: simulator says {ours:?}, store parses it: {theirs}"
        );
    }
}
