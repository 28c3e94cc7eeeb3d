//! File naming, the catalogue of closed pairs, and the startup scan.

use crate::parquet::reader::FileKind;
use std::path::{Path, PathBuf};

pub fn receipt_file_name(start: u64) -> String {
    format!("receipts_{start}.parquet")
}

pub fn log_file_name(start: u64) -> String {
    format!("logs_{start}.parquet")
}

/// Parses `receipts_<N>.parquet` / `logs_<N>.parquet`. Unlike upstream, a name that does not
/// parse is not a pair file at all (upstream maps it to start 0).
pub fn parse_pair_name(name: &str) -> Option<(FileKind, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (kind, digits) = if let Some(d) = stem.strip_prefix("receipts_") {
        (FileKind::Receipts, d)
    } else if let Some(d) = stem.strip_prefix("logs_") {
        (FileKind::Logs, d)
    } else {
        return None;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|n| (kind, n))
}

/// A closed, finalized pair covering `[start, next boundary)`.
#[derive(Debug)]
pub struct ClosedPair {
    pub start: u64,
    pub receipt_path: PathBuf,
    pub log_path: PathBuf,
    /// Highest block with a receipt in the pair, when known.
    pub max_block: Option<u64>,
}

impl ClosedPair {
    pub fn new(dir: &Path, start: u64, max_block: Option<u64>) -> Self {
        ClosedPair {
            start,
            receipt_path: dir.join(receipt_file_name(start)),
            log_path: dir.join(log_file_name(start)),
            max_block,
        }
    }
}

/// What the directory listing holds, grouped by pair.
#[derive(Debug, Default)]
pub struct Listing {
    /// Starts with both files present, ascending.
    pub pairs: Vec<u64>,
    /// Pair files whose counterpart is missing.
    pub lone: Vec<String>,
}

pub fn group_listing(names: &[String]) -> Listing {
    use std::collections::BTreeMap;
    let mut by_start: BTreeMap<u64, (Option<&String>, Option<&String>)> = BTreeMap::new();
    for n in names {
        if let Some((kind, start)) = parse_pair_name(n) {
            let e = by_start.entry(start).or_default();
            match kind {
                FileKind::Receipts => e.0 = Some(n),
                FileKind::Logs => e.1 = Some(n),
            }
        }
    }
    let mut listing = Listing::default();
    for (start, (r, l)) in by_start {
        match (r, l) {
            (Some(_), Some(_)) => listing.pairs.push(start),
            (Some(x), None) | (None, Some(x)) => listing.lone.push(x.clone()),
            (None, None) => unreachable!("entry created with one file"),
        }
    }
    listing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_names_are_pair_files() {
        assert_eq!(
            parse_pair_name("receipts_12.parquet"),
            Some((FileKind::Receipts, 12))
        );
        assert_eq!(parse_pair_name("logs_0.parquet"), Some((FileKind::Logs, 0)));
        for bad in [
            "invalid.parquet",
            "receipts_.parquet",
            "receipts_1x.parquet",
            "logs_3.parquet.tmp",
            "receipts_-1.parquet",
        ] {
            assert_eq!(parse_pair_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn pairs_need_both_files() {
        let names: Vec<String> = [
            "logs_0.parquet",
            "receipts_0.parquet",
            "receipts_4.parquet",
            "notes.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = group_listing(&names);
        assert_eq!(l.pairs, vec![0]);
        assert_eq!(l.lone, vec!["receipts_4.parquet".to_string()]);
    }
}
