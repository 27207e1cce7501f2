//! Key slots: the master secret wrapped under a password (argon2id) or a raw 32-byte key file.
//!
//! Each slot is a JSON object `keys/<random id>`. Anyone with one slot's secret can unwrap the master
//! secret; adding or removing a slot never re-encrypts data.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rayon::iter::{IntoParallelIterator, ParallelExtend, ParallelIterator};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{Keys, random_bytes};
use crate::error::{Error, ErrorKind, Result};

/// A secret that opens a repository. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub enum Secret {
    /// A password, stretched with argon2id.
    Password(Zeroizing<Vec<u8>>),
    /// A raw 32-byte key (for example from a Kubernetes Secret).
    KeyFile(Zeroizing<[u8; 32]>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Secret::Password(<redacted>)"),
            Secret::KeyFile(_) => f.write_str("Secret::KeyFile(<redacted>)"),
        }
    }
}

impl Secret {
    /// A password secret; an empty password is refused.
    ///
    /// # Errors
    /// `InvalidInput` for an empty password.
    pub fn password(p: impl Into<Vec<u8>>) -> Result<Self> {
        let p = Zeroizing::new(p.into());
        if p.is_empty() {
            return Err(Error::invalid("the password is empty"));
        }
        Ok(Secret::Password(p))
    }

    /// A key-file secret from the file's bytes: exactly 32 raw bytes, or 64 hex digits (a trailing
    /// newline is allowed), as a Kubernetes Secret may hold either.
    ///
    /// # Errors
    /// `InvalidInput` when the bytes are neither.
    pub fn key_file(bytes: &[u8]) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(bytes);
        } else {
            let trimmed = bytes.trim_ascii_end();
            if trimmed.len() != 64 || hex::decode_to_slice(trimmed, &mut key[..]).is_err() {
                return Err(Error::invalid(format!(
                    "a key file must hold exactly 32 raw bytes or 64 hex digits (this one has {} bytes)",
                    bytes.len()
                )));
            }
        }
        Ok(Secret::KeyFile(key))
    }

    fn kind(&self) -> SlotKind {
        match self {
            Secret::Password(_) => SlotKind::Password,
            Secret::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

/// What kind of secret a slot takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    /// Password, argon2id.
    Password,
    /// Raw 32-byte key.
    KeyFile,
}

/// argon2id cost parameters, stored in each password slot.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended setting. The lanes are computed
    /// in parallel, so unlocking costs the same work in less wall time on a multi-core node.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };

    fn check(self) -> Result<Self> {
        // Bounds keep a hostile slot from asking for unbounded memory or time.
        if !(8..=4 * 1024 * 1024).contains(&self.m_cost)
            || !(1..=64).contains(&self.t_cost)
            || !(1..=64).contains(&self.p_cost)
        {
            return Err(Error::corrupt("key slot has out-of-range KDF parameters"));
        }
        Ok(self)
    }
}

/// The stored form of a key slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    /// Slot format version (1).
    pub version: u32,
    /// Password or key file.
    pub kind: SlotKind,
    /// When the slot was added (RFC 3339).
    pub created: String,
    /// The host it was added on.
    pub host: String,
    /// KDF parameters (password slots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// Hex salt of the KDF.
    pub salt: String,
    /// Hex AES-GCM nonce.
    pub nonce: String,
    /// Hex AES-GCM ciphertext of the master secret.
    pub data: String,
}

const SLOT_AAD: &[u8] = b"lifeboat key slot v1";

/// Associated data of a slot: a fixed label and every field but the ciphertext, so changing any
/// byte of a slot (even its host or creation time) makes it fail to open.
fn slot_aad(
    version: u32,
    kind: SlotKind,
    created: &str,
    host: &str,
    kdf: Option<KdfParams>,
    salt: &str,
    nonce: &str,
) -> Vec<u8> {
    let mut a = SLOT_AAD.to_vec();
    let fields = serde_json::json!([version, kind, created, host, kdf, salt, nonce]);
    a.extend_from_slice(&serde_json::to_vec(&fields).expect("serializes"));
    a
}

/// Decode hex that must be in canonical (lowercase) form, so no byte of a slot is ignored.
fn canonical_hex(s: &str, what: &str) -> Result<Vec<u8>> {
    let v = hex::decode(s).map_err(|_| Error::corrupt(format!("key slot {what} is not hex")))?;
    if hex::encode(&v) != s {
        return Err(Error::corrupt(format!(
            "key slot {what} is not canonical hex"
        )));
    }
    Ok(v)
}

fn kek(secret: &Secret, salt: &[u8], kdf: Option<KdfParams>) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    match secret {
        Secret::Password(p) => {
            let k = kdf
                .ok_or_else(|| Error::corrupt("password slot without KDF parameters"))?
                .check()?;
            let params = argon2::Params::new(k.m_cost, k.t_cost, k.p_cost, Some(32))
                .map_err(|_| Error::corrupt("key slot has invalid KDF parameters"))?;
            // The crate would zero its 64 MiB with one memset on this thread, faulting every page
            // in before its parallel lanes start: a sixth of an unlock. Zeroed on every core instead.
            // Reserved fallibly first: a slot may ask for up to 4 GiB, which is an error, not an
            // abort, where memory is short.
            let mut memory: Vec<argon2::Block> = Vec::new();
            memory
                .try_reserve_exact(params.block_count())
                .map_err(|_| Error::invalid("not enough memory for the key slot's KDF"))?;
            memory.par_extend(
                (0..params.block_count())
                    .into_par_iter()
                    .map(|_| argon2::Block::new()),
            );
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into_with_memory(p, salt, &mut out[..], &mut memory[..])
                .map_err(|_| Error::corrupt("key slot KDF failed"))?;
        }
        Secret::KeyFile(k) => {
            let mut material = Zeroizing::new(Vec::with_capacity(64));
            material.extend_from_slice(&k[..]);
            material.extend_from_slice(salt);
            *out = blake3::derive_key("lifeboat v1 key file", &material);
        }
    }
    Ok(out)
}

impl KeySlot {
    /// Wrap the master secret of `keys` under `secret`.
    ///
    /// # Errors
    /// When the random source or the KDF fails.
    pub fn create(keys: &Keys, secret: &Secret, kdf: KdfParams) -> Result<Self> {
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 12];
        random_bytes(&mut salt)?;
        random_bytes(&mut nonce)?;
        let kdf = matches!(secret, Secret::Password(_)).then_some(kdf);
        let kek = kek(secret, &salt, kdf)?;
        let aes = Aes256Gcm::new_from_slice(&kek[..]).expect("32-byte key");
        let mut slot = KeySlot {
            version: 1,
            kind: secret.kind(),
            created: jiff::Timestamp::now().to_string(),
            host: crate::snapshot::hostname(),
            kdf,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            data: String::new(),
        };
        let aad = slot_aad(
            slot.version,
            slot.kind,
            &slot.created,
            &slot.host,
            slot.kdf,
            &slot.salt,
            &slot.nonce,
        );
        let mut buf = keys.master().to_vec();
        let tag = aes
            .encrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut buf[..]).into())
            .expect("short message");
        buf.extend_from_slice(&tag);
        slot.data = hex::encode(&buf);
        buf.zeroize();
        Ok(slot)
    }

    /// Parse a stored slot.
    ///
    /// # Errors
    /// `Corrupt` when it is not a valid slot.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let s: KeySlot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("key slot does not parse: {e}")))?;
        if s.version != 1 {
            return Err(Error::corrupt(format!(
                "key slot version {} is not supported",
                s.version
            )));
        }
        Ok(s)
    }

    /// Whether this slot takes this kind of secret.
    pub fn accepts(&self, secret: &Secret) -> bool {
        self.kind == secret.kind()
    }

    /// Unwrap the master secret. `Ok(None)` means the secret does not open this slot.
    ///
    /// # Errors
    /// `Corrupt` when the slot's fields are malformed.
    pub fn unlock(&self, secret: &Secret) -> Result<Option<Keys>> {
        if !self.accepts(secret) {
            return Ok(None);
        }
        let salt = canonical_hex(&self.salt, "salt")?;
        let nonce: [u8; 12] = canonical_hex(&self.nonce, "nonce")?
            .try_into()
            .map_err(|_| Error::corrupt("key slot nonce is malformed"))?;
        let mut data = Zeroizing::new(canonical_hex(&self.data, "data")?);
        if data.len() != 32 + crate::crypto::TAG_LEN || salt.len() != 32 {
            return Err(Error::corrupt("key slot has the wrong length"));
        }
        let kek = kek(secret, &salt, self.kdf)?;
        let aes = Aes256Gcm::new_from_slice(&kek[..]).expect("32-byte key");
        let (body, tag) = data.split_at_mut(32);
        let tag = aes_gcm::Tag::try_from(&*tag).map_err(|_| Error::corrupt("bad tag"))?;
        let aad = slot_aad(
            self.version,
            self.kind,
            &self.created,
            &self.host,
            self.kdf,
            &self.salt,
            &self.nonce,
        );
        if aes
            .decrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut body[..]).into(), &tag)
            .is_err()
        {
            return Ok(None);
        }
        let master: [u8; 32] = (&*body).try_into().expect("32 bytes");
        Ok(Some(Keys::from_master(master)))
    }
}

/// The error for a secret that opens no slot.
pub(crate) fn wrong_key(secret: &Secret) -> Error {
    let what = match secret {
        Secret::Password(_) => {
            "wrong password: no password key slot of this repository opens with it"
        }
        Secret::KeyFile(_) => "wrong key file: no key-file slot of this repository opens with it",
    };
    Error::new(ErrorKind::WrongKey, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// The key-encryption key of a password is argon2id exactly as the crate computes it with its
    /// own memory, so slots written before or by another implementation keep opening.
    #[test]
    fn password_kek_is_reference_argon2id() {
        let salt = [5u8; 32];
        for k in [FAST, KdfParams::DEFAULT] {
            let ours = kek(&Secret::password("correct horse").unwrap(), &salt, Some(k)).unwrap();
            let params = argon2::Params::new(k.m_cost, k.t_cost, k.p_cost, Some(32)).unwrap();
            let mut reference = [0u8; 32];
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(b"correct horse", &salt, &mut reference)
                .unwrap();
            assert_eq!(*ours, reference, "{k:?}");
        }
        let pinned = kek(
            &Secret::password("correct horse").unwrap(),
            &salt,
            Some(KdfParams::DEFAULT),
        )
        .unwrap();
        assert_eq!(hex::encode(*pinned), PINNED_DEFAULT_KEK);
    }

    /// Also what the reference C implementation prints: `echo -n "correct horse" |
    /// argon2 "$(printf '\x05%.0s' $(seq 32))" -id -t 3 -k 65536 -p 4 -l 32 -r`.
    const PINNED_DEFAULT_KEK: &str =
        "bb8f13b2133268995d826bcda23e35a4b0b33ebfd061b356291853679798fcee";

    #[test]
    fn password_slot_round_trip() {
        let keys = Keys::generate().unwrap();
        let pw = Secret::password("correct horse").unwrap();
        let slot = KeySlot::create(&keys, &pw, FAST).unwrap();
        let json = serde_json::to_vec(&slot).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("correct horse"));
        let got = KeySlot::parse(&json).unwrap().unlock(&pw).unwrap().unwrap();
        assert_eq!(got.master(), keys.master());
        assert!(
            slot.unlock(&Secret::password("wrong").unwrap())
                .unwrap()
                .is_none()
        );
        assert!(
            slot.unlock(&Secret::key_file(&[7u8; 32]).unwrap())
                .unwrap()
                .is_none()
        );
    }

    /// Key slots are read before anything is authenticated: a damaged one is refused, fails
    /// to open, or opens to the very same master secret, and never panics.
    #[test]
    fn damaged_key_slots_never_open_to_another_key() {
        let keys = Keys::generate().unwrap();
        let secret = Secret::key_file(&[3u8; 32]).unwrap();
        let good = serde_json::to_vec(&KeySlot::create(&keys, &secret, FAST).unwrap()).unwrap();
        let mut d = crate::damage::Damage::new(0x5851_f42d_4c95_7f2d);
        let (mut opened, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut b = good.clone();
            d.apply(&mut b);
            match KeySlot::parse(&b).and_then(|s| s.unlock(&secret)) {
                Ok(Some(k)) => {
                    assert!(k.master() == keys.master(), "round {round}: another key");
                    opened += 1;
                }
                Ok(None) | Err(_) => refused += 1,
            }
        }
        assert!(refused > 15_000, "{opened} opened, {refused} refused");
    }

    #[test]
    fn key_file_forms() {
        let raw = [9u8; 32];
        let hexed = format!("{}\n", hex::encode(raw));
        let keys = Keys::generate().unwrap();
        let slot = KeySlot::create(&keys, &Secret::key_file(&raw).unwrap(), FAST).unwrap();
        assert!(
            slot.unlock(&Secret::key_file(hexed.as_bytes()).unwrap())
                .unwrap()
                .is_some()
        );
        assert!(Secret::key_file(b"short").is_err());
        assert_eq!(
            format!("{:?}", Secret::key_file(&raw).unwrap()),
            "Secret::KeyFile(<redacted>)"
        );
    }
}
