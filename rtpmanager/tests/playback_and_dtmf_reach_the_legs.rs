//! Playback and RFC 4733 DTMF through the manager binary, driven over gRPC,
//! with fake endpoints on loopback receiving and sending real RTP.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::play_event::Event as PlayEv;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_rtpmanager::media::g711::ulaw_decode;
use switchboard_testkit::wav;
use tonic::transport::Channel;

mod common;

use common::{endpoint, media_addr, sdp, Daemon};

/// Starts the manager with `audio` as its audio directory.
async fn start(audio: &Path, pairs: u16) -> (Daemon, RtpManagerClient<Channel>) {
    let audio = audio.to_str().expect("UTF-8 temp path");
    common::start(&["--audio-path", audio], pairs).await
}

const CALLER_SSRC: u32 = 0xABCD_0001;

fn rtp(seq: u16, pt: u8, marker: bool, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&CALLER_SSRC.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The header fields of a received RTP packet.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

fn parse(at: Instant, b: &[u8]) -> Received {
    assert!(b.len() >= 12 && b[0] >> 6 == 2, "RTP version 2: {b:?}");
    Received {
        at,
        marker: b[1] & 0x80 != 0,
        pt: b[1] & 0x7f,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b[12..].to_vec(),
    }
}

/// Receives on `socket` in a thread until `quiet` passes without a packet
/// (after the first) or `limit` is reached.
fn collect(
    socket: &UdpSocket,
    quiet: Duration,
    limit: Duration,
) -> std::thread::JoinHandle<Vec<Received>> {
    collect_count(socket, 1, quiet, limit)
}

/// Receives on `socket` in a thread until `expected` packets came (however
/// late, within `limit`), then until `quiet` passes without one, so that
/// an extra one is seen.
/// A loaded CI host has held a packet past any quiet window a test could
/// afford (20 of 21 DTMF packets, twice), where the count is what the test
/// is about.
fn collect_count(
    socket: &UdpSocket,
    expected: usize,
    quiet: Duration,
    limit: Duration,
) -> std::thread::JoinHandle<Vec<Received>> {
    let socket = socket.try_clone().expect("clone endpoint");
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut out: Vec<Received> = Vec::new();
        let mut buf = [0u8; 2048];
        while started.elapsed() < limit {
            if let Ok(n) = socket.recv(&mut buf) {
                out.push(parse(Instant::now(), &buf[..n]));
            } else if out.len() >= expected && out.last().is_some_and(|r| r.at.elapsed() >= quiet) {
                break;
            }
        }
        out
    })
}

/// Receives everything already queued, then nothing for `quiet`.
fn drain(socket: &UdpSocket, quiet: Duration) -> usize {
    socket.set_read_timeout(Some(quiet)).expect("timeout");
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

const AMPLITUDE: f64 = 8000.0;

fn sine(rate: u32, seconds: f64) -> Vec<i16> {
    (0..(f64::from(rate) * seconds) as usize)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (AMPLITUDE * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()).round() as i16
        })
        .collect()
}

/// An audio directory with tone.wav (1 s), long.wav (3 s), half.wav (0.5 s),
/// deep.wav (24-bit), and escape.wav, a symlink to a WAV outside it.
fn audio_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("temporary directory");
    let audio = root.path().join("audio");
    std::fs::create_dir(&audio).expect("audio directory");
    let write =
        |name: &str, bytes: Vec<u8>| std::fs::write(audio.join(name), bytes).expect("write WAV");
    write("tone.wav", wav(16000, 16, &sine(16000, 1.0)));
    write("long.wav", wav(16000, 16, &sine(16000, 3.0)));
    write("half.wav", wav(8000, 16, &sine(8000, 0.5)));
    write("deep.wav", wav(8000, 24, &sine(8000, 0.5)));
    std::fs::write(
        root.path().join("outside.wav"),
        wav(8000, 16, &sine(8000, 0.5)),
    )
    .expect("write outside");
    std::os::unix::fs::symlink(root.path().join("outside.wav"), audio.join("escape.wav"))
        .expect("symlink out");
    (root, audio)
}

/// A leg the manager answers itself, with `peer` as its remote endpoint.
async fn self_answered(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    leg: &str,
    peer: &UdpSocket,
    payload_types: &str,
) -> SocketAddr {
    let r = client
        .offer(v1::OfferRequest {
            call_id: call.into(),
            leg_id: leg.into(),
            sdp: sdp(peer.local_addr().expect("addr"), payload_types),
            ..Default::default()
        })
        .await
        .expect("Offer")
        .into_inner();
    media_addr(&r.sdp)
}

/// Call `call` between `caller` (leg a) and `callee` (leg b), bridged;
/// returns the manager's addresses for each side.
async fn bridged_call(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    caller: &UdpSocket,
    callee: &UdpSocket,
    payload_types: &str,
) -> (SocketAddr, SocketAddr) {
    let offer = client
        .offer(v1::OfferRequest {
            call_id: call.into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: sdp(caller.local_addr().expect("addr"), payload_types),
            ..Default::default()
        })
        .await
        .expect("Offer")
        .into_inner();
    let answer = client
        .answer(v1::AnswerRequest {
            call_id: call.into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: sdp(callee.local_addr().expect("addr"), payload_types),
            bridge: false,
        })
        .await
        .expect("Answer")
        .into_inner();
    common::bridge(client, call).await;
    (media_addr(&answer.sdp), media_addr(&offer.sdp))
}

async fn play(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    leg: &str,
    files: &[&str],
) -> tonic::Streaming<v1::PlayEvent> {
    client
        .play(v1::PlayRequest {
            call_id: call.into(),
            leg_id: leg.into(),
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            repeat: 0,
            loop_forever: false,
        })
        .await
        .expect("Play")
        .into_inner()
}

/// The next Play event, within 5 s; `None` when the stream ended.
async fn next_event(stream: &mut tonic::Streaming<v1::PlayEvent>) -> Option<v1::PlayEvent> {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a Play event within 5 s")
        .expect("Play stream ok")
}

/// Every event of a Play stream until it ends.
async fn all_events(stream: &mut tonic::Streaming<v1::PlayEvent>) -> Vec<v1::PlayEvent> {
    let mut out = Vec::new();
    while let Some(e) = next_event(stream).await {
        out.push(e);
    }
    out
}

fn describe(e: &v1::PlayEvent) -> String {
    match &e.event {
        Some(PlayEv::Started(s)) => format!("started {} {}", s.file, s.codec),
        Some(PlayEv::Progress(p)) => {
            format!("progress {} {}/{}", p.file, p.position_ms, p.duration_ms)
        }
        Some(PlayEv::Completed(_)) => "completed".to_owned(),
        Some(PlayEv::Stopped(s)) => format!("stopped {}", s.reason),
        Some(PlayEv::Error(x)) => format!("error {}: {}", x.file, x.reason),
        None => "empty".to_owned(),
    }
}

fn assert_contiguous(packets: &[Received], what: &str) {
    for w in packets.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{what}: sequence numbers contiguous ({} then {})",
            w[0].seq,
            w[1].seq
        );
    }
}

/// Peak amplitude from the RMS of decoded µ-law payloads.
fn peak_amplitude(packets: &[&Received]) -> f64 {
    let samples: Vec<f64> = packets
        .iter()
        .flat_map(|p| p.payload.iter().map(|c| f64::from(ulaw_decode(*c))))
        .collect();
    let power = samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64;
    (2.0 * power).sqrt()
}

fn zero_crossings(packets: &[&Received]) -> usize {
    let samples: Vec<i16> = packets
        .iter()
        .flat_map(|p| p.payload.iter().map(|c| ulaw_decode(*c)))
        .collect();
    samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count()
}

#[tokio::test]
async fn a_file_plays_to_a_self_answered_leg_paced_continuous_and_intact() {
    let (_root, audio) = audio_dir();
    let (_daemon, mut client) = start(&audio, 4).await;
    let phone = endpoint();
    self_answered(&mut client, "p1", "a", &phone, "0 101").await;

    let receiver = collect(&phone, Duration::from_millis(400), Duration::from_secs(5));
    let mut stream = play(&mut client, "p1", "a", &["tone.wav"]).await;
    let events = all_events(&mut stream).await;
    let packets = receiver.join().expect("receiver thread");

    let described: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        described,
        [
            "started tone.wav PCMU",
            "progress tone.wav 1000/1000",
            "completed"
        ]
    );
    let id = &events[0].playback_id;
    assert!(!id.is_empty(), "a playback id");
    assert!(
        events.iter().all(|e| &e.playback_id == id),
        "one id for the whole stream"
    );

    assert!(
        (49..=51).contains(&packets.len()),
        "50 ± 1 packets, got {}",
        packets.len()
    );
    assert!(packets.iter().all(|p| p.pt == 0), "PCMU payload type");
    assert!(
        packets.iter().all(|p| p.payload.len() == 160),
        "20 ms payloads"
    );
    assert!(packets[0].marker, "marker on the first packet");
    assert!(
        packets[1..].iter().all(|p| !p.marker),
        "no marker after the first"
    );
    assert!(
        packets.iter().all(|p| p.ssrc == packets[0].ssrc),
        "one SSRC"
    );
    assert_contiguous(&packets, "playback");
    for w in packets.windows(2) {
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 160, "timestamps step by 160");
    }
    let span = packets[packets.len() - 1].at - packets[0].at;
    assert!(
        span >= Duration::from_millis(920) && span <= Duration::from_millis(1040),
        "span {span:?}, expected 980 ± 60 ms"
    );
    let worst = packets
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .expect("gaps");
    assert!(worst <= Duration::from_millis(60), "largest gap {worst:?}");

    let middle: Vec<&Received> = packets[5..45].iter().collect();
    let peak = peak_amplitude(&middle);
    assert!(
        (peak - AMPLITUDE).abs() < AMPLITUDE * 0.03,
        "decoded peak {peak:.0}, expected {AMPLITUDE}"
    );
    let crossings = zero_crossings(&middle);
    assert!(
        (1598..=1602).contains(&crossings),
        "1 kHz over 0.8 s crosses zero 1600 times, got {crossings}"
    );

    let stats = client
        .get_stats(v1::GetStatsRequest {
            call_id: "p1".into(),
            leg_id: "a".into(),
        })
        .await
        .expect("GetStats")
        .into_inner();
    assert_eq!(
        stats.legs[0].rtp_out.as_ref().map(|c| (c.packets, c.bytes)),
        Some((packets.len() as u64, packets.len() as u64 * 172)),
        "injected packets are counted as sent to the leg"
    );
}

#[tokio::test]
async fn stop_replace_and_delete_end_a_playback_with_stopped() {
    let (_root, audio) = audio_dir();
    let (_daemon, mut client) = start(&audio, 4).await;
    let phone = endpoint();
    self_answered(&mut client, "p2", "a", &phone, "8 101").await;

    // StopPlay mid-way: stopped("request"), then silence.
    let mut stream = play(&mut client, "p2", "a", &["long.wav"]).await;
    let started = next_event(&mut stream).await.expect("started");
    assert_eq!(describe(&started), "started long.wav PCMA");
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        phone.recv(&mut buf).expect("playback packets arrive");
    }
    client
        .stop_play(v1::StopPlayRequest {
            call_id: "p2".into(),
            leg_id: "a".into(),
            playback_id: started.playback_id.clone(),
        })
        .await
        .expect("StopPlay");
    let rest: Vec<String> = all_events(&mut stream).await.iter().map(describe).collect();
    assert_eq!(
        rest,
        ["stopped request"],
        "no progress after 200 ms, then stopped"
    );
    let queued = drain(&phone, Duration::from_millis(50));
    assert!(queued <= 3, "{queued} packets were still on their way");
    assert_eq!(
        drain(&phone, Duration::from_millis(300)),
        0,
        "nothing is sent after stopped"
    );
    let again = client
        .stop_play(v1::StopPlayRequest {
            call_id: "p2".into(),
            leg_id: "a".into(),
            playback_id: started.playback_id.clone(),
        })
        .await
        .expect_err("nothing plays");
    assert_eq!(again.code(), tonic::Code::NotFound, "{}", again.message());

    // A new Play replaces the running one; the sequence continues.
    let mut first = play(&mut client, "p2", "a", &["long.wav"]).await;
    assert!(next_event(&mut first).await.is_some(), "first started");
    phone
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let n = phone.recv(&mut buf).expect("first playback packet");
    let before = parse(Instant::now(), &buf[..n]);
    let mut second = play(&mut client, "p2", "a", &["half.wav"]).await;
    let first_rest: Vec<String> = all_events(&mut first).await.iter().map(describe).collect();
    assert_eq!(first_rest, ["stopped replaced"]);
    assert_eq!(
        describe(&next_event(&mut second).await.expect("second started")),
        "started half.wav PCMA"
    );
    let mut seqs = vec![before.seq];
    let mut markers = Vec::new();
    while let Ok(n) = phone.recv(&mut buf) {
        let p = parse(Instant::now(), &buf[..n]);
        assert_eq!(p.ssrc, before.ssrc, "one SSRC across playbacks");
        seqs.push(p.seq);
        if p.marker {
            markers.push(p.seq);
        }
        if seqs.len() > 10 {
            break;
        }
    }
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "sequence continues: {seqs:?}");
    }
    assert_eq!(
        markers.len(),
        1,
        "the replacing playback marks its first packet"
    );

    // Deleting the leg stops its playback.
    client
        .delete(v1::DeleteRequest {
            call_id: "p2".into(),
            leg_id: "a".into(),
            ..Default::default()
        })
        .await
        .expect("Delete");
    let second_rest: Vec<String> = all_events(&mut second).await.iter().map(describe).collect();
    assert_eq!(
        second_rest.last().map(String::as_str),
        Some("stopped leg deleted"),
        "{second_rest:?}"
    );
}

#[tokio::test]
async fn files_outside_the_directory_or_unsupported_end_with_an_error_event() {
    let (_root, audio) = audio_dir();
    let (_daemon, mut client) = start(&audio, 6).await;
    let phone = endpoint();
    self_answered(&mut client, "p3", "a", &phone, "0").await;

    let cases = [
        (
            "../etc/passwd",
            "'..' is refused; name a file inside the audio directory",
        ),
        (
            "/etc/passwd",
            "absolute paths are refused; name a file relative to the audio directory",
        ),
        (
            "escape.wav",
            "the path resolves outside the audio directory",
        ),
        ("missing.wav", "no such file in the audio directory"),
        (
            "deep.wav",
            "24-bit PCM is not supported; convert to 16-bit PCM",
        ),
    ];
    for (file, reason) in cases {
        let mut stream = play(&mut client, "p3", "a", &["tone.wav", file]).await;
        let events: Vec<String> = all_events(&mut stream).await.iter().map(describe).collect();
        assert_eq!(events, [format!("error {file}: {reason}")], "{file}");
    }
    assert_eq!(
        drain(&phone, Duration::from_millis(200)),
        0,
        "a refused playlist sends nothing, not even its good files"
    );

    let unknown = client
        .play(v1::PlayRequest {
            call_id: "p3".into(),
            leg_id: "nope".into(),
            files: vec!["tone.wav".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown leg");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A passthrough G.722 leg cannot take G.711 playback.
    let (caller, callee) = (endpoint(), endpoint());
    bridged_call(&mut client, "g722", &caller, &callee, "9 101").await;
    let refused = client
        .play(v1::PlayRequest {
            call_id: "g722".into(),
            leg_id: "b".into(),
            files: vec!["tone.wav".into()],
            ..Default::default()
        })
        .await
        .expect_err("G.722 leg");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "playback needs PCMU or PCMA, leg negotiated G722/8000"
    );
}

#[tokio::test]
async fn playback_into_a_bridged_leg_pauses_forwarding_and_keeps_the_stream_continuous() {
    let (_root, audio) = audio_dir();
    let (_daemon, mut client) = start(&audio, 4).await;
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, _) = bridged_call(&mut client, "br", &caller, &callee, "0 101").await;

    // The caller talks for 2 s, one packet every 20 ms on an absolute schedule.
    let talking = Arc::new(AtomicBool::new(true));
    let sender = {
        let caller = caller.try_clone().expect("clone caller");
        let talking = Arc::clone(&talking);
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut seq: u16 = 1000;
            while talking.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(3) {
                let ts = u32::from(seq) * 160;
                caller
                    .send_to(&rtp(seq, 0, false, ts, &[0x55; 160]), to_a)
                    .expect("caller sends");
                seq = seq.wrapping_add(1);
                let next = t0 + Duration::from_millis(20) * u32::from(seq - 1000);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let receiver = collect(&callee, Duration::from_millis(300), Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut stream = play(&mut client, "br", "b", &["half.wav"]).await;
    let events: Vec<String> = all_events(&mut stream).await.iter().map(describe).collect();
    assert_eq!(
        events,
        [
            "started half.wav PCMU",
            "progress half.wav 500/500",
            "completed"
        ]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    talking.store(false, Ordering::Relaxed);
    sender.join().expect("sender thread");
    let packets = receiver.join().expect("receiver thread");

    let is_forwarded = |p: &Received| p.payload.iter().all(|&b| b == 0x55);
    let first_played = packets
        .iter()
        .position(|p| !is_forwarded(p))
        .expect("played packets");
    let played: Vec<&Received> = packets[first_played..]
        .iter()
        .take_while(|p| !is_forwarded(p))
        .collect();
    let after = &packets[first_played + played.len()..];
    assert!(first_played >= 10, "forwarded before: {first_played}");
    assert_eq!(
        played.len(),
        25,
        "0.5 s of playback, nothing forwarded in between"
    );
    assert!(
        after.len() >= 10 && after.iter().all(is_forwarded),
        "forwarding resumed: {} packets after",
        after.len()
    );
    assert!(played[0].marker, "the playback marks its first packet");
    assert!(
        packets.iter().all(|p| p.ssrc == CALLER_SSRC),
        "the callee keeps seeing the caller's SSRC"
    );
    assert_contiguous(&packets, "forwarded, played, forwarded");
    for w in packets.windows(2) {
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            (160..=160 * 4).contains(&step),
            "timestamps move on with the media clock: step {step}"
        );
    }
    let peak = peak_amplitude(&played[2..23]);
    assert!(
        (peak - AMPLITUDE).abs() < AMPLITUDE * 0.03,
        "played audio peak {peak:.0}"
    );
}

#[tokio::test]
async fn dtmf_is_sent_as_rfc4733_and_received_digits_reach_watchers_once() {
    let (_root, audio) = audio_dir();
    let (_daemon, mut client) = start(&audio, 8).await;

    // Sending "12#" to a self-answered leg.
    let phone = endpoint();
    self_answered(&mut client, "d1", "a", &phone, "0 101").await;
    // The digits are paced on the manager's clock, and a loaded two-core
    // CI host has held the last end retransmission past a 300 ms and then
    // a 1 s quiet (20 of 21): wait for all 21 (within 15 s), then 500 ms
    // more for any extra.
    let receiver = collect_count(
        &phone,
        21,
        Duration::from_millis(500),
        Duration::from_secs(15),
    );
    let sent_at = Instant::now();
    client
        .send_dtmf(v1::SendDtmfRequest {
            call_id: "d1".into(),
            leg_id: "a".into(),
            digits: "12#".into(),
            ..Default::default()
        })
        .await
        .expect("SendDtmf");
    let returned = sent_at.elapsed();
    let packets = receiver.join().expect("receiver thread");
    assert!(
        returned >= Duration::from_millis(600),
        "SendDtmf returns once sent ({returned:?})"
    );
    assert_eq!(packets.len(), 21, "3 digits × (5 + 2 end retransmissions)");
    assert!(
        packets.iter().all(|p| p.pt == 101),
        "telephone-event payload type"
    );
    assert_contiguous(&packets, "DTMF");
    for (d, digit) in packets.chunks(7).enumerate() {
        let expected_event = [1u8, 2, 11][d];
        let blocks: Vec<(u8, bool, u8, u16)> = digit
            .iter()
            .map(|p| {
                (
                    p.payload[0],
                    p.payload[1] & 0x80 != 0,
                    p.payload[1] & 0x3f,
                    u16::from_be_bytes([p.payload[2], p.payload[3]]),
                )
            })
            .collect();
        let e = expected_event;
        assert_eq!(
            blocks,
            [
                (e, false, 10, 160),
                (e, false, 10, 320),
                (e, false, 10, 480),
                (e, false, 10, 640),
                (e, true, 10, 800),
                (e, true, 10, 800),
                (e, true, 10, 800)
            ],
            "digit {d}"
        );
        assert!(digit[0].marker && digit[1..].iter().all(|p| !p.marker));
        assert!(
            digit.iter().all(|p| p.ts == digit[0].ts),
            "one timestamp per event"
        );
        assert!(digit.iter().all(|p| p.payload.len() == 4));
    }
    assert_eq!(
        packets[7].ts.wrapping_sub(packets[0].ts),
        12 * 160,
        "media clock"
    );

    let no_events = endpoint();
    self_answered(&mut client, "d2", "a", &no_events, "0").await;
    let refused = client
        .send_dtmf(v1::SendDtmfRequest {
            call_id: "d2".into(),
            leg_id: "a".into(),
            digits: "1".into(),
            ..Default::default()
        })
        .await
        .expect_err("no telephone-event");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "leg a did not negotiate telephone-event");
    let bad = client
        .send_dtmf(v1::SendDtmfRequest {
            call_id: "d1".into(),
            leg_id: "a".into(),
            digits: "1x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad digit");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Receiving: a caller presses 5 then 9 on a bridged call.
    let mut watch = client
        .watch(v1::WatchRequest {
            stats_interval_secs: 0,
        })
        .await
        .expect("Watch")
        .into_inner();
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, _) = bridged_call(&mut client, "d3", &caller, &callee, "0 101").await;
    let mut seq = 1u16;
    for (digit, start_ts) in [(5u8, 16_000u32), (9, 17_600)] {
        for k in 0..8u16 {
            let end = k >= 5;
            let duration = if end { 800 } else { 160 * (k + 1) };
            let mut block = vec![digit, if end { 0x80 | 12 } else { 12 }];
            block.extend_from_slice(&duration.to_be_bytes());
            caller
                .send_to(&rtp(seq, 101, k == 0, start_ts, &block), to_a)
                .expect("send telephone-event");
            seq += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut digits = Vec::new();
    while digits.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(3), watch.message())
            .await
            .expect("a DTMF event within 3 s")
            .expect("watch ok")
            .expect("watch open");
        if let Some(v1::manager_event::Event::Dtmf(d)) = event.event {
            digits.push((d.call_id, d.leg_id, d.digit, d.duration_ms, d.volume));
        }
    }
    assert_eq!(
        digits,
        [
            ("d3".into(), "a".into(), "5".into(), 100, 12),
            ("d3".into(), "a".into(), "9".into(), 100, 12)
        ]
    );
    let more = tokio::time::timeout(Duration::from_millis(800), watch.message()).await;
    assert!(
        more.is_err(),
        "each digit is reported once despite 3 end packets: {more:?}"
    );
    let passed = drain(&callee, Duration::from_millis(200));
    assert_eq!(
        passed, 16,
        "telephone-events pass through to the bridged leg"
    );

    // Not passed to a leg that did not negotiate telephone-event.
    let (events_peer, plain_peer) = (endpoint(), endpoint());
    let to_events = self_answered(&mut client, "d4", "a", &events_peer, "0 101").await;
    self_answered(&mut client, "d4", "b", &plain_peer, "0").await;
    common::bridge(&mut client, "d4").await;
    events_peer
        .send_to(&rtp(1, 101, true, 0, &[3, 10, 0, 160]), to_events)
        .expect("send telephone-event");
    events_peer
        .send_to(&rtp(2, 0, false, 160, &[0xFF; 160]), to_events)
        .expect("send audio");
    plain_peer
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let n = plain_peer.recv(&mut buf).expect("audio passes");
    assert_eq!(
        parse(Instant::now(), &buf[..n]).pt,
        0,
        "only the audio arrives"
    );
    assert_eq!(drain(&plain_peer, Duration::from_millis(200)), 0);
}

/// The demo announcement as `cargo xtask run` makes it (espeak-ng, then sox
/// to 8 kHz mono 16-bit) plays to the end at its own length.
#[tokio::test]
async fn the_demo_announcement_plays() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !have("espeak-ng") || !have("sox") {
        eprintln!("skipped: espeak-ng and sox are needed (cargo xtask setup installs them)");
        return;
    }
    let root = tempfile::tempdir().expect("temporary directory");
    let raw = root.path().join("welcome.raw.wav");
    let welcome = root.path().join("welcome.wav");
    let text = "Welcome to Switchboard. This announcement is played by the RTP manager.";
    let spoke = Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg(text)
        .status()
        .expect("run espeak-ng");
    assert!(spoke.success(), "espeak-ng failed");
    let converted = Command::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(&welcome)
        .status()
        .expect("run sox");
    assert!(converted.success(), "sox failed");
    let bytes = std::fs::metadata(&welcome).expect("welcome.wav").len();
    let expected_packets = (bytes - 44) / 320;

    let (_daemon, mut client) = start(root.path(), 2).await;
    let phone = endpoint();
    self_answered(&mut client, "demo", "a", &phone, "8 0 101").await;
    let receiver = collect(&phone, Duration::from_millis(400), Duration::from_secs(15));
    let mut stream = play(&mut client, "demo", "a", &["welcome.wav"]).await;
    let events: Vec<String> = all_events(&mut stream).await.iter().map(describe).collect();
    let packets = receiver.join().expect("receiver thread");
    assert_eq!(
        events.first().map(String::as_str),
        Some("started welcome.wav PCMA")
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("completed"),
        "{events:?}"
    );
    assert!(
        packets.len() as u64 >= expected_packets && packets.len() as u64 <= expected_packets + 1,
        "{} packets for {bytes} bytes of WAV",
        packets.len()
    );
    assert!(packets.iter().all(|p| p.pt == 8), "PCMA");
}
