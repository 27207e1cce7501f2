//! Object Lock retention upkeep for repositories created with `init --lock-days N`.
//!
//! Every object is written locked for N days. Data outlives that when newer snapshots dedup
//! against it, so after each backup the objects the new snapshot needs (its packs, every index
//! object, the config and the key slots) get their retention extended to at least N days from
//! now. To avoid a request per object per backup, retention dates are recorded in a *ledger*
//! (`retention/<id>`, sealed, not locked): an object is extended only when its recorded date is
//! less than N days away, and then to 1.5 × N days, so each object is touched at most once every
//! N / 2 days. A lost ledger only costs extra extensions.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::backend::names;
use crate::crypto::{ObjectKind, open_object};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::repo::Repository;

/// Ledger objects.
pub const LEDGER: &str = "retention/";
/// Merge the ledger into one object once it has this many.
const COMPACT_AT: usize = 16;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LedgerObject {
    /// Object name → retain-until, seconds since the epoch.
    until: Vec<(String, i64)>,
}

/// The recorded retention dates.
#[derive(Default)]
pub struct Ledger {
    until: HashMap<String, i64>,
    objects: Vec<Id>,
}

impl Ledger {
    /// Load and merge every ledger object. A damaged one is skipped: the worst outcome is an
    /// extension that was not needed.
    ///
    /// # Errors
    /// Storage errors while listing.
    pub fn load(repo: &Repository) -> Result<Self> {
        let mut l = Ledger::default();
        for id in repo.store().list_ids(LEDGER)? {
            let name = format!("{LEDGER}{id}");
            let parsed = repo
                .read_named(&name, &id)
                .and_then(|raw| open_object(repo.keys(), ObjectKind::Ledger, raw))
                .and_then(|p| {
                    serde_json::from_slice::<LedgerObject>(&p)
                        .map_err(|e| Error::corrupt(e.to_string()))
                });
            match parsed {
                Ok(o) => {
                    l.objects.push(id);
                    for (n, t) in o.until {
                        let e = l.until.entry(n).or_insert(t);
                        *e = (*e).max(t);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Missing => {}
                Err(e) => tracing::warn!("ignoring {name}: {e}"),
            }
        }
        Ok(l)
    }

    /// The recorded retain-until of `name`.
    pub fn until(&self, name: &str) -> Option<jiff::Timestamp> {
        self.until
            .get(name)
            .and_then(|s| jiff::Timestamp::from_second(*s).ok())
    }
}

/// What an upkeep pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Upkeep {
    /// Objects whose retention was extended.
    pub extended: u64,
}

/// Record the objects this process created locked, and extend the retention of `packs` (the
/// packs a new snapshot uses), every index object, the config and the key slots where it ends
/// within N days. No-op for a repository without Object Lock.
///
/// # Errors
/// Storage errors; the caller reports them (the snapshot itself is already saved).
pub fn upkeep<S: std::hash::BuildHasher>(
    repo: &Repository,
    packs: &HashSet<Id, S>,
) -> Result<Upkeep> {
    let Some(lock) = repo.store().lock() else {
        return Ok(Upkeep::default());
    };
    let mut ledger = Ledger::load(repo)?;
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let want = now + day * i32::try_from(lock.days).unwrap_or(i32::MAX);
    let target = now + day * i32::try_from(lock.days.saturating_mul(3) / 2).unwrap_or(i32::MAX);
    let mut fresh: Vec<(String, i64)> = repo
        .store()
        .take_locked()
        .into_iter()
        .map(|(n, t)| (n, t.as_second()))
        .collect();
    for (n, t) in &fresh {
        ledger.until.insert(n.clone(), *t);
    }
    let mut names: Vec<String> = packs.iter().map(names::pack).collect();
    names.extend(
        repo.store()
            .list_ids(names::INDEX)?
            .iter()
            .map(|i| format!("{}{i}", names::INDEX)),
    );
    names.extend(
        repo.store()
            .list_ids(names::KEYS)?
            .iter()
            .map(|i| format!("{}{i}", names::KEYS)),
    );
    names.push(names::CONFIG.to_owned());
    let mut up = Upkeep::default();
    for n in names {
        // (An hour of slack: objects this backup wrote are locked N days from their write.)
        if ledger
            .until(&n)
            .is_some_and(|t| t >= want - jiff::SignedDuration::from_hours(1))
        {
            continue;
        }
        match repo.store().extend_lock(&n, target) {
            Ok(()) => {
                up.extended += 1;
                fresh.push((n, target.as_second()));
            }
            // Deleted since it was listed (an index object replaced by prune): nothing to keep.
            Err(e) if e.kind() == ErrorKind::Missing => {}
            Err(e) => return Err(e),
        }
    }
    if ledger.objects.len() >= COMPACT_AT {
        // One object with every date still in the future replaces the others.
        let mut all: HashMap<String, i64> = ledger
            .until
            .into_iter()
            .filter(|(_, t)| *t > now.as_second())
            .collect();
        for (n, t) in fresh {
            all.insert(n, t);
        }
        write(repo, all.into_iter().collect())?;
        for id in ledger.objects {
            repo.store().delete(&format!("{LEDGER}{id}"))?;
        }
    } else if !fresh.is_empty() {
        write(repo, fresh)?;
    }
    Ok(up)
}

fn write(repo: &Repository, until: Vec<(String, i64)>) -> Result<()> {
    let body = serde_json::to_vec(&LedgerObject { until }).expect("ledger serializes");
    repo.save_object(ObjectKind::Ledger, &body)?;
    Ok(())
}
