//! The write-ahead log that covers the open window.
//!
//! Segments live in `<dir>/wal/` and are named by the sequence number of their first record
//! (`00000000000000000001.wal`). Records are only ever appended; the front is dropped a whole
//! segment at a time: before a rotation's boundary record is appended the coordinator rolls to a
//! fresh segment, so once the closed pair is durable every older segment can simply be removed.
//!
//! On open, a record that fails its checksum in the last segment with no valid record after it is
//! a torn tail and is cut off; any other bad record is an error naming the file and offset.

pub mod record;

use crate::env::{Fs, FsFile};
use crate::error::WalError;
use crate::mark;
use crate::types::{ReceiptInput, SyncPolicy};
pub use record::WalRecord;
use record::{
    decode_header, decode_payload, encode_frame, FRAME_HEADER_BYTES, MAX_RECORD_PAYLOAD_BYTES,
};
use std::path::{Path, PathBuf};

pub const WAL_DIR_NAME: &str = "wal";
/// Scratch file of the rewrite at open; never parsed as a segment.
const REWRITE_TMP: &str = "rewrite.tmp";
const SEGMENT_SUFFIX: &str = ".wal";

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name; anything else in the WAL directory is ignored.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct SegmentScan {
    pub records: Vec<WalRecord>,
    /// Byte length of the valid prefix.
    pub valid_len: u64,
    /// Set when bytes after `valid_len` were not a valid record.
    pub bad_offset: Option<u64>,
    /// Set when a valid record was found after the bad one (so it is not a torn tail).
    pub valid_after_bad: bool,
    pub reason: String,
}

/// Scans a segment's bytes. Pure: used by open and by the read-only inspector.
pub fn scan_segment(bytes: &[u8], expected_first_seq: u64) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut pos = 0usize;
    let mut next_seq = expected_first_seq;
    while pos < bytes.len() {
        match parse_frame_at(bytes, pos, Some(next_seq)) {
            Ok((rec, end)) => {
                next_seq = rec.seq + 1;
                scan.records.push(rec);
                pos = end;
            }
            Err(reason) => {
                scan.bad_offset = Some(pos as u64);
                scan.reason = reason;
                // A torn tail has no valid record after it; look for one (bounded by the rest
                // of this segment, only on this error path).
                scan.valid_after_bad = (pos + 1..bytes.len())
                    .any(|p| matches!(parse_frame_at(bytes, p, None), Ok((rec, _)) if rec.seq >= next_seq));
                break;
            }
        }
    }
    scan.valid_len = pos as u64;
    scan
}

/// Parses the frame at `pos`; with `want_seq`, a frame with another sequence number is invalid.
fn parse_frame_at(
    bytes: &[u8],
    pos: usize,
    want_seq: Option<u64>,
) -> Result<(WalRecord, usize), String> {
    let rest = &bytes[pos..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Err(format!("short frame header ({} bytes)", rest.len()));
    }
    let h = decode_header(rest);
    if h.len > MAX_RECORD_PAYLOAD_BYTES {
        return Err(format!("frame length {} over the limit", h.len));
    }
    if rest.len() - FRAME_HEADER_BYTES < h.len {
        return Err(format!(
            "frame of {} bytes runs past the end of the segment",
            h.len
        ));
    }
    let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.len];
    if record::checksum(h.seq, payload) != h.crc {
        return Err("checksum mismatch".to_string());
    }
    if let Some(want) = want_seq.filter(|&w| w != h.seq) {
        return Err(format!("sequence {} where {want} was expected", h.seq));
    }
    let rec = decode_payload(h.seq, payload)
        .map_err(|e| format!("checksummed payload does not decode: {e}"))?;
    Ok((rec, pos + FRAME_HEADER_BYTES + h.len))
}

async fn read_all<F: Fs>(fs: &F, path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let file = fs.open(path).await?;
    let len = file.len().await?;
    file.read_at(0, len as usize).await
}

/// The open WAL. Owned by the coordinator.
pub struct Wal<F: Fs> {
    fs: F,
    dir: PathBuf,
    policy: SyncPolicy,
    segment_limit_bytes: u64,
    /// Older segments, oldest first (the active one is not in here).
    sealed: Vec<Segment>,
    active: Segment,
    active_file: F::File,
    active_len: u64,
    next_seq: u64,
}

/// Every valid record of a WAL directory, read at open before anything is rewritten: the caller
/// decides which records are still needed (see [`WalContents::open`]).
pub struct WalContents<F: Fs> {
    fs: F,
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Every valid record, in sequence order, duplicates merged.
    pub records: Vec<WalRecord>,
}

impl<F: Fs> Wal<F> {
    /// Reads (creating the directory if needed) every record of the WAL under `data_dir/wal`,
    /// cutting a torn tail. Nothing else is written until [`WalContents::open`].
    pub async fn read(fs: F, data_dir: &Path) -> Result<WalContents<F>, WalError> {
        let dir = data_dir.join(WAL_DIR_NAME);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        fs.create_dir_all(&dir).await.map_err(io(&dir))?;
        let mut segments: Vec<Segment> = fs
            .list(&dir)
            .await
            .map_err(io(&dir))?
            .iter()
            .filter_map(|n| {
                parse_segment_name(n).map(|s| Segment {
                    first_seq: s,
                    path: dir.join(n),
                })
            })
            .collect();
        segments.sort_by_key(|s| s.first_seq);

        let mut records: Vec<WalRecord> = Vec::new();
        let segment_count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            let bytes = read_all(&fs, &seg.path).await.map_err(io(&seg.path))?;
            let scan = scan_segment(&bytes, seg.first_seq);
            if let Some(offset) = scan.bad_offset {
                let last = i + 1 == segment_count;
                if !last || scan.valid_after_bad {
                    mark!("wal-corrupt-record-refused");
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset,
                        reason: scan.reason,
                    });
                }
                // Torn tail: cut it so the next append starts on a record boundary.
                mark!("wal-torn-tail-cut");
                let mut f = fs.open_append(&seg.path).await.map_err(io(&seg.path))?;
                f.truncate(scan.valid_len).await.map_err(io(&seg.path))?;
                f.sync_all().await.map_err(io(&seg.path))?;
            }
            // Segments left behind by an undone removal can precede a gap; they are older than
            // everything after them and replay skips what is already in closed files. A rewrite
            // interrupted between its rename and its removals leaves the same records in two
            // segments: identical records under one sequence number are one record.
            for rec in scan.records {
                match records.last() {
                    Some(prev) if rec.seq <= prev.seq => {
                        let i = records.partition_point(|r| r.seq < rec.seq);
                        if records.get(i) != Some(&rec) {
                            mark!("wal-corrupt-record-refused");
                            return Err(WalError::Corrupt {
                                path: seg.path.clone(),
                                offset: 0,
                                reason: format!(
                                    "record {} differs from the one already read",
                                    rec.seq
                                ),
                            });
                        }
                        mark!("wal-duplicate-record-merged");
                    }
                    _ => records.push(rec),
                }
            }
        }

        Ok(WalContents {
            fs,
            dir,
            segments,
            records,
        })
    }
}

impl<F: Fs> WalContents<F> {
    /// Opens the WAL for appending, keeping only the records at or above block `floor` (those
    /// below are held by durable closed pairs or were pruned with them) and returning them.
    pub async fn open(
        self,
        policy: SyncPolicy,
        segment_limit_bytes: u64,
        floor: u64,
    ) -> Result<(Wal<F>, Vec<WalRecord>), WalError> {
        let WalContents {
            fs,
            dir,
            mut segments,
            records,
        } = self;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        let next_seq = records
            .last()
            .map(|r| r.seq + 1)
            .unwrap_or_else(|| segments.last().map(|s| s.first_seq).unwrap_or(1));
        let read_count = records.len();
        let records: Vec<WalRecord> = records.into_iter().filter(|r| r.height >= floor).collect();
        if records.len() < read_count {
            mark!("wal-records-below-floor-dropped");
        }
        if records.is_empty() && read_count > 0 {
            // Nothing is needed any more: start afresh at the next sequence number.
            for seg in segments.drain(..) {
                fs.remove(&seg.path).await.map_err(io(&seg.path))?;
            }
        }
        if !records.is_empty() {
            // Rewrite every valid record into a fresh, fsynced segment before anything is
            // replayed or acked on top of it. After a failed fsync (fsyncgate) the old pages can
            // still be readable from the page cache although they will never reach the disk, and
            // a later fsync of the same file does not bring them back: only new writes do.
            mark!("wal-rewritten-at-open");
            let first = records[0].seq;
            let tmp = dir.join(REWRITE_TMP);
            let mut f = fs.create(&tmp).await.map_err(io(&tmp))?;
            for r in &records {
                f.append(&encode_frame(r.seq, r.height, &r.receipts))
                    .await
                    .map_err(io(&tmp))?;
            }
            f.sync_data().await.map_err(io(&tmp))?;
            drop(f);
            let target = dir.join(segment_name(first));
            fs.rename(&tmp, &target).await.map_err(io(&target))?;
            for seg in segments.drain(..) {
                if seg.path != target {
                    fs.remove(&seg.path).await.map_err(io(&seg.path))?;
                }
            }
            fs.sync_dir(&dir).await.map_err(io(&dir))?;
            segments.push(Segment {
                first_seq: first,
                path: target,
            });
        }
        let (active, active_file, active_len) = match segments.pop() {
            Some(seg) => {
                let file = fs.open_append(&seg.path).await.map_err(io(&seg.path))?;
                let len = file.len().await.map_err(io(&seg.path))?;
                (seg, file, len)
            }
            None => {
                let path = dir.join(segment_name(next_seq));
                let file = fs.create(&path).await.map_err(io(&path))?;
                fs.sync_dir(&dir).await.map_err(io(&dir))?;
                (
                    Segment {
                        first_seq: next_seq,
                        path,
                    },
                    file,
                    0,
                )
            }
        };
        let wal = Wal {
            fs,
            dir,
            policy,
            segment_limit_bytes,
            sealed: segments,
            active,
            active_file,
            active_len,
            next_seq,
        };
        Ok((wal, records))
    }
}

impl<F: Fs> Wal<F> {

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one record; with policy `always` it is fsynced before this returns.
    pub async fn append(
        &mut self,
        height: u64,
        receipts: &[ReceiptInput],
    ) -> Result<u64, WalError> {
        let seq = self.next_seq;
        let frame = encode_frame(seq, height, receipts);
        if frame.len() - FRAME_HEADER_BYTES > MAX_RECORD_PAYLOAD_BYTES {
            return Err(WalError::RecordTooLarge {
                len: frame.len(),
                limit: MAX_RECORD_PAYLOAD_BYTES,
            });
        }
        let path = self.active.path.clone();
        let io = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        self.active_file.append(&frame).await.map_err(io)?;
        self.active_len += frame.len() as u64;
        self.next_seq += 1;
        if self.policy == SyncPolicy::Always && !crate::planted!(AckBeforeWalFsync) {
            let synced = self.active_file.sync_data().await;
            if synced.is_err() && crate::planted!(TrustRetriedFsync) {
                self.active_file.sync_data().await.map_err(io)?;
            } else {
                synced.map_err(io)?;
            }
        }
        if self.active_len >= self.segment_limit_bytes {
            self.roll().await?;
        }
        Ok(seq)
    }

    /// Starts a new segment (no-op when the active one is empty). The new entry is made durable
    /// before returning, whatever the sync policy, because dropping older segments relies on it.
    pub async fn roll(&mut self) -> Result<(), WalError> {
        if self.active_len == 0 {
            return Ok(());
        }
        if self.policy == SyncPolicy::Never {
            // Records in the segment we leave must be durable before anything that assumes a
            // segment boundary; with `never` they were not synced on append.
            let path = self.active.path.clone();
            self.active_file
                .sync_data()
                .await
                .map_err(|source| WalError::Io { path, source })?;
        }
        mark!("wal-roll");
        let path = self.dir.join(segment_name(self.next_seq));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| WalError::Io { path: p, source }
        };
        let file = self.fs.create(&path).await.map_err(io(&path))?;
        self.fs.sync_dir(&self.dir).await.map_err(io(&self.dir))?;
        let old = std::mem::replace(
            &mut self.active,
            Segment {
                first_seq: self.next_seq,
                path,
            },
        );
        self.sealed.push(old);
        self.active_file = file;
        self.active_len = 0;
        Ok(())
    }

    /// Removes every sealed segment whose records all precede `keep_from_seq`, then syncs the
    /// directory. Only call once the data those records cover is durable elsewhere.
    pub async fn drop_before(&mut self, keep_from_seq: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        while let Some(first) = self.sealed.first() {
            let next_first = self
                .sealed
                .get(1)
                .map(|s| s.first_seq)
                .unwrap_or(self.active.first_seq);
            if next_first > keep_from_seq {
                break;
            }
            let path = first.path.clone();
            self.fs.remove(&path).await.map_err(|source| WalError::Io {
                path: path.clone(),
                source,
            })?;
            self.sealed.remove(0);
            removed += 1;
        }
        if removed > 0 {
            mark!("wal-segments-dropped");
            let dir = self.dir.clone();
            self.fs
                .sync_dir(&dir)
                .await
                .map_err(|source| WalError::Io { path: dir, source })?;
        }
        Ok(removed)
    }

    /// Number of segment files, active included.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }
}
