//! Restore: the mirror of backup. A walker recreates the tree through directory file descriptors
//! (so depth is unlimited) and hands each regular file, already created and open, to a pool of
//! writers that fetch, authenticate, decompress and `pwrite` its blobs. Holes are never written.
//! Every blob's id is checked against its plaintext, so restore never writes wrong data silently.
//! A blob several files want (copies, cloned images) is fetched and checked once per job and
//! written to each: small files travel in batches, and parts of large files that share most of
//! their blobs are joined into one job (see [`PartWindow`]). Writers are one per core; reads of a
//! remote repository are started ahead of them, and every byte read and not yet written takes from
//! one budget ([`BUDGET`]), so memory does not grow with cores or requests in flight.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};

use crate::fsmeta::write_all_at;
use crossbeam_channel::{Receiver, bounded};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::backend::names;
use crate::error::{Error, ErrorKind, Result};
use crate::fsmeta;
use crate::id::Id;
use crate::pattern::Patterns;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::status::RunStatus;
use crate::tree::{Node, NodeKind, TreeEntries};

/// Options of one restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreOptions {
    /// Restore only what these select (and what is below it): absolute paths without pattern
    /// characters name snapshot paths, which must exist; anything else is a restic pattern (see
    /// [`crate::pattern`]).
    pub include: Vec<PathBuf>,
    /// Patterns like `include`'s, ignoring case.
    pub iinclude: Vec<String>,
    /// Leave out what these patterns match (a directory with everything below it), included or
    /// not.
    pub exclude: Vec<String>,
    /// The same, ignoring case.
    pub iexclude: Vec<String>,
    /// Writer threads (default: one per core, at least two).
    pub threads: Option<usize>,
    /// Restoring onto a device known to read as zeros (new or discarded): zero ranges are skipped
    /// instead of written with `BLKZEROOUT`.
    pub target_is_zeroed: bool,
    /// Read every restored file (or the device) back once it is written, and check each blob's
    /// range against its id (as restic's `restore --verify`).
    pub verify: bool,
    /// Leave every zero range of a file a hole, also those its source had allocated
    /// ([`Node::allocated`]), which are otherwise allocated again.
    pub sparse: bool,
}

impl RestoreOptions {
    /// Whether the patterns are valid, so a command can refuse them before it starts.
    ///
    /// # Errors
    /// `InvalidInput` naming the first pattern that is not valid.
    pub fn check(&self) -> Result<()> {
        Selection::new(self).map(drop)
    }
}

/// Live restore counters.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// File bytes written.
    pub bytes: AtomicU64,
    /// Files finished.
    pub files: AtomicU64,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreOutcome {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries restored.
    pub others: u64,
    /// Metadata that could not be applied (for example ownership as a non-root user).
    pub warnings: Vec<String>,
    /// With [`RestoreOptions::verify`]: files read back and checked, and their bytes.
    pub files_verified: u64,
    /// Bytes of data read back (holes are not read).
    pub bytes_verified: u64,
    /// Restored files whose content read back differs from the snapshot's, each with where.
    pub mismatches: Vec<String>,
}

/// Split an absolute snapshot path into components.
///
/// # Errors
/// `InvalidInput` for `..` components.
pub fn path_components(p: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x.as_bytes().to_vec()),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{}: '..' is not allowed in a snapshot path",
                    p.display()
                )));
            }
        }
    }
    Ok(out)
}

/// The node at `path` in a snapshot (`None` for the root).
///
/// # Errors
/// `InvalidInput` when the path does not exist in the snapshot.
pub fn find_node(repo: &Repository, snap: &Snapshot, path: &Path) -> Result<Option<Node>> {
    let comps = path_components(path)?;
    let absent = || Error::invalid(format!("{} is not in the snapshot", path.display()));
    let mut ids = snap.tree.clone();
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        // Entries are sorted: the search stops at the first name past `c`.
        let mut node = None;
        for n in repo.read_tree_entries(&ids)? {
            let n = n?;
            match n.name.as_slice().cmp(c) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    node = Some(n);
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let node = node.ok_or_else(absent)?;
        if i + 1 < comps.len() {
            if node.kind() != NodeKind::Dir {
                return Err(absent());
            }
            ids.clone_from(&node.subtree);
        }
        found = Some(node);
    }
    Ok(found)
}

/// Large files are restored in parts of about this many bytes, written in parallel.
const PART: u64 = 32 << 20;
/// Small files are handed to the writers in batches of up to this many bytes and files, so that
/// files whose blobs lie next to each other in a pack (the backup stored them in walk order) are
/// fetched with one read.
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_FILES: usize = 256;

/// Files per batch such that every file open at once (one batch per writer and two queued per
/// writer, plus the walker's) stays within half the open-file limit `limit`, less the
/// directories the walker holds at `depth` (one a level).
fn batch_files(limit: usize, writers: usize, depth: usize) -> usize {
    ((limit / 2).saturating_sub(depth) / (writers * 3 + 1)).clamp(1, BATCH_FILES)
}

/// How writers read packs: neighbouring blobs of one pack are fetched with one read of at most
/// `max_read` bytes, reading over gaps of unwanted blobs up to `gap` bytes.
#[derive(Clone, Copy)]
struct ReadShape {
    max_read: u64,
    gap: u64,
}

impl ReadShape {
    /// The shape for `writers` writers: reads no larger than a share of [`BUDGET`] (half of it
    /// split between them), so that many cores do not wait on the budget for each other.
    fn of(repo: &Repository, writers: usize) -> Self {
        let share = (BUDGET / 2 / writers as u64).max(1 << 20);
        if repo.store().is_remote() {
            // Each request costs a round trip: read over larger gaps, but keep the buffers of the
            // many reads in flight small.
            Self {
                max_read: share.min(4 << 20),
                gap: 1 << 20,
            }
        } else {
            Self {
                max_read: share.min(16 << 20),
                gap: 32 << 10,
            }
        }
    }
}

/// A file being restored, shared by the jobs of its parts; the last part to finish sets its size
/// and metadata (not on a device: it keeps its size and its own metadata).
struct RFile {
    fd: OwnedFd,
    node: Node,
    path: String,
    device: bool,
    parts_left: AtomicUsize,
    /// Held while a writer writes to the file (not a device).
    writing: Mutex<()>,
}

impl RFile {
    fn new(fd: OwnedFd, node: Node, path: String, device: bool, parts: usize) -> Self {
        Self {
            fd,
            node,
            path,
            device,
            parts_left: AtomicUsize::new(parts),
            writing: Mutex::new(()),
        }
    }

    /// Write `data` at `off`, unless another writer is writing to this file and `wait` is false;
    /// returns whether it wrote.
    ///
    /// Filesystems write to one file at a time (the inode lock), and a writer waiting for it
    /// spins in the kernel: restoring one large file that way spent a tenth of its CPU spinning.
    /// A writer that finds the file busy decrypts its next blob instead. Block devices take no
    /// such lock, so their writers never wait for each other.
    fn write_at(&self, data: &[u8], off: u64, wait: bool) -> std::io::Result<bool> {
        let _turn = if self.device {
            None
        } else {
            match self.writing.try_lock() {
                Ok(turn) => Some(turn),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) if wait => {
                    Some(self.writing.lock().unwrap_or_else(PoisonError::into_inner))
                }
                Err(TryLockError::WouldBlock) => return Ok(false),
            }
        };
        write_all_at(self.fd.as_fd(), data, off)?;
        Ok(true)
    }
}

/// Split a file's blobs into parts of about `PART` bytes, written in parallel.
fn parts_of(blobs: Vec<(Id, u64, u64)>) -> Vec<Vec<(Id, u64)>> {
    let mut parts: Vec<Vec<(Id, u64)>> = vec![Vec::new()];
    let mut part_bytes = 0;
    for (id, off, len) in blobs {
        if part_bytes >= PART {
            parts.push(Vec::new());
            part_bytes = 0;
        }
        parts.last_mut().expect("one part").push((id, off));
        part_bytes += len;
    }
    parts
}

/// One part of a file: its blobs and the file offset each one goes to.
struct FilePart {
    file: Arc<RFile>,
    blobs: Vec<(Id, u64)>,
}

/// What one writer takes at a time: one part of a large file (with the parts of other files that
/// want mostly the same blobs), or a batch of small files.
type Job = Vec<FilePart>;

/// Most parts of large files joined into one job.
const MERGE_MAX: usize = 4;

/// Parts of large files held back for a moment, so that a part wanting at least half the same
/// blobs as a held one (a copy of a file, a cloned image) joins that job: each blob is then fetched,
/// opened and checked once and written everywhere it goes, as restic and rustic do.
struct PartWindow {
    /// Held jobs, each with its sequence number (consecutive, oldest first).
    jobs: VecDeque<(u64, Job)>,
    next_seq: u64,
    /// Blob → the held job that first wanted it.
    owner: HashMap<Id, u64>,
    max_jobs: usize,
}

impl PartWindow {
    /// A window of up to 64 jobs: a few seconds of writing, and at most a quarter of the open-file
    /// limit in held files.
    fn new() -> Self {
        Self {
            jobs: VecDeque::new(),
            next_seq: 0,
            owner: HashMap::new(),
            max_jobs: (fsmeta::open_file_limit() / (4 * MERGE_MAX)).clamp(1, 64),
        }
    }

    /// Hold `part`, in a held job that wants most of its blobs or in a new one; returns the job
    /// that leaves the window to make room, if any.
    fn add(&mut self, part: FilePart) -> Option<Job> {
        let mut hits: HashMap<u64, usize> = HashMap::new();
        for (id, _) in &part.blobs {
            if let Some(&s) = self.owner.get(id) {
                *hits.entry(s).or_default() += 1;
            }
        }
        let front = self.jobs.front().map_or(0, |(s, _)| *s);
        if let Some((s, n)) = hits.into_iter().max_by_key(|&(s, n)| (n, s))
            && 2 * n >= part.blobs.len()
        {
            let job = &mut self.jobs[(s - front) as usize].1;
            if job.len() < MERGE_MAX {
                job.push(part);
                return None;
            }
        }
        let s = self.next_seq;
        self.next_seq += 1;
        for (id, _) in &part.blobs {
            self.owner.entry(*id).or_insert(s);
        }
        self.jobs.push_back((s, vec![part]));
        if self.jobs.len() > self.max_jobs {
            return self.pop();
        }
        None
    }

    /// The oldest held job.
    fn pop(&mut self) -> Option<Job> {
        let (s, job) = self.jobs.pop_front()?;
        for p in &job {
            for (id, _) in &p.blobs {
                if self.owner.get(id) == Some(&s) {
                    self.owner.remove(id);
                }
            }
        }
        Some(job)
    }
}

/// Where each blob of a file goes, checked against the index's lengths before anything is read.
pub(crate) fn plan(repo: &Repository, node: &Node) -> Result<Vec<(Id, u64, u64)>> {
    let mut out = Vec::with_capacity(node.content.len());
    let mut blobs = node.content.iter();
    for (off, len) in node.data_regions() {
        let mut pos = off;
        while pos < off + len {
            let id = blobs
                .next()
                .ok_or_else(|| Error::corrupt("file has fewer blobs than its size"))?;
            let raw = repo.index().find(id)?.entry.raw_len;
            if raw == 0 || pos + u64::from(raw) > off + len {
                return Err(Error::corrupt("file blobs do not fit its data regions"));
            }
            out.push((*id, pos, u64::from(raw)));
            pos += u64::from(raw);
        }
    }
    if blobs.next().is_some() {
        return Err(Error::corrupt("file has more blobs than its size"));
    }
    Ok(out)
}

struct Ctx<'a> {
    repo: &'a Repository,
    /// Reading restored files back ([`RestoreOptions::verify`]).
    verify: Option<Verified>,
    progress: &'a RestoreProgress,
    status: RunStatus,
    shape: ReadShape,
    budget: Budget,
    /// Reads each writer keeps started ahead ([`reads_ahead`]).
    ahead: usize,
    /// [`RestoreOptions::sparse`].
    sparse: bool,
}

/// Bytes the writers hold at once, however many there are (one per core) and however many reads
/// they keep in flight: their pack reads, each with room for the largest blob it opens, and opened
/// blobs waiting for a busy file. Two writers of a local repository never wait for it.
const BUDGET: u64 = 64 << 20;

/// What is left of [`BUDGET`]. Takers are served in turn, so a large read is not starved by
/// small ones.
struct Budget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    left: u64,
    /// The next turn to hand out, and the turn being served.
    next: u64,
    serving: u64,
}

/// Bytes taken from a [`Budget`], given back when dropped.
struct Taken<'b> {
    budget: &'b Budget,
    n: u64,
}

impl Budget {
    fn new() -> Self {
        Self {
            state: Mutex::new(BudgetState {
                left: BUDGET,
                next: 0,
                serving: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take `n` bytes (all of the budget at most), waiting for them in turn. A writer waits here
    /// holding nothing taken, so the writers that hold bytes go on and give them back.
    fn take(&self, n: u64) -> Taken<'_> {
        let n = n.min(BUDGET);
        let mut st = self.lock();
        let turn = st.next;
        st.next += 1;
        while st.serving != turn || st.left < n {
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.serving += 1;
        st.left -= n;
        drop(st);
        // The next in turn may fit in what is left.
        self.freed.notify_all();
        Taken { budget: self, n }
    }

    /// Take `n` bytes if they are free now and nobody is waiting.
    fn try_take(&self, n: u64) -> Option<Taken<'_>> {
        let mut st = self.lock();
        (st.serving == st.next && st.left >= n).then(|| {
            st.left -= n;
            Taken { budget: self, n }
        })
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.budget.lock().left += self.n;
        self.budget.freed.notify_all();
    }
}

impl<'a> Ctx<'a> {
    fn new(
        repo: &'a Repository,
        progress: &'a RestoreProgress,
        writers: usize,
        verify: bool,
    ) -> Self {
        Self {
            repo,
            verify: verify.then(Verified::default),
            progress,
            status: RunStatus::default(),
            shape: ReadShape::of(repo, writers),
            budget: Budget::new(),
            ahead: reads_ahead(repo, writers),
            sparse: false,
        }
    }
}

/// What a restore into a directory writes: `RestoreOptions`' includes and excludes.
struct Selection {
    /// Included snapshot paths, by component.
    paths: Vec<Vec<Vec<u8>>>,
    include: Option<Patterns>,
    exclude: Option<Patterns>,
}

/// How a restore treats one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Choice {
    /// Not restored, nor anything below it.
    Skip,
    /// Restored, with everything below it that is not excluded.
    Whole,
    /// A directory that is not selected but may hold something that is: it is walked, and kept
    /// only if something below it is restored.
    Probe,
}

impl Selection {
    fn new(opts: &RestoreOptions) -> Result<Self> {
        let mut paths = Vec::new();
        let mut patterns = Vec::new();
        for p in &opts.include {
            if is_path(p) {
                paths.push(path_components(p)?);
            } else {
                patterns.push(p.to_str().map(str::to_owned).ok_or_else(|| {
                    Error::invalid(format!(
                        "include pattern {}: not UTF-8 (name a path by its absolute path)",
                        p.display()
                    ))
                })?);
            }
        }
        Ok(Selection {
            paths,
            include: Patterns::new(&patterns, &opts.iinclude, "include pattern")?,
            exclude: Patterns::with_negation(&opts.exclude, &opts.iexclude, "exclude pattern")?,
        })
    }

    fn includes(&self) -> bool {
        !self.paths.is_empty() || self.include.is_some()
    }

    /// The choice for the entry at `path`, a directory when `is_dir`, below a directory restored
    /// whole when `whole`.
    fn choose(&self, path: &[Vec<u8>], is_dir: bool, whole: bool) -> Choice {
        let joined = || {
            let mut j = Vec::with_capacity(path.iter().map(|c| c.len() + 1).sum());
            for c in path {
                j.push(b'/');
                j.extend_from_slice(c);
            }
            j
        };
        let joined = (self.include.is_some() || self.exclude.is_some()).then(joined);
        let joined = joined.as_deref().unwrap_or_default();
        if self.exclude.as_ref().is_some_and(|e| e.matches(joined)) {
            return Choice::Skip;
        }
        if whole
            || !self.includes()
            || self.paths.iter().any(|p| path.starts_with(p))
            || self.include.as_ref().is_some_and(|i| i.matches(joined))
        {
            return Choice::Whole;
        }
        if is_dir
            && (self.paths.iter().any(|p| p.starts_with(path))
                || self
                    .include
                    .as_ref()
                    .is_some_and(|i| i.child_may_match(joined)))
        {
            return Choice::Probe;
        }
        Choice::Skip
    }
}

/// Whether an `include` is a snapshot path: absolute, with no pattern characters.
fn is_path(p: &Path) -> bool {
    p.is_absolute()
        && !p
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| b"*?[]{}\\".contains(b))
}

/// Restore `snap` under `target`: a backed-up path `/a/b/c` lands at `target/a/b/c`.
///
/// # Errors
/// The first fatal error (a damaged or missing blob, a target that cannot be written).
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreOutcome> {
    let selection = Selection::new(opts)?;
    // Included paths must exist; patterns may match nothing.
    for p in opts.include.iter().filter(|p| is_path(p)) {
        find_node(repo, snap, p)?;
    }
    if rustix::fs::stat(target).is_ok_and(|st| fsmeta::kind_of(&st) == NodeKind::Blockdev) {
        if selection.include.is_some() || selection.exclude.is_some() {
            return Err(Error::invalid(
                "a device receives one volume: name it by its absolute path with --include (patterns \
                 and excludes do not apply)",
            ));
        }
        return restore_device(repo, snap, target, opts, progress);
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io(target.display(), e))?;
    let root_fd = fsmeta::open_dir_path(target).map_err(|e| Error::io(target.display(), e))?;
    let root = repo.read_tree_entries(&snap.tree)?;
    let threads = writer_threads(opts);
    let mut ctx = Ctx::new(repo, progress, threads, opts.verify);
    ctx.sparse = opts.sparse;
    let (tx, rx) = bounded::<Job>(threads * 2);
    let mut out = RestoreOutcome::default();
    std::thread::scope(|s| {
        let ctx = &ctx;
        for _ in 0..threads {
            let rx = rx.clone();
            s.spawn(move || write_files(ctx, &rx));
        }
        drop(rx);
        let walker = std::thread::Builder::new()
            .name("lifeboat-restore".into())
            .stack_size(256 << 20)
            .spawn_scoped(s, move || {
                let mut w = RWalker {
                    ctx,
                    jobs: tx,
                    links: HashMap::new(),
                    links_open: 0,
                    max_links_open: fsmeta::open_file_limit() / 8,
                    target,
                    out: RestoreOutcome::default(),
                    selection,
                    batch: Vec::new(),
                    batch_bytes: 0,
                    open_limit: fsmeta::open_file_limit(),
                    writers: threads,
                    window: PartWindow::new(),
                };
                let mut path = Vec::new();
                let r = w
                    .dir(
                        root_fd.as_fd(),
                        root,
                        &mut path,
                        &target.display().to_string(),
                        false,
                        false,
                    )
                    .and_then(|()| w.finish());
                (r, w.out)
            })
            .expect("spawning the restore walker");
        let (r, o) = walker.join().expect("restore walker panicked");
        out = o;
        if let Err(e) = r {
            ctx.status.fail(e);
        }
    });
    if let Some(v) = ctx.verify.take() {
        out.files_verified = v.files.into_inner();
        out.bytes_verified = v.bytes.into_inner();
        out.mismatches = v.mismatches.into_inner().expect("mismatch lock");
        out.mismatches.sort();
    }
    out.warnings = ctx.status.finish()?;
    Ok(out)
}

/// Writers: `--threads`, or one per core; at least two. Each keeps reads of a remote repository
/// going ahead of it (see [`reads_ahead`]), so a few writers keep every request allowed in flight.
fn writer_threads(opts: &RestoreOptions) -> usize {
    opts.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .max(2)
}

/// Pack reads a writer keeps started, the one it works on included: its share of the requests
/// allowed in flight for a remote repository (`--max-requests`); one for a local repository,
/// which the kernel reads ahead for ([`crate::backend::Store::prefetch`]).
fn reads_ahead(repo: &Repository, writers: usize) -> usize {
    repo.store()
        .parallelism()
        .map_or(1, |n| n.div_ceil(writers))
        .max(1)
}

/// The one volume or file of a snapshot that a device restore writes: the `--include` path (a
/// volume or a regular file), or else the snapshot's only entry with contents, which must be a
/// volume: a regular file is written onto a device only when named.
fn volume_node(repo: &Repository, snap: &Snapshot, include: &[PathBuf]) -> Result<Node> {
    fn collect(repo: &Repository, ids: &[Id], found: &mut Vec<Node>) -> Result<()> {
        for n in repo.read_tree_entries(ids)? {
            let n = n?;
            if found.len() > 1 {
                break;
            }
            if n.kind() == NodeKind::Dir {
                collect(repo, &n.subtree, found)?;
            } else if n.has_data() {
                found.push(n);
            }
        }
        Ok(())
    }
    match include {
        [] => {
            let mut found = Vec::new();
            collect(repo, &snap.tree, &mut found)?;
            match found.len() {
                1 if found[0].image => Ok(found.remove(0)),
                1 => Err(Error::invalid(format!(
                    "the snapshot holds a file, not a volume: name it with --include {} to \
                     write it onto the device",
                    found[0].display_name()
                ))),
                0 => Err(Error::invalid(
                    "the snapshot holds no device or file to write onto a device",
                )),
                _ => Err(Error::invalid(
                    "the snapshot holds more than one file: choose the one to write onto the \
                     device with --include",
                )),
            }
        }
        [p] => match find_node(repo, snap, p)? {
            Some(n) if n.has_data() => Ok(n),
            _ => Err(Error::invalid(format!(
                "{} is not a device or regular file in the snapshot",
                p.display()
            ))),
        },
        _ => Err(Error::invalid(
            "a device receives one volume: give at most one --include",
        )),
    }
}

/// Write a volume (or file) snapshot onto the block device `target`: refused when the device is
/// smaller or in use (mounted, or held open exclusively); blobs are written in parallel parts,
/// zero ranges with `BLKZEROOUT` (skipped with `target_is_zeroed`), and the device is flushed.
fn restore_device(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreOutcome> {
    let shown = target.display().to_string();
    let node = volume_node(repo, snap, &opts.include)?;
    // O_EXCL on a block device claims it exclusively: it fails with EBUSY while a filesystem on it
    // is mounted (or another exclusive user holds it), and keeps it from being mounted meanwhile.
    let fd = match rustix::fs::open(
        target,
        OFlags::WRONLY | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::BUSY) => {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{shown}: refusing to restore onto a device that is mounted or in use"),
            ));
        }
        Err(e) => return Err(Error::io(&shown, e)),
    };
    let size = rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
        .map_err(|e| Error::io(format!("{shown}: reading the device size"), e))?;
    if size < node.size {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "{shown}: refusing to restore a {} byte volume onto a {size} byte device",
                node.size
            ),
        ));
    }
    let parts = parts_of(plan(repo, &node)?);
    let file = Arc::new(RFile::new(fd, node, shown.clone(), true, parts.len()));
    let threads = writer_threads(opts);
    let ctx = Ctx::new(repo, progress, threads, false);
    let (tx, rx) = bounded::<Job>(threads * 2);
    std::thread::scope(|s| {
        let ctx = &ctx;
        for _ in 0..threads {
            let rx = rx.clone();
            s.spawn(move || write_files(ctx, &rx));
        }
        drop(rx);
        // Zero ranges are disjoint from the data, so they are zeroed while the data is written.
        if !opts.target_is_zeroed {
            let (file, shown) = (&file, &shown);
            s.spawn(move || {
                for &(off, len) in &file.node.holes {
                    if ctx.status.failed() {
                        break;
                    }
                    if let Err(e) = zero_range(file.fd.as_fd(), off, len) {
                        ctx.status
                            .fail(Error::io(format!("{shown}: writing zeros"), e));
                    }
                }
            });
        }
        for blobs in parts {
            let job = vec![FilePart {
                file: Arc::clone(&file),
                blobs,
            }];
            if tx.send(job).is_err() {
                break;
            }
        }
        drop(tx);
    });
    let warnings = ctx.status.finish()?;
    rustix::fs::fsync(&file.fd).map_err(|e| Error::io(format!("{shown}: flushing"), e))?;
    progress.files.fetch_add(1, Ordering::Relaxed);
    let v = Verified::default();
    if opts.verify {
        verify_file(repo, &file, &v)?;
    }
    Ok(RestoreOutcome {
        files: 1,
        warnings,
        files_verified: v.files.into_inner(),
        bytes_verified: v.bytes.into_inner(),
        mismatches: v.mismatches.into_inner().expect("mismatch lock"),
        ..RestoreOutcome::default()
    })
}

/// Make `[off, off + len)` of a block device read as zeros: whole pages with
/// `fallocate(FALLOC_FL_ZERO_RANGE)`, which the kernel turns into the same `blkdev_issue_zeroout`
/// as the `BLKZEROOUT` ioctl (the device zeroes them, often without writing data: thin
/// provisioning, write-zeroes, discard); the unaligned edges, and devices without it, with
/// ordinary writes.
fn zero_range(fd: BorrowedFd<'_>, off: u64, len: u64) -> std::io::Result<()> {
    const PAGE: u64 = 4096;
    let end = off + len;
    let (a, b) = (off.next_multiple_of(PAGE), end / PAGE * PAGE);
    if a < b && blkzeroout(fd, a, b - a).is_ok() {
        write_zeros(fd, off, a)?;
        return write_zeros(fd, b, end);
    }
    write_zeros(fd, off, end)
}

fn blkzeroout(fd: BorrowedFd<'_>, off: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    Ok(rustix::fs::fallocate(
        fd,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    )?)
}

/// Give `[off, off + len)` of a file (a hole, inside its size) disk space that reads as zeros, as
/// its source had: `fallocate` reserves it without writing (unwritten extents); filesystems
/// without it get the zeros written.
fn allocate(fd: BorrowedFd<'_>, off: u64, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::KEEP_SIZE, off, len) {
        Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(fd, off, off + len),
        r => Ok(r?),
    }
}

fn write_zeros(fd: BorrowedFd<'_>, mut from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64) as usize;
        write_all_at(fd, &ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// Where the first restored link of a hard-linked inode is: open (linked to through
/// `/proc/self/fd`, whatever the permissions of its directory), or, past an eighth of the
/// open-file limit, by its path components under the target (a tree of many hard-linked files
/// would otherwise hold a descriptor for each: 600 could not be restored under a limit of 256).
enum FirstLink {
    Open(OwnedFd),
    At(Vec<Vec<u8>>),
}

struct RWalker<'c, 'a> {
    ctx: &'c Ctx<'a>,
    jobs: crossbeam_channel::Sender<Job>,
    /// The first restored link of each hard-linked inode.
    links: HashMap<(u64, u64), FirstLink>,
    /// Links held open in `links`, and how many may be.
    links_open: usize,
    max_links_open: usize,
    target: &'c Path,
    out: RestoreOutcome,
    selection: Selection,
    /// Small files waiting to be handed to the writers together.
    batch: Job,
    batch_bytes: u64,
    /// The open-file limit and the writers, which set how many files a batch holds at most
    /// ([`batch_files`]: each holds an open file descriptor until written).
    open_limit: usize,
    writers: usize,
    /// Parts of large files not yet handed to the writers.
    window: PartWindow,
}

impl RWalker<'_, '_> {
    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error::new(ErrorKind::Io, "restore writers stopped"))
    }

    /// Hand the batched small files to the writers.
    fn flush(&mut self) -> Result<()> {
        self.batch_bytes = 0;
        if self.batch.is_empty() {
            return Ok(());
        }
        let job = std::mem::take(&mut self.batch);
        self.send(job)
    }

    /// Hand everything still held to the writers.
    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        while let Some(job) = self.window.pop() {
            self.send(job)?;
        }
        Ok(())
    }

    /// `open()`, waiting while the process is out of file descriptors. The files held for the
    /// writers (a batch being filled, parts being merged) are handed to them first: they give
    /// descriptors back as they finish files, and can only finish the files they have.
    fn open_waiting(
        &mut self,
        open: impl Fn() -> std::io::Result<OwnedFd>,
    ) -> std::io::Result<OwnedFd> {
        fsmeta::waiting_for_descriptors(
            || {
                // Writers that stopped make the next send fail, and that reports it.
                let _ = self.finish();
            },
            open,
        )
    }

    /// Hard-link the first restored link of an inode as `name` in `dir`.
    fn link_to(&self, first: &FirstLink, dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
        let first = match first {
            FirstLink::Open(fd) => {
                use std::os::fd::AsRawFd;
                let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
                return Ok(rustix::fs::linkat(
                    rustix::fs::CWD,
                    src.as_str(),
                    dir,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                )?);
            }
            FirstLink::At(path) => path,
        };
        // Its parents are opened one at a time.
        let Some((last, parents)) = first.split_last() else {
            return Err(std::io::Error::other("a hard link to the target itself"));
        };
        let mut at = fsmeta::open_dir_path(self.target)?;
        for p in parents {
            at = fsmeta::open_dir_at(at.as_fd(), p)?;
        }
        Ok(rustix::fs::linkat(
            &at,
            OsStr::from_bytes(last),
            dir,
            name,
            AtFlags::empty(),
        )?)
    }

    /// Restore the entries of `tree` into `dir`; `fresh` when this restore just created `dir`, so
    /// nothing is in the way of its entries; `whole` when `dir` is restored with everything below
    /// it that is not excluded.
    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        tree: TreeEntries,
        path: &mut Vec<Vec<u8>>,
        shown: &str,
        fresh: bool,
        whole: bool,
    ) -> Result<()> {
        for node in tree {
            let node = node.map_err(|e| e.context(shown))?;
            if self.ctx.status.failed() {
                return Ok(());
            }
            path.push(node.name.clone());
            let choice = self
                .selection
                .choose(path, node.kind() == NodeKind::Dir, whole);
            let r = if choice == Choice::Skip {
                Ok(())
            } else {
                self.entry(dir, &node, path, shown, fresh, choice)
            };
            path.pop();
            r?;
        }
        Ok(())
    }

    /// Entries restored so far.
    fn restored(&self) -> u64 {
        self.out.files + self.out.dirs + self.out.others
    }

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        node: &Node,
        path: &mut Vec<Vec<u8>>,
        parent_shown: &str,
        fresh: bool,
        choice: Choice,
    ) -> Result<()> {
        let name = OsStr::from_bytes(&node.name);
        let shown = format!("{parent_shown}/{}", node.display_name());
        let io = |e: std::io::Error| Error::io(&shown, e);
        let mut warn = |w: String| self.ctx.status.warn(w);
        match node.kind() {
            NodeKind::Dir => {
                let mut created = true;
                match rustix::fs::mkdirat(dir, name, Mode::from_bits_retain(0o700)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        created = false;
                        if fsmeta::kind_of(&fsmeta::stat_at(dir, &node.name).map_err(io)?)
                            != NodeKind::Dir
                        {
                            remove(dir, &node.name).map_err(io)?;
                            rustix::fs::mkdirat(dir, name, Mode::from_bits_retain(0o700))
                                .map_err(|e| io(e.into()))?;
                        }
                    }
                    Err(e) => return Err(io(e.into())),
                }
                let fd = self
                    .open_waiting(|| fsmeta::open_dir_at(dir, &node.name))
                    .map_err(io)?;
                let sub = self
                    .ctx
                    .repo
                    .read_tree_entries(&node.subtree)
                    .map_err(|e| e.context(&shown))?;
                let before = self.restored();
                self.dir(
                    fd.as_fd(),
                    sub,
                    path,
                    &shown,
                    created,
                    choice == Choice::Whole,
                )?;
                if choice == Choice::Probe && self.restored() == before {
                    // Nothing below it was selected: it is not restored.
                    if created {
                        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
                            .map_err(|e| io(e.into()))?;
                    }
                    return Ok(());
                }
                // Post-order: the directory's own times are set after its entries are created.
                fsmeta::apply_meta(fsmeta::MetaTarget::At(dir), node, &mut warn).map_err(io)?;
                self.out.dirs += 1;
            }
            // A regular file, or a backed-up device restored into a directory as an image file.
            _ if node.has_data() => {
                if !fresh {
                    remove(dir, &node.name).map_err(io)?;
                }
                let key = (node.dev, node.ino);
                if node.nlink > 1
                    && let Some(first) = self.links.get(&key)
                {
                    self.link_to(first, dir, name).map_err(io)?;
                    self.out.files += 1;
                    return Ok(());
                }
                let fd = self
                    .open_waiting(|| {
                        Ok(rustix::fs::openat(
                            dir,
                            name,
                            OFlags::WRONLY
                                | OFlags::CREATE
                                | OFlags::EXCL
                                | OFlags::NOFOLLOW
                                | OFlags::CLOEXEC,
                            Mode::from_bits_retain(0o600),
                        )?)
                    })
                    .map_err(io)?;
                if node.nlink > 1 {
                    let open = (self.links_open < self.max_links_open)
                        .then(|| fd.try_clone().ok())
                        .flatten();
                    let first = match open {
                        Some(fd) => {
                            self.links_open += 1;
                            FirstLink::Open(fd)
                        }
                        None => FirstLink::At(path.clone()),
                    };
                    self.links.insert(key, first);
                }
                self.out.files += 1;
                let blobs = plan(self.ctx.repo, node).map_err(|e| e.context(&shown))?;
                let bytes: u64 = blobs.iter().map(|b| b.2).sum();
                let parts = parts_of(blobs);
                let file = Arc::new(RFile::new(fd, node.clone(), shown, false, parts.len()));
                if parts.len() == 1 && bytes < BATCH_BYTES {
                    let blobs = parts.into_iter().next().expect("one part");
                    self.batch.push(FilePart { file, blobs });
                    self.batch_bytes += bytes;
                    if self.batch_bytes >= BATCH_BYTES
                        || self.batch.len()
                            >= batch_files(self.open_limit, self.writers, path.len())
                    {
                        self.flush()?;
                    }
                } else {
                    for blobs in parts {
                        let file = Arc::clone(&file);
                        if let Some(job) = self.window.add(FilePart { file, blobs }) {
                            self.send(job)?;
                        }
                    }
                }
            }
            NodeKind::Symlink => {
                if !fresh {
                    remove(dir, &node.name).map_err(io)?;
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&node.target), dir, name)
                    .map_err(|e| io(e.into()))?;
                fsmeta::apply_meta(fsmeta::MetaTarget::At(dir), node, &mut warn).map_err(io)?;
                self.out.others += 1;
            }
            _ => {
                if !fresh {
                    remove(dir, &node.name).map_err(io)?;
                }
                fsmeta::make_node(dir, node).map_err(io)?;
                fsmeta::apply_meta(fsmeta::MetaTarget::At(dir), node, &mut warn).map_err(io)?;
                self.out.others += 1;
            }
        }
        Ok(())
    }
}

/// Remove a non-directory entry that is in the way (absent is fine).
fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    match rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A writer: take jobs and write them until the walker is done, then (or after a failure, this
/// writer's or another's) take the rest without writing them, so the walker never waits on a full
/// queue.
fn write_files(ctx: &Ctx<'_>, jobs: &Receiver<Job>) {
    if let Err(e) = write_jobs(ctx, jobs) {
        ctx.status.fail(e);
    }
    for _ in jobs {}
}

/// One blob to write: where it is stored, which part of the job wants it, and where it goes.
struct Want<'i> {
    loc: crate::index::Location<'i>,
    part: usize,
    off: u64,
}

/// A job a writer took: its blobs sorted by where they are stored, cut into runs of neighbours in
/// one pack, each fetched with one read.
struct Planned<'i> {
    job: Job,
    want: Vec<Want<'i>>,
    /// Each run's blobs in `want`, and its pack's name.
    runs: Vec<(Range<usize>, String)>,
    /// Runs written.
    written: usize,
}

impl Planned<'_> {
    fn run(&self, i: usize) -> &[Want<'_>] {
        &self.want[self.runs[i].0.clone()]
    }

    /// The file a run writes first, to name in an error.
    fn path(&self, i: usize) -> &str {
        &self.job[self.run(i)[0].part].file.path
    }
}

fn plan_job<'i>(ctx: &Ctx<'i>, job: Job) -> Result<Planned<'i>> {
    let repo = ctx.repo;
    let mut want = Vec::with_capacity(job.iter().map(|p| p.blobs.len()).sum());
    for (part, p) in job.iter().enumerate() {
        for (id, off) in &p.blobs {
            let loc = repo.index().find(id).map_err(|e| e.context(&p.file.path))?;
            want.push(Want {
                loc,
                part,
                off: *off,
            });
        }
    }
    want.sort_unstable_by_key(|w| (w.loc.pack.id, w.loc.entry.offset));
    let mut runs = Vec::new();
    let mut at = 0;
    while at < want.len() {
        let n = crate::index::run_len(
            want[at..].iter().map(|w| &w.loc),
            ctx.shape.gap,
            ctx.shape.max_read,
        );
        runs.push((at..at + n, names::pack(&want[at].loc.pack.id)));
        at += n;
    }
    let ranges: Vec<(&str, u64, u64)> = runs
        .iter()
        .map(|(r, name)| {
            let (start, end) = run_span(&want[r.clone()]);
            (name.as_str(), start, end - start)
        })
        .collect();
    repo.store().prefetch(&ranges);
    Ok(Planned {
        job,
        want,
        runs,
        written: 0,
    })
}

/// Fetch, authenticate, decompress and write every blob of the jobs. A writer keeps `ctx.ahead`
/// reads started (of the job it writes and, for a remote repository, of the jobs it takes next),
/// and works through them in order; a blob several files want is opened once.
fn write_jobs<'i>(ctx: &Ctx<'i>, jobs: &Receiver<Job>) -> Result<()> {
    let store = ctx.repo.store();
    // Jobs taken and not yet written, oldest first: the first is being written.
    let mut planned: VecDeque<Planned<'i>> = VecDeque::new();
    // Reads started, in the order of the runs they fetch, each with the budget it takes.
    let mut started = VecDeque::new();
    // The next run to start: run `next_run` of job `planned[next_job]`.
    let (mut next_job, mut next_run) = (0, 0);
    loop {
        while started.len() < ctx.ahead {
            if next_job == planned.len() {
                // Wait for a job only with nothing else to do.
                let job = if started.is_empty() {
                    jobs.recv().ok()
                } else {
                    jobs.try_recv().ok()
                };
                let Some(job) = job else { break };
                if ctx.status.failed() {
                    return Ok(());
                }
                let p = plan_job(ctx, job)?;
                if p.runs.is_empty() {
                    finish_job(ctx, &p.job)?;
                } else {
                    planned.push_back(p);
                    next_run = 0;
                }
                continue;
            }
            let p = &planned[next_job];
            if next_run == p.runs.len() {
                (next_job, next_run) = (next_job + 1, 0);
                continue;
            }
            // Wait for room only with nothing started: a writer that waits holds no budget.
            let need = run_budget(p.run(next_run));
            let taken = if started.is_empty() {
                ctx.budget.take(need)
            } else if let Some(t) = ctx.budget.try_take(need) {
                t
            } else {
                break;
            };
            let (start, end) = run_span(p.run(next_run));
            let read = store.start_read(&p.runs[next_run].1, start, end - start);
            started.push_back((read, taken));
            next_run += 1;
        }
        // The oldest read is for the next run of the first job.
        let Some((read, _taken)) = started.pop_front() else {
            return Ok(());
        };
        if ctx.status.failed() {
            return Ok(());
        }
        let p = planned.front_mut().expect("a started read has its job");
        let i = p.written;
        let buf = read.wait().map_err(|e| e.context(p.path(i)))?;
        write_run(ctx, &p.job, p.run(i), &p.runs[i].1, buf)?;
        p.written += 1;
        if p.written == p.runs.len() {
            let p = planned.pop_front().expect("the first job");
            finish_job(ctx, &p.job)?;
            if next_job == 0 {
                next_run = 0;
            } else {
                next_job -= 1;
            }
        }
    }
}

/// Every part of a written job is done.
fn finish_job(ctx: &Ctx<'_>, job: &[FilePart]) -> Result<()> {
    for p in job {
        finish_part(ctx, &p.file).map_err(|e| e.context(&p.file.path))?;
    }
    Ok(())
}

/// The bytes of its pack that a run reads.
fn run_span(run: &[Want<'_>]) -> (u64, u64) {
    let start = run[0].loc.span().0;
    (
        start,
        run.iter().map(|w| w.loc.span().1).max().unwrap_or(start),
    )
}

/// The budget a run's read takes: its bytes, and room for the largest blob it opens.
fn run_budget(run: &[Want<'_>]) -> u64 {
    let (start, end) = run_span(run);
    let opened = run
        .iter()
        .filter(|w| w.loc.entry.compressed)
        .map(|w| u64::from(w.loc.entry.raw_len))
        .max()
        .unwrap_or(0);
    end - start + opened
}

/// Open each blob of a run of pack `name` from `buf` (the run's bytes), and write it where it
/// goes.
///
/// A blob whose file another writer is writing to is held, while the next ones are opened, if the
/// budget has room for it; otherwise this writer waits for the file.
fn write_run(
    ctx: &Ctx<'_>,
    job: &[FilePart],
    run: &[Want<'_>],
    name: &str,
    mut buf: Vec<u8>,
) -> Result<()> {
    let repo = ctx.repo;
    let pack = run[0].loc.pack;
    let start = run_span(run).0;
    let path_of = |w: &Want<'_>| &job[w.part].file.path;
    let cipher = repo.keys().object_cipher(&pack.salt);
    let mut held: Vec<Held<'_, '_>> = Vec::new();
    // The unread rest of the run, from pack offset `rest_at`.
    let (mut rest, mut rest_at) = (&mut buf[..], start);
    // A blob several files want is opened once.
    for same in run.chunk_by(|a, b| a.loc.entry.offset == b.loc.entry.offset) {
        let entry = same[0].loc.entry;
        let skip = u64::from(entry.offset)
            .checked_sub(rest_at)
            .ok_or_else(|| {
                Error::corrupt(format!("pack {name}: the index has overlapping blobs"))
            })?;
        let (ct, tail) =
            std::mem::take(&mut rest)[skip as usize..].split_at_mut(entry.length as usize);
        (rest, rest_at) = (tail, u64::from(entry.offset) + u64::from(entry.length));
        let plain = match crate::pack::open_blob_in(repo.keys(), &cipher, &entry, ct) {
            Ok(plain) => plain,
            Err(e) => Cow::Owned(
                repo.open_again(name, &pack.salt, &entry, e)
                    .map_err(|e| e.context(format!("pack {name}")).context(path_of(&same[0])))?,
            ),
        };
        let mut busy = Vec::new();
        for w in same {
            if !put(ctx, job, &plain, w, false)? {
                busy.push(w);
            }
        }
        if !busy.is_empty() {
            let room = match &plain {
                Cow::Borrowed(_) => Some(None),
                Cow::Owned(v) => ctx.budget.try_take(v.len() as u64).map(Some),
            };
            match room {
                Some(room) => held.push(Held {
                    plain,
                    to: busy,
                    _room: room,
                }),
                None => put_held(ctx, job, &plain, &mut busy, true)?,
            }
        }
        // Held blobs whose file is free now.
        for h in &mut held {
            put_held(ctx, job, &h.plain, &mut h.to, false)?;
        }
        held.retain(|h| !h.to.is_empty());
    }
    for h in &mut held {
        put_held(ctx, job, &h.plain, &mut h.to, true)?;
    }
    Ok(())
}

/// A blob not yet written everywhere (its file was busy): where it still goes, and the budget it
/// takes (none when it lies in the run's buffer).
struct Held<'a, 'w> {
    plain: Cow<'a, [u8]>,
    to: Vec<&'w Want<'w>>,
    _room: Option<Taken<'a>>,
}

/// Write `plain` where `w` wants it, unless its file is busy and `wait` is false; returns whether
/// it wrote.
fn put(ctx: &Ctx<'_>, job: &[FilePart], plain: &[u8], w: &Want<'_>, wait: bool) -> Result<bool> {
    let file = &job[w.part].file;
    let wrote = file
        .write_at(plain, w.off, wait)
        .map_err(|e| Error::io(&file.path, e))?;
    if wrote {
        ctx.progress
            .bytes
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
    }
    Ok(wrote)
}

/// [`put`] a held blob everywhere it still goes; `to` keeps the places whose file was busy.
fn put_held(
    ctx: &Ctx<'_>,
    job: &[FilePart],
    plain: &[u8],
    to: &mut Vec<&Want<'_>>,
    wait: bool,
) -> Result<()> {
    let mut i = 0;
    while i < to.len() {
        if put(ctx, job, plain, to[i], wait)? {
            to.swap_remove(i);
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Count one part of `f` done; the last one sets the file's size and metadata.
fn finish_part(ctx: &Ctx<'_>, f: &RFile) -> Result<()> {
    if f.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 && !f.device {
        let fd = f.fd.as_fd();
        // The file was created empty: only a hole at its end is left to extend it by.
        let written = f.node.data_regions().last().map_or(0, |&(o, l)| o + l);
        if written != f.node.size {
            rustix::fs::ftruncate(fd, f.node.size).map_err(|e| Error::io("truncating", e))?;
        }
        if !ctx.sparse {
            for &(off, len) in &f.node.allocated {
                allocate(fd, off, len).map_err(|e| Error::io("allocating its zeros", e))?;
            }
        }
        if let Some(v) = &ctx.verify {
            verify_file(ctx.repo, f, v)?;
        }
        let mut warn = |w: String| ctx.status.warn(w);
        fsmeta::apply_meta(fsmeta::MetaTarget::Fd(fd), &f.node, &mut warn)
            .map_err(|e| Error::io("setting metadata", e))?;
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// What reading restored files back found.
#[derive(Default)]
struct Verified {
    files: AtomicU64,
    bytes: AtomicU64,
    mismatches: Mutex<Vec<String>>,
}

/// Read file (or device) `f` back, as written, and check that each of its blobs' ranges hashes
/// to the blob's id and that it has its size (a device at least); a difference is recorded in
/// `v`, naming the first range that differs. Holes are not read.
///
/// # Errors
/// When the file cannot be read back.
fn verify_file(repo: &Repository, f: &RFile, v: &Verified) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| Error::io(format!("{}: reading it back", f.path), e);
    // The descriptor is write-only: the same file opened again for reading, by its descriptor
    // (its name may already be another file's).
    let mut file =
        std::fs::File::open(format!("/proc/self/fd/{}", f.fd.as_raw_fd())).map_err(io)?;
    // A device's size is its end (its metadata says 0), and it may be larger than the volume.
    let size = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io)?;
    let mut wrong = None;
    if size < f.node.size || (size != f.node.size && !f.device) {
        wrong = Some(format!("{size} bytes, the snapshot has {}", f.node.size));
    }
    let mut buf = Vec::new();
    let mut read = 0u64;
    for (id, pos, n) in plan(repo, &f.node)? {
        if wrong.is_some() {
            break;
        }
        buf.resize(n as usize, 0);
        if let Err(e) = file.read_exact_at(&mut buf, pos) {
            wrong = Some(format!("bytes {pos}..{}: {e}", pos + n));
        } else if repo.keys().blob_id(&buf) != id {
            wrong = Some(format!(
                "bytes {pos}..{} are not blob {}",
                pos + n,
                id.short()
            ));
        }
        read += n;
    }
    v.files.fetch_add(1, Ordering::Relaxed);
    v.bytes.fetch_add(read, Ordering::Relaxed);
    if let Some(w) = wrong {
        v.mismatches
            .lock()
            .expect("mismatch lock")
            .push(format!("{}: {w}", f.path));
    }
    Ok(())
}

/// Write the content of a file node to `out` (holes as zeros).
///
/// # Errors
/// `InvalidInput` for a non-file, `Corrupt`/`Missing` for damaged data, or the writer's error.
pub fn dump(repo: &Repository, node: &Node, out: &mut dyn std::io::Write) -> Result<()> {
    if !node.has_data() {
        return Err(Error::invalid(format!(
            "{} is not a regular file or a backed-up device",
            node.display_name()
        )));
    }
    let zeros = vec![0u8; 1 << 16];
    let mut blobs = node.content.iter();
    let mut pos = 0u64;
    let w = |out: &mut dyn std::io::Write, b: &[u8]| {
        out.write_all(b).map_err(|e| Error::io("writing output", e))
    };
    for (off, len) in node.data_regions() {
        while pos < off {
            let n = (off - pos).min(zeros.len() as u64) as usize;
            w(out, &zeros[..n])?;
            pos += n as u64;
        }
        while pos < off + len {
            let id = blobs
                .next()
                .ok_or_else(|| Error::corrupt("file has fewer blobs than its size"))?;
            let data = repo.read_blob(id)?;
            if data.is_empty() || pos + data.len() as u64 > off + len {
                return Err(Error::corrupt("file blobs do not fit its data regions"));
            }
            w(out, &data)?;
            pos += data.len() as u64;
        }
    }
    while pos < node.size {
        let n = (node.size - pos).min(zeros.len() as u64) as usize;
        w(out, &zeros[..n])?;
        pos += n as u64;
    }
    out.flush().map_err(|e| Error::io("writing output", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restored file read back: as written it verifies; a flipped bit, a missing tail or a
    /// hole where data was are each named, with the range that differs.
    #[test]
    fn verify_names_the_range_a_restored_file_got_wrong() {
        use crate::{BackupOptions, InitOptions, Location, Progress, Secret};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // Several chunks (the chunker's minimum is 256 KiB): a counter, not all alike.
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect();
        std::fs::write(src.join("f"), &data).unwrap();
        let loc = Location::Local(dir.path().join("repo"));
        let secret = Secret::KeyFile([9; 32].into());
        let mut repo = Repository::init(&loc, &secret, &InitOptions::default()).unwrap();
        let out = crate::backup(
            &repo,
            std::slice::from_ref(&src),
            &BackupOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        repo.load_index().unwrap();
        let node = find_node(&repo, &out.snapshot, &src.join("f"))
            .unwrap()
            .unwrap();
        assert!(node.content.len() > 2, "{} blobs", node.content.len());
        let check = |bytes: &[u8]| {
            let p = dir.path().join("restored");
            std::fs::write(&p, bytes).unwrap();
            let fd = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let f = RFile::new(fd.into(), node.clone(), "restored".into(), false, 1);
            let v = Verified::default();
            verify_file(&repo, &f, &v).unwrap();
            assert_eq!(v.files.into_inner(), 1);
            v.mismatches.into_inner().unwrap()
        };
        assert_eq!(check(&data), Vec::<String>::new());
        let mut flipped = data.clone();
        flipped[2_000_000] ^= 0x20;
        let m = check(&flipped);
        assert!(m.len() == 1 && m[0].contains("are not blob"), "{m:?}");
        let m = check(&data[..data.len() - 10]);
        assert!(m.len() == 1 && m[0].contains("the snapshot has"), "{m:?}");
        let mut zeroed = data.clone();
        zeroed[..300_000].fill(0);
        let m = check(&zeroed);
        assert!(m.len() == 1 && m[0].contains("bytes 0.."), "{m:?}");
    }

    #[test]
    fn budget_serves_takers_in_turn() {
        let b = Budget::new();
        let most = b.take(BUDGET - (4 << 20));
        assert!(b.try_take(8 << 20).is_none(), "more than is left");
        let small = b.try_take(1 << 20).expect("room for 1 MiB");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let t = b.take(16 << 20);
                t.n
            });
            // Once a taker waits, nobody passes it, though 3 MiB are free.
            while {
                let st = b.lock();
                st.next == st.serving
            } {
                std::thread::yield_now();
            }
            assert!(b.try_take(1 << 20).is_none(), "passed a waiting taker");
            drop(most);
            assert_eq!(waiter.join().unwrap(), 16 << 20);
        });
        drop(small);
        // Everything is back, and a taker asking for more than all of it gets all of it.
        assert_eq!(b.lock().left, BUDGET);
        assert_eq!(b.take(BUDGET * 2).n, BUDGET);
        assert_eq!(b.lock().left, BUDGET);
    }
}
