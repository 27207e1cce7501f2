//! Benchmarks of Lifeboat's data path. The criterion benches live in `benches/benches/`; this crate
//! holds the seeded data they share, and the peers the comparison commands run.

pub mod peers;

/// A seeded xorshift generator: benches and corpora must be the same on every run and machine.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is avoided internally).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Deterministic data of `len` bytes: `compressible_percent`% repeated text, the rest pseudo-random,
/// in 64 KiB stripes, so compression benches see realistic mixed data.
pub fn seeded(len: usize, compressible_percent: u8, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len);
    let text = b"fn main() { println!(\"lifeboat keeps applications afloat\"); } // ";
    let mut stripe = 0usize;
    while out.len() < len {
        let n = (64 << 10).min(len - out.len());
        if (stripe % 100) < usize::from(compressible_percent) {
            out.extend(text.iter().cycle().take(n));
        } else {
            for _ in 0..n.div_ceil(8) {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            out.truncate(out.len().min(len));
        }
        stripe += 1;
    }
    out
}

/// Call `f` with every regular file below `p` (symlinks not followed) and its directory entry.
///
/// # Errors
/// The first directory that cannot be listed, or the first error of `f`.
pub fn for_each_file(
    p: &std::path::Path,
    mut f: impl FnMut(&std::fs::DirEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                f(&e)?;
            }
        }
    }
    Ok(())
}

/// Regular-file bytes and count below `p` (symlinks not followed).
///
/// # Errors
/// When a directory cannot be listed.
pub fn tree_size(p: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut files) = (0, 0);
    for_each_file(p, |e| {
        bytes += e.metadata()?.len();
        files += 1;
        Ok(())
    })?;
    Ok((bytes, files))
}

/// A size for the result tables: GiB from 1 GiB on, else MiB.
pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / f64::from(1 << 30))
    } else {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    }
}
