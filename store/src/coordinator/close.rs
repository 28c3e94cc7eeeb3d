//! Close and crash (spec 7.2, 7.3).

use super::State;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::files::discard;
use crate::mark;

impl<E: Env> State<E> {
    /// Deletes the open pair without finalizing it; its rows remain in the WAL.
    pub(crate) async fn discard_open(&mut self) -> Result<()> {
        // An encode in flight holds only the pair's encoders: thrown away with the pair.
        self.encoding = None;
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let paths = open.writer.all_paths();
        drop(open);
        Ok(discard(self.env.fs(), &self.dir, &paths).await?)
    }

    /// Drops every WAL segment once the closed pairs hold every block: at a clean close nothing
    /// in the WAL is needed any more, and a segment left behind would only be a liability (rot
    /// in it would have to be judged at the next open).
    async fn drop_covered_wal(&mut self) -> Result<()> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(());
        };
        wal.roll().await?;
        let keep_from = wal.next_seq();
        wal.drop_before(keep_from).await?;
        Ok(())
    }

    /// Finalizes the open pair (an empty one is discarded instead), or discards it when the
    /// store is poisoned or flushing fails; then drops the WAL segments the closed pairs cover
    /// (only when nothing failed) and closes the WAL. Every error is kept and joined.
    pub(crate) async fn close(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(why) = self.poisoned.clone() {
            mark!("close-discarded-poisoned");
            errors.push(Error::Poisoned(why));
            if let Err(e) = self.discard_open().await {
                errors.push(e);
            }
        } else if self.open.as_ref().is_some_and(|o| o.rows == 0) {
            mark!("close-discarded-empty");
            if let Err(e) = self.discard_open().await {
                errors.push(e);
            }
        } else if self.open.is_some() {
            let seen = self
                .last_seen
                .expect("an open pair with rows has seen a block");
            if let Err(e) = self.finalize_open(seen).await {
                mark!("close-discarded-after-failed-finalize");
                errors.push(Error::Joined(format!("flush: {e}")));
                if let Err(e) = self.discard_open().await {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            if let Err(e) = self.drop_covered_wal().await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            mark!("close-finalized");
        }
        self.wal = None;
        self.doomed.clear();
        Error::join(errors).map_or(Ok(()), Err)
    }

    /// Drops everything without finalizing, as a kill -9 would.
    pub(crate) fn crash(&mut self) {
        mark!("crash-dropped-state");
        self.encoding = None;
        self.open = None;
        self.wal = None;
        self.doomed.clear();
    }
}
