//! What a backup leaves out, with restic's options and pattern syntax.
//!
//! Patterns and tag files are applied to each directory's listing, before anything in it is
//! stat'ed: an excluded entry is never read or descended into, and it drops out of the snapshot as
//! a deleted file would (nothing of it is carried over from the parent snapshot). Sizes and
//! filesystems need a stat, so the walker applies those to each entry.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsmeta::{self, DirNames};

/// The tag file of the Cache Directory Tagging Specification and the line it must begin with.
const CACHEDIR_TAG: &str = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55";

/// What to leave out of a backup. The default leaves out nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExcludeOptions {
    /// Patterns matched against each entry's absolute path: `*` and `?` match within one path
    /// component, `[...]` one character of a class, `**` any number of components, `\` escapes.
    /// A pattern starting with `/` matches from the root; any other matches at any depth
    /// (`*.log`, `node_modules`, `var/cache`). A matching directory is left out whole.
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

    /// The patterns of an exclude file: one a line, surrounding blanks trimmed, empty lines and
    /// lines starting with `#` skipped.
    pub fn patterns_in(text: &str) -> impl Iterator<Item = String> + '_ {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
    }
}

/// Patterns and tag files, ready to apply to listings.
pub(super) struct Excludes {
    globs: GlobSet,
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
        let mut set = GlobSetBuilder::new();
        for (p, icase) in o
            .patterns
            .iter()
            .map(|p| (p, false))
            .chain(o.ipatterns.iter().map(|p| (p, true)))
        {
            set.add(glob(p, icase)?);
        }
        let globs = set
            .build()
            .map_err(|e| Error::invalid(format!("exclude patterns: {e}")))?;
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
        Ok((!globs.is_empty() || !tags.is_empty()).then_some(Excludes { globs, tags }))
    }

    /// Whether absolute `path` matches a pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        !self.globs.is_empty() && self.globs.is_match(Path::new(OsStr::from_bytes(path)))
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
        if !self.globs.is_empty() {
            let mut p = Vec::with_capacity(path.len() + 64);
            p.extend_from_slice(path);
            p.push(b'/');
            let base = p.len();
            names.retain(|n| {
                p.truncate(base);
                p.extend_from_slice(n);
                !self.matches(&p)
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

/// restic's pattern `p` as a glob over absolute paths.
fn glob(p: &str, icase: bool) -> Result<globset::Glob> {
    let bad = |why: &str| Error::invalid(format!("exclude pattern {p:?}: {why}"));
    if p.starts_with('!') {
        return Err(bad("negated patterns ('!') are not supported"));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("it would leave out everything"));
    }
    let anchored = if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("**/{trimmed}")
    };
    GlobBuilder::new(&anchored)
        .literal_separator(true)
        .backslash_escape(true)
        .case_insensitive(icase)
        .build()
        .map_err(|e| bad(&e.kind().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str], ipatterns: &[&str]) -> Excludes {
        Excludes::new(&ExcludeOptions {
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            ipatterns: ipatterns.iter().map(|p| (*p).to_owned()).collect(),
            ..ExcludeOptions::default()
        })
        .expect("valid patterns")
        .expect("something to exclude")
    }

    #[test]
    fn patterns_match_as_restic_does() {
        let e = set(
            &[
                "*.log",
                "/srv/tmp",
                "var/cache",
                "/data/**/scratch",
                "x?[0-9]",
                "**/.git/",
            ],
            &["*.ISO"],
        );
        for yes in [
            "/a.log",
            "/srv/app/b.log",
            "/srv/tmp",
            "/home/u/var/cache",
            "/var/cache",
            "/data/scratch",
            "/data/a/b/scratch",
            "/q/xy7",
            "/dl/disk.iso",
            "/dl/disk.Iso",
            "/.git",
            "/src/repo/.git",
        ] {
            assert!(e.matches(yes.as_bytes()), "{yes} should match");
        }
        for no in [
            "/a.log.gz",
            "/srv/app/tmp",
            "/srv/tmpx",
            "/var/cache2",
            "/cache",
            "/other/data/scratch",
            "/q/xyz",
            "/q/x/y7",
            "/dl/disk.isos",
            "/src/.github",
        ] {
            assert!(!e.matches(no.as_bytes()), "{no} should not match");
        }
        // `*` stays within a component; names need not be UTF-8.
        let e = set(&["/a/*"], &[]);
        assert!(e.matches(b"/a/\xff\xfe"));
        assert!(!e.matches(b"/a/b/c"));
    }

    #[test]
    fn bad_patterns_and_tags_are_named() {
        for (p, why) in [("!keep", "negated"), ("/", "everything"), ("a[b", "a[b")] {
            let e = Excludes::new(&ExcludeOptions {
                patterns: vec![p.to_owned()],
                ..ExcludeOptions::default()
            })
            .err()
            .expect("refused");
            assert!(e.to_string().contains(why), "{p}: {e}");
        }
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

    #[test]
    fn exclude_files_skip_blanks_and_comments() {
        let got: Vec<String> =
            ExcludeOptions::patterns_in("# caches\n  *.tmp  \n\n/srv/x\n   # indented\n").collect();
        assert_eq!(got, ["*.tmp", "/srv/x"]);
    }
}
