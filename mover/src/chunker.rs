//! Content-defined chunking: `FastCDC` (2020), normalization level 2, gear table keyed by the repository.
//!
//! Chunking runs over large in-memory slices (no copying stream). [`Chunker::cut`] returns the end
//! offsets of the chunks that are final given the bytes seen so far: a chunk is only cut once at
//! least `max` bytes follow its start (or the input ended), so the cut points are exactly those of
//! chunking the whole stream at once, whatever the buffer size.

use fastcdc::v2020::{FastCDC, Normalization};
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

/// A configured chunker; cheap to clone.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    seed: u64,
    mode: Chunking,
}

impl Chunker {
    /// A content-defined chunker with these bounds and secret gear seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Self {
            params,
            seed,
            mode: Chunking::Cdc,
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
        let cdc = self.cdc(data);
        let mut pos = 0;
        while pos < data.len() {
            let remaining = data.len() - pos;
            if !eof && remaining < p.max as usize {
                break;
            }
            let (_, end) = cdc.cut(pos, remaining);
            ends.push(end);
            pos = end;
        }
        pos
    }

    /// The end of the first chunk of `data`, or `None` when fewer than `max` bytes are given and
    /// more follow. Used to place the seams between parallel segments of a large file.
    pub fn first_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() || (!eof && data.len() < self.max_size()) {
            return None;
        }
        if self.mode == Chunking::Fixed {
            return Some(data.len().min(self.params.avg as usize));
        }
        let n = data.len().min(self.max_size());
        Some(self.cdc(&data[..n]).cut(0, n).1)
    }

    fn cdc<'d>(&self, data: &'d [u8]) -> FastCDC<'d> {
        let p = self.params;
        FastCDC::with_level_and_seed(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level2,
            self.seed,
        )
    }
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

    const PINNED_COUNT: usize = 20;
    const PINNED_FIRST: [usize; 4] = [1_717_755, 2_832_065, 4_782_257, 5_881_274];
    const PINNED_DIGEST: &str = "5692478475b76d57afa33d5cf32188a0b0cbd33a342a5492e75b3a7c4d1c28fe";
}
