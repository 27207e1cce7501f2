//! FUSE filesystems served by small Python scripts (Debian's python3-fusepy), for faults a real
//! disk or network cannot be made to show on demand: reads that fail, reads that lie once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::fixtures::Env;

/// A FUSE server running `script` (which mounts at its first argument), unmounted and stopped
/// when dropped.
pub struct FuseServer {
    pub dir: PathBuf,
    server: Child,
}

impl FuseServer {
    /// Mount `script` at a new directory `name` of `env`, with `args` after the mount point, and
    /// wait until `ready` (relative to the mount) appears.
    pub fn start(env: &Env, name: &str, script: &str, args: &[&str], ready: &str) -> Self {
        let dir = env.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let file = env.path(&format!("{name}.py"));
        std::fs::write(&file, script).unwrap();
        let server = Command::new("/usr/bin/python3")
            .arg(&file)
            .arg(&dir)
            .args(args)
            .spawn()
            .unwrap();
        let mut fs = FuseServer { dir, server };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !fs.dir.join(ready).exists() {
            if let Some(status) = fs.server.try_wait().unwrap() {
                panic!("the FUSE server exited ({status}): is python3-fusepy installed?");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: the FUSE filesystem did not appear"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fs
    }
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A read-only mirror of directory SRC (`mnt src ...`), the base of the mirrors below.
const MIRROR: &str = r#"
import os, sys, fusepy as fuse
mnt, src = sys.argv[1], sys.argv[2]
class Mirror(fuse.Operations):
    attrs = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime", "st_mtime",
             "st_ctime")
    def real(self, path):
        return os.path.join(src, path.lstrip("/"))
    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        return {k: getattr(st, k) for k in self.attrs}
    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))
    def open(self, path, flags):
        return os.open(self.real(path), os.O_RDONLY)
    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)
    def release(self, path, fh):
        os.close(fh)
"#;

/// A [`MIRROR`] in which the first read that covers byte AT of file TARGET (a path from the
/// mirror's root) returns that byte with one bit flipped; every later read is right.
/// `direct_io`: each read reaches the server, none is served from the page cache.
const MISREADING_MIRROR: &str = r"
target, at = sys.argv[3], int(sys.argv[4])
class Misreading(Mirror):
    flipped = False
    def read(self, path, length, offset, fh):
        b = os.pread(fh, length, offset)
        if path == target and not self.flipped and offset <= at < offset + len(b):
            self.flipped = True
            b = bytearray(b)
            b[at - offset] ^= 1
            b = bytes(b)
        return b
fuse.FUSE(Misreading(), mnt, foreground=True, ro=True, direct_io=True)
";

/// A [`MIRROR`] that reports each file's allocated blocks but cannot show where its holes are:
/// it has no `lseek`, so the kernel's generic `SEEK_DATA` finds every byte data (as on NFS
/// version 3 and many FUSE filesystems).
const HOLE_BLIND_MIRROR: &str = r#"
class HoleBlind(Mirror):
    attrs = Mirror.attrs + ("st_blocks",)
fuse.FUSE(HoleBlind(), mnt, foreground=True, ro=True)
"#;

/// [`HOLE_BLIND_MIRROR`] of `src` at a new directory `name` of `env`, ready once `ready` shows.
pub fn hole_blind_mirror(env: &Env, name: &str, src: &Path, ready: &str) -> FuseServer {
    FuseServer::start(
        env,
        name,
        &format!("{MIRROR}{HOLE_BLIND_MIRROR}"),
        &[src.to_str().unwrap()],
        ready,
    )
}

/// [`MISREADING_MIRROR`] of `src` at a new directory `name` of `env`.
pub fn misreading_mirror(env: &Env, name: &str, src: &Path, target: &str, at: u64) -> FuseServer {
    FuseServer::start(
        env,
        name,
        &format!("{MIRROR}{MISREADING_MIRROR}"),
        &[src.to_str().unwrap(), target, &at.to_string()],
        "config",
    )
}
