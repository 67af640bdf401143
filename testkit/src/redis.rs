//! A throwaway Redis server for the several-signaling-server tests and
//! benches: Debian's `redis-server` on a loopback port, its files in a
//! directory of the caller's, stopped by pid when dropped. Restartable on
//! the same port (with its append-only file, so data survives like a
//! production server's), and stoppable mid-test to show what nodes do
//! without it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;

/// A running (or stopped) `redis-server`.
pub struct Redis {
    daemon: Option<Daemon>,
    binary: PathBuf,
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
    /// `appendfsync`: `always` for tests, `everysec` for benchmarks.
    fsync: &'static str,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port with its files in
    /// `dir`; `None` (the test is skipped, loudly, or fails under CI) when
    /// it is not installed.
    pub fn start(dir: &Path) -> Option<Redis> {
        Redis::start_with(dir, "always")
    }

    /// [`Redis::start`] with the append-only file synced once a second
    /// (Redis's own default): what a deployment runs, for benchmarks.
    pub fn start_with_fsync_every_second(dir: &Path) -> Option<Redis> {
        Redis::start_with(dir, "everysec")
    }

    fn start_with(dir: &Path, fsync: &'static str) -> Option<Redis> {
        let binary = crate::tool("redis-server", "the shared location store tests")?;
        let mut redis = Redis {
            daemon: None,
            binary,
            dir: dir.to_path_buf(),
            port: crate::free_port(),
            fsync,
        };
        redis.restart();
        Some(redis)
    }

    /// CPU time it used so far (user and system).
    pub fn cpu_time(&self) -> Duration {
        self.daemon
            .as_ref()
            .map_or(Duration::ZERO, Daemon::cpu_time)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (after [`Redis::kill`]) with what
    /// its append-only file kept.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis directory");
        let mut command = Command::new(&self.binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            // The append-only file (tests: every write on disk before its
            // answer), no snapshots: small, and a restart brings
            // everything back.
            .args(["--appendonly", "yes", "--appendfsync", self.fsync])
            .args(["--save", ""])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        let mut daemon = Daemon::spawn("redis-server", &mut command);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(status) = daemon.exited() {
                panic!("redis-server exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(daemon);
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL): clients see their connections reset.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}
