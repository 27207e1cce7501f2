//! Snapshots: what was backed up, when, from where, and the root tree.

use serde::{Deserialize, Serialize};

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
    /// For a snapshot made by `copy`: the id of the snapshot it was copied from.
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
