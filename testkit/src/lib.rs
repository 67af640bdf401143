//! What the integration tests of every package share.
//!
//! Start here when a test, a bench or xtask needs scaffolding: a daemon
//! binary of another package ([`workspace_binary`]), free ports
//! ([`free_port`], [`free_media_range`]), daemons stopped by pid with their
//! log shown on failure ([`daemon`]), network-namespace beds in either
//! address family with one or two relay interfaces ([`netns`]), SIPp runs
//! and counters ([`sipp`]), SIP messages as a peer writes them ([`sip`]),
//! tools from PATH ([`tool`]) and a fixed-seed [`Rng`].
//!
//! Only std: a dependency here, with features of its own, would change the
//! workspace's feature unification and so rebuild the daemons. The few
//! system calls (setns, kill) are declared here directly.

pub mod certs;
pub mod daemon;
pub mod dns;
pub mod netns;
pub mod redis;
pub mod sip;
pub mod sipp;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Set by `cargo xtask test` once every binary of the workspace is built.
pub const BINARIES_BUILT: &str = "SWITCHBOARD_TEST_BINARIES_BUILT";

/// The path of a binary of this workspace, built up to date first.
///
/// Cargo builds the binaries of a package for its own integration tests
/// only, so a test that starts another package's daemon (signaling tests
/// start the RTP manager, the dashboard's start signaling) must build it.
/// Checking that the file exists is not enough: after an edit the old
/// binary is still there and the test silently runs yesterday's code.
///
/// The build is `cargo build --workspace --bins --tests`, the same feature
/// set as `cargo test --workspace`; `cargo build -p <one package>` would
/// resolve features for that package alone and rebuild the daemon and its
/// dependencies. Run once per test process, and not at all under `cargo
/// xtask test` (CI), which builds every binary before the tests and says
/// so in [`BINARIES_BUILT`]: a cargo nested in a test sees another
/// environment, and in CI it rebuilt dependencies mid-test (minutes on two
/// cores, while a SIPp call waited).
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let dir = binary_dir();
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    if std::env::var_os(BINARIES_BUILT).is_some() {
        built.insert(dir.clone());
    }
    if !built.contains(&dir) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--workspace", "--bins", "--tests"]);
        if dir.file_name().is_some_and(|profile| profile == "release") {
            command.arg("--release");
        }
        let status = command
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build for the workspace's binaries");
        assert!(status.success(), "cargo build --workspace --bins failed");
        built.insert(dir.clone());
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not a binary of this workspace",
        path.display()
    );
    path
}

/// The profile directory holding the binaries (`target/debug`): the test
/// executable runs from its `deps/` subdirectory.
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("the profile directory")
    } else {
        deps
    };
    dir.to_path_buf()
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace root")
}

/// A port free for both UDP and TCP on 127.0.0.1 (a SIP server binds both).
///
/// Drawn from 10000-19999, below the media ranges of
/// [`free_media_range`] and below the kernel's ephemeral ports: a port the
/// kernel handed out as ephemeral could be given again to any socket bound
/// to port 0 (a gRPC or Redis client, a test's RTP sender) between this
/// call and the bind of the daemon it is meant for. That happened in CI: a
/// SIPp callee could not bind its port ("Address already in use") and the
/// call it was to answer timed out. Within a process no port is handed out
/// twice before the range wraps; processes start at different places.
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    const HIGH: u32 = 20_000;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut candidate =
        next.unwrap_or_else(|| LOW + std::process::id().wrapping_mul(7919) % (HIGH - LOW));
    for _ in 0..(HIGH - LOW) {
        let port = candidate as u16;
        candidate = if candidate + 1 >= HIGH {
            LOW
        } else {
            candidate + 1
        };
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            *next = Some(candidate);
            return port;
        }
    }
    panic!("no free port in 10000-19999 on 127.0.0.1");
}

/// Polls `done` every `every` until it holds or `limit` has passed;
/// whether it held.
pub fn wait_until(
    limit: std::time::Duration,
    every: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A program from PATH (a real SIP peer, a browser) that `purpose` needs.
/// Without it the test is skipped with a message; under CI (`CI` set),
/// where `cargo xtask setup` installs them, a missing tool is a failure
/// rather than a silent pass.
pub fn tool(name: &str, purpose: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run {purpose}: `{name}` is not installed (cargo xtask setup installs it)"
        );
        eprintln!("SKIPPED: `{name}` is not installed (cargo xtask setup installs it)");
    }
    found
}

/// An even range of `pairs` RTP/RTCP port pairs on loopback where nothing
/// is bound right now, for a manager's `--rtp-port-min`/`--rtp-port-max`.
///
/// The range lies below the kernel's ephemeral ports (32768-60999 by
/// default): a socket bound to port 0 (a gRPC client, SIPp, a test's RTP
/// sender) would otherwise land in a manager's range and hold a pair the
/// manager just released, so its next call fails with "could not be
/// bound" (seen with 300 calls on 16 pairs). Tests running in parallel in
/// one process get disjoint ranges; processes start at different places.
pub fn free_media_range(pairs: u16) -> (u16, u16) {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_768;
    static CLAIMED: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());
    let span = 2 * u32::from(pairs.max(1));
    let step = span + 2;
    let slots = (HIGH - LOW) / step;
    assert!(
        slots > 0,
        "{pairs} pairs do not fit below the ephemeral ports"
    );
    let mut claimed = CLAIMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = std::process::id().wrapping_mul(7919) % slots;
    for slot in (0..slots).map(|i| (first + i) % slots) {
        let (min, max) = (LOW + slot * step, LOW + slot * step + span - 1);
        if claimed.iter().any(|&(a, b)| min <= b && a <= max) {
            continue;
        }
        let free = (min..=max).all(|port| {
            std::net::UdpSocket::bind(("127.0.0.1", port as u16)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok()
        });
        if free {
            claimed.push((min, max));
            return (min as u16, max as u16);
        }
    }
    panic!("no free range of {pairs} port pairs below the ephemeral ports");
}

/// A mono PCM WAV file of `samples` at `rate` Hz, 16 or 24 bits (24-bit
/// samples are the 16-bit ones shifted up), for playback tests.
pub fn wav(rate: u32, bits: u16, samples: &[i16]) -> Vec<u8> {
    let bytes_per_sample = u32::from(bits / 8);
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|s| {
            let le = s.to_le_bytes();
            if bits == 24 {
                vec![0, le[0], le[1]]
            } else {
                le.to_vec()
            }
        })
        .collect();
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * bytes_per_sample).to_le_bytes());
    out.extend_from_slice(&(bits / 8).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// splitmix64 with a fixed seed, for randomized (property) tests: every run
/// sees the same cases, so a failure replays exactly.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index into something `len` long.
    pub fn index(&mut self, len: usize) -> usize {
        (self.next_u64() % len as u64) as usize
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    /// Up to `max` characters drawn from `alphabet`.
    pub fn text(&mut self, alphabet: &[char], max: usize) -> String {
        (0..self.index(max + 1))
            .map(|_| self.pick(alphabet))
            .collect()
    }
}
