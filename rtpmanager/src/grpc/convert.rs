//! Control-protocol messages from and to the manager's domain types.

use std::time::Duration;

use switchboard_proto::v1;

use super::EventStream;
use crate::driver::Published;
use crate::engine::Event;
use crate::fastpath::{FastPath, Mode};
use crate::playback::{PlayUpdate, PlaybackId};
use crate::session::{Family, LegOptions, LegView, SessionTable};
use crate::stats::{LegStats, StreamCounters};

pub(super) fn options_of(o: Option<v1::LegOptions>) -> LegOptions {
    let o = o.unwrap_or_default();
    LegOptions {
        strict_source: o.strict_source,
        media_timeout: (o.media_timeout_secs > 0)
            .then(|| Duration::from_secs(u64::from(o.media_timeout_secs))),
        allow_transcoding: o.allow_transcoding,
        family: match v1::AddressFamily::try_from(o.address_family) {
            Ok(v1::AddressFamily::Ipv4) => Some(Family::V4),
            Ok(v1::AddressFamily::Ipv6) => Some(Family::V6),
            // Unspecified, or a value of a newer protocol: follow the SDP.
            Ok(v1::AddressFamily::Unspecified) | Err(_) => None,
        },
        label: o.label,
        interface: (!o.interface.is_empty()).then_some(o.interface),
    }
}

pub(super) fn leg_info(view: &LegView, offloaded: bool) -> v1::LegInfo {
    v1::LegInfo {
        call_id: view.call_id.clone(),
        leg_id: view.leg_id.clone(),
        local_address: view.local_address.to_string(),
        rtp_port: view.rtp_port.into(),
        rtcp_port: view.rtcp_port.into(),
        rtcp_mux: view.rtcp_mux,
        remote_address: view.remote.map(|r| r.to_string()).unwrap_or_default(),
        // Only a locked source: a candidate may still be replaced.
        latched_address: view
            .shared
            .source_locked
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| view.shared.destination())
            .flatten()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        codec: view.codec.clone().unwrap_or_default(),
        bridged_to: view.bridged_to.clone().unwrap_or_default(),
        offloaded,
        label: view.label.clone(),
        interface: view.interface.clone(),
    }
}

fn counters(c: StreamCounters) -> Option<v1::StreamCounters> {
    Some(v1::StreamCounters {
        packets: c.packets,
        bytes: c.bytes,
    })
}

/// The control protocol's statistics of one leg.
pub(super) fn stats_proto(s: LegStats) -> v1::LegStats {
    v1::LegStats {
        call_id: s.call_id,
        leg_id: s.leg_id,
        rtp_in: counters(s.rtp_in),
        rtcp_in: counters(s.rtcp_in),
        rtp_out: counters(s.rtp_out),
        rtcp_out: counters(s.rtcp_out),
        source_mismatch_drops: s.source_mismatch_drops,
        overload_drops: s.overload_drops,
        rtp_lost: s.rtp_lost,
        jitter_us: s.jitter_us,
        last_packet_ms: s.last_packet_ms,
        peer_report: Some(v1::RtcpReport {
            fraction_lost: s.peer_report.fraction_lost,
            cumulative_lost: s.peer_report.cumulative_lost,
            jitter_us: s.peer_report.jitter_us,
            rtt_us: 0,
        }),
        kernel_packets: s.kernel_packets,
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The control protocol's form of a published event.
pub(super) fn event_proto(p: Published) -> v1::ManagerEvent {
    use v1::manager_event::Event as E;
    let event = match p.event {
        Event::Offload(e) => E::Offload(v1::OffloadChanged {
            call_id: e.from.call_id.to_string(),
            from_leg: e.from.leg_id.to_string(),
            to_leg: e.to.map(|t| t.leg_id.to_string()).unwrap_or_default(),
            offloaded: e.offloaded,
            reason: e.reason.to_string(),
        }),
        Event::MediaTimeout {
            call_id,
            leg_id,
            idle,
        } => E::MediaTimeout(v1::MediaTimeout {
            call_id,
            leg_id,
            idle_secs: secs(idle),
        }),
        Event::Dtmf {
            call_id,
            leg_id,
            digit,
            duration,
            volume,
        } => E::Dtmf(v1::DtmfReceived {
            call_id,
            leg_id,
            digit: digit.to_string(),
            duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
            volume: volume.into(),
        }),
        Event::Reaped {
            call_id,
            leg_id,
            idle,
        } => E::Reaped(v1::LegReaped {
            call_id,
            leg_id,
            idle_secs: secs(idle),
        }),
    };
    v1::ManagerEvent {
        timestamp_ms: p.at_ms,
        event: Some(event),
    }
}

/// The control protocol's name for a fast-path mode.
pub fn mode_proto(mode: Mode) -> v1::FastPathMode {
    match mode {
        Mode::Off => v1::FastPathMode::Off,
        Mode::XdpNative => v1::FastPathMode::XdpNative,
        Mode::XdpGeneric => v1::FastPathMode::XdpGeneric,
        Mode::Tc => v1::FastPathMode::Tc,
    }
}

/// Every media interface with the fast-path mode on its device.
pub(super) fn media_interfaces(
    table: &SessionTable,
    fast_path: &FastPath,
) -> Vec<v1::MediaInterface> {
    table
        .interfaces()
        .iter()
        .map(|i| {
            let attachment = fast_path
                .attachments()
                .iter()
                .find(|a| a.device == i.device);
            let (min, max) = i.pool.range();
            v1::MediaInterface {
                name: i.name.clone(),
                device: i.device.clone(),
                fast_path: mode_proto(fast_path.mode_on(&i.device)).into(),
                fast_path_reason: attachment
                    .map_or_else(|| fast_path.reason().to_owned(), |a| a.reason.clone()),
                advertised_addresses: i
                    .advertise_v4
                    .iter()
                    .chain(i.advertise_v6.iter())
                    .map(ToString::to_string)
                    .collect(),
                rtp_port_min: min.into(),
                rtp_port_max: max.into(),
            }
        })
        .collect()
}

/// The Play stream: each update as a PlayEvent of `playback_id`.
pub(super) fn play_stream(
    playback_id: PlaybackId,
    updates: tokio::sync::mpsc::Receiver<PlayUpdate>,
) -> EventStream<v1::PlayEvent> {
    use v1::play_event::Event;
    let stream = tokio_stream::wrappers::ReceiverStream::new(updates);
    Box::pin(tokio_stream::StreamExt::map(stream, move |update| {
        let event = match update {
            PlayUpdate::Started { file, codec } => Event::Started(v1::PlayStarted {
                file,
                codec: codec.to_owned(),
            }),
            PlayUpdate::Progress {
                file,
                position_ms,
                duration_ms,
            } => Event::Progress(v1::PlayProgress {
                file,
                position_ms,
                duration_ms,
            }),
            PlayUpdate::Completed => Event::Completed(v1::PlayCompleted {}),
            PlayUpdate::Stopped(reason) => Event::Stopped(v1::PlayStopped {
                reason: reason.to_string(),
            }),
            PlayUpdate::Error { file, reason } => Event::Error(v1::PlayError { file, reason }),
        };
        Ok(v1::PlayEvent {
            playback_id: playback_id.0.clone(),
            event: Some(event),
        })
    }))
}
