//! `copy`: an incremental export of snapshots into another repository (offsite).
//!
//! The target has its own master secret, so the same bytes have a different blob id there
//! (ids are keyed hashes) and trees must be rewritten with the target's ids. Data chunks keep their
//! boundaries: each is read from the source once, its target id computed, and it is sent only
//! when the target lacks it. Three things keep a repeated copy cheap:
//!
//! - a copied snapshot records its source id (`original`), so it is never copied twice;
//! - a snapshot whose parent was copied before maps the parent's chunks through the two trees
//!   (files alike in everything but their chunk ids), so unchanged files cost no reads; so does
//!   one made from a copied snapshot by `tag` or `repair snapshots` (its `original`);
//! - chunks met earlier in the same run are mapped from memory.
//!
//! Each snapshot is committed like a backup (packs, index, then the snapshot), so an interrupted
//! copy leaves the target consistent and the next run resumes, re-sending at most the unindexed
//! packs of the snapshot it was copying.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;

use crate::backend::{PendingRead, names};
use crate::chunker::Chunker;
use crate::crypto::ObjectKind;
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{Index, PackInfo};
use crate::pack::BlobEntry;
use crate::repo::Repository;
use crate::sink::{BlobSink, Sink};
use crate::snapshot::Snapshot;
use crate::status::RunStatus;
use crate::tree::{Node, TreeWriter};

/// Most bytes of source blobs (as stored) in one job: a worker starts a job's reads together.
const JOB_BYTES: u64 = 4 << 20;
/// Most blobs in one job (a directory of tiny files).
const JOB_BLOBS: usize = 1024;
/// Most bytes one read of neighbouring blobs spans.
const MAX_READ: u64 = 4 << 20;
/// Stored packs are indexed once the oldest unindexed one is this old, so an interrupted copy
/// loses at most a few seconds of transfer: the next run finds the rest in the index.
const INDEX_AFTER: std::time::Duration = std::time::Duration::from_secs(3);
/// Walk events queued for the tree builder.
const EVENTS: usize = 4096;

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Snapshots written to the target.
    pub snapshots_copied: u64,
    /// Snapshots the target already had.
    pub snapshots_skipped: u64,
    /// Bytes stored in the target (packs, index objects, snapshots).
    pub bytes_transferred: u64,
    /// Blobs stored in the target.
    pub blobs_transferred: u64,
    /// Bytes of source blobs read.
    pub bytes_read: u64,
    /// Source id → target id of each snapshot copied by this run.
    pub copied: Vec<(Id, Id)>,
    /// Source snapshots that were to be copied but are damaged (they do not authenticate or
    /// decode): not copied, and the others are.
    pub damaged: Vec<(Id, String)>,
}

/// What is known of a source data blob.
#[derive(Clone, Copy)]
enum Mapped {
    /// Its target id.
    To(Id),
    /// Being copied by the job with this number (of the snapshot being copied).
    InJob(u64),
}

/// Source data chunks → what is known of them, by their position in the source index: 4 bytes
/// a source chunk, plus 32 for each mapped one (its target id, in fixed blocks that never move).
/// A `HashMap<Id, Mapped>` took about 100 bytes a mapped chunk, and half as much again while
/// it grew. Chunks in a job are few at a time (those of the jobs the builder has not taken yet),
/// so they live in a small map of their own, which takes precedence.
struct ChunkMap {
    /// 0: no target known; `n + 1`: the target id is the `n`th.
    slots: Vec<u32>,
    targets: Vec<Vec<Id>>,
    in_job: HashMap<u32, u64>,
}

/// Target ids per block: 512 KiB.
const TARGET_BLOCK: usize = 1 << 14;

impl ChunkMap {
    fn new(index: &Index) -> Self {
        Self {
            // Zeroed pages are only touched as chunks are mapped.
            slots: vec![0; index.len()],
            targets: Vec::new(),
            in_job: HashMap::new(),
        }
    }

    /// What is known of the source chunk at index position `pos`.
    fn get(&self, pos: u32) -> Option<Mapped> {
        if let Some(&k) = self.in_job.get(&pos) {
            return Some(Mapped::InJob(k));
        }
        let n = self.slots[pos as usize].checked_sub(1)? as usize;
        Some(Mapped::To(self.targets[n / TARGET_BLOCK][n % TARGET_BLOCK]))
    }

    /// Record what is known of the source chunk at index position `pos`.
    fn set(&mut self, pos: u32, m: Mapped) {
        let t = match m {
            Mapped::InJob(k) => {
                self.in_job.insert(pos, k);
                return;
            }
            Mapped::To(t) => t,
        };
        self.in_job.remove(&pos);
        let slot = &mut self.slots[pos as usize];
        if let Some(n) = slot.checked_sub(1) {
            let n = n as usize;
            self.targets[n / TARGET_BLOCK][n % TARGET_BLOCK] = t;
            return;
        }
        if self.targets.last().is_none_or(|b| b.len() == TARGET_BLOCK) {
            self.targets.push(Vec::with_capacity(TARGET_BLOCK));
        }
        let n = (self.targets.len() - 1) * TARGET_BLOCK + self.targets.last().map_or(0, Vec::len);
        // No more targets than source chunks, whose positions are u32.
        *slot = u32::try_from(n + 1).expect("fewer than 2^32 - 1 chunks in one index");
        self.targets.last_mut().expect("a block with room").push(t);
    }
}

/// A source blob's target id is the keyed hash of its plaintext under the target's key, so
/// every blob the target lacks is read, opened, hashed and (when new there) compressed and
/// sealed again: the work of a backup, spread the same way.
///
/// ```text
/// walker (source trees, in order) ──jobs of chunks──▶ workers ×N (read runs of neighbouring
///    │                                                 blobs, open, target id, dedup, compress,
///    │                                                 seal into the shared data pack) ─┐
///    │                                 job results (one-shot, source → target ids)      │
///    └──events (walk order)──▶ tree builder (target trees → tree pack) ──────────────────┤
///                                                                                        ▼
///                                                   uploaders: packs, then index objects
/// ```
/// A worker starts the reads of its next job before working on the current one, so a remote
/// source keeps requests in flight while the cores work.
struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    threads: usize,
    /// Source data chunk → what is known of it.
    data: Mutex<ChunkMap>,
    /// Source tree blob ids → target tree blob ids.
    trees: Mutex<HashMap<Vec<Id>, Vec<Id>>>,
    bytes_read: AtomicU64,
    /// Target packs the copies reuse (their Object Lock retention is extended).
    used_packs: Mutex<HashSet<Id>>,
    /// The target's tree chunker.
    chunker: Chunker,
}

/// A job's answer: each chunk's position in the source index and its target id. A job that
/// failed has no answer (its worker recorded the error).
type Answer = Vec<(u32, Id)>;

/// Chunks a worker copies, by their position in the source index; it answers with each one's
/// target id.
struct Job {
    chunks: Vec<u32>,
    bytes: u64,
    reply: Sender<Answer>,
}

/// Content ids still to map: (place in the content, position in the source index).
type Pending = Vec<(usize, u32)>;

/// A tree entry on its way to the builder: its content ids are target ids except at `pending`,
/// which the jobs up to number `after` map.
struct Entry {
    node: Node,
    pending: Pending,
    after: Option<u64>,
}

enum Event {
    /// The next job's answer.
    Job(Receiver<Answer>),
    /// A directory whose tree is rewritten: its entries follow, then `Exit`.
    Enter(Entry),
    Exit,
    /// Anything else (a directory whose tree the target already has, too).
    Entry(Entry),
}

fn aborted() -> Error {
    Error::new(ErrorKind::Storage, "copy aborted")
}

impl Copier<'_> {
    /// The target tree of source tree `ids`, when the target has it all already.
    fn known_tree(&self, sink: &Sink<'_>, ids: &[Id]) -> Option<Vec<Id>> {
        let t = self.trees.lock().expect("trees lock").get(ids).cloned()?;
        t.iter().all(|i| sink.has(i)).then_some(t)
    }

    /// Copy the tree made of source blobs `root`, and everything under it; returns the target's.
    fn copy_tree(&self, sink: &Sink<'_>, root: &[Id]) -> Result<Vec<Id>> {
        if let Some(t) = self.known_tree(sink, root) {
            self.use_packs(&t);
            return Ok(t);
        }
        let status = RunStatus::default();
        let (job_tx, job_rx) = bounded::<Job>(self.threads * 2);
        let (ev_tx, ev_rx) = bounded::<Event>(EVENTS);
        let mut out = None;
        std::thread::scope(|s| {
            let status = &status;
            let uploaders = sink.start_uploaders(s, status);
            let workers: Vec<_> = (0..self.threads)
                .map(|_| {
                    let job_rx = job_rx.clone();
                    s.spawn(move || {
                        self.work(sink, &job_rx, status);
                        // After a failure: the walker never blocks.
                        for _ in &job_rx {}
                    })
                })
                .collect();
            drop(job_rx);
            let builder = s.spawn(move || {
                let r = self.build(sink, &ev_rx, status);
                let tree = match r {
                    Ok(t) => Some(t),
                    Err(e) => {
                        // Failed first, so the walker stops; then drained, so it never blocks.
                        status.fail(e);
                        for _ in &ev_rx {}
                        None
                    }
                };
                // Close the tree side of the upload queue even after an error.
                if let Err(e) = sink.tree.finish() {
                    status.fail(e);
                }
                tree
            });
            let mut w = Walker {
                c: self,
                sink,
                status,
                jobs: job_tx,
                events: ev_tx,
                job: None,
                jobs_opened: 0,
            };
            if let Err(e) = w.dir(root).and_then(|()| w.dispatch()) {
                status.fail(e);
            }
            drop(w);
            for w in workers {
                w.join().expect("copy worker panicked");
            }
            if let Err(e) = sink.data.finish() {
                status.fail(e);
            }
            out = builder.join().expect("tree builder panicked");
            for u in uploaders {
                if let Err(e) = u.join().expect("uploader panicked") {
                    status.fail(e);
                }
            }
            if !status.failed()
                && let Err(e) = sink.write_index()
            {
                status.fail(e);
            }
        });
        status.finish()?;
        let t = out.expect("tree built when nothing failed");
        self.use_packs(&t);
        Ok(t)
    }

    /// Remember the target packs of `ids` (Object Lock only).
    fn use_packs(&self, ids: &[Id]) {
        if self.dst.store().lock().is_none() {
            return;
        }
        let mut used = self.used_packs.lock().expect("used packs");
        for id in ids {
            if let Some(l) = self.dst.index().get(id) {
                used.insert(l.pack.id);
            }
        }
    }

    /// Copy the chunks of the jobs that come: one job's reads are started while the one before
    /// is worked on. An error is recorded while the job's answer is still owed, so the builder,
    /// which then finds no answer, does not report its own "aborted" in its place.
    fn work(&self, sink: &Sink<'_>, jobs: &Receiver<Job>, status: &RunStatus) {
        let mut puts = match BlobSink::new(sink, &sink.data) {
            Ok(p) => p,
            Err(e) => return status.fail(e),
        };
        let ahead = self.src.store().is_remote();
        let start = |j: Job| (self.start(&j.chunks), j.reply);
        let mut next = None;
        loop {
            let (runs, reply) = match next.take() {
                Some(started) => started,
                None => match jobs.recv() {
                    Ok(j) => start(j),
                    Err(_) => return,
                },
            };
            if ahead && let Ok(j) = jobs.try_recv() {
                next = Some(start(j));
            }
            if status.failed() {
                return;
            }
            let mut out = Vec::new();
            let r = runs
                .into_iter()
                .try_for_each(|run| self.copy_run(run, &mut puts, &mut out));
            match r {
                // The builder may have stopped; it reports why.
                Ok(()) => drop(reply.send(out)),
                Err(e) => return status.fail(e),
            }
        }
    }

    /// Start reading a job's blobs: sorted by pack and offset, neighbours in one read.
    fn start(&self, chunks: &[u32]) -> Vec<Run<'_>> {
        let index = self.src.index();
        let mut locs: Vec<_> = chunks.iter().map(|&p| (p, index.at(p))).collect();
        locs.sort_unstable_by_key(|(_, l)| (l.pack.id, l.entry.offset));
        // Read over gaps of unwanted blobs: a round trip costs more than a few hundred KiB on a
        // remote store. Not more: the blobs between are often another job's (workers share
        // packs), read by that job too.
        let gap = if self.src.store().is_remote() {
            256 << 10
        } else {
            32 << 10
        };
        let mut runs = Vec::new();
        let mut rest = &locs[..];
        while !rest.is_empty() {
            let n = crate::index::run_len(rest.iter().map(|(_, l)| l), gap, MAX_READ);
            let (run, tail) = rest.split_at(n);
            let first = run[0].1;
            let start = first.span().0;
            let end = run.iter().map(|(_, l)| l.span().1).max().unwrap_or(start);
            let name = names::pack(&first.pack.id);
            runs.push(Run {
                read: self.src.store().start_read(&name, start, end - start),
                name,
                pack: first.pack,
                start,
                blobs: run.iter().map(|&(p, l)| (p, l.entry)).collect(),
            });
            rest = tail;
        }
        runs
    }

    /// Open each blob of a run, and store it in the target unless it has it.
    fn copy_run(&self, run: Run<'_>, puts: &mut BlobSink<'_>, out: &mut Answer) -> Result<()> {
        let Run {
            read,
            name,
            pack,
            start,
            blobs,
        } = run;
        let mut buf = read.wait()?;
        let keys = self.src.keys();
        let cipher = keys.object_cipher(&pack.salt);
        for (pos, e) in &blobs {
            let at = (u64::from(e.offset) - start) as usize;
            let ct = &mut buf[at..at + e.length as usize];
            let plain = match crate::pack::open_blob_in(keys, &cipher, e, ct) {
                Ok(plain) => plain,
                Err(x) => std::borrow::Cow::Owned(
                    self.src
                        .open_again(&name, &pack.salt, e, x)
                        .map_err(|x| x.context(format!("pack {name}")))?,
                ),
            };
            self.bytes_read
                .fetch_add(plain.len() as u64, Ordering::Relaxed);
            out.push((*pos, puts.put(&plain)?));
        }
        Ok(())
    }

    /// Rewrite the trees as the walk's events come, with the target ids the jobs answer.
    fn build(
        &self,
        sink: &Sink<'_>,
        events: &Receiver<Event>,
        status: &RunStatus,
    ) -> Result<Vec<Id>> {
        let mut puts = BlobSink::new(sink, &sink.tree)?;
        let mut answers = Answers {
            c: self,
            waiting: VecDeque::new(),
            received: 0,
        };
        let mut stack: Vec<(Entry, TreeWriter)> = Vec::new();
        let mut root = TreeWriter::default();
        let chunker = &self.chunker;
        for ev in events {
            let node = match ev {
                Event::Job(rx) => {
                    answers.waiting.push_back(rx);
                    continue;
                }
                Event::Enter(e) => {
                    stack.push((e, TreeWriter::default()));
                    continue;
                }
                Event::Exit => {
                    let (e, children) = stack
                        .pop()
                        .ok_or_else(|| Error::invalid("walk events out of order"))?;
                    let mut n = answers.resolve(e)?;
                    let src = std::mem::take(&mut n.subtree);
                    n.subtree = children.finish(chunker, &mut |b| puts.put(b))?;
                    self.trees
                        .lock()
                        .expect("trees lock")
                        .insert(src, n.subtree.clone());
                    n
                }
                Event::Entry(e) => answers.resolve(e)?,
            };
            self.use_packs(&node.content);
            self.use_packs(&node.subtree);
            match stack.last_mut() {
                Some((_, children)) => children.push(chunker, &node, &mut |b| puts.put(b))?,
                None => root.push(chunker, &node, &mut |b| puts.put(b))?,
            }
        }
        if status.failed() {
            return Err(aborted());
        }
        if !stack.is_empty() {
            return Err(Error::invalid("walk ended inside a directory"));
        }
        root.finish(chunker, &mut |b| puts.put(b))
    }

    /// Learn the chunk mapping from a source tree and a target tree copied before: the copy of
    /// the snapshot's parent, or of the snapshot it was made from (by `tag`, `repair
    /// snapshots`). The two are read side by side, an entry at a time, matched by name. A file
    /// whose every field but its chunk ids is the same on both sides (size, times, inode,
    /// holes, `repaired`…) holds the same bytes, so its chunks map position by position; a
    /// directory maps to the target's tree only when everything under it does. Trees that
    /// differ somewhere teach less, never something wrong. Only trees are read.
    fn learn(&mut self, src_tree: &[Id], dst_tree: &[Id]) -> Result<()> {
        // Depth first with a stack of its own (trees can be deeper than a thread's stack
        // allows recursion): a directory is settled once everything under it is.
        let mut seen: HashMap<(Vec<Id>, Vec<Id>), bool> = HashMap::new();
        let mut stack = vec![self.learn_dir(src_tree, dst_tree)?];
        while let Some(top) = stack.last_mut() {
            if let Some(pair) = top.subtrees.pop() {
                if let Some(&same) = seen.get(&pair) {
                    top.same &= same;
                } else {
                    let dir = self.learn_dir(&pair.0, &pair.1)?;
                    stack.push(dir);
                }
                continue;
            }
            let done = stack.pop().expect("a directory");
            if done.same {
                self.trees
                    .get_mut()
                    .expect("trees lock")
                    .insert(done.pair.0.clone(), done.pair.1.clone());
            }
            if let Some(parent) = stack.last_mut() {
                parent.same &= done.same;
            }
            seen.insert(done.pair, done.same);
        }
        Ok(())
    }

    /// One directory of [`Copier::learn`]: maps the chunks of its files that match, and returns
    /// its subdirectories still to compare. Its readers are closed when it returns, so one pair
    /// of tree blobs is held at a time, however deep the tree.
    fn learn_dir(&mut self, src: &[Id], dst: &[Id]) -> Result<LearnDir> {
        let mut chunks = Vec::new();
        let mut subtrees = Vec::new();
        let mut same = true;
        {
            let mut st = self.src.read_tree_entries(src)?;
            let mut dt = self.dst.read_tree_entries(dst)?;
            let (mut next_a, mut next_b) = (st.next().transpose()?, dt.next().transpose()?);
            loop {
                let (mut a, mut b) = match (next_a.take(), next_b.take()) {
                    (None, None) => break,
                    (Some(a), Some(b)) if a.name == b.name => (a, b),
                    // An entry only one side has: skipped.
                    (Some(a), Some(b)) => {
                        same = false;
                        if a.name < b.name {
                            (next_a, next_b) = (st.next().transpose()?, Some(b));
                        } else {
                            (next_a, next_b) = (Some(a), dt.next().transpose()?);
                        }
                        continue;
                    }
                    _ => {
                        same = false;
                        break;
                    }
                };
                (next_a, next_b) = (st.next().transpose()?, dt.next().transpose()?);
                let (ac, bc) = (
                    std::mem::take(&mut a.content),
                    std::mem::take(&mut b.content),
                );
                let (asub, bsub) = (
                    std::mem::take(&mut a.subtree),
                    std::mem::take(&mut b.subtree),
                );
                if a != b || ac.len() != bc.len() || asub.is_empty() != bsub.is_empty() {
                    same = false;
                } else {
                    chunks.extend(ac.into_iter().zip(bc));
                }
                // A directory whose own fields changed can still hold unchanged files.
                if !asub.is_empty() && !bsub.is_empty() {
                    subtrees.push((asub, bsub));
                }
            }
        }
        let index = self.src.index();
        let data = self.data.get_mut().expect("data lock");
        // A chunk the source index lacks is not learnt: copying it fails on the lookup.
        for (s, t) in chunks {
            if let Some(pos) = index.position(&s) {
                data.set(pos, Mapped::To(t));
            }
        }
        Ok(LearnDir {
            pair: (src.to_vec(), dst.to_vec()),
            subtrees,
            same,
        })
    }
}

/// A directory [`Copier::learn`] is comparing.
struct LearnDir {
    /// Its source and target trees.
    pair: (Vec<Id>, Vec<Id>),
    /// Its subdirectories' pairs not compared yet.
    subtrees: Vec<(Vec<Id>, Vec<Id>)>,
    /// Whether everything compared so far matched.
    same: bool,
}

/// Neighbouring blobs of one pack, read together from `start`.
struct Run<'s> {
    read: PendingRead<'s>,
    name: String,
    pack: &'s PackInfo,
    start: u64,
    /// Each blob's position in the source index, and its entry.
    blobs: Vec<(u32, BlobEntry)>,
}

/// The builder's side of the jobs: their answers, taken in order as entries need them.
struct Answers<'c, 'a> {
    c: &'c Copier<'a>,
    waiting: VecDeque<Receiver<Answer>>,
    /// Jobs answered so far.
    received: u64,
}

impl Answers<'_, '_> {
    /// The entry's node with target ids only.
    fn resolve(&mut self, e: Entry) -> Result<Node> {
        let Entry {
            mut node,
            pending,
            after,
        } = e;
        if let Some(k) = after {
            while self.received <= k {
                let rx = self
                    .waiting
                    .pop_front()
                    .ok_or_else(|| Error::invalid("copy jobs out of order"))?;
                let pairs = rx.recv().map_err(|_| aborted())?;
                let mut data = self.c.data.lock().expect("data lock");
                for (pos, t) in pairs {
                    data.set(pos, Mapped::To(t));
                }
                self.received += 1;
            }
        }
        if !pending.is_empty() {
            let data = self.c.data.lock().expect("data lock");
            for (i, pos) in pending {
                match data.get(pos) {
                    Some(Mapped::To(t)) => node.content[i] = t,
                    _ => {
                        return Err(Error::invalid(format!(
                            "chunk {} was not copied",
                            node.content[i].short()
                        )));
                    }
                }
            }
        }
        Ok(node)
    }
}

/// Walks the source trees in order, sending the chunks the target may lack to the workers and
/// every entry to the builder.
struct Walker<'w, 'a> {
    c: &'w Copier<'a>,
    sink: &'w Sink<'w>,
    status: &'w RunStatus,
    jobs: Sender<Job>,
    events: Sender<Event>,
    /// The job being filled.
    job: Option<Job>,
    jobs_opened: u64,
}

impl Walker<'_, '_> {
    fn dir(&mut self, ids: &[Id]) -> Result<()> {
        for n in self.c.src.read_tree_entries(ids)? {
            if self.status.failed() {
                return Err(aborted());
            }
            let mut node = n?;
            let (pending, after) = self.map_content(&mut node)?;
            let sub = std::mem::take(&mut node.subtree);
            if sub.is_empty() {
                self.emit(Event::Entry(Entry {
                    node,
                    pending,
                    after,
                }))?;
            } else if let Some(t) = self.c.known_tree(self.sink, &sub) {
                node.subtree = t;
                self.emit(Event::Entry(Entry {
                    node,
                    pending,
                    after,
                }))?;
            } else {
                node.subtree.clone_from(&sub);
                self.emit(Event::Enter(Entry {
                    node,
                    pending,
                    after,
                }))?;
                self.dir(&sub)?;
                self.emit(Event::Exit)?;
            }
        }
        Ok(())
    }

    /// Put target ids in `node`'s content where they are known; the other chunks go to jobs.
    fn map_content(&mut self, node: &mut Node) -> Result<(Pending, Option<u64>)> {
        let index = self.c.src.index();
        let mut pending = Vec::new();
        let mut after = None;
        for i in 0..node.content.len() {
            // The one lookup of the chunk: jobs, answers and the map use its position.
            let pos = index.find_position(&node.content[i])?;
            let known = self.c.data.lock().expect("data lock").get(pos);
            let k = match known {
                Some(Mapped::To(t)) if self.sink.has(&t) => {
                    node.content[i] = t;
                    continue;
                }
                Some(Mapped::InJob(k)) => k,
                _ => self.add(pos)?,
            };
            pending.push((i, pos));
            after = after.max(Some(k));
        }
        Ok((pending, after))
    }

    /// Add the source chunk at index position `pos` to the job being filled; returns the job's
    /// number.
    fn add(&mut self, pos: u32) -> Result<u64> {
        let len = u64::from(self.c.src.index().at(pos).entry.length);
        // A job stays within JOB_BYTES (one larger blob goes alone).
        if self
            .job
            .as_ref()
            .is_some_and(|j| j.chunks.len() >= JOB_BLOBS || j.bytes + len > JOB_BYTES)
        {
            self.dispatch()?;
        }
        if self.job.is_none() {
            let (reply, rx) = bounded(1);
            self.emit(Event::Job(rx))?;
            self.jobs_opened += 1;
            self.job = Some(Job {
                chunks: Vec::new(),
                bytes: 0,
                reply,
            });
        }
        let job = self.job.as_mut().expect("job opened above");
        job.chunks.push(pos);
        job.bytes += len;
        let k = self.jobs_opened - 1;
        self.c
            .data
            .lock()
            .expect("data lock")
            .set(pos, Mapped::InJob(k));
        Ok(k)
    }

    /// Send the job being filled to the workers.
    fn dispatch(&mut self) -> Result<()> {
        match self.job.take() {
            Some(j) => self.jobs.send(j).map_err(|_| aborted()),
            None => Ok(()),
        }
    }

    /// Send an event to the builder. When the queue is full the builder may be waiting for the
    /// job being filled, so that job is sent first.
    fn emit(&mut self, ev: Event) -> Result<()> {
        match self.events.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(ev)) => {
                self.dispatch()?;
                self.events.send(ev).map_err(|_| aborted())
            }
            Err(TrySendError::Disconnected(_)) => Err(aborted()),
        }
    }
}

/// How to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Check every blob stored in the target before it is sealed, as `backup --extra-verify`
    /// does: decompressed again, it must hash to its id.
    pub extra_verify: bool,
}

/// Copy `which` snapshots (all when empty) from `src` to `dst`, oldest first. `dst` must have
/// its index loaded for writing ([`Repository::load_index_for_writing`]), `src` its index.
///
/// # Errors
/// `InvalidInput` for unknown snapshots or copying a repository onto itself; damaged source data
/// (nothing damaged is copied: every blob is authenticated on the way) or storage errors.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    which: &[Id],
    opts: &CopyOptions,
) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(Error::invalid(
            "the source and target are the same repository",
        ));
    }
    let mut report = CopyReport::default();
    // What the target has: source id → target snapshot.
    let mut have: HashMap<Id, (Id, Snapshot)> = HashMap::new();
    for (id, s) in dst.snapshots()? {
        if let Some(o) = s.original {
            have.insert(o, (id, s));
        }
    }
    let all = src.snapshots_readable()?;
    let mut snaps = all.readable;
    report.damaged = all
        .damaged
        .into_iter()
        .map(|(id, e)| (id, e.to_string()))
        .collect();
    if !which.is_empty() {
        let want: HashSet<&Id> = which.iter().collect();
        snaps.retain(|(id, _)| want.contains(id));
        report.damaged.retain(|(id, _)| want.contains(id));
    }
    let mut c = Copier {
        src,
        dst,
        threads: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        data: Mutex::new(ChunkMap::new(src.index())),
        trees: Mutex::new(HashMap::new()),
        bytes_read: AtomicU64::new(0),
        used_packs: Mutex::new(HashSet::new()),
        chunker: dst.chunker(),
    };
    let stored = AtomicU64::new(0);
    let mut sink = Sink::new(dst, &stored)
        .index_every(INDEX_AFTER)
        .verify_blobs(opts.extra_verify);
    for (sid, snap) in snaps {
        if have.contains_key(&sid) {
            report.snapshots_skipped += 1;
            continue;
        }
        // A parent copied by an earlier run: learn its mapping (one copied in this run is
        // already in memory, and its trees are not in the target's loaded index).
        if let Some(p) = snap.parent
            && !report.copied.iter().any(|(s, _)| *s == p)
            && let Some((_, copied)) = have.get(&p)
        {
            let parent = src.load_snapshot(&p);
            match parent {
                Ok(ps) => c.learn(&ps.tree, &copied.tree)?,
                Err(e) if e.kind() == ErrorKind::Missing => {}
                Err(e) => return Err(e),
            }
        }
        // A copied snapshot it was made from (by `tag` or `repair snapshots`, or a copy of the
        // same snapshot from a third repository): its target tree is learnt against this one's.
        if let Some(o) = snap.original
            && !report.copied.iter().any(|(s, _)| *s == o)
            && let Some((_, copied)) = have.get(&o)
        {
            c.learn(&snap.tree, &copied.tree)?;
        }
        let tree = c.copy_tree(&sink, &snap.tree)?;
        sink.reopen();
        // Commit point: the snapshot's blobs are stored and indexed before it appears.
        dst.store().sync()?;
        let mut out = snap.clone();
        out.tree = tree;
        out.parent = snap.parent.and_then(|p| have.get(&p).map(|(t, _)| *t));
        out.original = Some(sid);
        let json = serde_json::to_vec(&out).expect("snapshot serializes");
        let (tid, n) = dst.save_object(ObjectKind::Snapshot, &json)?;
        dst.store().sync()?;
        report.bytes_transferred += n;
        report.snapshots_copied += 1;
        report.copied.push((sid, tid));
        have.insert(sid, (tid, out));
    }
    report.bytes_read = c.bytes_read.load(Ordering::Relaxed);
    report.bytes_transferred += stored.load(Ordering::Relaxed);
    report.blobs_transferred = sink.blobs_added();
    let used = c.used_packs.into_inner().expect("used packs");
    crate::retention::upkeep(dst, &used)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::PackRecord;
    use crate::pack::BlobType;

    fn id(n: u32) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    /// A chunk in a job reads as in that job until its target is set; setting a target again
    /// replaces it in place. Positions name the index's blobs.
    #[test]
    fn chunk_map_tracks_jobs_and_targets() {
        let n = 2 * TARGET_BLOCK as u32 + 5;
        let index = Index::from_records([PackRecord {
            id: id(u32::MAX),
            size: 1 << 30,
            salt: [0; 32],
            blobs: (0..n)
                .map(|i| BlobEntry {
                    id: id(i),
                    blob_type: BlobType::Data,
                    compressed: false,
                    offset: i * 100,
                    length: 100,
                    raw_len: 84,
                })
                .collect(),
        }]);
        let mut m = ChunkMap::new(&index);
        let target = |i: u32| id(i + 1_000_000);
        let pos = |i: u32| index.position(&id(i)).unwrap();
        for i in 0..n {
            assert_eq!(index.at(pos(i)).entry.id, id(i));
            assert_eq!(index.at(pos(i)).entry.offset, i * 100);
        }
        assert!(index.position(&id(n + 1)).is_none());
        let to = |m: &ChunkMap, i: u32| match m.get(pos(i)) {
            Some(Mapped::To(t)) => Some(t),
            _ => None,
        };
        assert!(m.get(pos(3)).is_none());
        m.set(pos(3), Mapped::InJob(7));
        assert!(matches!(m.get(pos(3)), Some(Mapped::InJob(7))));
        for i in 0..n {
            m.set(pos(i), Mapped::To(target(i)));
        }
        for i in 0..n {
            assert_eq!(to(&m, i), Some(target(i)), "chunk {i}");
        }
        // Copied again (the target lost it): in a job, then its new target, in the same slot.
        m.set(pos(9), Mapped::InJob(8));
        assert!(matches!(m.get(pos(9)), Some(Mapped::InJob(8))));
        m.set(pos(9), Mapped::To(id(42)));
        assert_eq!(to(&m, 9), Some(id(42)));
        let held: usize = m.targets.iter().map(Vec::len).sum();
        assert_eq!(held, n as usize);
        assert!(m.in_job.is_empty());
    }
}
