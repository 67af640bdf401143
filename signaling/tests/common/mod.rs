//! Shared by the SIP integration tests: starting the server binary on free
//! ports with a temporary data directory, stopping it by pid, and small
//! SIP-over-UDP/TCP clients.

#![allow(dead_code)]

pub mod manager;
pub mod sipp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};
use switchboard_testkit::daemon::Daemon;

pub const SIGNALING: &str = env!("CARGO_BIN_EXE_switchboard-signaling");

pub use switchboard_testkit::free_port;

/// A running signaling server, killed by pid when dropped.
pub struct Server {
    child: Option<Daemon>,
    pub sip_port: u16,
    pub rest_port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// Soft and hard open-file limit the server starts with, when set.
    file_limit: Option<u64>,
    /// The network namespace it runs in (`ip netns exec`), when set.
    netns: Option<String>,
}

impl Server {
    /// Starts the server with `args` on new ports and waits until it answers.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Server::on_new_ports(data_dir, args, None)
    }

    /// Starts the server on new ports, drawing others when one was taken
    /// between `free_port` and the server's bind (parallel tests open
    /// ephemeral ports all the time).
    fn on_new_ports(data_dir: &Path, args: &[&str], file_limit: Option<u64>) -> Server {
        Server::on_new_ports_in(data_dir, args, file_limit, None)
    }

    /// Starts the server inside network namespace `netns` (the calling
    /// thread must be in it too: its ports and REST requests are there).
    pub fn start_in_netns(netns: &str, data_dir: &Path, args: &[&str]) -> Server {
        Server::on_new_ports_in(data_dir, args, None, Some(netns.to_owned()))
    }

    fn on_new_ports_in(
        data_dir: &Path,
        args: &[&str],
        file_limit: Option<u64>,
        netns: Option<String>,
    ) -> Server {
        let mut server = Server {
            child: None,
            sip_port: free_port(),
            rest_port: free_port(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            file_limit,
            netns,
        };
        for _ in 0..4 {
            match server.launch() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => {
                    server.sip_port = free_port();
                    server.rest_port = free_port();
                }
                Err(log) => panic!("server exited at start:\n{log}"),
            }
        }
        server.spawn();
        server
    }

    /// Starts the server on the given ports.
    pub fn start_on(data_dir: &Path, sip_port: u16, rest_port: u16, args: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            sip_port,
            rest_port,
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            file_limit: None,
            netns: None,
        };
        server.spawn();
        server
    }

    /// Starts the server on new ports with `files` as its soft and hard
    /// open-file limit (a limit can be lowered without privileges, and is
    /// set in the child only, so the test process keeps its own).
    pub fn start_with_file_limit(data_dir: &Path, files: u64, args: &[&str]) -> Server {
        Server::on_new_ports(data_dir, args, Some(files))
    }

    fn spawn(&mut self) {
        if let Err(log) = self.launch() {
            panic!("server exited at start:\n{log}");
        }
    }

    /// Starts the process and waits until it is ready; `Err` with its log
    /// when it exits first.
    fn launch(&mut self) -> Result<(), String> {
        let mut command = match &self.netns {
            // `ip netns exec` execs the server: the child's pid is its own.
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, SIGNALING]);
                command
            }
            None => Command::new(SIGNALING),
        };
        if !self.args.iter().any(|a| a == "--bind-address") {
            command.args(["--bind-address", "127.0.0.1"]);
        }
        if !self
            .args
            .iter()
            .any(|a| a == "--rtpmanager-health-interval")
        {
            command.args(["--rtpmanager-health-interval", "60"]);
        }
        if let Some(files) = self.file_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`,
            // copied into the closure before the fork.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        command
            .args(["--port", &self.sip_port.to_string()])
            .args(["--rest-port", &self.rest_port.to_string()])
            // Nothing listens there: the pool logs the manager as down.
            .args(["--rtpmanager", "127.0.0.1:9"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--log-level", "info,switchboard_signaling=debug"])
            .args(&self.args);
        let daemon = self
            .child
            .insert(Daemon::spawn("switchboard-signaling", &mut command));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.log().contains("signaling ready") {
            if let Some(status) = daemon.exited() {
                let log = daemon.log();
                self.child = None;
                return Err(format!("({status}) {log}"));
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The server's log so far (since its last start).
    pub fn log(&self) -> String {
        self.child.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Waits (5 s at most) for a log line containing `text`: the log is
    /// read from stderr by a thread and may trail what the server did.
    pub fn logged(&self, text: &str) -> bool {
        switchboard_testkit::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            self.log().contains(text)
        })
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("server running");
        nix::unistd::Pid::from_raw(i32::try_from(child.pid()).expect("pid fits i32"))
    }

    /// Sends `signal` to the server and waits for it to exit.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        self.child
            .as_ref()
            .expect("server running")
            .send_signal(signal as i32);
        self.wait_exit()
    }

    /// Waits (10 s at most) for the server to exit after a signal; its log
    /// stays readable.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child
            .as_mut()
            .expect("server running")
            .wait_exit_within(Duration::from_secs(10))
    }

    /// Starts the server again with the same ports, data and options.
    pub fn restart(&mut self) {
        self.child = None;
        self.spawn();
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// A request on the REST API: its status and its body parsed as JSON.
    pub fn rest(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.rest_port)).expect("connect to the REST API");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP body in {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, body)
    }

    /// GET on the REST API, parsed as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let body = self.get_text(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// GET on the REST API: the body as text (`/metrics`).
    pub fn get_text(&self, path: &str) -> String {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.rest_port)).expect("connect to the REST API");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send GET");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP body in {response:?}"))
            .1
            .to_owned()
    }
}

/// A UDP SIP peer on loopback.
pub struct UdpPeer {
    pub socket: UdpSocket,
}

impl UdpPeer {
    pub fn new() -> UdpPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP peer");
        UdpPeer { socket }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().expect("local address").port()
    }

    pub fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).expect("send datagram");
    }

    /// The next datagram within `timeout`, as text.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buffer = vec![0u8; 65_536];
        match self.socket.recv_from(&mut buffer) {
            Ok((len, _)) => Some(String::from_utf8_lossy(&buffer[..len]).into_owned()),
            Err(_) => None,
        }
    }

    /// Sends a request and returns the first response, skipping 1xx.
    pub fn request(&self, to: SocketAddr, bytes: &[u8]) -> String {
        self.send(to, bytes);
        loop {
            let response = self
                .recv(Duration::from_secs(3))
                .unwrap_or_else(|| panic!("no response to:\n{}", String::from_utf8_lossy(bytes)));
            if status(&response) >= 200 {
                return response;
            }
        }
    }
}

/// Reads one Content-Length-framed message from a stream.
pub fn read_stream_message(stream: &mut impl Read) -> Option<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => return None,
        }
        if data == b"\r\n" {
            data.clear();
        }
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let length: usize = header(&head, "Content-Length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// The status code of a response.
pub fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {response:?}"))
}

/// The first value of a header (full name, case-insensitive).
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    headers(message, name).into_iter().next()
}

/// Every value of a header, in order.
pub fn headers<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A parameter of a digest challenge (`nonce="…"`).
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[start..];
    Some(match rest.strip_prefix('"') {
        Some(quoted) => quoted[..quoted.find('"')?].to_owned(),
        None => rest.split([',', ' ']).next().unwrap_or_default().to_owned(),
    })
}

/// Writes a users file with demo passwords.
pub fn users_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("users.toml");
    let text: String = users
        .iter()
        .map(|(name, password)| {
            format!("[[user]]\nname = \"{name}\"\npassword = \"{password}\"\n\n")
        })
        .collect();
    std::fs::write(&path, text).expect("write users file");
    path
}

/// A real SIP peer (`sipp`, `sipsak`) from PATH. Without it the test is
/// skipped with a message; under CI (`CI` set), where `cargo xtask setup`
/// installs them, a missing peer is a failure rather than a silent pass.
pub fn peer_tool(name: &str) -> Option<std::path::PathBuf> {
    switchboard_testkit::tool(name, "the real-peer tests")
}

/// A TCP connection to `server` from `source` (any free port).
pub fn connect_from(source: std::net::Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("TCP socket");
    // Thousands of client ports must not linger in TIME_WAIT after the
    // test, where they would keep other tests' servers from binding `::`
    // on the same port: SO_REUSEADDR, and RST rather than FIN on close.
    socket
        .set_reuse_address(true)
        .expect("SO_REUSEADDR on the client");
    socket
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0 on the client");
    socket
        .bind(&SocketAddr::new(std::net::IpAddr::V4(source), 0).into())
        .expect("bind the client to its source address");
    socket.connect(&server.into()).expect("connect");
    socket.into()
}

/// Raises this test process's soft open-file limit to its hard limit and
/// returns it: thousands of client sockets need more than the usual 1024.
pub fn raise_own_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// TLS files for a server started with [`tls_args`]: a throw-away CA and a
/// certificate for 127.0.0.1 (`None`: openssl missing, the test skipped).
pub fn tls_certificates(dir: &Path) -> Option<switchboard_testkit::certs::Certificates> {
    switchboard_testkit::certs::make(&dir.join("tls"), "", "the SIP over TLS tests")
}

/// The options serving TLS with `certificates` on `port`.
pub fn tls_args(certificates: &switchboard_testkit::certs::Certificates, port: u16) -> Vec<String> {
    vec![
        "--tls-cert".to_owned(),
        certificates.cert.display().to_string(),
        "--tls-key".to_owned(),
        certificates.key.display().to_string(),
        "--tls-port".to_owned(),
        port.to_string(),
    ]
}

/// A blocking TLS client connection to `server`, trusting `ca` only and
/// checking that the certificate names the server's address.
pub fn tls_connect(
    ca: &Path,
    server: SocketAddr,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    #[allow(deprecated)] // ring, as the server uses
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    let socket = TcpStream::connect(server)?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    // The handshake now, so that a refused certificate is this call's error.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A minimal WebSocket client (RFC 6455) for SIP over WebSocket tests:
/// the upgrade with the `sip` subprotocol, each `write` one masked text
/// frame, reads giving the payloads of the server's frames in order.
pub struct WsClient<S: Read + Write> {
    stream: S,
    /// Payload octets received and not yet read.
    pending: std::collections::VecDeque<u8>,
}

impl<S: Read + Write> WsClient<S> {
    /// Upgrades `stream`; panics unless the server answers 101 with `sip`.
    pub fn connect(mut stream: S, host: &str) -> WsClient<S> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: sip\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .expect("send the upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("read the upgrade answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        assert!(head.contains("Sec-WebSocket-Protocol: sip"), "{head}");
        WsClient {
            stream,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Sends one frame as a client must (masked).
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// The next frame from the server: (opcode, payload).
    pub fn read_frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 2];
        self.stream.read_exact(&mut header)?;
        assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
        let length = match header[1] & 0x7f {
            126 => {
                let mut bytes = [0u8; 2];
                self.stream.read_exact(&mut bytes)?;
                u64::from(u16::from_be_bytes(bytes))
            }
            127 => {
                let mut bytes = [0u8; 8];
                self.stream.read_exact(&mut bytes)?;
                u64::from_be_bytes(bytes)
            }
            short => u64::from(short),
        };
        let mut payload = vec![0u8; usize::try_from(length).expect("frame length")];
        self.stream.read_exact(&mut payload)?;
        Ok((header[0] & 0x0f, payload))
    }
}

impl<S: Read + Write> Read for WsClient<S> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            let (opcode, payload) = self.read_frame()?;
            match opcode {
                0x1 | 0x2 => self.pending.extend(payload),
                0x8 => return Ok(0),
                _ => {}
            }
        }
        let len = buffer.len().min(self.pending.len());
        for (slot, byte) in buffer.iter_mut().zip(self.pending.drain(..len)) {
            *slot = byte;
        }
        Ok(len)
    }
}

impl<S: Read + Write> Write for WsClient<S> {
    /// One SIP message per call: the whole buffer is one frame.
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.send_frame(0x1, buffer)?;
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
