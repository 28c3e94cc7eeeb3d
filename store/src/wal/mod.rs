//! The write-ahead log that covers the open window.
//!
//! Segments live in `<dir>/wal/` and are named by the sequence number of their first record
//! (`00000000000000000001.wal`). Records are only ever appended; the front is dropped a whole
//! segment at a time: before a rotation's boundary record is appended the coordinator rolls to a
//! fresh segment, so once the closed pair is durable every older segment can simply be removed.
//!
//! Open reads every segment and decides, once, what each bad stretch of bytes is:
//!
//! | bad bytes                                   | record blocks (next valid record's height) | action                                      |
//! |---------------------------------------------|--------------------------------------------|---------------------------------------------|
//! | a valid record follows (anywhere in the log) | below the floor (all in closed files)      | segment copied to quarantine, open goes on  |
//! | a valid record follows                      | at or above the floor, or unknown           | error naming the file and offset            |
//! | nothing valid follows (the tail), no valid trailer | -                                   | torn append: bytes quarantined, then cut    |
//! | nothing valid follows, a valid trailer      | -                                           | corrupt record: bytes quarantined, then cut |
//!
//! The floor is the first block not in a closed file: records below it are not needed, and the
//! rewrite at open (see [`Wal::open`]) keeps only the records at or above it.

pub mod record;

use crate::env::{Fs, FsFile};
use crate::error::WalError;
use crate::files::{quarantine, Evidence, QuarantineReason, QuarantinedFile};
use crate::mark;
use crate::types::{ReceiptInput, SyncPolicy};
use bytes::Bytes;
use record::{
    check_payload, decode_marker, decode_v1_header, frame_of_payload, starts_v2,
    FRAME_V1_HEADER_BYTES, HEAD_MAGIC, MARKER_BYTES, MAX_RECORD_PAYLOAD_BYTES, TAIL_MAGIC,
};
pub use record::{PendingFrame, WalRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const WAL_DIR_NAME: &str = "wal";
/// Scratch file of the rewrite at open; never parsed as a segment.
pub const REWRITE_TMP: &str = "rewrite.tmp";
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

/// What bytes cut from the end of the WAL were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalTailKind {
    /// An append that never completed (no valid trailer): under sync policy `always` it was never
    /// acknowledged; under `never` it may have been.
    Torn,
    /// A completely written record (its trailer is valid) whose header or payload no longer
    /// matches its checksum: damaged after it was written.
    Corrupt,
}

/// The bytes open cut from the end of the WAL, reported in `Status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WalTailCut {
    pub segment: PathBuf,
    pub offset_bytes: u64,
    pub bytes: u64,
    pub kind: WalTailKind,
    /// The cut record's block (read from its valid header or trailer) is in a closed file:
    /// nothing was lost.
    pub covered: bool,
    /// Where the cut bytes are kept.
    pub quarantined: PathBuf,
}

/// What open did besides reading records: reported in `Status`.
#[derive(Clone, Debug, Default)]
pub struct WalOpenReport {
    pub tail_cut: Option<WalTailCut>,
    pub quarantined: Vec<QuarantinedFile>,
}

/// A stretch of bytes in a segment that is no valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRegion {
    pub offset_bytes: u64,
    pub end_bytes: u64,
    pub reason: String,
    /// A valid trailer shows the record there was completely written (so it is corrupt, not
    /// torn). Only v2 frames have trailers.
    pub complete: bool,
    /// The record's height, when its header or trailer is valid.
    pub height: Option<u64>,
    /// The region is exactly the one frame `height` belongs to (a valid header or trailer gives
    /// its length): only then does `height` bound every block the region held.
    pub single_frame: bool,
    /// Valid records of the segment before this region.
    pub records_before: usize,
}

/// Where one valid record sits in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    pub seq: u64,
    pub height: u64,
    pub start_bytes: usize,
    pub end_bytes: usize,
    /// The bytes are a whole v2 frame whose trailer repeats its header: exactly what
    /// `encode_frame` writes for this record, so the rewrite at open copies them as they are
    /// instead of encoding the decoded record again (a third of a full window's open time).
    pub exact: bool,
}

/// What a scan of one segment found. The decoded records are returned beside it (see
/// [`scan_segment`]), so whoever needs them owns them and nobody holds them twice.
#[derive(Debug, Default)]
pub struct SegmentScan {
    /// Every valid record's place, in order, including those after a bad region.
    pub frames: Vec<FrameSpan>,
    /// Byte length of the valid prefix (up to the first bad region).
    pub valid_len: u64,
    /// Offset of the first bad region.
    pub bad_offset: Option<u64>,
    /// Set when a valid record was found after the first bad region (so it is not a torn tail).
    pub valid_after_bad: bool,
    /// Why the first bad region is bad.
    pub reason: String,
    /// Every bad region, in order.
    pub bad: Vec<BadRegion>,
}

impl SegmentScan {
    /// The bad region at the end of the segment, if no valid record follows it.
    pub fn tail(&self) -> Option<&BadRegion> {
        self.bad
            .last()
            .filter(|b| b.records_before == self.frames.len())
    }
}

/// One frame's verdict.
enum Frame {
    /// The record, where its frame ends, and whether the frame is exact (see [`FrameSpan`]).
    Valid(WalRecord, usize, bool),
    Bad {
        reason: String,
        complete: bool,
        height: Option<u64>,
        /// Where this frame ends, when a valid header or trailer gives its length.
        frame_end: Option<usize>,
    },
}

/// Scans a segment's bytes and returns what it found with every valid record, decoded, in
/// order (`scan.frames[i]` is where record `i` sits). Pure: used by open and by the read-only
/// inspector. After a bad frame the scan looks for the next valid frame (a sequence number not
/// below the expected one) and goes on from there; the look-ahead is bounded by the segment's
/// length.
pub fn scan_segment(bytes: &Bytes, expected_first_seq: u64) -> (SegmentScan, Vec<WalRecord>) {
    let mut scan = SegmentScan::default();
    let mut records = Vec::new();
    // v1 frames carry no magic, so the look-ahead tries them only in segments written in v1.
    let allow_v1 = !starts_v2(bytes);
    let mut pos = 0usize;
    let mut next_seq = expected_first_seq;
    while pos < bytes.len() {
        match parse_frame_at(bytes, pos, Some(next_seq), allow_v1) {
            Frame::Valid(rec, end, exact) => {
                next_seq = rec.seq + 1;
                scan.frames.push(FrameSpan {
                    seq: rec.seq,
                    height: rec.height,
                    start_bytes: pos,
                    end_bytes: end,
                    exact,
                });
                records.push(rec);
                pos = end;
            }
            Frame::Bad {
                reason,
                complete,
                height,
                frame_end,
            } => {
                let resume = (pos + 1..bytes.len()).find_map(|p| {
                    match parse_frame_at(bytes, p, None, allow_v1) {
                        Frame::Valid(rec, ..) if rec.seq >= next_seq => Some((p, rec.seq)),
                        _ => None,
                    }
                });
                let end = resume.map_or(bytes.len(), |(p, _)| p);
                // A valid trailer anywhere in the region was written by an append that
                // completed (the trailer is the append's last bytes), so the region is no single
                // torn append, whatever became of the first frame's own trailer.
                let complete = complete || trailer_within(bytes, pos, end, next_seq);
                if let Some((_, seq)) = resume {
                    next_seq = seq;
                }
                if scan.bad.is_empty() {
                    scan.valid_len = pos as u64;
                    scan.bad_offset = Some(pos as u64);
                    scan.valid_after_bad = resume.is_some();
                    scan.reason = reason.clone();
                }
                scan.bad.push(BadRegion {
                    offset_bytes: pos as u64,
                    end_bytes: end as u64,
                    reason,
                    complete,
                    height,
                    single_frame: frame_end == Some(end),
                    records_before: scan.frames.len(),
                });
                pos = end;
            }
        }
    }
    if scan.bad.is_empty() {
        scan.valid_len = pos as u64;
    }
    debug_assert_eq!(scan.frames.len(), records.len(), "one span per record");
    (scan, records)
}

/// Whether a valid trailer of a record numbered `min_seq` or later starts in `bytes[from..to]`.
fn trailer_within(bytes: &[u8], from: usize, to: usize, min_seq: u64) -> bool {
    let last_start = to.saturating_sub(MARKER_BYTES);
    (from..=last_start).any(|p| {
        bytes
            .get(p..p + MARKER_BYTES)
            .and_then(|b| decode_marker(b, TAIL_MAGIC))
            .is_some_and(|t| t.seq >= min_seq)
    })
}

/// Whether the segment's last bytes are a valid trailer of a record starting at `pos` (with
/// sequence number `want_seq`, when given): the record was completely written.
fn trailer_at_end(bytes: &[u8], pos: usize, want_seq: Option<u64>) -> Option<u64> {
    let start = bytes.len().checked_sub(MARKER_BYTES)?;
    let t = decode_marker(&bytes[start..], TAIL_MAGIC)?;
    let frame_len = t.payload_len.checked_add(2 * MARKER_BYTES)?;
    (pos.checked_add(frame_len) == Some(bytes.len()) && want_seq.is_none_or(|w| w == t.seq))
        .then_some(t.height)
}

/// Parses the frame at `pos`; with `want_seq`, a frame with another sequence number is invalid.
fn parse_frame_at(bytes: &Bytes, pos: usize, want_seq: Option<u64>, allow_v1: bool) -> Frame {
    let rest = &bytes[pos..];
    let bad = |reason: String| {
        let height = trailer_at_end(bytes, pos, want_seq);
        Frame::Bad {
            reason,
            complete: height.is_some(),
            height,
            frame_end: height.map(|_| bytes.len()),
        }
    };
    if !starts_v2(rest) {
        if !allow_v1 {
            return bad("no frame header".to_string());
        }
        return match parse_v1_frame(bytes, pos, want_seq) {
            Ok((rec, len)) => Frame::Valid(rec, pos + len, false),
            Err(reason) => bad(reason),
        };
    }
    let Some(h) = decode_marker(rest, HEAD_MAGIC) else {
        return bad(if rest.len() < MARKER_BYTES {
            format!("short frame header ({} bytes)", rest.len())
        } else {
            "frame header checksum mismatch".to_string()
        });
    };
    if h.payload_len > MAX_RECORD_PAYLOAD_BYTES {
        return bad(format!("frame length {} over the limit", h.payload_len));
    }
    let frame_len = 2 * MARKER_BYTES + h.payload_len;
    if rest.len() < MARKER_BYTES + h.payload_len {
        return Frame::Bad {
            reason: format!(
                "frame of {} bytes runs past the end of the segment",
                frame_len
            ),
            complete: false,
            height: Some(h.height),
            frame_end: None,
        };
    }
    let payload = &rest[MARKER_BYTES..MARKER_BYTES + h.payload_len];
    if record::checksum(h.seq, payload) != h.payload_crc {
        let trailer = rest
            .get(MARKER_BYTES + h.payload_len..frame_len)
            .and_then(|t| decode_marker(t, TAIL_MAGIC));
        return Frame::Bad {
            reason: "payload checksum mismatch".to_string(),
            complete: trailer == Some(h),
            height: Some(h.height),
            frame_end: Some(pos + frame_len),
        };
    }
    if let Some(want) = want_seq.filter(|&w| w != h.seq) {
        return Frame::Bad {
            reason: format!("sequence {} where {want} was expected", h.seq),
            complete: true,
            height: Some(h.height),
            frame_end: Some(pos + frame_len),
        };
    }
    let payload = bytes.slice(pos + MARKER_BYTES..pos + MARKER_BYTES + h.payload_len);
    match check_payload(h.seq, payload) {
        Ok(rec) if rec.height == h.height => {
            let exact = rest
                .get(MARKER_BYTES + h.payload_len..frame_len)
                .and_then(|t| decode_marker(t, TAIL_MAGIC))
                == Some(h);
            Frame::Valid(rec, pos + frame_len.min(rest.len()), exact)
        }
        Ok(rec) => Frame::Bad {
            reason: format!(
                "payload height {} under header height {}",
                rec.height, h.height
            ),
            complete: true,
            height: Some(h.height),
            frame_end: Some(pos + frame_len),
        },
        Err(e) => Frame::Bad {
            reason: format!("checksummed payload does not decode: {e}"),
            complete: true,
            height: Some(h.height),
            frame_end: Some(pos + frame_len),
        },
    }
}

fn parse_v1_frame(
    bytes: &Bytes,
    pos: usize,
    want_seq: Option<u64>,
) -> Result<(WalRecord, usize), String> {
    let rest = &bytes[pos..];
    if rest.len() < FRAME_V1_HEADER_BYTES {
        return Err(format!("short frame header ({} bytes)", rest.len()));
    }
    let h = decode_v1_header(rest);
    if h.len > MAX_RECORD_PAYLOAD_BYTES {
        return Err(format!("frame length {} over the limit", h.len));
    }
    if rest.len() - FRAME_V1_HEADER_BYTES < h.len {
        return Err(format!(
            "frame of {} bytes runs past the end of the segment",
            h.len
        ));
    }
    let payload = &rest[FRAME_V1_HEADER_BYTES..FRAME_V1_HEADER_BYTES + h.len];
    if record::checksum(h.seq, payload) != h.crc {
        return Err("checksum mismatch".to_string());
    }
    if let Some(want) = want_seq.filter(|&w| w != h.seq) {
        return Err(format!("sequence {} where {want} was expected", h.seq));
    }
    let start = pos + FRAME_V1_HEADER_BYTES;
    let rec = check_payload(h.seq, bytes.slice(start..start + h.len))
        .map_err(|e| format!("checksummed payload does not decode: {e}"))?;
    Ok((rec, FRAME_V1_HEADER_BYTES + h.len))
}

/// A whole file's bytes, and the handle they were read through.
async fn read_all<F: Fs>(fs: &F, path: &Path) -> Result<(F::File, Bytes), std::io::Error> {
    let file = fs.open(path).await?;
    let len = file.len().await?;
    let bytes = file.read_at(0, len as usize).await?;
    Ok((file, Bytes::from(bytes)))
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

/// One segment as read at open.
struct Scanned<F: Fs> {
    seg: Segment,
    /// The handle it was read through, held (never read again) so that replacing or removing
    /// the segment in the rewrite only unlinks it: its pages are freed when [`Replaced`] is.
    _file: F::File,
    bytes: Bytes,
    scan: SegmentScan,
}

/// The segments a rewrite at open replaced, still open, with their bytes as read. Dropping it
/// frees them: for a full window, a few hundred MB of page cache and of memory, which took the
/// rename over the old segment about 100 ms (a 475 MB window); the coordinator drops it off the
/// path of `open`.
pub struct Replaced<F: Fs> {
    _segments: Vec<Scanned<F>>,
}

/// A WAL directory read at open, before anything in it is written: every valid record, and what
/// each segment held. The caller decides the floor (see [`WalContents::open`]).
pub struct WalContents<F: Fs> {
    fs: F,
    data_dir: PathBuf,
    dir: PathBuf,
    segments: Vec<Segment>,
    scanned: Vec<Scanned<F>>,
    /// Every valid record, in sequence order, duplicates merged.
    pub records: Vec<WalRecord>,
    /// Where `records[i]` was read: (index into `scanned`, index into its `frames`).
    sources: Vec<(usize, usize)>,
}

impl<F: Fs> Wal<F> {
    /// Reads (creating the directory if needed) every segment of the WAL under `data_dir/wal`.
    /// Nothing is written until [`WalContents::open`].
    pub async fn read(fs: F, data_dir: &Path) -> Result<WalContents<F>, WalError> {
        Self::read_inner(fs, data_dir, true).await
    }

    /// As [`Wal::read`], but writes nothing at all: a missing WAL directory reads as an empty
    /// log (for `inspect`, which must never change a data directory).
    pub async fn read_only(fs: F, data_dir: &Path) -> Result<WalContents<F>, WalError> {
        Self::read_inner(fs, data_dir, false).await
    }

    async fn read_inner(fs: F, data_dir: &Path, create: bool) -> Result<WalContents<F>, WalError> {
        let dir = data_dir.join(WAL_DIR_NAME);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        if create {
            fs.create_dir_all(&dir).await.map_err(io(&dir))?;
        }
        let names = match fs.list(&dir).await {
            Ok(names) => names,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut segments: Vec<Segment> = names
            .iter()
            .filter_map(|n| {
                parse_segment_name(n).map(|s| Segment {
                    first_seq: s,
                    path: dir.join(n),
                })
            })
            .collect();
        segments.sort_by_key(|s| s.first_seq);
        // Segments are read and decoded in turn. Decoding them on the blocking pool and the write
        // lane while the next one was read made open slower, not faster (2.45-2.82 s against
        // 1.74-1.87 s for a 475 MB window, interleaved runs; not profiled: records allocated on
        // pool threads and freed on the coordinator's is one suspect).
        let mut scanned = Vec::with_capacity(segments.len());
        let mut decoded = Vec::with_capacity(segments.len());
        for seg in &segments {
            let (file, bytes) = read_all(&fs, &seg.path).await.map_err(io(&seg.path))?;
            let (scan, recs) = scan_segment(&bytes, seg.first_seq);
            scanned.push(Scanned {
                seg: seg.clone(),
                _file: file,
                bytes,
                scan,
            });
            decoded.push(recs);
        }
        // Segments left behind by an undone removal can precede a gap; they are older than
        // everything after them and replay skips what is already in closed files. A rewrite
        // interrupted between its rename and its removals leaves the same records in two
        // segments: identical records under one sequence number are one record.
        let mut records: Vec<WalRecord> = Vec::new();
        let mut sources: Vec<(usize, usize)> = Vec::new();
        for (si, (s, recs)) in scanned.iter().zip(decoded).enumerate() {
            for (fi, rec) in recs.into_iter().enumerate() {
                match records.last() {
                    Some(prev) if rec.seq <= prev.seq => {
                        let i = records.partition_point(|r| r.seq < rec.seq);
                        if records.get(i) != Some(&rec) {
                            mark!("wal-corrupt-record-refused");
                            return Err(WalError::Corrupt {
                                path: s.seg.path.clone(),
                                offset: 0,
                                reason: format!(
                                    "record {} differs from the one already read",
                                    rec.seq
                                ),
                            });
                        }
                        mark!("wal-duplicate-record-merged");
                    }
                    _ => {
                        records.push(rec);
                        sources.push((si, fi));
                    }
                }
            }
        }
        Ok(WalContents {
            fs,
            data_dir: data_dir.to_path_buf(),
            dir,
            segments,
            scanned,
            records,
            sources,
        })
    }
}

/// The bad regions open acts on, decided before anything is written.
struct BadRegionPlan<'a, F: Fs> {
    /// The first covered bad region of each segment whose copy goes to quarantine.
    covered: Vec<(&'a Scanned<F>, &'a BadRegion)>,
    /// Bad regions nothing valid follows: cut, after their bytes are kept.
    tails: Vec<(&'a Scanned<F>, &'a BadRegion)>,
}

/// A tail's kind (a valid trailer proves it was completely written) and whether its block is in
/// a closed file (read from its valid header or trailer). Only a tail of exactly one frame can be
/// covered: the height of a region's first frame says nothing of the frames after it, which may
/// hold blocks no closed file has (reporting those as covered would hide their loss).
fn tail_verdict(bad: &BadRegion, floor: u64) -> (WalTailKind, bool) {
    let kind = if bad.complete {
        WalTailKind::Corrupt
    } else {
        WalTailKind::Torn
    };
    let covered = bad.single_frame && bad.height.is_some_and(|h| h < floor);
    (kind, covered)
}

/// One segment as read, for `inspect`.
pub struct SegmentView<'a> {
    pub path: &'a Path,
    pub size_bytes: u64,
    pub scan: &'a SegmentScan,
}

/// What open would do with the WAL's bad bytes, for a floor (see [`WalContents::plan`]).
#[derive(Debug, Default)]
pub struct WalPlan {
    /// Open refuses: a bad record may hold blocks no closed file has.
    pub refused: Option<WalError>,
    /// Segments with corrupt records whose blocks are all in closed files: copied to quarantine.
    pub covered: Vec<(PathBuf, u64)>,
    /// Tails open cuts (bytes kept in quarantine): (segment, offset, kind, covered).
    pub tails: Vec<(PathBuf, u64, WalTailKind, bool)>,
}

impl<F: Fs> WalContents<F> {
    /// Every segment as read, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = SegmentView<'_>> {
        self.scanned.iter().map(|s| SegmentView {
            path: &s.seg.path,
            size_bytes: s.bytes.len() as u64,
            scan: &s.scan,
        })
    }

    /// What [`WalContents::open`] with this floor would do with bad bytes, decided by the same
    /// function; nothing is written.
    pub fn plan(&self, floor: u64) -> WalPlan {
        match Wal::<F>::plan_bad_regions(&self.scanned, floor) {
            Err(e) => WalPlan {
                refused: Some(e),
                ..WalPlan::default()
            },
            Ok(plan) => WalPlan {
                refused: None,
                covered: plan
                    .covered
                    .iter()
                    .map(|(s, bad)| (s.seg.path.clone(), bad.offset_bytes))
                    .collect(),
                tails: plan
                    .tails
                    .iter()
                    .map(|(s, bad)| {
                        let (kind, covered) = tail_verdict(bad, floor);
                        (s.seg.path.clone(), bad.offset_bytes, kind, covered)
                    })
                    .collect(),
            },
        }
    }
}

impl<F: Fs> WalContents<F> {
    /// Opens the WAL for appending and returns the records at or above `floor`, the first block
    /// not in a closed file (records below it are not needed and are dropped by the rewrite).
    /// Bad bytes are handled as the table in the module doc says. [`WalContents::prepare`] and
    /// [`WalRewrite::finish`] in turn; open runs the rewrite while it replays the records.
    pub async fn open(
        self,
        policy: SyncPolicy,
        segment_limit_bytes: u64,
        floor: u64,
    ) -> Result<(Wal<F>, Vec<WalRecord>, WalOpenReport), WalError> {
        let (records, rewrite, report) = self.prepare(floor).await?;
        let (wal, _replaced) = rewrite.finish(policy, segment_limit_bytes).await?;
        Ok((wal, records, report))
    }

    /// Handles the bad bytes (see the module doc) and hands out the records at or above
    /// `floor`, with what [`WalRewrite::finish`] needs to make them durable in a fresh segment:
    /// the frames' bytes as read (re-encoded only for v1 frames and damaged trailers).
    pub async fn prepare(
        self,
        floor: u64,
    ) -> Result<(Vec<WalRecord>, WalRewrite<F>, WalOpenReport), WalError> {
        let WalContents {
            fs,
            data_dir,
            dir,
            segments,
            scanned,
            records,
            sources,
        } = self;
        let mut report = WalOpenReport::default();
        Wal::handle_bad_regions(&fs, &data_dir, &scanned, floor, &mut report).await?;
        let next_seq = records
            .last()
            .map(|r| r.seq + 1)
            .unwrap_or_else(|| segments.last().map(|s| s.first_seq).unwrap_or(1));
        let read_any = !records.is_empty();
        let read_count = records.len();
        let (records, sources): (Vec<WalRecord>, Vec<(usize, usize)>) = records
            .into_iter()
            .zip(sources)
            .filter(|(r, _)| r.height >= floor)
            .unzip();
        if records.len() < read_count {
            mark!("wal-records-below-floor-dropped");
        }
        let durable = known_durable_segments(&scanned);
        // Segments known durable stay as they are, unless every record in them is below the
        // floor (then they go, as the rewrite's old segments do); the rewrite covers the rest.
        let mut needed = vec![false; scanned.len()];
        for &(si, _) in &sources {
            needed[si] = true;
        }
        let kept: Vec<usize> = (0..durable).filter(|&si| needed[si]).collect();
        if !kept.is_empty() {
            mark!("wal-durable-segments-kept-at-open");
        }
        let frames = records
            .iter()
            .zip(&sources)
            .filter(|(_, &(si, _))| si >= durable)
            .map(|(r, &(si, fi))| {
                let span = scanned[si].scan.frames[fi];
                debug_assert_eq!((span.seq, span.height), (r.seq, r.height));
                if span.exact {
                    RewriteFrame::Read {
                        segment: si,
                        bytes: span.start_bytes..span.end_bytes,
                    }
                } else {
                    // v1 frames, and v2 frames with a damaged trailer, are written anew.
                    mark!("wal-record-reencoded-at-open");
                    RewriteFrame::Encoded(frame_of_payload(r.seq, r.height, r.payload()))
                }
            })
            .collect();
        let first = records
            .iter()
            .zip(&sources)
            .find(|(_, &(si, _))| si >= durable)
            .map_or(next_seq, |(r, _)| r.seq);
        let rewrite = WalRewrite {
            fs,
            dir,
            segments,
            scanned,
            frames,
            kept,
            first,
            read_any,
            next_seq,
        };
        Ok((records, rewrite, report))
    }
}

/// How many of the oldest segments are known durable, so open may keep them as they are
/// instead of rewriting their records. A segment is, when the segment after it begins at the
/// sequence number right after its last record: only [`Wal::roll`] makes such a successor, and
/// only once every record before it was fsynced (each append with `always`, the whole segment
/// with `never`; a failed fsync poisons the store, which never rolls again). A rewrite at open
/// names its segment after the first record it holds, so a segment an interrupted rewrite left
/// behind overlaps that one and proves nothing. The segment must also be whole: every frame
/// valid and exact, from its first sequence number on. The last segment never qualifies: a
/// crashed process may have appended to it after a failed fsync (fsyncgate), and its pages read
/// back from the page cache need not be on the disk.
fn known_durable_segments<F: Fs>(scanned: &[Scanned<F>]) -> usize {
    if crate::planted!(TrustEverySegmentDurable) {
        // The planted bug: the last segment is trusted too (no rewrite at open).
        return scanned.len();
    }
    let proven = |pair: &[Scanned<F>]| {
        let (s, next) = (&pair[0], &pair[1]);
        let frames = &s.scan.frames;
        s.scan.bad.is_empty()
            && frames.first().is_some_and(|f| f.seq == s.seg.first_seq)
            && frames.iter().all(|f| f.exact)
            && frames
                .last()
                .is_some_and(|f| f.seq + 1 == next.seg.first_seq)
    };
    scanned.windows(2).take_while(|pair| proven(pair)).count()
}

/// One record's frame in the rewrite at open: its bytes as read, or encoded anew.
enum RewriteFrame {
    Read {
        segment: usize,
        bytes: std::ops::Range<usize>,
    },
    Encoded(Vec<u8>),
}

/// The second half of opening the WAL (see [`WalContents::prepare`]): rewriting the needed
/// records into a fresh fsynced segment and opening the active one. It touches only the WAL
/// folder, so it may run while the records are replayed; nothing may be acked before it ends.
pub struct WalRewrite<F: Fs> {
    fs: F,
    dir: PathBuf,
    segments: Vec<Segment>,
    scanned: Vec<Scanned<F>>,
    frames: Vec<RewriteFrame>,
    /// Indexes of the segments kept as they are (see [`known_durable_segments`]), oldest first.
    kept: Vec<usize>,
    /// The sequence number of the first record rewritten, which names the fresh segment.
    first: u64,
    read_any: bool,
    next_seq: u64,
}

impl<F: Fs> WalRewrite<F> {
    /// Rewrites the records (when open read any) and opens the WAL for appending. The segments
    /// as read come back still open ([`Replaced`]): the caller chooses where freeing them runs.
    pub async fn finish(
        self,
        policy: SyncPolicy,
        segment_limit_bytes: u64,
    ) -> Result<(Wal<F>, Replaced<F>), WalError> {
        let WalRewrite {
            fs,
            dir,
            mut segments,
            scanned,
            frames,
            kept,
            first,
            read_any,
            next_seq,
        } = self;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        if read_any {
            // Rewrite every needed record not known durable into a fresh, fsynced segment
            // before anything is replayed or acked on top of it. After a failed fsync
            // (fsyncgate) the old pages can still be readable from the page cache although they
            // will never reach the disk, and a later fsync of the same file does not bring them
            // back: only new writes do. Records below the floor are in closed files: they are
            // left out, so no segment of records that closed files cover outlives an open.
            mark!("wal-rewritten-at-open");
            let tmp = dir.join(REWRITE_TMP);
            let mut f = fs.create(&tmp).await.map_err(io(&tmp))?;
            for frame in &frames {
                let bytes = match frame {
                    RewriteFrame::Read { segment, bytes } => {
                        &scanned[*segment].bytes[bytes.clone()]
                    }
                    RewriteFrame::Encoded(b) => &b[..],
                };
                f.append(bytes).await.map_err(io(&tmp))?;
            }
            f.sync_data().await.map_err(io(&tmp))?;
            drop(f);
            let target = dir.join(segment_name(first));
            fs.rename(&tmp, &target).await.map_err(io(&target))?;
            let mut sealed = Vec::with_capacity(kept.len() + 1);
            for (si, seg) in segments.drain(..).enumerate() {
                if kept.contains(&si) {
                    debug_assert_ne!(seg.path, target, "a kept segment precedes the rewrite");
                    sealed.push(seg);
                } else if seg.path != target {
                    fs.remove(&seg.path).await.map_err(io(&seg.path))?;
                }
            }
            fs.sync_dir(&dir).await.map_err(io(&dir))?;
            segments = sealed;
            segments.push(Segment {
                first_seq: first,
                path: target,
            });
        }
        let replaced = Replaced { _segments: scanned };
        let (active, active_file, active_len) = match segments.pop() {
            Some(seg) => {
                let mut file = fs.open_append(&seg.path).await.map_err(io(&seg.path))?;
                let len = file.len().await.map_err(io(&seg.path))?;
                if !read_any && !crate::planted!(SkipReusedSegmentSync) {
                    // Nothing was rewritten, so nothing above made this segment durable. What
                    // open sees may be an earlier incarnation's unsynced work (a crash between a
                    // rewrite's rename and its directory sync leaves a segment whose entry a power
                    // loss would undo): records acked into it later must not vanish with it.
                    mark!("wal-reused-segment-made-durable");
                    file.sync_data().await.map_err(io(&seg.path))?;
                    fs.sync_dir(&dir).await.map_err(io(&dir))?;
                }
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
        Ok((wal, replaced))
    }
}

impl<F: Fs> Wal<F> {
    /// Decides, with the table of the module doc, what open does with every bad region: refuse
    /// (an error naming the file and offset) when it may hold needed records, otherwise copy the
    /// segments of covered corruption to quarantine and cut the tails. Pure: `open` applies the
    /// plan, `inspect` reports it.
    fn plan_bad_regions(
        scanned: &[Scanned<F>],
        floor: u64,
    ) -> Result<BadRegionPlan<'_, F>, WalError> {
        // The first valid record after segment `i` (in later segments): bounds what a bad region
        // at the end of segment `i` held, since heights never decrease along the log.
        let next_height_after = |i: usize| {
            scanned[i + 1..]
                .iter()
                .find_map(|s| s.scan.frames.first().map(|f| f.height))
        };
        let mut plan = BadRegionPlan {
            covered: Vec::new(),
            tails: Vec::new(),
        };
        for (i, s) in scanned.iter().enumerate() {
            for bad in &s.scan.bad {
                let bound = s
                    .scan
                    .frames
                    .get(bad.records_before)
                    .map(|f| f.height)
                    .or_else(|| next_height_after(i));
                match bound {
                    Some(next) if next < floor => {
                        if !plan.covered.iter().any(|(c, _)| std::ptr::eq(*c, s)) {
                            plan.covered.push((s, bad));
                        }
                    }
                    Some(_) => {
                        mark!("wal-corrupt-record-refused");
                        return Err(WalError::Corrupt {
                            path: s.seg.path.clone(),
                            offset: bad.offset_bytes,
                            reason: bad.reason.clone(),
                        });
                    }
                    // One in a log that crashes tore; more (garbage in an earlier segment and a
                    // later one) are cut all the same: nothing valid follows.
                    None => plan.tails.push((s, bad)),
                }
            }
        }
        Ok(plan)
    }

    /// Applies [`Wal::plan_bad_regions`]: refuses to open over records that may be needed, keeps
    /// everything else it cannot use in quarantine, and cuts the tail (after keeping its bytes)
    /// so the next append starts on a record boundary. All decisions are made before anything
    /// is written, so a refusal changes nothing.
    async fn handle_bad_regions(
        fs: &F,
        data_dir: &Path,
        scanned: &[Scanned<F>],
        floor: u64,
        report: &mut WalOpenReport,
    ) -> Result<(), WalError> {
        let BadRegionPlan { covered, tails } = Self::plan_bad_regions(scanned, floor)?;
        for (s, bad) in covered {
            mark!("wal-covered-corruption-quarantined");
            let q = quarantine(
                fs,
                data_dir,
                Evidence::Bytes {
                    original: &s.seg.path,
                    bytes: &s.bytes,
                },
                QuarantineReason::CoveredWalCorruption {
                    offset_bytes: bad.offset_bytes,
                },
            )
            .await?;
            report.quarantined.push(q);
        }
        for (s, bad) in tails.into_iter().rev() {
            Self::cut_tail(fs, data_dir, s, bad, floor, report).await?;
        }
        Ok(())
    }

    /// Keeps the bytes of the WAL's bad tail in quarantine, then truncates them away.
    async fn cut_tail(
        fs: &F,
        data_dir: &Path,
        s: &Scanned<F>,
        bad: &BadRegion,
        floor: u64,
        report: &mut WalOpenReport,
    ) -> Result<(), WalError> {
        let (kind, covered) = tail_verdict(bad, floor);
        match kind {
            WalTailKind::Corrupt => mark!("wal-corrupt-tail-quarantined"),
            WalTailKind::Torn => mark!("wal-torn-tail-cut"),
        }
        let offset_bytes = bad.offset_bytes;
        let reason = match (kind, covered) {
            (WalTailKind::Corrupt, true) => QuarantineReason::CoveredWalCorruption { offset_bytes },
            (WalTailKind::Corrupt, false) => QuarantineReason::CorruptWalTail { offset_bytes },
            (WalTailKind::Torn, _) => QuarantineReason::TornWalTail { offset_bytes },
        };
        let cut = &s.bytes[offset_bytes as usize..];
        let q = quarantine(
            fs,
            data_dir,
            Evidence::Bytes {
                original: &s.seg.path,
                bytes: cut,
            },
            reason,
        )
        .await?;
        let path = &s.seg.path;
        let io = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs.open_append(path).await.map_err(io)?;
        f.truncate(offset_bytes).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        report.tail_cut = Some(WalTailCut {
            segment: path.clone(),
            offset_bytes,
            bytes: cut.len() as u64,
            kind,
            covered,
            quarantined: q.path.clone(),
        });
        report.quarantined.push(q);
        Ok(())
    }

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
        self.append_pending(PendingFrame::encode(height, receipts))
            .await
    }

    /// Appends a record whose payload the writer already encoded (see [`PendingFrame`]); with
    /// policy `always` it is fsynced before this returns.
    pub async fn append_pending(&mut self, pending: PendingFrame) -> Result<u64, WalError> {
        if pending.payload_len() > MAX_RECORD_PAYLOAD_BYTES {
            return Err(WalError::RecordTooLarge {
                len: pending.payload_len() + 2 * MARKER_BYTES,
                limit: MAX_RECORD_PAYLOAD_BYTES,
            });
        }
        let seq = self.next_seq;
        let frame = pending.seal(seq);
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

#[cfg(test)]
mod tests {
    use super::record::encode_frame;
    use super::*;
    use crate::types::LogInput;

    /// [`scan_segment`] over a copy of `bytes`.
    fn scan_bytes(bytes: &[u8], first_seq: u64) -> (SegmentScan, Vec<WalRecord>) {
        scan_segment(&Bytes::copy_from_slice(bytes), first_seq)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Part {
        Intact,
        Rotten,
        /// Cut short: the append was torn inside this part.
        Short,
        /// Not written at all (only for the trailer).
        Absent,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Valid,
        Torn,
        Corrupt,
    }

    fn receipts() -> Vec<ReceiptInput> {
        vec![ReceiptInput {
            tx_hash: [3; 32],
            tx_index: 0,
            receipt_bytes: vec![5; 40],
            logs: vec![LogInput {
                address: [1; 20],
                topics: vec![[2; 32]],
                data: vec![9; 7],
            }],
        }]
    }

    /// A segment of one good record and a last record whose header, payload and trailer are in
    /// the given states; `None` when the combination cannot be written (nothing follows a part
    /// cut short).
    fn segment(h: Part, p: Part, t: Part) -> Option<Vec<u8>> {
        let mut bytes = encode_frame(1, 10, &receipts());
        let frame = encode_frame(2, 11, &receipts());
        let payload_len = frame.len() - 2 * MARKER_BYTES;
        let (head, rest) = frame.split_at(MARKER_BYTES);
        let (payload, trailer) = rest.split_at(payload_len);
        let rot = |b: &[u8], at: usize| {
            let mut b = b.to_vec();
            b[at] ^= 0x08;
            b
        };
        let mut last = Vec::new();
        match h {
            Part::Intact => last.extend_from_slice(head),
            Part::Rotten => last.extend(rot(head, 10)),
            Part::Short => {
                last.extend_from_slice(&head[..20]);
                return (p == Part::Absent && t == Part::Absent).then(|| {
                    bytes.extend(last);
                    bytes
                });
            }
            Part::Absent => return None,
        }
        match p {
            Part::Intact => last.extend_from_slice(payload),
            Part::Rotten => last.extend(rot(payload, payload_len / 2)),
            Part::Short => {
                last.extend_from_slice(&payload[..payload_len / 2]);
                return (t == Part::Absent).then(|| {
                    bytes.extend(last);
                    bytes
                });
            }
            Part::Absent => return None,
        }
        match t {
            Part::Intact => last.extend_from_slice(trailer),
            Part::Rotten => last.extend(rot(trailer, 10)),
            Part::Short => last.extend_from_slice(&trailer[..MARKER_BYTES - 10]),
            Part::Absent => {}
        }
        bytes.extend(last);
        Some(bytes)
    }

    /// The table of the module doc, for the last record of the log: whole header and payload
    /// make a valid record (the trailer is redundancy); otherwise a valid trailer means the
    /// append completed and the record is corrupt; otherwise it is a torn append.
    fn expected(h: Part, p: Part, t: Part) -> Verdict {
        if h == Part::Intact && p == Part::Intact {
            Verdict::Valid
        } else if t == Part::Intact && p != Part::Short {
            Verdict::Corrupt
        } else {
            Verdict::Torn
        }
    }

    /// Every combination of header, payload and trailer state of the last record lands on
    /// exactly one verdict, the one the table gives, and the bad bytes are one tail region.
    #[test]
    fn every_state_of_the_last_record_lands_on_one_verdict() {
        use Part::*;
        let mut seen = 0;
        for h in [Intact, Rotten, Short, Absent] {
            for p in [Intact, Rotten, Short, Absent] {
                for t in [Intact, Rotten, Short, Absent] {
                    let Some(bytes) = segment(h, p, t) else {
                        continue;
                    };
                    seen += 1;
                    let (scan, _) = scan_bytes(&bytes, 1);
                    let got = match (scan.frames.len(), scan.tail()) {
                        (2, None) if scan.bad.is_empty() => Verdict::Valid,
                        (1, Some(b)) if scan.bad.len() == 1 && b.complete => Verdict::Corrupt,
                        (1, Some(_)) if scan.bad.len() == 1 => Verdict::Torn,
                        other => panic!("{h:?} {p:?} {t:?}: no single verdict: {other:?}"),
                    };
                    assert_eq!(got, expected(h, p, t), "{h:?} {p:?} {t:?}");
                    if got != Verdict::Valid {
                        let b = scan.tail().expect("a tail");
                        assert_eq!(b.offset_bytes, scan.valid_len, "{h:?} {p:?} {t:?}");
                        assert_eq!(b.end_bytes as usize, bytes.len());
                    }
                }
            }
        }
        assert_eq!(
            seen,
            2 * 2 * 4 + 2 + 1,
            "every writable combination was tried"
        );
    }

    /// Two rotted last records, nothing valid after the first: the first's own trailer is not
    /// at the segment's end, but the second's intact trailer proves an append completed in the
    /// cut bytes, so the tail is corrupt (acknowledged data lost), never a torn append.
    #[test]
    fn rotted_last_records_with_an_intact_trailer_among_them_are_corrupt_not_torn() {
        let mut bytes = encode_frame(1, 10, &receipts());
        let good_len = bytes.len();
        let second = encode_frame(2, 11, &receipts());
        let third = encode_frame(3, 12, &receipts());
        bytes.extend(&second);
        bytes.extend(&third);
        // The second record's header and trailer rot, the third's payload: no record after the
        // first is valid, and only the third's trailer is intact.
        let second_at = good_len;
        let third_at = good_len + second.len();
        bytes[second_at + 10] ^= 0x10;
        bytes[third_at - 10] ^= 0x10;
        bytes[third_at + MARKER_BYTES + 5] ^= 0x10;
        let (scan, _) = scan_bytes(&bytes, 1);
        assert_eq!(scan.frames.len(), 1, "only the first record is valid");
        let tail = scan.tail().expect("the rotted records are the tail");
        assert_eq!(tail.offset_bytes as usize, second_at);
        assert_eq!(tail.end_bytes as usize, bytes.len());
        assert!(
            tail.complete,
            "an intact trailer in the cut bytes: corrupt, not torn"
        );
        // With the third's trailer rotted too, no append in the cut provably completed.
        let last_trailer = bytes.len() - 10;
        bytes[last_trailer] ^= 0x10;
        let tail = scan_bytes(&bytes, 1).0.tail().cloned().expect("a tail");
        assert!(
            !tail.complete,
            "every trailer spoiled: indistinguishable from a torn append"
        );
    }

    /// A rotted tail of two records, the first for a block closed files hold, the second for one
    /// they do not: the first frame's height does not bound the second, so the cut is not
    /// covered (it was reported as covered, "nothing lost", while the second block was lost).
    /// A tail of exactly one covered frame still is.
    #[test]
    fn only_a_tail_of_one_frame_below_the_floor_is_covered() {
        let mut bytes = encode_frame(1, 2, &receipts());
        let first = encode_frame(2, 3, &receipts());
        let second = encode_frame(3, 4, &receipts());
        let first_at = bytes.len();
        bytes.extend(&first);
        let second_at = bytes.len();
        bytes.extend(&second);
        // Payload rot in both: headers and trailers stay valid.
        bytes[first_at + MARKER_BYTES + 3] ^= 0x20;
        bytes[second_at + MARKER_BYTES + 3] ^= 0x20;
        let floor = 4;
        let (scan, _) = scan_bytes(&bytes, 1);
        let tail = scan.tail().expect("both rotted records are the tail");
        assert_eq!(tail.offset_bytes as usize, first_at);
        assert_eq!(tail.height, Some(3), "the first frame's header is valid");
        assert!(!tail.single_frame);
        assert_eq!(
            tail_verdict(tail, floor),
            (WalTailKind::Corrupt, false),
            "block 4 is in no closed file: the cut lost it"
        );
        // Only the first record (block 3, below the floor) rotted and nothing follows it.
        let one = &bytes[..second_at];
        let (scan, _) = scan_bytes(one, 1);
        let tail = scan.tail().expect("the rotted record is the tail");
        assert!(tail.single_frame);
        assert_eq!(tail_verdict(tail, floor), (WalTailKind::Corrupt, true));
    }

    /// The rewrite at open copies whole v2 frames byte for byte and writes anew a record whose
    /// trailer rotted (the header alone makes it valid): the new segment holds exactly the frames
    /// the writer would write, so a rotted trailer does not outlive the open.
    #[tokio::test]
    async fn the_rewrite_at_open_copies_exact_frames_and_repairs_a_rotted_trailer() {
        use crate::env::real::RealFs;
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join(WAL_DIR_NAME);
        std::fs::create_dir_all(&wal).unwrap();
        let frames: Vec<Vec<u8>> = (1..=3u64)
            .map(|seq| encode_frame(seq, 10 + seq, &receipts()))
            .collect();
        let mut bytes = frames.concat();
        let second_trailer_at = frames[0].len() + frames[1].len() - 4;
        bytes[second_trailer_at] ^= 0x01;
        std::fs::write(wal.join(segment_name(1)), &bytes).unwrap();
        let (scan, _) = scan_bytes(&bytes, 1);
        assert_eq!(
            scan.frames.iter().map(|f| f.exact).collect::<Vec<_>>(),
            vec![true, false, true],
            "only the rotted trailer's frame is inexact"
        );
        let contents = Wal::read(RealFs, tmp.path()).await.unwrap();
        let (w, records, _) = contents.open(SyncPolicy::Never, 1 << 20, 0).await.unwrap();
        assert_eq!(records.len(), 3, "a rotted trailer loses nothing");
        drop(w);
        let rewritten = std::fs::read(wal.join(segment_name(1))).unwrap();
        assert_eq!(
            rewritten,
            frames.concat(),
            "exact copies and one repaired frame"
        );
    }

    /// Rot in a record with valid records after it is a bad region in the middle, not a tail;
    /// the scan resumes at the next record, which bounds the bad record's height.
    #[test]
    fn a_bad_record_in_the_middle_is_skipped_to_the_next_valid_one() {
        let mut bytes = Vec::new();
        for seq in 1..=4u64 {
            bytes.extend(encode_frame(seq, 10 + seq, &receipts()));
        }
        let frame_len = bytes.len() / 4;
        bytes[frame_len + MARKER_BYTES + 3] ^= 0x40;
        let (scan, records) = scan_bytes(&bytes, 1);
        assert_eq!(
            scan.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert_eq!(scan.bad.len(), 1);
        assert_eq!(scan.bad[0].offset_bytes as usize, frame_len);
        assert_eq!(scan.bad[0].end_bytes as usize, 2 * frame_len);
        assert_eq!(scan.bad[0].records_before, 1);
        assert!(scan.valid_after_bad && scan.tail().is_none());
    }

    /// A last record whose header rotted takes its height from its intact trailer at the
    /// segment's end (so a record of a closed window is a covered, single-frame tail), but only
    /// when that trailer is the same record's: its sequence number is the expected one and the
    /// frame it closes starts where the bad bytes do.
    #[test]
    fn a_rotted_header_takes_its_height_from_its_own_trailer_only() {
        let bytes = segment(Part::Rotten, Part::Intact, Part::Intact).expect("writable");
        let (scan, _) = scan_bytes(&bytes, 1);
        let tail = scan.tail().expect("the rotted record is the tail");
        assert_eq!(tail.height, Some(11), "height read from the trailer");
        assert!(tail.complete && tail.single_frame);
        assert_eq!(tail_verdict(tail, 12), (WalTailKind::Corrupt, true));
        assert_eq!(tail_verdict(tail, 11), (WalTailKind::Corrupt, false));

        // The same bytes where record 3 was expected: the trailer names record 2, not this one.
        let (scan, _) = scan_bytes(&bytes[frame_len()..], 3);
        let tail = scan.tail().expect("a tail");
        assert_eq!(
            tail.height, None,
            "a trailer of another record gives no height"
        );
        assert!(!tail.single_frame);

        // Junk inside the payload: the trailer at the end is record 2's, but the frame it closes
        // would not start where the bad bytes do.
        let first = frame_len();
        let mut longer = bytes[..first + MARKER_BYTES + 4].to_vec();
        longer.extend([0xAB; 5]);
        longer.extend(&bytes[first + MARKER_BYTES + 4..]);
        let (scan, _) = scan_bytes(&longer, 1);
        let tail = scan.tail().expect("a tail");
        assert_eq!(tail.offset_bytes as usize, first);
        assert_eq!(tail.height, None, "the trailer's length does not fit");
        assert!(!tail.single_frame);
    }

    /// The length of one encoded frame of [`receipts`].
    fn frame_len() -> usize {
        encode_frame(1, 10, &receipts()).len()
    }

    /// Only exact names are segments: twenty digits and `.wal`. Names that almost parse (a
    /// sign, too few or too many digits) are foreign files, ignored.
    #[test]
    fn only_twenty_digit_names_are_segments() {
        assert_eq!(parse_segment_name("00000000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for foreign in [
            "7.wal",
            "000000000000000000007.wal",
            "+0000000000000000007.wal",
            "0000000000000000000x.wal",
            "00000000000000000007.wal.tmp",
            "00000000000000000007",
        ] {
            assert_eq!(parse_segment_name(foreign), None, "{foreign}");
        }
    }

    /// A checksummed frame whose sequence number skips ahead of the expected one is a bad region
    /// (a record between them is missing), not a record taken as if nothing were lost.
    #[test]
    fn a_frame_that_skips_a_sequence_number_is_bad_not_valid() {
        let mut bytes = encode_frame(1, 10, &receipts());
        bytes.extend(encode_frame(3, 12, &receipts()));
        let (scan, records) = scan_bytes(&bytes, 1);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        let tail = scan.tail().expect("the skipping frame is a bad tail");
        assert_eq!(tail.offset_bytes as usize, frame_len());
        assert_eq!(tail.end_bytes as usize, bytes.len());
        assert!(tail.complete, "a whole frame: corrupt, not torn");
        assert!(tail.single_frame, "the region is that one frame");
    }

    /// A new, empty WAL under `dir` (policy `never`), opened for appending.
    async fn fresh_wal(dir: &Path, segment_limit_bytes: u64) -> Wal<crate::env::real::RealFs> {
        let contents = Wal::read(crate::env::real::RealFs, dir).await.unwrap();
        let (w, _, _) = contents
            .open(SyncPolicy::Never, segment_limit_bytes, 0)
            .await
            .unwrap();
        w
    }

    /// The WAL's record bound is on the payload: a record whose payload is exactly
    /// [`MAX_RECORD_PAYLOAD_BYTES`] is appended (and read back), one byte more is refused before
    /// anything is written.
    #[tokio::test]
    async fn a_record_at_the_payload_limit_is_appended_and_one_byte_more_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = fresh_wal(tmp.path(), 1 << 30).await;
        // Payload: version, height, count (13 bytes), then per receipt hash, index, length and
        // log count (44 bytes) and the receipt's bytes.
        const FIXED_BYTES: usize = 13 + 44;
        let one = |len: usize| {
            vec![ReceiptInput {
                tx_hash: [1; 32],
                tx_index: 0,
                receipt_bytes: vec![7; len],
                logs: Vec::new(),
            }]
        };
        let at_limit = one(MAX_RECORD_PAYLOAD_BYTES - FIXED_BYTES);
        assert_eq!(
            encode_frame(1, 1, &at_limit).len() - 2 * MARKER_BYTES,
            MAX_RECORD_PAYLOAD_BYTES
        );
        assert_eq!(w.append(1, &at_limit).await.unwrap(), 1);
        drop(at_limit);
        let over = one(MAX_RECORD_PAYLOAD_BYTES - FIXED_BYTES + 1);
        assert!(matches!(
            w.append(2, &over).await,
            Err(WalError::RecordTooLarge { .. })
        ));
        drop((w, over));
        let contents = Wal::read(crate::env::real::RealFs, tmp.path())
            .await
            .unwrap();
        assert_eq!(contents.records.len(), 1, "only the record at the limit");
        assert_eq!(
            contents.records[0].rows().receipts[0].receipt_bytes.len(),
            MAX_RECORD_PAYLOAD_BYTES - FIXED_BYTES
        );
    }

    /// After a bad frame the scan resumes only at a frame numbered at or above the expected
    /// sequence number: a stale copy of an earlier record further on is part of the bad bytes,
    /// never read twice.
    #[test]
    fn the_scan_never_resumes_at_an_older_record() {
        let mut bytes = encode_frame(1, 10, &receipts());
        let bad_at = bytes.len();
        bytes.extend(encode_frame(2, 11, &receipts()));
        bytes[bad_at + MARKER_BYTES + 3] ^= 0x40;
        bytes.extend(encode_frame(1, 10, &receipts()));
        let (scan, records) = scan_bytes(&bytes, 1);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(scan.bad.len(), 1);
        assert_eq!(scan.bad[0].offset_bytes as usize, bad_at);
        assert_eq!(scan.bad[0].end_bytes as usize, bytes.len());
        assert!(!scan.valid_after_bad);
    }

    /// Records `seqs` (record q at block 10 + q) framed back to back, as a segment holds them.
    fn frames(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        seqs.flat_map(|q| encode_frame(q, 10 + q, &receipts()))
            .collect()
    }

    /// A rewrite at open cut after its rename and before its removals leaves the same records in
    /// two segments (and its own segment named by its first record, between the old ones): each
    /// record is read once, in order; the same sequence number with other contents is refused.
    #[tokio::test]
    async fn a_rewrite_cut_before_its_removals_reads_each_record_once() {
        use crate::env::real::RealFs;
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join(WAL_DIR_NAME);
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join(segment_name(1)), frames(1..=3)).unwrap();
        std::fs::write(wal.join(segment_name(4)), frames(4..=6)).unwrap();
        // The rewrite kept records 2..=6 (record 1 was below the floor).
        std::fs::write(wal.join(segment_name(2)), frames(2..=6)).unwrap();
        let contents = Wal::read(RealFs, tmp.path()).await.unwrap();
        assert_eq!(
            contents.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        // Record 5 of the rewritten segment differs from the one already read.
        let mut other = frames(2..=4);
        other.extend(encode_frame(5, 99, &receipts()));
        std::fs::write(wal.join(segment_name(2)), other).unwrap();
        let err = Wal::read(RealFs, tmp.path())
            .await
            .err()
            .expect("a differing duplicate is refused");
        assert!(
            matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("record 5")),
            "{err}"
        );
    }

    /// Open keeps the segments a rolled successor proves durable as they are (same files) and
    /// rewrites only the rest: the last segment always, and every segment from the first one
    /// not proven on (here one an interrupted rewrite overlaps). Kept segments whose records are
    /// all below the floor are removed, as rewritten ones are.
    #[tokio::test]
    async fn open_rewrites_only_the_segments_no_rolled_successor_proves_durable() {
        use crate::env::real::RealFs;
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join(WAL_DIR_NAME);
        std::fs::create_dir_all(&wal).unwrap();
        let inode = |first: u64| std::fs::metadata(wal.join(segment_name(first))).map(|m| m.ino());
        let names = || {
            let mut n: Vec<String> = std::fs::read_dir(&wal)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        async fn open(data: &Path, floor: u64) -> (Wal<RealFs>, Vec<u64>) {
            let contents = Wal::read(RealFs, data).await.unwrap();
            let (w, records, _) = contents
                .open(SyncPolicy::Never, 1 << 20, floor)
                .await
                .unwrap();
            (w, records.iter().map(|r| r.seq).collect())
        }
        std::fs::write(wal.join(segment_name(1)), frames(1..=3)).unwrap();
        std::fs::write(wal.join(segment_name(4)), frames(4..=6)).unwrap();
        std::fs::write(wal.join(segment_name(7)), frames(7..=8)).unwrap();
        let before = [inode(1).unwrap(), inode(4).unwrap(), inode(7).unwrap()];
        let (w, seqs) = open(tmp.path(), 0).await;
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        assert_eq!(w.segment_count(), 3);
        assert_eq!(
            (inode(1).unwrap(), inode(4).unwrap()),
            (before[0], before[1])
        );
        assert_ne!(
            inode(7).unwrap(),
            before[2],
            "the last segment is rewritten"
        );
        drop(w);
        // Records 1..=3 (blocks 11..=13) are below the floor: their segment goes.
        let (w, seqs) = open(tmp.path(), 14).await;
        assert_eq!(seqs, (4..=8).collect::<Vec<_>>());
        assert_eq!(names(), vec![segment_name(4), segment_name(7)]);
        assert_eq!(inode(4).unwrap(), before[1]);
        drop(w);
        // A rewrite cut before its removals left segment 5 over records 5..=8: segment 4's
        // successor does not begin after its last record, so nothing is proven and every
        // needed record is rewritten into one segment.
        std::fs::write(wal.join(segment_name(5)), frames(5..=8)).unwrap();
        let (w, seqs) = open(tmp.path(), 14).await;
        assert_eq!(seqs, (4..=8).collect::<Vec<_>>());
        assert_eq!(names(), vec![segment_name(4)]);
        assert_ne!(inode(4).unwrap(), before[1]);
        assert_eq!(w.segment_count(), 1);
    }

    /// `drop_before` removes exactly the sealed segments whose records all precede the given
    /// sequence number, says how many, and never the active one.
    #[tokio::test]
    async fn drop_before_removes_only_fully_covered_segments_and_counts_them() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = fresh_wal(tmp.path(), 1 << 20).await;
        // Segments [1, 2], [3], [4] (active).
        for (seq, height) in [(1, 10), (2, 11), (3, 12), (4, 13)] {
            if seq == 3 || seq == 4 {
                w.roll().await.unwrap();
            }
            assert_eq!(w.append(height, &receipts()).await.unwrap(), seq);
        }
        let on_disk = || {
            std::fs::read_dir(tmp.path().join(WAL_DIR_NAME))
                .unwrap()
                .count()
        };
        assert_eq!((w.segment_count(), on_disk()), (3, 3));
        assert_eq!(
            w.drop_before(2).await.unwrap(),
            0,
            "record 2 is still needed"
        );
        assert_eq!(w.drop_before(3).await.unwrap(), 1);
        assert_eq!((w.segment_count(), on_disk()), (2, 2));
        assert_eq!(
            w.drop_before(u64::MAX).await.unwrap(),
            1,
            "never the active one"
        );
        assert_eq!((w.segment_count(), on_disk()), (1, 1));
    }

    /// The read-only reader (for `inspect`) calls a missing WAL directory an empty log, but a
    /// WAL path it cannot list is an error, never an empty log.
    #[tokio::test]
    async fn an_unlistable_wal_directory_is_an_error_not_an_empty_log() {
        use crate::env::real::RealFs;
        let tmp = tempfile::tempdir().unwrap();
        let contents = Wal::read_only(RealFs, tmp.path()).await.unwrap();
        assert!(contents.records.is_empty(), "no WAL directory: empty");
        assert!(
            !tmp.path().join(WAL_DIR_NAME).exists(),
            "read_only creates nothing"
        );
        std::fs::write(tmp.path().join(WAL_DIR_NAME), b"not a directory").unwrap();
        assert!(matches!(
            Wal::read_only(RealFs, tmp.path()).await,
            Err(WalError::Io { .. })
        ));
    }

    /// A torn tail says how it was cut, in both frame versions: a header cut short is a short
    /// header (with its length), a whole header that fails its checksum is a checksum mismatch,
    /// and a v1 frame cut right after its header runs past the end of the segment.
    #[test]
    fn a_torn_tail_says_how_it_was_cut_in_both_frame_versions() {
        use super::record::encode_frame_v1;
        let reason = |bytes: &[u8]| {
            let (scan, records) = scan_bytes(bytes, 1);
            assert_eq!(records.len(), 1, "the first record stays");
            assert!(scan.tail().is_some());
            scan.reason.clone()
        };
        let v2 = [
            encode_frame(1, 10, &receipts()),
            encode_frame(2, 11, &receipts()),
        ]
        .concat();
        let second = frame_len();
        assert_eq!(reason(&v2[..second + 20]), "short frame header (20 bytes)");
        let mut rotted = v2[..second + MARKER_BYTES].to_vec();
        rotted[second + 10] ^= 0x01;
        assert_eq!(reason(&rotted), "frame header checksum mismatch");
        let first_v1 = encode_frame_v1(1, 10, &receipts());
        let v1 = [first_v1.clone(), encode_frame_v1(2, 11, &receipts())].concat();
        let second = first_v1.len();
        assert_eq!(reason(&v1[..second + 10]), "short frame header (10 bytes)");
        assert!(
            reason(&v1[..second + FRAME_V1_HEADER_BYTES]).contains("runs past the end"),
            "a whole v1 header with nothing after it"
        );
        assert!(
            reason(&v1[..v1.len() - 3]).contains("runs past the end"),
            "a v1 payload cut three bytes short"
        );
    }

    /// A bad record in the middle is covered only when the next valid record's height is below
    /// the floor: when it is the floor itself, the bad one may hold the first half of a block
    /// written in two calls whose second half follows, so open refuses rather than lose it.
    #[tokio::test]
    async fn a_bad_record_bounded_by_the_floor_itself_is_refused_not_covered() {
        use crate::env::real::RealFs;
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join(WAL_DIR_NAME);
        std::fs::create_dir_all(&wal).unwrap();
        let mut bytes = encode_frame(1, 4, &receipts());
        let bad_at = bytes.len();
        bytes.extend(encode_frame(2, 5, &receipts()));
        bytes.extend(encode_frame(3, 5, &receipts()));
        bytes[bad_at + MARKER_BYTES + 3] ^= 0x40;
        std::fs::write(wal.join(segment_name(1)), &bytes).unwrap();
        let contents = Wal::read_only(RealFs, tmp.path()).await.unwrap();
        let refused = contents
            .plan(5)
            .refused
            .expect("block 5 may be in the bad record");
        assert!(
            matches!(refused, WalError::Corrupt { offset, .. } if offset as usize == bad_at),
            "{refused}"
        );
        let covered = contents.plan(6);
        assert!(
            covered.refused.is_none(),
            "with block 5 in a closed file, nothing is lost"
        );
        assert_eq!(covered.covered.len(), 1);
    }
}
