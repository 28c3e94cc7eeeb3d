//! Pruning (spec 6.2), with deletion deferred while a read snapshot still uses a pair.

use super::{failpoints as fp, State};
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use crate::mark;
use std::sync::Arc;

impl<E: Env> State<E> {
    /// Untracks every closed pair whose whole window is older than `latest - keep_recent`, then
    /// deletes the files of untracked pairs no snapshot uses. The newest closed pair is always
    /// kept: it anchors the file start block after a reopen. Returns the pairs deleted.
    pub(crate) async fn prune(&mut self) -> Result<usize> {
        if self.poisoned.is_some() {
            mark!("prune-skipped-poisoned");
            return Ok(0);
        }
        if self.config.keep_recent == 0 {
            return Ok(0);
        }
        // Pairs already doomed by an earlier pass come first in `doomed`.
        let carried_over = self.doomed.len();
        if let Some(latest) = self.latest {
            let prune_before = latest.saturating_sub(self.config.keep_recent);
            // Rotation fires only at exact boundary heights, so when writes skip a boundary a
            // pair holds blocks past its nominal window (`start + MBF`, upstream's rule, which
            // would prune recent blocks). Every block of a pair is below the next pair's start:
            // that bound must be at or below `prune_before`. The newest pair has no such bound
            // and is never pruned (it also anchors the file start block after a reopen).
            let starts: Vec<u64> = self.catalogue.keys().copied().collect();
            let eligible: Vec<u64> = starts
                .windows(2)
                .filter(|w| w[1] <= prune_before)
                .map(|w| w[0])
                .collect();
            for s in eligible {
                mark!("prune-untracked");
                let pair = self.catalogue.remove(&s).expect("listed above");
                self.doomed.push(pair);
            }
        }
        self.delete_doomed(carried_over).await
    }

    /// Deletes the doomed pairs no snapshot holds; the first `carried_over` were doomed earlier.
    async fn delete_doomed(&mut self, carried_over: usize) -> Result<usize> {
        let fs = self.env.fs().clone();
        let mut deleted = 0;
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for (i, pair) in std::mem::take(&mut self.doomed).into_iter().enumerate() {
            if Arc::strong_count(&pair) > 1 {
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
                match fs.remove(p).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        errors.push(Error::io(p, e));
                        ok = false;
                    }
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
