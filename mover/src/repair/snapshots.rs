//! `repair snapshots`: write snapshots anew without the data that is gone, so what is left of
//! them restores, for when the source no longer has what was lost (otherwise the next backup
//! stores it again and heals every snapshot: see [`super`]).
//!
//! A blob is lost when the index does not list it, or lists it in a pack that is not stored (or
//! not at its size). Packs that are stored but damaged are found only by reading them: run
//! `repair index --read-all-packs` first for those. Lost packs are best repaired before `repair
//! index`, while the index still knows the lengths of their blobs. Then, for each snapshot:
//!
//! - a file (or backed-up device) with lost blobs keeps every blob whose place in the file is
//!   known, and each lost range becomes a hole: it reads as zeros, and every other byte stays at
//!   its offset (a database file or a disk image with a zeroed range is more use than one whose
//!   tail has moved, which is what cutting the lost blobs out would give). Sizes never change.
//!   A lost blob of known length (from the index, or from the header of a damaged pack `repair
//!   index --read-all-packs` set aside in `damaged/`) is a hole of its own; between lost blobs
//!   of unknown length (the index was repaired and the pack is gone) the stored blobs' places
//!   are unknown too, and the hole spans them.
//! - a directory whose tree blobs cannot all be read keeps the entries decoded before the first
//!   one that cannot (none when its first blob is gone).
//!
//! Such nodes are marked `repaired`, so a later backup reads their source again instead of
//! taking the zeros as unchanged content. The new snapshot has the old one's time, host, paths
//! and tags plus `repaired`, and the old id as `original`; the old snapshot is kept unless
//! `forget` (a crash between the two leaves both). A snapshot whose root directory cannot be read
//! at all cannot be repaired; `forget` removes it.
//!
//! Each tree is examined once however many snapshots share it, and one that needs no change is
//! never written again. The prune lease is held, so no prune deletes packs meanwhile (the new
//! snapshot may use blobs of packs a prune planned to delete, as the old one did: the prune's
//! deletion keeps every pack a snapshot still uses).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::HumanBytes;
use serde::Serialize;

use crate::blobwriter::BlobWriter;
use crate::crypto::ObjectKind;
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::PackInfo;
use crate::pack::BlobType;
use crate::prune::Lease;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, TreeEntries, TreeWriter};

/// The tag every repaired snapshot carries.
pub const REPAIRED_TAG: &str = "repaired";

/// How to repair snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotsOptions {
    /// Delete each snapshot once its repaired copy is stored (and one that cannot be repaired).
    pub forget: bool,
    /// Report what would change; change nothing.
    pub dry_run: bool,
    /// How long the prune lease lasts without renewal.
    pub lease_ttl: jiff::SignedDuration,
}

impl Default for SnapshotsOptions {
    fn default() -> Self {
        Self {
            forget: false,
            dry_run: false,
            lease_ttl: jiff::SignedDuration::from_hours(1),
        }
    }
}

/// Something lost in one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotProblem {
    /// The snapshot's id.
    pub snapshot: String,
    /// The absolute path of the file or directory.
    pub path: String,
    /// What was lost and what the repair made of it.
    pub problem: String,
}

/// A snapshot the repair wrote anew (or forgot).
#[derive(Debug, Clone, Serialize)]
pub struct Rewritten {
    /// The damaged snapshot's id.
    pub old: String,
    /// The repaired snapshot's id (none when it could not be repaired, or in a dry run).
    pub new: Option<String>,
    /// Whether its root directory cannot be read: nothing of it is left to write anew.
    pub unrepairable: bool,
    /// Whether the damaged snapshot was deleted (with `forget`).
    pub forgotten: bool,
}

/// What `repair snapshots` found and did (with `dry_run`: would do). File and directory counts
/// are summed over the snapshots (a file damaged in three snapshots counts three times).
#[derive(Debug, Default, Clone, Serialize)]
pub struct SnapshotsReport {
    /// Snapshots examined.
    pub snapshots: u64,
    /// Snapshots written anew without what was lost.
    pub snapshots_repaired: u64,
    /// Snapshots whose root directory cannot be read: nothing of them is left.
    pub snapshots_unrepairable: u64,
    /// Damaged snapshots deleted (`forget`).
    pub snapshots_forgotten: u64,
    /// Files and devices whose lost ranges now read as zeros.
    pub files_repaired: u64,
    /// Bytes of their data in those ranges.
    pub bytes_zeroed: u64,
    /// Directories that lost entries they could not read.
    pub dirs_repaired: u64,
    /// Packs the index names that are not stored (or not at their size): their blobs count
    /// as lost. `repair index` then takes them out of the index.
    pub packs_lost: u64,
    /// Each snapshot written anew or forgotten.
    pub rewritten: Vec<Rewritten>,
    /// Every loss, by snapshot and path.
    pub problems: Vec<SnapshotProblem>,
}

/// Progress of a repair, for a display.
#[derive(Debug, Default)]
pub struct SnapshotsProgress {
    /// Snapshots done.
    pub snapshots: AtomicU64,
    /// Distinct directories examined.
    pub dirs: AtomicU64,
}

/// Repair `snapshots` (as selected by the caller), holding the prune lease (not in a dry run).
/// The index is loaded here, after the lease is taken: what it lists is what is kept.
///
/// # Errors
/// `Refused` when a prune holds the lease; storage errors, and any error reading a tree that is
/// not damage (a network failure stops the repair; what was written by then is consistent).
pub fn repair_snapshots(
    repo: &mut Repository,
    snapshots: &[(Id, Snapshot)],
    opts: &SnapshotsOptions,
    progress: &SnapshotsProgress,
) -> Result<SnapshotsReport> {
    let mut lease = if opts.dry_run {
        None
    } else {
        Some(
            Lease::acquire(repo.store(), opts.lease_ttl)
                .map_err(|e| e.context("repair snapshots takes the prune lease"))?,
        )
    };
    let r = repair_holding(repo, snapshots, opts, lease.as_mut(), progress);
    if let Some(l) = lease {
        l.release(repo.store());
    }
    r
}

/// [`repair_snapshots`] once the lease is held.
fn repair_holding(
    repo: &mut Repository,
    snapshots: &[(Id, Snapshot)],
    opts: &SnapshotsOptions,
    lease: Option<&mut Lease>,
    progress: &SnapshotsProgress,
) -> Result<SnapshotsReport> {
    repo.load_index()?;
    let repo = &*repo;
    // What is stored, as `repair index` judges it: a pack the index names that is not stored,
    // or not at its size, is lost, and its blobs with it (their lengths still known).
    let stored: HashMap<Id, u64> = repo.store().list_packs()?.into_iter().collect();
    let set_aside = set_aside_lengths(repo)?;
    let mut walker = Walker {
        repo,
        stored: &stored,
        set_aside: &set_aside,
        writer: if opts.dry_run {
            None
        } else {
            Some(BlobWriter::new(repo)?)
        },
        lease,
        done: HashMap::new(),
        used: HashSet::new(),
        progress,
    };
    let rep = repair_all(&mut walker, snapshots, opts)?;
    // Object Lock: the packs the repaired snapshots use stay locked, the new ones recorded.
    if !opts.dry_run {
        crate::retention::upkeep(repo, &walker.used)?;
    }
    Ok(rep)
}

fn repair_all(
    w: &mut Walker<'_, '_>,
    snapshots: &[(Id, Snapshot)],
    opts: &SnapshotsOptions,
) -> Result<SnapshotsReport> {
    let mut rep = SnapshotsReport {
        packs_lost: w
            .repo
            .index()
            .packs()
            .iter()
            .filter(|p| !sound(w.stored, p))
            .count() as u64,
        ..SnapshotsReport::default()
    };
    for (old, snap) in snapshots {
        rep.snapshots += 1;
        let root = w.dir(&snap.tree)?;
        w.progress.snapshots.fetch_add(1, Ordering::Relaxed);
        let Some(fixed) = root else { continue };
        let problem = |path: &[u8], problem: String| SnapshotProblem {
            snapshot: old.to_hex(),
            path: format!("/{}", String::from_utf8_lossy(path)),
            problem,
        };
        if let (Some(0), Some(why)) = (fixed.kept, &fixed.why) {
            // Not one entry of the root: nothing is left to restore.
            rep.snapshots_unrepairable += 1;
            rep.problems.push(problem(
                b"",
                format!(
                    "the snapshot's root directory cannot be read ({why}): it cannot be repaired"
                ),
            ));
            let forgotten = opts.forget && !opts.dry_run;
            if forgotten {
                w.repo.remove_snapshot(old)?;
            }
            rep.snapshots_forgotten += u64::from(opts.forget);
            rep.rewritten.push(Rewritten {
                old: old.to_hex(),
                new: None,
                unrepairable: true,
                forgotten,
            });
            continue;
        }
        rep.problems.extend(
            fixed
                .problems
                .iter()
                .map(|(path, what)| problem(path, what.clone())),
        );
        rep.snapshots_repaired += 1;
        rep.files_repaired += fixed.files;
        rep.bytes_zeroed += fixed.zeroed;
        rep.dirs_repaired += fixed.dirs;
        rep.snapshots_forgotten += u64::from(opts.forget);
        let mut new = snap.clone();
        new.tree.clone_from(&fixed.ids);
        if !new.tags.iter().any(|t| t == REPAIRED_TAG) {
            new.tags.push(REPAIRED_TAG.to_owned());
        }
        new.original = snap.original.or(Some(*old));
        let Some(writer) = w.writer.as_mut() else {
            rep.rewritten.push(Rewritten {
                old: old.to_hex(),
                new: None,
                unrepairable: false,
                forgotten: false,
            });
            continue;
        };
        // Commit point: the new trees are stored and indexed before the snapshot naming them.
        writer.flush()?;
        if let Some(l) = w.lease.as_deref_mut() {
            l.renew(w.repo.store())?;
        }
        let id = if opts.forget {
            w.repo.replace_snapshot(old, &new)?
        } else {
            let json = serde_json::to_vec(&new).expect("a snapshot serializes");
            let (id, _) = w.repo.save_object(ObjectKind::Snapshot, &json)?;
            w.repo.store().sync()?;
            id
        };
        rep.rewritten.push(Rewritten {
            old: old.to_hex(),
            new: Some(id.to_hex()),
            unrepairable: false,
            forgotten: opts.forget,
        });
    }
    if let Some(writer) = w.writer.take() {
        writer.finish()?;
    }
    Ok(rep)
}

/// A directory the repair changed.
#[derive(Default)]
struct Fixed {
    /// Its new tree blobs.
    ids: Vec<Id>,
    /// Entries kept when its own tree could not be read whole, and why it could not.
    kept: Option<usize>,
    why: Option<String>,
    /// Losses below it: path relative to it (empty for itself), what was done.
    problems: Vec<(Vec<u8>, String)>,
    files: u64,
    zeroed: u64,
    dirs: u64,
}

struct Walker<'r, 'l> {
    repo: &'r Repository,
    /// The packs stored, with their sizes.
    stored: &'r HashMap<Id, u64>,
    /// The plaintext lengths of blobs in damaged packs `repair index` set aside, from their
    /// headers: a blob the index no longer knows may still be placed.
    set_aside: &'r HashMap<Id, u64>,
    /// `None` in a dry run: tree ids are computed, nothing is stored.
    writer: Option<BlobWriter<'r>>,
    lease: Option<&'l mut Lease>,
    /// Every directory examined, by the digest of its tree ids: `None` when unchanged.
    done: HashMap<Id, Option<Rc<Fixed>>>,
    /// Packs of the blobs the examined snapshots use (Object Lock upkeep).
    used: HashSet<Id>,
    progress: &'r SnapshotsProgress,
}

impl Walker<'_, '_> {
    /// Directory `ids`, examined (once) and, where something of it was lost, written anew.
    fn dir(&mut self, ids: &[Id]) -> Result<Option<Rc<Fixed>>> {
        let key = digest(ids);
        if let Some(d) = self.done.get(&key) {
            return Ok(d.clone());
        }
        self.progress.dirs.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = self.lease.as_deref_mut() {
            l.renew(self.repo.store())?;
        }
        self.note_used(ids);
        // First pass: whether anything below needs a change (sub-directories are examined and
        // remembered on the way).
        let mut changed = false;
        let cut = self.entries(ids, |w, node| {
            if node.kind() == NodeKind::Dir {
                changed |= w.dir(&node.subtree)?.is_some();
            } else if node.has_data() {
                changed |= w.file(&node).is_some();
            }
            Ok(())
        })?;
        if !changed && cut.is_none() {
            self.done.insert(key, None);
            return Ok(None);
        }
        // Second pass: the same entries again, changed ones replaced, into a new tree.
        let mut fixed = Fixed::default();
        let mut tree = TreeWriter::default();
        let chunker = self.repo.chunker();
        self.entries(ids, |w, mut node| {
            let name = node.name.clone();
            if node.kind() == NodeKind::Dir
                && let Some(sub) = w.dir(&node.subtree)?
            {
                node.subtree.clone_from(&sub.ids);
                node.repaired |= sub.kept.is_some();
                for (path, what) in &sub.problems {
                    fixed.problems.push((join(&name, path), what.clone()));
                }
                fixed.files += sub.files;
                fixed.zeroed += sub.zeroed;
                fixed.dirs += sub.dirs;
            } else if node.has_data()
                && let Some(f) = w.file(&node)
            {
                fixed.problems.push((name, f.describe()));
                fixed.files += 1;
                fixed.zeroed += f.zeroed;
                node = f.node;
            }
            tree.push(&chunker, &node, &mut |b| w.put_tree(b))
        })?;
        if let Some((kept, why)) = cut {
            fixed.kept = Some(kept);
            fixed.why = Some(why.to_string());
            fixed.dirs += 1;
            fixed.problems.push((
                Vec::new(),
                if kept == 0 {
                    format!("directory cannot be read ({why}): restores empty")
                } else {
                    format!(
                        "directory cannot be read past its first {kept} entries ({why}): restores with those"
                    )
                },
            ));
        }
        fixed.ids = tree.finish(&chunker, &mut |b| self.put_tree(b))?;
        let fixed = Some(Rc::new(fixed));
        self.done.insert(key, fixed.clone());
        Ok(fixed)
    }

    /// Call `each` with every entry of tree `ids` that can be read, in order; how many there
    /// were and why the rest cannot be read, when a blob of the tree is missing or damaged.
    fn entries(
        &mut self,
        ids: &[Id],
        mut each: impl FnMut(&mut Self, Node) -> Result<()>,
    ) -> Result<Option<(usize, Error)>> {
        let lost = |e: Error| match e.kind() {
            ErrorKind::Missing | ErrorKind::Corrupt => Ok(e),
            _ => Err(e),
        };
        let (repo, stored) = (self.repo, self.stored);
        let blobs = ids
            .iter()
            .copied()
            .map(move |id| match repo.index().get(&id) {
                Some(l) if !sound(stored, l.pack) => Err(Error::new(
                    ErrorKind::Missing,
                    format!("blob {} is in lost pack {}", id.short(), l.pack.id.short()),
                )),
                _ => repo.read_blob(&id),
            });
        let mut entries = match TreeEntries::new(Box::new(blobs)) {
            Ok(it) => it,
            Err(e) => return Ok(Some((0, lost(e)?))),
        };
        let mut kept = 0;
        for node in &mut entries {
            match node {
                Ok(n) => {
                    each(self, n)?;
                    kept += 1;
                }
                Err(e) => return Ok(Some((kept, lost(e)?))),
            }
        }
        Ok(None)
    }

    /// File `node` without its lost blobs, when any are lost.
    fn file(&mut self, node: &Node) -> Option<FileFix> {
        self.note_used(&node.content);
        let (index, stored) = (self.repo.index(), self.stored);
        let set_aside = self.set_aside;
        fix_file(node, |id| match index.get(id) {
            None => Blob::Lost(set_aside.get(id).copied()),
            Some(l) if sound(stored, l.pack) => Blob::Kept(u64::from(l.entry.raw_len)),
            Some(l) => Blob::Lost(Some(u64::from(l.entry.raw_len))),
        })
    }

    /// Remember the stored packs of `ids` (Object Lock upkeep).
    fn note_used(&mut self, ids: &[Id]) {
        for id in ids {
            if let Some(l) = self.repo.index().get(id)
                && sound(self.stored, l.pack)
            {
                self.used.insert(l.pack.id);
            }
        }
    }

    /// Store a tree blob (not in a dry run); its id. One the index lists in a lost pack is
    /// stored again.
    fn put_tree(&mut self, bytes: &[u8]) -> Result<Id> {
        let id = self.repo.keys().blob_id(bytes);
        if let Some(w) = self.writer.as_mut() {
            match self.repo.index().get(&id) {
                Some(l) if !sound(self.stored, l.pack) && !w.has_added(&id) => {
                    w.add_unchecked(BlobType::Tree, id, bytes)?;
                }
                _ => {
                    w.add(BlobType::Tree, id, bytes)?;
                }
            }
        }
        Ok(id)
    }
}

/// Whether `pack` is stored at the size the index has for it.
/// The plaintext length of every blob listed by the header of a pack under `damaged/` (set aside
/// by `repair index --read-all-packs`), where that header still authenticates.
///
/// # Errors
/// Storage errors; a damaged header only leaves its pack's blobs out.
fn set_aside_lengths(repo: &Repository) -> Result<HashMap<Id, u64>> {
    let mut lens = HashMap::new();
    for (name, size) in repo.store().list(crate::backend::names::DAMAGED)? {
        match super::read_header(repo, &name, size)? {
            Ok((_, entries)) => lens.extend(entries.iter().map(|e| (e.id, u64::from(e.raw_len)))),
            Err(e) => tracing::debug!("{name}: its header does not open: {e}"),
        }
    }
    Ok(lens)
}

fn sound(stored: &HashMap<Id, u64>, pack: &PackInfo) -> bool {
    stored.get(&pack.id) == Some(&pack.size)
}

/// `dir/path`, or `dir` for the directory itself.
fn join(dir: &[u8], path: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !path.is_empty() {
        p.push(b'/');
        p.extend_from_slice(path);
    }
    p
}

/// A key for a tree's blob list.
fn digest(ids: &[Id]) -> Id {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(&id.0);
    }
    Id(*h.finalize().as_bytes())
}

/// What the repair knows of one data blob of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blob {
    /// Stored, this long.
    Kept(u64),
    /// Lost: its length when the index still knows it (its pack is gone but the index was not
    /// repaired yet), so its place in the file stays known.
    Lost(Option<u64>),
}

impl Blob {
    fn len(self) -> Option<u64> {
        match self {
            Self::Kept(l) | Self::Lost(Some(l)) => Some(l),
            Self::Lost(None) => None,
        }
    }
}

/// A file node repaired by [`fix_file`].
#[derive(Debug)]
pub(crate) struct FileFix {
    /// The node with its content and holes made consistent, marked `repaired`.
    pub node: Node,
    /// Blobs lost.
    pub missing: usize,
    /// Blobs of the file.
    pub blobs: usize,
    /// Blobs still stored but dropped: their place in the file is lost with their neighbours.
    pub dropped: usize,
    /// Ranges that now read as zeros, and the span `[from, to)` they cover.
    pub ranges: usize,
    pub from: u64,
    pub to: u64,
    /// Bytes of data (not holes already) in those ranges.
    pub zeroed: u64,
}

impl FileFix {
    fn describe(&self) -> String {
        let what = if self.missing == 0 {
            format!("its {} blobs do not fill its size", self.blobs)
        } else {
            format!("{} of its {} blobs lost", self.missing, self.blobs)
        };
        let mut s = if self.ranges == 1 {
            format!(
                "{what}: bytes {}..{} ({} of data) read as zeros",
                self.from,
                self.to,
                HumanBytes(self.zeroed)
            )
        } else {
            format!(
                "{what}: {} in {} ranges between bytes {} and {} read as zeros",
                HumanBytes(self.zeroed),
                self.ranges,
                self.from,
                self.to
            )
        };
        if self.dropped > 0 {
            let _ = write!(
                s,
                " ({} stored blobs in that range dropped: their place is lost)",
                self.dropped
            );
        }
        s
    }
}

/// File `node` with its lost blobs made zeros, or `None` when every blob is stored and they fill
/// its data exactly.
///
/// Blobs fill the file's data regions (the parts that are not holes) in order, each inside one
/// region, and only the index (or a set-aside pack's header) knows their lengths. Placed from the start up to the first lost
/// blob of unknown length, and from the end down to the last one, every blob keeps its offset,
/// and each lost blob of known length becomes a hole of its own; what lies between the two
/// (lost blobs of unknown length, and stored blobs whose place depends on them) becomes one
/// hole. Blobs that do not fit (a tree that disagrees with the index) count as lost there.
pub(crate) fn fix_file(node: &Node, blob: impl Fn(&Id) -> Blob) -> Option<FileFix> {
    let regions = node.data_regions();
    let blobs: Vec<Blob> = node
        .content
        .iter()
        .map(|id| match blob(id) {
            // No blob is empty.
            Blob::Kept(0) | Blob::Lost(Some(0)) => Blob::Lost(None),
            b => b,
        })
        .collect();
    // Lost ranges placed exactly.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    // From the start.
    let (mut r, mut pos, mut head) = (0, regions.first().map_or(0, |g| g.0), 0);
    while let Some(len) = blobs.get(head).and_then(|b| b.len()) {
        let Some(&(off, rlen)) = regions.get(r) else {
            break;
        };
        if pos == off + rlen {
            r += 1;
            if let Some(&(next, _)) = regions.get(r) {
                pos = next;
            }
            continue;
        }
        if pos + len > off + rlen {
            break;
        }
        if blobs[head] != Blob::Kept(len) {
            ranges.push((pos, len));
        }
        pos += len;
        head += 1;
    }
    let from = pos;
    // From the end, down to where the start left off.
    let (mut r, mut pos, mut tail) = (
        regions.len(),
        regions.last().map_or(0, |g| g.0 + g.1),
        blobs.len(),
    );
    while tail > head {
        let Some(len) = blobs[tail - 1].len() else {
            break;
        };
        let Some(&(off, _)) = r.checked_sub(1).and_then(|i| regions.get(i)) else {
            break;
        };
        if pos == off {
            r -= 1;
            if let Some(&(prev, plen)) = r.checked_sub(1).and_then(|i| regions.get(i)) {
                pos = prev + plen;
            }
            continue;
        }
        match pos.checked_sub(len) {
            Some(start) if start >= off && start >= from => {
                if blobs[tail - 1] != Blob::Kept(len) {
                    ranges.push((start, len));
                }
                pos = start;
                tail -= 1;
            }
            _ => break,
        }
    }
    let to = pos.max(from);
    if to > from {
        ranges.push((from, to - from));
    }
    if ranges.is_empty() && head == blobs.len() {
        return None;
    }
    let ranges = merge(ranges);
    // Data bytes in the lost ranges: both lists are sorted and disjoint, walked once.
    let mut zeroed = 0;
    let mut next = regions.iter().peekable();
    for &(a, l) in &ranges {
        while next.next_if(|&&(off, len)| off + len <= a).is_some() {}
        for &(off, len) in next.clone().take_while(|&&(off, _)| off < a + l) {
            zeroed += (off + len).min(a + l) - off.max(a);
        }
    }
    let mut holes = node.holes.clone();
    holes.extend_from_slice(&ranges);
    let kept = |i: usize| matches!(blobs[i], Blob::Kept(_));
    let mut fixed = node.clone();
    fixed.content = (0..head)
        .chain(tail..blobs.len())
        .filter(|&i| kept(i))
        .map(|i| node.content[i])
        .collect();
    fixed.holes = merge(holes);
    fixed.repaired = true;
    Some(FileFix {
        node: fixed,
        missing: blobs.iter().filter(|b| !matches!(b, Blob::Kept(_))).count(),
        blobs: blobs.len(),
        dropped: (head..tail).filter(|&i| kept(i)).count(),
        ranges: ranges.len(),
        from: ranges.first().map_or(from, |g| g.0),
        to: ranges.iter().map(|g| g.0 + g.1).max().unwrap_or(to),
        zeroed,
    })
}

/// `(offset, length)` ranges sorted, with those that overlap or touch made one.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (off, len) in v {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => last.1 = last.1.max(off + len - last.0),
            _ => out.push((off, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where restore puts each blob (as `restore::plan` does), or `None` when they do not fit.
    fn layout(node: &Node, len: &HashMap<Id, u64>) -> Option<Vec<(Id, u64)>> {
        let mut out = Vec::new();
        let mut blobs = node.content.iter();
        for (off, rlen) in node.data_regions() {
            let mut pos = off;
            while pos < off + rlen {
                let id = blobs.next()?;
                let l = len[id];
                if pos + l > off + rlen {
                    return None;
                }
                out.push((*id, pos));
                pos += l;
            }
        }
        blobs.next().is_none().then_some(out)
    }

    /// A file of `size` with `holes` and blobs of `lens`, filling the rest in order.
    fn file(size: u64, holes: &[(u64, u64)], lens: &[u64]) -> (Node, HashMap<Id, u64>) {
        let mut n = Node {
            name: b"f".to_vec(),
            kind: Some(NodeKind::File),
            size,
            holes: holes.to_vec(),
            ..Node::default()
        };
        let mut len = HashMap::new();
        for (i, &l) in lens.iter().enumerate() {
            let id = Id([i as u8 + 1; 32]);
            n.content.push(id);
            len.insert(id, l);
        }
        assert!(layout(&n, &len).is_some(), "test file is consistent");
        (n, len)
    }

    /// Blobs `lost` of `n` lost with their lengths unknown (the index was repaired).
    fn repair(n: &Node, len: &HashMap<Id, u64>, lost: &[usize]) -> Option<FileFix> {
        repair_knowing(n, len, lost, &[])
    }

    /// Blobs `lost` lost with their lengths unknown, `known` lost with their lengths known.
    fn repair_knowing(
        n: &Node,
        len: &HashMap<Id, u64>,
        lost: &[usize],
        known: &[usize],
    ) -> Option<FileFix> {
        let lost: HashSet<Id> = lost.iter().map(|&i| n.content[i]).collect();
        let known: HashSet<Id> = known.iter().map(|&i| n.content[i]).collect();
        fix_file(n, |id| {
            if lost.contains(id) {
                Blob::Lost(None)
            } else if known.contains(id) {
                Blob::Lost(Some(len[id]))
            } else {
                Blob::Kept(len[id])
            }
        })
    }

    /// Every blob that stays is where it was before, and restore accepts the result.
    fn assert_kept_in_place(n: &Node, f: &FileFix, len: &HashMap<Id, u64>) {
        let before: HashMap<Id, u64> = layout(n, len).unwrap().into_iter().collect();
        let after = layout(&f.node, len).expect("the repaired file restores");
        for (id, pos) in after {
            assert_eq!(before[&id], pos, "blob {id:?} moved");
        }
        assert_eq!(f.node.size, n.size);
        assert!(f.node.repaired);
    }

    #[test]
    fn a_whole_file_is_left_alone() {
        let (n, len) = file(100, &[(40, 10)], &[15, 25, 30, 20]);
        assert!(repair(&n, &len, &[]).is_none());
    }

    #[test]
    fn lost_blobs_become_zeros_in_place() {
        // Regions [0,40) [50,100): blobs 0..15 15..40 | 50..80 80..100.
        let (n, len) = file(100, &[(40, 10)], &[15, 25, 30, 20]);
        let f = repair(&n, &len, &[1]).unwrap();
        assert_eq!(
            (f.from, f.to, f.zeroed, f.missing, f.dropped),
            (15, 50, 25, 1, 0)
        );
        assert_eq!(f.node.holes, vec![(15, 35)]);
        assert_kept_in_place(&n, &f, &len);

        // Lost on both sides of the hole: the stored blob between them has no known place.
        let (n, len) = file(120, &[(40, 10)], &[15, 25, 30, 20, 20]);
        let f = repair(&n, &len, &[1, 3]).unwrap();
        assert_eq!(
            (f.from, f.to, f.zeroed, f.missing, f.dropped),
            (15, 100, 75, 2, 1)
        );
        assert_eq!(f.node.content, vec![n.content[0], n.content[4]]);
        assert_kept_in_place(&n, &f, &len);

        // Everything lost: the whole file is a hole.
        let f = repair(&n, &len, &[0, 1, 2, 3, 4]).unwrap();
        assert_eq!(f.node.holes, vec![(0, 120)]);
        assert!(f.node.content.is_empty());
        assert_eq!(f.zeroed, 110);
        assert_kept_in_place(&n, &f, &len);

        // The first and the last.
        let f = repair(&n, &len, &[0]).unwrap();
        assert_eq!((f.from, f.to), (0, 15));
        assert_kept_in_place(&n, &f, &len);
        let f = repair(&n, &len, &[4]).unwrap();
        assert_eq!((f.from, f.to), (100, 120));
        assert_kept_in_place(&n, &f, &len);
    }

    #[test]
    fn lost_blobs_of_known_length_become_holes_of_their_own() {
        // Regions [0,40) [50,120): blobs 0..15 15..40 | 50..80 80..100 100..120. Lost 1 and 3
        // with their lengths known: the stored blob between them stays.
        let (n, len) = file(120, &[(40, 10)], &[15, 25, 30, 20, 20]);
        let f = repair_knowing(&n, &len, &[], &[1, 3]).unwrap();
        assert_eq!((f.missing, f.dropped, f.ranges, f.zeroed), (2, 0, 2, 45));
        assert_eq!(f.node.holes, vec![(15, 35), (80, 20)]);
        assert_eq!(
            f.node.content,
            vec![n.content[0], n.content[2], n.content[4]]
        );
        assert_kept_in_place(&n, &f, &len);
        assert!(
            f.describe().contains("2 ranges between bytes 15 and 100"),
            "{}",
            f.describe()
        );
        // One of unknown length among them: the span between it and its neighbours of known
        // place is one hole, and the rest stays exact.
        let f = repair_knowing(&n, &len, &[3], &[1]).unwrap();
        assert_eq!(f.node.holes, vec![(15, 35), (80, 20)]);
        assert_kept_in_place(&n, &f, &len);
    }

    #[test]
    fn blobs_that_do_not_fit_their_file_are_dropped() {
        // The index says blob 1 is longer than its tree left room for: the first blob that no
        // longer fits (from either end) is where the loss starts.
        let (n, mut len) = file(100, &[], &[40, 30, 30]);
        len.insert(n.content[1], 35);
        let f = fix_file(&n, |id| Blob::Kept(len[id])).unwrap();
        assert_eq!((f.from, f.to, f.missing, f.dropped), (75, 100, 0, 1));
        assert_eq!(f.node.content, vec![n.content[0], n.content[1]]);
        assert!(layout(&f.node, &len).is_some());
        // Fewer blobs than the size: the rest is zeros.
        let (mut n, len) = file(100, &[], &[40, 30, 30]);
        n.size = 130;
        let f = fix_file(&n, |id| Blob::Kept(len[id])).unwrap();
        assert_eq!((f.from, f.to, f.zeroed), (100, 130, 30));
        assert!(layout(&f.node, &len).is_some());
        // Blobs in a file with no data left: dropped.
        n.size = 0;
        let f = fix_file(&n, |id| Blob::Kept(len[id])).unwrap();
        assert!(f.node.content.is_empty() && f.node.holes.is_empty());
    }

    #[test]
    fn random_losses_keep_every_known_blob_in_place() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..2000 {
            let mut lens = Vec::new();
            let mut holes = Vec::new();
            let mut pos = 0;
            for _ in 0..next(5) {
                for _ in 0..=next(4) {
                    let l = 1 + next(50);
                    lens.push(l);
                    pos += l;
                }
                let h = 1 + next(30);
                holes.push((pos, h));
                pos += h;
            }
            let (n, len) = file(pos, &holes, &lens);
            let lost: Vec<usize> = (0..lens.len()).filter(|_| next(4) == 0).collect();
            let (known, unknown): (Vec<usize>, Vec<usize>) =
                lost.iter().partition(|_| next(2) == 0);
            match repair_knowing(&n, &len, &unknown, &known) {
                None => assert!(lost.is_empty()),
                Some(f) => {
                    assert!(!lost.is_empty());
                    assert_eq!(f.missing, lost.len());
                    if unknown.is_empty() {
                        assert_eq!(f.dropped, 0, "every blob's place is known");
                        let lost_bytes: u64 = known.iter().map(|&i| lens[i]).sum();
                        assert_eq!(f.zeroed, lost_bytes);
                    }
                    assert_kept_in_place(&n, &f, &len);
                    let kept = f.node.content.len() + f.missing + f.dropped;
                    assert_eq!(kept, lens.len());
                }
            }
        }
    }
}
