//! Lifeboat's Kubernetes controller.
//!
//! Skeleton: the custom resources (repositories, policies, backups, restores), discovery of each
//! application's objects and volumes, per-application scheduling, hand-off of volumes to the node
//! agent, retention and offsite export arrive with the controller issue. The data path it drives
//! is the `lifeboat-mover` crate.
