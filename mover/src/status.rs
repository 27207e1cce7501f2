//! What a multi-threaded run (backup, restore) reports: warnings, and the first fatal error, which
//! also tells every thread to stop early.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

#[derive(Default)]
pub(crate) struct RunStatus {
    warnings: Mutex<Vec<String>>,
    fatal: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl RunStatus {
    /// Record something the run skipped or could not apply; the run goes on.
    pub(crate) fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.lock().expect("warnings lock").push(msg);
    }

    /// Record a fatal error (the first one wins) and ask every thread to stop.
    pub(crate) fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        self.fatal.lock().expect("fatal lock").get_or_insert(e);
    }

    /// Whether a fatal error was recorded.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The warnings, or the first fatal error.
    pub(crate) fn finish(self) -> Result<Vec<String>> {
        match self.fatal.into_inner().expect("fatal lock") {
            Some(e) => Err(e),
            None => Ok(self.warnings.into_inner().expect("warnings lock")),
        }
    }
}
