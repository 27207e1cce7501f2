//! Compression stage: zstd, and a blob that does not shrink is stored raw.

use crate::error::{Error, Result};

/// A reusable zstd compressor (one per worker thread).
pub struct Compressor {
    inner: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
}

impl Compressor {
    /// A compressor at `level`; level 0 turns compression off.
    ///
    /// # Errors
    /// When zstd rejects the level.
    pub fn new(level: i32) -> Result<Self> {
        let inner = if level == 0 {
            None
        } else {
            Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::invalid(format!("zstd level {level}: {e}")))?,
            )
        };
        Ok(Self {
            inner,
            out: Vec::new(),
        })
    }

    /// Compress `data`; `None` when the result would not be smaller (store it raw).
    pub fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        let z = self.inner.as_mut()?;
        self.out.clear();
        self.out
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        match z.compress_to_buffer(data, &mut self.out) {
            Ok(n) if n < data.len() => Some(&self.out[..n]),
            _ => None,
        }
    }
}

/// Decompress a blob that must inflate to exactly `raw_len` bytes.
///
/// # Errors
/// `Corrupt` when it does not.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    thread_local! {
        // A decompression context per thread: creating one per blob showed up in restore profiles.
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let out = DCTX
        .with_borrow_mut(|d| {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("just created").decompress(data, raw_len)
        })
        .map_err(|_| Error::corrupt("blob does not decompress"))?;
    if out.len() != raw_len {
        return Err(Error::corrupt("blob decompresses to the wrong length"));
    }
    Ok(out)
}
