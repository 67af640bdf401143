//! RFC 4475 and RFC 5118 conformance against the running server: every row
//! of the corpora's expected.tsv is sent over UDP (and over TCP and TLS
//! where the message frames as one stream message), and the status of the answer is
//! checked against the row. `accept` means the request reached the UAS
//! logic: it gets the answer that logic gives its method (see
//! [`processing_status`]); a response is never answered.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    read_stream_message, status, tls_args, tls_certificates, tls_connect, Server, UdpPeer, WsClient,
};
use switchboard_signaling::sip::StreamFramer;

/// How long a discarded message is given to (wrongly) draw an answer.
const SILENCE: Duration = Duration::from_millis(300);

struct Row {
    corpus: &'static str,
    file: String,
    path: PathBuf,
    expected: String,
}

fn rows() -> Vec<Row> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sip");
    let mut rows = Vec::new();
    for corpus in ["rfc4475", "rfc5118"] {
        let dir = data.join(corpus);
        let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("read expected.tsv");
        for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let columns: Vec<&str> = line.split('\t').collect();
            let file = columns[0].to_owned();
            let path = ["valid", "invalid", "."]
                .iter()
                .map(|sub| dir.join(sub).join(&file))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{corpus}/{file} is missing"));
            rows.push(Row {
                corpus,
                file,
                path,
                expected: columns[3].to_owned(),
            });
        }
    }
    assert_eq!(rows.len(), 50 + 12, "corpus row count");
    rows
}

/// The start-line token: a method, or `SIP/2.0` for a response.
fn first_token(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What the UAS logic answers a well-formed request of `method` with, on a
/// server with `--auth anonymous` and no call handler; `None` for responses.
fn processing_status(method: &str) -> Option<u16> {
    match method {
        "SIP/2.0" => None,
        "REGISTER" | "OPTIONS" => Some(200),
        "INVITE" => Some(480),
        "BYE" | "CANCEL" | "UPDATE" | "INFO" | "PRACK" => Some(481),
        "MESSAGE" | "SUBSCRIBE" | "NOTIFY" | "PUBLISH" | "REFER" => Some(405),
        _ => Some(501),
    }
}

/// The statuses the row allows (`None`: no answer at all).
fn allowed(row: &Row, bytes: &[u8]) -> Vec<Option<u16>> {
    row.expected
        .split('|')
        .map(|outcome| match outcome {
            "accept" => processing_status(&first_token(bytes)),
            "discard" => None,
            code => Some(code.parse().expect("a status code")),
        })
        .collect()
}

/// The first value of a header (long or compact name) of a corpus message.
fn first_header(bytes: &[u8], long: &str, compact: &str) -> Option<String> {
    String::from_utf8_lossy(bytes).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case(long) || name == compact).then(|| value.trim().to_owned())
    })
}

/// Servers for the rows: the corpora reuse Call-IDs and branches across
/// files (RFC 5118's REGISTERs share Call-ID and CSeq; RFC 4475's share
/// branches), which one server rightly takes as retransmissions or
/// out-of-order REGISTERs; a row whose Call-ID or top Via was already used
/// gets a fresh server.
struct Servers {
    /// `None` only while a server is replaced: the old one stops first,
    /// so the next can take its ports.
    current: Option<(tempfile::TempDir, Server)>,
    seen: std::collections::HashSet<String>,
    started: usize,
    /// More options for each server (TLS).
    extra: Vec<String>,
}

impl Servers {
    fn new() -> Servers {
        Servers::with(Vec::new())
    }

    fn with(extra: Vec<String>) -> Servers {
        Servers {
            current: Some(start_server(&extra)),
            seen: std::collections::HashSet::new(),
            started: 1,
            extra,
        }
    }

    fn for_message(&mut self, bytes: &[u8]) -> &Server {
        let keys = [
            first_header(bytes, "call-id", "i").map(|c| format!("call-id {c}")),
            // The top Via holds branch and sent-by, the transaction key.
            first_header(bytes, "via", "v").map(|v| format!("via {v}")),
        ];
        let keys: Vec<String> = keys.into_iter().flatten().collect();
        if keys.iter().any(|key| self.seen.contains(key)) {
            self.current = None;
            self.current = Some(start_server(&self.extra));
            self.started += 1;
            self.seen.clear();
        }
        self.seen.extend(keys);
        self.server()
    }

    fn server(&self) -> &Server {
        &self.current.as_ref().expect("a server runs").1
    }
}

fn start_server(extra: &[String]) -> (tempfile::TempDir, Server) {
    let data = tempfile::tempdir().expect("temp data dir");
    let mut args = vec!["--auth", "anonymous", "--force-rport", "--min-expires", "1"];
    args.extend(extra.iter().map(String::as_str));
    let server = Server::start(data.path(), &args);
    (data, server)
}

#[test]
fn every_corpus_row_over_udp() {
    let mut servers = Servers::new();
    let mut failures = Vec::new();
    for row in rows() {
        let bytes = std::fs::read(&row.path).expect("read corpus file");
        let allowed = allowed(&row, &bytes);
        let server = servers.for_message(&bytes);
        // A socket per row: an INVITE's 480 is retransmitted until ACKed.
        let peer = UdpPeer::new();
        peer.send(server.sip_addr(), &bytes);
        let wait = if allowed.iter().all(Option::is_none) {
            SILENCE
        } else {
            Duration::from_secs(3)
        };
        let got = loop {
            match peer.recv(wait) {
                Some(response) if status(&response) < 200 => continue,
                Some(response) => break Some(status(&response)),
                None => break None,
            }
        };
        if !allowed.contains(&got) {
            failures.push(format!(
                "{}/{}: expected {} ({allowed:?}), got {got:?}",
                row.corpus, row.file, row.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed over UDP:\n{}\nlast server's log:\n{}",
        failures.len(),
        failures.join("\n"),
        servers.server().log()
    );
    assert!(servers.started < 20, "{} servers started", servers.started);
}

/// Whether the file is exactly one stream message: Content-Length present
/// and matching, nothing but line ends after it.
fn frames_as_one_stream_message(bytes: &[u8]) -> bool {
    let mut framer = StreamFramer::default();
    framer.push(bytes);
    match framer.next_message() {
        Ok(Some(message)) => bytes[message.len().min(bytes.len())..]
            .iter()
            .all(|b| b.is_ascii_whitespace()),
        _ => false,
    }
}

#[test]
fn request_rows_over_tcp() {
    request_rows_over_a_stream("TCP", Servers::new(), |server| {
        let stream = TcpStream::connect(server.sip_addr()).expect("connect over TCP");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        Box::new(stream)
    });
}

#[test]
fn request_rows_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(certificates) = tls_certificates(dir.path()) else {
        return;
    };
    // Every server of the run serves TLS on this port (one at a time).
    let port = switchboard_testkit::free_port();
    let servers = Servers::with(tls_args(&certificates, port));
    request_rows_over_a_stream("TLS", servers, |server| {
        let address = std::net::SocketAddr::new(server.sip_addr().ip(), port);
        Box::new(tls_connect(&certificates.ca, address).expect("TLS handshake"))
    });
}

#[test]
fn request_rows_over_websocket_and_secure_websocket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(certificates) = tls_certificates(dir.path()) else {
        return;
    };
    let (ws, wss) = (
        switchboard_testkit::free_port(),
        switchboard_testkit::free_port(),
    );
    let mut extra = tls_args(&certificates, switchboard_testkit::free_port());
    extra.extend([
        "--ws-port".to_owned(),
        ws.to_string(),
        "--wss-port".to_owned(),
        wss.to_string(),
    ]);
    request_rows_over_a_stream("WS", Servers::with(extra.clone()), |server| {
        let stream = TcpStream::connect((server.sip_addr().ip(), ws)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        Box::new(WsClient::connect(stream, "sip.test"))
    });
    request_rows_over_a_stream("WSS", Servers::with(extra), |server| {
        let address = std::net::SocketAddr::new(server.sip_addr().ip(), wss);
        let stream = tls_connect(&certificates.ca, address).expect("TLS handshake");
        Box::new(WsClient::connect(stream, "sip.test"))
    });
}

trait Stream: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> Stream for T {}

/// Sends each request row that frames as one stream message on a new
/// connection from `connect`, and checks the final answer.
fn request_rows_over_a_stream(
    name: &str,
    mut servers: Servers,
    connect: impl Fn(&Server) -> Box<dyn Stream>,
) {
    let mut failures = Vec::new();
    let mut sent = 0;
    for row in rows() {
        let bytes = std::fs::read(&row.path).expect("read corpus file");
        let allowed = allowed(&row, &bytes);
        // Responses and discarded rows say nothing about stream handling;
        // datagram-only framing cases (no or wrong Content-Length) cannot
        // be a stream message.
        if allowed.iter().all(Option::is_none) || !frames_as_one_stream_message(&bytes) {
            continue;
        }
        sent += 1;
        let server = servers.for_message(&bytes);
        let mut stream = connect(server);
        stream.write_all(&bytes).expect("send");
        let got = loop {
            match read_stream_message(&mut stream) {
                Some(response) if status(&response) < 200 => continue,
                Some(response) => break Some(status(&response)),
                None => break None,
            }
        };
        if !allowed.contains(&got) {
            failures.push(format!(
                "{}/{}: expected {}, got {got:?}",
                row.corpus, row.file, row.expected
            ));
        }
    }
    assert!(sent >= 40, "only {sent} rows were sent over {name}");
    assert!(
        failures.is_empty(),
        "{} rows failed over {name}:\n{}\nlast server's log:\n{}",
        failures.len(),
        failures.join("\n"),
        servers.server().log()
    );
}
