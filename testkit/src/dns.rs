//! A local DNS server for resolver tests: dnsmasq on a loopback port,
//! answering only the records it is given (no upstream, no /etc/hosts,
//! no configuration file), stopped by pid.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::daemon::Daemon;

/// A running dnsmasq.
pub struct Dnsmasq {
    daemon: Daemon,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (its own options, e.g.
    /// `--srv-host=_sip._udp.example.test,a.example.test,5060,10,50`),
    /// answered with a 60 s TTL. `None` (the test skipped loudly, or
    /// failing under CI) when dnsmasq is not installed.
    pub fn start(records: &[String]) -> Option<Dnsmasq> {
        let binary = crate::tool("dnsmasq", "the RFC 3263 resolution tests")?;
        let port = crate::free_port();
        let mut command = Command::new(binary);
        command
            .args(["--keep-in-foreground", "--log-facility=-", "--log-queries"])
            .args(["--conf-file=/dev/null", "--pid-file="])
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--local-ttl=60"])
            // As whoever runs the tests: dnsmasq would otherwise switch
            // to a `dnsmasq` user that dnsmasq-base does not create.
            .arg(format!("--user={}", current_user()))
            .args(records);
        let mut daemon = Daemon::spawn("dnsmasq", &mut command);
        daemon.wait_ready("started, version", Duration::from_secs(10));
        Some(Dnsmasq {
            daemon,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Its log: every query it answered.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let output = Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "root".to_owned())
}
