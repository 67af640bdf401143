//! The kernel fast path: loads the eBPF object embedded at build time and
//! attaches it to the media interface in the best mode the host allows.
//!
//! The fast path is a cache of the userspace relay, never a requirement: when
//! the object is missing from this build, the process lacks privileges, the
//! interface refuses a mode or the verifier rejects the program, the manager
//! runs userspace-only and [`FastPath::reason`] says why (logged once).
//!
//! While attached, [`FastPath::install`] and [`FastPath::remove`] put
//! streams in and out of the kernel and [`FastPath::stream_stats`] reads
//! what the kernel forwarded; when off they fail with [`FastPathError::Off`]
//! (or return `None`) and the caller keeps relaying in userspace.
//!
//! Started with a pin directory ([`FastPath::start_pinned`]), the maps and
//! the attachment outlive the process (see [`pin`]): a killed manager's
//! entries keep forwarding, and [`FastPath::shutdown`] decides at a clean
//! exit whether they stay (upgrade) or go.

pub mod kernel_log;
mod maps;
pub mod pin;

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use rtpmanager_common::{ProgramConfig, FORWARD_MAP, TC_PROGRAM, XDP_PROGRAM};

use crate::config::FastPathRequest;

pub use maps::{InvalidEntry, KernelMaps};
pub use pin::{PinError, Pins};
/// The map types and flags, so callers need not name the shared crate.
pub use rtpmanager_common::{
    Counter, ForwardEntry, ForwardKey, StreamStats, FLAG_RTCP, FLAG_RTP, FLAG_STRICT_SOURCE,
};

/// The eBPF object built by `cargo xtask build-ebpf`, when it existed at build time.
#[cfg(ebpf_object)]
const EBPF_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/rtpmanager-ebpf.o"
)));
#[cfg(not(ebpf_object))]
const EBPF_OBJECT: Option<&[u8]> = None;

/// Whether this build embeds the eBPF object.
pub fn object_embedded() -> bool {
    EBPF_OBJECT.is_some()
}

/// The fast-path mode actually in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Userspace relay only.
    Off,
    /// XDP in the driver.
    XdpNative,
    /// XDP in generic (SKB) mode.
    XdpGeneric,
    /// TC clsact ingress.
    Tc,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::XdpNative => "xdp",
            Mode::XdpGeneric => "xdp-generic",
            Mode::Tc => "tc",
        })
    }
}

/// Why one attempt to enable the fast path failed.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The process may not load BPF programs or attach them to interfaces.
    #[error(
        "missing capabilities: {0} (run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Capabilities(String),
    /// The program could not be found in the object, or is of the wrong type.
    #[error("eBPF object: {0}")]
    Object(String),
    /// The object or a map failed to load (memlock limits, BTF, map creation).
    #[error("loading the eBPF object failed")]
    Load(#[from] aya::EbpfError),
    /// The verifier rejected the program, or attaching it failed.
    #[error("{mode}")]
    Program {
        mode: Mode,
        source: aya::programs::ProgramError,
    },
    /// A map could not be opened or written.
    #[error("map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    /// The fast path is off: the stream stays in userspace.
    #[error("the kernel fast path is off")]
    Off,
    /// The entry would be mishandled or never matched by the programs.
    #[error("invalid forwarding entry: {0}")]
    InvalidEntry(#[from] InvalidEntry),
}

/// What the fast path needs to know to attach.
#[derive(Clone, Debug)]
pub struct Settings {
    pub request: FastPathRequest,
    pub interface: String,
    pub port_min: u16,
    pub port_max: u16,
    /// How long the programs reuse an entry's route and neighbour lookup
    /// (see `rtpmanager_common::CachedHop`); zero looks up every packet.
    pub next_hop_cache: Duration,
}

/// Where the programs are attached on one media device, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub device: String,
    pub mode: Mode,
    pub reason: String,
}

/// Another device the programs attach to, after the first
/// ([`FastPath::start_on`]), in the best mode its own request allows.
#[derive(Clone, Debug)]
pub struct MoreDevice {
    pub device: String,
    pub request: FastPathRequest,
}

/// The default of `--next-hop-cache-ms`.
pub const DEFAULT_NEXT_HOP_CACHE: Duration = Duration::from_millis(500);

/// The fast path in force. Dropping it detaches the programs unless they
/// are pinned.
pub struct FastPath {
    mode: Mode,
    reason: String,
    interface: String,
    /// Keeps the programs attached until dropped (and attaches them to
    /// more devices); `None` when off.
    ebpf: Option<Ebpf>,
    /// Behind a mutex so the session table's driver can share the fast
    /// path (`&self`); map syscalls dominate the cost of the lock.
    maps: Option<Mutex<KernelMaps>>,
    /// Where maps and link are pinned, when they are.
    pins: Option<Pins>,
    /// The pinned link when pinning took it out of the program; dropped at
    /// [`FastPath::shutdown`] after unpinning, which detaches the program.
    link: Mutex<Option<FdLink>>,
    /// Drains the programs' debug records while debug logging is on.
    #[expect(dead_code, reason = "held for its thread, stopped on drop")]
    log_reader: Option<kernel_log::LogReader>,
    /// Every device and its mode: the first device's, then those of
    /// [`FastPath::start_on`]'s other devices.
    attachments: Vec<Attachment>,
    /// The pinned links of the other devices (path, link), unpinned and
    /// dropped at [`FastPath::shutdown`].
    more_links: Mutex<Vec<(std::path::PathBuf, Option<FdLink>)>>,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("mode", &self.mode)
            .field("reason", &self.reason)
            .field("interface", &self.interface)
            .finish()
    }
}

impl FastPath {
    /// Enables the fast path as `settings` asks, or falls back to userspace
    /// only; never fails. Logs the outcome once.
    pub fn start(settings: &Settings) -> FastPath {
        Self::start_pinned(settings, None)
    }

    /// [`FastPath::start`], with maps and link pinned under `pin_dir` when
    /// it is given and on bpffs (else unpinned, logged once). Pinned maps
    /// of a previous run are reused with their entries, and a pinned link
    /// gets this run's program atomically.
    pub fn start_pinned(settings: &Settings, pin_dir: Option<&Path>) -> FastPath {
        Self::start_on(settings, &[], pin_dir)
    }

    /// [`FastPath::start_pinned`] on `settings.interface`, then the same
    /// programs (one object, shared maps: an entry installed once serves
    /// every device) attached to each of `more` in the best mode its own
    /// request allows. The programs' route lookup redirects a packet to
    /// the egress device, whichever device it arrived on. A device where
    /// nothing attaches is reported off in [`FastPath::attachments`]; its
    /// packets reach the userspace relay.
    pub fn start_on(settings: &Settings, more: &[MoreDevice], pin_dir: Option<&Path>) -> FastPath {
        let pins = match pin_dir {
            Some(dir) if settings.request != FastPathRequest::Off => match Pins::prepare(dir) {
                Ok(pins) => Some(pins),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "kernel fast path not pinned: it stops with the manager and a restart starts with empty maps");
                    None
                }
            },
            _ => None,
        };
        let mut fast_path = Self::try_modes(settings, pins);
        fast_path.attachments.push(Attachment {
            device: settings.interface.clone(),
            mode: fast_path.mode,
            reason: fast_path.reason.clone(),
        });
        for device in more {
            let attachment = fast_path.attach_more(device);
            if attachment.mode == Mode::Off {
                tracing::warn!(device = %attachment.device, reason = %attachment.reason, "kernel fast path off on this device; its media is relayed in userspace");
            } else {
                tracing::info!(device = %attachment.device, mode = %attachment.mode, "kernel fast path attached to another media device");
            }
            fast_path.attachments.push(attachment);
        }
        if fast_path.mode == Mode::Off {
            tracing::warn!(reason = %fast_path.reason, "kernel fast path off; relaying media in userspace only");
        } else {
            tracing::info!(
                mode = %fast_path.mode,
                interface = %fast_path.interface,
                reason = %fast_path.reason,
                "kernel fast path attached"
            );
        }
        fast_path
    }

    fn off(reason: impl Into<String>) -> FastPath {
        FastPath {
            mode: Mode::Off,
            reason: reason.into(),
            interface: String::new(),
            ebpf: None,
            maps: None,
            pins: None,
            link: Mutex::new(None),
            log_reader: None,
            attachments: Vec::new(),
            more_links: Mutex::new(Vec::new()),
        }
    }

    /// Attaches the loaded programs to one more device.
    fn attach_more(&mut self, more: &MoreDevice) -> Attachment {
        let off = |reason: String| Attachment {
            device: more.device.clone(),
            mode: Mode::Off,
            reason,
        };
        let candidates: &[Mode] = match more.request {
            FastPathRequest::Off => return off("disabled by the interface's fast-path=off".into()),
            FastPathRequest::Auto => &[Mode::XdpNative, Mode::XdpGeneric, Mode::Tc],
            FastPathRequest::Xdp => &[Mode::XdpNative],
            FastPathRequest::XdpGeneric => &[Mode::XdpGeneric],
            FastPathRequest::Tc => &[Mode::Tc],
        };
        let Some(ebpf) = self.ebpf.as_mut() else {
            return off(format!("the programs are not loaded: {}", self.reason));
        };
        let mut failures = Vec::new();
        for &mode in candidates {
            match attach_device(ebpf, &more.device, mode, self.pins.as_ref()) {
                Ok((path, link)) => {
                    if let Some(pins) = &self.pins {
                        for other in [Mode::XdpNative, Mode::XdpGeneric, Mode::Tc] {
                            if other != mode {
                                let _ = std::fs::remove_file(
                                    pins.device_link_path(other, &more.device),
                                );
                            }
                        }
                    }
                    self.more_links
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .extend(path.map(|p| (p, link)));
                    let reason = if failures.is_empty() {
                        format!("{mode} as requested")
                    } else {
                        format!("{mode} after: {}", failures.join("; "))
                    };
                    return Attachment {
                        device: more.device.clone(),
                        mode,
                        reason,
                    };
                }
                Err(e) => failures.push(error_chain(&e)),
            }
        }
        off(format!("on {}: {}", more.device, failures.join("; ")))
    }

    /// Every media device with its mode, the first device first.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The mode in force on `device`: off for a device the programs are
    /// not attached to.
    pub fn mode_on(&self, device: &str) -> Mode {
        // A table made without devices (tests) follows the first device.
        if device.is_empty() {
            return self.mode;
        }
        self.attachments
            .iter()
            .find(|a| a.device == device)
            .map_or(Mode::Off, |a| a.mode)
    }

    fn try_modes(settings: &Settings, pins: Option<Pins>) -> FastPath {
        let candidates: &[Mode] = match settings.request {
            FastPathRequest::Off => return Self::off("disabled by --fast-path off"),
            FastPathRequest::Auto => &[Mode::XdpNative, Mode::XdpGeneric, Mode::Tc],
            FastPathRequest::Xdp => &[Mode::XdpNative],
            FastPathRequest::XdpGeneric => &[Mode::XdpGeneric],
            FastPathRequest::Tc => &[Mode::Tc],
        };
        let Some(object) = EBPF_OBJECT else {
            return Self::off("this build has no eBPF object (build it with `cargo xtask build-ebpf`, then rebuild)");
        };
        if let Err(e) = check_capabilities() {
            return Self::off(e.to_string());
        }
        raise_memlock_limit();

        let mut failures = Vec::new();
        for &mode in candidates {
            match attach(object, mode, settings, pins.as_ref()) {
                Ok((mut ebpf, maps, link)) => {
                    let log_reader = (kernel_log::program_level() != 0)
                        .then(|| kernel_log::LogReader::start(&mut ebpf, kernel_log::ToTracing))
                        .and_then(|started| {
                            started
                                .inspect_err(|e| tracing::warn!(error = %e, "the programs' debug records will not be shown"))
                                .ok()
                        });
                    let reason = if failures.is_empty() {
                        format!("{mode} as requested")
                    } else {
                        format!("{mode} after: {}", failures.join("; "))
                    };
                    if let Some(pins) = &pins {
                        // A previous run in another mode left its link:
                        // unpinning detaches it.
                        for other in [Mode::XdpNative, Mode::XdpGeneric, Mode::Tc] {
                            if other != mode && std::fs::remove_file(pins.link_path(other)).is_ok()
                            {
                                tracing::info!(mode = %other, "detached the pinned link of a previous run");
                            }
                        }
                    }
                    return FastPath {
                        mode,
                        reason,
                        interface: settings.interface.clone(),
                        ebpf: Some(ebpf),
                        maps: Some(Mutex::new(maps)),
                        pins,
                        link: Mutex::new(link),
                        log_reader,
                        attachments: Vec::new(),
                        more_links: Mutex::new(Vec::new()),
                    };
                }
                Err(e) => {
                    let e = error_chain(&e);
                    tracing::debug!(%mode, error = %e, "fast-path mode unavailable");
                    failures.push(e);
                }
            }
        }
        Self::off(format!(
            "on {}: {}",
            settings.interface,
            failures.join("; ")
        ))
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the fast path is in its mode.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The pin directory in use, when maps and link are pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(Pins::dir)
    }

    /// Removes every forwarding entry whose key `keep` refuses (entries a
    /// previous run left for calls this run does not know); returns how
    /// many went. 0 when off.
    pub fn retain_entries(&self, keep: impl Fn(&ForwardKey) -> bool) -> usize {
        self.maps()
            .map(|mut maps| maps.retain_forwards(keep))
            .unwrap_or(0)
    }

    /// Ends the fast path at a clean exit. With `keep` (upgrade mode) and
    /// pins, entries, maps and link stay and keep forwarding for the next
    /// manager; otherwise the entries are removed, and the maps and the
    /// link unpinned, which detaches the program.
    pub fn shutdown(&self, keep: bool) {
        if self.mode == Mode::Off {
            return;
        }
        let Some(pins) = &self.pins else {
            if keep {
                tracing::warn!("--keep-on-exit has nothing to keep: the fast path is not pinned");
            }
            return;
        };
        if keep {
            tracing::info!(pin_dir = %pins.dir().display(), "kernel fast path kept for the next manager (--keep-on-exit)");
            return;
        }
        let removed = self.retain_entries(|_| false);
        if let Err(e) = std::fs::remove_file(pins.link_path(self.mode)) {
            tracing::warn!(error = %e, "cannot unpin the link");
        }
        drop(
            self.link
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        for (path, link) in self
            .more_links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain(..)
        {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot unpin a device's link");
            }
            drop(link);
        }
        pins.remove_maps();
        pins.remove_dir_if_empty();
        tracing::info!(
            entries = removed,
            "kernel fast path removed: entries deleted, link and maps unpinned"
        );
    }

    /// The interface the programs are attached to; empty when off.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Per-reason packet counters summed over CPUs; `None` when off.
    pub fn counters(&self) -> Option<Vec<(Counter, u64)>> {
        self.maps().ok()?.counters().ok()
    }

    /// Forwards packets addressed to `key` in the kernel as `entry` says,
    /// replacing any entry for `key`.
    pub fn install(&self, key: ForwardKey, entry: ForwardEntry) -> Result<(), FastPathError> {
        self.maps()?.install(key, entry)
    }

    /// Takes packets addressed to `key` back to userspace; `Ok(false)` when
    /// there was no entry.
    pub fn remove(&self, key: &ForwardKey) -> Result<bool, FastPathError> {
        self.maps()?.remove(key)
    }

    /// What the kernel forwarded for stats slot `slot`; `None` when off or
    /// out of range.
    pub fn stream_stats(&self, slot: u32) -> Option<StreamStats> {
        self.maps().ok()?.stream_stats(slot)
    }

    /// Zeroes stats slot `slot`, before it serves a new stream.
    pub fn reset_stream_stats(&self, slot: u32) -> Result<(), FastPathError> {
        self.maps()?.reset_stream_stats(slot)
    }

    fn maps(&self) -> Result<MutexGuard<'_, KernelMaps>, FastPathError> {
        let maps = self.maps.as_ref().ok_or(FastPathError::Off)?;
        // A panic while holding the lock cannot leave the maps inconsistent
        // (each call is one syscall), so a poisoned lock is still usable.
        Ok(maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Loads the object and both programs into the kernel without attaching
/// them, with the config written: for running the programs on test packets
/// (BPF_PROG_TEST_RUN) and for tools. Needs the same privileges as
/// [`FastPath::start`].
pub fn load_unattached(settings: &Settings) -> Result<(Ebpf, KernelMaps), FastPathError> {
    let object =
        EBPF_OBJECT.ok_or_else(|| FastPathError::Object("not embedded in this build".into()))?;
    check_capabilities()?;
    raise_memlock_limit();
    let (mut ebpf, maps) = load(object, settings, None)?;
    let program_err = |mode| move |source| FastPathError::Program { mode, source };
    let xdp: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| FastPathError::Object(format!("no program {XDP_PROGRAM}")))?
        .try_into()
        .map_err(program_err(Mode::XdpNative))?;
    xdp.load().map_err(program_err(Mode::XdpNative))?;
    let classifier: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .ok_or_else(|| FastPathError::Object(format!("no program {TC_PROGRAM}")))?
        .try_into()
        .map_err(program_err(Mode::Tc))?;
    classifier.load().map_err(program_err(Mode::Tc))?;
    Ok((ebpf, maps))
}

/// Loads the object (maps created or, pinned, reused; programs not yet) and
/// writes the config.
fn load(
    object: &[u8],
    settings: &Settings,
    pins: Option<&Pins>,
) -> Result<(Ebpf, KernelMaps), FastPathError> {
    let mut loader = EbpfLoader::new();
    // The programs' aya-log records: debug when this process shows them.
    let log_level = kernel_log::program_level();
    loader.override_global(aya_log::LEVEL, &log_level, false);
    // One forwarding element per media port.
    let ports = u32::from(settings.port_max.saturating_sub(settings.port_min)) + 1;
    loader.map_max_entries(FORWARD_MAP, ports);
    if let Some(pins) = pins {
        for name in pins.drop_incompatible_maps(ports) {
            tracing::warn!(
                map = name,
                "a pinned map of another layout was replaced; its entries are gone"
            );
        }
        for name in Pins::map_names() {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    let mut ebpf = loader.load(object)?;
    let mut maps = KernelMaps::take(&mut ebpf)?;
    maps.set_config(ProgramConfig {
        port_min: settings.port_min,
        port_max: settings.port_max,
        flags: 0,
        next_hop_ttl_ns: u64::try_from(settings.next_hop_cache.as_nanos()).unwrap_or(u64::MAX),
    })?;
    Ok((ebpf, maps))
}

/// The link a previous run left pinned at `path`, if any (an unusable one
/// is removed).
fn pinned_link(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(link) => Some(FdLink::from(link)),
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), path = %path.display(), "unusable pinned link removed");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Pins a freshly attached link at `path` (an adopted one stays pinned
/// where it is). A netlink (legacy) attachment is no BPF link and cannot
/// be pinned; these kernels (5.9+ for XDP, 6.6+ for TCX) never fall back
/// to one.
fn hold(
    link: Result<FdLink, aya::programs::links::LinkError>,
    path: &Path,
    mode: Mode,
    adopted: bool,
) -> Result<Option<FdLink>, FastPathError> {
    let link = match link {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(%mode, error = %e, "attached through netlink: the attachment is not pinned");
            return Ok(None);
        }
    };
    if adopted {
        return Ok(Some(link));
    }
    let pinned = link
        .pin(path)
        .map_err(|e| FastPathError::Object(format!("pinning the link: {}", error_chain(&e))))?;
    Ok(Some(FdLink::from(pinned)))
}

/// Loads the object and attaches it to the first media device in `mode`;
/// its link is pinned at [`Pins::link_path`], where an upgraded manager
/// finds a single-interface run's link.
fn attach(
    object: &[u8],
    mode: Mode,
    settings: &Settings,
    pins: Option<&Pins>,
) -> Result<(Ebpf, KernelMaps, Option<FdLink>), FastPathError> {
    let (mut ebpf, maps) = load(object, settings, pins)?;
    let pin = pins.map(|p| p.link_path(mode));
    let link = attach_program(&mut ebpf, &settings.interface, mode, pin.as_deref())?;
    Ok((ebpf, maps, link))
}

/// Attaches the programs of a loaded object to one more device in `mode`.
/// Returns the pin path and link when pinned.
fn attach_device(
    ebpf: &mut Ebpf,
    device: &str,
    mode: Mode,
    pins: Option<&Pins>,
) -> Result<(Option<std::path::PathBuf>, Option<FdLink>), FastPathError> {
    let path = pins.map(|p| p.device_link_path(mode, device));
    let link = attach_program(ebpf, device, mode, path.as_deref())?;
    Ok((path, link))
}

/// Attaches the loaded object's program of `mode` to `device`, loading it
/// first if no device needed it yet. With a pin path: a link a previous run
/// left there gets the program replaced in one step (no packet meets a
/// detached interface), a new link is pinned there; the held link is
/// returned.
fn attach_program(
    ebpf: &mut Ebpf,
    device: &str,
    mode: Mode,
    pin: Option<&Path>,
) -> Result<Option<FdLink>, FastPathError> {
    let program_err = |source| FastPathError::Program { mode, source };
    let previous = pin.and_then(pinned_link);
    let adopted = previous.is_some();
    let taken = match mode {
        Mode::XdpNative | Mode::XdpGeneric => {
            let program: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or_else(|| FastPathError::Object(format!("no program {XDP_PROGRAM}")))?
                .try_into()
                .map_err(program_err)?;
            if program.fd().is_err() {
                program.load().map_err(program_err)?;
            }
            let xdp_mode = if mode == Mode::XdpNative {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            let id = match previous {
                Some(link) => {
                    let link = XdpLink::try_from(link).map_err(|e| {
                        FastPathError::Object(format!("pinned link: {}", error_chain(&e)))
                    })?;
                    program.attach_to_link(link).map_err(program_err)?
                }
                None => program.attach(device, xdp_mode).map_err(program_err)?,
            };
            match pin {
                Some(_) => Some(FdLink::try_from(
                    program.take_link(id).map_err(program_err)?,
                )),
                None => None,
            }
        }
        Mode::Tc => {
            // EEXIST means the clsact qdisc is already there, which is fine.
            if let Err(e) = tc::qdisc_add_clsact(device) {
                tracing::debug!(error = %e, "clsact qdisc not added (probably present)");
            }
            let program: &mut SchedClassifier = ebpf
                .program_mut(TC_PROGRAM)
                .ok_or_else(|| FastPathError::Object(format!("no program {TC_PROGRAM}")))?
                .try_into()
                .map_err(program_err)?;
            if program.fd().is_err() {
                program.load().map_err(program_err)?;
            }
            let id = match previous {
                Some(link) => {
                    let link = SchedClassifierLink::try_from(link).map_err(|e| {
                        FastPathError::Object(format!("pinned link: {}", error_chain(&e)))
                    })?;
                    program.attach_to_link(link).map_err(program_err)?
                }
                None => program
                    .attach(device, TcAttachType::Ingress)
                    .map_err(program_err)?,
            };
            match pin {
                Some(_) => Some(FdLink::try_from(
                    program.take_link(id).map_err(program_err)?,
                )),
                None => None,
            }
        }
        Mode::Off => return Err(FastPathError::Object("off is not an attach mode".into())),
    };
    match (taken, pin) {
        (Some(link), Some(path)) => hold(link, path, mode, adopted),
        _ => Ok(None),
    }
}

/// An error with its sources, so "bpf_link_create failed" says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Effective capability bits the loader needs (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks the effective capability set rather than the uid, so a manager run
/// by systemd as an unprivileged user with AmbientCapabilities qualifies.
fn check_capabilities() -> Result<(), FastPathError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| FastPathError::Capabilities(format!("cannot read /proc/self/status: {e}")))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| FastPathError::Capabilities("no CapEff in /proc/self/status".into()))?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // The programs bound packet reads by header lengths (variable-offset
    // packet pointers), which the verifier allows only with CAP_PERFMON
    // ("pointer arithmetic with it prohibited for !root" otherwise).
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(FastPathError::Capabilities(missing.join(", ")))
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use
/// memcg accounting. Raising the limit is harmless where it is not needed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other effects on memory.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "RLIMIT_MEMLOCK not raised");
    }
}
