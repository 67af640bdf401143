//! The signaling REST API as the dashboard reads it: the JSON shapes of
//! `/api/v1/{health,rtpmanagers,registrations,stats,calls,events}`.
//!
//! Fields the dashboard does not show are left out; fields a backend of
//! an older version may lack have defaults, so one missing figure never
//! hides a whole backend.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /api/v1/health`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub version: String,
}

/// `GET /api/v1/rtpmanagers`: the pool of one signaling server.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pool {
    pub total: usize,
    pub healthy: usize,
    pub members: Vec<Manager>,
}

/// Why a manager gets no new calls (`drain` of a pool member).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DrainFlags {
    /// Drained by an operator through the REST API.
    pub operator: bool,
    /// Draining by its own report.
    pub manager: bool,
}

/// One RTP manager as a signaling server reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct Manager {
    #[serde(default)]
    pub id: String,
    pub endpoint: String,
    pub health: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub fast_path: String,
    #[serde(default)]
    pub fast_path_reason: String,
    #[serde(default)]
    pub active_calls: u32,
    #[serde(default)]
    pub ports_free: u32,
    #[serde(default)]
    pub drain: DrainFlags,
    #[serde(default)]
    pub accepting: bool,
}

impl Manager {
    /// The drain state in a word, for the table.
    pub fn drain_label(&self) -> &'static str {
        match (self.drain.operator, self.drain.manager) {
            (false, false) => "",
            (true, false) => "drained by operator",
            (false, true) => "draining",
            (true, true) => "drained by operator, draining",
        }
    }

    /// The fast-path mode, or `—` before the first health answer.
    pub fn fast_path_label(&self) -> &str {
        if self.fast_path.is_empty() {
            "—"
        } else {
            &self.fast_path
        }
    }
}

/// One binding of `GET /api/v1/registrations`.
#[derive(Clone, Debug, Deserialize)]
pub struct Registration {
    pub aor: String,
    pub contact: String,
    /// Seconds left.
    #[serde(default)]
    pub expires: u32,
    #[serde(default)]
    pub expires_at: String,
    #[serde(default)]
    pub registered_at: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub transport: String,
    #[serde(default)]
    pub user_agent: Option<String>,
    /// The signaling node the phone registered through, when the servers
    /// share registrations.
    #[serde(default)]
    pub node: Option<String>,
}

impl Registration {
    /// The user agent, or an empty cell.
    pub fn user_agent_label(&self) -> &str {
        self.user_agent.as_deref().unwrap_or("")
    }

    /// The node it registered through, or an empty cell.
    pub fn node_label(&self) -> &str {
        self.node.as_deref().unwrap_or("")
    }
}

/// `GET /api/v1/stats`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub uptime_secs: u64,
    pub calls: CallStats,
    pub registrations: u64,
}

/// The `calls` part of [`Stats`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CallStats {
    pub active: u64,
    pub total: u64,
    /// Final statuses the callers got, as text keys (`"486"`).
    pub by_status: BTreeMap<String, u64>,
    pub per_second_last_minute: f64,
}

impl CallStats {
    /// Failed final statuses (300 and up), by status, highest count first.
    pub fn failures(&self) -> Vec<(String, u64)> {
        failures_of(&self.by_status)
    }
}

/// The failed final statuses (300 and up, or not a number) of `by_status`
/// with a count, highest count first.
pub fn failures_of(by_status: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut failures: Vec<(String, u64)> = by_status
        .iter()
        .filter(|(status, count)| **count > 0 && status.parse::<u16>().map_or(true, |s| s >= 300))
        .map(|(status, count)| (status.clone(), *count))
        .collect();
    failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    failures
}

/// `GET /api/v1/calls`: one page.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CallPage {
    pub total: usize,
    pub calls: Vec<Call>,
}

/// One party of a call.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Party {
    pub uri: String,
    pub display_name: Option<String>,
    pub address: String,
    pub transport: String,
}

impl Party {
    /// `"Name" <uri>` as a phone shows it, or the URI alone.
    pub fn label(&self) -> String {
        match self.display_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => format!("{name} <{}>", self.uri),
            None => self.uri.clone(),
        }
    }
}

/// Packets and bytes one way.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Flow {
    pub packets: u64,
    pub bytes: u64,
}

/// One leg's media (`a`: caller side, `b`: callee side).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Leg {
    pub leg: String,
    pub codec: Option<String>,
    pub local_address: Option<String>,
    pub remote_address: Option<String>,
    pub latched_address: Option<String>,
    pub offloaded: bool,
    pub rtp_in: Flow,
    pub rtp_out: Flow,
    pub lost: u64,
    pub jitter_us: u64,
    pub kernel_packets: u64,
    pub kernel_share: Option<f64>,
}

impl Leg {
    pub fn codec_label(&self) -> &str {
        self.codec.as_deref().unwrap_or("—")
    }

    /// Jitter in milliseconds with one decimal.
    pub fn jitter_label(&self) -> String {
        format!("{:.1} ms", self.jitter_us as f64 / 1000.0)
    }

    pub fn kernel_share_label(&self) -> String {
        share_label(self.kernel_share)
    }

    pub fn opt<'a>(&self, value: &'a Option<String>) -> &'a str {
        value.as_deref().unwrap_or("—")
    }
}

/// A share in percent, `—` when there is nothing to share.
pub fn share_label(share: Option<f64>) -> String {
    match share {
        Some(share) if share.is_finite() => format!("{:.1} %", share * 100.0),
        _ => "—".to_owned(),
    }
}

/// `CallView` of the calls API.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Call {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub started_at_ms: u64,
    #[serde(default)]
    pub answered_at_ms: Option<u64>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub caller: Party,
    #[serde(default)]
    pub callee: Option<Party>,
    #[serde(default)]
    pub dialled: String,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub manager: Option<String>,
    #[serde(default)]
    pub media_call_id: Option<String>,
    #[serde(default)]
    pub legs: Vec<Leg>,
    #[serde(default)]
    pub media_error: Option<String>,
}

impl Call {
    /// The callee as reached, or the number dialled before it was.
    pub fn callee_label(&self) -> String {
        match &self.callee {
            Some(callee) => callee.label(),
            None => self.dialled.clone(),
        }
    }

    /// The id as a URL path segment.
    pub fn path_id(&self) -> String {
        crate::backends::encode(&self.id)
    }

    /// `m:ss` or `h:mm:ss` (the page's script ticks it on).
    pub fn duration_label(&self) -> String {
        let total = self.duration_ms / 1000;
        let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
        if h > 0 {
            format!("{h}:{m:02}:{s:02}")
        } else {
            format!("{m}:{s:02}")
        }
    }

    pub fn route_label(&self) -> &str {
        self.route.as_deref().unwrap_or("—")
    }

    pub fn manager_label(&self) -> &str {
        self.manager.as_deref().unwrap_or("—")
    }

    /// The codec of the first leg that has one.
    pub fn codec_label(&self) -> &str {
        self.legs
            .iter()
            .find_map(|l| l.codec.as_deref())
            .unwrap_or("—")
    }

    /// The share of packets in, over both legs, that the kernel forwarded.
    pub fn kernel_share(&self) -> Option<f64> {
        kernel_share(self.legs.iter())
    }

    pub fn kernel_share_label(&self) -> String {
        share_label(self.kernel_share())
    }
}

/// Kernel-forwarded packets over packets in, summed over `legs`.
pub fn kernel_share<'a>(legs: impl Iterator<Item = &'a Leg>) -> Option<f64> {
    let (kernel, total) = legs.fold((0u64, 0u64), |(k, t), leg| {
        (k + leg.kernel_packets, t + leg.rtp_in.packets)
    });
    (total > 0).then(|| kernel as f64 / total as f64)
}

/// `GET /api/v1/calls/{id}`: a call with its SIP history and SDP.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: Call,
    #[serde(default)]
    pub sip: Vec<SipMessage>,
    #[serde(default)]
    pub sip_truncated: bool,
    #[serde(default)]
    pub sdp: Sdp,
}

/// One SIP message of a call, as it crossed the switchboard.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SipMessage {
    pub at_ms: u64,
    /// `in` (to the switchboard) or `out`.
    pub direction: String,
    /// `a` (caller side) or `b` (callee side).
    pub leg: String,
    #[serde(default)]
    pub peer: String,
    pub first_line: String,
    #[serde(default)]
    pub call_id: String,
    #[serde(default)]
    pub cseq: String,
}

/// Each leg's SDP before and after the manager rewrote it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Sdp {
    pub a_offer: Option<String>,
    pub a_answer: Option<String>,
    pub b_offer: Option<String>,
    pub b_answer: Option<String>,
}

/// An event of `GET /api/v1/events` the dashboard acts on.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    CallCreated {
        id: String,
        at_ms: u64,
        caller: EventParty,
        callee: String,
    },
    CallRinging {
        id: String,
    },
    CallAnswered {
        id: String,
        at_ms: u64,
    },
    CallEnded {
        id: String,
    },
    RegistrationAdded {},
    RegistrationRefreshed {},
    RegistrationRemoved {},
    RegistrationExpired {},
    ManagerHealth {},
    ManagerDrain {},
}

/// The caller of a `call_created` event.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct EventParty {
    pub uri: String,
    pub display_name: Option<String>,
    pub address: String,
    pub transport: String,
}

impl From<EventParty> for Party {
    fn from(p: EventParty) -> Party {
        Party {
            uri: p.uri,
            display_name: p.display_name,
            address: p.address,
            transport: p.transport,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_view_of_the_agreed_shape_parses_with_its_legs() {
        let json = r#"{"id":"c1","state":"answered","started_at_ms":1764950000000,
          "answered_at_ms":1764950003000,"duration_ms":12345,
          "caller":{"uri":"sip:1001@host","display_name":"Alice","address":"192.0.2.1:5060","transport":"udp"},
          "callee":{"uri":"sip:1002@192.0.2.2:5062","display_name":null,"address":"192.0.2.2:5062","transport":"udp"},
          "dialled":"sip:1002@switchboard.example","route":"extensions","manager":"edge-a","media_call_id":"m1",
          "legs":[{"leg":"a","codec":"PCMU/8000","local_address":"10.0.0.1:20000","remote_address":"192.0.2.1:4000",
                   "latched_address":"192.0.2.1:4000","offloaded":true,"rtp_in":{"packets":1000,"bytes":172000},
                   "rtp_out":{"packets":990,"bytes":170280},"lost":2,"jitter_us":1500,"kernel_packets":990,"kernel_share":0.99},
                  {"leg":"b","codec":"PCMU/8000","local_address":null,"remote_address":null,"latched_address":null,
                   "offloaded":false,"rtp_in":{"packets":0,"bytes":0},"rtp_out":{"packets":0,"bytes":0},
                   "lost":0,"jitter_us":0,"kernel_packets":0,"kernel_share":null}],
          "media_error":null}"#;
        let call: Call = serde_json::from_str(json).expect("CallView parses");
        assert_eq!(call.caller.label(), "Alice <sip:1001@host>");
        assert_eq!(call.callee_label(), "sip:1002@192.0.2.2:5062");
        assert_eq!(call.codec_label(), "PCMU/8000");
        assert_eq!(call.legs[0].jitter_label(), "1.5 ms");
        assert_eq!(call.legs[1].kernel_share_label(), "—");
        assert_eq!(call.kernel_share_label(), "99.0 %");
    }

    #[test]
    fn events_parse_by_type_and_others_are_known_but_ignored() {
        let created: Event = serde_json::from_str(
            r#"{"type":"call_created","id":"c1","at_ms":5,"caller":{"uri":"sip:a@b","display_name":null,"address":"1.2.3.4:5","transport":"udp"},"callee":"sip:1002@x"}"#,
        )
        .expect("created");
        assert!(matches!(created, Event::CallCreated { ref id, .. } if id == "c1"));
        let ended: Event = serde_json::from_str(
            r#"{"type":"call_ended","id":"c1","at_ms":9,"final_status":200,"ended_by":"caller","duration_ms":4}"#,
        )
        .expect("ended");
        assert_eq!(ended, Event::CallEnded { id: "c1".into() });
        let drain: Event =
            serde_json::from_str(r#"{"type":"manager_drain","id":"m","draining":true}"#)
                .expect("drain");
        assert_eq!(drain, Event::ManagerDrain {});
    }

    #[test]
    fn failures_are_statuses_of_300_and_up_most_frequent_first() {
        let stats: Stats = serde_json::from_str(
            r#"{"uptime_secs":1,"calls":{"active":0,"total":9,"by_status":{"200":3,"486":1,"404":5,"487":0},"per_second_last_minute":0.05},
                "registrations":0,"transactions":0,"dialogs":0,"auth":{"failures":0,"lockouts":0}}"#,
        )
        .expect("stats");
        assert_eq!(
            stats.calls.failures(),
            vec![("404".to_owned(), 5), ("486".to_owned(), 1)]
        );
    }
}
