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

/// Encodes a tree one node at a time, to exactly the bytes [`Tree::encode`] gives for all of
/// them: a directory being backed up holds its entries' encoded bytes (about 130 bytes a small
/// file) instead of their nodes (about 330 bytes, and then the encoding on top).
pub struct TreeEncoder {
    /// `HEAD_ROOM` bytes kept for the header, then the nodes.
    buf: Vec<u8>,
    count: u64,
}

/// Room for the header: a map of one entry (1 byte), the key `"nodes"` (6), and the array's
/// length (at most 9).
const HEAD_ROOM: usize = 16;

impl Default for TreeEncoder {
    fn default() -> Self {
        Self {
            buf: vec![0; HEAD_ROOM],
            count: 0,
        }
    }
}

impl TreeEncoder {
    /// Append the next entry (entries come sorted by name).
    pub fn push(&mut self, node: &Node) {
        ciborium::into_writer(node, &mut self.buf).expect("CBOR encoding into a Vec cannot fail");
        self.count += 1;
    }

    /// The encoded tree: `buf[start..]` of the returned `(buf, start)`.
    pub fn finish(mut self) -> (Vec<u8>, usize) {
        // CBOR's shortest form of the array's length, as ciborium writes it.
        let n = self.count;
        let mut len = Vec::with_capacity(9);
        match n {
            0..=23 => len.push(0x80 | n as u8),
            24..=0xff => len.extend_from_slice(&[0x98, n as u8]),
            0x100..=0xffff => {
                len.push(0x99);
                len.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                len.push(0x9a);
                len.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                len.push(0x9b);
                len.extend_from_slice(&n.to_be_bytes());
            }
        }
        let head: Vec<u8> = [&[0xa1, 0x65][..], b"nodes", &len].concat();
        let start = HEAD_ROOM - head.len();
        self.buf[start..HEAD_ROOM].copy_from_slice(&head);
        (self.buf, start)
    }
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
        let mut prev = None;
        for n in &t.nodes {
            check_entry(n, prev)?;
            prev = Some(&n.name[..]);
        }
        Ok(t)
    }
}

/// What [`Tree::decode`] checks of each entry: a safe name after the previous one, a kind, and
/// holes in order inside the file.
fn check_entry(n: &Node, prev: Option<&[u8]>) -> Result<()> {
    if prev.is_some_and(|p| p >= &n.name[..]) {
        return Err(Error::corrupt("tree entries are not strictly sorted"));
    }
    if !valid_name(&n.name) || n.kind.is_none() || (n.image && n.kind != Some(NodeKind::Blockdev)) {
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
    Ok(())
}

/// A tree's entries decoded one at a time as they are used, each checked as [`Tree::decode`]
/// checks it: a restore holds a directory's encoded bytes (about 130 bytes a small file) instead
/// of its decoded nodes (about 330). An entry that fails its check ends the iteration with the
/// error.
pub struct TreeEntries {
    bytes: Vec<u8>,
    pos: usize,
    left: u64,
    prev: Option<Vec<u8>>,
    /// A tree not laid out as [`TreeEncoder`] writes it, decoded whole.
    whole: Option<std::vec::IntoIter<Node>>,
}

impl TreeEntries {
    /// The entries of the encoded tree `bytes`.
    ///
    /// # Errors
    /// `Corrupt` when a tree not laid out as Lifeboat writes it does not decode.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        if let Some((left, pos)) = parse_head(&bytes) {
            return Ok(Self {
                bytes,
                pos,
                left,
                prev: None,
                whole: None,
            });
        }
        Ok(Self {
            bytes: Vec::new(),
            pos: 0,
            left: 0,
            prev: None,
            whole: Some(Tree::decode(&bytes)?.nodes.into_iter()),
        })
    }

    /// End the iteration with `e`.
    fn fail(&mut self, e: Error) -> Result<Node> {
        self.left = 0;
        Err(e)
    }
}

/// The number of entries and where the first starts, when `bytes` begin as [`TreeEncoder`]
/// writes them: a map of one entry, `"nodes"`, and a definite-length array.
fn parse_head(bytes: &[u8]) -> Option<(u64, usize)> {
    let rest = bytes
        .strip_prefix(&[0xa1, 0x65][..])?
        .strip_prefix(b"nodes")?;
    let at = bytes.len() - rest.len();
    let (&first, rest) = rest.split_first()?;
    let wide = |n: usize| -> Option<u64> {
        let b = rest.get(..n)?;
        Some(b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    };
    match first {
        0x80..=0x97 => Some((u64::from(first & 0x1f), at + 1)),
        0x98 => Some((wide(1)?, at + 2)),
        0x99 => Some((wide(2)?, at + 3)),
        0x9a => Some((wide(4)?, at + 5)),
        0x9b => Some((wide(8)?, at + 9)),
        _ => None,
    }
}

impl Iterator for TreeEntries {
    type Item = Result<Node>;

    fn next(&mut self) -> Option<Result<Node>> {
        if let Some(whole) = &mut self.whole {
            return whole.next().map(Ok);
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut rest = &self.bytes[self.pos..];
        let node: Node = match ciborium::from_reader(&mut rest) {
            Ok(n) => n,
            Err(e) => return Some(self.fail(Error::corrupt(format!("tree does not decode: {e}")))),
        };
        self.pos = self.bytes.len() - rest.len();
        if let Err(e) = check_entry(&node, self.prev.as_deref()) {
            return Some(self.fail(e));
        }
        self.prev = Some(node.name.clone());
        Some(Ok(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> Node {
        let mut n = Node {
            name: format!("entry-{i:07}").into_bytes(),
            kind: Some([NodeKind::File, NodeKind::Dir, NodeKind::Symlink][i % 3]),
            mode: 0o644,
            size: i as u64 * 7,
            mtime: 1_700_000_000 + i as i64,
            ino: i as u64,
            nlink: 1,
            ..Node::default()
        };
        match n.kind() {
            NodeKind::File => n.content = vec![Id([i as u8; 32]); i % 3],
            NodeKind::Dir => n.subtree = vec![Id([1; 32])],
            _ => n.target = b"../elsewhere".to_vec(),
        }
        if i.is_multiple_of(5) {
            n.xattrs.push(Xattr {
                name: b"user.note".to_vec(),
                value: vec![i as u8; 3],
            });
        }
        n
    }

    /// Tree blob ids are hashes of these bytes: the streamed encoding must equal the whole-tree
    /// one at every width of the array's length, or unchanged directories stop deduplicating.
    #[test]
    fn tree_encoder_matches_the_whole_tree_encoding() {
        for count in [0, 1, 23, 24, 255, 256, 65_535, 65_536] {
            let nodes: Vec<Node> = (0..count).map(node).collect();
            let mut enc = TreeEncoder::default();
            for n in &nodes {
                enc.push(n);
            }
            let (buf, start) = enc.finish();
            let whole = Tree { nodes }.encode();
            assert!(
                buf[start..] == whole[..],
                "{count} nodes encode differently"
            );
            assert_eq!(Tree::decode(&buf[start..]).unwrap().nodes.len(), count);
            let streamed: Vec<Node> = TreeEntries::new(buf[start..].to_vec())
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert!(
                streamed == Tree::decode(&whole).unwrap().nodes,
                "{count} nodes"
            );
        }
    }

    /// Entries decoded one at a time are checked as a whole-tree decode checks them.
    #[test]
    fn tree_entries_check_each_entry() {
        let encode = |nodes: &[Node]| {
            let mut enc = TreeEncoder::default();
            for n in nodes {
                enc.push(n);
            }
            let (buf, start) = enc.finish();
            buf[start..].to_vec()
        };
        let bad = |nodes: Vec<Node>, what: &str| {
            let bytes = encode(&nodes);
            assert!(Tree::decode(&bytes).is_err(), "{what}: decode accepted it");
            let r: Result<Vec<Node>> = TreeEntries::new(bytes).unwrap().collect();
            assert!(r.is_err(), "{what}: entries accepted it");
        };
        bad(vec![node(2), node(1)], "unsorted");
        bad(vec![node(1), node(1)], "duplicate");
        let mut up = node(0);
        up.name = b"..".to_vec();
        bad(vec![up], "dot-dot");
        let mut slash = node(0);
        slash.name = b"a/b".to_vec();
        bad(vec![slash], "slash");
        let mut hole = node(3);
        hole.holes = vec![(0, hole.size + 1)];
        bad(vec![hole], "hole past the end");
        // Truncated: the count says more entries than there are.
        let mut bytes = encode(&[node(1), node(2)]);
        bytes.truncate(bytes.len() - 3);
        let r: Result<Vec<Node>> = TreeEntries::new(bytes).unwrap().collect();
        assert!(r.is_err(), "truncated tree accepted");
        // Another layout (here: a second map key) is decoded whole, as before.
        let mut other = vec![0xa2, 0x65];
        other.extend_from_slice(b"nodes");
        other.push(0x81);
        ciborium::into_writer(&node(1), &mut other).unwrap();
        other.extend_from_slice(&[0x61, b'x', 0x01]);
        let r: Vec<Node> = TreeEntries::new(other)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(r, vec![node(1)]);
    }
}
