//! Filesystem entries and their metadata, read and applied relative to directory file descriptors.
//!
//! Everything goes through `*at` system calls on an open directory, never a full path, so paths far
//! deeper than `PATH_MAX` work. Extended attributes of a file being read come from its descriptor;
//! those of other entries are reached as `/proc/self/fd/<dirfd>/<name>` with the non-following
//! `l*xattr` calls, which also covers symlinks and special files that cannot be opened.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};

use crate::tree::{Node, NodeKind, Xattr};

/// `st_mode` → node kind.
pub fn kind_of(st: &Stat) -> NodeKind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => NodeKind::Dir,
        FileType::Symlink => NodeKind::Symlink,
        FileType::Fifo => NodeKind::Fifo,
        FileType::CharacterDevice => NodeKind::Chardev,
        FileType::BlockDevice => NodeKind::Blockdev,
        FileType::Socket => NodeKind::Socket,
        _ => NodeKind::File,
    }
}

/// A node from `stat` (content, subtree, target and xattrs are filled in by the caller).
// `stat` field types differ between architectures; the casts are identities on some.
#[allow(clippy::unnecessary_cast)]
pub fn node_from_stat(name: &[u8], st: &Stat) -> Node {
    let kind = kind_of(st);
    Node {
        name: name.to_vec(),
        kind: Some(kind),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime as i64,
        mtime_ns: st.st_mtime_nsec as u32,
        ctime: st.st_ctime as i64,
        ctime_ns: st.st_ctime_nsec as u32,
        ino: st.st_ino as u64,
        dev: st.st_dev as u64,
        nlink: st.st_nlink as u64,
        size: if kind == NodeKind::File {
            st.st_size as u64
        } else {
            0
        },
        rdev: if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
            st.st_rdev as u64
        } else {
            0
        },
        ..Node::default()
    }
}

/// Read exactly `len` bytes at `off` into a new buffer, without zero-filling it first.
///
/// # Errors
/// The first failed read, or `UnexpectedEof` when the file ends before `off + len`.
pub fn read_exact_at(fd: BorrowedFd<'_>, len: usize, mut off: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "read buffer"))?;
    while buf.len() < len {
        // `spare_capacity` reads into the uninitialised tail and extends `buf` by what was read.
        let n = match rustix::io::pread(fd, rustix::buffer::spare_capacity(&mut buf), off) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        off += n as u64;
    }
    // The allocator may have given more room than asked for, and the read filled it.
    buf.truncate(len);
    Ok(buf)
}

/// Write all of `data` at `off` (pwrite until done).
///
/// # Errors
/// The first failed write, or `WriteZero` when the file takes no more bytes.
pub fn write_all_at(fd: BorrowedFd<'_>, mut data: &[u8], mut off: u64) -> io::Result<()> {
    while !data.is_empty() {
        let n = match rustix::io::pwrite(fd, data, off) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        data = &data[n..];
        off += n as u64;
    }
    Ok(())
}

/// `lstat` of `name` in `dir`.
///
/// # Errors
/// The system call's error.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    Ok(rustix::fs::statat(
        dir,
        OsStr::from_bytes(name),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// How many files this process may have open, after raising the soft limit to the hard one, as
/// Go programs such as restic do: the common default soft limit of 1024 would otherwise cap a
/// walk or a restore, not protect anything.
pub fn open_file_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Descriptors [`grow_descriptor_table`] makes room for: what a restore with a writer per core
/// holds on a machine of up to 20 cores (256 files a batch, three batches a writer).
pub const DESCRIPTOR_TABLE: usize = 16 << 10;

/// Grow this process's descriptor table to [`DESCRIPTOR_TABLE`] entries (or the open-file limit)
/// now, while it has one thread. Linux grows the table as descriptors are opened, doubling it,
/// and in a process with threads every growth waits for an RCU grace period (`expand_files`
/// calls `synchronize_rcu`): 13-17 ms measured here, during which the thread opening the file
/// stands still. A restore of 30 000 small files (1 800 open at most) grew it three times, its
/// walker standing still each time. Call it first thing in `main`; the table then never grows
/// (nor shrinks).
pub fn grow_descriptor_table() {
    let want = DESCRIPTOR_TABLE.min(open_file_limit()).saturating_sub(1);
    // F_DUPFD gives the lowest free descriptor from `want` on, so the table covers `want`.
    if let Ok(root) = rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rustix::io::fcntl_dupfd_cloexec(&root, i32::try_from(want).unwrap_or(i32::MAX));
    }
}

/// Whether a system call failed because the process (or the system) has no file descriptor left.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// How long an open or a listing that finds no file descriptor waits for the process's other
/// threads to give theirs back ([`waiting_for_descriptors`]): they hold them for the time it
/// takes to read or write a file, and a pack's `fsync` on a busy disk can take a good part of a
/// second (500 ms once ran out in a test run beside many others).
pub const DESCRIPTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a wait lasts once a shortage has outlasted [`DESCRIPTOR_WAIT`]: the descriptors are
/// then held by what is waiting for them (a walk deeper than the limit), and every open past
/// that depth would otherwise pay the whole wait.
const LASTING_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Set when a wait ran out, cleared when a wait ends in success.
static SHORTAGE_LASTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `op()`, retried while it fails for want of a file descriptor (the process's other threads
/// give theirs back as they finish: files being read, directories being scanned); `short` runs
/// before each retry. The error stands after [`DESCRIPTOR_WAIT`], or after a few milliseconds
/// while the last shortage has outlasted that wait and none has ended since.
///
/// # Errors
/// `op`'s last error.
pub fn waiting_for_descriptors<T>(
    mut short: impl FnMut(),
    op: impl Fn() -> io::Result<T>,
) -> io::Result<T> {
    use std::sync::atomic::Ordering;
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(50);
    let mut waited = false;
    loop {
        match op() {
            Err(e) if out_of_descriptors(&e) => {
                let wait = if SHORTAGE_LASTS.load(Ordering::Relaxed) {
                    LASTING_WAIT
                } else {
                    DESCRIPTOR_WAIT
                };
                if start.elapsed() >= wait {
                    SHORTAGE_LASTS.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                waited = true;
                short();
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(5));
            }
            r => {
                if waited && r.is_ok() {
                    SHORTAGE_LASTS.store(false, Ordering::Relaxed);
                }
                return r;
            }
        }
    }
}

/// Open a directory by absolute or relative path (the top of a walk or restore).
///
/// # Errors
/// The system call's error.
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the directory `name` inside `dir` without following a symlink.
///
/// # Errors
/// The system call's error.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    open_noatime(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    )
}

/// Open the block device `name` inside `dir` read-only (following a symlink to it: volumes are
/// often named by /dev/mapper or /dev/disk links). The caller checks it is the device it stat'ed.
///
/// # Errors
/// The system call's error.
pub fn open_device_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the regular file `name` inside `dir` for reading, without following a symlink, without
/// blocking on a fifo swapped in underneath us, and without updating its access time where allowed.
///
/// # Errors
/// The system call's error.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    open_noatime(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
    )
}

fn open_noatime(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let n = OsStr::from_bytes(name);
    match rustix::fs::openat(dir, n, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME is only allowed to the file's owner (or CAP_FOWNER).
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::openat(dir, n, flags, Mode::empty())?),
        r => Ok(r?),
    }
}

/// The names in a directory, sorted bytewise, without `.` and `..`.
///
/// # Errors
/// The system call's error.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let names = read_dir(dir)?;
    Ok((0..names.len()).map(|i| names.name(i).to_vec()).collect())
}

/// A directory's names, sorted bytewise, in one buffer: about 16 bytes an entry besides the
/// name, where a `Vec<u8>` each costs 24 and an allocation.
pub struct DirNames {
    bytes: Vec<u8>,
    /// Where each name starts in `bytes`, its length, and whether the directory said it is a
    /// sub-directory (`d_type`; filesystems that do not say give `false`).
    names: Vec<(usize, u16, bool)>,
}

impl DirNames {
    /// How many names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The `i`th name.
    pub fn name(&self, i: usize) -> &[u8] {
        let (at, len, _) = self.names[i];
        &self.bytes[at..at + usize::from(len)]
    }

    /// Whether the directory listed the `i`th name as a sub-directory.
    pub fn says_dir(&self, i: usize) -> bool {
        self.names[i].2
    }

    /// Where `name` is, if listed.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.names
            .binary_search_by(|&(at, len, _)| self.bytes[at..at + usize::from(len)].cmp(name))
            .ok()
    }

    /// Keep only the names `keep` says yes to (their bytes stay in the buffer).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let bytes = &self.bytes;
        self.names
            .retain(|&(at, len, _)| keep(&bytes[at..at + usize::from(len)]));
    }
}

/// The names in a directory, sorted bytewise, without `.` and `..`.
///
/// # Errors
/// The system call's error; a name longer than 65 535 bytes (no filesystem allows one) is
/// `InvalidData`.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<DirNames> {
    let mut bytes = Vec::new();
    let mut names = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            let len = u16::try_from(n.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "name too long"))?;
            names.push((bytes.len(), len, e.file_type() == FileType::Directory));
            bytes.extend_from_slice(n);
        }
    }
    names.sort_unstable_by(|a, b| {
        bytes[a.0..a.0 + usize::from(a.1)].cmp(&bytes[b.0..b.0 + usize::from(b.1)])
    });
    bytes.shrink_to_fit();
    names.shrink_to_fit();
    Ok(DirNames { bytes, names })
}

/// Target of the symlink `name` in `dir`.
///
/// # Errors
/// The system call's error.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())?.into_bytes())
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> OsString {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    OsString::from_vec(p)
}

/// Every extended attribute of `name` in `dir`, sorted by name. A filesystem without xattr support
/// yields none.
///
/// # Errors
/// The system call's error.
pub fn read_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<Xattr>> {
    let path = proc_path(dir, name);
    collect_xattrs(
        |buf| rustix::fs::llistxattr(&path, buf),
        |attr, buf| rustix::fs::lgetxattr(&path, attr, buf),
    )
}

/// Every extended attribute of the open file `fd`, sorted by name: as [`read_xattrs`], without
/// resolving a `/proc/self/fd` path per entry (which was 5% of a backup of many small files).
///
/// # Errors
/// The system call's error.
pub fn read_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    collect_xattrs(
        |buf| rustix::fs::flistxattr(fd, buf),
        |attr, buf| rustix::fs::fgetxattr(fd, attr, buf),
    )
}

/// The attributes `list` names, each read with `get` (both called again with a larger buffer
/// when a value grew in between).
fn collect_xattrs(
    mut list_into: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
    mut get: impl FnMut(&OsStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<Xattr>> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match list_into(&mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = list_into(&mut [0u8; 0][..])?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for attr in list[..n].split(|b| *b == 0).filter(|a| !a.is_empty()) {
        let an = OsStr::from_bytes(attr);
        let mut value = vec![0u8; 256];
        let len = loop {
            match get(an, &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => {
                    let need = get(an, &mut [0u8; 0][..])?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push(Xattr {
                name: attr.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Set one extended attribute on `name` in `dir`.
///
/// # Errors
/// The system call's error.
pub fn set_xattr(dir: BorrowedFd<'_>, name: &[u8], x: &Xattr) -> io::Result<()> {
    Ok(rustix::fs::lsetxattr(
        proc_path(dir, name),
        OsStr::from_bytes(&x.name),
        &x.value,
        XattrFlags::empty(),
    )?)
}

/// Create a special file (fifo, device, socket) `name` in `dir`.
///
/// # Errors
/// The system call's error.
pub fn make_node(dir: BorrowedFd<'_>, node: &Node) -> io::Result<()> {
    let ft = match node.kind() {
        NodeKind::Fifo => FileType::Fifo,
        NodeKind::Chardev => FileType::CharacterDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
        k => return Err(io::Error::other(format!("not a special file: {k:?}"))),
    };
    Ok(rustix::fs::mknodat(
        dir,
        OsStr::from_bytes(&node.name),
        ft,
        Mode::from_bits_retain(node.mode & 0o777),
        node.rdev,
    )?)
}

/// What to apply metadata to: an entry of a directory (any kind, never followed), or an open file.
#[derive(Clone, Copy)]
pub enum MetaTarget<'a> {
    /// The entry `node.name` in this directory.
    At(BorrowedFd<'a>),
    /// This open regular file.
    Fd(BorrowedFd<'a>),
}

/// Apply ownership, permission bits, extended attributes and times, in the order that keeps them:
/// owner first (chown clears setuid/setgid), then mode (not on symlinks), xattrs, times last.
/// Ownership and xattrs the restoring user may not set are reported through `warn`, not fatal.
///
/// # Errors
/// The first error that is not a permission problem.
pub fn apply_meta(
    target: MetaTarget<'_>,
    node: &Node,
    warn: &mut dyn FnMut(String),
) -> io::Result<()> {
    let n = OsStr::from_bytes(&node.name);
    let (uid, gid) = (
        Some(rustix::fs::Uid::from_raw(node.uid)),
        Some(rustix::fs::Gid::from_raw(node.gid)),
    );
    let owned = match target {
        MetaTarget::At(dir) => rustix::fs::chownat(dir, n, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        MetaTarget::Fd(fd) => rustix::fs::fchown(fd, uid, gid),
    };
    match owned {
        Err(rustix::io::Errno::PERM) => warn(format!(
            "{}: cannot restore owner {}:{}",
            node.display_name(),
            node.uid,
            node.gid
        )),
        r => r?,
    }
    let mode = Mode::from_bits_retain(node.mode);
    match target {
        MetaTarget::At(_) if node.kind() == NodeKind::Symlink => {}
        MetaTarget::At(dir) => rustix::fs::chmodat(dir, n, mode, AtFlags::empty())?,
        MetaTarget::Fd(fd) => rustix::fs::fchmod(fd, mode)?,
    }
    for x in &node.xattrs {
        let set = match target {
            MetaTarget::At(dir) => set_xattr(dir, &node.name, x),
            MetaTarget::Fd(fd) => rustix::fs::fsetxattr(
                fd,
                OsStr::from_bytes(&x.name),
                &x.value,
                XattrFlags::empty(),
            )
            .map_err(Into::into),
        };
        if let Err(e) = set {
            warn(format!(
                "{}: cannot restore xattr {}: {e}",
                node.display_name(),
                String::from_utf8_lossy(&x.name)
            ));
        }
    }
    let t = Timespec {
        tv_sec: node.mtime,
        tv_nsec: i64::from(node.mtime_ns),
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    match target {
        MetaTarget::At(dir) => rustix::fs::utimensat(dir, n, &times, AtFlags::SYMLINK_NOFOLLOW)?,
        MetaTarget::Fd(fd) => rustix::fs::futimens(fd, &times)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    /// The table has room for [`DESCRIPTOR_TABLE`] descriptors afterwards (the kernel's `FDSize`),
    /// and no descriptor is left open.
    #[test]
    fn descriptor_table_is_grown_once_up_front() {
        let fd_size = || -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
            line["FDSize:".len()..].trim().parse().unwrap()
        };
        let want = DESCRIPTOR_TABLE.min(open_file_limit());
        grow_descriptor_table();
        assert!(fd_size() >= want, "FDSize {} < {want}", fd_size());
        // The descriptor that grew it is closed again (other tests open files meanwhile, so the
        // count of open descriptors would not do).
        let last = std::path::PathBuf::from(format!("/proc/self/fd/{}", want - 1));
        assert!(
            std::fs::symlink_metadata(&last).is_err(),
            "{} is open",
            last.display()
        );
    }

    /// A shortage that ends is waited out; one that outlasts the wait fails, and so does the next
    /// one at once, until a wait ends in success. (One test: the state is the process's.)
    #[test]
    fn descriptor_waits_end_with_the_shortage_and_stay_short_once_it_lasts() {
        let calls = Cell::new(0);
        let shorts = Cell::new(0);
        let got = waiting_for_descriptors(
            || shorts.set(shorts.get() + 1),
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 4 {
                    Err(emfile())
                } else {
                    Ok(7)
                }
            },
        );
        assert_eq!(got.unwrap(), 7);
        assert_eq!((calls.get(), shorts.get()), (4, 3));

        let other = waiting_for_descriptors(|| {}, || Err::<(), _>(io::Error::other("x")));
        assert!(!out_of_descriptors(&other.unwrap_err()));

        let start = std::time::Instant::now();
        let lasting = waiting_for_descriptors(|| {}, || Err::<(), _>(emfile()));
        assert!(out_of_descriptors(&lasting.unwrap_err()));
        assert!(start.elapsed() >= DESCRIPTOR_WAIT);

        let start = std::time::Instant::now();
        let again = waiting_for_descriptors(|| {}, || Err::<(), _>(emfile()));
        assert!(out_of_descriptors(&again.unwrap_err()));
        assert!(start.elapsed() < DESCRIPTOR_WAIT);

        calls.set(0);
        let ended = waiting_for_descriptors(
            || {},
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 2 {
                    Err(emfile())
                } else {
                    Ok(())
                }
            },
        );
        assert!(ended.is_ok());
        let start = std::time::Instant::now();
        let _ = waiting_for_descriptors(|| {}, || Err::<(), _>(emfile()));
        assert!(
            start.elapsed() >= DESCRIPTOR_WAIT,
            "a shortage that ended is waited for again"
        );
    }
}
