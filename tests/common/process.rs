//! Starting, stopping and signalling server processes, shared by the slapd and Synapse harnesses.
//!
//! Every server is spawned by one dedicated thread that never ends, through
//! `setpriv --pdeathsig KILL --`: the kernel kills the server when that *thread* dies, i.e. when
//! the test binary exits (test threads end after each test, so they cannot be the parent).
//! Each server gets its own process group, so a SIGSTOP-ed server is not hit by job-control
//! signals meant for the test binary's group. Scratch directories live under
//! `CARGO_TARGET_TMPDIR/testbed/<pid>-...`; those of dead test binaries are swept at start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop (and thread) never ends.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn testbed-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `argv` from the spawner thread, killed with the test binary, in its own process
/// group, with stdout and stderr appended to `log`.
fn spawn_guarded(argv: &[String], cwd: &Path, log: &Path) -> std::io::Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .args(argv)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let (tx, rx) = channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("testbed-spawner thread is gone");
    rx.recv().expect("testbed-spawner thread is gone")
}

/// A long-running server process that can be stopped, restarted with the same command line,
/// and paused. Killed on drop.
pub struct Server {
    name: String,
    argv: Vec<String>,
    cwd: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Server {
    /// Starts `argv` and waits (up to `timeout`) until `ready()` is true. On failure returns
    /// a message with the server's log tail (the process is killed).
    pub fn start(
        name: &str,
        argv: Vec<String>,
        cwd: &Path,
        log: &Path,
        timeout: Duration,
        ready: impl Fn() -> bool,
    ) -> Result<Server, String> {
        let server = Server {
            name: name.to_string(),
            argv,
            cwd: cwd.to_path_buf(),
            log: log.to_path_buf(),
            child: Mutex::new(None),
        };
        server.launch(timeout, ready)?;
        Ok(server)
    }

    /// Starts the same command line again (after `stop`), waiting for `ready()`.
    pub fn restart(&self, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
        if self.child().is_some() {
            return Err(format!("{} is already running", self.name));
        }
        self.launch(timeout, ready)
    }

    fn launch(&self, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
        let child = spawn_guarded(&self.argv, &self.cwd, &self.log)
            .map_err(|e| format!("cannot run {}: {e}", self.argv.join(" ")))?;
        *self.child() = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            // A statement of its own: the lock is released before the branch takes it again.
            let exited = self
                .child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *self.child() = None;
                return Err(self.failure(&format!("exited with {status} while starting")));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.failure(&format!("not ready after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running process id. Panics if stopped.
    pub fn pid(&self) -> u32 {
        match self.child().as_ref() {
            Some(c) => c.id(),
            None => panic!("{} is not running", self.name),
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, …) to the running process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            panic!("kill -{sig} {pid} ({}) failed", self.name);
        }
    }

    /// Freezes the process (SIGSTOP) and waits until every one of its threads is stopped:
    /// `kill` only queues the signal, and a busy thread on another core may still answer a
    /// request or two before it takes it.
    pub fn pause(&self) {
        self.signal("STOP");
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let stopped = || {
            std::fs::read_dir(&tasks)
                .into_iter()
                .flatten()
                .flatten()
                .all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name: `pid (comm) T ...`.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stopped() {
            if Instant::now() > deadline {
                panic!("{} did not stop after SIGSTOP", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops gracefully (SIGCONT + SIGTERM, 10 s), then SIGKILL. No-op when not running.
    pub fn stop(&self) {
        let Some(mut child) = self.child().take() else {
            return;
        };
        let pid = child.id().to_string();
        for sig in ["-CONT", "-TERM"] {
            let _ = Command::new("kill").args([sig, &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn kill(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log file (its stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A failure message naming the server, with the tail of its log.
    pub fn failure(&self, what: &str) -> String {
        format!(
            "{} {what}\n--- {} (last lines) ---\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 40)
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file (at most 64 KiB read), or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(65536)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(cannot read: {e})");
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a short command to completion (stdin from `input`), returning stdout; on failure a
/// message with the command line, exit status and stderr.
pub fn run(argv: &[&str], input: Option<&str>) -> Result<String, String> {
    run_env(argv, input, &[])
}

/// `run` with more environment variables.
pub fn run_env(argv: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: writing stdin: {e}", argv[0]))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}):\n{}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        ))
    }
}

/// A fresh scratch directory `<CARGO_TARGET_TMPDIR or target/tmp>/testbed/<pid>-<kind>-XXXX`. Directories left
/// by test binaries that are no longer running are removed first (once per process).
pub fn scratch_dir(kind: &str) -> tempfile::TempDir {
    static SWEPT: OnceLock<PathBuf> = OnceLock::new();
    let base = SWEPT.get_or_init(|| {
        // Integration tests get CARGO_TARGET_TMPDIR; the demo (an example) does not.
        let tmp = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp"));
        let base = tmp.join("testbed");
        std::fs::create_dir_all(&base).expect("create testbed scratch base");
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base
    });
    tempfile::Builder::new()
        .prefix(&format!("{}-{kind}-", std::process::id()))
        .tempdir_in(base)
        .expect("create scratch dir")
}
