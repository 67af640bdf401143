//! Real SIP peers against the running server: SIPp registering with digest
//! authentication at 300 registrations per second (3000 in all, no failure
//! allowed), and sipsak with the right and a wrong password.
//!
//! SIPp 3.6 and sipsak answer only MD5 challenges and take the first one
//! offered: the server runs with its default authentication options (one
//! MD5 challenge), which must suit them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{free_port, users_file, Server};

fn tool(name: &str) -> Option<PathBuf> {
    common::peer_tool(name)
}

fn start(data: &Path) -> Server {
    let users = users_file(data, &[("1001", "pw1001"), ("1002", "pw1002")]);
    let users = users.to_str().expect("UTF-8 path").to_owned();
    Server::start(
        &data.join("state"),
        &["--realm", "peers.test", "--users-file", &users],
    )
}

#[test]
fn sipp_registers_300_per_second_without_failure() {
    let Some(sipp) = tool("sipp") else { return };
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(data.path());
    let scenario = common::sipp::scenario("register_auth.xml");
    let output = switchboard_testkit::sipp::command(&sipp, &scenario, free_port(), data.path())
        .args(["-s", "1001", "-au", "1001", "-ap", "pw1001"])
        .args(["-r", "300", "-m", "3000", "-l", "600"])
        .args(["-timeout", "60s", "-trace_err"])
        .arg(server.sip_addr().to_string())
        .output()
        .expect("run sipp");
    let screen = String::from_utf8_lossy(&output.stdout);
    // SIPp exits 0 only when every call succeeded.
    assert_eq!(
        output.status.code(),
        Some(0),
        "SIPp reported failures:\n{screen}\n{}\nserver log tail:\n{}",
        String::from_utf8_lossy(&output.stderr),
        tail(&server.log(), 40)
    );
    let cumulative = |name: &str| -> u64 {
        switchboard_testkit::sipp::counter(&screen, name)
            .unwrap_or_else(|| panic!("no {name} line in:\n{screen}"))
    };
    assert_eq!(cumulative("Successful call"), 3000, "{screen}");
    assert_eq!(cumulative("Failed call"), 0, "{screen}");
    let bindings = server.get_json("/api/v1/registrations");
    assert_eq!(bindings.as_array().map(Vec::len), Some(1), "{bindings}");
    assert_eq!(bindings[0]["aor"], "1001@127.0.0.1");
}

#[test]
fn sipsak_registers_with_the_right_password_only() {
    let Some(sipsak) = tool("sipsak") else { return };
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(data.path());
    let target = format!("sip:1002@127.0.0.1:{}", server.sip_port);
    let run = |password: &str, contact_port: u16| {
        Command::new(&sipsak)
            .args(["-U", "-i", "-s", &target, "-u", "1002", "-a", password])
            .args([
                "-x",
                "600",
                "-C",
                &format!("sip:1002@127.0.0.1:{contact_port}"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run sipsak")
    };
    let good = run("pw1002", 5999);
    assert_eq!(
        good.status.code(),
        Some(0),
        "sipsak with the right password:\n{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run("not-the-password", 5998);
    let bad_output =
        String::from_utf8_lossy(&bad.stdout).into_owned() + &String::from_utf8_lossy(&bad.stderr);
    assert_ne!(
        bad.status.code(),
        Some(0),
        "wrong password accepted:\n{bad_output}"
    );
    assert!(bad_output.contains("authorization failed"), "{bad_output}");

    let bindings = server.get_json("/api/v1/registrations");
    let list = bindings.as_array().expect("array");
    assert_eq!(list.len(), 1, "{bindings}");
    assert_eq!(list[0]["aor"], "1002@127.0.0.1");
    assert_eq!(list[0]["contact"], "sip:1002@127.0.0.1:5999");
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
