//! Reader tasks: reads at random moments while the writer proceeds, each answer checked against
//! the model at some instant between its call and its reply.

use super::*;

/// State shared with reader tasks.
#[derive(Default)]
pub(super) struct ReaderShared {
    pub(super) failures: Vec<Failure>,
    pub(super) reads: usize,
}

/// Errors a read may legitimately return: the store is poisoned (reads fail until reopen), or
/// an injected I/O fault hit the read.
pub(super) fn tolerated_read_error(e: &Error, rotted: &[String]) -> bool {
    matches!(e, Error::Poisoned(_))
        || e.to_string().contains("injected")
        || names_rotted(&e.to_string(), rotted)
}

/// An error that names a file bit rot hit: the right answer to anything that needs its bytes.
pub(super) fn names_rotted(why: &str, rotted: &[String]) -> bool {
    rotted.iter().any(|p| why.contains(p.as_str()))
}

impl<E: PlanEnv> Run<'_, E> {
    pub(super) fn spawn_readers(&mut self, store: &S<E>) {
        self.stop_readers = Arc::new(AtomicBool::new(false));
        for r in 0..self.plan.swarm.readers {
            let rng = ChaCha8Rng::seed_from_u64(
                self.plan.seed ^ READER_STREAM ^ ((r as u64) << 40) ^ self.out.reopens as u64,
            );
            let task = reader(
                self.rotted.clone(),
                self.env.clock().clone(),
                store.clone(),
                self.model.clone(),
                self.readers.clone(),
                self.stop_readers.clone(),
                rng,
                self.plan.seed,
            );
            self.env.spawner().spawn("reader", Box::pin(task));
        }
    }

    pub(super) fn drain_reader_failures(&mut self) {
        let (fails, reads) = {
            let mut r = self.readers.lock().unwrap();
            (
                std::mem::take(&mut r.failures),
                std::mem::take(&mut r.reads),
            )
        };
        self.out.reads += reads;
        for f in fails {
            self.fail(f);
        }
    }
}

/// A reader task: reads at random moments while the writer proceeds, checking every answer.
pub(super) async fn reader<E: PlanEnv>(
    rotted: Arc<Mutex<Vec<String>>>,
    clock: E::Clock,
    store: S<E>,
    model: Arc<Mutex<Model>>,
    shared: Arc<Mutex<ReaderShared>>,
    stop: Arc<AtomicBool>,
    mut rng: ChaCha8Rng,
    seed: u64,
) {
    for _ in 0..MAX_READS_PER_READER {
        if rng.random_bool(0.5) {
            for _ in 0..rng.random_range(1..=MAX_YIELDS_BETWEEN_READS) {
                yield_now().await;
            }
        } else {
            let pause_ms = rng.random_range(1..=MAX_READER_PAUSE_MS);
            clock.sleep(Duration::from_millis(pause_ms)).await;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (lo, target, max_height) = {
            let m = model.lock().unwrap();
            let hashes: Vec<([u8; 32], u64)> = m
                .issued
                .iter()
                .flat_map(|w| w.receipts.iter().map(move |r| (r.tx_hash, w.height)))
                .collect();
            let target = if hashes.is_empty() || rng.random_bool(0.1) {
                None
            } else {
                Some(hashes[rng.random_range(0..hashes.len())])
            };
            (m.acked_count(), target, m.max_seen)
        };
        let result = if rng.random_bool(0.7) {
            let hash = target.map_or_else(|| tx_hash(seed ^ 0xDEAD, 0, 0), |t| t.0);
            let r = store.get_receipt(&hash).await;
            let m = model.lock().unwrap();
            let hi = m.issued.len();
            match r {
                Ok(got) => check::check_receipt_read(&m, &hash, None, got.as_ref(), lo, hi)
                    .map_err(|f| f.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let from = rng.random_range(0..=max_height);
            let filter = LogFilter {
                from_block: Some(from),
                to_block: Some(from + rng.random_range(0..6)),
                addresses: if rng.random_bool(0.3) {
                    vec![model::address(rng.random_range(0..3))]
                } else {
                    vec![]
                },
                topics: vec![],
                limit: None,
            };
            let r = store.get_logs(&filter).await;
            let m = model.lock().unwrap();
            let hi = m.issued.len();
            match r {
                Ok(got) => {
                    check::check_logs_read(&m, &filter, &got, lo, hi).map_err(|f| f.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let mut sh = shared.lock().unwrap();
        sh.reads += 1;
        if let Err(why) = result {
            // A read may fail when the store is poisoned, closed under it, or hit by an injected
            // fault; any other failure (say, a concurrent prune deleting its file) is a bug.
            let tolerated = names_rotted(&why, &rotted.lock().unwrap())
                || why.contains("store closed")
                || why.contains("must be reopened")
                || why.contains("injected");
            if !tolerated {
                let detail = why.strip_prefix("[read] ").unwrap_or(&why).to_string();
                sh.failures
                    .push(Failure::new(Check::Read, format!("reader: {detail}")));
            }
        }
    }
}
