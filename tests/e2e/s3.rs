//! Repositories in S3: a real S3 server (moto's server mode) on loopback, started per test, and a
//! TCP relay in front of it that the tests can cut, to play a server that goes away mid-backup
//! (moto keeps its state in memory, so it is the link that goes down, not the process).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fixtures::{Env, PASSWORD, fails_cleanly, noise, scan};

/// moto's S3 server on a free loopback port; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: pip install 'moto[server]' (.ci/run installs it)");
        let s = S3Server { child, port };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_mins(1), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// Create a bucket (moto accepts unsigned requests).
    pub fn bucket(&self, name: &str) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            c,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "creating bucket: {resp}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The variables that point lifeboat at `port`.
fn s3_vars(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "lifeboat-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "lifeboat-test-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A TCP relay to the server that can be cut (every connection dropped, new ones closed at once)
/// and restored.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    bytes_up: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Requests in flight now (sent, no response byte yet), and the most ever at once.
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Requests sent.
    requests: Arc<AtomicUsize>,
}

impl Relay {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let bytes_up = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (u, b, cs) = (up.clone(), bytes_up.clone(), conns.clone());
        let (o, pk, rq) = (open.clone(), peak.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut g = cs.lock().unwrap();
                    g.push(client.try_clone().unwrap());
                    g.push(server.try_clone().unwrap());
                }
                // HTTP/1.1 carries one request at a time: a connection is busy from the client's
                // first byte until the server's first byte back.
                let busy = Arc::new(AtomicBool::new(false));
                let (o, pk, rq) = (o.clone(), pk.clone(), rq.clone());
                let pump =
                    |mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>| {
                        let (o, pk, busy, rq) = (o.clone(), pk.clone(), busy.clone(), rq.clone());
                        let done = {
                            let (o, busy) = (o.clone(), busy.clone());
                            move || {
                                if busy.swap(false, Ordering::SeqCst) {
                                    o.fetch_sub(1, Ordering::SeqCst);
                                }
                            }
                        };
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 64 << 10];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if let Some(c) = &count {
                                            c.fetch_add(n as u64, Ordering::SeqCst);
                                            if !busy.swap(true, Ordering::SeqCst) {
                                                rq.fetch_add(1, Ordering::SeqCst);
                                                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                                                pk.fetch_max(now, Ordering::SeqCst);
                                            }
                                        } else {
                                            done();
                                        }
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                            done();
                        });
                    };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(b.clone()),
                );
                pump(server, client, None);
            }
        });
        Relay {
            port,
            up,
            bytes_up,
            conns,
            open,
            peak,
            requests,
        }
    }

    /// Requests sent since the last call.
    fn take_requests(&self) -> usize {
        self.requests.swap(0, Ordering::SeqCst)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The most requests in flight at once since the last call.
    fn take_peak(&self) -> usize {
        self.peak
            .swap(self.open.load(Ordering::SeqCst), Ordering::SeqCst)
    }
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn restore_matches(env: &Env, snap: &str, src: &Path) {
    let target = env.path(&format!("restore-{snap}"));
    env.ok(&["restore", snap, "--target", target.to_str().unwrap()]);
    let got = target.join(src.strip_prefix("/").unwrap());
    let (a, b) = (scan(src), scan(&got));
    assert_eq!(a.len(), b.len(), "{snap}: entry count");
    for (k, m) in &a {
        assert_eq!(
            Some(&m.content),
            b.get(k).map(|x| &x.content),
            "{snap}: {k:?}"
        );
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

/// Four hosts back up at once while a prune deletes an older plan and plans anew; afterwards
/// `check --read-data` is clean and every snapshot restores byte-exact, also after a later prune
/// whose grace period has passed.
#[test]
fn concurrent_backups_and_prune_on_s3() {
    let s3 = S3Server::start();
    s3.bucket("lifeboat-many");
    let env = Env::at("s3://lifeboat-many/app", s3_vars(s3.port));
    let shared = noise(3 << 20, 99);
    let mut srcs = Vec::new();
    for h in 0..4u64 {
        let d = env.path(&format!("src{h}"));
        write(&d.join("shared.bin"), &shared);
        write(&d.join("own.bin"), &noise(6 << 20, h));
        write(&d.join("sub/small.txt"), format!("host {h}\n").as_bytes());
        srcs.push(d);
    }
    // Garbage for the prune to find: a snapshot forgotten, planned by a first prune.
    let junk = env.path("junk");
    write(&junk.join("junk.bin"), &noise(4 << 20, 7));
    env.ok(&["backup", junk.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "0", "--group-by", ""]);
    let first = json(&env.ok(&["prune", "--grace", "1h", "--json"]));
    assert!(first["packs_planned"].as_u64().unwrap() >= 1, "{first}");
    std::thread::sleep(Duration::from_secs(2));

    let mut children: Vec<(String, Child)> = srcs
        .iter()
        .enumerate()
        .map(|(h, d)| {
            let args = [
                "backup",
                "--json",
                "--host",
                &format!("host{h}"),
                d.to_str().unwrap(),
            ]
            .map(str::to_owned);
            let c = env
                .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (format!("backup host{h}"), c)
        })
        .collect();
    // The plan is 2 s old: this prune deletes it while the backups run.
    let prune = env
        .cmd(&["prune", "--grace", "1s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    children.push(("prune".into(), prune));
    let mut pruned = serde_json::Value::Null;
    for (what, c) in children {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if what == "prune" {
            pruned = json(&String::from_utf8(o.stdout).unwrap());
        }
    }
    // The junk's packs (planned 2 s before) were deleted while the backups ran.
    assert!(pruned["packs_deleted"].as_u64().unwrap() >= 1, "{pruned}");
    let out = env.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors found"), "{out}");
    let snaps: serde_json::Value = json(&env.ok(&["snapshots", "--json"]));
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 4);
    for s in snaps {
        let h: usize = s["host"].as_str().unwrap()[4..].parse().unwrap();
        restore_matches(&env, s["id"].as_str().unwrap(), &srcs[h]);
    }
    // A later prune past the grace period: the backups' packs that the concurrent prune saw
    // before they were indexed are in use now, so they are kept, and everything still restores.
    std::thread::sleep(Duration::from_secs(2));
    let later = json(&env.ok(&["prune", "--grace", "1s", "--json"]));
    assert_eq!(later["snapshots"], 4, "{later}");
    let out = env.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors found"), "{out}");
    for s in snaps {
        let h: usize = s["host"].as_str().unwrap()[4..].parse().unwrap();
        restore_matches(&env, s["id"].as_str().unwrap(), &srcs[h]);
    }
    // Dedup across hosts: a fifth host with only the shared file adds almost nothing.
    let fifth = env.path("fifth");
    write(&fifth.join("shared.bin"), &shared);
    let b = json(&env.ok(&[
        "backup",
        "--json",
        "--host",
        "host9",
        fifth.to_str().unwrap(),
    ]));
    assert!(b["bytes_added"].as_u64().unwrap() < 100_000, "{b}");
    // No lease left behind: another prune starts at once.
    env.ok(&["prune", "--dry-run"]);
}

/// The link to the server goes down mid-backup: one clear error, no snapshot; once it is back, the
/// next backup succeeds and `check` passes.
#[test]
fn server_gone_mid_backup() {
    let s3 = S3Server::start();
    s3.bucket("lifeboat-gone");
    let relay = Relay::start(s3.port);
    let env = Env::at("s3://lifeboat-gone/r", s3_vars(relay.port));
    let src = env.path("src");
    for i in 0..6 {
        write(&src.join(format!("f{i}")), &noise(8 << 20, i));
    }
    let args = [
        "--retries",
        "2",
        "--limit-upload",
        "16",
        "backup",
        src.to_str().unwrap(),
    ];
    let child = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let before = relay.bytes_up.load(Ordering::SeqCst);
    let t = Instant::now();
    while relay.bytes_up.load(Ordering::SeqCst) < before + (12 << 20) {
        assert!(
            t.elapsed() < Duration::from_mins(2),
            "backup never uploaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.cut();
    let o = child.wait_with_output().unwrap();
    let line = fails_cleanly(o, &args);
    assert!(
        line.contains("writing") || line.contains("storage"),
        "{line}"
    );
    assert!(!line.contains("lifeboat-test-secret"), "{line}");
    relay.restore();
    let snaps = json(&env.ok(&["snapshots", "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors found"), "{out}");
    restore_matches(&env, "latest", &src);
}

/// Copy to a local repository with its own password; again: nothing sent; then incremental;
/// restores from the copy are byte-exact.
#[test]
fn copy_s3_to_local() {
    let s3 = S3Server::start();
    s3.bucket("lifeboat-copy");
    let env = Env::at("s3://lifeboat-copy/src", s3_vars(s3.port));
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(5 << 20, 1));
    write(&src.join("b/c.txt"), b"hello offsite\n");
    env.ok(&["backup", src.to_str().unwrap()]);
    let local = env.path("offsite");
    let to_pw = "offsite-password-31";
    let mut init = env.cmd(&[
        "--repo",
        local.to_str().unwrap(),
        "init",
        "--pack-size-mib",
        "4",
    ]);
    init.env("LIFEBOAT_PASSWORD", to_pw);
    assert!(init.output().unwrap().status.success());
    let copy = |env: &Env| {
        let mut c = env.cmd(&["copy", "--to", local.to_str().unwrap(), "--json"]);
        c.env("LIFEBOAT_TO_PASSWORD", to_pw);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        json(&out)
    };
    let first = copy(&env);
    assert_eq!(first["snapshots_copied"], 1, "{first}");
    assert!(first["bytes_transferred"].as_u64().unwrap() > 5 << 20);
    let again = copy(&env);
    assert_eq!(again["snapshots_copied"], 0, "{again}");
    assert_eq!(again["bytes_transferred"], 0, "{again}");
    // A small change: only about that much is sent, and unchanged files are not even read.
    write(&src.join("b/d.txt"), b"new file\n");
    env.ok(&["backup", src.to_str().unwrap()]);
    let third = copy(&env);
    assert_eq!(third["snapshots_copied"], 1, "{third}");
    assert!(
        third["bytes_transferred"].as_u64().unwrap() < 100_000,
        "{third}"
    );
    assert!(third["bytes_read"].as_u64().unwrap() < 1000, "{third}");
    // Restore from the copy, opened with its own password only.
    let local_env = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("LIFEBOAT_REPO", &local)
            .env("LIFEBOAT_PASSWORD", to_pw);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(local_env(&["check", "--read-data"]).contains("no errors found"));
    let target = env.path("from-copy");
    local_env(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let got = target.join(src.strip_prefix("/").unwrap());
    let (a, b) = (scan(&src), scan(&got));
    assert_eq!(a.len(), b.len());
    for (k, m) in &a {
        assert_eq!(Some(&m.content), b.get(k).map(|x| &x.content), "{k:?}");
    }
    // Interrupted, then resumed: the second run sends only what the first did not.
    write(&src.join("big.bin"), &noise(24 << 20, 2));
    env.ok(&["backup", src.to_str().unwrap()]);
    let mut c = env.cmd(&[
        "--limit-upload",
        "4",
        "copy",
        "--to",
        local.to_str().unwrap(),
        "--json",
    ]);
    c.env("LIFEBOAT_TO_PASSWORD", to_pw)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    // Killed once it has indexed some of what it sent.
    let index = local.join("index");
    let count = || crate::fixtures::walk_files(&index).len();
    let before = count();
    let t = Instant::now();
    while count() == before {
        assert!(t.elapsed() < Duration::from_mins(1), "copy indexed nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let resumed = copy(&env);
    println!("resumed copy: {resumed}");
    assert_eq!(resumed["snapshots_copied"], 1, "{resumed}");
    let sent = resumed["bytes_transferred"].as_u64().unwrap();
    assert!(
        sent < 20 << 20,
        "the resumed copy re-sent everything: {resumed}"
    );
    let target = env.path("from-copy-2");
    local_env(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(target.join(src.strip_prefix("/").unwrap()).join("big.bin")).unwrap(),
        noise(24 << 20, 2)
    );
    assert!(local_env(&["check", "--read-data"]).contains("no errors found"));
    // The source password does not open the copy.
    let mut c = env.cmd(&["snapshots"]);
    c.env("LIFEBOAT_REPO", &local);
    assert!(!c.output().unwrap().status.success());
    let _ = PASSWORD;
}

/// An upload limit holds: 8 MiB at 4 MiB/s cannot finish in under 1.5 s (a lower bound, which
/// a slow machine cannot break).
#[test]
fn limits_hold() {
    let s3 = S3Server::start();
    s3.bucket("lifeboat-limit");
    let relay = Relay::start(s3.port);
    let env = Env::at("s3://lifeboat-limit/r", s3_vars(relay.port));
    let src = env.path("src");
    write(&src.join("x"), &noise(8 << 20, 5));
    let t = Instant::now();
    env.ok(&["--limit-upload", "4", "backup", src.to_str().unwrap()]);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let out = env.path("out");
    let t = Instant::now();
    env.ok(&[
        "--limit-download",
        "4",
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        std::fs::read(out.join(src.strip_prefix("/").unwrap()).join("x")).unwrap(),
        noise(8 << 20, 5)
    );
    // Requests in flight: three uploaders each sending packs as parallel parts, held to
    // --max-requests.
    let mut peaks = Vec::new();
    for (k, n) in ["1", "16"].into_iter().enumerate() {
        for i in 0..8 {
            write(
                &src.join(format!("{n}-{i}")),
                &noise(8 << 20, 10 * k as u64 + i + 10),
            );
        }
        relay.take_peak();
        env.ok(&["--max-requests", n, "backup", src.to_str().unwrap()]);
        peaks.push(relay.take_peak());
    }
    assert!(
        peaks[0] <= 1,
        "--max-requests 1: {peaks:?} requests at once"
    );
    assert!(
        peaks[1] > 2,
        "--max-requests 16: {peaks:?} requests at once"
    );
    // A restore's two writers keep --max-requests reads in flight between them, and no more.
    let mut peaks = Vec::new();
    for n in ["1", "16"] {
        relay.take_peak();
        let out = env.path(&format!("out-{n}"));
        env.ok(&[
            "--max-requests",
            n,
            "restore",
            "latest",
            "--threads",
            "2",
            "--target",
            out.to_str().unwrap(),
        ]);
        peaks.push(relay.take_peak());
        let got = std::fs::read(out.join(src.strip_prefix("/").unwrap()).join("16-7")).unwrap();
        assert!(
            got == noise(8 << 20, 27),
            "--max-requests {n}: 16-7 differs"
        );
    }
    assert!(peaks[0] <= 1, "restore, --max-requests 1: {peaks:?}");
    assert!(peaks[1] > 2, "restore, --max-requests 16: {peaks:?}");
    // A copy keeps several reads in flight (the old one read a blob at a time), within
    // --max-requests.
    let mut peaks = Vec::new();
    for n in ["1", "16"] {
        let off = env.path(&format!("offsite-{n}"));
        let mut init = env.cmd(&["--repo", off.to_str().unwrap(), "init"]);
        init.env("LIFEBOAT_PASSWORD", "offsite");
        assert!(init.output().unwrap().status.success());
        relay.take_peak();
        let mut c = env.cmd(&["--max-requests", n, "copy", "--to", off.to_str().unwrap()]);
        c.env("LIFEBOAT_TO_PASSWORD", "offsite");
        crate::fixtures::stdout_of_success(c.output().unwrap(), "copy");
        peaks.push(relay.take_peak());
    }
    assert!(peaks[0] <= 1, "copy, --max-requests 1: {peaks:?}");
    assert!(peaks[1] > 2, "copy, --max-requests 16: {peaks:?}");
    // `check --read-data`: packs stream in and are verified as they arrive, up to
    // `--max-requests` of them at once (one per core before streaming).
    let mut peaks = Vec::new();
    for n in ["1", "16"] {
        relay.take_peak();
        assert!(
            env.ok(&["--max-requests", n, "check", "--read-data"])
                .contains("no errors found")
        );
        peaks.push(relay.take_peak());
    }
    assert!(peaks[0] <= 1, "check, --max-requests 1: {peaks:?}");
    assert!(peaks[1] > 2, "check, --max-requests 16: {peaks:?}");
    env.fails(&["--limit-upload", "0", "snapshots"]);
    assert!(
        !env.run(&["--max-requests", "0", "snapshots"])
            .status
            .success()
    );
}

/// Run a Python snippet with boto3 pointed at the server (the attacker's tool in the test below).
fn boto3(port: u16, code: &str) -> String {
    let script = format!(
        "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', aws_access_key_id='attacker', aws_secret_access_key='attacker', region_name='us-east-1')\n{code}"
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Flip one bit of object `key`, at 1/`at` of its length.
fn flip_in_bucket(port: u16, bucket: &str, key: &str, at: u32) {
    boto3(
        port,
        &format!(
            "b = bytearray(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read())\n\
             b[len(b) // {at}] ^= 1\n\
             s3.put_object(Bucket='{bucket}', Key='{key}', Body=bytes(b))"
        ),
    );
}

/// The ransomware case: an attacker with delete rights deletes every object (delete markers on
/// the versioned bucket) and then tries to delete every version for good, which Object Lock
/// refuses. `recover` brings the repository back and every snapshot restores byte-exact. Prune
/// leaves locked packs alone without failing.
#[test]
fn object_lock_survives_deletion() {
    let s3 = S3Server::start();
    boto3(
        s3.port,
        "s3.create_bucket(Bucket='lifeboat-locked', ObjectLockEnabledForBucket=True)\ns3.create_bucket(Bucket='lifeboat-unlocked')",
    );
    // A bucket without Object Lock is refused at init, with one line.
    let dir = tempfile::tempdir().unwrap();
    let mut refused = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    refused
        .args([
            "--repo",
            "s3://lifeboat-unlocked/r",
            "init",
            "--lock-days",
            "1",
        ])
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .envs(s3_vars(s3.port))
        .current_dir(dir.path());
    let line = fails_cleanly(refused.output().unwrap(), &["init", "--lock-days"]);
    assert!(line.contains("Object Lock"), "{line}");

    let env = locked_repo(&s3, "s3://lifeboat-locked/app", 2);
    let src = env.path("src");
    write(&src.join("db/base.bin"), &noise(3 << 20, 11));
    write(&src.join("db/wal.bin"), &noise(1 << 20, 12));
    env.ok(&["backup", src.to_str().unwrap()]);
    // Without the retention ledger, the next backup cannot know how long the data it reuses is
    // locked, so it extends all of it (to 1.5 x 2 days).
    boto3(
        s3.port,
        "for o in s3.list_objects_v2(Bucket='lifeboat-locked', Prefix='app/retention/')['Contents']:\n    s3.delete_object(Bucket='lifeboat-locked', Key=o['Key'])",
    );
    write(&src.join("db/wal.bin"), &noise(1 << 20, 13));
    write(&src.join("etc/conf"), b"max_connections = 100\n");
    env.ok(&["backup", src.to_str().unwrap()]);
    let extended = boto3(
        s3.port,
        "import datetime\nn = 0\nfor o in s3.list_objects_v2(Bucket='lifeboat-locked', Prefix='app/data/')['Contents']:\n    h = s3.head_object(Bucket='lifeboat-locked', Key=o['Key'])\n    if h['ObjectLockRetainUntilDate'] - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=2, hours=12):\n        n += 1\nprint(n)",
    );
    assert!(
        extended.trim().parse::<u32>().unwrap() >= 1,
        "the reused pack holding base.bin was extended: {extended}"
    );
    let snaps = json(&env.ok(&["snapshots", "--json"]));
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    // Every object is locked, in governance mode, for about two days.
    let out = boto3(
        s3.port,
        "import datetime\nn = 0\nfor o in s3.list_objects_v2(Bucket='lifeboat-locked')['Contents']:\n    if o['Key'].split('/')[1] in ('retention', 'locks', 'pending'):\n        continue\n    h = s3.head_object(Bucket='lifeboat-locked', Key=o['Key'])\n    assert h.get('ObjectLockMode') == 'GOVERNANCE', o['Key']\n    left = h['ObjectLockRetainUntilDate'] - datetime.datetime.now(datetime.timezone.utc)\n    assert datetime.timedelta(days=1, hours=23) < left < datetime.timedelta(days=3, hours=1), (o['Key'], left)\n    n += 1\nprint(n)",
    );
    assert!(out.trim().parse::<u32>().unwrap() >= 8, "{out}");

    // Prune skips what is still locked, without failing.
    let forgotten = env.path("forgotten");
    write(&forgotten.join("old.bin"), &noise(2 << 20, 14));
    env.ok(&["backup", forgotten.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);
    let pruned = json(&env.ok(&["prune", "--grace", "0s", "--json"]));
    assert!(pruned["packs_locked"].as_u64().unwrap() >= 1, "{pruned}");
    assert_eq!(pruned["packs_deleted"], 0, "{pruned}");

    // The attack: delete everything, then try to destroy every version.
    let out = boto3(
        s3.port,
        "b = 'lifeboat-locked'\nkeys = [o['Key'] for o in s3.list_objects_v2(Bucket=b)['Contents']]\nfor k in keys:\n    s3.delete_object(Bucket=b, Key=k)\nrefused = destroyed = 0\nfor v in s3.list_object_versions(Bucket=b).get('Versions', []):\n    try:\n        s3.delete_object(Bucket=b, Key=v['Key'], VersionId=v['VersionId'])\n        destroyed += 1\n    except Exception:\n        refused += 1\nprint(len(keys), refused, destroyed, s3.list_objects_v2(Bucket=b).get('KeyCount'))",
    );
    let f: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(f[0] >= 8 && f[1] >= 8, "attack: {out}");
    assert_eq!(f[3], 0, "nothing is visible after the attack: {out}");
    assert!(!env.run(&["snapshots"]).status.success());

    let r = json(&env.ok(&["recover", "--json"]));
    assert!(r["objects_restored"].as_u64().unwrap() >= 8, "{r}");
    let out = env.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors found"), "{out}");
    let snaps = json(&env.ok(&["snapshots", "--json"]));
    let now: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        assert!(now.contains(id), "snapshot {id} is back: {now:?}");
    }
    // The latest restores to the source as it is now; the first to its own state.
    restore_matches(&env, &ids[1][..8], &src);
    let first = env.path("first");
    env.ok(&["restore", &ids[0][..8], "--target", first.to_str().unwrap()]);
    let got = first.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(got.join("db/wal.bin")).unwrap(),
        noise(1 << 20, 12)
    );
    assert_eq!(
        std::fs::read(got.join("db/base.bin")).unwrap(),
        noise(3 << 20, 11)
    );
    assert!(!got.join("etc/conf").exists());
}

/// A repository at `url` (in a bucket with Object Lock enabled) that locks what it writes for
/// `days`.
fn locked_repo(s3: &S3Server, url: &str, days: u32) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut init = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    init.args(["--repo", url, "init", "--lock-days", &days.to_string()])
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .envs(s3_vars(s3.port));
    let o = init.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Env {
        dir,
        repo: std::path::PathBuf::from("/nonexistent"),
        url: Some(url.to_owned()),
        vars: s3_vars(s3.port),
    }
}

/// A damaged pack that `repair index --read-all-packs` moved to `damaged/` (its `data/` name
/// left behind a delete marker on the versioned bucket) stays there through `recover`: brought
/// back, the repair `recover` runs would index its damage again from its intact header.
#[test]
fn recover_leaves_a_pack_set_aside_as_damaged() {
    let s3 = S3Server::start();
    boto3(
        s3.port,
        "s3.create_bucket(Bucket='lifeboat-aside', ObjectLockEnabledForBucket=True)",
    );
    let env = locked_repo(&s3, "s3://lifeboat-aside/r", 1);
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(3 << 20, 21));
    env.ok(&["backup", src.to_str().unwrap()]);
    let list = "for o in s3.list_objects_v2(Bucket='lifeboat-aside', Prefix='r/')['Contents']:\n    print(o['Key'], o['Size'])";
    let listing = boto3(s3.port, list);
    let (pack, _) = listing
        .lines()
        .map(|l| l.split_once(' ').unwrap())
        .filter(|(k, _)| k.starts_with("r/data/"))
        .max_by_key(|(_, n)| n.parse::<u64>().unwrap())
        .unwrap();
    let hex = pack.rsplit('/').next().unwrap().to_owned();
    flip_in_bucket(s3.port, "lifeboat-aside", pack, 2);
    let r = json(&env.ok(&["repair", "index", "--read-all-packs", "--json"]));
    assert_eq!(r["packs_set_aside"], 1, "{r}");
    // (The index object the repair replaced is brought back, and repaired again.)
    env.ok(&["recover", "--json"]);
    let listing = boto3(s3.port, list);
    assert!(
        !listing.contains(&format!("r/data/{}/{hex}", &hex[..2])),
        "{listing}"
    );
    assert!(listing.contains(&format!("r/damaged/{hex} ")), "{listing}");
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["packs_indexed"], 0, "{r}");
}

/// Every file under `dir`, with the name relative to it.
fn cached_files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    crate::fixtures::walk_files(dir)
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), p))
        .filter(|(n, _)| n != "CACHEDIR.TAG")
        .collect()
}

/// Whether a cached object's bytes hash to its name.
fn intact(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    blake3::hash(&std::fs::read(p).unwrap()).to_hex().as_str() == name
}

/// Directories in the tree of [`many_dirs_on_s3`]: a request each to read without a cache.
const DIRS: u64 = 60;

/// A relayed S3 repository in `bucket` and a source of [`DIRS`] directories of one small file.
fn many_dirs_on_s3(bucket: &str) -> (S3Server, Relay, Env, std::path::PathBuf) {
    let s3 = S3Server::start();
    s3.bucket(bucket);
    let relay = Relay::start(s3.port);
    let env = Env::at(&format!("s3://{bucket}/r"), s3_vars(relay.port));
    let src = env.path("src");
    for d in 0..DIRS {
        write(&src.join(format!("d{d}/f")), &noise(5000, d));
    }
    (s3, relay, env, src)
}

/// The local cache of an S3 repository: a re-backup reads its parent's trees from it (far fewer
/// requests), damaged entries are replaced rather than trusted, and a cache that missed a prune
/// serves nothing the repository no longer lists.
#[test]
fn cache_spares_requests_heals_and_follows_prunes() {
    let (s3, relay, env, src) = many_dirs_on_s3("lifeboat-cache");
    let cache = env.path("cache");
    write(&src.join("big"), &noise(3 << 20, 1));
    env.backup(&[&src]);
    let files = cached_files(&cache);
    for kind in ["index/", "snapshots/", "data/"] {
        assert!(
            files.iter().any(|(n, _)| n.contains(kind)),
            "nothing under {kind} in the cache after a backup: {files:?}"
        );
    }
    assert!(files.iter().all(|(_, p)| intact(p)), "{files:?}");

    // The unchanged re-backup: every tree of the parent is a request without the cache.
    relay.take_requests();
    env.backup(&[&src]);
    let cached = relay.take_requests();
    env.ok(&["--no-cache", "backup", src.to_str().unwrap()]);
    let uncached = relay.take_requests();
    assert!(
        cached + DIRS as usize <= uncached,
        "re-backup: {cached} requests with the cache, {uncached} without"
    );

    // Damage every cached entry: the next commands fetch them again and still work.
    for (_, p) in cached_files(&cache) {
        crate::fixtures::flip_byte(&p, 0.5);
    }
    write(&src.join("d0/f"), &noise(5000, 1000));
    env.backup(&[&src]);
    restore_matches(&env, "latest", &src);
    // Index objects and snapshots are all read, so all replaced (a tree pack is replaced when
    // a tree in it is read).
    let files = cached_files(&cache);
    assert!(
        files.iter().all(|(n, p)| n.contains("data/") || intact(p)),
        "damaged entries left in the cache: {files:?}"
    );

    // Another host's cache missed a prune: keep a copy from before it and put it back after.
    let stale = env.path("stale-cache");
    copy_dir(&cache, &stale);
    std::fs::remove_file(src.join("big")).unwrap();
    env.backup(&[&src]);
    env.ok(&["forget", "--keep-last", "1"]);
    env.ok(&["prune", "--grace", "0s"]);
    std::fs::remove_dir_all(&cache).unwrap();
    copy_dir(&stale, &cache);
    // The pruned data comes back as new data, not as a reference to a deleted pack.
    write(&src.join("big"), &noise(3 << 20, 1));
    env.backup(&[&src]);
    env.ok(&["check", "--read-data"]);
    restore_matches(&env, "latest", &src);
    let listed = |prefix: &str| -> Vec<String> {
        let out = boto3(
            s3.port,
            &format!(
                "for o in s3.list_objects_v2(Bucket='lifeboat-cache', Prefix='r/{prefix}')\
                 .get('Contents', []): print(o['Key'].rsplit('/', 1)[1])"
            ),
        );
        out.lines().map(str::to_owned).collect()
    };
    for prefix in ["index/", "snapshots/", "data/"] {
        let live = listed(prefix);
        for (n, _) in cached_files(&cache) {
            let id = n.rsplit('/').next().unwrap();
            assert!(
                !n.contains(prefix) || live.iter().any(|l| l == id),
                "{n} is cached but no longer in the repository"
            );
        }
    }
    // Without a cache nothing is written.
    std::fs::remove_dir_all(&cache).unwrap();
    env.ok(&["--no-cache", "snapshots"]);
    assert!(!cache.exists());
}

/// `check` reads what the bucket holds, never an earlier run's cache, yet fetches each tree pack
/// once (into a cache of its own, deleted when it ends) instead of one request per tree; a
/// damaged tree pack in the bucket is still named.
#[test]
fn check_fetches_tree_packs_once_and_ignores_the_cache() {
    let (s3, relay, env, src) = many_dirs_on_s3("lifeboat-check");
    let cache = env.path("cache");
    env.backup(&[&src]);
    // Damage every entry of the user's cache: check does not read them.
    let before = cached_files(&cache);
    let tree_pack = before
        .iter()
        .find(|(n, _)| n.contains("data/"))
        .map(|(n, _)| n.split_once('/').unwrap().1.to_owned())
        .expect("a tree pack in the cache");
    for (_, p) in &before {
        crate::fixtures::flip_byte(p, 0.5);
    }
    relay.take_requests();
    assert!(env.ok(&["check"]).contains("no errors found"));
    let with_cache = relay.take_requests();
    assert!(env.ok(&["--no-cache", "check"]).contains("no errors found"));
    let without = relay.take_requests();
    assert!(
        with_cache + DIRS as usize <= without,
        "check: {with_cache} requests with its own cache, {without} without"
    );
    // The cache of a check killed two days ago is removed; a recent one (perhaps a check still
    // running) stays.
    let stale = cache.join("check-killed");
    let recent = cache.join("check-running");
    for d in [&stale, &recent] {
        write(&d.join("x/data/00/00"), b"left");
    }
    let two_days_ago = std::time::SystemTime::now() - Duration::from_hours(48);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    assert!(
        env.ok(&["check", "--read-data"])
            .contains("no errors found")
    );
    assert!(!stale.exists());
    assert!(recent.exists());
    std::fs::remove_dir_all(&recent).unwrap();
    // Its cache is gone, and the user's is as it was (still damaged, for the next backup to heal).
    let after = cached_files(&cache);
    assert_eq!(
        after.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        before.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(after.iter().all(|(_, p)| !intact(p)));

    // A flipped byte in the tree pack in the bucket: both checks name it.
    let key = format!("r/{tree_pack}");
    let flip = || flip_in_bucket(s3.port, "lifeboat-check", &key, 3);
    flip();
    for args in [&["check"][..], &["check", "--read-data"]] {
        let e = env.fails(args);
        assert!(e.contains("problem"), "{args:?}: {e}");
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&tree_pack),
            "{args:?} did not name {tree_pack}: {err}"
        );
    }
    flip();
    assert!(
        env.ok(&["check", "--read-data"])
            .contains("no errors found")
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for (n, p) in cached_files(from) {
        write(&to.join(n), &std::fs::read(p).unwrap());
    }
}

/// `repair index` on a bucket judges what the bucket holds, not the user's cache: an index
/// object overwritten in the bucket (its cached copy still good) is replaced, the packs it named
/// are indexed from their headers over ranged reads, a deleted pack leaves the index, and the
/// next backup makes the snapshot whole again.
#[test]
fn repair_index_on_s3_judges_the_bucket_not_the_cache() {
    let s3 = S3Server::start();
    s3.bucket("lifeboat-repair");
    let env = Env::at("s3://lifeboat-repair/r", s3_vars(s3.port));
    let src = env.path("src");
    write(&src.join("big.bin"), &noise(40 << 20, 11));
    write(&src.join("small.txt"), b"small\n");
    let snap = env.backup(&[&src])["snapshot"].as_str().unwrap().to_owned();
    env.ok(&["ls", &snap]);
    let listing = boto3(
        s3.port,
        "for o in s3.list_objects_v2(Bucket='lifeboat-repair', Prefix='r/')['Contents']:\n    print(o['Key'], o['Size'])",
    );
    let objects: Vec<(&str, u64)> = listing
        .lines()
        .map(|l| {
            let (k, s) = l.split_once(' ').unwrap();
            (k, s.parse().unwrap())
        })
        .collect();
    let index: Vec<&str> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("r/index/"))
        .map(|(k, _)| *k)
        .collect();
    let (lost, _) = objects
        .iter()
        .filter(|(k, _)| k.starts_with("r/data/"))
        .max_by_key(|(_, s)| *s)
        .unwrap();
    let packs = objects
        .iter()
        .filter(|(k, _)| k.starts_with("r/data/"))
        .count();
    assert!(packs >= 3 && index.len() == 1, "{listing}");
    boto3(
        s3.port,
        &format!(
            "s3.put_object(Bucket='lifeboat-repair', Key='{}', Body=b'not an index object')\n\
             s3.delete_object(Bucket='lifeboat-repair', Key='{lost}')",
            index[0]
        ),
    );
    let r = json(&env.ok(&["repair", "index", "--json"]));
    assert_eq!(r["index_objects_damaged"], 1, "{r}");
    assert_eq!(r["index_objects_replaced"], 1, "{r}");
    assert_eq!(r["packs_indexed"], packs - 1, "{r}");
    assert_eq!(r["packs"], packs - 1, "{r}");
    let o = env.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/big.bin") && !err.contains("index/"),
        "{err}"
    );
    // A pack damaged in the bucket: read whole, it leaves the index and data/ for damaged/ by a
    // server-side copy, byte for byte.
    let (damaged, size) = objects
        .iter()
        .filter(|(k, _)| k.starts_with("r/data/") && k != lost)
        .max_by_key(|(_, s)| *s)
        .unwrap();
    let hex = damaged.rsplit('/').next().unwrap();
    flip_in_bucket(s3.port, "lifeboat-repair", damaged, 2);
    let r = json(&env.ok(&["repair", "index", "--read-all-packs", "--json"]));
    assert_eq!(r["packs_damaged"], 1, "{r}");
    assert_eq!(r["packs_set_aside"], 1, "{r}");
    let listing = boto3(
        s3.port,
        "for o in s3.list_objects_v2(Bucket='lifeboat-repair', Prefix='r/')['Contents']:\n    print(o['Key'], o['Size'])",
    );
    assert!(!listing.contains(&format!("{damaged} ")), "{listing}");
    assert!(
        listing.contains(&format!("r/damaged/{hex} {size}\n")),
        "{listing}"
    );
    env.backup(&[&src]);
    let checked = env.ok(&["check", "--read-data"]);
    assert!(checked.contains("no errors found"), "{checked}");
    assert!(
        checked.contains("1 damaged packs that repair index or prune took out of use"),
        "{checked}"
    );
    restore_matches(&env, &snap, &src);
}
