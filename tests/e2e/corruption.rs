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
            assert!(e.contains("problems"), "{e}");
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
        let e = env.fails(&["snapshots"]);
        assert!(e.contains(&rel(&env, &snap)), "{e}");
        let o = env.run(&["check"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains(&rel(&env, &snap)));
        // A damaged snapshot does not stop the next backup (it is skipped as a parent).
        let out = env.backup(&[&src]);
        assert_eq!(out["parent"], serde_json::Value::Null);
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
