//! The peers Lifeboat is measured against (restic, rustic), how each is invoked, and how a run is
//! timed: shared by the comparison commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

/// Password of every benchmark repository.
pub const PASSWORD: &str = "compare-benchmark-password";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
/// A backup tool under measurement.
pub enum Tool {
    Lifeboat,
    Restic,
    Rustic,
}

/// Where each tool's binary is.
pub struct Bins {
    pub lifeboat: PathBuf,
    pub restic: PathBuf,
    pub rustic: PathBuf,
}

#[derive(Serialize, Clone, Copy)]
/// One timed run: wall seconds and peak resident memory.
pub struct Measure {
    pub seconds: f64,
    pub peak_rss_mib: f64,
}

/// A program on `PATH` or in `~/.cargo/bin`.
pub fn which(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run a command to completion.
///
/// # Errors
/// When it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| shown.clone())?;
    ensure!(st.success(), "{shown} failed: {st}");
    Ok(())
}

/// Install Debian packages. The package lists are refreshed first, once per run: a fresh machine
/// has none, and `apt-get install` alone then finds nothing to install.
///
/// # Errors
/// When `apt-get` fails.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    static UPDATED: std::sync::Once = std::sync::Once::new();
    let mut update = Ok(());
    UPDATED.call_once(|| update = run(Command::new("apt-get").args(["update", "-qq"])));
    update?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Find the peers (installing them where missing) and build Lifeboat's release binary.
///
/// # Errors
/// When an install or the build fails.
pub fn find_tools() -> Result<Bins> {
    if which("restic").is_none() {
        eprintln!("installing restic (Debian package)");
        apt_install(&["restic"])?;
    }
    if which("rustic").is_none() {
        eprintln!("installing rustic (cargo install rustic-rs; takes a while)");
        run(Command::new("cargo").args(["install", "--locked", "rustic-rs"]))?;
    }
    if !Path::new("/usr/bin/time").is_file() {
        apt_install(&["time"])?;
    }
    // Lifeboat: the release binary of this workspace, built now so it is never stale.
    run(Command::new(env!("CARGO")).args([
        "build",
        "--release",
        "-q",
        "-p",
        "lifeboat-mover",
        "--bin",
        "lifeboat",
    ]))?;
    let exe = std::env::current_exe()?;
    let lifeboat = exe.with_file_name("lifeboat");
    ensure!(lifeboat.is_file(), "{} was not built", lifeboat.display());
    Ok(Bins {
        lifeboat,
        restic: which("restic").context("restic not found after installing it")?,
        rustic: which("rustic").context("rustic not found after installing it")?,
    })
}

/// The command that creates a repository.
pub fn init_cmd(b: &Bins, t: Tool, repo: &Path) -> Command {
    let mut c = tool_cmd(b, t, repo);
    match t {
        Tool::Lifeboat => c.args(["init", "--compression", "3"]),
        Tool::Restic => c.args(["init", "--repository-version", "2"]),
        Tool::Rustic => c.arg("init"),
    };
    c
}

/// The command that backs up `src` (zstd level 3 for every tool).
pub fn backup_cmd(b: &Bins, t: Tool, repo: &Path, src: &Path) -> Command {
    let mut c = tool_cmd(b, t, repo);
    c.arg("backup").arg(src);
    if t == Tool::Restic {
        c.args(["--compression", "auto"]);
    }
    c
}

/// The command that restores the latest snapshot into `target`.
pub fn restore_cmd(b: &Bins, t: Tool, repo: &Path, target: &Path) -> Command {
    let mut c = tool_cmd(b, t, repo);
    match t {
        Tool::Lifeboat | Tool::Restic => c.args(["restore", "latest", "--target"]).arg(target),
        Tool::Rustic => c.args(["restore", "latest"]).arg(target),
    };
    c
}

/// A tool's command with its repository and password set.
pub fn tool_cmd(b: &Bins, t: Tool, repo: &Path) -> Command {
    let mut c = match t {
        Tool::Lifeboat => {
            let mut c = Command::new(&b.lifeboat);
            c.env("LIFEBOAT_PASSWORD", PASSWORD).arg("--repo").arg(repo);
            c
        }
        Tool::Restic => {
            let mut c = Command::new(&b.restic);
            c.env("RESTIC_PASSWORD", PASSWORD)
                .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
                .arg("--repo")
                .arg(repo);
            c
        }
        Tool::Rustic => {
            let mut c = Command::new(&b.rustic);
            c.env("RUSTIC_PASSWORD", PASSWORD)
                .env("XDG_CACHE_HOME", repo.with_extension("cache"))
                .arg("--no-progress")
                .arg("--repository")
                .arg(repo);
            c
        }
    };
    c.stdin(Stdio::null());
    c
}

/// Run `cmd` under GNU time; its output goes to a log file in `work`.
///
/// # Errors
/// When the command fails (the log's last lines are in the error).
pub fn measure(work: &Path, cmd: &Command) -> Result<Measure> {
    // Flush what earlier runs wrote, so no tool pays for another's writeback.
    run(&mut Command::new("sync"))?;
    let stats = work.join("time.out");
    let log = work.join("tool.log");
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%e %M", "-o"]).arg(&stats);
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let f = std::fs::File::create(&log)?;
    c.stdout(f.try_clone()?).stderr(f).stdin(Stdio::null());
    let st = c.status()?;
    if !st.success() {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(10).collect();
        bail!(
            "exit {st}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let s = std::fs::read_to_string(&stats)?;
    let last = s.lines().last().context("no output from time")?;
    let mut it = last.split_whitespace();
    let seconds: f64 = it.next().context("time: seconds")?.parse()?;
    let kib: f64 = it.next().context("time: rss")?.parse()?;
    Ok(Measure {
        seconds: seconds.max(0.01),
        peak_rss_mib: kib / 1024.0,
    })
}
