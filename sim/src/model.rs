//! The reference model: every write the store did not reject, in order, with whether it was
//! acknowledged. Recovered state must equal the model applied to some prefix of them.

use receipt_store::{LogInput, LogRecord, ReceiptInput, ReceiptRecord, SyncPolicy};
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct Issued {
    pub height: u64,
    pub receipts: Vec<ReceiptInput>,
    pub acked: bool,
}

/// The canonical recovered (or expected) state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct State {
    pub receipts: Vec<ReceiptRecord>,
    pub logs: Vec<LogRecord>,
}

impl State {
    pub fn hash(&self) -> u64 {
        let text = serde_json::to_string(self).expect("serialisable");
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in text.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x1000_0000_01b3);
        }
        h
    }

    /// Drops whole blocks below `floor` that pruning may have removed.
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

/// Deterministic receipts for write op `op` of plan `seed`: hashes are unique per receipt.
pub fn receipts_for(seed: u64, op: usize, height: u64, n: u32, logs: u32) -> Vec<ReceiptInput> {
    (0..n)
        .map(|i| {
            let mut tx_hash = [0u8; 32];
            tx_hash[..8].copy_from_slice(&seed.to_le_bytes());
            tx_hash[8..16].copy_from_slice(&(op as u64).to_le_bytes());
            tx_hash[16..20].copy_from_slice(&i.to_le_bytes());
            ReceiptInput {
                tx_hash,
                tx_index: i,
                receipt_bytes: format!("r:{height}:{op}:{i}").into_bytes(),
                logs: (0..logs)
                    .map(|k| LogInput {
                        address: [((op as u32 + k) % 3) as u8; 20],
                        topics: (0..((i + k) % 4))
                            .map(|t| [((op as u32 + t) % 3) as u8; 32])
                            .collect(),
                        data: vec![k as u8; (k as usize) * 3],
                    })
                    .collect(),
            }
        })
        .collect()
}

pub struct Model {
    pub policy: SyncPolicy,
    pub issued: Vec<Issued>,
    /// Highest height ever issued (pruning may have acted on it even if it was later lost).
    pub max_height: u64,
    /// Writes below this height sit in closed pairs that were durable before the last power
    /// loss; they must survive it even under sync policy `never`.
    pub durable_below: u64,
}

impl Model {
    pub fn new(policy: SyncPolicy) -> Self {
        Model {
            policy,
            issued: Vec::new(),
            max_height: 0,
            durable_below: 0,
        }
    }

    pub fn issue(&mut self, height: u64, receipts: Vec<ReceiptInput>, acked: bool) {
        self.max_height = self.max_height.max(height);
        self.issued.push(Issued {
            height,
            receipts,
            acked,
        });
    }

    pub fn acked_count(&self) -> usize {
        self.issued
            .iter()
            .rposition(|w| w.acked)
            .map_or(0, |i| i + 1)
    }

    /// The state after the first `k` issued writes.
    pub fn state(&self, k: usize) -> State {
        let mut s = State::default();
        let mut cursor: Option<(u64, u32)> = None;
        for w in &self.issued[..k] {
            for r in &w.receipts {
                s.receipts.push(ReceiptRecord {
                    tx_hash: r.tx_hash,
                    block_number: w.height,
                    receipt_bytes: r.receipt_bytes.clone(),
                });
                let mut idx = match cursor {
                    Some((b, n)) if b == w.height => n,
                    _ => 0,
                };
                for l in &r.logs {
                    s.logs.push(LogRecord {
                        block_number: w.height,
                        tx_hash: r.tx_hash,
                        tx_index: r.tx_index,
                        log_index: idx,
                        address: l.address,
                        topics: l.topics.clone(),
                        data: l.data.clone(),
                    });
                    idx += 1;
                }
                cursor = Some((w.height, idx));
            }
        }
        s.logs
            .sort_by_key(|l| (l.block_number, l.tx_index, l.log_index));
        s
    }

    /// Smallest prefix recovery may legitimately return.
    pub fn lower_bound(&self, power_loss: bool) -> usize {
        if power_loss && self.policy == SyncPolicy::Never {
            self.issued
                .iter()
                .take_while(|w| w.height < self.durable_below)
                .count()
        } else {
            self.acked_count()
        }
    }

    /// After a recovery matched prefix `k`, that prefix is the new history.
    pub fn adopt(&mut self, k: usize) {
        self.issued.truncate(k);
        for w in &mut self.issued {
            w.acked = true;
        }
    }

    pub fn find(&self, hash: &[u8; 32]) -> Option<(u64, &ReceiptInput, bool)> {
        self.issued.iter().find_map(|w| {
            w.receipts
                .iter()
                .find(|r| &r.tx_hash == hash)
                .map(|r| (w.height, r, w.acked))
        })
    }
}
