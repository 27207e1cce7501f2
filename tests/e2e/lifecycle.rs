//! Repository lifecycle on a local repository: forget by policy, prune (and prune killed at any
//! point), the prune lease.

use std::time::Duration;

use crate::fixtures::{Env, assert_same_tree, noise, scan};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    json(&env.ok(&["snapshots", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn forget_by_policy_and_by_id() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join("f"), noise(4096, i)).unwrap();
        env.ok(&["backup", "--host", "a", src.to_str().unwrap()]);
    }
    env.ok(&["backup", "--host", "b", src.to_str().unwrap()]);
    let all = snapshot_ids(&env);
    assert_eq!(all.len(), 4);

    // A dry run reports per group, with reasons, and removes nothing.
    let plan = json(&env.ok(&["forget", "--keep-last", "1", "--dry-run", "--json"]));
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{plan}");
    let a = groups.iter().find(|g| g["group"]["host"] == "a").unwrap();
    assert_eq!(a["keep"].as_array().unwrap().len(), 1);
    assert_eq!(a["keep"][0]["reasons"][0], "last");
    assert_eq!(a["keep"][0]["id"], all[2].as_str());
    assert_eq!(a["remove"].as_array().unwrap().len(), 2);
    assert_eq!(plan["would_remove"].as_array().unwrap().len(), 2);
    assert_eq!(snapshot_ids(&env).len(), 4);

    // Within a day of the newest: everything stays.
    let out = env.ok(&["forget", "--keep-within", "1d"]);
    assert!(out.contains("removed 0 snapshots"), "{out}");

    // One group for all: keep the newest only.
    let done = json(&env.ok(&["forget", "--keep-last", "1", "--group-by", "", "--json"]));
    assert_eq!(done["removed"].as_array().unwrap().len(), 3, "{done}");
    assert_eq!(snapshot_ids(&env), vec![all[3].clone()]);

    // By id.
    env.ok(&["forget", &all[3][..10]]);
    assert!(snapshot_ids(&env).is_empty());

    // Bad input: one line each, nothing removed.
    env.fails(&["forget"]);
    env.fails(&["forget", "--keep-within", "soon"]);
    env.fails(&["forget", "--keep-last", "1", "--group-by", "colour"]);
}

/// `forget --prune`: the forgotten snapshots' data goes in the same run (with `--grace 0s`), and
/// a bad prune option stops the command before anything is forgotten.
#[test]
fn forget_with_prune_deletes_the_data_of_what_it_forgets() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join("f"), noise(2 << 20, 2 * i + 1)).unwrap();
        env.ok(&["backup", src.to_str().unwrap()]);
    }
    let pack_bytes = |env: &Env| -> u64 {
        env.objects("data")
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = pack_bytes(&env);
    assert!(before > 6 << 20, "{before}");

    let e = env.fails(&["forget", "--keep-last", "1", "--prune", "--grace", "soon"]);
    assert!(e.contains("--grace soon"), "{e}");
    assert_eq!(snapshot_ids(&env).len(), 3, "nothing forgotten");

    // A dry run reports both steps and changes nothing.
    let forget = ["forget", "--keep-last", "1", "--prune", "--grace", "0s"];
    let out = env.ok(&[&forget[..], &["--dry-run"]].concat());
    assert!(out.contains("would have planned"), "{out}");
    assert_eq!(snapshot_ids(&env).len(), 3);
    assert_eq!(pack_bytes(&env), before);

    let out = env.ok(&[&forget[..], &["--json"]].concat());
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["removed"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(lines[1]["snapshots"], 1, "{out}");
    assert_eq!(snapshot_ids(&env).len(), 1);
    let after = pack_bytes(&env);
    assert!(after < 3 << 20, "{after} bytes of packs left of {before}");
    env.ok(&["check", "--read-data"]);
}

/// `prune --grace 0s` killed with SIGKILL at pseudo-random points: after each kill the repository
/// checks clean and the kept snapshots restore; the next prune (the dead one's lease does not
/// block it) finishes the job.
#[test]
fn sigkill_during_prune_leaves_a_consistent_repository() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep"), noise(3 << 20, 1)).unwrap();
    let mut points = crate::fixtures::KillPoints::new("prune crash test");
    let seed = points.seed;
    let mut kills = 0;
    // A kill point past the end of the prune interrupts nothing (a quarter to a third of the
    // rounds here): rounds go on until three prunes were interrupted. Six rounds alone left fewer
    // than two interrupted in about one run of 50 to 200; with up to 14, one in 10^5.
    for round in 0..14u64 {
        if round >= 6 && kills >= 3 {
            break;
        }
        // Garbage to delete (forgotten below) and something half-used to repack.
        for i in 0..6u64 {
            std::fs::write(
                src.join(format!("tmp{i}")),
                noise(5 << 20, seed ^ (round * 10 + i)),
            )
            .unwrap();
        }
        env.backup(&[&src]);
        for i in 0..6u64 {
            std::fs::remove_file(src.join(format!("tmp{i}"))).unwrap();
        }
        std::fs::write(src.join("small"), noise(100_000, seed ^ round)).unwrap();
        env.backup(&[&src]);
        env.ok(&["forget", "--keep-last", "1"]);
        let state = scan(&src);

        let r = points.next();
        // Kill points spread over the time a prune takes here (measured by a dry run, which
        // does the same reading without the writes and deletions).
        let t = std::time::Instant::now();
        env.ok(&["prune", "--grace", "0s", "--dry-run"]);
        let window = t.elapsed().as_millis() as u64 * 3 / 2 + 1;
        let delay = Duration::from_millis(r % window);
        let finished = env.kill_after(&["prune", "--grace", "0s"], delay);
        kills += u32::from(!finished);
        println!("round {round}: killed after {delay:?} (finished before: {finished})");
        let o = env.run(&["check", "--read-data"]);
        assert!(
            o.status.success(),
            "round {round}: check failed after a prune killed at {delay:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let t = env.path(&format!("restore{round}"));
        env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
        assert_same_tree(&state, &scan(&t.join(src.strip_prefix("/").unwrap())));
        std::fs::remove_dir_all(&t).unwrap();
    }
    assert!(kills >= 2, "too few prunes were interrupted ({kills})");
    let r = json(&env.ok(&["prune", "--grace", "0s", "--json"]));
    assert_eq!(r["plans_waiting"], 0, "{r}");
    env.ok(&["check", "--read-data"]);
    // Everything unused is gone: one more prune finds nothing.
    let again = json(&env.ok(&["prune", "--grace", "0s", "--json"]));
    assert_eq!(again["packs_planned"], 0, "{again}");
    assert_eq!(again["packs_deleted"], 0, "{again}");
    // What is left is close to what the one snapshot holds (3 MiB + 100 kB of noise).
    let size: u64 = env
        .objects("data")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(size < 4 << 20, "{size} bytes of packs left");
}

#[test]
fn one_prune_at_a_time() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.backup(&[&src]);
    let locks = env.repo.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lease = |expires: jiff::Timestamp| {
        serde_json::json!({
            "holder": "node-7 pid 4242 (test)", "host": "node-7", "pid": 4242,
            "acquired": jiff::Timestamp::now().to_string(), "expires": expires.to_string(),
        })
        .to_string()
    };
    // Another host holds an unexpired lease: refused, with who and until when.
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(30);
    std::fs::write(locks.join("prune-0000000000000007"), lease(later)).unwrap();
    let line = env.fails(&["prune"]);
    assert!(
        line.contains("another prune") && line.contains("node-7"),
        "{line}"
    );
    // Expired: taken over, and every lease is gone afterwards.
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(1);
    std::fs::write(locks.join("prune-0000000000000007"), lease(past)).unwrap();
    env.ok(&["prune"]);
    assert!(std::fs::read_dir(&locks).unwrap().next().is_none());
}
