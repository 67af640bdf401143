//! The Prometheus endpoint (`--metrics-listen`): `GET /metrics` in the text
//! exposition format 0.0.4; any other path answers 404.
//!
//! A scrape reads a [`Snapshot`] of what the manager already tracks (the
//! fast path in force, the kernel's verdict counters, the session table's
//! calls, legs and port pairs, the directions the kernel forwards) and
//! renders it with [`render`], which does no I/O. Reading goes through the
//! [`Driver`] and takes its locks briefly, as a request does; the relay
//! worker takes none of these locks and is never waited on.
//!
//! The userspace relay's totals are the live legs' counters plus those of
//! the legs already removed (kept by the driver), so they only grow; what
//! the kernel forwarded is in the verdict counters instead.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rtpmanager_common::Counter;
use tokio::net::TcpListener;

use crate::driver::Driver;
use crate::engine::RelayLoad;
use crate::fastpath::Mode;
use crate::relay::{RelayTotals, WorkerFigures};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Prefix of every metric name.
const PREFIX: &str = "switchboard_rtpmanager_";

/// What one scrape reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The fast-path mode in force.
    pub mode: Mode,
    /// The interface the programs are attached to; empty when off.
    pub interface: String,
    /// Why this mode is in force (what was tried and failed).
    pub reason: String,
    /// The programs' verdict counters summed over CPUs; `None` when the
    /// fast path is off or its counters map cannot be read.
    pub kernel_packets: Option<Vec<(Counter, u64)>>,
    /// Media directions (one leg's RTP or RTCP towards its bridged leg)
    /// the kernel forwards now.
    pub kernel_directions: u64,
    /// Calls in the session table.
    pub calls: u64,
    /// Legs of those calls.
    pub legs: u64,
    /// RTP/RTCP port pairs in the media range.
    pub port_pairs: u64,
    /// Pairs free for new legs.
    pub port_pairs_free: u64,
    /// Whether new calls are refused (SetDrain).
    pub draining: bool,
    /// The userspace relay's committed load and capacity (admission).
    pub relay_load: RelayLoad,
    /// Each relay worker's legs, packets, drops and CPU (empty leaves
    /// their families out).
    pub workers: Vec<WorkerFigures>,
    /// What the userspace relay received and sent since start.
    pub relay: RelayTotals,
    /// Every media interface (empty leaves their families out).
    pub interfaces: Vec<InterfaceFigures>,
}

/// One media interface's fast path and userspace load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceFigures {
    pub name: String,
    pub device: String,
    pub mode: Mode,
    /// Packets the userspace relay received on the interface's legs
    /// (RTP and RTCP), ended calls included.
    pub userspace_packets: u64,
}

impl Snapshot {
    /// Reads the figures from the driver: the session table's counts, the
    /// fast path's counters map and the offload's installed entries.
    pub fn read(driver: &Driver) -> Snapshot {
        let fast_path = driver.fast_path();
        let userspace = driver.interface_userspace_packets();
        let (calls, legs, port_pairs, port_pairs_free, draining, interfaces) =
            driver.with_table(|table| {
                (
                    as_u64(table.calls()),
                    as_u64(table.legs()),
                    as_u64(table.ports_total()),
                    as_u64(table.ports_free()),
                    table.draining(),
                    table
                        .interfaces()
                        .iter()
                        .map(|i| InterfaceFigures {
                            name: i.name.clone(),
                            device: i.device.clone(),
                            mode: fast_path.mode_on(&i.device),
                            userspace_packets: userspace.get(&i.name).copied().unwrap_or(0),
                        })
                        .collect(),
                )
            });
        Snapshot {
            mode: fast_path.mode(),
            interface: fast_path.interface().to_owned(),
            reason: fast_path.reason().to_owned(),
            kernel_packets: fast_path.counters(),
            kernel_directions: as_u64(driver.kernel_keys().len()),
            calls,
            legs,
            port_pairs,
            port_pairs_free,
            draining,
            relay_load: driver.relay_load(),
            workers: driver.relay_workers(),
            relay: driver.relay_totals(),
            interfaces,
        }
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Renders a snapshot in the text exposition format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mode = s.mode.to_string();
    family(
        &mut out,
        "fast_path_info",
        "gauge",
        "The kernel fast path in force (mode xdp, xdp-generic, tc or off), its interface and why (the first line of the reason; the log has all of it); always 1.",
    );
    sample(
        &mut out,
        "fast_path_info",
        &[
            ("mode", &mode),
            ("interface", &s.interface),
            ("reason", reason_label(&s.reason)),
        ],
        1,
    );
    if let Some(counters) = &s.kernel_packets {
        family(
            &mut out,
            "kernel_packets_total",
            "counter",
            "Packets the fast path's programs handled, by verdict, summed over CPUs; pinned maps keep them across a crash or a --keep-on-exit restart.",
        );
        for (counter, n) in counters {
            sample(
                &mut out,
                "kernel_packets_total",
                &[("verdict", counter.name())],
                *n,
            );
        }
    }
    let r = &s.relay;
    for (name, help, samples) in [
        (
            "relay_packets_total",
            "Packets the userspace relay received from peers (in) and sent to them (out), ended calls included; what the kernel forwards is counted by verdict instead.",
            [
                ("rtp", "in", r.rtp_in_packets),
                ("rtp", "out", r.rtp_out_packets),
                ("rtcp", "in", r.rtcp_in_packets),
                ("rtcp", "out", r.rtcp_out_packets),
            ],
        ),
        (
            "relay_bytes_total",
            "UDP payload bytes of relay_packets_total.",
            [
                ("rtp", "in", r.rtp_in_bytes),
                ("rtp", "out", r.rtp_out_bytes),
                ("rtcp", "in", r.rtcp_in_bytes),
                ("rtcp", "out", r.rtcp_out_bytes),
            ],
        ),
    ] {
        family(&mut out, name, "counter", help);
        for (stream, direction, n) in samples {
            sample(
                &mut out,
                name,
                &[("stream", stream), ("direction", direction)],
                n,
            );
        }
    }
    family(
        &mut out,
        "relay_source_rejected_packets_total",
        "counter",
        "Packets the userspace relay dropped because they came from a source the leg does not accept (a strict leg after it locked its peer's source, or worse than its candidate while learning), ended calls included; what the kernel drops for its source is its source_mismatch_drop verdict.",
    );
    sample(
        &mut out,
        "relay_source_rejected_packets_total",
        &[],
        r.source_rejected_packets,
    );
    family(
        &mut out,
        "relay_overload_dropped_packets_total",
        "counter",
        "Packets the userspace relay lost to overload: dropped by the kernel on a leg's full receive queue, or not sent on a full send queue; ended calls included.",
    );
    sample(
        &mut out,
        "relay_overload_dropped_packets_total",
        &[],
        r.overload_dropped_packets,
    );
    let gauges: [(&str, &str, u64); 9] = [
        (
            "kernel_directions",
            "Media directions (one leg's RTP or RTCP towards its bridged leg) the kernel forwards.",
            s.kernel_directions,
        ),
        ("calls", "Calls in the session table.", s.calls),
        ("legs", "Legs of the calls in the session table.", s.legs),
        (
            "port_pairs",
            "RTP/RTCP port pairs in the media range.",
            s.port_pairs,
        ),
        (
            "port_pairs_free",
            "Port pairs free for new legs.",
            s.port_pairs_free,
        ),
        (
            "draining",
            "1 while the manager refuses new calls (SetDrain).",
            u64::from(s.draining),
        ),
        (
            "relay_load_pps",
            "Packets a second committed to the userspace relay: 50 for each leg whose media the kernel does not forward.",
            u64::from(s.relay_load.committed_pps),
        ),
        (
            "relay_capacity_pps",
            "The userspace relay's capacity (--relay-capacity-pps); Offers past it are refused. 0: no admission control.",
            u64::from(s.relay_load.capacity_pps),
        ),
        (
            "relay_overloaded",
            "1 while the committed load has reached the capacity, or every relay worker is saturated (relay_worker_busy_permille >= 900): new calls go to another manager.",
            u64::from(s.relay_load.overloaded()),
        ),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help);
        sample(&mut out, name, &[], value);
    }
    /// Name, kind, help and value of a family with one sample per worker.
    type PerWorker = (
        &'static str,
        &'static str,
        &'static str,
        fn(&WorkerFigures) -> u64,
    );
    let per_worker: [PerWorker; 6] = [
        (
            "relay_worker_legs",
            "gauge",
            "Legs on each userspace relay worker (a call's legs share one; a new call goes to the unsaturated worker with the fewest).",
            |w| as_u64(w.legs),
        ),
        (
            "relay_worker_busy_permille",
            "gauge",
            "Share of the time each relay worker spent not waiting for packets, per mille, over about the last second (900 and more: saturated).",
            |w| u64::from(w.busy_permille),
        ),
        (
            "relay_worker_cpu_nanoseconds_total",
            "counter",
            "CPU time of each relay worker's thread.",
            |w| w.cpu_ns,
        ),
        (
            "relay_worker_received_packets_total",
            "counter",
            "Datagrams each relay worker read from its legs' sockets (RTP and RTCP).",
            |w| w.received_packets,
        ),
        (
            "relay_worker_forwarded_packets_total",
            "counter",
            "Datagrams each relay worker sent on to bridged legs.",
            |w| w.forwarded_packets,
        ),
        (
            "relay_worker_overload_dropped_packets_total",
            "counter",
            "Packets each relay worker's legs lost to overload (full receive or send queues).",
            |w| w.overload_drops,
        ),
    ];
    if !s.workers.is_empty() {
        for (name, kind, help, value) in per_worker {
            family(&mut out, name, kind, help);
            for (worker, figures) in s.workers.iter().enumerate() {
                sample(
                    &mut out,
                    name,
                    &[("worker", &worker.to_string())],
                    value(figures),
                );
            }
        }
    }
    if !s.interfaces.is_empty() {
        family(
            &mut out,
            "interface_fast_path_info",
            "gauge",
            "Each media interface, its device and the fast-path mode in force on it (xdp, xdp-generic, tc or off: its media is relayed in userspace); always 1.",
        );
        for i in &s.interfaces {
            let mode = i.mode.to_string();
            sample(
                &mut out,
                "interface_fast_path_info",
                &[
                    ("interface", &i.name),
                    ("device", &i.device),
                    ("mode", &mode),
                ],
                1,
            );
        }
        family(
            &mut out,
            "interface_userspace_packets_total",
            "counter",
            "Packets the userspace relay received on each media interface's legs (RTP and RTCP), ended calls included: all of an interface's media when its fast path is off, else what the kernel did not carry.",
        );
        for i in &s.interfaces {
            sample(
                &mut out,
                "interface_userspace_packets_total",
                &[("interface", &i.name)],
                i.userspace_packets,
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let _ = write!(out, "{PREFIX}{name}");
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(text));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Longest `reason` label, in characters.
const REASON_LABEL_MAX: usize = 200;

/// The first line of the fast path's reason, at most [`REASON_LABEL_MAX`]
/// characters: a failed attach can carry pages of verifier output, which
/// belongs in the log, not in a label (Prometheus may limit label length and
/// then rejects the whole scrape).
fn reason_label(reason: &str) -> &str {
    let line = reason.lines().next().unwrap_or_default();
    match line.char_indices().nth(REASON_LABEL_MAX) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The endpoint's router: `GET /metrics`, 404 elsewhere.
pub fn app(driver: Driver) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(driver)
}

/// Serves [`app`] on `listener` until the process ends.
pub async fn serve(listener: TcpListener, driver: Driver) -> std::io::Result<()> {
    axum::serve(listener, app(driver)).await
}

async fn metrics(State(driver): State<Driver>) -> Response {
    let snapshot = Snapshot::read(&driver);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&snapshot)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format_exactly() {
        let snapshot = Snapshot {
            mode: Mode::XdpGeneric,
            interface: "eth0".into(),
            reason: "xdp-generic after: xdp: \\ \"not supported\"\nverifier output".into(),
            kernel_packets: Some(vec![(Counter::NoEntry, 7), (Counter::Redirected, 1234)]),
            kernel_directions: 4,
            calls: 1,
            legs: 2,
            port_pairs: 50,
            port_pairs_free: 48,
            draining: false,
            relay_load: RelayLoad {
                committed_pps: 100,
                capacity_pps: 80_000,
                saturated: false,
            },
            workers: vec![
                WorkerFigures {
                    legs: 2,
                    received_packets: 3,
                    forwarded_packets: 2,
                    overload_drops: 9,
                    cpu_ns: 1_500_000,
                    busy_permille: 12,
                },
                WorkerFigures::default(),
            ],
            relay: RelayTotals {
                rtp_in_packets: 3,
                rtp_in_bytes: 516,
                rtp_out_packets: 2,
                rtp_out_bytes: 344,
                rtcp_in_packets: 1,
                rtcp_in_bytes: 52,
                rtcp_out_packets: 0,
                rtcp_out_bytes: 0,
                source_rejected_packets: 5,
                overload_dropped_packets: 9,
            },
            interfaces: Vec::new(),
        };
        let want = "\
# HELP switchboard_rtpmanager_fast_path_info The kernel fast path in force (mode xdp, xdp-generic, tc or off), its interface and why (the first line of the reason; the log has all of it); always 1.
# TYPE switchboard_rtpmanager_fast_path_info gauge
switchboard_rtpmanager_fast_path_info{mode=\"xdp-generic\",interface=\"eth0\",reason=\"xdp-generic after: xdp: \\\\ \\\"not supported\\\"\"} 1
# HELP switchboard_rtpmanager_kernel_packets_total Packets the fast path's programs handled, by verdict, summed over CPUs; pinned maps keep them across a crash or a --keep-on-exit restart.
# TYPE switchboard_rtpmanager_kernel_packets_total counter
switchboard_rtpmanager_kernel_packets_total{verdict=\"no_entry\"} 7
switchboard_rtpmanager_kernel_packets_total{verdict=\"redirected\"} 1234
# HELP switchboard_rtpmanager_relay_packets_total Packets the userspace relay received from peers (in) and sent to them (out), ended calls included; what the kernel forwards is counted by verdict instead.
# TYPE switchboard_rtpmanager_relay_packets_total counter
switchboard_rtpmanager_relay_packets_total{stream=\"rtp\",direction=\"in\"} 3
switchboard_rtpmanager_relay_packets_total{stream=\"rtp\",direction=\"out\"} 2
switchboard_rtpmanager_relay_packets_total{stream=\"rtcp\",direction=\"in\"} 1
switchboard_rtpmanager_relay_packets_total{stream=\"rtcp\",direction=\"out\"} 0
# HELP switchboard_rtpmanager_relay_bytes_total UDP payload bytes of relay_packets_total.
# TYPE switchboard_rtpmanager_relay_bytes_total counter
switchboard_rtpmanager_relay_bytes_total{stream=\"rtp\",direction=\"in\"} 516
switchboard_rtpmanager_relay_bytes_total{stream=\"rtp\",direction=\"out\"} 344
switchboard_rtpmanager_relay_bytes_total{stream=\"rtcp\",direction=\"in\"} 52
switchboard_rtpmanager_relay_bytes_total{stream=\"rtcp\",direction=\"out\"} 0
# HELP switchboard_rtpmanager_relay_source_rejected_packets_total Packets the userspace relay dropped because they came from a source the leg does not accept (a strict leg after it locked its peer's source, or worse than its candidate while learning), ended calls included; what the kernel drops for its source is its source_mismatch_drop verdict.
# TYPE switchboard_rtpmanager_relay_source_rejected_packets_total counter
switchboard_rtpmanager_relay_source_rejected_packets_total 5
# HELP switchboard_rtpmanager_relay_overload_dropped_packets_total Packets the userspace relay lost to overload: dropped by the kernel on a leg's full receive queue, or not sent on a full send queue; ended calls included.
# TYPE switchboard_rtpmanager_relay_overload_dropped_packets_total counter
switchboard_rtpmanager_relay_overload_dropped_packets_total 9
# HELP switchboard_rtpmanager_kernel_directions Media directions (one leg's RTP or RTCP towards its bridged leg) the kernel forwards.
# TYPE switchboard_rtpmanager_kernel_directions gauge
switchboard_rtpmanager_kernel_directions 4
# HELP switchboard_rtpmanager_calls Calls in the session table.
# TYPE switchboard_rtpmanager_calls gauge
switchboard_rtpmanager_calls 1
# HELP switchboard_rtpmanager_legs Legs of the calls in the session table.
# TYPE switchboard_rtpmanager_legs gauge
switchboard_rtpmanager_legs 2
# HELP switchboard_rtpmanager_port_pairs RTP/RTCP port pairs in the media range.
# TYPE switchboard_rtpmanager_port_pairs gauge
switchboard_rtpmanager_port_pairs 50
# HELP switchboard_rtpmanager_port_pairs_free Port pairs free for new legs.
# TYPE switchboard_rtpmanager_port_pairs_free gauge
switchboard_rtpmanager_port_pairs_free 48
# HELP switchboard_rtpmanager_draining 1 while the manager refuses new calls (SetDrain).
# TYPE switchboard_rtpmanager_draining gauge
switchboard_rtpmanager_draining 0
# HELP switchboard_rtpmanager_relay_load_pps Packets a second committed to the userspace relay: 50 for each leg whose media the kernel does not forward.
# TYPE switchboard_rtpmanager_relay_load_pps gauge
switchboard_rtpmanager_relay_load_pps 100
# HELP switchboard_rtpmanager_relay_capacity_pps The userspace relay's capacity (--relay-capacity-pps); Offers past it are refused. 0: no admission control.
# TYPE switchboard_rtpmanager_relay_capacity_pps gauge
switchboard_rtpmanager_relay_capacity_pps 80000
# HELP switchboard_rtpmanager_relay_overloaded 1 while the committed load has reached the capacity, or every relay worker is saturated (relay_worker_busy_permille >= 900): new calls go to another manager.
# TYPE switchboard_rtpmanager_relay_overloaded gauge
switchboard_rtpmanager_relay_overloaded 0
# HELP switchboard_rtpmanager_relay_worker_legs Legs on each userspace relay worker (a call's legs share one; a new call goes to the unsaturated worker with the fewest).
# TYPE switchboard_rtpmanager_relay_worker_legs gauge
switchboard_rtpmanager_relay_worker_legs{worker=\"0\"} 2
switchboard_rtpmanager_relay_worker_legs{worker=\"1\"} 0
# HELP switchboard_rtpmanager_relay_worker_busy_permille Share of the time each relay worker spent not waiting for packets, per mille, over about the last second (900 and more: saturated).
# TYPE switchboard_rtpmanager_relay_worker_busy_permille gauge
switchboard_rtpmanager_relay_worker_busy_permille{worker=\"0\"} 12
switchboard_rtpmanager_relay_worker_busy_permille{worker=\"1\"} 0
# HELP switchboard_rtpmanager_relay_worker_cpu_nanoseconds_total CPU time of each relay worker's thread.
# TYPE switchboard_rtpmanager_relay_worker_cpu_nanoseconds_total counter
switchboard_rtpmanager_relay_worker_cpu_nanoseconds_total{worker=\"0\"} 1500000
switchboard_rtpmanager_relay_worker_cpu_nanoseconds_total{worker=\"1\"} 0
# HELP switchboard_rtpmanager_relay_worker_received_packets_total Datagrams each relay worker read from its legs' sockets (RTP and RTCP).
# TYPE switchboard_rtpmanager_relay_worker_received_packets_total counter
switchboard_rtpmanager_relay_worker_received_packets_total{worker=\"0\"} 3
switchboard_rtpmanager_relay_worker_received_packets_total{worker=\"1\"} 0
# HELP switchboard_rtpmanager_relay_worker_forwarded_packets_total Datagrams each relay worker sent on to bridged legs.
# TYPE switchboard_rtpmanager_relay_worker_forwarded_packets_total counter
switchboard_rtpmanager_relay_worker_forwarded_packets_total{worker=\"0\"} 2
switchboard_rtpmanager_relay_worker_forwarded_packets_total{worker=\"1\"} 0
# HELP switchboard_rtpmanager_relay_worker_overload_dropped_packets_total Packets each relay worker's legs lost to overload (full receive or send queues).
# TYPE switchboard_rtpmanager_relay_worker_overload_dropped_packets_total counter
switchboard_rtpmanager_relay_worker_overload_dropped_packets_total{worker=\"0\"} 9
switchboard_rtpmanager_relay_worker_overload_dropped_packets_total{worker=\"1\"} 0
";
        assert_eq!(render(&snapshot), want);
    }

    #[test]
    fn the_reason_label_is_the_first_line_cut_to_200_characters() {
        let long = "é".repeat(300);
        assert_eq!(reason_label(&long), "é".repeat(200));
        assert_eq!(
            reason_label("tc after: xdp: denied\nverifier log"),
            "tc after: xdp: denied"
        );
        assert_eq!(reason_label(""), "");
    }

    #[test]
    fn each_media_interface_reports_its_mode_and_userspace_packets() {
        let snapshot = Snapshot {
            mode: Mode::Tc,
            interface: "a0".into(),
            reason: "tc as requested".into(),
            kernel_packets: None,
            kernel_directions: 0,
            calls: 0,
            legs: 0,
            port_pairs: 10,
            port_pairs_free: 10,
            draining: false,
            relay_load: RelayLoad {
                committed_pps: 0,
                capacity_pps: 0,
                saturated: false,
            },
            workers: Vec::new(),
            relay: RelayTotals::default(),
            interfaces: vec![
                InterfaceFigures {
                    name: "public".into(),
                    device: "a0".into(),
                    mode: Mode::Tc,
                    userspace_packets: 3,
                },
                InterfaceFigures {
                    name: "private".into(),
                    device: "b0".into(),
                    mode: Mode::Off,
                    userspace_packets: 400,
                },
            ],
        };
        let text = render(&snapshot);
        for line in [
            "switchboard_rtpmanager_interface_fast_path_info{interface=\"public\",device=\"a0\",mode=\"tc\"} 1\n",
            "switchboard_rtpmanager_interface_fast_path_info{interface=\"private\",device=\"b0\",mode=\"off\"} 1\n",
            "switchboard_rtpmanager_interface_userspace_packets_total{interface=\"public\"} 3\n",
            "switchboard_rtpmanager_interface_userspace_packets_total{interface=\"private\"} 400\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn without_a_fast_path_the_kernel_counters_are_left_out() {
        let snapshot = Snapshot {
            mode: Mode::Off,
            interface: String::new(),
            reason: "disabled by --fast-path off".into(),
            kernel_packets: None,
            kernel_directions: 0,
            calls: 0,
            legs: 0,
            port_pairs: 5000,
            port_pairs_free: 5000,
            draining: true,
            relay_load: RelayLoad {
                committed_pps: 0,
                capacity_pps: 0,
                saturated: false,
            },
            workers: Vec::new(),
            relay: RelayTotals::default(),
            interfaces: Vec::new(),
        };
        let text = render(&snapshot);
        assert!(
            text.contains(
                "switchboard_rtpmanager_fast_path_info{mode=\"off\",interface=\"\",reason=\"disabled by --fast-path off\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("kernel_packets_total"), "{text}");
        assert!(
            text.contains("switchboard_rtpmanager_draining 1\n"),
            "{text}"
        );
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with(PREFIX)),
            "{text}"
        );
    }
}
