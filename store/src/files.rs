//! File naming, the catalogue of closed pairs, the startup listing, and the two ways the store
//! lets go of a file: [`discard`] (delete what is provably covered elsewhere) and [`quarantine`]
//! (keep what it cannot use, out of the way, for an operator to look at).
//!
//! Names in the data directory:
//! * `receipts_<N>.parquet`, `logs_<N>.parquet`: a finished (finalized, fsynced) pair. Every
//!   `*.parquet` in the directory is one, so other engines can glob a live directory.
//! * `.receipts_<N>.parquet.open`, `.logs_<N>.parquet.open`: the open pair while it is written.
//!   Globs (`*.parquet`, and the hidden-file rules of pyarrow, Spark and shells) skip them; the
//!   pair is renamed to its final names when it is finalized, then the directory is synced.
//! * `quarantine/<original name>.<reason>.<k>`: files the store could not use (see
//!   [`QuarantineReason`]); never read or deleted by the store.
//! * `wal/`: the write-ahead log (see `wal`).

use crate::env::{Fs, FsFile};
use crate::mark;
use crate::parquet::reader::FileKind;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

/// Folder (inside the data directory) of everything the store could not use.
pub const QUARANTINE_DIR_NAME: &str = "quarantine";
const FINAL_SUFFIX: &str = ".parquet";
const OPEN_PREFIX: &str = ".";
const OPEN_SUFFIX: &str = ".parquet.open";

/// Errors of file-level housekeeping (discard, quarantine).
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no free quarantine name for {original} after {attempts} attempts")]
    QuarantineFull { original: String, attempts: usize },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<FilesError>),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FilesError {
    let path = path.to_path_buf();
    move |source| FilesError::Io { path, source }
}

pub fn receipt_file_name(start: u64) -> String {
    format!("receipts_{start}{FINAL_SUFFIX}")
}

pub fn log_file_name(start: u64) -> String {
    format!("logs_{start}{FINAL_SUFFIX}")
}

/// The name of a file of the open (unfinished) pair: hidden, and not ending in `.parquet`.
pub fn open_file_name(kind: FileKind, start: u64) -> String {
    let stem = match kind {
        FileKind::Receipts => "receipts",
        FileKind::Logs => "logs",
    };
    format!("{OPEN_PREFIX}{stem}_{start}{OPEN_SUFFIX}")
}

pub fn final_file_name(kind: FileKind, start: u64) -> String {
    match kind {
        FileKind::Receipts => receipt_file_name(start),
        FileKind::Logs => log_file_name(start),
    }
}

fn parse_stem(stem: &str) -> Option<(FileKind, u64)> {
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

/// Parses `receipts_<N>.parquet` / `logs_<N>.parquet`. Unlike upstream, a name that does not
/// parse is not a pair file at all (upstream maps it to start 0).
pub fn parse_pair_name(name: &str) -> Option<(FileKind, u64)> {
    parse_stem(name.strip_suffix(FINAL_SUFFIX)?)
}

/// Parses `.receipts_<N>.parquet.open` / `.logs_<N>.parquet.open`, a file of the open pair.
pub fn parse_open_pair_name(name: &str) -> Option<(FileKind, u64)> {
    parse_stem(name.strip_prefix(OPEN_PREFIX)?.strip_suffix(OPEN_SUFFIX)?)
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

/// One file of a pair as listed: whether it carries its final name or the open pair's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Final,
    Open,
}

/// The files listed for one pair start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairFiles {
    pub receipts: Option<Named>,
    pub logs: Option<Named>,
}

/// What the directory listing holds, grouped by pair.
#[derive(Debug, Default)]
pub struct Listing {
    /// Starts with both files present under their final names, ascending.
    pub pairs: Vec<u64>,
    /// Final-named pair files whose partner is missing under either name.
    pub lone: Vec<String>,
    /// Starts without a complete final pair but with at least one file under the open pair's
    /// name, and what each file of the pair is called (the open name wins).
    pub open: BTreeMap<u64, PairFiles>,
    /// Open-named files of a start whose final pair is complete: left by no crash of the store.
    pub stray_open: Vec<String>,
}

pub fn group_listing(names: &[String]) -> Listing {
    // Per start: (final receipts, final logs, open receipts, open logs).
    let mut by_start: BTreeMap<u64, [bool; 4]> = BTreeMap::new();
    for n in names {
        let (kind, start, open) = match (parse_pair_name(n), parse_open_pair_name(n)) {
            (Some((k, s)), _) => (k, s, false),
            (None, Some((k, s))) => (k, s, true),
            (None, None) => continue,
        };
        let slot = match (kind, open) {
            (FileKind::Receipts, false) => 0,
            (FileKind::Logs, false) => 1,
            (FileKind::Receipts, true) => 2,
            (FileKind::Logs, true) => 3,
        };
        by_start.entry(start).or_default()[slot] = true;
    }
    let mut listing = Listing::default();
    for (start, [fr, fl, or, ol]) in by_start {
        let named = |open: bool, fin: bool| match (open, fin) {
            (true, _) => Some(Named::Open),
            (false, true) => Some(Named::Final),
            (false, false) => None,
        };
        if fr && fl {
            listing.pairs.push(start);
            for (present, kind) in [(or, FileKind::Receipts), (ol, FileKind::Logs)] {
                if present {
                    listing.stray_open.push(open_file_name(kind, start));
                }
            }
        } else if or || ol {
            listing.open.insert(
                start,
                PairFiles {
                    receipts: named(or, fr),
                    logs: named(ol, fl),
                },
            );
        } else if fr {
            listing.lone.push(receipt_file_name(start));
        } else {
            listing.lone.push(log_file_name(start));
        }
    }
    listing
}

/// Removes `path` if it exists. `Ok(false)` when it was already gone.
pub async fn remove_if_present<F: Fs>(fs: &F, path: &Path) -> Result<bool, FilesError> {
    match fs.remove(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Deletes files the store can prove are covered elsewhere (an unfinished pair whose rows are in
/// the WAL, a pruned window), then syncs `dir` so the deletions are durable. Files already gone
/// are fine. Every removal is attempted and every error is returned.
pub async fn discard<F: Fs>(fs: &F, dir: &Path, paths: &[PathBuf]) -> Result<(), FilesError> {
    let mut errors = Vec::new();
    for p in paths {
        if let Err(e) = remove_if_present(fs, p).await {
            errors.push(e);
        }
    }
    if let Err(e) = fs.sync_dir(dir).await {
        errors.push(io_err(dir)(e));
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(FilesError::Several(errors)),
    }
}

/// Why a file went to quarantine. The tag is part of the quarantined file's name, so `inspect`
/// can tell the reasons apart without the store's `Status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineReason {
    /// A pair file whose partner is missing and whose rows are in no WAL record: a finished
    /// file, or one without a footer (its trailer may have rotted) that no WAL record covers.
    LonePairFile,
    /// A file under the open pair's name below a closed pair: no crash of the store leaves one.
    StrayOpenPairFile,
    /// The bytes cut from the end of the WAL: a torn, unfinished append.
    TornWalTail { offset_bytes: u64 },
    /// The bytes cut from the end of the WAL: a completely written record damaged since.
    CorruptWalTail { offset_bytes: u64 },
    /// A WAL segment with corrupt records whose blocks are all in closed files: nothing lost.
    CoveredWalCorruption { offset_bytes: u64 },
}

impl QuarantineReason {
    /// The reason as it appears in the quarantined file's name (no dots).
    pub fn tag(&self) -> String {
        match self {
            QuarantineReason::LonePairFile => "lone".to_string(),
            QuarantineReason::StrayOpenPairFile => "stray".to_string(),
            QuarantineReason::TornWalTail { offset_bytes } => {
                format!("torn-tail-at-{offset_bytes}")
            }
            QuarantineReason::CorruptWalTail { offset_bytes } => {
                format!("corrupt-tail-at-{offset_bytes}")
            }
            QuarantineReason::CoveredWalCorruption { offset_bytes } => {
                format!("covered-corrupt-at-{offset_bytes}")
            }
        }
    }

    /// Whether an operator must look at it: something the store served, or was asked to keep,
    /// may be gone. A torn tail is an append a crash interrupted (nothing acknowledged under
    /// sync policy `always`); covered corruption lost nothing.
    pub fn needs_attention(tag: &str) -> bool {
        !(tag.starts_with("torn-tail") || tag.starts_with("covered-corrupt"))
    }
}

/// A file in quarantine, as `Status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantinedFile {
    /// Where the file (or the bytes) came from.
    pub original: PathBuf,
    /// Where they are now.
    pub path: PathBuf,
    pub reason: QuarantineReason,
}

/// Splits a quarantined file's name into (original name, reason tag, k).
pub fn parse_quarantine_name(name: &str) -> Option<(&str, &str, u64)> {
    let mut parts = name.rsplitn(3, '.');
    let k = parts.next()?.parse().ok()?;
    let tag = parts.next()?;
    let original = parts.next()?;
    Some((original, tag, k))
}

/// What to put in quarantine.
pub enum Evidence<'a> {
    /// Move this file (a rename: same filesystem, nothing copied).
    File(&'a Path),
    /// Write these bytes (cut from a file that stays), under `original`'s name.
    Bytes { original: &'a Path, bytes: &'a [u8] },
}

/// Bound on the names tried for one quarantined file (`k` in `<name>.<reason>.<k>`).
pub const QUARANTINE_NAME_ATTEMPTS_MAX: usize = 1 << 16;

/// Keeps something the store cannot use in `<dir>/quarantine/`, under a name that keeps the
/// original name and adds the reason and a number that makes it unique, then makes it durable:
/// the quarantine folder is synced first, then the folder the file left, so a power loss at any
/// point leaves the file in one place or both, never in none. Every "can't use this" path of the
/// store goes through here; nothing in quarantine is ever read or deleted by the store.
pub async fn quarantine<F: Fs>(
    fs: &F,
    dir: &Path,
    evidence: Evidence<'_>,
    reason: QuarantineReason,
) -> Result<QuarantinedFile, FilesError> {
    let qdir = dir.join(QUARANTINE_DIR_NAME);
    fs.create_dir_all(&qdir).await.map_err(io_err(&qdir))?;
    // The folder's own entry: synced once it exists (cheap, and needed the first time).
    fs.sync_dir(dir).await.map_err(io_err(dir))?;
    let original = match &evidence {
        Evidence::File(p) | Evidence::Bytes { original: p, .. } => p.to_path_buf(),
    };
    let base = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let taken: BTreeSet<String> = fs
        .list(&qdir)
        .await
        .map_err(io_err(&qdir))?
        .into_iter()
        .collect();
    let tag = reason.tag();
    let name = (1..=QUARANTINE_NAME_ATTEMPTS_MAX as u64)
        .map(|k| format!("{base}.{tag}.{k}"))
        .find(|n| !taken.contains(n))
        .ok_or(FilesError::QuarantineFull {
            original: base.clone(),
            attempts: QUARANTINE_NAME_ATTEMPTS_MAX,
        })?;
    let target = qdir.join(&name);
    match evidence {
        Evidence::File(path) => {
            fs.rename(path, &target).await.map_err(io_err(path))?;
            fs.sync_dir(&qdir).await.map_err(io_err(&qdir))?;
            let from = path.parent().unwrap_or(dir);
            fs.sync_dir(from).await.map_err(io_err(from))?;
        }
        Evidence::Bytes { bytes, .. } => {
            let mut f = fs.create_new(&target).await.map_err(io_err(&target))?;
            let written = match f.append(bytes).await {
                Ok(()) => f.sync_all().await,
                Err(e) => Err(e),
            };
            drop(f);
            if let Err(e) = written {
                // A copy whose bytes may never reach the disk (a failed fsync drops them) is no
                // evidence: remove it, best effort, so a retry's copy is the only one. The
                // bytes are still in the file they are cut from, which nothing changed yet.
                mark!("quarantine-failed-copy-removed");
                let _ = fs.remove(&target).await;
                return Err(io_err(&target)(e));
            }
            fs.sync_dir(&qdir).await.map_err(io_err(&qdir))?;
        }
    }
    Ok(QuarantinedFile {
        original,
        path: target,
        reason,
    })
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
            // `u64::from_str` takes a leading `+`: the digit check must refuse it first
            // (cargo-mutants: weakening that check passed every other test).
            "receipts_+5.parquet",
            "logs_+0.parquet",
            ".receipts_1.parquet.open",
        ] {
            assert_eq!(parse_pair_name(bad), None, "{bad}");
        }
    }

    /// `discard` tries every removal and returns every failure: one failure as itself (callers
    /// and `Error::Files` see an `Io` naming the path), more as `Several`.
    #[tokio::test]
    async fn discard_returns_one_failure_as_itself_and_keeps_them_all() {
        use crate::env::real::RealFs;
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        // A directory cannot be removed as a file: a failure other than "not found".
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let gone = tmp.path().join("never-there");
        match discard(&RealFs, tmp.path(), &[gone.clone(), a.clone()]).await {
            Err(FilesError::Io { path, .. }) => assert_eq!(path, a),
            other => panic!("one failure, as itself: {other:?}"),
        }
        match discard(&RealFs, tmp.path(), &[a.clone(), gone, b.clone()]).await {
            Err(FilesError::Several(errors)) => assert_eq!(errors.len(), 2, "{errors:?}"),
            other => panic!("both failures: {other:?}"),
        }
    }

    #[test]
    fn open_pair_names_never_end_in_parquet_and_round_trip() {
        for kind in [FileKind::Receipts, FileKind::Logs] {
            let n = open_file_name(kind, 40);
            assert!(!n.ends_with(".parquet") && n.starts_with('.'), "{n}");
            assert_eq!(parse_open_pair_name(&n), Some((kind, 40)));
            assert_eq!(parse_pair_name(&n), None);
        }
        assert_eq!(parse_open_pair_name("receipts_4.parquet.open"), None);
    }

    #[test]
    fn pairs_need_both_files_and_open_names_are_kept_apart() {
        let names: Vec<String> = [
            ".logs_8.parquet.open",
            ".receipts_8.parquet.open",
            ".receipts_12.parquet.open",
            ".logs_0.parquet.open",
            "logs_0.parquet",
            "logs_12.parquet",
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
        assert_eq!(l.stray_open, vec![".logs_0.parquet.open".to_string()]);
        let open = |r, l| PairFiles {
            receipts: Some(r),
            logs: Some(l),
        };
        assert_eq!(
            l.open.into_iter().collect::<Vec<_>>(),
            vec![
                (8, open(Named::Open, Named::Open)),
                (12, open(Named::Open, Named::Final))
            ]
        );
    }

    #[test]
    fn quarantine_names_split_back_into_their_parts() {
        let r = QuarantineReason::CorruptWalTail { offset_bytes: 96 };
        let name = format!("00000000000000000001.wal.{}.3", r.tag());
        assert_eq!(
            parse_quarantine_name(&name),
            Some(("00000000000000000001.wal", "corrupt-tail-at-96", 3))
        );
        assert!(QuarantineReason::needs_attention("corrupt-tail-at-96"));
        assert!(QuarantineReason::needs_attention("lone"));
        assert!(!QuarantineReason::needs_attention("torn-tail-at-0"));
        assert!(!QuarantineReason::needs_attention("covered-corrupt-at-0"));
    }
}
