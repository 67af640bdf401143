//! A phone people use against the running system: Debian's baresip 1.0
//! registers with signaling's default authentication options, calls another
//! baresip through the B2BUA and an RTP manager, and each hears the other.
//!
//! Each phone sends its own tone from a WAV file (alice 1000 Hz, bob 600
//! Hz) and baresip's `sndfile` module records what it decoded from the
//! network; the test finds the other side's tone in each recording. baresip
//! 1.0 refuses a 401/407 carrying a challenge with an algorithm it does not
//! know (it gives up on the whole response), which is why signaling sends
//! one MD5 challenge by default: the second test pins that trade-off down.
//!
//! linphone's console (linphonec) takes part too: it registers and calls
//! a baresip, both sides' audio checked the same way.
//!
//! Without baresip (or linphonec) the tests are skipped with a message (a
//! failure under CI, where `cargo xtask setup` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::manager::{start_manager, Manager};
use common::{peer_tool, users_file, Server};

const REALM: &str = "interop.test";
const RATE: u32 = 8000;

/// A baresip user agent with its own configuration directory.
struct Phone {
    name: &'static str,
    dir: PathBuf,
    child: Option<Child>,
}

impl Phone {
    /// Writes `name`'s configuration: registering `user` at `server` over
    /// UDP, sending a `tone_hz` tone, recording what it hears, answering
    /// calls at once.
    fn configure(
        data: &Path,
        name: &'static str,
        user: &str,
        server: std::net::SocketAddr,
        tone_hz: f64,
    ) -> Phone {
        Phone::configure_over(data, name, user, server, "udp", None, tone_hz)
    }

    /// [`Phone::configure`] over `transport`; `ca` is the CA file it
    /// checks a TLS server's certificate against.
    fn configure_over(
        data: &Path,
        name: &'static str,
        user: &str,
        server: std::net::SocketAddr,
        transport: &str,
        ca: Option<&Path>,
        tone_hz: f64,
    ) -> Phone {
        let dir = data.join(name);
        std::fs::create_dir_all(dir.join("heard")).expect("phone dir");
        let tone = dir.join("tone.wav");
        std::fs::write(&tone, tone_wav(tone_hz, 30)).expect("write the tone");
        // baresip binds its SIP port for UDP and TCP and the next one for
        // TLS: a free even/odd pair from the media range search fits.
        let (port, _) = switchboard_testkit::free_media_range(1);
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{port}\n\
             call_local_timeout 60\n\
             audio_source aufile,{tone}\n\
             audio_player aubridge,{name}\n\
             audio_alert aubridge,{name}\n\
             ausrc_srate {RATE}\nausrc_channels 1\n\
             auplay_srate {RATE}\nauplay_channels 1\n\
             rtp_timeout 0\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n\
             module_app account.so\nmodule_app menu.so\n\
             snd_path {heard}\n{ca}",
            tone = tone.display(),
            heard = dir.join("heard").display(),
            ca = ca.map_or_else(String::new, |ca| format!("sip_cafile {}\n", ca.display())),
        );
        std::fs::write(dir.join("config"), config).expect("write config");
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{user}@{server};transport={transport}>;auth_pass=pw{user};regint=600;\
                 answermode=auto;audio_codecs=PCMU\n"
            ),
        )
        .expect("write accounts");
        Phone {
            name,
            dir,
            child: None,
        }
    }

    /// A trunk: registers nowhere, answers calls to 9002 at once, and serves
    /// TLS on the port after its SIP port with `cert` and `key` (one PEM
    /// file, as baresip reads them). Returns the phone and its TLS address.
    fn trunk(
        data: &Path,
        name: &'static str,
        cert: &Path,
        key: &Path,
        tone_hz: f64,
    ) -> (Phone, std::net::SocketAddr) {
        let unused: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
        let phone = Phone::configure_over(data, name, "trunk", unused, "udp", None, tone_hz);
        let pem = phone.dir.join("sip.pem");
        let mut both = std::fs::read(cert).expect("read the certificate");
        both.extend(std::fs::read(key).expect("read the key"));
        std::fs::write(&pem, both).expect("write the PEM");
        let config = std::fs::read_to_string(phone.dir.join("config")).expect("config");
        let sip_port: u16 = config
            .lines()
            .find_map(|l| l.strip_prefix("sip_listen 127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("the SIP port");
        std::fs::write(
            phone.dir.join("config"),
            format!("{config}sip_certificate {}\n", pem.display()),
        )
        .expect("write config");
        std::fs::write(
            phone.dir.join("accounts"),
            // baresip answers only requests for its account's user.
            "<sip:9002@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU\n",
        )
        .expect("write accounts");
        let tls = std::net::SocketAddr::new([127, 0, 0, 1].into(), sip_port + 1);
        (phone, tls)
    }

    /// Takes commands at run time on a UDP console (baresip's `cons`
    /// module) on a free loopback port; returns the port.
    fn with_console(&self) -> u16 {
        let port = switchboard_testkit::free_port();
        let config = std::fs::read_to_string(self.dir.join("config")).expect("config");
        std::fs::write(
            self.dir.join("config"),
            format!("{config}module cons.so\ncons_listen 127.0.0.1:{port}\n"),
        )
        .expect("write config");
        port
    }

    /// Starts baresip, running `commands` once ready and quitting after
    /// `quit_after` (hanging up its call).
    fn start(&mut self, baresip: &Path, commands: &[&str], quit_after: Duration) {
        let mut command = Command::new(baresip);
        command.arg("-f").arg(&self.dir);
        for c in commands {
            command.args(["-e", c]);
        }
        command.args(["-t", &quit_after.as_secs().to_string()]);
        let log = std::fs::File::create(self.dir.join("baresip.log")).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start baresip");
        self.child = Some(child);
    }

    /// Waits until baresip has quit by itself.
    fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("started");
        while child.try_wait().expect("wait for baresip").is_none() {
            assert!(
                Instant::now() < deadline,
                "{} did not quit:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }

    /// The samples baresip decoded from the network (its `-dec.wav`).
    fn heard(&self) -> Vec<i16> {
        let file = std::fs::read_dir(self.dir.join("heard"))
            .expect("recordings")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| panic!("{} recorded nothing:\n{}", self.name, self.log()));
        wav_samples(&std::fs::read(file).expect("read the recording"))
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A mono 16-bit WAV of `seconds` of a `hz` sine at half scale.
fn tone_wav(hz: f64, seconds: u32) -> Vec<u8> {
    let samples: Vec<i16> = (0..RATE * seconds)
        .map(|i| {
            let t = f64::from(i) / f64::from(RATE);
            (16000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i16
        })
        .collect();
    switchboard_testkit::wav(RATE, 16, &samples)
}

/// The samples of a 16-bit PCM WAV's `data` chunk (the chunks before it
/// are skipped whatever they are).
fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let body = at + 8;
        if id == b"data" {
            // A recording cut short by the phone's exit may claim more.
            let end = (body + size).min(bytes.len());
            return bytes[body..end]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        at = body + size + (size & 1);
    }
    panic!("no data chunk in a {}-byte WAV", bytes.len());
}

/// The sample rate in a WAV's `fmt ` chunk.
fn wav_rate(bytes: &[u8]) -> u32 {
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        if &bytes[at..at + 4] == b"fmt " {
            return u32::from_le_bytes(bytes[at + 12..at + 16].try_into().expect("4 bytes"));
        }
        at += 8 + size + (size & 1);
    }
    panic!("no fmt chunk in a {}-byte WAV", bytes.len());
}

/// The share of a frame's energy at `hz` (Goertzel) at `rate` samples
/// per second, 0..=1.
fn tone_share(frame: &[i16], hz: f64, rate: u32) -> f64 {
    let n = frame.len() as f64;
    let coefficient = 2.0 * (2.0 * std::f64::consts::PI * hz / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut energy = 0.0;
    for &sample in frame {
        let x = f64::from(sample);
        energy += x * x;
        let s0 = x + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if energy < 1e3 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    // A pure tone of N samples has power N²A²/4 and energy NA²/2.
    (2.0 * power / (n * energy)).min(1.0)
}

/// How many 20 ms frames of `samples` (at 8 kHz) carry mostly the `hz` tone.
fn frames_with_tone(samples: &[i16], hz: f64) -> usize {
    frames_with_tone_at(samples, hz, RATE)
}

/// [`frames_with_tone`] at `rate` samples per second.
fn frames_with_tone_at(samples: &[i16], hz: f64, rate: u32) -> usize {
    samples
        .chunks_exact(rate as usize / 50)
        .filter(|frame| tone_share(frame, hz, rate) > 0.8)
        .count()
}

/// Signaling (default authentication options plus `extra`) with users 1001
/// and 1002 and extensions dialing the registered user, and a manager.
fn bed(data: &Path, extra: &[&str]) -> (Manager, Server) {
    bed_with_trunk(data, extra, None)
}

/// [`bed`] with `9XXX` dialled at a trunk over TLS at `trunk`.
fn bed_with_trunk(
    data: &Path,
    extra: &[&str],
    trunk: Option<std::net::SocketAddr>,
) -> (Manager, Server) {
    let audio = data.join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let manager = start_manager(&audio, 8, &[]);
    let users = users_file(
        data,
        &[("1001", "pw1001"), ("1002", "pw1002"), ("1003", "pw1003")],
    );
    let plan = data.join("dialplan.json");
    let trunk_route = trunk.map_or_else(String::new, |trunk| {
        format!(
            r#"{{"id": "trunk", "pattern": "9XXX", "priority": 10, "actions": [
              {{"type": "dial", "params": {{"targets": ["sip:${{destination}}@{trunk};transport=tls"], "timeout": 10}}}}]}},"#
        )
    });
    std::fs::write(
        &plan,
        format!(
            r#"{{"version": "1.0", "routes": [{trunk_route}
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["user/${{destination}}"], "timeout": 20}}}}]}}]}}"#
        ),
    )
    .expect("write the dialplan");
    let grpc = manager.grpc.to_string();
    let mut args = vec![
        "--realm",
        REALM,
        "--users-file",
        users.to_str().expect("UTF-8 path"),
        "--dialplan",
        plan.to_str().expect("UTF-8 path"),
        "--rtpmanager",
        &grpc,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&data.join("state"), &args);
    (manager, server)
}

/// The users registered at `server` (the user part of each
/// address-of-record: baresip registers `user@<server address>`), sorted.
fn registered(server: &Server) -> Vec<String> {
    let mut users: Vec<String> = server
        .get_json("/api/v1/registrations")
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|b| b["aor"].as_str()?.split('@').next().map(str::to_owned))
        .collect();
    users.sort();
    users
}

fn wait_for(what: &str, limit: Duration, done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let held = switchboard_testkit::wait_until(limit, Duration::from_millis(100), done);
    assert!(held, "{what}:\n{}", log());
}

#[test]
fn baresip_registers_with_the_defaults_calls_and_both_sides_hear_each_other() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let (manager, server) = bed(data.path(), &[]);
    let bob = Phone::configure(data.path(), "bob", "1002", server.sip_addr(), 600.0);
    let alice = Phone::configure(data.path(), "alice", "1001", server.sip_addr(), 1000.0);
    call_and_hear_each_other(&baresip, &manager, &server, alice, bob);
}

#[test]
fn baresip_over_tcp_registers_calls_and_both_sides_hear_each_other() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let (manager, server) = bed(data.path(), &[]);
    let sip = server.sip_addr();
    let bob = Phone::configure_over(data.path(), "bob", "1002", sip, "tcp", None, 600.0);
    let alice = Phone::configure_over(data.path(), "alice", "1001", sip, "tcp", None, 1000.0);
    let bindings = call_and_hear_each_other(&baresip, &manager, &server, alice, bob);
    let transports = transports_of(&bindings);
    assert_eq!(transports, ["tcp", "tcp"], "{bindings}");
}

#[test]
fn baresip_over_tls_registers_calls_and_both_sides_hear_each_other() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let Some(certificates) =
        switchboard_testkit::certs::make(&data.path().join("tls"), "", "SIP over TLS with baresip")
    else {
        return;
    };
    let tls_port = switchboard_testkit::free_port().to_string();
    let (manager, server) = bed(
        data.path(),
        &[
            "--tls-cert",
            certificates.cert.to_str().expect("UTF-8 path"),
            "--tls-key",
            certificates.key.to_str().expect("UTF-8 path"),
            "--tls-port",
            &tls_port,
        ],
    );
    let tls = std::net::SocketAddr::new(server.sip_addr().ip(), tls_port.parse().expect("port"));
    let ca = Some(certificates.ca.as_path());
    let bob = Phone::configure_over(data.path(), "bob", "1002", tls, "tls", ca, 600.0);
    let alice = Phone::configure_over(data.path(), "alice", "1001", tls, "tls", ca, 1000.0);
    let bindings = call_and_hear_each_other(&baresip, &manager, &server, alice, bob);
    // Both registered over TLS, as the bindings said during the call.
    let transports = transports_of(&bindings);
    assert_eq!(transports, ["tls", "tls"], "{bindings}");
}

#[test]
fn a_trunk_over_tls_is_called_only_when_its_certificate_chains_to_the_tls_ca() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let make = |prefix| {
        switchboard_testkit::certs::make(
            &data.path().join("tls"),
            prefix,
            "SIP over TLS to a trunk",
        )
    };
    let (Some(ours), Some(theirs)) = (make("ours-"), make("trunk-")) else {
        return;
    };
    let (mut trunk, trunk_tls) =
        Phone::trunk(data.path(), "trunk", &theirs.cert, &theirs.key, 600.0);
    trunk.start(&baresip, &[], Duration::from_secs(60));
    let serve_tls = |ca: &Path| {
        let mut args = vec!["--tls-ca".to_owned(), ca.display().to_string()];
        args.extend(common::tls_args(&ours, switchboard_testkit::free_port()));
        args
    };

    // Trusting the trunk's CA: the call is answered and carries audio.
    let trusting = data.path().join("trusting");
    let args = serve_tls(&theirs.ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (manager, server) = bed_with_trunk(&trusting, &args, Some(trunk_tls));
    let mut alice = Phone::configure(&trusting, "alice", "1001", server.sip_addr(), 1000.0);
    alice.start(&baresip, &["/dial 9002"], Duration::from_secs(10));
    alice.wait(Duration::from_secs(30));
    assert!(
        alice.log().contains("Call established"),
        "alice's call to the trunk:\n{}\n{}\n{}",
        alice.log(),
        trunk.log(),
        server.log()
    );
    let alice_heard_trunk = frames_with_tone(&alice.heard(), 600.0);
    assert!(
        alice_heard_trunk >= 4 * 50,
        "alice heard the trunk's tone in {alice_heard_trunk} frames"
    );
    wait_for(
        "the call did not end on the manager",
        Duration::from_secs(10),
        || manager.calls().is_empty(),
        || server.log(),
    );
    drop((server, manager));

    // Trusting only our own CA: the trunk's certificate is refused, no
    // request reaches it, and the caller's call fails.
    let wary = data.path().join("wary");
    let args = serve_tls(&ours.ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_manager, server) = bed_with_trunk(&wary, &args, Some(trunk_tls));
    let mut alice = Phone::configure(&wary, "alice", "1001", server.sip_addr(), 1000.0);
    let trunk_log_before = trunk.log().len();
    alice.start(&baresip, &["/dial 9002"], Duration::from_secs(8));
    alice.wait(Duration::from_secs(30));
    assert!(
        !alice.log().contains("Call established"),
        "a call through an untrusted trunk:\n{}",
        alice.log()
    );
    assert!(
        server.log().contains("refused the server's certificate"),
        "{}",
        server.log()
    );
    assert!(
        !trunk.log()[trunk_log_before..].contains("Incoming call"),
        "the trunk saw the call:\n{}",
        trunk.log()
    );
}

#[test]
fn baresip_transfers_its_caller_and_the_caller_then_hears_the_target() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let (manager, server) = bed(data.path(), &[]);
    let mut bob = Phone::configure(data.path(), "bob", "1002", server.sip_addr(), 600.0);
    let mut carol = Phone::configure(data.path(), "carol", "1003", server.sip_addr(), 800.0);
    let mut alice = Phone::configure(data.path(), "alice", "1001", server.sip_addr(), 1000.0);
    let console = bob.with_console();
    bob.start(&baresip, &[], Duration::from_secs(40));
    carol.start(&baresip, &[], Duration::from_secs(40));
    wait_for(
        "bob and carol never registered",
        Duration::from_secs(15),
        || registered(&server) == ["1002", "1003"],
        || format!("{}\n{}\n{}", bob.log(), carol.log(), server.log()),
    );
    alice.start(&baresip, &["/dial 1002"], Duration::from_secs(20));
    wait_for(
        "bob never answered",
        Duration::from_secs(15),
        || bob.log().contains("Call established"),
        || format!("{}\n{}", bob.log(), server.log()),
    );
    std::thread::sleep(Duration::from_secs(3));
    // Bob transfers alice to carol (baresip's /transfer sends REFER).
    let target = format!("/transfer sip:1003@{}\n", server.sip_addr());
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("console socket")
        .send_to(target.as_bytes(), ("127.0.0.1", console))
        .expect("send the command");
    wait_for(
        "carol never answered the transfer",
        Duration::from_secs(15),
        || carol.log().contains("Call established"),
        || format!("{}\n{}\n{}", bob.log(), carol.log(), server.log()),
    );
    alice.wait(Duration::from_secs(30));
    let log = server.log();
    assert!(
        log.contains("transfer: the target answered and took the transferor's place"),
        "{log}"
    );
    wait_for(
        "the call did not end everywhere",
        Duration::from_secs(10),
        || manager.calls().is_empty(),
        || server.log(),
    );
    // Alice heard bob before the transfer and carol after it.
    let heard = alice.heard();
    let seconds = |frames: usize| frames as f64 / 50.0;
    let bob_heard = seconds(frames_with_tone(&heard, 600.0));
    let carol_heard = seconds(frames_with_tone(&heard, 800.0));
    assert!(bob_heard >= 2.0, "alice heard bob for {bob_heard} s");
    assert!(carol_heard >= 3.0, "alice heard carol for {carol_heard} s");
    let carol_heard_alice = seconds(frames_with_tone(&carol.heard(), 1000.0));
    assert!(
        carol_heard_alice >= 3.0,
        "carol heard alice for {carol_heard_alice} s"
    );
}

/// The transport of each binding the API listed.
fn transports_of(bindings: &serde_json::Value) -> Vec<&str> {
    bindings
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|b| b["transport"].as_str())
        .collect()
}

/// linphone's console (linphonec), driven on its standard input: the
/// sound card replaced by WAV files (`soundcard use files`).
struct Linphone {
    dir: PathBuf,
    child: Child,
    stdin: std::process::ChildStdin,
}

impl Linphone {
    /// Starts linphonec with its SIP and RTP ports free on loopback,
    /// its home (database, logs) in `data/name`, sending a `tone_hz` tone
    /// and recording what it hears.
    fn start(binary: &Path, data: &Path, name: &str, tone_hz: f64) -> Linphone {
        let dir = data.join(name);
        // Without its database directory it never registers.
        std::fs::create_dir_all(dir.join(".local/share/linphone")).expect("linphone dir");
        let (rtp, _) = switchboard_testkit::free_media_range(1);
        let sip = switchboard_testkit::free_port();
        std::fs::write(
            dir.join("rc"),
            format!(
                "[sip]\nsip_port={sip}\nsip_tcp_port=0\n[rtp]\naudio_rtp_port={rtp}\n\
                 [sound]\necho_cancellation=0\n[video]\nenabled=0\n"
            ),
        )
        .expect("write rc");
        std::fs::write(dir.join("tone.wav"), tone_wav(tone_hz, 30)).expect("write the tone");
        let log = std::fs::File::create(dir.join("linphonec.log")).expect("log file");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("rc"))
            .env("HOME", &dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start linphonec");
        let stdin = child.stdin.take().expect("stdin");
        let mut phone = Linphone { dir, child, stdin };
        phone.command("soundcard use files");
        let tone = phone.dir.join("tone.wav");
        let heard = phone.dir.join("heard.wav");
        phone.command(&format!("play {}", tone.display()));
        phone.command(&format!("record {}", heard.display()));
        phone
    }

    fn command(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("a linphonec command");
        self.stdin.flush().expect("flush");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("linphonec.log")).unwrap_or_default()
    }

    /// What it recorded, and at what rate.
    fn heard(&self) -> (Vec<i16>, u32) {
        let bytes = std::fs::read(self.dir.join("heard.wav"))
            .unwrap_or_else(|e| panic!("linphone recorded nothing ({e}):\n{}", self.log()));
        (wav_samples(&bytes), wav_rate(&bytes))
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn linphone_registers_calls_a_baresip_and_both_hear_each_other() {
    let (Some(baresip), Some(linphonec)) = (peer_tool("baresip"), peer_tool("linphonec")) else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let (manager, server) = bed(data.path(), &[]);
    let sip = server.sip_addr();
    let mut bob = Phone::configure(data.path(), "bob", "1002", sip, 600.0);
    bob.start(&baresip, &[], Duration::from_secs(40));
    let mut alice = Linphone::start(&linphonec, data.path(), "alice", 1000.0);
    alice.command(&format!("register sip:1001@{sip} sip:{sip} pw1001"));
    wait_for(
        "linphone (1001) and baresip (1002) never both registered",
        Duration::from_secs(15),
        || registered(&server) == ["1001", "1002"],
        || format!("{}\n{}\n{}", alice.log(), bob.log(), server.log()),
    );
    alice.command(&format!("call sip:1002@{sip}"));
    wait_for(
        "the call was not answered",
        Duration::from_secs(15),
        || bob.log().contains("Call established"),
        || format!("{}\n{}\n{}", alice.log(), bob.log(), server.log()),
    );
    std::thread::sleep(Duration::from_secs(8));
    alice.command("terminate");
    wait_for(
        "the call did not end everywhere",
        Duration::from_secs(10),
        || bob.log().contains("terminated") && manager.calls().is_empty(),
        || format!("{}\n{}\n{}", alice.log(), bob.log(), server.log()),
    );
    alice.command("quit");
    std::thread::sleep(Duration::from_secs(1));
    let (heard_by_alice, rate) = alice.heard();
    let seconds = |frames: usize| frames as f64 / 50.0;
    let alice_heard_bob = seconds(frames_with_tone_at(&heard_by_alice, 600.0, rate));
    let bob_heard_alice = seconds(frames_with_tone(&bob.heard(), 1000.0));
    assert!(
        alice_heard_bob >= 4.0,
        "linphone heard baresip for {alice_heard_bob} s"
    );
    assert!(
        bob_heard_alice >= 4.0,
        "baresip heard linphone for {bob_heard_alice} s"
    );
}

/// Bob (registered) is called by alice, who hangs up after 12 s; each
/// must hear the other's tone and not their own. Returns the bindings as
/// the API listed them while both were registered.
fn call_and_hear_each_other(
    baresip: &Path,
    manager: &Manager,
    server: &Server,
    mut alice: Phone,
    mut bob: Phone,
) -> serde_json::Value {
    bob.start(baresip, &[], Duration::from_secs(40));
    wait_for(
        "bob (1002) never registered",
        Duration::from_secs(15),
        || registered(server) == ["1002"],
        || format!("{}\n{}", bob.log(), server.log()),
    );
    // Alice dials at once and hangs up when she quits, 12 s later.
    alice.start(baresip, &["/dial 1002"], Duration::from_secs(12));
    wait_for(
        "alice (1001) never registered",
        Duration::from_secs(15),
        || registered(server) == ["1001", "1002"],
        || format!("{}\n{}", alice.log(), server.log()),
    );
    let bindings = server.get_json("/api/v1/registrations");
    alice.wait(Duration::from_secs(30));
    assert!(
        alice.log().contains("Call established"),
        "alice's call:\n{}\n{}",
        alice.log(),
        server.log()
    );
    // Her BYE ends the call on bob's side, in signaling and on the manager.
    wait_for(
        "the call did not end everywhere",
        Duration::from_secs(10),
        || {
            bob.log().contains("terminated")
                && server.get_json("/api/v1/calls")["calls"]
                    .as_array()
                    .is_some_and(|calls| calls.is_empty())
                && manager.calls().is_empty()
        },
        || format!("{}\n{}", bob.log(), server.log()),
    );

    // Each side heard the other's tone for most of the call (several
    // seconds of 20 ms frames), and never its own.
    let (heard_by_bob, heard_by_alice) = (bob.heard(), alice.heard());
    let seconds = |frames: usize| frames as f64 / 50.0;
    let bob_heard_alice = frames_with_tone(&heard_by_bob, 1000.0);
    let alice_heard_bob = frames_with_tone(&heard_by_alice, 600.0);
    assert!(
        seconds(bob_heard_alice) >= 5.0,
        "bob heard alice's 1000 Hz for {} s of {} s",
        seconds(bob_heard_alice),
        heard_by_bob.len() as f64 / f64::from(RATE)
    );
    assert!(
        seconds(alice_heard_bob) >= 5.0,
        "alice heard bob's 600 Hz for {} s of {} s",
        seconds(alice_heard_bob),
        heard_by_alice.len() as f64 / f64::from(RATE)
    );
    assert_eq!(
        frames_with_tone(&heard_by_bob, 600.0),
        0,
        "bob heard himself"
    );
    assert_eq!(
        frames_with_tone(&heard_by_alice, 1000.0),
        0,
        "alice heard herself"
    );
    bindings
}

#[test]
fn baresip_gives_up_when_offered_every_algorithm() {
    let Some(baresip) = peer_tool("baresip") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    // RFC 8760's way: a challenge per algorithm, SHA-256 first.
    let (_manager, server) = bed(
        data.path(),
        &[
            "--auth-challenges",
            "all",
            "--auth-algorithms",
            "SHA-256,MD5",
        ],
    );
    let mut bob = Phone::configure(data.path(), "bob", "1002", server.sip_addr(), 600.0);
    bob.start(&baresip, &[], Duration::from_secs(30));
    wait_for(
        "baresip never received the challenges",
        Duration::from_secs(15),
        || bob.log().contains("1002@"),
        || format!("{}\n{}", bob.log(), server.log()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        registered(&server).is_empty(),
        "baresip 1.0 registered with two challenges (the default could then offer both):\n{}",
        bob.log()
    );
    assert!(
        !bob.log().contains("200 OK"),
        "unexpected registration:\n{}",
        bob.log()
    );
}

#[test]
fn goertzel_share_finds_a_tone_and_not_another() {
    let samples = wav_samples(&tone_wav(1000.0, 1));
    assert_eq!(samples.len(), RATE as usize);
    assert_eq!(frames_with_tone(&samples, 1000.0), 50);
    assert_eq!(frames_with_tone(&samples, 600.0), 0);
    assert_eq!(
        frames_with_tone(&[0; 160], 1000.0),
        0,
        "silence has no tone"
    );
}
