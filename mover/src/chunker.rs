//! Content-defined chunking: `FastCDC` (2020), normalization level 2, gear table keyed by the repository.
//!
//! Chunking runs over large in-memory slices (no copying stream). [`Chunker::cut`] returns the end
//! offsets of the chunks that are final given the bytes seen so far: a chunk is only cut once at
//! least `max` bytes follow its start (or the input ended), so the cut points are exactly those of
//! chunking the whole stream at once, whatever the buffer size.

use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Chunk size bounds, stored in the repository config (changing them changes every cut point).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    /// Smallest chunk, bytes.
    pub min: u32,
    /// Average chunk, bytes.
    pub avg: u32,
    /// Largest chunk, bytes.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Check the bounds fastcdc accepts.
    ///
    /// # Errors
    /// `InvalidInput` (or `Corrupt` from a config) when out of range.
    pub fn validate(self) -> Result<Self> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min < avg
            && avg < max
            && min.is_multiple_of(2)
            && avg.is_multiple_of(2)
            && max.is_multiple_of(2);
        if ok {
            Ok(self)
        } else {
            Err(Error::invalid(format!(
                "invalid chunker parameters {self:?}"
            )))
        }
    }
}

/// How data is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chunking {
    /// Content-defined (`FastCDC`): cut points move with the content, so inserted or shifted data
    /// still deduplicates.
    #[default]
    Cdc,
    /// Fixed-size chunks of the average size, aligned to the start of each data region: no cut
    /// point search, and in-place block changes touch exactly their own chunks.
    Fixed,
}

/// What `Chunker::resume_cut` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstCut {
    /// The first chunk ends here, whatever bytes follow.
    At(usize),
    /// Its end is not known yet: more bytes are needed, and the positions before `clean` hold no
    /// cut (pass it back with them).
    More { clean: usize },
}

/// A configured chunker; cheap to clone.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    mode: Chunking,
    gear: Gear,
}

/// The keyed gear table, fastcdc's copy of it shifted left by one (for the two-bytes-a-step scan),
/// and the normalised masks (`FastCDC` 2020, level 2).
#[derive(Clone)]
struct Gear {
    table: std::sync::Arc<[[u64; 256]; 2]>,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Gear {
    // The table is derived from the repository's secret gear seed: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gear(..)")
    }
}

/// Bytes before a position that decide its gear hash: each step shifts the hash left by one, so a
/// byte's contribution has left the 64-bit hash 64 steps later.
const WINDOW: usize = 64;
/// Positions per lane of the interleaved scan.
const LANE: usize = 4096;

impl Chunker {
    /// A content-defined chunker with these bounds and secret gear seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let table = [&gear, &gear_ls]
            .map(|t| -> [u64; 256] { t[..].try_into().expect("gear tables have 256 entries") });
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level2);
        // The two-bytes-at-a-time scan of fastcdc tests even positions against `mask << 1`; that
        // equals testing `mask` only while the mask leaves the top bit free, as all of fastcdc's do.
        assert!(
            mask_s >> 63 == 0 && mask_l >> 63 == 0,
            "gear masks use the top bit"
        );
        Self {
            params,
            mode: Chunking::Cdc,
            gear: Gear {
                table: std::sync::Arc::new(table),
                mask_s,
                mask_l,
            },
        }
    }

    /// The same chunker in another mode (fixed chunks are `avg` bytes long).
    #[must_use]
    pub fn with_mode(mut self, mode: Chunking) -> Self {
        self.mode = mode;
        self
    }

    /// Whether chunks have a fixed size (segments then start exactly at their nominal offset).
    pub fn is_fixed(&self) -> bool {
        self.mode == Chunking::Fixed
    }

    /// The largest chunk this chunker emits.
    pub fn max_size(&self) -> usize {
        self.params.max as usize
    }

    /// The average chunk size it aims at.
    pub fn avg_size(&self) -> usize {
        self.params.avg as usize
    }

    /// Append to `ends` the end offsets (exclusive, relative to `data`) of every chunk of `data` that
    /// is final; `eof` says no more bytes follow. Returns how many bytes were consumed: the caller
    /// keeps `data[consumed..]` and appends more before calling again.
    pub fn cut(&self, data: &[u8], eof: bool, ends: &mut Vec<usize>) -> usize {
        let p = self.params;
        if self.mode == Chunking::Fixed {
            let size = p.avg as usize;
            let mut pos = 0;
            while data.len() - pos >= size {
                pos += size;
                ends.push(pos);
            }
            if eof && pos < data.len() {
                pos = data.len();
                ends.push(pos);
            }
            return pos;
        }
        let mut pos = 0;
        while pos < data.len() {
            let remaining = data.len() - pos;
            if !eof && remaining < p.max as usize {
                break;
            }
            pos += self.chunk_len(&data[pos..]);
            ends.push(pos);
        }
        pos
    }

    /// The end of the first chunk of `data`, or `None` when more bytes follow (`!eof`) and could
    /// still move it: with fewer than `max` bytes, a content-defined cut found before the end of
    /// `data` is final (more bytes change neither the masks up to `avg` nor any earlier position's
    /// hash), so a caller can look at a little more than `avg` bytes first. Used to place the seams
    /// between parallel segments of a large file.
    pub fn first_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        match self.resume_cut(data, eof, 0) {
            FirstCut::At(cut) => Some(cut),
            FirstCut::More { .. } => None,
        }
    }

    /// `first_cut`, resumed: positions before `clean` are known to hold no cut, because an earlier
    /// call on a prefix of `data` returned `More { clean }`, and are not hashed again. Reading a
    /// little at a time, a caller hashes each byte about once and stops reading right after the
    /// cut.
    pub fn resume_cut(&self, data: &[u8], eof: bool, clean: usize) -> FirstCut {
        let p = self.params;
        if data.is_empty() || (!eof && data.len() < p.avg as usize) {
            return FirstCut::More { clean };
        }
        if self.mode == Chunking::Fixed {
            return FirstCut::At(data.len().min(p.avg as usize));
        }
        let cut = self.chunk_len_from(data, clean);
        // Short of `max` and of the end, a chunk ends before the last even position only where
        // its cut was found; otherwise it ran into the end of `data`, and every position before
        // that was tested.
        if eof || data.len() >= p.max as usize || cut < data.len() & !1 {
            FirstCut::At(cut)
        } else {
            FirstCut::More {
                clean: data.len() & !1,
            }
        }
    }

    /// The length of the chunk at the start of `data`: exactly what `fastcdc::v2020::cut_gear`
    /// returns for it (the tests hold the two side by side), found faster.
    ///
    /// fastcdc's scan is one dependency chain (shift, add, test per byte), so the core mostly
    /// waits on it. The hash at a position depends only on the `WINDOW` bytes before it, so four
    /// lanes of the range are hashed at once, each starting `WINDOW` bytes early; when any lane
    /// hits, the block is scanned again in order for its first hit.
    fn chunk_len(&self, data: &[u8]) -> usize {
        self.chunk_len_from(data, 0)
    }

    /// `chunk_len`, testing positions from `clean` on: the earlier ones are known not to be cuts
    /// (they were tested with at least `avg` bytes present, so under the same masks).
    fn chunk_len_from(&self, data: &[u8], clean: usize) -> usize {
        let p = self.params;
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        let mut remaining = data.len();
        if remaining <= min {
            return remaining;
        }
        let mut center = avg;
        if remaining > max {
            remaining = max;
        } else if remaining < center {
            center = remaining;
        }
        // fastcdc tests positions in pairs: the strict mask up to the even floor of `center`, the
        // relaxed one up to the even floor of `remaining`; a last odd byte is never a cut.
        let strict_end = center & !1;
        let end = remaining & !1;
        let g = &self.gear;
        let from = clean.max(min);
        first_hit(data, min, from.min(strict_end), strict_end, g.mask_s, g)
            .or_else(|| first_hit(data, min, from.clamp(strict_end, end), end, g.mask_l, g))
            .unwrap_or(remaining)
    }
}

/// Whether every byte of `block` is zero (compared a page at a time: memcmp is vectorized, and
/// returns at the first differing byte of ordinary data).
pub(crate) fn is_zero(block: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    block.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The first position `p` in `from..to` whose gear hash, over the bytes `origin..=p`, has none of
/// `mask`'s bits set.
///
/// All-zero blocks (the free space of a volume, the zeroed tail of a preallocated file) are
/// skipped after hashing their first `WINDOW` positions: every later position of such a block
/// hashes `WINDOW` zeros, to the same value as its position `WINDOW - 1`, so it hits only if that
/// one did. The cuts are the same as with hashing every byte.
fn first_hit(
    data: &[u8],
    origin: usize,
    from: usize,
    to: usize,
    mask: u64,
    g: &Gear,
) -> Option<usize> {
    let [gear, gear_ls] = &*g.table;
    let warm = |start: usize| {
        data[start.saturating_sub(WINDOW).max(origin)..start]
            .iter()
            .fold(0u64, |h, &b| (h << 1).wrapping_add(gear[b as usize]))
    };
    // In order from `at` to the end of its block, once a lane found a hit somewhere in it.
    let ordered = |at: usize| {
        let found = scan(data, at, at + 4 * LANE, mask, gear, warm(at));
        debug_assert!(found.is_some(), "a lane hit that the ordered scan missed");
        found
    };
    let mask_ls = mask << 1;
    let mut at = from;
    while to - at >= 4 * LANE {
        if is_zero(&data[at..at + 4 * LANE]) {
            // Positions from `at + WINDOW - 1` on hash only zeros (`origin <= at`).
            if let Some(p) = scan(data, at, at + WINDOW, mask, gear, warm(at)) {
                return Some(p);
            }
            at += 4 * LANE;
            continue;
        }
        let (mut h0, mut h1, mut h2, mut h3) = (
            warm(at),
            warm(at + LANE),
            warm(at + 2 * LANE),
            warm(at + 3 * LANE),
        );
        let block = &data[at..at + 4 * LANE];
        let (l0, rest) = block.split_at(LANE);
        let (l1, rest) = rest.split_at(LANE);
        let (l2, l3) = rest.split_at(LANE);
        // Two bytes a step, as fastcdc does: the first byte's hash is kept shifted left by one
        // (one shift a step instead of two) and tested against the shifted mask.
        let pairs = l0
            .chunks_exact(2)
            .zip(l1.chunks_exact(2))
            .zip(l2.chunks_exact(2))
            .zip(l3.chunks_exact(2));
        for (((a, b), c), d) in pairs {
            h0 = (h0 << 2).wrapping_add(gear_ls[a[0] as usize]);
            h1 = (h1 << 2).wrapping_add(gear_ls[b[0] as usize]);
            h2 = (h2 << 2).wrapping_add(gear_ls[c[0] as usize]);
            h3 = (h3 << 2).wrapping_add(gear_ls[d[0] as usize]);
            if h0 & mask_ls == 0 || h1 & mask_ls == 0 || h2 & mask_ls == 0 || h3 & mask_ls == 0 {
                return ordered(at);
            }
            h0 = h0.wrapping_add(gear[a[1] as usize]);
            h1 = h1.wrapping_add(gear[b[1] as usize]);
            h2 = h2.wrapping_add(gear[c[1] as usize]);
            h3 = h3.wrapping_add(gear[d[1] as usize]);
            if h0 & mask == 0 || h1 & mask == 0 || h2 & mask == 0 || h3 & mask == 0 {
                return ordered(at);
            }
        }
        at += 4 * LANE;
    }
    scan(data, at, to, mask, gear, warm(at))
}

/// The first hit in `from..to`, in order, starting from the hash `h` of the bytes before `from`.
fn scan(
    data: &[u8],
    from: usize,
    to: usize,
    mask: u64,
    gear: &[u64; 256],
    mut h: u64,
) -> Option<usize> {
    for (i, &b) in data[from..to].iter().enumerate() {
        h = (h << 1).wrapping_add(gear[b as usize]);
        if h & mask == 0 {
            return Some(from + i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so the pinned boundaries never depend on a crate.
    pub(crate) fn seeded(len: usize, mut s: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.extend_from_slice(&s.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn all_cuts(c: &Chunker, data: &[u8], step: usize) -> Vec<usize> {
        // Feed `data` through a sliding buffer `step` bytes at a time.
        let mut ends = Vec::new();
        let (mut base, mut buf) = (0usize, Vec::new());
        let mut fed = 0;
        loop {
            let take = step.min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + take]);
            fed += take;
            let eof = fed == data.len();
            let mut local = Vec::new();
            let used = c.cut(&buf, eof, &mut local);
            ends.extend(local.iter().map(|e| e + base));
            buf.drain(..used);
            base += used;
            if eof {
                return ends;
            }
        }
    }

    /// Pins the cut points of the default parameters on seeded data. If this fails, cut points
    /// changed: every existing repository would stop deduplicating against new backups. Do not
    /// update the numbers without a format version bump.
    #[test]
    fn boundaries_are_pinned() {
        let data = seeded(24 << 20, 0x5eed_1234_abcd_0001);
        let c = Chunker::new(ChunkerParams::default(), 0x0123_4567_89ab_cdef);
        let ends = all_cuts(&c, &data, 16 << 20);
        let digest = blake3::hash(
            &ends
                .iter()
                .flat_map(|e| (*e as u64).to_le_bytes())
                .collect::<Vec<_>>(),
        );
        assert_eq!(ends.len(), PINNED_COUNT, "chunk count changed: {ends:?}");
        assert_eq!(&ends[..4], &PINNED_FIRST, "first boundaries changed");
        assert_eq!(
            digest.to_hex().as_str(),
            PINNED_DIGEST,
            "boundaries changed: {ends:?}"
        );
    }

    #[test]
    fn buffer_size_does_not_change_cuts() {
        let data = seeded(20 << 20, 42);
        let c = Chunker::new(ChunkerParams::default(), 7);
        let whole = all_cuts(&c, &data, data.len());
        for step in [1 << 20, 3 << 20, 8 << 20] {
            assert_eq!(all_cuts(&c, &data, step), whole, "step {step}");
        }
        assert_eq!(*whole.last().unwrap(), data.len());
        let sizes: Vec<_> = whole.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(sizes.iter().all(|s| *s <= 4 << 20));
    }

    #[test]
    fn seed_changes_cuts() {
        let data = seeded(16 << 20, 99);
        let a = all_cuts(
            &Chunker::new(ChunkerParams::default(), 1),
            &data,
            data.len(),
        );
        let b = all_cuts(
            &Chunker::new(ChunkerParams::default(), 2),
            &data,
            data.len(),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn fixed_chunks_are_aligned_whatever_the_buffer() {
        let data = seeded((5 << 20) + 12_345, 3);
        let c = Chunker::new(ChunkerParams::default(), 7).with_mode(Chunking::Fixed);
        let avg = ChunkerParams::default().avg as usize;
        for step in [1 << 20, 3 << 20, data.len()] {
            let cuts = all_cuts(&c, &data, step);
            assert_eq!(cuts.len(), 6, "step {step}");
            assert!(
                cuts[..5]
                    .iter()
                    .enumerate()
                    .all(|(i, e)| *e == (i + 1) * avg)
            );
            assert_eq!(*cuts.last().unwrap(), data.len());
        }
    }

    /// Random data with zero runs of 20 KB to 900 KB at uneven offsets (a volume's free space).
    fn with_zero_runs(len: usize, seed: u64) -> Vec<u8> {
        let mut v = seeded(len, seed);
        let mut s = seeded(4096, seed + 1).into_iter().cycle();
        let mut r = || usize::from(s.next().unwrap()) * 3571 + usize::from(s.next().unwrap());
        let mut at = r() % 20_000;
        while at < v.len() {
            let run = (20_000 + r() % 880_000).min(v.len() - at);
            v[at..at + run].fill(0);
            at += run + 1 + r() % 300_000;
        }
        v
    }

    /// `c.chunk_len` against fastcdc's own scan on `data`, at every kind of length (shorter than
    /// `min`, odd, between `avg` and `max`, longer) from uneven offsets.
    fn assert_matches_fastcdc(c: &Chunker, seed: u64, data: &[u8], what: &str) {
        use fastcdc::v2020::cut_gear;
        let p = c.params;
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let (ms, ml) = select_masks(p.avg as usize, Normalization::Level2);
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        let oracle =
            |d: &[u8]| cut_gear(d, min, avg, max, ms, ml, ms << 1, ml << 1, &gear, &gear_ls).1;
        let mut s = seeded(64, 100 + data.len() as u64).into_iter().cycle();
        let mut at = 0;
        let mut checked = 0;
        while at < data.len() && checked < 400 {
            let pick = usize::from(s.next().unwrap());
            let len = match pick % 6 {
                0 => min + pick % 3,
                1 => avg - 1 + pick % 3,
                2 => max + 1,
                3 => usize::midpoint(avg, max) + 1,
                4 => min / 2 + 1,
                _ => data.len(),
            }
            .min(data.len() - at);
            let d = &data[at..at + len];
            assert_eq!(
                c.chunk_len(d),
                oracle(d),
                "params {p:?}, {what}, at {at}, len {len}"
            );
            at += oracle(&data[at..]).max(1) + pick % 7;
            checked += 1;
        }
    }

    /// fastcdc's cut of `data`'s first chunk.
    fn assert_matches_fastcdc_once(c: &Chunker, seed: u64, data: &[u8]) -> usize {
        let p = c.params;
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let (ms, ml) = select_masks(p.avg as usize, Normalization::Level2);
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        fastcdc::v2020::cut_gear(
            data,
            min,
            avg,
            max,
            ms,
            ml,
            ms << 1,
            ml << 1,
            &gear,
            &gear_ls,
        )
        .1
    }

    /// The interleaved scan (and its zero-block shortcut) cuts exactly where fastcdc's own scan
    /// does, on random, zero, random-with-zero-runs and repetitive data.
    #[test]
    fn cuts_match_fastcdc() {
        let mut text = Vec::new();
        while text.len() < 6 << 20 {
            text.extend_from_slice(b"INSERT INTO t VALUES (42, 'lifeboat'); -- ");
            text.extend_from_slice(&(text.len() as u64 / 977).to_le_bytes());
        }
        let inputs = [
            seeded(6 << 20, 11),
            vec![0u8; 6 << 20],
            with_zero_runs(12 << 20, 14),
            text,
            seeded(6 << 20, 12).iter().map(|b| b & 3).collect(),
        ];
        let params = [
            ChunkerParams::default(),
            ChunkerParams {
                min: 8 << 10,
                avg: 64 << 10,
                max: 256 << 10,
            },
            ChunkerParams {
                min: 64,
                avg: 256,
                max: 1024,
            },
        ];
        for (k, p) in params.into_iter().enumerate() {
            let seed = 0x5eed + k as u64;
            let c = Chunker::new(p, seed);
            for (i, data) in inputs.iter().enumerate() {
                assert_matches_fastcdc(&c, seed, data, &format!("input {i}"));
            }
        }
    }

    /// With a key whose zero hash passes the relaxed mask, zero runs are cut where fastcdc cuts
    /// them: the zero-block shortcut finds the hit in the first positions it hashes.
    #[test]
    fn zero_runs_cut_as_fastcdc_when_zeros_hit_the_mask() {
        let p = ChunkerParams {
            min: 8 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        };
        // The keyed table is fastcdc's xor the seed, and 64 zeros hash to minus the zero byte's
        // entry: choose the seed that makes the zero hash miss the strict mask but pass the relaxed.
        let (_, mask_l) = select_masks(p.avg as usize, Normalization::Level2);
        let zero_hash = !mask_l;
        let seed = get_gear_with_seed(0).0[0] ^ zero_hash.wrapping_neg();
        let c = Chunker::new(p, seed);
        let gear = &c.gear.table[0];
        assert_eq!(
            (0..WINDOW).fold(0u64, |h, _| (h << 1).wrapping_add(gear[0])),
            zero_hash
        );
        assert_ne!(zero_hash & c.gear.mask_s, 0);
        let data = with_zero_runs(8 << 20, 15);
        assert_matches_fastcdc(&c, seed, &data, "zero runs");
        // Zeros with 100 random bytes ending where the relaxed mask's scan starts: that block is
        // all zero, its first positions' hashes still mix in the random bytes, and one of them
        // hits (the later ones hash only zeros).
        let mut edge_hits = 0;
        for s in 0..64 {
            let avg = p.avg as usize;
            let mut d = vec![0u8; avg + (200 << 10)];
            d[avg - 100..avg].copy_from_slice(&seeded(100, 1000 + s));
            let cut = c.chunk_len(&d);
            assert_eq!(cut, assert_matches_fastcdc_once(&c, seed, &d), "prefix {s}");
            edge_hits += usize::from((avg + 1..=avg + WINDOW).contains(&cut));
        }
        assert!(
            edge_hits > 32,
            "too few cuts in the first positions: {edge_hits}"
        );
        // Zeros do cut here: a zero run of `max` bytes is more than one chunk.
        assert!(c.chunk_len(&vec![0u8; p.max as usize]) < p.max as usize);
    }

    /// A cut found in a prefix of at least `avg` bytes is the cut of the whole input; a prefix
    /// that does not show it says so.
    #[test]
    fn first_cut_of_a_prefix_is_final_or_absent() {
        for (k, data) in [
            seeded(8 << 20, 21),
            seeded(8 << 20, 22).iter().map(|b| b & 1).collect(),
        ]
        .iter()
        .enumerate()
        {
            let c = Chunker::new(ChunkerParams::default(), 9 + k as u64);
            let (avg, max) = (c.params.avg as usize, c.max_size());
            let mut found = 0;
            for at in (0..(4 << 20)).step_by(97_003) {
                let whole = c.first_cut(&data[at..], false).expect("max bytes given");
                for len in [avg - 1, avg, avg + 1, (avg * 3) / 2, 2 * avg + 1, max - 1] {
                    match c.first_cut(&data[at..at + len], false) {
                        Some(cut) => {
                            assert_eq!(cut, whole, "input {k}, at {at}, len {len}");
                            found += 1;
                        }
                        None => assert!(len < avg || whole >= (len & !1) - 1, "{at} {len}"),
                    }
                }
                assert_eq!(c.first_cut(&data[at..at + max], false), Some(whole));
            }
            assert!(found > 20, "prefixes never showed a cut: {found}");
        }
    }

    /// Growing a prefix a little at a time and resuming the scan finds the same cut as one scan of
    /// the whole, as soon as the prefix holds it.
    #[test]
    fn resumed_cuts_are_the_whole_cuts() {
        for (k, data) in [
            seeded(8 << 20, 31),
            seeded(8 << 20, 32).iter().map(|b| b & 1).collect(),
            vec![0u8; 8 << 20],
        ]
        .iter()
        .enumerate()
        {
            for seed in [9, 10, 11] {
                let c = Chunker::new(ChunkerParams::default(), seed);
                for at in (0..(4 << 20)).step_by(299_993) {
                    let whole = c.first_cut(&data[at..], false).expect("max bytes given");
                    for step in [4096, 65_537, 262_144] {
                        let (mut len, mut clean) = (0, 0);
                        let cut = loop {
                            len += step;
                            match c.resume_cut(&data[at..at + len], false, clean) {
                                FirstCut::At(cut) => break cut,
                                FirstCut::More { clean: k } => clean = k,
                            }
                        };
                        assert_eq!(cut, whole, "input {k}, seed {seed}, at {at}, step {step}");
                        let shown = whole.max(c.params.avg as usize) + 2;
                        assert!(len < shown + step, "read {len} for a cut at {whole}");
                    }
                }
            }
        }
    }

    const PINNED_COUNT: usize = 20;
    const PINNED_FIRST: [usize; 4] = [1_717_755, 2_832_065, 4_782_257, 5_881_274];
    const PINNED_DIGEST: &str = "5692478475b76d57afa33d5cf32188a0b0cbd33a342a5492e75b3a7c4d1c28fe";
}
