//! A set of blob ids that costs about 40 bytes an id: what a backup holds of every blob it adds,
//! to store each one once.
//!
//! A `HashSet<Id>` keeps each 32-byte id in its table, so it costs 33 bytes a bucket: 38–75
//! bytes an id as the table fills, and up to 113 while it doubles (both tables are live). Here the
//! ids sit in fixed blocks, never moved or over-allocated, and the table holds their positions
//! (4 bytes a bucket): 37–43 bytes an id, 49 while the table doubles.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::id::Id;

/// Ids per block: 512 KiB.
const BLOCK: usize = 1 << 14;

#[derive(Default)]
pub struct IdSet {
    blocks: Vec<Vec<Id>>,
    /// Positions in `blocks` (block * `BLOCK` + slot).
    table: HashTable<u32>,
}

/// Blob ids are keyed BLAKE3 hashes: their first bytes are already uniform.
fn hash(id: &Id) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(b)
}

fn at(blocks: &[Vec<Id>], pos: u32) -> &Id {
    let pos = pos as usize;
    &blocks[pos / BLOCK][pos % BLOCK]
}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `id`; false when it was there already.
    pub fn insert(&mut self, id: Id) -> bool {
        // Four billion ids would take 160 GiB here: memory runs out long before the position
        // does.
        let pos = u32::try_from(self.table.len()).expect("fewer than 2^32 ids in one set");
        let blocks = &self.blocks;
        let entry = self.table.entry(
            hash(&id),
            |&p| *at(blocks, p) == id,
            |&p| hash(at(blocks, p)),
        );
        let Entry::Vacant(slot) = entry else {
            return false;
        };
        slot.insert(pos);
        if self.blocks.last().is_none_or(|b| b.len() == BLOCK) {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        self.blocks.last_mut().expect("a block with room").push(id);
        true
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.table
            .find(hash(id), |&p| at(&self.blocks, p) == id)
            .is_some()
    }

    /// The ids, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Id> {
        self.blocks.iter().flatten()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

impl<'a> Extend<&'a Id> for IdSet {
    fn extend<I: IntoIterator<Item = &'a Id>>(&mut self, ids: I) {
        for id in ids {
            self.insert(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn holds_each_id_once_across_blocks() {
        let mut s = IdSet::new();
        let n = 3 * BLOCK as u64 + 17;
        for i in 0..n {
            assert!(s.insert(id(i)), "{i} is new");
        }
        assert_eq!(s.len(), n as usize);
        for i in (0..n).step_by(7) {
            assert!(!s.insert(id(i)), "{i} is there already");
            assert!(s.contains(&id(i)));
        }
        for i in n..n + 1000 {
            assert!(!s.contains(&id(i)), "{i} was never added");
        }
        let listed: Vec<Id> = s.iter().copied().collect();
        assert_eq!(
            listed,
            (0..n).map(id).collect::<Vec<_>>(),
            "each once, in order"
        );
        assert_eq!(s.len(), n as usize);
    }

    /// The table hashes the first eight bytes only: ids that share them are still told apart.
    #[test]
    fn ids_alike_in_their_hash_bytes_stay_distinct() {
        let mut s = IdSet::new();
        let same = |last: u8| {
            let mut b = [7u8; 32];
            b[31] = last;
            Id(b)
        };
        for last in 0..=255 {
            assert!(s.insert(same(last)));
        }
        assert!(!s.insert(same(3)));
        assert!(s.contains(&same(200)));
        let mut other = same(0);
        other.0[20] = 1;
        assert!(!s.contains(&other));
        assert_eq!(s.len(), 256);
    }
}
