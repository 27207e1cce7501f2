//! Compression stage: zstd, and a blob that does not shrink is stored raw.
//!
//! A large chunk is probed first: a sample spread over it is compressed at zstd's fastest level,
//! and when the sample does not shrink by `1/PROBE_GAIN` the chunk is stored raw without being
//! compressed whole. Already-compressed or encrypted data (media, archives, random bytes) then
//! costs a sample instead of a full level-3 pass whose output is thrown away; this is ZFS's
//! "early abort" and borg's `auto` compression, with a sample instead of a whole fast pass. The
//! decision never changes a blob's id, only whether its stored bytes are compressed.

use crate::error::{Error, Result};

/// Chunks at least this long are probed before being compressed.
const PROBE_MIN: usize = 128 << 10;
/// The sample: this many slices of `PROBE_SLICE` bytes, evenly spread over the chunk, so a
/// compressible part of at least `1/PROBE_SLICES` of the chunk lands in it.
const PROBE_SLICES: usize = 8;
const PROBE_SLICE: usize = 4 << 10;
/// The sample must shrink by at least `1/PROBE_GAIN` of its size (3%) for the chunk to be
/// compressed.
const PROBE_GAIN: usize = 32;

/// A reusable zstd compressor (one per worker thread).
pub struct Compressor {
    inner: Option<zstd::bulk::Compressor<'static>>,
    /// zstd level 1 for the probe sample.
    probe: Option<zstd::bulk::Compressor<'static>>,
    sample: Vec<u8>,
    out: Vec<u8>,
}

impl Compressor {
    /// A compressor at `level`; level 0 turns compression off.
    ///
    /// # Errors
    /// When zstd rejects the level.
    pub fn new(level: i32) -> Result<Self> {
        let make = |level| {
            zstd::bulk::Compressor::new(level)
                .map_err(|e| Error::invalid(format!("zstd level {level}: {e}")))
        };
        let (inner, probe) = if level == 0 {
            (None, None)
        } else {
            (Some(make(level)?), Some(make(1)?))
        };
        Ok(Self {
            inner,
            probe,
            sample: Vec::new(),
            out: Vec::new(),
        })
    }

    /// Compress `data`; `None` when it is stored raw: the result would not be smaller, or the
    /// probe found a large chunk incompressible.
    pub fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        if !self.worth_compressing(data) {
            return None;
        }
        let z = self.inner.as_mut()?;
        self.out.clear();
        self.out
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        match z.compress_to_buffer(data, &mut self.out) {
            Ok(n) if n < data.len() => Some(&self.out[..n]),
            _ => None,
        }
    }

    /// Whether `data` is small, or its sample shrinks enough at zstd level 1.
    fn worth_compressing(&mut self, data: &[u8]) -> bool {
        let Some(probe) = self.probe.as_mut() else {
            return false;
        };
        if data.len() < PROBE_MIN {
            return true;
        }
        let stride = data.len() / PROBE_SLICES;
        self.sample.clear();
        for i in 0..PROBE_SLICES {
            let at = i * stride;
            self.sample.extend_from_slice(&data[at..at + PROBE_SLICE]);
        }
        self.out.clear();
        self.out
            .reserve(zstd::zstd_safe::compress_bound(self.sample.len()));
        match probe.compress_to_buffer(&self.sample, &mut self.out) {
            Ok(n) => n + self.sample.len() / PROBE_GAIN <= self.sample.len(),
            // Let the real compression decide.
            Err(_) => true,
        }
    }
}

/// Decompress a blob that must inflate to exactly `raw_len` bytes.
///
/// # Errors
/// `Corrupt` when it does not.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(data, raw_len, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first), reusing its allocation.
///
/// # Errors
/// `Corrupt` when the blob does not inflate to exactly `raw_len` bytes.
pub fn decompress_into(data: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    thread_local! {
        // A decompression context per thread: creating one per blob showed up in restore profiles.
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    out.clear();
    out.reserve(raw_len);
    DCTX.with_borrow_mut(|d| {
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("just created")
            .decompress_to_buffer(data, out)
    })
    .map_err(|_| Error::corrupt("blob does not decompress"))?;
    if out.len() != raw_len {
        return Err(Error::corrupt("blob decompresses to the wrong length"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic incompressible bytes.
    fn noise(seed: &str, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut v);
        v
    }

    fn text(len: usize) -> Vec<u8> {
        let line = b"fn main() { println!(\"hello, lifeboat\"); } // a line of source\n";
        line.iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn probe_stores_noise_raw_and_compresses_what_shrinks() {
        let mut c = Compressor::new(3).unwrap();
        // Large and small incompressible chunks are stored raw (the small one after trying).
        assert!(c.compress(&noise("a", 1 << 20)).is_none());
        assert!(c.compress(&noise("b", 4 << 10)).is_none());
        assert!(!c.worth_compressing(&noise("c", 1 << 20)));
        // Text compresses, large or small.
        let t = text(1 << 20);
        let z = c.compress(&t).unwrap().to_vec();
        assert!(z.len() < t.len() / 10);
        assert_eq!(decompress(&z, t.len()).unwrap(), t);
        assert!(c.compress(&text(1000)).is_some());
        // A compressible eighth anywhere in a noisy chunk is enough for it to be compressed
        // whole, and the result is smaller by about that eighth.
        for at in 0..8 {
            let mut mixed = noise("d", 1 << 20);
            let eighth = (1 << 20) / 8;
            mixed[at * eighth..(at + 1) * eighth].copy_from_slice(&text(eighth));
            let z = c.compress(&mixed).unwrap().to_vec();
            assert!(z.len() < mixed.len() - eighth * 9 / 10, "eighth {at}");
            assert_eq!(decompress(&z, mixed.len()).unwrap(), mixed);
        }
        // A noisy chunk with a compressible part too small to matter is not compressed whole.
        let mut sparse_text = noise("e", 1 << 20);
        sparse_text[100..600].copy_from_slice(&text(500));
        assert!(!c.worth_compressing(&sparse_text));
        // Level 0 stores everything raw.
        assert!(Compressor::new(0).unwrap().compress(&t).is_none());
    }
}
