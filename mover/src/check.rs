//! `check`: verify that every snapshot is restorable; with `read_data`, that every stored byte
//! authenticates. Every problem names the object it was found in.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::names;
use crate::error::Result;
use crate::id::Id;
use crate::index::{Index, PackRecord};
use crate::pack::{self, BlobEntry};
use crate::repo::Repository;
use crate::tree::NodeKind;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems, each naming an object. Empty means the repository is healthy.
    pub errors: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs named by the index.
    pub packs: usize,
    /// Packs in storage that no index names (left by an interrupted backup; prune removes them).
    pub unindexed_packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Packs read in full (with `read_data`).
    pub packs_read: usize,
}

/// Live counter of packs read.
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// Packs verified so far.
    pub packs_read: AtomicU64,
}

/// Check the repository.
///
/// # Errors
/// Only when storage cannot be listed at all; every damaged object is reported in [`CheckReport`].
pub fn check(
    repo: &mut Repository,
    read_data: bool,
    progress: &CheckProgress,
) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    for (id, slot) in repo.key_slots()? {
        if let Err(e) = slot {
            rep.errors.push(format!("keys/{id}: {e}"));
        }
    }
    // Indexes: read each on its own so one damaged object does not hide the others.
    let mut records: Vec<PackRecord> = Vec::new();
    for id in repo.store().list_ids(names::INDEX)? {
        match repo.read_index_object(&id) {
            Ok(r) => records.extend(r),
            Err(e) => rep.errors.push(format!("index/{id}: {e}")),
        }
    }
    let expected: HashMap<Id, Vec<BlobEntry>> =
        records.iter().map(|r| (r.id, r.blobs.clone())).collect();
    let idx = Index::from_records(records);
    rep.packs = idx.packs().len();
    rep.blobs = idx.len();
    let stored: HashSet<Id> = repo.store().list_ids(names::DATA)?.into_iter().collect();
    for p in idx.packs() {
        let name = names::pack(&p.id);
        if !stored.contains(&p.id) {
            rep.errors
                .push(format!("{name}: missing (the index names it)"));
            continue;
        }
        match repo.store().size(&name) {
            Ok(n) if n == p.size => {}
            Ok(n) => rep
                .errors
                .push(format!("{name}: size {n}, the index says {}", p.size)),
            Err(e) => rep.errors.push(format!("{name}: {e}")),
        }
    }
    rep.unindexed_packs = stored.iter().filter(|id| !idx.has_pack(id)).count();
    repo.set_index(idx);

    // Snapshots and every tree they reach.
    let mut seen_trees: HashSet<Vec<Id>> = HashSet::new();
    for id in repo.store().list_ids(names::SNAPSHOTS)? {
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                rep.errors.push(format!("snapshots/{id}: {e}"));
                continue;
            }
        };
        rep.snapshots += 1;
        let mut stack = vec![("/".to_owned(), snap.tree.clone())];
        while let Some((path, ids)) = stack.pop() {
            if !seen_trees.insert(ids.clone()) {
                continue;
            }
            let tree = match repo.read_tree_entries(&ids) {
                Ok(t) => t,
                Err(e) => {
                    rep.errors
                        .push(format!("snapshot {} tree {path}: {e}", id.short()));
                    continue;
                }
            };
            for n in tree {
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        rep.errors
                            .push(format!("snapshot {} tree {path}: {e}", id.short()));
                        break;
                    }
                };
                let p = format!(
                    "{}{}",
                    if path == "/" {
                        "/".to_owned()
                    } else {
                        format!("{path}/")
                    },
                    n.display_name()
                );
                if n.kind() == NodeKind::Dir {
                    stack.push((p, n.subtree));
                } else if let Some(missing) = n.content.iter().find(|b| !repo.index().contains(b)) {
                    rep.errors.push(format!(
                        "snapshot {} file {p}: blob {} is not in any index",
                        id.short(),
                        missing.short()
                    ));
                }
            }
        }
    }

    if read_data {
        let packs: Vec<Id> = repo.index().packs().iter().map(|p| p.id).collect();
        let next = AtomicU64::new(0);
        let errors = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let repo = &*repo;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(id) = packs.get(i) else { break };
                        if let Err(e) =
                            verify_pack(repo, id, expected.get(id).map_or(&[][..], Vec::as_slice))
                        {
                            errors
                                .lock()
                                .expect("lock")
                                .push(format!("{}: {e}", names::pack(id)));
                        }
                        progress.packs_read.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        rep.packs_read = packs.len();
        rep.errors.extend(errors.into_inner().expect("lock"));
    }
    Ok(rep)
}

/// Read a whole pack: its name must be its hash, its header must authenticate and agree with the
/// index, and every blob must authenticate, decompress and match its id.
fn verify_pack(
    repo: &Repository,
    id: &Id,
    indexed: &[BlobEntry],
) -> std::result::Result<(), String> {
    let bytes = repo
        .store()
        .read(&names::pack(id))
        .map_err(|e| e.to_string())?;
    if Id::of_object(&bytes) != *id {
        return Err("content does not match its name (damaged)".into());
    }
    let (salt, entries) =
        pack::read_header(repo.keys(), &bytes).map_err(|e| format!("header: {e}"))?;
    let mut a = entries.clone();
    let mut b = indexed.to_vec();
    a.sort_by_key(|e| e.offset);
    b.sort_by_key(|e| e.offset);
    if a != b {
        return Err("header disagrees with the index".into());
    }
    for e in &entries {
        let ct = bytes[e.offset as usize..(e.offset + e.length) as usize].to_vec();
        pack::open_blob(repo.keys(), &salt, e, ct)
            .map_err(|err| format!("blob {}: {err}", e.id.short()))?;
    }
    Ok(())
}
