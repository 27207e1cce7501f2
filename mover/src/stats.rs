//! `lifeboat stats`: sizes and counts over snapshots, in restic's four counting modes.
//!
//! - `restore-size`: what a restore writes — every entry, and the size of each file (a file with
//!   several hard links counted once per snapshot, as restore writes it once).
//! - `files-by-contents`: files counted once per distinct contents across all the snapshots.
//! - `blobs-per-file`: for files of distinct contents, the plaintext of each distinct blob of each
//!   path.
//! - `raw-data`: the blobs the snapshots use, each once: what they take in the repository, and
//!   what they would take uncompressed. A directory met again (in another snapshot, or copied
//!   within one) is not walked again.

use std::collections::HashSet;

use serde::Serialize;

use crate::crypto::TAG_LEN;
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::idset::IdSet;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

/// How `stats` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// What restoring the snapshots writes.
    RestoreSize,
    /// Files of distinct contents.
    FilesByContents,
    /// Distinct blobs of each path, over files of distinct contents.
    BlobsPerFile,
    /// The blobs the snapshots use, each once.
    RawData,
}

/// The sums, with restic's JSON names; a field a mode does not count is left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Bytes: restored (`restore-size`), of distinct files, of blob plaintexts per file, or
    /// stored in the repository (`raw-data`: ciphertexts, after compression).
    pub total_size: u64,
    /// `raw-data`: what the blobs would take stored uncompressed (plaintext and tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_uncompressed_size: Option<u64>,
    /// `raw-data`: uncompressed ÷ stored bytes of the compressed blobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// `raw-data`: the share of the uncompressed bytes that are stored compressed, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_progress: Option<f64>,
    /// `raw-data`: the share of the uncompressed bytes that compression saves, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_space_saving: Option<f64>,
    /// Entries (`restore-size`) or files counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_file_count: Option<u64>,
    /// Blobs counted (`raw-data`, `blobs-per-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_blob_count: Option<u64>,
    /// Snapshots walked.
    pub snapshots_count: u64,
}

/// Count `snapshots` in `mode`. The repository's index must be loaded.
///
/// # Errors
/// A tree that cannot be read; `Missing` for a blob the index does not know (`check` tells more).
pub fn stats(repo: &Repository, snapshots: &[Snapshot], mode: Mode) -> Result<Stats> {
    let mut w = Walk {
        repo,
        mode,
        files: 0,
        size: 0,
        blobs: 0,
        links: HashSet::new(),
        seen: IdSet::new(),
        dirs: IdSet::new(),
        paths: IdSet::new(),
        raw: RawSums::default(),
    };
    for s in snapshots {
        w.links.clear();
        w.dir(&s.tree, "")?;
    }
    let snapshots_count = snapshots.len() as u64;
    Ok(match mode {
        Mode::RestoreSize | Mode::FilesByContents => Stats {
            total_size: w.size,
            total_file_count: Some(w.files),
            snapshots_count,
            ..Stats::default()
        },
        Mode::BlobsPerFile => Stats {
            total_size: w.size,
            total_file_count: Some(w.files),
            total_blob_count: Some(w.blobs),
            snapshots_count,
            ..Stats::default()
        },
        Mode::RawData => {
            let r = &w.raw;
            let percent = |part: u64| {
                (r.uncompressed > 0).then(|| part as f64 / r.uncompressed as f64 * 100.0)
            };
            Stats {
                total_size: r.stored,
                total_uncompressed_size: Some(r.uncompressed),
                compression_ratio: (r.compressed_stored > 0)
                    .then(|| r.compressed_uncompressed as f64 / r.compressed_stored as f64),
                compression_progress: percent(r.compressed_uncompressed),
                compression_space_saving: percent(r.uncompressed.saturating_sub(r.stored)),
                total_blob_count: Some(w.blobs),
                snapshots_count,
                ..Stats::default()
            }
        }
    })
}

#[derive(Default)]
struct RawSums {
    stored: u64,
    uncompressed: u64,
    compressed_stored: u64,
    compressed_uncompressed: u64,
}

struct Walk<'r> {
    repo: &'r Repository,
    mode: Mode,
    files: u64,
    size: u64,
    blobs: u64,
    /// `restore-size`: the (device, inode) of each file with several links, per snapshot.
    links: HashSet<(u64, u64)>,
    /// Blobs (`raw-data`) or file contents (`files-by-contents`, `blobs-per-file`) met.
    seen: IdSet,
    /// `raw-data`: directories walked, by their list of tree blobs.
    dirs: IdSet,
    /// `blobs-per-file`: (path, blob) pairs and paths met.
    paths: IdSet,
    raw: RawSums,
}

impl Walk<'_> {
    /// Walk the directory made of the tree blobs `ids`, at `path`.
    fn dir(&mut self, ids: &[Id], path: &str) -> Result<()> {
        if self.mode == Mode::RawData {
            // Tree blobs are cut anywhere in the encoding, so a directory is known by the whole
            // list of its blobs, not by any one of them.
            if !self.dirs.insert(Id::of_parts(ids.iter().map(|i| &i.0[..]))) {
                return Ok(());
            }
            for id in ids {
                self.blob(id)?;
            }
        }
        for n in self.repo.read_tree_entries(ids)? {
            let n = n?;
            self.node(&n, path)?;
            if n.kind() == NodeKind::Dir {
                self.dir(&n.subtree, &format!("{path}/{}", n.display_name()))?;
            }
        }
        Ok(())
    }

    fn node(&mut self, n: &Node, path: &str) -> Result<()> {
        match self.mode {
            Mode::RestoreSize => {
                self.files += 1;
                if n.has_data() && (n.nlink <= 1 || self.links.insert((n.dev, n.ino))) {
                    self.size += n.size;
                }
            }
            Mode::FilesByContents | Mode::BlobsPerFile => {
                if !n.has_data() || !self.seen.insert(contents_key(n)) {
                    return Ok(());
                }
                if self.mode == Mode::FilesByContents {
                    self.files += 1;
                    self.size += n.size;
                    return Ok(());
                }
                let p = format!("{path}/{}", n.display_name());
                if self.paths.insert(Id::of_parts([p.as_bytes()])) {
                    self.files += 1;
                }
                for b in &n.content {
                    if self.paths.insert(Id::of_parts([p.as_bytes(), &b.0[..]])) {
                        self.size += u64::from(self.location(b)?.raw_len);
                        self.blobs += 1;
                    }
                }
            }
            Mode::RawData => {
                for b in &n.content {
                    self.blob(b)?;
                }
            }
        }
        Ok(())
    }

    /// `raw-data`: count blob `id` once.
    fn blob(&mut self, id: &Id) -> Result<()> {
        if !self.seen.insert(*id) {
            return Ok(());
        }
        let e = self.location(id)?;
        let (stored, uncompressed) = (u64::from(e.length), u64::from(e.raw_len) + TAG_LEN as u64);
        self.blobs += 1;
        self.raw.stored += stored;
        self.raw.uncompressed += uncompressed;
        if e.compressed {
            self.raw.compressed_stored += stored;
            self.raw.compressed_uncompressed += uncompressed;
        }
        Ok(())
    }

    fn location(&self, id: &Id) -> Result<crate::pack::BlobEntry> {
        self.repo.index().get(id).map(|l| l.entry).ok_or_else(|| {
            Error::new(
                ErrorKind::Missing,
                format!("blob {id} is not in the index (run 'lifeboat check')"),
            )
        })
    }
}

/// What makes two files' contents the same: size, holes and blobs.
fn contents_key(n: &Node) -> Id {
    let size = n.size.to_le_bytes();
    let holes: Vec<u8> = n
        .holes
        .iter()
        .flat_map(|&(o, l)| o.to_le_bytes().into_iter().chain(l.to_le_bytes()))
        .collect();
    let blobs: Vec<u8> = n.content.iter().flat_map(|b| b.0).collect();
    Id::of_parts([&size[..], &holes, &blobs])
}
