//! `lifeboat diff`: what changed between two snapshots, as restic's `diff` reports it.
//!
//! Both trees are walked together, name by name (entries are sorted). A directory whose tree blobs
//! are the same on both sides is not compared entry by entry, only walked once for its blobs, so
//! that a blob still used there is neither added nor removed. Each change is reported with restic's
//! modifiers: `+` added, `-` removed, `M` contents changed, `T` type changed, `U` metadata changed
//! (when asked for). The sums count the blobs one snapshot has and the other has not, and their
//! plaintext bytes.

use serde::Serialize;

use crate::error::Result;
use crate::id::Id;
use crate::idset::IdSet;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

/// What one side of a diff has that the other has not.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DiffSide {
    /// Regular files (and volumes).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// Data blobs.
    pub data_blobs: u64,
    /// Tree blobs.
    pub tree_blobs: u64,
    /// Plaintext bytes of those blobs.
    pub bytes: u64,
}

/// The sums of a diff.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DiffStats {
    /// Files in both whose contents changed.
    pub changed_files: u64,
    /// In the second snapshot only.
    pub added: DiffSide,
    /// In the first snapshot only.
    pub removed: DiffSide,
}

#[derive(Default)]
struct Blobs {
    data: IdSet,
    trees: IdSet,
}

struct Walk<'r, F> {
    repo: &'r Repository,
    metadata: bool,
    report: F,
    stats: DiffStats,
    before: Blobs,
    after: Blobs,
    common: Blobs,
}

/// Compare snapshot `a` with snapshot `b`, calling `report(path, modifier)` for each change in
/// path order (a directory's path ends in `/`); `metadata` also reports entries whose metadata
/// alone changed (`U`).
///
/// # Errors
/// A tree that cannot be read, or the first error `report` returns.
pub fn diff(
    repo: &Repository,
    a: &Snapshot,
    b: &Snapshot,
    metadata: bool,
    report: impl FnMut(&str, &str) -> Result<()>,
) -> Result<DiffStats> {
    let mut w = Walk {
        repo,
        metadata,
        report,
        stats: DiffStats::default(),
        before: Blobs::default(),
        after: Blobs::default(),
        common: Blobs::default(),
    };
    if a.tree == b.tree {
        w.collect(&a.tree, Side::Common)?;
    } else {
        w.trees(&a.tree, &b.tree, "")?;
    }
    let Walk {
        mut stats,
        before,
        after,
        common,
        ..
    } = w;
    for (from, other, side) in [
        (&before, &after, &mut stats.removed),
        (&after, &before, &mut stats.added),
    ] {
        let only = |mine: &IdSet, theirs: &IdSet, common: &IdSet| {
            mine.iter()
                .filter(|id| !theirs.contains(id) && !common.contains(id))
                .copied()
                .collect::<Vec<_>>()
        };
        let data = only(&from.data, &other.data, &common.data);
        let trees = only(&from.trees, &other.trees, &common.trees);
        side.data_blobs = data.len() as u64;
        side.tree_blobs = trees.len() as u64;
        side.bytes = data
            .iter()
            .chain(&trees)
            .filter_map(|id| repo.index().get(id))
            .map(|l| u64::from(l.entry.raw_len))
            .sum();
    }
    Ok(stats)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Before,
    After,
    Common,
}

impl<F: FnMut(&str, &str) -> Result<()>> Walk<'_, F> {
    fn blobs(&mut self, side: Side) -> &mut Blobs {
        match side {
            Side::Before => &mut self.before,
            Side::After => &mut self.after,
            Side::Common => &mut self.common,
        }
    }

    /// Walk the directory trees `before` and `after` (at `path`) side by side.
    fn trees(&mut self, before: &[Id], after: &[Id], path: &str) -> Result<()> {
        self.before.trees.extend(before);
        self.after.trees.extend(after);
        let mut left = self.repo.read_tree_entries(before)?;
        let mut right = self.repo.read_tree_entries(after)?;
        let mut old = left.next().transpose()?;
        let mut new = right.next().transpose()?;
        loop {
            match (old.take(), new.take()) {
                (None, None) => return Ok(()),
                (Some(o), n) if n.as_ref().is_none_or(|n| o.name < n.name) => {
                    self.whole(&o, path, Side::Before)?;
                    old = left.next().transpose()?;
                    new = n;
                }
                (o, Some(n)) if o.as_ref().is_none_or(|o| n.name < o.name) => {
                    self.whole(&n, path, Side::After)?;
                    new = right.next().transpose()?;
                    old = o;
                }
                (Some(o), Some(n)) => {
                    self.pair(&o, &n, path)?;
                    old = left.next().transpose()?;
                    new = right.next().transpose()?;
                }
                (None, Some(_)) | (Some(_), None) => unreachable!("handled above"),
            }
        }
    }

    /// An entry that one side has and the other has not, with everything below it.
    fn whole(&mut self, n: &Node, parent: &str, side: Side) -> Result<()> {
        let p = path_of(parent, n);
        (self.report)(&shown(&p, n), if side == Side::Before { "-" } else { "+" })?;
        self.one_side(n, &p, side)
    }

    /// Count `n` (at `p`) on one side, with its blobs, and report what is below it.
    fn one_side(&mut self, n: &Node, p: &str, side: Side) -> Result<()> {
        let counts = if side == Side::Before {
            &mut self.stats.removed
        } else {
            &mut self.stats.added
        };
        match n.kind() {
            NodeKind::Dir => counts.dirs += 1,
            _ if n.has_data() => counts.files += 1,
            _ => counts.others += 1,
        }
        self.blobs(side).data.extend(&n.content);
        if n.kind() == NodeKind::Dir {
            self.blobs(side).trees.extend(&n.subtree);
            for c in self.repo.read_tree_entries(&n.subtree)? {
                self.whole(&c?, p, side)?;
            }
        }
        Ok(())
    }

    /// The blobs of a tree both sides have, with everything below it.
    fn collect(&mut self, ids: &[Id], side: Side) -> Result<()> {
        self.blobs(side).trees.extend(ids);
        for c in self.repo.read_tree_entries(ids)? {
            let c = c?;
            self.blobs(side).data.extend(&c.content);
            if c.kind() == NodeKind::Dir {
                self.collect(&c.subtree, side)?;
            }
        }
        Ok(())
    }

    /// An entry both sides have.
    fn pair(&mut self, x: &Node, y: &Node, parent: &str) -> Result<()> {
        let p = path_of(parent, y);
        if x.kind() != y.kind() || x.image != y.image {
            // Reported once, as its new type, and counted as one entry removed and one added;
            // what a directory on either side holds is reported as removed or added.
            (self.report)(&shown(&p, y), "T")?;
            self.one_side(x, &p, Side::Before)?;
            return self.one_side(y, &p, Side::After);
        }
        let mut modifier = String::new();
        if x.kind() == NodeKind::Dir {
            if self.metadata && !same_metadata(x, y) {
                (self.report)(&shown(&p, y), "U")?;
            }
            if x.subtree == y.subtree {
                return self.collect(&x.subtree, Side::Common);
            }
            return self.trees(&x.subtree, &y.subtree, &p);
        }
        let contents = x.content != y.content
            || x.holes != y.holes
            || x.allocated != y.allocated
            || x.size != y.size
            || x.target != y.target
            || x.rdev != y.rdev;
        if contents {
            modifier.push('M');
            if x.has_data() {
                self.stats.changed_files += 1;
            }
            self.before.data.extend(&x.content);
            self.after.data.extend(&y.content);
        } else {
            self.common.data.extend(&x.content);
        }
        if self.metadata && !same_metadata(x, y) {
            modifier.push('U');
        }
        if !modifier.is_empty() {
            (self.report)(&shown(&p, y), &modifier)?;
        }
        Ok(())
    }
}

/// An entry's path below `parent`.
fn path_of(parent: &str, n: &Node) -> String {
    format!("{parent}/{}", n.display_name())
}

/// How an entry at `path` is shown: with `/` after a directory.
fn shown(path: &str, n: &Node) -> String {
    if n.kind() == NodeKind::Dir {
        format!("{path}/")
    } else {
        path.to_owned()
    }
}

/// Whether the metadata a restore applies is the same (times of change and inode numbers are not
/// restored, so they are not compared).
fn same_metadata(x: &Node, y: &Node) -> bool {
    x.mode == y.mode
        && x.uid == y.uid
        && x.gid == y.gid
        && x.mtime == y.mtime
        && x.mtime_ns == y.mtime_ns
        && x.xattrs == y.xattrs
}
