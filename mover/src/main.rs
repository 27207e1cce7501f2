//! The `lifeboat` command-line tool.

// Doc comments here are clap help text, shown verbatim to users: no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use lifeboat::forget;
use lifeboat::{
    BackupOptions, CheckProgress, Chunking, ExcludeOptions, InitOptions, KdfParams, Location,
    LockConfig, Progress, Repository, RestoreOptions, RestoreProgress, Secret, SlotKind, Snapshot,
    SnapshotFilter, StoreOptions, absolute_path, parse_tag_list,
    s3lock::LockMode,
    tree::{Node, NodeKind},
};
use serde_json::json;

/// Lifeboat: encrypted, deduplicated, incremental backups of directories and volumes.
#[derive(Parser)]
#[command(name = "lifeboat", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Repository: s3://BUCKET/PREFIX or a local directory path. S3 credentials, endpoint and
    /// region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    /// AWS_ENDPOINT_URL and AWS_REGION (or the usual AWS credential chain).
    #[arg(
        short = 'r',
        long,
        env = "LIFEBOAT_REPO",
        global = true,
        hide_env_values = true
    )]
    repo: Option<String>,
    /// Read the repository password from this file (default: env LIFEBOAT_PASSWORD, else asked
    /// at the terminal).
    #[arg(long, global = true, conflicts_with = "key_file")]
    password_file: Option<PathBuf>,
    /// Run this shell command and take its output as the repository password, for example a
    /// secrets manager's CLI (default: env LIFEBOAT_PASSWORD_COMMAND).
    #[arg(long, global = true, value_name = "COMMAND", conflicts_with_all = ["password_file", "key_file"])]
    password_command: Option<String>,
    /// Open the repository with a raw 32-byte key file instead of a password.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// S3 endpoint URL (overrides AWS_ENDPOINT_URL).
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region (overrides AWS_REGION).
    #[arg(long, global = true)]
    s3_region: Option<String>,
    /// Requests to the storage in flight at once, at most.
    #[arg(long, global = true, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_requests: u32,
    /// Upload bandwidth limit in MiB/s.
    #[arg(long, global = true, value_name = "MIB_PER_S")]
    limit_upload: Option<f64>,
    /// Download bandwidth limit in MiB/s.
    #[arg(long, global = true, value_name = "MIB_PER_S")]
    limit_download: Option<f64>,
    /// Retries of a storage request that failed transiently, with exponential backoff.
    #[arg(long, global = true, default_value_t = 6)]
    retries: u32,
    /// Local cache of a remote repository's index, snapshots and trees, so that a re-backup or a
    /// restore does not fetch them again (default: $XDG_CACHE_HOME/lifeboat, else
    /// ~/.cache/lifeboat). Safe to delete; shared safely by concurrent runs.
    #[arg(long, global = true, env = "LIFEBOAT_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Use no local cache (overrides --cache-dir and LIFEBOAT_CACHE_DIR).
    #[arg(long, global = true)]
    no_cache: bool,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

/// How `prune` (and `forget --prune`) deletes.
#[derive(Args)]
struct PruneArgs {
    /// How old a deletion plan must be before its packs are deleted (0s deletes at once: only
    /// safe when nothing else uses the repository).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    grace: String,
    /// Repack a pack when less than this percentage of it is still used.
    #[arg(long, default_value_t = 50.0, value_name = "PERCENT")]
    repack_below: f64,
}

/// restic's snapshot filters. They choose what `latest` means and which snapshots `snapshots`,
/// `forget` and `copy` consider; a snapshot named by its id is taken whatever they say.
#[derive(Args, Default)]
struct FilterArgs {
    /// Only snapshots from this host (repeatable: any of them).
    #[arg(long = "host", short = 'H', value_name = "HOST")]
    hosts: Vec<String>,
    /// Only snapshots with all of these comma-separated tags (repeatable: any of the lists; ""
    /// selects snapshots without tags).
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    tags: Vec<String>,
    /// Only snapshots that include this path (repeatable: all of them).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<PathBuf>,
}

impl FilterArgs {
    fn filter(&self) -> Result<SnapshotFilter> {
        Ok(SnapshotFilter {
            hosts: self.hosts.clone(),
            tags: self.tags.iter().map(|t| parse_tag_list(t)).collect(),
            paths: self
                .paths
                .iter()
                .map(|p| Ok(absolute_path(p)?.to_string_lossy().into_owned()))
                .collect::<Result<_>>()?,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository.
    Init {
        /// zstd level for new data (0 turns compression off).
        #[arg(long, default_value_t = 3)]
        compression: i32,
        /// Target pack size in MiB.
        #[arg(long, default_value_t = 16)]
        pack_size_mib: u32,
        /// S3 Object Lock: write every object locked for this many days, and keep what newer
        /// snapshots use locked that long from each backup (the bucket needs Object Lock).
        #[arg(long, value_name = "DAYS")]
        lock_days: Option<u32>,
        /// Object Lock mode: governance (users with the bypass permission can still delete) or
        /// compliance (nobody can).
        #[arg(long, value_parser = ["governance", "compliance"], default_value = "governance", requires = "lock_days")]
        lock_mode: String,
    },
    /// Bring back objects deleted from an Object Lock (versioned) bucket, then repair the index.
    /// Use after an attack or a mistake; then run 'check --read-data'.
    Recover {
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
    /// Repair a damaged repository (after 'check' reported lost or damaged packs or index
    /// objects).
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Back up files, directories and block devices (a device given by path is backed up as a
    /// volume: its contents, with all-zero ranges recorded, not stored).
    Backup {
        /// Paths to back up (with --stdin-from-command: the command and its arguments).
        #[arg(required_unless_present_any = ["stdin", "stdin_from_command"])]
        paths: Vec<PathBuf>,
        /// Back up standard input, until it ends, as one file /NAME (--stdin-filename) instead of
        /// paths. A dump piped in that fails halfway is saved as far as it got: prefer
        /// --stdin-from-command.
        #[arg(long, conflicts_with_all = ["stdin_from_command", "changed_ranges"])]
        stdin: bool,
        /// Run the command given instead of paths (after '--') and back up its output as one file
        /// /NAME (--stdin-filename). When the command exits with an error, the backup fails and
        /// no snapshot is saved: 'lifeboat backup --stdin-from-command --stdin-filename db.sql --
        /// pg_dump mydb'.
        #[arg(long, conflicts_with = "changed_ranges")]
        stdin_from_command: bool,
        /// The name a stream is backed up as.
        #[arg(long, value_name = "NAME", default_value = "stdin")]
        stdin_filename: String,
        /// Read only these byte ranges of the one device or file given, reusing the parent
        /// snapshot's chunks elsewhere: one "OFFSET LENGTH" pair in bytes per line (what the CSI
        /// SnapshotMetadata service's GetMetadataDelta returns).
        #[arg(long, value_name = "FILE")]
        changed_ranges: Option<PathBuf>,
        /// How file and device data is cut: content-defined (cdc) or fixed 1 MiB blocks (fixed).
        #[arg(long, value_parser = ["cdc", "fixed"], default_value = "cdc")]
        chunking: String,
        /// Leave out entries whose absolute path matches PATTERN (repeatable; restic's syntax):
        /// '*' and '?' match within a path component, '**' across components; a pattern not
        /// starting with '/' matches at any depth ('*.log', 'node_modules', 'var/cache'). A
        /// matching directory is left out whole.
        #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
        excludes: Vec<String>,
        /// Like --exclude, ignoring case.
        #[arg(long = "iexclude", value_name = "PATTERN")]
        iexcludes: Vec<String>,
        /// Read --exclude patterns from FILE, one a line ('#' starts a comment line).
        #[arg(long = "exclude-file", value_name = "FILE")]
        exclude_files: Vec<PathBuf>,
        /// Read --iexclude patterns from FILE, one a line.
        #[arg(long = "iexclude-file", value_name = "FILE")]
        iexclude_files: Vec<PathBuf>,
        /// Leave out the contents of directories holding a file NAME (beginning with HEADER, when
        /// given), except that file (repeatable).
        #[arg(long = "exclude-if-present", value_name = "NAME[:HEADER]")]
        exclude_if_present: Vec<String>,
        /// Leave out the contents of cache directories marked with a CACHEDIR.TAG file
        /// (https://bford.info/cachedir/), except the tag.
        #[arg(long)]
        exclude_caches: bool,
        /// Leave out files larger than SIZE (bytes, or with a K, M, G or T suffix).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        exclude_larger_than: Option<u64>,
        /// Stay on the filesystems of the paths given: mount points below them are kept as empty
        /// directories.
        #[arg(short = 'x', long)]
        one_file_system: bool,
        /// Tag the snapshot with these comma-separated tags (repeatable).
        #[arg(long = "tag", value_name = "TAG[,TAG...]")]
        tags: Vec<String>,
        /// Record this host name instead of the machine's.
        #[arg(long)]
        host: Option<String>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Check every new blob before it is stored, as restic does by default: decompressed
        /// again, it must hash to its id, so a bit flipped in this machine's memory fails the
        /// backup instead of being stored. About a fifth more CPU time; worth it on machines
        /// without ECC memory.
        #[arg(long)]
        extra_verify: bool,
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the N newest snapshots of each host and set of paths.
        #[arg(long, value_name = "N")]
        latest: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the entries of a snapshot.
    Ls {
        /// Snapshot id prefix or `latest`.
        snapshot: String,
        /// Only this path and what is below it.
        path: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a directory, or a volume snapshot onto a block device.
    Restore {
        /// Snapshot id prefix or `latest`.
        snapshot: String,
        /// Directory to restore into (a backed-up `/a/b` lands at `TARGET/a/b`; a backed-up
        /// device becomes a sparse image file), or a block device to write the snapshot's volume
        /// onto (refused when the device is smaller, mounted or in use).
        #[arg(long)]
        target: PathBuf,
        /// The target device already reads as zeros (new, or discarded): skip the zero ranges.
        #[arg(long)]
        target_is_zeroed: bool,
        /// Read every restored file (or the device) back once written and check it against the
        /// snapshot, blob by blob.
        #[arg(long)]
        verify: bool,
        /// Leave every all-zero range of a file a hole, also those the source had allocated
        /// (written zeros, such as a database's preallocated log), which are otherwise allocated
        /// again.
        #[arg(long)]
        sparse: bool,
        /// Restore only this snapshot path, or what this pattern matches, with everything below it
        /// (repeatable; an absolute path without pattern characters must exist in the snapshot).
        #[arg(short = 'i', long, value_name = "PATH|PATTERN")]
        include: Vec<PathBuf>,
        /// Like --include, ignoring case (repeatable).
        #[arg(long, value_name = "PATTERN")]
        iinclude: Vec<String>,
        /// Read --include patterns from FILE, one a line.
        #[arg(long = "include-file", value_name = "FILE")]
        include_files: Vec<PathBuf>,
        /// Read --iinclude patterns from FILE, one a line.
        #[arg(long = "iinclude-file", value_name = "FILE")]
        iinclude_files: Vec<PathBuf>,
        /// Leave out what this pattern matches, included or not (repeatable; the patterns of
        /// backup --exclude).
        #[arg(short = 'e', long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Like --exclude, ignoring case (repeatable).
        #[arg(long, value_name = "PATTERN")]
        iexclude: Vec<String>,
        /// Read --exclude patterns from FILE, one a line.
        #[arg(long = "exclude-file", value_name = "FILE")]
        exclude_files: Vec<PathBuf>,
        /// Read --iexclude patterns from FILE, one a line.
        #[arg(long = "iexclude-file", value_name = "FILE")]
        iexclude_files: Vec<PathBuf>,
        /// Writer threads.
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show what changed between two snapshots: + added, - removed, M contents changed, T type
    /// changed, U metadata changed (with --metadata); then the entries, blobs and bytes each
    /// snapshot has that the other has not.
    Diff {
        /// The first snapshot (id prefix or `latest`).
        from: String,
        /// The second snapshot (id prefix or `latest`).
        to: String,
        /// Also show entries whose metadata alone changed (mode, owner, times, xattrs).
        #[arg(long)]
        metadata: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line: each change, then the statistics (restic's format).
        #[arg(long)]
        json: bool,
    },
    /// Count sizes over snapshots (default: all that the filters select). Modes, as restic's:
    /// restore-size (every entry, and the bytes a restore writes), files-by-contents (files of
    /// distinct contents), blobs-per-file (distinct blobs of each path, over files of distinct
    /// contents), raw-data (the blobs the snapshots use, each once: bytes stored, bytes
    /// uncompressed, compression).
    Stats {
        /// Snapshots by id prefix or "latest".
        snapshots: Vec<String>,
        /// Counting mode.
        #[arg(long, value_enum, default_value_t = StatsMode::RestoreSize)]
        mode: StatsMode,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object (restic's keys).
        #[arg(long)]
        json: bool,
    },
    /// Change the tags of snapshots (default: every snapshot the filters select). Each changed
    /// snapshot is written anew with its new tags, then the old one is deleted: its id changes,
    /// and the new one records the old id as `original`.
    Tag {
        /// Snapshots by id prefix or "latest".
        snapshots: Vec<String>,
        /// Add these comma-separated tags (repeatable).
        #[arg(long, value_name = "TAG[,TAG...]")]
        add: Vec<String>,
        /// Remove these comma-separated tags (repeatable).
        #[arg(long, value_name = "TAG[,TAG...]")]
        remove: Vec<String>,
        /// Replace the tags with these comma-separated tags (repeatable; "" removes every tag).
        #[arg(long, value_name = "TAG[,TAG...]", conflicts_with_all = ["add", "remove"])]
        set: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON line per changed snapshot, then a summary (restic's format).
        #[arg(long)]
        json: bool,
    },
    /// Find entries by path pattern, or by the blobs or pack holding their contents (which
    /// files a damaged pack or blob reported by 'check' affects), in every snapshot the filters
    /// select or those named.
    Find {
        /// Patterns, as restore's (`*.conf`, `/etc/**/x`); an entry matches any of them.
        patterns: Vec<String>,
        /// Only this snapshot (id prefix or "latest"; repeatable).
        #[arg(short = 's', long = "snapshot", value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
        /// Match the patterns ignoring case.
        #[arg(short = 'i', long)]
        ignore_case: bool,
        /// Entries whose contents include this blob (id or unique prefix; repeatable).
        #[arg(long, value_name = "ID")]
        blob: Vec<String>,
        /// Entries whose contents include a blob of this pack (id or unique prefix; repeatable).
        #[arg(long, value_name = "ID")]
        pack: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON array: per snapshot with matches, its id, hits and the matches as 'ls --json'
        /// shows entries.
        #[arg(long)]
        json: bool,
    },
    /// Write one file of a snapshot to standard output.
    Dump {
        /// Snapshot id prefix or `latest`.
        snapshot: String,
        /// Path of the file in the snapshot.
        path: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Verify the repository.
    Check {
        /// Also read and authenticate every byte of every pack.
        #[arg(long)]
        read_data: bool,
        /// Read only a subset of the packs: `n/t` (group n of t, by pack name: 1/7 … 7/7 on
        /// seven days read each pack once), `x%` or a size such as `500M` (packs at random).
        #[arg(long, value_name = "SUBSET", conflicts_with = "read_data")]
        read_data_subset: Option<lifeboat::ReadData>,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots by a retention policy (or by id); prune then deletes their data.
    /// Snapshots are grouped by host and paths; in each group the newest snapshot of each of the
    /// last N hours/days/weeks/months/years is kept (local time, ISO weeks).
    Forget {
        /// Snapshots to remove by id prefix (instead of, or besides, a policy).
        snapshots: Vec<String>,
        /// Keep the N newest snapshots.
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, value_name = "N")]
        keep_hourly: Option<u32>,
        /// ... of each of the last N days.
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        /// ... of each of the last N ISO weeks.
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u32>,
        /// ... of each of the last N months.
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u32>,
        /// ... of each of the last N years.
        #[arg(long, value_name = "N")]
        keep_yearly: Option<u32>,
        /// Keep every snapshot within this duration of the group's newest one (30d, 2w, 1y 6mo, 36h).
        #[arg(long, value_name = "DURATION")]
        keep_within: Option<String>,
        /// Keep every snapshot that has all of these comma-separated tags (repeatable: any of
        /// the lists).
        #[arg(long, value_name = "TAG[,TAG...]")]
        keep_tag: Vec<String>,
        /// Consider only the snapshots these select; the others are neither kept nor removed.
        #[command(flatten)]
        filter: FilterArgs,
        /// Group snapshots by these fields: any of host,paths,tags ("" for one group).
        #[arg(long, default_value = "host,paths")]
        group_by: String,
        /// Show what would be kept and removed, and why; remove nothing (with --prune: what
        /// prune would do too).
        #[arg(long)]
        dry_run: bool,
        /// Then run prune (its --grace and --repack-below apply).
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        prune_args: PruneArgs,
        /// Print the plan as JSON (with --prune, then prune's line).
        #[arg(long)]
        json: bool,
    },
    /// Delete data no snapshot uses and repack mostly-empty packs. Safe while backups run:
    /// unused packs are first recorded in a deletion plan and deleted by a later prune once the
    /// plan is older than the grace period (set it longer than your longest backup plus clock
    /// skew). One prune at a time (a lease that expires if its holder dies).
    Prune {
        #[command(flatten)]
        prune: PruneArgs,
        /// Report what would be planned and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
    /// Copy snapshots to another repository (offsite export), sending only the data it lacks.
    /// Running it again copies nothing new; an interrupted copy resumes.
    Copy {
        /// Snapshots to copy, by id prefix or "latest" (default: all that the filters select).
        snapshots: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Source repository (default: --repo), opened with --password-file, --key-file or
        /// LIFEBOAT_PASSWORD.
        #[arg(long, value_name = "REPO")]
        from: Option<String>,
        /// Target repository (initialize it first with 'lifeboat init').
        #[arg(long, value_name = "REPO")]
        to: String,
        /// Target password file (default: env LIFEBOAT_TO_PASSWORD).
        #[arg(long, conflicts_with = "to_key_file")]
        to_password_file: Option<PathBuf>,
        /// Target raw 32-byte key file.
        #[arg(long)]
        to_key_file: Option<PathBuf>,
        /// Check every blob stored in the target before it is sealed, as backup --extra-verify
        /// does.
        #[arg(long)]
        extra_verify: bool,
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
    /// Manage the keys that open the repository.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum RepairWhat {
    /// Rebuild the index from the packs that are stored: leave out packs that are lost or
    /// damaged, so the next backup stores their data again, and index packs no index object
    /// names from their own headers. Holds the prune lease.
    Index {
        /// Read every pack whole and verify every blob; copy the intact blobs of a damaged pack
        /// into new packs, then delete it (default: read only the headers of packs the index
        /// does not list right).
        #[arg(long)]
        read_all_packs: bool,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
    /// Write snapshots anew without the data that is lost: a file's lost ranges read as zeros,
    /// every other byte stays at its offset; a directory keeps the entries that can still be
    /// read. The new snapshot is tagged 'repaired'. Only for data the source no longer has:
    /// otherwise back up again, which stores it and heals every snapshot. Lost packs count as
    /// lost before 'repair index' too (and are repaired most exactly then); damaged packs only
    /// after 'repair index --read-all-packs'. Holds the prune lease.
    Snapshots {
        /// Snapshots to repair (default: every snapshot the filters select).
        snapshots: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Delete each damaged snapshot once its repaired copy is stored, and those that
        /// cannot be repaired (their root directory is lost).
        #[arg(long)]
        forget: bool,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON line with the result.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Add a key: a password (from --new-password-file or env LIFEBOAT_NEW_PASSWORD) or a key file.
    Add {
        /// File holding the new password.
        #[arg(long, conflicts_with = "new_key_file")]
        new_password_file: Option<PathBuf>,
        /// File holding a new raw 32-byte key.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// List keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by id prefix (the last key cannot be removed).
    Remove {
        /// Key id prefix.
        id: String,
    },
}

/// Exit code of a backup that completed without some unreadable entries.
const EXIT_PARTIAL: u8 = 3;

/// Log lines as the CLI's own: `lifeboat: warning: MESSAGE`.
struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => "note",
        };
        write!(writer, "lifeboat: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn main() -> ExitCode {
    // Before any thread starts: growing it later stalls the thread that opens a file.
    lifeboat::fsmeta::grow_descriptor_table();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first line, and where to look for more.
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("lifeboat: error: {first} (see 'lifeboat --help')");
            return ExitCode::from(2);
        }
    };
    let level = match cli.global.verbose {
        0 => format!("error,{}=warn", lifeboat::NOTICE),
        1 => "info".into(),
        _ => "debug".into(),
    };
    let chosen = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG").ok();
    // Without -v or LIFEBOAT_LOG, only errors and notices are logged: as the CLI's own lines.
    let plain = cli.global.verbose == 0 && chosen.is_none();
    let log = tracing_subscriber::fmt()
        .with_env_filter(chosen.unwrap_or_else(|| level.into()))
        .with_writer(std::io::stderr);
    if plain {
        log.event_format(Plain).init();
    } else {
        log.init();
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // `{:#}` joins the context chain into one line.
            eprintln!("lifeboat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The output of a command being backed up (`backup --stdin-from-command`). Its end is an error
/// when the command failed, so a dump that stopped halfway is never saved as a snapshot.
struct CommandOutput {
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    shown: String,
}

impl CommandOutput {
    fn start(argv: &[PathBuf]) -> Result<Self> {
        let Some((program, args)) = argv.split_first() else {
            bail!(
                "--stdin-from-command needs a command: lifeboat backup --stdin-from-command -- CMD ARGS"
            );
        };
        let shown = program.display().to_string();
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        let stdout = child.stdout.take().context("the command's output")?;
        Ok(Self {
            child,
            stdout,
            shown,
        })
    }
}

impl std::io::Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "{} failed ({status}): nothing is saved",
                    self.shown
                )));
            }
        }
        Ok(n)
    }
}

/// `--exclude-larger-than`: a size as restic takes it.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    lifeboat::units::parse_size(s)
        .ok_or_else(|| format!("'{s}' is not a size: bytes, or a number with K, M, G or T"))
}

fn location(g: &Global) -> Result<Location> {
    let Some(r) = &g.repo else {
        bail!("no repository given: use --repo or set LIFEBOAT_REPO")
    };
    parse_location(g, r)
}

/// A location, with the S3 endpoint and region flags applied.
fn parse_location(g: &Global, s: &str) -> Result<Location> {
    let mut loc = Location::parse(s)?;
    if let Location::S3(s3) = &mut loc {
        if let Some(e) = &g.s3_endpoint {
            s3.endpoint = Some(e.clone());
        }
        if let Some(r) = &g.s3_region {
            s3.region = Some(r.clone());
        }
    }
    Ok(loc)
}

fn store_options(g: &Global) -> StoreOptions {
    StoreOptions {
        max_requests: g.max_requests as usize,
        limit_upload: g.limit_upload,
        limit_download: g.limit_download,
        retries: g.retries as usize,
        cache_dir: cache_dir(g),
        ..StoreOptions::default()
    }
}

/// The cache of one `check` of a remote store: check verifies what the store holds, never the
/// cache of earlier runs, so it gets a fresh cache of its own (restic's check does the same) in
/// which each tree pack is fetched once and checked against its name, instead of one request
/// per tree: the toolchain's check on moto with 30 ms added to each request took 54.5 s before,
/// 0.7 s with it. It is deleted when dropped; those of checks killed more than a day ago are
/// deleted here. `None` for a local store, with `--no-cache`, or when it cannot be made.
fn check_cache(g: &Global, loc: &Location) -> Option<tempfile::TempDir> {
    const PREFIX: &str = "check-";
    let root = cache_dir(g).filter(|_| matches!(loc, Location::S3(_)))?;
    let stale = |e: &std::fs::DirEntry| {
        e.file_name().to_string_lossy().starts_with(PREFIX)
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 24 * 3600))
    };
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten().filter(stale) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&root)
        .and_then(|()| tempfile::Builder::new().prefix(PREFIX).tempdir_in(&root))
        .inspect_err(|e| tracing::warn!("check: no cache under {}: {e}", root.display()))
        .ok()
}

/// The repository with a fresh cache ([`check_cache`]), for commands that judge what the store
/// holds (`check`, `repair`); the cache lives as long as the second value.
fn open_uncached(g: &Global) -> Result<(Repository, Option<tempfile::TempDir>)> {
    let loc = location(g)?;
    let fresh = check_cache(g, &loc);
    let opts = StoreOptions {
        cache_dir: fresh.as_ref().map(|d| d.path().to_owned()),
        ..store_options(g)
    };
    Ok((Repository::open_with(&loc, &secret(g)?, &opts)?, fresh))
}

/// `--cache-dir`, else the user's cache directory; none with `--no-cache`.
fn cache_dir(g: &Global) -> Option<PathBuf> {
    if g.no_cache {
        return None;
    }
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    g.cache_dir.clone().or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .map(|d| d.join("lifeboat"))
    })
}

fn read_secret_file(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn password_from(bytes: Vec<u8>) -> Result<Secret> {
    // A password file usually ends with a newline that is not part of the password.
    let mut b = bytes;
    if b.last() == Some(&b'\n') {
        b.pop();
        if b.last() == Some(&b'\r') {
            b.pop();
        }
    }
    Ok(Secret::password(b)?)
}

/// The repository's secret: `--key-file`, `--password-file`, `--password-command` (or env
/// `LIFEBOAT_PASSWORD_COMMAND`), env `LIFEBOAT_PASSWORD`, or else typed at the terminal.
fn secret(g: &Global) -> Result<Secret> {
    secret_asking(g, "the repository", false)
}

/// [`secret`], asked twice at the terminal when `confirm` (a new repository).
fn secret_asking(g: &Global, what: &str, confirm: bool) -> Result<Secret> {
    if let Some(k) = &g.key_file {
        return Ok(Secret::key_file(&read_secret_file(k)?)?);
    }
    if let Some(p) = &g.password_file {
        return password_from(read_secret_file(p)?);
    }
    let command = g
        .password_command
        .clone()
        .or_else(|| std::env::var("LIFEBOAT_PASSWORD_COMMAND").ok());
    if let Some(c) = command.filter(|c| !c.trim().is_empty()) {
        return password_from_command(&c);
    }
    if let Some(p) = std::env::var_os("LIFEBOAT_PASSWORD") {
        use std::os::unix::ffi::OsStringExt;
        return Ok(Secret::password(p.into_vec())?);
    }
    match prompt_password(what, confirm)? {
        Some(s) => Ok(s),
        None => bail!(
            "no secret given: set LIFEBOAT_PASSWORD, or use --password-file, --password-command or --key-file"
        ),
    }
}

/// The output of `sh -c COMMAND` as a password (a final newline is not part of it). The command
/// is never shown: it may hold the secret itself.
fn password_from_command(command: &str) -> Result<Secret> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the password command")?;
    let stdout = zeroize::Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!("the password command failed ({})", out.status);
    }
    password_from(stdout.to_vec()).context("the password command's output")
}

/// A password typed at the terminal, with echo off; asked twice when `confirm`. `None` when
/// standard input is not a terminal (a pod, a pipe, a test), where nobody could answer.
fn prompt_password(what: &str, confirm: bool) -> Result<Option<Secret>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(zeroize::Zeroizing::new)
            .context("reading the password from the terminal")
    };
    let p = ask(&format!("enter the password for {what}: "))?;
    if confirm && *ask("enter the password again: ")? != *p {
        bail!("the passwords do not match");
    }
    Ok(Some(Secret::password(p.as_bytes().to_vec())?))
}

fn open(g: &Global) -> Result<Repository> {
    Ok(Repository::open_with(
        &location(g)?,
        &secret(g)?,
        &store_options(g),
    )?)
}

/// A spinner on stderr that shows `msg()` every 100 ms, only when stderr is a terminal.
struct Ticker {
    stop: std::sync::Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(msg: impl Fn() -> String + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let handle = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let pb = ProgressBar::new_spinner();
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                        .expect("valid template"),
                );
                while !stop.load(Ordering::Relaxed) {
                    pb.set_message(msg());
                    pb.tick();
                    std::thread::sleep(Duration::from_millis(100));
                }
                pb.finish_and_clear();
            })
        });
        Self { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Init {
            compression,
            pack_size_mib,
            lock_days,
            lock_mode,
        } => {
            let loc = location(g)?;
            let opts = InitOptions {
                compression,
                pack_size: pack_size_mib.saturating_mul(1 << 20),
                lock: lock_days.map(|days| LockConfig {
                    days,
                    mode: if lock_mode == "compliance" {
                        LockMode::Compliance
                    } else {
                        LockMode::Governance
                    },
                }),
                ..InitOptions::default()
            };
            let secret = secret_asking(g, "the new repository", true)?;
            let repo = Repository::init_with(&loc, &secret, &opts, &store_options(g))?;
            println!("created repository {} at {loc}", repo.config().id.short());
        }
        Command::Backup {
            paths,
            stdin,
            stdin_from_command,
            stdin_filename,
            changed_ranges,
            chunking,
            mut excludes,
            mut iexcludes,
            exclude_files,
            iexclude_files,
            exclude_if_present,
            exclude_caches,
            exclude_larger_than,
            one_file_system,
            tags,
            host,
            threads,
            extra_verify,
            json,
        } => {
            let changed_ranges = match &changed_ranges {
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    Some(
                        lifeboat::parse_changed_ranges(&text)
                            .with_context(|| f.display().to_string())?,
                    )
                }
                None => None,
            };
            let chunking = if chunking == "fixed" {
                Chunking::Fixed
            } else {
                Chunking::Cdc
            };
            add_pattern_files(&mut excludes, &exclude_files)?;
            add_pattern_files(&mut iexcludes, &iexclude_files)?;
            let exclude = ExcludeOptions {
                patterns: excludes,
                ipatterns: iexcludes,
                if_present: exclude_if_present,
                caches: exclude_caches,
                larger_than: exclude_larger_than,
                one_file_system,
            };
            exclude.check()?;
            if stdin && !paths.is_empty() {
                bail!("--stdin backs up standard input only: give no paths");
            }
            if stdin || stdin_from_command {
                lifeboat::check_stream_name(&stdin_filename)?;
            }
            let mut repo = open(g)?;
            repo.load_index_for_writing()?;
            let progress = std::sync::Arc::new(Progress::default());
            let p = progress.clone();
            let ticker = Ticker::start(move || {
                format!(
                    "{} files, {} read, {} added",
                    p.files.load(Ordering::Relaxed),
                    HumanBytes(p.bytes_read.load(Ordering::Relaxed)),
                    HumanBytes(p.bytes_added.load(Ordering::Relaxed))
                )
            });
            let mut tags: Vec<String> = tags.iter().flat_map(|t| parse_tag_list(t)).collect();
            let mut seen = std::collections::HashSet::new();
            tags.retain(|t| seen.insert(t.clone()));
            let opts = BackupOptions {
                tags,
                host,
                threads,
                chunking,
                changed_ranges,
                exclude,
                extra_verify,
            };
            let out = if stdin {
                let mut input = std::fs::File::from(
                    std::os::fd::AsFd::as_fd(&std::io::stdin())
                        .try_clone_to_owned()
                        .context("standard input")?,
                );
                lifeboat::backup_stream(&repo, &stdin_filename, &mut input, &opts, &progress)
            } else if stdin_from_command {
                let mut output = CommandOutput::start(&paths)?;
                lifeboat::backup_stream(&repo, &stdin_filename, &mut output, &opts, &progress)
            } else {
                lifeboat::backup(&repo, &paths, &opts, &progress)
            };
            drop(ticker);
            let out = out?;
            for n in &out.notices {
                eprintln!("lifeboat: note: {n}");
            }
            for w in &out.warnings {
                eprintln!("lifeboat: warning: {w}");
            }
            let s = &out.snapshot.summary;
            if json {
                let line = json!({
                    "snapshot": out.id.to_hex(),
                    "parent": out.snapshot.parent.map(|p| p.to_hex()),
                    "files": s.files,
                    "dirs": s.dirs,
                    "others": s.others,
                    "files_new": s.files_new,
                    "files_changed": s.files_changed,
                    "files_unmodified": s.files_unmodified,
                    "bytes_read": s.bytes_read,
                    "bytes_total": s.bytes_total,
                    "bytes_added": s.bytes_added,
                    "blobs_added": s.blobs_added,
                    "warnings": s.warnings,
                    "duration_s": s.duration_s,
                });
                println!("{line}");
            } else {
                println!("snapshot {} saved", out.id.short());
                println!(
                    "files: {} new, {} changed, {} unmodified; {} dirs, {} other entries",
                    s.files_new, s.files_changed, s.files_unmodified, s.dirs, s.others
                );
                println!(
                    "read {} of {}, added {} to the repository in {:.2}s",
                    HumanBytes(s.bytes_read),
                    HumanBytes(s.bytes_total),
                    HumanBytes(s.bytes_added),
                    s.duration_s
                );
            }
            if !out.warnings.is_empty() {
                eprintln!(
                    "lifeboat: {} entries could not be read; the snapshot does not contain them",
                    out.warnings.len()
                );
                return Ok(EXIT_PARTIAL);
            }
        }
        Command::Snapshots {
            filter,
            latest,
            json,
        } => {
            let filter = filter.filter()?;
            let repo = open(g)?;
            let mut snaps = readable_snapshots(&repo, &filter)?;
            if let Some(n) = latest {
                snaps = newest_of_each_group(snaps, n);
            }
            if json {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|(id, s)| {
                        json!({"id": id.to_hex(), "short_id": id.short(), "time": s.time.to_string(), "host": s.host,
                               "paths": s.paths, "tags": s.tags, "parent": s.parent.map(|p| p.to_hex()),
                               "original": s.original.map(|o| o.to_hex()), "summary": s.summary})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<8}  {:<25}  {:<16}  {:<16}  paths",
                    "id", "time", "host", "tags"
                );
                for (id, s) in &snaps {
                    let t = s.time.round(jiff::Unit::Second).unwrap_or(s.time);
                    println!(
                        "{:<8}  {:<25}  {:<16}  {:<16}  {}",
                        id.short(),
                        t.to_string(),
                        s.host,
                        s.tags.join(","),
                        s.paths.join(" ")
                    );
                }
                println!("{} snapshots", snaps.len());
            }
        }
        Command::Ls {
            snapshot,
            path,
            filter,
            json,
        } => {
            let (repo, _, snap) = open_at(g, &snapshot, &filter)?;
            let base = path.unwrap_or_else(|| PathBuf::from("/"));
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match lifeboat::find_node(&repo, &snap, &base)? {
                None => ls_tree(&repo, &snap.tree, "", json, &mut out)?,
                Some(node) => {
                    let p = base.to_string_lossy().trim_end_matches('/').to_string();
                    ls_print(&node, &p, json, &mut out)?;
                    if node.kind() == NodeKind::Dir {
                        ls_tree(&repo, &node.subtree, &p, json, &mut out)?;
                    }
                }
            }
            std::io::Write::flush(&mut out)?;
        }
        Command::Restore {
            snapshot,
            target,
            target_is_zeroed,
            verify,
            sparse,
            mut include,
            mut iinclude,
            include_files,
            iinclude_files,
            mut exclude,
            mut iexclude,
            exclude_files,
            iexclude_files,
            threads,
            filter,
        } => {
            let mut patterns = Vec::new();
            add_pattern_files(&mut patterns, &include_files)?;
            include.extend(patterns.into_iter().map(PathBuf::from));
            add_pattern_files(&mut iinclude, &iinclude_files)?;
            add_pattern_files(&mut exclude, &exclude_files)?;
            add_pattern_files(&mut iexclude, &iexclude_files)?;
            let opts = RestoreOptions {
                include,
                iinclude,
                exclude,
                iexclude,
                threads,
                target_is_zeroed,
                verify,
                sparse,
            };
            opts.check()?;
            let (repo, id, snap) = open_at(g, &snapshot, &filter)?;
            let progress = std::sync::Arc::new(RestoreProgress::default());
            let p = progress.clone();
            let total = snap.summary.bytes_total;
            let ticker = Ticker::start(move || {
                format!(
                    "{} of {} restored",
                    HumanBytes(p.bytes.load(Ordering::Relaxed)),
                    HumanBytes(total)
                )
            });
            let out = lifeboat::restore(&repo, &snap, &target, &opts, &progress);
            drop(ticker);
            let out = out?;
            for w in &out.warnings {
                eprintln!("lifeboat: warning: {w}");
            }
            println!(
                "restored snapshot {} to {}: {} files, {} dirs, {} other entries, {}",
                id.short(),
                target.display(),
                out.files,
                out.dirs,
                out.others,
                HumanBytes(progress.bytes.load(Ordering::Relaxed))
            );
            if verify {
                println!(
                    "verified {} files ({} read back)",
                    out.files_verified,
                    HumanBytes(out.bytes_verified)
                );
                for m in &out.mismatches {
                    eprintln!("lifeboat: damaged: {m}");
                }
                if !out.mismatches.is_empty() {
                    bail!(
                        "{} restored files differ from the snapshot: the target's storage, or this machine's memory, wrote or read them wrong",
                        out.mismatches.len()
                    );
                }
            }
        }
        Command::Diff {
            from,
            to,
            metadata,
            filter,
            json,
        } => {
            let (repo, a_id, a) = open_at(g, &from, &filter)?;
            let (b_id, b) = repo.find_snapshot_in(&to, &filter.filter()?)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if !json {
                writeln!(
                    out,
                    "comparing snapshot {} to {}:\n",
                    a_id.short(),
                    b_id.short()
                )?;
            }
            let stats = lifeboat::diff::diff(&repo, &a, &b, metadata, |path, modifier| {
                let r = if json {
                    writeln!(
                        out,
                        "{}",
                        json!({"message_type": "change", "path": path, "modifier": modifier})
                    )
                } else {
                    writeln!(out, "{modifier:<5}{path}")
                };
                r.map_err(|e| lifeboat::Error::new(lifeboat::ErrorKind::Io, e.to_string()))
            })?;
            if json {
                let mut v = serde_json::to_value(&stats)?;
                v["message_type"] = json!("statistics");
                v["source_snapshot"] = json!(a_id.to_hex());
                v["target_snapshot"] = json!(b_id.to_hex());
                writeln!(out, "{v}")?;
            } else {
                let (ad, rm) = (&stats.added, &stats.removed);
                writeln!(out)?;
                writeln!(
                    out,
                    "Files:      {:>6} new, {:>6} removed, {:>6} changed",
                    ad.files, rm.files, stats.changed_files
                )?;
                for (what, a, r) in [
                    ("Dirs:", ad.dirs, rm.dirs),
                    ("Others:", ad.others, rm.others),
                    ("Data blobs:", ad.data_blobs, rm.data_blobs),
                    ("Tree blobs:", ad.tree_blobs, rm.tree_blobs),
                ] {
                    writeln!(out, "{what:<12}{a:>6} new, {r:>6} removed")?;
                }
                writeln!(out, "Added:      {}", HumanBytes(ad.bytes))?;
                writeln!(out, "Removed:    {}", HumanBytes(rm.bytes))?;
            }
            out.flush()?;
        }
        Command::Stats {
            snapshots,
            mode,
            filter,
            json,
        } => {
            let mut repo = open(g)?;
            repo.load_index()?;
            let snaps: Vec<_> = select_snapshots(&repo, &snapshots, &filter)?
                .into_iter()
                .map(|s| s.1)
                .collect();
            let st = lifeboat::stats::stats(&repo, &snaps, mode.into())?;
            if json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                let name = clap::ValueEnum::to_possible_value(&mode).expect("no mode is hidden");
                println!("Stats in {} mode:", name.get_name());
                println!("     Snapshots processed:  {}", st.snapshots_count);
                let lines = [
                    (
                        "Total Blob Count",
                        st.total_blob_count.map(|n| n.to_string()),
                    ),
                    (
                        "Total File Count",
                        st.total_file_count.map(|n| n.to_string()),
                    ),
                    (
                        "Total Uncompressed Size",
                        st.total_uncompressed_size
                            .map(|n| HumanBytes(n).to_string()),
                    ),
                    ("Total Size", Some(HumanBytes(st.total_size).to_string())),
                    (
                        "Compression Progress",
                        st.compression_progress.map(|p| format!("{p:.2}%")),
                    ),
                    (
                        "Compression Ratio",
                        st.compression_ratio.map(|r| format!("{r:.2}x")),
                    ),
                    (
                        "Compression Space Saving",
                        st.compression_space_saving.map(|p| format!("{p:.2}%")),
                    ),
                ];
                for (label, value) in lines {
                    if let Some(v) = value {
                        println!("{label:>24}:  {v}");
                    }
                }
            }
        }
        Command::Tag {
            snapshots,
            add,
            remove,
            set,
            filter,
            json,
        } => {
            let lists = |v: &[String]| v.iter().flat_map(|t| parse_tag_list(t)).collect();
            let change = lifeboat::TagChange {
                set: (!set.is_empty()).then(|| lists(&set)),
                add: lists(&add),
                remove: lists(&remove),
            };
            if change.set.is_none() && add.is_empty() && remove.is_empty() {
                bail!("nothing to do: give --add, --remove or --set");
            }
            let repo = open(g)?;
            let mut changed = 0;
            for (old, mut snap) in select_snapshots(&repo, &snapshots, &filter)? {
                let tags = change.apply(&snap.tags);
                if tags == snap.tags {
                    continue;
                }
                snap.tags = tags;
                snap.original = snap.original.or(Some(old));
                let new = repo.replace_snapshot(&old, &snap)?;
                changed += 1;
                if json {
                    println!(
                        "{}",
                        json!({"message_type": "changed", "old_snapshot_id": old.to_hex(), "new_snapshot_id": new.to_hex()})
                    );
                } else {
                    println!("old snapshot {} is now {}", old.short(), new.short());
                }
            }
            if json {
                println!(
                    "{}",
                    json!({"message_type": "summary", "changed_snapshots": changed})
                );
            } else if changed == 0 {
                println!("no snapshots were modified");
            } else {
                println!("modified {changed} snapshots");
            }
        }
        Command::Find {
            patterns,
            snapshots,
            ignore_case,
            blob,
            pack,
            filter,
            json,
        } => {
            if patterns.is_empty() && blob.is_empty() && pack.is_empty() {
                bail!("nothing to find: give a PATTERN, --blob or --pack");
            }
            let (pats, ipats) = if ignore_case {
                (Vec::new(), patterns)
            } else {
                (patterns, Vec::new())
            };
            let mut query = lifeboat::find::Query {
                patterns: lifeboat::pattern::Patterns::new(&pats, &ipats, "pattern")?,
                ..Default::default()
            };
            let mut repo = open(g)?;
            repo.load_index()?;
            for b in &blob {
                query.add_blob(&repo, b)?;
            }
            for p in &pack {
                query.add_pack(&repo, p)?;
            }
            let snaps = select_snapshots(&repo, &snapshots, &filter)?;
            let mut finder = lifeboat::find::Finder::new(&repo, query);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            if json {
                write!(out, "[")?;
            }
            for (id, snap) in &snaps {
                let (mut paths, mut entries) = (Vec::new(), Vec::new());
                let hits = finder.find(snap, &mut |path, node| {
                    if json {
                        entries.push(node_json(node, path));
                    } else {
                        paths.push(path.to_owned());
                    }
                    Ok(())
                })?;
                if hits == 0 {
                    continue;
                }
                if json {
                    let v = json!({"snapshot": id.to_hex(), "hits": hits, "matches": entries});
                    write!(out, "{}{v}", if first { "" } else { "," })?;
                } else {
                    if !first {
                        writeln!(out)?;
                    }
                    let t = snap.time.round(jiff::Unit::Second).unwrap_or(snap.time);
                    writeln!(
                        out,
                        "Found matching entries in snapshot {} from {t}",
                        id.short()
                    )?;
                    for p in &paths {
                        writeln!(out, "{p}")?;
                    }
                }
                first = false;
            }
            if json {
                writeln!(out, "]")?;
            }
            out.flush()?;
        }
        Command::Dump {
            snapshot,
            path,
            filter,
        } => {
            let (repo, _, snap) = open_at(g, &snapshot, &filter)?;
            let Some(node) = lifeboat::find_node(&repo, &snap, &path)? else {
                bail!("{} is a directory", path.display())
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            lifeboat::dump(&repo, &node, &mut out)?;
        }
        Command::Check {
            read_data,
            read_data_subset,
            json,
        } => {
            let read = match (read_data, read_data_subset) {
                (_, Some(subset)) => subset,
                (true, None) => lifeboat::ReadData::All,
                (false, None) => lifeboat::ReadData::None,
            };
            let (mut repo, _fresh) = open_uncached(g)?;
            let progress = std::sync::Arc::new(CheckProgress::default());
            let p = progress.clone();
            let ticker = Ticker::start(move || {
                format!("{} packs read", p.packs_read.load(Ordering::Relaxed))
            });
            let rep = lifeboat::check(&mut repo, read, &progress);
            drop(ticker);
            let rep = rep?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "snapshots": rep.snapshots,
                        "packs": rep.packs,
                        "blobs": rep.blobs,
                        "unindexed_packs": rep.unindexed_packs,
                        "damaged_packs": rep.damaged_packs,
                        "packs_read": rep.packs_read,
                        "bytes_read": rep.bytes_read,
                        "errors": rep.errors,
                        "misread": rep.misread,
                        "unsupported": rep.unsupported,
                    })
                );
            } else {
                println!(
                    "checked {} snapshots, {} packs, {} blobs{}",
                    rep.snapshots,
                    rep.packs,
                    rep.blobs,
                    if read == lifeboat::ReadData::None {
                        String::new()
                    } else {
                        format!(
                            ", read {} packs ({:.1} MiB)",
                            rep.packs_read,
                            rep.bytes_read as f64 / f64::from(1 << 20)
                        )
                    }
                );
                if rep.unindexed_packs > 0 {
                    println!(
                        "{} packs are not indexed (left by an interrupted backup, or by repair index as damaged; prune deletes the first and moves the others to damaged/)",
                        rep.unindexed_packs
                    );
                }
                if rep.damaged_packs > 0 {
                    println!(
                        "{} damaged packs that repair index or prune took out of use are kept under damaged/ (no restore reads them; delete them there once no one needs them)",
                        rep.damaged_packs
                    );
                }
            }
            if !rep.errors.is_empty() || !rep.unsupported.is_empty() || !rep.misread.is_empty() {
                for e in &rep.errors {
                    eprintln!("lifeboat: damaged: {e}");
                }
                for e in &rep.misread {
                    eprintln!("lifeboat: misread: {e}");
                }
                for e in &rep.unsupported {
                    eprintln!("lifeboat: not checked: {e}");
                }
                let any = |p: &str| rep.errors.iter().any(|e| e.starts_with(p));
                let mut what = Vec::new();
                if any("data/") || any("index/") {
                    what.push(format!(
                        "'lifeboat repair index{}' takes lost or damaged packs and index objects out of the index, and the next backup stores their data again",
                        if read == lifeboat::ReadData::None {
                            ""
                        } else {
                            " --read-all-packs"
                        }
                    ));
                } else if any("snapshot ") {
                    what.push(
                        "backing up those snapshots' sources again stores the lost data; 'lifeboat repair snapshots' keeps what is left of those whose source is gone"
                            .to_owned(),
                    );
                }
                if any("snapshots/") {
                    what.push("'lifeboat forget ID' removes a damaged snapshot object".to_owned());
                }
                if !rep.misread.is_empty() {
                    what.push("the packs read wrong once are sound, but this machine or its path to the storage gave wrong bytes: test its memory (memtest86+) and that path before trusting a backup or restore made here".to_owned());
                }
                if !rep.unsupported.is_empty() {
                    what.push("a newer Lifeboat wrote the snapshots not checked: check them with it, and do not forget them (they are not damaged)".to_owned());
                }
                let n = match rep.errors.len() + rep.unsupported.len() + rep.misread.len() {
                    1 => "1 problem".to_owned(),
                    n => format!("{n} problems"),
                };
                if what.is_empty() {
                    bail!("the repository has {n}");
                }
                bail!("the repository has {n}; {}", what.join("; "));
            }
            if !json {
                println!("no errors found");
            }
        }
        Command::Key { action } => key(g, action)?,
        Command::Recover { json } => {
            let r = lifeboat::recover::recover(&location(g)?, &secret(g)?, &store_options(g))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "restored {} deleted objects; {} deleted objects have no version left",
                    r.objects_restored, r.objects_lost
                );
                println!(
                    "repaired {} index objects that named {} packs which are gone",
                    r.index_repaired, r.packs_missing
                );
                println!(
                    "{} snapshots; run 'lifeboat check --read-data' to verify them",
                    r.snapshots
                );
            }
        }
        Command::Repair {
            what:
                RepairWhat::Index {
                    read_all_packs,
                    dry_run,
                    json,
                },
        } => {
            let opts = lifeboat::repair::RepairOptions {
                read_all_packs,
                dry_run,
                ..Default::default()
            };
            // What the store holds is judged, not the cache of earlier runs.
            let (repo, _fresh) = open_uncached(g)?;
            repair_index_cmd(&repo, &opts, json)?;
        }
        Command::Repair {
            what:
                RepairWhat::Snapshots {
                    snapshots,
                    filter,
                    forget,
                    dry_run,
                    json,
                },
        } => {
            let opts = lifeboat::repair::snapshots::SnapshotsOptions {
                forget,
                dry_run,
                ..Default::default()
            };
            let mut repo = open(g)?;
            let snaps = select_snapshots(&repo, &snapshots, &filter)?;
            repair_snapshots_cmd(&mut repo, &snaps, &opts, json)?;
        }
        Command::Copy {
            snapshots,
            filter,
            from,
            to,
            to_password_file,
            to_key_file,
            extra_verify,
            json,
        } => {
            let from = match from.as_deref().or(g.repo.as_deref()) {
                Some(f) => parse_location(g, f)?,
                None => bail!("no source repository given: use --from or --repo"),
            };
            let to_secret = if let Some(k) = &to_key_file {
                Secret::key_file(&read_secret_file(k)?)?
            } else if let Some(p) = &to_password_file {
                password_from(read_secret_file(p)?)?
            } else if let Some(p) = std::env::var_os("LIFEBOAT_TO_PASSWORD") {
                use std::os::unix::ffi::OsStringExt;
                Secret::password(p.into_vec())?
            } else if let Some(s) = prompt_password("the target repository", false)? {
                s
            } else {
                bail!(
                    "no target secret given: use --to-password-file, --to-key-file or env LIFEBOAT_TO_PASSWORD"
                );
            };
            let mut src = Repository::open_with(&from, &secret(g)?, &store_options(g))
                .context("opening the source")?;
            let mut dst =
                Repository::open_with(&parse_location(g, &to)?, &to_secret, &store_options(g))
                    .context("opening the target")?;
            src.load_index()?;
            dst.load_index_for_writing()?;
            let ids: Vec<_> = if snapshots.is_empty() && filter.filter()?.is_empty() {
                Vec::new() // all of them
            } else {
                select_snapshots(&src, &snapshots, &filter)?
                    .into_iter()
                    .map(|s| s.0)
                    .collect()
            };
            let opts = lifeboat::copy::CopyOptions { extra_verify };
            let r = lifeboat::copy::copy(&src, &dst, &ids, &opts)?;
            if json {
                let line = json!({
                    "snapshots_copied": r.snapshots_copied,
                    "snapshots_skipped": r.snapshots_skipped,
                    "bytes_transferred": r.bytes_transferred,
                    "blobs_transferred": r.blobs_transferred,
                    "bytes_read": r.bytes_read,
                    "copied": r.copied.iter().map(|(s, t)| json!({"source": s.to_hex(), "target": t.to_hex()})).collect::<Vec<_>>(),
                    "damaged": r.damaged.iter().map(|(s, _)| s.to_hex()).collect::<Vec<_>>(),
                });
                println!("{line}");
            } else {
                for (s, t) in &r.copied {
                    println!("copied snapshot {} as {}", s.short(), t.short());
                }
                println!(
                    "{} snapshots copied, {} already there; sent {} ({} blobs)",
                    r.snapshots_copied,
                    r.snapshots_skipped,
                    HumanBytes(r.bytes_transferred),
                    r.blobs_transferred
                );
            }
            for (id, e) in &r.damaged {
                eprintln!(
                    "lifeboat: warning: source snapshot {} cannot be read and was not copied ({e})",
                    id.short()
                );
            }
            if !r.damaged.is_empty() {
                return Ok(EXIT_PARTIAL);
            }
        }
        Command::Prune {
            prune,
            dry_run,
            json,
        } => {
            let opts = prune.options(dry_run)?;
            prune_cmd(&mut open(g)?, &opts, json)?;
        }
        Command::Forget {
            snapshots,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_tag,
            filter,
            group_by,
            dry_run,
            prune,
            prune_args,
            json,
        } => {
            let policy = forget::Policy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
                within: keep_within.as_deref().map(forget::parse_span).transpose()?,
                tags: keep_tag.iter().map(|t| parse_tag_list(t)).collect(),
            };
            let group_by = forget::GroupBy::parse(&group_by)?;
            let filter = filter.filter()?;
            // Checked before anything is removed.
            let prune = prune.then(|| prune_args.options(dry_run)).transpose()?;
            let mut repo = open(g)?;
            forget_cmd(&repo, &snapshots, &filter, &policy, group_by, dry_run, json)?;
            if let Some(opts) = prune {
                prune_cmd(&mut repo, &opts, json)?;
            }
        }
    }
    Ok(0)
}

/// The repository, its index loaded, and the snapshot `spec` names (`latest` as `filter` has it).
fn open_at(
    g: &Global,
    spec: &str,
    filter: &FilterArgs,
) -> Result<(Repository, lifeboat::Id, Snapshot)> {
    let filter = filter.filter()?;
    let mut repo = open(g)?;
    repo.load_index()?;
    let (id, snap) = repo.find_snapshot_in(spec, &filter)?;
    Ok((repo, id, snap))
}

/// Add the patterns of each of `files` (one a line; blank lines and `#` comments skipped,
/// environment variables expanded).
fn add_pattern_files(into: &mut Vec<String>, files: &[PathBuf]) -> Result<()> {
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        into.extend(
            lifeboat::pattern::patterns_in(&text).with_context(|| f.display().to_string())?,
        );
    }
    Ok(())
}

impl PruneArgs {
    fn options(&self, dry_run: bool) -> Result<lifeboat::prune::PruneOptions> {
        let span =
            forget::parse_span(&self.grace).with_context(|| format!("--grace {}", self.grace))?;
        let grace = jiff::SignedDuration::try_from(span)
            .or_else(|_| {
                span.to_duration(
                    jiff::Timestamp::now()
                        .to_zoned(jiff::tz::TimeZone::UTC)
                        .date(),
                )
            })
            .with_context(|| format!("--grace {}", self.grace))?;
        let repack_below = self.repack_below;
        if !(0.0..=100.0).contains(&repack_below) {
            bail!("--repack-below {repack_below}: give a percentage from 0 to 100");
        }
        Ok(lifeboat::prune::PruneOptions {
            grace,
            repack_below: repack_below / 100.0,
            dry_run,
            ..Default::default()
        })
    }
}

fn prune_cmd(
    repo: &mut Repository,
    opts: &lifeboat::prune::PruneOptions,
    json: bool,
) -> Result<()> {
    let dry_run = opts.dry_run;
    let r = lifeboat::prune::prune(repo, opts)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{} snapshots use {} blobs", r.snapshots, r.blobs_used);
        println!(
            "{}planned {} packs ({}) for deletion, {} of them repacked ({} blobs copied)",
            if dry_run { "would have " } else { "" },
            r.packs_planned,
            HumanBytes(r.bytes_planned),
            r.packs_repacked,
            r.blobs_repacked
        );
        println!(
            "{}deleted {} packs ({}) from plans past the grace period; {} kept because new snapshots use them; {} under retention",
            if dry_run { "would have " } else { "" },
            r.packs_deleted,
            HumanBytes(r.bytes_deleted),
            r.packs_rescued,
            r.packs_locked
        );
        if r.packs_set_aside > 0 {
            println!(
                "{} unindexed packs are damaged (their header does not open): {}moved to damaged/, not deleted",
                r.packs_set_aside,
                if dry_run { "would be " } else { "" }
            );
        }
        println!(
            "{} deletion plans waiting for their grace period",
            r.plans_waiting
        );
    }
    Ok(())
}

fn repair_snapshots_cmd(
    repo: &mut Repository,
    snaps: &[(lifeboat::Id, Snapshot)],
    opts: &lifeboat::repair::snapshots::SnapshotsOptions,
    json: bool,
) -> Result<()> {
    let progress = std::sync::Arc::new(lifeboat::repair::snapshots::SnapshotsProgress::default());
    let p = progress.clone();
    let total = snaps.len();
    let ticker = Ticker::start(move || {
        format!(
            "{} of {total} snapshots, {} directories",
            p.snapshots.load(Ordering::Relaxed),
            p.dirs.load(Ordering::Relaxed)
        )
    });
    let r = lifeboat::repair::snapshots::repair_snapshots(repo, snaps, opts, &progress);
    drop(ticker);
    let r = r?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let short = |hex: &str| hex[..8.min(hex.len())].to_owned();
    for p in &r.problems {
        println!("snapshot {}: {}: {}", short(&p.snapshot), p.path, p.problem);
    }
    let would = if opts.dry_run { "would be " } else { "" };
    for w in &r.rewritten {
        let old = short(&w.old);
        let line = match &w.new {
            Some(new) if w.forgotten => {
                format!("snapshot {old} is repaired as {} and forgotten", short(new))
            }
            Some(new) => format!("snapshot {old} is repaired as {}", short(new)),
            None if w.unrepairable && w.forgotten => {
                format!("snapshot {old} cannot be repaired: forgotten")
            }
            None if w.unrepairable && opts.forget => {
                format!("snapshot {old} cannot be repaired: {would}forgotten")
            }
            None if w.unrepairable => {
                format!("snapshot {old} cannot be repaired: forget it ('lifeboat forget {old}')")
            }
            None if opts.forget => format!("snapshot {old} {would}repaired and forgotten"),
            None => format!("snapshot {old} {would}repaired"),
        };
        println!("{line}");
    }
    if r.rewritten.is_empty() {
        println!(
            "examined {} snapshots: nothing is lost in them",
            r.snapshots
        );
    } else {
        println!(
            "examined {} snapshots: {} {}repaired ({} files with {} lost, {} directories), {} cannot be repaired",
            r.snapshots,
            r.snapshots_repaired,
            would,
            r.files_repaired,
            HumanBytes(r.bytes_zeroed),
            r.dirs_repaired,
            r.snapshots_unrepairable
        );
    }
    if r.packs_lost > 0 {
        println!(
            "{} packs the index names are lost: run 'lifeboat repair index' next, so that no backup builds on them",
            r.packs_lost
        );
    }
    if !opts.forget && !opts.dry_run && r.snapshots_repaired > 0 {
        println!(
            "the damaged snapshots are kept: forget them once the repaired ones restore as expected, or run again with --forget"
        );
    }
    Ok(())
}

fn repair_index_cmd(
    repo: &Repository,
    opts: &lifeboat::repair::RepairOptions,
    json: bool,
) -> Result<()> {
    let progress = std::sync::Arc::new(lifeboat::repair::RepairProgress::default());
    let p = progress.clone();
    let ticker =
        Ticker::start(move || format!("{} packs read", p.packs_read.load(Ordering::Relaxed)));
    let r = lifeboat::repair::repair_index(repo, opts, &progress);
    drop(ticker);
    let r = r?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    for p in &r.problems {
        println!("{}: {}", p.object, p.problem);
    }
    let would = if opts.dry_run { "would have " } else { "" };
    println!(
        "read {} packs: {} indexed from their headers, {} missing, {} damaged ({} intact blobs {} out of them{})",
        r.packs_read,
        r.packs_indexed,
        r.packs_missing,
        r.packs_damaged,
        r.blobs_salvaged,
        if opts.dry_run { "to copy" } else { "copied" },
        match (r.packs_set_aside, opts.dry_run) {
            (0, _) => String::new(),
            (n, true) => format!(", {n} to move to damaged/ then"),
            (n, false) => format!(", {n} moved to damaged/ then"),
        }
    );
    println!(
        "{would}replaced {} of {} index objects ({} damaged) with {}; {} packs indexed",
        r.index_objects_replaced,
        r.index_objects,
        r.index_objects_damaged,
        r.index_objects_written,
        r.packs
    );
    if r.packs_set_aside > 0 && !opts.dry_run {
        println!(
            "damaged packs are kept under damaged/ in the repository, where no restore reads them: delete them there once no one needs them"
        );
    }
    if r.blobs_lost > 0 {
        println!(
            "{} blobs are in no pack {}: back up their sources again to store them anew, or forget the snapshots that use them ('lifeboat check' names them)",
            r.blobs_lost,
            if opts.dry_run {
                "(after the repair)"
            } else {
                "now"
            }
        );
    }
    Ok(())
}

/// The readable snapshots `filter` selects, oldest first; each damaged snapshot gets a warning
/// line, which says how to remove it.
fn readable_snapshots(
    repo: &Repository,
    filter: &SnapshotFilter,
) -> Result<Vec<(lifeboat::Id, Snapshot)>> {
    let lifeboat::SnapshotList {
        readable: mut all,
        damaged,
    } = repo.snapshots_readable()?;
    for (id, e) in &damaged {
        if e.kind() == lifeboat::ErrorKind::Unsupported {
            eprintln!(
                "lifeboat: warning: snapshot {} is left out: this version cannot read it ({e}); upgrade Lifeboat to use it, and do not forget it",
                id.short()
            );
        } else {
            eprintln!(
                "lifeboat: warning: snapshot {} is damaged and left out ({e}); 'lifeboat forget {}' removes it",
                id.short(),
                id.short()
            );
        }
    }
    all.retain(|(_, s)| filter.matches(s));
    Ok(all)
}

/// The snapshots named by `specs` (ids whatever the filters say, `latest` under them), each once;
/// with no names, every snapshot the filters select (oldest first), at least one when they are
/// given.
fn select_snapshots(
    repo: &Repository,
    specs: &[String],
    filter: &FilterArgs,
) -> Result<Vec<(lifeboat::Id, Snapshot)>> {
    let filter = filter.filter()?;
    if specs.is_empty() {
        let all = readable_snapshots(repo, &filter)?;
        if all.is_empty() && !filter.is_empty() {
            bail!("no snapshot matches {}", filter.describe());
        }
        return Ok(all);
    }
    let mut out: Vec<(lifeboat::Id, Snapshot)> = Vec::new();
    for spec in specs {
        let (id, s) = repo.find_snapshot_in(spec, &filter)?;
        if !out.iter().any(|o| o.0 == id) {
            out.push((id, s));
        }
    }
    Ok(out)
}

/// `stats --mode`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StatsMode {
    RestoreSize,
    FilesByContents,
    BlobsPerFile,
    RawData,
}

impl From<StatsMode> for lifeboat::stats::Mode {
    fn from(m: StatsMode) -> Self {
        match m {
            StatsMode::RestoreSize => Self::RestoreSize,
            StatsMode::FilesByContents => Self::FilesByContents,
            StatsMode::BlobsPerFile => Self::BlobsPerFile,
            StatsMode::RawData => Self::RawData,
        }
    }
}

/// The `n` newest of `snaps` (oldest first) in each group of host and paths, in their order.
fn newest_of_each_group(
    snaps: Vec<(lifeboat::Id, Snapshot)>,
    n: usize,
) -> Vec<(lifeboat::Id, Snapshot)> {
    let by = forget::GroupBy {
        host: true,
        paths: true,
        tags: false,
    };
    let mut seen = std::collections::BTreeMap::<forget::GroupKey, usize>::new();
    let mut keep = vec![false; snaps.len()];
    for (i, (_, s)) in snaps.iter().enumerate().rev() {
        let count = seen.entry(forget::GroupKey::of(s, by)).or_default();
        keep[i] = *count < n;
        *count += 1;
    }
    snaps
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}

fn forget_cmd(
    repo: &Repository,
    explicit: &[String],
    filter: &SnapshotFilter,
    policy: &forget::Policy,
    group_by: forget::GroupBy,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let mut remove = Vec::new();
    for spec in explicit {
        // An id is not read (a damaged snapshot can be forgotten); `latest` is.
        remove.push(if spec == "latest" {
            repo.find_snapshot_in(spec, filter)?.0
        } else {
            repo.snapshot_id(spec)?
        });
    }
    let plans = if policy.is_empty() && !explicit.is_empty() {
        Vec::new()
    } else {
        let snaps = readable_snapshots(repo, filter)?;
        forget::plan(&snaps, policy, group_by, &jiff::tz::TimeZone::system())?
    };
    for p in &plans {
        remove.extend(p.remove.iter().map(|d| d.id));
    }
    remove.sort_unstable();
    remove.dedup();
    let mut removed = Vec::new();
    if !dry_run {
        for id in &remove {
            repo.remove_snapshot(id)?;
            removed.push(*id);
        }
    }
    if json {
        let line = json!({
            "dry_run": dry_run,
            "groups": plans,
            "removed": removed.iter().map(lifeboat::Id::to_hex).collect::<Vec<_>>(),
            "would_remove": if dry_run { remove.iter().map(lifeboat::Id::to_hex).collect::<Vec<_>>() } else { Vec::new() },
        });
        println!("{line}");
        return Ok(());
    }
    for p in &plans {
        let mut what = Vec::new();
        if let Some(h) = &p.group.host {
            what.push(format!("host {h}"));
        }
        if let Some(ps) = &p.group.paths {
            what.push(format!("paths {}", ps.join(" ")));
        }
        if let Some(t) = &p.group.tags {
            what.push(format!("tags [{}]", t.join(",")));
        }
        println!(
            "group {}: keep {}, remove {}",
            if what.is_empty() {
                "(all)".to_owned()
            } else {
                what.join(", ")
            },
            p.keep.len(),
            p.remove.len()
        );
        for d in &p.keep {
            println!(
                "  keep    {}  {}  {}",
                d.id.short(),
                d.time.round(jiff::Unit::Second).unwrap_or(d.time),
                d.reasons.join(",")
            );
        }
        for d in &p.remove {
            println!(
                "  remove  {}  {}",
                d.id.short(),
                d.time.round(jiff::Unit::Second).unwrap_or(d.time)
            );
        }
    }
    if dry_run {
        println!("dry run: {} snapshots would be removed", remove.len());
    } else {
        println!(
            "removed {} snapshots (run 'lifeboat prune' to delete data no snapshot uses)",
            removed.len()
        );
    }
    Ok(())
}

fn key(g: &Global, action: KeyAction) -> Result<()> {
    let repo = open(g)?;
    match action {
        KeyAction::Add {
            new_password_file,
            new_key_file,
        } => {
            let s = if let Some(k) = new_key_file {
                Secret::key_file(&read_secret_file(&k)?)?
            } else if let Some(p) = new_password_file {
                password_from(read_secret_file(&p)?)?
            } else if let Some(p) = std::env::var_os("LIFEBOAT_NEW_PASSWORD") {
                use std::os::unix::ffi::OsStringExt;
                Secret::password(p.into_vec())?
            } else if let Some(s) = prompt_password("the new key", true)? {
                s
            } else {
                bail!(
                    "no new secret given: use --new-password-file, --new-key-file or env LIFEBOAT_NEW_PASSWORD"
                );
            };
            let id = repo.add_key(&s, KdfParams::DEFAULT)?;
            println!("added key {}", id.short());
        }
        KeyAction::List { json } => {
            let slots = repo.key_slots()?;
            if json {
                let v: Vec<_> = slots
                    .iter()
                    .map(|(id, s)| match s {
                        Ok(s) => json!({"id": id.to_hex(), "current": *id == repo.slot_id(), "kind": s.kind, "created": s.created, "host": s.host}),
                        Err(e) => json!({"id": id.to_hex(), "current": false, "error": e.to_string()}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("  {:<8}  {:<9}  {:<32}  host", "id", "kind", "created");
                for (id, s) in &slots {
                    let cur = if *id == repo.slot_id() { "*" } else { " " };
                    match s {
                        Ok(s) => {
                            let kind = match s.kind {
                                SlotKind::Password => "password",
                                SlotKind::KeyFile => "key-file",
                            };
                            println!(
                                "{cur} {:<8}  {kind:<9}  {:<32}  {}",
                                id.short(),
                                s.created,
                                s.host
                            );
                        }
                        Err(e) => println!("{cur} {:<8}  damaged: {e}", id.short()),
                    }
                }
            }
        }
        KeyAction::Remove { id } => {
            let removed = repo.remove_key(&id)?;
            println!("removed key {}", removed.short());
        }
    }
    Ok(())
}

/// An entry as `ls --json` and `find --json` show it.
fn node_json(node: &Node, path: &str) -> serde_json::Value {
    let t = jiff::Timestamp::new(node.mtime, node.mtime_ns as i32)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut v = json!({"path": path, "name": node.display_name(), "type": node.kind(), "size": node.size, "mode": node.mode,
           "uid": node.uid, "gid": node.gid, "mtime": t});
    if node.repaired {
        // Part of it was lost: see `repair snapshots`.
        v["repaired"] = json!(true);
    }
    v
}

fn ls_print(node: &Node, path: &str, json: bool, out: &mut impl std::io::Write) -> Result<()> {
    if json {
        writeln!(out, "{}", node_json(node, path))?;
    } else {
        writeln!(out, "{path}")?;
    }
    Ok(())
}

fn ls_tree(
    repo: &Repository,
    ids: &[lifeboat::Id],
    prefix: &str,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    for n in repo.read_tree_entries(ids)? {
        let n = n?;
        let p = format!("{prefix}/{}", n.display_name());
        ls_print(&n, &p, json, out)?;
        if n.kind() == NodeKind::Dir {
            ls_tree(repo, &n.subtree, &p, json, out)?;
        }
    }
    Ok(())
}
