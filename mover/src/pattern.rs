//! restic's path patterns, shared by `backup --exclude` and `restore --include/--exclude`.
//!
//! A pattern is matched against an entry's absolute path: `*` and `?` match within one path
//! component, `[...]` one character of a class, `**` any number of components, `\` escapes. A
//! pattern starting with `/` matches from the root; any other matches at any depth (`*.log`,
//! `node_modules`, `var/cache`). A trailing `/` is ignored.
//!
//! Exclude patterns may be negated, as restic's: `!PATTERN` takes back what an earlier pattern
//! of the same list excluded (the last pattern that matches a path decides), so `/home/u/*` then
//! `!/home/u/docs` keeps only `docs` of `/home/u`. What is excluded is not entered, so a negated
//! pattern cannot bring back anything below an excluded directory.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// A set of patterns.
pub struct Patterns {
    set: GlobSet,
    /// Per pattern of `set`: whether it is negated, and its list (0 case-sensitive, 1 ignoring
    /// case). Empty when no pattern is negated.
    negated: Vec<(bool, u8)>,
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
        Self::build(patterns, ipatterns, what, false)
    }

    /// Like [`Patterns::new`], and a pattern may be negated (`!PATTERN`): exclude patterns.
    ///
    /// # Errors
    /// `InvalidInput` naming the first pattern that is not valid.
    pub fn with_negation(
        patterns: &[String],
        ipatterns: &[String],
        what: &str,
    ) -> Result<Option<Self>> {
        Self::build(patterns, ipatterns, what, true)
    }

    fn build(
        patterns: &[String],
        ipatterns: &[String],
        what: &str,
        negation: bool,
    ) -> Result<Option<Self>> {
        let mut set = GlobSetBuilder::new();
        let mut parts = Vec::new();
        let mut negated = Vec::new();
        for (p, icase) in patterns
            .iter()
            .map(|p| (p, false))
            .chain(ipatterns.iter().map(|p| (p, true)))
        {
            let bad = |why: &str| Error::invalid(format!("{what} {p:?}: {why}"));
            let (neg, p) = match p.strip_prefix('!') {
                Some(_) if !negation => {
                    return Err(bad("negated patterns ('!') are only for excludes"));
                }
                Some(rest) => (true, rest),
                None => (false, p.as_str()),
            };
            negated.push((neg, u8::from(icase)));
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
        if !negated.iter().any(|n| n.0) {
            negated.clear();
        }
        Ok((!parts.is_empty()).then_some(Patterns {
            set,
            negated,
            parts,
        }))
    }

    /// Whether absolute `path` matches: in either list, the last pattern that matches it is not
    /// negated.
    pub fn matches(&self, path: &[u8]) -> bool {
        let path = Path::new(OsStr::from_bytes(path));
        if self.negated.is_empty() {
            return self.set.is_match(path);
        }
        let mut last = [None; 2];
        for i in self.set.matches(path) {
            let (neg, list) = self.negated[i];
            last[usize::from(list)] = Some(neg);
        }
        last.contains(&Some(false))
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
/// starting with `#` skipped, environment variables (`$HOME`, `${USER}`) expanded as restic
/// expands them in these files.
///
/// # Errors
/// `InvalidInput` naming the line of a variable that is not set (an exclude that silently lost
/// a part of its path would exclude something else).
pub fn patterns_in(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let p = shellexpand::env(l)
            .map_err(|e| Error::invalid(format!("line {}: ${} is not set", i + 1, e.var_name)))?;
        out.push(p.into_owned());
    }
    Ok(out)
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
    fn pattern_files_skip_blanks_and_comments_and_expand_variables() {
        let got = patterns_in("# caches\n  *.tmp  \n\n/srv/x\n   # indented\n").unwrap();
        assert_eq!(got, ["*.tmp", "/srv/x"]);
        let home = std::env::var("HOME").expect("HOME is set in tests");
        let got = patterns_in("$HOME/.cache\n${HOME}/x\n").unwrap();
        assert_eq!(got, [format!("{home}/.cache"), format!("{home}/x")]);
        let e = patterns_in("*.tmp\n$LIFEBOAT_SURELY_UNSET_VAR/x\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("line 2: $LIFEBOAT_SURELY_UNSET_VAR is not set"),
            "{e}"
        );
    }

    #[test]
    fn the_last_matching_pattern_of_a_list_decides() {
        let v = |p: &[&str]| p.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        let e = Patterns::with_negation(
            &v(&[
                "/home/u/*",
                "!/home/u/docs",
                "*.tmp",
                "!keep.tmp",
                "/home/u/docs/x",
            ]),
            &v(&["*.ISO", "!/dl/ok.iso"]),
            "exclude pattern",
        )
        .unwrap()
        .unwrap();
        for yes in [
            "/home/u/music",
            "/home/u/docs/x",
            "/a/b.tmp",
            "/dl/disk.iso",
        ] {
            assert!(e.matches(yes.as_bytes()), "{yes} is excluded");
        }
        for no in [
            "/home/u/docs",
            "/home/u/docs/y",
            "/srv/keep.tmp",
            "/dl/ok.iso",
            "/home/u/keep.tmp",
        ] {
            assert!(!e.matches(no.as_bytes()), "{no} is kept");
        }
        // Each list decides for itself: a negation in one does not take back the other's match.
        let e = Patterns::with_negation(&v(&["!/dl/disk.iso"]), &v(&["*.iso"]), "exclude pattern")
            .unwrap()
            .unwrap();
        assert!(e.matches(b"/dl/disk.iso"));
        let e = Patterns::new(&v(&["!x"]), &[], "include pattern");
        assert!(e.is_err_and(|e| e.to_string().contains("only for excludes")));
    }
}
