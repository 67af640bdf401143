//! What an operator sees when the manager cannot start: one line naming the
//! option, the value and the operating system's reason, a distinct exit
//! status, no backtrace; only `SWITCHBOARD_*` variables configure it.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use switchboard_testkit::daemon::failure_line;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");

fn run(args: &[&str], env: &[(&str, &str)], as_nobody: bool) -> Output {
    let state = tempfile::tempdir().expect("state dir");
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    command
        .args(["--fast-path", "off", "--grpc-address", "127.0.0.1"])
        .arg("--state-dir")
        .arg(state.path())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-rtpmanager")
}

#[test]
fn a_grpc_port_in_use_is_one_line_naming_the_address_and_exits_69() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a TCP port");
    let port = taken.local_addr().expect("address").port().to_string();
    let output = run(&["--grpc-port", &port], &[], false);
    assert_eq!(output.status.code(), Some(69), "{}", failure_line(&output));
    let line = failure_line(&output);
    assert!(line.starts_with("switchboard-rtpmanager: "), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("--grpc-"), "names the option: {line}");
    assert!(
        line.ends_with("Address already in use (os error 98)"),
        "{line}"
    );
}

#[test]
fn a_missing_tls_file_names_the_option_and_path_and_exits_66() {
    let output = run(
        &[
            "--grpc-port",
            "0",
            "--grpc-tls-cert",
            "/nonexistent/cert.pem",
            "--grpc-tls-key",
            "/nonexistent/key.pem",
        ],
        &[],
        false,
    );
    assert_eq!(output.status.code(), Some(66), "{}", failure_line(&output));
    let line = failure_line(&output);
    assert!(line.contains("--grpc-tls-cert"), "{line}");
    assert!(line.contains("/nonexistent/cert.pem"), "{line}");
    assert!(
        line.ends_with("No such file or directory (os error 2)"),
        "{line}"
    );
}

#[test]
fn a_privileged_port_without_the_capability_exits_77() {
    if !nix_is_root() {
        eprintln!("SKIPPED: needs root to start the manager as nobody (setpriv)");
        return;
    }
    let output = run(&["--grpc-port", "1"], &[], true);
    assert_eq!(output.status.code(), Some(77), "{}", failure_line(&output));
    let line = failure_line(&output);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(line.ends_with("Permission denied (os error 13)"), "{line}");
}

#[test]
fn a_legacy_variable_is_reported_and_not_read() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a TCP port");
    let port = taken.local_addr().expect("address").port().to_string();
    // GRPC_PORT (read before the prefix) would move gRPC off the taken port.
    let output = run(
        &[],
        &[
            ("SWITCHBOARD_GRPC_PORT", port.as_str()),
            ("GRPC_PORT", "0"),
            ("GRPC_BIND", "0.0.0.0:9090"),
        ],
        false,
    );
    assert_eq!(output.status.code(), Some(69), "{}", failure_line(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable GRPC_BIND is set but not read; if it was meant for this daemon, set SWITCHBOARD_GRPC_ADDRESS (--grpc-address)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("environment variable GRPC_PORT is set but not read"),
        "{stderr}"
    );
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
