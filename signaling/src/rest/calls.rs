//! `/api/v1/calls`: the calls in progress with each leg's live media
//! figures, one call with its SIP ladder and SDP, and the operator's
//! hang-up.
//!
//! The B2BUA answers on the SIP core's thread (a [`CallsHandle`] query);
//! the media figures come from each call's manager (`GetStats`), asked
//! concurrently with a short timeout: a manager that does not answer gives
//! its calls a `media_error`, never a hung request.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use switchboard_proto::v1;
use tokio::task::JoinSet;

use super::error::PathParam;
use super::{ApiState, AppError};
use crate::b2bua::executor::figures;
use crate::b2bua::view::{
    CallDetail, CallSnapshot, CallsHandle, HangUp, QueryError, DEFAULT_PAGE, MAX_PAGE,
};
use crate::b2bua::{Counters, LegFigures};
use crate::rtpmanager_client::describe;
use crate::rtpmanager_pool::ManagerPool;

/// How long the figures of a page wait for the managers.
const STATS_TIMEOUT: Duration = Duration::from_millis(1000);

const NO_CALLS: &str = "no call handler runs (no dialplan) or the SIP core stopped";
const CORE_BUSY: &str = "the SIP core is busy; retry";

impl From<QueryError> for AppError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::NotRunning => AppError::Unavailable(NO_CALLS),
            QueryError::Busy => AppError::Unavailable(CORE_BUSY),
        }
    }
}

fn handle(state: &ApiState) -> Result<&CallsHandle, AppError> {
    state.calls.as_ref().ok_or(AppError::Unavailable(NO_CALLS))
}

/// One leg as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct LegView {
    leg: String,
    codec: Option<String>,
    local_address: Option<String>,
    remote_address: Option<String>,
    latched_address: Option<String>,
    offloaded: bool,
    rtp_in: Counters,
    rtp_out: Counters,
    lost: i64,
    jitter_us: u32,
    kernel_packets: u64,
    kernel_share: Option<f64>,
}

/// A call with its legs' figures (and, for one call, its history).
#[derive(Debug, Serialize)]
pub(super) struct CallView {
    #[serde(flatten)]
    call: CallSnapshot,
    legs: Vec<LegView>,
    media_error: Option<String>,
    #[serde(flatten)]
    detail: Option<CallDetail>,
}

#[derive(Debug, Serialize)]
pub(super) struct CallList {
    total: usize,
    calls: Vec<CallView>,
    next: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Ending {
    id: String,
    state: &'static str,
}

/// `limit` and `after` of the query string.
fn page_params(query: Option<&str>) -> Result<(usize, Option<String>), AppError> {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        AppError::BadRequest(format!("limit must be a number from 1 to {MAX_PAGE}"))
                    })?;
            }
            "after" => {
                let valid = !value.is_empty()
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !valid {
                    return Err(AppError::BadRequest(
                        "after must be the id of a call of the previous page".to_owned(),
                    ));
                }
                after = Some(value.to_owned());
            }
            _ => {}
        }
    }
    Ok((limit, after))
}

/// `GET /api/v1/calls?limit=N&after=ID`.
pub(super) async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<CallList>, AppError> {
    let (limit, after) = page_params(query.as_deref())?;
    let page = handle(&state)?
        .list(limit, after)
        .await?
        .map_err(|bad| AppError::BadRequest(bad.to_string()))?;
    let calls = with_figures(&state.pool, page.calls).await;
    Ok(Json(CallList {
        total: page.total,
        calls,
        next: page.next,
    }))
}

/// `GET /api/v1/calls/{id}`: 404 when no call has the id.
pub(super) async fn one(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
) -> Result<Json<CallView>, AppError> {
    let call = handle(&state)?
        .get(id.clone())
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no call in progress has the id {id:?}")))?;
    let mut views = with_figures(&state.pool, vec![call]).await;
    views
        .pop()
        .map(Json)
        .ok_or_else(|| AppError::Internal("a call view went missing".to_owned()))
}

/// `DELETE /api/v1/calls/{id}`: BYE or CANCEL to each side, media deleted.
pub(super) async fn hang_up(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
) -> Result<impl IntoResponse, AppError> {
    match handle(&state)?.hang_up(id.clone()).await? {
        HangUp::Ending => Ok((
            StatusCode::ACCEPTED,
            Json(Ending {
                id,
                state: "ending",
            }),
        )),
        HangUp::NotFound => Err(AppError::NotFound(format!(
            "no call in progress has the id {id:?}"
        ))),
    }
}

/// Each call with its manager's figures, asked for all calls at once.
async fn with_figures(pool: &ManagerPool, calls: Vec<CallSnapshot>) -> Vec<CallView> {
    let mut asks = JoinSet::new();
    for (index, call) in calls.iter().enumerate() {
        let Some(manager) = call.manager.clone().filter(|_| call.has_media) else {
            continue;
        };
        let Some(member) = pool.index_of(&manager) else {
            continue;
        };
        let mut client = pool.client(member);
        let call_id = call.media_call_id.clone();
        asks.spawn(async move {
            let asked = client.get_stats(v1::GetStatsRequest {
                call_id,
                leg_id: String::new(),
            });
            let answer = match tokio::time::timeout(STATS_TIMEOUT, asked).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(format!("manager {manager}: {}", describe(&status))),
                Err(_) => Err(format!(
                    "manager {manager} did not answer within {} ms",
                    STATS_TIMEOUT.as_millis()
                )),
            };
            (index, answer)
        });
    }
    let mut answers: Vec<Option<Result<v1::GetStatsResponse, String>>> =
        calls.iter().map(|_| None).collect();
    while let Some(joined) = asks.join_next().await {
        if let Ok((index, answer)) = joined {
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(answer);
            }
        }
    }
    calls
        .into_iter()
        .zip(answers)
        .map(|(mut call, answer)| {
            let detail = call.detail.take();
            let (legs, media_error) = match answer {
                Some(Ok(stats)) => (legs_of(&stats), None),
                Some(Err(error)) => (Vec::new(), Some(error)),
                None if call.has_media => match &call.manager {
                    Some(manager) => (
                        Vec::new(),
                        Some(format!("manager {manager} is not configured")),
                    ),
                    None => (Vec::new(), Some("no manager took the call yet".to_owned())),
                },
                None => (Vec::new(), None),
            };
            CallView {
                call,
                legs,
                media_error,
                detail,
            }
        })
        .collect()
}

/// The legs of a `GetStats` answer, in leg order.
fn legs_of(stats: &v1::GetStatsResponse) -> Vec<LegView> {
    let mut legs: Vec<LegView> = stats
        .legs
        .iter()
        .map(|s| {
            let info = stats.info.iter().find(|i| i.leg_id == s.leg_id);
            leg_view(&figures(s), info)
        })
        .collect();
    legs.sort_by(|a, b| a.leg.cmp(&b.leg));
    legs
}

fn leg_view(figures: &LegFigures, info: Option<&v1::LegInfo>) -> LegView {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    LegView {
        leg: figures.leg.as_str().to_owned(),
        codec: info.and_then(|i| text(&i.codec)),
        local_address: info.and_then(|i| {
            let ip: std::net::IpAddr = i.local_address.parse().ok()?;
            let port = u16::try_from(i.rtp_port).ok()?;
            Some(std::net::SocketAddr::new(ip, port).to_string())
        }),
        remote_address: info.and_then(|i| text(&i.remote_address)),
        latched_address: info.and_then(|i| text(&i.latched_address)),
        offloaded: info.is_some_and(|i| i.offloaded),
        rtp_in: figures.rtp_in,
        rtp_out: figures.rtp_out,
        lost: figures.lost,
        jitter_us: figures.jitter_us,
        kernel_packets: figures.kernel_packets,
        kernel_share: figures.kernel_share(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parameters_are_checked() {
        assert_eq!(page_params(None), Ok((DEFAULT_PAGE, None)));
        assert_eq!(
            page_params(Some("limit=5&after=abc-1f")),
            Ok((5, Some("abc-1f".to_owned())))
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "after=", "after=a%2Fb"] {
            assert!(
                matches!(page_params(Some(bad)), Err(AppError::BadRequest(_))),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn a_leg_shows_the_managers_figures_and_its_kernel_share() {
        let stats = v1::GetStatsResponse {
            legs: vec![v1::LegStats {
                leg_id: "a".to_owned(),
                rtp_in: Some(v1::StreamCounters {
                    packets: 1000,
                    bytes: 172_000,
                }),
                kernel_packets: 995,
                rtp_lost: 2,
                jitter_us: 300,
                ..v1::LegStats::default()
            }],
            info: vec![v1::LegInfo {
                leg_id: "a".to_owned(),
                local_address: "203.0.113.1".to_owned(),
                rtp_port: 30000,
                remote_address: "192.0.2.1:40000".to_owned(),
                latched_address: String::new(),
                codec: "PCMU/8000".to_owned(),
                offloaded: true,
                ..v1::LegInfo::default()
            }],
        };
        let legs = legs_of(&stats);
        let json = serde_json::to_value(&legs).expect("json");
        assert_eq!(json[0]["leg"], "a");
        assert_eq!(json[0]["codec"], "PCMU/8000");
        assert_eq!(json[0]["local_address"], "203.0.113.1:30000");
        assert_eq!(json[0]["remote_address"], "192.0.2.1:40000");
        assert_eq!(json[0]["latched_address"], serde_json::Value::Null);
        assert_eq!(json[0]["offloaded"], true);
        assert_eq!(json[0]["rtp_in"]["packets"], 1000);
        assert_eq!(json[0]["lost"], 2);
        assert_eq!(json[0]["kernel_share"], 0.995);
    }
}
