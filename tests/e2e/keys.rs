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

/// `lifeboat ARGS` in a pseudo-terminal (util-linux `script`), typing `input`; its status and
/// everything the terminal showed.
fn at_terminal(env: &Env, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut line = String::from(env!("CARGO_BIN_EXE_lifeboat"));
    for a in args {
        line += &[" '", a, "'"].concat();
    }
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("LIFEBOAT_PASSWORD")
        .env("LIFEBOAT_REPO", &env.repo)
        .env("LIFEBOAT_CACHE_DIR", env.path("cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn passwords_from_the_terminal_and_from_a_command() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.backup(&[&src]);

    // Typed at a terminal when nothing else gives it.
    let (ok, shown) = at_terminal(&env, &["snapshots"], &format!("{PASSWORD}\n"));
    assert!(ok && shown.contains("1 snapshots"), "{shown}");
    assert!(
        shown.contains("enter the password for the repository"),
        "{shown}"
    );
    let (ok, shown) = at_terminal(&env, &["snapshots"], "not it\n");
    assert!(!ok && shown.contains("wrong password"), "{shown}");
    // A new repository asks twice, and refuses two different passwords.
    let fresh = env.path("fresh").to_str().unwrap().to_owned();
    let (ok, shown) = at_terminal(&env, &["--repo", &fresh, "init"], "typed pw\nother\n");
    assert!(
        !ok && shown.contains("the passwords do not match"),
        "{shown}"
    );
    assert!(!std::path::Path::new(&fresh).join("config").exists());
    let (ok, shown) = at_terminal(&env, &["--repo", &fresh, "init"], "typed pw\ntyped pw\n");
    assert!(ok && shown.contains("created repository"), "{shown}");
    let mut c = env.cmd(&["--repo", &fresh, "snapshots"]);
    c.env("LIFEBOAT_PASSWORD", "typed pw");
    crate::fixtures::stdout_of_success(c.output().unwrap(), "the typed password opens it");
    // With no terminal (a pod, a pipe), nobody is asked: one line.
    let mut c = env.cmd(&["snapshots"]);
    c.env_remove("LIFEBOAT_PASSWORD");
    let e = fails_cleanly(c.output().unwrap(), &["snapshots"]);
    assert!(e.contains("--password-command"), "{e}");

    // From a command, given by flag or environment; the command and its output stay unshown.
    let mut c = env.cmd(&[
        "snapshots",
        "--password-command",
        &format!("echo '{PASSWORD}'"),
    ]);
    c.env_remove("LIFEBOAT_PASSWORD");
    let out = crate::fixtures::stdout_of_success(c.output().unwrap(), "--password-command");
    assert!(out.contains("1 snapshots"), "{out}");
    let mut c = env.cmd(&["snapshots"]);
    c.env_remove("LIFEBOAT_PASSWORD").env(
        "LIFEBOAT_PASSWORD_COMMAND",
        format!("printf '%s\\n' '{PASSWORD}'"),
    );
    crate::fixtures::stdout_of_success(c.output().unwrap(), "LIFEBOAT_PASSWORD_COMMAND");
    let failing = "echo hunter2; exit 3";
    let mut c = env.cmd(&["snapshots", "--password-command", failing]);
    c.env_remove("LIFEBOAT_PASSWORD");
    let o = c.output().unwrap();
    let e = fails_cleanly(o, &["--password-command", failing]);
    assert!(
        e.contains("the password command failed (exit status: 3)"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let o = env.run(&[
        "snapshots",
        "--password-command",
        "true",
        "--key-file",
        "/k",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.lines().count() == 1 && e.contains("cannot be used with"),
        "{e}"
    );
}
