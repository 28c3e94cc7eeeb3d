//! Helpers shared by the store's integration tests (each test file includes this module).

use receipt_store::{LogInput, ReceiptInput};

/// Receipt `i` of `block` with `logs` logs: a tx hash made of the block and index (unique per
/// pair), bytes naming both, and logs whose address and second topic follow the log's index.
pub fn receipt(block: u64, i: u32, logs: usize) -> ReceiptInput {
    let mut tx_hash = [0u8; 32];
    tx_hash[..8].copy_from_slice(&block.to_be_bytes());
    tx_hash[8..12].copy_from_slice(&i.to_be_bytes());
    ReceiptInput {
        tx_hash,
        tx_index: i,
        receipt_bytes: format!("receipt {block}/{i}").into_bytes(),
        logs: (0..logs)
            .map(|k| LogInput {
                address: [k as u8 + 1; 20],
                topics: vec![[7; 32], [k as u8; 32]],
                data: vec![k as u8; 3],
            })
            .collect(),
    }
}
