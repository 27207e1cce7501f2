//! restic's path patterns, shared by `backup --exclude` and `restore --include/--exclude`.
//!
//! A pattern is matched against an entry's absolute path: `*` and `?` match within one path
//! component, `[...]` one character of a class, `**` any number of components, `\` escapes. A
//! pattern starting with `/` matches from the root; any other matches at any depth (`*.log`,
//! `node_modules`, `var/cache`). A trailing `/` is ignored.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// A set of patterns.
pub struct Patterns {
    set: GlobSet,
    /// Each pattern's components, to tell whether a directory may hold a match.
    parts: Vec<Vec<Part>>,
}

enum Part {
    /// `**`: any number of components.
    AnyDepth,
    /// One component.
    One(GlobMatcher),
}

impl Patterns {
    /// `patterns` and, ignoring case, `ipatterns`; `None` when both are empty. `what` names them
    /// in errors ("exclude pattern").
    ///
    /// # Errors
    /// `InvalidInput` naming the first pattern that is not valid.
    pub fn new(patterns: &[String], ipatterns: &[String], what: &str) -> Result<Option<Self>> {
        let mut set = GlobSetBuilder::new();
        let mut parts = Vec::new();
        for (p, icase) in patterns
            .iter()
            .map(|p| (p, false))
            .chain(ipatterns.iter().map(|p| (p, true)))
        {
            let bad = |why: &str| Error::invalid(format!("{what} {p:?}: {why}"));
            if p.starts_with('!') {
                return Err(bad("negated patterns ('!') are not supported"));
            }
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                return Err(bad("it matches everything"));
            }
            let anchored = if trimmed.starts_with('/') {
                trimmed.to_owned()
            } else {
                format!("**/{trimmed}")
            };
            let glob = |g: &str| {
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .case_insensitive(icase)
                    .build()
                    .map_err(|e| bad(&e.kind().to_string()))
            };
            set.add(glob(&anchored)?);
            parts.push(
                anchored
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| {
                        Ok(if c == "**" {
                            Part::AnyDepth
                        } else {
                            Part::One(glob(c)?.compile_matcher())
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        let set = set
            .build()
            .map_err(|e| Error::invalid(format!("{what}s: {e}")))?;
        Ok((!parts.is_empty()).then_some(Patterns { set, parts }))
    }

    /// Whether absolute `path` matches a pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.set.is_match(Path::new(OsStr::from_bytes(path)))
    }

    /// Whether something below directory `dir` (an absolute path, `/` for the root) may match a
    /// pattern that `dir` itself does not: `/srv/*/conf` may match below `/srv` and `/srv/app`,
    /// not below `/home`; a pattern holding `**` may match below any directory its components
    /// before the `**` lead to.
    pub fn child_may_match(&self, dir: &[u8]) -> bool {
        let comps: Vec<&[u8]> = dir
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        self.parts.iter().any(|parts| {
            for (i, c) in comps.iter().enumerate() {
                match parts.get(i) {
                    // Every component matched a prefix of `dir`: `dir` or a parent matches.
                    None => return false,
                    Some(Part::AnyDepth) => return true,
                    Some(Part::One(m)) => {
                        if !m.is_match(Path::new(OsStr::from_bytes(c))) {
                            return false;
                        }
                    }
                }
            }
            comps.len() < parts.len()
        })
    }
}

/// The patterns of a pattern file: one a line, surrounding blanks trimmed, empty lines and lines
/// starting with `#` skipped.
pub fn patterns_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str], ipatterns: &[&str]) -> Patterns {
        let v = |p: &[&str]| p.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        Patterns::new(&v(patterns), &v(ipatterns), "pattern")
            .expect("valid patterns")
            .expect("some patterns")
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
    fn directories_that_may_hold_a_match() {
        let e = set(&["/srv/*/conf", "/data/**/x.db"], &["/HOME/U"]);
        for yes in ["/", "/srv", "/srv/app", "/data", "/data/a/b", "/home"] {
            assert!(e.child_may_match(yes.as_bytes()), "below {yes} may match");
        }
        // Below a match (it is matched whole), off every pattern's path, or past its end.
        for no in [
            "/srv/app/conf",
            "/home/u",
            "/srv/app/x",
            "/etc",
            "/datum",
            "/home/v",
        ] {
            assert!(!e.child_may_match(no.as_bytes()), "below {no} cannot match");
        }
        // A relative pattern matches at any depth.
        assert!(set(&["*.conf"], &[]).child_may_match(b"/any/where"));
    }

    #[test]
    fn bad_patterns_are_named() {
        for (p, why) in [("!keep", "negated"), ("/", "everything"), ("a[b", "a[b")] {
            let e = Patterns::new(&[p.to_owned()], &[], "exclude pattern")
                .err()
                .expect("refused");
            assert!(e.to_string().contains(why), "{p}: {e}");
            assert!(e.to_string().contains("exclude pattern"), "{p}: {e}");
        }
        assert!(Patterns::new(&[], &[], "x").expect("valid").is_none());
    }

    #[test]
    fn pattern_files_skip_blanks_and_comments() {
        let got: Vec<String> =
            patterns_in("# caches\n  *.tmp  \n\n/srv/x\n   # indented\n").collect();
        assert_eq!(got, ["*.tmp", "/srv/x"]);
    }
}
