//! An open repository: its store, keys, config and index.

use serde::{Deserialize, Serialize};

use crate::backend::{Location, Store, StoreOptions, names};
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{Keys, ObjectKind, open_object, seal_object};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{self, Index, IndexBuilder, PackRecord};
use crate::keyslot::{KdfParams, KeySlot, Secret, wrong_key};
use crate::pack::{self, MAX_PACK_SIZE};
use crate::s3lock::LockMode;
use crate::snapshot::{Snapshot, SnapshotFilter};
use crate::tree::{Tree, TreeEntries};

/// Repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The repository config: the only plaintext object besides key slots. A MAC under a key derived from
/// the master secret authenticates it once a key slot is open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version.
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// zstd level for new blobs (0: off).
    pub compression: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// When the repository was created.
    pub created: String,
    /// S3 Object Lock: every object is written with this retention, which is extended while
    /// newer snapshots still use the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockConfig>,
}

/// Object Lock settings of a repository.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// Days each object stays locked after it is written or last used.
    pub days: u32,
    /// Governance or compliance.
    pub mode: LockMode,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    config: Config,
    mac: String,
}

/// Options of `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitOptions {
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// zstd level.
    pub compression: i32,
    /// Target pack size, bytes (16–64 MiB is the sweet spot for object storage).
    pub pack_size: u32,
    /// argon2id parameters for password slots.
    pub kdf: KdfParams,
    /// S3 Object Lock retention for every object (needs a bucket with Object Lock enabled).
    pub lock: Option<LockConfig>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            chunker: ChunkerParams::default(),
            compression: 3,
            pack_size: 16 << 20,
            kdf: KdfParams::DEFAULT,
            lock: None,
        }
    }
}

/// The snapshots of a repository as [`Repository::snapshots_readable`] finds them.
pub struct SnapshotList {
    /// Those that can be read, oldest first.
    pub readable: Vec<(Id, Snapshot)>,
    /// Those that cannot be read, with why: `Corrupt` when they do not authenticate (damage),
    /// `Unsupported` when they authenticate but do not decode (a newer Lifeboat wrote them).
    pub damaged: Vec<(Id, Error)>,
}

/// An open, unlocked repository.
pub struct Repository {
    store: Store,
    keys: Keys,
    config: Config,
    slot: Id,
    index: Index,
}

fn check_options(o: &InitOptions) -> Result<()> {
    o.chunker.validate()?;
    if !(0..=22).contains(&o.compression) {
        return Err(Error::invalid(format!(
            "compression level {} is outside 0..=22",
            o.compression
        )));
    }
    if u64::from(o.pack_size) > MAX_PACK_SIZE / 2 || o.pack_size < o.chunker.max {
        return Err(Error::invalid(
            "pack size must be at least the largest chunk and at most 1 GiB",
        ));
    }
    Ok(())
}

impl Repository {
    /// Create a repository at `location` opened by `secret`.
    ///
    /// # Errors
    /// `AlreadyExists` when one is there, `InvalidInput` for bad options, or a storage error.
    pub fn init(location: &Location, secret: &Secret, opts: &InitOptions) -> Result<Self> {
        Self::init_with(location, secret, opts, &StoreOptions::default())
    }

    /// [`Repository::init`] with explicit storage options.
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_with(
        location: &Location,
        secret: &Secret,
        opts: &InitOptions,
        store_opts: &StoreOptions,
    ) -> Result<Self> {
        check_options(opts)?;
        let mut store = Store::open(location, true, store_opts)?;
        if store.exists(names::CONFIG)? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a repository already exists at {location}"),
            ));
        }
        if let Some(lock) = opts.lock {
            if lock.days == 0 || lock.days > 36_500 {
                return Err(Error::invalid("--lock-days must be between 1 and 36500"));
            }
            store.set_lock(Some(lock), store_opts)?;
            if !store.lock_enabled()? {
                return Err(Error::invalid(format!(
                    "the bucket of {location} does not have Object Lock enabled (it can only be enabled when the bucket is created, with versioning)"
                )));
            }
        }
        let keys = Keys::generate()?;
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random()?,
            chunker: opts.chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
            created: jiff::Timestamp::now().to_string(),
            lock: opts.lock,
        };
        let slot = KeySlot::create(&keys, secret, opts.kdf)?;
        let slot_id = Id::random()?;
        // Key first, config last: a crash in between leaves no config, so no half-made repository.
        store.write(
            &format!("{}{slot_id}", names::KEYS),
            &serde_json::to_vec_pretty(&slot).expect("slot serializes"),
        )?;
        store.sync()?;
        let body = serde_json::to_vec(&config).expect("config serializes");
        let file = ConfigFile {
            config: config.clone(),
            mac: hex::encode(keys.config_mac(&body)),
        };
        // Created only if absent: two racing inits cannot both win.
        if !store.create(
            names::CONFIG,
            &serde_json::to_vec_pretty(&file).expect("config serializes"),
        )? {
            let _ = store.delete(&format!("{}{slot_id}", names::KEYS));
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a repository already exists at {location}"),
            ));
        }
        store.sync()?;
        Ok(Self {
            store,
            keys,
            config,
            slot: slot_id,
            index: Index::default(),
        })
    }

    /// Open the repository at `location` with `secret`.
    ///
    /// # Errors
    /// `RepositoryNotFound`, `NotARepository`, `WrongKey`, `Corrupt` (damaged config) or storage errors.
    pub fn open(location: &Location, secret: &Secret) -> Result<Self> {
        Self::open_with(location, secret, &StoreOptions::default())
    }

    /// [`Repository::open`] with explicit storage options.
    ///
    /// # Errors
    /// As [`Repository::open`].
    pub fn open_with(
        location: &Location,
        secret: &Secret,
        store_opts: &StoreOptions,
    ) -> Result<Self> {
        let mut store = Store::open(location, false, store_opts)?;
        let raw = store.read(names::CONFIG)?;
        let file: ConfigFile = serde_json::from_slice(&raw).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("the repository config at {location} is damaged or not Lifeboat's: {e}"),
            )
        })?;
        if file.config.version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "repository format version {} is not supported (this lifeboat reads {FORMAT_VERSION}; a newer Lifeboat wrote it)",
                    file.config.version
                ),
            ));
        }
        let mut found = None;
        let mut damaged = Vec::new();
        for sid in store.list_ids(names::KEYS)? {
            let slot = match store
                .read(&format!("{}{sid}", names::KEYS))
                .and_then(|b| KeySlot::parse(&b))
            {
                Ok(s) => s,
                Err(e) => {
                    damaged.push(format!("keys/{sid}: {e}"));
                    continue;
                }
            };
            match slot.unlock(secret) {
                Ok(Some(keys)) => {
                    found = Some((sid, keys));
                    break;
                }
                Ok(None) => {}
                Err(e) => damaged.push(format!("keys/{sid}: {e}")),
            }
        }
        let Some((slot, keys)) = found else {
            let mut e = wrong_key(secret);
            if !damaged.is_empty() {
                e = Error::new(
                    ErrorKind::WrongKey,
                    format!("{e} (damaged key slots: {})", damaged.join("; ")),
                );
            }
            return Err(e);
        };
        let body = serde_json::to_vec(&file.config).expect("config serializes");
        if hex::encode(keys.config_mac(&body)) != file.mac {
            return Err(Error::corrupt(
                "the repository config failed authentication: it was modified or damaged",
            ));
        }
        file.config
            .chunker
            .validate()
            .map_err(|_| Error::corrupt("the repository config has invalid chunker parameters"))?;
        store.set_lock(file.config.lock, store_opts)?;
        store.attach_cache(store_opts.cache_dir.as_deref(), &file.config.id);
        Ok(Self {
            store,
            keys,
            config: file.config,
            slot,
            index: Index::default(),
        })
    }

    /// The storage backend.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The working keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key slot this session opened with.
    pub fn slot_id(&self) -> Id {
        self.slot
    }

    /// The chunker of this repository.
    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker, self.keys.gear_seed())
    }

    /// The loaded index (empty until [`Repository::load_index`]).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Read and decode one index object.
    ///
    /// # Errors
    /// `Corrupt` naming the object when it fails authentication or decoding.
    pub fn read_index_object(&self, id: &Id) -> Result<Vec<PackRecord>> {
        let name = format!("{}{id}", names::INDEX);
        let raw = self.read_named(&name, id)?;
        open_object(&self.keys, ObjectKind::Index, raw)
            .and_then(|p| index::decode(&p))
            .map_err(|e| e.context(&name))
    }

    /// Object `name`, whose bytes must hash to `id`; read a second time before it is called
    /// damaged (bad memory or a faulty path from the storage gives wrong bytes once, damage every
    /// time), with a warning when the second read is right.
    ///
    /// # Errors
    /// `Missing`, `Corrupt` when both reads differ from `id`, or a storage error.
    pub(crate) fn read_named(&self, name: &str, id: &Id) -> Result<Vec<u8>> {
        let raw = self.store.read(name)?;
        if Id::of_object(&raw) == *id {
            return Ok(raw);
        }
        let again = self.store.read(name)?;
        if Id::of_object(&again) == *id {
            tracing::warn!(
                target: crate::NOTICE,
                "{name} read wrong once, intact on a second read: test this machine's memory and its path to the storage"
            );
            return Ok(again);
        }
        Err(Error::corrupt(format!(
            "{name} does not match its name (damaged)"
        )))
    }

    /// Load and merge every index object.
    ///
    /// # Errors
    /// The first damaged or unreadable index object.
    pub fn load_index(&mut self) -> Result<()> {
        self.load_index_without(&std::collections::HashSet::new())
    }

    /// Load the index for writing new data (backup, copy): packs a prune plans to delete are left
    /// out, so no new snapshot comes to depend on them (their blobs are stored again if needed).
    ///
    /// # Errors
    /// As [`Repository::load_index`], or a damaged deletion plan.
    pub fn load_index_for_writing(&mut self) -> Result<()> {
        let planned = crate::prune::planned_packs(self)?;
        self.load_index_without(&planned)
    }

    fn load_index_without(&mut self, skip: &std::collections::HashSet<Id>) -> Result<()> {
        // A prune replaces index objects (new one first, then the old one deleted), so an object
        // listed a moment ago may be gone: list again, which finds its replacement.
        let mut attempt = 0;
        let (built, named, listed) = loop {
            // Each object's records go into the index as soon as they are decoded.
            let mut built = IndexBuilder::default();
            // Every pack an index object names, planned for deletion or not: what the cache
            // keeps (collected only when there is a cache).
            let mut named = self.store.cache().map(|_| std::collections::HashSet::new());
            let mut vanished = false;
            let listed = self.store.list_ids(names::INDEX)?;
            for &id in &listed {
                match self.read_index_object(&id) {
                    Ok(recs) => {
                        for r in recs {
                            if let Some(n) = &mut named {
                                n.insert(r.id);
                            }
                            if !skip.contains(&r.id) {
                                built.add(&r);
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Missing && attempt < 3 => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !vanished {
                break (built, named, listed);
            }
            attempt += 1;
        };
        if let (Some(c), Some(named)) = (self.store.cache(), named) {
            // What the repository no longer lists (a prune replaced it) leaves the cache.
            let listed: std::collections::HashSet<Id> = listed.into_iter().collect();
            c.retain(names::INDEX, |id| listed.contains(id));
            c.retain(names::DATA, |id| named.contains(id));
        }
        self.index = built.finish();
        Ok(())
    }

    /// Seal and store a single object; returns its id and stored size.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_object(&self, kind: ObjectKind, plain: &[u8]) -> Result<(Id, u64)> {
        let sealed = seal_object(&self.keys, kind, plain)?;
        let id = Id::of_object(&sealed);
        let prefix = match kind {
            ObjectKind::Index => names::INDEX,
            ObjectKind::Snapshot => names::SNAPSHOTS,
            ObjectKind::Plan => crate::prune::PENDING,
            ObjectKind::Ledger => crate::retention::LEDGER,
        };
        let n = sealed.len() as u64;
        self.store.write(&format!("{prefix}{id}"), &sealed)?;
        Ok((id, n))
    }

    /// Read, authenticate and decompress one blob; its id is checked against its plaintext.
    ///
    /// # Errors
    /// `Missing` when not indexed, `Corrupt` naming the pack when damaged.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self.index.find(id)?;
        let name = names::pack(&loc.pack.id);
        let (offset, len) = (u64::from(loc.entry.offset), u64::from(loc.entry.length));
        let open = |ct| {
            pack::open_blob(&self.keys, &loc.pack.salt, &loc.entry, ct)
                .map_err(|e| e.context(format!("pack {name}")))
        };
        let opened = if loc.entry.blob_type == pack::BlobType::Tree {
            match open(self.store.read_tree_range(&name, offset, len)?) {
                // A damaged cached copy: dropped, and the blob read from the store.
                Err(e) if e.kind() == ErrorKind::Corrupt && self.store.evict(&name) => {
                    tracing::warn!("cached pack {name} is damaged: reading the repository's copy");
                    open(self.store.read_range(&name, offset, len)?)
                }
                r => r,
            }
        } else {
            open(self.store.read_range(&name, offset, len)?)
        };
        opened.or_else(|e| self.open_again(&name, &loc.pack.salt, &loc.entry, e))
    }

    /// A blob of pack `name` that did not open (`first`, its error), read again on its own and
    /// opened once more: bad memory or a faulty path from the storage gives wrong bytes once,
    /// damage gives them every time. A blob that opens the second time is used, with a warning
    /// (the machine or the path needs looking at); otherwise `first` stands.
    ///
    /// # Errors
    /// `first`, or an error reading again.
    pub(crate) fn open_again(
        &self,
        name: &str,
        salt: &[u8; crate::crypto::SALT_LEN],
        entry: &pack::BlobEntry,
        first: Error,
    ) -> Result<Vec<u8>> {
        if first.kind() != ErrorKind::Corrupt {
            return Err(first);
        }
        let ct = self
            .store
            .read_range(name, u64::from(entry.offset), u64::from(entry.length))?;
        match pack::open_blob(&self.keys, salt, entry, ct) {
            Ok(plain) => {
                tracing::warn!(
                    target: crate::NOTICE,
                    "{name}: blob {} read wrong once ({first}), intact on a second read: test this machine's memory and its path to the storage",
                    entry.id.short()
                );
                Ok(plain)
            }
            Err(_) => Err(first),
        }
    }

    /// Read a tree from its blobs.
    ///
    /// # Errors
    /// `Missing` or `Corrupt`.
    pub fn read_tree(&self, ids: &[Id]) -> Result<Tree> {
        Tree::decode(&self.read_tree_bytes(ids)?)
    }

    /// As [`Repository::read_tree`], with the entries decoded one at a time as they are used and
    /// the blobs read as the entries reach them (a large directory then holds one blob of its
    /// tree, not its decoded nodes).
    ///
    /// # Errors
    /// The first blob's; a damaged entry or a later blob's error is an error from the iterator.
    pub fn read_tree_entries(&self, ids: &[Id]) -> Result<TreeEntries<'_>> {
        let ids = ids.to_vec();
        TreeEntries::new(Box::new(ids.into_iter().map(|id| self.read_blob(&id))))
    }

    fn read_tree_bytes(&self, ids: &[Id]) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for id in ids {
            bytes.extend_from_slice(&self.read_blob(id)?);
        }
        Ok(bytes)
    }

    /// Load one snapshot.
    ///
    /// # Errors
    /// `Missing` or `Corrupt` naming the object; `Unsupported` when it authenticates but does
    /// not decode (a newer Lifeboat wrote fields this one does not know).
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let name = format!("{}{id}", names::SNAPSHOTS);
        let raw = self.read_named(&name, id)?;
        let plain =
            open_object(&self.keys, ObjectKind::Snapshot, raw).map_err(|e| e.context(&name))?;
        serde_json::from_slice(&plain).map_err(|e| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{name} authenticates but does not decode: a newer Lifeboat wrote it? ({e})"
                ),
            )
        })
    }

    /// Every snapshot that can be read, oldest first; one that is damaged is left out with a
    /// log line ([`Repository::snapshots_readable`] names them).
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let all = self.snapshots_readable()?;
        for (id, e) in all.damaged {
            tracing::warn!("skipping unreadable snapshot {}: {e}", id.short());
        }
        Ok(all.readable)
    }

    /// Every snapshot that can be read, oldest first, and those that are damaged (they do not
    /// authenticate or decode) with why: one damaged snapshot object must not hide the others,
    /// nor keep `forget` from removing it. (`prune` and `check` read every snapshot themselves
    /// and stop at a damaged one.)
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshots_readable(&self) -> Result<SnapshotList> {
        let ids = self.store.list_ids(names::SNAPSHOTS)?;
        if let Some(c) = self.store.cache() {
            c.retain(names::SNAPSHOTS, |id| ids.binary_search(id).is_ok());
        }
        let mut v = Vec::with_capacity(ids.len());
        let mut damaged = Vec::new();
        for id in ids {
            match self.load_snapshot(&id) {
                Ok(s) => v.push((id, s)),
                // Removed by `forget` since the listing.
                Err(e) if e.kind() == ErrorKind::Missing => {}
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported) => {
                    damaged.push((id, e));
                }
                Err(e) => return Err(e),
            }
        }
        v.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(SnapshotList {
            readable: v,
            damaged,
        })
    }

    /// Delete one snapshot object (its data stays until `prune`).
    ///
    /// # Errors
    /// Storage errors (a refusal by the store for an object under retention among them).
    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        self.store.delete(&format!("{}{id}", names::SNAPSHOTS))
    }

    /// Replace snapshot `old` by `new` (the same backup with other tags, say): `new` is stored
    /// and made durable before `old` is deleted, so a crash leaves one of them or both, never
    /// neither.
    ///
    /// # Errors
    /// Storage errors; when `old` cannot be deleted, `new` stays and the error says so.
    pub fn replace_snapshot(&self, old: &Id, new: &Snapshot) -> Result<Id> {
        let json = serde_json::to_vec(new).expect("a snapshot serializes");
        let (id, _) = self.save_object(ObjectKind::Snapshot, &json)?;
        self.store.sync()?;
        self.remove_snapshot(old).map_err(|e| {
            e.context(format!(
                "snapshot {} was written; deleting the snapshot {} it replaces",
                id.short(),
                old.short()
            ))
        })?;
        Ok(id)
    }

    /// Resolve `latest` or a unique hex prefix of a snapshot id.
    ///
    /// # Errors
    /// `InvalidInput` when none or several match.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_in(spec, &SnapshotFilter::default())
    }

    /// The readable snapshots `filter` selects, oldest first.
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshots_in(&self, filter: &SnapshotFilter) -> Result<Vec<(Id, Snapshot)>> {
        let mut v = self.snapshots()?;
        v.retain(|(_, s)| filter.matches(s));
        Ok(v)
    }

    /// Resolve `latest` (the newest snapshot `filter` selects) or a unique hex prefix of a
    /// snapshot id (which names its snapshot whatever the filter, as in restic).
    ///
    /// # Errors
    /// `InvalidInput` when none or several match.
    pub fn find_snapshot_in(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            return self.snapshots_in(filter)?.pop().ok_or_else(|| {
                if filter.is_empty() {
                    Error::invalid("the repository has no snapshots")
                } else {
                    Error::invalid(format!("no snapshot matches {}", filter.describe()))
                }
            });
        }
        let id = self.snapshot_id(spec)?;
        Ok((id, self.load_snapshot(&id)?))
    }

    /// The snapshot a unique hex prefix of its id names, without reading it (a damaged one can
    /// be forgotten by its id).
    ///
    /// # Errors
    /// `InvalidInput` when none or several match.
    pub fn snapshot_id(&self, spec: &str) -> Result<Id> {
        let p = spec.to_ascii_lowercase();
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "{spec:?} is not a snapshot id or 'latest'"
            )));
        }
        let ids: Vec<Id> = self
            .store
            .list_ids(names::SNAPSHOTS)?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&p))
            .collect();
        match ids.as_slice() {
            [] => Err(Error::invalid(format!("no snapshot matches {spec:?}"))),
            [id] => Ok(*id),
            _ => Err(Error::invalid(format!(
                "{spec:?} is ambiguous: it matches {} snapshots",
                ids.len()
            ))),
        }
    }

    /// Add a key slot for `secret`; returns its id.
    ///
    /// # Errors
    /// Storage errors.
    pub fn add_key(&self, secret: &Secret, kdf: KdfParams) -> Result<Id> {
        let slot = KeySlot::create(&self.keys, secret, kdf)?;
        let id = Id::random()?;
        self.store.write(
            &format!("{}{id}", names::KEYS),
            &serde_json::to_vec_pretty(&slot).expect("slot serializes"),
        )?;
        self.store.sync()?;
        Ok(id)
    }

    /// Every key slot (id, parsed slot or the error that stops it parsing).
    ///
    /// # Errors
    /// Storage errors.
    pub fn key_slots(&self) -> Result<Vec<(Id, Result<KeySlot>)>> {
        Ok(self
            .store
            .list_ids(names::KEYS)?
            .into_iter()
            .map(|id| {
                (
                    id,
                    self.store
                        .read(&format!("{}{id}", names::KEYS))
                        .and_then(|b| KeySlot::parse(&b)),
                )
            })
            .collect())
    }

    /// Remove the key slot whose id starts with `prefix`. Removing the last working slot is refused.
    ///
    /// # Errors
    /// `InvalidInput` for no or several matches, `Refused` for the last key.
    pub fn remove_key(&self, prefix: &str) -> Result<Id> {
        let slots = self.key_slots()?;
        let p = prefix.to_ascii_lowercase();
        let matching: Vec<Id> = slots
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !p.is_empty() && id.to_hex().starts_with(&p))
            .collect();
        let id = match matching.as_slice() {
            [] => return Err(Error::invalid(format!("no key matches {prefix:?}"))),
            [id] => *id,
            _ => {
                return Err(Error::invalid(format!(
                    "{prefix:?} is ambiguous: it matches {} keys",
                    matching.len()
                )));
            }
        };
        let usable = slots
            .iter()
            .filter(|(sid, s)| *sid != id && s.is_ok())
            .count();
        if usable == 0 {
            return Err(Error::new(
                ErrorKind::Refused,
                "refusing to remove the last key: the repository could never be opened again",
            ));
        }
        self.store.delete(&format!("{}{id}", names::KEYS))?;
        Ok(id)
    }
}

impl Repository {
    /// Replace the in-memory index (used by `check`, which builds it tolerating damaged objects).
    pub fn set_index(&mut self, index: Index) {
        self.index = index;
    }
}
