//! The reference model: every write the store did not reject, in order, with its fate (acked,
//! unknown outcome, or still in flight). Recovered state must equal the model applied to some
//! prefix of them; reads must equal it at some prefix between their call and their reply.

use receipt_store::{LogInput, LogRecord, ReceiptInput, ReceiptRecord, SyncPolicy};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Addresses logs are drawn from (index into this in plans' filters): address `i` is
/// [`ADDRESS_PREFIX_LEN`] bytes of the first one's, then `ADDRESSES[i]` (see [`address`]).
pub const ADDRESSES: [u8; 3] = [0xA0, 0xA1, 0xA2];
/// Leading bytes every model address shares, as precompiles do (0x00..1001, 0x00..1002): a
/// flush that orders logs by a fixed-length address prefix before the whole address (the sort
/// before b584cbe) writes them out of the order their file declares.
pub const ADDRESS_PREFIX_LEN: usize = 8;
/// Topics logs are drawn from.
pub const TOPICS: [u8; 3] = [0x70, 0x71, 0x72];

/// eth_getLogs matching, written from the spec (JSON-RPC `eth_getLogs`, receipt-store-spec 5.4)
/// and never from the store's filter code: both block bounds inclusive and optional; an empty
/// address set matches every address, otherwise the log's address must be in it; topic position
/// `i` with an empty set is a wildcard, otherwise the log must have a topic at `i` and it must be
/// in the set (a log with fewer topics than a constrained position never matches).
pub fn log_matches(f: &receipt_store::LogFilter, l: &LogRecord) -> bool {
    let after_from = f.from_block.is_none_or(|b| l.block_number >= b);
    let before_to = f.to_block.is_none_or(|b| l.block_number <= b);
    let address = f.addresses.is_empty() || f.addresses.iter().any(|a| *a == l.address);
    let topics = f.topics.iter().enumerate().all(|(pos, wanted)| {
        wanted.is_empty() || l.topics.get(pos).is_some_and(|t| wanted.contains(t))
    });
    after_from && before_to && address && topics
}

pub fn address(i: u8) -> [u8; 20] {
    let mut a = [ADDRESSES[i as usize % ADDRESSES.len()]; 20];
    a[..ADDRESS_PREFIX_LEN].fill(ADDRESSES[0]);
    a
}

pub fn topic(i: u8) -> [u8; 32] {
    [TOPICS[i as usize % TOPICS.len()]; 32]
}

/// The transaction hash of tx `tx` in block `height` of plan `seed`: unique per (height, tx).
pub fn tx_hash(seed: u64, height: u64, tx: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&seed.to_be_bytes());
    h[8..16].copy_from_slice(&height.to_be_bytes());
    h[16..20].copy_from_slice(&tx.to_be_bytes());
    // Spread the rest so bloom filters see well-mixed keys.
    let mut x = seed ^ height.rotate_left(21) ^ (tx as u64).rotate_left(42) ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in h[20..].chunks_mut(4) {
        x = x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(1);
        chunk.copy_from_slice(&(x >> 32).to_le_bytes()[..chunk.len()]);
    }
    h
}

/// The receipts a write op sends: [`receipts_for`] with the op's edge values applied (an earlier
/// transaction's hash on the first receipt; the first receipt's bytes and first log's data
/// exactly at the size limits). None for other ops.
pub fn write_inputs(seed: u64, op: &crate::plan::Op) -> Option<Vec<ReceiptInput>> {
    let crate::plan::Op::Write {
        height,
        first_tx,
        receipts,
        logs,
        dup_hash_of,
        at_limit,
    } = op
    else {
        return None;
    };
    let mut rs = receipts_for(seed, *height, *first_tx, *receipts, *logs);
    if let (Some(of), Some(first)) = (dup_hash_of, rs.first_mut()) {
        first.tx_hash = tx_hash(seed, of.height, of.tx);
    }
    if let (true, Some(first)) = (*at_limit, rs.first_mut()) {
        first
            .receipt_bytes
            .resize(receipt_store::MAX_RECEIPT_BYTES, b'.');
        if first.logs.is_empty() {
            first.logs.push(LogInput {
                address: address(0),
                topics: vec![topic(0); receipt_store::MAX_TOPICS_PER_LOG],
                data: Vec::new(),
            });
        }
        first.logs[0]
            .data
            .resize(receipt_store::MAX_LOG_DATA_BYTES, 7);
    }
    Some(rs)
}

/// Deterministic receipts `first_tx..first_tx + n` of block `height`: small receipt bytes and
/// 0..=3 logs each with 0..=4 topics from the small alphabets, so filters find matches.
pub fn receipts_for(seed: u64, height: u64, first_tx: u32, n: u32, logs: u32) -> Vec<ReceiptInput> {
    (first_tx..first_tx + n)
        .map(|tx| {
            let mix = height as u32 ^ tx.wrapping_mul(7);
            let nlogs = (logs + tx) % 4;
            ReceiptInput {
                tx_hash: tx_hash(seed, height, tx),
                tx_index: tx,
                receipt_bytes: format!("r{height}.{tx}{}", ".".repeat((mix % 24) as usize))
                    .into_bytes(),
                logs: (0..nlogs)
                    .map(|k| LogInput {
                        address: address(((mix + k) % 3) as u8),
                        topics: (0..((mix + k) % 5))
                            .map(|t| topic(((mix + k * 2 + t) % 3) as u8))
                            .collect(),
                        data: vec![k as u8; (k as usize) * 3 + (mix % 2) as usize],
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The canonical recovered (or expected) state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct State {
    pub receipts: Vec<ReceiptRecord>,
    pub logs: Vec<LogRecord>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes as text when they are printable ASCII (our receipts are), else `0x` hex.
fn text_or_hex(b: &[u8]) -> String {
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(b).into_owned()
    } else {
        format!("0x{}", hex(b))
    }
}

/// `b` as runs of equal bytes, `a0x8+a1x12` (the model's addresses and topics are a run or
/// two; anything with more than two runs is hex).
fn short(b: &[u8]) -> String {
    let runs: Vec<&[u8]> = b.chunk_by(|x, y| x == y).collect();
    match runs.len() {
        1 | 2 => runs
            .iter()
            .map(|r| format!("{:02x}x{}", r[0], r.len()))
            .collect::<Vec<_>>()
            .join("+"),
        _ => hex(b),
    }
}

impl State {
    /// A stable FNV-1a hash over every field of every record, in order (length-prefixed, so
    /// no two different states share an encoding).
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::default();
        h.u64(self.receipts.len() as u64);
        for r in &self.receipts {
            h.u64(r.block_number);
            h.bytes(&r.tx_hash);
            h.bytes(&r.receipt_bytes);
        }
        h.u64(self.logs.len() as u64);
        for l in &self.logs {
            h.u64(l.block_number);
            h.bytes(&l.tx_hash);
            h.u64(((l.tx_index as u64) << 32) | l.log_index as u64);
            h.bytes(&l.address);
            h.u64(l.topics.len() as u64);
            for t in &l.topics {
                h.bytes(t);
            }
            h.bytes(&l.data);
        }
        h.0
    }

    /// Canonical JSON: one object per receipt and per log, in store order, hashes in hex. This is
    /// what snapshots, diffs and state hashes are made of.
    pub fn canonical(&self) -> Value {
        json!({
            "receipts": self.receipts.iter().map(|r| json!({
                "block": r.block_number,
                "tx": hex(&r.tx_hash),
                "bytes": text_or_hex(&r.receipt_bytes),
            })).collect::<Vec<_>>(),
            "logs": self.logs.iter().map(|l| json!({
                "block": l.block_number,
                "tx_index": l.tx_index,
                "log_index": l.log_index,
                "tx": hex(&l.tx_hash),
                "address": short(&l.address),
                "topics": l.topics.iter().map(|t| short(t)).collect::<Vec<_>>(),
                "data": hex(&l.data),
            })).collect::<Vec<_>>(),
        })
    }

    /// One canonical JSON line per receipt and log (`receipt {...}` / `log {...}`), for line
    /// diffs; receipts and logs of a block are adjacent, so a diff names the block it is about.
    pub fn lines(&self) -> Vec<String> {
        let v = self.canonical();
        let mut keyed: Vec<(u64, u8, usize, String)> = Vec::new();
        for (tag, key, kind) in [(0u8, "receipts", "receipt"), (1, "logs", "log")] {
            for (i, item) in v[key].as_array().expect("array").iter().enumerate() {
                let block = item["block"].as_u64().expect("block");
                keyed.push((block, tag, i, format!("{kind} {item}")));
            }
        }
        keyed.sort();
        keyed.into_iter().map(|(_, _, _, l)| l).collect()
    }

    /// A compact text line per receipt (`b<block> <tx hash> <bytes>`) and per log
    /// (`b<block> tx#<index> log#<index> <address> [<topics>] data=<hex> <tx hash>`), in store
    /// order: what corpus snapshots hold. Equal-byte arrays print as `<byte>x<len>`.
    pub fn compact_lines(&self) -> (Vec<String>, Vec<String>) {
        let receipts = self
            .receipts
            .iter()
            .map(|r| {
                format!(
                    "b{} {} {}",
                    r.block_number,
                    hex(&r.tx_hash),
                    text_or_hex(&r.receipt_bytes)
                )
            })
            .collect();
        let logs = self
            .logs
            .iter()
            .map(|l| {
                format!(
                    "b{} tx#{} log#{} {} [{}] data={} {}",
                    l.block_number,
                    l.tx_index,
                    l.log_index,
                    short(&l.address),
                    l.topics
                        .iter()
                        .map(|t| short(t))
                        .collect::<Vec<_>>()
                        .join(","),
                    hex(&l.data),
                    hex(&l.tx_hash)
                )
            })
            .collect();
        (receipts, logs)
    }

    /// Drops whole blocks that pruning may have removed.
    pub fn without_blocks(&self, prunable: impl Fn(u64) -> bool) -> State {
        State {
            receipts: self
                .receipts
                .iter()
                .filter(|r| !prunable(r.block_number))
                .cloned()
                .collect(),
            logs: self
                .logs
                .iter()
                .filter(|l| !prunable(l.block_number))
                .cloned()
                .collect(),
        }
    }
}

/// FNV-1a, 64 bit.
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn raw(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x1000_0000_01b3);
        }
    }
    pub fn u64(&mut self, x: u64) {
        self.raw(&x.to_le_bytes());
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.raw(b);
    }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.raw(bytes);
    h.0
}

/// What became of an issued write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// The call has not returned yet.
    InFlight,
    /// `Ok`: durable under the sync policy.
    Acked,
    /// It failed after passing validation: it may or may not be durable.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Issued {
    pub height: u64,
    pub receipts: Vec<ReceiptInput>,
    pub fate: Fate,
}

/// The model's state with every record tagged by the index of the write that made it: the state
/// after the first `k` writes is the records tagged below `k`, in the same order.
#[derive(Clone, Debug, Default)]
pub struct Tagged {
    pub receipts: Vec<(usize, ReceiptRecord)>,
    pub logs: Vec<(usize, LogRecord)>,
}

impl Tagged {
    pub fn prefix(&self, k: usize) -> State {
        State {
            receipts: self
                .receipts
                .iter()
                .filter(|(w, _)| *w < k)
                .map(|(_, r)| r.clone())
                .collect(),
            logs: self
                .logs
                .iter()
                .filter(|(w, _)| *w < k)
                .map(|(_, l)| l.clone())
                .collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub policy: SyncPolicy,
    pub keep_recent: u64,
    pub issued: Vec<Issued>,
    /// Highest height the store may have observed (writes and empty blocks).
    pub max_seen: u64,
    /// Writes below this height sit in closed pairs that were durable before the last power
    /// loss; they must survive it even under sync policy `never`.
    pub durable_below: u64,
    /// Pair starts whose deletion by prune was made durable: they must never come back.
    pub pruned: BTreeMap<u64, u64>,
}

impl Model {
    pub fn new(policy: SyncPolicy, keep_recent: u64) -> Self {
        Model {
            policy,
            keep_recent,
            issued: Vec::new(),
            max_seen: 0,
            durable_below: 0,
            pruned: BTreeMap::new(),
        }
    }

    /// A write is about to be issued: reads may see it from now on. Returns its index.
    pub fn begin(&mut self, height: u64, receipts: Vec<ReceiptInput>) -> usize {
        assert!(
            self.issued.iter().all(|w| w.fate != Fate::InFlight),
            "one writer: at most one write in flight"
        );
        self.max_seen = self.max_seen.max(height);
        self.issued.push(Issued {
            height,
            receipts,
            fate: Fate::InFlight,
        });
        self.issued.len() - 1
    }

    /// The write `idx` returned `Ok`.
    pub fn ack(&mut self, idx: usize) {
        self.settle(idx, Fate::Acked);
    }

    /// The write `idx` failed after validation: outcome unknown.
    pub fn unknown(&mut self, idx: usize) {
        self.settle(idx, Fate::Unknown);
    }

    /// The write `idx` was rejected: it staged nothing, so it leaves the history.
    pub fn reject(&mut self, idx: usize) {
        assert_eq!(
            idx + 1,
            self.issued.len(),
            "only the last write can be rejected"
        );
        assert_eq!(self.issued[idx].fate, Fate::InFlight);
        self.issued.pop();
    }

    fn settle(&mut self, idx: usize, fate: Fate) {
        assert_eq!(self.issued[idx].fate, Fate::InFlight, "settled twice");
        self.issued[idx].fate = fate;
    }

    pub fn observe_empty(&mut self, height: u64) {
        self.max_seen = self.max_seen.max(height);
    }

    /// Writes known durable: the prefix up to and including the last acked one.
    pub fn acked_count(&self) -> usize {
        self.issued
            .iter()
            .rposition(|w| w.fate == Fate::Acked)
            .map_or(0, |i| i + 1)
    }

    /// Height of the last write in the history, if any.
    pub fn last_height(&self) -> Option<u64> {
        self.issued.last().map(|w| w.height)
    }

    /// Blocks pruning may have removed: every block below `latest - keep_recent`, with `latest`
    /// bounded by the highest block ever issued, empty blocks included (they raise the store's
    /// latest block too); conservative: a block here may also survive.
    pub fn prunable(&self) -> impl Fn(u64) -> bool + Send + 'static {
        let keep = self.keep_recent;
        let before = self.max_seen.saturating_sub(keep);
        move |b| keep > 0 && b < before
    }

    pub fn tagged(&self) -> Tagged {
        let mut t = Tagged::default();
        let mut cursor: Option<(u64, u32)> = None;
        for (w, iw) in self.issued.iter().enumerate() {
            for r in &iw.receipts {
                t.receipts.push((
                    w,
                    ReceiptRecord {
                        tx_hash: r.tx_hash,
                        block_number: iw.height,
                        receipt_bytes: r.receipt_bytes.clone(),
                    },
                ));
                // Log indices are block-wide, continuing across several writes to one block.
                let mut idx = match cursor {
                    Some((b, n)) if b == iw.height => n,
                    _ => 0,
                };
                for l in &r.logs {
                    t.logs.push((
                        w,
                        LogRecord {
                            block_number: iw.height,
                            tx_hash: r.tx_hash,
                            tx_index: r.tx_index,
                            log_index: idx,
                            address: l.address,
                            topics: l.topics.clone(),
                            data: l.data.clone(),
                        },
                    ));
                    idx += 1;
                }
                cursor = Some((iw.height, idx));
            }
        }
        // Heights never decrease along the history, so this sort only orders logs within a block
        // (by tx index, then log index), which is the store's order.
        t.logs
            .sort_by_key(|(_, l)| (l.block_number, l.tx_index, l.log_index));
        t
    }

    /// The state after the first `k` issued writes.
    pub fn state(&self, k: usize) -> State {
        self.tagged().prefix(k)
    }

    /// Smallest prefix recovery may legitimately return after a crash of this kind.
    pub fn lower_bound(&self, power_loss: bool) -> usize {
        if power_loss && self.policy == SyncPolicy::Never {
            // Only what rotation made durable in closed pairs survives; acked WAL records may not.
            self.issued
                .iter()
                .take_while(|w| w.height < self.durable_below)
                .count()
        } else {
            self.acked_count()
        }
    }

    /// The lower bound `lo` once open cut the WAL's last `records` records for bit rot: the
    /// last acked writes' records may have been those (each write is one record, appended in
    /// order), nothing before them.
    pub fn lower_bound_after_rotted_records_cut(&self, lo: usize, records: usize) -> usize {
        if records == 0 {
            return lo;
        }
        lo.min(self.acked_count().saturating_sub(records))
    }

    /// After a recovery matched prefix `k`, that prefix is the new history.
    pub fn adopt(&mut self, k: usize) {
        assert!(k <= self.issued.len());
        self.issued.truncate(k);
        for w in &mut self.issued {
            w.fate = Fate::Acked;
        }
    }

    /// The write holding `hash`: (index, height, receipt).
    pub fn find(&self, hash: &[u8; 32]) -> Option<(usize, u64, &ReceiptInput)> {
        self.find_all(hash).into_iter().next()
    }

    /// Every write holding `hash` (a hash may recur in later blocks), oldest first:
    /// (index, height, receipt).
    pub fn find_all(&self, hash: &[u8; 32]) -> Vec<(usize, u64, &ReceiptInput)> {
        self.issued
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                w.receipts
                    .iter()
                    .filter(move |r| &r.tx_hash == hash)
                    .map(move |r| (i, w.height, r))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn log_indices_continue_across_writes_to_the_same_block() {
        let mut m = Model::new(SyncPolicy::Always, 0);
        let a = m.begin(5, receipts_for(1, 5, 0, 2, 3));
        m.ack(a);
        let b = m.begin(5, receipts_for(1, 5, 2, 2, 3));
        m.ack(b);
        let c = m.begin(6, receipts_for(1, 6, 0, 1, 3));
        m.ack(c);
        let s = m.state(3);
        let idx5: Vec<u32> = s
            .logs
            .iter()
            .filter(|l| l.block_number == 5)
            .map(|l| l.log_index)
            .collect();
        assert_eq!(idx5, (0..idx5.len() as u32).collect::<Vec<_>>());
        assert!(idx5.len() > 3, "several writes contributed logs: {idx5:?}");
        assert_eq!(
            s.logs
                .iter()
                .find(|l| l.block_number == 6)
                .map(|l| l.log_index),
            Some(0)
        );
    }

    #[test]
    fn tx_hashes_are_unique_per_height_and_index() {
        let mut seen = BTreeSet::new();
        for h in 0..50 {
            for tx in 0..20 {
                assert!(seen.insert(tx_hash(9, h, tx)));
            }
        }
    }

    #[test]
    fn the_acked_prefix_ends_at_the_last_ack() {
        let mut m = Model::new(SyncPolicy::Always, 0);
        let a = m.begin(1, receipts_for(1, 1, 0, 1, 0));
        m.unknown(a);
        let b = m.begin(2, receipts_for(1, 2, 0, 1, 0));
        m.ack(b);
        let c = m.begin(3, receipts_for(1, 3, 0, 1, 0));
        m.unknown(c);
        assert_eq!(m.acked_count(), 2);
        assert_eq!(m.lower_bound(true), 2);
        let d = m.begin(4, receipts_for(1, 4, 0, 1, 0));
        m.reject(d);
        assert_eq!(m.issued.len(), 3);
    }

    #[test]
    fn under_never_a_power_loss_may_lose_acked_writes_above_the_durable_pairs() {
        let mut m = Model::new(SyncPolicy::Never, 0);
        for h in 1..=6 {
            let i = m.begin(h, receipts_for(1, h, 0, 1, 0));
            m.ack(i);
        }
        m.durable_below = 4;
        assert_eq!(m.lower_bound(true), 3);
        assert_eq!(
            m.lower_bound(false),
            6,
            "a process crash loses nothing acked"
        );
    }

    #[test]
    fn canonical_json_is_stable_and_readable() {
        let mut m = Model::new(SyncPolicy::Always, 0);
        let i = m.begin(3, receipts_for(2, 3, 0, 1, 2));
        m.ack(i);
        let s = m.state(1);
        assert_eq!(s.hash(), m.state(1).hash());
        let lines = s.lines();
        assert!(lines[0].starts_with("receipt {\"block\":3"), "{lines:?}");
    }
}
