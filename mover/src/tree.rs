//! Trees: one serialized directory listing per directory, stored as chunked, deduplicated tree blobs.
//!
//! A directory's entries are encoded as CBOR (self-describing, so fields can be added later), then cut
//! by the same content-defined chunker as file data: an unchanged directory produces the same blobs
//! and costs nothing on re-backup, and a huge directory is split into many blobs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    Chardev,
    /// Block device.
    Blockdev,
    /// Unix socket.
    Socket,
}

/// An extended attribute (names and values are bytes; POSIX ACLs are the `system.posix_acl_*` ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Attribute value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One directory entry with everything restore needs, plus what change detection compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// File name (bytes: names need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Entry type.
    pub kind: Option<NodeKind>,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_ns: u32,
    /// Status change time (change detection only; cannot be restored).
    pub ctime: i64,
    /// Status change time, nanoseconds.
    pub ctime_ns: u32,
    /// Inode number at backup time (change detection and hard links).
    pub ino: u64,
    /// Device at backup time (hard links).
    pub dev: u64,
    /// Link count at backup time.
    pub nlink: u64,
    /// File size in bytes (holes included).
    #[serde(default)]
    pub size: u64,
    /// Device number of a device node.
    #[serde(default)]
    pub rdev: u64,
    /// A block device whose contents were backed up (a volume given by path to `backup`): `size`,
    /// `content` and `holes` (its all-zero ranges) describe the device's bytes, and restore writes
    /// them onto a device or into an image file. A block device met inside a directory is a device
    /// node only and has no contents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image: bool,
    /// Symlink target.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<u8>,
    /// Data blobs of a file, in order, filling the parts that are not holes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Holes of a sparse file as `(offset, length)`, sorted, not overlapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<(u64, u64)>,
    /// Tree blobs of a directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtree: Vec<Id>,
    /// Extended attributes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// The entry type (a decoded node always has one).
    pub fn kind(&self) -> NodeKind {
        self.kind.unwrap_or(NodeKind::File)
    }

    /// Whether the node has byte contents: a regular file or a backed-up block device.
    pub fn has_data(&self) -> bool {
        self.kind() == NodeKind::File || (self.kind() == NodeKind::Blockdev && self.image)
    }

    /// The name for display (lossy where not UTF-8).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The data regions `(offset, length)` of a file: the complement of its holes within its size.
    pub fn data_regions(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for &(off, len) in &self.holes {
            if off > pos {
                out.push((pos, off - pos));
            }
            pos = off + len;
        }
        if self.size > pos {
            out.push((pos, self.size - pos));
        }
        out
    }
}

/// A directory listing, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries.
    pub nodes: Vec<Node>,
}

/// Whether a name is safe to create inside a directory: no `/`, no NUL, not `.` or `..`, not empty.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Tree {
    /// Serialize.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec cannot fail");
        out
    }

    /// Deserialize and validate: names must be safe and strictly sorted, every node must have a kind
    /// and consistent holes, so a damaged or hostile tree can never make restore write outside its
    /// target.
    ///
    /// # Errors
    /// `Corrupt` when malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let t: Tree = ciborium::from_reader(bytes)
            .map_err(|e| Error::corrupt(format!("tree does not decode: {e}")))?;
        for w in t.nodes.windows(2) {
            if w[0].name >= w[1].name {
                return Err(Error::corrupt("tree entries are not strictly sorted"));
            }
        }
        for n in &t.nodes {
            if !valid_name(&n.name)
                || n.kind.is_none()
                || (n.image && n.kind != Some(NodeKind::Blockdev))
            {
                return Err(Error::corrupt(format!(
                    "tree has an invalid entry {:?}",
                    n.display_name()
                )));
            }
            let mut pos = 0u64;
            for &(off, len) in &n.holes {
                let end = off
                    .checked_add(len)
                    .ok_or_else(|| Error::corrupt("hole out of range"))?;
                if off < pos || len == 0 || end > n.size {
                    return Err(Error::corrupt("tree has inconsistent holes"));
                }
                pos = end;
            }
        }
        Ok(t)
    }
}
