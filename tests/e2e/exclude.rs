//! What a backup leaves out: restic's exclude options on the real binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::fixtures::{Env, assert_same_tree, noise, scan};

const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# made by a test\n";

/// The paths under `src` that `ls latest` lists, relative to it.
fn listed(env: &Env, src: &Path) -> BTreeSet<String> {
    let prefix = format!("{}/", src.display());
    env.ok(&["ls", "latest"])
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every exclude option at once, then a backup without them (the excluded files come back, read
/// as new, and the tree restores exactly), then with them again (they drop out).
#[test]
fn excluded_entries_are_left_out_and_come_back_without_the_options() {
    let env = Env::new();
    let src = env.path("src");
    let tree: [(&str, &[u8]); 21] = [
        ("keep.txt", b"kept"),
        ("app.log", b"excluded by *.log at the top"),
        ("deep/er/still.log", b"excluded by *.log at any depth"),
        ("deep/er/log.txt", b"kept: the pattern is a suffix"),
        (
            "web/node_modules/pkg/index.js",
            b"excluded with its directory",
        ),
        (
            "web/src/node_modules.md",
            b"kept: a name, not the directory",
        ),
        ("var/cache/x", b"excluded by var/cache"),
        ("other/var/cache/y", b"also var/cache, deeper"),
        ("other/var/cache2/z", b"kept"),
        ("Photos/IMG.JPG", b"excluded by --iexclude *.jpg"),
        ("tmp/a", b"excluded by the exclude file"),
        ("build/.nobackup", b""),
        ("build/obj/x.o", b"excluded: .nobackup is present"),
        ("tagged/CACHEDIR.TAG", CACHEDIR_TAG),
        ("tagged/blob", b"excluded: a cache directory"),
        ("fake/CACHEDIR.TAG", b"Signature: not the real one\n"),
        ("fake/blob", b"kept: the tag's header does not match"),
        ("marked/STOP", b"HEADER and more"),
        ("marked/x", b"excluded: STOP begins with HEADER"),
        ("unmarked/STOP", b"something else"),
        ("unmarked/x", b"kept"),
    ];
    for (rel, data) in tree {
        write(&src.join(rel), data);
    }
    write(&src.join("big.bin"), &noise(3 << 20, 1));
    write(&src.join("small.bin"), &noise(100 << 10, 2));
    let exclude_file = env.path("excludes");
    std::fs::write(
        &exclude_file,
        format!(
            "# comments and blank lines are skipped\n\n  {}/tmp  \n",
            src.display()
        ),
    )
    .unwrap();
    let opts = [
        "-e",
        "*.log",
        "--exclude",
        "node_modules",
        "-e",
        "var/cache",
        "--iexclude",
        "*.jpg",
        "--exclude-file",
        exclude_file.to_str().unwrap(),
        "--exclude-if-present",
        ".nobackup",
        "--exclude-if-present",
        "STOP:HEADER",
        "--exclude-caches",
        "--exclude-larger-than",
        "1M",
    ];
    let mut args = vec!["backup", "--json", src.to_str().unwrap()];
    args.extend(opts);
    let first: serde_json::Value = serde_json::from_str(env.ok(&args).trim()).unwrap();

    let expected: BTreeSet<String> = [
        "keep.txt",
        "deep",
        "deep/er",
        "deep/er/log.txt",
        "web",
        "web/src",
        "web/src/node_modules.md",
        "var",
        "other",
        "other/var",
        "other/var/cache2",
        "other/var/cache2/z",
        "Photos",
        "build",
        "build/.nobackup",
        "tagged",
        "tagged/CACHEDIR.TAG",
        "fake",
        "fake/CACHEDIR.TAG",
        "fake/blob",
        "marked",
        "marked/STOP",
        "unmarked",
        "unmarked/STOP",
        "unmarked/x",
        "small.bin",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(listed(&env, &src), expected);
    // The large file was never read.
    assert!(first["bytes_read"].as_u64().unwrap() < 1 << 20, "{first}");

    // Without the options, everything is there; what was left out is new (read), the rest is
    // unmodified, and the tree restores exactly.
    let all = env.backup(&[&src]);
    assert_eq!(all["files_unmodified"], first["files"], "{all}");
    assert_eq!(
        all["files_new"].as_u64().unwrap(),
        all["files"].as_u64().unwrap() - first["files"].as_u64().unwrap(),
        "{all}"
    );
    assert!(all["bytes_read"].as_u64().unwrap() >= 3 << 20, "{all}");
    let t = env.path("restored");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&scan(&src), &scan(&t.join(src.strip_prefix("/").unwrap())));

    // With them again, the same entries drop out of a snapshot that has a parent holding them.
    let again: serde_json::Value = serde_json::from_str(env.ok(&args).trim()).unwrap();
    assert_eq!(again["files"], first["files"], "{again}");
    assert_eq!(again["bytes_read"], 0, "{again}");
    assert_eq!(listed(&env, &src), expected);
    env.ok(&["check", "--read-data"]);
}

/// A path given that a pattern matches is left out with a note; the others are backed up.
#[test]
fn a_path_given_can_be_excluded_whole() {
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    write(&a.join("x"), b"x");
    write(&b.join("y"), b"y");
    let o = env.run(&[
        "backup",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-e",
        a.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("excluded by a pattern"), "{err}");
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains(&format!("{}/y", b.display())), "{ls}");
    assert!(!ls.contains(&format!("{}/x", a.display())), "{ls}");
}

/// Unmounts its path when dropped, whether the test passed or not.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// `--one-file-system`: a filesystem mounted below the path given is kept as an empty mount
/// point; without the option its files are backed up.
#[test]
fn one_file_system_keeps_mount_points_empty() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("here"), b"on the source's filesystem");
    let mnt = src.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "lifeboat-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _guard = Unmount(&mnt);
    write(&mnt.join("sub/there"), b"on another filesystem");

    env.ok(&["backup", "-x", src.to_str().unwrap()]);
    let names = listed(&env, &src);
    assert_eq!(
        names,
        ["here", "mnt"].into_iter().map(str::to_owned).collect(),
        "{names:?}"
    );
    env.backup(&[&src]);
    assert!(listed(&env, &src).contains("mnt/sub/there"));
    // Naming the mount point itself backs it up: it is the path's own filesystem.
    env.ok(&["backup", "--one-file-system", mnt.to_str().unwrap()]);
    assert!(listed(&env, &src).contains("mnt/sub/there"));
}

/// Bad options are one line and a non-zero exit, before the repository is opened.
#[test]
fn bad_exclude_options_are_one_line() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("x"), b"x");
    let s = src.to_str().unwrap();
    for (args, says) in [
        (vec!["-e", "!"], "it matches everything"),
        (vec!["-e", "a[b"], "a[b"),
        (vec!["--exclude-if-present", ":H"], "file name"),
        (
            vec!["--exclude-file", "/nonexistent/list"],
            "/nonexistent/list",
        ),
    ] {
        let mut a = vec!["backup", s];
        a.extend(&args);
        let line = env.fails(&a);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    let o = env.run(&["backup", s, "--exclude-larger-than", "12X"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a size"));
    // Nothing was saved.
    assert!(env.ok(&["snapshots"]).contains("0 snapshots"));
}

/// restic's negated excludes (the last matching pattern of a list decides) and environment
/// variables in exclude files, in backup and in restore.
#[test]
fn negated_excludes_and_variables_in_exclude_files() {
    let mut env = Env::new();
    let src = env.path("src");
    for f in [
        "u/docs/a",
        "u/docs/b.tmp",
        "u/music/b",
        "u/keep.tmp",
        "u/x.tmp",
        "u/y",
    ] {
        write(&src.join(f), f.as_bytes());
    }
    env.vars
        .push(("LB_SRC".into(), src.to_str().unwrap().to_owned()));
    let list = env.path("excludes");
    std::fs::write(
        &list,
        "$LB_SRC/u/*\n!${LB_SRC}/u/docs\n!keep.tmp\n# a comment\n",
    )
    .unwrap();
    let s = src.to_str().unwrap();
    let l = list.to_str().unwrap();
    env.ok(&["backup", s, "--exclude-file", l]);
    let want: BTreeSet<String> = ["u", "u/docs", "u/docs/a", "u/docs/b.tmp", "u/keep.tmp"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed(&env, &src), want);

    // In restore too: every .tmp but keep.tmp is left out.
    env.ok(&["backup", s]);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "-e",
        "*.tmp",
        "-e",
        "!keep.tmp",
    ]);
    let mut got: Vec<String> = crate::fixtures::walk_files(&target.join(s.trim_start_matches('/')))
        .iter()
        .map(|p| {
            p.strip_prefix(target.join(s.trim_start_matches('/')))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["u/docs/a", "u/keep.tmp", "u/music/b", "u/y"]);

    // A variable that is not set: one line naming the file and the line; nothing saved.
    std::fs::write(&list, "*.tmp\n$LB_NOT_SET_ANYWHERE/x\n").unwrap();
    let e = env.fails(&["backup", s, "--exclude-file", l]);
    assert!(
        e.contains(l) && e.contains("line 2: $LB_NOT_SET_ANYWHERE is not set"),
        "{e}"
    );
    assert!(env.ok(&["snapshots"]).contains("2 snapshots"));
}
