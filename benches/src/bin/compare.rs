//! Lifeboat against restic and rustic, side by side, in one run.
//!
//! ```text
//! cargo run --release -p lifeboat-benches --bin compare -- [--corpus NAME]... [--runs N]
//! ```
//!
//! Finds or installs the peers (restic from Debian, rustic with `cargo install rustic-rs`), builds the
//! corpora once in `--work` (never committed), then for each corpus runs full backup, unchanged
//! re-backup and restore with every tool, alternating the tools' order. Every backup's source and
//! every restore's repository is read just before it runs: this machine pages out what was not read
//! for a minute (DAMON), so a single warm-up leaves later runs reading from disk. Each run gets
//! a fresh local repository with encryption on and zstd level 3 (restic `--compression auto`, rustic
//! default). Wall time and peak RSS come from GNU time; every restore is checked for its byte total.
//! Restores write to a tmpfs, so the numbers measure the tools and not ext4's inode allocator, and
//! every measurement starts after `sync`, so no tool pays for the writeback of another's repository.
//! Writes `results.md` (the table), `results.json` and `chart.svg` into `--out`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use lifeboat_benches::peers::{
    Measure, Tool, apt_install, backup_cmd, find_tools, init_cmd, measure, restore_cmd, run,
};
use lifeboat_benches::{Rng, for_each_file, human, tree_size};
use serde::Serialize;

const CORPORA: [&str; 5] = [
    "toolchain",
    "small-files",
    "postgres",
    "random",
    "edited-copy",
];

#[derive(Parser)]
#[command(about = "Compare Lifeboat with restic and rustic on the same corpora in one run")]
struct Args {
    /// Corpora to run (default: all of toolchain, small-files, postgres, random, edited-copy).
    #[arg(long = "corpus")]
    corpora: Vec<String>,
    /// Scratch space for corpora, repositories and restores.
    #[arg(long, default_value = "/var/tmp/lifeboat-compare")]
    work: PathBuf,
    /// Where results.md, results.json and chart.svg go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Repeat every measurement this many times and keep the fastest.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Only these tools (lifeboat, restic, rustic).
    #[arg(long = "tool")]
    tools: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Debug)]
#[serde(rename_all = "kebab-case")]
enum Op {
    Backup,
    Rebackup,
    Restore,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Backup => "full backup",
            Op::Rebackup => "unchanged re-backup",
            Op::Restore => "restore",
        }
    }
}

#[derive(Serialize)]
struct CorpusResult {
    name: String,
    path: PathBuf,
    bytes: u64,
    files: u64,
    /// (tool, op) → fastest run.
    runs: Vec<(Tool, Op, Measure)>,
    repo_bytes: Vec<(Tool, u64)>,
    /// Seconds that zstd level 3 alone takes over the corpus's distinct chunks on every core,
    /// from memory (fastest of the runs): no full backup by Lifeboat's design can be faster.
    zstd_floor_seconds: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.out)?;
    let work = std::path::absolute(&args.work)?;
    let tools: Vec<Tool> = if args.tools.is_empty() {
        vec![Tool::Lifeboat, Tool::Restic, Tool::Rustic]
    } else {
        args.tools
            .iter()
            .map(|t| match t.as_str() {
                "lifeboat" => Ok(Tool::Lifeboat),
                "restic" => Ok(Tool::Restic),
                "rustic" => Ok(Tool::Rustic),
                _ => bail!("unknown tool {t}: lifeboat, restic or rustic"),
            })
            .collect::<Result<_>>()?
    };
    let corpora: Vec<String> = if args.corpora.is_empty() {
        CORPORA.iter().map(|s| (*s).to_owned()).collect()
    } else {
        for c in &args.corpora {
            ensure!(
                CORPORA.contains(&c.as_str()),
                "unknown corpus {c}: one of {CORPORA:?}"
            );
        }
        args.corpora.clone()
    };
    let bins = find_tools()?;
    // Restores go to a tmpfs: on ext4, re-creating tens of thousands of files right after deleting
    // the previous restore makes the kernel's inode allocator dominate every tool's time.
    let restore_fs = work.join("restore-tmpfs");
    std::fs::create_dir_all(&restore_fs)?;
    if !Command::new("mountpoint")
        .arg("-q")
        .arg(&restore_fs)
        .status()?
        .success()
    {
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=50%", "lifeboat-compare"])
            .arg(&restore_fs))?;
    }
    let mut results = Vec::new();
    for (ci, name) in corpora.iter().enumerate() {
        let path = make_corpus(&work, name)?;
        let (bytes, files) = tree_size(&path)?;
        eprintln!(
            "== {name}: {} in {files} files ({})",
            human(bytes),
            path.display()
        );
        // Earlier corpora and their repositories would otherwise crowd this one's out of memory,
        // each tool's differently (the kernel evicts by age and use).
        drop_page_cache();
        let took = warm(&path)?;
        eprintln!("   page cache warmed in {took:.1} s");
        let mut r = CorpusResult {
            name: name.clone(),
            path: path.clone(),
            bytes,
            files,
            runs: Vec::new(),
            repo_bytes: Vec::new(),
            zstd_floor_seconds: None,
        };
        if tools.contains(&Tool::Lifeboat) {
            let floor = zstd_floor(&path, args.runs.max(1))?;
            eprintln!("   zstd level 3 alone, every core    {floor:>8.2} s");
            r.zstd_floor_seconds = Some(floor);
        }
        for run in 0..args.runs.max(1) {
            let mut order = tools.clone();
            let n = order.len();
            order.rotate_left((ci + run) % n);
            let repos: BTreeMap<Tool, PathBuf> = order
                .iter()
                .map(|t| (*t, work.join(format!("repo-{t:?}").to_lowercase())))
                .collect();
            for (t, repo) in &repos {
                let _ = std::fs::remove_dir_all(repo);
                measure(&work, &init_cmd(&bins, *t, repo))
                    .with_context(|| format!("{t:?} init"))?;
            }
            for op in [Op::Backup, Op::Rebackup, Op::Restore] {
                for &t in &order {
                    let repo = &repos[&t];
                    let target = restore_fs.join("target");
                    let _ = std::fs::remove_dir_all(&target);
                    let cmd = match op {
                        Op::Backup | Op::Rebackup => {
                            // This machine reclaims page cache untouched for a minute (DAMON
                            // proactive reclaim): warm the source again for every run, so every
                            // tool reads it from memory.
                            warm(&path)?;
                            backup_cmd(&bins, t, repo, &path)
                        }
                        Op::Restore => {
                            // A restore's source is the repository: warm it, as every backup's
                            // source is warm. Tools that write packs around the page cache
                            // (Lifeboat) would otherwise restore from disk against peers that
                            // restore from memory. Read twice: pages read once stay on the
                            // kernel's inactive list and are the first reclaimed when the
                            // restore fills the tmpfs, while a peer's packs, written and then
                            // read, are already on the active list.
                            warm(repo)?;
                            warm(repo)?;
                            restore_cmd(&bins, t, repo, &target)
                        }
                    };
                    let m = measure(&work, &cmd).with_context(|| format!("{t:?} {op:?} {name}"))?;
                    if op == Op::Restore {
                        let restored = target.join(path.strip_prefix("/").unwrap_or(&path));
                        let (rb, rf) = tree_size(&restored)?;
                        ensure!(
                            (rb, rf) == (bytes, files),
                            "{t:?} restored {rb} bytes in {rf} files, expected {bytes} in {files}"
                        );
                        std::fs::remove_dir_all(&target)?;
                    }
                    eprintln!(
                        "   {:<8} {:<20} {:>8.2} s {:>8.0} MB/s {:>7.0} MiB",
                        format!("{t:?}"),
                        op.label(),
                        m.seconds,
                        bytes as f64 / 1e6 / m.seconds,
                        m.peak_rss_mib
                    );
                    match r.runs.iter_mut().find(|(a, b, _)| (*a, *b) == (t, op)) {
                        Some((_, _, best)) if best.seconds <= m.seconds => {}
                        Some((_, _, best)) => *best = m,
                        None => r.runs.push((t, op, m)),
                    }
                }
            }
            r.repo_bytes = repos
                .iter()
                .map(|(t, p)| Ok((*t, tree_size(p)?.0)))
                .collect::<Result<_>>()?;
            for p in repos.values() {
                std::fs::remove_dir_all(p)?;
            }
        }
        results.push(r);
        // Written after every corpus, so a failure later keeps what was measured.
        write_results(&args.out, &results)?;
    }
    println!("{}", table(&results));
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn write_results(out: &Path, results: &[CorpusResult]) -> Result<()> {
    std::fs::write(out.join("results.md"), table(results))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "corpora": results,
        }))?,
    )?;
    std::fs::write(out.join("chart.svg"), chart(results))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tools

// ---------------------------------------------------------------------------------------------
// Corpora

fn make_corpus(work: &Path, name: &str) -> Result<PathBuf> {
    if name == "toolchain" {
        let out = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()?;
        ensure!(out.status.success(), "rustc --print sysroot failed");
        return Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()));
    }
    let dir = work.join("corpus").join(name);
    let done = work.join("corpus").join(format!("{name}.done"));
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!("making corpus {name} in {}", dir.display());
    match name {
        "small-files" => small_files(&dir)?,
        "postgres" => postgres(&dir)?,
        "random" => {
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("random.bin"))?);
            let mut xof = blake3::Hasher::new_derive_key("lifeboat compare random").finalize_xof();
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..2048 {
                xof.fill(&mut buf);
                f.write_all(&buf)?;
            }
            f.flush()?;
        }
        "edited-copy" => edited_copy(&dir)?,
        _ => bail!("unknown corpus {name}"),
    }
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// 30 000 source-like text files of 0.5–12 KiB in 300 directories.
fn small_files(dir: &Path) -> Result<()> {
    const WORDS: [&str; 24] = [
        "fn", "let", "mut", "self", "impl", "struct", "match", "Result", "Option", "return", "pub",
        "use", "crate", "where", "async", "await", "Vec", "String", "u64", "buffer", "chunk",
        "index", "pack", "snapshot",
    ];
    let mut rng = Rng::new(0x5eed_1234_abcd_ef01);
    for d in 0..300 {
        let sub = dir.join(format!("module_{d:03}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..100 {
            let target = 512 + rng.below(12 * 1024 - 512) as usize;
            let mut s = String::with_capacity(target + 64);
            while s.len() < target {
                let indent = rng.below(4) as usize * 4;
                s.extend(std::iter::repeat_n(' ', indent));
                for _ in 0..3 + rng.below(8) {
                    s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                    if rng.below(5) == 0 {
                        let _ = write!(s, "_{}", rng.below(1000));
                    }
                    s.push(' ');
                }
                s.push_str(";\n");
            }
            std::fs::write(sub.join(format!("file_{f:03}.rs")), s)?;
        }
    }
    Ok(())
}

/// A `PostgreSQL` 15 data directory: `initdb`, then `pgbench -i -s 50`, cleanly shut down.
fn postgres(dir: &Path) -> Result<()> {
    let bindir = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("initdb").is_file());
    let bindir = if let Some(b) = bindir {
        b
    } else {
        apt_install(&["postgresql-15", "postgresql-contrib"])?;
        PathBuf::from("/usr/lib/postgresql/15/bin")
    };
    let data = dir.join("data");
    let sock = dir.with_extension("sock");
    std::fs::create_dir_all(&sock)?;
    run(Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(dir)
        .arg(&sock))?;
    let as_pg = |prog: &str| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(prog));
        c
    };
    run(as_pg("initdb")
        .arg("-D")
        .arg(&data)
        .arg("--no-sync")
        .stdout(Stdio::null()))?;
    let opts = format!("-p 54329 -k {} -c listen_addresses=''", sock.display());
    run(as_pg("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-w", "-o", &opts, "-l"])
        .arg(sock.join("server.log"))
        .arg("start"))?;
    let r = run(as_pg("pgbench")
        .args(["-i", "-s", "50", "-q", "-p", "54329", "-h"])
        .arg(&sock)
        .arg("postgres"));
    run(as_pg("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-w", "-m", "fast", "stop"]))?;
    r
}

/// A 512 MiB image (mixed compressible and random data) and a copy of it with 32 small overwrites
/// and 8 small insertions: the copy should cost almost nothing after dedup.
fn edited_copy(dir: &Path) -> Result<()> {
    const LEN: usize = 512 << 20;
    let base = lifeboat_benches::seeded(LEN, 50, 42);
    std::fs::write(dir.join("base.img"), &base)?;
    let mut rng = Rng::new(0x00c0_ffee_1234_5678);
    let mut edited = base;
    for _ in 0..32 {
        let at = rng.below((LEN - 4096) as u64) as usize;
        for b in &mut edited[at..at + 4096] {
            *b = rng.next_u64() as u8;
        }
    }
    for _ in 0..8 {
        let at = rng.below(LEN as u64) as usize;
        let ins: Vec<u8> = (0..100).map(|_| rng.next_u64() as u8).collect();
        edited.splice(at..at, ins);
    }
    std::fs::write(dir.join("edited.img"), &edited)?;
    Ok(())
}

/// Write back and drop the page cache (best effort: needs root).
fn drop_page_cache() {
    let _ = Command::new("sync").status();
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1") {
        eprintln!("   page cache not dropped: {e}");
    }
}

/// Read every file once so every tool starts from a warm page cache; the seconds it took.
fn warm(p: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for_each_file(p, |e| {
        let mut f = std::fs::File::open(e.path())?;
        while std::io::Read::read(&mut f, &mut buf)? > 0 {}
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// The compression floor of a full backup: the corpus's regular files are read into memory and
/// cut into chunks as a backup cuts them (content-defined, default bounds; each file's last chunk
/// ends with it), each distinct chunk once, and then only the timed part: every core compresses
/// them with Lifeboat's own compressor (zstd level 3, a probe first for large chunks), taking
/// chunks from a shared counter. Reading, hashing, sealing and writing are left out, so this is
/// a lower bound for Lifeboat's full backup and the ratio against a peer's backup is the most
/// that any backup cutting and compressing chunks this way could show. Fastest of `runs`.
fn zstd_floor(path: &Path, runs: usize) -> Result<f64> {
    use lifeboat::chunker::{Chunker, ChunkerParams};
    use lifeboat::compress::Compressor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let chunker = Chunker::new(ChunkerParams::default(), 0x5eed);
    let mut files = Vec::new();
    for_each_file(path, |e| {
        files.push(std::fs::read(e.path())?);
        Ok(())
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut ends = Vec::new();
    for data in &files {
        ends.clear();
        chunker.cut(data, true, &mut ends);
        let mut start = 0;
        for &end in &ends {
            let c = &data[start..end];
            if seen.insert(*blake3::hash(c).as_bytes()) {
                chunks.push(c);
            }
            start = end;
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..cores)
                .map(|_| {
                    scope.spawn(|| -> Result<usize> {
                        let mut z = Compressor::new(3)?;
                        let mut stored = 0;
                        while let Some(c) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                            stored += z.compress(c).map_or(c.len(), <[u8]>::len);
                        }
                        Ok(stored)
                    })
                })
                .collect();
            for w in workers {
                std::hint::black_box(w.join().expect("a compressing thread panicked")?);
            }
            Ok(())
        })?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

// ---------------------------------------------------------------------------------------------
// Report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {} GiB RAM, Linux {}",
        mem >> 20,
        kernel.trim()
    )
}

fn get(r: &CorpusResult, t: Tool, op: Op) -> Option<Measure> {
    r.runs
        .iter()
        .find(|(a, b, _)| (*a, *b) == (t, op))
        .map(|x| x.2)
}

/// The targets of the speed issue: (op, peer, minimum ratio).
const TARGETS: [(Op, Tool, f64); 5] = [
    (Op::Backup, Tool::Restic, 4.0),
    (Op::Backup, Tool::Rustic, 3.0),
    (Op::Rebackup, Tool::Rustic, 5.0),
    (Op::Restore, Tool::Restic, 3.0),
    (Op::Restore, Tool::Rustic, 3.0),
];
const RSS_LIMIT_MIB: f64 = 128.0;

fn table(results: &[CorpusResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {}  ", machine());
    let _ = writeln!(
        s,
        "Date: {}; one local repository per tool, encryption on, zstd level 3; cells are seconds · MB/s · peak RSS. \
         The floor row is zstd level 3 alone over the corpus's distinct chunks, on every core, from memory: \
         its ratios are the most a full backup that compresses every chunk could reach.\n",
        jiff::Zoned::now().strftime("%Y-%m-%d %H:%M %Z")
    );
    let _ = writeln!(
        s,
        "| corpus | operation | Lifeboat | restic | rustic | × restic | × rustic |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut misses = Vec::new();
    for r in results {
        for op in [Op::Backup, Op::Rebackup, Op::Restore] {
            let cell = |t: Tool| {
                get(r, t, op).map_or("–".to_owned(), |m| {
                    format!(
                        "{:.2} s · {:.0} MB/s · {:.0} MiB",
                        m.seconds,
                        r.bytes as f64 / 1e6 / m.seconds,
                        m.peak_rss_mib
                    )
                })
            };
            let mut ratio = |peer: Tool| match (get(r, Tool::Lifeboat, op), get(r, peer, op)) {
                (Some(l), Some(p)) => {
                    let x = p.seconds / l.seconds;
                    let target = TARGETS
                        .iter()
                        .find(|(o, t, _)| *o == op && *t == peer)
                        .map(|x| x.2);
                    match target {
                        Some(min) if x < min => {
                            // For a full backup, how far compression alone would let it go.
                            let most = match (op, r.zstd_floor_seconds) {
                                (Op::Backup, Some(floor)) => format!(
                                    " (zstd level 3 alone allows at most {:.1}×)",
                                    p.seconds / floor
                                ),
                                _ => String::new(),
                            };
                            misses.push(format!(
                                "{} {}: {x:.1}× {peer:?}, target {min}×{most}",
                                r.name,
                                op.label()
                            ));
                            format!("**{x:.1}×** (< {min}×)")
                        }
                        _ => format!("{x:.1}×"),
                    }
                }
                _ => "–".to_owned(),
            };
            let (vs_restic, vs_rustic) = (ratio(Tool::Restic), ratio(Tool::Rustic));
            if let Some(l) = get(r, Tool::Lifeboat, op)
                && op != Op::Rebackup
                && l.peak_rss_mib > RSS_LIMIT_MIB
            {
                misses.push(format!(
                    "{} {}: Lifeboat peak RSS {:.0} MiB > {RSS_LIMIT_MIB} MiB",
                    r.name,
                    op.label(),
                    l.peak_rss_mib
                ));
            }
            let _ = writeln!(
                s,
                "| {} ({}, {} files) | {} | {} | {} | {} | {} | {} |",
                r.name,
                human(r.bytes),
                r.files,
                op.label(),
                cell(Tool::Lifeboat),
                cell(Tool::Restic),
                cell(Tool::Rustic),
                vs_restic,
                vs_rustic
            );
        }
        if let Some(floor) = r.zstd_floor_seconds {
            let most = |peer: Tool| {
                get(r, peer, Op::Backup).map_or("–".to_owned(), |p| {
                    format!("at most {:.1}×", p.seconds / floor)
                })
            };
            let _ = writeln!(
                s,
                "| {} | full backup, zstd level 3 alone (the floor) | {floor:.2} s · {:.0} MB/s | | | {} | {} |",
                r.name,
                r.bytes as f64 / 1e6 / floor,
                most(Tool::Restic),
                most(Tool::Rustic)
            );
        }
        let size = |t: Tool| {
            r.repo_bytes
                .iter()
                .find(|(a, _)| *a == t)
                .map_or("–".to_owned(), |(_, b)| human(*b))
        };
        let _ = writeln!(
            s,
            "| {} | repository size | {} | {} | {} | | |",
            r.name,
            size(Tool::Lifeboat),
            size(Tool::Restic),
            size(Tool::Rustic)
        );
    }
    if misses.is_empty() {
        let _ = writeln!(s, "\nEvery target met.");
    } else {
        let _ = writeln!(s, "\nTargets missed:");
        for m in misses {
            let _ = writeln!(s, "- {m}");
        }
    }
    s
}

/// A horizontal bar chart: one group per corpus and operation, one bar per tool (seconds).
fn chart(results: &[CorpusResult]) -> String {
    let tools = [
        (Tool::Lifeboat, "#1f77b4"),
        (Tool::Restic, "#ff7f0e"),
        (Tool::Rustic, "#2ca02c"),
    ];
    let (bar, gap, left, width) = (14.0, 12.0, 260.0, 520.0);
    let groups: Vec<(String, [Option<Measure>; 3])> = results
        .iter()
        .flat_map(|r| {
            [Op::Backup, Op::Rebackup, Op::Restore].map(|op| {
                (
                    format!("{} · {}", r.name, op.label()),
                    tools.map(|(t, _)| get(r, t, op)),
                )
            })
        })
        .collect();
    let group_h = bar * 3.0 + gap;
    let height = 60.0 + group_h * groups.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="11">"#,
        w = left + width + 90.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14">Seconds per operation (shorter is better), bars scaled per row group</text>"#
    );
    for (i, (t, color)) in tools.iter().enumerate() {
        let x = 10.0 + 110.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{color}"/><text x="{}" y="37">{t:?}</text>"#,
            x + 14.0
        );
    }
    for (g, (label, ms)) in groups.iter().enumerate() {
        let y0 = 50.0 + group_h * g as f64;
        let max = ms
            .iter()
            .flatten()
            .map(|m| m.seconds)
            .fold(0.0f64, f64::max)
            .max(0.01);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            left - 8.0,
            y0 + bar * 1.8
        );
        for (i, m) in ms.iter().enumerate() {
            let Some(m) = m else { continue };
            let w = (m.seconds / max * width).max(1.0);
            let y = y0 + bar * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{:.1}">{:.2} s</text>"#,
                bar - 2.0,
                tools[i].1,
                left + w + 4.0,
                y + bar - 4.0,
                m.seconds
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
