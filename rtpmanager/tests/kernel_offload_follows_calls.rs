//! The manager binary offloads a bridged call to the kernel, driven over
//! gRPC as a signaling server drives it: caller ⇄ relay ⇄ callee in network
//! namespaces, for the userspace path (`--fast-path off`), XDP native, XDP
//! generic and TC, over IPv4 and over IPv6 (a bed whose hosts have IPv6
//! addresses only, the manager advertising and binding IPv6).
//!
//! The manager runs in the relay namespace (`ip netns exec`); the test talks
//! gRPC from its own thread after entering that namespace (network
//! namespaces are per thread) on a current-thread runtime, so every socket
//! the client opens is in the relay namespace. Each peer sends one packet
//! first (the relay latches it in userspace), the test waits until ListCalls
//! says both legs are offloaded, then both peers send a stream with gaps.
//! The kernel's per-reason counters come from the manager's shutdown log.
//!
//! With the fast path pinned on a bpffs the test mounts, a SIGKILLed
//! manager's kernel entries keep forwarding; the next manager removes the
//! entries of calls it does not know, and a clean exit unpins everything
//! unless `--keep-on-exit`.
//!
//! A playback into the callee's leg during a kernel-forwarded call takes
//! caller → callee to userspace and back into the kernel with the relay's
//! stream-continuity rewrite: the callee hears one continuous stream.
//!
//! They need root; without it they skip loudly. Without the embedded object
//! they skip too, except under CI, where that is a failure.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_rtpmanager::fastpath::{Mode, PinError, Pins};
use tonic::transport::Channel;

#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;
// Shared with other namespace tests, which use other parts of it.
#[allow(dead_code)]
#[path = "common/bed.rs"]
mod bed;
#[path = "common/netns_call.rs"]
mod netns_call;

use bed::{one_interface, xdp_peer_pass, Bed, Family, CALLEE, CALLER, RELAY_IP};
use kernel::addr;
use switchboard_testkit::netns::{sh, spawn_in_ns};

use netns_call::{media_addr, rtp, sdp, stats_then_delete, stream, Manager, Peer, LOST, PEER_SSRC};

impl Manager {
    /// The manager of an IPv4 bed.
    fn start(relay_ns: &str, fast_path: &str, extra: &[&str]) -> (Manager, String) {
        Manager::start_for(Family::V4, RELAY_IP, relay_ns, fast_path, extra)
    }

    /// The manager advertising the relay's address of `family`.
    ///
    /// On IPv6 it runs as an IPv6-only media server: media sockets bound to
    /// `::` and the IPv6 address as its only `--advertise`. That is what
    /// the tests hold the manager to: the relayed offer follows the
    /// offerer's family, and `--enable-forwarding` turns on IPv6 forwarding
    /// for an IPv6 `--advertise` (both were found missing by these tests).
    fn start_for(
        family: Family,
        advertise: &str,
        relay_ns: &str,
        fast_path: &str,
        extra: &[&str],
    ) -> (Manager, String) {
        let family_args: &[&str] = match family {
            Family::V4 => &["--advertise", advertise],
            Family::V6 => &["--advertise", advertise, "--rtp-bind-address", "::"],
        };
        let mut args: Vec<&str> = vec!["--grpc-port", "0", "--fast-path", fast_path];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--media-interface", "r0"]);
        args.extend_from_slice(family_args);
        args.extend_from_slice(&["--rtp-port-min", "30000", "--rtp-port-max", "30100"]);
        args.extend_from_slice(&["--enable-forwarding", "--log-level", "info"]);
        Manager::spawn(relay_ns, &args)
    }
}

/// Sets up the bridged call; returns the relay's address of leg a (where
/// the caller sends) and of leg b (where the callee sends).
async fn bridged_call(client: &mut RtpManagerClient<Channel>) -> (SocketAddr, SocketAddr) {
    bridged_call_with(client, None).await
}

/// [`bridged_call`] with `options` for both legs.
async fn bridged_call_with(
    client: &mut RtpManagerClient<Channel>,
    options: Option<v1::LegOptions>,
) -> (SocketAddr, SocketAddr) {
    bridged_call_between(client, addr(CALLER), addr(CALLEE), options).await
}

/// [`bridged_call_with`] for a caller and a callee at these addresses.
async fn bridged_call_between(
    client: &mut RtpManagerClient<Channel>,
    caller: SocketAddr,
    callee: SocketAddr,
    options: Option<v1::LegOptions>,
) -> (SocketAddr, SocketAddr) {
    let (offer, answer) = bridged_call_of(client, sdp(caller), sdp(callee), options).await;
    (media_addr(&answer), media_addr(&offer))
}

/// Offer (caller's SDP on leg a, peer leg b), Answer (callee's SDP) and
/// Bridge; returns the SDP the manager gave the callee (leg b's) and the
/// caller (leg a's).
async fn bridged_call_of(
    client: &mut RtpManagerClient<Channel>,
    caller_sdp: String,
    callee_sdp: String,
    options: Option<v1::LegOptions>,
) -> (String, String) {
    let offer = client
        .offer(v1::OfferRequest {
            call_id: "call-1".into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: caller_sdp,
            options: options.clone(),
            peer_options: options,
        })
        .await
        .expect("Offer")
        .into_inner();
    let answer = client
        .answer(v1::AnswerRequest {
            call_id: "call-1".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: callee_sdp,
            bridge: false,
        })
        .await
        .expect("Answer")
        .into_inner();
    client
        .bridge(v1::BridgeRequest {
            call_id: "call-1".into(),
            leg_a: "a".into(),
            leg_b: "b".into(),
        })
        .await
        .expect("Bridge");
    (offer.sdp, answer.sdp)
}

async fn offloaded(client: &mut RtpManagerClient<Channel>) -> Vec<(String, bool)> {
    let calls = client
        .list_calls(v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner()
        .calls;
    calls
        .iter()
        .flat_map(|c| c.legs.iter())
        .map(|l| (l.leg_id.clone(), l.offloaded))
        .collect()
}

/// Polls ListCalls until leg `leg` is offloaded as `want` (3 s at most).
async fn wait_offloaded(client: &mut RtpManagerClient<Channel>, leg: &str, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let states = offloaded(client).await;
        let now = states.iter().any(|(l, o)| l == leg && *o == want);
        if now || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn call_in_every_path(family: Family, tag: &str, fast_path: &str, mode: Mode) {
    let bed = one_interface(family, tag);
    let _peer_pass = xdp_peer_pass(&bed, mode);
    let relay_ip = bed.relay_ip();
    let (caller_addr, callee_addr) = (bed.caller_addr(), bed.callee_addr());
    let advertise = relay_ip.to_string();
    let (manager, grpc) = Manager::start_for(family, &advertise, &bed.relay, fast_path, &[]);
    let caller = Peer::start(&bed.caller, caller_addr);
    let callee = Peer::start(&bed.callee, callee_addr);
    let relay_ns = bed.relay.to_string();

    // The gRPC client lives on this thread, moved into the relay namespace.
    let (leg_a_addr, leg_b_addr, stats, offload_states) = spawn_in_ns(&relay_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut client = RtpManagerClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let info = client
                .info(v1::InfoRequest {})
                .await
                .expect("Info")
                .into_inner();
            assert_eq!(
                info.fast_path,
                i32::from(switchboard_rtpmanager::grpc::mode_proto(mode)),
                "{family} {mode}: mode in force: {}",
                info.fast_path_reason
            );
            let (leg_a_addr, leg_b_addr) =
                bridged_call_between(&mut client, caller_addr, callee_addr, None).await;
            for (leg, media) in [("a", leg_a_addr), ("b", leg_b_addr)] {
                assert_eq!(
                    media,
                    SocketAddr::new(relay_ip, media.port()),
                    "{family} {mode}: the SDP of leg {leg} carries the relay's {family} address"
                );
            }

            // Latching: one packet each way through userspace.
            caller.send(leg_a_addr, vec![0]);
            let first = callee.receive(1);
            assert_eq!(
                first.len(),
                1,
                "{family} {mode}: the latching packet reached the callee"
            );
            callee.send(leg_b_addr, vec![0]);
            let first = caller.receive(1);
            assert_eq!(
                first.len(),
                1,
                "{family} {mode}: the latching packet reached the caller"
            );

            let want_offloaded = mode != Mode::Off;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut states = offloaded(&mut client).await;
            while states.iter().any(|(_, o)| *o != want_offloaded) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                states = offloaded(&mut client).await;
            }

            let sent: Vec<Vec<u8>> = stream().into_iter().map(rtp).collect();
            for (direction, from, to, receiver, source) in [
                ("caller → callee", &caller, leg_a_addr, &callee, leg_b_addr),
                ("callee → caller", &callee, leg_b_addr, &caller, leg_a_addr),
            ] {
                from.send(to, stream());
                let got = receiver.receive(sent.len());
                assert_eq!(
                    got.len(),
                    sent.len(),
                    "{family} {mode} {direction}: every packet arrived once"
                );
                for ((seen, payload), want) in got.iter().zip(&sent) {
                    assert_eq!(
                        *seen, source,
                        "{family} {mode} {direction}: the source is the relay's port of the receiver's leg"
                    );
                    assert_eq!(
                        payload, want,
                        "{family} {mode} {direction}: payload intact, in order"
                    );
                }
                assert_eq!(
                    receiver.new_csum_errors(),
                    0,
                    "{family} {mode} {direction}: no UDP checksum errors at the receiver"
                );
            }
            let (stats, deleted) = stats_then_delete(&mut client, "call-1").await;
            (leg_a_addr, leg_b_addr, (stats, deleted), states)
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert_ne!(leg_a_addr, leg_b_addr);

    let want_offloaded = mode != Mode::Off;
    assert_eq!(
        offload_states,
        vec![
            ("a".to_owned(), want_offloaded),
            ("b".to_owned(), want_offloaded)
        ],
        "{family} {mode}: ListCalls reports the offload state of both legs"
    );
    let n = stream().len() as u64;
    let kernel = if want_offloaded { n } else { 0 };
    let (stats, deleted) = stats;
    // Delete removes the legs one by one: each one's final figures must
    // still hold what the kernel sent into it from the other.
    let mut finals: Vec<(String, u64, u64, u64)> = deleted
        .iter()
        .map(|l| {
            (
                l.leg_id.clone(),
                l.rtp_in.map_or(0, |c| c.packets),
                l.rtp_out.map_or(0, |c| c.packets),
                l.kernel_packets,
            )
        })
        .collect();
    finals.sort();
    assert_eq!(
        finals,
        vec![
            ("a".to_owned(), n + 1, n + 1, kernel),
            ("b".to_owned(), n + 1, n + 1, kernel)
        ],
        "{family} {mode}: Delete's final figures count every packet both ways"
    );
    assert_eq!(stats.len(), 2, "{family} {mode}: both legs");
    for leg in &stats {
        let rtp_in = leg.rtp_in.expect("rtp_in");
        let rtp_out = leg.rtp_out.expect("rtp_out");
        assert_eq!(
            (rtp_in.packets, rtp_in.bytes),
            (n + 1, 172 * (n + 1)),
            "{family} {mode} leg {}: received packets and bytes, whichever path",
            leg.leg_id
        );
        assert_eq!(
            (rtp_out.packets, rtp_out.bytes),
            (n + 1, 172 * (n + 1)),
            "{family} {mode} leg {}: sent packets and bytes, whichever path",
            leg.leg_id
        );
        assert_eq!(
            leg.kernel_packets, kernel,
            "{family} {mode} leg {}: the kernel carried everything after the latch",
            leg.leg_id
        );
        assert_eq!(
            leg.rtp_lost, LOST,
            "{family} {mode} leg {}: the skipped sequence numbers are lost",
            leg.leg_id
        );
        assert!(
            leg.last_packet_ms > 0,
            "{family} {mode} leg {}: last packet time",
            leg.leg_id
        );
    }

    if mode != Mode::Off {
        let sysctl = format!("/proc/sys/net/{}/conf/r0/forwarding", family.sysctl());
        let forwarding = spawn_in_ns(&bed.relay, move || {
            std::fs::read_to_string(&sysctl).expect("read the forwarding sysctl")
        })
        .join()
        .expect("read in the relay namespace");
        assert_eq!(
            forwarding.trim(),
            "1",
            "{family} {mode}: --enable-forwarding set it"
        );
    }
    let counters = manager.stop();
    match mode {
        Mode::Off => assert_eq!(counters, vec![], "{family} off: no kernel counters"),
        _ => {
            let verdict = if mode == Mode::Tc {
                "redirected"
            } else {
                "forwarded"
            };
            // The hosts' own traffic (IGMP, ARP, MLD reports behind a
            // hop-by-hop header) is not the test's to count.
            let media: Vec<(String, u64)> = counters
                .into_iter()
                .filter(|(name, _)| {
                    !matches!(
                        name.as_str(),
                        "not_ip" | "not_udp" | "ipv6_extension_header"
                    )
                })
                .collect();
            assert_eq!(
                media,
                vec![("no_entry".to_owned(), 2), (verdict.to_owned(), 2 * n)],
                "{family} {mode}: the two latching packets went to userspace (no entry yet), \
                 every later packet was forwarded by the program"
            );
        }
    }
}

#[test]
fn a_bridged_call_is_relayed_in_userspace_only() {
    require_kernel_path!();
    call_in_every_path(Family::V4, "o", "off", Mode::Off);
}

#[test]
fn a_bridged_call_is_offloaded_to_xdp_native() {
    require_kernel_path!();
    call_in_every_path(Family::V4, "n", "xdp", Mode::XdpNative);
}

#[test]
fn a_bridged_call_is_offloaded_to_xdp_generic() {
    require_kernel_path!();
    call_in_every_path(Family::V4, "g", "xdp-generic", Mode::XdpGeneric);
}

#[test]
fn a_bridged_call_is_offloaded_to_tc() {
    require_kernel_path!();
    call_in_every_path(Family::V4, "t", "tc", Mode::Tc);
}

#[test]
fn a_bridged_ipv6_call_is_relayed_in_userspace_only() {
    require_kernel_path!();
    call_in_every_path(Family::V6, "o", "off", Mode::Off);
}

#[test]
fn a_bridged_ipv6_call_is_offloaded_to_xdp_native() {
    require_kernel_path!();
    call_in_every_path(Family::V6, "n", "xdp", Mode::XdpNative);
}

#[test]
fn a_bridged_ipv6_call_is_offloaded_to_xdp_generic() {
    require_kernel_path!();
    call_in_every_path(Family::V6, "g", "xdp-generic", Mode::XdpGeneric);
}

#[test]
fn a_bridged_ipv6_call_is_offloaded_to_tc() {
    require_kernel_path!();
    call_in_every_path(Family::V6, "t", "tc", Mode::Tc);
}

/// A mono 16-bit 8 kHz WAV of `ms` milliseconds of a quiet square wave.
fn wav_8k(ms: u32) -> Vec<u8> {
    let samples: Vec<i16> = (0..8 * ms)
        .map(|i| if i % 16 < 8 { 2000 } else { -2000 })
        .collect();
    switchboard_testkit::wav(8000, 16, &samples)
}

/// The RTP header fields the test checks: (SSRC, sequence, timestamp).
fn header(packet: &[u8]) -> (u32, u16, u32) {
    assert!(packet.len() >= 12, "RTP packet of {} bytes", packet.len());
    (
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
    )
}

/// Forwarded (kernel) → played (userspace) → forwarded again (kernel, with
/// the relay's offsets): the callee receives one SSRC and consecutive
/// sequence numbers throughout, and the kernel forwards after the playback.
fn playback_returns_to_the_kernel(tag: &str, fast_path: &str, mode: Mode) {
    let bed = one_interface(Family::V4, tag);
    let audio = tempfile::tempdir().expect("audio directory");
    // 200 ms: ten 20 ms packets.
    std::fs::write(audio.path().join("short.wav"), wav_8k(200)).expect("write short.wav");
    let audio_path = audio.path().to_str().expect("UTF-8 path").to_owned();
    let (manager, grpc) = Manager::start(&bed.relay, fast_path, &["--audio-path", &audio_path]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let relay_ns = bed.relay.to_string();

    let (heard, kernel_packets) = spawn_in_ns(&relay_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut client = RtpManagerClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let (leg_a_addr, leg_b_addr) = bridged_call(&mut client).await;
            let mut heard = Vec::new();
            caller.send(leg_a_addr, vec![0]);
            heard.extend(callee.receive(1));
            callee.send(leg_b_addr, vec![0]);
            assert_eq!(caller.receive(1).len(), 1, "{mode}: latched both ways");
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "{mode}: caller → callee in the kernel"
            );

            // Forwarded by the kernel.
            caller.send(leg_a_addr, (1..=20).collect());
            heard.extend(callee.receive(20));

            // Played by userspace into the callee's leg.
            let mut play = client
                .play(v1::PlayRequest {
                    call_id: "call-1".into(),
                    leg_id: "b".into(),
                    files: vec!["short.wav".into()],
                    repeat: 0,
                    loop_forever: false,
                })
                .await
                .expect("Play")
                .into_inner();
            assert!(
                !offloaded(&mut client)
                    .await
                    .contains(&("a".to_owned(), true)),
                "{mode}: the playback took caller → callee out of the kernel"
            );
            let mut completed = false;
            while let Some(event) = tokio::time::timeout(Duration::from_secs(5), play.message())
                .await
                .expect("a Play event within 5 s")
                .expect("Play stream ok")
            {
                completed |= matches!(event.event, Some(v1::play_event::Event::Completed(_)));
            }
            assert!(completed, "{mode}: the playback completed");
            heard.extend(callee.receive(10));

            // The caller went on numbering its stream meanwhile: the relay
            // fixes the offsets on its next packet, then the kernel takes
            // over with them.
            caller.send(leg_a_addr, vec![100]);
            heard.extend(callee.receive(1));
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "{mode}: caller → callee back in the kernel after the playback"
            );
            caller.send(leg_a_addr, (101..=120).collect());
            heard.extend(callee.receive(20));
            assert_eq!(
                callee.new_csum_errors(),
                0,
                "{mode}: no UDP checksum errors"
            );
            let stats = client
                .get_stats(v1::GetStatsRequest {
                    call_id: "call-1".into(),
                    leg_id: "a".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
                .legs;
            (heard, stats.first().map(|l| l.kernel_packets))
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    let headers: Vec<(u32, u16, u32)> = heard.iter().map(|(_, p)| header(p)).collect();
    assert_eq!(
        headers.len(),
        1 + 20 + 10 + 1 + 20,
        "{mode}: latch, 20 forwarded, 10 played, the anchor, 20 forwarded: {headers:?}"
    );
    let seqs: Vec<u16> = headers.iter().map(|h| h.1).collect();
    assert_eq!(
        seqs,
        (0..=51).collect::<Vec<u16>>(),
        "{mode}: consecutive sequence numbers across forwarded → played → forwarded"
    );
    assert!(
        headers.iter().all(|h| h.0 == PEER_SSRC),
        "{mode}: one SSRC throughout: {headers:?}"
    );
    assert!(
        headers.windows(2).all(|w| w[1].2 > w[0].2),
        "{mode}: timestamps move forward: {headers:?}"
    );
    assert_eq!(
        kernel_packets,
        Some(40),
        "{mode}: the kernel carried 20 packets before and 20 after the playback"
    );
    let verdict = if mode == Mode::Tc {
        "redirected"
    } else {
        "forwarded"
    };
    let media: Vec<(String, u64)> = manager
        .stop()
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "not_ip" | "not_udp"))
        .collect();
    assert_eq!(
        media,
        vec![("no_entry".to_owned(), 3), (verdict.to_owned(), 40)],
        "{mode}: the latches and the anchoring packet went to userspace, the rest \
         was forwarded by the program, after the playback too"
    );
}

#[test]
fn playback_into_an_offloaded_call_returns_to_xdp_with_a_continuous_stream() {
    require_kernel_path!();
    playback_returns_to_the_kernel("p", "xdp-generic", Mode::XdpGeneric);
}

#[test]
fn playback_into_an_offloaded_call_returns_to_tc_with_a_continuous_stream() {
    require_kernel_path!();
    playback_returns_to_the_kernel("q", "tc", Mode::Tc);
}

/// A bpffs mounted on a temporary directory, unmounted (releasing what is
/// pinned in it) on drop. `ip netns exec` mounts a fresh bpffs on
/// /sys/fs/bpf for each command, so pins there would not outlive a manager.
struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    fn mount() -> BpfFs {
        let dir = tempfile::tempdir().expect("mount point");
        let path = dir.path().to_str().expect("UTF-8 path").to_owned();
        sh(&["mount", "-t", "bpf", "bpf", &path]);
        BpfFs { dir }
    }

    fn pin_dir(&self) -> String {
        format!("{}/switchboard", self.dir.path().display())
    }

    fn pinned(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pin_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs `f` with a gRPC client of the manager at `grpc`, on a thread in the
/// relay namespace.
fn with_client<T: Send + 'static>(
    relay_ns: &str,
    grpc: String,
    f: impl FnOnce(RtpManagerClient<Channel>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> T {
    spawn_in_ns(relay_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let client = RtpManagerClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            f(client).await
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Pins on a test bpffs and a test state directory.
struct Restartable {
    bpffs: BpfFs,
    state: tempfile::TempDir,
}

impl Restartable {
    fn new() -> Restartable {
        Restartable {
            bpffs: BpfFs::mount(),
            state: tempfile::tempdir().expect("state directory"),
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--bpf-pin-path".to_owned(),
            self.bpffs.pin_dir(),
            "--state-dir".to_owned(),
            self.state.path().display().to_string(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    fn state_file(&self) -> std::path::PathBuf {
        self.state.path().join("sessions.json")
    }

    fn journal_file(&self) -> std::path::PathBuf {
        self.state.path().join("sessions.journal")
    }

    /// The saved calls as text: the snapshot, then the journal of the
    /// changes since.
    fn saved_text(&self) -> String {
        let snapshot = std::fs::read_to_string(self.state_file()).expect("the state file exists");
        let journal = std::fs::read_to_string(self.journal_file()).unwrap_or_default();
        snapshot + &journal
    }
}

fn start(bed: &Bed, fast_path: &str, args: &[String]) -> (Manager, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Manager::start(&bed.relay, fast_path, &args)
}

/// A bridged call in the kernel, 20 packets forwarded, then the manager
/// SIGKILLed and 20 more packets forwarded with no manager running.
fn call_then_kill(
    bed: &Bed,
    saved: &Restartable,
    fast_path: &str,
    mode: Mode,
) -> (Peer, Peer, SocketAddr, SocketAddr) {
    let (manager, grpc) = start(bed, fast_path, &saved.args(&[]));
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call(&mut client).await })
    });
    caller.send(leg_a_addr, vec![0]);
    assert_eq!(callee.receive(1).len(), 1, "{mode}: caller latched");
    callee.send(leg_b_addr, vec![0]);
    assert_eq!(caller.receive(1).len(), 1, "{mode}: callee latched");
    let in_kernel = with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move { wait_offloaded(&mut client, "a", true).await })
    });
    assert!(in_kernel, "{mode}: caller → callee in the kernel");
    caller.send(leg_a_addr, (1..=20).collect());
    assert_eq!(
        callee.receive(20).len(),
        20,
        "{mode}: forwarded while running"
    );
    assert_eq!(
        saved.bpffs.pinned(),
        vec![
            "SB_CONFIG".to_owned(),
            "SB_COUNTERS".to_owned(),
            "SB_FORWARD".to_owned(),
            "SB_STREAM_STATS".to_owned(),
            format!("link-{mode}")
        ],
        "{mode}: maps and link pinned"
    );
    let state = saved.saved_text();
    assert!(
        state.contains("\"call_id\":\"call-1\"") && state.contains(&addr(CALLER).to_string()),
        "{mode}: the call and the caller's latched address are saved: {state}"
    );

    manager.kill();
    // Nobody listens on the relay's ports now: whatever arrives was
    // forwarded by the program through the pinned link and maps.
    caller.send(leg_a_addr, (21..=40).collect());
    let during = callee.receive(20);
    assert_eq!(
        during.len(),
        20,
        "{mode}: every packet sent while no manager runs arrived"
    );
    for ((source, payload), seq) in during.iter().zip(21u16..) {
        assert_eq!(
            *source, leg_b_addr,
            "{mode}: from the relay's port of leg b"
        );
        assert_eq!(*payload, rtp(seq), "{mode}: seq {seq} intact, in order");
    }
    assert_eq!(callee.new_csum_errors(), 0, "{mode}: valid checksums");
    (caller, callee, leg_a_addr, leg_b_addr)
}

fn killed_manager_is_readopted(tag: &str, fast_path: &str, mode: Mode) {
    let bed = one_interface(Family::V4, tag);
    let _peer_pass = xdp_peer_pass(&bed, mode);
    let saved = Restartable::new();
    let (caller, callee, leg_a_addr, _) = call_then_kill(&bed, &saved, fast_path, mode);

    // The next manager takes the call back and keeps its entries.
    let (manager, grpc) = start(&bed, fast_path, &saved.args(&[]));
    let states = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move {
            wait_offloaded(&mut client, "a", true).await;
            offloaded(&mut client).await
        })
    });
    assert_eq!(
        states,
        vec![("a".to_owned(), true), ("b".to_owned(), true)],
        "{mode}: the restarted manager lists the call, in the kernel"
    );
    caller.send(leg_a_addr, (41..=50).collect());
    assert_eq!(
        callee.receive(10).len(),
        10,
        "{mode}: forwarded after the restart"
    );
    with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move {
            client
                .delete(v1::DeleteRequest {
                    call_id: "call-1".into(),
                    leg_id: String::new(),
                    ..Default::default()
                })
                .await
                .expect("Delete");
        })
    });
    caller.send(leg_a_addr, vec![51]);
    assert_eq!(
        callee.receive(0).len(),
        0,
        "{mode}: Delete removed the re-adopted call's entries"
    );
    let verdict = if mode == Mode::Tc {
        "redirected"
    } else {
        "forwarded"
    };
    let media: Vec<(String, u64)> = manager
        .stop()
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "not_ip" | "not_udp"))
        .collect();
    assert_eq!(
        media,
        vec![("no_entry".to_owned(), 3), (verdict.to_owned(), 50)],
        "{mode}: pinned counters over both runs: the latches and packet 51 found no entry, \
         1..=50 were forwarded by the program"
    );
    assert_eq!(
        saved.bpffs.pinned(),
        Vec::<String>::new(),
        "{mode}: a clean exit unpins maps and link (the program is detached)"
    );
    assert!(
        !saved.state_file().exists() && !saved.journal_file().exists(),
        "{mode}: a clean exit forgets the calls"
    );

    // Upgrade mode keeps everything pinned at a clean exit.
    let (manager, _) = start(&bed, fast_path, &saved.args(&["--keep-on-exit"]));
    manager.stop();
    assert_eq!(
        saved.bpffs.pinned().len(),
        5,
        "{mode}: --keep-on-exit keeps the maps and the link: {:?}",
        saved.bpffs.pinned()
    );
}

#[test]
fn xdp_forwarding_outlives_a_killed_manager_which_readopts_the_call() {
    require_kernel_path!();
    killed_manager_is_readopted("k", "xdp-generic", Mode::XdpGeneric);
}

#[test]
fn xdp_native_forwarding_outlives_a_killed_manager_which_readopts_the_call() {
    require_kernel_path!();
    killed_manager_is_readopted("m", "xdp", Mode::XdpNative);
}

#[test]
fn tc_forwarding_outlives_a_killed_manager_which_readopts_the_call() {
    require_kernel_path!();
    killed_manager_is_readopted("l", "tc", Mode::Tc);
}

#[test]
fn entries_of_a_call_deleted_from_the_state_are_removed_at_start() {
    require_kernel_path!();
    let mode = Mode::XdpGeneric;
    let bed = one_interface(Family::V4, "x");
    let saved = Restartable::new();
    let (caller, callee, leg_a_addr, _) = call_then_kill(&bed, &saved, "xdp-generic", mode);
    std::fs::write(saved.state_file(), r#"{"version": 1, "calls": []}"#)
        .expect("rewrite the state file");
    std::fs::remove_file(saved.journal_file()).expect("remove the journal");
    let (manager, grpc) = start(&bed, "xdp-generic", &saved.args(&[]));
    let calls = with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move { offloaded(&mut client).await })
    });
    assert_eq!(calls, vec![], "the call is not in the state any more");
    caller.send(leg_a_addr, vec![41]);
    assert_eq!(
        callee.receive(0).len(),
        0,
        "its entries were removed at start"
    );
    let counters = manager.stop();
    assert!(
        counters.contains(&("no_entry".to_owned(), 3)),
        "packet 41 found no entry: {counters:?}"
    );
}

#[test]
fn strict_source_drops_in_the_kernel_count_in_the_leg_stats() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "s");
    let (manager, grpc) = Manager::start(&bed.relay, "xdp-generic", &[]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let strict = Some(v1::LegOptions {
        strict_source: true,
        ..Default::default()
    });
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call_with(&mut client, strict).await })
    });
    caller.send(leg_a_addr, vec![0]);
    assert_eq!(callee.receive(1).len(), 1, "caller latched");
    callee.send(leg_b_addr, vec![0]);
    assert_eq!(caller.receive(1).len(), 1, "callee latched");
    // The callee is a stranger to leg a, whose peer is latched: the strict
    // entry drops what it sends there.
    let drops = with_client(&bed.relay, grpc, move |mut client| {
        Box::pin(async move {
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "caller → callee in the kernel"
            );
            callee.send(leg_a_addr, vec![1, 2, 3]);
            assert_eq!(callee.receive(0).len(), 0, "nothing comes back");
            assert_eq!(caller.receive(0).len(), 0, "nothing reaches the caller");
            let stats = client
                .get_stats(v1::GetStatsRequest {
                    call_id: "call-1".into(),
                    leg_id: "a".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
                .legs;
            stats.first().map(|l| l.source_mismatch_drops)
        })
    });
    assert_eq!(
        drops,
        Some(3),
        "the kernel's strict-source drops are the leg's source_mismatch_drops"
    );
    let counters = manager.stop();
    assert!(
        counters.contains(&("source_mismatch_drop".to_owned(), 3)),
        "dropped by the program: {counters:?}"
    );
}

/// The issue's attack on the kernel path: with the call offloaded both
/// ways, a stranger's packets to the callee-side port are dropped and
/// counted by the program; they neither redirect the caller's media nor
/// take the direction out of the kernel. The default learning window does
/// not delay peers that send from their SDP address.
#[test]
fn a_strangers_packets_to_an_offloaded_strict_call_change_nothing_and_are_counted() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "j");
    let (manager, grpc) = Manager::start(&bed.relay, "xdp-generic", &[]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let stranger = Peer::start(&bed.caller, addr("10.205.0.2:41500"));
    let strict = Some(v1::LegOptions {
        strict_source: true,
        ..Default::default()
    });
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call_with(&mut client, strict).await })
    });
    caller.send(leg_a_addr, vec![0]);
    assert_eq!(callee.receive(1).len(), 1, "caller locked");
    callee.send(leg_b_addr, vec![0]);
    assert_eq!(caller.receive(1).len(), 1, "callee locked");
    let (delivered, to_stranger, stats) = with_client(&bed.relay, grpc, move |mut client| {
        Box::pin(async move {
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "a in the kernel"
            );
            assert!(
                wait_offloaded(&mut client, "b", true).await,
                "b in the kernel"
            );
            stranger.send(leg_b_addr, vec![100, 101, 102]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            caller.send(leg_a_addr, (1..=10).collect());
            let delivered = callee.receive(10);
            let to_stranger = stranger.receive(0).len();
            assert!(
                wait_offloaded(&mut client, "b", true).await,
                "b stays in the kernel"
            );
            let stats = client
                .get_stats(v1::GetStatsRequest {
                    call_id: "call-1".into(),
                    leg_id: "b".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
                .legs;
            (delivered, to_stranger, stats)
        })
    });
    assert_eq!(
        delivered.len(),
        10,
        "every caller packet still reaches the callee"
    );
    assert!(
        delivered.iter().all(|(from, _)| *from == leg_b_addr),
        "from the callee's leg"
    );
    assert_eq!(to_stranger, 0, "nothing reaches the stranger");
    assert_eq!(
        stats.first().map(|l| l.source_mismatch_drops),
        Some(3),
        "the stranger's packets are counted on the callee's leg"
    );
    let counters = manager.stop();
    assert!(
        counters.contains(&("source_mismatch_drop".to_owned(), 3)),
        "dropped by the program: {counters:?}"
    );
}

/// A callee behind a port-rewriting NAT (its packets come from another port
/// than its SDP's) is learned by the relay during the window, its media
/// follows the learned source at once (the caller's direction in the kernel
/// too), and its own direction goes into the kernel only once the source is
/// locked: the kernel never expects a source that learning may still
/// replace.
#[test]
fn a_nat_source_goes_into_the_kernel_only_once_learning_locked_it() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "n");
    let (manager, grpc) =
        Manager::start(&bed.relay, "xdp-generic", &["--source-learning-ms", "1500"]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee_nat = Peer::start(&bed.callee, addr("10.205.0.3:40500"));
    let strict = Some(v1::LegOptions {
        strict_source: true,
        ..Default::default()
    });
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call_with(&mut client, strict).await })
    });
    caller.send(leg_a_addr, vec![0]);
    let (learning, locked, relayed) = with_client(&bed.relay, grpc, move |mut client| {
        Box::pin(async move {
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "the caller sends from its SDP address: locked at once"
            );
            callee_nat.send(leg_b_addr, vec![1]);
            assert_eq!(caller.receive(1).len(), 1, "the candidate's media flows");
            caller.send(leg_a_addr, vec![2]);
            let relayed = callee_nat.receive(1).len();
            let learning = offloaded(&mut client)
                .await
                .contains(&("b".to_owned(), true));
            // The window ends 1.5 s after the callee's first packet.
            let locked = wait_offloaded(&mut client, "b", true).await;
            (learning, locked, relayed)
        })
    });
    assert_eq!(
        relayed, 1,
        "the caller's media goes to the learned NAT source"
    );
    assert!(!learning, "b stays in userspace while it learns");
    assert!(locked, "b goes into the kernel once locked");
    manager.stop();
}

/// An RFC 4733 telephone-event packet (payload type 101) of digit 5, in the
/// peer's stream: every packet of the event carries its start timestamp.
fn telephone_event(seq: u16, marker: bool, end: bool, duration: u16) -> Vec<u8> {
    let mut p = vec![0x80, if marker { 0x80 | 101 } else { 101 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(6u32 * 160).to_be_bytes());
    p.extend_from_slice(&PEER_SSRC.to_be_bytes());
    p.extend_from_slice(&[5, if end { 0x80 | 10 } else { 10 }]);
    p.extend_from_slice(&duration.to_be_bytes());
    p
}

#[test]
fn telephone_events_of_an_offloaded_call_reach_the_dtmf_detector() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "d");
    let (manager, grpc) = Manager::start(&bed.relay, "xdp-generic", &[]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let (heard, dtmf, stats) = with_client(&bed.relay, grpc, move |mut client| {
        Box::pin(async move {
            let (leg_a_addr, leg_b_addr) = bridged_call(&mut client).await;
            caller.send(leg_a_addr, vec![0]);
            let mut heard = callee.receive(1);
            callee.send(leg_b_addr, vec![0]);
            assert_eq!(caller.receive(1).len(), 1, "callee latched");
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "caller → callee in the kernel"
            );
            let mut watch = client
                .watch(v1::WatchRequest {
                    stats_interval_secs: 0,
                })
                .await
                .expect("Watch")
                .into_inner();
            // Voice 1..=5, digit 5 as 6..=11 (three updates, three ends),
            // voice 12..=15.
            let mut packets: Vec<Vec<u8>> = (1..=5).map(rtp).collect();
            for (seq, end, duration) in [
                (6u16, false, 160u16),
                (7, false, 320),
                (8, false, 480),
                (9, true, 480),
                (10, true, 480),
                (11, true, 480),
            ] {
                packets.push(telephone_event(seq, seq == 6, end, duration));
            }
            packets.extend((12..=15).map(rtp));
            // Paced as a phone sends (20 ms): a passed-up packet takes the
            // slower userspace path, and a burst would let the next voice
            // packets overtake it.
            for packet in packets {
                caller.send_packets(leg_a_addr, vec![packet]);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            heard.extend(callee.receive(15));
            let dtmf = loop {
                let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
                    .await
                    .expect("a manager event within 5 s")
                    .expect("Watch stream ok")
                    .expect("Watch stream open");
                if let Some(v1::manager_event::Event::Dtmf(d)) = event.event {
                    break (d.leg_id, d.digit, d.duration_ms);
                }
            };
            let stats = client
                .get_stats(v1::GetStatsRequest {
                    call_id: "call-1".into(),
                    leg_id: "a".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
                .legs;
            let a = stats.first().expect("leg a");
            (
                heard,
                dtmf,
                (a.rtp_in.map(|c| c.packets), a.kernel_packets, a.rtp_lost),
            )
        })
    });
    assert_eq!(
        dtmf,
        ("a".to_owned(), "5".to_owned(), 60),
        "the relay's detector saw the digit the kernel passed up"
    );
    let seqs: Vec<u16> = heard
        .iter()
        .map(|(_, p)| u16::from_be_bytes([p[2], p[3]]))
        .collect();
    assert_eq!(
        seqs,
        (0..=15).collect::<Vec<u16>>(),
        "the callee got voice and DTMF, in order"
    );
    assert_eq!(
        stats,
        (Some(16), 9, 0),
        "16 received (9 by the kernel), nothing counted lost"
    );
    let media: Vec<(String, u64)> = manager
        .stop()
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "not_ip" | "not_udp"))
        .collect();
    assert_eq!(
        media,
        vec![
            ("no_entry".to_owned(), 2),
            ("forwarded".to_owned(), 9),
            ("passed_payload_type".to_owned(), 6)
        ],
        "voice forwarded by the program, telephone-events passed up"
    );
}

/// Plays `file` into leg b and waits until the playback completed.
async fn play_to_b(client: &mut RtpManagerClient<Channel>, file: &str) {
    let mut play = client
        .play(v1::PlayRequest {
            call_id: "call-1".into(),
            leg_id: "b".into(),
            files: vec![file.into()],
            repeat: 0,
            loop_forever: false,
        })
        .await
        .expect("Play")
        .into_inner();
    let mut completed = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), play.message())
        .await
        .expect("a Play event within 5 s")
        .expect("Play stream ok")
    {
        completed |= matches!(event.event, Some(v1::play_event::Event::Completed(_)));
    }
    assert!(completed, "the playback completed");
}

#[test]
fn a_continuity_rewrite_in_the_kernel_survives_a_killed_manager() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "w");
    let saved = Restartable::new();
    let audio = tempfile::tempdir().expect("audio directory");
    std::fs::write(audio.path().join("short.wav"), wav_8k(200)).expect("write short.wav");
    let audio_path = audio.path().display().to_string();
    let args = saved.args(&["--audio-path", &audio_path]);
    let (manager, grpc) = start(&bed, "xdp-generic", &args);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call(&mut client).await })
    });
    caller.send(leg_a_addr, vec![0]);
    let mut heard = callee.receive(1);
    callee.send(leg_b_addr, vec![0]);
    assert_eq!(caller.receive(1).len(), 1, "callee latched");
    let in_kernel = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { wait_offloaded(&mut client, "a", true).await })
    });
    assert!(in_kernel, "caller → callee in the kernel");
    caller.send(leg_a_addr, (1..=20).collect());
    heard.extend(callee.receive(20));
    with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { play_to_b(&mut client, "short.wav").await })
    });
    heard.extend(callee.receive(10));
    // The anchoring packet, then the kernel with the offsets.
    caller.send(leg_a_addr, vec![100]);
    heard.extend(callee.receive(1));
    let back = with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move { wait_offloaded(&mut client, "a", true).await })
    });
    assert!(back, "back in the kernel after the playback");
    caller.send(leg_a_addr, (101..=110).collect());
    heard.extend(callee.receive(10));
    let state = saved.saved_text();
    assert!(
        state.contains("\"rewrite\":{"),
        "the anchored rewrite is saved: {state}"
    );

    manager.kill();
    caller.send(leg_a_addr, (111..=120).collect());
    heard.extend(callee.receive(10));

    let (manager, grpc) = start(&bed, "xdp-generic", &args);
    let readopted = with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move { wait_offloaded(&mut client, "a", true).await })
    });
    assert!(readopted, "re-adopted in the kernel");
    caller.send(leg_a_addr, (121..=130).collect());
    heard.extend(callee.receive(10));

    let headers: Vec<(u32, u16, u32)> = heard.iter().map(|(_, p)| header(p)).collect();
    let seqs: Vec<u16> = headers.iter().map(|h| h.1).collect();
    assert_eq!(
        seqs,
        (0..=61).collect::<Vec<u16>>(),
        "consecutive sequence numbers: forwarded, played, forwarded with offsets, \
         with no manager, and after the restart"
    );
    assert!(
        headers.iter().all(|h| h.0 == PEER_SSRC),
        "one SSRC throughout: {headers:?}"
    );
    let media: Vec<(String, u64)> = manager
        .stop()
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "not_ip" | "not_udp"))
        .collect();
    assert_eq!(
        media,
        vec![("no_entry".to_owned(), 3), ("forwarded".to_owned(), 50)],
        "the latches and the anchor in userspace, 50 packets forwarded by the program over both runs"
    );
}

#[test]
fn a_pin_directory_serves_one_manager_at_a_time_and_must_be_on_bpffs() {
    require_kernel_path!();
    let bpffs = BpfFs::mount();
    let dir = std::path::PathBuf::from(bpffs.pin_dir());
    let first = Pins::prepare(&dir).expect("the first manager pins");
    let second = Pins::prepare(&dir).expect_err("a second manager is refused");
    assert!(
        matches!(&second, PinError::InUse(d) if *d == dir),
        "in use: {second}"
    );
    drop(first);
    Pins::prepare(&dir).expect("free again once the first is gone");
    let plain = tempfile::tempdir().expect("a directory on tmpfs or disk");
    let refused = Pins::prepare(&plain.path().join("switchboard")).expect_err("not bpffs");
    assert!(
        matches!(refused, PinError::NotBpffs(_)),
        "not bpffs: {refused}"
    );
    assert!(
        refused.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "the error says how to fix it: {refused}"
    );
}

/// The experiment behind pinning: without a bpffs (inside `ip netns exec`
/// /sys/fs/bpf is plain sysfs) the link is the process's alone, and a
/// SIGKILL detaches the program with it.
#[test]
fn an_unpinned_fast_path_ends_with_a_killed_manager() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "u");
    let (manager, grpc) = Manager::start(&bed.relay, "xdp-generic", &[]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let (leg_a_addr, leg_b_addr) = with_client(&bed.relay, grpc.clone(), |mut client| {
        Box::pin(async move { bridged_call(&mut client).await })
    });
    caller.send(leg_a_addr, vec![0]);
    assert_eq!(callee.receive(1).len(), 1, "caller latched");
    callee.send(leg_b_addr, vec![0]);
    assert_eq!(caller.receive(1).len(), 1, "callee latched");
    let in_kernel = with_client(&bed.relay, grpc, |mut client| {
        Box::pin(async move { wait_offloaded(&mut client, "a", true).await })
    });
    assert!(in_kernel, "caller → callee in the kernel");
    caller.send(leg_a_addr, (1..=5).collect());
    assert_eq!(callee.receive(5).len(), 5, "forwarded while running");
    let unpinned = manager.logged("kernel fast path not pinned");
    assert!(unpinned, "the manager said it runs unpinned");
    manager.kill();
    caller.send(leg_a_addr, (6..=10).collect());
    assert_eq!(
        callee.receive(0).len(),
        0,
        "nothing is forwarded once the process that held the link is gone"
    );
}

/// A compound RTCP packet (RR then SDES) of the peer's SSRC, as an
/// rtcp-mux peer sends it on its RTP port.
fn muxed_receiver_report(n: u8) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&PEER_SSRC.to_be_bytes());
    // One report block: SSRC, fraction/cumulative lost, highest seq,
    // jitter, LSR, DLSR.
    p.extend_from_slice(&0x5151_5151u32.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, n]);
    p.extend_from_slice(&[0u8; 16]);
    p.extend_from_slice(&[0x81, 202, 0, 2]);
    p.extend_from_slice(&PEER_SSRC.to_be_bytes());
    p.extend_from_slice(&[1, 1, b'p', 0]);
    p
}

#[test]
fn an_rtcp_mux_call_is_offloaded_and_its_rtcp_relayed_by_userspace() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "x");
    let (manager, grpc) = Manager::start(&bed.relay, "xdp-generic", &[]);
    let caller = Peer::start(&bed.caller, addr(CALLER));
    let callee = Peer::start(&bed.callee, addr(CALLEE));
    let mux = |a: SocketAddr| sdp(a).replace("a=sendrecv\r\n", "a=rtcp-mux\r\na=sendrecv\r\n");
    let (stats, rtcp_heard, voice_heard) = with_client(&bed.relay, grpc, move |mut client| {
        Box::pin(async move {
            let (offer, answer) =
                bridged_call_of(&mut client, mux(addr(CALLER)), mux(addr(CALLEE)), None).await;
            assert!(offer.contains("a=rtcp-mux\r\n"), "{offer}");
            assert!(answer.contains("a=rtcp-mux\r\n"), "{answer}");
            let (leg_a_addr, leg_b_addr) = (media_addr(&answer), media_addr(&offer));
            caller.send(leg_a_addr, vec![0]);
            assert_eq!(callee.receive(1).len(), 1, "caller latched");
            callee.send(leg_b_addr, vec![0]);
            assert_eq!(caller.receive(1).len(), 1, "callee latched");
            assert!(
                wait_offloaded(&mut client, "a", true).await,
                "caller → callee in the kernel despite rtcp-mux"
            );
            // Voice, then RTCP on the same port, then voice again.
            caller.send(leg_a_addr, (1..=10).collect());
            let mut voice = callee.receive(10);
            let reports: Vec<Vec<u8>> = (1..=3).map(muxed_receiver_report).collect();
            caller.send_packets(leg_a_addr, reports.clone());
            let rtcp = callee.receive(3);
            caller.send(leg_a_addr, (11..=20).collect());
            voice.extend(callee.receive(10));
            let stats = client
                .get_stats(v1::GetStatsRequest {
                    call_id: "call-1".into(),
                    leg_id: "a".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
                .legs;
            let heard_rtcp: Vec<(SocketAddr, Vec<u8>)> = rtcp;
            assert_eq!(
                heard_rtcp
                    .iter()
                    .map(|(from, p)| (*from, p.clone()))
                    .collect::<Vec<_>>(),
                reports
                    .into_iter()
                    .map(|p| (leg_b_addr, p))
                    .collect::<Vec<_>>(),
                "the three reports reach the callee's (muxed) RTP port, from the relay's leg b port, unchanged"
            );
            (stats, heard_rtcp.len(), voice)
        })
    });
    assert_eq!(rtcp_heard, 3);
    assert_eq!(voice_heard.len(), 20, "all voice arrived");
    assert!(
        voice_heard
            .iter()
            .zip(1..=20u16)
            .all(|((_, p), seq)| p == &rtp(seq)),
        "voice intact and in order"
    );
    let a = stats.first().expect("leg a");
    assert_eq!(
        a.kernel_packets, 20,
        "the kernel carried the voice after the latch"
    );
    assert_eq!(
        a.rtcp_in.as_ref().map(|c| c.packets),
        Some(3),
        "the relay saw the three reports"
    );
    assert_eq!(
        a.rtp_in.as_ref().map(|c| c.packets),
        Some(21),
        "voice counted once, whichever path, reports not counted as RTP"
    );
    let counters = manager.stop();
    assert!(
        counters.contains(&("muxed_rtcp".to_owned(), 3)),
        "passed up by the program as muxed RTCP: {counters:?}"
    );
}
