//! restic's snapshot filters (`--host`, `--tag`, `--path`): what `latest` means for `restore`,
//! `ls` and `dump`, and which snapshots `snapshots`, `forget` and `copy` consider; `tag`, which
//! changes the tags filters select by.

use std::path::Path;

use crate::fixtures::Env;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

/// Ids of the snapshots `snapshots ARGS --json` lists, oldest first.
fn listed(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["snapshots", "--json"];
    a.extend_from_slice(args);
    json(&env.ok(&a))
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn backup(env: &Env, path: &Path, args: &[&str]) -> String {
    let mut a = vec!["backup", "--json"];
    a.extend_from_slice(args);
    a.push(path.to_str().unwrap());
    json(&env.ok(&a))["snapshot"].as_str().unwrap().to_owned()
}

#[test]
fn filters_choose_latest_and_what_commands_consider() {
    let env = Env::new();
    let (a, b) = (env.path("app-a"), env.path("app-b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    std::fs::write(b.join("f"), "b on h1").unwrap();
    std::fs::write(a.join("f"), "a on h1, first").unwrap();
    let s1 = backup(&env, &a, &["--host", "h1", "--tag", "daily"]);
    let s2 = backup(
        &env,
        &b,
        &["--host", "h1", "--tag", "daily,pg", "--tag", "pg"],
    );
    std::fs::write(a.join("f"), "a on h2").unwrap();
    let s3 = backup(&env, &a, &["--host", "h2"]);
    std::fs::write(a.join("f"), "a on h1, second").unwrap();
    let s4 = backup(&env, &a, &["--host", "h1"]);
    let all = vec![s1.clone(), s2.clone(), s3.clone(), s4.clone()];
    assert_eq!(listed(&env, &[]), all);

    // A tag list given as one value is several tags, each once.
    let snaps = json(&env.ok(&["snapshots", "--json"]));
    assert_eq!(snaps[1]["tags"], serde_json::json!(["daily", "pg"]));

    // snapshots: any host given, all tags of any list, every path given.
    assert_eq!(listed(&env, &["--host", "h2"]), [s3.as_str()]);
    assert_eq!(listed(&env, &["-H", "h2", "-H", "h1"]), all);
    assert_eq!(
        listed(&env, &["--tag", "daily"]),
        [s1.as_str(), s2.as_str()]
    );
    assert_eq!(listed(&env, &["--tag", "pg,daily"]), [s2.as_str()]);
    assert_eq!(
        listed(&env, &["--tag", "pg", "--tag", ""]),
        [s2.as_str(), s3.as_str(), s4.as_str()]
    );
    assert_eq!(
        listed(&env, &["--path", a_s]),
        [s1.as_str(), s3.as_str(), s4.as_str()]
    );
    // A path is matched as backup records it: absolute and normalized.
    let a_rel = format!("{a_s}/../app-a/");
    assert_eq!(
        listed(&env, &["--path", &a_rel, "--host", "h1"]),
        [s1.as_str(), s4.as_str()]
    );
    assert!(listed(&env, &["--path", a_s, "--path", b_s]).is_empty());
    assert!(listed(&env, &["--host", "h3"]).is_empty());
    // The newest of each host and set of paths.
    assert_eq!(
        listed(&env, &["--latest", "1"]),
        [s2.as_str(), s3.as_str(), s4.as_str()]
    );
    assert_eq!(
        listed(&env, &["--latest", "1", "--host", "h1", "--path", a_s]),
        [s4.as_str()]
    );

    // latest, filtered, for dump, ls and restore; an id is taken whatever the filters.
    let file = format!("{a_s}/f");
    assert_eq!(env.ok(&["dump", "latest", &file]), "a on h1, second");
    assert_eq!(
        env.ok(&["dump", "latest", &file, "--host", "h2"]),
        "a on h2"
    );
    assert_eq!(
        env.ok(&["dump", "latest", &file, "--tag", "daily", "--path", a_s]),
        "a on h1, first"
    );
    assert_eq!(
        env.ok(&["dump", &s3[..12], &file, "--host", "h1"]),
        "a on h2"
    );
    let ls = env.ok(&["ls", "latest", "--tag", "pg"]);
    assert!(
        ls.contains(&format!("{b_s}/f")) && !ls.contains("app-a"),
        "{ls}"
    );
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--path",
        b_s,
    ]);
    let restored = target.join(b.strip_prefix("/").unwrap()).join("f");
    assert_eq!(std::fs::read_to_string(restored).unwrap(), "b on h1");
    assert!(!target.join(a.strip_prefix("/").unwrap()).exists());
    let err = env.fails(&[
        "restore",
        "latest",
        "--target",
        "/nonexistent-x",
        "--host",
        "h3",
        "--tag",
        "x,y",
    ]);
    assert!(
        err.contains(r#"no snapshot matches --host h3 --tag "x,y""#),
        "{err}"
    );
    assert!(!Path::new("/nonexistent-x").exists());

    // copy: the snapshots the filters select, when none is named.
    let off = env.path("offsite");
    let mut c = env.cmd(&["init"]);
    c.env("LIFEBOAT_REPO", &off);
    crate::fixtures::stdout_of_success(c.output().unwrap(), "init offsite");
    let mut c = env.cmd(&[
        "copy",
        "--to",
        off.to_str().unwrap(),
        "--tag",
        "daily",
        "--json",
    ]);
    c.env("LIFEBOAT_TO_PASSWORD", crate::fixtures::PASSWORD);
    let copied = json(&crate::fixtures::stdout_of_success(
        c.output().unwrap(),
        "copy",
    ));
    let sources: Vec<&str> = copied["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [s1.as_str(), s2.as_str()]);
    let mut c = env.cmd(&["copy", "--to", off.to_str().unwrap(), "--host", "h9"]);
    c.env("LIFEBOAT_TO_PASSWORD", crate::fixtures::PASSWORD);
    crate::fixtures::fails_cleanly(c.output().unwrap(), &["copy", "--host", "h9"]);

    // forget: the filters limit what is considered; the others are neither kept nor removed.
    let plan = json(&env.ok(&[
        "forget",
        "--host",
        "h1",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(plan["groups"].as_array().unwrap().len(), 2, "{plan}");
    assert_eq!(plan["would_remove"], serde_json::json!([s1.clone()]));
    // --keep-tag keeps what a list's tags all mark, whatever the other rules say.
    let plan = json(&env.ok(&[
        "forget",
        "--group-by",
        "",
        "--keep-last",
        "1",
        "--keep-tag",
        "pg,daily",
        "--dry-run",
        "--json",
    ]));
    let mut gone: Vec<String> = plan["would_remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    gone.sort();
    let mut want = vec![s1.clone(), s3.clone()];
    want.sort();
    assert_eq!(gone, want, "{plan}");
    env.ok(&["forget", "--keep-tag", "daily", "--tag", "daily"]);
    assert_eq!(
        listed(&env, &[]),
        all,
        "a --keep-tag alone keeps every snapshot it marks"
    );
    env.ok(&["forget", "--keep-tag", "pg", "--host", "h1"]);
    assert_eq!(listed(&env, &[]), [s2.as_str(), s3.as_str()]);
    assert_eq!(env.ok(&["dump", "latest", &file]), "a on h2");
}

#[test]
fn tag_rewrites_snapshots_with_their_new_tags_and_keeps_their_data() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "first").unwrap();
    let s1 = backup(&env, &src, &["--tag", "daily"]);
    std::fs::write(src.join("f"), "second").unwrap();
    let s2 = backup(&env, &src, &["--tag", "daily,pg"]);
    std::fs::write(src.join("f"), "third").unwrap();
    let s3 = backup(&env, &src, &[]);
    let before = json(&env.ok(&["snapshots", "--json"]));
    let tags = |env: &Env| -> Vec<serde_json::Value> {
        json(&env.ok(&["snapshots", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tags"].clone())
            .collect()
    };

    // One snapshot by name: written anew under a new id, the old one gone, the rest the same.
    let out = env.ok(&["tag", "--add", "keep", "latest"]);
    assert!(
        out.starts_with(&format!("old snapshot {} is now ", &s3[..8])),
        "{out}"
    );
    let after = json(&env.ok(&["snapshots", "--json"]));
    let new3 = after[2]["id"].as_str().unwrap().to_owned();
    assert_ne!(new3, s3);
    assert_eq!(after[2]["tags"], serde_json::json!(["keep"]));
    assert_eq!(after[2]["original"], s3.as_str());
    for key in ["time", "host", "paths", "summary"] {
        assert_eq!(after[2][key], before[2][key], "{key}");
    }
    assert_eq!(listed(&env, &[])[..2], [s1.clone(), s2.clone()]);
    let e = env.fails(&["ls", &s3]);
    assert!(e.contains("no snapshot matches"), "{e}");

    // By filter, with --json: add and remove at once; a snapshot already so is not rewritten.
    let lines: Vec<serde_json::Value> = env
        .ok(&[
            "tag", "--tag", "daily", "--remove", "daily", "--add", "weekly", "--json",
        ])
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["old_snapshot_id"], s1.as_str());
    assert_eq!(lines[1]["old_snapshot_id"], s2.as_str());
    assert_eq!(lines[2]["changed_snapshots"], 2);
    assert_eq!(
        tags(&env),
        [
            serde_json::json!(["weekly"]),
            serde_json::json!(["pg", "weekly"]),
            serde_json::json!(["keep"])
        ]
    );
    let out = env.ok(&["tag", "--add", "keep", "latest"]);
    assert_eq!(out.trim(), "no snapshots were modified");

    // --set replaces; "" clears. The original id survives a second change.
    env.ok(&["tag", "--set", "", "--tag", "pg"]);
    env.ok(&["tag", "--set", "a,b", "--set", "c", "latest"]);
    assert_eq!(
        tags(&env),
        [
            serde_json::json!(["weekly"]),
            serde_json::json!([]),
            serde_json::json!(["a", "b", "c"])
        ]
    );
    let last = json(&env.ok(&["snapshots", "--json"]));
    assert_eq!(last[2]["original"], s3.as_str(), "{last}");

    // The data is untouched: every snapshot restores, and the repository checks clean.
    for (i, want) in ["first", "second", "third"].iter().enumerate() {
        let id = last[i]["id"].as_str().unwrap();
        let f = format!("{}/f", src.to_str().unwrap());
        let out = env.cmd(&["dump", id, &f]).output().unwrap();
        assert_eq!(out.stdout, want.as_bytes(), "snapshot {i}");
    }
    env.ok(&["check", "--read-data"]);

    // Bad input: nothing to do, or --set with --add.
    let e = env.fails(&["tag", "latest"]);
    assert!(e.contains("give --add, --remove or --set"), "{e}");
    let o = env.run(&["tag", "--set", "x", "--add", "y"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(listed(&env, &[]).len(), 3);
}
