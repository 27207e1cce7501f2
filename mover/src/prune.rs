//! `prune`: delete data no snapshot uses, and repack mostly-empty packs, without a lock that
//! backups must take.
//!
//! Deletion is two-phase (the reasoning is in `docs/format.md`, "Prune"):
//!
//! 1. **Plan.** Packs that hold no blob any snapshot uses, packs stored but never indexed, and
//!    packs whose live blobs were just copied into new packs are written into a sealed *deletion
//!    plan* (`pending/<id>`) with the time. Nothing is deleted. From then on, backups leave those
//!    packs out of their dedup index, so no new snapshot starts depending on them.
//! 2. **Delete**, in a later run once the plan is older than the grace period (longer than the
//!    longest backup plus clock skew): every backup that could have seen those packs before the
//!    plan existed has finished and its snapshot is visible. Snapshots are read again; a planned
//!    pack still holding a blob some snapshot uses, with no copy elsewhere, is kept (rescued). The
//!    index objects naming the rest are rewritten without them, then the packs are deleted, then
//!    the plan.
//!
//! Only one prune runs at a time: it holds a lease (`locks/prune-<n>`, taken with a create-if-absent
//! of the next number, so two prunes cannot both take it) that expires if the holder dies.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::backend::{Store, names};
use crate::blobwriter::BlobWriter;
use crate::crypto::{ObjectKind, open_object};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{self, PackRecord};
use crate::repo::Repository;

/// Deletion plans.
pub const PENDING: &str = "pending/";
/// Leases.
pub const LOCKS: &str = "locks/";

/// Options of `prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How old a deletion plan must be before its packs are deleted.
    pub grace: jiff::SignedDuration,
    /// Repack a pack when less than this fraction of its bytes is still used.
    pub repack_below: f64,
    /// Report, change nothing.
    pub dry_run: bool,
    /// How long the lease lasts without renewal.
    pub lease_ttl: jiff::SignedDuration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            grace: jiff::SignedDuration::from_hours(24),
            repack_below: 0.5,
            dry_run: false,
            lease_ttl: jiff::SignedDuration::from_hours(1),
        }
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots read.
    pub snapshots: u64,
    /// Blobs some snapshot uses.
    pub blobs_used: u64,
    /// Packs put into a new deletion plan by this run.
    pub packs_planned: u64,
    /// Their bytes.
    pub bytes_planned: u64,
    /// Packs whose live blobs were copied into new packs.
    pub packs_repacked: u64,
    /// Blobs copied by repacking.
    pub blobs_repacked: u64,
    /// Packs deleted (from plans older than the grace period).
    pub packs_deleted: u64,
    /// Bytes freed.
    pub bytes_deleted: u64,
    /// Planned packs kept because a snapshot written since uses them.
    pub packs_rescued: u64,
    /// Packs the store refused to delete (under retention); tried again next time.
    pub packs_locked: u64,
    /// Unindexed packs whose header does not open, moved to `damaged/` instead of deleted.
    pub packs_set_aside: u64,
    /// Index objects rewritten.
    pub index_rewritten: u64,
    /// Plans still waiting for their grace period.
    pub plans_waiting: u64,
}

/// A deletion plan's plaintext.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    time: jiff::Timestamp,
    packs: Vec<Id>,
}

/// Every deletion plan: id and contents.
///
/// # Errors
/// A damaged plan (it is authenticated like every object) or storage errors.
fn load_plans(repo: &Repository) -> Result<Vec<(Id, Plan)>> {
    let mut out = Vec::new();
    for id in repo.store().list_ids(PENDING)? {
        let name = format!("{PENDING}{id}");
        let raw = match repo.read_named(&name, &id) {
            Ok(r) => r,
            // Deleted by a prune since the listing: nothing to do.
            Err(e) if e.kind() == ErrorKind::Missing => continue,
            Err(e) => return Err(e),
        };
        let plain =
            open_object(repo.keys(), ObjectKind::Plan, raw).map_err(|e| e.context(&name))?;
        let plan: Plan = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(format!("{name} does not decode: {e}")))?;
        out.push((id, plan));
    }
    Ok(out)
}

/// The packs that deletion plans name: a backup must not dedup against them.
///
/// # Errors
/// As [`load_plans`].
pub fn planned_packs(repo: &Repository) -> Result<HashSet<Id>> {
    Ok(load_plans(repo)?
        .into_iter()
        .flat_map(|(_, p)| p.packs)
        .collect())
}

#[derive(Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
    acquired: jiff::Timestamp,
    expires: jiff::Timestamp,
}

impl LeaseBody {
    /// Whether the holder is known to be gone: a process on this host that no longer runs
    /// (a prune killed here need not block the next one until its lease expires).
    fn holder_gone(&self) -> bool {
        self.host == crate::snapshot::hostname()
            && self.pid != 0
            && self.pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The prune lease, held until [`Lease::release`] (or until it expires).
pub struct Lease {
    holder: String,
    number: u64,
    ttl: jiff::SignedDuration,
    renewed: jiff::Timestamp,
}

fn lease_name(n: u64) -> String {
    format!("{LOCKS}prune-{n:016}")
}

fn latest_lease(store: &Store) -> Result<Option<(u64, LeaseBody)>> {
    let mut nums: Vec<u64> = store
        .list(LOCKS)?
        .into_iter()
        .filter_map(|(name, _)| name.strip_prefix(&format!("{LOCKS}prune-"))?.parse().ok())
        .collect();
    nums.sort_unstable();
    let Some(&n) = nums.last() else {
        return Ok(None);
    };
    let raw = store.read(&lease_name(n))?;
    let body: LeaseBody = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(format!("{} does not decode: {e}", lease_name(n))))?;
    Ok(Some((n, body)))
}

impl Lease {
    /// Take the lease, or fail with `Refused` naming the holder when another prune has it.
    ///
    /// # Errors
    /// `Refused` or storage errors.
    pub fn acquire(store: &Store, ttl: jiff::SignedDuration) -> Result<Self> {
        let mut rnd = [0u8; 8];
        crate::crypto::random_bytes(&mut rnd)?;
        let holder = format!(
            "{} pid {} ({})",
            crate::snapshot::hostname(),
            std::process::id(),
            hex::encode(rnd)
        );
        let now = jiff::Timestamp::now();
        let next = match latest_lease(store)? {
            Some((_, b)) if b.expires > now && !b.holder_gone() => {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!(
                        "another prune is running: {} holds the lease until {} (it expires by itself if that prune died)",
                        b.holder,
                        b.expires.round(jiff::Unit::Second).unwrap_or(b.expires)
                    ),
                ));
            }
            Some((n, _)) => n + 1,
            None => 0,
        };
        let mut lease = Self {
            holder,
            number: next,
            ttl,
            renewed: now,
        };
        lease.write(store, next)?;
        Ok(lease)
    }

    fn write(&mut self, store: &Store, n: u64) -> Result<()> {
        let now = jiff::Timestamp::now();
        let body = LeaseBody {
            holder: self.holder.clone(),
            host: crate::snapshot::hostname(),
            pid: std::process::id(),
            acquired: now,
            expires: now + self.ttl,
        };
        if !store.create(
            &lease_name(n),
            &serde_json::to_vec(&body).expect("lease serializes"),
        )? {
            return Err(Error::new(
                ErrorKind::Refused,
                "another prune took the lease at the same moment; try again later",
            ));
        }
        self.number = n;
        self.renewed = now;
        Ok(())
    }

    /// Extend the lease when a third of it has passed; fails if another prune took it over
    /// (ours expired), in which case this prune must stop before changing anything else.
    ///
    /// # Errors
    /// `Refused` when the lease was lost, or storage errors.
    pub fn renew(&mut self, store: &Store) -> Result<()> {
        let now = jiff::Timestamp::now();
        if now < self.renewed + self.ttl / 3 {
            return Ok(());
        }
        match latest_lease(store)? {
            Some((n, b)) if n == self.number && b.holder == self.holder => self.write(store, n + 1),
            _ => Err(Error::new(
                ErrorKind::Refused,
                "the prune lease expired and another prune took it; stopping",
            )),
        }
    }
}

impl Lease {
    /// Give the lease up: remove ours and every older one. A failure only leaves a lease that
    /// expires by itself.
    pub fn release(self, store: &Store) {
        if let Ok(list) = store.list(LOCKS) {
            for (name, _) in list {
                let n: Option<u64> = name
                    .strip_prefix(&format!("{LOCKS}prune-"))
                    .and_then(|s| s.parse().ok());
                if n.is_some_and(|n| n <= self.number) {
                    let _ = store.delete(&name);
                }
            }
        }
    }
}

/// Every blob the snapshots reach (tree and data blobs). A damaged or unreadable snapshot or tree
/// stops the prune: without it, prune cannot know what is in use.
fn used_blobs(repo: &mut Repository, report: &mut PruneReport) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    let mut stack: Vec<Vec<Id>> = Vec::new();
    report.snapshots = 0;
    for id in repo.store().list_ids(names::SNAPSHOTS)? {
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            // Removed by `forget` since the listing.
            Err(e) if e.kind() == ErrorKind::Missing => continue,
            Err(e) => return Err(e.context("prune needs every snapshot readable")),
        };
        report.snapshots += 1;
        stack.push(snap.tree);
    }
    // The index after the snapshots: every listed snapshot's blobs are indexed by then.
    repo.load_index()?;
    while let Some(ids) = stack.pop() {
        // A tree whose blobs were all seen was walked already (same blobs, same contents).
        if ids.iter().all(|i| used.contains(i)) && !ids.is_empty() {
            continue;
        }
        let unreadable = |e: Error| e.context("prune needs every tree readable");
        let tree = repo.read_tree_entries(&ids).map_err(unreadable)?;
        used.extend(ids);
        for n in tree {
            let n = n.map_err(unreadable)?;
            used.extend(n.content.iter().copied());
            if !n.subtree.is_empty() {
                stack.push(n.subtree);
            }
        }
    }
    report.blobs_used = used.len() as u64;
    Ok(used)
}

/// Index objects and what each lists.
fn index_objects(repo: &Repository) -> Result<Vec<(Id, Vec<PackRecord>)>> {
    let mut out = Vec::new();
    for id in repo.store().list_ids(names::INDEX)? {
        match repo.read_index_object(&id) {
            Ok(r) => out.push((id, r)),
            Err(e) if e.kind() == ErrorKind::Missing => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Run a prune.
///
/// # Errors
/// `Refused` when another prune holds the lease; otherwise the first damaged object or storage
/// error. At any failure the repository stays consistent.
pub fn prune(repo: &mut Repository, opts: &PruneOptions) -> Result<PruneReport> {
    // A dry run changes nothing, so it needs no lease.
    let mut lease = if opts.dry_run {
        None
    } else {
        Some(Lease::acquire(repo.store(), opts.lease_ttl)?)
    };
    let r = prune_holding(repo, opts, lease.as_mut());
    if let Some(l) = lease {
        l.release(repo.store());
    }
    r
}

fn prune_holding(
    repo: &mut Repository,
    opts: &PruneOptions,
    mut lease: Option<&mut Lease>,
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let mut plans = load_plans(repo)?;
    let now = jiff::Timestamp::now();
    let due = |p: &Plan| p.time + opts.grace <= now;

    // Phase 2 first: it looks at the snapshots as they are now.
    if plans.iter().any(|(_, p)| due(p)) {
        delete_due(
            repo,
            opts,
            &mut plans,
            &due,
            &mut report,
            lease.as_deref_mut(),
        )?;
    }
    if let Some(l) = lease.as_deref_mut() {
        l.renew(repo.store())?;
    }
    // Phase 1: plan what is unused now.
    let planned = plan_unused(repo, opts, &plans, &mut report)?;
    if let Some(l) = lease.as_deref_mut() {
        l.renew(repo.store())?;
    }
    // With no grace period, the new plan is due at once (safe only when nothing else writes).
    if opts.grace <= jiff::SignedDuration::ZERO
        && let Some(p) = planned
    {
        report.plans_waiting = 0;
        let mut plans = vec![p];
        delete_due(repo, opts, &mut plans, &|_| true, &mut report, lease)?;
    }
    report.plans_waiting = load_plans(repo)?.len() as u64;
    // Object Lock: record the packs repacking wrote, keep index objects locked.
    crate::retention::upkeep(repo, &HashSet::new())?;
    Ok(report)
}

fn delete_due(
    repo: &mut Repository,
    opts: &PruneOptions,
    plans: &mut Vec<(Id, Plan)>,
    due: &dyn Fn(&Plan) -> bool,
    report: &mut PruneReport,
    mut lease: Option<&mut Lease>,
) -> Result<()> {
    let (due_plans, waiting): (Vec<_>, Vec<_>) = plans.drain(..).partition(|(_, p)| due(p));
    *plans = waiting;
    let mut doomed: HashSet<Id> = due_plans
        .iter()
        .flat_map(|(_, p)| p.packs.iter().copied())
        .collect();
    let used = used_blobs(repo, report)?;
    let objects = index_objects(repo)?;
    // Blobs with a copy in a pack that stays.
    let mut elsewhere: HashSet<Id> = HashSet::new();
    let mut blobs_of: HashMap<Id, Vec<Id>> = HashMap::new();
    for rec in objects.iter().flat_map(|(_, r)| r) {
        if doomed.contains(&rec.id) {
            blobs_of
                .entry(rec.id)
                .or_insert_with(|| rec.blobs.iter().map(|b| b.id).collect());
        } else {
            elsewhere.extend(rec.blobs.iter().map(|b| b.id));
        }
    }
    // Rescue planned packs a snapshot written since the plan still needs, until nothing changes.
    loop {
        let rescue: Vec<Id> = doomed
            .iter()
            .filter(|p| {
                blobs_of.get(*p).is_some_and(|bs| {
                    bs.iter()
                        .any(|b| used.contains(b) && !elsewhere.contains(b))
                })
            })
            .copied()
            .collect();
        if rescue.is_empty() {
            break;
        }
        for p in rescue {
            doomed.remove(&p);
            report.packs_rescued += 1;
            elsewhere.extend(blobs_of.remove(&p).unwrap_or_default());
        }
    }
    // Packs still under Object Lock retention are skipped (a delete would only hide them
    // behind a delete marker) and stay planned for a later prune.
    let mut locked_left: Vec<Id> = Vec::new();
    if repo.store().lock().is_some() {
        let ledger = crate::retention::Ledger::load(repo)?;
        let now = jiff::Timestamp::now();
        let mut keep = HashSet::new();
        for p in &doomed {
            let name = names::pack(p);
            // The ledger first; an object it does not know is asked about (the ledger may be
            // incomplete: it is not locked, and is only a record).
            let until = match ledger.until(&name) {
                Some(t) => Some(t),
                None => repo.store().retain_until(&name)?,
            };
            if until.is_some_and(|t| t > now) {
                keep.insert(*p);
            }
        }
        doomed.retain(|p| !keep.contains(p));
        locked_left.extend(keep);
        report.packs_locked += locked_left.len() as u64;
    }
    let sizes: HashMap<Id, u64> = objects
        .iter()
        .flat_map(|(_, r)| r.iter().map(|p| (p.id, p.size)))
        .collect();
    if opts.dry_run {
        // Each pack is told apart as the real run does (reading only), so the report says what
        // that run would delete and what it would set aside.
        for p in &doomed {
            match doomed_pack(repo, p, &sizes)? {
                Doomed::Missing => {}
                Doomed::Damaged => report.packs_set_aside += 1,
                Doomed::Unused(size) => {
                    report.packs_deleted += 1;
                    report.bytes_deleted += size;
                }
            }
        }
        return Ok(());
    }
    // Index objects first: each listing a doomed pack is replaced by one without it (written
    // before the old one is deleted, so a reader always finds every kept pack).
    for (id, recs) in &objects {
        if !recs.iter().any(|r| doomed.contains(&r.id)) {
            continue;
        }
        let keep: Vec<PackRecord> = recs
            .iter()
            .filter(|r| !doomed.contains(&r.id))
            .cloned()
            .collect();
        if !keep.is_empty() {
            repo.save_object(ObjectKind::Index, &index::encode(&keep))?;
            repo.store().sync()?;
        }
        repo.store().delete(&format!("{}{id}", names::INDEX))?;
        report.index_rewritten += 1;
    }
    // Then the packs, now named by no index object.
    for p in &doomed {
        if let Some(l) = lease.as_deref_mut() {
            l.renew(repo.store())?;
        }
        let name = names::pack(p);
        let size = match doomed_pack(repo, p, &sizes)? {
            Doomed::Missing => continue,
            Doomed::Damaged => {
                match repo.store().set_aside(&name, &names::damaged(p)) {
                    Err(e) if e.kind() != ErrorKind::Missing => return Err(e),
                    r => report.packs_set_aside += u64::from(r.is_ok()),
                }
                continue;
            }
            Doomed::Unused(size) => size,
        };
        match repo.store().delete(&name) {
            Ok(()) => {
                report.packs_deleted += 1;
                report.bytes_deleted += size;
            }
            Err(e) => {
                tracing::warn!("keeping {name}: {e}");
                report.packs_locked += 1;
            }
        }
    }
    // Last, the plans: a crash before this only means deleting missing packs again. Locked
    // packs move to a new plan with the old time first.
    if let Some(time) = due_plans.iter().map(|(_, p)| p.time).min()
        && !locked_left.is_empty()
    {
        let plan = Plan {
            time,
            packs: locked_left,
        };
        repo.save_object(
            ObjectKind::Plan,
            &serde_json::to_vec(&plan).expect("plan serializes"),
        )?;
        repo.store().sync()?;
    }
    for (id, _) in &due_plans {
        repo.store().delete(&format!("{PENDING}{id}"))?;
    }
    repo.load_index()?;
    Ok(())
}

/// What becomes of a pack a due plan names.
enum Doomed {
    /// Already gone (deleted by an earlier, interrupted prune).
    Missing,
    /// Unindexed, and its header does not open: set aside, not deleted.
    Damaged,
    /// Deleted; its size in bytes.
    Unused(u64),
}

/// Tell a doomed pack apart: `sizes` are the packs the index names. An unindexed pack whose
/// header does not open is damaged (left by `repair index`, which could not read it whole), not
/// a backup's leftover: it is set aside, as a repair that reads it whole would, not deleted.
fn doomed_pack(repo: &Repository, p: &Id, sizes: &HashMap<Id, u64>) -> Result<Doomed> {
    if let Some(s) = sizes.get(p) {
        return Ok(Doomed::Unused(*s));
    }
    let name = names::pack(p);
    let size = match repo.store().size(&name) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::Missing => return Ok(Doomed::Missing),
        Err(e) => return Err(e),
    };
    Ok(match crate::repair::read_header(repo, &name, size)? {
        Ok(_) => Doomed::Unused(size),
        Err(e) => {
            tracing::debug!("{name}: {e}: set aside");
            Doomed::Damaged
        }
    })
}

/// Plan unused, unindexed and repacked packs; returns the new plan, if any.
fn plan_unused(
    repo: &mut Repository,
    opts: &PruneOptions,
    plans: &[(Id, Plan)],
    report: &mut PruneReport,
) -> Result<Option<(Id, Plan)>> {
    let already: HashSet<Id> = plans.iter().flat_map(|(_, p)| p.packs.clone()).collect();
    // The index first, then the snapshots: a backup finishing in between has its packs indexed
    // and its snapshot seen, or its packs unknown to us and thus left alone.
    let objects = index_objects(repo)?;
    let stored = repo.store().list_packs()?;
    let used = used_blobs(repo, report)?;
    let mut indexed: HashMap<Id, &PackRecord> = HashMap::new();
    for rec in objects.iter().flat_map(|(_, r)| r) {
        indexed.entry(rec.id).or_insert(rec);
    }
    let mut condemn: Vec<(Id, u64)> = Vec::new();
    let mut repack: Vec<&PackRecord> = Vec::new();
    for rec in indexed.values() {
        if already.contains(&rec.id) {
            continue;
        }
        let live: u64 = rec
            .blobs
            .iter()
            .filter(|b| used.contains(&b.id))
            .map(|b| u64::from(b.length))
            .sum();
        if live == 0 {
            condemn.push((rec.id, rec.size));
        } else if (live as f64) < opts.repack_below * rec.size as f64 {
            repack.push(rec);
        }
    }
    // Stored but never indexed: left by an interrupted backup, or written by one still running
    // (the grace period lets it finish and index them; then they are rescued or planned again).
    for (id, size) in &stored {
        if !indexed.contains_key(id) && !already.contains(id) {
            condemn.push((*id, *size));
        }
    }
    if !repack.is_empty() {
        let staying: HashSet<Id> = indexed
            .values()
            .filter(|r| {
                !already.contains(&r.id)
                    && !condemn.iter().any(|(c, _)| *c == r.id)
                    && !repack.iter().any(|p| p.id == r.id)
            })
            .flat_map(|r| r.blobs.iter().map(|b| b.id))
            .collect();
        if !opts.dry_run {
            let mut w = BlobWriter::new(repo)?;
            for rec in &repack {
                for b in &rec.blobs {
                    if !used.contains(&b.id) || staying.contains(&b.id) || w.has_added(&b.id) {
                        continue;
                    }
                    let plain = repo.read_blob(&b.id)?;
                    w.add_unchecked(b.blob_type, b.id, &plain)?;
                    report.blobs_repacked += 1;
                }
            }
            w.finish()?;
        }
        report.packs_repacked = repack.len() as u64;
        condemn.extend(repack.iter().map(|r| (r.id, r.size)));
    }
    report.packs_planned = condemn.len() as u64;
    report.bytes_planned = condemn.iter().map(|(_, s)| s).sum();
    if condemn.is_empty() || opts.dry_run {
        return Ok(None);
    }
    let plan = Plan {
        time: jiff::Timestamp::now(),
        packs: condemn.into_iter().map(|(id, _)| id).collect(),
    };
    let (id, _) = repo.save_object(
        ObjectKind::Plan,
        &serde_json::to_vec(&plan).expect("plan serializes"),
    )?;
    repo.store().sync()?;
    Ok(Some((id, plan)))
}
