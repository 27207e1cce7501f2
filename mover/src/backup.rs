//! Backup: walk → read → chunk → id + dedup → compress → seal → pack → store.
//!
//! Threads joined by bounded channels (so memory stays flat and the slowest stage sets the pace):
//!
//! ```text
//! scanners ×N (list, stat, decode parent trees of directories ahead of the walker; scan.rs)
//!    │ scanned directories, windows of huge ones (one-shot; at most SCAN_AHEAD_DIRS,
//!    │ SCAN_AHEAD_ENTRIES, and one window ahead in each directory being walked)
//!    ▼
//! walker ──jobs──▶ workers ×N (read, chunk, hash, dedup, compress, seal into the shared pack) ─┐
//!    │                 │ per-file result (one-shot)                                             │ packs
//!    └──events (walk order)──▶ tree builder (trees → tree blobs → tree pack) ───────────────────┤
//!                                                                                                ▼
//!                                           uploader: pack objects, then the index objects naming them
//! ```
//! A job is one segment of a large file or device, or a batch of small files ([`JOB_BATCH`]);
//! workers add small blobs to the pack a batch at a time too (`BlobSink::staging`).
//! Commit order is packs → index → snapshot: a crash at any point leaves earlier snapshots intact
//! and at worst some packs no index names yet (they wait for prune).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::{Deserialize, Serialize};

use crate::chunker::{Chunker, Chunking, FirstCut};
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::id::Id;
use crate::repo::Repository;
use crate::sink::{BlobSink, Sink};
use crate::snapshot::{Snapshot, Summary, hostname};
use crate::status::RunStatus;
use crate::tree::{Node, NodeKind, Tree, TreeWriter, Xattr};

mod exclude;
mod scan;
pub use exclude::ExcludeOptions;
use exclude::Excludes;
use scan::{
    Ahead, Listing, ParentDir, SCAN_AHEAD_DIRS, SCAN_AHEAD_MIN_AVG, SCAN_AHEAD_PER_DIR,
    SCAN_AHEAD_WARMUP, ScanJob, Scanned, ScansAhead, Windows, scan,
};

/// Options of one backup (CLI, config file or library).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupOptions {
    /// Tags to attach.
    pub tags: Vec<String>,
    /// Host name to record (default: this host).
    pub host: Option<String>,
    /// Worker threads (default: one per core).
    pub threads: Option<usize>,
    /// How file and device data is cut into chunks (trees are always content-defined).
    pub chunking: Chunking,
    /// Changed-block hints for the one path backed up, as `(offset, length)` in bytes: only these
    /// ranges (widened to the parent's chunk boundaries) are read, and the parent's chunks are
    /// reused everywhere else. Ignored, with a notice, when there is no usable parent.
    pub changed_ranges: Option<Vec<(u64, u64)>>,
    /// What to leave out.
    pub exclude: ExcludeOptions,
    /// Check every new blob before it is stored: decompressed again, it must hash to its id
    /// (restic's default; about a fifth more CPU time for compressible data).
    pub extra_verify: bool,
}

/// Live counters, readable while a backup runs (for a progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the source so far.
    pub bytes_read: AtomicU64,
    /// Files finished.
    pub files: AtomicU64,
    /// Bytes written to the repository so far.
    pub bytes_added: AtomicU64,
}

/// What a finished backup produced.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Entries that vanished or could not be read (the backup completed without them).
    pub warnings: Vec<String>,
    /// Things the user should know that did not lose anything (for example a full read where
    /// changed ranges were given but no parent could use them).
    pub notices: Vec<String>,
}

struct Shared<'a> {
    repo: &'a Repository,
    /// Cuts tree blobs (always content-defined).
    chunker: Chunker,
    /// Cuts file and device data.
    data_chunker: Chunker,
    changed_ranges: Option<&'a [(u64, u64)]>,
    /// Patterns and tag files, applied to listings.
    excludes: Option<Excludes>,
    exclude: &'a ExcludeOptions,
    notices: Mutex<Vec<String>>,
    progress: &'a Progress,
    /// Where new blobs go.
    sink: Sink<'a>,
    status: RunStatus,
    /// Existing packs the new snapshot uses (collected only under Object Lock, whose retention
    /// they need extended).
    used_packs: Mutex<HashSet<Id>>,
    /// How long a data chunk that starts in a run of at least `max` zeros is (the same wherever
    /// it starts, since a chunk's cut depends only on its own bytes); found once, by the first
    /// changed-ranges job that needs it.
    zero_chunk: OnceLock<u64>,
}

impl Shared<'_> {
    fn zero_chunk(&self) -> u64 {
        *self.zero_chunk.get_or_init(|| {
            let max = self.data_chunker.max_size();
            self.data_chunker
                .first_cut(&vec![0u8; max], true)
                .unwrap_or(max) as u64
        })
    }
}

/// Files larger than this are cut into segments that workers chunk in parallel, so one large file
/// uses every core. The seam between two segments sits at the first content-defined cut after the
/// nominal boundary (a multiple of `SEGMENT`), computed once and shared by both neighbours: segments
/// tile the file exactly, and an insertion moves a seam with the content instead of breaking dedup.
const SEGMENT: u64 = 32 << 20;

/// Walk events per batch sent to the tree builder.
const EVENT_BATCH: usize = 256;

/// Small files travel to the workers in jobs of up to this many files and bytes. One file a job
/// had the walker and the workers hand over (and wake each other) for every file: 13 600 context
/// switches in a backup of 30 000 small files, 4 100 with batches. Under a low open-file limit
/// batches are smaller (see [`job_batch`]).
const JOB_BATCH: usize = 16;
const JOB_BATCH_BYTES: u64 = 1 << 20;

/// One segment of a file's data: where it nominally starts, and the end of its data region.
struct Seg {
    at: u64,
    region_end: u64,
    /// The first segment of a data region starts exactly at `at`.
    region_start: bool,
}

/// A file or device being read, shared by the jobs of its segments.
struct OpenFile {
    fd: OwnedFd,
    name: String,
    /// A block device: any read error or short read fails the backup.
    device: bool,
    segs: Vec<Seg>,
    /// The actual start of each segment that is not a region start, once a neighbour computed it.
    seams: Vec<OnceLock<Seam>>,
}

/// Where a segment really starts, past its nominal start `Seg::at`.
#[derive(Clone, Copy)]
struct Seam {
    /// The first cut from the nominal start on.
    at: u64,
    /// The bytes from the nominal start to `at` were all zero when the seam was found. The
    /// segment before then ends with these zeros without reading them again: over the free space
    /// of a volume (no cut for `max` bytes) that second read was a ninth of all reads.
    zeros: bool,
}

/// A run of a file's bytes: one blob, or zeros (a hole, or a chunk that was all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    off: u64,
    len: u64,
    blob: Option<Id>,
}

/// One segment of a file to read, and where its result goes.
struct SegJob {
    file: Arc<OpenFile>,
    seg: usize,
    reply: Sender<SegResult>,
}

enum Job {
    /// Read segments, in order: one of a large file, or small files batched (see `JOB_BATCH`).
    Segs(Vec<SegJob>),
    /// Store the chunks of a piece of a stream, cut by its reader: `data[..ends[0]]`,
    /// `data[ends[0]..ends[1]]`, …, which start at byte `base` of the stream.
    Chunks {
        data: Vec<u8>,
        ends: Vec<usize>,
        base: u64,
        reply: Sender<SegResult>,
    },
    /// Re-read changed windows of a file against its parent's layout.
    Delta {
        file: Arc<OpenFile>,
        parent: Arc<[Piece]>,
        /// `(start, changed_end)`: start is a parent chunk boundary at or before the change.
        windows: Vec<(u64, u64)>,
        /// Every changed range of the file, sorted and disjoint: bytes of a window outside them
        /// are the parent's.
        changes: Arc<[(u64, u64)]>,
        /// A parent boundary this job never reads past (where the next job's first window starts).
        limit: u64,
        reply: Sender<DeltaResult>,
    },
}

/// What one segment produced.
struct SegContent {
    pieces: Vec<Piece>,
    /// Where reading stopped: the segment's end, or earlier if the file shrank.
    end: u64,
    short: bool,
}

type SegResult = std::result::Result<SegContent, String>;

/// A re-chunked range `[start, end)` that replaces the parent's pieces there.
struct Replaced {
    start: u64,
    end: u64,
    pieces: Vec<Piece>,
}

type DeltaResult = std::result::Result<Vec<Replaced>, String>;

/// A file's content: blobs, holes and the size actually read.
struct FileContent {
    content: Vec<Id>,
    holes: Vec<(u64, u64)>,
    allocated: Vec<(u64, u64)>,
    size: u64,
}

/// Which of a file's zero ranges its source had written (`Node::allocated`).
enum Written {
    /// None: a device's zero ranges, and a stream's, are holes.
    Nothing,
    /// All of them: a file without holes.
    All,
    /// Those inside these data regions (sorted) of a sparse file.
    In(Box<[(u64, u64)]>),
}

impl Written {
    /// The parts of `holes` (sorted) that were written.
    fn of(&self, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
        match self {
            Written::Nothing => Vec::new(),
            Written::All => holes.to_vec(),
            Written::In(regions) => {
                let mut out = Vec::new();
                let mut r = regions.iter().peekable();
                for &(off, len) in holes {
                    let end = off + len;
                    while let Some(&&(ro, rl)) = r.peek() {
                        let (a, b) = (off.max(ro), end.min(ro + rl));
                        if a < b {
                            out.push((a, b - a));
                        }
                        if ro + rl > end {
                            break;
                        }
                        r.next();
                    }
                }
                out
            }
        }
    }
}

enum Source {
    Ready,
    Pending {
        parts: Vec<Receiver<SegResult>>,
        written: Written,
    },
    Delta {
        parent: Arc<[Piece]>,
        size: u64,
        parts: Vec<Receiver<DeltaResult>>,
        written: Written,
    },
    SameAs((u64, u64)),
    /// A stream's pieces, in order, as its reader cuts them; the channel closes at its end.
    Stream {
        parts: Receiver<Receiver<SegResult>>,
    },
}

enum Event {
    Enter(Node),
    Exit,
    Entry {
        node: Node,
        source: Source,
        link: Option<(u64, u64)>,
    },
}

/// Run a backup of `paths` into `repo` (its index must be loaded).
///
/// # Errors
/// Fatal errors only (storage failures, an unreadable top-level path); unreadable entries below the
/// top are returned as warnings.
pub fn backup(
    repo: &Repository,
    paths: &[PathBuf],
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    run(repo, Input::Paths(normalize_paths(paths)?), opts, progress)
}

/// Back up what `reader` gives until its end (standard input, a database dump) as one file
/// `/NAME`, as restic's `backup --stdin`. It is cut and stored as it is read, in bounded memory;
/// the snapshot's path is `/NAME`, and a later stream of the same name has it as parent.
///
/// # Errors
/// A read error, including one the reader reports at its end (a dump command that failed),
/// fails the backup: no snapshot is written. `InvalidInput` for a name that is empty, `.`, `..`
/// or holds a `/`.
pub fn backup_stream(
    repo: &Repository,
    name: &str,
    reader: &mut (dyn std::io::Read + Send),
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    check_stream_name(name)?;
    if opts.changed_ranges.is_some() {
        return Err(Error::invalid("changed ranges do not apply to a stream"));
    }
    run(repo, Input::Stream { name, reader }, opts, progress)
}

/// Whether `name` can name the file a stream is backed up as, so a command can refuse it before
/// it starts the stream's source.
///
/// # Errors
/// `InvalidInput` for a name that is empty, `.`, `..` or holds a `/`.
pub fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::invalid(format!(
            "{name:?} cannot name a file: give a name without '/'"
        )));
    }
    Ok(())
}

enum Input<'r> {
    Paths(Vec<PathBuf>),
    Stream {
        name: &'r str,
        reader: &'r mut (dyn std::io::Read + Send),
    },
}

fn run(
    repo: &Repository,
    input: Input<'_>,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let start = Instant::now();
    let time = jiff::Timestamp::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let tops = match &input {
        Input::Paths(tops) => tops.clone(),
        Input::Stream { name, .. } => vec![Path::new("/").join(name)],
    };
    let path_strings: Vec<String> = tops
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();

    let parent = find_parent(repo, &host, &path_strings)?;
    let parent_root = parent
        .as_ref()
        .filter(|_| matches!(input, Input::Paths(_)))
        .and_then(|(id, s)| match repo.read_tree(&s.tree) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "parent snapshot {} is unreadable, reading everything: {e}",
                    id.short()
                );
                None
            }
        });

    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .max(1);
    if opts.changed_ranges.is_some() && tops.len() != 1 {
        return Err(Error::invalid(
            "changed ranges apply to exactly one device or file: give one path",
        ));
    }
    let sh = Shared {
        repo,
        chunker: repo.chunker(),
        data_chunker: repo.chunker().with_mode(opts.chunking),
        changed_ranges: opts.changed_ranges.as_deref(),
        excludes: Excludes::new(&opts.exclude)?,
        exclude: &opts.exclude,
        notices: Mutex::new(Vec::new()),
        progress,
        sink: Sink::new(repo, &progress.bytes_added).verify_blobs(opts.extra_verify),
        status: RunStatus::default(),
        used_packs: Mutex::new(HashSet::new()),
        zero_chunk: OnceLock::new(),
    };
    let queued_jobs = threads * 4;
    let (job_tx, job_rx) = bounded::<Job>(queued_jobs);
    // In flight at once: this many stream buffers waiting for a worker, one per worker, the one
    // the tree builder waits on and the one being read.
    let stream_parts = threads;
    let (ev_tx, ev_rx) = bounded::<Vec<Event>>(64);

    let mut counts = WalkCounts::default();
    let mut root_tree = None;
    let ahead = ScansAhead::new();
    std::thread::scope(|s| {
        let sh = &sh;
        let uploaders = sh.sink.start_uploaders(s, &sh.status);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let job_rx = job_rx.clone();
                s.spawn(move || {
                    if let Err(e) = work(sh, &job_rx) {
                        sh.status.fail(e);
                        for _ in &job_rx {}
                    }
                })
            })
            .collect();
        drop(job_rx);
        let builder = s.spawn(move || {
            let r = build_trees(sh, &ev_rx);
            if r.is_err() {
                for _ in &ev_rx {}
            }
            // Close the tree side of the upload queue even after an error.
            let f = sh.sink.tree.finish();
            r.and_then(|t| f.map(|()| t))
        });
        let (scan_tx, scan_rx) = bounded::<ScanJob>(SCAN_AHEAD_DIRS);
        let ahead = &ahead;
        for _ in 0..threads {
            let scan_rx = scan_rx.clone();
            s.spawn(move || scan::scanner(sh.repo, &scan_rx, ahead, sh.excludes.as_ref()));
        }
        drop(scan_rx);
        let walker = std::thread::Builder::new()
            .name("lifeboat-walk".into())
            .stack_size(256 << 20)
            .spawn_scoped(s, move || {
                if let Input::Stream { name, reader } = input {
                    let r = walk_stream(sh, name, reader, &job_tx, &ev_tx, stream_parts);
                    return (
                        r,
                        WalkCounts {
                            new: 1,
                            ..WalkCounts::default()
                        },
                    );
                }
                let mut w = Walker {
                    sh,
                    jobs: JobQueue {
                        tx: job_tx,
                        // Jobs open at once: queued, one in each worker, the walker's own.
                        batch: job_batch(queued_jobs + threads + 1),
                        small: Vec::new(),
                        small_bytes: 0,
                    },
                    scans: scan_tx,
                    ahead,
                    dirs_walked: 0,
                    entries_walked: 0,
                    events: ev_tx,
                    batch: Vec::with_capacity(EVENT_BATCH),
                    links: HashSet::new(),
                    counts: WalkCounts::default(),
                    path: Vec::new(),
                    top_dev: 0,
                };
                let r = w
                    .walk_tops(&tops, parent_root)
                    .and_then(|()| w.flush_events());
                (r, w.counts)
            })
            .expect("spawning the walker");
        let (walk_result, c) = walker.join().expect("walker panicked");
        counts = c;
        if let Err(e) = walk_result {
            sh.status.fail(e);
        }
        for w in workers {
            w.join().expect("worker panicked");
        }
        if let Err(e) = sh.sink.data.finish() {
            sh.status.fail(e);
        }
        match builder.join().expect("tree builder panicked") {
            Ok(t) => root_tree = Some(t),
            Err(e) => sh.status.fail(e),
        }
        for u in uploaders {
            if let Err(e) = u.join().expect("uploader panicked") {
                sh.status.fail(e);
            }
        }
        if !sh.status.failed()
            && let Err(e) = sh.sink.write_index()
        {
            sh.status.fail(e);
        }
    });
    let warnings = sh.status.finish()?;
    let notices = sh.notices.into_inner().expect("notice lock");
    let (tree, tc) = root_tree.expect("tree built when nothing failed");
    let mut snapshot = Snapshot {
        time,
        host,
        paths: path_strings,
        tags: opts.tags.clone(),
        parent: parent.map(|(id, _)| id),
        tree,
        summary: Summary {
            files: tc.files,
            dirs: tc.dirs,
            others: tc.others,
            files_new: counts.new,
            files_changed: counts.changed,
            files_unmodified: counts.unmodified,
            bytes_read: progress.bytes_read.load(Ordering::Relaxed),
            bytes_total: tc.bytes,
            bytes_added: 0,
            blobs_added: sh.sink.blobs_added(),
            warnings: warnings.len() as u64,
            duration_s: 0.0,
        },
        program: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        original: None,
    };
    // The snapshot's own size is counted in bytes_added by estimate: it is written after the summary.
    snapshot.summary.duration_s = start.elapsed().as_secs_f64();
    snapshot.summary.bytes_added = progress.bytes_added.load(Ordering::Relaxed);
    // Commit point: packs and index must be durable before the snapshot that needs them exists.
    repo.store().sync()?;
    let json = serde_json::to_vec(&snapshot).expect("snapshot serializes");
    let (id, n) = repo.save_object(ObjectKind::Snapshot, &json)?;
    repo.store().sync()?;
    snapshot.summary.bytes_added += n;
    progress.bytes_added.fetch_add(n, Ordering::Relaxed);
    // Object Lock: what this snapshot needs stays locked for the configured days from now. The
    // root tree's own blobs are checked too (they are often reused unchanged).
    let mut used = sh.used_packs.into_inner().expect("used packs");
    for id in &snapshot.tree {
        if let Some(l) = repo.index().get(id) {
            used.insert(l.pack.id);
        }
    }
    crate::retention::upkeep(repo, &used).map_err(|e| {
        e.context(format!(
            "snapshot {} is saved, but extending the Object Lock retention of the data it uses failed",
            id.short()
        ))
    })?;
    Ok(BackupOutcome {
        id,
        snapshot,
        warnings,
        notices,
    })
}

/// Parse changed-block hints: one `OFFSET LENGTH` pair of byte counts per line (blank lines and
/// `#` comments are skipped).
///
/// # Errors
/// `InvalidInput` naming the first bad line.
pub fn parse_changed_ranges(text: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::invalid(format!(
                "line {}: expected 'OFFSET LENGTH' in bytes, found {line:?}",
                i + 1
            ))
        };
        let mut f = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(off)), Some(Ok(len)), None) = (f.next(), f.next(), f.next()) else {
            return Err(bad());
        };
        off.checked_add(len).ok_or_else(bad)?;
        out.push((off, len));
    }
    Ok(out)
}

/// Absolute, lexically normalized paths, sorted by component, with duplicates and paths nested in
/// another one removed.
fn normalize_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::invalid("nothing to back up: give at least one path"));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        out.push(crate::snapshot::absolute_path(p)?);
    }
    out.sort_by(|a, b| a.components().cmp(b.components()));
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept)
}

/// The latest snapshot of the same host and paths. Damaged snapshots are skipped (with a log
/// line): they must not stop new backups.
fn find_parent(repo: &Repository, host: &str, paths: &[String]) -> Result<Option<(Id, Snapshot)>> {
    // The newest of this host's snapshots of these paths; one that cannot be read is skipped
    // with a log line, and a storage error fails the backup (it took it for "no parent" and
    // read every file again).
    Ok(repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.host == host && s.paths == paths))
}

#[derive(Default)]
struct WalkCounts {
    new: u64,
    changed: u64,
    unmodified: u64,
}

struct Walker<'s, 'a> {
    sh: &'s Shared<'a>,
    jobs: JobQueue,
    scans: Sender<ScanJob<'a>>,
    ahead: &'s ScansAhead,
    /// Directories walked so far, and their entries.
    dirs_walked: usize,
    entries_walked: usize,
    events: Sender<Vec<Event>>,
    batch: Vec<Event>,
    links: HashSet<(u64, u64)>,
    counts: WalkCounts,
    /// The absolute path of the directory being walked (empty for the root), for patterns and
    /// messages.
    path: Vec<u8>,
    /// The filesystem of the path given that is being walked.
    top_dev: u64,
}

/// The walker's side of the job queue: small files wait here until a batch of them is full.
///
/// Whatever waits for a file must not wait for the batch holding it: the batch goes out before
/// the tree builder hears of its files (`flush_events`), and before the walker waits for a
/// scanner or for descriptors, which the batched files hold open.
struct JobQueue {
    tx: Sender<Job>,
    /// Files a batch holds at most.
    batch: usize,
    small: Vec<SegJob>,
    small_bytes: u64,
}

/// Small files a job holds when `jobs` can be open at once: [`JOB_BATCH`], or fewer when their
/// files could take more than an eighth of the open-file limit. The walker also waits for
/// descriptors where it cannot send the batch it holds (listing a directory itself, reading the
/// parent snapshot's trees); under a low limit, files go one a job as they always did.
fn job_batch(jobs: usize) -> usize {
    (fsmeta::open_file_limit() / (8 * jobs)).clamp(1, JOB_BATCH)
}

impl JobQueue {
    fn send(&self, job: Job) -> Result<()> {
        self.tx
            .send(job)
            .map_err(|_| Error::new(crate::ErrorKind::Storage, "the workers stopped"))
    }

    /// Queue a file read in one segment; a full batch is sent.
    fn small_file(&mut self, job: SegJob, size: u64) -> Result<()> {
        self.small.push(job);
        self.small_bytes += size;
        if self.small.len() >= self.batch || self.small_bytes >= JOB_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Send the small files queued so far.
    fn flush(&mut self) -> Result<()> {
        if self.small.is_empty() {
            return Ok(());
        }
        self.small_bytes = 0;
        let batch = std::mem::replace(&mut self.small, Vec::with_capacity(self.batch));
        self.send(Job::Segs(batch))
    }
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

impl<'a> Walker<'_, 'a> {
    /// Queue an event for the tree builder. Events travel in batches: one channel operation (and
    /// at most one wake-up) per batch instead of per entry.
    fn emit(&mut self, e: Event) -> Result<()> {
        self.batch.push(e);
        if self.batch.len() >= EVENT_BATCH {
            self.flush_events()?;
        }
        Ok(())
    }

    fn flush_events(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // The tree builder waits for the files these events name.
        self.jobs.flush()?;
        let b = std::mem::replace(&mut self.batch, Vec::with_capacity(EVENT_BATCH));
        self.events
            .send(b)
            .map_err(|_| Error::new(crate::ErrorKind::Storage, "the tree builder stopped"))
    }

    fn walk_tops(&mut self, tops: &[PathBuf], parent_root: Option<Tree>) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        // Open virtual ancestors: (name, parent tree of that directory).
        let mut open: Vec<Vec<u8>> = Vec::new();
        let mut ptrees: Vec<Option<Tree>> = vec![parent_root];
        for top in tops {
            let comps: Vec<Vec<u8>> = top
                .components()
                .skip(1)
                .map(|c| c.as_os_str().as_bytes().to_vec())
                .collect();
            if comps.is_empty() {
                // Backing up "/" itself: its entries become the snapshot's root.
                let fd = fsmeta::open_dir_path(Path::new("/")).map_err(|e| Error::io("/", e))?;
                self.top_dev = rustix::fs::fstat(&fd)
                    .map_err(|e| Error::io("/", e))?
                    .st_dev;
                self.path.clear();
                let mut root = scan(self.sh.repo, fd, None, self.sh.excludes.as_ref(), b"");
                root.ptree = ptrees[0].take().map(ParentDir::whole);
                self.walk_dir(root)?;
                continue;
            }
            if let Some(x) = &self.sh.excludes {
                let mut p = Vec::new();
                let excluded = comps.iter().any(|c| {
                    p.push(b'/');
                    p.extend_from_slice(c);
                    x.matches(&p)
                });
                if excluded {
                    self.sh.notices.lock().expect("notice lock").push(format!(
                        "{}: excluded by a pattern: nothing of it is backed up",
                        top.display()
                    ));
                    continue;
                }
            }
            let common = open
                .iter()
                .zip(&comps)
                .take_while(|(a, b)| a == b)
                .count()
                .min(comps.len() - 1);
            while open.len() > common {
                open.pop();
                ptrees.pop();
                self.emit(Event::Exit)?;
            }
            let mut prefix = PathBuf::from("/");
            for c in &comps[..common] {
                prefix.push(os(c));
            }
            for c in &comps[common..comps.len() - 1] {
                let dirfd =
                    fsmeta::open_dir_path(&prefix).map_err(|e| Error::io(prefix.display(), e))?;
                let st = fsmeta::stat_at(dirfd.as_fd(), c)
                    .map_err(|e| Error::io(prefix.join(os(c)).display(), e))?;
                let mut node = fsmeta::node_from_stat(c, &st);
                node.xattrs = fsmeta::read_xattrs(dirfd.as_fd(), c).unwrap_or_default();
                let pt = child_tree(self.sh.repo, ptrees.last().and_then(Option::as_ref), c);
                self.emit(Event::Enter(node))?;
                open.push(c.clone());
                ptrees.push(pt);
                prefix.push(os(c));
            }
            let name = comps.last().expect("non-empty");
            let dirfd =
                fsmeta::open_dir_path(&prefix).map_err(|e| Error::io(prefix.display(), e))?;
            let pnode = child_node(ptrees.last().and_then(Option::as_ref), name);
            // A top-level path that cannot be read is fatal: the user asked for it by name.
            match fsmeta::stat_at(dirfd.as_fd(), name) {
                Ok(st) => {
                    self.top_dev = st.st_dev;
                    self.path.clear();
                    for c in &comps[..comps.len() - 1] {
                        self.path.push(b'/');
                        self.path.extend_from_slice(c);
                    }
                    self.entry(dirfd.as_fd(), name, None, pnode, true, None)?;
                }
                Err(e) => return Err(Error::io(top.display(), e)),
            }
        }
        while open.pop().is_some() {
            self.emit(Event::Exit)?;
        }
        Ok(())
    }

    fn walk_dir(&mut self, scanned: Scanned<'a>) -> Result<()> {
        let Scanned {
            fd,
            entries,
            mut ptree,
        } = scanned;
        let dir = fd.as_fd();
        let Listing { names, stats } = match entries {
            Ok(e) => e,
            Err(e) => {
                let shown = if self.path.is_empty() {
                    "/".into()
                } else {
                    String::from_utf8_lossy(&self.path)
                };
                self.sh.status.warn(format!("{shown}: cannot list: {e}"));
                return Ok(());
            }
        };
        self.dirs_walked += 1;
        self.entries_walked += names.len();
        let worth_it = self.dirs_walked < SCAN_AHEAD_WARMUP
            || self.entries_walked >= SCAN_AHEAD_MIN_AVG * self.dirs_walked;
        // Past the scanner's stats, the directory's own word (`d_type`) finds sub-directories.
        let subdirs: Vec<usize> = (0..names.len())
            .filter(|&i| match stats.get(i) {
                Some(Some(Ok(st))) => fsmeta::kind_of(st) == NodeKind::Dir,
                Some(_) => false,
                None => names.says_dir(i),
            })
            .collect();
        let names = Arc::new(names);
        let mut windows =
            Windows::start(Arc::clone(&names), stats, dir, ptree.as_mut(), &self.scans);
        let mut next_sub = 0;
        let mut ahead: VecDeque<(usize, Receiver<Scanned<'a>>)> = VecDeque::new();
        for i in 0..names.len() {
            if self.sh.status.failed() {
                return Ok(());
            }
            // First: at a window's start this receives its parent entries, which the scans
            // ahead below look into.
            if windows.next_window_at(i) {
                // A scanner may be waiting for descriptors the queued small files hold.
                self.jobs.flush()?;
            }
            let stat = windows.stat(i, dir, ptree.as_mut(), &self.scans);
            // Keep the sub-directories after this entry scanning, in order, while there is room;
            // a few per directory, so a wide one leaves room for the levels below it.
            while worth_it
                && ahead.len() < SCAN_AHEAD_PER_DIR
                && self.ahead.room()
                && let Some(&j) = subdirs.get(next_sub)
            {
                if j < i {
                    next_sub += 1;
                    continue;
                }
                let subtree = match ptree.as_mut().map(|p| p.subtree_ahead(names.name(j))) {
                    None => None,
                    Some(Ahead::Known(subtree)) => subtree,
                    // Too far ahead of the walk to know: later.
                    Some(Ahead::NotYet) => break,
                };
                next_sub += 1;
                if let Some(rx) = self.scan_ahead(dir, names.name(j), subtree) {
                    ahead.push_back((j, rx));
                }
            }
            let pre_scan = match ahead.front() {
                Some((j, _)) if *j == i => ahead.pop_front().map(|(_, rx)| rx),
                _ => None,
            };
            let name = names.name(i);
            let pnode = ptree.as_mut().and_then(|p| p.take(name));
            self.entry(dir, name, stat, pnode.as_ref(), false, pre_scan)?;
        }
        // Every scan sent ahead was for a later entry, and each entry takes its own.
        debug_assert!(ahead.is_empty(), "a scan ahead was never received");
        Ok(())
    }

    /// Hand sub-directory `name` of `dir` to a scanner; `None` (the walker then scans it itself
    /// and reports any error) when it cannot be opened or the scanners stopped.
    fn scan_ahead(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        subtree: Option<Vec<Id>>,
    ) -> Option<Receiver<Scanned<'a>>> {
        let fd = match fsmeta::open_dir_at(dir, name) {
            Ok(fd) => fd,
            Err(e) => {
                if fsmeta::out_of_descriptors(&e) {
                    self.ahead.out_of_descriptors();
                }
                return None;
            }
        };
        let (reply, rx) = bounded(1);
        self.ahead.dirs.fetch_add(1, Ordering::Relaxed);
        let path = self.sh.excludes.is_some().then(|| self.child_path(name));
        if self
            .scans
            .send(ScanJob::Dir {
                fd,
                subtree,
                path,
                reply,
            })
            .is_err()
        {
            self.ahead.taken(None);
            return None;
        }
        Some(rx)
    }

    /// Visit one entry of `dir`: `stat` is its stat when a scanner already took it, and
    /// `pre_scan` the scan of its contents when it is a directory a scanner took.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        stat: Option<std::io::Result<rustix::fs::Stat>>,
        pnode: Option<&Node>,
        top: bool,
        pre_scan: Option<Receiver<Scanned<'a>>>,
    ) -> Result<()> {
        // Received whatever the entry turns out to be (it may have stopped being a directory),
        // so the room its scan took is given back.
        let scanned = pre_scan.and_then(|rx| {
            if rx.is_empty() {
                // The scanner may be waiting for descriptors the queued small files hold.
                let _ = self.jobs.flush();
            }
            let s = rx.recv().ok();
            self.ahead.taken(s.as_ref());
            s
        });
        let warn_or_fail = |sh: &Shared<'_>, what: String| -> Result<()> {
            if top {
                Err(Error::new(crate::ErrorKind::Io, what))
            } else {
                sh.status.warn(what);
                Ok(())
            }
        };
        let mut st = match stat.unwrap_or_else(|| fsmeta::stat_at(dir, name)) {
            Ok(s) => s,
            Err(e) => return warn_or_fail(self.sh, format!("{}: {e} (skipped)", self.shown(name))),
        };
        // A volume named by a symlink (/dev/mapper/x, /dev/disk/by-id/...) is the device it names.
        if top
            && fsmeta::kind_of(&st) == NodeKind::Symlink
            && let Ok(t) = rustix::fs::statat(dir, os(name), rustix::fs::AtFlags::empty())
            && fsmeta::kind_of(&t) == NodeKind::Blockdev
        {
            st = t;
        }
        let mut node = fsmeta::node_from_stat(name, &st);
        let has_data = node.kind() == NodeKind::File || (top && node.kind() == NodeKind::Blockdev);
        // Another filesystem mounted below a path given: its mount point stays, empty.
        let other_fs = self.sh.exclude.one_file_system && !top && st.st_dev != self.top_dev;
        if other_fs && node.kind() != NodeKind::Dir {
            return Ok(());
        }
        if node.kind() == NodeKind::File
            && let Some(limit) = self.sh.exclude.larger_than
            && node.size > limit
        {
            if top {
                self.sh.notices.lock().expect("notice lock").push(format!(
                    "{}: larger than --exclude-larger-than, not backed up",
                    self.shown(name)
                ));
            }
            return Ok(());
        }
        // Setting or removing an extended attribute changes ctime: with the same inode and ctime,
        // the parent's attributes are still current and need no syscalls.
        let mut xattrs_read = false;
        if let Some(p) = pnode.filter(|p| {
            p.kind() == node.kind()
                && p.ino == node.ino
                && p.ctime == node.ctime
                && p.ctime_ns == node.ctime_ns
        }) {
            node.xattrs.clone_from(&p.xattrs);
            xattrs_read = true;
        } else if !has_data {
            self.set_xattrs(&mut node, fsmeta::read_xattrs(dir, name));
            xattrs_read = true;
        }
        match node.kind() {
            NodeKind::Dir if other_fs => {
                self.emit(Event::Enter(node))?;
                self.emit(Event::Exit)?;
            }
            NodeKind::Dir => {
                let path = self.child_path(name);
                let scanned = match scanned {
                    Some(s) => s,
                    None => match self.open_waiting(|| fsmeta::open_dir_at(dir, name)) {
                        Ok(fd) => {
                            let subtree = pnode
                                .filter(|p| p.kind() == NodeKind::Dir)
                                .map(|p| p.subtree.as_slice());
                            scan(self.sh.repo, fd, subtree, self.sh.excludes.as_ref(), &path)
                        }
                        Err(e) => {
                            return warn_or_fail(
                                self.sh,
                                format!("{}: {e} (directory skipped)", self.shown(name)),
                            );
                        }
                    },
                };
                let outer = std::mem::replace(&mut self.path, path);
                self.emit(Event::Enter(node))?;
                self.walk_dir(scanned)?;
                self.emit(Event::Exit)?;
                self.path = outer;
            }
            NodeKind::Symlink => match fsmeta::read_link_at(dir, name) {
                Ok(t) => {
                    node.target = t;
                    self.emit(Event::Entry {
                        node,
                        source: Source::Ready,
                        link: None,
                    })?;
                }
                Err(e) => {
                    return warn_or_fail(self.sh, format!("{}: {e} (skipped)", self.shown(name)));
                }
            },
            // A device given by path is a volume: its contents are backed up.
            _ if has_data => self.file(dir, node, pnode, top, xattrs_read)?,
            _ => self.emit(Event::Entry {
                node,
                source: Source::Ready,
                link: None,
            })?,
        }
        Ok(())
    }

    /// `open()`, waiting while the process is out of file descriptors: files queued to the
    /// workers hold some and give them back as they are read, and scanning ahead is halved once
    /// for each open that waits (its directories wait for the walker). After
    /// [`fsmeta::DESCRIPTOR_WAIT`] the shortage is taken as lasting (a walk deeper than the
    /// limit), and the error stands.
    fn open_waiting(
        &mut self,
        open: impl Fn() -> std::io::Result<OwnedFd>,
    ) -> std::io::Result<OwnedFd> {
        let mut first = true;
        let (ahead, jobs) = (self.ahead, &mut self.jobs);
        fsmeta::waiting_for_descriptors(
            || {
                if std::mem::take(&mut first) {
                    ahead.out_of_descriptors();
                    // The small files queued hold descriptors too. A send error means the
                    // workers stopped: the backup has failed, and says why elsewhere.
                    let _ = jobs.flush();
                }
            },
            open,
        )
    }

    /// Fill `node.xattrs` with what was `read`; a failure is a warning.
    fn set_xattrs(&self, node: &mut Node, read: std::io::Result<Vec<Xattr>>) {
        match read {
            Ok(x) => node.xattrs = x,
            Err(e) => self.sh.status.warn(format!(
                "{}: cannot read extended attributes: {e}",
                self.shown(&node.name)
            )),
        }
    }

    /// The absolute path of entry `name` of the directory being walked.
    fn child_path(&self, name: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.path.len() + 1 + name.len());
        p.extend_from_slice(&self.path);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }

    /// [`Self::child_path`] for messages.
    fn shown(&self, name: &[u8]) -> String {
        String::from_utf8_lossy(&self.child_path(name)).into_owned()
    }

    /// A file, or the device named at the top: its extended attributes are read from the opened
    /// file unless `xattrs_read`.
    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        mut node: Node,
        pnode: Option<&Node>,
        top: bool,
        xattrs_read: bool,
    ) -> Result<()> {
        let link = (node.nlink > 1).then_some((node.dev, node.ino));
        if let Some(k) = link
            && self.links.contains(&k)
        {
            if !xattrs_read {
                let read = fsmeta::read_xattrs(dir, &node.name);
                self.set_xattrs(&mut node, read);
            }
            return self.emit(Event::Entry {
                node,
                source: Source::SameAs(k),
                link,
            });
        }
        if let Some(p) = pnode.filter(|p| unchanged(p, &node))
            && p.content.iter().all(|id| self.sh.repo.index().contains(id))
        {
            debug_assert!(xattrs_read, "an unchanged file has its parent's attributes");
            node.content.clone_from(&p.content);
            node.holes.clone_from(&p.holes);
            node.allocated.clone_from(&p.allocated);
            self.counts.unmodified += 1;
            self.sh.progress.files.fetch_add(1, Ordering::Relaxed);
            if let Some(k) = link {
                self.links.insert(k);
            }
            return self.emit(Event::Entry {
                node,
                source: Source::Ready,
                link,
            });
        }
        let device = node.kind() == NodeKind::Blockdev;
        let shown = &self.shown(&node.name);
        let opened = self.open_waiting(|| {
            if device {
                fsmeta::open_device_at(dir, &node.name)
            } else {
                fsmeta::open_file_at(dir, &node.name)
            }
        });
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if top => return Err(Error::io(shown, e)),
            Err(e) => {
                self.sh.status.warn(format!("{shown}: {e} (skipped)"));
                return Ok(());
            }
        };
        // The entry may have been replaced between stat and open.
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(shown, e))?;
        if device {
            if fsmeta::kind_of(&st) != NodeKind::Blockdev || st.st_rdev as u64 != node.rdev {
                return Err(Error::io(
                    shown,
                    std::io::Error::other("replaced while being opened"),
                ));
            }
            node.size = rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
                .map_err(|e| Error::io(format!("{shown}: reading the device size"), e))?;
            node.image = true;
        } else if st.st_ino as u64 != node.ino || fsmeta::kind_of(&st) != NodeKind::File {
            self.sh
                .status
                .warn(format!("{shown}: replaced during backup (skipped)"));
            return Ok(());
        }
        if !xattrs_read {
            self.set_xattrs(&mut node, fsmeta::read_xattrs_fd(fd.as_fd()));
        }
        if pnode.is_some() {
            self.counts.changed += 1;
        } else {
            self.counts.new += 1;
        }
        if let Some(k) = link {
            self.links.insert(k);
        }
        let sparse = !device && (st.st_blocks as u64).saturating_mul(512) < node.size;
        let regions = match data_regions(fd.as_fd(), node.size, sparse) {
            Ok(r) => r,
            Err(e) if device => return Err(Error::io(shown, e)),
            Err(e) => {
                self.sh.status.warn(format!("{shown}: {e} (skipped)"));
                return Ok(());
            }
        };
        let written = if !device && !sparse {
            Written::All
        } else if device || regions == [(0, node.size)] {
            // A file with holes that its filesystem shows as all data (`SEEK_DATA` not supported,
            // or the generic one): where its holes are is not known, so its zeros stay holes.
            Written::Nothing
        } else {
            Written::In(regions.clone().into())
        };
        if top && let Some(ranges) = self.sh.changed_ranges {
            // A repaired parent's lost ranges are holes: they must be read, not taken as zeros.
            let layout = pnode
                .filter(|p| p.kind() == node.kind() && p.has_data() && !p.repaired)
                .and_then(|p| parent_layout(self.sh.repo, p));
            if let Some(parent) = layout {
                let file = Arc::new(OpenFile {
                    fd,
                    name: shown.to_owned(),
                    device,
                    segs: Vec::new(),
                    seams: Vec::new(),
                });
                return self.delta(node, &file, parent, ranges, link, written);
            }
            let why = if pnode.is_some_and(|p| p.repaired) {
                "its copy in the parent snapshot was repaired (ranges of it were lost)"
            } else {
                "no parent snapshot of it to apply changed ranges to"
            };
            self.sh
                .notices
                .lock()
                .expect("notice lock")
                .push(format!("{shown}: {why}: read in full"));
        }
        let mut segs = Vec::new();
        for &(off, len) in &regions {
            let end = off + len;
            let mut at = off;
            while at < end {
                segs.push(Seg {
                    at,
                    region_end: end,
                    region_start: at == off,
                });
                at = ((at / SEGMENT + 1) * SEGMENT).min(end);
            }
        }
        let file = Arc::new(OpenFile {
            fd,
            name: shown.to_owned(),
            device,
            seams: segs.iter().map(|_| OnceLock::new()).collect(),
            segs,
        });
        let mut parts = Vec::with_capacity(file.segs.len());
        if file.segs.len() == 1 && node.size < JOB_BATCH_BYTES {
            let (tx, rx) = bounded(1);
            let job = SegJob {
                file,
                seg: 0,
                reply: tx,
            };
            self.jobs.small_file(job, node.size)?;
            parts.push(rx);
        } else {
            for seg in 0..file.segs.len() {
                let (tx, rx) = bounded(1);
                self.jobs.send(Job::Segs(vec![SegJob {
                    file: Arc::clone(&file),
                    seg,
                    reply: tx,
                }]))?;
                parts.push(rx);
            }
        }
        self.emit(Event::Entry {
            node,
            source: Source::Pending { parts, written },
            link,
        })
    }

    /// Queue the changed windows of `file` against its parent's layout, in groups far enough
    /// apart to be read in parallel.
    fn delta(
        &mut self,
        node: Node,
        file: &Arc<OpenFile>,
        parent: Vec<Piece>,
        ranges: &[(u64, u64)],
        link: Option<(u64, u64)>,
        written: Written,
    ) -> Result<()> {
        let psize = parent.last().map_or(0, |p| p.off + p.len);
        let (windows, changes) = delta_windows(&parent, psize, node.size, ranges);
        let changes: Arc<[(u64, u64)]> = changes.into();
        let parent: Arc<[Piece]> = parent.into();
        let mut groups: Vec<Vec<(u64, u64)>> = Vec::new();
        for w in windows {
            match groups.last_mut() {
                Some(g) if w.0 < g.last().expect("non-empty group").1 + GROUP_GAP => g.push(w),
                _ => groups.push(vec![w]),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (i, windows) in groups.iter().enumerate() {
            let limit = groups.get(i + 1).map_or(node.size, |g| g[0].0);
            let (tx, rx) = bounded(1);
            self.jobs.send(Job::Delta {
                file: Arc::clone(file),
                parent: Arc::clone(&parent),
                windows: windows.clone(),
                changes: Arc::clone(&changes),
                limit,
                reply: tx,
            })?;
            parts.push(rx);
        }
        let size = node.size;
        self.emit(Event::Entry {
            node,
            source: Source::Delta {
                parent,
                size,
                parts,
                written,
            },
            link,
        })
    }
}

/// Changed windows farther apart than this are read by separate jobs (in parallel); closer ones
/// are read in one pass, so a window's resynchronisation never runs into the next one's changes.
const GROUP_GAP: u64 = 64 << 20;

/// After this many chunks past the end of a changed range without landing on a parent boundary,
/// the next parent boundary becomes a cut: reading stops a few chunks after each change. On 2000
/// in-place changes (4 KiB to 1 MiB) in random data (`benches` `resync`), the chain met the
/// parent's cuts within 3 chunks in 97.4% of them and within 7 in 99.85%: at 4, one window in 40
/// was cut where a full read does not cut (and a later full backup stored its chunks again); at
/// 8, about one in 700 is, and a rare long window still stops after about 8 MiB.
const RESYNC_CHUNKS: usize = 8;

/// Bytes per read while re-chunking a changed window.
const DELTA_STEP: usize = 256 << 10;

/// The parent's bytes as pieces tiling `[0, size)`: its blobs (lengths from the index) and its
/// holes. `None` when a blob is no longer indexed or the node is inconsistent.
fn parent_layout(repo: &Repository, p: &Node) -> Option<Vec<Piece>> {
    let blobs = crate::restore::plan(repo, p).ok()?;
    let mut out = Vec::with_capacity(blobs.len() + p.holes.len());
    let mut at = 0;
    for (id, off, len) in blobs {
        if off > at {
            out.push(Piece {
                off: at,
                len: off - at,
                blob: None,
            });
        }
        out.push(Piece {
            off,
            len,
            blob: Some(id),
        });
        at = off + len;
    }
    if p.size > at {
        out.push(Piece {
            off: at,
            len: p.size - at,
            blob: None,
        });
    }
    Some(out)
}

/// Byte ranges `(start, end)`, sorted.
type Ranges = Vec<(u64, u64)>;

/// The windows to re-read: each changed range, clipped to the new size, widened at the start to
/// the parent piece it begins in, merged where they touch. A size change re-reads the old last
/// chunk through the new end. Also the changed ranges themselves (that last chunk and the bytes
/// past the old end among them), clipped, sorted and merged.
fn delta_windows(
    parent: &[Piece],
    psize: u64,
    size: u64,
    ranges: &[(u64, u64)],
) -> (Ranges, Ranges) {
    let mut r: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(o, l)| (o.min(size), o.saturating_add(l).min(size)))
        .filter(|(a, b)| a < b)
        .collect();
    if size != psize && size > 0 {
        r.push((psize.min(size).saturating_sub(1), size));
    }
    r.sort_unstable();
    let mut out = Ranges::new();
    let mut changes = Ranges::new();
    for (a, b) in r {
        let i = parent.partition_point(|p| p.off + p.len <= a);
        let s = parent.get(i).map_or(a, |p| p.off.min(a));
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(b),
            _ => out.push((s, b)),
        }
        match changes.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => changes.push((a, b)),
        }
    }
    (out, changes)
}

/// Whether file `n` can take parent `p`'s content without being read: the same metadata, and
/// `p` not cut short by `repair snapshots` (its lost ranges read as zeros; the source still has
/// them).
fn unchanged(p: &Node, n: &Node) -> bool {
    p.kind() == NodeKind::File
        && !p.repaired
        && p.size == n.size
        && p.mtime == n.mtime
        && p.mtime_ns == n.mtime_ns
        && p.ctime == n.ctime
        && p.ctime_ns == n.ctime_ns
        && p.ino == n.ino
        && p.mode == n.mode
}

/// The entry `name` of a (parent snapshot's) tree.
fn child_node<'t>(t: Option<&'t Tree>, name: &[u8]) -> Option<&'t Node> {
    let t = t?;
    let i = t
        .nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()?;
    Some(&t.nodes[i])
}

fn child_tree(repo: &Repository, t: Option<&Tree>, name: &[u8]) -> Option<Tree> {
    child_node(t, name)
        .filter(|n| n.kind() == NodeKind::Dir)
        .and_then(|n| repo.read_tree(&n.subtree).ok())
}

fn work(sh: &Shared<'_>, jobs: &Receiver<Job>) -> Result<()> {
    // Every path that returns Ok goes through `finish`, which stores the blobs held back.
    let mut sink = BlobSink::new(&sh.sink, &sh.sink.data)?.staging();
    let max = sh.data_chunker.max_size();
    let mut buf = vec![0u8; 2 * max];
    let mut ends = Vec::new();
    // A source error skips a file with a warning, but fails the backup for a device: a volume
    // snapshot with a part missing is worse than none.
    let source_error = |f: &OpenFile, e: std::io::Error| -> Result<String> {
        if f.device {
            Err(Error::new(
                crate::ErrorKind::Io,
                format!("{}: reading the device failed: {e}", f.name),
            ))
        } else {
            Ok(format!("{}: {e} (skipped)", f.name))
        }
    };
    for job in jobs {
        if sh.status.failed() {
            continue;
        }
        match job {
            Job::Segs(segs) => {
                for SegJob { file, seg, reply } in segs {
                    let r = match read_segment(sh, &mut sink, &file, seg, &mut buf, &mut ends) {
                        Ok(c) => Ok(c),
                        Err(ReadError::Source(e)) => Err(source_error(&file, e)?),
                        Err(ReadError::Fatal(e)) => return Err(e),
                    };
                    if seg + 1 == file.segs.len() {
                        sh.progress.files.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(r);
                }
            }
            Job::Chunks {
                data,
                ends,
                base,
                reply,
            } => {
                let mut pieces = Vec::with_capacity(ends.len());
                let mut s = 0;
                for e in ends {
                    pieces.push(chunk_piece(&mut sink, &data[s..e], base + s as u64)?);
                    s = e;
                }
                let _ = reply.send(Ok(SegContent {
                    pieces,
                    end: base + s as u64,
                    short: false,
                }));
            }
            Job::Delta {
                file,
                parent,
                windows,
                changes,
                limit,
                reply,
            } => {
                let r = read_delta(
                    sh, &mut sink, &file, &parent, &windows, &changes, limit, &mut buf, &mut ends,
                );
                let r = match r {
                    Ok(c) => Ok(c),
                    Err(ReadError::Source(e)) => Err(source_error(&file, e)?),
                    Err(ReadError::Fatal(e)) => return Err(e),
                };
                let _ = reply.send(r);
            }
        }
    }
    sink.finish()
}

/// Bytes a stream is read in at a time (at least two of the largest chunk): its chunks are cut
/// as it is read, and each such piece goes to a worker whole.
const STREAM_PIECE: usize = 8 << 20;

/// The walker of a stream: one file `name`, read from `reader` and cut here, its pieces stored by
/// the workers (at most `in_flight` waiting for the tree builder). A read error ends the stream
/// with that error, which fails the backup.
fn walk_stream(
    sh: &Shared<'_>,
    name: &str,
    reader: &mut (dyn std::io::Read + Send),
    jobs: &Sender<Job>,
    events: &Sender<Vec<Event>>,
    in_flight: usize,
) -> Result<()> {
    use std::io::Read;
    let now = jiff::Timestamp::now();
    let node = Node {
        name: name.as_bytes().to_vec(),
        kind: Some(NodeKind::File),
        mode: 0o644,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        mtime: now.as_second(),
        mtime_ns: now.subsec_nanosecond() as u32,
        ctime: now.as_second(),
        ctime_ns: now.subsec_nanosecond() as u32,
        nlink: 1,
        ..Node::default()
    };
    let (part_tx, parts) = bounded(in_flight);
    let stopped = || Error::new(crate::ErrorKind::Storage, "the tree builder stopped");
    events
        .send(vec![Event::Entry {
            node,
            source: Source::Stream { parts },
            link: None,
        }])
        .map_err(|_| stopped())?;
    let piece = STREAM_PIECE.max(2 * sh.data_chunker.max_size());
    let mut carry: Vec<u8> = Vec::new();
    let mut base = 0u64;
    loop {
        if sh.status.failed() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(piece);
        data.append(&mut carry);
        let want = (piece - data.len()) as u64;
        let got = match (&mut *reader).take(want).read_to_end(&mut data) {
            Ok(n) => n as u64,
            Err(e) => {
                let (tx, rx) = bounded(1);
                let _ = tx.send(Err(format!("{name}: reading the stream failed: {e}")));
                return part_tx.send(rx).map_err(|_| stopped());
            }
        };
        sh.progress.bytes_read.fetch_add(got, Ordering::Relaxed);
        let eof = got < want;
        let mut ends = Vec::new();
        let used = sh.data_chunker.cut(&data, eof, &mut ends);
        carry.extend_from_slice(&data[used..]);
        data.truncate(used);
        if !ends.is_empty() {
            let (reply, rx) = bounded(1);
            jobs.send(Job::Chunks {
                data,
                ends,
                base,
                reply,
            })
            .map_err(|_| stopped())?;
            part_tx.send(rx).map_err(|_| stopped())?;
        }
        base += used as u64;
        if eof {
            return Ok(());
        }
    }
}

/// One chunk as a piece: all-zero chunks become zero ranges and are never stored.
fn chunk_piece(sink: &mut BlobSink, data: &[u8], off: u64) -> Result<Piece> {
    let len = data.len() as u64;
    if crate::chunker::is_zero(data) {
        return Ok(Piece {
            off,
            len,
            blob: None,
        });
    }
    Ok(Piece {
        off,
        len,
        blob: Some(sink.put(data)?),
    })
}

enum ReadError {
    /// The source could not be read: a warning, the file is skipped.
    Source(std::io::Error),
    /// The repository side failed: the backup fails.
    Fatal(Error),
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Fatal(e)
    }
}

fn data_regions(fd: BorrowedFd<'_>, size: u64, sparse: bool) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    if !sparse {
        return Ok(if size > 0 {
            vec![(0, size)]
        } else {
            Vec::new()
        });
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let d = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // Filesystems without SEEK_DATA: the whole file is data.
            Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if d >= size {
            break;
        }
        let h = rustix::fs::seek(fd, SeekFrom::Hole(d))?.min(size);
        out.push((d, h - d));
        pos = h;
    }
    Ok(out)
}

/// Read into `buf` from `pos` until it is full or `end` is reached; returns the bytes read (fewer
/// only at end of file).
fn fill(
    sh: &Shared<'_>,
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    pos: u64,
    end: u64,
) -> std::io::Result<usize> {
    let mut filled = 0usize;
    while filled < buf.len() && pos + (filled as u64) < end {
        let want = (buf.len() - filled).min((end - pos) as usize - filled);
        let n = rustix::io::pread(fd, &mut buf[filled..filled + want], pos + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
        sh.progress
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(filled)
}

/// Where segment `i` really starts: its nominal start for the first segment of a region, else the
/// first cut after it (computed by whichever neighbour gets there first).
fn seam(sh: &Shared<'_>, f: &OpenFile, i: usize, buf: &mut [u8]) -> Seam {
    let seg = &f.segs[i];
    if seg.region_start {
        return Seam {
            at: seg.at,
            zeros: false,
        };
    }
    *f.seams[i].get_or_init(|| {
        match seam_at(sh, f.fd.as_fd(), seg.at, seg.region_end, buf, &|_, to| {
            (false, to)
        }) {
            Ok(at) => Seam {
                at,
                zeros: crate::chunker::is_zero(&buf[..(at - seg.at) as usize]),
            },
            // The segment's own read reports the error.
            Err(_) => Seam {
                at: seg.at,
                zeros: false,
            },
        }
    })
}

/// Where a segment nominally starting at `at` (inside a region ending at `region_end`) really
/// starts: at the first cut of the bytes from `at` on. `buf` holds at least one chunk, and
/// starts with the bytes from `at` to the cut on return. `span` tells the bytes known to be zeros
/// (see `zero_span`), which are not read.
fn seam_at(
    sh: &Shared<'_>,
    fd: BorrowedFd<'_>,
    at: u64,
    region_end: u64,
    buf: &mut [u8],
    span: &dyn Fn(u64, u64) -> (bool, u64),
) -> std::io::Result<u64> {
    if sh.data_chunker.is_fixed() {
        return Ok(at);
    }
    // Most cuts fall within twice the average size: read that much first, and the rest up to the
    // largest chunk only when the cut is not in it.
    let max = sh.data_chunker.max_size().min(buf.len());
    let mut n = 0;
    for want in [(2 * sh.data_chunker.avg_size()).min(max), max] {
        if want <= n {
            continue;
        }
        n += fill_known(sh, fd, &mut buf[n..want], at + n as u64, region_end, span)?;
        let eof = at + n as u64 >= region_end || n < want;
        if let Some(c) = sh.data_chunker.first_cut(&buf[..n], eof) {
            return Ok(at + c as u64);
        }
        if eof {
            break;
        }
    }
    Ok(at + n as u64)
}

fn read_segment(
    sh: &Shared<'_>,
    sink: &mut BlobSink,
    f: &OpenFile,
    seg: usize,
    buf: &mut [u8],
    ends: &mut Vec<usize>,
) -> std::result::Result<SegContent, ReadError> {
    let fd = f.fd.as_fd();
    let start = seam(sh, f, seg, buf).at;
    // Bytes from `read_end` to `end` are known zeros (see `Seam::zeros`).
    let (end, read_end) = match f.segs.get(seg + 1) {
        Some(next) if !next.region_start => match seam(sh, f, seg + 1, buf) {
            Seam { at, zeros: true } => (at, next.at),
            Seam { at, zeros: false } => (at, at),
        },
        _ => (f.segs[seg].region_end, f.segs[seg].region_end),
    };
    let mut pieces = Vec::new();
    // `buf[..filled]` holds the bytes from `base` on.
    let mut base = start;
    let mut filled = 0usize;
    let mut short = false;
    loop {
        let at = base + filled as u64;
        let mut n = fill(sh, fd, &mut buf[filled..], at, read_end).map_err(ReadError::Source)?;
        if at + n as u64 >= read_end {
            let zeros = (buf.len() - filled - n).min((end - (at + n as u64)) as usize);
            buf[filled + n..filled + n + zeros].fill(0);
            n += zeros;
        }
        short |= n < buf.len() - filled && at + (n as u64) < end;
        filled += n;
        let last = base + filled as u64 >= end || short;
        ends.clear();
        let used = sh.data_chunker.cut(&buf[..filled], last, ends);
        let mut s = 0;
        for &e in ends.iter() {
            pieces.push(chunk_piece(sink, &buf[s..e], base + s as u64)?);
            s = e;
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
        base += used as u64;
        if last {
            break;
        }
    }
    if short && f.device {
        return Err(ReadError::Source(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the device ended early (removed or shrunk while being read)",
        )));
    }
    Ok(SegContent {
        pieces,
        end: base,
        short,
    })
}

/// Re-chunk the changed windows of one job. Each window starts at a parent boundary and is read
/// until, past its changed end, a cut lands on a parent boundary again (after that the content
/// and so the chunks are the parent's), or lands inside a parent zero range (the rest of it is
/// zeros still), or `RESYNC_CHUNKS` chunks went by (the next parent boundary is cut).
#[allow(clippy::too_many_arguments)]
fn read_delta(
    sh: &Shared<'_>,
    sink: &mut BlobSink,
    f: &OpenFile,
    parent: &[Piece],
    windows: &[(u64, u64)],
    changes: &[(u64, u64)],
    limit: u64,
    buf: &mut [u8],
    ends: &mut Vec<usize>,
) -> std::result::Result<Vec<Replaced>, ReadError> {
    let fd = f.fd.as_fd();
    let is_boundary = |x: u64| {
        x == limit
            || parent.binary_search_by_key(&x, |p| p.off).is_ok()
            || parent.last().is_some_and(|p| p.off + p.len == x)
    };
    // Whether the seam `x` (a segment's known end) of a window whose changes end at `b` lies past
    // them, before the next window (at `next_start`), inside one of the parent's zero runs.
    // Chunking restarts at a seam in a full read of either state, and the bytes that place it are
    // unchanged, so the parent's chunks go on from it: the window ends there. The zero run, one
    // piece in the parent, hides that cut; a chain whose zero chunks were out of phase with the
    // parent's used to read a zero chunk at every seam to the run's end.
    let seam_in_zeros = |x: u64, b: u64, next_start: u64| {
        let i = parent.partition_point(|p| p.off + p.len <= x);
        x / SEGMENT * SEGMENT >= b
            && x <= next_start
            && parent.get(i).is_some_and(|z| z.blob.is_none() && z.off < x)
    };
    let next_boundary = |lo: u64| -> Option<u64> {
        let j = parent.partition_point(|p| p.off < lo);
        parent
            .get(j)
            .map(|p| p.off)
            .or_else(|| parent.last().map(|p| p.off + p.len).filter(|e| *e >= lo))
    };
    // A full read restarts chunking at each segment seam; so does this, so that the chunks are
    // the ones a full read would find and the next full backup deduplicates against them.
    // Seams are found lazily: reading stops at the nominal boundary first, and its seam is
    // computed only if the chain gets there.
    let mut seam_buf = Vec::new();
    let mut seams: HashMap<u64, u64> = HashMap::new();
    let max = sh.data_chunker.max_size() as u64;
    // The window being read, `(b, next_start)`: a seam inside zeros past its changes is found
    // without reading them.
    let window = std::cell::Cell::new((0u64, 0u64));
    let mut seam_of = |nominal: u64| -> std::io::Result<u64> {
        if let Some(t) = seams.get(&nominal) {
            return Ok(*t);
        }
        seam_buf.resize(max as usize, 0);
        let (b, next_start) = window.get();
        let span = |x, to| zero_span(parent, changes, x, to, b, next_start);
        let t = seam_at(sh, fd, nominal, limit, &mut seam_buf, &span)?.min(limit);
        seams.insert(nominal, t);
        Ok(t)
    };
    // The end of the chain through `x`: (where it stops, whether that is final or a nominal
    // boundary whose seam is still to be found).
    let chain_end = |x: u64,
                     seam_of: &mut dyn FnMut(u64) -> std::io::Result<u64>|
     -> std::io::Result<(u64, bool)> {
        let k = x / SEGMENT;
        if k > 0 && k * SEGMENT + max > x {
            let t = seam_of(k * SEGMENT)?;
            if t > x {
                return Ok((t, true));
            }
        }
        let next = (k + 1) * SEGMENT;
        Ok(if next < limit {
            (next, false)
        } else {
            (limit, true)
        })
    };
    let mut out = Vec::new();
    let mut done = 0u64;
    for (wi, &(s, b)) in windows.iter().enumerate() {
        if b <= done {
            continue;
        }
        // The next window's changes must not be covered by a zero shortcut.
        let next_start = windows.get(wi + 1).map_or(limit, |w| w.0);
        window.set((b, next_start));
        let start = s.max(done);
        let mut pieces = Vec::new();
        let mut base = start;
        let mut filled = 0usize;
        let mut past = 0usize;
        // Bytes from `base` known to hold no cut (see `Chunker::resume_cut`).
        let mut clean = 0usize;
        let (mut stop, mut known) = chain_end(base, &mut seam_of).map_err(ReadError::Source)?;
        let end = 'read: loop {
            if filled == 0 && base == stop {
                (stop, known) = chain_end(base, &mut seam_of).map_err(ReadError::Source)?;
            } else if !known && base + filled as u64 >= stop {
                stop = seam_of(stop).map_err(ReadError::Source)?;
                known = true;
            }
            let at = base + filled as u64;
            // Small reads: reading stops soon after the chain lands on the parent's again.
            let want = (buf.len() - filled).min(DELTA_STEP);
            let n = fill_known(
                sh,
                fd,
                &mut buf[filled..filled + want],
                at,
                stop,
                &|x, to| zero_span(parent, changes, x, to, b, next_start),
            )
            .map_err(ReadError::Source)?;
            if n < want && at + (n as u64) < stop {
                return Err(ReadError::Source(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "ended early (removed or shrunk while being read)",
                )));
            }
            filled += n;
            let last = known && base + filled as u64 >= stop;
            // Each chunk is cut as soon as its cut is final (not once `max` bytes follow it), and
            // the bytes already found to hold no cut are not hashed again.
            ends.clear();
            let mut used = 0;
            loop {
                match sh.data_chunker.resume_cut(&buf[used..filled], last, clean) {
                    FirstCut::At(c) => {
                        used += c;
                        ends.push(used);
                        clean = 0;
                    }
                    FirstCut::More { clean: k } => {
                        clean = k;
                        break;
                    }
                }
            }
            let mut from = 0usize;
            let mut jump = None;
            for &e in ends.iter() {
                let c0 = base + from as u64;
                let mut c1 = base + e as u64;
                if c1 > b
                    && past >= RESYNC_CHUNKS
                    && let Some(q) = next_boundary((c0 + 1).max(b)).filter(|q| *q < c1)
                {
                    c1 = q;
                }
                let to = (c1 - base) as usize;
                pieces.push(chunk_piece(sink, &buf[from..to], c0)?);
                from = to;
                if c1 < b {
                    continue;
                }
                if is_boundary(c1) || (c1 == stop && known && seam_in_zeros(c1, b, next_start)) {
                    break 'read c1;
                }
                past += 1;
                // Landed inside one of the parent's zero runs, which is unchanged (the next
                // window starts after it): a full read would go on cutting it into zero chunks
                // from here, so those are skipped without reading, and reading resumes at the
                // last one that could run past the zeros, where the chain may land on the
                // parent's cuts again. Jumping straight to the run's end would leave its last
                // chunk cut where no full read cuts it. A run that reaches the segment's end
                // holds all of the segment's remaining chunks (the last one shorter, ending at
                // the seam): none is read.
                let i = parent.partition_point(|p| p.off + p.len <= c1);
                if let Some(z) = parent.get(i)
                    && z.blob.is_none()
                    && z.off < c1
                    && z.off + z.len <= next_start.min(limit)
                {
                    let zc = sh.zero_chunk();
                    let run_end = z.off + z.len;
                    // A seam lies at or past its nominal boundary: it is found (a read of up to
                    // one chunk) only when the run reaches that far.
                    if !known && run_end >= stop {
                        stop = seam_of(stop).map_err(ReadError::Source)?;
                        known = true;
                    }
                    let skip = if run_end >= stop {
                        stop - c1
                    } else {
                        (run_end - c1) / zc * zc
                    };
                    if skip > 0 {
                        pieces.push(Piece {
                            off: c1,
                            len: skip,
                            blob: None,
                        });
                        jump = Some(c1 + skip);
                        break;
                    }
                }
            }
            if let Some(p) = jump {
                if is_boundary(p) || (p == stop && known && seam_in_zeros(p, b, next_start)) {
                    break 'read p;
                }
                (base, filled, clean) = (p, 0, 0);
                continue;
            }
            buf.copy_within(used..filled, 0);
            filled -= used;
            base += used as u64;
            if last && stop >= limit {
                break base;
            }
        };
        out.push(Replaced { start, end, pieces });
        done = end;
    }
    Ok(out)
}

/// The span of bytes from `x` (up to `to`) that is all of one kind: `(true, end)` when they are
/// known to be zeros without reading them (inside one of the parent's zero ranges and outside
/// every changed range: before the window's changes end at `b`, between them; past `b`, before
/// the next window's at `next_start`), `(false, end)` when they must be read.
fn zero_span(
    parent: &[Piece],
    changes: &[(u64, u64)],
    x: u64,
    to: u64,
    b: u64,
    next_start: u64,
) -> (bool, u64) {
    if x < b {
        // A window starts at the parent piece its first change begins in, which in free space
        // is the whole zero run before it: the run's bytes up to the change are the parent's
        // zeros (a change list names every byte that changed) and are cut, not read.
        let i = changes.partition_point(|c| c.1 <= x);
        return match changes.get(i) {
            Some(&(a, _)) if a > x => parent_zeros(parent, x, a.min(to)),
            Some(&(_, e)) => (false, e.min(to)),
            None => (false, b.min(to)),
        };
    }
    if x >= next_start {
        return (false, to);
    }
    parent_zeros(parent, x, to.min(next_start))
}

/// The span from `x` (up to `to`) in the parent's layout: `(true, end)` inside one of its zero
/// ranges, `(false, end)` up to the next one.
fn parent_zeros(parent: &[Piece], x: u64, to: u64) -> (bool, u64) {
    let i = parent.partition_point(|p| p.off + p.len <= x);
    let mut rest = parent[i..].iter();
    match rest.next() {
        Some(z) if z.blob.is_none() && z.off <= x => (true, (z.off + z.len).min(to)),
        _ => {
            let next = rest
                .take_while(|p| p.off < to)
                .find(|p| p.blob.is_none())
                .map_or(to, |z| z.off);
            (false, next)
        }
    }
}

/// `fill` for a changed window: the bytes the parent shows to be zeros, and that no change
/// touches, are set to zero instead of read.
fn fill_known(
    sh: &Shared<'_>,
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    pos: u64,
    end: u64,
    span: &dyn Fn(u64, u64) -> (bool, u64),
) -> std::io::Result<usize> {
    let to = pos + (buf.len() as u64).min(end.saturating_sub(pos));
    let mut at = pos;
    while at < to {
        let (zeros, upto) = span(at, to);
        let range = (at - pos) as usize..(upto - pos) as usize;
        if zeros {
            buf[range].fill(0);
        } else {
            let n = fill(sh, fd, &mut buf[range.clone()], at, end)?;
            if n < range.len() {
                // The source ended early: the caller reports it.
                return Ok(range.start + n);
            }
        }
        at = upto;
    }
    Ok((to - pos) as usize)
}

/// Set a node's content from its pieces (sorted): the blobs in order, and everything between
/// them (holes, zero chunks, the tail) as holes, of which `written` tells the allocated ones.
fn set_content(node: &mut Node, pieces: &[Piece], size: u64, written: &Written) {
    // Sized exactly: a node waits in its directory's tree until the directory is done, and a
    // growing vector's first allocation holds four ids (a third of a small file's node).
    let mut content = Vec::with_capacity(pieces.iter().filter(|p| p.blob.is_some()).count());
    let mut holes = Vec::new();
    let mut at = 0;
    for p in pieces {
        let Some(id) = p.blob else { continue };
        if p.off > at {
            holes.push((at, p.off - at));
        }
        content.push(id);
        at = p.off + p.len;
    }
    if size > at {
        holes.push((at, size - at));
    }
    node.content = content;
    node.allocated = written.of(&holes);
    node.holes = holes;
    node.size = size;
}

/// Join a file's segments in order. A file that shrank while it was read keeps what existed.
fn merge_segments(
    node: &mut Node,
    parts: Vec<Receiver<SegResult>>,
    written: &Written,
) -> std::result::Result<(), Option<String>> {
    let mut pieces = Vec::new();
    let mut size = node.size;
    let mut short = false;
    for rx in parts {
        match rx.recv() {
            Ok(Ok(seg)) if !short => {
                pieces.extend(seg.pieces);
                if seg.short {
                    short = true;
                    size = seg.end;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(w)) => return Err(Some(w)),
            // The worker failed fatally; its error is recorded.
            Err(_) => return Err(None),
        }
    }
    set_content(node, &pieces, size, written);
    Ok(())
}

/// Join a stream's pieces in order, until its reader hangs up.
fn merge_stream(
    node: &mut Node,
    parts: &Receiver<Receiver<SegResult>>,
) -> std::result::Result<(), Option<String>> {
    let mut pieces = Vec::new();
    let mut size = 0;
    for rx in parts {
        match rx.recv() {
            Ok(Ok(seg)) => {
                pieces.extend(seg.pieces);
                size = seg.end;
            }
            Ok(Err(w)) => return Err(Some(w)),
            Err(_) => return Err(None),
        }
    }
    set_content(node, &pieces, size, &Written::Nothing);
    Ok(())
}

/// Join the parent's pieces with the re-read windows. The result must tile `[0, size)` exactly;
/// anything else is a bug, and fails the backup rather than record wrong contents.
fn merge_delta(
    node: &mut Node,
    parent: &[Piece],
    size: u64,
    parts: Vec<Receiver<DeltaResult>>,
    written: &Written,
) -> std::result::Result<(), Option<String>> {
    let mut replaced = Vec::new();
    for rx in parts {
        match rx.recv() {
            Ok(Ok(r)) => replaced.extend(r),
            Ok(Err(w)) => return Err(Some(w)),
            Err(_) => return Err(None),
        }
    }
    let mut pieces = Vec::with_capacity(parent.len() + replaced.len());
    let mut cursor = 0;
    let keep = |pieces: &mut Vec<Piece>, from: u64, to: u64| {
        let i = parent.partition_point(|p| p.off + p.len <= from);
        for p in parent[i..].iter().take_while(|p| p.off + p.len <= to) {
            match p {
                // A window may end inside a zero run (at a seam): the rest of the run is kept.
                Piece { blob: None, .. } if p.off < from => pieces.push(Piece {
                    off: from,
                    len: p.off + p.len - from,
                    blob: None,
                }),
                // Anything else starting before `from` leaves a gap, found below.
                _ if p.off < from => {}
                _ => pieces.push(*p),
            }
        }
    };
    for r in replaced {
        keep(&mut pieces, cursor, r.start);
        pieces.extend(r.pieces);
        cursor = r.end;
    }
    keep(&mut pieces, cursor, size);
    let mut at = 0;
    for p in &pieces {
        if p.off != at || p.len == 0 {
            break;
        }
        at += p.len;
    }
    if at != size {
        return Err(Some(format!(
            "{}: changed ranges did not line up with the parent snapshot (at byte {at} of \
             {size}); back it up without --changed-ranges",
            node.display_name()
        )));
    }
    set_content(node, &pieces, size, written);
    Ok(())
}

#[derive(Default)]
struct TreeCounts {
    files: u64,
    dirs: u64,
    others: u64,
    bytes: u64,
}

fn build_trees(sh: &Shared<'_>, events: &Receiver<Vec<Event>>) -> Result<(Vec<Id>, TreeCounts)> {
    let mut sink = BlobSink::new(&sh.sink, &sh.sink.tree)?;
    // Each open directory's entries, encoded as they complete and stored as their blobs are cut.
    let mut stack: Vec<(Node, TreeWriter)> = Vec::new();
    let mut root = TreeWriter::default();
    let mut links: HashMap<(u64, u64), FileContent> = HashMap::new();
    let mut counts = TreeCounts::default();
    let track_packs = sh.repo.store().lock().is_some();
    let mut used_packs: HashSet<Id> = HashSet::new();
    for ev in events.iter().flatten() {
        let done = match ev {
            Event::Enter(n) => {
                stack.push((n, TreeWriter::default()));
                continue;
            }
            Event::Exit => {
                let (mut n, children) = stack
                    .pop()
                    .ok_or_else(|| Error::invalid("walk events out of order"))?;
                n.subtree = children.finish(&sh.chunker, &mut |b| sink.put(b))?;
                counts.dirs += 1;
                n
            }
            Event::Entry {
                mut node,
                source,
                link,
            } => {
                let resolved = match source {
                    Source::Ready => true,
                    Source::Pending { parts, written } => {
                        match merge_segments(&mut node, parts, &written) {
                            Ok(()) => true,
                            Err(w) => {
                                if let Some(w) = w {
                                    sh.status.warn(w);
                                }
                                false
                            }
                        }
                    }
                    Source::Delta {
                        parent,
                        size,
                        parts,
                        written,
                    } => match merge_delta(&mut node, &parent, size, parts, &written) {
                        Ok(()) => true,
                        Err(w) => {
                            // Only the one path given is delta-read: its failure fails the backup.
                            return Err(Error::new(
                                crate::ErrorKind::Io,
                                w.unwrap_or_else(|| "backup aborted".into()),
                            ));
                        }
                    },
                    Source::Stream { parts } => {
                        if let Err(w) = merge_stream(&mut node, &parts) {
                            return Err(Error::new(
                                crate::ErrorKind::Io,
                                w.unwrap_or_else(|| "backup aborted".into()),
                            ));
                        }
                        true
                    }
                    Source::SameAs(k) => {
                        if let Some(c) = links.get(&k) {
                            node.content.clone_from(&c.content);
                            node.holes.clone_from(&c.holes);
                            node.allocated.clone_from(&c.allocated);
                            node.size = c.size;
                            true
                        } else {
                            let name = node.display_name();
                            sh.status.warn(format!(
                                "{name}: hard link to a file that could not be read (skipped)"
                            ));
                            false
                        }
                    }
                };
                if !resolved {
                    continue;
                }
                if let Some(k) = link {
                    links.entry(k).or_insert_with(|| FileContent {
                        content: node.content.clone(),
                        holes: node.holes.clone(),
                        allocated: node.allocated.clone(),
                        size: node.size,
                    });
                }
                if node.has_data() {
                    counts.files += 1;
                    counts.bytes += node.size;
                } else {
                    counts.others += 1;
                }
                node
            }
        };
        if track_packs {
            for id in done.content.iter().chain(&done.subtree) {
                if let Some(l) = sh.repo.index().get(id) {
                    used_packs.insert(l.pack.id);
                }
            }
        }
        match stack.last_mut() {
            Some((_, children)) => children.push(&sh.chunker, &done, &mut |b| sink.put(b))?,
            None => root.push(&sh.chunker, &done, &mut |b| sink.put(b))?,
        }
    }
    if track_packs {
        sh.used_packs.lock().expect("used packs").extend(used_packs);
    }
    if sh.status.failed() {
        return Err(Error::new(crate::ErrorKind::Storage, "backup aborted"));
    }
    if !stack.is_empty() {
        return Err(Error::invalid("walk ended inside a directory"));
    }
    let ids = root.finish(&sh.chunker, &mut |b| sink.put(b))?;
    Ok((ids, counts))
}

#[cfg(test)]
mod tests {
    use super::Written;

    /// A sparse file's written zeros are the parts of its zero ranges inside its data regions.
    #[test]
    fn written_zeros_are_the_zero_ranges_inside_the_data() {
        let holes = [(0, 10), (20, 10), (40, 10), (60, 5)];
        let w = Written::In(vec![(5, 20), (28, 1), (45, 100)].into());
        assert_eq!(
            w.of(&holes),
            vec![(5, 5), (20, 5), (28, 1), (45, 5), (60, 5)]
        );
        assert_eq!(Written::All.of(&holes), holes.to_vec());
        assert!(Written::Nothing.of(&holes).is_empty());
    }
}
