//! Block volumes: Lifeboat on loop devices and disk images, with rustic and restic reading the same
//! image file, in one run.
//!
//! ```text
//! cargo run --release -p lifeboat-benches --bin block -- [--work DIR] [--out DIR] [--runs N]
//! ```
//!
//! Builds its images once in `--work` (never committed): a 4 GiB volume of mixed data, a 1 GiB
//! ext4 filesystem holding the Rust toolchain's libraries, a 512 MiB ext4 filesystem of seeded
//! files, and an 8 GiB sparse image holding 100 MiB. Measures, with content-defined and fixed
//! chunking: full backup and unchanged re-read of a device, a 5 MiB change backed up with and
//! without `--changed-ranges`, dedup of a copy shifted by 4 KiB, sparse image backup and restore
//! (and the same image backed up as a device, where every zero is read),
//! and restore onto a device. Writes `block.md` into `--out`.

use std::fmt::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use lifeboat_benches::peers::{
    Bins, Measure, PASSWORD, Tool, backup_cmd, find_tools, init_cmd, measure, restore_cmd, run,
};
use lifeboat_benches::{human, seeded};

#[derive(Parser)]
#[command(about = "Lifeboat on block devices and disk images, with rustic and restic alongside")]
struct Args {
    /// Scratch space for images, repositories and restores.
    #[arg(long, default_value = "/var/tmp/lifeboat-compare/block")]
    work: PathBuf,
    /// Where block.md goes.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Rounds of the ext4 full backup and restore (each tool, alternating); cells keep the best.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// The fastest of several runs.
#[derive(Default)]
struct Best(Option<Measure>);

impl Best {
    fn add(&mut self, m: Measure) {
        if self.0.is_none_or(|b| m.seconds < b.seconds) {
            self.0 = Some(m);
        }
    }

    fn get(&self) -> Measure {
        self.0.expect("at least one run")
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A loop device over a file, detached when dropped. It is held open meanwhile: the kernel drops a
/// block device's page cache when its last opener closes it, so without this every "warm" read
/// would go through the loop driver again (a pod using its volume keeps it open the same way).
struct Loop {
    dev: String,
    _hold: std::fs::File,
}

impl Loop {
    fn new(file: &Path) -> Result<Self> {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()?;
        ensure!(o.status.success(), "losetup {}", file.display());
        let dev = String::from_utf8(o.stdout)?.trim().to_owned();
        let hold = std::fs::File::open(&dev)?;
        Ok(Loop { dev, _hold: hold })
    }

    fn path(&self) -> &Path {
        Path::new(&self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// One result line.
struct Row {
    what: String,
    lifeboat: String,
    note: String,
}

struct Bench {
    bins: Bins,
    work: PathBuf,
    rows: Vec<Row>,
}

impl Bench {
    fn lifeboat(&self, repo: &Path) -> Command {
        lifeboat(&self.bins.lifeboat, repo)
    }

    fn fresh_repo(&self, name: &str) -> Result<PathBuf> {
        let repo = self.work.join(name);
        let _ = std::fs::remove_dir_all(&repo);
        run(self.lifeboat(&repo).arg("init"))?;
        Ok(repo)
    }

    /// A timed Lifeboat command with `--json`: its measure and its JSON line.
    fn timed(&self, cmd: &mut Command) -> Result<(Measure, serde_json::Value)> {
        cmd.arg("--json");
        let m = measure(&self.work, cmd)?;
        let log = std::fs::read_to_string(self.work.join("tool.log"))?;
        let line = log
            .lines()
            .find(|l| l.starts_with('{'))
            .context("no JSON line")?;
        Ok((m, serde_json::from_str(line)?))
    }

    fn row(&mut self, what: &str, lifeboat: String, note: String) {
        eprintln!("   {what:<58} {lifeboat:<28} {note}");
        self.rows.push(Row {
            what: what.to_owned(),
            lifeboat,
            note,
        });
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.out)?;
    let work = std::path::absolute(&args.work)?;
    let mut b = Bench {
        bins: find_tools()?,
        work: work.clone(),
        rows: Vec::new(),
    };

    eprintln!("== 4 GiB volume of mixed data (half compressible), as a loop device");
    let vol = image(&work, "vol4g.img", |p| write_seeded(p, 4 * GIB, 50, 1))?;
    let dev = Loop::new(&vol)?;
    for mode in ["cdc", "fixed"] {
        let repo = b.fresh_repo("repo-vol")?;
        let bin = b.bins.lifeboat.clone();
        let backup = || {
            let mut c = lifeboat(&bin, &repo);
            c.args(["backup", "--chunking", mode]).arg(dev.path());
            c
        };
        // Each backup reads a device read just before (DAMON pages out what is not read for a
        // minute on this machine).
        warm(dev.path())?;
        let (m1, j1) = b.timed(&mut backup())?;
        warm(dev.path())?;
        let (m2, _) = b.timed(&mut backup())?;
        b.row(
            &format!("4 GiB device, full backup ({mode})"),
            rate(4 * GIB, m1),
            format!(
                "{} stored, {:.0} MiB RSS",
                human(bytes(&j1, "bytes_added")),
                m1.peak_rss_mib
            ),
        );
        b.row(
            &format!("4 GiB device, unchanged re-read ({mode})"),
            rate(4 * GIB, m2),
            format!("target ≥ 2 GB/s, {:.0} MiB RSS", m2.peak_rss_mib),
        );
    }
    drop(dev);

    eprintln!("== 1 GiB ext4 holding the toolchain's libraries");
    let ext = image(&work, "ext4-1g.img", |p| {
        ext4_with(p, GIB, &toolchain_lib()?)
    })?;
    warm(&ext)?;
    let dev = Loop::new(&ext)?;
    warm(dev.path())?;
    let target_img = work.join("target-1g.img");
    // The target is a provisioned disk: written once in full, so neither mode's restore pays for
    // the backing file's first block allocation (whichever restore ran first used to: 2.0 s for
    // the first mode against 0.8 s for the second, either way round).
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&target_img)?;
        let zeros = vec![0u8; 8 << 20];
        for _ in 0..GIB / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
    }
    let target = Loop::new(&target_img)?;
    // Rounds alternate the tools and each cell keeps its best: a single run of a peer moved by 30%
    // from one bench run to the next.
    let mut peers: Vec<(Tool, Best, Best)> = [Tool::Rustic, Tool::Restic]
        .into_iter()
        .map(|t| (t, Best::default(), Best::default()))
        .collect();
    let mut ours: Vec<(&str, Best, Best, u64)> = ["cdc", "fixed"]
        .into_iter()
        .map(|m| (m, Best::default(), Best::default(), 0))
        .collect();
    for round in 1..=args.runs {
        eprintln!("   round {round} of {}", args.runs);
        for (t, backup, restore) in &mut peers {
            let repo = work.join(format!("repo-{t:?}").to_lowercase());
            let _ = std::fs::remove_dir_all(&repo);
            measure(&work, &init_cmd(&b.bins, *t, &repo))?;
            // This machine reclaims page cache untouched for a minute (DAMON proactive
            // reclaim): every backup starts from a source read just before.
            warm(&ext)?;
            backup.add(measure(&work, &backup_cmd(&b.bins, *t, &repo, &ext))?);
            let dir = work.join("peer-restore");
            let _ = std::fs::remove_dir_all(&dir);
            restore.add(measure(&work, &restore_cmd(&b.bins, *t, &repo, &dir))?);
            std::fs::remove_dir_all(&dir)?;
            std::fs::remove_dir_all(&repo)?;
        }
        for (mode, backup, restore, added) in &mut ours {
            let repo = b.fresh_repo("repo-ext4")?;
            warm(dev.path())?;
            let (m, j) = b.timed(
                b.lifeboat(&repo)
                    .args(["backup", "--chunking", mode])
                    .arg(dev.path()),
            )?;
            backup.add(m);
            *added = bytes(&j, "bytes_added");
            restore.add(measure(
                &work,
                b.lifeboat(&repo)
                    .args(["restore", "latest", "--target"])
                    .arg(target.path()),
            )?);
            std::fs::remove_dir_all(&repo)?;
        }
    }
    let vs = |ours: f64, peer: fn(&(Tool, Best, Best)) -> f64| {
        peers
            .iter()
            .map(|p| format!("{:.1}× {:?} ({:.2} s)", peer(p) / ours, p.0, peer(p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (mode, backup, restore, added) in &ours {
        let (m, r) = (backup.get(), restore.get());
        b.row(
            &format!("1 GiB ext4 device, full backup ({mode})"),
            format!("{:.2} s, {}", m.seconds, human(*added)),
            format!(
                "{}; peers read the image file",
                vs(m.seconds, |p| p.1.get().seconds)
            ),
        );
        b.row(
            &format!("1 GiB ext4, restore onto a device ({mode})"),
            format!("{:.2} s, {:.0} MiB RSS", r.seconds, r.peak_rss_mib),
            format!(
                "{}; peers restore the image file",
                vs(r.seconds, |p| p.2.get().seconds)
            ),
        );
    }
    drop((dev, target));

    eprintln!("== 512 MiB ext4, then a 5 MiB file written into it");
    let base = image(&work, "ext4-512m.img", |p| {
        let files = work.join("seeded-files");
        std::fs::create_dir_all(&files)?;
        for i in 0..64u64 {
            std::fs::write(files.join(format!("f{i}")), seeded(4 << 20, 50, 100 + i))?;
        }
        ext4_with(p, 512 * MIB, &files)
    })?;
    for mode in ["cdc", "fixed"] {
        let img = work.join("ext4-512m-work.img");
        std::fs::copy(&base, &img)?;
        let dev = Loop::new(&img)?;
        let repo = b.fresh_repo("repo-change")?;
        let bin = b.bins.lifeboat.clone();
        let backup = |ranges: Option<&Path>| {
            let mut c = lifeboat(&bin, &repo);
            c.args(["backup", "--chunking", mode]).arg(dev.path());
            if let Some(r) = ranges {
                c.arg("--changed-ranges").arg(r);
            }
            c
        };
        b.timed(&mut backup(None))?;
        let before = std::fs::read(dev.path())?;
        let mnt = work.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        run(Command::new("mount").arg(dev.path()).arg(&mnt))?;
        std::fs::write(mnt.join("new-5mib"), seeded(5 << 20, 0, 999))?;
        run(Command::new("umount").arg(&mnt))?;
        let after = std::fs::read(dev.path())?;
        let (ranges, changed) = changed_ranges(&before, &after);
        let rfile = work.join("ranges");
        std::fs::write(&rfile, ranges)?;
        let (m, j) = b.timed(&mut backup(Some(&rfile)))?;
        b.row(
            &format!("5 MiB change in 512 MiB ext4, --changed-ranges ({mode})"),
            format!("{} added", human(bytes(&j, "bytes_added"))),
            format!(
                "read {} for {} changed, {:.2} s; target < 15 MB added",
                human(bytes(&j, "bytes_read")),
                human(changed),
                m.seconds
            ),
        );
        let (m, j) = b.timed(&mut backup(None))?;
        b.row(
            &format!("  then a full re-read of the same state ({mode})"),
            format!("{} added", human(bytes(&j, "bytes_added"))),
            format!("{:.2} s", m.seconds),
        );
        // Dedup across images: the same image with 4 KiB inserted at 64 MiB.
        let shifted = work.join("shifted.img");
        let mut data = after;
        data.splice((64 * MIB) as usize..(64 * MIB) as usize, seeded(4096, 0, 7));
        std::fs::write(&shifted, data)?;
        let (_, j) = b.timed(
            b.lifeboat(&repo)
                .args(["backup", "--chunking", mode])
                .arg(&shifted),
        )?;
        b.row(
            &format!("  a copy of it shifted by 4 KiB at 64 MiB ({mode})"),
            format!("{} added", human(bytes(&j, "bytes_added"))),
            "dedup against the device's chunks".into(),
        );
        std::fs::remove_file(&shifted)?;
        drop(dev);
        std::fs::remove_file(&img)?;
    }

    eprintln!("== 8 GiB sparse image holding 100 MiB");
    let sparse = image(&work, "sparse8g.img", |p| {
        let f = std::fs::File::create(p)?;
        f.set_len(8 * GIB)?;
        for i in 0..10u64 {
            f.write_all_at(&seeded(10 << 20, 50, 200 + i), i * 800 * MIB + 12345)?;
        }
        Ok(())
    })?;
    warm(&sparse)?;
    let repo = b.fresh_repo("repo-sparse")?;
    let (m, j) = b.timed(b.lifeboat(&repo).arg("backup").arg(&sparse))?;
    b.row(
        "8 GiB sparse image (100 MiB data), backup",
        format!("{:.2} s", m.seconds),
        format!("read {}; target < 1 s", human(bytes(&j, "bytes_read"))),
    );
    let target = work.join("sparse-restore");
    let _ = std::fs::remove_dir_all(&target);
    let r = measure(
        &work,
        b.lifeboat(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&target),
    )?;
    let restored = target.join(sparse.strip_prefix("/")?);
    let md = std::fs::metadata(&restored)?;
    ensure!(md.len() == 8 * GIB, "restored image has the wrong size");
    b.row(
        "8 GiB sparse image, restore into a directory",
        format!("{:.2} s", r.seconds),
        format!(
            "{} allocated of {}",
            human(md.blocks() * 512),
            human(md.len())
        ),
    );
    std::fs::remove_dir_all(&target)?;
    // The same image as a device (a thin-provisioned volume): no SEEK_HOLE there, every byte is
    // read, and the zero ranges are found by looking.
    // The first read after warming 8 GiB of zero pages varies most (2.4 s, then 1.0 s by hand):
    // best of the rounds.
    let dev = Loop::new(&sparse)?;
    warm(dev.path())?;
    let mut best = Best::default();
    let mut j = serde_json::Value::Null;
    for _ in 0..args.runs {
        let repo = b.fresh_repo("repo-sparse")?;
        let (m, out) = b.timed(b.lifeboat(&repo).arg("backup").arg(dev.path()))?;
        best.add(m);
        j = out;
    }
    let m = best.get();
    b.row(
        "the same 8 GiB as a device, backup (best of the rounds)",
        format!("{:.2} s, {}", m.seconds, human(bytes(&j, "bytes_added"))),
        format!(
            "read {} (a device has no holes to skip), {:.0} MiB RSS",
            human(bytes(&j, "bytes_read")),
            m.peak_rss_mib
        ),
    );
    drop(dev);
    for repo in ["repo-vol", "repo-ext4", "repo-change", "repo-sparse"] {
        let _ = std::fs::remove_dir_all(work.join(repo));
    }

    let mut md = String::new();
    writeln!(md, "| measurement | Lifeboat | notes |")?;
    writeln!(md, "|---|---|---|")?;
    for r in &b.rows {
        writeln!(md, "| {} | {} | {} |", r.what, r.lifeboat, r.note)?;
    }
    std::fs::write(args.out.join("block.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn lifeboat(bin: &Path, repo: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("LIFEBOAT_PASSWORD", PASSWORD).arg("--repo").arg(repo);
    c
}

/// Build `name` in `work` once (a `.done` marker records completion).
fn image(work: &Path, name: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let p = work.join(name);
    let done = work.join(format!("{name}.done"));
    if !done.exists() {
        eprintln!("   building {name}");
        make(&p).with_context(|| format!("building {name}"))?;
        std::fs::write(&done, "")?;
    }
    Ok(p)
}

fn write_seeded(p: &Path, size: u64, compressible: u8, seed: u64) -> Result<()> {
    let f = std::fs::File::create(p)?;
    let step = 64 * MIB;
    for (i, at) in (0..size).step_by(step as usize).enumerate() {
        f.write_all_at(&seeded(step as usize, compressible, seed + i as u64), at)?;
    }
    Ok(())
}

fn toolchain_lib() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("lib"))
}

/// An ext4 image of `size` holding a copy of `from`.
fn ext4_with(p: &Path, size: u64, from: &Path) -> Result<()> {
    std::fs::File::create(p)?.set_len(size)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(p))?;
    let mnt = p.with_extension("mnt");
    std::fs::create_dir_all(&mnt)?;
    run(Command::new("mount").arg("-o").arg("loop").arg(p).arg(&mnt))?;
    let r = run(Command::new("cp").arg("-a").arg(from).arg(&mnt));
    run(Command::new("umount").arg(&mnt))?;
    std::fs::remove_dir(&mnt)?;
    r
}

/// Read a file or device once, so measurements start page-cache warm.
fn warm(p: &Path) -> Result<()> {
    run(Command::new("dd").arg(format!("if={}", p.display())).args([
        "of=/dev/null",
        "bs=4M",
        "status=none",
    ]))
}

/// Where two images differ, in 64 KiB blocks, as `OFFSET LENGTH` lines, and the bytes covered.
fn changed_ranges(a: &[u8], b: &[u8]) -> (String, u64) {
    const BS: usize = 64 << 10;
    let mut out = String::new();
    let mut total = 0;
    let mut start = None;
    let n = a.len().div_ceil(BS);
    for i in 0..=n {
        let differs = i < n
            && a[i * BS..((i + 1) * BS).min(a.len())] != b[i * BS..((i + 1) * BS).min(b.len())];
        match (differs, start) {
            (true, None) => start = Some(i * BS),
            (false, Some(s)) => {
                let end = (i * BS).min(a.len());
                let _ = writeln!(out, "{s} {}", end - s);
                total += (end - s) as u64;
                start = None;
            }
            _ => {}
        }
    }
    (out, total)
}

fn bytes(j: &serde_json::Value, key: &str) -> u64 {
    j[key].as_u64().unwrap_or(0)
}

fn rate(n: u64, m: Measure) -> String {
    format!("{:.2} s, {:.2} GB/s", m.seconds, n as f64 / 1e9 / m.seconds)
}
