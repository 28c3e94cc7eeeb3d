//! Writes a small data directory (closed pairs plus an open window in the WAL) for manual
//! checks with other engines: `cargo run -p receipt-store --example write_sample -- DIR`.
use receipt_store::env::real::RealEnv;
use receipt_store::{Config, LogInput, ReceiptInput, Store};

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).expect("usage: write_sample DIR");
    let s = Store::open(RealEnv::default(), &dir, Config::new(4, 1))
        .await
        .expect("open");
    for b in 1..=10u64 {
        let receipts = (0..3u32)
            .map(|i| ReceiptInput {
                tx_hash: [b as u8 * 16 + i as u8; 32],
                tx_index: i,
                receipt_bytes: format!("receipt {b}/{i}").into_bytes(),
                logs: (0..i)
                    .map(|k| LogInput {
                        address: [k as u8 + 1; 20],
                        topics: vec![[0xAA; 32], [k as u8; 32]],
                        data: vec![b as u8; 4],
                    })
                    .collect(),
            })
            .collect();
        s.write_receipts(b, receipts).await.expect("write");
    }
    s.close().await.expect("close");
}
