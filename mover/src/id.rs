//! 32-byte object and blob identifiers, shown as lowercase hex.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A 256-bit identifier: a keyed BLAKE3 hash for blobs, a plain BLAKE3 hash of the stored bytes for
/// objects (packs, indexes, snapshots), or random bytes for key slots.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The plain BLAKE3 hash of `data`: the name of a stored object.
    pub fn of_object(data: &[u8]) -> Self {
        Id(*blake3::hash(data).as_bytes())
    }

    /// One id for a sequence of byte strings (each length-prefixed, so no two sequences give
    /// the same input): a directory known by the list of its tree blobs, for example. Not stored.
    pub(crate) fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Id(*h.finalize().as_bytes())
    }

    /// Random id (key slots).
    ///
    /// # Errors
    /// When the operating system's random source fails.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 32];
        crate::crypto::random_bytes(&mut b)?;
        Ok(Id(b))
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| Error::invalid(format!("not an id: {s:?}")))?;
        Ok(Id(b))
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(|_| D::Error::custom("invalid id"))
        } else {
            let b: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
            let arr: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| D::Error::custom("id must be 32 bytes"))?;
            Ok(Id(arr))
        }
    }
}
