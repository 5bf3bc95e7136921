//! The daemon (`matrix-ldap-sync run`) as a process: signals, health and metrics, systemd
//! notifications, graceful and abrupt stops, against the harness's real slapd and Synapse.
//! Waits are bounded polls; nothing asserts on a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::binary;
use common::site::Site;
use common::{free_port, Slapd};
use serde_json::Value;

/// A running `matrix-ldap-sync run`, killed on drop (and by the kernel if the test dies).
struct Daemon {
    child: Child,
    log: PathBuf,
    state: PathBuf,
}

impl Daemon {
    fn start(site: &Site) -> Daemon {
        Daemon::start_with(site, &[])
    }

    fn start_with(site: &Site, env: &[(&str, &str)]) -> Daemon {
        let log = site.dir.path().join("daemon.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(binary())
            .arg("--config")
            .arg(site.config())
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Daemon {
            child,
            log,
            state: site.dir.path().join("state"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({status}):\n{}", self.log());
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match within(timeout, || self.child.try_wait().unwrap()) {
            Some(status) => status,
            None => panic!(
                "the daemon did not exit within {timeout:?}:\n{}",
                self.log()
            ),
        }
    }

    /// The `status.json` this daemon process wrote, if any.
    fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state.join("status.json")).ok()?;
        let status: Value = serde_json::from_str(&text).unwrap();
        (status["pid"] == self.pid()).then_some(status)
    }

    /// Waits until this process has finished `runs` runs; returns its status.
    fn wait_runs(&mut self, runs: u64, timeout: Duration) -> Value {
        self.poll(timeout, &format!("run #{runs}"), |d| {
            d.status().filter(|s| s["runs"].as_u64().unwrap() >= runs)
        })
    }

    fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let what = format!("`{needle}` in the daemon log");
        self.poll(timeout, &what, |d| {
            let log = d.log();
            log.contains(needle).then_some(log)
        })
    }

    /// `poll` while checking that the daemon runs; a timeout shows its log.
    fn poll<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Daemon) -> Option<T>,
    ) -> T {
        let found = within(timeout, || {
            self.assert_running();
            check(self)
        });
        match found {
            Some(value) => value,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `check` every 50 ms until it returns something, or panics after `timeout`.
fn poll<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    within(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Calls `check` every 50 ms until it returns something; `None` after `timeout`.
fn within<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Appends a `[daemon]` section, and sets the homeserver's concurrency.
fn configure(site: &Site, daemon: &str, concurrency: usize) {
    let text = std::fs::read_to_string(site.config()).unwrap().replace(
        "max_retries = 1",
        &format!("max_retries = 1\nconcurrency = {concurrency}"),
    );
    std::fs::write(site.config(), format!("{text}\n[daemon]\n{daemon}\n")).unwrap();
}

/// Every account on the homeserver whose id carries this test's tag, with its display name.
fn accounts(site: &Site) -> BTreeMap<String, String> {
    let (code, body) = site.synapse.request(
        "GET",
        &format!(
            "/_synapse/admin/v2/users?name={}&limit=1000&deactivated=true&locked=true",
            site.tag
        ),
        None,
    );
    assert_eq!(code, 200, "{body}");
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["name"].as_str().unwrap().contains(&site.tag))
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_string(),
                u["displayname"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until the homeserver has seen at least `n` writes for this test's accounts.
fn wait_writes(site: &Site, mark: u64, n: usize) {
    poll(Duration::from_secs(60), &format!("{n} writes"), || {
        (site.writes_since(mark).len() >= n).then_some(())
    });
}

fn status_json(site: &Site) -> Value {
    let run = site.run(&["status", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// GET on the daemon's endpoint: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// The OpenMetrics text as `name{labels}` → value.
fn metrics(port: u16) -> BTreeMap<String, f64> {
    let (code, text) = get(port, "/metrics");
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

const FAST: &str = "interval_secs = 3600\njitter_secs = 0\nretry_min_secs = 1";

/// A daemon (hourly runs) on a site with one agent, after its first run; with that run's status.
fn daemon_after_first_run(name: &str, given: &str, sn: &str) -> (Site, Daemon, Value) {
    let site = Site::new(name);
    configure(&site, FAST, 4);
    site.add_agent(&format!("{name}1"), given, sn, "DSI", None);
    let mut daemon = Daemon::start(&site);
    let first = daemon.wait_runs(1, Duration::from_secs(60));
    (site, daemon, first)
}

#[test]
fn sigusr1_runs_a_sync_now_and_status_works_while_the_daemon_holds_the_ledger() {
    let (site, mut daemon, first) = daemon_after_first_run("usr", "Ulysse", "Bonnet");
    assert_eq!(first["last_run"]["applied"], 1, "{first}");
    assert!(site.synapse.get_user(&site.mxid("ulysse.bonnet")).is_some());

    site.add_agent("u2", "Ursule", "Bonnet", "DSI", None);
    daemon.signal("USR1");
    let second = daemon.wait_runs(2, Duration::from_secs(30));
    assert_eq!(second["last_run"]["applied"], 1, "{second}");
    // The first run read everything; the second, within the hour, only the new agent.
    assert_eq!(first["last_run"]["incremental"], false, "{first}");
    assert_eq!(second["last_run"]["incremental"], true, "{second}");
    assert_eq!(second["last_run"]["agents"], 1, "{second}");
    assert!(site.synapse.get_user(&site.mxid("ursule.bonnet")).is_some());

    // The daemon holds sled's lock: `status` shows what the daemon wrote.
    let status = site.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains(&format!(
            "in use by another process; the daemon's summary (pid {})",
            daemon.pid()
        )),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("Managed accounts: 2 (2 created, 0 adopted)"),
        "{}",
        status.stdout
    );
    let json = status_json(&site);
    assert_eq!(json["managed_accounts"], 2, "{json}");
    assert_eq!(json["daemon"]["runs"], 2, "{json}");
    let check = site.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert!(
        check.stdout.contains("(in use by the running daemon)"),
        "{}",
        check.stdout
    );
    daemon.assert_running();
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    let (site, mut daemon, _) = daemon_after_first_run("hup", "Hugo", "Lemoine");
    let good = std::fs::read_to_string(site.config()).unwrap();

    // A bad value: refused, named, and the running config goes on.
    std::fs::write(
        site.config(),
        good.replace("page_size = 2", "page_size = 0"),
    )
    .unwrap();
    daemon.signal("HUP");
    let log = daemon.wait_log("reload refused", Duration::from_secs(10));
    assert!(
        log.contains("config.toml: key `directory.page_size`"),
        "{log}"
    );
    daemon.signal("USR1");
    let status = daemon.wait_runs(2, Duration::from_secs(30));
    assert_eq!(status["health"], "ok", "{status}");

    // A good change: a second base DN with one more agent.
    let second_ou = site.slapd.new_ou("hup-b");
    site.slapd.add_ldif(&format!(
        "dn: uid=h2,{second_ou}\nobjectClass: inetOrgPerson\nuid: h2\ncn: Hélène Lemoine\ngivenName: Hélène\nsn: Lemoine {tag}\nou: RH\n",
        tag = site.tag
    ));
    std::fs::write(
        site.config(),
        good.replace(
            &format!("base_dns = [\"{}\"]", site.ou),
            &format!("base_dns = [\"{}\", \"{second_ou}\"]", site.ou),
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_log(
        "reloaded the config and the mapping",
        Duration::from_secs(10),
    );
    daemon.signal("USR1");
    let status = daemon.wait_runs(3, Duration::from_secs(30));
    // The new base widens the scope: the whole plan waits for an operator (the reload took).
    assert_eq!(status["last_run"]["applied"], 0, "{status}");
    assert!(
        status["last_run"]["brake"]
            .as_str()
            .unwrap_or_default()
            .contains(&second_ou),
        "{status}"
    );
    daemon.assert_running();
}

/// A daemon stopped by `sig` while applying a plan of `agents` creations, one at a time.
struct MidApply {
    site: Site,
    expected: BTreeSet<String>,
    daemon: Daemon,
    exit: ExitStatus,
    /// From the signal to the exit.
    took: Duration,
    /// Accounts on the homeserver once it exited.
    created: BTreeMap<String, String>,
}

fn signal_mid_apply(name: &str, agents: usize, sig: &str) -> MidApply {
    let site = Site::new(name);
    configure(&site, FAST, 1);
    let expected = site.add_agents(agents);
    let mark = site.synapse.log_mark();
    let mut daemon = Daemon::start(&site);
    wait_writes(&site, mark, 3);
    let asked = Instant::now();
    daemon.signal(sig);
    let exit = daemon.wait_exit(Duration::from_secs(15));
    let took = asked.elapsed();
    let created = accounts(&site);
    eprintln!(
        "SIG{sig} mid-apply: exited ({exit}) in {took:?}, {} of {agents} accounts created",
        created.len()
    );
    assert!(
        created.len() < agents,
        "the run ended before SIG{sig}: the test proves nothing"
    );
    MidApply {
        site,
        expected,
        daemon,
        exit,
        took,
        created,
    }
}

#[test]
fn sigterm_during_a_run_finishes_the_action_in_flight_and_exits_0() {
    let MidApply {
        site,
        expected,
        daemon,
        exit,
        took,
        created,
    } = signal_mid_apply("term", 100, "TERM");
    assert_eq!(exit.code(), Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Stopped part-way, and the ledger holds exactly what the homeserver got.
    let status = status_json(&site);
    assert_eq!(status["managed_accounts"], created.len(), "{status}");
    assert!(
        status["last_run"]["outcome"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{status}"
    );
    assert!(daemon.log().contains("stopped, ledger flushed"));

    // The rest comes with the next run, nothing twice.
    site.sync_ok();
    let names: BTreeSet<String> = accounts(&site).into_keys().collect();
    assert_eq!(names, expected);
}

#[test]
fn sigkill_mid_apply_then_restart_converges_without_duplicates() {
    const AGENTS: usize = 80;
    let MidApply {
        site,
        expected,
        daemon,
        exit,
        created,
        ..
    } = signal_mid_apply("kill", AGENTS, "KILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(9)
    );
    let after_kill = created.len();
    drop(daemon);

    let mut daemon = Daemon::start(&site);
    let status = daemon.wait_runs(1, Duration::from_secs(120));
    assert_eq!(status["last_run"]["outcome"], "ok", "{status}");
    eprintln!(
        "SIGKILL after {after_kill} accounts on the homeserver; the restart applied {} ({} of them adopted)",
        status["last_run"]["applied"], status["adopted"]
    );

    // Exactly one account per agent, with the profile a clean run gives.
    let all = accounts(&site);
    let names: BTreeSet<String> = all.keys().cloned().collect();
    assert_eq!(names, expected, "missing or duplicated accounts");
    for (i, mxid) in (0..AGENTS).map(|i| (i, site.mxid(&format!("agent.n{i}")))) {
        assert_eq!(all[&mxid], format!("Agent N{i} {} [DSI]", site.tag));
    }
    assert_eq!(status["managed_accounts"], AGENTS, "{status}");

    // Stopped cleanly, a second run plans nothing.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)).code(), Some(0));
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["changes_pending"], false, "{plan}");
}

#[test]
fn health_turns_degraded_when_the_directory_stops_and_ok_when_it_returns() {
    let slapd: &'static Slapd = Box::leak(Box::new(Slapd::start()));
    let site = Site::on(slapd, "health");
    let port = free_port();
    let every_second = "interval_secs = 1\njitter_secs = 0\nretry_min_secs = 1";
    configure(
        &site,
        &format!("{every_second}\nlisten = \"127.0.0.1:{port}\""),
        4,
    );
    site.add_agent("g1", "Gilles", "Perrin", "DSI", None);
    let mut daemon = Daemon::start(&site);
    daemon.wait_runs(1, Duration::from_secs(60));
    let (code, body) = get(port, "/health");
    assert_eq!(code, 200, "{body}");

    slapd.stop();
    let body = daemon.poll(Duration::from_secs(30), "/health degraded", |_| {
        let (code, body) = get(port, "/health");
        (code == 503).then_some(body)
    });
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded");
    let reason = health["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("directory unreachable: "), "{health}");
    assert!(reason.contains(&slapd.url), "{health}");
    let m = metrics(port);
    assert_eq!(m["matrix_ldap_sync_directory_up"], 0.0);
    assert!(m["matrix_ldap_sync_runs_total{outcome=\"directory_error\"}"] >= 1.0);
    daemon.assert_running();

    slapd.start_again();
    daemon.poll(Duration::from_secs(30), "/health ok again", |_| {
        (get(port, "/health").0 == 200).then_some(())
    });
    assert_eq!(metrics(port)["matrix_ldap_sync_directory_up"], 1.0);
}

#[test]
fn sigterm_with_a_hung_homeserver_exits_after_the_shutdown_timeout() {
    // A homeserver that answers reads ("no such user") and never answers a write.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut held = Vec::new();
        for stream in hung.incoming() {
            let mut stream = stream.unwrap();
            let mut first = String::new();
            BufReader::new(&stream).read_line(&mut first).unwrap();
            if first.starts_with("GET ") {
                // The account listing is empty, and no account exists.
                let (status, body) = if first.starts_with("GET /_synapse/admin/v2/users?") {
                    ("200 OK", r#"{"users":[],"total":0}"#)
                } else {
                    (
                        "404 Not Found",
                        r#"{"errcode":"M_NOT_FOUND","error":"User not found"}"#,
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            } else {
                held.push(stream);
            }
        }
    });
    let site = Site::new("hunghs");
    configure(&site, &format!("{FAST}\nshutdown_timeout_secs = 2"), 1);
    let text = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(site.config(), text.replace(&site.synapse.url, &hung_url)).unwrap();
    site.add_agent("w1", "Wilfried", "Caron", "DSI", None);
    let mut daemon = Daemon::start(&site);
    daemon.wait_log("applying the plan", Duration::from_secs(30));
    let asked = Instant::now();
    daemon.signal("TERM");
    let exit = daemon.wait_exit(Duration::from_secs(15));
    let took = asked.elapsed();
    eprintln!("SIGTERM with a request hanging: exited {exit} in {took:?}");
    assert_eq!(exit.code(), Some(0), "{}", daemon.log());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(daemon.log().contains("after the shutdown timeout"));
}

#[test]
fn sigterm_while_the_directory_hangs_exits_at_once() {
    let slapd: &'static Slapd = Box::leak(Box::new(Slapd::start()));
    let site = Site::on(slapd, "hang");
    configure(&site, FAST, 4);
    site.add_agent("z1", "Zélie", "Marchand", "DSI", None);
    slapd.pause();
    let mut daemon = Daemon::start(&site);
    daemon.wait_log("daemon started", Duration::from_secs(10));
    let asked = Instant::now();
    daemon.signal("TERM");
    let exit = daemon.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    slapd.resume();
    eprintln!("SIGTERM during a hung directory read: exited {exit} in {took:?}");
    assert_eq!(exit.code(), Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        daemon.log().contains("had not applied anything yet"),
        "{}",
        daemon.log()
    );
}

#[test]
fn metrics_and_systemd_notifications() {
    let site = Site::new("metrics");
    let port = free_port();
    configure(&site, &format!("{FAST}\nlisten = \"127.0.0.1:{port}\""), 4);
    for (uid, given) in [("m1", "Maël"), ("m2", "Mia"), ("m3", "Marius")] {
        site.add_agent(uid, given, "Masson", "DSI", None);
    }
    let socket_path = site.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Daemon::start_with(
        &site,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let mut read_until = |what: &str| -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what} from the daemon ({e}); got {seen:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(message.clone());
            if message.contains(what) {
                return message;
            }
        }
    };
    read_until("READY=1");
    let status = read_until("STATUS=last run");
    assert!(
        status.contains("ok: 3 agents, 3 planned, 3 applied, 0 failed"),
        "{status}"
    );
    read_until("WATCHDOG=1");
    read_until("WATCHDOG=1");

    daemon.wait_runs(1, Duration::from_secs(10));
    let m = metrics(port);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (name, value) in [
        ("matrix_ldap_sync_runs_total{outcome=\"ok\"}", 1.0),
        ("matrix_ldap_sync_run_duration_seconds_count", 1.0),
        ("matrix_ldap_sync_agents", 3.0),
        ("matrix_ldap_sync_planned_actions", 3.0),
        ("matrix_ldap_sync_managed_accounts", 3.0),
        (
            "matrix_ldap_sync_actions_total{kind=\"create_account\",result=\"done\"}",
            3.0,
        ),
        ("matrix_ldap_sync_brake_engaged", 0.0),
        ("matrix_ldap_sync_directory_up", 1.0),
    ] {
        assert_eq!(m.get(name), Some(&value), "{name} in {m:?}");
    }
    let last_success = m["matrix_ldap_sync_last_success_timestamp_seconds"];
    assert!(
        (now - last_success).abs() < 120.0,
        "{last_success} vs {now}"
    );
    let (code, body) = get(port, "/health");
    assert_eq!(
        (code, body.contains("\"status\":\"ok\"")),
        (200, true),
        "{body}"
    );

    daemon.signal("INT");
    read_until("STOPPING=1");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let log = daemon.log();
    assert!(log.contains("sync run finished"), "{log}");
    assert!(!log.contains(&site.synapse.admin_token), "the token leaked");
    assert!(
        !log.contains(&site.slapd.sync_password),
        "the password leaked"
    );
}

#[test]
fn a_damaged_ledger_is_named_with_its_recovery() {
    let site = Site::new("damaged");
    site.add_agent("d1", "Denis", "Roy", "DSI", None);
    site.sync_ok();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(site.dir.path().join("state/ledger/db"), noise).unwrap();
    for args in [&["status"][..], &["run"][..]] {
        let run = site.run(args);
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        for needle in [
            "is damaged",
            "repair --dry-run",
            "Crashes and recovering the ledger",
        ] {
            assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        }
    }
}

#[test]
fn a_ledger_of_a_newer_schema_stops_the_daemon_with_a_clear_error() {
    let site = Site::new("schema");
    let ledger = site.dir.path().join("state/ledger");
    {
        let db = sled::open(&ledger).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let mut daemon = Daemon::start(&site);
    let exit = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(1));
    let log = daemon.log();
    assert!(log.contains("schema version 99"), "{log}");
    assert!(log.contains(&ledger.display().to_string()), "{log}");
}

#[test]
fn the_systemd_unit_verifies() {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd): run scripts/install-testbed.sh");
    assert!(version.status.success());
    // verify insists that ExecStart= exists: check a copy that points at the test build.
    let dir = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(common::repo_root().join("systemd/matrix-ldap-sync.service"))
            .unwrap()
            .replace("/usr/bin/matrix-ldap-sync", binary().to_str().unwrap());
    let path = dir.path().join("matrix-ldap-sync.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn a_braked_daemon_reports_it_and_applies_held_back_departures_once_approved() {
    let site = Site::new("dbrake");
    configure(
        &site,
        &format!("{FAST}\nlisten = \"127.0.0.1:{}\"", free_port()),
        4,
    );
    let port: u16 = std::fs::read_to_string(site.config())
        .unwrap()
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    let mxids: Vec<String> = site.add_agents(30).into_iter().collect();
    let mut daemon = Daemon::start(&site);
    daemon.wait_runs(1, Duration::from_secs(60));

    // 10 of 30 leave at once (an incremental read: no shrink to see): 33%, over the default
    // 5% from brake.percent_from = 10 departures on.
    for i in 0..10 {
        site.slapd.delete(&format!("uid=a{i},{}", site.ou));
    }
    daemon.signal("USR1");
    let second = daemon.wait_runs(2, Duration::from_secs(60));
    assert_eq!(second["last_run"]["held_back"], 10, "{second}");
    let (code, body) = get(port, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("brake engaged, 10 departure(s) held back: 10 departures are 33.3% of 30 managed accounts"),
        "{body}"
    );
    assert_eq!(metrics(port)["matrix_ldap_sync_brake_engaged"], 1.0);

    // The operator approves while the daemon holds the ledger, then asks for a run.
    let approve = site.run(&["sync", "--allow-mass-changes"]);
    assert_eq!(approve.code, 0, "{}\n{}", approve.stdout, approve.stderr);
    assert!(
        approve.stdout.contains("may apply up to 10 departure(s)"),
        "{}",
        approve.stdout
    );
    daemon.signal("USR1");
    let third = daemon.wait_runs(3, Duration::from_secs(60));
    assert_eq!(third["last_run"]["held_back"], 0, "{third}");
    let suspended: Vec<&String> = mxids
        .iter()
        .filter(|m| {
            site.synapse.get_user(m).unwrap()["suspended"]
                .as_bool()
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(suspended.len(), 10, "{suspended:?}");
    assert_eq!(get(port, "/health").0, 200);
    assert_eq!(metrics(port)["matrix_ldap_sync_brake_engaged"], 0.0);
}

#[test]
fn an_agent_the_homeserver_refuses_leaves_health_ok_with_a_warning() {
    let site = Site::on_servers(
        Slapd::shared(),
        common::synapse::with_a_bridge(),
        "refusedhealth",
    );
    site.configure(&common::site::Settings {
        localpart: Some("{employeeNumber|localpart}".into()),
        ..Default::default()
    });
    let port = free_port();
    configure(&site, &format!("{FAST}\nlisten = \"127.0.0.1:{port}\""), 4);
    site.add_agent_with(
        "fine",
        "Anne",
        "Bon",
        "DSI",
        None,
        &format!("employeeNumber: ok-{}\n", site.tag),
    );
    // A bridge holds `reserved-…`: refused on creation, every time.
    let numeric = format!("reserved-{}", site.tag);
    site.add_agent_with(
        "digits",
        "Bruno",
        "Chiffre",
        "DSI",
        None,
        &format!("employeeNumber: {numeric}\n"),
    );
    let mut daemon = Daemon::start(&site);
    daemon.wait_runs(1, Duration::from_secs(60));
    daemon.signal("USR1");
    let status = daemon.wait_runs(2, Duration::from_secs(60));
    assert_eq!(status["health"], "ok", "{status}");
    assert_eq!(status["last_run"]["outcome"], "ok", "{status}");
    let (code, body) = get(port, "/health");
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    let warning = health["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("refused by the homeserver"), "{health}");
    let m = metrics(port);
    assert_eq!(m["matrix_ldap_sync_held_agents{reason=\"refused\"}"], 1.0);
    assert_eq!(m["matrix_ldap_sync_held_agents{reason=\"conflict\"}"], 0.0);
    // The second run did not ask again.
    let log = daemon.log();
    assert_eq!(
        log.matches("refused by the homeserver; not tried again")
            .count(),
        1,
        "{log}"
    );
}

/// A daemon serving `/health` on a site of its own Synapse (to pause), with `agents` agents
/// created by its first run; `homeserver` is added to the `[homeserver]` section, and systemd
/// notifications come to the returned socket.
fn daemon_on_own_synapse(
    name: &str,
    agents: usize,
    concurrency: usize,
    homeserver: &str,
) -> (Site, Daemon, u16, UnixDatagram, BTreeSet<String>) {
    let synapse: &'static common::Synapse = Box::leak(Box::new(common::Synapse::start()));
    let site = Site::on_servers(Slapd::shared(), synapse, name);
    let port = free_port();
    configure(
        &site,
        &format!("{FAST}\nlisten = \"127.0.0.1:{port}\""),
        concurrency,
    );
    let text = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        text.replacen(
            "max_retries = 1\n",
            &format!("max_retries = 1\n{homeserver}\n"),
            1,
        ),
    )
    .unwrap();
    let mxids = site.add_agents(agents);
    let socket_path = site.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut daemon = Daemon::start_with(&site, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let first = daemon.wait_runs(1, Duration::from_secs(60));
    assert_eq!(first["last_run"]["outcome"], "ok", "{first}");
    (site, daemon, port, socket, mxids)
}

/// Reads systemd notifications until one contains `what`.
fn notified(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 8192];
    let mut seen = Vec::new();
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no `{what}` from the daemon ({e}); got {seen:?}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains(what) {
            return message;
        }
        seen.push(message);
    }
}

/// Waits for `/health` to answer `code` with `needle` in its body; returns the body.
fn wait_health(daemon: &mut Daemon, port: u16, code: u16, needle: &str) -> Value {
    let body = daemon.poll(
        Duration::from_secs(90),
        &format!("/health {code} with `{needle}`"),
        |_| {
            let (got, body) = get(port, "/health");
            (got == code && body.contains(needle)).then_some(body)
        },
    );
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_paused_homeserver_ends_the_run_at_once_health_503_not_answering_then_recovers() {
    let (site, mut daemon, port, socket, mxids) = daemon_on_own_synapse(
        "pausedhs",
        24,
        8,
        "timeout_secs = 3\nrun_deadline = \"60s\"",
    );
    site.move_agents(24, "RH");
    site.synapse.pause();
    let paused = Instant::now();
    daemon.signal("USR1");
    let health = wait_health(&mut daemon, port, 503, "homeserver not answering");
    let unhealthy_after = paused.elapsed();
    let status = daemon.wait_runs(2, Duration::from_secs(60));
    let ended_after = paused.elapsed();
    eprintln!(
        "Synapse paused, 24 updates, 3 s timeout: /health 503 after {unhealthy_after:.1?}, run ended after {ended_after:.1?}\n{health}"
    );
    let reason = health["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("homeserver not answering: "), "{health}");
    assert!(reason.contains(&site.synapse.url), "{health}");
    // The breaker, not the deadline (60 s), nor every action's retries, ended the run.
    assert!(ended_after < Duration::from_secs(20), "{ended_after:?}");
    let outcome = status["last_run"]["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("aborted: homeserver not answering: "),
        "{status}"
    );
    assert_eq!(status["health"], "degraded", "{status}");
    let m = metrics(port);
    assert_eq!(m["matrix_ldap_sync_homeserver_up"], 0.0, "{m:?}");
    // At least this run (the daemon retries while Synapse stays paused).
    assert!(
        m["matrix_ldap_sync_runs_total{outcome=\"homeserver_unavailable\"}"] >= 1.0,
        "{m:?}"
    );
    let systemd = notified(&socket, "homeserver not answering");
    assert!(systemd.contains("STATUS="), "{systemd}");
    assert!(systemd.contains(&site.synapse.url), "{systemd}");

    site.synapse.resume();
    let resumed = Instant::now();
    wait_health(&mut daemon, port, 200, "\"status\":\"ok\"");
    eprintln!(
        "Synapse resumed: /health 200 after {:.1?}",
        resumed.elapsed()
    );
    daemon.poll(Duration::from_secs(60), "the updates applied", |_| {
        (site.in_department(&mxids, "RH") == mxids.len()).then_some(())
    });
    daemon.poll(Duration::from_secs(60), "a good run", |d| {
        d.status().filter(|s| s["last_run"]["outcome"] == "ok")
    });
    assert_eq!(metrics(port)["matrix_ldap_sync_homeserver_up"], 1.0);
}

#[test]
fn health_says_not_answering_during_a_run_stuck_on_a_paused_homeserver_until_its_deadline() {
    // One request at a time and a breaker that never opens: the run would go on for as long
    // as it has actions; the health must not wait for it to end, and the deadline ends it.
    let (site, mut daemon, port, socket, mxids) = daemon_on_own_synapse(
        "stuckhs",
        12,
        1,
        "timeout_secs = 2\nbreaker_failures = 1000\nrun_deadline = \"15s\"",
    );
    site.move_agents(12, "DAF");
    site.synapse.pause();
    let paused = Instant::now();
    daemon.signal("USR1");
    let health = wait_health(&mut daemon, port, 503, "homeserver not answering");
    let unhealthy_after = paused.elapsed();
    let in_progress = daemon.status().unwrap();
    eprintln!(
        "stuck run: /health 503 after {unhealthy_after:.1?}, runs {}: {health}",
        in_progress["runs"]
    );
    assert_eq!(in_progress["runs"], 1, "the run had ended: {in_progress}");
    assert!(
        unhealthy_after < Duration::from_secs(12),
        "{unhealthy_after:?}"
    );
    let systemd = notified(&socket, "homeserver not answering");
    assert!(systemd.contains("run in progress"), "{systemd}");

    let status = daemon.wait_runs(2, Duration::from_secs(40));
    let ended_after = paused.elapsed();
    eprintln!(
        "stuck run ended after {ended_after:.1?}: {}",
        status["last_run"]["outcome"]
    );
    assert!(ended_after < Duration::from_secs(15 + 8), "{ended_after:?}");
    let outcome = status["last_run"]["outcome"].as_str().unwrap();
    assert!(outcome.contains("run deadline reached"), "{status}");
    let (code, body) = get(port, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("homeserver not answering"), "{body}");

    site.synapse.resume();
    wait_health(&mut daemon, port, 200, "\"status\":\"ok\"");
    daemon.poll(Duration::from_secs(90), "the updates applied", |_| {
        (site.in_department(&mxids, "DAF") == mxids.len()).then_some(())
    });
}
