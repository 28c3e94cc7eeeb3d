//! A closed file's index, loaded with ranged reads of the footer and the bloom filters only:
//! never a data page. Every bloom filter is verified against the crc32c our writer recorded in
//! the footer, so a rotted filter is an error instead of a silent false negative.

use super::reader::{
    decode_groups, footer_facts, row_group_index, FileKind, RowGroupIndex, UNFINISHED,
};
use super::{
    BLOOM_CRC_KEY, BODY_CRC_KEY, BODY_LEN_KEY, PAGE_CRC_KEY, PAGE_INDEX_CRC_KEY, ROW_GROUP_CRC_KEY,
};
use crate::env::{BlockingPool, Fs, FsFile, Inline};
use crate::error::Error;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::ArrowError;
use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter, RowSelection, RowSelectionPolicy, RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FileMetaData, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData,
};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Row groups of one read this close (their bloom filters lie between them) are fetched with
/// one read.
const FETCH_GAP_MAX_BYTES: u64 = 64 * 1024;

/// Footers larger than this are refused as corrupt (ours are a few hundred KiB at most).
const MAX_FOOTER_BYTES: u64 = 64 * 1024 * 1024;

/// Only the byte ranges that were fetched; reading anything else is an error, which is how the
/// index proves it touches no data page.
#[derive(Clone)]
pub(crate) struct Sparse {
    len: u64,
    ranges: BTreeMap<u64, Bytes>,
}

impl Sparse {
    fn slice(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let (&off, bytes) = self
            .ranges
            .range(..=start)
            .next_back()
            .ok_or_else(|| ParquetError::General(format!("range at {start} not fetched")))?;
        let from = (start - off) as usize;
        if from + length > bytes.len() {
            return Err(ParquetError::General(format!(
                "range {start}+{length} not fetched"
            )));
        }
        Ok(bytes.slice(from..from + length))
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;
    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        let (&off, bytes) = self
            .ranges
            .range(..=start)
            .next_back()
            .ok_or_else(|| ParquetError::General(format!("range at {start} not fetched")))?;
        let from = ((start - off) as usize).min(bytes.len());
        Ok(bytes.slice(from..).reader())
    }
    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.slice(start, length)
    }
}

/// The bytes of one row group in its file, and their crc32c as our writer recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroupSpan {
    pub offset: u64,
    pub len: usize,
    pub crc: u32,
}

/// `n` items split into `parts` runs of consecutive items (fewer when there are fewer items)
/// whose sizes differ by at most one.
pub(crate) fn consecutive_runs(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let end = start + base + usize::from(i < extra);
            let run = start..end;
            start = end;
            run
        })
        .collect()
}

/// The rows of page `i` of a column chunk of `rows` rows, from its offset index.
fn page_row_range(locations: &[PageLocation], i: usize, rows: usize) -> std::ops::Range<usize> {
    let end = locations
        .get(i + 1)
        .map_or(rows, |next| next.first_row_index as usize);
    locations[i].first_row_index as usize..end
}

/// The rows of one row group a read decodes, as a selection over the group's rows (`None`:
/// every row). Rows outside it are in pages whose column-index min/max rule the filter out, so
/// their pages are skipped without being decompressed.
pub(crate) type PageRows = Option<Vec<RowSelector>>;

/// Row-group ranges and bloom filters of one file.
#[derive(Clone, Debug)]
pub struct FileIndex {
    pub path: PathBuf,
    pub kind: FileKind,
    pub len: u64,
    pub row_groups: Vec<RowGroupIndex>,
    /// Where each row group's bytes are and their checksum; `None` for a file written before
    /// row-group checksums existed (reads of it fetch and verify the whole file).
    pub spans: Option<Vec<RowGroupSpan>>,
    /// Bytes read to build this index (footer and bloom filters).
    pub bytes_read: u64,
    /// The store's last seen block when the file was finalized (absent in older files).
    pub last_seen_block: Option<u64>,
    /// Per row group, the crc32c of each page of each column (in offset-index order), when the
    /// writer recorded them and the page index is loaded: a read that decodes some pages of a
    /// group verifies only those. Empty, or `None` for a group, means verify the group whole.
    page_crcs: Vec<Option<Vec<Vec<u32>>>>,
    /// The decoded footer, reused by every ranged read of this file.
    metadata: ArrowReaderMetadata,
}

/// Parses `offset:length:crc32c` (crc in hex), the entry format of our footer checksum lists.
fn parse_crc_entry(entry: &str) -> Option<(u64, usize, u32)> {
    let mut parts = entry.split(':');
    let (o, l, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((
        o.parse().ok()?,
        l.parse().ok()?,
        u32::from_str_radix(c, 16).ok()?,
    ))
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A decoded footer: what the index needs before it can fetch the bloom filters.
struct Footer {
    metadata: ParquetMetaData,
    last_seen_block: Option<u64>,
    /// Written by this store (has a body checksum): every bloom filter must have a checksum.
    ours: bool,
    bloom_crcs: BTreeMap<u64, (usize, u32)>,
    /// The raw row-group checksum list, parsed once the bloom filters are in.
    row_group_crcs: Option<String>,
    /// Where the page indexes start (the body's end) and their checksum, when the writer
    /// recorded one (files written before it have page indexes nobody verified: unused).
    page_index: Option<(u64, u32)>,
    /// The raw page checksum list ([`PAGE_CRC_KEY`]), parsed once the page index is in.
    page_crcs: Option<String>,
}

/// Decodes and checks a footer (CPU work: thrift and the footer checksum).
fn decode_footer(path: &Path, footer: &[u8]) -> Result<Footer, Error> {
    let metadata = ParquetMetaDataReader::decode_metadata(footer)
        .map_err(|e| corrupt(path, format!("footer: {e}")))?;
    let kv = metadata.file_metadata().key_value_metadata();
    let find = |k: &str| {
        kv.and_then(|kv| kv.iter().find(|e| e.key == k))
            .and_then(|e| e.value.clone())
    };
    let last_seen_block = footer_facts(path, footer, &find)?;
    let ours = find(BODY_CRC_KEY).is_some();
    let mut bloom_crcs: BTreeMap<u64, (usize, u32)> = BTreeMap::new();
    for entry in find(BLOOM_CRC_KEY)
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
    {
        let (o, l, c) = parse_crc_entry(entry)
            .ok_or_else(|| corrupt(path, format!("bad bloom checksum entry {entry:?}")))?;
        bloom_crcs.insert(o, (l, c));
    }
    let row_group_crcs = find(ROW_GROUP_CRC_KEY);
    let page_index = match (find(PAGE_INDEX_CRC_KEY), find(BODY_LEN_KEY)) {
        (None, _) => None,
        (Some(crc), Some(start)) => Some((
            start
                .parse()
                .map_err(|_| corrupt(path, format!("unreadable body length {start:?}")))?,
            u32::from_str_radix(&crc, 16)
                .map_err(|_| corrupt(path, format!("unreadable page index checksum {crc:?}")))?,
        )),
        (Some(_), None) => {
            return Err(corrupt(path, "page index checksum without a body length"));
        }
    };
    let page_crcs = find(PAGE_CRC_KEY);
    Ok(Footer {
        metadata,
        last_seen_block,
        ours,
        bloom_crcs,
        row_group_crcs,
        page_index,
        page_crcs,
    })
}

/// Where each row group's bytes are, from the footer's checksum list.
fn parse_spans(
    path: &Path,
    list: &str,
    row_groups: usize,
    footer_start: u64,
) -> Result<Vec<RowGroupSpan>, Error> {
    let mut spans = Vec::with_capacity(row_groups);
    for entry in list.split(',').filter(|e| !e.is_empty()) {
        let (offset, len, crc) = parse_crc_entry(entry)
            .ok_or_else(|| corrupt(path, format!("bad row group checksum entry {entry:?}")))?;
        if offset + len as u64 > footer_start {
            return Err(corrupt(
                path,
                format!("row group bytes at {offset}+{len} overlap the footer"),
            ));
        }
        spans.push(RowGroupSpan { offset, len, crc });
    }
    if spans.len() != row_groups {
        return Err(corrupt(
            path,
            format!(
                "{} row group checksums for {row_groups} row groups",
                spans.len()
            ),
        ));
    }
    Ok(spans)
}

/// The page checksum list ([`PAGE_CRC_KEY`]) as `[group][column][page]`, checked against the
/// offset index: one entry per row group, and for a group with checksums one list per column
/// with one checksum per page the offset index locates.
fn parse_page_crcs(
    path: &Path,
    list: &str,
    metadata: &ParquetMetaData,
) -> Result<Vec<Option<Vec<Vec<u32>>>>, Error> {
    let mismatch = |what: String| corrupt(path, format!("page checksum list: {what}"));
    let pages = metadata
        .page_index()
        .ok_or_else(|| mismatch("no page index".into()))?;
    let columns_per_group = metadata.file_metadata().schema_descr().num_columns();
    let groups: Vec<&str> = list.split(',').collect();
    if groups.len() != metadata.num_row_groups() {
        return Err(mismatch(format!(
            "{} entries for {} row groups",
            groups.len(),
            metadata.num_row_groups()
        )));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (g, entry) in groups.iter().enumerate() {
        if entry.is_empty() {
            out.push(None);
            continue;
        }
        let columns: Vec<&str> = entry.split(';').collect();
        if columns.len() != columns_per_group {
            return Err(mismatch(format!(
                "row group {g} has {} columns of checksums for {columns_per_group} columns",
                columns.len(),
            )));
        }
        let mut per_column = Vec::with_capacity(columns.len());
        for (c, hex) in columns.iter().enumerate() {
            let pages = pages
                .page_locations(g, c)
                .ok_or_else(|| mismatch(format!("row group {g} column {c}: no page locations")))?
                .len();
            if hex.len() != pages * 8 || !hex.is_ascii() {
                return Err(mismatch(format!(
                    "row group {g} column {c}: {} checksum digits for {pages} pages",
                    hex.len()
                )));
            }
            let crcs = (0..pages)
                .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|_| mismatch(format!("row group {g} column {c}: not hex")))?;
            per_column.push(crcs);
        }
        out.push(Some(per_column));
    }
    Ok(out)
}

/// The bytes of some row groups of one file, fetched, not yet verified or decoded: their
/// checksums are checked by [`FileIndex::verify`] on the blocking pool, before decoding, so a
/// reader never holds an async worker for a checksum pass over megabytes (the coordinator
/// shares those workers).
pub(crate) struct FetchedGroups {
    sparse: Sparse,
    groups: Vec<usize>,
    /// For each of `groups`, the rows that may match ([`FileIndex::page_rows`]); `None`: all.
    pages: Vec<PageRows>,
}

impl FetchedGroups {
    /// How many row groups were fetched.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// The same groups, each limited to the rows of `pages` (one entry per group, in order).
    pub(crate) fn with_pages(mut self, pages: Vec<PageRows>) -> FetchedGroups {
        assert_eq!(
            pages.len(),
            self.groups.len(),
            "one page selection per group"
        );
        self.pages = pages;
        self
    }
}

impl FileIndex {
    /// Loads the index, decoding on the caller's task (open's scan, the read-only CLI).
    pub async fn load<F: Fs>(fs: &F, path: &Path, kind: FileKind) -> Result<FileIndex, Error> {
        Self::load_on(fs, &Inline, path, kind).await
    }

    /// Loads the index: the footer and bloom filters are read through `fs` (bloom filters are
    /// verified as they arrive), and decoding the footer and building the index run on `pool`.
    pub async fn load_on<F: Fs, P: BlockingPool>(
        fs: &F,
        pool: &P,
        path: &Path,
        kind: FileKind,
    ) -> Result<FileIndex, Error> {
        let io = |e| Error::io(path, e);
        let file = fs.open(path).await.map_err(io)?;
        let len = file.len().await.map_err(io)?;
        if len < 12 {
            return Err(corrupt(path, format!("{UNFINISHED}: no parquet footer")));
        }
        let tail = file.read_at(len - 8, 8).await.map_err(io)?;
        if &tail[4..] != b"PAR1" {
            return Err(corrupt(path, format!("{UNFINISHED}: no parquet footer")));
        }
        let footer_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        if footer_len > MAX_FOOTER_BYTES || footer_len + 8 > len {
            return Err(corrupt(
                path,
                format!("footer length {footer_len} is impossible"),
            ));
        }
        let footer_start = len - 8 - footer_len;
        let footer = file
            .read_at(footer_start, footer_len as usize)
            .await
            .map_err(io)?;
        let mut bytes_read = 8 + footer_len;
        let owned = path.to_path_buf();
        let Footer {
            metadata,
            last_seen_block,
            ours,
            bloom_crcs,
            row_group_crcs,
            page_index,
            page_crcs,
        } = pool
            .run_blocking(move || decode_footer(&owned, &footer))
            .await?;
        let mut sparse = Sparse {
            len,
            ranges: BTreeMap::new(),
        };
        for rg in metadata.row_groups() {
            for col in rg.columns() {
                let (Some(off), Some(blen)) =
                    (col.bloom_filter_offset(), col.bloom_filter_length())
                else {
                    continue;
                };
                let (off, blen) = (off as u64, blen as usize);
                if off + blen as u64 > footer_start {
                    return Err(corrupt(
                        path,
                        format!("bloom filter at {off} overlaps the footer"),
                    ));
                }
                let bytes = file.read_at(off, blen).await.map_err(io)?;
                bytes_read += blen as u64;
                match bloom_crcs.get(&off) {
                    Some(&(l, c)) if l == blen && crc32c::crc32c(&bytes) == c => {}
                    Some(_) => {
                        return Err(corrupt(
                            path,
                            format!("bloom filter checksum mismatch at offset {off}"),
                        ))
                    }
                    None if ours => {
                        return Err(corrupt(
                            path,
                            format!("no checksum for bloom filter at offset {off}"),
                        ))
                    }
                    None => {}
                }
                sparse.ranges.insert(off, Bytes::from(bytes));
            }
        }
        // The page indexes: one read of everything between the body and the footer, verified
        // before a single min/max is trusted.
        let page_index = match page_index {
            None => None,
            Some((start, crc)) => {
                if start > footer_start {
                    return Err(corrupt(
                        path,
                        format!("body length {start} overlaps the footer at {footer_start}"),
                    ));
                }
                let bytes = file
                    .read_at(start, (footer_start - start) as usize)
                    .await
                    .map_err(io)?;
                bytes_read += bytes.len() as u64;
                if crc32c::crc32c(&bytes) != crc {
                    crate::mark!("read-page-index-checksum-failed");
                    return Err(corrupt(
                        path,
                        format!("page index checksum mismatch at offset {start}"),
                    ));
                }
                Some(Sparse {
                    len,
                    ranges: BTreeMap::from([(start, Bytes::from(bytes))]),
                })
            }
        };
        drop(file);
        let path = path.to_path_buf();
        pool.run_blocking(move || {
            let metadata = match page_index {
                None => metadata,
                Some(bytes) => {
                    let mut reader = ParquetMetaDataReader::new_with_metadata(metadata)
                        .with_column_index_policy(PageIndexPolicy::Optional)
                        .with_offset_index_policy(PageIndexPolicy::Required);
                    reader
                        .read_page_indexes(&bytes)
                        .and_then(|()| reader.finish())
                        .map_err(|e| corrupt(&path, format!("page index: {e}")))?
                }
            };
            let spans = match row_group_crcs {
                None => None,
                Some(list) => Some(parse_spans(
                    &path,
                    &list,
                    metadata.num_row_groups(),
                    footer_start,
                )?),
            };
            let page_crcs = match page_crcs {
                Some(list)
                    if metadata
                        .page_index()
                        .is_some_and(|p| p.has_offset_indexes()) =>
                {
                    parse_page_crcs(&path, &list, &metadata)?
                }
                _ => Vec::new(),
            };
            let metadata = Arc::new(metadata);
            let arrow_meta = ArrowReaderMetadata::try_new(metadata.clone(), Default::default())
                .map_err(|e| corrupt(&path, e.to_string()))?;
            let builder =
                ParquetRecordBatchReaderBuilder::new_with_metadata(sparse, arrow_meta.clone());
            let row_groups = row_group_index(&path, kind, &builder)?;
            Ok(FileIndex {
                path,
                kind,
                len,
                row_groups,
                spans,
                bytes_read,
                last_seen_block,
                page_crcs,
                metadata: arrow_meta,
            })
        })
        .await
    }

    /// The index of one row group just appended to an unfinished file (the open pair's),
    /// built from what its writer knows instead of a footer: the group's metadata, the bytes of
    /// its bloom filters (by file offset) and where its bytes are with their checksum. Reads of
    /// the open window then fetch, verify and decode it exactly as a closed file's row group.
    /// `len` is the file's length once the group is written. CPU work (parses the filters).
    pub(crate) fn written_group(
        path: &Path,
        kind: FileKind,
        group: RowGroupMetaData,
        blooms: BTreeMap<u64, Bytes>,
        span: RowGroupSpan,
        len: u64,
    ) -> Result<FileIndex, Error> {
        assert!(
            span.offset + span.len as u64 <= len,
            "a written row group lies inside its file"
        );
        let file_metadata = FileMetaData::new(
            1,
            group.num_rows(),
            None,
            None,
            group.schema_descr_ptr(),
            None,
        );
        let metadata = Arc::new(ParquetMetaData::new(file_metadata, vec![group]));
        let options = ArrowReaderOptions::new().with_schema(kind.schema());
        let arrow_meta = ArrowReaderMetadata::try_new(metadata, options)
            .map_err(|e| corrupt(path, e.to_string()))?;
        let sparse = Sparse {
            len,
            ranges: blooms,
        };
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(sparse, arrow_meta.clone());
        let row_groups = row_group_index(path, kind, &builder)?;
        Ok(FileIndex {
            path: path.to_path_buf(),
            kind,
            len,
            row_groups,
            spans: Some(vec![span]),
            bytes_read: 0,
            last_seen_block: None,
            page_crcs: Vec::new(),
            metadata: arrow_meta,
        })
    }

    /// Fetches only the bytes of `groups` ([`FileIndex::group_reads`], then
    /// [`FileIndex::fetched`]); verifying and decoding them is [`FileIndex::decode`]'s (CPU)
    /// work. Needs `spans`. (Reads hand the reads to a pool job, which reads and decodes a few
    /// groups at a time; this is the tests' shorthand.)
    #[cfg(test)]
    pub(crate) async fn fetch_groups<F: Fs>(
        &self,
        fs: &F,
        groups: Vec<usize>,
    ) -> Result<FetchedGroups, Error> {
        if groups.is_empty() {
            // Nothing to read: no need to open the file.
            return Ok(FetchedGroups {
                sparse: Sparse {
                    len: self.len,
                    ranges: BTreeMap::new(),
                },
                groups,
                pages: Vec::new(),
            });
        }
        let io = |e| Error::io(&self.path, e);
        let file = fs.open(&self.path).await.map_err(io)?;
        let bytes = crate::env::read_each(&file, self.group_reads(&groups))
            .await
            .map_err(io)?;
        self.fetched(groups, bytes)
    }

    /// The rows of row group `g` that may hold a row matching every `(column, values)` pair
    /// (empty `values` match all), judged by the column index's per-page min/max: `None` when
    /// every row may (no page index, no filter, or no page ruled out), `Some` of a selection
    /// that skips every row when none may. Byte arrays compare as unsigned bytes, parquet's
    /// order for binary statistics.
    pub(crate) fn page_rows(&self, g: usize, must_match: &[(&str, &[&[u8]])]) -> PageRows {
        let metadata = self.metadata.metadata();
        let pages = metadata.page_index()?;
        let schema = metadata.file_metadata().schema_descr();
        let rows = self.row_groups[g].rows as usize;
        let mut selection: Option<RowSelection> = None;
        for (column, values) in must_match.iter().filter(|(_, v)| !v.is_empty()) {
            let Some(c) = (0..schema.num_columns()).find(|&i| schema.column(i).name() == *column)
            else {
                continue;
            };
            let (Some(ColumnIndexMetaData::BYTE_ARRAY(index)), Some(locations)) =
                (pages.column_index(g, c), pages.page_locations(g, c))
            else {
                continue;
            };
            let ranges = (0..locations.len())
                .filter(|&i| match (index.min_value(i), index.max_value(i)) {
                    (Some(lo), Some(hi)) => values.iter().any(|v| {
                        let above_min = if crate::planted!(PageMinExclusive) {
                            lo < *v
                        } else {
                            lo <= *v
                        };
                        above_min && *v <= hi
                    }),
                    // A page of nulls only: our columns have none, so keep it (never wrong).
                    _ => true,
                })
                .map(|i| page_row_range(locations, i, rows));
            let these = RowSelection::from_consecutive_ranges(ranges, rows);
            selection = Some(match selection {
                None => these,
                Some(before) => before.intersection(&these),
            });
        }
        let selection = selection?;
        (selection.skipped_row_count() > 0).then(|| selection.into())
    }

    /// The reads (offset, length) that fetch `groups` (ascending): neighbouring groups, apart
    /// by their bloom filters at most, are read at once, so a filtered read makes about one
    /// read per run of candidate groups rather than one per group.
    pub(crate) fn group_reads(&self, groups: &[usize]) -> Vec<(u64, usize)> {
        self.joined_reads(groups)
            .map(|(_, offset, len)| (offset, len))
            .collect()
    }

    /// `groups`' bytes from what [`FileIndex::group_reads`] read, in its order.
    pub(crate) fn fetched(
        &self,
        groups: Vec<usize>,
        bytes: Vec<Vec<u8>>,
    ) -> Result<FetchedGroups, Error> {
        let spans = self
            .spans
            .as_ref()
            .expect("ranged reads need row group checksums");
        let reads: Vec<_> = self.joined_reads(&groups).collect();
        assert_eq!(reads.len(), bytes.len(), "one buffer per group read");
        let mut sparse = Sparse {
            len: self.len,
            ranges: BTreeMap::new(),
        };
        for ((run, offset, len), bytes) in reads.into_iter().zip(bytes) {
            if bytes.len() != len {
                crate::mark!("read-row-group-checksum-failed");
                let g = groups[run.start];
                return Err(corrupt(
                    &self.path,
                    format!("row group {g} checksum mismatch at offset {offset}"),
                ));
            }
            let bytes = Bytes::from(bytes);
            for &g in &groups[run] {
                let span = spans[g];
                let from = (span.offset - offset) as usize;
                sparse
                    .ranges
                    .insert(span.offset, bytes.slice(from..from + span.len));
            }
        }
        let pages = vec![None; groups.len()];
        Ok(FetchedGroups {
            sparse,
            groups,
            pages,
        })
    }

    /// The runs of `groups` (indices into it) read at once, each with its offset and length.
    fn joined_reads<'a>(
        &'a self,
        groups: &'a [usize],
    ) -> impl Iterator<Item = (std::ops::Range<usize>, u64, usize)> + 'a {
        let spans = self
            .spans
            .as_ref()
            .expect("ranged reads need row group checksums");
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = spans[*groups.get(i)?];
            let mut end = first.offset + first.len as u64;
            let mut j = i + 1;
            while let Some(&g) = groups.get(j) {
                let next = spans[g];
                if next.offset < end || next.offset - end > FETCH_GAP_MAX_BYTES {
                    break;
                }
                end = next.offset + next.len as u64;
                j += 1;
            }
            let run = i..j;
            i = j;
            Some((run, first.offset, (end - first.offset) as usize))
        })
    }

    /// Splits fetched row groups into `parts` runs of consecutive groups (file order; fewer when
    /// there are fewer groups), each with only its own bytes, so they can be verified and
    /// decoded one at a time or at once on a pool.
    pub(crate) fn split_fetched(&self, fetched: FetchedGroups, parts: usize) -> Vec<FetchedGroups> {
        let parts = parts.clamp(1, fetched.groups.len().max(1));
        if parts == 1 {
            return vec![fetched];
        }
        let spans = self
            .spans
            .as_ref()
            .expect("ranged reads need row group checksums");
        let FetchedGroups {
            sparse,
            groups,
            pages,
        } = fetched;
        let mut out = Vec::with_capacity(parts);
        for run in consecutive_runs(groups.len(), parts) {
            let chunk = &groups[run.clone()];
            let mut ranges = BTreeMap::new();
            for &g in chunk {
                let at = spans[g].offset;
                let bytes = sparse
                    .ranges
                    .get(&at)
                    .expect("every candidate group was fetched");
                ranges.insert(at, bytes.clone());
            }
            out.push(FetchedGroups {
                sparse: Sparse {
                    len: sparse.len,
                    ranges,
                },
                groups: chunk.to_vec(),
                pages: pages[run].to_vec(),
            });
        }
        out
    }

    /// Checks the fetched row groups against the checksums the writer recorded, and hands back
    /// only bytes that passed: a group read whole is checked whole; a group limited to some
    /// pages (a page selection, and page checksums in the file) has just the pages holding a
    /// selected row checked, and only those pages stay readable, so the decoder can touch no
    /// byte that was not verified (it fails instead). A mismatch is `CorruptFile` naming the
    /// file, the group and the offset. CPU work (the decoders call it).
    fn verify(&self, mut fetched: FetchedGroups) -> Result<FetchedGroups, Error> {
        let spans = self
            .spans
            .as_ref()
            .expect("ranged reads need row group checksums");
        let page_index = self.metadata.metadata().page_index();
        for (k, &g) in fetched.groups.iter().enumerate() {
            let span = spans[g];
            let bytes = fetched
                .sparse
                .ranges
                .get(&span.offset)
                .expect("every candidate group was fetched")
                .clone();
            let crcs = self.page_crcs.get(g).and_then(Option::as_ref);
            let (Some(selectors), Some(crcs), Some(page_index)) =
                (&fetched.pages[k], crcs, page_index)
            else {
                if crc32c::crc32c(&bytes) != span.crc {
                    crate::mark!("read-row-group-checksum-failed");
                    return Err(corrupt(
                        &self.path,
                        format!("row group {g} checksum mismatch at offset {}", span.offset),
                    ));
                }
                continue;
            };
            let mut selected = Vec::new();
            let mut row = 0;
            for s in selectors {
                if !s.skip {
                    selected.push(row..row + s.row_count);
                }
                row += s.row_count;
            }
            let rows = self.row_groups[g].rows as usize;
            let mut pages = Vec::new();
            for (c, crcs) in crcs.iter().enumerate() {
                let locations = page_index
                    .page_locations(g, c)
                    .expect("page checksums are loaded only with page locations");
                for (i, loc) in locations.iter().enumerate() {
                    let page = page_row_range(locations, i, rows);
                    if !selected
                        .iter()
                        .any(|r| r.start < page.end && page.start < r.end)
                    {
                        continue;
                    }
                    let (at, len) = (loc.offset as u64, loc.compressed_page_size as usize);
                    if at < span.offset || at + len as u64 > span.offset + span.len as u64 {
                        return Err(corrupt(
                            &self.path,
                            format!("row group {g} has a page at {at}+{len} outside its bytes"),
                        ));
                    }
                    let from = (at - span.offset) as usize;
                    let page = bytes.slice(from..from + len);
                    if crc32c::crc32c(&page) != crcs[i] {
                        crate::mark!("read-page-checksum-failed");
                        return Err(corrupt(
                            &self.path,
                            format!("row group {g} page checksum mismatch at offset {at}"),
                        ));
                    }
                    pages.push((at, page));
                }
            }
            crate::mark!("read-page-verified");
            fetched.sparse.ranges.remove(&span.offset);
            fetched.sparse.ranges.extend(pages);
        }
        Ok(fetched)
    }

    /// Decodes fetched row groups in two passes (late materialization, parquet's `RowFilter`):
    /// first only the `columns` that `keep` looks at, then every column of the rows it keeps.
    /// A selective `get_logs` (2% of rows) no longer builds `data`, hashes and topics it throws
    /// away. `keep` gets a batch of `columns` alone and returns one flag per row. CPU work.
    pub(crate) fn decode_where(
        &self,
        fetched: FetchedGroups,
        columns: &[&str],
        keep: impl FnMut(RecordBatch) -> Result<BooleanArray, ArrowError> + Send + 'static,
    ) -> Result<Vec<RecordBatch>, Error> {
        let fetched = self.verify(fetched)?;
        let schema = self.metadata.metadata().file_metadata().schema_descr();
        let mask = ProjectionMask::columns(schema, columns.iter().copied());
        let (builder, groups) = self.builder(fetched);
        let builder = builder
            .with_row_filter(RowFilter::new(vec![Box::new(ArrowPredicateFn::new(
                mask, keep,
            ))]))
            .with_row_selection_policy(RowSelectionPolicy::Selectors);
        decode_groups(&self.path, builder, groups)
    }

    /// Decodes fetched row groups into Arrow batches (CPU work; run it on a blocking pool).
    pub(crate) fn decode(
        &self,
        fetched: FetchedGroups,
    ) -> Result<Vec<arrow_array::RecordBatch>, Error> {
        let fetched = self.verify(fetched)?;
        let (builder, groups) = self.builder(fetched);
        decode_groups(&self.path, builder, groups)
    }

    /// A reader over fetched row groups, limited to the rows their page selections keep, and
    /// the groups to read with it.
    fn builder(
        &self,
        fetched: FetchedGroups,
    ) -> (ParquetRecordBatchReaderBuilder<Sparse>, Vec<usize>) {
        let FetchedGroups {
            sparse,
            groups,
            pages,
            ..
        } = fetched;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(sparse, self.metadata.clone());
        if pages.iter().all(Option::is_none) {
            return (builder, groups);
        }
        crate::mark!("read-page-skipped");
        let mut selectors = Vec::new();
        for (&g, pages) in groups.iter().zip(pages) {
            match pages {
                Some(rows) => selectors.extend(rows),
                None => selectors.push(RowSelector::select(self.row_groups[g].rows as usize)),
            }
        }
        (
            builder.with_row_selection(RowSelection::from(selectors)),
            groups,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::real::{RealEnv, RealFs};
    use crate::{Config, ReceiptInput, Store};

    fn receipt(block: u64, i: u8) -> ReceiptInput {
        ReceiptInput {
            tx_hash: [block as u8 * 16 + i; 32],
            tx_index: u32::from(i),
            receipt_bytes: vec![i; 10],
            logs: vec![],
        }
    }

    /// Writes four receipts to each of `blocks` in windows of 10 (a block of 10 or more closes
    /// window 0) and returns the index of window 0's receipts file.
    async fn receipts_index_of_window_0(blocks: &[u64]) -> (tempfile::TempDir, FileIndex) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            max_blocks_per_file: 10,
            ..Config::default()
        };
        let s = Store::open(RealEnv::default(), dir.path(), config)
            .await
            .unwrap();
        for &b in blocks {
            s.write_receipts(b, (0..4).map(|i| receipt(b, i)).collect())
                .await
                .unwrap();
        }
        s.close().await.unwrap();
        let path = dir.path().join("receipts_0.parquet");
        let idx = FileIndex::load(&RealFs, &path, FileKind::Receipts)
            .await
            .unwrap();
        (dir, idx)
    }

    /// A read decoded in parallel: the fetched row groups split into parts (consecutive groups,
    /// each with only its own bytes) decode to exactly the rows of the whole, in file order, for
    /// every number of parts up to past the group count.
    #[tokio::test]
    async fn split_fetched_groups_decode_to_the_same_rows_in_order() {
        let (_dir, idx) = receipts_index_of_window_0(&[1, 2, 3, 4, 5, 10]).await;
        let groups: Vec<usize> = (0..idx.row_groups.len()).collect();
        assert!(groups.len() >= 4, "several row groups to split");
        let rows = |batches: Vec<RecordBatch>| -> Vec<(u64, [u8; 32])> {
            batches
                .iter()
                .flat_map(|b| crate::parquet::batch_to_receipts(b).unwrap())
                .map(|r| (r.block_number, r.tx_hash))
                .collect()
        };
        let whole = rows(
            idx.decode(idx.fetch_groups(&RealFs, groups.clone()).await.unwrap())
                .unwrap(),
        );
        assert_eq!(whole.len(), 20, "blocks 1-5, four receipts each");
        for parts in 1..=groups.len() + 1 {
            let fetched = idx.fetch_groups(&RealFs, groups.clone()).await.unwrap();
            let split = idx.split_fetched(fetched, parts);
            assert_eq!(split.len(), parts.min(groups.len()), "{parts} parts");
            let joined: Vec<_> = split
                .into_iter()
                .flat_map(|part| rows(idx.decode(part).unwrap()))
                .collect();
            assert_eq!(joined, whole, "{parts} parts");
        }
    }

    /// Late materialization behind lookups by hash: of fetched row groups, `decode_where` on
    /// the `tx_hash` column yields exactly the rows holding the hash (one of the 12 rows of three
    /// row groups), and nothing for an absent hash.
    #[tokio::test]
    async fn decoding_where_a_hash_matches_yields_only_its_rows() {
        let (_dir, idx) = receipts_index_of_window_0(&[1, 2, 3, 10]).await;
        assert_eq!(idx.row_groups.len(), 3, "one row group per block");
        let all = || idx.fetch_groups(&RealFs, vec![0, 1, 2]);
        let holding = |want: [u8; 32]| {
            move |batch: RecordBatch| {
                let hashes = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::BinaryArray>()
                    .expect("the tx_hash column alone");
                assert_eq!(batch.num_columns(), 1, "the predicate sees its column only");
                Ok(hashes.iter().map(|h| Some(h == Some(&want[..]))).collect())
            }
        };
        let in_block_2 = receipt(2, 3).tx_hash;
        let batches = idx
            .decode_where(all().await.unwrap(), &["tx_hash"], holding(in_block_2))
            .unwrap();
        let rows: Vec<_> = batches
            .iter()
            .flat_map(|b| crate::parquet::batch_to_receipts(b).unwrap())
            .collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].block_number, rows[0].tx_hash), (2, in_block_2));
        assert_eq!(rows[0].receipt_bytes, receipt(2, 3).receipt_bytes);
        let absent = idx
            .decode_where(all().await.unwrap(), &["tx_hash"], holding([0xEE; 32]))
            .unwrap();
        assert_eq!(absent.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    }

    /// A closed window of logs from six contracts written with 4-row pages: 24 receipts of one
    /// log each per block, contract `i % 6`, event `i % 3`.
    async fn logs_window(dir: &Path) -> Store<RealEnv> {
        let config = Config {
            max_blocks_per_file: 10,
            page_rows: 4,
            ..Config::default()
        };
        let s = Store::open(RealEnv::default(), dir, config).await.unwrap();
        for b in 1..=4u64 {
            let receipts = (0..24u8)
                .map(|i| ReceiptInput {
                    logs: vec![crate::LogInput {
                        address: [0x10 + i % 6; 20],
                        topics: vec![[0x50 + i % 3; 32], [i; 32]],
                        data: vec![i; 8],
                    }],
                    ..receipt(b, i)
                })
                .collect();
            s.write_receipts(b, receipts).await.unwrap();
        }
        s.write_receipts(10, vec![receipt(10, 0)]).await.unwrap();
        s
    }

    /// Pages are pruned by the column index: an address filter keeps only the pages whose
    /// min/max admit the address (a logs row group is sorted by address, so that is a run of
    /// 1-2 of its 6 pages), and the store's answer is exactly the rows a full scan filters to,
    /// in block and log order.
    #[tokio::test]
    async fn an_address_filter_decodes_only_pages_that_can_hold_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let s = logs_window(dir.path()).await;
        let idx = FileIndex::load(&RealFs, &dir.path().join("logs_0.parquet"), FileKind::Logs)
            .await
            .unwrap();
        let want: &[u8] = &[0x13; 20];
        for g in 0..idx.row_groups.len() {
            let rows = idx.row_groups[g].rows as usize;
            // One row group per block (give or take the next block's first log, upstream's
            // seal boundary).
            assert!((23..=25).contains(&rows), "group {g}: {rows} rows");
            let pages = idx
                .page_rows(g, &[("address", &[want])])
                .expect("pages ruled out");
            let kept: usize = pages.iter().filter(|r| !r.skip).map(|r| r.row_count).sum();
            assert!(
                kept > 0 && kept <= 8,
                "group {g}: {kept} of {rows} rows kept"
            );
            assert_eq!(idx.page_rows(g, &[]), None, "no filter, no pruning");
        }
        let all = s.get_logs(&crate::LogFilter::default()).await.unwrap();
        let filter = crate::LogFilter {
            addresses: vec![[0x13; 20]],
            ..Default::default()
        };
        let got = s.get_logs(&filter).await.unwrap();
        let expected: Vec<_> = all
            .iter()
            .filter(|l| l.address == [0x13; 20])
            .cloned()
            .collect();
        assert_eq!(got.len(), 16, "four logs of contract 3 per block");
        assert_eq!(got, expected);
        let keys: Vec<_> = all.iter().map(|l| (l.block_number, l.log_index)).collect();
        assert!(keys.is_sorted(), "rows come back in block and log order");
        s.close().await.unwrap();
    }

    /// The writer checksums every page it writes: for each row group and column, one checksum
    /// per page the offset index locates, each the crc32c of exactly that page's bytes in the
    /// file (header and data).
    #[tokio::test]
    async fn every_page_the_offset_index_locates_has_the_checksum_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        logs_window(dir.path()).await.close().await.unwrap();
        let path = dir.path().join("logs_0.parquet");
        let idx = FileIndex::load(&RealFs, &path, FileKind::Logs)
            .await
            .unwrap();
        let file = std::fs::read(&path).unwrap();
        let metadata = idx.metadata.metadata();
        let pages = metadata.page_index().expect("page index loaded");
        assert_eq!(idx.page_crcs.len(), idx.row_groups.len());
        let mut checked = 0;
        for (g, crcs) in idx.page_crcs.iter().enumerate() {
            let crcs = crcs.as_ref().expect("every group has page checksums");
            assert_eq!(
                crcs.len(),
                metadata.file_metadata().schema_descr().num_columns()
            );
            for (c, crcs) in crcs.iter().enumerate() {
                let locations = pages.page_locations(g, c).unwrap();
                assert_eq!(crcs.len(), locations.len(), "group {g} column {c}");
                for (loc, &crc) in locations.iter().zip(crcs) {
                    let at = loc.offset as usize;
                    let page = &file[at..at + loc.compressed_page_size as usize];
                    assert_eq!(
                        crc32c::crc32c(page),
                        crc,
                        "group {g} column {c} page at {at}"
                    );
                    checked += 1;
                }
            }
        }
        // 24-row groups in 4-row pages, 12 columns, 4 groups and more.
        assert!(checked >= 4 * 12 * 6, "{checked} pages");
    }

    /// A read that decodes some pages of a row group verifies those pages by their own
    /// checksums: a flipped bit in a page the address filter decodes fails the read naming the
    /// file, while the same flip in a page no selected row lives in leaves the filtered read
    /// whole and correct (the page is neither verified nor decoded) and fails a full scan.
    #[tokio::test]
    async fn a_rotted_page_fails_the_reads_that_decode_it_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let s = logs_window(dir.path()).await;
        let filter = crate::LogFilter {
            addresses: vec![[0x13; 20]],
            ..Default::default()
        };
        let want = s.get_logs(&filter).await.unwrap();
        assert_eq!(want.len(), 16);
        s.close().await.unwrap();
        let path = dir.path().join("logs_0.parquet");
        let clean = std::fs::read(&path).unwrap();
        let idx = FileIndex::load(&RealFs, &path, FileKind::Logs)
            .await
            .unwrap();
        let metadata = idx.metadata.metadata();
        let schema = metadata.file_metadata().schema_descr();
        let data = (0..schema.num_columns())
            .find(|&c| schema.column(c).name() == "data")
            .unwrap();
        let g = 1;
        let kept = idx
            .page_rows(g, &[("address", &[&[0x13; 20][..]])])
            .unwrap();
        let mut selected = Vec::new();
        let mut row = 0;
        for sel in &kept {
            if !sel.skip {
                selected.push(row..row + sel.row_count);
            }
            row += sel.row_count;
        }
        let locations = metadata
            .page_index()
            .unwrap()
            .page_locations(g, data)
            .unwrap();
        let rows = idx.row_groups[g].rows as usize;
        let holds_selected = |i: usize| {
            let first = locations[i].first_row_index as usize;
            let end = locations
                .get(i + 1)
                .map_or(rows, |n| n.first_row_index as usize);
            selected.iter().any(|r| r.start < end && first < r.end)
        };
        let inside = (0..locations.len()).find(|&i| holds_selected(i)).unwrap();
        let outside = (0..locations.len()).find(|&i| !holds_selected(i)).unwrap();
        // The last byte of a page is data (the header comes first).
        let last_byte = |i: usize| {
            (locations[i].offset + i64::from(locations[i].compressed_page_size) - 1) as usize
        };
        let reopen = || async {
            Store::open(
                RealEnv::default(),
                dir.path(),
                Config {
                    max_blocks_per_file: 10,
                    page_rows: 4,
                    ..Config::default()
                },
            )
            .await
            .unwrap()
        };

        let mut rotted = clean.clone();
        rotted[last_byte(inside)] ^= 0x01;
        std::fs::write(&path, &rotted).unwrap();
        let s = reopen().await;
        let err = s.get_logs(&filter).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::CorruptFile { .. }), "{text}");
        assert!(text.contains("page checksum mismatch"), "{text}");
        assert!(text.contains("logs_0.parquet"), "{text}");
        s.close().await.unwrap();

        let mut rotted = clean.clone();
        rotted[last_byte(outside)] ^= 0x01;
        std::fs::write(&path, &rotted).unwrap();
        let s = reopen().await;
        assert_eq!(s.get_logs(&filter).await.unwrap(), want);
        let err = s.get_logs(&crate::LogFilter::default()).await.unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        s.close().await.unwrap();
    }

    /// The page indexes carry a checksum of their own: a flipped bit between the body and the
    /// footer makes loading the file's index fail naming the file, instead of min/max values
    /// that could hide rows.
    #[tokio::test]
    async fn a_rotted_page_index_is_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        logs_window(dir.path()).await.close().await.unwrap();
        let path = dir.path().join("logs_0.parquet");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        // The last byte before the footer belongs to the page indexes.
        bytes[n - 8 - footer_len - 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = FileIndex::load(&RealFs, &path, FileKind::Logs)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::CorruptFile { .. }), "{text}");
        assert!(text.contains("page index checksum mismatch"), "{text}");
        assert!(text.contains("logs_0.parquet"), "{text}");
    }
}
