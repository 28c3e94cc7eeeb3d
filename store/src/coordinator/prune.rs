//! Pruning (spec 6.2), with deletion deferred while a read snapshot still uses a pair.

use super::{failpoints as fp, State};
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use std::sync::Arc;

impl<E: Env> State<E> {
    /// Untracks every closed pair whose whole window is older than `latest - keep_recent`, then
    /// deletes the files of untracked pairs no snapshot uses. The newest closed pair is always
    /// kept: it anchors the file start block after a reopen. Returns the pairs deleted.
    pub(crate) async fn prune(&mut self) -> Result<usize> {
        if self.config.keep_recent == 0 || self.poisoned.is_some() {
            return Ok(0);
        }
        if let Some(latest) = self.latest {
            let prune_before = latest.saturating_sub(self.config.keep_recent);
            let mbf = self.config.max_blocks_per_file;
            let newest = self.catalogue.keys().next_back().copied();
            let eligible: Vec<u64> = self
                .catalogue
                .values()
                .filter(|p| Some(p.start) != newest && p.window_end(mbf) <= prune_before)
                .map(|p| p.start)
                .collect();
            for s in eligible {
                let pair = self.catalogue.remove(&s).expect("listed above");
                self.doomed.push(pair);
            }
        }
        self.delete_doomed().await
    }

    async fn delete_doomed(&mut self) -> Result<usize> {
        let fs = self.env.fs().clone();
        let mut deleted = 0;
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for pair in std::mem::take(&mut self.doomed) {
            if Arc::strong_count(&pair) > 1 {
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
                deleted += 1;
            } else {
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
