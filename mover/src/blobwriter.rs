//! A simple, sequential way to add blobs to a repository outside a backup: `prune` repacks live
//! blobs with it.
//!
//! It keeps the commit order of a backup: packs are stored first, then the index objects naming
//! them (whenever [`index::due`] says so, and at [`BlobWriter::finish`]), so a crash leaves only
//! unindexed packs, which prune removes.

use crate::compress::Compressor;
use crate::crypto::ObjectKind;
use crate::error::Result;
use crate::id::Id;
use crate::idset::IdSet;
use crate::index::{self, PackRecord};
use crate::pack::{BlobType, PackWriter};
use crate::repo::Repository;

/// Stored packs are also indexed once the oldest unindexed one is this old, so an interrupted
/// repack loses at most a few seconds of transfer.
const INDEX_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Adds blobs to `repo`, skipping those already indexed or added.
pub struct BlobWriter<'r> {
    repo: &'r Repository,
    compressor: Compressor,
    /// Where a blob is decompressed again to be verified.
    back: Vec<u8>,
    data: Option<PackWriter>,
    tree: Option<PackWriter>,
    added: IdSet,
    pending: Vec<PackRecord>,
    pending_since: Option<std::time::Instant>,
    /// Bytes stored (packs and index objects).
    pub bytes_written: u64,
    /// Blobs stored.
    pub blobs_written: u64,
    /// Packs stored.
    pub packs_written: u64,
}

impl<'r> BlobWriter<'r> {
    /// A writer for `repo`, compressing at the repository's level.
    ///
    /// # Errors
    /// When the compressor cannot be made.
    pub fn new(repo: &'r Repository) -> Result<Self> {
        Ok(Self {
            repo,
            compressor: Compressor::new(repo.config().compression)?,
            back: Vec::new(),
            data: None,
            tree: None,
            added: IdSet::new(),
            pending: Vec::new(),
            pending_since: None,
            bytes_written: 0,
            blobs_written: 0,
            packs_written: 0,
        })
    }

    /// Whether the repository already has `id` (indexed, or added by this writer).
    pub fn has(&self, id: &Id) -> bool {
        self.repo.index().contains(id) || self.added.contains(id)
    }

    /// Add one blob whose id is `id` (the caller computed it with this repository's keys).
    /// Returns whether it was new.
    ///
    /// # Errors
    /// Storage errors.
    pub fn add(&mut self, blob_type: BlobType, id: Id, plain: &[u8]) -> Result<bool> {
        if self.has(&id) {
            return Ok(false);
        }
        self.add_unchecked(blob_type, id, plain)?;
        Ok(true)
    }

    /// Whether this writer added `id`.
    pub fn has_added(&self, id: &Id) -> bool {
        self.added.contains(id)
    }

    /// Add a blob even when the index has it (repacking copies indexed blobs on purpose). Its
    /// stored form is checked against `id` before it is sealed, always (as `backup
    /// --extra-verify` does): what this writes is often the only copy left once the pack it came
    /// from is deleted.
    ///
    /// # Errors
    /// Storage errors; `Io` when the blob's data changed in memory after its id was taken.
    pub fn add_unchecked(&mut self, blob_type: BlobType, id: Id, plain: &[u8]) -> Result<()> {
        let slot = match blob_type {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.tree,
        };
        if slot.is_none() {
            *slot = Some(PackWriter::new(
                self.repo.keys(),
                self.repo.config().pack_size as usize,
            )?);
        }
        let w = slot.as_mut().expect("pack writer made above");
        let (compressed, stored) = match self.compressor.compress(plain) {
            Some(z) => (true, z),
            None => (false, plain),
        };
        let inflates_to = compressed.then_some(plain.len());
        crate::sink::verify_stored(self.repo.keys(), &id, stored, inflates_to, &mut self.back)?;
        w.add(id, blob_type, plain.len() as u32, compressed, stored);
        self.added.insert(id);
        self.blobs_written += 1;
        if w.is_full(self.repo.config().pack_size as usize) {
            let full = slot.take().expect("pack writer present");
            self.store_pack(full)?;
        }
        Ok(())
    }

    fn store_pack(&mut self, w: PackWriter) -> Result<()> {
        let p = w.finish();
        let name = crate::backend::names::pack(&p.id);
        self.repo.store().write(&name, p.bytes())?;
        if p.blob_type() == Some(BlobType::Tree) {
            self.repo.store().cache_pack(&name, p.bytes());
        }
        self.bytes_written += p.bytes().len() as u64;
        self.packs_written += 1;
        self.pending.push(PackRecord {
            id: p.id,
            size: p.bytes().len() as u64,
            salt: p.salt,
            blobs: p.entries,
        });
        let since = *self
            .pending_since
            .get_or_insert_with(std::time::Instant::now);
        if index::due(&self.pending) || since.elapsed() >= INDEX_AFTER {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (_, n) = self
            .repo
            .save_object(ObjectKind::Index, &index::encode(&self.pending))?;
        self.bytes_written += n;
        self.pending.clear();
        self.pending_since = None;
        Ok(())
    }

    /// Store the last packs and index them. Every blob added is then readable.
    ///
    /// # Errors
    /// Storage errors.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.flush()?;
        Ok((self.bytes_written, self.blobs_written))
    }

    /// Store the partial packs and index everything added so far (a commit point); the writer
    /// stays usable and still knows what it added.
    ///
    /// # Errors
    /// Storage errors.
    pub fn flush(&mut self) -> Result<()> {
        for w in [self.data.take(), self.tree.take()].into_iter().flatten() {
            if !w.is_empty() {
                self.store_pack(w)?;
            }
        }
        self.write_index()?;
        self.repo.store().sync()
    }
}
