//! SIP response times measured on the wire: tcpdump captures the SIPp
//! client's UDP traffic with the server on loopback, and each request is
//! matched to its final 200 by Call-ID and CSeq. The capture's timestamps
//! are the kernel's, in microseconds, where SIPp's own response times come
//! in steps of the 4 ms tick on this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;

/// A running tcpdump, stopped (SIGINT, so it flushes) by [`Capture::finish`].
pub(super) struct Capture {
    child: Child,
    file: PathBuf,
    server_port: u16,
    client_port: u16,
    method: &'static str,
}

impl Capture {
    /// Starts capturing the traffic between `client_port` and `server_port`
    /// on loopback into `dir`, to time the requests of `method`; `None` (and
    /// a note) without root or tcpdump.
    pub(super) fn start(
        dir: &Path,
        server_port: u16,
        client_port: u16,
        method: &'static str,
    ) -> Option<Capture> {
        if !util::is_root() {
            return None;
        }
        let tcpdump = util::find_on_path("tcpdump")?;
        let file = dir.join("wire.pcap");
        let child = Command::new(tcpdump)
            .args(["-i", "lo", "-n", "-s", "2048", "-B", "65536", "-w"])
            .arg(&file)
            .arg(format!("udp and port {server_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // tcpdump says "listening on lo" once its socket is open.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Some(Capture {
            child,
            file,
            server_port,
            client_port,
            method,
        })
    }

    /// Stops the capture and returns each matched exchange's time in ms
    /// ([`WireTimes`]); `None` when no exchange was matched.
    pub(super) fn finish(self) -> Option<WireTimes> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let output = self.child.wait_with_output().ok()?;
        let report = String::from_utf8_lossy(&output.stderr);
        if let Some(line) = report.lines().find(|l| l.contains("dropped by kernel")) {
            println!("# tcpdump: {}", line.trim());
        }
        let pcap = std::fs::read(&self.file).ok()?;
        let packets = udp_packets(&pcap);
        let (server, client, method) = (self.server_port, self.client_port, self.method);
        let times = response_times_ms(&packets, (server, client), method, Until::Success);
        // A REGISTER's first response is its 200: nothing more to say.
        let first = if method == "INVITE" {
            response_times_ms(&packets, (server, client), method, Until::First)
        } else {
            Vec::new()
        };
        let mut downstream = Vec::new();
        for &(_, _, from, to) in &packets {
            let peer = if from == self.server_port { to } else { from };
            if peer != self.client_port && !downstream.contains(&peer) {
                downstream.push(peer);
            }
        }
        let far: Vec<f64> = downstream
            .into_iter()
            .flat_map(|peer| response_times_ms(&packets, (peer, server), method, Until::Success))
            .collect();
        (!times.is_empty()).then_some(WireTimes { times, first, far })
    }
}

/// Times of a capture, in ms.
pub(super) struct WireTimes {
    /// The client's requests of the method to the server, to their 200.
    pub times: Vec<f64>,
    /// The same requests to the server's first response of any status (an
    /// INVITE's 100 Trying, sent as the SIP core takes the INVITE): how
    /// long they waited for the core. Empty for other methods.
    pub first: Vec<f64>,
    /// The server's own requests to anyone else, to their 200 (a B2BUA's
    /// callee answering: what the far end itself took).
    pub far: Vec<f64>,
}

/// Which response ends an exchange's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The first 200.
    Success,
    /// The first response, whatever its status.
    First,
}

/// One captured UDP datagram: (seconds, payload, source port,
/// destination port).
type Datagram<'a> = (f64, &'a [u8], u16, u16);

/// A request's Call-ID and CSeq number and method: what its responses
/// carry too.
type Exchange = (String, u32, String);

/// From the datagrams of a loopback capture ([`udp_packets`]): for each
/// request of `method` the client sent, the time from its first copy to
/// the first 200 (or first response, `until`) the server sent for it, in
/// milliseconds. Retransmissions are ignored, and so are other methods: a
/// call's BYE is answered at once and would halve the INVITE's
/// percentiles if counted with them.
fn response_times_ms(
    packets: &[Datagram<'_>],
    (server_port, client_port): (u16, u16),
    method: &str,
    until: Until,
) -> Vec<f64> {
    let ends = match until {
        Until::Success => "SIP/2.0 200 ",
        Until::First => "SIP/2.0 ",
    };
    let mut sent: HashMap<Exchange, f64> = HashMap::new();
    let mut times = Vec::new();
    for &(at, payload, from, to) in packets {
        let Ok(text) = std::str::from_utf8(payload) else {
            continue;
        };
        let Some(exchange) = exchange_of(text) else {
            continue;
        };
        if exchange.2 != method {
            continue;
        }
        if from == client_port && to == server_port && !text.starts_with("SIP/2.0 ") {
            sent.entry(exchange).or_insert(at);
        } else if from == server_port && to == client_port && text.starts_with(ends) {
            if let Some(start) = sent.remove(&exchange) {
                times.push((at - start) * 1000.0);
            }
        }
    }
    times
}

fn exchange_of(text: &str) -> Option<Exchange> {
    let mut call_id = None;
    let mut cseq = None;
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Call-ID") || name == "i" {
            call_id = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("CSeq") {
            let mut parts = value.split_whitespace();
            let number = parts.next()?.parse().ok()?;
            cseq = Some((number, parts.next()?.to_owned()));
        }
    }
    let (number, method) = cseq?;
    Some((call_id?, number, method))
}

/// The UDP datagrams of a classic pcap file (little-endian, µs or ns
/// timestamps, Ethernet link type): (seconds, payload, source port,
/// destination port).
fn udp_packets(pcap: &[u8]) -> Vec<Datagram<'_>> {
    let mut packets = Vec::new();
    let Some(magic) = pcap.get(0..4) else {
        return packets;
    };
    let divisor = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => 1e6,
        [0x4d, 0x3c, 0xb2, 0xa1] => 1e9,
        _ => return packets,
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(pcap.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(20) != Some(1) {
        return packets;
    }
    let mut at = 24;
    while let (Some(secs), Some(frac), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 16;
        let end = start + len as usize;
        let Some(frame) = pcap.get(start..end) else {
            break;
        };
        at = end;
        let time = f64::from(secs) + f64::from(frac) / divisor;
        // Ethernet (14) then IPv4 with its header length, then UDP (8).
        let Some(ip) = frame.get(14..) else { continue };
        if ip.first().map(|b| b >> 4) != Some(4) || ip.get(9) != Some(&17) {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        let (Some(src), Some(dst), Some(payload)) = (udp.get(0..2), udp.get(2..4), udp.get(8..))
        else {
            continue;
        };
        packets.push((
            time,
            payload,
            u16::from_be_bytes([src[0], src[1]]),
            u16::from_be_bytes([dst[0], dst[1]]),
        ));
    }
    packets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: u16, dst: u16, payload: &str) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip.extend_from_slice(&src.to_be_bytes());
        ip.extend_from_slice(&dst.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0]);
        ip.extend_from_slice(payload.as_bytes());
        f.extend_from_slice(&ip);
        f
    }

    fn pcap(records: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&65535u32.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        for (secs, micros, f) in records {
            p.extend_from_slice(&secs.to_le_bytes());
            p.extend_from_slice(&micros.to_le_bytes());
            let len = u32::try_from(f.len()).expect("small");
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    #[test]
    fn a_request_is_timed_from_its_first_copy_to_its_200() {
        let invite = "INVITE sip:1001@x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n";
        let trying = "SIP/2.0 100 Trying\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n";
        let ok = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n";
        let bye = "BYE sip:1001@x SIP/2.0\r\nCall-ID: a\r\nCSeq: 2 BYE\r\n\r\n";
        let bye_ok = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 2 BYE\r\n\r\n";
        let other = "SIP/2.0 200 OK\r\ni: b\r\nCSeq: 1 INVITE\r\n\r\n";
        let file = pcap(&[
            (10, 0, frame(4000, 5060, invite)),
            (10, 500, frame(4000, 5060, invite)),
            (10, 800, frame(5060, 4000, trying)),
            (10, 2_250, frame(5060, 4000, ok)),
            (10, 2_300, frame(5060, 4000, ok)),
            (10, 2_900, frame(4000, 5060, bye)),
            (10, 3_000, frame(5060, 4000, bye_ok)),
            (10, 3_000, frame(5060, 4000, other)),
        ]);
        let packets = udp_packets(&file);
        let times = response_times_ms(&packets, (5060, 4000), "INVITE", Until::Success);
        assert_eq!(times.len(), 1, "{times:?}");
        assert!((times[0] - 2.25).abs() < 1e-6, "{times:?}");
        let first = response_times_ms(&packets, (5060, 4000), "INVITE", Until::First);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!((first[0] - 0.8).abs() < 1e-6, "the 100 Trying: {first:?}");
        assert!(response_times_ms(&packets, (5060, 4001), "INVITE", Until::Success).is_empty());
        assert!(udp_packets(b"not a pcap").is_empty());
    }
}
