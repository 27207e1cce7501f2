//! Snapshots: what was backed up, when, from where, and the root tree.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

/// Counters of one backup, stored in its snapshot and printed by `backup --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Summary {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Other entries (symlinks, devices, fifos, sockets).
    pub others: u64,
    /// Files that were not in the parent.
    pub files_new: u64,
    /// Files that were read again because they changed.
    pub files_changed: u64,
    /// Files taken from the parent without reading.
    pub files_unmodified: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes of file content in the snapshot (logical size).
    pub bytes_total: u64,
    /// Bytes added to the repository (after dedup and compression).
    pub bytes_added: u64,
    /// Blobs added.
    pub blobs_added: u64,
    /// Entries that could not be read.
    pub warnings: u64,
    /// Wall time of the backup, seconds.
    pub duration_s: f64,
}

/// A snapshot object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// When the backup started.
    pub time: jiff::Timestamp,
    /// Host the backup ran on (or `--host`).
    pub host: String,
    /// Absolute paths backed up.
    pub paths: Vec<String>,
    /// User tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The snapshot this one was taken incrementally from.
    #[serde(default)]
    pub parent: Option<Id>,
    /// Blobs of the root tree.
    pub tree: Vec<Id>,
    /// What the backup did.
    #[serde(default)]
    pub summary: Summary,
    /// Lifeboat version that wrote it.
    pub program: String,
    /// For a snapshot made by `copy`: the id of the snapshot it was copied from. For one whose
    /// tags `tag` changed: the id it had before (kept through later changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

/// The local host name (`unknown` if it cannot be read).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// An absolute, lexically normalized path (`.`, `..` and repeated or trailing `/` resolved
/// without touching the filesystem), as snapshots record the paths they back up.
///
/// # Errors
/// `Io` when the current directory cannot be read (for a relative path).
pub fn absolute_path(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p.display(), e))?;
    let mut n = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(x) => n.push(x),
            Component::ParentDir => {
                n.pop();
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Which snapshots a command considers, as restic's `--host`, `--tag` and `--path`: a snapshot
/// matches when its host is one of `hosts`, it has every tag of one of the lists in `tags`, and
/// `paths` are all among its paths. An empty field matches every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Any of these hosts.
    pub hosts: Vec<String>,
    /// Any of these lists, each matching the snapshots that have all its tags; an empty list
    /// matches the snapshots that have no tags.
    pub tags: Vec<Vec<String>>,
    /// Absolute, normalized paths (see [`absolute_path`]) the snapshot must all include.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// Whether it matches every snapshot.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    /// Whether `s` is selected.
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && (self.tags.is_empty() || self.tags.iter().any(|l| has_tags(s, l)))
            && self.paths.iter().all(|p| s.paths.contains(p))
    }

    /// The filter, as the options that made it (for messages).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.hosts.iter().map(|h| format!("--host {h}")).collect();
        parts.extend(self.tags.iter().map(|l| format!("--tag {:?}", l.join(","))));
        parts.extend(self.paths.iter().map(|p| format!("--path {p}")));
        parts.join(" ")
    }
}

/// Whether `s` has every tag of `list` (a list of no tags: whether `s` has none).
pub fn has_tags(s: &Snapshot, list: &[String]) -> bool {
    if list.is_empty() {
        s.tags.is_empty()
    } else {
        list.iter().all(|t| s.tags.contains(t))
    }
}

/// A `--tag` value: tags separated by commas (`""` is the list of no tags).
pub fn parse_tag_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A change of a snapshot's tags (`lifeboat tag`).
#[derive(Debug, Clone, Default)]
pub struct TagChange {
    /// Replace the tags with these.
    pub set: Option<Vec<String>>,
    /// Add these (after the tags already there, each once).
    pub add: Vec<String>,
    /// Remove these.
    pub remove: Vec<String>,
}

impl TagChange {
    /// The tags after the change, in order, without repeats.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let from = self.set.as_deref().unwrap_or(tags);
        for t in from.iter().chain(&self.add) {
            if !out.contains(t) && !self.remove.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(host: &str, paths: &[&str], tags: &[&str]) -> Snapshot {
        Snapshot {
            time: jiff::Timestamp::UNIX_EPOCH,
            host: host.into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            parent: None,
            tree: vec![],
            summary: Summary::default(),
            program: String::new(),
            original: None,
        }
    }

    #[test]
    fn filters_select_as_restic_does() {
        let a = snap("db-0", &["/var/lib/pg", "/etc/pg"], &["daily", "pg"]);
        let b = snap("db-1", &["/var/lib/pg"], &[]);
        let f = |hosts: &[&str], tags: &[&str], paths: &[&str]| SnapshotFilter {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            tags: tags.iter().map(|t| parse_tag_list(t)).collect(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        let picks = |f: SnapshotFilter| (f.matches(&a), f.matches(&b));
        assert_eq!(picks(f(&[], &[], &[])), (true, true));
        assert_eq!(picks(f(&["db-1"], &[], &[])), (false, true));
        assert_eq!(picks(f(&["db-1", "db-0"], &[], &[])), (true, true));
        // A list needs every tag; several lists need any one of them; "" is "no tags".
        assert_eq!(picks(f(&[], &["pg,daily"], &[])), (true, false));
        assert_eq!(picks(f(&[], &["pg,weekly"], &[])), (false, false));
        assert_eq!(picks(f(&[], &["weekly", " daily "], &[])), (true, false));
        assert_eq!(picks(f(&[], &[""], &[])), (false, true));
        // Every path given must be among the snapshot's.
        assert_eq!(picks(f(&[], &[], &["/var/lib/pg"])), (true, true));
        assert_eq!(
            picks(f(&[], &[], &["/var/lib/pg", "/etc/pg"])),
            (true, false)
        );
        assert_eq!(picks(f(&[], &[], &["/var/lib"])), (false, false));
        assert_eq!(picks(f(&["db-0"], &["pg"], &["/etc/pg"])), (true, false));
        assert_eq!(
            f(&["db-0"], &["pg,daily", ""], &["/etc/pg"]).describe(),
            r#"--host db-0 --tag "pg,daily" --tag "" --path /etc/pg"#
        );
    }

    #[test]
    fn absolute_paths_are_normalized_lexically() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute_path(Path::new("/a/./b//c/")).unwrap(),
            Path::new("/a/b/c")
        );
        assert_eq!(
            absolute_path(Path::new("/a/b/../../..")).unwrap(),
            Path::new("/")
        );
        assert_eq!(absolute_path(Path::new("x/../y")).unwrap(), cwd.join("y"));
    }

    #[test]
    fn tag_changes_keep_order_and_never_repeat() {
        let v = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let tags = v(&["daily", "pg"]);
        let add = TagChange {
            add: v(&["keep", "daily"]),
            ..TagChange::default()
        };
        assert_eq!(add.apply(&tags), v(&["daily", "pg", "keep"]));
        let remove = TagChange {
            remove: v(&["daily", "absent"]),
            ..TagChange::default()
        };
        assert_eq!(remove.apply(&tags), v(&["pg"]));
        let both = TagChange {
            add: v(&["keep"]),
            remove: v(&["pg"]),
            ..TagChange::default()
        };
        assert_eq!(both.apply(&tags), v(&["daily", "keep"]));
        let set = TagChange {
            set: Some(v(&["x", "x", "y"])),
            ..TagChange::default()
        };
        assert_eq!(set.apply(&tags), v(&["x", "y"]));
        let clear = TagChange {
            set: Some(Vec::new()),
            ..TagChange::default()
        };
        assert!(clear.apply(&tags).is_empty());
    }
}
