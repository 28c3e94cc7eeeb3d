//! Close and crash (spec 7.2, 7.3).

use super::State;
use crate::env::{Env, Fs};
use crate::error::{Error, Result};
use crate::mark;

impl<E: Env> State<E> {
    /// Deletes the open pair without finalizing it; its rows remain in the WAL.
    pub(crate) async fn discard_open(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let paths = [
            open.writer.receipt_path().to_path_buf(),
            open.writer.log_path().to_path_buf(),
        ];
        drop(open);
        let fs = self.env.fs();
        let mut errors = Vec::new();
        for p in &paths {
            if let Err(e) = fs.remove(p).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(Error::io(p, e));
                }
            }
        }
        if let Err(e) = fs.sync_dir(&self.dir).await {
            errors.push(Error::io(&self.dir, e));
        }
        Error::join(errors).map_or(Ok(()), Err)
    }

    /// Finalizes the open pair (an empty one is discarded instead), or discards it when the
    /// store is poisoned or flushing fails; then closes the WAL. Every error is kept and joined.
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
        } else {
            match self.finalize_open().await {
                Ok(Some(_)) => {
                    // The pair is durable: the WAL records it covers are needed no more, and a
                    // reopen should find no record of a window that is closed.
                    if let Some(wal) = self.wal.as_mut() {
                        let dropped = async {
                            wal.roll().await?;
                            let keep_from = wal.next_seq();
                            wal.drop_before(keep_from).await
                        };
                        if let Err(e) = dropped.await {
                            errors.push(e.into());
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    mark!("close-discarded-after-failed-finalize");
                    errors.push(Error::Joined(format!("flush: {e}")));
                    if let Err(e) = self.discard_open().await {
                        errors.push(e);
                    }
                }
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
        self.open = None;
        self.wal = None;
        self.doomed.clear();
    }
}
