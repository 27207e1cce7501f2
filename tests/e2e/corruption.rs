//! A flipped byte in any kind of object is detected, and restore never writes wrong data.

use std::path::Path;

use crate::fixtures::{Env, PASSWORD, flip_byte, noise, scan};

fn setup() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/random.bin"), noise(3 << 20, 8)).unwrap();
    std::fs::write(src.join("text"), b"some text ".repeat(1000)).unwrap();
    env.backup(&[&src]);
    (env, src)
}

/// Restore must fail cleanly or produce exactly the source: never wrong data.
fn restore_is_exact_or_fails(env: &Env, src: &Path, tag: &str) {
    let t = env.path(&format!("restore-{tag}"));
    let o = env.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{tag}: panic: {err}");
    if o.status.success() {
        assert_eq!(
            scan(src),
            scan(&t.join(src.strip_prefix("/").unwrap())),
            "{tag}: restore wrote wrong data"
        );
    } else {
        assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
    }
}

fn rel(env: &Env, p: &Path) -> String {
    p.strip_prefix(&env.repo)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn flipped_byte_in_each_pack_is_named_by_check() {
    let (env, src) = setup();
    let packs = env.objects("data");
    assert!(
        packs.len() >= 2,
        "expected a data pack and a tree pack: {packs:?}"
    );
    for (i, pack) in packs.iter().enumerate() {
        for frac in [0.0, 0.3, 0.999] {
            let orig = std::fs::read(pack).unwrap();
            flip_byte(pack, frac);
            let e = env.fails(&["check", "--read-data"]);
            assert!(e.contains("problem"), "{e}");
            let o = env.run(&["check", "--read-data"]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&rel(&env, pack)),
                "check did not name {}: {err}",
                rel(&env, pack)
            );
            restore_is_exact_or_fails(&env, &src, &format!("pack{i}-{frac}"));
            std::fs::write(pack, orig).unwrap();
        }
    }
    env.ok(&["check", "--read-data"]);
}

#[test]
fn truncated_pack_is_detected_without_reading_data() {
    let (env, src) = setup();
    let pack = env
        .objects("data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let data = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &data[..data.len() / 2]).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&rel(&env, &pack)));
    let t = env.path("t");
    let o = env.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "restore from a truncated pack must fail"
    );
    let _ = src;
}

#[test]
fn flipped_byte_in_index_snapshot_config_and_key() {
    let (env, src) = setup();
    // Index objects.
    for idx in env.objects("index") {
        let orig = std::fs::read(&idx).unwrap();
        flip_byte(&idx, 0.5);
        let o = env.run(&["check"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&rel(&env, &idx)),
            "check did not name the index"
        );
        restore_is_exact_or_fails(&env, &src, "index");
        std::fs::write(&idx, orig).unwrap();
    }
    // Snapshot objects.
    for snap in env.objects("snapshots") {
        let orig = std::fs::read(&snap).unwrap();
        flip_byte(&snap, 0.5);
        let id = snap.file_name().unwrap().to_str().unwrap().to_owned();
        // Listing leaves it out with a warning that names it and how to remove it.
        let o = env.run(&["snapshots", "--json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains(&rel(&env, &snap))
                && err.contains(&format!("lifeboat forget {}", &id[..8])),
            "{err}"
        );
        let listed: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert!(
            !listed
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == id.as_str())
        );
        let o = env.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&rel(&env, &snap)) && err.contains("'lifeboat forget ID'"),
            "{err}"
        );
        // A damaged snapshot does not stop the next backup (it is skipped as a parent).
        let out = env.backup(&[&src]);
        assert_eq!(out["parent"], serde_json::Value::Null);
        // It is forgotten by its id, unread.
        env.ok(&["forget", &id[..8]]);
        assert!(!snap.exists());
        std::fs::write(&snap, orig).unwrap();
    }
    // The config: every position.
    let cfg = env.repo.join("config");
    let orig = std::fs::read(&cfg).unwrap();
    for i in (0..orig.len()).step_by(7) {
        let mut bad = orig.clone();
        bad[i] ^= 0x55;
        std::fs::write(&cfg, &bad).unwrap();
        let e = env.fails(&["snapshots"]);
        assert!(e.contains("config"), "flip at {i}: {e}");
    }
    std::fs::write(&cfg, &orig).unwrap();
    // The key slot: every position.
    let key = env.objects("keys").pop().unwrap();
    let orig = std::fs::read(&key).unwrap();
    for i in (0..orig.len()).step_by(5) {
        let mut bad = orig.clone();
        bad[i] ^= 0x55;
        std::fs::write(&key, &bad).unwrap();
        let e = env.fails(&["snapshots"]);
        assert!(
            e.contains("wrong password") || e.contains("keys/"),
            "flip at {i}: {e}"
        );
        assert!(!e.contains(PASSWORD));
    }
    std::fs::write(&key, &orig).unwrap();
    env.ok(&["check", "--read-data"]);
}

/// `check --read-data-subset`: the groups `1/3`, `2/3` and `3/3` read disjoint sets of packs
/// that together are every pack, so a damaged pack is found by exactly one of them; a
/// percentage and a size read that share of the packs; `--json` reports it; a bad subset is one
/// line and exit 2.
#[test]
fn read_data_subsets_cover_every_pack_once() {
    let env = Env::new();
    // Each backup writes a data pack and a tree pack of its own.
    for i in 0..8u64 {
        let d = env.path(&format!("src{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), noise(50_000 + i as usize * 1000, i)).unwrap();
        env.backup(&[&d]);
    }
    let packs = env.objects("data");
    let total: u64 = packs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(packs.len() >= 16, "{packs:?}");
    let check = |subset: &str| -> serde_json::Value {
        let out = env.ok(&["check", "--read-data-subset", subset, "--json"]);
        serde_json::from_str(out.trim()).unwrap()
    };
    let groups: Vec<serde_json::Value> = ["1/3", "2/3", "3/3"].iter().map(|s| check(s)).collect();
    let read = |k: &str| groups.iter().map(|g| g[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(read("packs_read"), packs.len() as u64, "{groups:?}");
    assert_eq!(read("bytes_read"), total, "{groups:?}");
    assert!(groups.iter().all(|g| g["packs"] == packs.len()));
    // The same group reads the same packs every time.
    assert_eq!(check("2/3"), groups[1]);
    let quarter = check("25%");
    assert_eq!(
        quarter["packs_read"],
        (packs.len() as f64 / 4.0).round() as u64
    );
    let sized = check("100K");
    let (n, bytes) = (
        sized["packs_read"].as_u64().unwrap(),
        sized["bytes_read"].as_u64().unwrap(),
    );
    assert!(bytes >= 100 << 10 && n < packs.len() as u64, "{sized}");
    assert_eq!(check("100%")["packs_read"], packs.len() as u64);

    // One damaged data pack (the largest; a damaged tree pack shows without reading data):
    // exactly one group names it.
    let victim = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(victim, 0.5);
    let mut found = 0;
    for s in ["1/3", "2/3", "3/3"] {
        let o = env.run(&["check", "--read-data-subset", s, "--json"]);
        if o.status.success() {
            continue;
        }
        found += 1;
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        let errors = report["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{report}");
        assert!(
            errors[0].as_str().unwrap().starts_with(&rel(&env, victim)),
            "{report}"
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("has 1 problem;"));
    }
    assert_eq!(found, 1, "groups naming the damaged pack");
    for bad in ["0/3", "4/3", "1/257", "0%", "150%", "12Q", "0", "-1M"] {
        let o = env.run(&["check", "--read-data-subset", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
    }
    let o = env.run(&["check", "--read-data", "--read-data-subset", "1/2"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A snapshot a newer Lifeboat wrote (it authenticates, and holds a field this version does not
/// know) is not damage: listings leave it out with a warning to upgrade, never one to forget it;
/// `check` says it was not checked; `prune`, which cannot know what it references, refuses to run.
#[test]
fn a_snapshot_from_a_newer_lifeboat_is_left_out_not_called_damaged() {
    let (env, src) = setup();
    let loc = lifeboat::Location::parse(env.repo.to_str().unwrap()).unwrap();
    let repo =
        lifeboat::Repository::open(&loc, &lifeboat::Secret::password(PASSWORD).unwrap()).unwrap();
    let (_, snap) = repo.snapshots().unwrap().pop().unwrap();
    let mut newer = serde_json::to_value(&snap).unwrap();
    newer["written_by_a_later_version"] = serde_json::json!(true);
    let (id, _) = repo
        .save_object(
            lifeboat::crypto::ObjectKind::Snapshot,
            &serde_json::to_vec(&newer).unwrap(),
        )
        .unwrap();
    let (id, short) = (id.to_hex(), id.short());

    let o = env.run(&["snapshots", "--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.lines().count() == 1
            && err.contains(&short)
            && err.contains("upgrade Lifeboat")
            && !err.contains("'lifeboat forget"),
        "{err}"
    );
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    let o = env.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "check passed: {err}");
    assert!(
        err.contains(&format!("not checked: snapshots/{id}"))
            && err.contains("do not forget them")
            && !err.contains("lifeboat: damaged")
            && !err.contains("'lifeboat forget ID'"),
        "{err}"
    );
    let e = env.fails(&["prune"]);
    assert!(e.contains(&id) && e.contains("newer Lifeboat"), "{e}");
    // A backup takes the newest snapshot it can read as its parent.
    let b = env.backup(&[&src]);
    assert!(
        b["files_unmodified"].as_u64().unwrap() > 0 && b["files_new"] == 0,
        "{b}"
    );
}
