//! `lifeboat find`: the entries of a snapshot whose path matches a pattern, or whose contents
//! (a file's data blobs, a directory's tree blobs) include one of a set of blobs — which files a
//! damaged pack or blob that `check` reported affects.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pattern::Patterns;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

/// What to look for: an entry matches when its path matches one of `patterns` (if any) and
/// its blobs include one of `blobs` (if any).
#[derive(Default)]
pub struct Query {
    /// Path patterns (restic's, as `restore --include` takes them).
    pub patterns: Option<Patterns>,
    /// Data or tree blobs.
    pub blobs: HashSet<Id>,
}

impl Query {
    /// Add every blob stored in the pack whose id starts with `prefix`.
    ///
    /// # Errors
    /// `InvalidInput` when no pack or several match.
    pub fn add_pack(&mut self, repo: &Repository, prefix: &str) -> Result<()> {
        let p = hex_prefix(prefix, "pack")?;
        let packs: Vec<Id> = repo
            .index()
            .packs()
            .iter()
            .map(|i| i.id)
            .filter(|id| id.to_hex().starts_with(&p))
            .collect();
        let pack = one(packs, prefix, "pack")?;
        self.blobs.extend(
            repo.index()
                .iter()
                .filter(|l| l.pack.id == pack)
                .map(|l| l.entry.id),
        );
        Ok(())
    }

    /// Add the blob whose id starts with `prefix`. A blob the index does not know (lost with a
    /// deleted pack, say) is only found by its full id.
    ///
    /// # Errors
    /// `InvalidInput` when no blob or several match.
    pub fn add_blob(&mut self, repo: &Repository, prefix: &str) -> Result<()> {
        let p = hex_prefix(prefix, "blob")?;
        if p.len() == 64 {
            self.blobs.insert(p.parse()?);
            return Ok(());
        }
        let blobs: Vec<Id> = repo
            .index()
            .iter()
            .map(|l| l.entry.id)
            .filter(|id| id.to_hex().starts_with(&p))
            .collect();
        self.blobs.insert(one(blobs, prefix, "blob")?);
        Ok(())
    }
}

fn hex_prefix(s: &str, what: &str) -> Result<String> {
    let p = s.to_ascii_lowercase();
    if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!("{s:?} is not a {what} id")));
    }
    Ok(p)
}

fn one(mut found: Vec<Id>, prefix: &str, what: &str) -> Result<Id> {
    found.dedup();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(Error::invalid(format!("no {what} matches {prefix:?}"))),
        _ => Err(Error::invalid(format!(
            "{prefix:?} is ambiguous: it matches {} {what}s",
            found.len()
        ))),
    }
}

/// Walks snapshots for one query. Directories found to hold no match for a blob-only query are
/// remembered (by their list of tree blobs) and not walked again in later snapshots.
pub struct Finder<'r> {
    repo: &'r Repository,
    query: Query,
    no_hits: HashSet<Id>,
}

impl<'r> Finder<'r> {
    pub fn new(repo: &'r Repository, query: Query) -> Self {
        Self {
            repo,
            query,
            no_hits: HashSet::new(),
        }
    }

    /// Call `hit(path, node)` for each matching entry of `snap`, in path order; returns how
    /// many there were.
    ///
    /// # Errors
    /// A tree that cannot be read, or the first error of `hit`.
    pub fn find(
        &mut self,
        snap: &Snapshot,
        hit: &mut impl FnMut(&str, &Node) -> Result<()>,
    ) -> Result<u64> {
        self.dir(&snap.tree, "", hit)
    }

    fn matches(&self, n: &Node, path: &str) -> bool {
        let q = &self.query;
        let blobs = || {
            let ids = if n.kind() == NodeKind::Dir {
                &n.subtree
            } else {
                &n.content
            };
            ids.iter().any(|b| q.blobs.contains(b))
        };
        q.patterns
            .as_ref()
            .is_none_or(|p| p.matches(path.as_bytes()))
            && (q.blobs.is_empty() || blobs())
    }

    fn dir(
        &mut self,
        ids: &[Id],
        path: &str,
        hit: &mut impl FnMut(&str, &Node) -> Result<()>,
    ) -> Result<u64> {
        let key = self
            .query
            .patterns
            .is_none()
            .then(|| Id::of_parts(ids.iter().map(|i| &i.0[..])));
        if key.is_some_and(|k| self.no_hits.contains(&k)) {
            return Ok(0);
        }
        let mut hits = 0;
        for n in self.repo.read_tree_entries(ids)? {
            let n = n?;
            let p = format!("{path}/{}", n.display_name());
            if self.matches(&n, &p) {
                hit(&p, &n)?;
                hits += 1;
            }
            let descend = n.kind() == NodeKind::Dir
                && self.query.patterns.as_ref().is_none_or(|pat| {
                    !self.query.blobs.is_empty() || pat.child_may_match(p.as_bytes())
                });
            if descend {
                hits += self.dir(&n.subtree, &p, hit)?;
            }
        }
        if let Some(k) = key
            && hits == 0
        {
            self.no_hits.insert(k);
        }
        Ok(hits)
    }
}
