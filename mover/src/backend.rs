//! The storage edge: a small synchronous facade over an opendal operator.
//!
//! The data path runs on plain threads; each storage call blocks on a private tokio runtime. This is
//! the only async in the mover. Every object name is a content hash or a random id, and objects are
//! never modified after they are written.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};

use opendal::Operator;

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
}

impl Location {
    /// Parse `--repo`: a plain path is a local repository.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or unsupported location.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid(
                "the repository location is empty (set --repo or LIFEBOAT_REPO)",
            ));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme}:// is not supported yet; use a local path"
            )));
        }
        Ok(Location::Local(
            std::path::absolute(s).map_err(|e| Error::io(s, e))?,
        ))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Returns whether the object's directory had to be created.
fn write_local(root: &Path, name: &str, data: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    let target = root.join(name);
    let mut created = false;
    if let Some(parent) = target.parent()
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent)?;
        created = true;
    }
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = tmp_dir(root).join(format!("{}.{}", name.replace('/', "_"), hex::encode(rnd)));
    std::fs::create_dir_all(tmp_dir(root))?;
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| created)
}

fn read_local(path: &Path, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::Missing
        } else {
            ErrorKind::Storage
        };
        Error::new(kind, format!("reading {name}: {e}"))
    })?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt(format!("{name} is truncated"))
        } else {
            Error::new(ErrorKind::Storage, format!("reading {name}: {e}"))
        }
    })?;
    Ok(buf)
}

/// Object names.
pub mod names {
    use super::Id;
    /// The plaintext repository config.
    pub const CONFIG: &str = "config";
    /// Key slots.
    pub const KEYS: &str = "keys/";
    /// Snapshot objects.
    pub const SNAPSHOTS: &str = "snapshots/";
    /// Index objects.
    pub const INDEX: &str = "index/";
    /// Packs, fanned out by the first byte of their id.
    pub const DATA: &str = "data/";

    /// The name of a pack.
    pub fn pack(id: &Id) -> String {
        let h = id.to_hex();
        format!("data/{}/{h}", &h[..2])
    }
}

/// A storage backend.
pub struct Store {
    rt: tokio::runtime::Runtime,
    op: Operator,
    location: Location,
    /// Directories that received new names since the last [`Store::sync`].
    dirty: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

fn storage_err(what: &str, e: opendal::Error) -> Error {
    Error::from(e).context(what)
}

impl Store {
    /// Connect to `location`. With `create` false, a location that holds no repository config is an
    /// error and nothing is created there.
    ///
    /// # Errors
    /// `RepositoryNotFound`, `NotARepository`, or a storage error.
    pub fn open(location: &Location, create: bool) -> Result<Self> {
        let Location::Local(root) = location;
        if !create {
            if !root.is_dir() {
                return Err(Error::new(
                    ErrorKind::RepositoryNotFound,
                    format!(
                        "no repository at {}: the directory does not exist",
                        root.display()
                    ),
                ));
            }
            if !root.join(names::CONFIG).is_file() {
                return Err(Error::new(
                    ErrorKind::NotARepository,
                    format!(
                        "{} is not a Lifeboat repository (it has no config)",
                        root.display()
                    ),
                ));
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lifeboat-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the I/O runtime", e))?;
        let builder = opendal::services::Fs::default()
            .root(&root.to_string_lossy())
            .atomic_write_dir(&tmp_dir(root).to_string_lossy());
        let op = Operator::new(builder).map_err(|e| storage_err("opening the repository", e))?;
        Ok(Self {
            rt,
            op,
            location: location.clone(),
            dirty: std::sync::Mutex::default(),
        })
    }

    /// Where this store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Read a whole object.
    ///
    /// # Errors
    /// `Missing` when absent, else a storage error.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.rt
            .block_on(self.op.read(name))
            .map(|b| b.to_vec())
            .map_err(|e| storage_err(&format!("reading {name}"), e))
    }

    /// Read `len` bytes at `offset`; a short object is `Corrupt`.
    ///
    /// # Errors
    /// `Missing`, `Corrupt` (truncated) or a storage error.
    pub fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        // Local repositories read ranges straight from the file: opendal's fs service hops through
        // tokio's blocking pool for every open, seek and read, which profiling showed costing more
        // than decryption and decompression together when restoring many small blobs. Everything
        // else (writes, listing, deletion) goes through opendal.
        match &self.location {
            Location::Local(root) => read_local(&root.join(name), name, offset, len),
        }
    }

    /// Write a new object (atomically: it appears whole or not at all).
    ///
    /// # Errors
    /// A storage error.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let created = match &self.location {
            // Like opendal's fs service (data synced, then renamed into place), without its hops
            // through tokio's blocking pool and without copying the pack into an owned buffer.
            Location::Local(root) => write_local(root, name, data)
                .map_err(|e| Error::new(ErrorKind::Storage, format!("writing {name}: {e}")))?,
        };
        // The object's directory holds the new name; a directory created for it (a new `data/xx/`
        // fan-out) is itself a new name in its parent, which must be synced too, or a power loss
        // could drop the whole directory with the packs in it.
        let parent = |s: &str| s.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let mut dirty = self.dirty.lock().expect("dirty lock");
        let mut dir = parent(name);
        loop {
            let up = parent(&dir);
            let top = dir.is_empty();
            dirty.insert(dir);
            if !created || top {
                break;
            }
            dir = up;
        }
        Ok(())
    }

    /// Make every write so far durable. The fs backend syncs each object's data before renaming
    /// it into place, but a rename is only durable once its directory is synced: without this, a
    /// power loss could keep a snapshot while losing a pack it needs. Called at each commit point.
    ///
    /// # Errors
    /// When a directory cannot be synced.
    pub fn sync(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        let Location::Local(root) = &self.location;
        for d in dirs {
            let p = root.join(&d);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(p.display(), e))?;
        }
        Ok(())
    }

    /// Whether an object exists.
    ///
    /// # Errors
    /// A storage error.
    pub fn exists(&self, name: &str) -> Result<bool> {
        self.rt
            .block_on(self.op.exists(name))
            .map_err(|e| storage_err(&format!("checking {name}"), e))
    }

    /// Size of an object.
    ///
    /// # Errors
    /// `Missing` when absent, else a storage error.
    pub fn size(&self, name: &str) -> Result<u64> {
        self.rt
            .block_on(self.op.stat(name))
            .map(|m| m.content_length())
            .map_err(|e| storage_err(&format!("reading {name}"), e))
    }

    /// Delete an object.
    ///
    /// # Errors
    /// A storage error.
    pub fn delete(&self, name: &str) -> Result<()> {
        self.rt
            .block_on(self.op.delete(name))
            .map_err(|e| storage_err(&format!("deleting {name}"), e))
    }

    /// The ids of the objects under a prefix (`keys/`, `snapshots/`, `index/`, `data/`), recursively.
    /// Names that are not ids (temporary files, strays) are skipped.
    ///
    /// # Errors
    /// A storage error.
    pub fn list_ids(&self, prefix: &str) -> Result<Vec<Id>> {
        let entries = self
            .rt
            .block_on(self.op.list_with(prefix).recursive(true).into_future())
            .or_else(|e| {
                if e.kind() == opendal::ErrorKind::NotFound {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| storage_err(&format!("listing {prefix}"), e))?;
        let mut ids: Vec<Id> = entries
            .iter()
            .filter(|e| e.metadata().is_file())
            .filter_map(|e| e.path().rsplit('/').next()?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

fn tmp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}
