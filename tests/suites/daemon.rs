//! The daemon (`tierkeep run`) as a real process against the S3 fixture (Garage in a
//! container in CI): short real intervals, SIGTERM during an upload, kill -9 at random
//! moments, black-box pressure with the server stopped, hooks, and `/metrics` +
//! `/healthz` agreeing with `list` and `status`.

#[path = "../support/s3.rs"]
mod s3;
#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Host, sha256_file};

/// A host with its deletion and reserved zones in fresh buckets of `server`; `extra` is
/// more TOML (not a `[daemon]` table: that one is written here, with the metrics
/// endpoint on a free port and `daemon` inside it).
fn s3_host(server: &s3::S3, caps: (u64, u64, u64), daemon: &str, extra: &str) -> (Host, String) {
    let deletion = server.bucket("tk-deletion");
    let reserved = server.bucket("tk-reserved");
    let mut host = Host::new(&format!(
        "{}[zones.black_box]\nmax_backups = {}\n\
         [zones.deletion]\nurl = \"s3://{deletion}/zone\"\nmax_backups = {}\n\
         [zones.reserved]\nurl = \"s3://{reserved}\"\nmax_backups = {}\n\
         [daemon]\nmetrics_addr = \"127.0.0.1:0\"\n{daemon}{extra}",
        server.config_section(),
        caps.0,
        caps.1,
        caps.2
    ));
    host.env = server.env();
    (host, deletion)
}

/// A running `tierkeep run`, its JSON log lines collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(host: &Host, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = host.std_cmd(&["--log-format", "json", "run"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tierkeep run");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (l, r) = (lines.clone(), raw.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    l.lock().expect("lock").push(v);
                }
                r.lock().expect("lock").push(line);
            }
        });
        Daemon { child, lines, raw }
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        self.lines.lock().expect("lock").clone()
    }

    fn log(&self) -> String {
        self.raw.lock().expect("lock").join("\n")
    }

    /// Waits until a log line satisfies `pred`; panics with the log after `limit`.
    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = self.messages().into_iter().find(|v| pred(v)) {
                return v;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the daemon exited ({st}) before {what}:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "no {what} within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of `/metrics`, from the start-up line.
    fn addr(&mut self) -> String {
        let v = self.wait_for("metrics address", Duration::from_secs(30), |v| {
            v["fields"]["addr"].is_string()
        });
        v["fields"]["addr"].as_str().expect("addr").to_owned()
    }

    /// Ids of the backups the daemon reported as created.
    fn created(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter(|v| v["fields"]["message"] == "backup created")
            .filter_map(|v| v["fields"]["id"].as_str().map(str::to_owned))
            .collect()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal the daemon");
    }

    /// Waits for the exit; returns the status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return (st, t.elapsed());
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the daemon did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and a clean exit 0.
    fn stop(mut self) -> String {
        self.signal(rustix::process::Signal::TERM);
        let (st, _) = self.wait_exit(Duration::from_secs(120));
        assert_eq!(st.code(), Some(0), "exit after SIGTERM:\n{}", self.log());
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dedicated server the test can stop (`None`, after saying so, when the fixture's
/// server cannot be stopped).
fn stoppable_server() -> Option<s3::S3> {
    let server = s3::dedicated();
    if server.can_stop() {
        Some(server)
    } else {
        eprintln!("not applicable: this S3 fixture cannot be stopped by the test");
        None
    }
}

/// Polls `cond` until it holds; panics with `why()` after `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, why: impl Fn() -> String) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP GET on 127.0.0.1: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line of a Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The failed S3 requests counted by `tierkeep_s3_errors_total`, all labels summed.
fn s3_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tierkeep_s3_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn counts(host: &Host) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for b in host.list(None) {
        *m.entry(b["zone"].as_str().expect("zone").to_owned())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn the_daemon_keeps_the_zones_by_the_rules() {
    let server = s3::shared();
    let (host, _) = s3_host(
        server,
        (2, 3, 2),
        "",
        "[schedule]\ninterval = \"1s\"\naging = \"2s\"\n",
    );
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let manual = host.backup(&["--manual", "--label", "before the daemon"]);
    let manual = manual["id"].as_str().expect("id").to_owned();

    let mut d = Daemon::start(&host, &[]);
    let addr = d.addr();
    // One daemon per host: a second one refuses to start, naming the first.
    let err = host.fails(&["run"], 1);
    assert!(
        err.contains("already running") && err.contains(&d.child.id().to_string()),
        "{err}"
    );
    // Let it run until the deletion zone has had to evict.
    d.wait_for("an eviction", Duration::from_secs(90), |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("evicted from the deletion zone"))
    });
    // A manual backup from the CLI beside the running daemon.
    let beside = host.backup(&["--manual", "--label", "beside the daemon"]);
    let beside = beside["id"].as_str().expect("id").to_owned();

    // /metrics and status agree with list (retried: the daemon keeps working meanwhile).
    let mut agreed = false;
    for _ in 0..40 {
        let (code, text) = get(&addr, "/metrics");
        assert_eq!(code, 200);
        let listed = counts(&host);
        let status: serde_json::Value =
            serde_json::from_str(&host.ok(&["status", "--json"])).expect("status --json");
        let from_status: BTreeMap<String, u64> = status["zones"]
            .as_array()
            .expect("zones")
            .iter()
            .map(|z| {
                (
                    z["zone"].as_str().expect("zone").to_owned(),
                    z["backups"].as_u64().expect("backups"),
                )
            })
            .collect();
        let from_metrics: BTreeMap<String, u64> = ["black-box", "deletion", "reserved"]
            .iter()
            .map(|z| {
                let v = sample(&text, &format!("tierkeep_zone_backups{{zone=\"{z}\"}}"))
                    .expect("zone gauge");
                ((*z).to_owned(), v as u64)
            })
            .collect();
        let listed_all: BTreeMap<String, u64> = ["black-box", "deletion", "reserved"]
            .iter()
            .map(|z| ((*z).to_owned(), listed.get(*z).copied().unwrap_or(0)))
            .collect();
        if from_metrics == listed_all && from_status == listed_all {
            agreed = true;
            assert_eq!(status["daemon_pid"], d.child.id(), "{status}");
            assert!(
                sample(
                    &text,
                    "tierkeep_backups_total{zone=\"black-box\",outcome=\"created\"}"
                )
                .is_some_and(|n| n >= 3.0)
            );
            assert!(
                sample(&text, "tierkeep_evictions_total{zone=\"deletion\"}")
                    .is_some_and(|n| n >= 1.0)
            );
            assert_eq!(sample(&text, "tierkeep_black_box_pressure"), Some(0.0));
            assert!(text.contains("tierkeep_policy_decision_seconds_count{decision=\"aging\"}"));
            assert!(sample(&text, "tierkeep_next_backup_timestamp_seconds").is_some());
            assert!(
                sample(
                    &text,
                    "tierkeep_last_success_timestamp_seconds{zone=\"black-box\"}"
                )
                .is_some()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        agreed,
        "metrics, status and list never agreed:\n{}",
        d.log()
    );
    let (code, health) = get(&addr, "/healthz");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).expect("healthz json");
    assert_eq!(health["status"], "ok");
    // A restore from the CLI beside the running daemon (the reserved zone, on S3).
    host.restore_and_compare(&manual);
    let log = d.stop();
    assert!(log.contains("tierkeep daemon stopped"), "{log}");

    // The rules: black box within capacity, deletion full and holding the latest aged
    // backups (the earliest evicted), reserved untouched.
    let all = host.list(None);
    let zone_of = |z: &str| -> Vec<String> {
        all.iter()
            .filter(|b| b["zone"] == z)
            .map(|b| b["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (bb, del, res) = (
        zone_of("black-box"),
        zone_of("deletion"),
        zone_of("reserved"),
    );
    assert!(bb.len() <= 2, "black box over capacity: {bb:?}");
    assert_eq!(del.len(), 3, "deletion zone: {del:?}");
    assert_eq!(
        res.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([manual.clone(), beside.clone()])
    );
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&host.ok(&["catalog", "history", "--json", "--limit", "100000"]))
            .expect("history --json");
    let evicted: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "evicted")
        .filter_map(|e| e["backup_id"].as_str())
        .collect();
    assert!(!evicted.is_empty(), "no eviction in the audit trail");
    let oldest_kept = del.iter().min().expect("deletion backups");
    for e in &evicted {
        assert!(
            *e < oldest_kept.as_str(),
            "{e} was evicted but {oldest_kept} kept"
        );
    }
    for id in bb.iter().chain(&del) {
        host.ok(&["verify", id]);
    }
}

#[test]
fn sigterm_during_an_upload_exits_zero_and_the_next_start_finishes_the_move() {
    let server = s3::shared();
    let (host, deletion) = s3_host(
        server,
        (1, 5, 2),
        "shutdown_grace = \"2s\"\n",
        "[schedule]\ninterval = \"2s\"\naging = \"2s\"\n",
    );
    // 80 MiB of random data: a five-part multipart upload.
    let mut data = vec![0u8; 80 << 20];
    getrandom::fill(&mut data).expect("random");
    fs::write(host.src().join("big.bin"), &data).expect("write");
    drop(data);
    let first = host.backup(&[]);
    let id = first["id"].as_str().expect("id").to_owned();
    let archive = host.zone_dir("black-box", &id).join("archive.tar.zst");
    let before = sha256_file(&archive);
    std::thread::sleep(Duration::from_millis(2100));

    // Each part pauses 4 s once uploaded: the move cannot end within the 2 s grace.
    let mut d = Daemon::start(&host, &[("TIERKEEP_FAULTS", "s3.part_uploaded=pause:4000")]);
    wait_until(
        Duration::from_secs(60),
        || d.log().contains("fault injection: pausing"),
        || format!("no upload started:\n{}", d.log()),
    );
    d.signal(rustix::process::Signal::TERM);
    let (status, took) = d.wait_exit(Duration::from_secs(30));
    let log = d.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop with a 2 s grace:\n{log}"
    );
    assert!(log.contains("grace period ran out"), "{log}");
    drop(d);

    // Still in the black box, intact.
    let listed = host.list(None);
    let rec = listed
        .iter()
        .find(|b| b["id"] == id.as_str())
        .expect("listed");
    assert_eq!(rec["zone"], "black-box");
    assert_eq!(sha256_file(&archive), before);

    // The next start recovers and finishes the move.
    let mut d = Daemon::start(&host, &[]);
    d.wait_for("the move", Duration::from_secs(120), |v| {
        v["fields"]["id"] == id.as_str()
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("aged into the deletion zone"))
    });
    d.stop();
    let rec = host
        .list(None)
        .into_iter()
        .find(|b| b["id"] == id.as_str())
        .expect("listed");
    assert_eq!(rec["zone"], "deletion");
    assert!(
        !archive.exists(),
        "the black-box copy stayed after the move"
    );
    if server.lists_uploads() {
        assert_eq!(
            server.uploads(&deletion),
            0,
            "a stale multipart upload is left"
        );
    }
    let out = host.root().join("exported.tar.zst");
    host.ok(&["export", &id, "--to", out.to_str().expect("utf8")]);
    assert_eq!(sha256_file(&out), before);
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let server = s3::shared();
    let (host, deletion) = s3_host(
        server,
        (2, 3, 2),
        "",
        "[schedule]\ninterval = \"1s\"\naging = \"2s\"\n",
    );
    support::make_tree(&host.src());
    let mut reported = BTreeSet::new();
    // A fixed pseudo-random sequence of run lengths (0.3–2.8 s), so a failure reproduces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ms = 300 + x % 2500;
        let mut d = Daemon::start(&host, &[]);
        std::thread::sleep(Duration::from_millis(ms));
        d.signal(rustix::process::Signal::KILL);
        let (st, _) = d.wait_exit(Duration::from_secs(10));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(9),
            "round {round}"
        );
        std::thread::sleep(Duration::from_millis(100));
        reported.extend(d.created());
    }
    assert!(reported.len() >= 3, "too few backups made: {reported:?}");
    eprintln!(
        "kill -9 loop: 12 kills, {} backups reported created",
        reported.len()
    );
    // A clean start recovers what the last kill left.
    host.ok(&["tick"]);

    let keys: BTreeSet<String> = server.keys(&deletion).into_iter().collect();
    for id in &reported {
        let in_bb = host
            .zone_dir("black-box", id)
            .join("manifest.json")
            .is_file();
        let in_del = keys.contains(&format!("zone/test-host/{id}/manifest.json"));
        if in_bb || in_del {
            assert!(!(in_bb && in_del), "{id} is committed in two zones");
            host.ok(&["verify", id]);
        } else {
            let history = host.ok(&["catalog", "history", id]);
            assert!(
                history.contains("evicted"),
                "{id} was reported created, is in no zone and was not evicted:\n{history}"
            );
        }
    }
    // And nothing half-made is left behind.
    let staging = host.data().join("staging");
    if staging.is_dir() {
        let left: Vec<_> = fs::read_dir(&staging)
            .expect("staging")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left in staging: {left:?}");
    }
}

#[test]
fn black_box_pressure_keeps_every_backup_and_is_loud() {
    let Some(server) = stoppable_server() else {
        return;
    };
    let (host, _) = s3_host(
        &server,
        (1, 10, 2),
        "",
        // T2 far enough that only the pressure catch-up can bring the black box back.
        "[schedule]\ninterval = \"1s\"\naging = \"10s\"\n",
    );
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    server.stop();
    let mut d = Daemon::start(&host, &[]);
    let addr = d.addr();
    // Two scheduled backups taken beyond max_backups = 1.
    wait_until(
        Duration::from_secs(120),
        || d.created().len() >= 3,
        || format!("no backups under pressure:\n{}", d.log()),
    );
    assert!(d.log().contains("black-box pressure"), "{}", d.log());
    let (_, text) = get(&addr, "/metrics");
    assert_eq!(
        sample(&text, "tierkeep_black_box_pressure"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "tierkeep_black_box_pressure_events_total{outcome=\"over_capacity\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(text.contains("tierkeep_s3_errors_total{"), "{text}");
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
    assert!(status["black_box_pressure"].is_string(), "{status}");
    let made = d.created();

    // The server comes back: aging catches up and the black box is within capacity.
    server.restart();
    wait_until(
        Duration::from_secs(180),
        || {
            let c = counts(&host);
            c.get("black-box").copied().unwrap_or(0) <= 1
                && c.get("deletion").copied().unwrap_or(0) >= 2
        },
        || format!("aging never caught up: {:?}\n{}", counts(&host), d.log()),
    );
    d.stop();
    // No backup made under pressure was lost.
    let listed: BTreeSet<String> = host
        .list(None)
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect();
    for id in &made {
        assert!(listed.contains(id), "{id} was lost");
    }
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
    assert!(status["black_box_pressure"].is_null(), "{status}");

    // The disk reserve: a backup that would leave less than min_free is not taken.
    let mut cmd = host.cmd(&["backup"]);
    cmd.env("TIERKEEP_ZONES__BLACK_BOX__MIN_FREE", "1000000TiB");
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("min_free") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(host.list(None).len(), listed.len());
}

#[test]
fn hooks_run_around_the_reading_of_the_sources() {
    let host0 = Host::new("");
    let log = host0.root().join("hooks.log");
    let extra = format!(
        "[hooks]\npre_backup = \"echo pre $TIERKEEP_BACKUP_KIND >> {l}; test ! -e {fail}\"\n\
         post_backup = \"echo post $TIERKEEP_BACKUP_RESULT $TIERKEEP_BACKUP_ID >> {l}\"\n\
         timeout = \"2s\"\n",
        l = log.display(),
        fail = host0.root().join("fail").display()
    );
    let host = Host::new(&extra);
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");

    // A pre-hook that succeeds, then the post-hook with the backup's id.
    let m = host.backup(&[]);
    let id = m["id"].as_str().expect("id");
    let text = fs::read_to_string(&log).expect("hook log");
    assert_eq!(text, format!("pre scheduled\npost ok {id}\n"));

    // A failing pre-hook aborts cleanly; the post-hook still runs.
    fs::write(host0.root().join("fail"), "").expect("write");
    let err = host.fails(&["backup"], 1);
    assert!(
        err.contains("hooks.pre_backup") && err.contains("nothing was written"),
        "{err}"
    );
    let text = fs::read_to_string(&log).expect("hook log");
    let last: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(last.len(), 2, "{text:?}");
    assert_eq!(last[0], "pre scheduled");
    assert!(last[1].starts_with("post failed "), "{text:?}");
    assert_eq!(host.list(None).len(), 1);
    let history = host.ok(&["catalog", "history"]);
    assert!(history.contains("hooks.pre_backup"), "{history}");

    // A hook that hangs is killed at the timeout.
    let hang = Host::new("[hooks]\npre_backup = \"sleep 60\"\ntimeout = \"1s\"\n");
    let t = Instant::now();
    let err = hang.fails(&["backup", "--manual"], 1);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(err.contains("did not finish within hooks.timeout"), "{err}");
    assert!(hang.list(None).is_empty());
}

/// A clock that moves forward by exactly what the scheduler sleeps, and asks for the
/// shutdown once it reaches `end`: days of scheduling in seconds.
#[derive(Debug)]
struct VirtualClock {
    now: Mutex<time::OffsetDateTime>,
    end: time::OffsetDateTime,
    done: tokio::sync::Notify,
    slept: Mutex<Vec<Duration>>,
}

impl tierkeep::daemon::Clock for VirtualClock {
    fn now(&self) -> time::OffsetDateTime {
        *self.now.lock().expect("lock")
    }

    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let reached = {
                let mut now = self.now.lock().expect("lock");
                *now += d;
                self.slept.lock().expect("lock").push(d);
                *now >= self.end
            };
            if reached {
                self.done.notify_one();
            }
            tokio::task::yield_now().await;
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_hours_on_a_virtual_clock_follow_the_rules() {
    let host = Host::new(
        "[schedule]\ninterval = \"1h\"\naging = \"2h\"\n\
         [zones.black_box]\nmax_backups = 2\nmin_free = \"16MiB\"\n\
         [zones.deletion]\nmax_backups = 4\n\
         [daemon]\nmetrics_addr = \"off\"\n",
    );
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let loaded = tierkeep::config::load(
        &tierkeep::config::Sources {
            file: Some(host.config.clone()),
            flags: Vec::new(),
            env: false,
        },
        true,
    )
    .expect("config");
    let tk = Arc::new(tierkeep::ops::Tierkeep::new(loaded.settings).expect("open"));
    let start = time::OffsetDateTime::now_utc();
    let clock = Arc::new(VirtualClock {
        now: Mutex::new(start),
        end: start + Duration::from_secs(12 * 3600),
        done: tokio::sync::Notify::new(),
        slept: Mutex::new(Vec::new()),
    });
    let daemon = tierkeep::daemon::Daemon::new(tk.clone(), clock.clone());
    let ended = daemon
        .run(None, clock.done.notified(), std::future::pending())
        .await;
    assert_eq!(ended, tierkeep::daemon::Ended::Clean);

    // One backup at the start and one per hour after it.
    let catalog = tk.catalog().expect("catalog");
    let events = catalog.events(None, 100_000).expect("events");
    let created: Vec<_> = events.iter().filter(|e| e.kind == "created").collect();
    assert!(
        (12..=13).contains(&created.len()),
        "{} backups in 12 virtual hours",
        created.len()
    );
    let mut times: Vec<_> = created.iter().map(|e| e.at).collect();
    times.sort();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= time::Duration::hours(1) && gap < time::Duration::minutes(61),
            "backups {} and {} are {gap} apart",
            w[0],
            w[1]
        );
    }
    // Aged after T2, never early; the earliest evicted; the zones within capacity.
    let aged: Vec<_> = events.iter().filter(|e| e.kind == "aged").collect();
    assert!(aged.len() >= 9, "{} aged", aged.len());
    assert!(
        aged.iter().all(|e| !e.reason.contains("early")),
        "aged early: {aged:?}"
    );
    let bb = catalog
        .list(Some(tierkeep::domain::Zone::BlackBox))
        .expect("list");
    let del = catalog
        .list(Some(tierkeep::domain::Zone::Deletion))
        .expect("list");
    assert!(
        bb.len() <= 2 && del.len() == 4,
        "{} / {}",
        bb.len(),
        del.len()
    );
    let oldest_kept = del
        .iter()
        .map(|r| r.id.to_string())
        .min()
        .expect("deletion");
    for e in events.iter().filter(|e| e.kind == "evicted") {
        assert!(e.backup_id.as_deref().expect("id") < oldest_kept.as_str());
    }
    // No busy polling: every wait is between MIN_PAUSE and MAX_IDLE, and the scheduler
    // woke at most about once a minute.
    let slept = clock.slept.lock().expect("lock").clone();
    assert!(
        slept
            .iter()
            .all(|d| *d >= tierkeep::daemon::MIN_PAUSE && *d <= tierkeep::daemon::MAX_IDLE),
        "{slept:?}"
    );
    assert!(slept.len() <= 12 * 60 + 30, "{} wake-ups", slept.len());
    let text = daemon.metrics_text();
    assert_eq!(
        sample(
            &text,
            "tierkeep_backups_total{zone=\"black-box\",outcome=\"created\"}"
        ),
        Some(created.len() as f64),
        "{text}"
    );
}

#[test]
fn a_second_signal_stops_at_once_and_the_post_hook_still_runs() {
    let host0 = Host::new("");
    let log = host0.root().join("hooks.log");
    let host = Host::new(&format!(
        "[daemon]\nmetrics_addr = \"off\"\nshutdown_grace = \"60s\"\n\
         [hooks]\npre_backup = \"echo pre >> {l}; sleep 50\"\n\
         post_backup = \"echo post $TIERKEEP_BACKUP_RESULT >> {l}\"\ntimeout = \"2m\"\n",
        l = log.display()
    ));
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let mut d = Daemon::start(&host, &[]);
    wait_until(
        Duration::from_secs(60),
        || fs::read_to_string(&log).is_ok_and(|t| t.contains("pre")),
        || format!("no pre-hook:\n{}", d.log()),
    );
    // The first signal waits for the backup (grace 60 s); the second stops it at once.
    d.signal(rustix::process::Signal::TERM);
    d.wait_for("the graceful stop", Duration::from_secs(10), |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutdown requested: no new work"))
    });
    d.signal(rustix::process::Signal::INT);
    let (st, took) = d.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{}", d.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        fs::read_to_string(&log).expect("hook log"),
        "pre\npost aborted\n",
        "{}",
        d.log()
    );
    drop(d);
    // Nothing half-made: no backup, and the next start begins cleanly.
    assert!(host.list(None).is_empty());
    host.ok(&["tick"]);
    assert!(host.list(None).is_empty());
}

#[test]
fn an_export_beside_an_eviction_finishes_before_the_backup_goes() {
    let server = s3::shared();
    let (host, _) = s3_host(server, (1, 1, 2), "", "");
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let a = host.backup(&[]);
    let a_id = a["id"].as_str().expect("id").to_owned();
    host.backup(&[]); // `a` ages into the deletion zone, which is now full
    assert_eq!(host.list(Some("deletion")).len(), 1);

    // An export of `a` that pauses 3 s in its download...
    let out = host.root().join("a.tar.zst");
    let mut export = host.std_cmd(&["export", &a_id, "--to", out.to_str().expect("utf8")]);
    export
        .env("TIERKEEP_FAULTS", "s3.range_downloaded=pause:3000")
        .stderr(Stdio::piped());
    let mut export = export.spawn().expect("spawn export");
    let mut err = BufReader::new(export.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("pausing") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read") > 0,
            "export ended early"
        );
    }
    // ...and meanwhile a backup that must evict `a` to age the black box's backup.
    let mut backup = host.std_cmd(&["backup"]);
    backup.stderr(Stdio::piped()).stdout(Stdio::null());
    let backup = backup.spawn().expect("spawn backup");
    // The export succeeds (an eviction under it would make it fail: object gone) and
    // the backup says it waited for it.
    assert!(export.wait().expect("export").success());
    let backup = backup.wait_with_output().expect("backup");
    let berr = String::from_utf8_lossy(&backup.stderr);
    assert!(backup.status.success(), "{berr}");
    assert!(
        berr.contains("waiting for a restore, export or verify"),
        "{berr}"
    );
    // The export is whole, and `a` was evicted after it.
    assert_eq!(
        sha256_file(&out),
        a["archive_sha256"].as_str().expect("sha")
    );
    let history = host.ok(&["catalog", "history", &a_id]);
    assert!(history.contains("evicted"), "{history}");
}

#[test]
fn an_interrupted_cli_backup_still_runs_the_post_hook() {
    let host0 = Host::new("");
    let log = host0.root().join("hooks.log");
    let host = Host::new(&format!(
        "[hooks]\npre_backup = \"echo pre >> {l}; sleep 50\"\n\
         post_backup = \"echo post $TIERKEEP_BACKUP_RESULT >> {l}\"\n",
        l = log.display()
    ));
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let mut cmd = host.std_cmd(&["backup", "--manual"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn backup");
    let t = Instant::now();
    wait_until(
        Duration::from_secs(60),
        || fs::read_to_string(&log).is_ok_and(|t| t.contains("pre")),
        || "no pre-hook".to_owned(),
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("SIGINT"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(
        fs::read_to_string(&log).expect("hook log"),
        "pre\npost aborted\n"
    );
    assert!(host.list(None).is_empty());
}

#[test]
fn an_s3_outage_is_visible_and_never_holds_up_the_backups() {
    let Some(server) = stoppable_server() else {
        return;
    };
    let (host, _) = s3_host(
        &server,
        (2, 50, 2),
        "",
        "[schedule]\ninterval = \"1s\"\naging = \"2s\"\n",
    );
    fs::write(host.src().join("data.txt"), "business data\n").expect("write");
    let mut d = Daemon::start(&host, &[]);
    let addr = d.addr();
    wait_until(
        Duration::from_secs(60),
        || counts(&host).get("deletion").copied().unwrap_or(0) >= 1,
        || format!("nothing aged before the outage:\n{}", d.log()),
    );
    let (code, body) = get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");

    // The deletion zone's server stops for real.
    server.stop();
    let before = d.created().len();
    wait_until(
        Duration::from_secs(60),
        || {
            let s: serde_json::Value =
                serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
            s["zones"][1]["reachable"] == false
        },
        || format!("status never showed the outage:\n{}", d.log()),
    );
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
    let deletion = &status["zones"][1];
    assert!(deletion["unreachable_since"].is_string(), "{status}");
    assert!(
        deletion["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("s3://")),
        "{status}"
    );
    assert!(host.ok(&["status"]).contains("UNREACHABLE since"));
    let (code, body) = get(&addr, "/healthz");
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz json");
    assert_eq!(code, 200, "{body}");
    assert_eq!(health["status"], "degraded", "{body}");
    assert_eq!(
        health["zones"][1]["health"]["state"], "unreachable",
        "{body}"
    );
    let (_, metrics) = get(&addr, "/metrics");
    assert_eq!(
        sample(&metrics, "tierkeep_zone_up{zone=\"deletion\"}"),
        Some(0.0),
        "{metrics}"
    );
    let history = host.ok(&["catalog", "history"]);
    assert!(history.contains("unreachable"), "{history}");

    // Scheduled backups go on at their interval while the zone is down: each pass skips
    // the dead zone at once instead of retrying it (bounded in count, not in time: the
    // S3 requests made during the outage are the first failures and the probes).
    let errors_at_start = s3_errors(&metrics);
    wait_until(
        Duration::from_secs(90),
        || d.created().len() >= before + 8,
        || format!("backups stalled during the outage:\n{}", d.log()),
    );
    let (_, metrics) = get(&addr, "/metrics");
    // Eight passes with a backup each. Without the breaker every pass made several failed
    // requests to each of the two zones on that server; with it, each zone costs its
    // first failure and a probe now and then.
    let errors = s3_errors(&metrics) - errors_at_start;
    assert!(
        errors <= 16.0,
        "{errors} failed S3 requests in 8 passes:\n{metrics}"
    );

    // The server comes back: the next probe finds it, aging catches up, all is well.
    server.restart();
    wait_until(
        Duration::from_secs(120),
        || {
            let s: serde_json::Value =
                serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
            s["zones"][1]["reachable"] == true
                && counts(&host).get("black-box").copied().unwrap_or(0) <= 2
        },
        || format!("the zone never came back:\n{}", d.log()),
    );
    let history = host.ok(&["catalog", "history"]);
    assert!(history.contains("answers again after"), "{history}");
    wait_until(
        Duration::from_secs(60),
        || {
            let (_, body) = get(&addr, "/healthz");
            body.contains("\"status\":\"ok\"")
        },
        || format!("/healthz never recovered:\n{}", d.log()),
    );
    d.stop();
}
