//! What an operator sees when the dashboard cannot start: one line naming
//! the option, the address and the operating system's reason, exit status
//! 69, no backtrace; a legacy variable is reported, not read.

use std::net::TcpListener;
use std::process::{Command, Stdio};

#[test]
fn a_port_in_use_is_one_line_naming_the_address_and_exits_69() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a TCP port");
    let port = taken.local_addr().expect("address").port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-ui"))
        .args(["--address", "127.0.0.1", "--port", &port])
        .env("RUST_BACKTRACE", "1")
        .env("UI_BACKENDS", "http://192.0.2.1:8080")
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-ui");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "switchboard-ui: cannot listen on 127.0.0.1:{port} (--address/--port): Address already in use (os error 98)"
            )
            .as_str()
        )
    );
    assert!(
        stderr.contains("environment variable UI_BACKENDS is set but not read; if it was meant for this daemon, set SWITCHBOARD_BACKENDS (--backends)"),
        "{stderr}"
    );
}
