//! Sizes as users write them on the command line.

/// A byte count with an optional `K`, `M`, `G` or `T` suffix (powers of 1024, either case; a
/// trailing `B` is allowed), as restic takes them: `500M`, `2g`, `4096`. `None` when it is not
/// one or does not fit in 64 bits.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s
        .strip_suffix(['B', 'b'])
        .filter(|t| !t.is_empty())
        .unwrap_or(s);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_as_restic_writes_them() {
        for (s, n) in [
            ("0", 0),
            ("4096", 4096),
            ("1k", 1 << 10),
            ("500M", 500 << 20),
            ("2g", 2 << 30),
            ("3T", 3 << 40),
            ("10MB", 10 << 20),
            ("7b", 7),
        ] {
            assert_eq!(parse_size(s), Some(n), "{s}");
        }
        for s in [
            "",
            "M",
            "B",
            "1.5G",
            "-1",
            "+1",
            "12X",
            "1 M",
            "99999999999T",
        ] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }
}
