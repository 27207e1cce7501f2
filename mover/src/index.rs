//! The index: blob id → (pack, offset, length, raw length).
//!
//! Each backup writes immutable index objects listing the packs it stored; readers merge all of
//! them. In memory every blob costs exactly 48 bytes ([`Slot`]): a sorted vector searched by binary
//! search, with the blob type and compression flag folded into the top bits of two lengths.

use std::collections::HashMap;

use crate::crypto::SALT_LEN;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{BlobEntry, BlobType, ENTRY_LEN, MAX_PACK_SIZE};

const MAGIC: &[u8; 8] = b"LBINDEX1";
const PACK_REC_LEN: usize = 32 + 8 + SALT_LEN + 4;
const HIGH: u32 = 1 << 31;

/// One pack as listed in an index object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRecord {
    /// The pack's name.
    pub id: Id,
    /// Its size in bytes.
    pub size: u64,
    /// Its salt (so a blob can be opened without reading the pack head).
    pub salt: [u8; SALT_LEN],
    /// Its blobs.
    pub blobs: Vec<BlobEntry>,
}

/// Packs one index object lists at most: a crash loses at most this many packs' worth of index
/// (their data is stored again by the next backup; prune removes the orphans).
pub const PACKS_PER_INDEX: usize = 64;
/// Blob entries one index object lists at most, about 3 MiB of plaintext: the records wait in
/// memory until their object is written, and a load decodes one object at a time.
pub const BLOBS_PER_INDEX: usize = 1 << 16;

/// Whether the stored packs waiting for an index object fill one: write it now.
pub fn due(pending: &[PackRecord]) -> bool {
    pending.len() >= PACKS_PER_INDEX
        || pending.iter().map(|p| p.blobs.len()).sum::<usize>() >= BLOBS_PER_INDEX
}

/// Encode an index object's plaintext.
pub fn encode(packs: &[PackRecord]) -> Vec<u8> {
    let n: usize = packs
        .iter()
        .map(|p| PACK_REC_LEN + p.blobs.len() * ENTRY_LEN)
        .sum();
    let mut out = Vec::with_capacity(12 + n);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.id.0);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&p.salt);
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            b.encode(&mut out);
        }
    }
    out
}

/// Decode an index object's plaintext, checking every bound.
///
/// # Errors
/// `Corrupt` when malformed.
pub fn decode(mut b: &[u8]) -> Result<Vec<PackRecord>> {
    let bad = || Error::corrupt("index object is malformed");
    if b.len() < 12 || &b[..8] != MAGIC {
        return Err(bad());
    }
    let npacks = u32::from_le_bytes(b[8..12].try_into().expect("4")) as usize;
    b = &b[12..];
    let mut packs = Vec::with_capacity(npacks.min(b.len() / PACK_REC_LEN));
    for _ in 0..npacks {
        if b.len() < PACK_REC_LEN {
            return Err(bad());
        }
        let id = Id(b[..32].try_into().expect("32"));
        let size = u64::from_le_bytes(b[32..40].try_into().expect("8"));
        let salt = b[40..72].try_into().expect("32");
        let n = u32::from_le_bytes(b[72..76].try_into().expect("4")) as usize;
        b = &b[PACK_REC_LEN..];
        let need = n.checked_mul(ENTRY_LEN).ok_or_else(bad)?;
        if b.len() < need || size > MAX_PACK_SIZE {
            return Err(bad());
        }
        let mut blobs = Vec::with_capacity(n);
        for e in b[..need].chunks_exact(ENTRY_LEN) {
            blobs.push(BlobEntry::decode(e)?);
        }
        if blobs
            .iter()
            .any(|e| u64::from(e.offset) + u64::from(e.length) > size)
        {
            return Err(bad());
        }
        b = &b[need..];
        packs.push(PackRecord {
            id,
            size,
            salt,
            blobs,
        });
    }
    if !b.is_empty() {
        return Err(bad());
    }
    Ok(packs)
}

/// 48 bytes per blob in memory.
#[derive(Clone, Copy)]
struct Slot {
    id: [u8; 32],
    pack: u32,
    offset: u32,
    /// Ciphertext length; top bit set for tree blobs.
    length: u32,
    /// Plaintext length; top bit set when compressed.
    raw_len: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 48);

/// Where to find a blob.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    /// The pack.
    pub pack: &'a PackInfo,
    /// The blob's entry (as in the pack header).
    pub entry: BlobEntry,
}

impl Location<'_> {
    /// Where the blob's ciphertext lies in its pack: `(start, end)`.
    pub fn span(&self) -> (u64, u64) {
        let start = u64::from(self.entry.offset);
        (start, start + u64::from(self.entry.length))
    }
}

/// How many of `locs` (sorted by pack and offset), from the first, one read of the first one's
/// pack fetches: the same pack, gaps of unwanted bytes of at most `gap`, at most `max_read` bytes
/// in all (or the first blob alone).
pub(crate) fn run_len<'l, 'i: 'l>(
    mut locs: impl Iterator<Item = &'l Location<'i>>,
    gap: u64,
    max_read: u64,
) -> usize {
    let Some(first) = locs.next() else {
        return 0;
    };
    let (start, mut end) = first.span();
    let mut n = 1;
    for l in locs {
        let (s, e) = l.span();
        if l.pack.id != first.pack.id || s > end + gap || e.max(end) - start > max_read {
            break;
        }
        end = end.max(e);
        n += 1;
    }
    n
}

/// A pack known to the index.
#[derive(Debug, Clone)]
pub struct PackInfo {
    /// Its name.
    pub id: Id,
    /// Its size.
    pub size: u64,
    /// Its salt.
    pub salt: [u8; SALT_LEN],
}

const BUCKETS: usize = 1 << 16;

fn bucket(id: &[u8; 32]) -> usize {
    usize::from(u16::from_be_bytes([id[0], id[1]]))
}

/// The merged, read-only index.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_pos: HashMap<Id, u32>,
    slots: Vec<Slot>,
    /// `buckets[b]..buckets[b + 1]` are the slots whose id starts with the 16 bits `b` (ids are
    /// uniform, so a lookup touches one or two cache lines instead of ~17 binary-search steps).
    /// A fixed 256 KiB, independent of the number of chunks.
    buckets: Vec<u32>,
}

impl Index {
    /// Merge pack records (from any number of index objects). A pack or blob listed twice is kept once.
    pub fn from_records(records: impl IntoIterator<Item = PackRecord>) -> Self {
        let mut b = IndexBuilder::default();
        for rec in records {
            b.add(&rec);
        }
        b.finish()
    }

    /// The blob's position among the index's blobs (`0..len()`, fixed once the index is built):
    /// a 4-byte key for maps over a repository's blobs.
    pub fn position(&self, id: &Id) -> Option<u32> {
        let b = bucket(&id.0);
        let (Some(&lo), Some(&hi)) = (self.buckets.get(b), self.buckets.get(b + 1)) else {
            return None;
        };
        let range = &self.slots[lo as usize..hi as usize];
        range
            .binary_search_by(|s| s.id.cmp(&id.0))
            .ok()
            .map(|i| lo + i as u32)
    }

    /// Whether the blob is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.position(id).is_some()
    }

    /// Where the blob is stored; `Missing` when the index does not list it.
    ///
    /// # Errors
    /// `Missing`.
    pub fn find(&self, id: &Id) -> Result<Location<'_>> {
        self.find_position(id).map(|p| self.at(p))
    }

    /// [`Index::position`], or `Missing` when the index does not list the blob.
    ///
    /// # Errors
    /// `Missing`.
    pub fn find_position(&self, id: &Id) -> Result<u32> {
        self.position(id).ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Missing,
                format!("blob {} is not in the index", id.short()),
            )
        })
    }

    /// Where the blob is stored.
    pub fn get(&self, id: &Id) -> Option<Location<'_>> {
        self.position(id).map(|p| self.at(p))
    }

    /// Where the blob at `pos` ([`Index::position`]) is stored.
    ///
    /// # Panics
    /// When `pos` is not below [`Index::len`].
    pub fn at(&self, pos: u32) -> Location<'_> {
        let s = &self.slots[pos as usize];
        Location {
            pack: &self.packs[s.pack as usize],
            entry: BlobEntry {
                id: Id(s.id),
                blob_type: if s.length & HIGH != 0 {
                    BlobType::Tree
                } else {
                    BlobType::Data
                },
                compressed: s.raw_len & HIGH != 0,
                offset: s.offset,
                length: s.length & !HIGH,
                raw_len: s.raw_len & !HIGH,
            },
        }
    }

    /// Every pack the index knows.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds no blob.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every blob with its location, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Location<'_>> + '_ {
        (0..self.slots.len()).map(|p| self.at(p as u32))
    }
}

/// Builds an [`Index`] one pack record at a time, so that loading holds the decoded records of
/// one index object at a time on top of the index itself (collecting every record first doubled
/// the memory of a load: a decoded entry costs as much as the slot made from it).
#[derive(Default)]
pub struct IndexBuilder {
    idx: Index,
}

impl IndexBuilder {
    /// Add one pack's blobs (a pack seen before is skipped).
    pub fn add(&mut self, rec: &PackRecord) {
        let idx = &mut self.idx;
        if idx.pack_pos.contains_key(&rec.id) {
            return;
        }
        let pos = idx.packs.len() as u32;
        idx.pack_pos.insert(rec.id, pos);
        idx.packs.push(PackInfo {
            id: rec.id,
            size: rec.size,
            salt: rec.salt,
        });
        idx.slots.extend(rec.blobs.iter().map(|b| Slot {
            id: b.id.0,
            pack: pos,
            offset: b.offset,
            length: b.length
                | if b.blob_type == BlobType::Tree {
                    HIGH
                } else {
                    0
                },
            raw_len: b.raw_len | if b.compressed { HIGH } else { 0 },
        }));
    }

    /// Sort the blobs (a blob listed twice is kept once) and build the lookup directory.
    pub fn finish(self) -> Index {
        let mut idx = self.idx;
        idx.slots.sort_unstable_by_key(|s| s.id);
        idx.slots.dedup_by(|a, b| a.id == b.id);
        idx.slots.shrink_to_fit();
        idx.buckets = vec![0; BUCKETS + 1];
        let mut i = 0;
        for b in 0..=BUCKETS {
            while i < idx.slots.len() && bucket(&idx.slots[i].id) < b {
                i += 1;
            }
            idx.buckets[b] = i as u32;
        }
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_merge() {
        let e = |n: u8, t| BlobEntry {
            id: Id([n; 32]),
            blob_type: t,
            compressed: n.is_multiple_of(2),
            offset: 40 + u32::from(n),
            length: 20,
            raw_len: 7,
        };
        let recs = vec![
            PackRecord {
                id: Id([1; 32]),
                size: 1000,
                salt: [3; 32],
                blobs: vec![e(5, BlobType::Data), e(2, BlobType::Tree)],
            },
            PackRecord {
                id: Id([2; 32]),
                size: 1000,
                salt: [4; 32],
                blobs: vec![e(9, BlobType::Data)],
            },
        ];
        let bytes = encode(&recs);
        assert_eq!(decode(&bytes).unwrap(), recs);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let idx = Index::from_records(recs.clone().into_iter().chain(recs));
        assert_eq!(idx.len(), 3);
        let loc = idx.get(&Id([2; 32])).unwrap();
        assert_eq!(loc.entry, e(2, BlobType::Tree));
        assert_eq!(loc.pack.id, Id([1; 32]));
        assert!(!idx.contains(&Id([7; 32])));
    }

    /// A damaged index object is refused, or it is a valid object that encodes back to exactly
    /// its bytes: no damage is read as something it does not say. Out-of-range entries that
    /// authentication alone would let through (an index is only as sound as its writer) are
    /// refused by name.
    #[test]
    fn damaged_index_objects_are_refused_or_read_exactly() {
        let entry = |n: u8| BlobEntry {
            id: Id([n; 32]),
            blob_type: if n.is_multiple_of(3) {
                BlobType::Tree
            } else {
                BlobType::Data
            },
            compressed: n.is_multiple_of(2),
            offset: 40 + 100 * u32::from(n),
            length: 90,
            raw_len: 1000 + u32::from(n),
        };
        let recs: Vec<PackRecord> = (0..3u8)
            .map(|p| PackRecord {
                id: Id([p; 32]),
                size: 2000,
                salt: [p + 7; 32],
                blobs: (0..5 * p).map(entry).collect(),
            })
            .collect();
        let good = encode(&recs);
        let mut d = crate::damage::Damage::new(0x2545_f491_4f6c_dd1d);
        let mut accepted = 0;
        for round in 0..30_000 {
            let mut b = good.clone();
            d.apply(&mut b);
            if let Ok(packs) = decode(&b) {
                assert!(encode(&packs) == b, "round {round}: read as something else");
                let idx = Index::from_records(packs.iter().cloned());
                for e in idx.iter() {
                    let rec = packs.iter().find(|p| p.id == e.pack.id).unwrap();
                    assert!(
                        rec.blobs.contains(&e.entry),
                        "round {round}: index changed an entry"
                    );
                }
                accepted += 1;
            }
        }
        assert!(accepted > 100, "{accepted} accepted");
        for (what, bad) in [
            (
                "a raw length of 2^31",
                BlobEntry {
                    raw_len: 1 << 31,
                    ..entry(1)
                },
            ),
            (
                "an offset inside the pack's head",
                BlobEntry {
                    offset: 39,
                    ..entry(1)
                },
            ),
            (
                "a length below the tag's",
                BlobEntry {
                    length: 15,
                    ..entry(1)
                },
            ),
            (
                "an end past its pack",
                BlobEntry {
                    offset: 1950,
                    ..entry(1)
                },
            ),
        ] {
            let mut rec = recs[1].clone();
            rec.blobs[0] = bad;
            assert!(decode(&encode(&[rec])).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn an_index_object_is_due_at_64_packs_or_65536_blobs() {
        let rec = |blobs: usize| PackRecord {
            id: Id([0; 32]),
            size: 0,
            salt: [0; 32],
            blobs: vec![
                BlobEntry {
                    id: Id([0; 32]),
                    blob_type: BlobType::Data,
                    compressed: false,
                    offset: 0,
                    length: 0,
                    raw_len: 0,
                };
                blobs
            ],
        };
        assert!(!due(&[]));
        assert!(!due(&vec![rec(16); PACKS_PER_INDEX - 1]));
        assert!(due(&vec![rec(16); PACKS_PER_INDEX]));
        assert!(!due(&[rec(BLOBS_PER_INDEX - 1)]));
        assert!(due(&[rec(BLOBS_PER_INDEX / 2), rec(BLOBS_PER_INDEX / 2)]));
    }

    /// Regression for the bucket directory: ids at both ends of the id space, several ids in one
    /// bucket, and absent ids next to present ones.
    #[test]
    fn lookup_across_buckets() {
        let mut ids: Vec<Id> = [0x0000u16, 0x0000, 0x0001, 0x7fff, 0xffff, 0xffff]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut id = [i as u8; 32];
                id[..2].copy_from_slice(&b.to_be_bytes());
                Id(id)
            })
            .collect();
        let blobs = ids
            .iter()
            .map(|id| BlobEntry {
                id: *id,
                blob_type: BlobType::Data,
                compressed: false,
                offset: 40,
                length: 20,
                raw_len: 4,
            })
            .collect();
        let idx = Index::from_records([PackRecord {
            id: Id([1; 32]),
            size: 100,
            salt: [0; 32],
            blobs,
        }]);
        for id in &ids {
            assert!(idx.contains(id), "{id:?} not found");
        }
        for id in &mut ids {
            id.0[31] ^= 0x55;
            assert!(!idx.contains(id), "{id:?} found but absent");
        }
        assert!(!Index::default().contains(&Id([0; 32])));
    }

    #[test]
    fn a_run_stops_at_another_pack_a_wide_gap_or_its_size() {
        let (a, b) = (
            PackInfo {
                id: Id([1; 32]),
                size: 1 << 20,
                salt: [0; SALT_LEN],
            },
            PackInfo {
                id: Id([2; 32]),
                size: 1 << 20,
                salt: [0; SALT_LEN],
            },
        );
        let at = |pack, offset, length| Location {
            pack,
            entry: BlobEntry {
                id: Id([0; 32]),
                blob_type: BlobType::Data,
                compressed: false,
                offset,
                length,
                raw_len: length,
            },
        };
        // 100..200, a 50-byte gap, 250..300, a 51-byte gap, 351..400: with gap 50 the first two
        // are one read; the third needs its own.
        let locs = [at(&a, 100, 100), at(&a, 250, 50), at(&a, 351, 49)];
        assert_eq!(run_len(locs.iter(), 50, 1 << 20), 2);
        assert_eq!(run_len(locs.iter(), 51, 1 << 20), 3);
        // At most 200 bytes in all: 100..300 fits, 100..400 does not.
        assert_eq!(run_len(locs.iter(), 51, 200), 2);
        // Another pack ends the run however close.
        let locs = [at(&a, 100, 100), at(&b, 200, 10)];
        assert_eq!(run_len(locs.iter(), 1 << 20, 1 << 20), 1);
        // A blob larger than max_read is read alone.
        assert_eq!(run_len([at(&a, 0, 500)].iter(), 0, 100), 1);
        assert_eq!(run_len(std::iter::empty(), 0, 100), 0);
    }
}
