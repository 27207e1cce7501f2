//! Bad input gets one clear line and a non-zero exit, never a panic; secrets never show.

use std::process::Command;

use crate::fixtures::{Env, PASSWORD, fails_cleanly};

fn bare(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.args(args)
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_PASSWORD");
    c
}

#[test]
fn wrong_password_is_one_line_without_the_secret() {
    let env = Env::new();
    let o = env
        .cmd(&["snapshots"])
        .env("LIFEBOAT_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["snapshots"]);
    assert!(e.contains("wrong password"), "{e}");
    assert!(!e.contains("not-the-password"));
    // Verbose logs do not show it either.
    let o = env.cmd(&["-vv", "snapshots"]).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains(PASSWORD), "secret in verbose output");
}

#[test]
fn missing_and_non_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let o = bare(&["snapshots", "--repo", missing.to_str().unwrap()])
        .env("LIFEBOAT_PASSWORD", "x")
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["snapshots"]);
    assert!(e.contains("no repository at"), "{e}");
    assert!(!missing.exists(), "opening a missing repository created it");

    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("file"), b"not a repo").unwrap();
    let o = bare(&["snapshots", "--repo", plain.to_str().unwrap()])
        .env("LIFEBOAT_PASSWORD", "x")
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["snapshots"]);
    assert!(e.contains("not a Lifeboat repository"), "{e}");
    assert_eq!(
        std::fs::read_dir(&plain).unwrap().count(),
        1,
        "a non-repository was written to"
    );

    let o = bare(&["snapshots", "--repo", plain.to_str().unwrap()])
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["snapshots"]);
    assert!(e.contains("LIFEBOAT_PASSWORD"), "{e}");
    let o = bare(&["snapshots"])
        .env("LIFEBOAT_PASSWORD", "x")
        .output()
        .unwrap();
    let e = fails_cleanly(o, &["snapshots"]);
    assert!(e.contains("LIFEBOAT_REPO"), "{e}");

    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, b"too short").unwrap();
    let o = bare(&[
        "init",
        "--repo",
        dir.path().join("r").to_str().unwrap(),
        "--key-file",
        short_key.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let e = fails_cleanly(o, &["init"]);
    assert!(e.contains("32 raw bytes"), "{e}");

    let o = bare(&["backup", "--no-such-flag"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().count(),
        1,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn init_twice_and_unknown_or_ambiguous_snapshots() {
    let env = Env::new();
    let e = env.fails(&["init"]);
    assert!(e.contains("already exists"), "{e}");
    let e = env.fails(&["restore", "latest", "--target", "/tmp/x-none"]);
    assert!(e.contains("no snapshots"), "{e}");

    let f = env.path("f");
    // 17 snapshots: two must share their first hex digit.
    let mut ids = Vec::new();
    for i in 0..17 {
        std::fs::write(&f, format!("v{i}")).unwrap();
        ids.push(env.backup(&[&f])["snapshot"].as_str().unwrap().to_owned());
    }
    let e = env.fails(&["ls", "deadbeefdeadbeef"]);
    assert!(e.contains("no snapshot matches"), "{e}");
    let e = env.fails(&["ls", "not-hex!"]);
    assert!(e.contains("not a snapshot id"), "{e}");
    let shared = (0..16u8)
        .map(|d| format!("{d:x}"))
        .find(|p| ids.iter().filter(|id| id.starts_with(p.as_str())).count() > 1)
        .unwrap();
    let e = env.fails(&["ls", &shared]);
    assert!(e.contains("ambiguous"), "{e}");
    // A unique prefix works.
    let unique = ids.iter().map(|id| &id[..12]).next().unwrap();
    env.ok(&["ls", unique]);
}

#[test]
fn missing_source_path_fails_without_a_snapshot() {
    let env = Env::new();
    let e = env.fails(&["backup", env.path("does-not-exist").to_str().unwrap()]);
    assert!(e.contains("does-not-exist"), "{e}");
    let out = env.ok(&["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Run as an unprivileged user so that a mode-000 file really is unreadable.
#[test]
fn unreadable_file_is_a_warning_and_exit_code_3() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("locked-dir")).unwrap();
    std::fs::write(src.join("readable"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"no access").unwrap();
    std::fs::write(src.join("locked-dir/inside"), b"x").unwrap();
    let nobody = |p: &std::path::Path| {
        rustix::fs::chownat(
            rustix::fs::CWD,
            p,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    };
    for p in walk(env.dir.path()) {
        nobody(&p);
    }
    std::fs::set_permissions(
        src.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        src.join("secret"),
        Some(rustix::fs::Uid::from_raw(0)),
        Some(rustix::fs::Gid::from_raw(0)),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("locked-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        src.join("locked-dir"),
        Some(rustix::fs::Uid::from_raw(0)),
        Some(rustix::fs::Gid::from_raw(0)),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();

    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_lifeboat"),
            "backup",
            "--json",
            src.to_str().unwrap(),
        ])
        .env("LIFEBOAT_REPO", &env.repo)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    // Each warning names the entry by its whole path.
    for p in [src.join("secret"), src.join("locked-dir")] {
        assert!(
            err.contains(&format!("warning: {}: ", p.display())),
            "{err}"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warnings"], 2, "{v}");
    // The snapshot exists and holds the readable file.
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains("/readable"));
    assert!(!ls.contains("/secret"));
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            v.extend(walk(&e.unwrap().path()));
        }
    }
    v
}
