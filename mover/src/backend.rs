//! The storage edge: a small synchronous facade over an opendal operator.
//!
//! The data path runs on plain threads; each storage call blocks on a private tokio runtime. This is
//! the only async in the mover. Every object name is a content hash or a random id, and objects are
//! never modified after they are written.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};

use opendal::Operator;

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// A bucket and prefix in S3 or an S3-compatible store.
    S3(S3Location),
}

/// An S3 repository: `s3://BUCKET/PREFIX`. Credentials are never part of it: they come from the
/// standard AWS variables or the usual credential chain (web identity, instance profile) when the
/// store is opened, so they cannot end up in output that formats a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Endpoint URL (default: env `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    /// Region (default: env `AWS_REGION` or `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
}

impl Location {
    /// Parse `--repo`: `s3://BUCKET/PREFIX`, or a local path.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or unsupported location.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid(
                "the repository location is empty (set --repo or LIFEBOAT_REPO)",
            ));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(Error::invalid(format!(
                    "{s:?}: {bucket:?} is not a valid S3 bucket name"
                )));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|c| c == "." || c == "..") {
                return Err(Error::invalid(format!(
                    "{s:?}: the prefix may not hold . or .."
                )));
            }
            let env = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
            };
            return Ok(Location::S3(S3Location {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                endpoint: env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
                region: env(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            }));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme}:// is not supported; use s3://BUCKET/PREFIX or a local path"
            )));
        }
        Ok(Location::Local(
            std::path::absolute(s).map_err(|e| Error::io(s, e))?,
        ))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(s) if s.prefix.is_empty() => write!(f, "s3://{}", s.bucket),
            Location::S3(s) => write!(f, "s3://{}/{}", s.bucket, s.prefix),
        }
    }
}

/// How a store talks to its backend: limits, retries and timeouts. The defaults suit S3 over a
/// data-centre network; `--max-requests`, `--limit-upload`, `--limit-download` and `--retries` set
/// them from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Requests in flight at once, at most (remote stores).
    pub max_requests: usize,
    /// Upload bandwidth limit, MiB/s.
    pub limit_upload: Option<f64>,
    /// Download bandwidth limit, MiB/s.
    pub limit_download: Option<f64>,
    /// Retries of a request that failed transiently (with exponential backoff and jitter).
    pub retries: usize,
    /// Time limit of one request attempt; also the limit for any single read or write step.
    pub timeout: std::time::Duration,
    /// Where to keep a local cache of a remote repository's metadata (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_requests: 16,
            limit_upload: None,
            limit_download: None,
            retries: 6,
            timeout: std::time::Duration::from_mins(2),
            cache_dir: None,
        }
    }
}

/// A bandwidth limit: a GCRA rate limiter counting KiB, waited on before each transfer.
struct Bandwidth {
    limiter: governor::DefaultDirectRateLimiter,
    burst: u32,
}

impl Bandwidth {
    fn new(mib_per_s: Option<f64>) -> Result<Option<Self>> {
        let Some(m) = mib_per_s else { return Ok(None) };
        if !(m.is_finite() && m > 0.0) {
            return Err(Error::invalid(format!(
                "bandwidth limit {m} MiB/s must be a positive number"
            )));
        }
        let kib_per_s = (m * 1024.0).clamp(1.0, f64::from(u32::MAX)) as u32;
        // Burst: a tenth of a second of traffic, so the limit holds over short windows too.
        let burst = (kib_per_s / 10).max(1);
        let nz = |n: u32| std::num::NonZeroU32::new(n).expect("at least 1");
        Ok(Some(Self {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(nz(kib_per_s)).allow_burst(nz(burst)),
            ),
            burst,
        }))
    }

    /// Wait until `bytes` may pass.
    fn take(&self, rt: &tokio::runtime::Runtime, bytes: usize) {
        let mut kib = bytes.div_ceil(1024) as u64;
        while kib > 0 {
            // One call may ask for at most the burst.
            let n = kib.min(u64::from(self.burst)) as u32;
            let n = std::num::NonZeroU32::new(n).expect("non-zero");
            // Err only when n exceeds the burst, which it cannot.
            let _ = rt.block_on(self.limiter.until_n_ready(n));
            kib -= u64::from(n.get());
        }
    }
}

/// Create `name` with `data` unless it exists. Returns `None` when it already existed, else whether
/// the object's directory had to be created. The object is written and synced under `tmp/`, then
/// hard-linked into place: unlike a rename, a link never replaces an existing object, so this is
/// the local equivalent of S3's `If-None-Match: *`.
fn write_local(root: &Path, name: &str, data: &[u8]) -> std::io::Result<Option<bool>> {
    use std::io::Write;
    let target = root.join(name);
    let mut created = false;
    if let Some(parent) = target.parent()
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent)?;
        created = true;
    }
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = tmp_dir(root).join(format!("{}.{}", name.replace('/', "_"), hex::encode(rnd)));
    std::fs::create_dir_all(tmp_dir(root))?;
    let r = (|| {
        if data.len() < DIRECT_MIN || !write_direct(&tmp, data)? {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(Some(created)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    r
}

/// Objects at least this large (packs) are written with `O_DIRECT`.
const DIRECT_MIN: usize = 1 << 20;
/// `O_DIRECT` alignment of memory, offsets and lengths.
const DIRECT_ALIGN: usize = crate::pack::PACK_ALIGN;
/// The aligned bounce buffer each writing thread copies data through when it is not aligned in
/// memory (packs from the backup pipeline are, see [`crate::pack::PACK_ALIGN`]).
const DIRECT_CHUNK: usize = 4 << 20;

/// Write a new file at `tmp` with `O_DIRECT` and sync it. Packs are written once and read rarely:
/// going around the page cache spares a node's cache (the database it backs up keeps its pages)
/// and the cost of filling cache pages, which dominated backups of incompressible data. The
/// unaligned tail is written through the cache. Returns `false`, with nothing left at `tmp`,
/// where the filesystem does not take `O_DIRECT`, so the caller writes it the usual way.
fn write_direct(tmp: &Path, data: &[u8]) -> std::io::Result<bool> {
    use crate::fsmeta::write_all_at;
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsFd;
    thread_local! {
        static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(tmp, flags | OFlags::DIRECT, Mode::from_bits_retain(0o644)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::INVAL) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let head = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let r = if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
        write_all_at(fd.as_fd(), &data[..head], 0)
    } else {
        BOUNCE.with_borrow_mut(|bounce| {
            if bounce.is_empty() {
                bounce.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
            }
            // `align_offset` may in principle decline (usize::MAX): then O_DIRECT is refused.
            let at = bounce.as_ptr().align_offset(DIRECT_ALIGN);
            let Some(aligned) = bounce.get_mut(at..at.saturating_add(DIRECT_CHUNK)) else {
                return Err(rustix::io::Errno::INVAL.into());
            };
            let mut off = 0;
            for chunk in data[..head].chunks(DIRECT_CHUNK) {
                aligned[..chunk.len()].copy_from_slice(chunk);
                write_all_at(fd.as_fd(), &aligned[..chunk.len()], off as u64)?;
                off += chunk.len();
            }
            Ok::<_, std::io::Error>(())
        })
    };
    match r {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            drop(fd);
            std::fs::remove_file(tmp)?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    if head < data.len() {
        rustix::fs::fcntl_setfl(&fd, flags.difference(OFlags::CREATE | OFlags::EXCL))?;
        write_all_at(fd.as_fd(), &data[head..], head as u64)?;
    }
    rustix::fs::fsync(&fd)?;
    Ok(true)
}

/// Open local object `name` at `path` for reading: `Missing` when absent. Out of file
/// descriptors, it waits for the process's other threads to give theirs back.
fn open_local(path: &Path, name: &str) -> Result<std::fs::File> {
    crate::fsmeta::waiting_for_descriptors(|| {}, || std::fs::File::open(path)).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::Missing
        } else {
            ErrorKind::Storage
        };
        Error::new(kind, format!("reading {name}: {e}"))
    })
}

fn read_local(path: &Path, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::os::fd::AsFd;
    let f = open_local(path, name)?;
    crate::fsmeta::read_exact_at(f.as_fd(), len as usize, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt(format!("{name} is truncated"))
        } else {
            Error::new(ErrorKind::Storage, format!("reading {name}: {e}"))
        }
    })
}

/// Bytes `range` of remote object `name`, copied into `out` as they arrive: a read holds its
/// bytes once, not the pieces received and their copy.
async fn fetch(
    op: Operator,
    name: String,
    range: impl std::ops::RangeBounds<u64> + Send + 'static,
    mut out: Vec<u8>,
) -> Result<Vec<u8>> {
    let read = async {
        let r = op.reader(&name).await?;
        r.read_into(&mut out, range).await
    };
    read.await
        .map_err(|e| storage_err(&format!("reading {name}"), e))?;
    Ok(out)
}

/// Send bytes `range` of remote object `name` into `pieces` as they arrive; a failure is the
/// last item. Stops when the receiver is dropped.
async fn stream(
    op: Operator,
    name: String,
    range: std::ops::Range<u64>,
    pieces: tokio::sync::mpsc::Sender<Result<bytes::Bytes>>,
) {
    use futures_util::TryStreamExt;
    let run = async {
        let mut s = op.reader(&name).await?.into_stream(range).await?;
        while let Some(buffer) = s.try_next().await? {
            for b in buffer {
                if pieces.send(Ok(b)).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    if let Err(e) = run.await {
        let _ = pieces
            .send(Err(storage_err(&format!("reading {name}"), e)))
            .await;
    }
}

/// Pieces a remote stream keeps received ahead of its reader. Each is what the connection
/// delivered at once and pins a read buffer of up to about 400 KiB (hyper's): with 16 pieces,
/// 16 streams held 90 MiB of them (heaptrack), with 2 under 20 MiB.
const STREAM_PIECES: usize = 2;

/// A range read handed over as it arrives ([`Store::start_stream`]): the reader works on the
/// first bytes while the rest are on the way, and holds only what it keeps of them.
pub struct ReadStream<'s> {
    store: &'s Store,
    name: String,
    /// The next byte to hand over, and the end of the range.
    at: u64,
    end: u64,
    source: StreamSource,
}

enum StreamSource {
    /// An empty range: nothing to read.
    Empty,
    Local(std::fs::File),
    Remote {
        pieces: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
        /// What is left of the piece received last.
        piece: bytes::Bytes,
        task: tokio::task::JoinHandle<()>,
    },
}

impl ReadStream<'_> {
    /// Append the next bytes to `buf`: from a local store as many as fit in its spare capacity
    /// after reserving `want`, from a remote one what has arrived (waiting for at least one
    /// byte), never past the range. `Ok(0)` once the whole range was handed over.
    ///
    /// # Errors
    /// A storage error, or `Corrupt` when the object ends before the range does.
    pub fn read_more(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<usize> {
        let left = self.end - self.at;
        if left == 0 {
            return Ok(0);
        }
        let truncated = || Error::corrupt(format!("{} is truncated", self.name));
        let n = match &mut self.source {
            StreamSource::Empty => return Err(truncated()),
            StreamSource::Local(f) => {
                use std::os::fd::AsFd;
                let at = buf.len();
                buf.reserve(want.max(1).min(usize::try_from(left).unwrap_or(usize::MAX)));
                let n = loop {
                    match rustix::io::pread(
                        f.as_fd(),
                        rustix::buffer::spare_capacity(&mut *buf),
                        self.at,
                    ) {
                        Ok(0) => return Err(truncated()),
                        Ok(n) => break n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => {
                            return Err(Error::new(
                                ErrorKind::Storage,
                                format!("reading {}: {e}", self.name),
                            ));
                        }
                    }
                };
                let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                buf.truncate(at + n);
                n
            }
            StreamSource::Remote { pieces, piece, .. } => {
                while piece.is_empty() {
                    match pieces.blocking_recv() {
                        Some(Ok(b)) => *piece = b,
                        Some(Err(e)) => return Err(e),
                        None => return Err(truncated()),
                    }
                }
                let n = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                buf.extend_from_slice(&piece.split_to(n));
                n
            }
        };
        if let Some(l) = &self.store.download {
            l.take(&self.store.rt, n);
        }
        self.at += n as u64;
        Ok(n)
    }
}

impl Drop for ReadStream<'_> {
    fn drop(&mut self) {
        if let StreamSource::Remote { task, .. } = &self.source {
            task.abort();
        }
    }
}

/// A range read of exactly `len` bytes, or `Corrupt`.
fn whole(name: &str, b: Vec<u8>, len: u64) -> Result<Vec<u8>> {
    if b.len() as u64 == len {
        Ok(b)
    } else {
        Err(Error::corrupt(format!("{name} is truncated")))
    }
}

/// A read begun by [`Store::start_read`].
pub struct PendingRead<'s> {
    store: &'s Store,
    name: String,
    offset: u64,
    len: u64,
    /// The remote request under way (`None` for a local store).
    task: Option<tokio::task::JoinHandle<Result<Vec<u8>>>>,
}

impl PendingRead<'_> {
    /// The bytes, once read.
    ///
    /// # Errors
    /// As [`Store::read_range`].
    pub fn wait(mut self) -> Result<Vec<u8>> {
        if let Some(task) = self.task.take() {
            let b = self.store.rt.block_on(task).map_err(|e| {
                Error::new(ErrorKind::Storage, format!("reading {}: {e}", self.name))
            })??;
            return whole(&self.name, b, self.len);
        }
        self.store.read_range(&self.name, self.offset, self.len)
    }
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Object names.
pub mod names {
    use super::Id;
    /// The plaintext repository config.
    pub const CONFIG: &str = "config";
    /// Key slots.
    pub const KEYS: &str = "keys/";
    /// Snapshot objects.
    pub const SNAPSHOTS: &str = "snapshots/";
    /// Index objects.
    pub const INDEX: &str = "index/";
    /// Packs, fanned out by the first byte of their id.
    pub const DATA: &str = "data/";
    /// Damaged packs `repair index --read-all-packs` took out of `data/`, kept for inspection:
    /// nothing deletes them, and only `repair snapshots` reads them (their headers).
    pub const DAMAGED: &str = "damaged/";

    /// The name of a pack.
    pub fn pack(id: &Id) -> String {
        let h = id.to_hex();
        format!("data/{}/{h}", &h[..2])
    }

    /// Where a damaged pack is set aside.
    pub fn damaged(id: &Id) -> String {
        format!("{DAMAGED}{}", id.to_hex())
    }
}

/// A storage backend.
pub struct Store {
    rt: tokio::runtime::Runtime,
    op: Operator,
    location: Location,
    /// Directories that received new names since the last [`Store::sync`] (local stores).
    dirty: std::sync::Mutex<std::collections::BTreeSet<String>>,
    upload: Option<Bandwidth>,
    download: Option<Bandwidth>,
    /// Object Lock: the raw client that writes locked objects, and the settings.
    lock: Option<(crate::s3lock::S3Raw, crate::repo::LockConfig)>,
    /// Objects created under a lock since the last [`Store::take_locked`], with their retention.
    locked: std::sync::Mutex<Vec<(String, jiff::Timestamp)>>,
    /// Requests allowed in flight (`--max-requests`).
    max_requests: usize,
    /// The local cache of a remote repository's index objects, snapshots and tree packs.
    cache: Option<crate::cache::Cache>,
}

/// Objects cached whole (and checked against their names) when a cache is attached.
const CACHED: [&str; 2] = [names::INDEX, names::SNAPSHOTS];

/// Prefixes never locked: a prune's lease and deletion plans must stay deletable, and the
/// retention ledger is only a record (losing it costs extra extensions, nothing else).
pub const UNLOCKED: [&str; 3] = ["locks/", "pending/", "retention/"];

fn storage_err(what: &str, e: opendal::Error) -> Error {
    Error::from(e).context(what)
}

/// S3 multipart part size: packs larger than this are sent as parts, several at once.
const PART_SIZE: usize = 8 << 20;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

fn s3_operator(s3: &S3Location, opts: &StoreOptions) -> Result<Operator> {
    static HTTP: std::sync::Once = std::sync::Once::new();
    HTTP.call_once(opendal::install_default);
    let mut b = opendal::services::S3::default()
        .bucket(&s3.bucket)
        .root(&format!("/{}", s3.prefix))
        .region(s3.region.as_deref().unwrap_or("us-east-1"));
    if let Some(e) = &s3.endpoint {
        b = b.endpoint(e);
    }
    // Static keys from the environment when set; otherwise opendal's default chain (profile, web
    // identity as with IRSA, container and instance credentials) finds them.
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        b = b.access_key_id(&id).secret_access_key(&secret);
        if let Ok(t) = std::env::var("AWS_SESSION_TOKEN") {
            b = b.session_token(&t);
        }
    }
    let op = Operator::new(b).map_err(|e| storage_err("opening the S3 repository", e))?;
    // Innermost first: each attempt is timed out and holds a request slot; retries (exponential
    // backoff with jitter, on errors opendal marks temporary: timeouts, 5xx, throttling, broken
    // connections) wrap everything and hold no slot while they wait.
    Ok(op
        .layer(
            opendal::layers::TimeoutLayer::new()
                .with_timeout(opts.timeout)
                .with_io_timeout(opts.timeout),
        )
        .layer(
            opendal::layers::ConcurrentLimitLayer::new(opts.max_requests.max(1))
                .with_http_concurrent_limit(opts.max_requests.max(1)),
        )
        .layer(
            opendal::layers::RetryLayer::new()
                .with_max_times(opts.retries)
                .with_factor(2.0)
                .with_min_delay(std::time::Duration::from_millis(200))
                .with_max_delay(std::time::Duration::from_secs(10))
                .with_jitter(),
        ))
}

impl Store {
    /// Connect to `location`. With `create` false, a location that holds no repository config is an
    /// error and nothing is created there.
    ///
    /// # Errors
    /// `RepositoryNotFound`, `NotARepository`, `InvalidInput` for bad options, or a storage error.
    pub fn open(location: &Location, create: bool, opts: &StoreOptions) -> Result<Self> {
        if let Location::Local(root) = location
            && !create
        {
            if !root.is_dir() {
                return Err(Error::new(
                    ErrorKind::RepositoryNotFound,
                    format!(
                        "no repository at {}: the directory does not exist",
                        root.display()
                    ),
                ));
            }
            if !root.join(names::CONFIG).is_file() {
                return Err(Error::new(
                    ErrorKind::NotARepository,
                    format!(
                        "{} is not a Lifeboat repository (it has no config)",
                        root.display()
                    ),
                ));
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lifeboat-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the I/O runtime", e))?;
        let op = match location {
            Location::Local(root) => {
                let builder = opendal::services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&tmp_dir(root).to_string_lossy());
                Operator::new(builder).map_err(|e| storage_err("opening the repository", e))?
            }
            Location::S3(s3) => s3_operator(s3, opts)?,
        };
        let store = Self {
            rt,
            op,
            location: location.clone(),
            dirty: std::sync::Mutex::default(),
            upload: Bandwidth::new(opts.limit_upload)?,
            download: Bandwidth::new(opts.limit_download)?,
            lock: None,
            locked: std::sync::Mutex::default(),
            max_requests: opts.max_requests.max(1),
            cache: None,
        };
        if matches!(location, Location::S3(_)) && !create && !store.exists(names::CONFIG)? {
            return Err(Error::new(
                ErrorKind::NotARepository,
                format!("{location} is not a Lifeboat repository (it has no config)"),
            ));
        }
        Ok(store)
    }

    /// Write every new object with S3 Object Lock retention from now on.
    ///
    /// # Errors
    /// `InvalidInput` for a repository that is not in S3.
    pub fn set_lock(
        &mut self,
        lock: Option<crate::repo::LockConfig>,
        opts: &StoreOptions,
    ) -> Result<()> {
        self.lock = match (lock, &self.location) {
            (None, _) => None,
            (Some(l), Location::S3(s3)) => Some((crate::s3lock::S3Raw::new(s3, opts.timeout)?, l)),
            (Some(_), Location::Local(_)) => {
                return Err(Error::invalid(
                    "Object Lock needs an S3 repository (a bucket with Object Lock enabled)",
                ));
            }
        };
        Ok(())
    }

    /// The lock settings, when objects are locked.
    pub fn lock(&self) -> Option<crate::repo::LockConfig> {
        self.lock.as_ref().map(|(_, l)| *l)
    }

    /// Whether the bucket has Object Lock enabled (only for a store with a lock set).
    ///
    /// # Errors
    /// Storage errors.
    pub fn lock_enabled(&self) -> Result<bool> {
        match &self.lock {
            Some((raw, _)) => self.rt.block_on(raw.lock_enabled()),
            None => Ok(false),
        }
    }

    /// Extend the retention of `name` to `until`.
    ///
    /// # Errors
    /// `Missing`, storage errors, or `InvalidInput` when the store has no lock.
    pub fn extend_lock(&self, name: &str, until: jiff::Timestamp) -> Result<()> {
        let Some((raw, l)) = &self.lock else {
            return Err(Error::invalid("this repository does not use Object Lock"));
        };
        self.rt.block_on(raw.extend(name, l.mode, until))
    }

    /// Undo deletions on a versioned bucket: for every object whose current version is a
    /// delete marker and that still has an earlier version, delete its delete markers, which
    /// makes the latest earlier version current again. Leases and deletion plans (never locked,
    /// and deleted by prune on purpose) are left deleted, and so is a pack `repair index` moved
    /// to `damaged/` (brought back, a header-only repair would index its damage again). Returns
    /// the number of objects brought back and the number that have no version left.
    ///
    /// # Errors
    /// `InvalidInput` for a local repository; storage errors.
    pub fn undelete(&self) -> Result<(u64, u64)> {
        #[derive(Default)]
        struct Versions {
            markers: Vec<String>,
            real: bool,
            deleted_now: bool,
        }
        if !self.is_remote() {
            return Err(Error::invalid(
                "recover needs a versioned S3 bucket (a local repository keeps no old versions)",
            ));
        }
        let entries = self
            .rt
            .block_on(
                self.op
                    .list_with("")
                    .recursive(true)
                    .versions(true)
                    .deleted(true)
                    .into_future(),
            )
            .map_err(|e| storage_err("listing object versions", e))?;
        let mut by_path: std::collections::BTreeMap<String, Versions> =
            std::collections::BTreeMap::new();
        for e in &entries {
            let m = e.metadata();
            if !m.is_file()
                || ["locks/", "pending/", "tmp/"]
                    .iter()
                    .any(|p| e.path().starts_with(p))
            {
                continue;
            }
            let v = by_path.entry(e.path().to_owned()).or_default();
            if m.is_deleted() {
                if let Some(id) = m.version() {
                    v.markers.push(id.to_owned());
                }
                if m.is_current() == Some(true) {
                    v.deleted_now = true;
                }
            } else {
                v.real = true;
            }
        }
        // Packs set aside as damaged (with any version: a deleted one is brought back below).
        let aside: std::collections::HashSet<String> = by_path
            .iter()
            .filter(|(_, v)| v.real)
            .filter_map(|(p, _)| Some(p.strip_prefix(names::DAMAGED)?.to_owned()))
            .collect();
        let (mut back, mut lost) = (0, 0);
        for (path, v) in by_path {
            let set_aside = path.starts_with(names::DATA)
                && path.rsplit('/').next().is_some_and(|id| aside.contains(id));
            if !v.deleted_now || set_aside {
                continue;
            }
            if !v.real {
                lost += 1;
                continue;
            }
            for m in &v.markers {
                self.rt
                    .block_on(self.op.delete_with(&path).version(m).into_future())
                    .map_err(|e| {
                        storage_err(&format!("removing the delete marker of {path}"), e)
                    })?;
            }
            back += 1;
        }
        Ok((back, lost))
    }

    /// The retain-until date of `name` as the store reports it (`None`: not locked, or absent).
    ///
    /// # Errors
    /// Storage errors, or `InvalidInput` when the store has no lock.
    pub fn retain_until(&self, name: &str) -> Result<Option<jiff::Timestamp>> {
        let Some((raw, _)) = &self.lock else {
            return Err(Error::invalid("this repository does not use Object Lock"));
        };
        self.rt.block_on(raw.retain_until(name))
    }

    /// The objects created locked since the last call, with their retention.
    pub fn take_locked(&self) -> Vec<(String, jiff::Timestamp)> {
        std::mem::take(&mut *self.locked.lock().expect("locked list"))
    }

    /// Where this store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether requests cross a network (so several uploads in flight pay off).
    pub fn is_remote(&self) -> bool {
        !matches!(self.location, Location::Local(_))
    }

    /// Blocking requests worth keeping in flight from worker threads: `--max-requests` for a remote
    /// store (each request mostly waits on the network), `None` for a local one (bound by cores).
    pub fn parallelism(&self) -> Option<usize> {
        self.is_remote().then_some(self.max_requests)
    }

    /// Keep a local cache of this repository under `root` (remote stores only; `repo` is the
    /// repository's id).
    pub fn attach_cache(&mut self, root: Option<&Path>, repo: &Id) {
        if let (Some(root), true) = (root, self.is_remote()) {
            self.cache = crate::cache::Cache::open(root, repo);
        }
    }

    /// The attached cache, if any.
    pub fn cache(&self) -> Option<&crate::cache::Cache> {
        self.cache.as_ref()
    }

    /// Read a whole object. Index objects and snapshots come from the cache when it holds them
    /// (checked against their name) and enter it when fetched.
    ///
    /// # Errors
    /// `Missing` when absent, else a storage error.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let cache = self
            .cache
            .as_ref()
            .filter(|_| CACHED.iter().any(|p| name.starts_with(p)));
        if let Some(data) = cache.and_then(|c| c.get_object(name)) {
            return Ok(data);
        }
        let b = self.read_remote(name)?;
        if let Some(c) = cache {
            c.put(name, &b);
        }
        Ok(b)
    }

    fn read_remote(&self, name: &str) -> Result<Vec<u8>> {
        let b = self
            .rt
            .block_on(fetch(self.op.clone(), name.to_owned(), .., Vec::new()))?;
        if let Some(l) = &self.download {
            l.take(&self.rt, b.len());
        }
        Ok(b)
    }

    /// Read `len` bytes at `offset`; a short object is `Corrupt`.
    ///
    /// # Errors
    /// `Missing`, `Corrupt` (truncated) or a storage error.
    pub fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match &self.location {
            // Local repositories read ranges straight from the file: opendal's fs service hops
            // through tokio's blocking pool for every open, seek and read, which profiling showed
            // costing more than decryption and decompression together when restoring many small
            // blobs.
            Location::Local(root) => {
                if let Some(l) = &self.download {
                    l.take(&self.rt, len as usize);
                }
                read_local(&root.join(name), name, offset, len)
            }
            Location::S3(_) => self.start_read(name, offset, len).wait(),
        }
    }

    /// [`Store::read_range`] started now and finished by [`PendingRead::wait`]: a remote read runs
    /// on the store's runtime meanwhile, so a few threads keep many requests in flight; a local
    /// one is read when waited for. Dropping it cancels the read.
    pub fn start_read(&self, name: &str, offset: u64, len: u64) -> PendingRead<'_> {
        let task = match &self.location {
            Location::S3(_) => {
                if let Some(l) = &self.download {
                    l.take(&self.rt, len as usize);
                }
                // A range past 2^64 comes back short, and is refused as truncated.
                let range = offset..offset.saturating_add(len);
                // The buffer is made here, by the thread that will use and free it.
                let out = Vec::with_capacity(len as usize);
                Some(
                    self.rt
                        .spawn(fetch(self.op.clone(), name.to_owned(), range, out)),
                )
            }
            Location::Local(_) => None,
        };
        PendingRead {
            store: self,
            name: name.to_owned(),
            offset,
            len,
            task,
        }
    }

    /// Read `len` bytes at `offset` as they arrive, with [`ReadStream::read_more`]: one request
    /// for the whole range. Dropping it cancels the read.
    ///
    /// # Errors
    /// `Missing` or a storage error when a local object cannot be opened; a remote one's
    /// errors come from `read_more`.
    pub fn start_stream(&self, name: &str, offset: u64, len: u64) -> Result<ReadStream<'_>> {
        let end = offset.saturating_add(len);
        let source = match &self.location {
            _ if len == 0 => StreamSource::Empty,
            Location::Local(root) => StreamSource::Local(open_local(&root.join(name), name)?),
            Location::S3(_) => {
                let (tx, pieces) = tokio::sync::mpsc::channel(STREAM_PIECES);
                let task = self
                    .rt
                    .spawn(stream(self.op.clone(), name.to_owned(), offset..end, tx));
                StreamSource::Remote {
                    pieces,
                    piece: bytes::Bytes::new(),
                    task,
                }
            }
        };
        Ok(ReadStream {
            store: self,
            name: name.to_owned(),
            at: offset,
            end,
            source,
        })
    }

    /// [`Store::read_range`] of a tree pack: with a cache, the whole pack is fetched once (and
    /// checked against its name) and ranges are read from the local copy, as restic does.
    ///
    /// # Errors
    /// As [`Store::read_range`].
    pub fn read_tree_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let Some(c) = &self.cache else {
            return self.read_range(name, offset, len);
        };
        if !c.has(name) {
            let _fetching = c.fetch_guard(name);
            if !c.has(name) {
                c.put(name, &self.read_remote(name)?);
            }
        }
        match c.get_range(name, offset, len) {
            Some(b) => Ok(b),
            // Not cacheable (unwritable cache, a pack that does not match its name): read the
            // range, which reports what is wrong with the pack.
            None => self.read_range(name, offset, len),
        }
    }

    /// Drop `name` from the cache (a cached copy failed to open): the next read fetches it.
    /// Returns whether there was one.
    pub fn evict(&self, name: &str) -> bool {
        self.cache.as_ref().is_some_and(|c| {
            let had = c.has(name);
            c.remove(name);
            had
        })
    }

    /// Put a tree pack just stored into the cache.
    pub fn cache_pack(&self, name: &str, data: &[u8]) {
        if let Some(c) = &self.cache {
            c.put(name, data);
        }
    }

    /// Tell a local store that these ranges will be read soon, so the kernel starts reading them
    /// (`POSIX_FADV_WILLNEED`) while earlier ones are processed: a restore from a repository that
    /// is not in the page cache keeps the disk busy with one reader per core. A hint only: a
    /// remote store, or a failure, does nothing.
    pub fn prefetch(&self, ranges: &[(&str, u64, u64)]) {
        let Location::Local(root) = &self.location else {
            return;
        };
        for (name, offset, len) in ranges {
            if let Ok(f) = std::fs::File::open(root.join(name)) {
                let _ = rustix::fs::fadvise(
                    &f,
                    *offset,
                    std::num::NonZeroU64::new(*len),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
    }

    /// Store a content-addressed object: it appears whole or not at all. An object that already
    /// exists under that name has the same bytes (the name is their hash), so it is left as is.
    ///
    /// # Errors
    /// A storage error.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.create(name, data)?;
        if let Some(c) = &self.cache
            && CACHED.iter().any(|p| name.starts_with(p))
        {
            c.put(name, data);
        }
        Ok(())
    }

    /// Create an object only if no object has that name (S3 `If-None-Match: *`; a hard link
    /// locally). Returns whether it was created. Atomic: it appears whole or not at all.
    ///
    /// # Errors
    /// A storage error.
    pub fn create(&self, name: &str, data: &[u8]) -> Result<bool> {
        if let Some(l) = &self.upload {
            l.take(&self.rt, data.len());
        }
        if let Some((raw, l)) = &self.lock
            && !UNLOCKED.iter().any(|p| name.starts_with(p))
        {
            let until =
                jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * i64::from(l.days));
            let created = self
                .rt
                .block_on(raw.put_locked(name, data, l.mode, until))?;
            if created {
                self.locked
                    .lock()
                    .expect("locked list")
                    .push((name.to_owned(), until));
            }
            return Ok(created);
        }
        let root = match &self.location {
            Location::Local(root) => root,
            Location::S3(_) => {
                return self.create_remote(name, bytes::Bytes::copy_from_slice(data));
            }
        };
        // Like opendal's fs service (data synced, then linked into place), without its hops
        // through tokio's blocking pool and without copying the pack into an owned buffer.
        let Some(created) = write_local(root, name, data)
            .map_err(|e| Error::new(ErrorKind::Storage, format!("writing {name}: {e}")))?
        else {
            return Ok(false);
        };
        // The object's directory holds the new name; a directory created for it (a new `data/xx/`
        // fan-out) is itself a new name in its parent, which must be synced too, or a power loss
        // could drop the whole directory with the packs in it.
        let parent = |s: &str| s.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let mut dirty = self.dirty.lock().expect("dirty lock");
        let mut dir = parent(name);
        loop {
            let up = parent(&dir);
            let top = dir.is_empty();
            dirty.insert(dir);
            if !created || top {
                break;
            }
            dir = up;
        }
        Ok(true)
    }

    /// [`Store::write`] for an owned buffer: sent to a remote store without a copy (the buffer is
    /// dropped once the upload is done, which is when a recycling owner gets it back).
    ///
    /// # Errors
    /// A storage error.
    pub fn write_bytes(&self, name: &str, data: bytes::Bytes) -> Result<()> {
        if matches!(self.location, Location::S3(_)) && self.lock.is_none() {
            if let Some(l) = &self.upload {
                l.take(&self.rt, data.len());
            }
            return self.create_remote(name, data).map(|_| ());
        }
        self.write(name, &data)
    }

    /// Create-if-absent on S3 (`If-None-Match: *`), large objects as parallel multipart parts.
    fn create_remote(&self, name: &str, data: bytes::Bytes) -> Result<bool> {
        let r = self.rt.block_on(
            self.op
                .write_with(name, data)
                .if_not_exists(true)
                .chunk(PART_SIZE)
                .concurrent(PARTS_IN_FLIGHT)
                .into_future(),
        );
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(false),
            Err(e) => Err(storage_err(&format!("writing {name}"), e)),
        }
    }

    /// Make every write so far durable. The fs backend syncs each object's data before linking
    /// it into place, but a new name is only durable once its directory is synced: without this,
    /// a power loss could keep a snapshot while losing a pack it needs. Called at each commit
    /// point. Object stores acknowledge a write only once it is durable.
    ///
    /// # Errors
    /// When a directory cannot be synced.
    pub fn sync(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        let Location::Local(root) = &self.location else {
            return Ok(());
        };
        for d in dirs {
            let p = root.join(&d);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(p.display(), e))?;
        }
        Ok(())
    }

    /// Whether an object exists.
    ///
    /// # Errors
    /// A storage error.
    pub fn exists(&self, name: &str) -> Result<bool> {
        self.rt
            .block_on(self.op.exists(name))
            .map_err(|e| storage_err(&format!("checking {name}"), e))
    }

    /// Size of an object.
    ///
    /// # Errors
    /// `Missing` when absent, else a storage error.
    pub fn size(&self, name: &str) -> Result<u64> {
        self.rt
            .block_on(self.op.stat(name))
            .map(|m| m.content_length())
            .map_err(|e| storage_err(&format!("reading {name}"), e))
    }

    /// Delete an object (deleting a missing object succeeds).
    ///
    /// # Errors
    /// A storage error, including a refusal by the store (an object under retention).
    pub fn delete(&self, name: &str) -> Result<()> {
        if let Some(c) = &self.cache {
            c.remove(name);
        }
        self.rt
            .block_on(self.op.delete(name))
            .map_err(|e| storage_err(&format!("deleting {name}"), e))
    }

    /// Move object `name` to `to` (a damaged pack out of `data/`, kept where no restore reads it):
    /// a rename, synced, in a local store; in S3 a server-side copy, then the deletion. Either
    /// way no moment has neither, and the bytes never pass through this process.
    ///
    /// # Errors
    /// `Missing` when `name` is absent, else a storage error.
    pub fn set_aside(&self, name: &str, to: &str) -> Result<()> {
        if let Some(c) = &self.cache {
            c.remove(name);
        }
        let Location::Local(root) = &self.location else {
            self.rt
                .block_on(self.op.copy(name, to))
                .map_err(|e| storage_err(&format!("copying {name} to {to}"), e))?;
            return self.delete(name);
        };
        let (from_path, to_path) = (root.join(name), root.join(to));
        let local = |e: std::io::Error| -> Error {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(ErrorKind::Missing, format!("{name} is not stored"))
            } else {
                Error::new(ErrorKind::Storage, format!("moving {name} to {to}: {e}"))
            }
        };
        if let Some(dir) = to_path.parent() {
            std::fs::create_dir_all(dir).map_err(local)?;
        }
        std::fs::rename(&from_path, &to_path).map_err(local)?;
        // Both names change: the new one (in a directory that may be new itself), then the old.
        let parent = |s: &str| s.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        self.dirty
            .lock()
            .expect("dirty lock")
            .extend([parent(to), String::new(), parent(name)]);
        self.sync()
    }

    /// The ids of the objects under a prefix (`keys/`, `snapshots/`, `index/`, `data/`), recursively.
    /// Names that are not ids (temporary files, strays) are skipped.
    ///
    /// # Errors
    /// A storage error.
    pub fn list_ids(&self, prefix: &str) -> Result<Vec<Id>> {
        let mut ids: Vec<Id> = self
            .list(prefix)?
            .into_iter()
            .filter_map(|(name, _)| name.rsplit('/').next()?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Every stored pack (`data/`): its id and size, from one listing (not a request per pack).
    /// Names that are not ids are skipped.
    ///
    /// # Errors
    /// A storage error.
    pub fn list_packs(&self) -> Result<Vec<(Id, u64)>> {
        Ok(self
            .list(names::DATA)?
            .into_iter()
            .filter_map(|(name, size)| Some((name.rsplit('/').next()?.parse().ok()?, size)))
            .collect())
    }

    /// Every object under a prefix, recursively: its name relative to the repository and its size.
    ///
    /// # Errors
    /// A storage error.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let entries = self
            .rt
            .block_on(self.op.list_with(prefix).recursive(true).into_future())
            .or_else(|e| {
                if e.kind() == opendal::ErrorKind::NotFound {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| storage_err(&format!("listing {prefix}"), e))?;
        Ok(entries
            .iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| (e.path().to_owned(), e.metadata().content_length()))
            .collect())
    }
}

fn tmp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}
