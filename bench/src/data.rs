//! The benchmark data set: deterministic receipts shaped like upstream's benchmark (one log per
//! receipt) with an address and topic mix that makes filters selective to a known degree.
//!
//! * 90% of logs come from one of [`POPULAR_ADDRESSES`] contracts, the rest from an address of
//!   their own; topic0 is one of [`EVENTS`] event signatures.
//! * One log in the whole chain, in [`RARE_BLOCK`], has [`RARE_ADDRESS`]: the query for it shows
//!   what bloom filters save.

use receipt_store::{Address, LogInput, ReceiptInput, Topic, TxHash};

pub const POPULAR_ADDRESSES: u32 = 50;
pub const EVENTS: u32 = 13;
pub const RARE_ADDRESS: Address = [0xAA; 20];
pub const RARE_TX: u32 = 17;

/// The block holding the single log of [`RARE_ADDRESS`], in the middle of `blocks`.
pub fn rare_block(blocks: u64) -> u64 {
    blocks / 2
}

pub fn tx_hash(block: u64, i: u32) -> TxHash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&block.to_be_bytes());
    h[8..12].copy_from_slice(&i.to_be_bytes());
    // Spread the remaining bytes so hashes do not share long prefixes.
    let mut x = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(i);
    for chunk in h[12..].chunks_mut(8) {
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(31);
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    h
}

/// Popular contract `k` (0-based).
pub fn popular_address(k: u32) -> Address {
    [0x10 + k as u8; 20]
}

/// Event signature `k` (0-based).
pub fn event(k: u32) -> Topic {
    [0x50 + k as u8; 32]
}

fn address_of(block: u64, i: u32, blocks: u64) -> Address {
    if block == rare_block(blocks) && i == RARE_TX {
        return RARE_ADDRESS;
    }
    if i % 10 == 9 {
        let mut a = [0xEE; 20];
        a[..8].copy_from_slice(&block.to_be_bytes());
        a[8..12].copy_from_slice(&i.to_be_bytes());
        return a;
    }
    popular_address(i % POPULAR_ADDRESSES)
}

pub fn receipt(block: u64, i: u32, blocks: u64) -> ReceiptInput {
    let mut topic1 = [0u8; 32];
    topic1[..4].copy_from_slice(&i.to_be_bytes());
    ReceiptInput {
        tx_hash: tx_hash(block, i),
        tx_index: i,
        receipt_bytes: vec![(i % 251) as u8; 120],
        logs: vec![LogInput {
            address: address_of(block, i, blocks),
            topics: vec![event(i % EVENTS), topic1],
            data: vec![(block % 251) as u8; 64],
        }],
    }
}

pub fn block(block: u64, receipts: u32, blocks: u64) -> Vec<ReceiptInput> {
    (0..receipts).map(|i| receipt(block, i, blocks)).collect()
}
