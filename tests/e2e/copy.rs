//! `copy` (offsite export) between local repositories: every kind of entry, chunks repeated
//! within and across the jobs its workers share, several snapshots in one run, and a damaged
//! source.

use std::path::Path;

use crate::fixtures::{Env, assert_same_tree, flip_byte, make_fixture, noise, scan};

/// The offsite repository's password.
const TO_PW: &str = "offsite-password-7";

/// `lifeboat copy --to OFF --json`, parsed.
fn copy(env: &Env, off: &Path) -> serde_json::Value {
    let mut c = env.cmd(&["copy", "--to", off.to_str().unwrap(), "--json"]);
    c.env("LIFEBOAT_TO_PASSWORD", TO_PW);
    let out = crate::fixtures::stdout_of_success(c.output().unwrap(), "lifeboat copy");
    serde_json::from_str(out.trim()).unwrap()
}

/// Run `lifeboat ARGS` on the offsite repository and require success.
fn offsite(env: &Env, off: &Path, args: &[&str]) -> String {
    let mut c = env.cmd(args);
    c.env("LIFEBOAT_REPO", off).env("LIFEBOAT_PASSWORD", TO_PW);
    crate::fixtures::stdout_of_success(c.output().unwrap(), &format!("offsite {args:?}"))
}

/// The offsite repository's latest snapshot restores exactly to `src`.
fn latest_offsite_restores(env: &Env, off: &Path, src: &Path) {
    let t = env.path("restored");
    offsite(
        env,
        off,
        &["restore", "latest", "--target", t.to_str().unwrap()],
    );
    assert_same_tree(&scan(src), &scan(&t.join(src.strip_prefix("/").unwrap())));
}

fn data_bytes(repo: &Path) -> u64 {
    crate::fixtures::walk_files(&repo.join("data"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn copy_of_several_snapshots_restores_each_exactly() {
    let env = Env::new();
    let src = env.path("src");
    make_fixture(&src);
    // Thousands of tiny files cycling through 50 contents: the same chunk in many jobs and
    // several times in one; two identical directories (the same tree).
    for d in ["many", "twin-a", "twin-b"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for i in 0..3000 {
        std::fs::write(
            src.join(format!("many/f{i:04}")),
            format!("content {}\n", i % 50),
        )
        .unwrap();
    }
    for d in ["twin-a", "twin-b"] {
        std::fs::write(src.join(d).join("x.bin"), noise(700_000, 11)).unwrap();
        std::fs::write(src.join(d).join("y.txt"), b"twin\n").unwrap();
    }
    // A file of many chunks: several jobs.
    std::fs::write(src.join("large.bin"), noise(20 << 20, 12)).unwrap();
    let mut states = vec![scan(&src)];
    env.backup(&[&src]);
    // Second snapshot: a changed middle, a new file, one gone.
    let mut large = noise(20 << 20, 12);
    large[10 << 20..(10 << 20) + 4096].copy_from_slice(&noise(4096, 13));
    std::fs::write(src.join("large.bin"), &large).unwrap();
    std::fs::write(src.join("many/new"), b"new\n").unwrap();
    std::fs::remove_file(src.join("many/f0007")).unwrap();
    states.push(scan(&src));
    env.backup(&[&src]);
    // Third: unchanged.
    states.push(scan(&src));
    env.backup(&[&src]);

    let off = env.path("offsite");
    offsite(&env, &off, &["init"]);
    let first = copy(&env, &off);
    assert_eq!(first["snapshots_copied"], 3, "{first}");
    // Each chunk was read once and stored once: the copy holds what the source holds.
    let (a, b) = (data_bytes(&env.repo), data_bytes(&off));
    assert!(
        b <= a + a / 20 + (64 << 10),
        "the copy stores {b} bytes of packs, the source {a}"
    );
    let again = copy(&env, &off);
    assert_eq!(again["snapshots_copied"], 0, "{again}");
    assert_eq!(again["bytes_transferred"], 0, "{again}");
    assert!(offsite(&env, &off, &["check", "--read-data"]).contains("no errors found"));

    // Every snapshot restores from the copy as it was backed up, oldest first.
    let list: serde_json::Value =
        serde_json::from_str(&offsite(&env, &off, &["snapshots", "--json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    for (i, (id, state)) in ids.iter().zip(&states).enumerate() {
        let t = env.path(&format!("from-offsite-{i}"));
        offsite(
            &env,
            &off,
            &["restore", id, "--target", t.to_str().unwrap()],
        );
        assert_same_tree(state, &scan(&t.join(src.strip_prefix("/").unwrap())));
    }
}

#[test]
fn copy_from_a_damaged_source_fails_and_leaves_the_target_consistent() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(6 << 20, 21)).unwrap();
    env.backup(&[&src]);
    let off = env.path("offsite");
    offsite(&env, &off, &["init"]);
    let pack = env
        .objects("data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let good = std::fs::read(&pack).unwrap();
    flip_byte(&pack, 0.5);
    let mut c = env.cmd(&["copy", "--to", off.to_str().unwrap()]);
    c.env("LIFEBOAT_TO_PASSWORD", TO_PW);
    let err = crate::fixtures::fails_cleanly(c.output().unwrap(), &["copy"]);
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(name),
        "the error does not name the pack: {err}"
    );
    // Nothing damaged reached the target, and no snapshot needing it appeared.
    assert!(
        !offsite(&env, &off, &["snapshots"]).contains(&src.to_str().unwrap()[1..]),
        "a snapshot was written"
    );
    assert!(offsite(&env, &off, &["check", "--read-data"]).contains("no errors found"));
    // Repaired, the copy completes and restores exactly.
    std::fs::write(&pack, good).unwrap();
    assert_eq!(copy(&env, &off)["snapshots_copied"], 1);
    latest_offsite_restores(&env, &off, &src);
}

/// A damaged source snapshot object is not copied, every other snapshot is, and the copy says
/// so: a warning naming it and exit code 3.
#[test]
fn copy_past_a_damaged_snapshot_object_copies_the_rest_and_says_so() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(1 << 20, 23)).unwrap();
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    std::fs::write(src.join("b.bin"), noise(1 << 20, 25)).unwrap();
    env.backup(&[&src]);
    let off = env.path("offsite");
    offsite(&env, &off, &["init"]);
    let object = env.repo.join("snapshots").join(&first);
    flip_byte(&object, 0.5);
    // (With every blob stored checked as well.)
    let mut c = env.cmd(&[
        "copy",
        "--to",
        off.to_str().unwrap(),
        "--json",
        "--extra-verify",
    ]);
    c.env("LIFEBOAT_TO_PASSWORD", TO_PW);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.lines().count() == 1 && err.contains(&first[..8]) && err.contains("not copied"),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(r["snapshots_copied"], 1, "{r}");
    assert_eq!(r["damaged"], serde_json::json!([first]), "{r}");
    latest_offsite_restores(&env, &off, &src);
}

/// A snapshot retagged after it was copied is copied again (its tags changed), from the copy of
/// the snapshot it was made from: nothing of its data is read. A snapshot repaired after it was
/// copied is copied as repaired, not as the copy of its damaged original it mostly matches.
#[test]
fn retagged_and_repaired_snapshots_copy_from_their_earlier_copy() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("keep/a.bin"), noise(6 << 20, 31)).unwrap();
    std::fs::write(src.join("keep/b.txt"), b"kept\n").unwrap();
    env.backup(&[&src]);
    let off = env.path("offsite");
    offsite(&env, &off, &["init"]);
    assert_eq!(copy(&env, &off)["snapshots_copied"], 1);

    env.ok(&["tag", "latest", "--add", "offsite"]);
    let r = copy(&env, &off);
    assert_eq!(r["snapshots_copied"], 1, "{r}");
    assert_eq!(
        r["bytes_read"], 0,
        "the retagged snapshot's data was read again: {r}"
    );
    let list: serde_json::Value = serde_json::from_str(&offsite(
        &env,
        &off,
        &["snapshots", "--json", "--tag", "offsite"],
    ))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    latest_offsite_restores(&env, &off, &src);

    // A second snapshot adds a file whose blobs are alone in the new pack; both are copied.
    std::fs::write(src.join("lose.bin"), noise(3 << 20, 33)).unwrap();
    let before = env.objects("data");
    env.backup(&[&src]);
    assert_eq!(copy(&env, &off)["snapshots_copied"], 1);
    let lost = env
        .objects("data")
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(lost).unwrap();
    let repaired: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "snapshots", "--json", "latest"])).unwrap();
    assert_eq!(repaired["files_repaired"], 1, "{repaired}");
    let r = copy(&env, &off);
    assert_eq!(r["snapshots_copied"], 1, "{r}");
    assert!(
        r["bytes_read"].as_u64().unwrap() < 1 << 20,
        "keep/ was read again: {r}"
    );
    // The copy of the repaired snapshot restores as the source's does: lose.bin all zeros.
    let here = env.path("repaired-here");
    env.ok(&[
        "restore",
        "latest",
        "--tag",
        "repaired",
        "--target",
        here.to_str().unwrap(),
    ]);
    let there = env.path("repaired-there");
    offsite(
        &env,
        &off,
        &[
            "restore",
            "latest",
            "--tag",
            "repaired",
            "--target",
            there.to_str().unwrap(),
        ],
    );
    let inner = src.strip_prefix("/").unwrap();
    let lost = std::fs::read(there.join(inner).join("lose.bin")).unwrap();
    assert!(lost.len() == 3 << 20 && lost.iter().all(|&b| b == 0));
    assert_same_tree(&scan(&here.join(inner)), &scan(&there.join(inner)));
}
