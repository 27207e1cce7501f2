//! The store side of a parallel run (`backup`, `copy`): workers add blobs to one open pack per
//! type, uploaders store full packs, and index objects follow the packs they name.
//!
//! ```text
//! workers ×N ──put──▶ Packer (one open pack per type) ──full packs──▶ uploaders ──▶ store
//!                                                                        └─ index objects
//! ```
//! Commit order is packs → index: an index object names only stored packs, so a crash leaves
//! at worst packs no index names yet (they wait for prune).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::backend::names;
use crate::compress::Compressor;
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::idset::IdSet;
use crate::index::{self, PackRecord};
use crate::pack::{BlobType, FinishedPack, PackWriter};
use crate::repo::Repository;
use crate::status::RunStatus;

/// What one run adds to a repository: the blobs it stored (so two workers never store one twice),
/// and the stored packs no index object names yet.
pub(crate) struct Sink<'a> {
    pub(crate) repo: &'a Repository,
    new_blobs: Mutex<IdSet>,
    blobs_added: AtomicU64,
    /// Bytes stored so far (packs and index objects), readable while the run goes on.
    bytes_added: &'a AtomicU64,
    /// Stored packs no index object names yet, and when the oldest of them was stored.
    pending: Mutex<(Vec<PackRecord>, Option<Instant>)>,
    /// Index stored packs once the oldest unindexed one is this old, not only when
    /// [`index::due`] says so.
    index_after: Option<Duration>,
    /// The open data pack, shared by the workers.
    pub(crate) data: Packer,
    /// The open tree pack.
    pub(crate) tree: Packer,
    /// The uploaders' side of the packers' queue, and of the pool of data pack buffers.
    packs: Receiver<FinishedPack>,
    pool: Sender<Vec<u8>>,
    /// Check each new blob before it is sealed ([`Sink::verify_blobs`]).
    verify: bool,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(repo: &'a Repository, bytes_added: &'a AtomicU64) -> Self {
        let (data, tree, packs, pool) = packers(repo);
        Self {
            repo,
            new_blobs: Mutex::new(IdSet::new()),
            blobs_added: AtomicU64::new(0),
            bytes_added,
            pending: Mutex::new((Vec::new(), None)),
            index_after: None,
            data,
            tree,
            packs,
            pool,
            verify: false,
        }
    }

    /// Check each new blob before it is sealed, as restic's backup does by default: its stored
    /// form (decompressed when compressed) must hash to its id again, so a bit flipped in memory
    /// after the id was taken, or a compressor fault, fails the run instead of storing a blob
    /// whose content is not what its id says (which every later backup would then dedup
    /// against). Costs a decompression and a hash of every new blob.
    pub(crate) fn verify_blobs(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Index stored packs at least every `after` (an interrupted copy then loses at most that
    /// much transfer: the next run finds the rest in the index).
    pub(crate) fn index_every(mut self, after: Duration) -> Self {
        self.index_after = Some(after);
        self
    }

    /// New packers and upload queue after a commit (both packers finished, the uploaders
    /// joined, the index written), for the next snapshot of a run that writes several. What
    /// the run stored is still known.
    pub(crate) fn reopen(&mut self) {
        (self.data, self.tree, self.packs, self.pool) = packers(self.repo);
    }

    /// Whether the repository has `id`: indexed, or stored by this run.
    pub(crate) fn has(&self, id: &Id) -> bool {
        self.repo.index().contains(id) || self.new_blobs.lock().expect("dedup lock").contains(id)
    }

    /// Blobs this run stored.
    pub(crate) fn blobs_added(&self) -> u64 {
        self.blobs_added.load(Ordering::Relaxed)
    }

    /// Index the stored packs no index object names yet. Called once every uploader is done.
    ///
    /// # Errors
    /// Storage errors.
    pub(crate) fn write_index(&self) -> Result<()> {
        write_index(self, &mut self.pending.lock().expect("pending lock"))
    }

    /// Start the uploaders on `s`: one keeps a local disk busy; a remote store needs several
    /// requests in flight to fill the link (each pack is also sent as parallel parts). They
    /// return once both packers are finished ([`Packer::finish`] closes its side of the queue).
    pub(crate) fn start_uploaders<'s>(
        &'s self,
        s: &'s Scope<'s, '_>,
        status: &'s RunStatus,
    ) -> Vec<ScopedJoinHandle<'s, Result<()>>> {
        (0..if self.repo.store().is_remote() { 3 } else { 1 })
            .map(|_| s.spawn(move || upload(self, status, &self.packs, &self.pool)))
            .collect()
    }
}

/// Both packers, and the uploaders' side of their queue and of the data pack buffers' pool.
fn packers(repo: &Repository) -> (Packer, Packer, Receiver<FinishedPack>, Sender<Vec<u8>>) {
    let (pack_tx, packs) = bounded::<FinishedPack>(1);
    let (pool, pool_rx) = bounded::<Vec<u8>>(4);
    (
        Packer::new(repo, BlobType::Data, pack_tx.clone(), Some(pool_rx)),
        Packer::new(repo, BlobType::Tree, pack_tx, None),
        packs,
        pool,
    )
}

/// The open pack of one blob type, shared by every worker: one pack fills at a time, so memory
/// holds at most one open, one queued and one uploading pack per type, whatever the thread count.
/// Workers compress outside the lock; only sealing and appending happen under it.
pub(crate) struct Packer {
    blob_type: BlobType,
    pack: Mutex<Option<PackWriter>>,
    pack_size: usize,
    out: Mutex<Option<Sender<FinishedPack>>>,
    /// Buffers of uploaded packs, reused so a run allocates a handful of pack buffers in all.
    pool: Option<Receiver<Vec<u8>>>,
}

impl Packer {
    fn new(
        repo: &Repository,
        blob_type: BlobType,
        out: Sender<FinishedPack>,
        pool: Option<Receiver<Vec<u8>>>,
    ) -> Self {
        Self {
            blob_type,
            pack: Mutex::new(None),
            pack_size: repo.config().pack_size as usize,
            out: Mutex::new(Some(out)),
            pool,
        }
    }

    /// Seal and append `blobs` (id, raw length, compressed, stored form) under one hold of the
    /// lock; full packs go to the uploaders after it.
    fn add<'b>(
        &self,
        repo: &Repository,
        blobs: impl IntoIterator<Item = (Id, u32, bool, &'b [u8])>,
    ) -> Result<()> {
        let mut full = Vec::new();
        {
            let mut g = self.pack.lock().expect("pack lock");
            for (id, raw_len, compressed, stored) in blobs {
                if g.is_none() {
                    let buf = self
                        .pool
                        .as_ref()
                        .and_then(|p| p.try_recv().ok())
                        .unwrap_or_default();
                    *g = Some(PackWriter::with_buffer(repo.keys(), self.pack_size, buf)?);
                }
                let pack = g.as_mut().expect("pack exists");
                pack.add(id, self.blob_type, raw_len, compressed, stored);
                if pack.is_full(self.pack_size) {
                    full.extend(g.take());
                }
            }
        }
        full.into_iter().try_for_each(|p| self.send(p))
    }

    fn send(&self, p: PackWriter) -> Result<()> {
        let finished = p.finish();
        let out = self.out.lock().expect("sender lock").clone();
        out.and_then(|o| o.send(finished).ok())
            .ok_or_else(|| Error::new(crate::ErrorKind::Storage, "the uploader stopped"))
    }

    /// Send the last, partly filled pack and close this packer's side of the upload queue.
    pub(crate) fn finish(&self) -> Result<()> {
        let last = self.pack.lock().expect("pack lock").take();
        let r = match last.filter(|p| !p.is_empty()) {
            Some(p) => self.send(p),
            None => Ok(()),
        };
        self.out.lock().expect("sender lock").take();
        r
    }
}

/// A worker's side of a packer: its own compressor.
pub(crate) struct BlobSink<'p> {
    sink: &'p Sink<'p>,
    packer: &'p Packer,
    comp: Compressor,
    /// Where a blob is decompressed again to be verified.
    back: Vec<u8>,
    /// Small blobs held back to be added together ([`BlobSink::staging`]).
    staged: Staged,
}

/// Blobs under `STAGE_BLOB` bytes (stored form), compressed and checked, that a staging sink
/// holds until it has `STAGE_BYTES` or `STAGE_BLOBS` of them. Two workers storing small files
/// took the shared pack's lock for every blob, and a third of the backup's futex calls were
/// theirs; held back, a batch is sealed and appended under one hold of the lock.
#[derive(Default)]
struct Staged {
    on: bool,
    bytes: Vec<u8>,
    /// Id, raw length, compressed, and where its bytes end in `bytes`.
    blobs: Vec<(Id, u32, bool, usize)>,
}

const STAGE_BLOB: usize = 64 << 10;
const STAGE_BYTES: usize = 512 << 10;
const STAGE_BLOBS: usize = 64;

impl<'p> BlobSink<'p> {
    pub(crate) fn new(sink: &'p Sink<'p>, packer: &'p Packer) -> Result<Self> {
        Ok(Self {
            sink,
            packer,
            comp: Compressor::new(sink.repo.config().compression)?,
            back: Vec::new(),
            staged: Staged::default(),
        })
    }

    /// Hold small blobs back and add them to the pack in batches. The caller must call
    /// [`BlobSink::finish`] once it stored its last blob: until then some of its blobs are in no
    /// pack.
    pub(crate) fn staging(mut self) -> Self {
        self.staged.on = true;
        self
    }

    /// Add the blobs held back to the pack.
    ///
    /// # Errors
    /// When the uploader stopped: the blobs are not stored, and the run must fail.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.add_staged()
    }

    fn add_staged(&mut self) -> Result<()> {
        let Staged { bytes, blobs, .. } = &mut self.staged;
        let mut start = 0;
        let r = self.packer.add(
            self.sink.repo,
            blobs.iter().map(|&(id, raw_len, compressed, end)| {
                let stored = &bytes[start..end];
                start = end;
                (id, raw_len, compressed, stored)
            }),
        );
        bytes.clear();
        blobs.clear();
        r
    }

    /// Store `data` unless the repository or this run already has it; returns its id.
    pub(crate) fn put(&mut self, data: &[u8]) -> Result<Id> {
        let sh = self.sink;
        let id = sh.repo.keys().blob_id(data);
        if sh.repo.index().contains(&id) || !sh.new_blobs.lock().expect("dedup lock").insert(id) {
            return Ok(id);
        }
        let raw_len = data.len() as u32;
        let (stored, compressed) = match self.comp.compress(data) {
            Some(z) => (z, true),
            None => (data, false),
        };
        if sh.verify {
            let inflates_to = compressed.then_some(data.len());
            verify_stored(sh.repo.keys(), &id, stored, inflates_to, &mut self.back)?;
        }
        if self.staged.on && stored.len() < STAGE_BLOB {
            let st = &mut self.staged;
            st.bytes.extend_from_slice(stored);
            st.blobs.push((id, raw_len, compressed, st.bytes.len()));
            if st.bytes.len() >= STAGE_BYTES || st.blobs.len() >= STAGE_BLOBS {
                self.add_staged()?;
            }
        } else {
            self.packer
                .add(sh.repo, [(id, raw_len, compressed, stored)])?;
        }
        sh.blobs_added.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}

/// Check that a blob's `stored` form (compressed, inflating to `raw_len` bytes, or raw) still
/// hashes to its `id`; `back` is scratch room for the decompression.
///
/// # Errors
/// `Io` naming the blob when it does not: its data changed in memory after its id was taken.
pub(crate) fn verify_stored(
    keys: &crate::crypto::Keys,
    id: &Id,
    stored: &[u8],
    raw_len: Option<usize>,
    back: &mut Vec<u8>,
) -> Result<()> {
    let plain = match raw_len {
        Some(n) => match crate::compress::decompress_into(stored, n, back) {
            Ok(()) => Some(&back[..]),
            Err(_) => None,
        },
        None => Some(stored),
    };
    if plain.is_some_and(|p| keys.blob_id(p) == *id) {
        return Ok(());
    }
    Err(Error::new(
        crate::ErrorKind::Io,
        format!(
            "blob {}: its data changed in memory while being stored (faulty memory, or a bug); it was not stored",
            id.short()
        ),
    ))
}

/// Seal the pack records in `pending` into one index object and store it.
fn write_index(sink: &Sink<'_>, pending: &mut (Vec<PackRecord>, Option<Instant>)) -> Result<()> {
    if pending.0.is_empty() {
        return Ok(());
    }
    let (_, n) = sink
        .repo
        .save_object(ObjectKind::Index, &index::encode(&pending.0))?;
    sink.bytes_added.fetch_add(n, Ordering::Relaxed);
    *pending = (Vec::new(), None);
    Ok(())
}

/// A pack buffer that returns to the packer's pool when its last reference is dropped.
struct Recycled {
    buf: Vec<u8>,
    pool: Option<Sender<Vec<u8>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let _ = pool.try_send(std::mem::take(&mut self.buf));
        }
    }
}

/// Store packs as they come, and an index object whenever [`index::due`] says so
/// (the caller indexes the rest once every uploader is done).
fn upload(
    sink: &Sink<'_>,
    status: &RunStatus,
    packs: &Receiver<FinishedPack>,
    pool: &Sender<Vec<u8>>,
) -> Result<()> {
    let mut result = Ok(());
    for mut p in packs {
        if result.is_err() || status.failed() {
            continue;
        }
        let size = p.bytes().len() as u64;
        // Data pack buffers go back to the packer once stored (however the store holds them).
        let kind = p.blob_type();
        let recycle = (kind == Some(BlobType::Data)).then(|| pool.clone());
        let (buf, start) = p.take_buffer();
        let bytes = bytes::Bytes::from_owner(Recycled { buf, pool: recycle }).slice(start..);
        let name = names::pack(&p.id);
        // Only a tree pack is kept past its upload (data pack buffers go back to the packer as
        // soon as they are sent).
        let tree = (kind == Some(BlobType::Tree)).then(|| bytes.clone());
        result = sink.repo.store().write_bytes(&name, bytes).and_then(|()| {
            if let Some(tree) = tree {
                // The next run reads these trees (a backup's parent, a copy's next snapshot).
                sink.repo.store().cache_pack(&name, &tree);
            }
            sink.bytes_added.fetch_add(size, Ordering::Relaxed);
            let mut pending = sink.pending.lock().expect("pending lock");
            pending.0.push(PackRecord {
                id: p.id,
                size,
                salt: p.salt,
                blobs: p.entries,
            });
            let since = *pending.1.get_or_insert_with(Instant::now);
            if index::due(&pending.0) || sink.index_after.is_some_and(|a| since.elapsed() >= a) {
                // The index is written by whoever fills it; others wait on the lock, which
                // keeps index objects in step with stored packs.
                write_index(sink, &mut pending)
            } else {
                Ok(())
            }
        });
        if let Err(e) = &result {
            status.fail(Error::new(e.kind(), e.to_string()));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keys;

    /// A blob whose stored form no longer hashes to its id (a bit flipped in memory in the raw
    /// data, in the compressed bytes, or in the data after it was compressed) is refused; an
    /// intact one passes, raw or compressed.
    #[test]
    fn a_blob_changed_after_its_id_was_taken_is_refused() {
        let keys = Keys::generate().unwrap();
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 997) as u8)
            .collect();
        let id = keys.blob_id(&data);
        let mut comp = Compressor::new(3).unwrap();
        let z = comp.compress(&data).expect("compressible").to_vec();
        let mut back = Vec::new();
        verify_stored(&keys, &id, &z, Some(data.len()), &mut back).unwrap();
        verify_stored(&keys, &id, &data, None, &mut back).unwrap();

        let mut raw = data.clone();
        raw[12_345] ^= 0x04;
        let e = verify_stored(&keys, &id, &raw, None, &mut back).unwrap_err();
        assert!(e.to_string().contains("changed in memory"), "{e}");
        // Every bit of a few bytes spread over the compressed form: refused, unless the flip
        // changes nothing the stored form inflates to (a bit zstd does not read).
        let mut refused = 0;
        for at in (0..z.len()).step_by(z.len() / 7) {
            for bit in 0..8 {
                let mut bad = z.clone();
                bad[at] ^= 1 << bit;
                if verify_stored(&keys, &id, &bad, Some(data.len()), &mut back).is_err() {
                    refused += 1;
                } else {
                    let same = crate::compress::decompress(&bad, data.len()).unwrap();
                    assert!(same == data, "byte {at} bit {bit} passed with other data");
                }
            }
        }
        assert!(refused >= 56, "{refused} of 64 refused");
        // Compressed after the flip: the compressed form is sound but of other data.
        let z_of_raw = comp.compress(&raw).unwrap().to_vec();
        assert!(verify_stored(&keys, &id, &z_of_raw, Some(data.len()), &mut back).is_err());
    }
}
