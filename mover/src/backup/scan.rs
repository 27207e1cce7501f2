//! Scanners: the system calls and decoding of a walk, done on other threads ahead of the walker.
//!
//! A scanner lists a directory, stats its entries and decodes its tree in the parent snapshot, so
//! the walk of a large tree (all of an unchanged re-backup) is not one thread's work. Of a huge
//! directory it does the first `SCAN_WINDOW` entries; the walker then hands it the next window
//! of entries while it visits the current one, so the directory is walked in parallel too, and
//! memory holds its names, not a stat and a parent node of each entry.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::exclude::Excludes;
use crate::fsmeta::{self, DirNames};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, TreeEntries};

/// Directories scanned ahead of the walker at most (each holds an open directory; fewer when the
/// open-file limit is low), and entries in them at most (each costs about 200 bytes until the
/// walker visits it). Scanners take directories in the order the walker found them, so it may
/// wait on a deep one while they scan its parent's later siblings; the room keeps them busy
/// meanwhile.
pub(super) const SCAN_AHEAD_DIRS: usize = 256;
pub(super) const SCAN_AHEAD_PER_DIR: usize = 16;
/// Handing a directory to a scanner costs about what listing and stat'ing a dozen entries does, so
/// once the walk has seen `SCAN_AHEAD_WARMUP` directories it scans ahead only while they hold this
/// many entries on average (a tree of tiny directories was a sixth slower walked in parallel).
pub(super) const SCAN_AHEAD_MIN_AVG: usize = 12;
pub(super) const SCAN_AHEAD_WARMUP: usize = 32;
const SCAN_AHEAD_ENTRIES: usize = 128 << 10;

/// Entries of a directory stat'ed, and entries of its parent tree decoded, by one scan or window:
/// each costs about 500 bytes until the walker visits it (a stat and a parent node), so a huge
/// directory holds at most two windows of them, the walker's and the next.
pub(super) const SCAN_WINDOW: usize = 8 << 10;

/// A directory listed, the first `SCAN_WINDOW` of its entries stat'ed and its tree in the parent
/// snapshot opened.
pub(super) struct Scanned<'r> {
    pub fd: OwnedFd,
    pub entries: std::io::Result<Listing>,
    pub ptree: Option<ParentDir<'r>>,
}

pub(super) struct Listing {
    /// Sorted by name.
    pub names: DirNames,
    /// Stats of the first `SCAN_WINDOW` names (an entry that could not be stat'ed keeps its
    /// error), taken by the walker when it visits each.
    pub stats: Vec<Option<std::io::Result<rustix::fs::Stat>>>,
}

/// A directory's entries in the parent snapshot, taken in name order as the walk reaches them.
/// Its tree's blobs are read, and its entries decoded, as the walk goes: a scanner decodes the
/// first `SCAN_WINDOW`, then each window's entries, never more than two windows ahead of the walk.
pub(super) struct ParentDir<'r> {
    /// Decoded and not yet passed by the walk, sorted by name.
    ahead: VecDeque<Node>,
    /// The entries after those; `None` once they ran out or failed to decode, or while lent.
    rest: Option<TreeEntries<'r>>,
    /// `rest` is with a scanner, decoding the next window's entries.
    lent: bool,
}

impl<'r> ParentDir<'r> {
    /// The tree made of blobs `ids`, its first `SCAN_WINDOW` entries decoded; `None` when it
    /// cannot be read (everything in the directory is then read in full).
    fn open(repo: &'r Repository, ids: &[Id]) -> Option<Self> {
        let rest = repo
            .read_tree_entries(ids)
            .map_err(|e| tracing::warn!("a directory of the parent snapshot is unreadable: {e}"))
            .ok()?;
        let mut p = Self {
            ahead: VecDeque::new(),
            rest: Some(rest),
            lent: false,
        };
        while p.ahead.len() < SCAN_WINDOW && p.decode_next() {}
        Some(p)
    }

    /// A tree decoded whole.
    pub fn whole(tree: crate::tree::Tree) -> Self {
        Self {
            ahead: tree.nodes.into(),
            rest: None,
            lent: false,
        }
    }

    /// Decode one more entry; `false` when there are no more (or they are lent).
    fn decode_next(&mut self) -> bool {
        match next_entry(&mut self.rest) {
            Some(n) => {
                self.ahead.push_back(n);
                true
            }
            None => false,
        }
    }

    /// The entry `name`: names must be asked for in increasing order, each at most once.
    pub fn take(&mut self, name: &[u8]) -> Option<Node> {
        loop {
            if self.ahead.is_empty() && !self.decode_next() {
                return None;
            }
            match self.ahead[0].name.as_slice().cmp(name) {
                std::cmp::Ordering::Less => drop(self.ahead.pop_front()),
                std::cmp::Ordering::Equal => return self.ahead.pop_front(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// The tree blobs of sub-directory `name`, further on than the walk.
    pub fn subtree_ahead(&mut self, name: &[u8]) -> Ahead {
        while self.ahead.back().is_none_or(|n| n.name.as_slice() < name)
            && self.ahead.len() < SCAN_WINDOW
            && self.decode_next()
        {}
        match self.ahead.binary_search_by(|n| n.name.as_slice().cmp(name)) {
            Ok(i) => {
                let n = &self.ahead[i];
                Ahead::Known((n.kind() == NodeKind::Dir).then(|| n.subtree.clone()))
            }
            Err(i) if i < self.ahead.len() || (self.rest.is_none() && !self.lent) => {
                Ahead::Known(None)
            }
            Err(_) => Ahead::NotYet,
        }
    }

    /// Decode the entries the walk needs for the names `names[range]` (and one past them), and
    /// hand the entries after those to a scanner.
    fn lend(&mut self, names: &DirNames, range: Range<usize>) -> Option<TreeEntries<'r>> {
        decode_for(&mut self.rest, &mut self.ahead, names, range);
        let rest = self.rest.take();
        self.lent = rest.is_some();
        rest
    }

    /// Take back what a scanner decoded, and the entries after those.
    fn give_back(&mut self, decoded: VecDeque<Node>, rest: Option<TreeEntries<'r>>) {
        self.ahead.extend(decoded);
        self.rest = rest;
        self.lent = false;
    }
}

/// The next entry of a parent tree. A damaged entry ends the entries: the ones after it are read
/// in full, as new.
fn next_entry(rest: &mut Option<TreeEntries<'_>>) -> Option<Node> {
    match rest.as_mut()?.next() {
        Some(Ok(n)) => return Some(n),
        Some(Err(e)) => tracing::warn!(
            "a directory of the parent snapshot is damaged, entries after it are read in full: {e}"
        ),
        None => {}
    }
    *rest = None;
    None
}

/// Decode parent entries into `out` until one sorts after `names[range]` (it is kept too): a
/// merge over the sorted names that keeps only the entries named there, so the parent's entries
/// the directory no longer has cost no memory, however many.
fn decode_for(
    rest: &mut Option<TreeEntries<'_>>,
    out: &mut VecDeque<Node>,
    names: &DirNames,
    range: Range<usize>,
) {
    let Some(last) = range.end.checked_sub(1).map(|i| names.name(i)) else {
        return;
    };
    if out.back().is_some_and(|n| n.name.as_slice() > last) {
        return;
    }
    let mut j = range.start;
    while let Some(n) = next_entry(rest) {
        while j < range.end && names.name(j) < n.name.as_slice() {
            j += 1;
        }
        if j == range.end {
            out.push_back(n);
            return;
        }
        if names.name(j) == n.name.as_slice() {
            out.push_back(n);
        }
    }
}

/// What [`ParentDir::subtree_ahead`] found.
pub(super) enum Ahead {
    /// The parent's tree blobs of the directory (`None`: the parent has no such directory).
    Known(Option<Vec<Id>>),
    /// Not known within `SCAN_WINDOW` entries of the walk.
    NotYet,
}

pub(super) enum ScanJob<'r> {
    /// List and scan a directory.
    Dir {
        fd: OwnedFd,
        /// The directory's tree in the parent snapshot.
        subtree: Option<Vec<Id>>,
        /// Its absolute path, when patterns need it.
        path: Option<Vec<u8>>,
        reply: Sender<Scanned<'r>>,
    },
    /// Stat entries `range` of a directory the walker is in.
    Stats {
        /// The directory (a duplicate of the walker's descriptor).
        fd: OwnedFd,
        names: Arc<DirNames>,
        range: Range<usize>,
        reply: Sender<Stats>,
    },
    /// Decode the parent entries of entries `range` of a directory the walker is in (on another
    /// scanner than their stats: decoding is about as much work).
    Parent {
        names: Arc<DirNames>,
        range: Range<usize>,
        rest: TreeEntries<'r>,
        reply: Sender<Decoded<'r>>,
    },
}

type Stats = Vec<Option<std::io::Result<rustix::fs::Stat>>>;

/// Parent entries decoded for a window, and the entries after those.
pub(super) struct Decoded<'r> {
    nodes: VecDeque<Node>,
    rest: Option<TreeEntries<'r>>,
}

fn stats(dir: BorrowedFd<'_>, names: &DirNames, range: Range<usize>) -> Stats {
    range
        .map(|i| Some(fsmeta::stat_at(dir, names.name(i))))
        .collect()
}

fn decode<'r>(names: &DirNames, range: Range<usize>, rest: TreeEntries<'r>) -> Decoded<'r> {
    let mut rest = Some(rest);
    let mut nodes = VecDeque::new();
    decode_for(&mut rest, &mut nodes, names, range);
    Decoded { nodes, rest }
}

/// Scans sent to the scanners and not yet received by the walker, and their entries.
pub(super) struct ScansAhead {
    max_dirs: AtomicUsize,
    pub dirs: AtomicUsize,
    entries: AtomicUsize,
}

impl ScansAhead {
    /// Room for `SCAN_AHEAD_DIRS` directories, or a quarter of the open-file limit: the rest is
    /// left for the walk's own path, the files being read and the repository.
    pub fn new() -> Self {
        Self {
            max_dirs: AtomicUsize::new((fsmeta::open_file_limit() / 4).min(SCAN_AHEAD_DIRS)),
            dirs: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
        }
    }

    pub fn room(&self) -> bool {
        self.dirs.load(Ordering::Relaxed) < self.max_dirs.load(Ordering::Relaxed)
            && self.entries.load(Ordering::Relaxed) < SCAN_AHEAD_ENTRIES
    }

    /// The process ran out of file descriptors: scan half as many directories ahead from now on
    /// (each holds one until the walker reaches it).
    pub fn out_of_descriptors(&self) {
        let _ = self
            .max_dirs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| Some(m / 2));
    }

    /// The walker received (or gave up on) one scan.
    pub fn taken(&self, s: Option<&Scanned<'_>>) {
        self.dirs.fetch_sub(1, Ordering::Relaxed);
        if let Some(Ok(e)) = s.map(|s| &s.entries) {
            self.entries.fetch_sub(e.names.len(), Ordering::Relaxed);
        }
    }
}

/// List directory `fd` (at absolute `path`, when `excludes` need it) and leave out what
/// `excludes` say, stat its first `SCAN_WINDOW` entries and open its parent tree `subtree`.
pub(super) fn scan<'r>(
    repo: &'r Repository,
    fd: OwnedFd,
    subtree: Option<&[Id]>,
    excludes: Option<&Excludes>,
    path: &[u8],
) -> Scanned<'r> {
    // Listing takes a descriptor of its own.
    let entries =
        fsmeta::waiting_for_descriptors(|| {}, || fsmeta::read_dir(fd.as_fd())).map(|mut names| {
            if let Some(x) = excludes {
                x.listing(fd.as_fd(), path, &mut names);
            }
            let stats = (0..names.len().min(SCAN_WINDOW))
                .map(|i| Some(fsmeta::stat_at(fd.as_fd(), names.name(i))))
                .collect();
            Listing { names, stats }
        });
    let ptree = subtree.and_then(|ids| ParentDir::open(repo, ids));
    Scanned { fd, entries, ptree }
}

/// A scanner thread: do the jobs until the walker hangs up.
pub(super) fn scanner<'r>(
    repo: &'r Repository,
    jobs: &Receiver<ScanJob<'r>>,
    ahead: &ScansAhead,
    excludes: Option<&Excludes>,
) {
    for job in jobs {
        // Replies are not received only after the walk failed.
        match job {
            ScanJob::Dir {
                fd,
                subtree,
                path,
                reply,
            } => {
                let path = path.as_deref().unwrap_or_default();
                let s = scan(repo, fd, subtree.as_deref(), excludes, path);
                if let Ok(e) = &s.entries {
                    ahead.entries.fetch_add(e.names.len(), Ordering::Relaxed);
                }
                let _ = reply.send(s);
            }
            ScanJob::Stats {
                fd,
                names,
                range,
                reply,
            } => {
                let _ = reply.send(stats(fd.as_fd(), &names, range));
            }
            ScanJob::Parent {
                names,
                range,
                rest,
                reply,
            } => {
                let _ = reply.send(decode(&names, range, rest));
            }
        }
    }
}

/// The walker's place in a directory's windows: the stats of the window it is in, and the next
/// window, being scanned.
pub(super) struct Windows<'r> {
    names: Arc<DirNames>,
    /// The first entry of the current window.
    base: usize,
    stats: Stats,
    next_stats: Option<Receiver<Stats>>,
    next_parent: Option<Receiver<Decoded<'r>>>,
}

impl<'r> Windows<'r> {
    /// The first window, stat'ed by the scan; the second is sent to the scanners at once.
    pub fn start(
        names: Arc<DirNames>,
        stats: Stats,
        dir: BorrowedFd<'_>,
        ptree: Option<&mut ParentDir<'r>>,
        scans: &Sender<ScanJob<'r>>,
    ) -> Self {
        let mut w = Self {
            names,
            base: 0,
            stats,
            next_stats: None,
            next_parent: None,
        };
        w.send_next(dir, ptree, scans);
        w
    }

    /// Whether `stat(i)` starts a new window, and so may wait for the scanners: to receive the
    /// window, or to send them the next one.
    pub fn next_window_at(&self, i: usize) -> bool {
        i >= self.base + SCAN_WINDOW && self.next_stats.is_some()
    }

    /// The stat of entry `i` if a scanner took it (`i` only grows): at the start of each window
    /// its stats and parent entries are received, and the window after it is sent.
    pub fn stat(
        &mut self,
        i: usize,
        dir: BorrowedFd<'_>,
        mut ptree: Option<&mut ParentDir<'r>>,
        scans: &Sender<ScanJob<'r>>,
    ) -> Option<std::io::Result<rustix::fs::Stat>> {
        if i >= self.base + SCAN_WINDOW
            && let Some(rx) = self.next_stats.take()
        {
            // A scanner that died (only a panic ends one early) leaves the stats to the walker,
            // and the parent's entries from there on are read in full, as new.
            let end = (i + SCAN_WINDOW).min(self.names.len());
            self.stats = rx
                .recv()
                .unwrap_or_else(|_| stats(dir, &self.names, i..end));
            self.base = i;
            if let Some(p) = ptree.as_deref_mut()
                && let Some(rx) = self.next_parent.take()
            {
                match rx.recv() {
                    Ok(d) => p.give_back(d.nodes, d.rest),
                    Err(_) => p.give_back(VecDeque::new(), None),
                }
            }
            self.send_next(dir, ptree, scans);
        }
        self.stats.get_mut(i.checked_sub(self.base)?)?.take()
    }

    /// Send the window after the current one to the scanners, lending them the parent's entries
    /// past the current window's.
    fn send_next(
        &mut self,
        dir: BorrowedFd<'_>,
        ptree: Option<&mut ParentDir<'r>>,
        scans: &Sender<ScanJob<'r>>,
    ) {
        let start = self.base + SCAN_WINDOW;
        if start >= self.names.len() {
            return;
        }
        let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else {
            tracing::debug!("out of file descriptors: the walker stats the rest of a directory");
            return;
        };
        let range = start..(start + SCAN_WINDOW).min(self.names.len());
        let (reply, rx) = crossbeam_channel::bounded(1);
        let job = ScanJob::Stats {
            fd,
            names: Arc::clone(&self.names),
            range: range.clone(),
            reply,
        };
        if scans.send(job).is_err() {
            // The scanners stopped (only a panic stops them early): the walker does the rest.
            return;
        }
        self.next_stats = Some(rx);
        if let Some(rest) = ptree.and_then(|p| p.lend(&self.names, self.base..start)) {
            let (reply, rx) = crossbeam_channel::bounded(1);
            let job = ScanJob::Parent {
                names: Arc::clone(&self.names),
                range,
                rest,
                reply,
            };
            // A job not sent takes the lent entries with it: the rest of the parent's entries
            // are then read in full, as new.
            if scans.send(job).is_ok() {
                self.next_parent = Some(rx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walker's windows over a directory of more than two windows. With a scanner, every
    /// entry past the first window comes stat'ed by it, each with its own stat. With none to
    /// take the next window (the scanners stopped, or no descriptor was left to hand them),
    /// `stat` gives `None` from there on, and the walker stats each entry itself: no entry is
    /// skipped or given another's stat either way.
    #[test]
    fn windows_leave_the_rest_to_the_walker_when_no_scanner_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let n = SCAN_WINDOW * 2 + 100;
        for i in 0..n {
            std::fs::write(dir.path().join(format!("e{i:06}")), b"").unwrap();
        }
        let fd = fsmeta::open_dir_path(dir.path()).unwrap();
        let names = Arc::new(fsmeta::read_dir(fd.as_fd()).unwrap());
        assert_eq!(names.len(), n);
        let ino = |i: usize| fsmeta::stat_at(fd.as_fd(), names.name(i)).unwrap().st_ino;
        let first = || stats(fd.as_fd(), &names, 0..SCAN_WINDOW);

        // No scanner.
        let (tx, rx) = crossbeam_channel::bounded::<ScanJob<'static>>(4);
        drop(rx);
        let mut w = Windows::start(Arc::clone(&names), first(), fd.as_fd(), None, &tx);
        for i in 0..n {
            match w.stat(i, fd.as_fd(), None, &tx) {
                Some(st) if i < SCAN_WINDOW => assert_eq!(st.unwrap().st_ino, ino(i)),
                None if i >= SCAN_WINDOW => {}
                other => panic!("entry {i}: {:?}", other.map(|s| s.map(|s| s.st_ino))),
            }
        }

        // A scanner.
        let (tx, rx) = crossbeam_channel::bounded::<ScanJob<'static>>(4);
        std::thread::scope(|s| {
            s.spawn(move || {
                for job in rx {
                    let ScanJob::Stats {
                        fd,
                        names,
                        range,
                        reply,
                    } = job
                    else {
                        panic!("only stats are asked for without a parent snapshot");
                    };
                    let _ = reply.send(stats(fd.as_fd(), &names, range));
                }
            });
            let mut w = Windows::start(Arc::clone(&names), first(), fd.as_fd(), None, &tx);
            for i in 0..n {
                let st = w.stat(i, fd.as_fd(), None, &tx);
                assert_eq!(st.expect("stat'ed").unwrap().st_ino, ino(i), "entry {i}");
            }
            drop(tx);
        });
    }
}
