//! The op loop: each op of the plan run against the store, its answer fed to the model and
//! checked.

use super::*;
use receipt_store::files::{
    final_file_name, open_file_name, parse_open_pair_name, parse_pair_name,
};

impl<E: PlanEnv> Run<'_, E> {
    /// A write of `receipts` at `height`, with its outcome fed to the model and checked.
    pub(super) async fn write(
        &mut self,
        store: &S<E>,
        height: u64,
        receipts: Vec<ReceiptInput>,
        what: &str,
    ) {
        let (max_seen, last) = {
            let m = self.model();
            (m.max_seen, m.last_height())
        };
        let idx = self.model().begin(height, receipts.clone());
        let r = store.write_receipts(height, receipts).await;
        self.log(format!("  -> {r:?}"));
        match r {
            Ok(()) => {
                if what == "stale" && last.is_some_and(|l| l > height) {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a stale write at {height} below block {last:?} was accepted"),
                    ));
                }
                self.model().ack(idx);
                self.out.writes_acked += 1;
            }
            Err(e @ (Error::NonMonotonic { .. } | Error::Sealed { .. })) => {
                self.model().reject(idx);
                if height > max_seen {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a {what} at {height}, above every block seen ({max_seen}), was rejected: {e}"),
                    ));
                }
            }
            Err(e @ Error::InvalidInput(_)) => {
                self.model().reject(idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!("a valid {what} at {height} was rejected: {e}"),
                ));
            }
            Err(e @ Error::Poisoned(_)) => {
                self.model().reject(idx);
                self.poisoned();
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("the store is poisoned without an injected fault: {e}"),
                    ));
                }
            }
            Err(e @ (Error::Closed | Error::Crashed)) => {
                self.model().reject(idx);
                self.fail(Failure::new(
                    Check::Write,
                    format!("a {what} on an open store failed with: {e}"),
                ));
            }
            Err(e) => {
                self.model().unknown(idx);
                self.poisoned();
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("a {what} at {height} failed without an injected fault: {e}"),
                    ));
                }
            }
        }
    }

    pub(super) async fn exec(&mut self) {
        let swarm = serde_json::to_string(&self.plan.swarm).expect("serialisable");
        self.log(format!("swarm {swarm}"));
        let Some(mut store) = self.recover(false).await else {
            return;
        };
        let seed = self.plan.seed;
        for (i, op) in self.plan.ops.iter().enumerate() {
            self.out.ops += 1;
            self.log(format!("op {i}: {op:?}"));
            match op {
                Op::Write { height, .. } => {
                    let rs = model::write_inputs(seed, op).expect("a write op");
                    self.write(&store, *height, rs, "write").await;
                }
                Op::Empty { height } => {
                    self.model().observe_empty(*height);
                    let r = store.write_receipts(*height, vec![]).await;
                    self.log(format!("  -> {r:?}"));
                    // An empty boundary block rotates; a failed rotation poisons the store.
                    if let Err(e) = r {
                        self.poisoned();
                        if !self.faulted_since_open() {
                            self.fail(Failure::new(
                                Check::Write,
                                format!(
                                    "empty block {height} failed without an injected fault: {e}"
                                ),
                            ));
                        }
                    }
                }
                Op::Stale { height } => {
                    let rs = receipts_for(seed, *height, STALE_TX_BASE + i as u32, 1, 1);
                    self.write(&store, *height, rs, "stale").await;
                }
                Op::Oversized { height, limit } => {
                    // One step past the limit (the limits themselves, in `write_inputs`, are
                    // accepted).
                    let (receipt_bytes, topics, data, what) = match limit {
                        Limit::Topics => (1, MAX_TOPICS_PER_LOG + 1, 0, "a log with five topics"),
                        Limit::ReceiptBytes => (
                            MAX_RECEIPT_BYTES + 1,
                            0,
                            0,
                            "receipt bytes one over the limit",
                        ),
                        Limit::LogData => {
                            (1, 0, MAX_LOG_DATA_BYTES + 1, "log data one over the limit")
                        }
                    };
                    let bad = ReceiptInput {
                        tx_hash: [0xFF; 32],
                        tx_index: 0,
                        receipt_bytes: vec![1; receipt_bytes],
                        logs: vec![LogInput {
                            address: [0; 20],
                            topics: vec![[0; 32]; topics],
                            data: vec![0; data],
                        }],
                    };
                    let r = store.write_receipts(*height, vec![bad]).await;
                    self.log(format!("  -> {:?}", r.as_ref().map_err(|e| e.to_string())));
                    match r {
                        Ok(()) => {
                            self.fail(Failure::new(Check::Write, format!("{what} was accepted")))
                        }
                        Err(e) if rejected(&e) => {}
                        Err(Error::Poisoned(_)) if self.faulted_since_open() => {}
                        Err(e) => self.fail(Failure::new(
                            Check::Write,
                            format!("bad input gave an unexpected error: {e}"),
                        )),
                    }
                }
                Op::ReadReceipt {
                    target,
                    in_block,
                    wrong_block,
                } => {
                    let hash = target.map_or([0xAB; 32], |t| tx_hash(seed, t.height, t.tx));
                    let asked = target
                        .filter(|_| *in_block)
                        .map(|t| t.height + u64::from(*wrong_block));
                    let (lo, _) = self.bounds();
                    let r = match asked {
                        Some(b) => store.get_receipt_in_block(&hash, b).await,
                        None => store.get_receipt(&hash).await,
                    };
                    let (_, hi) = self.bounds();
                    self.out.reads += 1;
                    match r {
                        Ok(got) => {
                            let c = check::check_receipt_read(
                                &self.model(),
                                &hash,
                                asked,
                                got.as_ref(),
                                lo,
                                hi,
                            );
                            if let Err(f) = c {
                                self.fail(f);
                            }
                        }
                        Err(e @ Error::Poisoned(_)) => self.found_poisoned("get_receipt", &e),
                        Err(e) if tolerated_read_error(&e, &self.rotted()) => {}
                        Err(e) => self.fail(Failure::new(
                            Check::Read,
                            format!("get_receipt failed: {e}"),
                        )),
                    }
                }
                Op::ReadLogs {
                    from,
                    to,
                    address,
                    topics,
                    limit,
                } => {
                    let filter = LogFilter {
                        from_block: Some(*from),
                        to_block: Some(*to),
                        addresses: address.map(|a| vec![model::address(a)]).unwrap_or_default(),
                        topics: topics
                            .iter()
                            .map(|t| t.map(|t| vec![model::topic(t)]).unwrap_or_default())
                            .collect(),
                        limit: *limit,
                    };
                    let (lo, _) = self.bounds();
                    let r = store.get_logs(&filter).await;
                    let (_, hi) = self.bounds();
                    self.out.reads += 1;
                    match r {
                        Ok(got) => {
                            let c = check::check_logs_read(&self.model(), &filter, &got, lo, hi);
                            if let Err(f) = c {
                                self.fail(f);
                            }
                        }
                        Err(e @ Error::Poisoned(_)) => self.found_poisoned("get_logs", &e),
                        Err(e) if tolerated_read_error(&e, &self.rotted()) => {}
                        Err(e) => {
                            self.fail(Failure::new(Check::Read, format!("get_logs failed: {e}")))
                        }
                    }
                }
                Op::Prune { explicit } => {
                    let before = store.status().await.map(|s| s.closed_pairs).ok();
                    self.env
                        .clock()
                        .sleep(Duration::from_millis(self.plan.swarm.prune_interval_ms + 1))
                        .await;
                    // A time jump can wake this task before the coordinator has seen its tick,
                    // and the coordinator serves requests before ticks: give it the scheduler
                    // first, so the liveness check below sees the tick's prune.
                    for _ in 0..YIELDS_FOR_A_TICK {
                        yield_now().await;
                    }
                    if *explicit {
                        let r = store.prune_now().await;
                        self.log(format!("  prune_now -> {r:?}"));
                        match r {
                            // Deleting something synced the directory: every removal so far is
                            // durable, and a window gone from the catalogue must never return.
                            Ok(n) if n > 0 => {
                                if let (Some(before), Ok(after)) = (before, store.status().await) {
                                    if after.pending_deletes == 0 {
                                        let mut m = self.model();
                                        for (i, s) in before.iter().enumerate() {
                                            if !after.closed_pairs.contains(s) {
                                                // The newest pair is never pruned, so a next
                                                // start exists: the window ends there.
                                                let end = before[i + 1..].first().copied();
                                                m.pruned.insert(*s, end.expect("a newer pair"));
                                            }
                                        }
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(e) if self.faulted_since_open() => {
                                self.log(format!("  prune failed under an injected fault: {e}"));
                            }
                            Err(e) => self.fail(Failure::new(
                                Check::Write,
                                format!("prune failed without an injected fault: {e}"),
                            )),
                        }
                    }
                    // Liveness: a tick passed (and prune_now ran): nothing eligible is tracked.
                    if let Ok(st) = store.status().await {
                        if let (None, Some(latest)) = (&st.poisoned, st.latest_version) {
                            let keep = self.plan.swarm.keep_recent;
                            let overdue = check::overdue_for_prune(&st.closed_pairs, latest, keep);
                            if !overdue.is_empty() {
                                self.fail(Failure::new(
                                    Check::Liveness,
                                    format!(
                                        "after a prune tick, pairs {overdue:?} are still tracked although block {latest} minus keep-recent {keep} is past them (closed pairs {:?})",
                                        st.closed_pairs
                                    ),
                                ));
                            }
                        }
                    }
                }
                Op::Crash | Op::PowerLoss => {
                    match self.crash(store, matches!(op, Op::PowerLoss)).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
                Op::CloseReopen => {
                    self.close(store).await;
                    match self.recover(false).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
                Op::Resize {
                    max_blocks_per_file: n,
                } => {
                    let r = store.set_max_blocks_per_file(*n).await;
                    self.log(format!("  -> {r:?}"));
                    match (n, r) {
                        (0, Err(Error::ZeroMaxBlocksPerFile)) | (1.., Ok(())) => {}
                        (_, Err(Error::Poisoned(_))) if self.faulted_since_open() => {}
                        (_, r) => self.fail(Failure::new(
                            Check::Write,
                            format!("set_max_blocks_per_file({n}) answered {r:?}"),
                        )),
                    }
                }
                Op::SetFlushInterval { blocks } => {
                    let r = store.set_block_flush_interval(*blocks).await;
                    self.log(format!("  -> {r:?}"));
                    match r {
                        Ok(()) => {}
                        Err(Error::Poisoned(_)) if self.faulted_since_open() => {}
                        r => self.fail(Failure::new(
                            Check::Write,
                            format!("set_block_flush_interval({blocks}) answered {r:?}"),
                        )),
                    }
                }
                Op::Flush => {
                    let r = store.flush().await;
                    self.log(format!("  -> {r:?}"));
                    // A failed flush may have written a row group to one file of the pair
                    // only: the store must poison itself (a retried flush would write rows
                    // twice) and is restarted like after a failed write.
                    if let Err(e) = r {
                        self.poisoned();
                        let status = store.status().await;
                        if status.as_ref().map_or(true, |s| s.poisoned.is_none()) {
                            self.fail(Failure::new(
                                Check::Write,
                                format!(
                                    "flush failed ({e}) but the store is not poisoned: {status:?}"
                                ),
                            ));
                        }
                        if !self.faulted_since_open() {
                            self.fail(Failure::new(
                                Check::Write,
                                format!("flush failed without an injected fault: {e}"),
                            ));
                        }
                    }
                }
                Op::Failpoint { name } => {
                    *self.armed.failpoint.lock().unwrap() = Some(name.clone())
                }
                Op::FsFault {
                    fs_op,
                    fault,
                    after,
                } => *self.armed.fs.lock().unwrap() = Some((*fs_op, *fault, *after)),
                Op::CrashInside {
                    after_fs_calls,
                    power_loss,
                } => {
                    self.crash_inside_power = *power_loss;
                    self.fs.arm_crash_after(*after_fs_calls);
                }
                Op::BitRot {
                    nth,
                    per_mille,
                    bit,
                    open_pair,
                } => {
                    let files: Vec<(std::path::PathBuf, usize)> = self
                        .fs
                        .file_sizes()
                        .into_iter()
                        .filter(|(p, _)| {
                            let open_named = p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                            matches!(
                                check::classify(Path::new(DATA_DIR), p),
                                check::FileKind::Receipts(_) | check::FileKind::Logs(_)
                            ) && open_named == *open_pair
                        })
                        .collect();
                    if !files.is_empty() {
                        let (path, len) = &files[*nth as usize % files.len()];
                        let at = (*per_mille as usize * len) / 1000;
                        // The open pair's bytes are not synced until it is finalized: they rot
                        // in the page cache (and stay rotted once synced).
                        let flipped = if *open_pair {
                            self.fs.rot_cached_bit(path, at, *bit)
                        } else {
                            self.fs.rot_bit(path, at, *bit)
                        };
                        if flipped {
                            self.log(format!(
                                "  bit {bit} of byte {at} of {} flipped",
                                path.display()
                            ));
                            let mut rotted = self.rotted.lock().unwrap();
                            rotted.push(path.display().to_string());
                            // The file's other name is rotted too: a rotted open file keeps its
                            // bytes when it is finalized under its final name (the checksums it
                            // gets are of the bytes as written), and a reader whose snapshot
                            // took a finalized file's handle while it was open reads the rotted
                            // bytes under the open name.
                            let name = path
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            let other = match parse_open_pair_name(&name) {
                                Some((kind, start)) => Some(final_file_name(kind, start)),
                                None => parse_pair_name(&name)
                                    .map(|(kind, start)| open_file_name(kind, start)),
                            };
                            if let Some(other) = other {
                                rotted.push(path.with_file_name(other).display().to_string());
                            }
                        }
                    }
                }
                Op::WalRot {
                    nth,
                    per_mille,
                    bit,
                } => {
                    let segments: Vec<(std::path::PathBuf, usize)> = self
                        .fs
                        .file_sizes()
                        .into_keys()
                        .filter(|p| {
                            check::classify(Path::new(DATA_DIR), p) == check::FileKind::WalSegment
                        })
                        .map(|p| {
                            let synced = self.fs.synced_len(&p);
                            (p, synced)
                        })
                        .filter(|(_, synced)| *synced > 0)
                        .collect();
                    if !segments.is_empty() {
                        let (path, synced) = &segments[*nth as usize % segments.len()];
                        let at = (*per_mille as usize * synced) / 1000;
                        if self.fs.rot_bit(path, at, *bit) {
                            let shown = path.display().to_string();
                            self.log(format!("  bit {bit} of byte {at} of {shown} flipped"));
                            self.rotted.lock().unwrap().push(shown.clone());
                            self.wal_rots.push((shown, at as u64));
                        }
                    }
                }
                Op::AfterEnd { crashed } => {
                    self.after_end(&store, *crashed).await;
                    match self.recover(false).await {
                        Some(s) => store = s,
                        None => return,
                    }
                }
            }
            if self.fs.is_dead() {
                // The armed crash point fell inside this op (or a background task of it).
                let power = self.crash_inside_power;
                self.out.crash_points_reached.push(self.crash_op());
                self.fs.disarm_crash();
                match self.crash(store, power).await {
                    Some(s) => store = s,
                    None => return,
                }
            }
            self.drain_reader_failures();
            if !self.out.failures.is_empty() {
                return;
            }
            match self.restart_in {
                Some(0) => match self.restart(store).await {
                    Some(s) => store = s,
                    None => return,
                },
                Some(n) => self.restart_in = Some(n - 1),
                None => {}
            }
        }
        // Final: a clean close, then a last recovery must give back everything acked.
        self.fs.disarm_crash();
        self.close(store).await;
        self.armed.clear();
        if !self.out.failures.is_empty() {
            return;
        }
        if let Some(s) = self.recover(false).await {
            self.close(s).await;
        }
    }

    /// Ends the store's life with `crash()` or `close()`, then checks every call answers the
    /// matching error (`Crashed` after a crash, `Closed` after a close; a second close repeats
    /// the first's answer) and that nothing is left running.
    pub(super) async fn after_end(&mut self, store: &S<E>, crashed: bool) {
        self.stop_readers.store(true, Ordering::Relaxed);
        let first_close = if crashed {
            store.crash().await;
            None
        } else {
            let r = store.close().await;
            self.log(format!("  close -> {r:?}"));
            if let Err(e) = &r {
                if !self.faulted_since_open() {
                    self.fail(Failure::new(
                        Check::Write,
                        format!("close failed without an injected fault: {e}"),
                    ));
                }
            }
            Some(r.map_err(|e| e.to_string()))
        };
        let wanted = if crashed { "crashed" } else { "closed" };
        let is_end = |e: &Error| {
            if crashed {
                matches!(e, Error::Crashed)
            } else {
                matches!(e, Error::Closed)
            }
        };
        let hash = [0xAB; 32];
        let answers: Vec<(&str, Result<(), Error>)> = vec![
            (
                "write_receipts",
                store.write_receipts(u64::MAX / 2, vec![]).await,
            ),
            ("get_receipt", store.get_receipt(&hash).await.map(|_| ())),
            (
                "get_logs",
                store.get_logs(&LogFilter::default()).await.map(|_| ()),
            ),
            ("status", store.status().await.map(|_| ())),
            ("flush", store.flush().await),
            ("prune_now", store.prune_now().await.map(|_| ())),
            (
                "set_max_blocks_per_file",
                store.set_max_blocks_per_file(4).await,
            ),
        ];
        for (call, r) in answers {
            match r {
                Err(e) if is_end(&e) => {}
                other => self.fail(Failure::new(
                    Check::Write,
                    format!("{call} after the store {wanted} answered {other:?}"),
                )),
            }
        }
        let again = store.close().await.map_err(|e| e.to_string());
        let consistent = match &first_close {
            Some(first) => &again == first,
            None => again == Err(Error::Crashed.to_string()),
        };
        if !consistent {
            self.fail(Failure::new(
                Check::Write,
                format!("close after the store {wanted} answered {again:?} (first close: {first_close:?})"),
            ));
        }
        self.env.kill_tasks().await;
        self.check_no_leftovers(if crashed { "crash()" } else { "close" });
        self.drain_reader_failures();
        self.fs.crash_process();
    }

    /// (acked, issued) now: a read's answer must match a prefix between the acked count at its
    /// call and the issued count at its reply.
    pub(super) fn bounds(&self) -> (usize, usize) {
        let m = self.model();
        (m.acked_count(), m.issued.len())
    }
}
