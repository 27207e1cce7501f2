//! Test support: seeded damage to encoded bytes, for the decoders' tests (every decoder of stored
//! bytes must refuse damage with an error, never a panic, and never read it as something else).

/// A seeded xorshift generator that damages byte strings.
pub(crate) struct Damage(u64);

impl Damage {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A number below `n` (which must not be 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % n as u64) as usize
    }

    /// One to three changes to `b`: a flipped bit, a replaced byte, a cut, an inserted or a
    /// removed byte.
    pub(crate) fn apply(&mut self, b: &mut Vec<u8>) {
        for _ in 0..=self.below(3) {
            if b.is_empty() {
                return;
            }
            let at = self.below(b.len());
            match self.below(5) {
                0 => b[at] ^= 1 << self.below(8),
                1 => b[at] = self.below(256) as u8,
                2 => b.truncate(at),
                3 => b.insert(at, self.below(256) as u8),
                _ => {
                    b.remove(at);
                }
            }
        }
    }
}
