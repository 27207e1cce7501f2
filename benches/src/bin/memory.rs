//! Peak memory as the data grows: Lifeboat's peak RSS for full backup, unchanged re-backup and
//! restore of trees of 100 000 to 800 000 tiny files, of one directory of 400 000 of them, and
//! of 1 to 4 GiB of random data.
//!
//! ```text
//! cargo run --release -p lifeboat-benches --bin memory -- [--work DIR] [--out DIR]
//! ```
//!
//! The speed issue asks for a peak RSS of at most 128 MiB, flat as the data grows, where only the
//! index grows (48 bytes a chunk). Each tiny file is a blob of its own, so the tiny-file trees are
//! where per-blob memory shows; the single directory is where a directory's own memory would.
//! The repositories are opened with a key file: a password's argon2id
//! takes 64 MiB for a moment at the start, which would hide the working set of small runs. Writes
//! `memory.md` into `--out`, with the growth per file between the two largest trees.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use clap::Parser;
use lifeboat_benches::peers::{Measure, PASSWORD, find_tools, measure, run};

#[derive(Parser)]
#[command(about = "Lifeboat's peak memory as the number of files and the bytes grow")]
struct Args {
    /// Scratch space for corpora, repositories and restores.
    #[arg(long, default_value = "/var/tmp/lifeboat-compare/memory")]
    work: PathBuf,
    /// Where memory.md goes.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Restore into this directory (default: `restore` in `--work`). On a file system without a
    /// journal, ext4 skips inodes freed in the last minutes one by one, so creating a tree right
    /// after deleting one crawls (for any tool); a tmpfs avoids that.
    #[arg(long)]
    restore_to: Option<PathBuf>,
}

/// Peak RSS of each operation on one corpus.
struct Row {
    corpus: String,
    /// Files, or GiB of data.
    size: u64,
    backup: Measure,
    rebackup: Measure,
    restore: Measure,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.out)?;
    let work = std::path::absolute(&args.work)?;
    let bins = find_tools()?;
    let target = args.restore_to.unwrap_or_else(|| work.join("restore"));
    let key = work.join("key");
    std::fs::write(&key, blake3::derive_key("lifeboat memory bench", b"key"))?;
    let mut tiny = Vec::new();
    for n in [100_000, 200_000, 400_000, 800_000] {
        let src = tiny_files(&work, n, 1000)?;
        tiny.push(measure_corpus(
            &bins.lifeboat,
            &work,
            &target,
            &key,
            &src,
            n,
        )?);
    }
    let flat = 400_000;
    let src = tiny_files(&work, flat, flat)?;
    let flat = measure_corpus(&bins.lifeboat, &work, &target, &key, &src, flat)?;
    let mut data = vec![flat];
    for gib in [1, 4] {
        let src = random_data(&work, gib)?;
        data.push(measure_corpus(
            &bins.lifeboat,
            &work,
            &target,
            &key,
            &src,
            gib,
        )?);
    }
    let md = report(&tiny, &data);
    print!("{md}");
    std::fs::write(args.out.join("memory.md"), md)?;
    eprintln!("wrote {}", args.out.join("memory.md").display());
    Ok(())
}

/// `n` files of about 100 bytes, `per_dir` to a directory (`tiny-N`; `flat-N` when all are in one).
fn tiny_files(work: &Path, n: u64, per_dir: u64) -> Result<PathBuf> {
    let name = if per_dir == n { "flat" } else { "tiny" };
    let dir = work.join(format!("{name}-{n}"));
    let done = work.join(format!("{name}-{n}.done"));
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("making {n} tiny files in {}", dir.display());
        for d in 0..n / per_dir {
            let sub = dir.join(format!("d{d:04}"));
            std::fs::create_dir_all(&sub)?;
            for f in 0..per_dir {
                std::fs::write(
                    sub.join(format!("f{f:04}")),
                    format!("file {d} {f}\n").repeat(8),
                )?;
            }
        }
        std::fs::write(&done, b"")?;
    }
    Ok(dir)
}

/// One file of `gib` GiB of seeded random bytes.
fn random_data(work: &Path, gib: u64) -> Result<PathBuf> {
    let dir = work.join(format!("random-{gib}g"));
    let done = work.join(format!("random-{gib}g.done"));
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        eprintln!("making {gib} GiB of random data in {}", dir.display());
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("random.bin"))?);
        let mut xof = blake3::Hasher::new_derive_key("lifeboat memory random").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..gib << 10 {
            xof.fill(&mut buf);
            f.write_all(&buf)?;
        }
        f.flush()?;
        std::fs::write(&done, b"")?;
    }
    Ok(dir)
}

/// Full backup, unchanged re-backup and restore of `src` into a fresh repository.
fn measure_corpus(
    bin: &Path,
    work: &Path,
    target: &Path,
    key: &Path,
    src: &Path,
    size: u64,
) -> Result<Row> {
    let repo = work.join("repo");
    let target = target.join("memory-bench");
    for p in [&repo, &target] {
        let _ = std::fs::remove_dir_all(p);
    }
    let with_password = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.env("LIFEBOAT_PASSWORD", PASSWORD)
            .arg("--repo")
            .arg(&repo)
            .args(args);
        c
    };
    run(with_password(&["init", "--compression", "3"]).stdout(std::process::Stdio::null()))?;
    run(with_password(&["key", "add", "--new-key-file"])
        .arg(key)
        .stdout(std::process::Stdio::null()))?;
    let with_key = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.arg("--repo")
            .arg(&repo)
            .arg("--key-file")
            .arg(key)
            .args(args);
        c
    };
    // Warm the source, as every comparison does.
    run(Command::new("tar")
        .arg("cf")
        .arg("/dev/null")
        .arg(src)
        .stderr(std::process::Stdio::null()))?;
    let mut backup = with_key(&["backup"]);
    backup.arg(src);
    let backup_m = measure(work, &backup)?;
    let rebackup = measure(work, &backup)?;
    let mut restore = with_key(&["restore", "latest", "--target"]);
    restore.arg(&target);
    let restore_m = measure(work, &restore)?;
    for p in [&repo, &target] {
        let _ = std::fs::remove_dir_all(p);
    }
    let name = src.file_name().unwrap_or_default().to_string_lossy();
    eprintln!(
        "{name}: backup {:.0} MiB, re-backup {:.0} MiB, restore {:.0} MiB",
        backup_m.peak_rss_mib, rebackup.peak_rss_mib, restore_m.peak_rss_mib
    );
    Ok(Row {
        corpus: name.into_owned(),
        size,
        backup: backup_m,
        rebackup,
        restore: restore_m,
    })
}

fn report(tiny: &[Row], data: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Peak RSS, repository opened with a key file (speed is measured by `compare`).\n"
    );
    let _ = writeln!(
        md,
        "| corpus | full backup | unchanged re-backup | restore |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let cell = |m: &Measure| format!("{:.0} MiB", m.peak_rss_mib);
    for r in tiny.iter().chain(data) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.corpus,
            cell(&r.backup),
            cell(&r.rebackup),
            cell(&r.restore)
        );
    }
    let growth = |rows: &[Row], label: &str, md: &mut String| {
        // The two largest: below a few hundred thousand files the fixed buffers are still
        // filling (tree packs in flight reach their bound only with enough tree data).
        let [.., a, b] = rows else {
            return;
        };
        let per = |f: fn(&Row) -> f64| (f(b) - f(a)) * 1024.0 * 1024.0 / (b.size - a.size) as f64;
        let _ = writeln!(
            md,
            "\nGrowth per {label} from {} to {}: full backup {:.0} bytes, re-backup {:.0} bytes, \
             restore {:.0} bytes.",
            a.corpus,
            b.corpus,
            per(|r| r.backup.peak_rss_mib),
            per(|r| r.rebackup.peak_rss_mib),
            per(|r| r.restore.peak_rss_mib),
        );
    };
    // The single directory and random data are not in it. Random data has a blob per MiB: 4 GiB is too few blobs for a slope above the run-to-run
    // variation (a few MiB, from how many pack buffers a run happens to touch).
    growth(tiny, "file (one blob each)", &mut md);
    md
}
