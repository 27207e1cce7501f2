//! `lifeboat find`: entries by path pattern in each snapshot, and by the pack holding their
//! contents — which files a pack that `check` reports damaged affects.

use std::collections::BTreeSet;

use crate::fixtures::{Env, noise};

fn found(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with('/')).collect()
}

#[test]
fn find_matches_paths_and_the_files_a_pack_holds() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub/deep")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    std::fs::write(src.join("sub/b.TXT"), "b").unwrap();
    std::fs::write(src.join("sub/deep/c.txt"), "c").unwrap();
    std::fs::write(src.join("sub/deep/data.bin"), noise(40 << 20, 3)).unwrap();
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    std::fs::write(src.join("sub/new.txt"), "new").unwrap();
    let second = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    let s = src.to_str().unwrap();

    // A relative pattern matches at any depth, in every snapshot, oldest first.
    let out = env.ok(&["find", "*.txt"]);
    let want_first = [format!("{s}/a.txt"), format!("{s}/sub/deep/c.txt")];
    let want_second = [
        format!("{s}/a.txt"),
        format!("{s}/sub/deep/c.txt"),
        format!("{s}/sub/new.txt"),
    ];
    assert_eq!(
        found(&out),
        [&want_first[..], &want_second[..]].concat(),
        "{out}"
    );
    assert!(
        out.starts_with(&format!(
            "Found matching entries in snapshot {} from ",
            &first[..8]
        )),
        "{out}"
    );
    assert!(out.contains(&format!("in snapshot {} from", &second[..8])));
    // -s chooses snapshots; -i ignores case; an anchored pattern matches from the root.
    let out = env.ok(&["find", "-s", "latest", "-i", "*.txt"]);
    assert_eq!(found(&out).len(), 4, "{out}");
    let out = env.ok(&["find", "-s", &first[..8], &format!("{s}/sub/*")]);
    assert_eq!(
        found(&out),
        [format!("{s}/sub/b.TXT"), format!("{s}/sub/deep")],
        "{out}"
    );
    assert_eq!(env.ok(&["find", "nothing-is-called-this"]), "");

    // --json: one array, a record per snapshot with matches.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["find", "--json", "new.txt"])).unwrap();
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["snapshot"], second.as_str());
    assert_eq!(v[0]["hits"], 1);
    assert_eq!(v[0]["matches"][0]["path"], format!("{s}/sub/new.txt"));
    assert_eq!(v[0]["matches"][0]["size"], 3);
    assert_eq!(v[0]["matches"][0]["type"], "file");

    // By pack: every entry with contents (each file's data, each directory's listing) is in
    // some pack, and the 40 MiB file spans several.
    let packs = env.objects("data");
    assert!(packs.len() >= 3, "{packs:?}");
    let mut union = BTreeSet::new();
    let mut data_packs = 0;
    for p in &packs {
        let id = p.file_name().unwrap().to_str().unwrap();
        let out = env.ok(&["find", "-s", &second, "--pack", &id[..12]]);
        if found(&out).contains(&format!("{s}/sub/deep/data.bin").as_str()) {
            data_packs += 1;
        }
        union.extend(found(&out).into_iter().map(str::to_owned));
        // Directories without a match are skipped in later snapshots: the same hits as each
        // snapshot alone.
        let one = env.ok(&["find", "-s", &first, "--pack", &id[..12]]);
        let all = env.ok(&["find", "--pack", &id[..12]]);
        assert_eq!(found(&all), [found(&one), found(&out)].concat(), "{id}");
    }
    assert!(data_packs >= 2, "data.bin is in {data_packs} packs");
    for f in [
        "",
        "/a.txt",
        "/sub",
        "/sub/b.TXT",
        "/sub/deep",
        "/sub/deep/c.txt",
        "/sub/new.txt",
    ] {
        assert!(
            union.contains(&format!("{s}{f}")),
            "{s}{f} in no pack: {union:?}"
        );
    }
    let top = format!("/{}", s.split('/').nth(1).unwrap());
    assert!(
        union.contains(&top),
        "the directories above src too: {union:?}"
    );

    // A pattern and a pack together: entries that match both.
    let data_pack = packs
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .find(|id| {
            found(&env.ok(&["find", "-s", &second, "--pack", id]))
                .contains(&format!("{s}/sub/deep/data.bin").as_str())
        })
        .unwrap();
    let out = env.ok(&["find", "-s", &second, "--pack", &data_pack, "*.bin"]);
    assert_eq!(found(&out), [format!("{s}/sub/deep/data.bin")], "{out}");

    // Bad ids: one line each.
    let e = env.fails(&["find", "--pack", "zz"]);
    assert!(e.contains("not a pack id"), "{e}");
    let e = env.fails(&["find", "--blob", "0123456789abcdef"]);
    assert!(e.contains("no blob matches"), "{e}");
    let e = env.fails(&["find"]);
    assert!(e.contains("give a PATTERN, --blob or --pack"), "{e}");
}
