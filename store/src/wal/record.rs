//! The WAL record codec. Hand-written: the payload is a small fixed binary layout and no crate
//! gives us a checksummed, length-prefixed framing with exactly these guarantees.
//!
//! Frame (little-endian): `len u32 | crc32c u32 | seq u64 | payload[len]`, where the checksum
//! covers `seq` and the payload, so a record copied to the wrong position is detected too.
//!
//! Payload v1: `version u8 | height u64 | n u32 | n × receipt`; a receipt is
//! `tx_hash [32] | tx_index u32 | len u32 | receipt_bytes | nlogs u32 | nlogs × log`; a log is
//! `address [20] | ntopics u8 | ntopics × [32] | len u32 | data`.

use crate::types::{LogInput, ReceiptInput, MAX_TOPICS_PER_LOG};

pub const FRAME_HEADER_BYTES: usize = 16;
/// Upper bound on one record's payload: a block of a few thousand receipts is far below it.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;
const PAYLOAD_VERSION: u8 = 1;

/// One decoded WAL record: one `write_receipts` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    pub height: u64,
    pub receipts: Vec<ReceiptInput>,
}

pub fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&seq.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Encodes a whole frame for `seq`.
pub fn encode_frame(seq: u64, height: u64, receipts: &[ReceiptInput]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(
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
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&checksum(seq, &payload).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Frame header fields.
pub struct FrameHeader {
    pub len: usize,
    pub crc: u32,
    pub seq: u64,
}

pub fn decode_header(b: &[u8]) -> FrameHeader {
    assert!(b.len() >= FRAME_HEADER_BYTES);
    FrameHeader {
        len: u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize,
        crc: u32::from_le_bytes(b[4..8].try_into().unwrap()),
        seq: u64::from_le_bytes(b[8..16].try_into().unwrap()),
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

/// Decodes a payload whose checksum already matched. Errors describe what is malformed.
pub fn decode_payload(seq: u64, payload: &[u8]) -> Result<WalRecord, String> {
    let mut c = Cursor { b: payload, pos: 0 };
    let version = c.u8()?;
    if version != PAYLOAD_VERSION {
        return Err(format!("unknown payload version {version}"));
    }
    let height = c.u64()?;
    let n = c.u32()? as usize;
    let mut receipts = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let tx_hash = c.arr::<32>()?;
        let tx_index = c.u32()?;
        let len = c.u32()? as usize;
        let receipt_bytes = c.take(len)?.to_vec();
        let nlogs = c.u32()? as usize;
        let mut logs = Vec::with_capacity(nlogs.min(1 << 16));
        for _ in 0..nlogs {
            let address = c.arr::<20>()?;
            let ntopics = c.u8()? as usize;
            if ntopics > MAX_TOPICS_PER_LOG {
                return Err(format!("log with {ntopics} topics"));
            }
            let mut topics = Vec::with_capacity(ntopics);
            for _ in 0..ntopics {
                topics.push(c.arr::<32>()?);
            }
            let dlen = c.u32()? as usize;
            let data = c.take(dlen)?.to_vec();
            logs.push(LogInput {
                address,
                topics,
                data,
            });
        }
        receipts.push(ReceiptInput {
            tx_hash,
            tx_index,
            receipt_bytes,
            logs,
        });
    }
    if c.pos != payload.len() {
        return Err(format!(
            "{} trailing bytes after the last receipt",
            payload.len() - c.pos
        ));
    }
    Ok(WalRecord {
        seq,
        height,
        receipts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let h = decode_header(&frame);
        assert_eq!(h.seq, 42);
        assert_eq!(h.len, frame.len() - FRAME_HEADER_BYTES);
        let payload = &frame[FRAME_HEADER_BYTES..];
        assert_eq!(h.crc, checksum(42, payload));
        let rec = decode_payload(42, payload).unwrap();
        assert_eq!(
            rec,
            WalRecord {
                seq: 42,
                height: 1000,
                receipts: sample()
            }
        );
    }

    #[test]
    fn checksum_binds_the_sequence_number() {
        let frame = encode_frame(1, 5, &sample());
        assert_ne!(checksum(1, &frame[16..]), checksum(2, &frame[16..]));
    }

    #[test]
    fn truncated_payload_is_an_error_not_a_panic() {
        let frame = encode_frame(1, 5, &sample());
        let payload = &frame[FRAME_HEADER_BYTES..];
        for cut in 0..payload.len() {
            assert!(decode_payload(1, &payload[..cut]).is_err(), "cut {cut}");
        }
    }
}
