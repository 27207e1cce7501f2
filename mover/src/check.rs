//! `check`: verify that every snapshot is restorable; with `read_data`, that every stored byte
//! authenticates. Every problem names the object it was found in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::backend::names;
use crate::crypto::SALT_LEN;
use crate::error::Result;
use crate::id::Id;
use crate::index::{IndexBuilder, PackInfo};
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
    // Indexes: read each on its own so one damaged object does not hide the others, and add
    // them to the index one object at a time. What each lists of a pack is kept as a digest
    // (32 bytes a pack, not its entries) for `read_data` to compare with the pack's header.
    let mut builder = IndexBuilder::default();
    // Pack → (digest of its listing, the index object that listed it first).
    let mut listed: HashMap<Id, (Id, Id)> = HashMap::new();
    for id in repo.store().list_ids(names::INDEX)? {
        match repo.read_index_object(&id) {
            Ok(records) => {
                for r in records {
                    let d = listing_digest(r.size, &r.salt, r.blobs.clone());
                    let (first, by) = *listed.entry(r.id).or_insert((d, id));
                    if first != d {
                        rep.errors.push(format!(
                            "{}: index/{by} and index/{id} list it differently",
                            names::pack(&r.id)
                        ));
                    }
                    builder.add(&r);
                }
            }
            Err(e) => rep.errors.push(format!("index/{id}: {e}")),
        }
    }
    let idx = builder.finish();
    rep.packs = idx.packs().len();
    rep.blobs = idx.len();
    // One listing gives every pack's size (not a request per pack).
    let stored: HashMap<Id, u64> = repo
        .store()
        .list(names::DATA)?
        .into_iter()
        .filter_map(|(n, size)| Some((n.rsplit('/').next()?.parse().ok()?, size)))
        .collect();
    for p in idx.packs() {
        let name = names::pack(&p.id);
        match stored.get(&p.id) {
            None => rep
                .errors
                .push(format!("{name}: missing (the index names it)")),
            Some(&n) if n != p.size => rep
                .errors
                .push(format!("{name}: size {n}, the index says {}", p.size)),
            Some(_) => {}
        }
    }
    rep.unindexed_packs = stored.keys().filter(|id| !idx.has_pack(id)).count();
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
        // A pack missing from storage is reported above already.
        let packs: Vec<&PackInfo> = repo
            .index()
            .packs()
            .iter()
            .filter(|p| stored.contains_key(&p.id))
            .collect();
        rep.packs_read = read_packs(repo, &packs, &listed, progress, &mut rep.errors);
    }
    Ok(rep)
}

/// Bytes of whole packs each reader keeps started, the one it verifies next included, on a
/// remote store: with 16 MiB packs, each reader verifies one while the next one's read is in
/// flight, 64 MiB of packs for two readers.
const AHEAD: u64 = 24 << 20;
/// Packs each reader keeps started ahead at most (small packs: tree packs, a last pack).
const AHEAD_PACKS: usize = 8;

/// Read and verify every indexed pack, one reader per core, each keeping its next packs' reads
/// in flight on a remote store. Returns the number of packs read; adds a line to `errors` for
/// each damaged one.
fn read_packs(
    repo: &Repository,
    packs: &[&PackInfo],
    listed: &HashMap<Id, (Id, Id)>,
    progress: &CheckProgress,
    errors: &mut Vec<String>,
) -> usize {
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let ahead = if repo.store().is_remote() { AHEAD } else { 0 };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut pending = VecDeque::new();
                let mut pending_bytes = 0;
                // Pack buffers, recycled.
                let mut free: Vec<Vec<u8>> = Vec::new();
                loop {
                    while pending.is_empty()
                        || (pending_bytes < ahead && pending.len() <= AHEAD_PACKS)
                    {
                        let Some(&p) = packs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let buf = free.pop().unwrap_or_default();
                        let read =
                            repo.store()
                                .start_read_into(&names::pack(&p.id), 0, p.size, buf);
                        pending.push_back((p, read));
                        pending_bytes += p.size;
                    }
                    let Some((p, read)) = pending.pop_front() else {
                        break;
                    };
                    pending_bytes -= p.size;
                    let r = read
                        .wait()
                        .map_err(|e| e.to_string())
                        .and_then(|mut bytes| {
                            let r =
                                verify_pack(repo, p, &mut bytes, listed.get(&p.id).map(|l| &l.0));
                            free.push(bytes);
                            r
                        });
                    if let Err(e) = r {
                        found
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(format!("{}: {e}", names::pack(&p.id)));
                    }
                    progress.packs_read.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap_or_else(PoisonError::into_inner);
    found.sort();
    errors.extend(found);
    packs.len()
}

/// What an index object says of a pack, as one digest: its size, its salt and its blob entries
/// in pack order.
fn listing_digest(size: u64, salt: &[u8; SALT_LEN], mut entries: Vec<BlobEntry>) -> Id {
    entries.sort_by_key(|e| (e.offset, e.id));
    let mut b = Vec::with_capacity(8 + SALT_LEN + entries.len() * pack::ENTRY_LEN);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(salt);
    for e in &entries {
        e.encode(&mut b);
    }
    Id::of_object(&b)
}

/// Verify a whole pack: its name must be its hash, its header must authenticate and agree with
/// the index (`listed`), and every blob must authenticate, decompress and match its id. Blobs
/// are opened in place, with the pack's cipher made once.
fn verify_pack(
    repo: &Repository,
    p: &PackInfo,
    bytes: &mut [u8],
    listed: Option<&Id>,
) -> std::result::Result<(), String> {
    if Id::of_object(bytes) != p.id {
        return Err("content does not match its name (damaged)".into());
    }
    let keys = repo.keys();
    let (salt, entries) = pack::read_header(keys, bytes).map_err(|e| format!("header: {e}"))?;
    if listed != Some(&listing_digest(bytes.len() as u64, &salt, entries.clone())) {
        return Err("header disagrees with the index".into());
    }
    let cipher = keys.object_cipher(&salt);
    for e in &entries {
        // read_header checked that every entry lies inside the pack.
        let start = e.offset as usize;
        let ct = &mut bytes[start..start + e.length as usize];
        pack::open_blob_in(keys, &cipher, e, ct)
            .map_err(|err| format!("blob {}: {err}", e.id.short()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ObjectKind;
    use crate::index::PackRecord;
    use crate::{BackupOptions, InitOptions, Location, Progress, Secret};

    fn errors(repo: &mut Repository, read_data: bool) -> Vec<String> {
        check(repo, read_data, &CheckProgress::default())
            .unwrap()
            .errors
    }

    /// An index object that authenticates but lists a pack's blobs (or its salt) otherwise than
    /// the pack's header does is named: by `check` when another index object lists the pack
    /// right, by `check --read-data` when it is the only one.
    #[test]
    fn an_index_that_disagrees_with_a_pack_header_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for i in 0..4u8 {
            std::fs::write(src.join(format!("f{i}")), vec![i; 10_000 + usize::from(i)]).unwrap();
        }
        let loc = Location::Local(dir.path().join("repo"));
        let secret = Secret::KeyFile([7; 32].into());
        let mut repo = Repository::init(&loc, &secret, &InitOptions::default()).unwrap();
        crate::backup(
            &repo,
            std::slice::from_ref(&src),
            &BackupOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(errors(&mut repo, true), Vec::<String>::new());

        let good = repo.store().list_ids(names::INDEX).unwrap();
        let records: Vec<PackRecord> = good
            .iter()
            .flat_map(|id| repo.read_index_object(id).unwrap())
            .collect();
        let data = records
            .iter()
            .find(|r| r.blobs.iter().all(|b| b.blob_type == pack::BlobType::Data))
            .expect("a data pack")
            .clone();
        let pack = names::pack(&data.id);
        let mut wrong_blobs = data.clone();
        wrong_blobs.blobs[0].raw_len += 1;
        let mut wrong_salt = data.clone();
        wrong_salt.salt[0] ^= 1;
        for bad in [wrong_blobs, wrong_salt] {
            let (bad_id, _) = repo
                .save_object(ObjectKind::Index, &crate::index::encode(&[bad]))
                .unwrap();
            let e = errors(&mut repo, false);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&pack) && e[0].contains(&format!("index/{bad_id}")),
                "{e:?}"
            );
            // With the right listing gone, only reading the pack shows the disagreement.
            let saved: Vec<(String, Vec<u8>)> = good
                .iter()
                .map(|id| {
                    let name = format!("{}{id}", names::INDEX);
                    let b = repo.store().read(&name).unwrap();
                    repo.store().delete(&name).unwrap();
                    (name, b)
                })
                .collect();
            let others: Vec<PackRecord> = records
                .iter()
                .filter(|r| r.id != data.id)
                .cloned()
                .collect();
            let (others_id, _) = repo
                .save_object(ObjectKind::Index, &crate::index::encode(&others))
                .unwrap();
            assert_eq!(errors(&mut repo, false), Vec::<String>::new());
            assert_eq!(
                errors(&mut repo, true),
                vec![format!("{pack}: header disagrees with the index")]
            );
            for (name, b) in saved {
                repo.store().write(&name, &b).unwrap();
            }
            for id in [bad_id, others_id] {
                repo.store()
                    .delete(&format!("{}{id}", names::INDEX))
                    .unwrap();
            }
            assert_eq!(errors(&mut repo, true), Vec::<String>::new());
        }
        // A pack gone from storage is one problem, named once (not again when it is not read).
        repo.store().delete(&pack).unwrap();
        assert_eq!(
            errors(&mut repo, true),
            vec![format!("{pack}: missing (the index names it)")]
        );
    }
}
