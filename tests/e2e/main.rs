//! End-to-end tests of the real `lifeboat` binary on real filesystems.
//!
//! One test binary with topic modules and shared fixtures. Several tests need root (device nodes,
//! ownership, `trusted.*` xattrs); the suite runs as root in CI.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod fixtures;
mod fuse;

mod bad_input;
mod block;
mod copy;
mod corruption;
mod crash;
mod diff;
mod exclude;
mod filters;
mod find;
mod incremental;
mod keys;
mod lifecycle;
mod repair;
mod roundtrip;
mod s3;
mod select;
mod stats;
mod stream;
