//! `recover`: bring a repository back after its objects were deleted, from the versions an
//! Object Lock bucket keeps.
//!
//! On a versioned bucket a delete without a version id only adds a *delete marker*; the data
//! stays as an older version, and Object Lock refuses to delete locked versions for good. So
//! removing the delete markers restores every object that still has a version. Objects that
//! prune deleted on purpose come back too; the only ones that matter are old index objects that
//! name packs whose versions are gone, and the index is repaired as `repair index` does (they
//! are rewritten without them). Everything else that comes back (packs and snapshots removed by
//! prune and forget) is harmless: the next `forget` and `prune` remove it again.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::{Location, Store, StoreOptions, names};
use crate::error::Result;
use crate::keyslot::Secret;
use crate::repo::Repository;

/// What `recover` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RecoverReport {
    /// Objects whose delete markers were removed.
    pub objects_restored: u64,
    /// Deleted objects with no version left (never locked, or their retention had passed).
    pub objects_lost: u64,
    /// Index objects rewritten because they named packs that are gone.
    pub index_repaired: u64,
    /// Packs named by an index object but gone.
    pub packs_missing: u64,
    /// Snapshots in the repository afterwards.
    pub snapshots: u64,
}

/// Undo deletions at `location`, then repair index objects that name packs that are gone.
///
/// # Errors
/// `InvalidInput` for a local repository; storage errors; errors opening the repository once
/// its objects are back (a wrong secret, say).
pub fn recover(location: &Location, secret: &Secret, opts: &StoreOptions) -> Result<RecoverReport> {
    let mut report = RecoverReport::default();
    {
        // The config and key slots may be among the deleted objects: no repository checks yet.
        let store = Store::open(location, true, opts)?;
        (report.objects_restored, report.objects_lost) = store.undelete()?;
    }
    let mut repo = Repository::open_with(location, secret, opts)?;
    // No lease: the repository was just brought back, and nothing else should run on it yet.
    let r = crate::repair::repair_holding(
        &repo,
        &crate::repair::RepairOptions::default(),
        None,
        &crate::repair::RepairProgress::default(),
    )?;
    report.index_repaired = r.index_objects_replaced;
    report.packs_missing = r.packs_missing;
    repo.load_index()?;
    report.snapshots = repo.store().list_ids(names::SNAPSHOTS)?.len() as u64;
    crate::retention::upkeep(&repo, &HashSet::new())?;
    Ok(report)
}
