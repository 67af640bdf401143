//! The signaling server's own times of its media requests
//! (`switchboard_media_request_seconds{op,rtpmanager}` on `/metrics`),
//! read before and after a rate: what the offers and answers an INVITE
//! and its 200 wait for took, as the B2BUA saw them.

use std::collections::BTreeMap;

const SERIES: &str = "switchboard_media_request_seconds";

/// One operation's histogram, every manager summed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    count: f64,
    sum: f64,
    /// Cumulative counts by upper bound (seconds), `+Inf` as infinity.
    buckets: BTreeMap<Bound, f64>,
}

/// A bucket's upper bound, ordered (an `f64` is not `Ord`).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One operation's requests over a rate.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OpFigures {
    /// `offer`, `answer`, `delete` ...
    pub op: String,
    pub requests: u64,
    pub mean_ms: f64,
    /// The bucket bound 99 % of them stayed under (infinite past the last).
    pub p99_under_ms: f64,
}

/// Every operation's histogram at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MediaRequests(BTreeMap<String, Histogram>);

impl MediaRequests {
    /// Scrapes the server's `/metrics` on `rest_port`; empty when it cannot
    /// (the figures are then left out, not made up).
    pub(super) fn scrape(rest_port: u16) -> MediaRequests {
        crate::util::http_get(rest_port, "/metrics")
            .map(|text| MediaRequests::parse(&text))
            .unwrap_or_default()
    }

    /// Reads the series from a Prometheus text exposition.
    fn parse(text: &str) -> MediaRequests {
        let mut ops: BTreeMap<String, Histogram> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(SERIES) else {
                continue;
            };
            let Some((kind, rest)) = rest.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|pair| {
                    let (key, quoted) = pair.split_once('=')?;
                    (key == name).then(|| quoted.trim_matches('"').to_owned())
                })
            };
            let Some(op) = label("op") else { continue };
            let histogram = ops.entry(op).or_default();
            match kind {
                "_count" => histogram.count += value,
                "_sum" => histogram.sum += value,
                "_bucket" => {
                    let bound = match label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    *histogram.buckets.entry(Bound(bound)).or_default() += value;
                }
                _ => {}
            }
        }
        MediaRequests(ops)
    }

    /// What was timed between `before` and `self`, per operation.
    pub(super) fn since(&self, before: &MediaRequests) -> Vec<OpFigures> {
        let mut figures = Vec::new();
        for (op, after) in &self.0 {
            let earlier = before.0.get(op).cloned().unwrap_or_default();
            let count = after.count - earlier.count;
            if count < 1.0 {
                continue;
            }
            let mean_ms = 1000.0 * (after.sum - earlier.sum) / count;
            let p99_under_ms = after
                .buckets
                .iter()
                .find(|(bound, cumulative)| {
                    let below = *cumulative - earlier.buckets.get(bound).copied().unwrap_or(0.0);
                    below >= 0.99 * count
                })
                .map_or(f64::INFINITY, |(bound, _)| 1000.0 * bound.0);
            figures.push(OpFigures {
                op: op.clone(),
                requests: count as u64,
                mean_ms,
                p99_under_ms,
            });
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(offers: [u64; 4], sum: f64) -> String {
        let [a, b, c, inf] = offers;
        format!(
            "# TYPE switchboard_media_request_seconds histogram\n\
             switchboard_media_request_seconds_sum{{op=\"offer\",rtpmanager=\"m1\"}} {sum}\n\
             switchboard_media_request_seconds_count{{op=\"offer\",rtpmanager=\"m1\"}} {inf}\n\
             switchboard_media_request_seconds_bucket{{op=\"offer\",rtpmanager=\"m1\",le=\"0.001\"}} {a}\n\
             switchboard_media_request_seconds_bucket{{op=\"offer\",rtpmanager=\"m1\",le=\"0.0025\"}} {b}\n\
             switchboard_media_request_seconds_bucket{{op=\"offer\",rtpmanager=\"m1\",le=\"0.005\"}} {c}\n\
             switchboard_media_request_seconds_bucket{{op=\"offer\",rtpmanager=\"m1\",le=\"+Inf\"}} {inf}\n\
             switchboard_media_request_seconds_count{{op=\"answer\",rtpmanager=\"m1\"}} 3\n\
             switchboard_media_request_seconds_count{{op=\"offer\",rtpmanager=\"m2\"}} 0\n\
             switchboard_invite_final_response_seconds_count 9\n"
        )
    }

    #[test]
    fn a_rates_requests_are_the_difference_of_two_scrapes() {
        let before = MediaRequests::parse(&exposition([10, 10, 10, 10], 0.005));
        // 200 more offers: 150 within 1 ms, 48 more within 2.5 ms, 2 more
        // within 5 ms; 0.2 s in all.
        let after = MediaRequests::parse(&exposition([160, 208, 210, 210], 0.205));
        let figures = after.since(&before);
        assert_eq!(figures.len(), 1, "the answers did not change: {figures:?}");
        let offers = &figures[0];
        assert_eq!((offers.op.as_str(), offers.requests), ("offer", 200));
        assert!((offers.mean_ms - 1.0).abs() < 1e-9, "{offers:?}");
        // 198 of 200 (99 %) within 2.5 ms.
        assert!((offers.p99_under_ms - 2.5).abs() < 1e-9, "{offers:?}");
    }

    #[test]
    fn a_server_without_the_series_gives_no_figures() {
        let nothing = MediaRequests::parse("switchboard_calls_active 0\n");
        assert!(nothing.since(&MediaRequests::default()).is_empty());
    }
}
