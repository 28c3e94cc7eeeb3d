//! `receipt-sim child`: opens the store on a real directory and runs a plan's write-path ops
//! from one op on, reporting each step ([`Msg`]); the parent kills it at some point.

use super::protocol::{ErrorKind, Msg};
use super::{child_config, write_of};
use crate::plan::{Op, Plan};
use receipt_store::env::real::RealEnv;
use receipt_store::{Error, Store};
use std::io::Write;
use std::path::Path;

/// Worker threads of the child's tokio runtime (production runs the store multi-threaded).
const CHILD_WORKER_THREADS: usize = 2;

/// Entry point of `receipt-sim child`: runs `plan` from op `from_op` on the store in `dir`,
/// reporting on stdout. Returns the process exit code (0 after a clean close).
pub fn child_main(dir: &Path, plan_path: &Path, from_op: usize) -> i32 {
    let plan = match std::fs::read_to_string(plan_path)
        .map_err(|e| e.to_string())
        .and_then(|t| Plan::from_json(&t))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("receipt-sim child: {}: {e}", plan_path.display());
            return 2;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CHILD_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(child_run(&plan, dir, from_op))
}

fn emit(m: &Msg) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone (it was killed, or gave up on us): nothing left to report to.
    if writeln!(out, "{m}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Reports op `i`'s outcome: `ok_msg` on success, `Failed` otherwise.
fn emit_result<T>(i: usize, r: &Result<T, Error>, ok_msg: Msg) {
    match r {
        Ok(_) => emit(&ok_msg),
        Err(e) => emit(&Msg::Failed {
            op: i,
            kind: ErrorKind::of(e),
            detail: e.to_string(),
        }),
    }
}

async fn child_run(plan: &Plan, dir: &Path, from_op: usize) -> i32 {
    let store = match Store::open(RealEnv::default(), dir, child_config(plan)).await {
        Ok(s) => s,
        Err(e) => {
            emit(&Msg::OpenFailed(e.to_string()));
            return 1;
        }
    };
    emit(&Msg::Opened);
    for (i, op) in plan.ops.iter().enumerate().skip(from_op) {
        match op {
            Op::Write { height, .. } | Op::Stale { height } => {
                let (_, rs, _) = write_of(plan, i).expect("a write op");
                emit(&Msg::Issued(i));
                let r = store.write_receipts(*height, rs).await;
                emit_result(i, &r, Msg::Ack(i));
            }
            Op::Empty { height } => {
                emit(&Msg::Issued(i));
                let r = store.write_receipts(*height, vec![]).await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Prune { explicit: true } => {
                emit(&Msg::Issued(i));
                let before = store.status().await.map(|s| s.closed_pairs).ok();
                let r = store.prune_now().await;
                if let (Ok(n), Some(before)) = (&r, before) {
                    if *n > 0 {
                        if let Ok(after) = store.status().await {
                            if after.pending_deletes == 0 {
                                // The newest pair is never pruned: each pruned window ends
                                // where the next pair on the list before the prune starts.
                                let windows = before
                                    .windows(2)
                                    .filter(|w| !after.closed_pairs.contains(&w[0]))
                                    .map(|w| (w[0], w[1]))
                                    .collect();
                                emit(&Msg::Pruned { op: i, windows });
                            }
                        }
                    }
                }
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Prune { explicit: false } => {
                // Let the ticker run (it prunes on the coordinator in the background).
                emit(&Msg::Issued(i));
                if plan.swarm.keep_recent > 0 {
                    tokio::time::sleep(child_config(plan).prune_interval).await;
                }
                emit(&Msg::Done(i));
            }
            Op::Resize {
                max_blocks_per_file: n,
            } => {
                emit(&Msg::Issued(i));
                let r = store.set_max_blocks_per_file(*n).await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::Flush => {
                emit(&Msg::Issued(i));
                let r = store.flush().await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::SetFlushInterval { blocks } => {
                emit(&Msg::Issued(i));
                let r = store.set_block_flush_interval(*blocks).await;
                emit_result(i, &r, Msg::Done(i));
            }
            Op::CloseReopen => {
                emit(&Msg::Issued(i));
                return child_close(&store, i + 1).await;
            }
            // Reads are checked in the simulator; crashes, power losses and injected faults
            // are in-process fault ops: the kills replace them here.
            Op::Oversized { .. }
            | Op::ReadReceipt { .. }
            | Op::ReadLogs { .. }
            | Op::Crash
            | Op::PowerLoss
            | Op::CrashInside { .. }
            | Op::AfterEnd { .. }
            | Op::BitRot { .. }
            | Op::WalRot { .. }
            | Op::Failpoint { .. }
            | Op::FsFault { .. } => {}
        }
    }
    child_close(&store, plan.ops.len()).await
}

async fn child_close(store: &Store<RealEnv>, next_op: usize) -> i32 {
    emit(&Msg::Closing { next_op });
    match store.close().await {
        Ok(()) => {
            emit(&Msg::Closed { next_op });
            0
        }
        Err(e) => {
            emit(&Msg::CloseFailed {
                next_op,
                detail: e.to_string(),
            });
            1
        }
    }
}
