//! `lifeboat stats`: restic's four counting modes, checked against what the fixture holds and
//! against `diff`'s blob sums (a second code path over the same trees).

use std::path::Path;

use crate::fixtures::{Env, noise};

const MIB: u64 = 1 << 20;

fn stats(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["stats", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(env.ok(&a).trim()).unwrap()
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

/// Lines of text that compress well and never repeat (so no chunk of the file repeats).
fn text(len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while v.len() < len {
        v.extend_from_slice(format!("line {i} of a text that compresses well\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

fn bytes_under(dir: &Path) -> u64 {
    crate::fixtures::walk_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn stats_counts_as_restic_does_in_each_mode() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "hello").unwrap();
    std::fs::hard_link(src.join("a.txt"), src.join("b.txt")).unwrap();
    std::fs::write(src.join("c.txt"), "hello").unwrap();
    std::fs::write(src.join("big.bin"), noise(3 << 20, 7)).unwrap();
    std::fs::write(src.join("text.txt"), text(2 << 20)).unwrap();
    std::fs::write(src.join("sub/d.txt"), "world").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    // The directories above the source are entries of the snapshot too ("/" is the root tree).
    let above = src.ancestors().count() as u64 - 2;
    let entries = 9; // src, a, b, c, big, text, sub, sub/d, link
    let file_bytes = 5 + 5 + 3 * MIB + 2 * MIB + 5; // a and b are one file

    let r = stats(&env, &["latest"]);
    assert_eq!(n(&r, "snapshots_count"), 1, "{r}");
    assert_eq!(n(&r, "total_file_count"), above + entries, "{r}");
    assert_eq!(
        n(&r, "total_size"),
        file_bytes,
        "hard links count once: {r}"
    );
    assert!(r.get("total_blob_count").is_none(), "{r}");

    let r = stats(&env, &["--mode", "files-by-contents"]);
    assert_eq!(n(&r, "total_file_count"), 4, "hello, big, text, world: {r}");
    assert_eq!(n(&r, "total_size"), 5 + 3 * MIB + 2 * MIB + 5, "{r}");

    // A second snapshot adds one file and a copy of a directory (the same tree blob).
    std::fs::write(src.join("e.txt"), "again").unwrap();
    std::fs::create_dir(src.join("sub2")).unwrap();
    std::fs::copy(src.join("sub/d.txt"), src.join("sub2/d.txt")).unwrap();
    let second = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();

    let both = stats(&env, &[]);
    assert_eq!(n(&both, "snapshots_count"), 2);
    assert_eq!(
        n(&both, "total_file_count"),
        2 * (above + entries) + 3,
        "{both}"
    );
    assert_eq!(n(&both, "total_size"), 2 * file_bytes + 5 + 5, "{both}");
    let by_contents = stats(&env, &["--mode", "files-by-contents", &first, &second]);
    assert_eq!(n(&by_contents, "total_file_count"), 5, "{by_contents}");
    // Naming a snapshot twice counts it once.
    let twice = stats(&env, &[&second[..8], "latest"]);
    assert_eq!(n(&twice, "snapshots_count"), 1, "{twice}");

    // blobs-per-file: each distinct blob of each path, over files of distinct contents.
    let per_file = stats(&env, &["--mode", "blobs-per-file", &first]);
    assert_eq!(n(&per_file, "total_file_count"), 4, "{per_file}");
    assert_eq!(
        n(&per_file, "total_size"),
        5 + 3 * MIB + 2 * MIB + 5,
        "{per_file}"
    );

    // raw-data: every blob once, with what it takes stored and uncompressed.
    let raw1 = stats(&env, &["--mode", "raw-data", &first]);
    let raw = stats(&env, &["--mode", "raw-data"]);
    let trees1 = above + 3; // "/", the directories above src, src and sub
    assert_eq!(
        n(&per_file, "total_blob_count"),
        n(&raw1, "total_blob_count") - trees1,
        "data blobs of the first snapshot: {per_file} {raw1}"
    );
    let data_plain = 5 + 5 + 3 * MIB + 2 * MIB;
    let tags = 16 * n(&raw1, "total_blob_count");
    let uncompressed = n(&raw1, "total_uncompressed_size");
    assert!(
        uncompressed > data_plain + tags && uncompressed < data_plain + tags + (64 << 10),
        "{raw1}"
    );
    // The random file is stored as it is, the text compressed: about 2 of 5 MiB compressed.
    let progress = f(&raw1, "compression_progress");
    assert!((30.0..60.0).contains(&progress), "{raw1}");
    assert!(f(&raw1, "compression_ratio") > 3.0, "{raw1}");
    let saving = f(&raw1, "compression_space_saving");
    assert!((20.0..60.0).contains(&saving), "{raw1}");
    // Over both snapshots: no prune ran, so every pack byte but the headers is a used blob.
    let packs = bytes_under(&env.repo.join("data"));
    let stored = n(&raw, "total_size");
    assert!(stored < packs && packs - stored < 64 << 10, "{raw} {packs}");

    // The second snapshot adds exactly the blobs diff says it adds (sub2 repeats sub's tree).
    let d = env.ok(&["diff", &first, &second, "--json"]);
    let d: serde_json::Value = serde_json::from_str(d.lines().last().unwrap()).unwrap();
    let added = &d["added"];
    assert_eq!(
        n(&raw, "total_blob_count"),
        n(&raw1, "total_blob_count") + n(added, "data_blobs") + n(added, "tree_blobs"),
        "{raw} {raw1} {d}"
    );
    assert_eq!(n(added, "data_blobs"), 1, "only 'again' is new data: {d}");
    assert_eq!(
        n(&raw, "total_uncompressed_size") - uncompressed,
        n(added, "bytes") + 16 * (n(added, "data_blobs") + n(added, "tree_blobs")),
        "{raw} {d}"
    );

    // The text report names the mode and its sums.
    let text = env.ok(&["stats", "--mode", "raw-data"]);
    assert!(text.starts_with("Stats in raw-data mode:"), "{text}");
    assert!(text.contains("Snapshots processed:  2"), "{text}");
    assert!(text.contains("Compression Ratio:  "), "{text}");

    // Filters choose the snapshots; one matching none is one line.
    let e = env.fails(&["stats", "--host", "elsewhere"]);
    assert!(e.contains("no snapshot matches --host elsewhere"), "{e}");
    let o = env.run(&["stats", "--mode", "bogus"]);
    assert_eq!(o.status.code(), Some(2));
}
