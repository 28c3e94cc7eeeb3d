//! The `fail` crate's registry is process-global, so this test lives in its own binary: no
//! other test shares its process and could trip over an armed failpoint.
#![cfg(feature = "failpoints")]

use receipt_store::env::real::RealEnv;
use receipt_store::{failpoints, Config, Error, ReceiptInput, Store};

fn receipt(block: u64) -> ReceiptInput {
    ReceiptInput {
        tx_hash: [block as u8; 32],
        tx_index: 0,
        receipt_bytes: vec![1],
        logs: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_crate_failpoints_are_honoured_and_the_write_is_replayed() {
    let scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(RealEnv::default(), tmp.path(), Config::new(4, 1))
        .await
        .unwrap();
    fail::cfg(failpoints::AFTER_WAL_APPEND, "return").unwrap();
    assert!(matches!(
        s.write_receipts(1, vec![receipt(1)]).await,
        Err(Error::Failpoint(_))
    ));
    fail::remove(failpoints::AFTER_WAL_APPEND);
    s.crash().await;
    scenario.teardown();
    let s = Store::open(RealEnv::default(), tmp.path(), Config::new(4, 1))
        .await
        .unwrap();
    let blocks: Vec<u64> = s
        .receipts_in_range(0, u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|r| r.block_number)
        .collect();
    assert_eq!(
        blocks,
        vec![1],
        "the record reached the WAL before the failpoint"
    );
    s.close().await.unwrap();
}
