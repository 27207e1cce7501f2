//! `copy`: an incremental export of snapshots into another repository (offsite).
//!
//! The target has its own master secret, so the same bytes have a different blob id there
//! (ids are keyed hashes) and trees must be rewritten with the target's ids. Data chunks keep their
//! boundaries: each is read from the source once, its target id computed, and it is sent only
//! when the target lacks it. Three things keep a repeated copy cheap:
//!
//! - a copied snapshot records its source id (`original`), so it is never copied twice;
//! - a snapshot whose parent was copied before maps the parent's chunks through the two trees
//!   (same names, same chunk lists), so unchanged files cost no reads;
//! - chunks met earlier in the same run are mapped from memory.
//!
//! Each snapshot is committed like a backup (packs, index, then the snapshot), so an interrupted
//! copy leaves the target consistent and the next run resumes, re-sending at most the unindexed
//! packs of the snapshot it was copying.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::blobwriter::BlobWriter;
use crate::chunker::Chunker;
use crate::crypto::ObjectKind;
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::pack::BlobType;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::TreeWriter;

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Snapshots written to the target.
    pub snapshots_copied: u64,
    /// Snapshots the target already had.
    pub snapshots_skipped: u64,
    /// Bytes stored in the target (packs, index objects, snapshots).
    pub bytes_transferred: u64,
    /// Blobs stored in the target.
    pub blobs_transferred: u64,
    /// Bytes of source blobs read.
    pub bytes_read: u64,
    /// Source id → target id of each snapshot copied by this run.
    pub copied: Vec<(Id, Id)>,
}

struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    /// Source data blob id → target id.
    data: HashMap<Id, Id>,
    /// Source tree blob ids → target tree blob ids.
    trees: HashMap<Vec<Id>, Vec<Id>>,
    bytes_read: u64,
    /// Target packs the copies reuse (their Object Lock retention is extended).
    used_packs: HashSet<Id>,
    /// The target's tree chunker.
    chunker: Chunker,
}

impl Copier<'_> {
    /// Remember the target pack of a reused blob.
    fn reuse(&mut self, id: &Id) {
        if let Some(l) = self.dst.index().get(id) {
            self.used_packs.insert(l.pack.id);
        }
    }

    fn data_blob(&mut self, w: &mut BlobWriter<'_>, s: Id) -> Result<Id> {
        if let Some(&t) = self.data.get(&s)
            && w.has(&t)
        {
            self.reuse(&t);
            return Ok(t);
        }
        let plain = self.src.read_blob(&s)?;
        self.bytes_read += plain.len() as u64;
        let t = self.dst.keys().blob_id(&plain);
        if !w.add(BlobType::Data, t, &plain)? {
            self.reuse(&t);
        }
        self.data.insert(s, t);
        Ok(t)
    }

    /// Copy the tree made of source blobs `ids`, and everything under it. Its entries are read,
    /// and the target's tree blobs written, as they come: a directory of any size holds about
    /// one blob of each.
    fn tree(&mut self, w: &mut BlobWriter<'_>, ids: &[Id]) -> Result<Vec<Id>> {
        if let Some(t) = self.trees.get(ids).cloned()
            && t.iter().all(|i| w.has(i))
        {
            for i in &t {
                self.reuse(i);
            }
            return Ok(t);
        }
        let (src, chunker) = (self.src, self.chunker.clone());
        let mut out = TreeWriter::default();
        for n in src.read_tree_entries(ids)? {
            let mut n = n?;
            for c in &mut n.content {
                *c = self.data_blob(w, *c)?;
            }
            if !n.subtree.is_empty() {
                n.subtree = self.tree(w, &n.subtree)?;
            }
            out.push(&chunker, &n, &mut |b| self.tree_blob(w, b))?;
        }
        let out = out.finish(&chunker, &mut |b| self.tree_blob(w, b))?;
        self.trees.insert(ids.to_vec(), out.clone());
        Ok(out)
    }

    fn tree_blob(&mut self, w: &mut BlobWriter<'_>, chunk: &[u8]) -> Result<Id> {
        let id = self.dst.keys().blob_id(chunk);
        if !w.add(BlobType::Tree, id, chunk)? {
            self.reuse(&id);
        }
        Ok(id)
    }

    /// Learn the chunk mapping from a snapshot already copied: its source and target trees have
    /// the same shape, so equal positions hold the same bytes. Only trees are read, an entry at a
    /// time; a pair of trees that differ anywhere in their names or length teaches nothing.
    fn learn(&mut self, src_tree: &[Id], dst_tree: &[Id]) -> Result<()> {
        let mut stack = vec![(src_tree.to_vec(), dst_tree.to_vec())];
        let mut seen = HashSet::new();
        while let Some((s, d)) = stack.pop() {
            if !seen.insert(s.clone()) {
                continue;
            }
            self.trees.insert(s.clone(), d.clone());
            let mut st = self.src.read_tree_entries(&s)?;
            let mut dt = self.dst.read_tree_entries(&d)?;
            let mut chunks = Vec::new();
            let mut subtrees = Vec::new();
            let same = loop {
                let (a, b) = match (st.next().transpose()?, dt.next().transpose()?) {
                    (None, None) => break true,
                    (Some(a), Some(b)) if a.name == b.name => (a, b),
                    _ => break false,
                };
                if a.content.len() == b.content.len() {
                    chunks.extend(a.content.into_iter().zip(b.content));
                }
                if !a.subtree.is_empty() && !b.subtree.is_empty() {
                    subtrees.push((a.subtree, b.subtree));
                }
            };
            if same {
                self.data.extend(chunks);
                stack.extend(subtrees);
            }
        }
        Ok(())
    }
}

/// Copy `which` snapshots (all when empty) from `src` to `dst`, oldest first. `dst` must have
/// its index loaded for writing ([`Repository::load_index_for_writing`]), `src` its index.
///
/// # Errors
/// `InvalidInput` for unknown snapshots or copying a repository onto itself; damaged source data
/// (nothing damaged is copied: every blob is authenticated on the way) or storage errors.
pub fn copy(src: &Repository, dst: &Repository, which: &[Id]) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(Error::invalid(
            "the source and target are the same repository",
        ));
    }
    let mut report = CopyReport::default();
    // What the target has: source id → target snapshot.
    let mut have: HashMap<Id, (Id, Snapshot)> = HashMap::new();
    for (id, s) in dst.snapshots()? {
        if let Some(o) = s.original {
            have.insert(o, (id, s));
        }
    }
    let mut snaps = src.snapshots()?;
    if !which.is_empty() {
        let want: HashSet<&Id> = which.iter().collect();
        snaps.retain(|(id, _)| want.contains(id));
    }
    let mut c = Copier {
        src,
        dst,
        data: HashMap::new(),
        trees: HashMap::new(),
        bytes_read: 0,
        used_packs: HashSet::new(),
        chunker: dst.chunker(),
    };
    let mut w = BlobWriter::new(dst)?;
    for (sid, snap) in snaps {
        if have.contains_key(&sid) {
            report.snapshots_skipped += 1;
            continue;
        }
        // A parent copied by an earlier run: learn its mapping (one copied in this run is
        // already in memory, and its trees are not in the target's loaded index).
        if let Some(p) = snap.parent
            && !report.copied.iter().any(|(s, _)| *s == p)
            && let Some((_, copied)) = have.get(&p)
        {
            let parent = src.load_snapshot(&p);
            match parent {
                Ok(ps) => c.learn(&ps.tree, &copied.tree)?,
                Err(e) if e.kind() == ErrorKind::Missing => {}
                Err(e) => return Err(e),
            }
        }
        let tree = c.tree(&mut w, &snap.tree)?;
        // Commit point: the snapshot's blobs are stored and indexed before it appears.
        w.flush()?;
        let mut out = snap.clone();
        out.tree = tree;
        out.parent = snap.parent.and_then(|p| have.get(&p).map(|(t, _)| *t));
        out.original = Some(sid);
        let json = serde_json::to_vec(&out).expect("snapshot serializes");
        let (tid, n) = dst.save_object(ObjectKind::Snapshot, &json)?;
        dst.store().sync()?;
        report.bytes_transferred += n;
        report.snapshots_copied += 1;
        report.copied.push((sid, tid));
        have.insert(sid, (tid, out));
    }
    report.bytes_read = c.bytes_read;
    let (bytes, blobs) = w.finish()?;
    report.bytes_transferred += bytes;
    report.blobs_transferred += blobs;
    crate::retention::upkeep(dst, &c.used_packs)?;
    Ok(report)
}
