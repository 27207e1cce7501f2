//! A local cache of a remote repository's metadata: index objects, snapshots and tree packs.
//!
//! An unchanged re-backup into S3 otherwise fetches every index object, the parent snapshot and
//! every tree of it over the network each time; restic and rustic keep the same kind of cache.
//! Everything cached is immutable and named by the hash of its bytes, so an entry is either right or
//! detectably wrong: bytes are checked against their name when they enter the cache and when an
//! index object or snapshot leaves it, and a tree blob read from a cached pack is authenticated and
//! id-checked as always. A damaged entry is dropped and fetched again. The cache only ever serves
//! objects the repository still lists: what it holds beyond that (deleted by a prune, or by
//! another host) is removed when the listing is next read.
//!
//! It is best effort: a cache that cannot be written (full disk, read-only home) never fails an
//! operation. Entries are written to a temporary file and renamed, so a crash leaves no partial
//! entry, and processes sharing the directory see whole files or none.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::id::Id;

/// The cache directory of one repository: `ROOT/<repository id>/`.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    /// Serialises fetches of the same pack by parallel readers (striped by name).
    fetching: [std::sync::Mutex<()>; 16],
}

const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by Lifeboat.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

impl Cache {
    /// The cache of repository `repo` under `root`, created (mode 0700) if needed; `None`, with a
    /// warning, when it cannot be created.
    pub fn open(root: &Path, repo: &Id) -> Option<Self> {
        let dir = root.join(repo.to_hex());
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| {
                let tag = root.join("CACHEDIR.TAG");
                if tag.exists() {
                    Ok(())
                } else {
                    std::fs::write(tag, TAG)
                }
            });
        if let Err(e) = made {
            tracing::warn!("not using the cache at {}: {e}", root.display());
            return None;
        }
        Some(Self {
            dir,
            fetching: Default::default(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A cached object whose bytes hash to the id its name ends with; a damaged one is removed.
    pub fn get_object(&self, name: &str) -> Option<Vec<u8>> {
        let data = std::fs::read(self.path(name)).ok()?;
        if name_matches(name, &data) {
            Some(data)
        } else {
            tracing::warn!("cached {name} is damaged: fetching it again");
            self.remove(name);
            None
        }
    }

    /// `len` bytes at `offset` of a cached pack, or `None` (not cached, or too short).
    pub fn get_range(&self, name: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        let f = std::fs::File::open(self.path(name)).ok()?;
        crate::fsmeta::read_exact_at(f.as_fd(), usize::try_from(len).ok()?, offset).ok()
    }

    /// Whether `name` is cached.
    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Store `data` as `name` if it hashes to the id the name ends with (anything else is not
    /// cached); failures are ignored.
    pub fn put(&self, name: &str, data: &[u8]) {
        if !name_matches(name, data) {
            return;
        }
        let path = self.path(name);
        let write = || -> std::io::Result<()> {
            let parent = path.parent().expect("cache entries are in a directory");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
            let mut tmp = tempfile::NamedTempFile::with_prefix_in(".tmp-", parent)?;
            tmp.write_all(data)?;
            tmp.persist(&path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!("caching {name}: {e}");
        }
    }

    /// Forget `name`.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Hold while fetching `name` whole, so parallel readers of one pack fetch it once.
    pub fn fetch_guard(&self, name: &str) -> std::sync::MutexGuard<'_, ()> {
        let stripe = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize);
        self.fetching[stripe % self.fetching.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remove every entry under `prefix` (`index/`, `snapshots/`, `data/`) whose id `keep` rejects,
    /// and stray temporary files.
    pub fn retain(&self, prefix: &str, keep: impl Fn(&Id) -> bool) {
        let mut dirs = vec![self.path(prefix)];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(p);
                    continue;
                }
                let name = e.file_name();
                let name = name.to_string_lossy();
                let stale_tmp = name.starts_with(".tmp-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 3600));
                if stale_tmp || name.parse::<Id>().is_ok_and(|id| !keep(&id)) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

/// Whether `data` hashes to the id at the end of `name`.
fn name_matches(name: &str, data: &[u8]) -> bool {
    name.rsplit('/')
        .next()
        .and_then(|n| n.parse::<Id>().ok())
        .is_some_and(|id| Id::of_object(data) == id)
}
