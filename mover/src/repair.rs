//! `repair index`: make the index name exactly the packs that are stored and sound, so that the
//! next backup stores again what was lost.
//!
//! Disks rot, buckets lose objects and people delete the wrong prefix. While the index still
//! lists the blobs of a lost or damaged pack, every backup deduplicates against them and its
//! snapshot depends on data that is gone; re-reading the source does not help. This rebuilds the
//! index from what is stored:
//!
//! - a pack the index names that is not stored is left out (its blobs are lost);
//! - a stored pack that no readable index object names (its index object was damaged, or a
//!   backup was interrupted before writing it), or whose size or listing the index has wrong, is
//!   indexed from its own header once that authenticates;
//! - with `read_all_packs`, every pack is read whole: one whose bytes do not hash to its name, or
//!   with a blob that fails to open, is left out of the index, and its intact blobs are first
//!   copied into new packs (unless a sound pack holds them too), and the damaged pack is moved
//!   from `data/` to `damaged/` once the new index is durable (left in `data/`, a later repair
//!   reading only headers would index it again from its intact header; deleted, a pack that
//!   only read wrong once would be lost). Without `read_all_packs`, a pack found
//!   damaged (truncated, say) stays stored, unindexed, for a repair that reads it whole.
//!
//! A blob no pack holds any more is then missing from the index, so the next backup of its
//! source stores it again, under the same id (an id depends only on the content): every
//! snapshot that used it is whole again. Until then `check` names those snapshots, and `find
//! --pack` the files a lost pack held.
//!
//! Order: salvaged blobs are stored and indexed first, then the replacement index objects are
//! written and synced, then the objects they replace are deleted, so a crash leaves the old
//! objects, or the old and the new side by side (which list the same packs). The prune lease is
//! held throughout: no prune deletes packs or rewrites index objects meanwhile.

pub mod snapshots;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::backend::names;
use crate::blobwriter::BlobWriter;
use crate::check::{Buffers, TAIL, scan_pack, start_tail, whole_tail};
use crate::crypto::{ObjectKind, SALT_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::idset::IdSet;
use crate::index::{self, PackInfo, PackRecord};
use crate::pack::{self, BlobEntry};
use crate::prune::Lease;
use crate::repo::Repository;

/// How to repair.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Read every pack whole and verify every blob, instead of trusting the index's listing of
    /// each stored pack of the right size.
    pub read_all_packs: bool,
    /// Report what would change; change nothing.
    pub dry_run: bool,
    /// How long the prune lease lasts without renewal.
    pub lease_ttl: jiff::SignedDuration,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            read_all_packs: false,
            dry_run: false,
            lease_ttl: jiff::SignedDuration::from_hours(1),
        }
    }
}

/// One object the repair found wrong, and what it did about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object's name (`data/…`, `index/…`).
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What `repair index` found and did (with `dry_run`: would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepairReport {
    /// Index objects read.
    pub index_objects: u64,
    /// Index objects that do not authenticate or decode (replaced).
    pub index_objects_damaged: u64,
    /// Index objects replaced, damaged ones included.
    pub index_objects_replaced: u64,
    /// Index objects written in their place.
    pub index_objects_written: u64,
    /// Packs indexed afterwards.
    pub packs: u64,
    /// Packs read (their header, or whole with `read_all_packs`).
    pub packs_read: u64,
    /// Stored packs indexed from their header (no readable index object named them, or named
    /// them otherwise than their header does).
    pub packs_indexed: u64,
    /// Packs the index named that are not stored.
    pub packs_missing: u64,
    /// Stored packs left out of the index as damaged.
    pub packs_damaged: u64,
    /// Packs that read wrong once and intact on a second read (read whole only): they are kept,
    /// but what read them wrong may be this machine.
    pub packs_misread: u64,
    /// Intact blobs of damaged packs copied into new packs.
    pub blobs_salvaged: u64,
    /// Damaged packs moved from `data/` to `damaged/` once their intact blobs were copied
    /// (`read_all_packs` only: without it, nothing is salvaged and a damaged pack stays,
    /// unindexed).
    pub packs_set_aside: u64,
    /// Blobs the index listed that no pack holds any more: the next backup of their source
    /// stores them again.
    pub blobs_lost: u64,
    /// Every object found wrong.
    pub problems: Vec<Problem>,
}

/// Progress of a repair, for a display.
#[derive(Debug, Default)]
pub struct RepairProgress {
    /// Packs read so far.
    pub packs_read: AtomicU64,
}

/// What reading a pack found.
enum Verdict {
    /// Its header authenticates (and, read whole, every byte checks out): indexed from it. With
    /// what a first read found when only a second one was sound (read whole only).
    Sound(PackRecord, Option<String>),
    /// Gone since the listing.
    Missing,
    /// Left out of the index; `salvage` are its blobs that opened (read whole only).
    Damaged {
        why: String,
        salt: [u8; SALT_LEN],
        listed: Vec<BlobEntry>,
        salvage: Vec<BlobEntry>,
    },
}

/// Rebuild the index from the stored packs, holding the prune lease (not in a dry run).
///
/// # Errors
/// `Refused` when a prune holds the lease; storage errors (a pack that cannot be read for any
/// reason but damage stops the repair, and nothing is changed for it).
pub fn repair_index(
    repo: &Repository,
    opts: &RepairOptions,
    progress: &RepairProgress,
) -> Result<RepairReport> {
    let lease = if opts.dry_run {
        None
    } else {
        Some(Mutex::new(
            Lease::acquire(repo.store(), opts.lease_ttl)
                .map_err(|e| e.context("repair index takes the prune lease"))?,
        ))
    };
    let r = repair_holding(repo, opts, lease.as_ref(), progress).and_then(|r| {
        // Object Lock: record the packs a salvage wrote, keep the new index objects locked.
        if !opts.dry_run {
            crate::retention::upkeep(repo, &HashSet::new())?;
        }
        Ok(r)
    });
    if let Some(l) = lease {
        l.into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .release(repo.store());
    }
    r
}

/// [`repair_index`] by a caller that holds the lease (or needs none: `recover`), without the
/// Object Lock upkeep that follows it.
pub(crate) fn repair_holding(
    repo: &Repository,
    opts: &RepairOptions,
    lease: Option<&Mutex<Lease>>,
    progress: &RepairProgress,
) -> Result<RepairReport> {
    let mut rep = RepairReport::default();
    let store = repo.store();
    // The index objects, each on its own: a damaged one is replaced, and the packs it named are
    // indexed from their headers.
    let mut objects: Vec<(Id, Vec<PackRecord>)> = Vec::new();
    let mut damaged_objects: Vec<Id> = Vec::new();
    for id in store.list_ids(names::INDEX)? {
        match repo.read_index_object(&id) {
            Ok(r) => objects.push((id, r)),
            Err(e) if e.kind() == ErrorKind::Missing => {}
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                let object = format!("{}{id}", names::INDEX);
                let e = e.to_string();
                let why = e
                    .strip_prefix(&object)
                    .unwrap_or(&e)
                    .trim_start_matches(": ");
                rep.problems.push(Problem {
                    problem: format!("{}; replaced", why.trim()),
                    object,
                });
                damaged_objects.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    rep.index_objects = (objects.len() + damaged_objects.len()) as u64;
    rep.index_objects_damaged = damaged_objects.len() as u64;
    // What the readable objects say of each pack; a pack they list in two ways is read.
    let mut listed: HashMap<Id, &PackRecord> = HashMap::new();
    let mut conflicting: HashSet<Id> = HashSet::new();
    for rec in objects.iter().flat_map(|(_, r)| r) {
        if *listed.entry(rec.id).or_insert(rec) != rec {
            conflicting.insert(rec.id);
        }
    }
    let stored: HashMap<Id, u64> = store.list_packs()?.into_iter().collect();
    let mut to_read: Vec<PackInfo> = stored
        .iter()
        .filter(|(id, size)| {
            opts.read_all_packs
                || conflicting.contains(*id)
                || listed.get(*id).is_none_or(|r| r.size != **size)
        })
        .map(|(&id, &size)| PackInfo {
            id,
            size,
            salt: [0; SALT_LEN],
        })
        .collect();
    to_read.sort_by_key(|p| p.id);
    let verdicts = read_packs(repo, &to_read, opts.read_all_packs, lease, progress)?;
    rep.packs_read = to_read.len() as u64;

    // The packs indexed afterwards; the blobs of those left out.
    let mut keep: HashMap<Id, PackRecord> = HashMap::new();
    let mut dropped: Vec<Id> = Vec::new();
    let mut damaged: Vec<(Id, [u8; SALT_LEN], Vec<BlobEntry>)> = Vec::new();
    let mut missing: Vec<Id> = listed
        .keys()
        .filter(|id| !stored.contains_key(*id))
        .copied()
        .collect();
    for &id in stored.keys() {
        match verdicts.get(&id) {
            None => {
                keep.insert(id, listed[&id].clone());
            }
            Some(Verdict::Sound(r, misread)) => {
                if let Some(first) = misread {
                    rep.packs_misread += 1;
                    rep.problems.push(Problem {
                        object: names::pack(&id),
                        problem: format!(
                            "read wrong once ({first}), intact on a second read: kept; test this machine's memory and its path to the storage"
                        ),
                    });
                }
                if listed.get(&id).is_none_or(|l| *l != r) {
                    rep.packs_indexed += 1;
                    rep.problems.push(Problem {
                        object: names::pack(&id),
                        problem: if listed.contains_key(&id) {
                            "the index lists it otherwise than its header; indexed from its header"
                        } else {
                            "no index object names it; indexed from its header"
                        }
                        .into(),
                    });
                }
                keep.insert(id, r.clone());
            }
            // Gone since the listing: only worth a word when the index named it.
            Some(Verdict::Missing) => {
                if listed.contains_key(&id) {
                    missing.push(id);
                }
            }
            Some(Verdict::Damaged {
                why,
                salt,
                listed: entries,
                salvage,
            }) => {
                rep.packs_damaged += 1;
                rep.problems.push(Problem {
                    object: names::pack(&id),
                    problem: if opts.read_all_packs {
                        format!(
                            "{why}; left out of the index and moved to {}",
                            names::damaged(&id)
                        )
                    } else {
                        format!("{why}; left out of the index")
                    },
                });
                // What its header lists, and what the index said it holds (a pack whose header
                // does not open lists nothing).
                dropped.extend(entries.iter().map(|e| e.id));
                if let Some(l) = listed.get(&id) {
                    dropped.extend(l.blobs.iter().map(|b| b.id));
                }
                damaged.push((id, *salt, salvage.clone()));
            }
        }
    }
    missing.sort();
    for id in &missing {
        dropped.extend(listed[id].blobs.iter().map(|b| b.id));
        rep.packs_missing += 1;
        rep.problems.push(Problem {
            object: names::pack(id),
            problem: "missing (the index names it); left out of the index".into(),
        });
    }
    let mut after = IdSet::new();
    for b in keep.values().flat_map(|r| &r.blobs) {
        after.insert(b.id);
    }

    // Intact blobs of damaged packs that no sound pack holds, into new packs (indexed by the
    // writer as it stores them).
    damaged.sort_by_key(|d| d.0);
    let mut writer = if opts.dry_run {
        None
    } else {
        Some(BlobWriter::new(repo)?)
    };
    for (id, salt, salvage) in &damaged {
        let name = names::pack(id);
        for e in salvage {
            if after.contains(&e.id) {
                continue;
            }
            if let Some(w) = &mut writer {
                let ct =
                    repo.store()
                        .read_range(&name, u64::from(e.offset), u64::from(e.length))?;
                let plain = match pack::open_blob(repo.keys(), salt, e, ct) {
                    Ok(p) => p,
                    // It opened a moment ago: the pack is changing under us.
                    Err(err) => return Err(err.context(&name)),
                };
                w.add_unchecked(e.blob_type, e.id, &plain)?;
            }
            after.insert(e.id);
            rep.blobs_salvaged += 1;
        }
    }
    rep.packs = keep.len() as u64;
    if let Some(mut w) = writer {
        w.flush()?;
        rep.packs += w.packs_written;
    }
    dropped.sort_unstable();
    dropped.dedup();
    rep.blobs_lost = dropped.iter().filter(|b| !after.contains(b)).count() as u64;
    rep.problems.sort_by(|a, b| a.object.cmp(&b.object));

    // Replace every object that names a pack otherwise than it is kept, and the damaged ones.
    let (replaced, staying): (Vec<_>, Vec<_>) = objects
        .iter()
        .partition(|(_, recs)| recs.iter().any(|r| keep.get(&r.id) != Some(r)));
    let staying: HashSet<Id> = staying
        .iter()
        .flat_map(|(_, recs)| recs.iter().map(|r| r.id))
        .collect();
    let mut fresh: Vec<&PackRecord> = keep.values().filter(|r| !staying.contains(&r.id)).collect();
    fresh.sort_by_key(|r| r.id);
    let mut groups: Vec<Vec<PackRecord>> = vec![Vec::new()];
    for r in fresh {
        let last = groups.last_mut().expect("one group at least");
        last.push(r.clone());
        if index::due(last) {
            groups.push(Vec::new());
        }
    }
    groups.retain(|g| !g.is_empty());
    rep.index_objects_written = groups.len() as u64;
    rep.index_objects_replaced = (replaced.len() + damaged_objects.len()) as u64;
    // Read whole, a damaged pack has given up everything it can: it leaves `data/`, or a later
    // repair that reads only headers would index it again from its intact header. It is set
    // aside, not deleted: a read that went wrong on the way (memory, network) looks like damage
    // too, and what no blob opens in it a person may still want.
    if opts.read_all_packs {
        rep.packs_set_aside = damaged.len() as u64;
    }
    if opts.dry_run {
        return Ok(rep);
    }
    if rep.index_objects_replaced + rep.index_objects_written > 0 {
        for g in &groups {
            repo.save_object(ObjectKind::Index, &index::encode(g))?;
        }
        repo.store().sync()?;
        renew(repo, lease)?;
        for id in replaced.iter().map(|(id, _)| id).chain(&damaged_objects) {
            repo.store().delete(&format!("{}{id}", names::INDEX))?;
        }
    }
    if opts.read_all_packs {
        renew(repo, lease)?;
        for (id, _, _) in &damaged {
            // Gone meanwhile: nothing to set aside.
            if let Err(e) = repo
                .store()
                .set_aside(&names::pack(id), &names::damaged(id))
                && e.kind() != ErrorKind::Missing
            {
                return Err(e);
            }
        }
    }
    Ok(rep)
}

fn renew(repo: &Repository, lease: Option<&Mutex<Lease>>) -> Result<()> {
    match lease {
        Some(l) => l
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .renew(repo.store()),
        None => Ok(()),
    }
}

/// Read `packs` on as many threads as `check` uses: each pack's header, or (`whole`) every byte.
/// Damage is a verdict; any other error stops the reading and is returned.
fn read_packs(
    repo: &Repository,
    packs: &[PackInfo],
    whole: bool,
    lease: Option<&Mutex<Lease>>,
    progress: &RepairProgress,
) -> Result<HashMap<Id, Verdict>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let found = Mutex::new(HashMap::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let readers = repo
        .store()
        .parallelism()
        .map_or(cores, |r| r.min(16).max(cores))
        .min(packs.len());
    std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                let mut bufs = Buffers::default();
                while !stop.load(Ordering::Relaxed) {
                    let Some(p) = packs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let verdict = read_pack(repo, p, whole, &mut bufs)
                        .and_then(|v| renew(repo, lease).map(|()| v));
                    match verdict {
                        Ok(v) => {
                            found
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(p.id, v);
                            progress.packs_read.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            failed
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    Ok(found.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// The verdict on one stored pack.
fn read_pack(repo: &Repository, p: &PackInfo, whole: bool, bufs: &mut Buffers) -> Result<Verdict> {
    let damaged = |why: String| Verdict::Damaged {
        why,
        salt: [0; SALT_LEN],
        listed: Vec::new(),
        salvage: Vec::new(),
    };
    let record = |salt, blobs| PackRecord {
        id: p.id,
        size: p.size,
        salt,
        blobs,
    };
    let read = if whole {
        scan_pack(
            repo,
            p,
            bufs,
            start_tail(repo, &names::pack(&p.id), p.size, TAIL),
        )
        .map(|scan| match scan.header {
            Err(e) => damaged(format!("header: {e}")),
            Ok((salt, entries)) if !scan.intact || !scan.bad.is_empty() => {
                let why = match scan.bad.first() {
                    Some((id, e)) => format!(
                        "{} of its {} blobs do not open (blob {}: {e})",
                        scan.bad.len(),
                        entries.len(),
                        id.short()
                    ),
                    None => "content does not match its name".into(),
                };
                let bad: HashSet<Id> = scan.bad.iter().map(|(id, _)| *id).collect();
                let salvage = entries
                    .iter()
                    .filter(|e| !bad.contains(&e.id))
                    .copied()
                    .collect();
                Verdict::Damaged {
                    why,
                    salt,
                    listed: entries,
                    salvage,
                }
            }
            Ok((salt, entries)) => Verdict::Sound(record(salt, entries), scan.misread),
        })
    } else {
        read_header(repo, &names::pack(&p.id), p.size).map(|h| match h {
            Ok((salt, entries)) => Verdict::Sound(record(salt, entries), None),
            Err(e) => damaged(format!("header: {e}")),
        })
    };
    match read {
        Err(e) if e.kind() == ErrorKind::Missing => Ok(Verdict::Missing),
        // Shorter than listed: a truncated pack.
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(damaged(e.to_string())),
        r => r,
    }
}

type Header = std::result::Result<([u8; SALT_LEN], Vec<BlobEntry>), Error>;

/// The salt and header entries of pack object `name` (of `size` bytes, under any prefix), from
/// its first and last bytes; the inner error is damage (a header that does not open, a pack
/// shorter than `size`).
///
/// # Errors
/// Storage errors.
pub(crate) fn read_header(repo: &Repository, name: &str, size: u64) -> Result<Header> {
    if size < pack::PACK_HEAD_LEN as u64 {
        return Ok(Err(Error::corrupt("pack is truncated")));
    }
    let read = || -> Result<(Vec<u8>, Vec<u8>)> {
        let head = repo
            .store()
            .read_range(name, 0, pack::PACK_HEAD_LEN as u64)?;
        let (tail, _) = whole_tail(repo, name, size, start_tail(repo, name, size, TAIL))?;
        Ok((head, tail))
    };
    let (head, tail) = match read() {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::Corrupt => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    Ok(pack::salt_of(&head).and_then(|salt| {
        pack::read_header_tail(repo.keys(), &salt, &tail, size).map(|entries| (salt, entries))
    }))
}
