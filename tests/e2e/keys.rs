//! Key slots: add, list, open with each, remove; the last key cannot be removed.

use crate::fixtures::{Env, PASSWORD, fails_cleanly};

#[test]
fn add_list_use_and_remove_keys() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.backup(&[&src]);

    let list = |cmd: &mut std::process::Command| -> Vec<serde_json::Value> {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let keys = list(&mut env.cmd(&["key", "list", "--json"]));
    assert_eq!(keys.len(), 1);
    let original = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["current"], true);

    let out = env
        .cmd(&["key", "add"])
        .env("LIFEBOAT_NEW_PASSWORD", "second password")
        .output()
        .unwrap();
    assert!(out.status.success());
    let keyfile = env.path("k.key");
    std::fs::write(&keyfile, [42u8; 32]).unwrap();
    env.ok(&["key", "add", "--new-key-file", keyfile.to_str().unwrap()]);
    assert_eq!(list(&mut env.cmd(&["key", "list", "--json"])).len(), 3);

    // Each key opens the repository.
    let o = env
        .cmd(&["snapshots"])
        .env("LIFEBOAT_PASSWORD", "second password")
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = env
        .cmd(&["snapshots", "--key-file", keyfile.to_str().unwrap()])
        .env_remove("LIFEBOAT_PASSWORD")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Remove the original; its password stops working.
    env.ok(&["key", "remove", &original[..10]]);
    let e = env.fails(&["snapshots"]);
    assert!(e.contains("wrong password"), "{e}");

    // Remove the key-file key with the second password; the last key is refused.
    let keys = list(
        env.cmd(&["key", "list", "--json"])
            .env("LIFEBOAT_PASSWORD", "second password"),
    );
    assert_eq!(keys.len(), 2);
    let kf = keys.iter().find(|k| k["kind"] == "key-file").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = keys.iter().find(|k| k["kind"] == "password").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = env
        .cmd(&["key", "remove", &kf])
        .env("LIFEBOAT_PASSWORD", "second password")
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = env
        .cmd(&["key", "remove", &last])
        .env("LIFEBOAT_PASSWORD", "second password")
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["key", "remove"]);
    assert!(e.contains("last key"), "{e}");
    let o = env
        .cmd(&["check", "--read-data"])
        .env("LIFEBOAT_PASSWORD", "second password")
        .output()
        .unwrap();
    assert!(o.status.success());
    let _ = PASSWORD;
}

#[test]
fn repository_opened_by_key_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("secret.key");
    std::fs::write(&keyfile, format!("{}\n", "ab".repeat(32))).unwrap();
    let repo = dir.path().join("repo");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(args)
            .args([
                "--repo",
                repo.to_str().unwrap(),
                "--key-file",
                keyfile.to_str().unwrap(),
            ])
            .env_remove("LIFEBOAT_PASSWORD")
            .env_remove("LIFEBOAT_REPO")
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    assert!(
        run(&["backup", dir.path().join("f").to_str().unwrap()])
            .status
            .success()
    );
    let o = run(&["snapshots", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    // A different key file does not open it.
    std::fs::write(&keyfile, [1u8; 32]).unwrap();
    let e = fails_cleanly(run(&["snapshots"]), &["snapshots"]);
    assert!(e.contains("wrong key file"), "{e}");
}
