//! Benchmarks of Lifeboat's data path. The criterion benches live in `benches/benches/`; this crate
//! holds the seeded data they share.

/// Deterministic data of `len` bytes: `compressible_percent`% repeated text, the rest pseudo-random,
/// in 64 KiB stripes, so compression benches see realistic mixed data.
pub fn seeded(len: usize, compressible_percent: u8, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len);
    let text = b"fn main() { println!(\"lifeboat keeps applications afloat\"); } // ";
    let mut stripe = 0usize;
    while out.len() < len {
        let n = (64 << 10).min(len - out.len());
        if (stripe % 100) < usize::from(compressible_percent) {
            out.extend(text.iter().cycle().take(n));
        } else {
            for _ in 0..n.div_ceil(8) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                out.extend_from_slice(&s.to_le_bytes());
            }
            out.truncate(out.len().min(len));
        }
        stripe += 1;
    }
    out
}
