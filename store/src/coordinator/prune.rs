//! Pruning (spec 6.2), with deletion deferred while a read snapshot still uses a pair.

use super::{failpoints as fp, State};
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use crate::files::remove_if_present;
use crate::mark;
use std::sync::Arc;

/// The closed pairs (by start) whose every block is below `prune_before`.
///
/// Rotation fires only at exact boundary heights, so when writes skip a boundary a pair holds
/// blocks past its nominal window (`start + MBF`, upstream's rule, which would prune recent
/// blocks). Every block of a pair is below the next pair's start: that bound must be at or below
/// `prune_before`. The newest pair has no such bound and is never selected (it also anchors the
/// file start block and the last seen block after a reopen).
pub(crate) fn select(starts: &[u64], prune_before: u64) -> Vec<u64> {
    debug_assert!(starts.windows(2).all(|w| w[0] < w[1]), "starts ascend");
    starts
        .windows(2)
        .filter(|w| w[1] <= prune_before)
        .map(|w| w[0])
        .collect()
}

impl<E: Env> State<E> {
    /// A prune tick: prunes below `latest - keep_recent` (nothing when `keep_recent` is 0).
    pub(crate) async fn prune(&mut self) -> Result<usize> {
        if self.poisoned.is_some() {
            mark!("prune-skipped-poisoned");
            return Ok(0);
        }
        if self.config.keep_recent == 0 {
            return Ok(0);
        }
        let prune_before = self
            .latest
            .map(|latest| latest.saturating_sub(self.config.keep_recent));
        self.prune_below(prune_before).await
    }

    /// Untracks every closed pair whose blocks are all below `prune_before` (see [`select`]),
    /// then deletes the files of untracked pairs no snapshot uses. Returns the pairs deleted.
    pub(crate) async fn prune_below(&mut self, prune_before: Option<u64>) -> Result<usize> {
        self.check_usable()?;
        // Pairs already doomed by an earlier pass come first in `doomed`.
        let carried_over = self.doomed.len();
        if let Some(prune_before) = prune_before {
            let starts: Vec<u64> = self.catalogue.keys().copied().collect();
            for s in select(&starts, prune_before) {
                mark!("prune-untracked");
                let pair = self.catalogue.remove(&s).expect("listed above");
                self.doomed.push(pair);
            }
        }
        // The published snapshot no longer lists the untracked pairs: only reads that took
        // one before keep them (and defer their deletion).
        self.publish();
        self.delete_doomed(carried_over).await
    }

    /// Deletes the doomed pairs no snapshot holds; the first `carried_over` were doomed earlier.
    async fn delete_doomed(&mut self, carried_over: usize) -> Result<usize> {
        let fs = self.env.fs().clone();
        let mut deleted = 0;
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for (i, pair) in std::mem::take(&mut self.doomed).into_iter().enumerate() {
            if Arc::strong_count(&pair) > 1 && !crate::planted!(DeleteUnderLiveSnapshot) {
                mark!("prune-deferred-for-snapshot");
                keep.push(pair); // a live snapshot reads it; retry on a later tick
                continue;
            }
            let mut ok = true;
            for (i, p) in [&pair.receipt_path, &pair.log_path].into_iter().enumerate() {
                if i == 1 {
                    if let Err(e) = self.failpoint(fp::MID_PRUNE) {
                        errors.push(e);
                        ok = false;
                        break;
                    }
                }
                // One directory sync for the whole pass, below: prune batches its deletions.
                if let Err(e) = remove_if_present(&fs, p).await {
                    errors.push(e.into());
                    ok = false;
                }
            }
            if ok {
                mark!("prune-deleted");
                if i < carried_over {
                    mark!("prune-delete-retried");
                }
                deleted += 1;
            } else {
                mark!("prune-delete-failed");
                keep.push(pair);
            }
        }
        self.doomed = keep;
        self.last_prune_error = (!errors.is_empty()).then(|| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        });
        if deleted > 0 || !errors.is_empty() {
            if let Err(e) = fs.sync_dir(&self.dir).await {
                errors.push(Error::io(&self.dir, e));
            }
        }
        Error::join(errors).map_or(Ok(deleted), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::select;

    #[test]
    fn a_pair_goes_only_when_the_next_one_starts_at_or_below_the_bound() {
        let starts = [0, 4, 8, 12];
        assert_eq!(select(&starts, 7), vec![0]);
        assert_eq!(select(&starts, 8), vec![0, 4]);
        assert_eq!(
            select(&starts, u64::MAX),
            vec![0, 4, 8],
            "the newest pair stays"
        );
        assert_eq!(select(&[5], u64::MAX), Vec::<u64>::new());
    }
}
