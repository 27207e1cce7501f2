//! Lifeboat, restic and rustic with an S3 repository: moto's S3 server on loopback, in one run.
//!
//! ```text
//! cargo run --release -p lifeboat-benches --bin s3 -- [--corpus DIR] [--work DIR] [--out DIR]
//! ```
//!
//! Starts `moto_server` (installed with pip where missing) on a free loopback port, gives each tool
//! its own bucket, and measures full backup, unchanged re-backup and restore of `--corpus` (default:
//! the Rust toolchain) with each tool, every restore checked for its byte total. moto is a Python
//! server: its per-request cost is far above a real S3 endpoint's, so the figures rank how tools
//! use requests (how many, how many at once), not what a real bucket sustains. Writes `s3.md` into
//! `--out`.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use lifeboat_benches::peers::{Measure, PASSWORD, Tool, find_tools, measure, run, which};
use lifeboat_benches::tree_size;

#[derive(Parser)]
#[command(about = "Lifeboat, restic and rustic against an S3 server on loopback")]
struct Args {
    /// The tree to back up (default: `rustc --print sysroot`).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Scratch space for caches and restores.
    #[arg(long, default_value = "/var/tmp/lifeboat-compare/s3")]
    work: PathBuf,
    /// Where s3.md goes.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

/// moto's server, killed on drop.
struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Result<Moto> {
    if which("moto_server").is_none() {
        run(Command::new("pip").args(["install", "moto[server]"]))?;
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto_server")?;
    let moto = Moto(child, port);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(t.elapsed() < Duration::from_mins(1), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

/// Create a bucket (moto takes unsigned requests).
fn bucket(port: u16, name: &str) -> Result<()> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        c,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    c.read_to_string(&mut resp)?;
    ensure!(resp.starts_with("HTTP/1.1 200"), "creating bucket: {resp}");
    Ok(())
}

const KEY_ID: &str = "lifeboat-bench";
const SECRET: &str = "lifeboat-bench-secret";

/// A tool's command on its bucket, with its credentials and a cache under `work`.
fn tool(bins: &lifeboat_benches::peers::Bins, t: Tool, port: u16, work: &Path) -> Result<Command> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut c = match t {
        Tool::Lifeboat => {
            let mut c = Command::new(&bins.lifeboat);
            c.env("LIFEBOAT_PASSWORD", PASSWORD)
                .env("LIFEBOAT_CACHE_DIR", work.join("lifeboat-cache"))
                .env("AWS_ENDPOINT_URL", &endpoint)
                .args(["--repo", "s3://bench-lifeboat/repo"]);
            c
        }
        Tool::Restic => {
            let mut c = Command::new(&bins.restic);
            c.env("RESTIC_PASSWORD", PASSWORD)
                .env("RESTIC_CACHE_DIR", work.join("restic-cache"))
                .arg("--repo")
                .arg(format!("s3:{endpoint}/bench-restic/repo"));
            c
        }
        Tool::Rustic => {
            // rustic takes opendal options from a profile only.
            let profile = work.join("rustic-s3");
            std::fs::write(
                profile.with_extension("toml"),
                format!(
                    "[repository]\nrepository = \"opendal:s3\"\npassword = \"{PASSWORD}\"\n\
                     [repository.options]\nbucket = \"bench-rustic\"\nroot = \"/repo\"\n\
                     endpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
                     access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n"
                ),
            )?;
            let mut c = Command::new(&bins.rustic);
            c.env("RUSTIC_CACHE_DIR", work.join("rustic-cache"))
                .arg("-P")
                .arg(&profile)
                .arg("--no-progress");
            c
        }
    };
    c.env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stdin(Stdio::null());
    Ok(c)
}

fn with_args(mut c: Command, args: &[&str]) -> Command {
    c.args(args);
    c
}

fn main() -> Result<()> {
    let args = Args::parse();
    let corpus = if let Some(c) = args.corpus {
        c
    } else {
        let o = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()?;
        PathBuf::from(String::from_utf8(o.stdout)?.trim())
    };
    let bins = find_tools()?;
    std::fs::create_dir_all(&args.work)?;
    for c in ["lifeboat-cache", "restic-cache", "rustic-cache"] {
        let _ = std::fs::remove_dir_all(args.work.join(c));
    }
    let bytes = tree_size(&corpus)?.0;
    let moto = start_moto()?;
    let tools = [Tool::Lifeboat, Tool::Restic, Tool::Rustic];
    for t in tools {
        bucket(moto.1, &format!("bench-{t:?}").to_lowercase())?;
    }
    // Warm the page cache for the corpus.
    run(Command::new("tar")
        .args(["cf", "/dev/null"])
        .arg(&corpus)
        .stderr(Stdio::null()))?;
    let target = args.work.join("restore");
    let mut rows = Vec::new();
    for t in tools {
        let cmd = |a: &[&str]| -> Result<Command> {
            Ok(with_args(tool(&bins, t, moto.1, &args.work)?, a))
        };
        let init = match t {
            Tool::Lifeboat => cmd(&["init", "--compression", "3"])?,
            Tool::Restic => cmd(&["init", "--repository-version", "2"])?,
            Tool::Rustic => cmd(&["init"])?,
        };
        let mut results: Vec<(&str, Result<Measure>)> = Vec::new();
        if let Err(e) = measure(&args.work, &init) {
            eprintln!("{t:?} init failed: {e:#}");
            continue;
        }
        let mut backup = cmd(&["backup"])?;
        backup.arg(&corpus);
        if t == Tool::Restic {
            backup.args(["--compression", "auto"]);
        }
        results.push(("full backup", measure(&args.work, &backup)));
        results.push(("unchanged re-backup", measure(&args.work, &backup)));
        let _ = std::fs::remove_dir_all(&target);
        let mut restore = match t {
            Tool::Rustic => cmd(&["restore", "latest"])?,
            _ => cmd(&["restore", "latest", "--target"])?,
        };
        restore.arg(&target);
        let m = measure(&args.work, &restore).and_then(|m| {
            let got = tree_size(&target.join(corpus.strip_prefix("/")?))?.0;
            if got != bytes {
                bail!("restored {got} bytes, expected {bytes}");
            }
            Ok(m)
        });
        let _ = std::fs::remove_dir_all(&target);
        results.push(("restore", m));
        for (op, m) in results {
            let cell = match &m {
                Ok(m) => format!(
                    "{:.2} s · {:.0} MB/s · {:.0} MiB",
                    m.seconds,
                    bytes as f64 / 1e6 / m.seconds,
                    m.peak_rss_mib
                ),
                Err(e) => format!("failed: {}", format!("{e:#}").lines().next().unwrap_or("")),
            };
            eprintln!("   {:<8} {op:<20} {cell}", format!("{t:?}"));
            rows.push((t, op, m.ok()));
        }
    }
    let mut md = String::new();
    writeln!(
        md,
        "S3 repository on moto {} (loopback), corpus {} ({:.2} GiB); encryption on, zstd level 3; \
         cells are seconds · MB/s · peak RSS.\n",
        moto_version(),
        corpus.display(),
        bytes as f64 / f64::from(1u32 << 30)
    )?;
    writeln!(md, "| operation | Lifeboat | restic | rustic |")?;
    writeln!(md, "|---|---|---|---|")?;
    for op in ["full backup", "unchanged re-backup", "restore"] {
        let cell = |t: Tool| {
            rows.iter()
                .find(|(rt, ro, _)| *rt == t && *ro == op)
                .map_or("failed".to_owned(), |(_, _, m)| match m {
                    Some(m) => format!("{:.2} s · {:.0} MiB", m.seconds, m.peak_rss_mib),
                    None => "failed".to_owned(),
                })
        };
        writeln!(
            md,
            "| {op} | {} | {} | {} |",
            cell(Tool::Lifeboat),
            cell(Tool::Restic),
            cell(Tool::Rustic)
        )?;
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("s3.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn moto_version() -> String {
    Command::new("pip")
        .args(["show", "moto"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
        })
        .unwrap_or_default()
}
