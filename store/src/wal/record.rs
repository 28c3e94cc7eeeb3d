//! The WAL record codec. Hand-written: the payload is a small fixed binary layout and no crate
//! gives us a checksummed, length-prefixed framing with exactly these guarantees.
//!
//! Frame v2 (little-endian), written since issue 9:
//!
//! ```text
//! header  : HEAD_MAGIC u32 | payload_len u32 | seq u64 | height u64 | payload_crc u32 | marker_crc u32
//! payload : payload_len bytes
//! trailer : TAIL_MAGIC u32 | payload_len u32 | seq u64 | height u64 | payload_crc u32 | marker_crc u32
//! ```
//!
//! `payload_crc` is the crc32c of `seq` and the payload (so a record copied to the wrong position
//! is detected too); `marker_crc` is the crc32c of the marker's first 28 bytes. The trailer is a
//! redundant header written last, in the same append: a valid trailer proves the append was
//! completed, which tells a torn, in-flight append (no valid trailer) from a completely written
//! record damaged afterwards (valid trailer, bad header or payload). The header alone decides
//! whether a record is valid; a damaged trailer after a valid header and payload loses nothing.
//!
//! Frame v1 (read only, written before issue 9): `len u32 | crc32c(seq, payload) u32 | seq u64 |
//! payload`. A v2 frame's first field, `HEAD_MAGIC`, is above `MAX_RECORD_PAYLOAD_BYTES`, the
//! bound on a v1 frame's first field, so the two are told apart by their first four bytes.
//!
//! Payload (both frame versions): `version u8 (1) | height u64 | n u32 | n × receipt`; a receipt
//! is `tx_hash [32] | tx_index u32 | len u32 | receipt_bytes | nlogs u32 | nlogs × log`; a log is
//! `address [20] | ntopics u8 | ntopics × [32] | len u32 | data`.

use crate::types::{Address, ReceiptInput, Rows, Topic, TxHash, MAX_TOPICS_PER_LOG};
use bytes::Bytes;

/// Header (and trailer) size of a v2 frame.
pub const MARKER_BYTES: usize = 32;
/// Header size of a v1 frame.
pub const FRAME_V1_HEADER_BYTES: usize = 16;
/// Upper bound on one record's payload: a block of a few thousand receipts is far below it.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;
/// First field of a v2 header (`RSW2`).
pub const HEAD_MAGIC: u32 = u32::from_le_bytes(*b"RSW2");
/// First field of a v2 trailer (`RSWE`).
pub const TAIL_MAGIC: u32 = u32::from_le_bytes(*b"RSWE");
const PAYLOAD_VERSION: u8 = 1;

const _: () = assert!(
    MARKER_BYTES == 4 + 4 + 8 + 8 + 4 + 4,
    "marker fields add up"
);
const _: () = assert!(
    FRAME_V1_HEADER_BYTES == 4 + 4 + 8,
    "v1 header fields add up"
);
const _: () = assert!(
    HEAD_MAGIC as usize > MAX_RECORD_PAYLOAD_BYTES
        && TAIL_MAGIC as usize > MAX_RECORD_PAYLOAD_BYTES,
    "a v2 marker never reads as a v1 length"
);
const _: () = assert!(
    HEAD_MAGIC != TAIL_MAGIC,
    "a header never reads as a trailer"
);

/// One WAL record, checked: one `write_receipts` call. Its payload stays as read (a slice of
/// its segment's bytes, no copy) until [`WalRecord::rows`] decodes it straight into the rows
/// replay stages: a full window is decoded once, into the memory it is served from, and by
/// replay, while the rewrite at open writes the same bytes out.
#[derive(Clone, Debug)]
pub struct WalRecord {
    pub seq: u64,
    pub height: u64,
    /// How many receipts the record holds.
    pub receipts: usize,
    payload: Bytes,
}

/// Two records are the same record when their sequence numbers, heights and payload bytes
/// are (the codec is deterministic, and a v1 frame's payload is a v2 frame's).
impl PartialEq for WalRecord {
    fn eq(&self, other: &Self) -> bool {
        (self.seq, self.height, &self.payload) == (other.seq, other.height, &other.payload)
    }
}

impl Eq for WalRecord {}

impl WalRecord {
    /// The rows this record stages (see [`Rows`]), decoded from its payload.
    pub fn rows(&self) -> Rows {
        decode_rows(&self.payload).expect("the payload was checked when its frame was read")
    }

    /// The payload's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

pub fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&seq.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

fn encode_payload(height: u64, receipts: &[ReceiptInput]) -> Vec<u8> {
    let mut payload = Vec::new();
    encode_payload_into(&mut payload, height, receipts);
    payload
}

/// Appends the payload of `receipts` at `height` to `payload`.
fn encode_payload_into(payload: &mut Vec<u8>, height: u64, receipts: &[ReceiptInput]) {
    payload.reserve(
        64 + receipts
            .iter()
            .map(|r| 64 + r.receipt_bytes.len())
            .sum::<usize>(),
    );
    payload.push(PAYLOAD_VERSION);
    payload.extend_from_slice(&height.to_le_bytes());
    payload.extend_from_slice(&(receipts.len() as u32).to_le_bytes());
    for r in receipts {
        payload.extend_from_slice(&r.tx_hash);
        payload.extend_from_slice(&r.tx_index.to_le_bytes());
        payload.extend_from_slice(&(r.receipt_bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&r.receipt_bytes);
        payload.extend_from_slice(&(r.logs.len() as u32).to_le_bytes());
        for log in &r.logs {
            assert!(
                log.topics.len() <= MAX_TOPICS_PER_LOG,
                "validated before encoding"
            );
            payload.extend_from_slice(&log.address);
            payload.push(log.topics.len() as u8);
            for t in &log.topics {
                payload.extend_from_slice(t);
            }
            payload.extend_from_slice(&(log.data.len() as u32).to_le_bytes());
            payload.extend_from_slice(&log.data);
        }
    }
}

/// The fields a header and a trailer share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub payload_len: usize,
    pub seq: u64,
    pub height: u64,
    pub payload_crc: u32,
}

fn encode_marker(magic: u32, m: &Marker) -> [u8; MARKER_BYTES] {
    let mut b = [0u8; MARKER_BYTES];
    b[0..4].copy_from_slice(&magic.to_le_bytes());
    b[4..8].copy_from_slice(&(m.payload_len as u32).to_le_bytes());
    b[8..16].copy_from_slice(&m.seq.to_le_bytes());
    b[16..24].copy_from_slice(&m.height.to_le_bytes());
    b[24..28].copy_from_slice(&m.payload_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Decodes a marker with `magic`; `None` unless the magic and the marker's checksum match.
pub fn decode_marker(b: &[u8], magic: u32) -> Option<Marker> {
    let b = b.get(..MARKER_BYTES)?;
    if le_u32(b) != magic || le_u32(&b[28..]) != crc32c::crc32c(&b[..28]) {
        return None;
    }
    Some(Marker {
        payload_len: le_u32(&b[4..]) as usize,
        seq: le_u64(&b[8..]),
        height: le_u64(&b[16..]),
        payload_crc: le_u32(&b[24..]),
    })
}

/// Whether `b` starts like a v2 frame (its first field is the header magic).
pub fn starts_v2(b: &[u8]) -> bool {
    b.len() >= 4 && le_u32(b) == HEAD_MAGIC
}

/// Encodes a whole v2 frame for `seq`.
pub fn encode_frame(seq: u64, height: u64, receipts: &[ReceiptInput]) -> Vec<u8> {
    PendingFrame::encode(height, receipts).seal(seq)
}

/// Encodes a whole v2 frame for `seq` around a payload already encoded (and checksummed), e.g.
/// one read from a v1 frame or from a frame whose trailer is damaged.
pub fn frame_of_payload(seq: u64, height: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2 * MARKER_BYTES + payload.len());
    frame.extend_from_slice(&[0; MARKER_BYTES]);
    frame.extend_from_slice(payload);
    PendingFrame { height, frame }.seal(seq)
}

/// A v2 frame whose payload is encoded but whose header and trailer wait for the sequence
/// number the WAL gives it at append. Encoding the payload (most of an append's CPU: a block's
/// receipts copied into one buffer) needs only the height, so a writer encodes it on its own
/// task before it hands the block to the coordinator.
pub struct PendingFrame {
    height: u64,
    /// Room for the header, then the payload; the trailer is appended at [`PendingFrame::seal`].
    frame: Vec<u8>,
}

impl PendingFrame {
    /// Encodes the payload of `receipts` (validated: at most [`MAX_TOPICS_PER_LOG`] topics per
    /// log) at `height`.
    pub fn encode(height: u64, receipts: &[ReceiptInput]) -> PendingFrame {
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0; MARKER_BYTES]);
        encode_payload_into(&mut frame, height, receipts);
        frame.reserve_exact(MARKER_BYTES);
        PendingFrame { height, frame }
    }

    pub fn height(&self) -> u64 {
        self.height
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.frame.len() - MARKER_BYTES
    }

    /// The whole frame for `seq`: header, payload, trailer.
    pub fn seal(mut self, seq: u64) -> Vec<u8> {
        let payload = &self.frame[MARKER_BYTES..];
        let m = Marker {
            payload_len: payload.len(),
            seq,
            height: self.height,
            payload_crc: checksum(seq, payload),
        };
        self.frame[..MARKER_BYTES].copy_from_slice(&encode_marker(HEAD_MAGIC, &m));
        self.frame.extend_from_slice(&encode_marker(TAIL_MAGIC, &m));
        self.frame
    }
}

/// Encodes a v1 frame, as stores before issue 9 wrote them; kept so tests can build old
/// segments and prove they still open.
pub fn encode_frame_v1(seq: u64, height: u64, receipts: &[ReceiptInput]) -> Vec<u8> {
    let payload = encode_payload(height, receipts);
    let mut frame = Vec::with_capacity(FRAME_V1_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&checksum(seq, &payload).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// v1 frame header fields.
pub struct FrameV1Header {
    pub len: usize,
    pub crc: u32,
    pub seq: u64,
}

pub fn decode_v1_header(b: &[u8]) -> FrameV1Header {
    assert!(b.len() >= FRAME_V1_HEADER_BYTES, "caller checks the length");
    FrameV1Header {
        len: le_u32(b) as usize,
        crc: le_u32(&b[4..]),
        seq: le_u64(&b[8..]),
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.pos < n {
            return Err(format!(
                "payload truncated at byte {} (need {n} more)",
                self.pos
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().unwrap())
    }
}

/// A payload's height and receipt count.
struct PayloadHead {
    height: u64,
    receipts: usize,
}

/// What [`walk_payload`] tells as it walks a payload: each receipt, then each of its logs.
trait PayloadVisitor<'a> {
    fn receipt(&mut self, height: u64, tx_hash: TxHash, bytes: &'a [u8], logs: usize);
    fn log(
        &mut self,
        height: u64,
        receipt: (TxHash, u32),
        address: Address,
        topics: &[Topic],
        data: &'a [u8],
    );
}

/// Checking visits nothing.
impl PayloadVisitor<'_> for () {
    fn receipt(&mut self, _: u64, _: TxHash, _: &[u8], _: usize) {}
    fn log(&mut self, _: u64, _: (TxHash, u32), _: Address, _: &[Topic], _: &[u8]) {}
}

/// Decoding builds the rows.
impl<'a> PayloadVisitor<'a> for Rows {
    fn receipt(&mut self, height: u64, tx_hash: TxHash, bytes: &'a [u8], logs: usize) {
        self.push_receipt(height, tx_hash, bytes.to_vec(), logs);
    }
    fn log(
        &mut self,
        height: u64,
        (tx_hash, tx_index): (TxHash, u32),
        address: Address,
        topics: &[Topic],
        data: &'a [u8],
    ) {
        self.push_log(
            height,
            tx_hash,
            tx_index,
            address,
            topics.to_vec(),
            data.to_vec(),
        );
    }
}

/// Walks a payload (layout in the module doc), telling `visitor` each receipt and log, and
/// returns its height and receipt count. Checking and decoding are this one walk, so they
/// cannot disagree on what is valid.
fn walk_payload<'a>(
    payload: &'a [u8],
    visitor: &mut impl PayloadVisitor<'a>,
) -> Result<PayloadHead, String> {
    let mut c = Cursor { b: payload, pos: 0 };
    let version = c.u8()?;
    if version != PAYLOAD_VERSION {
        return Err(format!("unknown payload version {version}"));
    }
    let height = c.u64()?;
    let n = c.u32()? as usize;
    let mut topics = [[0u8; 32]; MAX_TOPICS_PER_LOG];
    for _ in 0..n {
        let tx_hash = c.arr::<32>()?;
        let tx_index = c.u32()?;
        let len = c.u32()? as usize;
        let receipt_bytes = c.take(len)?;
        let nlogs = c.u32()? as usize;
        visitor.receipt(height, tx_hash, receipt_bytes, nlogs);
        for _ in 0..nlogs {
            let address = c.arr::<20>()?;
            let ntopics = c.u8()? as usize;
            if ntopics > MAX_TOPICS_PER_LOG {
                return Err(format!("log with {ntopics} topics"));
            }
            for t in topics.iter_mut().take(ntopics) {
                *t = c.arr::<32>()?;
            }
            let dlen = c.u32()? as usize;
            let data = c.take(dlen)?;
            visitor.log(
                height,
                (tx_hash, tx_index),
                address,
                &topics[..ntopics],
                data,
            );
        }
    }
    if c.pos != payload.len() {
        return Err(format!(
            "{} trailing bytes after the last receipt",
            payload.len() - c.pos
        ));
    }
    Ok(PayloadHead {
        height,
        receipts: n,
    })
}

/// Checks a payload whose checksum already matched, without decoding it (nothing is
/// allocated), and returns the record it holds. Errors describe what is malformed.
pub fn check_payload(seq: u64, payload: Bytes) -> Result<WalRecord, String> {
    let head = walk_payload(&payload, &mut ())?;
    Ok(WalRecord {
        seq,
        height: head.height,
        receipts: head.receipts,
        payload,
    })
}

/// Decodes a payload into the rows it stages (see [`Rows`]).
pub fn decode_rows(payload: &[u8]) -> Result<Rows, String> {
    // Capacities are bounded by the payload's length (a receipt takes at least 44 bytes), not
    // trusted from its receipt count (bytes 9..13, read again by the walk).
    let n = payload.get(9..13).map_or(0, le_u32) as usize;
    let mut rows = Rows {
        receipts: Vec::with_capacity(n.min(payload.len() / 44)),
        logs: Vec::with_capacity(n.min(payload.len() / 44)),
        ..Rows::default()
    };
    let head = walk_payload(payload, &mut rows)?;
    debug_assert_eq!(head.receipts, rows.receipts.len());
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::types::LogInput;

    fn sample() -> Vec<ReceiptInput> {
        vec![ReceiptInput {
            tx_hash: [7; 32],
            tx_index: 3,
            receipt_bytes: b"receipt".to_vec(),
            logs: vec![LogInput {
                address: [1; 20],
                topics: vec![[2; 32], [3; 32]],
                data: vec![9, 9],
            }],
        }]
    }

    #[test]
    fn frame_round_trips_every_field() {
        let frame = encode_frame(42, 1000, &sample());
        let h = decode_marker(&frame, HEAD_MAGIC).unwrap();
        assert_eq!((h.seq, h.height), (42, 1000));
        assert_eq!(h.payload_len, frame.len() - 2 * MARKER_BYTES);
        let payload = &frame[MARKER_BYTES..MARKER_BYTES + h.payload_len];
        assert_eq!(h.payload_crc, checksum(42, payload));
        let t = decode_marker(&frame[MARKER_BYTES + h.payload_len..], TAIL_MAGIC).unwrap();
        assert_eq!(t, h, "the trailer repeats the header");
        assert!(
            decode_marker(&frame, TAIL_MAGIC).is_none(),
            "a header is no trailer"
        );
        let rec = check_payload(42, Bytes::copy_from_slice(payload)).unwrap();
        assert_eq!((rec.seq, rec.height, rec.receipts), (42, 1000, 1));
        assert_eq!(rec.rows(), Rows::of(1000, sample()));
    }

    #[test]
    fn a_payload_framed_anew_is_the_frame_encoded_from_its_receipts() {
        let frame = encode_frame_v1(5, 77, &sample());
        let payload = &frame[FRAME_V1_HEADER_BYTES..];
        assert_eq!(
            frame_of_payload(5, 77, payload),
            encode_frame(5, 77, &sample())
        );
    }

    #[test]
    fn every_flipped_bit_of_a_marker_fails_its_checksum() {
        let frame = encode_frame(7, 9, &sample());
        for bit in 0..MARKER_BYTES * 8 {
            let mut b = frame[..MARKER_BYTES].to_vec();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_marker(&b, HEAD_MAGIC).is_none(), "bit {bit}");
        }
    }

    #[test]
    fn checksum_binds_the_sequence_number() {
        let frame = encode_frame_v1(1, 5, &sample());
        assert_ne!(checksum(1, &frame[16..]), checksum(2, &frame[16..]));
    }

    #[test]
    fn truncated_payload_is_an_error_not_a_panic() {
        let frame = encode_frame_v1(1, 5, &sample());
        let payload = &frame[FRAME_V1_HEADER_BYTES..];
        for cut in 0..payload.len() {
            let cut_payload = Bytes::copy_from_slice(&payload[..cut]);
            assert!(check_payload(1, cut_payload).is_err(), "cut {cut}");
            assert!(decode_rows(&payload[..cut]).is_err(), "cut {cut}");
        }
    }
}
