//! What a backup leaves out, with restic's options and pattern syntax.
//!
//! Patterns and tag files are applied to each directory's listing, before anything in it is
//! stat'ed: an excluded entry is never read or descended into, and it drops out of the snapshot as
//! a deleted file would (nothing of it is carried over from the parent snapshot). Sizes and
//! filesystems need a stat, so the walker applies those to each entry.

use std::os::fd::{AsFd, BorrowedFd};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsmeta::{self, DirNames};
use crate::pattern::Patterns;

/// The tag file of the Cache Directory Tagging Specification and the line it must begin with.
const CACHEDIR_TAG: &str = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55";

/// What to leave out of a backup. The default leaves out nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExcludeOptions {
    /// restic's patterns (see [`crate::pattern`]) matched against each entry's absolute path. A
    /// matching directory is left out whole.
    pub patterns: Vec<String>,
    /// The same, ignoring case.
    pub ipatterns: Vec<String>,
    /// `NAME` or `NAME:HEADER`: a directory holding a file `NAME` (whose first bytes are `HEADER`,
    /// when given) keeps only that file.
    pub if_present: Vec<String>,
    /// Leave out the contents of cache directories, marked by a `CACHEDIR.TAG` file
    /// (<https://bford.info/cachedir/>); the tag file is kept.
    pub caches: bool,
    /// Leave out regular files larger than this many bytes.
    pub larger_than: Option<u64>,
    /// Do not cross into other filesystems: a mount point below a path given is kept as an empty
    /// directory, and files mounted from elsewhere are left out.
    pub one_file_system: bool,
}

impl ExcludeOptions {
    /// Whether the patterns and tags are valid, so a command can refuse them before it starts.
    ///
    /// # Errors
    /// `InvalidInput` naming the first pattern or tag that is not valid.
    pub fn check(&self) -> Result<()> {
        Excludes::new(self).map(drop)
    }
}

/// Patterns and tag files, ready to apply to listings.
pub(super) struct Excludes {
    patterns: Option<Patterns>,
    tags: Vec<Tag>,
}

struct Tag {
    name: Vec<u8>,
    header: Vec<u8>,
}

impl Excludes {
    /// `None` when `o` excludes nothing by name.
    ///
    /// # Errors
    /// `InvalidInput` naming the first pattern or tag that is not valid.
    pub fn new(o: &ExcludeOptions) -> Result<Option<Self>> {
        let patterns = Patterns::with_negation(&o.patterns, &o.ipatterns, "exclude pattern")?;
        let mut tags = Vec::new();
        for t in o
            .if_present
            .iter()
            .map(String::as_str)
            .chain(o.caches.then_some(CACHEDIR_TAG))
        {
            let (name, header) = t.split_once(':').unwrap_or((t, ""));
            if name.is_empty() || name.contains('/') {
                return Err(Error::invalid(format!(
                    "--exclude-if-present {t:?}: expected a file name, optionally followed by ':HEADER'"
                )));
            }
            tags.push(Tag {
                name: name.as_bytes().to_vec(),
                header: header.as_bytes().to_vec(),
            });
        }
        Ok((patterns.is_some() || !tags.is_empty()).then_some(Excludes { patterns, tags }))
    }

    /// Whether absolute `path` matches a pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.patterns.as_ref().is_some_and(|p| p.matches(path))
    }

    /// Leave out of the listing of directory `dir`, at absolute `path` (empty for the root), what
    /// is excluded.
    pub fn listing(&self, dir: BorrowedFd<'_>, path: &[u8], names: &mut DirNames) {
        let tagged: Vec<&[u8]> = self
            .tags
            .iter()
            .filter(|t| names.find(&t.name).is_some() && t.marks(dir))
            .map(|t| t.name.as_slice())
            .collect();
        if !tagged.is_empty() {
            names.retain(|n| tagged.contains(&n));
        }
        if let Some(patterns) = &self.patterns {
            let mut p = Vec::with_capacity(path.len() + 64);
            p.extend_from_slice(path);
            p.push(b'/');
            let base = p.len();
            names.retain(|n| {
                p.truncate(base);
                p.extend_from_slice(n);
                !patterns.matches(&p)
            });
        }
    }
}

impl Tag {
    /// Whether this tag, listed in `dir`, marks it: its file begins with the header. A tag file
    /// that cannot be read marks nothing (the directory is backed up whole).
    fn marks(&self, dir: BorrowedFd<'_>) -> bool {
        if self.header.is_empty() {
            return true;
        }
        let Ok(fd) = fsmeta::open_file_at(dir, &self.name) else {
            return false;
        };
        fsmeta::read_exact_at(fd.as_fd(), self.header.len(), 0).is_ok_and(|b| b == self.header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tags_are_named() {
        let e = Excludes::new(&ExcludeOptions {
            if_present: vec![":header".to_owned()],
            ..ExcludeOptions::default()
        })
        .err()
        .expect("refused");
        assert!(e.to_string().contains("file name"), "{e}");
        assert!(
            Excludes::new(&ExcludeOptions::default())
                .expect("valid")
                .is_none()
        );
    }
}
