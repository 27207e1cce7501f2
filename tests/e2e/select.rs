//! `restore --include/--iinclude/--exclude/--iexclude` (and their files): restic's patterns choose
//! what a restore writes; directories are created only on the way to something restored.

use std::path::{Path, PathBuf};

use crate::fixtures::{Env, walk_files};

/// Files and directories under `root`, relative, sorted (directories end in `/`).
fn listing(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = format!("{rel}{}", e.file_name().to_str().unwrap());
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{name}/"));
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, "", &mut out);
    }
    out.sort();
    out
}

struct Case {
    env: Env,
    src: PathBuf,
    n: std::cell::Cell<u32>,
}

impl Case {
    /// Restore with `args` into a fresh target; the listing of the source's place in it.
    fn restore(&self, args: &[&str]) -> (PathBuf, Vec<String>) {
        self.n.set(self.n.get() + 1);
        let target = self.env.path(&format!("t{}", self.n.get()));
        let mut a = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        a.extend_from_slice(args);
        self.env.ok(&a);
        let at = target.join(self.src.strip_prefix("/").unwrap());
        let l = listing(&at);
        (at, l)
    }
}

#[test]
fn patterns_choose_what_a_restore_writes() {
    let env = Env::new();
    let src = env.path("src");
    for (f, body) in [
        ("etc/app.conf", "conf"),
        ("etc/app.log", "log"),
        ("etc/sub/x.conf", "x"),
        ("data/db/a.db", "a"),
        ("data/db/b.DB", "b"),
        ("data/tmp/t.tmp", "t"),
        ("logs/1.log", "1"),
        ("keep/inner/k.txt", "k"),
    ] {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::create_dir_all(src.join("data/empty")).unwrap();
    // Directory times to compare after restore: set after their entries were made.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_007);
    for d in ["etc", "etc/sub", "data"] {
        std::fs::File::open(src.join(d))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let s = src.to_str().unwrap();
    let case = Case {
        env,
        src: src.clone(),
        n: 0.into(),
    };

    // A relative pattern matches at any depth; directories on the way are made, and only those,
    // with their own metadata.
    let (at, got) = case.restore(&["--include", "*.conf"]);
    assert_eq!(got, ["etc/", "etc/app.conf", "etc/sub/", "etc/sub/x.conf"]);
    assert_eq!(
        std::fs::read_to_string(at.join("etc/sub/x.conf")).unwrap(),
        "x"
    );
    for d in ["etc", "etc/sub"] {
        assert_eq!(
            std::fs::metadata(at.join(d)).unwrap().modified().unwrap(),
            old,
            "{d}"
        );
    }

    // Patterns and paths together: each path must exist, wherever it is among the patterns.
    let keep = format!("{s}/keep");
    let (_, got) = case.restore(&["-i", "x.conf", "--include", &keep]);
    let want = [
        "etc/",
        "etc/sub/",
        "etc/sub/x.conf",
        "keep/",
        "keep/inner/",
        "keep/inner/k.txt",
    ];
    assert_eq!(got, want);
    let bad = case.env.path("bad");
    let missing = format!("{s}/missing");
    let e = case.env.fails(&[
        "restore",
        "latest",
        "--target",
        bad.to_str().unwrap(),
        "-i",
        "*.conf",
        "-i",
        &missing,
    ]);
    assert!(e.contains("missing is not in the snapshot"), "{e}");

    // Case ignored; an anchored pattern; a matching directory comes whole.
    let (_, got) = case.restore(&["--iinclude", "*.db"]);
    assert_eq!(got, ["data/", "data/db/", "data/db/a.db", "data/db/b.DB"]);
    let (_, got) = case.restore(&["-i", &format!("{s}/*/inner")]);
    assert_eq!(got, ["keep/", "keep/inner/", "keep/inner/k.txt"]);

    // Excludes win over includes, and apply at any depth below them.
    let data = [
        "data/",
        "data/db/",
        "data/db/a.db",
        "data/db/b.DB",
        "data/empty/",
    ];
    let (at, got) = case.restore(&["--include", &format!("{s}/data"), "--exclude", "data/tmp"]);
    assert_eq!(got, data);
    let mtime = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(at.join("data")), old);

    // Excludes alone, from files too; an excluded file's directory stays.
    let files = case.env.path("patterns");
    std::fs::write(&files, "# temporary files\n*.TMP\n\n").unwrap();
    let (_, got) = case.restore(&[
        "-e",
        "*.log",
        "--iexclude-file",
        files.to_str().unwrap(),
        "--exclude",
        &format!("{s}/keep"),
    ]);
    let mut want = data.to_vec();
    want.extend([
        "data/tmp/",
        "etc/",
        "etc/app.conf",
        "etc/sub/",
        "etc/sub/x.conf",
        "logs/",
    ]);
    assert_eq!(got, want);
    let incl = case.env.path("includes");
    std::fs::write(&incl, "1.log\nk.txt\n").unwrap();
    let (_, got) = case.restore(&["--include-file", incl.to_str().unwrap()]);
    assert_eq!(
        got,
        [
            "keep/",
            "keep/inner/",
            "keep/inner/k.txt",
            "logs/",
            "logs/1.log"
        ]
    );

    // A directory that was already there is left alone when nothing is restored into it; one
    // made on the way to nothing is removed again.
    let target = case.env.path("existing");
    let mine = target
        .join(src.strip_prefix("/").unwrap())
        .join("data/mine.txt");
    std::fs::create_dir_all(mine.parent().unwrap()).unwrap();
    std::fs::write(&mine, "mine").unwrap();
    case.env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        "x.conf",
    ]);
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");
    assert_eq!(walk_files(&target).len(), 2, "{:?}", walk_files(&target));
    let (_, got) = case.restore(&["--include", "/no/where/*"]);
    assert!(got.is_empty(), "{got:?}");

    // Bad patterns: one line, before anything is written.
    for args in [
        vec!["--exclude", "a[b"],
        vec!["--iinclude", "!x"],
        vec!["--include-file", "/no/such/file"],
    ] {
        let mut a = vec!["restore", "latest", "--target", bad.to_str().unwrap()];
        a.extend_from_slice(&args);
        let e = case.env.fails(&a);
        assert!(e.contains(args[1].trim_start_matches('!')), "{args:?}: {e}");
        assert!(!bad.exists(), "{args:?}");
    }
}
