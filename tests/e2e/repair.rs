//! `repair index` after damage: lost and damaged packs leave the index, packs no index object
//! names are indexed from their headers, and the next backup stores what was lost again, which
//! makes the older snapshots whole.

use std::path::Path;

use crate::fixtures::{Env, flip_byte, noise, scan, stdout_of_success};
use crate::fuse::misreading_mirror;

fn json(out: &str) -> serde_json::Value {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {out}");
    serde_json::from_str(lines[0]).unwrap()
}

/// The lines `check` prints on stderr naming damage (it fails when there is any).
fn check_problems(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["check"];
    a.extend_from_slice(args);
    let o = env.run(&a);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<String> = err
        .lines()
        .filter(|l| l.starts_with("lifeboat: damaged: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(o.status.success(), lines.is_empty(), "{err}");
    lines
}

/// Snapshot `id` restores to exactly `src`.
fn restores_exactly(env: &Env, id: &str, src: &Path, tag: &str) {
    let t = env.path(&format!("restore-{tag}"));
    env.ok(&["restore", id, "--target", t.to_str().unwrap()]);
    assert_eq!(
        scan(src),
        scan(&t.join(src.strip_prefix("/").unwrap())),
        "{tag}: snapshot {id} does not restore its source"
    );
}

fn names(env: &Env, prefix: &str) -> Vec<String> {
    env.objects(prefix)
        .iter()
        .map(|p| p.strip_prefix(&env.repo).unwrap().display().to_string())
        .collect()
}

fn everything(env: &Env) -> Vec<String> {
    let mut v = names(env, "data");
    v.extend(names(env, "index"));
    v
}

#[test]
fn repair_index_heals_damaged_and_lost_packs_and_index_objects() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Twelve files of one blob each (below the chunker's 256 KiB minimum: never cut, whatever
    // the repository's gear seed), in one data pack.
    for i in 0..12u64 {
        std::fs::write(src.join(format!("f{i:02}")), noise(250_000, 2 * i + 101)).unwrap();
    }
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    let data_pack = env
        .objects("data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let data_name = data_pack
        .strip_prefix(&env.repo)
        .unwrap()
        .display()
        .to_string();

    // A flipped byte inside one of its blobs: only reading the data shows it, and the default
    // repair (which trusts the index's listing of a pack of the right size) changes nothing.
    flip_byte(&data_pack, 0.5);
    let damaged_bytes = std::fs::read(&data_pack).unwrap();
    assert_eq!(check_problems(&env, &[]), Vec::<String>::new());
    let p = check_problems(&env, &["--read-data"]);
    assert!(p.len() == 1 && p[0].contains(&data_name), "{p:?}");
    let checked = env.run(&["check", "--read-data"]);
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.contains("'lifeboat repair index --read-all-packs'")),
        "check does not point at the repair: {err}"
    );
    let before = everything(&env);
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["packs_damaged"], 0, "{r}");
    assert_eq!(r["index_objects_replaced"], 0, "{r}");
    assert_eq!(everything(&env), before);

    // Read whole: the pack is damaged, eleven blobs are intact and one is lost. A dry run says
    // so and changes nothing.
    let dry = json(&env.ok(&["repair", "index", "--read-all-packs", "--dry-run", "--json"]));
    assert_eq!(everything(&env), before, "a dry run changed the repository");
    let r = json(&env.ok(&["repair", "index", "--read-all-packs", "--json"]));
    for k in [
        "packs_damaged",
        "blobs_salvaged",
        "blobs_lost",
        "index_objects_replaced",
    ] {
        assert_eq!(dry[k], r[k], "{k}: the dry run said otherwise");
    }
    assert_eq!(r["packs_damaged"], 1, "{r}");
    assert_eq!(r["blobs_salvaged"], 11, "{r}");
    assert_eq!(r["blobs_lost"], 1, "{r}");
    assert_eq!(r["packs_missing"], 0, "{r}");
    assert_eq!(r["problems"][0]["object"], data_name.as_str(), "{r}");
    // The damaged pack leaves data/ (a repair reading only headers would index it again from
    // its intact header) for damaged/, byte for byte: a read that went wrong looks the same as
    // damage. Exactly one file of the snapshot lacks its data.
    assert_eq!(r["packs_set_aside"], 1, "{r}");
    assert_eq!(dry["packs_set_aside"], 1, "{dry}");
    assert!(!data_pack.exists());
    let hex = data_pack.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        r["problems"][0]["problem"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next(),
        Some(format!("damaged/{hex}").as_str()),
        "{r}"
    );
    assert!(std::fs::read(env.repo.join("damaged").join(hex)).unwrap() == damaged_bytes);
    let checked: serde_json::Value =
        serde_json::from_slice(&env.run(&["check", "--json"]).stdout).unwrap();
    assert_eq!(checked["damaged_packs"], 1, "{checked}");
    assert_eq!(checked["unindexed_packs"], 0, "{checked}");
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["packs_indexed"], 0, "{r}");
    let p = check_problems(&env, &["--read-data"]);
    assert!(
        p.len() == 1 && p[0].contains(&format!("snapshot {}", &first[..8])) && p[0].contains("/f"),
        "{p:?}"
    );

    // The next backup re-reads the file whose blob is gone (its parent entry is unchanged) and
    // stores it again under the same id: the first snapshot is whole again.
    let b = env.backup(&[&src]);
    assert_eq!(b["files_unmodified"], 11, "{b}");
    assert_eq!(check_problems(&env, &["--read-data"]), Vec::<String>::new());
    restores_exactly(&env, &first, &src, "healed");

    // A large file over several packs; then one of its packs is lost and every index object is
    // damaged: nothing can be listed or restored until the repair.
    std::fs::write(src.join("large"), noise(40 << 20, 7)).unwrap();
    let second = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    let packs = env.objects("data");
    assert!(packs.len() >= 4, "{packs:?}");
    let lost = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    std::fs::remove_file(&lost).unwrap();
    let objects = env.objects("index");
    for o in &objects {
        flip_byte(o, 0.5);
    }
    env.fails(&["ls", &second]);
    // Another prune holds the lease: the repair is refused, and changes nothing.
    let lease = env.repo.join("locks/prune-0000000000000099");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    std::fs::write(
        &lease,
        serde_json::json!({
            "holder": "elsewhere pid 1 (test)",
            "host": "elsewhere",
            "pid": 1,
            "acquired": jiff::Timestamp::now().to_string(),
            "expires": expires.to_string(),
        })
        .to_string(),
    )
    .unwrap();
    let before = everything(&env);
    let e = env.fails(&["repair", "index"]);
    assert!(e.contains("prune lease") && e.contains("elsewhere"), "{e}");
    assert_eq!(everything(&env), before);
    std::fs::remove_file(&lease).unwrap();

    let stored = env.objects("data").len();
    let out = env.ok(&["repair", "index"]);
    for o in &objects {
        let name = o.strip_prefix(&env.repo).unwrap().display().to_string();
        assert!(
            out.contains(&format!("{name}: ")),
            "{name} not named: {out}"
        );
    }
    assert!(
        out.contains(&format!(
            "read {stored} packs: {stored} indexed from their headers, 0 missing"
        )),
        "{out}"
    );
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(
        r["index_objects_replaced"], 0,
        "a second repair changed more: {r}"
    );
    assert_eq!(r["packs"], stored, "{r}");
    // The lost pack's blobs are not in the index: check names the large file, nothing else.
    let p = check_problems(&env, &["--read-data"]);
    assert!(!p.is_empty(), "nothing reported lost");
    assert!(p.iter().all(|l| l.contains("/large")), "{p:?}");
    env.ok(&["ls", &second]);
    // A backup stores the lost chunks again; both snapshots restore exactly.
    let b = env.backup(&[&src]);
    assert_eq!(
        b["files_changed"].as_u64().unwrap() + b["files_new"].as_u64().unwrap(),
        1,
        "{b}"
    );
    assert_eq!(check_problems(&env, &["--read-data"]), Vec::<String>::new());
    restores_exactly(&env, &second, &src, "second");

    // A truncated pack: its size disagrees with the index and its header is gone, so even the
    // default repair leaves it out, and counts the blobs the index said it held as lost.
    let cut = env
        .objects("data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let data = std::fs::read(&cut).unwrap();
    std::fs::remove_file(&cut).unwrap();
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["packs_damaged"], 1, "{r}");
    assert!(r["blobs_lost"].as_u64().unwrap() > 0, "{r}");
    let p = check_problems(&env, &[]);
    assert!(
        !p.is_empty() && p.iter().all(|l| l.contains("/large")),
        "{p:?}"
    );
    // Left unindexed, it is not a backup's leftover: prune sets it aside instead of deleting
    // it, with every byte. An intact unindexed pack is deleted as before.
    let intact = env.objects("data").into_iter().find(|p| *p != cut).unwrap();
    let leftover = env.repo.join("data/00").join("0".repeat(64));
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::copy(&intact, &leftover).unwrap();
    // Planned first: a dry run past the grace period tells the two apart as the real run does.
    let planned = json(&env.ok(&["prune", "--json"]));
    assert_eq!(planned["packs_planned"], 2, "{planned}");
    let dry = json(&env.ok(&["prune", "--grace", "0s", "--dry-run", "--json"]));
    assert_eq!(dry["packs_set_aside"], 1, "{dry}");
    assert_eq!(dry["packs_deleted"], 1, "{dry}");
    assert!(cut.exists() && leftover.exists());
    let r = json(&env.ok(&["prune", "--grace", "0s", "--json"]));
    assert_eq!(r["packs_set_aside"], 1, "{r}");
    assert_eq!(r["packs_deleted"], 1, "{r}");
    assert!(!cut.exists() && !leftover.exists() && intact.exists());
    let hex = cut.file_name().unwrap().to_str().unwrap();
    assert!(std::fs::read(env.repo.join("damaged").join(hex)).unwrap() == data[..data.len() / 2]);
}

/// The data packs stored now that were not in `before`.
fn new_packs(env: &Env, before: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = env
        .objects("data")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    v.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    v
}

/// Write 40 MiB of noise to `src/name` and back `src` up: the bytes, the snapshot's id, and the
/// largest pack the backup stored.
fn back_up_large(
    env: &Env,
    src: &Path,
    name: &str,
    seed: u64,
) -> (Vec<u8>, String, std::path::PathBuf) {
    let bytes = noise(40 << 20, seed);
    std::fs::write(src.join(name), &bytes).unwrap();
    let before = env.objects("data");
    let id = env.backup(&[src])["snapshot"].as_str().unwrap().to_owned();
    (bytes, id, new_packs(env, &before).pop().unwrap())
}

/// The snapshots, as `snapshots --json` lists them.
fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(env.ok(&["snapshots", "--json"]).trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// `repair snapshots` after `repair index`: a snapshot whose root is lost cannot be repaired
/// and `--forget` removes it; one that lost a directory's tree keeps the rest and restores the
/// directory empty; a file that lost blobs keeps every other byte at its offset, the lost range
/// reading as zeros. The repaired copies are new snapshots tagged `repaired`, and the next
/// backup reads a repaired file again instead of taking its zeros as unchanged.
#[test]
fn repair_snapshots_keeps_what_is_left_and_the_next_backup_reads_the_rest() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("keep/a"), noise(250_000, 201)).unwrap();
    std::fs::write(src.join("keep/b"), noise(250_000, 203)).unwrap();
    std::fs::write(src.join("top"), noise(200_000, 205)).unwrap();
    let first = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    // Its packs: one of data, one of trees (the smaller).
    let packs = new_packs(&env, &[]);
    assert_eq!(packs.len(), 2, "{packs:?}");
    let first_trees = packs[0].clone();
    // `keep` is unchanged in the second snapshot: its tree stays in the first tree pack only.
    std::fs::write(src.join("top"), noise(200_000, 207)).unwrap();
    let second = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    std::fs::remove_file(&first_trees).unwrap();
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["packs_missing"], 1, "{r}");

    // A dry run says what a repair does, and changes nothing.
    let before = everything(&env);
    let listed = snapshots(&env);
    let dry = env.ok(&["repair", "snapshots", "--dry-run"]);
    assert!(
        dry.contains(&format!("snapshot {}: ", &second[..8]))
            && dry.contains("/src/keep: directory cannot be read")
            && dry.contains(&format!("snapshot {} would be repaired", &second[..8])),
        "{dry}"
    );
    assert_eq!(everything(&env), before, "a dry run changed the repository");
    assert_eq!(snapshots(&env), listed);

    let r = json(&env.ok(&["repair", "snapshots", "--json"]));
    assert_eq!(r["snapshots"], 2, "{r}");
    assert_eq!(r["snapshots_unrepairable"], 1, "{r}");
    assert_eq!(r["snapshots_repaired"], 1, "{r}");
    assert_eq!(r["dirs_repaired"], 1, "{r}");
    assert_eq!(r["files_repaired"], 0, "{r}");
    let rewritten = r["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 2, "{r}");
    assert_eq!(rewritten[0]["old"], first.as_str(), "{r}");
    assert!(rewritten[0]["new"].is_null(), "{r}");
    assert_eq!(rewritten[1]["old"], second.as_str(), "{r}");
    let repaired = rewritten[1]["new"].as_str().unwrap().to_owned();
    // Both damaged snapshots are kept; the new one is tagged and knows its original.
    let listed = snapshots(&env);
    assert_eq!(listed.len(), 3);
    let new = listed
        .iter()
        .find(|s| s["id"] == repaired.as_str())
        .unwrap();
    assert_eq!(new["tags"], serde_json::json!(["repaired"]), "{new}");
    assert_eq!(new["original"], second.as_str(), "{new}");
    // It restores: `top` as it was, `keep` empty; check finds nothing lost in it.
    let t = env.path("restore-repaired");
    env.ok(&["restore", &repaired, "--target", t.to_str().unwrap()]);
    let got = t.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(got.join("top")).unwrap(), noise(200_000, 207));
    assert_eq!(std::fs::read_dir(got.join("keep")).unwrap().count(), 0);
    let p = check_problems(&env, &[]);
    assert!(!p.is_empty(), "the damaged snapshots are still there");
    assert!(!p.iter().any(|l| l.contains(&repaired[..8])), "{p:?}");
    // The snapshot that cannot be repaired is forgotten with --forget; the other damaged one
    // by hand. Then the repository checks clean.
    let r = json(&env.ok(&["repair", "snapshots", "--forget", "--json", &first]));
    assert_eq!(r["snapshots_forgotten"], 1, "{r}");
    assert_eq!(r["rewritten"][0]["forgotten"], true, "{r}");
    env.ok(&["forget", &second]);
    assert_eq!(check_problems(&env, &[]), Vec::<String>::new());
    assert_eq!(snapshots(&env).len(), 1);
    // With the repaired snapshot as parent, the next backup reads `keep` again.
    let b = env.backup(&[&src]);
    assert_eq!(b["files_new"], 2, "{b}");
    restores_exactly(&env, b["snapshot"].as_str().unwrap(), &src, "after-dir");

    // A byte of one blob of a large file is flipped: the index repair salvages the rest of its
    // pack, and exactly that blob is lost.
    let (large, third, pack) = back_up_large(&env, &src, "large", 209);
    flip_byte(&pack, 0.5);
    let r = json(&env.ok(&["repair", "index", "--read-all-packs", "--json"]));
    assert_eq!(r["blobs_lost"], 1, "{r}");
    let r = json(&env.ok(&["repair", "snapshots", "--forget", "--json"]));
    assert_eq!(r["snapshots_repaired"], 1, "{r}");
    assert_eq!(r["snapshots_forgotten"], 1, "{r}");
    assert_eq!(r["files_repaired"], 1, "{r}");
    assert_eq!(r["rewritten"][0]["old"], third.as_str(), "{r}");
    let repaired = r["rewritten"][0]["new"].as_str().unwrap().to_owned();
    let problem = &r["problems"][0];
    assert!(
        problem["path"].as_str().unwrap().ends_with("/src/large"),
        "{r}"
    );
    // "1 of its N blobs lost: bytes FROM..TO (…) read as zeros": one chunk's range, every other
    // blob kept in place.
    let what = problem["problem"].as_str().unwrap();
    assert!(
        what.starts_with("1 of its ") && !what.contains("dropped"),
        "{what}"
    );
    let range = what
        .split("bytes ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let (from, to) = range.split_once("..").unwrap();
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    assert!(from < to && to <= large.len(), "{what}");
    assert!(to - from <= 8 << 20, "more than a chunk: {what}");
    assert_eq!(r["bytes_zeroed"], to - from, "{r}");
    assert_eq!(
        snapshots(&env).len(),
        3,
        "the damaged snapshot was not forgotten"
    );
    assert_eq!(check_problems(&env, &[]), Vec::<String>::new());
    let t = env.path("restore-large");
    env.ok(&["restore", &repaired, "--target", t.to_str().unwrap()]);
    let got = std::fs::read(t.join(src.strip_prefix("/").unwrap()).join("large")).unwrap();
    assert_eq!(got.len(), large.len());
    assert_eq!(
        got[..from],
        large[..from],
        "bytes before the lost range moved"
    );
    assert_eq!(got[to..], large[to..], "bytes after the lost range moved");
    assert!(got[from..to].iter().all(|&b| b == 0));
    // `ls --json` marks the repaired file, and only it.
    let marked: Vec<String> = env
        .ok(&["ls", "--json", &repaired])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["repaired"] == true)
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        marked.len() == 1 && marked[0].ends_with("/src/large"),
        "{marked:?}"
    );
    // The repaired file looks unchanged to a backup, but its zeros are not its content: it is
    // read again, and the snapshot restores exactly.
    let b = env.backup(&[&src]);
    assert_eq!(b["files_changed"], 1, "{b}");
    restores_exactly(&env, b["snapshot"].as_str().unwrap(), &src, "after-file");

    // A pack of another large file is deleted, and `repair snapshots` runs before `repair
    // index`: the index still knows the lost blobs' lengths, so each becomes a hole of its own
    // and no stored blob is dropped, however the file's chunks were spread over packs.
    let (large, fourth, lost) = back_up_large(&env, &src, "large2", 211);
    let lost_size = std::fs::metadata(&lost).unwrap().len();
    std::fs::remove_file(&lost).unwrap();
    let r = json(&env.ok(&["repair", "snapshots", "--forget", "--json"]));
    assert_eq!(r["snapshots_repaired"], 1, "{r}");
    assert_eq!(r["packs_lost"], 1, "{r}");
    assert_eq!(r["rewritten"][0]["old"], fourth.as_str(), "{r}");
    let what = r["problems"][0]["problem"].as_str().unwrap();
    assert!(!what.contains("dropped"), "{what}");
    let zeroed = r["bytes_zeroed"].as_u64().unwrap();
    assert!(zeroed > 0 && zeroed <= lost_size, "{r}");
    let repaired = r["rewritten"][0]["new"].as_str().unwrap().to_owned();
    let t = env.path("restore-large2");
    env.ok(&["restore", &repaired, "--target", t.to_str().unwrap()]);
    let got = std::fs::read(t.join(src.strip_prefix("/").unwrap()).join("large2")).unwrap();
    assert_eq!(got.len(), large.len());
    // Every byte is the original or a zero of a lost blob; as many differ as were lost (but
    // for the rare zero byte of the noise).
    let differ = got.iter().zip(&large).filter(|(g, l)| g != l).count() as u64;
    assert!(
        got.iter().zip(&large).all(|(g, l)| g == l || *g == 0),
        "bytes moved"
    );
    assert!(
        differ <= zeroed && differ >= zeroed - zeroed / 50,
        "{differ} of {zeroed}"
    );
    // Then the index repair; the repository checks clean, and a backup heals the file.
    env.ok(&["repair", "index"]);
    assert_eq!(check_problems(&env, &[]), Vec::<String>::new());
    let b = env.backup(&[&src]);
    assert_eq!(b["files_changed"], 1, "{b}");
    restores_exactly(
        &env,
        b["snapshot"].as_str().unwrap(),
        &src,
        "after-lost-pack",
    );
}

/// A pack that reads wrong once (a bit flipped on its way, as bad memory or a faulty network
/// path does) and right on a second read is not damaged: `check --read-data` reads it again and
/// reports it as misread, which still fails the check (what misread it may misread a restore),
/// and `repair index --read-all-packs` keeps it instead of setting it aside; a restore and a
/// copy read the blob again and carry on.
#[test]
fn a_pack_read_wrong_once_is_not_called_damaged() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        std::fs::write(src.join(format!("f{i}")), noise(250_000, i + 40)).unwrap();
    }
    env.backup(&[&src]);
    let pack = env
        .objects("data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let name = pack.strip_prefix(&env.repo).unwrap().display().to_string();
    let at = std::fs::metadata(&pack).unwrap().len() / 2;
    let mirrors = std::cell::Cell::new(0);
    // Each mirror flips the bit once, on the first read of it.
    let through_mirror_at = |name: &str, at: u64, args: &[&str]| {
        mirrors.set(mirrors.get() + 1);
        let m = misreading_mirror(
            &env,
            &format!("mirror{}", mirrors.get()),
            &env.repo,
            &format!("/{name}"),
            at,
        );
        let mut all = vec!["--repo", m.dir.to_str().unwrap()];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let through_mirror = |args: &[&str]| through_mirror_at(&name, at, args);

    let o = through_mirror(&["check", "--read-data", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["errors"], serde_json::json!([]), "{c}");
    let misread = c["misread"].as_array().unwrap();
    assert!(
        misread.len() == 1
            && misread[0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}: read wrong once (")),
        "{c}"
    );
    let o = through_mirror(&["check", "--read-data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("damaged"), "{err}");
    assert!(err.contains(&format!("lifeboat: misread: {name}")), "{err}");
    assert!(
        err.lines().last().unwrap().contains("test its memory"),
        "{err}"
    );

    let o = through_mirror(&["repair", "index", "--read-all-packs", "--dry-run", "--json"]);
    let r = json(&stdout_of_success(o, "repair through the mirror"));
    assert_eq!(r["packs_damaged"], 0, "{r}");
    assert_eq!(r["packs_misread"], 1, "{r}");
    assert_eq!(r["packs_set_aside"], 0, "{r}");
    assert_eq!(r["problems"][0]["object"], name.as_str(), "{r}");
    // Read directly, the pack is sound.
    env.ok(&["check", "--read-data"]);

    // A restore and a copy read the blob that did not open again, use it, and say so.
    let t = env.path("restored");
    let o = through_mirror(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    stdout_of_success(o, "restore through the mirror");
    assert!(err.contains("read wrong once"), "{err}");
    assert_eq!(scan(&src), scan(&t.join(src.strip_prefix("/").unwrap())));
    let off = env.path("offsite");
    let to_pw = env.path("offsite-password");
    std::fs::write(&to_pw, "offsite-password-3").unwrap();
    let offsite = |args: &[&str], what: &str| {
        let mut c = env.cmd(args);
        c.env("LIFEBOAT_REPO", &off)
            .env("LIFEBOAT_PASSWORD", "offsite-password-3");
        stdout_of_success(c.output().unwrap(), what);
    };
    offsite(&["init"], "init of the copy");
    let o = through_mirror(&[
        "copy",
        "--to",
        off.to_str().unwrap(),
        "--to-password-file",
        to_pw.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    stdout_of_success(o, "copy through the mirror");
    assert!(err.contains("read wrong once"), "{err}");
    offsite(&["check", "--read-data"], "check of the copy");

    // A tree blob (in the other, smaller pack: its first blob starts after the pack's 40-byte
    // head) is read again as well.
    let trees = env
        .objects("data")
        .into_iter()
        .min_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let trees = trees.strip_prefix(&env.repo).unwrap().display().to_string();
    assert_ne!(trees, name);
    let o = through_mirror_at(&trees, 50, &["ls", "latest"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let listed = stdout_of_success(o, "ls through the mirror");
    assert!(listed.lines().any(|l| l.ends_with("/f5")), "{listed}");
    assert!(err.contains("read wrong once"), "{err}");

    // A snapshot object too: listed, not called damaged.
    let snap = env.objects("snapshots").pop().unwrap();
    let snap_name = snap.strip_prefix(&env.repo).unwrap().display().to_string();
    let short = &snap.file_name().unwrap().to_str().unwrap()[..8];
    let o = through_mirror_at(&snap_name, 20, &["snapshots"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let listed = stdout_of_success(o, "snapshots through the mirror");
    assert!(listed.contains(short), "{listed}");
    assert!(
        err.contains("read wrong once") && !err.contains("damaged"),
        "{err}"
    );
}

/// `repair snapshots` after `repair index --read-all-packs` set a damaged pack aside: the
/// lengths of its lost blobs come from its header in `damaged/`, so each lost blob becomes a hole
/// of its own and a stored blob between two lost ones stays at its place (with only the index
/// to ask, one hole would span all three).
#[test]
fn repair_snapshots_places_blobs_by_the_headers_of_packs_set_aside() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Fixed 1 MiB chunks: the middle MiB of `file` is stored first, in a pack of its own.
    let (x, y, z) = (
        noise(1 << 20, 311),
        noise(1 << 20, 321),
        noise(1 << 20, 331),
    );
    std::fs::write(src.join("middle"), &y).unwrap();
    env.ok(&["backup", "--chunking", "fixed", src.to_str().unwrap()]);
    std::fs::remove_file(src.join("middle")).unwrap();
    std::fs::write(src.join("file"), [&x[..], &y[..], &z[..]].concat()).unwrap();
    let before = env.objects("data");
    env.ok(&["backup", "--chunking", "fixed", src.to_str().unwrap()]);
    // The new data pack holds X and Z: one flipped byte in each.
    let pack = new_packs(&env, &before).pop().unwrap();
    flip_byte(&pack, 0.25);
    flip_byte(&pack, 0.75);
    let r = json(&env.ok(&["repair", "index", "--read-all-packs", "--json"]));
    assert_eq!(r["packs_set_aside"], 1, "{r}");
    assert_eq!(r["blobs_lost"], 2, "{r}");
    let r = json(&env.ok(&["repair", "snapshots", "--json"]));
    assert_eq!(r["files_repaired"], 1, "{r}");
    assert_eq!(r["bytes_zeroed"], 2 << 20, "{r}");
    let repaired = r["rewritten"][0]["new"].as_str().unwrap();
    let dumped = env
        .cmd(&["dump", repaired, &format!("{}/file", src.display())])
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let want = [&vec![0u8; 1 << 20][..], &y[..], &vec![0u8; 1 << 20][..]].concat();
    assert!(
        dumped.stdout == want,
        "the stored middle MiB is not in place"
    );
}
