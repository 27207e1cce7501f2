//! Full backup and restore of a tree holding every kind of entry, compared by content and metadata.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::fixtures::{Env, assert_same_tree, make_fixture, noise, scan};

#[test]
fn every_kind_of_entry_round_trips() {
    let env = Env::new();
    let src = env.path("src");
    make_fixture(&src);
    let before = scan(&src);
    let out = env.backup(&[&src]);
    assert!(out["files"].as_u64().unwrap() >= 12, "{out}");
    assert_eq!(out["warnings"], 0);
    // Sparse files are read only where they hold data.
    let total = out["bytes_total"].as_u64().unwrap();
    assert!(
        out["bytes_read"].as_u64().unwrap() < total / 3,
        "holes were read: {out}"
    );

    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    let after = scan(&restored);
    assert_same_tree(&before, &after);
    // Holes stay holes: the 64 MiB image occupies little space.
    let st = rustix::fs::stat(restored.join("sparse.img")).unwrap();
    assert!(
        (st.st_blocks as u64) * 512 < 4 << 20,
        "sparse.img restored dense: {} blocks",
        st.st_blocks
    );
    // The source is untouched by backup.
    assert_same_tree(&before, &scan(&src));
    env.ok(&["check", "--read-data"]);
}

/// Zeros a file had written (a preallocated database log, an image that is not sparse) take disk
/// space again when restored, its holes stay holes, and `--sparse` leaves every zero range a hole.
#[test]
fn written_zeros_are_allocated_again_and_holes_stay_holes() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // A WAL segment as PostgreSQL preallocates it.
    std::fs::write(src.join("wal"), vec![0u8; 16 << 20]).unwrap();
    // Data, an 8 MiB hole, 24 MiB of written zeros, data.
    let f = std::fs::File::create(src.join("mixed")).unwrap();
    f.write_all_at(&noise(1 << 20, 1), 0).unwrap();
    f.write_all_at(&vec![0u8; 24 << 20], 9 << 20).unwrap();
    f.write_all_at(&noise(64 << 10, 2), 33 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let used = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    assert!(
        used(&src.join("mixed")) < 30 << 20,
        "the source has no hole"
    );
    env.backup(&[&src]);

    let dense = env.path("dense");
    let sparse = env.path("sparse");
    env.ok(&["restore", "latest", "--target", dense.to_str().unwrap()]);
    env.ok(&[
        "restore",
        "latest",
        "--sparse",
        "--target",
        sparse.to_str().unwrap(),
    ]);
    for t in [&dense, &sparse] {
        let back = t.join(src.strip_prefix("/").unwrap());
        for name in ["wal", "mixed"] {
            assert!(
                std::fs::read(back.join(name)).unwrap() == std::fs::read(src.join(name)).unwrap(),
                "{name} differs"
            );
        }
    }
    let dense = dense.join(src.strip_prefix("/").unwrap());
    let sparse = sparse.join(src.strip_prefix("/").unwrap());
    assert!(used(&dense.join("wal")) >= 16 << 20, "wal restored sparse");
    let (a, b) = (used(&src.join("mixed")), used(&dense.join("mixed")));
    assert!(
        a.abs_diff(b) <= 256 << 10,
        "mixed: {a} bytes in the source, {b} restored"
    );
    assert!(
        used(&sparse.join("wal")) < 64 << 10,
        "--sparse allocated wal"
    );
    let c = used(&sparse.join("mixed"));
    assert!(
        c + (12 << 20) < b,
        "--sparse allocated mixed's zeros: {c} bytes"
    );
}

/// A file with holes on a filesystem that cannot show them: which of its zeros were holes is
/// not known, so all of them restore as holes, not as 64 MiB of allocated zeros.
#[test]
fn zeros_of_a_file_whose_holes_cannot_be_found_restore_as_holes() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&noise(100_000, 4), 20 << 20).unwrap();
    drop(f);
    let mirror = crate::fuse::hole_blind_mirror(&env, "blind", &src, "sparse.img");
    let out = env.backup(&[&mirror.dir]);
    // The holes were read: the mirror shows every byte as data.
    assert!(out["bytes_read"].as_u64().unwrap() >= 64 << 20, "{out}");
    let t = env.path("t");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let back = t
        .join(mirror.dir.strip_prefix("/").unwrap())
        .join("sparse.img");
    assert!(std::fs::read(&back).unwrap() == std::fs::read(src.join("sparse.img")).unwrap());
    let used = std::fs::metadata(&back).unwrap().blocks() * 512;
    assert!(used < 8 << 20, "restored with {used} bytes allocated");
}

#[test]
fn restore_include_ls_and_dump() {
    let env = Env::new();
    let src = env.path("src");
    make_fixture(&src);
    env.backup(&[&src]);
    let s = src.to_str().unwrap();

    let listing = env.ok(&["ls", "latest", &format!("{s}/dir")]);
    let lines: Vec<&str> = listing.lines().collect();
    assert!(
        lines.contains(&format!("{s}/dir/sub/compressible.txt").as_str()),
        "{listing}"
    );
    assert!(
        !listing.contains("small.txt"),
        "ls PATH listed outside PATH: {listing}"
    );
    let json = env.ok(&["ls", "latest", &format!("{s}/small.txt"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["type"], "file");
    assert_eq!(v["size"], 15);

    let dumped = env
        .cmd(&["dump", "latest", &format!("{s}/dir/big.bin")])
        .output()
        .unwrap();
    assert!(dumped.status.success());
    assert_eq!(
        dumped.stdout,
        std::fs::read(src.join("dir/big.bin")).unwrap()
    );
    let dumped = env
        .cmd(&["dump", "latest", &format!("{s}/sparse.img")])
        .output()
        .unwrap();
    assert_eq!(
        blake3::hash(&dumped.stdout),
        blake3::hash(&std::fs::read(src.join("sparse.img")).unwrap())
    );

    let target = env.path("partial");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        &format!("{s}/dir/sub"),
    ]);
    let base = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(base.join("dir/sub/compressible.txt")).unwrap(),
        std::fs::read(src.join("dir/sub/compressible.txt")).unwrap()
    );
    assert!(!base.join("small.txt").exists());
    assert!(!base.join("dir/big.bin").exists());

    let e = env.fails(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        "/no/such/path",
    ]);
    assert!(e.contains("not in the snapshot"), "{e}");
    let e = env.fails(&["dump", "latest", &format!("{s}/dir")]);
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn several_paths_land_at_their_absolute_places() {
    let env = Env::new();
    let a = env.path("a/one");
    let b = env.path("b/two");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("f"), b"1").unwrap();
    std::fs::write(b.join("g"), b"2").unwrap();
    std::fs::write(env.path("single-file"), b"3").unwrap();
    env.backup(&[&a, &b, &env.path("single-file"), &a.join("f")]);
    let t = env.path("t");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let r = |p: &std::path::Path| t.join(p.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(r(&a.join("f"))).unwrap(), b"1");
    assert_eq!(std::fs::read(r(&b.join("g"))).unwrap(), b"2");
    assert_eq!(std::fs::read(r(&env.path("single-file"))).unwrap(), b"3");
    // Siblings of the backed-up paths were not included.
    assert!(!r(&env.path("repo")).exists());
}

/// Restore hands small files to its writers in batches, each file open until written: under a
/// low open-file limit (soft and hard, so it cannot be raised) the batches shrink and a tree of
/// many small files still restores.
#[test]
fn many_small_files_restore_under_a_low_open_file_limit() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..4 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..150u64 {
            let data = crate::fixtures::noise(100 + (f as usize * 37) % 3000, d * 1000 + f);
            std::fs::write(src.join(format!("d{d}/f{f}")), data).unwrap();
        }
    }
    restore_under_open_files(&env, &src, 64);
}

/// Back up `src`, restore it with at most `nofile` open files, require the same tree, and return
/// where it was restored.
fn restore_under_open_files(env: &Env, src: &std::path::Path, nofile: u32) -> std::path::PathBuf {
    let before = scan(src);
    env.backup(&[src]);
    let target = env.path("restore");
    env.ok_with_open_files(
        nofile,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&before, &scan(&restored));
    restored
}

/// Regression: restore kept the first restored link of every hard-linked inode open, to link the
/// others to it, so 600 hard-linked files could not be restored under an open-file limit of
/// 256 ("Too many open files"). It now keeps their paths: under a limit of 64, every link is
/// restored, and the links of each inode share it.
#[test]
fn many_hard_links_restore_under_a_low_open_file_limit() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let src = env.path("src");
    for d in ["a", "b/c"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let n = 600;
    for i in 0..n {
        let f = src.join(format!("a/f{i}"));
        std::fs::write(&f, format!("file {i}")).unwrap();
        std::fs::hard_link(&f, src.join(format!("b/c/g{i}"))).unwrap();
    }
    let restored = restore_under_open_files(&env, &src, 64);
    let mut inodes = std::collections::HashSet::new();
    for i in 0..n {
        let a = std::fs::metadata(restored.join(format!("a/f{i}"))).unwrap();
        let b = std::fs::metadata(restored.join(format!("b/c/g{i}"))).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "f{i}");
        inodes.insert(a.ino());
    }
    assert_eq!(inodes.len(), n);
}

/// Regression: a 16 MiB pack of tiny files' blobs held some 300 000 of them, and their entries,
/// the pack's header and the index object naming them all sat in memory (a backup of 400 000
/// tiny files peaked at 140 MiB). Packs now close at 65 536 blobs and an index object is written
/// per 65 536 entries: more than that many files make several packs and index objects, and they
/// all load, check and restore.
#[test]
fn more_tiny_files_than_a_pack_holds_span_packs_and_index_objects() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..70 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d} {f}\n")).unwrap();
        }
    }
    let before = scan(&src);
    env.backup(&[&src]);
    // 70 000 data blobs and a few tree blobs.
    assert!(env.objects("data").len() >= 3, "{:?}", env.objects("data"));
    assert!(
        env.objects("index").len() >= 2,
        "{:?}",
        env.objects("index")
    );
    env.ok(&["check", "--read-data"]);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&before, &scan(&target.join(src.strip_prefix("/").unwrap())));
}

/// Restoring into a target that already holds entries replaces what is in the way, exactly: a
/// longer old file is not left with its tail, a file where a directory goes is replaced, and a
/// symlink where a file goes is replaced without writing through it.
#[test]
fn restore_over_an_existing_tree_replaces_what_is_in_the_way() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"new a").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"b").unwrap();
    std::fs::write(src.join("sub/deeper/c.txt"), b"c").unwrap();
    std::fs::write(src.join("d.txt"), crate::fixtures::noise(3 << 20, 5)).unwrap();
    let before = scan(&src);
    env.backup(&[&src]);

    let target = env.path("t");
    let inner = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(inner.join("sub")).unwrap();
    std::fs::write(inner.join("a.txt"), vec![b'x'; 100_000]).unwrap();
    std::fs::write(inner.join("sub/deeper"), b"a file where a directory goes").unwrap();
    let outside = env.path("outside");
    std::fs::write(&outside, b"must stay").unwrap();
    std::os::unix::fs::symlink(&outside, inner.join("d.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, inner.join("sub/b.txt")).unwrap();

    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&before, &scan(&inner));
    assert_eq!(std::fs::read(&outside).unwrap(), b"must stay");
}

/// Parts of large files that want the same blobs (copies, edited copies) are restored together,
/// each blob read once and written to every file: the result is exact, also under an open-file
/// limit low enough to shrink the window of held parts.
#[test]
fn copies_of_large_files_restore_exactly() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    let base = crate::fixtures::noise(40 << 20, 77);
    std::fs::write(src.join("a-base.img"), &base).unwrap();
    std::fs::write(src.join("b/copy.img"), &base).unwrap();
    let mut edited = base.clone();
    edited.splice(10 << 20..10 << 20, b"an insertion".iter().copied());
    edited[30 << 20..(30 << 20) + 4096].fill(7);
    std::fs::write(src.join("b/edited.img"), &edited).unwrap();
    std::fs::write(src.join("c-tail.img"), &base[20 << 20..]).unwrap();
    let before = scan(&src);
    let out = env.backup(&[&src]);
    assert_eq!(out["warnings"], 0);
    for (t, limit) in [("t1", None), ("t2", Some(40))] {
        let target = env.path(t);
        let args = ["restore", "latest", "--target", target.to_str().unwrap()];
        match limit {
            None => env.ok(&args),
            Some(n) => env.ok_with_open_files(n, &args),
        };
        assert_same_tree(&before, &scan(&target.join(src.strip_prefix("/").unwrap())));
    }
}

/// Many writers restoring the parts of one large file take turns at it: a writer that finds the
/// file busy keeps the blob (decompressed, or raw in its read buffer) and writes it later. Every
/// byte must land, with the file both compressible and not and writers far outnumbering parts.
#[test]
fn a_large_file_shared_by_many_writers_restores_exactly() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut data = Vec::with_capacity(150 << 20);
    for i in 0..15u64 {
        let block = crate::fixtures::noise(5 << 20, 1000 + i);
        data.extend_from_slice(&block);
        // Text compresses: these blobs are decompressed into buffers of their own.
        let line = format!("row {i} of a table that compresses well\n");
        data.extend(line.bytes().cycle().take(5 << 20));
    }
    std::fs::write(src.join("big.img"), &data).unwrap();
    std::fs::write(src.join("small.txt"), b"next to it").unwrap();
    let before = scan(&src);
    env.backup(&[&src]);
    let target = env.path("t");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--threads",
        "12",
    ]);
    assert_same_tree(&before, &scan(&target.join(src.strip_prefix("/").unwrap())));
}

/// `backup --extra-verify` checks every new blob before storing it and stores what a backup
/// without it stores: a plain backup of the same content under another name adds only trees,
/// and everything checks and restores.
#[test]
fn extra_verify_stores_the_same_blobs() {
    let env = Env::new();
    let src = env.path("src");
    make_fixture(&src);
    std::fs::write(src.join("compressible"), "lifeboat ".repeat(400_000)).unwrap();
    let out = env.ok(&["backup", "--extra-verify", "--json", src.to_str().unwrap()]);
    let verified: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(verified["blobs_added"].as_u64().unwrap() > 3, "{verified}");
    // The same content under another name, by a plain backup: only trees are new.
    std::fs::write(src.join("again"), "lifeboat ".repeat(400_000)).unwrap();
    let plain = env.backup(&[&src]);
    assert_eq!(plain["files_new"], 1, "{plain}");
    assert!(plain["bytes_added"].as_u64().unwrap() < 20_000, "{plain}");
    env.ok(&["check", "--read-data"]);
    let t = env.path("t");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&scan(&src), &scan(&t.join(src.strip_prefix("/").unwrap())));
}

/// `restore --verify` reads every restored file back and checks it blob by blob, before its
/// metadata is applied: the tree still restores exactly, and it says how many files it read
/// (each regular file once: the fixture's two hard-linked names are one file).
#[test]
fn restore_verify_reads_every_file_back() {
    let env = Env::new();
    let src = env.path("src");
    make_fixture(&src);
    env.backup(&[&src]);
    let files = env
        .ok(&["ls", "--json", "latest"])
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"] == "file")
        .count();
    let t = env.path("t");
    let out = env.ok(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--verify",
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("verified "))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("verified {} files (", files - 1)),
        "{files} file names: {out}"
    );
    assert_same_tree(&scan(&src), &scan(&t.join(src.strip_prefix("/").unwrap())));
}
