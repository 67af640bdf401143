//! SIPp for the real-peer tests: its binary, the scenarios in tests/sipp,
//! starting it for a number of calls, checking its exit (0: every call
//! succeeded), and the media sockets and RTP packets the tests check the
//! managers' forwarding with.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use std::time::Duration;
use switchboard_testkit::sipp;

/// SIPp, if installed (tests that need it return early without).
pub fn binary() -> Option<PathBuf> {
    super::peer_tool("sipp")
}

/// A scenario of tests/sipp.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// Starts SIPp in `dir` on `port` with scenario `name` for `calls` calls.
pub fn start(dir: &Path, name: &str, port: u16, calls: u32, args: &[&str]) -> Child {
    let sipp = binary().expect("checked by the caller");
    sipp::command(&sipp, &scenario(name), port, dir)
        .args(["-m", &calls.to_string(), "-timeout", "30s", "-trace_err"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp")
}

/// Waits for SIPp and asserts it succeeded, showing its errors (the
/// `*_errors.log` files in `dir`) and the tail of `server_log` otherwise.
pub fn finish(dir: &Path, role: &str, child: Child, server_log: impl FnOnce() -> String) -> Output {
    let output = child.wait_with_output().expect("wait for sipp");
    if output.status.code() != Some(0) {
        panic!(
            "SIPp {role} failed:\n{}\n{}\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            sipp::errors(dir),
            tail(&server_log(), 60)
        );
    }
    output
}

/// The last `lines` lines of `log`.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback UDP socket for a SIPp side's media, and its port as text
/// (for `-key rtp_a PORT`).
pub fn media_socket() -> (UdpSocket, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a media socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let port = socket.local_addr().expect("address").port().to_string();
    (socket, port)
}

/// A PCMU RTP packet: `seq`, and 160 octets of `fill`.
pub fn rtp(seq: u16, fill: u8) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(fill, 160));
    packet
}
