//! Daemons a test or bench starts: our own binaries (and SIPp callees) as
//! child processes whose stderr is collected, stopped by pid when dropped,
//! with their log shown when the test fails while they run.
//!
//! The loopback start-up of an RTP manager (an ephemeral gRPC port it
//! logs, a free media range, the userspace path) is here too: the
//! manager's, signaling's and the dashboard's tests and the benches all
//! start one.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a manager may take to log its gRPC address (loading the eBPF
/// programs on a loaded two-core host is the slow part).
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// Set (to anything) to see every daemon's log as it is written.
pub const SHOW_LOGS: &str = "SB_TEST_LOG";

/// A running child process, its stderr collected line by line.
///
/// Dropped, it is stopped by pid: at once (SIGKILL) unless a grace period
/// was asked for, then SIGTERM first. When the thread is panicking (a
/// failed assertion), the tail of its log goes to stderr first, so a
/// failure shows what the daemon said.
pub struct Daemon {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Set by the reader at the end of stderr.
    eof: Arc<AtomicBool>,
    grace: Duration,
}

/// How [`Daemon::spawn_with`] starts a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Echo every log line to our stderr (also with [`SHOW_LOGS`] set).
    pub echo: bool,
    /// On drop, SIGTERM and up to this long before SIGKILL (zero: SIGKILL).
    pub grace: Duration,
    /// Leave stdout and stderr as the command has them (a log file): the
    /// log collected here then stays empty.
    pub own_output: bool,
}

impl Daemon {
    /// Starts `command` (stdout discarded, stderr collected); `name` says
    /// whose log a failure shows.
    pub fn spawn(name: &str, command: &mut Command) -> Daemon {
        Daemon::spawn_with(name, command, Options::default())
    }

    pub fn spawn_with(name: &str, command: &mut Command, options: Options) -> Daemon {
        Daemon::try_spawn_with(name, command, options)
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    /// [`Daemon::spawn_with`] for callers that report errors (xtask).
    pub fn try_spawn_with(
        name: &str,
        command: &mut Command,
        options: Options,
    ) -> std::io::Result<Daemon> {
        if !options.own_output {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let mut child = command.spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(AtomicBool::new(false));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            let done = Arc::clone(&eof);
            let echo = options.echo || std::env::var_os(SHOW_LOGS).is_some();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("{line}");
                    }
                    lock(&sink).push(line);
                }
                done.store(true, Ordering::Release);
            });
        }
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
            eof,
            grace: options.grace,
        })
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits (`limit` at most) for a log line containing `ready`; panics
    /// with its log when it exits first or stays silent.
    pub fn wait_ready(&mut self, ready: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !lock(&self.log).iter().any(|l| l.contains(ready)) {
            if let Some(status) = self.exited() {
                panic!("{} exited at start ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process, for what this type does not cover.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything it logged so far, one line each, newline-terminated.
    pub fn log(&self) -> String {
        lock(&self.log).iter().map(|l| format!("{l}\n")).collect()
    }

    /// The lines it logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Its last `lines` log lines.
    pub fn tail(&self, lines: usize) -> String {
        let log = lock(&self.log);
        log[log.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits up to `limit` for a log line that `found` accepts.
    pub fn wait_for_log<T>(
        &self,
        limit: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            {
                let log = lock(&self.log);
                for line in &log[seen..] {
                    if let Some(value) = found(line) {
                        return Some(value);
                    }
                }
                seen = log.len();
            }
            if Instant::now() >= deadline || !self.running() {
                // The reader may still hold the last lines of a dead process.
                std::thread::sleep(Duration::from_millis(50));
                return lock(&self.log)[seen..].iter().find_map(|l| found(l));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first logged word that starts with `key` (`grpc=`), without it.
    pub fn logged_value(&self, key: &str, limit: Duration) -> Option<String> {
        self.wait_for_log(limit, |line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        })
    }

    /// Whether it has not exited yet.
    pub fn running(&self) -> bool {
        // try_wait needs &mut; /proc tells without reaping.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
    }

    /// Sends SIGHUP (reload).
    pub fn hang_up(&self) {
        signal(self.child.id(), SIGHUP);
    }

    /// Sends signal number `sig` (`libc::SIGINT`, `Signal::SIGTERM as i32`).
    pub fn send_signal(&self, sig: i32) {
        signal(self.child.id(), sig);
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; panics with its
    /// log if it did not stop.
    pub fn terminate_within(&mut self, limit: Duration) -> ExitStatus {
        signal(self.child.id(), SIGTERM);
        self.wait_exit_within(limit)
    }

    /// Its exit status once it has exited (every log line read), `None`
    /// while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("wait for the daemon")?;
        self.read_to_end();
        Some(status)
    }

    /// Waits up to `limit` for it to exit (after a signal); panics with its
    /// log if it did not.
    pub fn wait_exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                self.read_to_end();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {limit:?}; its last log lines:\n{}",
                self.name,
                self.tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Daemon::terminate_within`] 10 s.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(10))
    }

    /// SIGKILL and wait: nothing of its shutdown runs (a crash, a pulled
    /// plug).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// After the exit: waits (2 s at most) until the reader has every line,
    /// the shutdown summary included.
    fn read_to_end(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.eof.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) it used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start after ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = [11usize, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        Duration::from_micros(ticks * 1_000_000 / clock_ticks())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && !lock(&self.log).is_empty() {
            eprintln!(
                "---- {} (pid {}), last log lines ----\n{}\n----",
                self.name,
                self.child.id(),
                self.tail(40)
            );
        }
        if !self.grace.is_zero() {
            signal(self.child.id(), SIGTERM);
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}

/// Sends `sig` to `pid`; a process that is gone already is no error here.
fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            kill(pid, sig);
        }
    }
}

fn clock_ticks() -> u64 {
    const SC_CLK_TCK: i32 = 2;
    // SAFETY: sysconf(3) takes a plain integer and touches no memory of ours.
    u64::try_from(unsafe { sysconf(SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// Runs `command` (a daemon given a configuration it must refuse) until it
/// exits; panics with what it logged when it still runs after `limit`.
/// Its exit status and stderr.
pub fn run_to_exit(name: &str, command: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut daemon = Daemon::spawn(name, command);
    let status = daemon.wait_exit_within(limit);
    (status, daemon.log())
}

/// What an operator sees of a daemon that could not start: the last line
/// of its stderr, after checking there is no backtrace in it (our daemons
/// print one only with SWITCHBOARD_BACKTRACE=1).
pub fn failure_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.to_lowercase().contains("backtrace"),
        "no backtrace unless SWITCHBOARD_BACKTRACE=1:\n{stderr}"
    );
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// A manager on loopback: its process and the gRPC address it logged.
pub struct Manager {
    pub daemon: Daemon,
    pub grpc: SocketAddr,
}

/// The arguments of a manager on loopback, userspace path only: gRPC on
/// `grpc_port` (0: an ephemeral one, which it logs as `grpc=`), media on
/// `min..=max` (see [`crate::free_media_range`]).
pub fn manager_args(grpc_port: u16, (min, max): (u16, u16)) -> Vec<String> {
    [
        "--grpc-port",
        &grpc_port.to_string(),
        "--fast-path",
        "off",
        "--advertise",
        "127.0.0.1",
        "--rtp-bind-address",
        "127.0.0.1",
        "--log-level",
        "info",
        "--rtp-port-min",
        &min.to_string(),
        "--rtp-port-max",
        &max.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts the manager `binary` with [`manager_args`] and `extra`, and
/// waits for the gRPC address it logs (so parallel tests never race for a
/// port); panics with its log when it logs none.
pub fn start_manager<I>(
    binary: &Path,
    grpc_port: u16,
    media: (u16, u16),
    extra: I,
    options: Options,
) -> Manager
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    let mut command = Command::new(binary);
    command.args(manager_args(grpc_port, media)).args(extra);
    let daemon = Daemon::spawn_with("switchboard-rtpmanager", &mut command, options);
    let grpc = grpc_address(&daemon);
    Manager { daemon, grpc }
}

/// The gRPC address a starting manager logs (`grpc=ADDR`), within
/// [`START_LIMIT`]; panics with its log otherwise.
pub fn grpc_address(daemon: &Daemon) -> SocketAddr {
    let Some(addr) = daemon.logged_value("grpc=", START_LIMIT) else {
        panic!(
            "the manager did not log its gRPC address; its log:\n{}",
            daemon.log()
        );
    };
    addr.parse()
        .unwrap_or_else(|e| panic!("a socket address after grpc=, not {addr:?}: {e}"))
}
