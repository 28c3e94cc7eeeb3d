//! Opening, crashing, closing and restarting the store, and checking every recovery: files on
//! disk, durability right after open, the recovered state against the model, idempotence.

use super::*;

impl<E: PlanEnv> Run<'_, E> {
    /// How many of the WAL's last records open may have cut for bit rot. The evidence is the
    /// disk, not `Status`: every cut tail is kept in quarantine as
    /// `<segment>.<kind>-tail-at-<offset>.<k>` (an open that died after cutting reports nothing,
    /// and the next open finds a clean WAL), so the cuts are the quarantine files new since the
    /// last recovery. A rot spoils at most one record, so a tail cut as corrupt holding more
    /// records than rots lost intact ones. A tail cut as torn (no append in it completed) can
    /// hide an acked record only if rot also spoiled every trailer in it: two rots per record.
    /// Forgets the rots either way: open has read (and rewritten) the WAL.
    pub(super) fn records_rot_may_cut(&mut self, files: &BTreeMap<PathBuf, usize>) -> usize {
        let rots = std::mem::take(&mut self.wal_rots);
        let quarantine = Path::new(DATA_DIR).join("quarantine");
        // (segment, cut bytes, rots needed per lost record)
        let mut cuts: Vec<(String, std::ops::Range<u64>, usize)> = Vec::new();
        for (path, bytes) in files.range(quarantine.clone()..) {
            if !path.starts_with(&quarantine) {
                break;
            }
            if !self.quarantine_seen.insert(path.clone()) {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            // `<original>.<tag>.<k>`: the tag holds no dot, the original one (`N.wal`).
            let mut parts = name.rsplitn(3, '.');
            let (_k, tag, original) = (parts.next(), parts.next(), parts.next());
            let (Some(tag), Some(original)) = (tag, original) else {
                continue;
            };
            let cut = [("corrupt-tail-at-", 1), ("torn-tail-at-", 2)]
                .into_iter()
                .find_map(|(prefix, rots_per_record)| {
                    let offset = tag.strip_prefix(prefix)?.parse::<u64>().ok()?;
                    Some((offset, rots_per_record))
                });
            if let Some((offset, rots_per_record)) = cut {
                let segment = Path::new(DATA_DIR).join("wal").join(original);
                cuts.push((
                    segment.display().to_string(),
                    offset..offset + *bytes as u64,
                    rots_per_record,
                ));
            }
        }
        let mut may_lose = 0;
        for (segment, range, rots_per_record) in &cuts {
            let mut hit: Vec<u64> = rots
                .iter()
                .filter(|(path, at)| path == segment && range.contains(at))
                .map(|(_, at)| *at)
                .collect();
            hit.sort_unstable();
            hit.dedup();
            let records = hit.len() / rots_per_record;
            if !hit.is_empty() {
                self.log(format!(
                    "open cut {} rotted byte(s) with the WAL tail {range:?} of {segment} ({} rot(s) per lost record): up to {records} last record(s) may be gone",
                    hit.len(),
                    rots_per_record
                ));
            }
            may_lose += records;
        }
        may_lose
    }

    pub(super) async fn read_state(&mut self, store: &S<E>) -> Result<State, Error> {
        let receipts = store.receipts_in_range(0, u64::MAX).await?;
        let logs = store.get_logs(&LogFilter::default()).await?;
        Ok(State { receipts, logs })
    }

    /// Reads the whole state; an armed read fault may fire once and is then disarmed.
    pub(super) async fn read_state_retrying(&mut self, store: &S<E>) -> Result<State, Error> {
        match self.read_state(store).await {
            Err(e) if e.to_string().contains("injected") => {
                self.log(format!("state read hit an injected fault, retrying: {e}"));
                *self.armed.fs.lock().unwrap() = None;
                self.read_state(store).await
            }
            r => r,
        }
    }

    pub(super) fn check_no_leftovers(&mut self, when: &str) {
        let tasks = self.env.live_tasks();
        if tasks != 0 {
            self.fail(Failure::new(
                Check::Tasks,
                format!("{tasks} store task(s) alive after {when}"),
            ));
        }
        if self.fs.open_handle_count() != 0 {
            let leaked = self.fs.open_handles();
            self.fail(Failure::new(
                Check::Handles,
                format!("file handles left open after {when}: {leaked:?}"),
            ));
        }
    }

    /// Opens the store. A failed open must leave no handle and no task; a failure an armed fault
    /// explains is retried once with every fault disarmed.
    pub(super) async fn open(&mut self) -> Option<S<E>> {
        self.settle_crash_point();
        let mut attempt = 0;
        // Bounded: a crash point fires once per arming, so at most one extra round.
        for _ in 0..MAX_OPEN_ATTEMPTS + 1 {
            attempt += 1;
            let faults_before = self.faults();
            let hook: Arc<dyn FaultHook> = Arc::new(Hook(self.armed.clone()));
            let r =
                Store::open_with_hook(self.env.clone(), DATA_DIR, config(self.plan), Some(hook))
                    .await;
            match r {
                Ok(s) => {
                    self.faults_at_open = self.faults();
                    return Some(s);
                }
                Err(e) => {
                    self.log(format!("open failed: {e}"));
                    yield_now().await;
                    self.check_no_leftovers("a failed open");
                    if self.settle_crash_point() {
                        // The process died inside open (or replay): that is a crash, not a
                        // failed attempt; the next open starts from the crashed image.
                        attempt -= 1;
                        continue;
                    }
                    if self.refused_rot("open", &e) {
                        return None;
                    }
                    let injected = self.faults() > faults_before;
                    if attempt == MAX_OPEN_ATTEMPTS || !injected {
                        self.fail(Failure::new(
                            Check::Open,
                            format!("store cannot be opened: {e}"),
                        ));
                        return None;
                    }
                    self.armed.clear();
                }
            }
        }
        None
    }

    /// Opens and checks recovery: files on disk, the recovered state against the model between
    /// the lower bound for this kind of crash and everything issued, and that recovering the same
    /// image again gives the same state. Spawns the readers on the store it returns.
    pub(super) async fn recover(&mut self, power_loss: bool) -> Option<S<E>> {
        self.recover_bounded(power_loss, MAX_OPEN_ATTEMPTS).await
    }

    /// [`Self::recover`], reopening at most `reopens_left` more times when an injected fault
    /// poisons the store right after open (the coordinator writes the row groups replay sealed
    /// in the background, and a failed write poisons like a failed flush: only a reopen with
    /// the fault disarmed restores a readable store, as after a failed open).
    fn recover_bounded(
        &mut self,
        power_loss: bool,
        reopens_left: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<S<E>>> + Send + '_>> {
        Box::pin(async move { self.recover_once(power_loss, reopens_left).await })
    }

    async fn recover_once(&mut self, power_loss: bool, reopens_left: usize) -> Option<S<E>> {
        self.out.reopens += 1;
        self.restart_in = None;
        self.poisoned_at_ops = None;
        let store = loop {
            let store = self.open().await?;
            if !self.fs.is_dead() {
                break store;
            }
            // The crash point fell in open's own work (after the coordinator started, say in
            // the prune at open): kill this incarnation and open the crashed image again.
            self.env.kill_tasks().await;
            drop(store);
            self.settle_crash_point();
        };
        // A crash point not reached by now is forgotten: the checks below read the store, and a
        // background prune tick must not kill it half way through them.
        self.fs.disarm_crash();
        let power_loss = power_loss || std::mem::take(&mut self.lost_power_unchecked);
        let status = match store.status().await {
            Ok(s) => s,
            Err(e) => {
                self.fail(Failure::new(Check::Open, format!("status after open: {e}")));
                return None;
            }
        };
        self.check_durable_after_open(&status);
        let files = self.fs.file_sizes();
        if self.trace_on {
            let listing: Vec<String> = files
                .iter()
                .map(|(p, len)| format!("{}:{len}", p.display()))
                .collect();
            self.log(format!("files after open: {}", listing.join(" ")));
        }
        for f in check::check_files(&files, Path::new(DATA_DIR), &status) {
            self.fail(f);
        }
        self.check_closed_files_order(&status);
        let got = match self.read_state_retrying(&store).await {
            Ok(s) => s,
            Err(e) if self.refused_rot("reading the recovered state", &e) => {
                // The run stops here: the state cannot be compared without the rotted file.
                self.env.kill_tasks().await;
                drop(store);
                return None;
            }
            Err(e @ Error::Poisoned(_)) if reopens_left > 0 && self.faulted_since_open() => {
                self.log(format!(
                    "an injected fault poisoned the store after open ({e}): crash and reopen"
                ));
                self.end_incarnation(store).await;
                self.armed.clear();
                return self.recover_bounded(power_loss, reopens_left - 1).await;
            }
            Err(e) => {
                self.fail(Failure::new(
                    Check::Recovery,
                    format!("reading the recovered state failed: {e}"),
                ));
                return None;
            }
        };
        let rot_cut = self.records_rot_may_cut(&files);
        let (tagged, lo, hi, prunable) = {
            let m = self.model();
            let lo = m.lower_bound(power_loss);
            (
                m.tagged(),
                m.lower_bound_after_rotted_records_cut(lo, rot_cut),
                m.issued.len(),
                m.prunable(),
            )
        };
        match check::match_recovery(&tagged, &got, lo, hi, &prunable) {
            Ok(k) => {
                self.log(format!(
                    "recovered prefix {k} of {hi} issued (lower bound {lo}): {} receipts, {} logs; {status:?}",
                    got.receipts.len(),
                    got.logs.len()
                ));
                self.model().adopt(k);
            }
            Err(f) => {
                self.out.expected = Some(tagged.prefix(hi).without_blocks(&prunable));
                self.out.recovered = Some(got.without_blocks(&prunable));
                self.fail(f);
                return None;
            }
        }
        for f in check::phantoms(&tagged, &got) {
            self.fail(f);
        }
        let pruned = self.model().pruned.clone();
        for f in check::resurrected(&got, &pruned) {
            self.fail(f);
        }
        // Invariant 4: the same durable image, recovered again, gives the same state.
        self.end_incarnation(store).await;
        let mut again = self.open().await?;
        let mut read = self.read_state_retrying(&again).await;
        if matches!(read, Err(Error::Poisoned(_))) && self.faulted_since_open() {
            // As after the first open: an injected fault poisoned the store while it wrote the
            // row groups replay sealed. Bounded: one more open, every fault disarmed.
            self.log(
                "an injected fault poisoned the store after the second open: crash and reopen"
                    .into(),
            );
            self.end_incarnation(again).await;
            self.armed.clear();
            again = self.open().await?;
            read = self.read_state_retrying(&again).await;
        }
        match read {
            Ok(s2) if s2 == got => {}
            Ok(s2) => self.fail(Failure::new(
                Check::Idempotence,
                format!(
                    "recovering the same image twice gave different states: {} then {} receipts, {} then {} logs",
                    got.receipts.len(),
                    s2.receipts.len(),
                    got.logs.len(),
                    s2.logs.len()
                ),
            )),
            Err(e) => self.fail(Failure::new(
                Check::Idempotence,
                format!("the second recovery could not read its state: {e}"),
            )),
        }
        self.out.state_hash = got.hash();
        self.out.final_state = Some(got);
        self.spawn_readers(&again);
        Some(again)
    }

    /// Ends a store incarnation as a killed process ends: every store task dropped (and with it
    /// every handle, which is checked), then the filesystem crashed as a process crash leaves it.
    async fn end_incarnation(&mut self, store: S<E>) {
        self.env.kill_tasks().await;
        drop(store);
        self.check_no_leftovers("dropping every store task");
        self.fs.crash_process();
    }

    /// Open recovered, rewrote or cut what it found and then answers from it: all of that must
    /// survive a power loss right now (the WAL directory's entries and bytes, the data
    /// directory's finished files, and what this open put in quarantine). A crash cannot leave
    /// it to the next open, which would build on the same undurable state (found by CI: a
    /// segment renamed by an open that died before its directory sync, reused by the next open,
    /// lost the blocks acked into it). Exempt: the open pair's files (their rows are in the
    /// WAL), removals (a prune may be half way through them in the background), and quarantine
    /// copies an earlier, crashed open left half written (the copy this open made is the
    /// evidence).
    fn check_durable_after_open(&mut self, status: &receipt_store::Status) {
        use crate::fs::Change;
        let data = Path::new(DATA_DIR);
        let mut undurable = self.fs.undurable(&data.join("wal"));
        undurable.extend(
            self.fs
                .undurable(&data.join("quarantine"))
                .into_iter()
                .filter(|u| status.quarantined.iter().any(|q| q.path == u.path)),
        );
        undurable.extend(self.fs.undurable(data).into_iter().filter(|u| {
            let open_pair = u
                .path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            u.what != Change::Removed && !open_pair
        }));
        if !undurable.is_empty() {
            let list: Vec<String> = undurable.iter().map(|u| u.to_string()).collect();
            self.fail(Failure::new(
                Check::Durability,
                format!(
                    "right after open, a power loss would undo: {}",
                    list.join("; ")
                ),
            ));
        }
    }

    /// When the armed crash point was reached, crashes the filesystem as armed (process crash or
    /// power loss) and returns true. The store incarnation that was running must be gone.
    pub(super) fn settle_crash_point(&mut self) -> bool {
        if !self.fs.is_dead() {
            return false;
        }
        self.out.crashes += 1;
        if self.crash_inside_power {
            self.log("crash point reached: power loss".into());
            self.out.power_losses += 1;
            // The store is gone, so which pairs were durable is unknown here: nothing below is
            // promised beyond what the sync policy promises by itself.
            self.model().durable_below = 0;
            self.lost_power_unchecked = true;
            self.fs.power_loss(&mut self.fault_rng);
        } else {
            self.log("crash point reached: process crash".into());
            self.fs.crash_process();
        }
        self.out.crash_images.push(self.fs.image_hash());
        self.out.crash_points_reached.push(self.crash_op());
        true
    }

    /// A process crash or power loss: every store task dies with its handles, then the
    /// filesystem crashes, then recovery is checked.
    pub(super) async fn crash(&mut self, store: S<E>, power_loss: bool) -> Option<S<E>> {
        self.out.crashes += 1;
        if power_loss {
            self.out.power_losses += 1;
            // Blocks below the open pair sit in closed pairs, durable whatever the sync policy.
            // Recomputed at every power loss: after one, a stale height may be written again
            // into a new open pair below an earlier pair's start.
            let d = match store.status().await {
                Ok(st) => st.open_pair.unwrap_or(st.file_start_block),
                Err(_) => 0,
            };
            self.model().durable_below = d;
        }
        self.stop_readers.store(true, Ordering::Relaxed);
        self.env.kill_tasks().await;
        drop(store);
        self.check_no_leftovers(if power_loss {
            "a power loss"
        } else {
            "a process crash"
        });
        // A crash point armed and not reached yet survives this crash: it may fall in the
        // recovery's open and replay (the recovery disarms it once an open succeeds).
        let armed = self.fs.armed_crash_point();
        if power_loss {
            self.fs.power_loss(&mut self.fault_rng);
        } else {
            self.fs.crash_process();
        }
        if let Some(calls) = armed {
            self.fs.arm_crash_after(calls);
        }
        self.out.crash_images.push(self.fs.image_hash());
        self.recover(power_loss).await
    }

    /// Closes the store, lets the readers finish, and checks nothing is left behind.
    pub(super) async fn close(&mut self, store: S<E>) {
        self.stop_readers.store(true, Ordering::Relaxed);
        let r = store.close().await;
        self.log(format!("close: {r:?}"));
        if r.is_ok() && !self.fs.is_dead() {
            let files = self.fs.file_sizes();
            for f in check::wal_left_after_close(&files, Path::new(DATA_DIR)) {
                self.fail(f);
            }
        }
        if let Err(e) = &r {
            if !self.faulted_since_open() {
                self.fail(Failure::new(
                    Check::Write,
                    format!("close failed without an injected fault: {e}"),
                ));
            }
        }
        drop(store);
        // Readers may be asleep on the clock: wait in virtual time, not only in yields.
        for _ in 0..MAX_DRAIN_ROUNDS {
            if self.env.live_tasks() == 0 {
                break;
            }
            self.env.clock().sleep(Duration::from_millis(1)).await;
        }
        self.check_no_leftovers("close");
        self.drain_reader_failures();
    }

    /// The store reported (or must be in) the poisoned state: schedule a restart.
    pub(super) fn poisoned(&mut self) {
        if self.restart_in.is_none() {
            self.restart_in = Some(self.fault_rng.random_range(0..=MAX_OPS_BEFORE_RESTART));
            self.poisoned_at_ops = Some(self.out.ops);
        }
    }

    /// A read answered `Poisoned`. The row groups a write sealed are written after its ack, so
    /// a store can poison itself with no call failing; a read is then the first to say so. Only
    /// an injected fault may cause it, and the store is restarted a few ops later, as after a
    /// failed write.
    pub(super) fn found_poisoned(&mut self, what: &str, e: &Error) {
        self.poisoned();
        if !self.faulted_since_open() {
            self.fail(Failure::new(
                Check::Read,
                format!("{what}: the store is poisoned without an injected fault: {e}"),
            ));
        }
    }

    /// A poisoned store is restarted the way an operator would: close (or kill) and reopen.
    pub(super) async fn restart(&mut self, store: S<E>) -> Option<S<E>> {
        self.restart_in = None;
        self.restarting_for = self.poisoned_at_ops;
        let restarted = if self.fault_rng.random_bool(0.5) {
            self.log("restart after poisoning: close and reopen".into());
            self.close(store).await;
            self.recover(false).await
        } else {
            self.log("restart after poisoning: kill and reopen".into());
            self.crash(store, false).await
        };
        self.restarting_for = None;
        restarted
    }

    /// The op a crash happening now is inside, as `Outcome::crash_points_reached` counts it.
    pub(super) fn crash_op(&self) -> usize {
        self.restarting_for.unwrap_or(self.out.ops)
    }

    /// Invariant 6 inside the closed pairs' files (see [`check::check_declared_order`]); files
    /// the plan rotted are left out.
    fn check_closed_files_order(&mut self, status: &receipt_store::Status) {
        let rotted = self.rotted();
        for start in &status.closed_pairs {
            for name in [
                format!("receipts_{start}.parquet"),
                format!("logs_{start}.parquet"),
            ] {
                let path = Path::new(DATA_DIR).join(name);
                let shown = path.display().to_string();
                if rotted.contains(&shown) {
                    continue;
                }
                let Some(bytes) = self.fs.file_bytes(&path) else {
                    continue;
                };
                let seen = (path, crc32c::crc32c(&bytes));
                if self.order_checked.contains(&seen) {
                    continue;
                }
                let failures = check::check_declared_order(&seen.0, bytes);
                if failures.is_empty() {
                    self.order_checked.insert(seen);
                }
                for f in failures {
                    self.fail(f);
                }
            }
        }
    }
}
