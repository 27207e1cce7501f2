//! Keys and authenticated encryption.
//!
//! One random 32-byte master secret per repository; every other key is derived from it with BLAKE3's
//! `derive_key` under a fixed context string, so each purpose has an independent key:
//!
//! | purpose              | derivation                                   |
//! |----------------------|----------------------------------------------|
//! | blob ids             | `derive_key("lifeboat v1 blob id", master)`  |
//! | chunker gear seed    | `derive_key("lifeboat v1 chunker seed", …)`  |
//! | config MAC           | `derive_key("lifeboat v1 config mac", …)`    |
//! | object/pack keys     | keyed BLAKE3 of a random 32-byte salt under `derive_key("lifeboat v1 object key", master)` |
//!
//! Every stored object has its own random salt and therefore its own AES-256-GCM key; inside one
//! object the nonce is a counter plus a domain byte. A (key, nonce) pair can only repeat if two
//! salts collide (2^-128 per pair), however many writers there are.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::id::Id;

/// Length of the random salt at the head of every sealed object.
pub const SALT_LEN: usize = 32;
/// AES-GCM authentication tag length.
pub const TAG_LEN: usize = 16;

/// Nonce domains: the byte at position 11 of every nonce says what the ciphertext is.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Domain {
    Blob = 0,
    PackHeader = 1,
    Object = 2,
}

/// Fill `buf` from the operating system's random source.
///
/// # Errors
/// When the random source fails.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf)
        .map_err(|e| Error::new(crate::ErrorKind::Io, format!("random source failed: {e}")))
}

/// The repository's master secret and the keys derived from it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    master: [u8; 32],
    id_key: [u8; 32],
    object_key: [u8; 32],
    mac_key: [u8; 32],
    gear_seed: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derive every working key from a master secret.
    pub fn from_master(master: [u8; 32]) -> Self {
        let id_key = blake3::derive_key("lifeboat v1 blob id", &master);
        let object_key = blake3::derive_key("lifeboat v1 object key", &master);
        let mac_key = blake3::derive_key("lifeboat v1 config mac", &master);
        let seed = blake3::derive_key("lifeboat v1 chunker seed", &master);
        let gear_seed = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
        Self {
            master,
            id_key,
            object_key,
            mac_key,
            gear_seed,
        }
    }

    /// A fresh random master secret.
    ///
    /// # Errors
    /// When the random source fails.
    pub fn generate() -> Result<Self> {
        let mut m = [0u8; 32];
        random_bytes(&mut m)?;
        Ok(Self::from_master(m))
    }

    pub(crate) fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext, so ids reveal nothing without the key.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The secret seed `XOR`ed into the chunker's gear table, so cut points reveal nothing.
    pub fn gear_seed(&self) -> u64 {
        self.gear_seed
    }

    /// MAC over the plaintext repository config.
    pub(crate) fn config_mac(&self, body: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, body).as_bytes()
    }

    /// The AES-256-GCM cipher of the object whose salt is `salt`.
    pub(crate) fn object_cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        let mut k = *blake3::keyed_hash(&self.object_key, salt).as_bytes();
        let aes = Aes256Gcm::new_from_slice(&k).expect("32-byte key");
        k.zeroize();
        ObjectCipher { aes }
    }
}

/// The cipher of one object (pack, index, snapshot): a per-object key and a counter nonce.
pub(crate) struct ObjectCipher {
    aes: Aes256Gcm,
}

fn nonce(domain: Domain, counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n[11] = domain as u8;
    Nonce::from(n)
}

impl ObjectCipher {
    /// Encrypt `buf[start..]` in place and append the tag.
    pub(crate) fn seal_tail(
        &self,
        domain: Domain,
        counter: u64,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) {
        let tag = self
            .aes
            .encrypt_inout_detached(&nonce(domain, counter), aad, (&mut buf[start..]).into())
            .expect("AES-GCM accepts messages below 64 GiB");
        buf.extend_from_slice(&tag);
    }

    /// Decrypt `ct` (ciphertext followed by tag) in place; returns the plaintext length.
    pub(crate) fn open_in_place(
        &self,
        domain: Domain,
        counter: u64,
        aad: &[u8],
        ct: &mut [u8],
    ) -> Result<usize> {
        if ct.len() < TAG_LEN {
            return Err(Error::corrupt("ciphertext shorter than its tag"));
        }
        let (body, tag) = ct.split_at_mut(ct.len() - TAG_LEN);
        let tag = aes_gcm::Tag::try_from(&*tag).map_err(|_| Error::corrupt("bad tag length"))?;
        self.aes
            .decrypt_inout_detached(&nonce(domain, counter), aad, body.into(), &tag)
            .map_err(|_| Error::corrupt("authentication failed"))?;
        Ok(body.len())
    }
}

/// Magic and version of a sealed single object (index, snapshot).
const OBJECT_MAGIC: &[u8; 7] = b"LBOBJ1\0";
/// Upper bound on a decompressed single object, so a hostile object cannot exhaust memory.
const MAX_OBJECT_PLAIN: usize = 1 << 30;

/// What a sealed object holds; bound into its authentication so one kind can't pass for another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ObjectKind {
    /// An index object.
    Index = 1,
    /// A snapshot object.
    Snapshot = 2,
    /// A deletion plan written by `prune`.
    Plan = 3,
    /// A record of Object Lock retention dates.
    Ledger = 4,
}

/// Seal `plain`: `magic(7) kind(1) salt(32) AES-GCM(zstd(plain))`.
///
/// # Errors
/// When compression or the random source fails.
pub fn seal_object(keys: &Keys, kind: ObjectKind, plain: &[u8]) -> Result<Vec<u8>> {
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    let mut out = Vec::with_capacity(plain.len() / 2 + 64);
    out.extend_from_slice(OBJECT_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&salt);
    let header_len = out.len();
    let aad = out.clone();
    let z = zstd::bulk::compress(plain, 3).map_err(|e| Error::io("compressing object", e))?;
    out.extend_from_slice(&z);
    keys.object_cipher(&salt)
        .seal_tail(Domain::Object, 0, &aad, &mut out, header_len);
    Ok(out)
}

/// Open an object sealed by [`seal_object`], checking its kind.
///
/// # Errors
/// `Corrupt` when the object is truncated, of the wrong kind, fails authentication or does not
/// decompress.
pub fn open_object(keys: &Keys, kind: ObjectKind, mut data: Vec<u8>) -> Result<Vec<u8>> {
    let header_len = OBJECT_MAGIC.len() + 1 + SALT_LEN;
    if data.len() < header_len + TAG_LEN || &data[..7] != OBJECT_MAGIC {
        return Err(Error::corrupt(
            "not a Lifeboat object (bad magic or truncated)",
        ));
    }
    if data[7] != kind as u8 {
        return Err(Error::corrupt(format!("object is not a {kind:?}")));
    }
    let salt: [u8; SALT_LEN] = data[8..header_len].try_into().expect("salt length");
    let (head, body) = data.split_at_mut(header_len);
    let n = keys
        .object_cipher(&salt)
        .open_in_place(Domain::Object, 0, head, body)?;
    let z = &body[..n];
    // Sized by the frame's declared content size (every object is written with it), not by the
    // limit: a buffer of the limit's size was a 1 GiB allocation per object read.
    let size = match zstd::zstd_safe::get_frame_content_size(z) {
        Ok(Some(size)) if size <= MAX_OBJECT_PLAIN as u64 => size as usize,
        _ => return Err(Error::corrupt("object has no valid decompressed size")),
    };
    match zstd::bulk::decompress(z, size) {
        Ok(plain) if plain.len() == size => Ok(plain),
        _ => Err(Error::corrupt("object does not decompress")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_round_trip_and_tamper() {
        let keys = Keys::generate().unwrap();
        let sealed = seal_object(&keys, ObjectKind::Snapshot, b"hello").unwrap();
        assert_eq!(
            open_object(&keys, ObjectKind::Snapshot, sealed.clone()).unwrap(),
            b"hello"
        );
        assert!(open_object(&keys, ObjectKind::Index, sealed.clone()).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(
                open_object(&keys, ObjectKind::Snapshot, bad).is_err(),
                "flip at {i} undetected"
            );
        }
        let other = Keys::generate().unwrap();
        assert!(open_object(&other, ObjectKind::Snapshot, sealed).is_err());
    }

    #[test]
    fn objects_of_any_size_open_to_their_exact_plaintext() {
        let keys = Keys::generate().unwrap();
        for plain in [Vec::new(), vec![7u8; 1], vec![0u8; 5 << 20]] {
            let sealed = seal_object(&keys, ObjectKind::Index, &plain).unwrap();
            let opened = open_object(&keys, ObjectKind::Index, sealed).unwrap();
            assert_eq!(opened, plain);
            // Sized from the frame, not from the 1 GiB limit.
            assert!(
                opened.capacity() <= plain.len().max(1) * 2,
                "{}",
                opened.capacity()
            );
        }
    }

    #[test]
    fn debug_hides_keys() {
        let keys = Keys::generate().unwrap();
        assert_eq!(format!("{keys:?}"), "Keys(<redacted>)");
    }
}
