//! Lifeboat's data path: the repository format, backup and restore, and the pieces the `lifeboat`
//! CLI and the node agent are built from.
//!
//! Data flows one way, a module per stage:
//! [`fsmeta`] (read a tree) → [`chunker`] → [`crypto`] ids and dedup ([`index`]) → [`compress`] →
//! seal + [`pack`] → [`backend`] (object storage through opendal). [`backup`] runs that pipeline on
//! threads joined by bounded channels; [`restore`] is its mirror; [`check`] verifies a repository.
//! The on-storage format is documented in `docs/format.md`.
//!
//! ```no_run
//! use lifeboat::{Location, Repository, Secret, InitOptions, BackupOptions, Progress};
//! # fn main() -> lifeboat::Result<()> {
//! let loc = Location::parse("/srv/backups/repo")?;
//! let secret = Secret::password("correct horse battery staple")?;
//! let mut repo = Repository::init(&loc, &secret, &InitOptions::default())?;
//! repo.load_index()?;
//! let out = lifeboat::backup(&repo, &["/var/lib/app".into()], &BackupOptions::default(), &Progress::default())?;
//! println!("snapshot {}", out.id);
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
mod backup;
pub mod blobwriter;
pub mod cache;
mod check;
pub mod chunker;
pub mod compress;
pub mod copy;
pub mod crypto;
#[cfg(test)]
mod damage;
pub mod diff;
mod error;
pub mod find;
pub mod forget;
pub mod fsmeta;
mod id;
mod idset;
pub mod index;
mod keyslot;
pub mod pack;
pub mod pattern;
pub mod prune;
pub mod recover;
pub mod repair;
mod repo;
mod restore;
pub mod retention;
pub mod s3lock;
mod sink;
mod snapshot;
pub mod stats;
mod status;
pub mod tree;
pub mod units;

/// The `tracing` target of warnings a user must see whatever the verbosity: the data was read
/// right in the end, but something on the way is failing (a blob that read wrong once). The CLI
/// prints them as `lifeboat: warning: ...`.
pub const NOTICE: &str = "lifeboat::notice";

pub use backend::{Location, S3Location, StoreOptions};
pub use backup::{
    BackupOptions, BackupOutcome, ExcludeOptions, Progress, backup, backup_stream,
    check_stream_name, parse_changed_ranges,
};
pub use check::{CheckProgress, CheckReport, ReadData, check};
pub use chunker::Chunking;
pub use error::{Error, ErrorKind, Result, Retry};
pub use id::Id;
pub use keyslot::{KdfParams, KeySlot, Secret, SlotKind};
pub use repo::{Config, FORMAT_VERSION, InitOptions, LockConfig, Repository, SnapshotList};
pub use restore::{RestoreOptions, RestoreOutcome, RestoreProgress, dump, find_node, restore};
pub use snapshot::{
    Snapshot, SnapshotFilter, Summary, TagChange, absolute_path, has_tags, hostname, parse_tag_list,
};
