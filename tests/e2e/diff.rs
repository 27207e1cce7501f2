//! `lifeboat diff`: each change with restic's modifiers, and the blobs each snapshot has that the
//! other has not (a blob still used elsewhere is neither added nor removed).

use crate::fixtures::Env;

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn diff_reports_changes_and_the_blobs_between_two_snapshots() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::create_dir_all(src.join("was-dir")).unwrap();
    for (f, body) in [
        ("same.txt", "same"),
        ("gone.txt", "gone"),
        ("changed.txt", "v1"),
        ("dir/inner.txt", "inner"),
        ("dup1", "shared"),
        ("was-dir/x", "x"),
    ] {
        std::fs::write(src.join(f), body).unwrap();
    }
    let s = src.to_str().unwrap();
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    std::fs::write(src.join("changed.txt"), "v2").unwrap();
    std::fs::write(src.join("new.txt"), "new").unwrap();
    std::fs::remove_dir_all(src.join("dir")).unwrap();
    std::fs::remove_dir_all(src.join("was-dir")).unwrap();
    std::fs::write(src.join("was-dir"), "now a file").unwrap();
    // The same bytes as dup1, which stays: its blob is not new.
    std::fs::write(src.join("dup2"), "shared").unwrap();
    let mut perms = std::fs::metadata(src.join("same.txt"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(src.join("same.txt"), perms).unwrap();
    let second = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();

    let out = env.ok(&["diff", &first[..8], "latest"]);
    let changes: Vec<&str> = out.lines().filter(|l| l.contains(s)).collect();
    let want = [
        format!("M    {s}/changed.txt"),
        format!("-    {s}/dir/"),
        format!("-    {s}/dir/inner.txt"),
        format!("+    {s}/dup2"),
        format!("-    {s}/gone.txt"),
        format!("+    {s}/new.txt"),
        format!("T    {s}/was-dir"),
        format!("-    {s}/was-dir/x"),
    ];
    assert_eq!(changes, want, "{out}");
    assert!(out.starts_with(&format!(
        "comparing snapshot {} to {}:",
        &first[..8],
        &second[..8]
    )));
    assert!(
        out.contains("Files:           3 new,      3 removed,      1 changed"),
        "{out}"
    );

    let lines = json_lines(&env.ok(&["diff", &first, &second, "--json", "--metadata"]));
    let (stats, changes) = lines.split_last().unwrap();
    let modifier = |p: &str| {
        changes
            .iter()
            .find(|c| c["path"] == format!("{s}/{p}"))
            .map(|c| c["modifier"].as_str().unwrap().to_owned())
    };
    assert_eq!(modifier("same.txt").as_deref(), Some("U"));
    assert_eq!(modifier("changed.txt").as_deref(), Some("MU"));
    assert_eq!(
        modifier("").as_deref(),
        Some("U"),
        "the directory's own time changed"
    );
    assert!(changes.iter().all(|c| c["message_type"] == "change"));
    assert_eq!(stats["message_type"], "statistics");
    assert_eq!(stats["source_snapshot"], first.as_str());
    assert_eq!(stats["target_snapshot"], second.as_str());
    assert_eq!(stats["changed_files"], 1);
    let (added, removed) = (&stats["added"], &stats["removed"]);
    // Added: new.txt, dup2 and was-dir as a file; removed: gone.txt, dir/inner.txt, was-dir/x.
    assert_eq!(
        (&added["files"], &added["dirs"]),
        (&3.into(), &0.into()),
        "{stats}"
    );
    assert_eq!(
        (&removed["files"], &removed["dirs"]),
        (&3.into(), &2.into()),
        "{stats}"
    );
    // "v2", "new" and "now a file" are new blobs; "shared" is not (dup1 still has it).
    assert_eq!(added["data_blobs"], 3, "{stats}");
    assert_eq!(removed["data_blobs"], 4, "{stats}");
    assert!(added["tree_blobs"].as_u64().unwrap() > 0, "{stats}");
    let data_bytes = ("v2".len() + "new".len() + "now a file".len()) as u64;
    assert!(added["bytes"].as_u64().unwrap() > data_bytes, "{stats}");

    // The same snapshot: nothing.
    let same = json_lines(&env.ok(&["diff", "latest", &second[..10], "--json"]));
    assert_eq!(same.len(), 1);
    assert_eq!(same[0]["added"]["data_blobs"], 0);
    assert_eq!(same[0]["removed"]["tree_blobs"], 0);

    let e = env.fails(&["diff", "nothex", "latest"]);
    assert!(e.contains("not a snapshot id"), "{e}");
}
