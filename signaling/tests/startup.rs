//! What an operator sees when the signaling server cannot start, and which
//! environment it reads: one line naming the option, the value and the
//! operating system's reason, a distinct exit status, no backtrace; only
//! `SWITCHBOARD_*` variables configure it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};
use switchboard_testkit::daemon::failure_line;

use common::{free_port, UdpPeer, SIGNALING};

/// Runs the server to its exit with `args` and `env`, as a developer's shell
/// would (RUST_BACKTRACE set).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().expect("data dir");
    Command::new(SIGNALING)
        .args(["--rtpmanager", "127.0.0.1:9", "--rest-port", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-signaling")
}

#[test]
fn a_sip_port_in_use_is_one_line_naming_the_address_and_exits_69() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let port = taken.local_addr().expect("address").port();
    let output = run(
        &["--bind-address", "127.0.0.1", "--port", &port.to_string()],
        &[],
    );
    assert_eq!(output.status.code(), Some(69));
    let line = failure_line(&output);
    assert!(
        line.starts_with(
            "switchboard-signaling: SIP transports (--bind-address, --port, --tls-port, --ws-port, --wss-port): cannot bind SIP UDP on "
        ),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "127.0.0.1:{port}: Address already in use (os error 98)"
        )),
        "{line}"
    );
}

#[test]
fn a_missing_users_file_names_the_option_and_path_and_exits_66() {
    let output = run(
        &[
            "--bind-address",
            "127.0.0.1",
            "--port",
            "0",
            "--users-file",
            "/nonexistent/users.toml",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(66));
    assert_eq!(
        failure_line(&output),
        "switchboard-signaling: --users-file: /nonexistent/users.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn a_bad_address_is_refused_by_the_option_parser_with_status_2() {
    let output = run(&["--bind-address", "nope"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'nope' for '--bind-address"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_the_environment_does_not_move_sip_but_switchboard_sip_port_does() {
    let stray = free_port();
    let port = free_port();
    let data = tempfile::tempdir().expect("data dir");
    let mut child = Command::new(SIGNALING)
        .args(["--bind-address", "127.0.0.1", "--rest-port", "0"])
        .args(["--rtpmanager", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(data.path())
        .env("PORT", stray.to_string())
        .env("SWITCHBOARD_SIP_PORT", port.to_string())
        .env("DIALPLAN_PATH", "/etc/old/dialplan.json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard-signaling");
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log.contains("signaling ready") && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                log.push_str(&line);
                log.push('\n');
            }
            _ => break,
        }
    }
    let peer = UdpPeer::new();
    let options = |to: u16| {
        format!(
            "OPTIONS sip:127.0.0.1:{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-env-{to}\r\n\
             From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: env-{to}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            me = peer.port()
        )
    };
    peer.send(
        format!("127.0.0.1:{port}").parse().expect("address"),
        options(port).as_bytes(),
    );
    let answered = peer.recv(Duration::from_secs(5));
    peer.send(
        format!("127.0.0.1:{stray}").parse().expect("address"),
        options(stray).as_bytes(),
    );
    let stray_answer = peer.recv(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("signaling ready"), "{log}");
    assert!(
        answered.is_some_and(|r| r.starts_with("SIP/2.0 200")),
        "SWITCHBOARD_SIP_PORT {port} answers:\n{log}"
    );
    assert_eq!(stray_answer, None, "PORT {stray} must not be read");
    assert!(
        log.contains(
            "environment variable PORT is set but not read; if it was meant for this daemon, set SWITCHBOARD_SIP_PORT (--port)"
        ),
        "{log}"
    );
    assert!(
        log.contains("environment variable DIALPLAN_PATH is set but not read; if it was meant for this daemon, set SWITCHBOARD_DIALPLAN (--dialplan)"),
        "{log}"
    );
}
