//! A manager binary run in a test bed's relay namespace, and the peers
//! (caller, callee) that exchange RTP with it: shared by the namespace
//! tests over gRPC (`kernel_offload_follows_calls.rs`,
//! `legs_relay_between_named_interfaces.rs`), which
//! include this file with `#[path]` after `common/kernel.rs`.

// Shared by test binaries that each use part of it.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_testkit::daemon::{grpc_address, Daemon};
use tonic::transport::Channel;

use switchboard_testkit::netns::{spawn_in_ns, udp_in_csum_errors};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");

/// The manager started in the relay namespace; killed by pid on drop.
pub struct Manager {
    pub daemon: Daemon,
}

impl Manager {
    /// The manager binary run in `relay_ns` with `args`; returns it and its
    /// gRPC address (from its ready log line).
    pub fn spawn(relay_ns: &str, args: &[&str]) -> (Manager, String) {
        let daemon = Daemon::spawn(
            "switchboard-rtpmanager",
            Command::new("ip")
                .args(["netns", "exec", relay_ns, BIN])
                .args(args),
        );
        let grpc = grpc_address(&daemon).to_string();
        (Manager { daemon }, grpc)
    }

    /// Whether it logged a line containing `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        self.daemon.log_lines().iter().any(|l| l.contains(text))
    }

    /// SIGTERM, wait, and the kernel counters of the shutdown log line
    /// (`Forwarded=n Redirected=m …`).
    pub fn stop(mut self) -> Vec<(String, u64)> {
        self.daemon.terminate();
        let log = self.daemon.log_lines();
        let Some(line) = log.iter().find(|l| l.contains("fast path detached")) else {
            return Vec::new();
        };
        line.split_whitespace()
            .filter_map(|w| {
                let (name, n) = w.trim_matches('"').split_once('=')?;
                Some((
                    name.trim_start_matches("counters=").to_owned(),
                    n.parse().ok()?,
                ))
            })
            .filter(|(_, n)| *n != 0)
            .collect()
    }

    /// SIGKILL and wait: nothing of the manager's shutdown runs.
    pub fn kill(mut self) {
        self.daemon.kill();
    }
}

/// A call's legs' figures now, then those Delete returns for them (the
/// final ones, with what the kernel forwarded merged in).
pub async fn stats_then_delete(
    client: &mut RtpManagerClient<Channel>,
    call_id: &str,
) -> (Vec<v1::LegStats>, Vec<v1::LegStats>) {
    let stats = client
        .get_stats(v1::GetStatsRequest {
            call_id: call_id.into(),
            leg_id: String::new(),
        })
        .await
        .expect("GetStats")
        .into_inner()
        .legs;
    let deleted = client
        .delete(v1::DeleteRequest {
            call_id: call_id.into(),
            ..Default::default()
        })
        .await
        .expect("Delete")
        .into_inner()
        .legs;
    (stats, deleted)
}

pub fn sdp(a: SocketAddr) -> String {
    let family = if a.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=peer 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n",
        ip = a.ip(),
        port = a.port()
    )
}

/// The media address of `sdp`: its `c=IN IP4` or `c=IN IP6` address.
pub fn media_addr(sdp: &str) -> SocketAddr {
    let ip: IpAddr = sdp
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .unwrap_or_else(|| panic!("c= line in {sdp}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("c= address in {sdp}: {e}"));
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= line");
    SocketAddr::new(ip, port)
}

pub const PEER_SSRC: u32 = 0x0bad_cafe;

pub fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&PEER_SSRC.to_be_bytes());
    p.extend((0..160u32).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// After the latching packet (sequence 0): 1..=55 without every 11th from 5
/// on, i.e. 50 packets with 5 lost inside the range.
pub fn stream() -> Vec<u16> {
    (1..=55).filter(|s| s % 11 != 5).collect()
}
pub const LOST: i64 = 5;

/// A peer's socket in its namespace, served by a thread: sends what it is
/// told and reports what it received (source, payload) and its checksum
/// errors.
pub struct Peer {
    send: mpsc::Sender<(SocketAddr, Vec<Vec<u8>>)>,
    received: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    csum_errors: Arc<Mutex<(u64, u64)>>,
}

impl Peer {
    pub fn start(ns: &str, local: SocketAddr) -> Peer {
        let (send, jobs) = mpsc::channel::<(SocketAddr, Vec<Vec<u8>>)>();
        let (got, received) = mpsc::channel();
        let csum_errors = Arc::new(Mutex::new((0, 0)));
        let csum = Arc::clone(&csum_errors);
        let (ready_tx, ready_rx) = mpsc::channel();
        spawn_in_ns(ns, move || {
            let socket = UdpSocket::bind(local).expect("bind the peer");
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let before = udp_in_csum_errors();
            *csum.lock().expect("csum lock") = (before, before);
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            loop {
                match jobs.try_recv() {
                    Ok((to, packets)) => {
                        for packet in packets {
                            socket.send_to(&packet, to).expect("send");
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if got.send((from, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                csum.lock().expect("csum lock").1 = udp_in_csum_errors();
            }
        });
        ready_rx.recv().expect("peer ready");
        Peer {
            send,
            received,
            csum_errors,
        }
    }

    pub fn send(&self, to: SocketAddr, seqs: Vec<u16>) {
        self.send_packets(to, seqs.into_iter().map(rtp).collect());
    }

    pub fn send_packets(&self, to: SocketAddr, packets: Vec<Vec<u8>>) {
        self.send.send((to, packets)).expect("peer thread alive");
    }

    /// Waits for `n` packets (3 s at most).
    pub fn receive(&self, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(p) => got.push(p),
                Err(_) => break,
            }
        }
        // Anything beyond `n` would be a duplicate.
        while let Ok(p) = self.received.recv_timeout(Duration::from_millis(200)) {
            got.push(p);
        }
        got
    }

    pub fn new_csum_errors(&self) -> u64 {
        let (before, now) = *self.csum_errors.lock().expect("csum lock");
        now - before
    }
}
