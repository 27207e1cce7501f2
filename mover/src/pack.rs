//! Packs: many sealed blobs in one immutable object, with an encrypted header so the index can be
//! rebuilt from packs alone.
//!
//! ```text
//! "LBPACK1\0" | salt (32) | blob ciphertexts… | sealed header | header length (u32 LE)
//! ```
//! Each blob is AES-256-GCM under the pack's own key (from its salt) with the nonce counter set to the
//! blob's byte offset in the pack (unique within the pack) and the blob's id, type, compression flag
//! and raw length as associated data, so a blob cannot be swapped, retyped or truncated unnoticed.

use std::borrow::Cow;

use crate::crypto::{Domain, Keys, ObjectCipher, SALT_LEN, TAG_LEN, random_bytes};
use crate::error::{Error, Result};
use crate::id::Id;

const MAGIC: &[u8; 8] = b"LBPACK1\0";
/// Bytes before the first blob.
pub const PACK_HEAD_LEN: usize = MAGIC.len() + SALT_LEN;
/// Encoded size of one [`BlobEntry`].
pub const ENTRY_LEN: usize = 46;
/// Largest pack we write or accept (offsets are u32, with room for flags in the in-memory index).
pub const MAX_PACK_SIZE: u64 = 1 << 31;
/// Blobs a pack holds at most, whatever its size. A pack's entries stay in memory until it is
/// indexed, and a 16 MiB pack of tiny files' blobs held 300 000 of them (14 MiB of entries, and
/// as much again for its header): capped, a pack's bookkeeping stays within about 3 MiB.
pub const MAX_PACK_BLOBS: usize = 1 << 16;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobType {
    /// File or device content.
    Data = 0,
    /// Serialized directory trees.
    Tree = 1,
}

impl BlobType {
    fn from_u8(b: u8) -> Result<Self> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Tree),
            _ => Err(Error::corrupt(format!("unknown blob type {b}"))),
        }
    }
}

/// Where a blob sits inside its pack, as recorded in the pack header and the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// Keyed hash of the plaintext.
    pub id: Id,
    /// Data or tree.
    pub blob_type: BlobType,
    /// Whether the stored bytes are zstd-compressed.
    pub compressed: bool,
    /// Offset of the ciphertext in the pack.
    pub offset: u32,
    /// Ciphertext length including the tag.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

impl BlobEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.blob_type as u8);
        out.push(u8::from(self.compressed));
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != ENTRY_LEN {
            return Err(Error::corrupt("blob entry has the wrong length"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let compressed = match b[1] {
            0 => false,
            1 => true,
            _ => return Err(Error::corrupt("blob entry has a bad compression flag")),
        };
        let e = BlobEntry {
            blob_type: BlobType::from_u8(b[0])?,
            compressed,
            id: Id(b[2..34].try_into().expect("32 bytes")),
            offset: u32_at(34),
            length: u32_at(38),
            raw_len: u32_at(42),
        };
        // The index keeps the blob type and compression flag in the top bits of the two lengths,
        // so neither may reach 2^31 (a blob is at most 16 MiB; a pack at most 2 GiB).
        if (e.length as usize) < TAG_LEN
            || (e.offset as usize) < PACK_HEAD_LEN
            || u64::from(e.offset) + u64::from(e.length) > MAX_PACK_SIZE
            || e.raw_len >= 1 << 31
        {
            return Err(Error::corrupt("blob entry is out of range"));
        }
        Ok(e)
    }

    fn aad(&self) -> [u8; 38] {
        let mut a = [0u8; 38];
        a[0] = self.blob_type as u8;
        a[1] = u8::from(self.compressed);
        a[2..34].copy_from_slice(&self.id.0);
        a[34..38].copy_from_slice(&self.raw_len.to_le_bytes());
        a
    }
}

/// Where a pack starts in its buffer is aligned to this, so a local store can write it with
/// `O_DIRECT` straight from the buffer (the page size; covers 512 B and 4 KiB sectors).
pub const PACK_ALIGN: usize = 4096;

/// Builds one pack in memory, at `buf[start..]`.
pub struct PackWriter {
    salt: [u8; SALT_LEN],
    cipher: ObjectCipher,
    buf: Vec<u8>,
    start: usize,
    entries: Vec<BlobEntry>,
}

/// A finished pack, ready to store under `data/<id>`.
pub struct FinishedPack {
    /// BLAKE3 of the pack's bytes: its name.
    pub id: Id,
    /// The pack's salt (recorded in the index so blobs can be read without another request).
    pub salt: [u8; SALT_LEN],
    /// Its blobs.
    pub entries: Vec<BlobEntry>,
    /// The buffer holding the pack at `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
}

impl FinishedPack {
    /// The type of the blobs it holds (a pack holds one type), `None` when empty.
    pub fn blob_type(&self) -> Option<BlobType> {
        self.entries.first().map(|e| e.blob_type)
    }

    /// The whole pack.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Take the buffer, and where in it the pack starts, to hand the bytes on without a copy
    /// (the pack is then empty).
    pub fn take_buffer(&mut self) -> (Vec<u8>, usize) {
        (
            std::mem::take(&mut self.buf),
            std::mem::replace(&mut self.start, 0),
        )
    }
}

impl PackWriter {
    /// Start a pack with a fresh random salt (hence a fresh key).
    ///
    /// # Errors
    /// When the random source fails.
    pub fn new(keys: &Keys, capacity: usize) -> Result<Self> {
        Self::with_buffer(keys, capacity, Vec::new())
    }

    /// [`PackWriter::new`] reusing the allocation of an earlier pack's buffer.
    ///
    /// # Errors
    /// When the random source fails.
    pub fn with_buffer(keys: &Keys, capacity: usize, mut buf: Vec<u8>) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        buf.clear();
        // A pack closes once it reaches `capacity`, so its last blob (at most a chunk, and chunks
        // are never larger than a pack) can take it to twice that: reserved up front, the buffer
        // never moves and the pack stays aligned.
        buf.reserve(2 * capacity + PACK_ALIGN + (64 << 10));
        let start = match buf.as_ptr().align_offset(PACK_ALIGN) {
            n if n < PACK_ALIGN => n,
            _ => 0,
        };
        buf.resize(start, 0);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&salt);
        Ok(Self {
            salt,
            cipher: keys.object_cipher(&salt),
            buf,
            start,
            entries: Vec::new(),
        })
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the pack is done: `capacity` bytes, or [`MAX_PACK_BLOBS`] blobs.
    pub fn is_full(&self, capacity: usize) -> bool {
        self.len() >= capacity || self.entries.len() >= MAX_PACK_BLOBS
    }

    /// Seal and append one blob; `stored` is its (maybe compressed) plaintext.
    pub fn add(
        &mut self,
        id: Id,
        blob_type: BlobType,
        raw_len: u32,
        compressed: bool,
        stored: &[u8],
    ) {
        let offset = self.len() as u32;
        let mut e = BlobEntry {
            id,
            blob_type,
            compressed,
            offset,
            length: 0,
            raw_len,
        };
        self.buf.extend_from_slice(stored);
        self.cipher.seal_tail(
            Domain::Blob,
            u64::from(offset),
            &e.aad(),
            &mut self.buf,
            self.start + offset as usize,
        );
        e.length = self.len() as u32 - offset;
        self.entries.push(e);
    }

    /// The entries so far, for tests that write headers no writer would.
    #[cfg(test)]
    pub(crate) fn entries_mut(&mut self) -> &mut Vec<BlobEntry> {
        &mut self.entries
    }

    /// Append the sealed header and name the pack.
    pub fn finish(mut self) -> FinishedPack {
        let mut header = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN + TAG_LEN);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode(&mut header);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&header);
        self.cipher
            .seal_tail(Domain::PackHeader, 0, MAGIC, &mut self.buf, start);
        let header_len = (self.buf.len() - start) as u32;
        self.buf.extend_from_slice(&header_len.to_le_bytes());
        FinishedPack {
            id: Id::of_object(&self.buf[self.start..]),
            salt: self.salt,
            entries: self.entries,
            buf: self.buf,
            start: self.start,
        }
    }
}

/// The salt of a pack, from its first bytes.
///
/// # Errors
/// `Corrupt` when the head is not a pack's.
pub fn salt_of(head: &[u8]) -> Result<[u8; SALT_LEN]> {
    if head.len() < PACK_HEAD_LEN || &head[..MAGIC.len()] != MAGIC {
        return Err(Error::corrupt(
            "not a Lifeboat pack (bad magic or truncated)",
        ));
    }
    Ok(head[MAGIC.len()..PACK_HEAD_LEN].try_into().expect("salt"))
}

/// Decrypt and parse the header of a whole pack, checking that every entry lies inside the pack.
///
/// # Errors
/// `Corrupt` when anything does not check out.
pub fn read_header(keys: &Keys, pack: &[u8]) -> Result<([u8; SALT_LEN], Vec<BlobEntry>)> {
    let salt = salt_of(pack)?;
    Ok((
        salt,
        read_header_tail(keys, &salt, pack, pack.len() as u64)?,
    ))
}

/// Where the header of a pack of `pack_len` bytes starts, from its last bytes `tail` (the header's
/// sealed length is the pack's last four bytes).
///
/// # Errors
/// `Corrupt` when the pack is too short or the length out of range.
pub fn header_start(tail: &[u8], pack_len: u64) -> Result<u64> {
    if pack_len < (PACK_HEAD_LEN + 4 + TAG_LEN) as u64 || tail.len() < 4 {
        return Err(Error::corrupt("pack is truncated"));
    }
    let hlen = u64::from(u32::from_le_bytes(
        tail[tail.len() - 4..].try_into().expect("4 bytes"),
    ));
    let body_end = pack_len - 4;
    if hlen < (TAG_LEN + 4) as u64 || hlen > body_end - PACK_HEAD_LEN as u64 {
        return Err(Error::corrupt("pack header length is out of range"));
    }
    Ok(body_end - hlen)
}

/// [`read_header`] from the last bytes of a pack of `pack_len` bytes (`tail`, which must hold
/// the whole header: see [`header_start`]) and its salt, so a pack's blobs can be verified as it
/// streams in.
///
/// # Errors
/// `Corrupt` when anything does not check out or `tail` lacks part of the header.
pub fn read_header_tail(
    keys: &Keys,
    salt: &[u8; SALT_LEN],
    tail: &[u8],
    pack_len: u64,
) -> Result<Vec<BlobEntry>> {
    let data_end = header_start(tail, pack_len)?;
    let tail_start = pack_len.saturating_sub(tail.len() as u64);
    if data_end < tail_start {
        return Err(Error::corrupt("pack header was read short"));
    }
    let mut header = tail[(data_end - tail_start) as usize..tail.len() - 4].to_vec();
    let n = keys
        .object_cipher(salt)
        .open_in_place(Domain::PackHeader, 0, MAGIC, &mut header)?;
    let header = &header[..n];
    let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if header.len() != 4 + count * ENTRY_LEN {
        return Err(Error::corrupt("pack header has the wrong length"));
    }
    let entries = header[4..]
        .chunks_exact(ENTRY_LEN)
        .map(BlobEntry::decode)
        .collect::<Result<Vec<_>>>()?;
    for e in &entries {
        if u64::from(e.offset) < PACK_HEAD_LEN as u64
            || u64::from(e.offset) + u64::from(e.length) > data_end
        {
            return Err(Error::corrupt("pack header points outside the pack"));
        }
    }
    Ok(entries)
}

/// Decrypt one blob's stored bytes (`ct` is its ciphertext, `entry.length` bytes) in place and
/// return the plaintext (decompressed), after checking its id.
///
/// # Errors
/// `Corrupt` when authentication, decompression or the id check fails.
pub fn open_blob(
    keys: &Keys,
    salt: &[u8; SALT_LEN],
    entry: &BlobEntry,
    mut ct: Vec<u8>,
) -> Result<Vec<u8>> {
    let n = match open_blob_in(keys, &keys.object_cipher(salt), entry, &mut ct)? {
        Cow::Owned(plain) => return Ok(plain),
        Cow::Borrowed(plain) => plain.len(),
    };
    ct.truncate(n);
    Ok(ct)
}

/// [`open_blob`] on bytes in a larger buffer (a merged read of neighbouring blobs): decrypts in
/// place; a raw blob's plaintext borrows `ct`.
///
/// # Errors
/// `Corrupt` when authentication, decompression or the id check fails.
pub(crate) fn open_blob_in<'a>(
    keys: &Keys,
    cipher: &ObjectCipher,
    entry: &BlobEntry,
    ct: &'a mut [u8],
) -> Result<Cow<'a, [u8]>> {
    if ct.len() != entry.length as usize {
        return Err(Error::corrupt("blob was read short"));
    }
    let n = cipher.open_in_place(Domain::Blob, u64::from(entry.offset), &entry.aad(), ct)?;
    let plain = if entry.compressed {
        Cow::Owned(crate::compress::decompress(
            &ct[..n],
            entry.raw_len as usize,
        )?)
    } else {
        if n != entry.raw_len as usize {
            return Err(Error::corrupt("raw blob has the wrong length"));
        }
        Cow::Borrowed(&ct[..n])
    };
    if keys.blob_id(&plain) != entry.id {
        return Err(Error::corrupt(format!(
            "blob {} does not match its id",
            entry.id.short()
        )));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_tamper() {
        let keys = Keys::generate().unwrap();
        let mut w = PackWriter::new(&keys, 1024).unwrap();
        let blobs: Vec<Vec<u8>> = vec![b"alpha".to_vec(), vec![0u8; 300], b"gamma gamma".to_vec()];
        for b in &blobs {
            w.add(keys.blob_id(b), BlobType::Data, b.len() as u32, false, b);
        }
        let p = w.finish();
        assert_eq!(p.bytes().as_ptr().align_offset(PACK_ALIGN), 0);
        assert_eq!(p.id, Id::of_object(p.bytes()));
        let (salt, entries) = read_header(&keys, p.bytes()).unwrap();
        assert_eq!(entries, p.entries);
        for (e, b) in entries.iter().zip(&blobs) {
            let ct = p.bytes()[e.offset as usize..(e.offset + e.length) as usize].to_vec();
            assert_eq!(&open_blob(&keys, &salt, e, ct).unwrap(), b);
        }
        // Every single flipped byte is caught by the header or by the blob it lands in.
        for i in 0..p.bytes().len() {
            let mut bad = p.bytes().to_vec();
            bad[i] ^= 1;
            let ok = read_header(&keys, &bad).and_then(|(salt, es)| {
                es.iter()
                    .zip(&blobs)
                    .map(|(e, _)| {
                        open_blob(
                            &keys,
                            &salt,
                            e,
                            bad[e.offset as usize..(e.offset + e.length) as usize].to_vec(),
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            });
            assert!(ok.is_err(), "flip at {i} undetected");
        }
    }
}
