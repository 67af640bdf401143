//! A throwaway Redis server for the several-signaling-server tests and
//! benches: Debian's `redis-server` on a loopback port, its files in a
//! directory of the caller's, stopped by pid when dropped. Restartable on
//! the same port (with its append-only file, so data survives like a
//! production server's), and stoppable mid-test to show what nodes do
//! without it.

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
    /// `requirepass`, when set.
    password: Option<String>,
    /// TLS only (no plaintext port), with the certificates in `dir`.
    tls: bool,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
}

/// The files of a TLS Redis, made with `openssl` in its directory.
pub struct TlsFiles {
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
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
        let mut redis = Redis::stopped(dir)?;
        redis.fsync = fsync;
        redis.restart();
        Some(redis)
    }

    /// A plain Redis not started yet, on a free port, files in `dir`.
    fn stopped(dir: &Path) -> Option<Redis> {
        Some(Redis {
            daemon: None,
            binary: crate::tool("redis-server", "the shared location store tests")?,
            dir: dir.to_path_buf(),
            port: crate::free_port(),
            fsync: "always",
            password: None,
            tls: false,
            replica_of: None,
        })
    }

    /// A replica of `master` (plain, same machine), started once the master
    /// has it in sync.
    pub fn start_replica_of(dir: &Path, master: &Redis) -> Option<Redis> {
        let mut redis = Redis::stopped(dir)?;
        redis.replica_of = Some(master.port);
        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cli(master.port, &["INFO", "replication"]).contains("connected_slaves:1") {
            assert!(
                Instant::now() < deadline,
                "the replica never connected:\n{}",
                redis.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(redis)
    }

    /// A Redis speaking TLS only (a CA and a certificate for 127.0.0.1 made
    /// with `openssl`) and asking for `password`: what a deployment across
    /// hosts runs. The URL is `rediss://:PASSWORD@127.0.0.1:PORT`.
    pub fn start_tls(dir: &Path, password: &str) -> Option<(Redis, TlsFiles)> {
        let mut redis = Redis::stopped(dir)?;
        let certificates = crate::certs::make(dir, "", "the shared location store tests over TLS")?;
        redis.password = Some(password.to_owned());
        redis.tls = true;
        redis.restart();
        let files = TlsFiles {
            ca: certificates.ca,
        };
        Some((redis, files))
    }

    /// CPU time it used so far (user and system).
    pub fn cpu_time(&self) -> Duration {
        self.daemon
            .as_ref()
            .map_or(Duration::ZERO, Daemon::cpu_time)
    }

    /// `redis://127.0.0.1:<port>` (`rediss://:PASSWORD@…` for a TLS one).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (after [`Redis::kill`]) with what
    /// its append-only file kept.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis directory");
        let mut command = Command::new(&self.binary);
        let port = self.port.to_string();
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &port])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &port]);
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        command
            .current_dir(&self.dir)
            .args(["--bind", "127.0.0.1"])
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
        // Its log (appended to across restarts) says when it is ready: the
        // count of those lines goes up by one.
        let ready = |log: &str| log.matches("Ready to accept connections").count();
        let before = ready(&self.log());
        while ready(&self.log()) <= before {
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

/// `redis-cli -p PORT ARGS…`: its output, empty when it failed.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A Redis Sentinel (`redis-server --sentinel`) watching one master, alone
/// (quorum 1), quick to decide (the master is down after one second).
pub struct Sentinel {
    _daemon: Daemon,
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
    service: String,
}

impl Sentinel {
    /// Starts a Sentinel watching `master` as `service`, once it knows the
    /// master's replicas.
    pub fn start(dir: &Path, master: &Redis, service: &str, replicas: usize) -> Option<Sentinel> {
        let binary = crate::tool("redis-server", "the shared location store tests")?;
        crate::tool("redis-cli", "the shared location store tests")?;
        std::fs::create_dir_all(dir).expect("sentinel directory");
        let port = crate::free_port();
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {service} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n",
                dir = dir.display(),
                log = dir.join("sentinel.log").display(),
                master = master.port,
            ),
        )
        .expect("write sentinel.conf");
        let mut command = Command::new(binary);
        command.arg(&config).arg("--sentinel");
        let daemon = Daemon::spawn("redis-sentinel", &mut command);
        let sentinel = Sentinel {
            _daemon: daemon,
            dir: dir.to_path_buf(),
            port,
            service: service.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while sentinel.replicas_known() < replicas {
            assert!(
                Instant::now() < deadline,
                "the sentinel never learnt the replicas:\n{}",
                sentinel.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(sentinel)
    }

    /// Replicas it knows of the master.
    pub fn replicas_known(&self) -> usize {
        cli(self.port, &["SENTINEL", "replicas", &self.service])
            .lines()
            .filter(|line| line.trim() == "name")
            .count()
    }

    /// The master's port as it says now.
    pub fn master_port(&self) -> Option<u16> {
        cli(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", &self.service],
        )
        .lines()
        .nth(1)
        .and_then(|port| port.trim().parse().ok())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}
