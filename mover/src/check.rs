//! `check`: verify that every snapshot is restorable; with [`ReadData`], that every stored byte
//! (or a chosen subset of the packs) authenticates. Every problem names the object it was found
//! in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::backend::{PendingRead, names};
use crate::crypto::SALT_LEN;
use crate::error::{ErrorKind, Result};
use crate::id::Id;
use crate::index::{IndexBuilder, PackInfo};
use crate::pack::{self, BlobEntry};
use crate::repo::Repository;
use crate::tree::NodeKind;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems, each naming an object. Empty means the repository is healthy.
    pub errors: Vec<String>,
    /// Packs that read wrong once and intact on a second read, each with what the first read
    /// found: the packs are sound, but this machine or the path from the storage gave wrong
    /// bytes, and may do so where no second read is made (a restore).
    pub misread: Vec<String>,
    /// Snapshots this version cannot read, each with why: they authenticate, so they are not
    /// damaged, but a newer Lifeboat wrote them and only it can check them.
    pub unsupported: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs named by the index.
    pub packs: usize,
    /// Packs in storage that no index names (left by an interrupted backup, or by `repair index`
    /// as damaged; prune deletes the first and sets the others aside in `damaged/`).
    pub unindexed_packs: usize,
    /// Damaged packs `repair index --read-all-packs` (or prune) moved to `damaged/`: no restore
    /// reads them, and they stay until someone deletes them.
    pub damaged_packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Packs read in full (with [`ReadData`]).
    pub packs_read: usize,
    /// Their bytes.
    pub bytes_read: u64,
}

/// Which packs `check` reads in full, to authenticate every byte of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// None: the structure only.
    None,
    /// Every pack.
    All,
    /// Group `n` of `t` (1 ≤ n ≤ t ≤ 256): the packs whose name's first byte is `n - 1` modulo
    /// `t`, as restic's `--read-data-subset n/t`. Running `1/t` … `t/t` in turn (one a day, say)
    /// reads every pack once.
    Group {
        /// Which group, from 1.
        n: u32,
        /// How many groups.
        t: u32,
    },
    /// This percentage of the packs (at least one), chosen at random.
    Percent(f64),
    /// Packs chosen at random until they hold at least this many bytes.
    Bytes(u64),
}

impl std::str::FromStr for ReadData {
    type Err = String;

    /// `n/t`, `x%`, or a size with an optional `K`, `M`, `G` or `T` suffix (powers of 1024).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'{s}' is not a subset: use n/t, x% or a size such as 500M");
        if let Some((n, t)) = s.split_once('/') {
            let (n, t): (u32, u32) = (n.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?);
            if !(1..=256).contains(&t) || !(1..=t).contains(&n) {
                return Err(format!("'{s}': need 1 <= n <= t <= 256"));
            }
            return Ok(Self::Group { n, t });
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "'{s}': the percentage must be above 0 and at most 100"
                ));
            }
            return Ok(Self::Percent(p));
        }
        match crate::units::parse_size(s) {
            Some(b) if b > 0 => Ok(Self::Bytes(b)),
            Some(_) => Err(format!("'{s}': the size must be above 0")),
            None => Err(bad()),
        }
    }
}

impl ReadData {
    /// The packs to read, from `packs`.
    fn select(self, mut packs: Vec<&PackInfo>) -> Result<Vec<&PackInfo>> {
        match self {
            Self::None => return Ok(Vec::new()),
            Self::All => return Ok(packs),
            Self::Group { n, t } => {
                packs.retain(|p| u32::from(p.id.0[0]) % t == n - 1);
                return Ok(packs);
            }
            Self::Percent(_) | Self::Bytes(_) => {}
        }
        // A random order: sorted by a keyed hash of each name under a fresh key.
        let mut key = [0u8; 32];
        crate::crypto::random_bytes(&mut key)?;
        packs.sort_by_cached_key(|p| *blake3::keyed_hash(&key, &p.id.0).as_bytes());
        let keep = match self {
            Self::Percent(x) => {
                let k = (packs.len() as f64 * x / 100.0).round() as usize;
                k.clamp(1, packs.len().max(1))
            }
            Self::Bytes(b) => {
                let mut total = 0;
                packs
                    .iter()
                    .take_while(|p| {
                        let more = total < b;
                        total += p.size;
                        more
                    })
                    .count()
            }
            _ => packs.len(),
        };
        packs.truncate(keep);
        Ok(packs)
    }
}

/// Live counter of packs read.
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// Packs verified so far.
    pub packs_read: AtomicU64,
}

/// Check the repository.
///
/// # Errors
/// Only when storage cannot be listed at all; every damaged object is reported in [`CheckReport`].
pub fn check(
    repo: &mut Repository,
    read_data: ReadData,
    progress: &CheckProgress,
) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    for (id, slot) in repo.key_slots()? {
        if let Err(e) = slot {
            rep.errors.push(format!("keys/{id}: {e}"));
        }
    }
    // Indexes: read each on its own so one damaged object does not hide the others, and add
    // them to the index one object at a time. What each lists of a pack is kept as a digest
    // (32 bytes a pack, not its entries) for `read_data` to compare with the pack's header.
    let mut builder = IndexBuilder::default();
    // Pack → (digest of its listing, the index object that listed it first).
    let mut listed: HashMap<Id, (Id, Id)> = HashMap::new();
    for id in repo.store().list_ids(names::INDEX)? {
        match repo.read_index_object(&id) {
            Ok(records) => {
                for r in records {
                    let d = listing_digest(r.size, &r.salt, r.blobs.clone());
                    let (first, by) = *listed.entry(r.id).or_insert((d, id));
                    if first != d {
                        rep.errors.push(format!(
                            "{}: index/{by} and index/{id} list it differently",
                            names::pack(&r.id)
                        ));
                    }
                    builder.add(&r);
                }
            }
            Err(e) => rep.errors.push(format!("index/{id}: {e}")),
        }
    }
    let idx = builder.finish();
    rep.packs = idx.packs().len();
    rep.blobs = idx.len();
    // One listing gives every pack's size (not a request per pack).
    let stored: HashMap<Id, u64> = repo.store().list_packs()?.into_iter().collect();
    for p in idx.packs() {
        let name = names::pack(&p.id);
        match stored.get(&p.id) {
            None => rep
                .errors
                .push(format!("{name}: missing (the index names it)")),
            Some(&n) if n != p.size => rep
                .errors
                .push(format!("{name}: size {n}, the index says {}", p.size)),
            Some(_) => {}
        }
    }
    rep.unindexed_packs = stored.keys().filter(|id| !idx.has_pack(id)).count();
    rep.damaged_packs = repo.store().list(names::DAMAGED)?.len();
    repo.set_index(idx);

    // Snapshots and every tree they reach.
    let mut seen_trees: HashSet<Vec<Id>> = HashSet::new();
    for id in repo.store().list_ids(names::SNAPSHOTS)? {
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                rep.unsupported.push(e.to_string());
                continue;
            }
            Err(e) => {
                rep.errors.push(format!("snapshots/{id}: {e}"));
                continue;
            }
        };
        rep.snapshots += 1;
        let mut stack = vec![("/".to_owned(), snap.tree.clone())];
        while let Some((path, ids)) = stack.pop() {
            if !seen_trees.insert(ids.clone()) {
                continue;
            }
            let tree = match repo.read_tree_entries(&ids) {
                Ok(t) => t,
                Err(e) => {
                    rep.errors
                        .push(format!("snapshot {} tree {path}: {e}", id.short()));
                    continue;
                }
            };
            for n in tree {
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        rep.errors
                            .push(format!("snapshot {} tree {path}: {e}", id.short()));
                        break;
                    }
                };
                let p = format!(
                    "{}{}",
                    if path == "/" {
                        "/".to_owned()
                    } else {
                        format!("{path}/")
                    },
                    n.display_name()
                );
                if n.kind() == NodeKind::Dir {
                    stack.push((p, n.subtree));
                } else if let Some(missing) = n.content.iter().find(|b| !repo.index().contains(b)) {
                    rep.errors.push(format!(
                        "snapshot {} file {p}: blob {} is not in any index",
                        id.short(),
                        missing.short()
                    ));
                }
            }
        }
    }

    // A pack missing from storage is reported above already.
    let packs = read_data.select(
        repo.index()
            .packs()
            .iter()
            .filter(|p| stored.contains_key(&p.id))
            .collect(),
    )?;
    rep.bytes_read = packs.iter().map(|p| p.size).sum();
    rep.packs_read = read_packs(
        repo,
        &packs,
        &listed,
        progress,
        &mut rep.errors,
        &mut rep.misread,
    );
    Ok(rep)
}

/// Bytes read first from a pack's end, where its header is: a 16 MiB pack of 1 MiB chunks has a
/// header of under 1 KiB; one of 65 536 tiny blobs has 3 MiB, read with a second request.
pub(crate) const TAIL: u64 = 256 << 10;
/// Packs streamed at once from a remote store, at most: each holds a blob and what the network
/// delivered past it, not a whole pack. A single stream from S3 is often slower than one core
/// verifies, so more streams than cores keep the cores busy.
const STREAMS: usize = 16;
/// Most a local reader asks for at once: the rest of the next blob, at least 64 KiB.
const LOCAL_PIECE: usize = 4 << 20;

/// Read and verify every indexed pack as it streams in: one reader per core on a local store,
/// up to `--max-requests` (at most [`STREAMS`]) on a remote one. Returns the number of packs
/// read; adds a line to `errors` for each damaged one.
fn read_packs(
    repo: &Repository,
    packs: &[&PackInfo],
    listed: &HashMap<Id, (Id, Id)>,
    progress: &CheckProgress,
    errors: &mut Vec<String>,
    misread: &mut Vec<String>,
) -> usize {
    if packs.is_empty() {
        return 0;
    }
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let readers = repo
        .store()
        .parallelism()
        .map_or(cores, |r| r.min(STREAMS).max(cores));
    std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                let mut bufs = Buffers::default();
                let take = || packs.get(next.fetch_add(1, Ordering::Relaxed)).copied();
                let mut ahead =
                    take().map(|p| (p, start_tail(repo, &names::pack(&p.id), p.size, TAIL)));
                while let Some((p, tail)) = ahead.take() {
                    // The next pack's header is read while this one streams in (a local read
                    // waits for its turn).
                    ahead =
                        take().map(|p| (p, start_tail(repo, &names::pack(&p.id), p.size, TAIL)));
                    let listed = listed.get(&p.id).map(|l| &l.0);
                    if let Err(v) = verify_pack(repo, p, listed, &mut bufs, tail) {
                        found
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((names::pack(&p.id), v));
                    }
                    progress.packs_read.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap_or_else(PoisonError::into_inner);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in found {
        match v {
            Verified::Damaged(e) => errors.push(format!("{name}: {e}")),
            Verified::Misread(first) => misread.push(format!(
                "{name}: read wrong once ({first}), intact on a second read"
            )),
        }
    }
    packs.len()
}

/// What an index object says of a pack, as one digest: its size, its salt and its blob entries
/// in pack order.
fn listing_digest(size: u64, salt: &[u8; SALT_LEN], mut entries: Vec<BlobEntry>) -> Id {
    entries.sort_by_key(|e| (e.offset, e.id));
    let mut b = Vec::with_capacity(8 + SALT_LEN + entries.len() * pack::ENTRY_LEN);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(salt);
    for e in &entries {
        e.encode(&mut b);
    }
    Id::of_object(&b)
}

/// A reader's buffers, reused from pack to pack.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The bytes received and still needed: the next blob's, from its start.
    body: Vec<u8>,
    /// A blob that overlaps the next one is opened in a copy.
    scratch: Vec<u8>,
}

/// The read of the last `tail_len` bytes (at least the header's length, the last four) of pack
/// object `name` of `size` bytes, where its header is; and where they start.
pub(crate) fn start_tail<'r>(
    repo: &'r Repository,
    name: &str,
    size: u64,
    tail_len: u64,
) -> (PendingRead<'r>, u64) {
    let t = tail_len.max(4).min(size);
    let from = size - t;
    (repo.store().start_read(name, from, t), from)
}

/// Verify a whole pack as it streams in: its name must be its hash, its header must
/// authenticate and agree with the index (`listed`), and every blob must authenticate,
/// decompress and match its id.
fn verify_pack(
    repo: &Repository,
    p: &PackInfo,
    listed: Option<&Id>,
    bufs: &mut Buffers,
    tail: (PendingRead<'_>, u64),
) -> std::result::Result<(), Verified> {
    let scan = scan_pack(repo, p, bufs, tail).map_err(|e| Verified::Damaged(e.to_string()))?;
    if let Some(fault) = scan.fault() {
        return Err(Verified::Damaged(fault));
    }
    if let Ok((salt, entries)) = scan.header
        && listed != Some(&listing_digest(p.size, &salt, entries))
    {
        return Err(Verified::Damaged("header disagrees with the index".into()));
    }
    match scan.misread {
        Some(first) => Err(Verified::Misread(first)),
        None => Ok(()),
    }
}

/// What [`verify_pack`] found wrong.
enum Verified {
    Damaged(String),
    /// Read wrong once (what it found), intact on a second read.
    Misread(String),
}

/// What reading a whole pack found.
pub(crate) struct PackScan {
    /// Whether its bytes hash to its name.
    pub intact: bool,
    /// Its salt and header entries (in offset order), or why the header does not open.
    pub header: std::result::Result<([u8; SALT_LEN], Vec<BlobEntry>), String>,
    /// The blobs of the header that fail to open, each with its error.
    pub bad: Vec<(Id, String)>,
    /// What the first read found wrong when a second read found nothing: the pack is sound, but
    /// something between it and this process (memory, the network, the storage's read path)
    /// gave wrong bytes once.
    pub misread: Option<String>,
}

impl PackScan {
    /// What is wrong with the pack, if anything, in one line.
    pub fn fault(&self) -> Option<String> {
        if !self.intact {
            return Some("content does not match its name".into());
        }
        if let Err(e) = &self.header {
            return Some(format!("header: {e}"));
        }
        self.bad
            .first()
            .map(|(id, e)| format!("blob {}: {e}", id.short()))
    }
}

/// Read a whole pack of `p.size` bytes as it streams in, hashing every byte, opening its header
/// and every blob the header lists. The header (at the end) comes first, from the `tail` read
/// ([`start_tail`]) or a second one when longer; then each blob is opened in place once its last
/// byte arrives, and only the next blob's bytes are kept.
///
/// A pack found wrong is read again, whole, before it is called damaged, as restic's `check`
/// does: bad memory or a faulty network path gives wrong bytes once, damage every time. The
/// second read's verdict stands, with [`PackScan::misread`] saying what the first one found.
///
/// # Errors
/// Reading errors (a pack shorter than `p.size` is `Corrupt`, a missing one `Missing`).
pub(crate) fn scan_pack(
    repo: &Repository,
    p: &PackInfo,
    bufs: &mut Buffers,
    tail: (PendingRead<'_>, u64),
) -> Result<PackScan> {
    let first = scan_once(repo, p, bufs, tail)?;
    let Some(fault) = first.fault() else {
        return Ok(first);
    };
    tracing::debug!("{}: {fault}; reading it again", names::pack(&p.id));
    let mut again = scan_once(
        repo,
        p,
        bufs,
        start_tail(repo, &names::pack(&p.id), p.size, TAIL),
    )?;
    if again.fault().is_none() {
        again.misread = Some(fault);
    }
    Ok(again)
}

fn scan_once(
    repo: &Repository,
    p: &PackInfo,
    bufs: &mut Buffers,
    tail: (PendingRead<'_>, u64),
) -> Result<PackScan> {
    let store = repo.store();
    let name = names::pack(&p.id);
    let Buffers { body, scratch } = bufs;
    let (tail, from) = whole_tail(repo, &name, p.size, tail)?;
    body.clear();
    let mut v = Streamed {
        repo,
        pack: p,
        tail: &tail,
        hasher: blake3::Hasher::new(),
        head: Vec::with_capacity(pack::PACK_HEAD_LEN),
        header: None,
        entries: Vec::new(),
        next: 0,
        cipher: None,
        base: 0,
        received: 0,
        bad: Vec::new(),
    };
    let mut stream = store.start_stream(&name, 0, from)?;
    loop {
        let n = stream.read_more(body, v.want())?;
        if n == 0 {
            break;
        }
        v.took(body, scratch, n);
    }
    body.extend_from_slice(v.tail);
    v.took(body, scratch, v.tail.len());
    Ok(v.finish())
}

/// The `tail` read of pack object `name` of `size` bytes ([`start_tail`]), extended to the whole
/// header when that is longer, and where it starts. A header whose length is out of range is
/// left for the caller to find, with the tail as read.
///
/// # Errors
/// Reading errors.
pub(crate) fn whole_tail(
    repo: &Repository,
    name: &str,
    size: u64,
    (tail, from): (PendingRead<'_>, u64),
) -> Result<(Vec<u8>, u64)> {
    let mut tail = tail.wait()?;
    match pack::header_start(&tail, size) {
        Ok(h) if h < from => {
            let rest = repo.store().read_range(name, h, from - h)?;
            tail.splice(0..0, rest);
            Ok((tail, h))
        }
        _ => Ok((tail, from)),
    }
}

/// A pack being verified as its bytes arrive ([`verify_pack`]).
struct Streamed<'a> {
    repo: &'a Repository,
    pack: &'a PackInfo,
    /// The pack's last bytes, header included.
    tail: &'a [u8],
    hasher: blake3::Hasher,
    /// The pack's first bytes (magic and salt): the header is opened with the pack's own salt.
    head: Vec<u8>,
    /// The header once the head arrived: its salt and entries in offset order, or its error.
    header: Option<std::result::Result<[u8; SALT_LEN], String>>,
    /// The header's entries in offset order; `next` is the first not yet opened.
    entries: Vec<BlobEntry>,
    next: usize,
    cipher: Option<crate::crypto::ObjectCipher>,
    /// The offset in the pack of the body buffer's first byte, and the bytes received so far.
    base: u64,
    received: u64,
    /// The blobs that failed to open.
    bad: Vec<(Id, String)>,
}

impl Streamed<'_> {
    /// How many bytes to read next: the rest of the next blob.
    fn want(&self) -> usize {
        self.entries.get(self.next).map_or(LOCAL_PIECE, |e| {
            let end = u64::from(e.offset) + u64::from(e.length);
            usize::try_from(end.saturating_sub(self.received))
                .unwrap_or(LOCAL_PIECE)
                .clamp(64 << 10, LOCAL_PIECE)
        })
    }

    /// Take the `n` bytes just appended to `body`: hash them, open every blob now complete, and
    /// drop what no blob after them needs.
    fn took(&mut self, body: &mut Vec<u8>, scratch: &mut Vec<u8>, n: usize) {
        let new = &body[body.len() - n..];
        self.hasher.update(new);
        if self.head.len() < pack::PACK_HEAD_LEN {
            let k = (pack::PACK_HEAD_LEN - self.head.len()).min(n);
            self.head.extend_from_slice(&new[..k]);
            if self.head.len() == pack::PACK_HEAD_LEN {
                self.open_header();
            }
        }
        self.received += n as u64;
        let keys = self.repo.keys();
        while let Some(e) = self.entries.get(self.next) {
            let (start, end) = (
                u64::from(e.offset),
                u64::from(e.offset) + u64::from(e.length),
            );
            if end > self.received {
                break;
            }
            self.next += 1;
            let Some(cipher) = &self.cipher else { break };
            let range = (start - self.base) as usize..(end - self.base) as usize;
            // Opened in place, unless the next blob starts inside this one (no writer does that,
            // but the bytes are still each blob's own).
            let ct = match self.entries.get(self.next) {
                Some(n) if u64::from(n.offset) < end => {
                    scratch.clear();
                    scratch.extend_from_slice(&body[range]);
                    &mut scratch[..]
                }
                _ => &mut body[range],
            };
            if let Err(err) = pack::open_blob_in(keys, cipher, e, ct) {
                self.bad.push((e.id, err.to_string()));
            }
        }
        let keep = self
            .entries
            .get(self.next)
            .map_or(self.received, |e| u64::from(e.offset).min(self.received));
        body.drain(..(keep - self.base) as usize);
        self.base = keep;
    }

    /// The head has arrived: open the header with its salt.
    fn open_header(&mut self) {
        let header = pack::salt_of(&self.head).and_then(|salt| {
            pack::read_header_tail(self.repo.keys(), &salt, self.tail, self.pack.size)
                .map(|entries| (salt, entries))
        });
        match header {
            Err(e) => self.header = Some(Err(e.to_string())),
            Ok((salt, mut entries)) => {
                entries.sort_by_key(|e| e.offset);
                self.entries = entries;
                self.cipher = Some(self.repo.keys().object_cipher(&salt));
                self.header = Some(Ok(salt));
            }
        }
    }

    /// Every byte arrived: the verdict.
    fn finish(mut self) -> PackScan {
        if self.header.is_none() {
            self.open_header();
        }
        let intact = Id(*self.hasher.finalize().as_bytes()) == self.pack.id;
        let header = match self.header {
            Some(Ok(salt)) => Ok((salt, self.entries)),
            Some(Err(e)) => Err(e),
            None => Err("pack is truncated".into()),
        };
        PackScan {
            intact,
            header,
            bad: self.bad,
            misread: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ObjectKind;
    use crate::index::PackRecord;
    use crate::{BackupOptions, InitOptions, Location, Progress, Secret};

    fn errors(repo: &mut Repository, read_data: bool) -> Vec<String> {
        let read = if read_data {
            ReadData::All
        } else {
            ReadData::None
        };
        check(repo, read, &CheckProgress::default()).unwrap().errors
    }

    /// An index object that authenticates but lists a pack's blobs (or its salt) otherwise than
    /// the pack's header does is named: by `check` when another index object lists the pack
    /// right, by `check --read-data` when it is the only one.
    #[test]
    fn an_index_that_disagrees_with_a_pack_header_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for i in 0..4u8 {
            std::fs::write(src.join(format!("f{i}")), vec![i; 10_000 + usize::from(i)]).unwrap();
        }
        let loc = Location::Local(dir.path().join("repo"));
        let secret = Secret::KeyFile([7; 32].into());
        let mut repo = Repository::init(&loc, &secret, &InitOptions::default()).unwrap();
        crate::backup(
            &repo,
            std::slice::from_ref(&src),
            &BackupOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(errors(&mut repo, true), Vec::<String>::new());

        let good = repo.store().list_ids(names::INDEX).unwrap();
        let records: Vec<PackRecord> = good
            .iter()
            .flat_map(|id| repo.read_index_object(id).unwrap())
            .collect();
        let data = records
            .iter()
            .find(|r| r.blobs.iter().all(|b| b.blob_type == pack::BlobType::Data))
            .expect("a data pack")
            .clone();
        let pack = names::pack(&data.id);
        let mut wrong_blobs = data.clone();
        wrong_blobs.blobs[0].raw_len += 1;
        let mut wrong_salt = data.clone();
        wrong_salt.salt[0] ^= 1;
        for bad in [wrong_blobs, wrong_salt] {
            let (bad_id, _) = repo
                .save_object(ObjectKind::Index, &crate::index::encode(&[bad]))
                .unwrap();
            let e = errors(&mut repo, false);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&pack) && e[0].contains(&format!("index/{bad_id}")),
                "{e:?}"
            );
            // With the right listing gone, only reading the pack shows the disagreement.
            let saved: Vec<(String, Vec<u8>)> = good
                .iter()
                .map(|id| {
                    let name = format!("{}{id}", names::INDEX);
                    let b = repo.store().read(&name).unwrap();
                    repo.store().delete(&name).unwrap();
                    (name, b)
                })
                .collect();
            let others: Vec<PackRecord> = records
                .iter()
                .filter(|r| r.id != data.id)
                .cloned()
                .collect();
            let (others_id, _) = repo
                .save_object(ObjectKind::Index, &crate::index::encode(&others))
                .unwrap();
            assert_eq!(errors(&mut repo, false), Vec::<String>::new());
            assert_eq!(
                errors(&mut repo, true),
                vec![format!("{pack}: header disagrees with the index")]
            );
            for (name, b) in saved {
                repo.store().write(&name, &b).unwrap();
            }
            for id in [bad_id, others_id] {
                repo.store()
                    .delete(&format!("{}{id}", names::INDEX))
                    .unwrap();
            }
            assert_eq!(errors(&mut repo, true), Vec::<String>::new());
        }
        // A pack gone from storage is one problem, named once (not again when it is not read).
        repo.store().delete(&pack).unwrap();
        assert_eq!(
            errors(&mut repo, true),
            vec![format!("{pack}: missing (the index names it)")]
        );
    }

    /// Write a pack of `blobs` (id, plaintext; stored raw), then `edit` its entries before the
    /// header is sealed; returns what the index would say of it.
    fn write_pack(
        repo: &Repository,
        blobs: &[(Id, Vec<u8>)],
        edit: impl FnOnce(&mut Vec<BlobEntry>),
    ) -> (PackInfo, Id) {
        let mut w = pack::PackWriter::new(repo.keys(), 1 << 20).unwrap();
        for (id, b) in blobs {
            w.add(*id, pack::BlobType::Data, b.len() as u32, false, b);
        }
        edit(w.entries_mut());
        let f = w.finish();
        repo.store().write(&names::pack(&f.id), f.bytes()).unwrap();
        let size = f.bytes().len() as u64;
        let listed = listing_digest(size, &f.salt, f.entries.clone());
        let info = PackInfo {
            id: f.id,
            size,
            salt: f.salt,
        };
        (info, listed)
    }

    /// A pack streams through verification whatever part of it the first read of its end
    /// holds: none of the header, part of it, all of it, or the whole pack. Blobs are opened as
    /// they complete; a damaged byte anywhere is named as damage, a blob that does not match its
    /// id by that blob, and a header listing one blob twice verifies both.
    #[test]
    fn packs_verify_as_they_stream_in() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Local(dir.path().join("repo"));
        let repo = Repository::init(
            &loc,
            &Secret::KeyFile([9; 32].into()),
            &InitOptions::default(),
        )
        .unwrap();
        // 300 blobs of 1–1000 bytes: a header of about 14 KiB.
        let blobs: Vec<(Id, Vec<u8>)> = (0..300u32)
            .map(|i| {
                let b: Vec<u8> = (0..=(i * 37) % 1000).map(|j| (i ^ j) as u8).collect();
                (repo.keys().blob_id(&b), b)
            })
            .collect();
        let (good, listed) = write_pack(&repo, &blobs, |_| {});
        let name = names::pack(&good.id);
        let bytes = repo.store().read(&name).unwrap();
        let verify = |p: &PackInfo, listed: &Id, tail| {
            let tail = start_tail(&repo, &names::pack(&p.id), p.size, tail);
            verify_pack(&repo, p, Some(listed), &mut Buffers::default(), tail).map_err(
                |v| match v {
                    Verified::Damaged(e) => e,
                    Verified::Misread(e) => format!("misread: {e}"),
                },
            )
        };
        let tails = [1, 100, 4096, 20_000, 1 << 30];
        for tail in tails {
            assert_eq!(verify(&good, &listed, tail), Ok(()), "tail {tail}");
        }
        assert_eq!(
            verify(&good, &Id([0; 32]), 4096),
            Err("header disagrees with the index".into())
        );
        // Magic, a blob, the header, the header's length.
        let n = bytes.len();
        for at in [3, 5000, n - 100, n - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            repo.store().delete(&name).unwrap();
            repo.store().write(&name, &bad).unwrap();
            for tail in tails {
                assert_eq!(
                    verify(&good, &listed, tail),
                    Err("content does not match its name".into()),
                    "byte {at}, tail {tail}"
                );
            }
        }
        // A blob whose bytes are not what its id says, in a pack named right.
        let mut wrong = blobs.clone();
        wrong[150].0 = wrong[151].0;
        let (p, listed) = write_pack(&repo, &wrong, |_| {});
        for tail in tails {
            let e = verify(&p, &listed, tail).unwrap_err();
            assert!(
                e.starts_with(&format!("blob {}: ", wrong[150].0.short()))
                    && e.ends_with("does not match its id"),
                "tail {tail}: {e}"
            );
        }
        // The same blob listed twice: both entries open.
        let (p, listed) = write_pack(&repo, &blobs[..3], |e| e.push(e[1]));
        for tail in tails {
            assert_eq!(verify(&p, &listed, tail), Ok(()), "tail {tail}");
        }
    }
}
