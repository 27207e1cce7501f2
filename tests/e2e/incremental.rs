//! Incremental backups read only what changed; identical content is stored once.

use crate::fixtures::{Env, noise};

#[test]
fn incremental_reads_only_changed_files() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..50u64 {
        std::fs::write(src.join(format!("d/f{i}")), noise(100_000, i + 10)).unwrap();
    }
    let first = env.backup(&[&src]);
    assert_eq!(first["bytes_read"], 5_000_000);
    assert_eq!(first["files_new"], 50);

    let second = env.backup(&[&src]);
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged tree was read again: {second}"
    );
    assert_eq!(second["files_unmodified"], 50);
    assert_eq!(second["parent"], first["snapshot"]);
    // An unchanged tree adds only the snapshot object.
    assert!(second["bytes_added"].as_u64().unwrap() < 4096, "{second}");

    std::fs::write(src.join("d/f7"), noise(100_001, 99)).unwrap();
    std::fs::write(src.join("new"), b"twelve bytes").unwrap();
    let third = env.backup(&[&src]);
    assert_eq!(third["bytes_read"], 100_001 + 12, "{third}");
    assert_eq!(third["files_changed"], 1);
    assert_eq!(third["files_new"], 1);
    assert_eq!(third["files_unmodified"], 49);

    // A different host does not take this host's snapshot as its parent.
    let other = env.ok(&[
        "backup",
        "--json",
        "--host",
        "elsewhere",
        src.to_str().unwrap(),
    ]);
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["parent"], serde_json::Value::Null);
    assert_eq!(other["bytes_read"], 5_000_000 + 12 + 1);
    // Identical content dedups. A tree may be new: the backed-up path's parents are in the
    // snapshot, and tests running alongside change the times of /tmp (seen once under load).
    assert!(
        other["bytes_added"].as_u64().unwrap() < 4096,
        "identical content must dedup: {other}"
    );

    // Every snapshot restores its own state.
    let t = env.path("t");
    env.ok(&[
        "restore",
        first["snapshot"].as_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
    ]);
    let f7 = t.join(src.strip_prefix("/").unwrap()).join("d/f7");
    assert_eq!(std::fs::read(f7).unwrap(), noise(100_000, 17));
}

#[test]
fn identical_content_in_two_paths_is_stored_once() {
    let env = Env::new();
    let data = noise(16 << 20, 5);
    for d in ["one", "two"] {
        std::fs::create_dir_all(env.path(d)).unwrap();
        std::fs::write(env.path(d).join("copy.bin"), &data).unwrap();
    }
    let out = env.backup(&[&env.path("one"), &env.path("two")]);
    assert_eq!(out["bytes_read"], 2 * (16 << 20));
    let added = out["bytes_added"].as_u64().unwrap();
    assert!(
        added < (16 << 20) + (1 << 20),
        "second copy was stored again: added {added}"
    );
    assert!(added > 16 << 20, "random data cannot shrink: {added}");

    // A copy with a small edit in the middle shares all but a few chunks.
    let mut edited = data.clone();
    edited[8 << 20..(8 << 20) + 100].fill(0xAB);
    std::fs::create_dir_all(env.path("three")).unwrap();
    std::fs::write(env.path("three/edited.bin"), &edited).unwrap();
    let out = env.backup(&[&env.path("three")]);
    let added = out["bytes_added"].as_u64().unwrap();
    assert!(added < 9 << 20, "a 100-byte edit cost {added} bytes");
}

/// Regression: files larger than a segment are chunked in parallel; the seams between segments
/// must follow the content, so an insertion near the start does not change every later chunk.
#[test]
fn large_file_segments_tile_and_dedup_across_an_insertion() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(150 << 20, 77);
    std::fs::write(src.join("big.img"), &data).unwrap();
    let first = env.backup(&[&src]);
    assert!(first["bytes_read"].as_u64().unwrap() >= 150 << 20);

    let mut edited = data.clone();
    edited.splice(10 << 20..10 << 20, noise(100, 3));
    std::fs::write(src.join("big.img"), &edited).unwrap();
    let second = env.backup(&[&src]);
    let added = second["bytes_added"].as_u64().unwrap();
    assert!(
        added < 8 << 20,
        "a 100-byte insertion into a 150 MiB file cost {added} bytes"
    );

    for (snap, want) in [(&first, &data), (&second, &edited)] {
        let t = env.path("t");
        let _ = std::fs::remove_dir_all(&t);
        env.ok(&[
            "restore",
            snap["snapshot"].as_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ]);
        let got = std::fs::read(t.join(src.strip_prefix("/").unwrap()).join("big.img")).unwrap();
        assert!(got == *want, "restored file differs");
    }
    env.ok(&["check", "--read-data"]);
}

/// Scanner threads list and stat directories ahead of the walker, within a budget of open
/// directories. A tree with more directories than that budget, walked under a low open-file
/// limit, must be backed up whole, twice (the second time finding everything unmodified), and
/// restore exactly.
#[test]
fn many_directories_under_a_low_open_file_limit() {
    use crate::fixtures::{assert_same_tree, scan};
    let env = Env::new();
    let src = env.path("src");
    let mut files = 0u64;
    for a in 0..30 {
        for b in 0..12 {
            let d = src.join(format!("a{a:02}/b{b:02}/c"));
            std::fs::create_dir_all(&d).unwrap();
            for f in 0..3u64 {
                let seed = (a * 100 + b) * 10 + f;
                std::fs::write(
                    d.join(format!("f{f}")),
                    noise(50 + seed as usize % 700, seed),
                )
                .unwrap();
                files += 1;
            }
        }
    }
    let backup = |env: &Env| -> serde_json::Value {
        let out = env.ok_with_open_files(48, &["backup", "--json", src.to_str().unwrap()]);
        serde_json::from_str(out.trim()).unwrap()
    };
    let first = backup(&env);
    assert_eq!(first["files_new"], files, "{first}");
    assert_eq!(first["warnings"], 0, "{first}");
    std::fs::write(src.join("a17/b05/c/f1"), b"changed").unwrap();
    let second = backup(&env);
    assert_eq!(second["files_unmodified"], files - 1, "{second}");
    assert_eq!(second["files_changed"], 1, "{second}");
    assert_eq!(second["warnings"], 0, "{second}");
    let target = env.path("t");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(
        &scan(&src),
        &scan(&target.join(src.strip_prefix("/").unwrap())),
    );
}

/// A walk short of file descriptors: a chain of directories (the walker holds one for each
/// level) ends in a directory of 9 000 files, and the limit leaves only a few descriptors past
/// the chain. Files queued to the workers and directories scanned ahead hold the rest for a
/// moment; an open that finds none waits for them instead of skipping the file. From the lowest
/// limit at which every directory can be listed, every file is backed up (before, 400–1 900 of
/// them were skipped with "Too many open files" near that limit).
#[test]
fn files_are_not_skipped_for_descriptors_the_walk_gives_back() {
    use crate::fixtures::stdout_of_success;
    let src_env = Env::new();
    let src = src_env.path("src");
    let depth = 30u32;
    let mut d = src.clone();
    for i in 0..depth {
        d = d.join(format!("d{i:02}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), i.to_string()).unwrap();
    }
    let big = d.join("big");
    std::fs::create_dir(&big).unwrap();
    let wide = 9_000u64;
    for i in 0..wide {
        std::fs::write(big.join(format!("e{i:05}")), i.to_string()).unwrap();
    }
    let total = u64::from(depth) + wide;
    let mut listed_from = None;
    for nofile in depth + 6..depth + 80 {
        // A fresh repository each time: with a parent, unchanged files are not opened.
        let env = Env::new();
        let o = env.run_with_open_files(nofile, &["backup", "--json", src.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{nofile}: {err}");
        if listed_from.is_none() && err.contains("cannot list:") {
            continue;
        }
        let first = *listed_from.get_or_insert(nofile);
        let j: serde_json::Value = serde_json::from_str(
            stdout_of_success(o, &format!("backup under {nofile} open files")).trim(),
        )
        .unwrap();
        assert_eq!(j["files"], total, "{nofile}: {j}");
        assert_eq!(j["warnings"], 0, "{nofile}: {j}");
        if nofile == first + 6 {
            let target = env.path("t");
            env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
            let restored = target.join(big.strip_prefix("/").unwrap());
            assert_eq!(std::fs::read_dir(&restored).unwrap().count() as u64, wide);
            return;
        }
    }
    panic!("the chain of {depth} directories was never listed: {listed_from:?}");
}

/// A directory far larger than what a scanner stats and decodes of it at once (8 192 entries),
/// whose tree spans several blobs: scanners stat the next window of entries and decode the
/// parent's tree for it while the walker visits the current one, sub-directories past the first
/// window are found by the directory's own listing, and the tree's blobs are stored while it is
/// encoded. An unchanged re-backup must find every entry unmodified and store the same tree
/// blobs; changes past the first window must be found, and both restore exactly.
#[test]
fn a_directory_larger_than_the_scan_window() {
    use crate::fixtures::{assert_same_tree, scan, stdout_of_success};
    let env = Env::new();
    let src = env.path("src");
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut files = 0u64;
    for i in 0..40_000u64 {
        if i % 2500 == 1234 {
            let d = big.join(format!("e{i:06}-dir"));
            std::fs::create_dir(&d).unwrap();
            for f in 0..2 {
                std::fs::write(d.join(format!("f{f}")), format!("{i} {f}")).unwrap();
                files += 1;
            }
        } else if i % 5000 == 77 {
            std::os::unix::fs::symlink(format!("e{:06}", i - 1), big.join(format!("e{i:06}")))
                .unwrap();
        } else {
            std::fs::write(big.join(format!("e{i:06}")), format!("file {i}")).unwrap();
            files += 1;
        }
    }
    let first = env.backup(&[&src]);
    assert_eq!(first["files_new"], files, "{first}");
    assert_eq!(first["warnings"], 0, "{first}");

    let second = env.backup(&[&src]);
    assert_eq!(second["files_unmodified"], files, "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert!(
        second["bytes_added"].as_u64().unwrap() < 4096,
        "an unchanged directory stored new tree blobs: {second}"
    );

    std::fs::write(big.join("e030000"), "changed past the window").unwrap();
    std::fs::write(big.join("e036234-dir/f1"), "changed in a sub-directory").unwrap();
    std::fs::remove_file(big.join("e020000")).unwrap();
    std::fs::write(big.join("zz-new"), "new").unwrap();
    let third = env.backup(&[&src]);
    assert_eq!(third["files_changed"], 2, "{third}");
    assert_eq!(third["files_new"], 1, "{third}");
    assert_eq!(third["files_unmodified"], files - 3, "{third}");
    assert_eq!(third["bytes_read"], 23 + 26 + 3, "{third}");

    // Offsite: the copy rewrites the directory's tree (several blobs) with the target's ids.
    let offsite = env.path("offsite");
    // The offsite repository's password goes in `var`: LIFEBOAT_PASSWORD to open it,
    // LIFEBOAT_TO_PASSWORD to copy into it.
    let offsite_run = |var: &str, args: &[&str]| {
        let mut c = env.cmd(args);
        c.env(var, "offsite-pw").stdin(std::process::Stdio::null());
        stdout_of_success(c.output().unwrap(), &format!("lifeboat {args:?}"))
    };
    let off = offsite.to_str().unwrap();
    let to = |args: &[&str]| offsite_run("LIFEBOAT_PASSWORD", &[&["--repo", off], args].concat());
    let copy = || {
        let out = offsite_run("LIFEBOAT_TO_PASSWORD", &["copy", "--to", off, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    to(&["init"]);
    assert_eq!(copy()["snapshots_copied"], 3);

    // Thousands of entries gone and thousands new, across several windows of the walk: the
    // parent's entries are still matched to the right names, none read again.
    let mut removed = 0;
    for i in 10_000..22_000u64 {
        let p = big.join(format!("e{i:06}"));
        if p.is_file() && !p.is_symlink() {
            std::fs::remove_file(&p).unwrap();
            removed += 1;
        }
    }
    for i in 12_000..21_000u64 {
        std::fs::write(big.join(format!("e{i:06}-new")), "new!").unwrap();
    }
    let fourth = env.backup(&[&src]);
    assert_eq!(fourth["files_new"], 9000, "{fourth}");
    assert_eq!(fourth["files_changed"], 0, "{fourth}");
    assert_eq!(fourth["files_unmodified"], files - removed, "{fourth}");
    assert_eq!(fourth["bytes_read"], 9000 * 4, "{fourth}");

    let target = env.path("t");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(
        &scan(&src),
        &scan(&target.join(src.strip_prefix("/").unwrap())),
    );

    // The next copy learns the chunks of the copied parent from the two trees: it reads only
    // the new files' one chunk ("new!", the same in each). The copy restores exactly.
    let again = copy();
    assert_eq!(again["snapshots_copied"], 1, "{again}");
    assert_eq!(again["bytes_read"], 4, "{again}");
    assert!(to(&["check", "--read-data"]).contains("no errors found"));
    let target = env.path("from-offsite");
    to(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(
        &scan(&src),
        &scan(&target.join(src.strip_prefix("/").unwrap())),
    );
}
