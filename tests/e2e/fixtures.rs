//! Shared fixtures: a repository in a temp dir driven through the binary, a source tree holding
//! every kind of entry, and an independent scanner to compare trees by content and metadata.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

pub const PASSWORD: &str = "correct-horse-battery-staple-7f3a";

/// A repository (in a fresh temp dir unless given) and a scratch dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// `--repo` when it is not the local `repo` (an `s3://` URL).
    pub url: Option<String>,
    /// Extra environment for every command (S3 endpoint and credentials).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let env = Env {
            dir,
            repo,
            url: None,
            vars: Vec::new(),
        };
        env.ok(&["init"]);
        env
    }

    /// A new repository at `url`, with `vars` set for every command.
    pub fn at(url: &str, vars: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("unused");
        let env = Env {
            dir,
            repo,
            url: Some(url.to_owned()),
            vars,
        };
        env.ok(&["init"]);
        env
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.args(args)
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .env("LIFEBOAT_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("LIFEBOAT_LOG");
        match &self.url {
            Some(u) => c.env("LIFEBOAT_REPO", u),
            None => c.env("LIFEBOAT_REPO", &self.repo),
        };
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Start `lifeboat ARGS`, SIGKILL it after `delay`; returns whether it had finished already.
    pub fn kill_after(&self, args: &[&str], delay: std::time::Duration) -> bool {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        finished
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run `lifeboat ARGS` with at most `nofile` open files (soft and hard limit, so it cannot
    /// raise it) and require success; returns stdout.
    pub fn ok_with_open_files(&self, nofile: u32, args: &[&str]) -> String {
        stdout_of_success(
            self.run_with_open_files(nofile, args),
            &format!("lifeboat {args:?} under {nofile} open files"),
        )
    }

    /// Run `lifeboat ARGS` with at most `nofile` open files.
    pub fn run_with_open_files(&self, nofile: u32, args: &[&str]) -> Output {
        let inner = self.cmd(args);
        let mut c = Command::new("prlimit");
        c.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(self.run(args), &format!("lifeboat {args:?}"))
    }

    /// Run and require failure with exactly one line on stderr and no panic; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        fails_cleanly(self.run(args), args)
    }

    /// `backup --json` and its parsed line.
    pub fn backup(&self, paths: &[&Path]) -> serde_json::Value {
        let mut args = vec!["backup", "--json"];
        let ps: Vec<String> = paths
            .iter()
            .map(|p| p.to_str().unwrap().to_owned())
            .collect();
        args.extend(ps.iter().map(String::as_str));
        let out = self.ok(&args);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "backup --json must print exactly one line: {out}"
        );
        serde_json::from_str(lines[0]).unwrap()
    }

    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walk_files(&self.repo.join(prefix));
        v.sort();
        v
    }
}

/// The stdout of a command `what` that must have succeeded (else its status and stderr).
pub fn stdout_of_success(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

pub fn fails_cleanly(o: Output, args: &[&str]) -> String {
    assert!(!o.status.success(), "lifeboat {args:?} should have failed");
    assert_eq!(
        o.status.code(),
        Some(1),
        "lifeboat {args:?}: unexpected exit {:?}",
        o.status
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("lifeboat: error"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(!err.contains(PASSWORD), "secret leaked: {err}");
    lines[0].to_owned()
}

pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, mut s: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    s |= 1;
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn at(dir: BorrowedFd<'_>, name: &[u8]) -> Timestamps {
    let _ = (dir, name);
    let t = Timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 123_456_789,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A POSIX access ACL (`user::rwx user:1234:r-- group::r-x mask::r-x other::r--`) in its xattr form.
pub fn acl_xattr() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 4, 1234),
        (0x04, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Build a tree holding every kind of entry Lifeboat must keep.
pub fn make_fixture(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    w("empty-file", b"");
    w("small.txt", b"hello lifeboat\n");
    w("dir/big.bin", &noise(9 << 20, 1));
    w(
        "dir/sub/compressible.txt",
        &b"all work and no play ".repeat(100_000),
    );
    w("dir/hardlink-a", b"shared inode content");
    // Small files with the same content (one blob) restored in one writer batch, and a read-only
    // one whose mode is set only after its data is written.
    let dup = noise(300_000, 4);
    w("dup-a", &dup);
    w("dir/dup-b", &dup);
    w("dup-c", &dup);
    w("read-only", &dup[..1000]);
    set_mode(root, "read-only", 0o400);
    std::fs::hard_link(root.join("dir/hardlink-a"), root.join("dir/sub/hardlink-b")).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    let rootfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        &rootfd,
        "fifo",
        FileType::Fifo,
        Mode::from_bits_retain(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        &rootfd,
        "chardev",
        FileType::CharacterDevice,
        Mode::from_bits_retain(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        &rootfd,
        "blockdev",
        FileType::BlockDevice,
        Mode::from_bits_retain(0o600),
        rustix::fs::makedev(7, 200),
    )
    .unwrap();
    // Names that are not UTF-8.
    std::fs::write(
        root.join(OsStr::from_bytes(b"caf\xe9-latin1")),
        b"latin-1 name",
    )
    .unwrap();
    std::fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xff\xfe"))).unwrap();
    // Special permission bits and ownership.
    w("setuid", b"#!/bin/sh\n");
    set_mode(root, "setuid", 0o4755);
    w("setgid", b"x");
    set_mode(root, "setgid", 0o2750);
    std::fs::create_dir(root.join("sticky")).unwrap();
    set_mode(root, "sticky", 0o1777);
    w("owned", b"owned by someone else");
    rustix::fs::chownat(
        &rootfd,
        "owned",
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
        AtFlags::empty(),
    )
    .unwrap();
    rustix::fs::chownat(
        &rootfd,
        "link-rel",
        Some(rustix::fs::Uid::from_raw(4321)),
        Some(rustix::fs::Gid::from_raw(8765)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    // Extended attributes of every namespace, and a POSIX ACL.
    w("xattrs", b"with attributes");
    let p = root.join("xattrs");
    for (n, v) in [
        ("user.comment", &b"hello"[..]),
        ("user.binary", &[0u8, 1, 2, 255][..]),
        ("trusted.lifeboat", b"t"),
        ("security.lifeboat", b"s"),
    ] {
        rustix::fs::setxattr(&p, n, v, rustix::fs::XattrFlags::empty()).unwrap();
    }
    rustix::fs::setxattr(
        &p,
        "system.posix_acl_access",
        &acl_xattr(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("dir"),
        "user.dir-attr",
        b"on a directory",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Read from the open file for its first name, by name for the second.
    rustix::fs::setxattr(
        root.join("dir/hardlink-a"),
        "user.linked",
        b"on both names",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // A sparse file: 64 MiB with three small data islands.
    {
        let f = std::fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&noise(100_000, 2), 1 << 20).unwrap();
        f.write_all_at(b"middle", 30 << 20).unwrap();
        f.write_all_at(&noise(5000, 3), (64 << 20) - 5000).unwrap();
    }
    {
        let mut f = std::fs::File::create(root.join("sparse-tail-hole")).unwrap();
        f.write_all(b"data then a hole").unwrap();
        f.set_len(8 << 20).unwrap();
    }
    // A path far deeper than PATH_MAX (4096), built with *at calls.
    let mut fd: OwnedFd = rustix::fs::openat(
        &rootfd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let name = "d".repeat(200);
    for _ in 0..30 {
        rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_bits_retain(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = rustix::fs::openat(
        &fd,
        "deep-file",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_bits_retain(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"at the bottom").unwrap();
    drop(f);
    // Nanosecond mtimes everywhere (set last, children before parents).
    set_times_recursive(rootfd.as_fd());
}

fn set_mode(root: &Path, p: &str, mode: u32) {
    rustix::fs::chmod(root.join(p), Mode::from_bits_retain(mode)).unwrap();
}

fn set_times_recursive(dir: BorrowedFd<'_>) {
    for name in lifeboat::fsmeta::list_dir(dir).unwrap() {
        let st = lifeboat::fsmeta::stat_at(dir, &name).unwrap();
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = lifeboat::fsmeta::open_dir_at(dir, &name).unwrap();
            set_times_recursive(sub.as_fd());
        }
        rustix::fs::utimensat(
            dir,
            OsStr::from_bytes(&name),
            &at(dir, &name),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Meta {
    pub kind: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u64),
    pub size: u64,
    pub content: Option<blake3::Hash>,
    pub target: Vec<u8>,
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Data regions (`SEEK_DATA`/`SEEK_HOLE`) of regular files.
    pub regions: Vec<(u64, u64)>,
    /// Index of the hard-link group (the first path of the group), for regular files with links.
    pub link_group: Option<Vec<u8>>,
}

/// Scan a tree through directory fds (deep paths work). Keys are paths relative to `root`.
pub fn scan(root: &Path) -> BTreeMap<Vec<u8>, Meta> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    scan_dir(fd.as_fd(), b"", &mut out, &mut inodes);
    out
}

#[allow(clippy::unnecessary_cast)]
fn scan_dir(
    dir: BorrowedFd<'_>,
    prefix: &[u8],
    out: &mut BTreeMap<Vec<u8>, Meta>,
    inodes: &mut BTreeMap<u64, Vec<u8>>,
) {
    for name in lifeboat::fsmeta::list_dir(dir).unwrap() {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        let st =
            rustix::fs::statat(dir, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let kind = FileType::from_raw_mode(st.st_mode);
        let mut m = Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u64),
            size: if kind == FileType::RegularFile {
                st.st_size as u64
            } else {
                0
            },
            content: None,
            target: Vec::new(),
            rdev: if matches!(kind, FileType::CharacterDevice | FileType::BlockDevice) {
                st.st_rdev as u64
            } else {
                0
            },
            xattrs: lifeboat::fsmeta::read_xattrs(dir, &name)
                .unwrap()
                .into_iter()
                .map(|x| (x.name, x.value))
                .collect(),
            regions: Vec::new(),
            link_group: None,
        };
        match kind {
            FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .unwrap();
                m.regions = regions(fd.as_fd(), m.size);
                let mut f = std::fs::File::from(fd);
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                m.content = Some(h.finalize());
                if st.st_nlink > 1 {
                    m.link_group = Some(
                        inodes
                            .entry(st.st_ino as u64)
                            .or_insert_with(|| path.clone())
                            .clone(),
                    );
                }
            }
            FileType::Symlink => {
                m.target = rustix::fs::readlinkat(dir, OsStr::from_bytes(&name), Vec::new())
                    .unwrap()
                    .into_bytes();
            }
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .unwrap();
                scan_dir(sub.as_fd(), &path, out, inodes);
            }
            _ => {}
        }
        out.insert(path, m);
    }
}

fn regions(fd: BorrowedFd<'_>, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(d) = rustix::fs::seek(fd, SeekFrom::Data(pos)) else {
            break;
        };
        if d >= size {
            break;
        }
        let h = rustix::fs::seek(fd, SeekFrom::Hole(d)).unwrap().min(size);
        out.push((d, h - d));
        pos = h;
    }
    out
}

/// Compare two scans entry by entry, with a readable message on the first difference.
pub fn assert_same_tree(a: &BTreeMap<Vec<u8>, Meta>, b: &BTreeMap<Vec<u8>, Meta>) {
    let ka: Vec<_> = a
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let kb: Vec<_> = b
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(ka, kb, "different entries");
    for (k, ma) in a {
        let mb = &b[k];
        assert_eq!(ma, mb, "entry {} differs", String::from_utf8_lossy(k));
    }
}

/// Flip one byte in the middle of a file.
pub fn flip_byte(p: &Path, at_fraction: f64) {
    let mut data = std::fs::read(p).unwrap();
    let i = ((data.len() as f64 * at_fraction) as usize).min(data.len() - 1);
    data[i] ^= 0x55;
    // Objects may be read-only; replace the file.
    std::fs::remove_file(p).unwrap();
    std::fs::File::create(p).unwrap().write_all(&data).unwrap();
}

/// Pseudo-random numbers for kill points, seeded from the clock; the seed is printed for replay.
pub struct KillPoints {
    pub seed: u64,
    s: u64,
}

impl KillPoints {
    pub fn new(what: &str) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("{what} seed {seed}");
        KillPoints { seed, s: seed | 1 }
    }

    /// The next number (xorshift64).
    pub fn next(&mut self) -> u64 {
        self.s ^= self.s << 13;
        self.s ^= self.s >> 7;
        self.s ^= self.s << 17;
        self.s
    }
}
