//! A backup killed with SIGKILL at any point leaves a consistent repository: `check --read-data`
//! passes, older snapshots restore, and the next backup succeeds.

use std::time::Duration;

use crate::fixtures::{Env, assert_same_tree, noise, scan};

#[test]
fn sigkill_during_backup_leaves_a_consistent_repository() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20u64 {
        std::fs::write(src.join(format!("base{i}")), noise(1 << 20, i)).unwrap();
    }
    let first = env.backup(&[&src]);
    let state_a = scan(&src);

    // Pseudo-random kill points, spread from "just started" to "nearly done"; printed for replay.
    let mut points = crate::fixtures::KillPoints::new("crash test");
    let seed = points.seed;
    let mut kills = 0;
    for round in 0..8u64 {
        // New data every round so each backup has real work to do.
        std::fs::write(
            src.join(format!("round{round}")),
            noise(48 << 20, seed ^ round),
        )
        .unwrap();
        let delay = Duration::from_millis(5 + points.next() % (60 + 60 * round));
        let finished = env.kill_after(&["backup", "--json", src.to_str().unwrap()], delay);
        if !finished {
            kills += 1;
        }
        println!("round {round}: killed after {delay:?} (finished before kill: {finished})");

        let o = env.run(&["check", "--read-data"]);
        assert!(
            o.status.success(),
            "round {round}: check failed after kill at {delay:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let t = env.path(&format!("restore{round}"));
        env.ok(&[
            "restore",
            first["snapshot"].as_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ]);
        assert_same_tree(&state_a, &scan(&t.join(src.strip_prefix("/").unwrap())));
        std::fs::remove_dir_all(&t).unwrap();
    }
    assert!(
        kills >= 4,
        "too few backups were actually interrupted ({kills})"
    );
    // The next backup succeeds and captures the current state exactly.
    env.backup(&[&src]);
    env.ok(&["check", "--read-data"]);
    let t = env.path("final");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&scan(&src), &scan(&t.join(src.strip_prefix("/").unwrap())));
}
