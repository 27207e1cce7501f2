//! Streams backed up as one file: `backup --stdin` and `backup --stdin-from-command` (a database
//! dump, say), on the real binary.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::fixtures::{Env, noise};

/// `lifeboat ARGS` with `input` on its standard input.
fn run_with_input(env: &Env, args: &[&str], input: &[u8]) -> Output {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::scope(|s| {
        // A command that refuses its options exits without reading: its input is not wanted.
        s.spawn(move || match stdin.write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.unwrap(),
        });
        child.wait_with_output().unwrap()
    })
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Several pieces' worth of data with a long zero run: it comes back byte for byte through
/// `dump` and `restore`, its zeros as a hole, and the same stream again has the first as parent
/// and adds almost nothing.
#[test]
fn standard_input_is_backed_up_as_one_file() {
    let env = Env::new();
    let mut data = noise(21 << 20, 7);
    data.extend(std::iter::repeat_n(0u8, 12 << 20));
    data.extend(noise(3 << 20, 8));
    let args = ["backup", "--stdin", "--stdin-filename", "db.dump", "--json"];
    let first = json_of(&run_with_input(&env, &args, &data));
    assert_eq!(first["files"], 1, "{first}");
    assert_eq!(first["bytes_read"], data.len(), "{first}");
    assert_eq!(first["bytes_total"], data.len(), "{first}");
    assert!(env.ok(&["ls", "latest"]).lines().any(|l| l == "/db.dump"));

    let dumped = env.cmd(&["dump", "latest", "/db.dump"]).output().unwrap();
    assert!(dumped.status.success());
    assert!(dumped.stdout == data, "dump differs from the stream");
    let t = env.path("t");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let restored = t.join("db.dump");
    assert!(std::fs::read(&restored).unwrap() == data, "restore differs");
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&restored).unwrap());
    assert!(
        blocks * 512 <= data.len() as u64 - (4 << 20),
        "no hole: {blocks} blocks"
    );

    let again = json_of(&run_with_input(&env, &args, &data));
    assert_eq!(again["parent"], first["snapshot"], "{again}");
    assert!(again["bytes_added"].as_u64().unwrap() < 64 << 10, "{again}");
    env.ok(&["check", "--read-data"]);
}

/// A command's output is backed up when it succeeds; when it fails, even after writing, the
/// backup fails with one line and no snapshot, and the repository stays consistent.
#[test]
fn a_command_that_fails_saves_no_snapshot() {
    let env = Env::new();
    let ok = env.ok(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "out.txt",
        "--",
        "sh",
        "-c",
        "printf hello; printf ' world'",
    ]);
    assert!(ok.contains("saved"), "{ok}");
    let dumped = env.cmd(&["dump", "latest", "/out.txt"]).output().unwrap();
    assert_eq!(dumped.stdout, b"hello world");

    let line = env.fails(&[
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "head -c 30000000 /dev/urandom; exit 4",
    ]);
    assert!(line.contains("exit status: 4"), "{line}");
    let snaps = env.ok(&["snapshots"]);
    assert!(snaps.contains("1 snapshots"), "{snaps}");
    env.ok(&["check", "--read-data"]);
    let dumped = env.cmd(&["dump", "latest", "/out.txt"]).output().unwrap();
    assert_eq!(dumped.stdout, b"hello world");
}

/// The command gets standard input, output and error, and none of Lifeboat's own descriptors
/// (its runtime's, the repository's, the source's): a dump that inherited them could hold them
/// open past the backup, or write where it must not.
#[test]
fn a_command_inherits_none_of_lifeboats_descriptors() {
    let env = Env::new();
    let list =
        "for f in /proc/$$/fd/*; do printf '%s %s\\n' \"${f##*/}\" \"$(readlink \"$f\")\"; done";
    env.ok(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "fds",
        "--",
        "sh",
        "-c",
        list,
    ]);
    let dumped = env.cmd(&["dump", "latest", "/fds"]).output().unwrap();
    assert!(dumped.status.success());
    let fds = String::from_utf8(dumped.stdout).unwrap();
    assert!(fds.lines().any(|l| l.starts_with("1 pipe:")), "{fds}");
    for l in fds.lines() {
        assert!(
            !l.contains("anon_inode") && !l.contains(env.repo.to_str().unwrap()),
            "the command inherited {l}:\n{fds}"
        );
    }
}

#[test]
fn bad_stream_options_are_one_line() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    let line = env.fails(&["backup", "--stdin", src.to_str().unwrap()]);
    assert!(line.contains("no paths"), "{line}");
    let o = run_with_input(
        &env,
        &["backup", "--stdin", "--stdin-filename", "a/b"],
        // More than a pipe holds: it is refused before any of it is read.
        &vec![0u8; 1 << 20],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("without '/'"));
    let line = env.fails(&["backup", "--stdin-from-command"]);
    assert!(line.contains("needs a command"), "{line}");
    // A bad name is refused before the command starts.
    let marker = env.path("started");
    let touch = format!("touch {}", marker.display());
    let line = env.fails(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "..",
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    assert!(line.contains("cannot name a file"), "{line}");
    assert!(!marker.exists(), "the command ran");
    let line = env.fails(&["backup", "--stdin-from-command", "--", "/nonexistent/dump"]);
    assert!(line.contains("/nonexistent/dump"), "{line}");
    assert!(env.ok(&["snapshots"]).contains("0 snapshots"));
}
