//! The API's JSON as tables and short reports for people. Fields are read
//! leniently (a missing one shows as `-`), so a newer server's extra fields
//! or an older one's missing ones never stop the CLI.

use serde_json::Value;

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A field as text: strings as they are, numbers and booleans printed,
/// null or missing as `-`.
pub fn text(value: &Value, path: &[&str]) -> String {
    let mut at = value;
    for key in path {
        match at.get(key) {
            Some(next) => at = next,
            None => return "-".to_owned(),
        }
    }
    match at {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds as `1h02m03s`, `2m05s` or `7s`.
pub fn duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_owned();
    };
    let secs = ms / 1000;
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// The kernel's share of a leg's packets, as a percentage.
fn kernel_share(leg: &Value) -> String {
    leg.get("kernel_share")
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), |share| format!("{:.1}%", share * 100.0))
}

fn leg_packets(leg: &Value) -> String {
    format!(
        "{}/{}",
        text(leg, &["rtp_in", "packets"]),
        text(leg, &["rtp_out", "packets"])
    )
}

/// `GET /api/v1/calls`.
pub fn calls(page: &Value) -> String {
    let rows: Vec<Vec<String>> = page
        .get("calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|call| {
            let legs = call.get("legs").and_then(Value::as_array);
            let leg = |name: &str| legs.and_then(|l| l.iter().find(|g| g["leg"] == name));
            let codec = leg("a").map_or_else(|| "-".to_owned(), |l| text(l, &["codec"]));
            vec![
                text(call, &["id"]),
                text(call, &["state"]),
                text(call, &["caller", "uri"]),
                text(call, &["dialled"]),
                duration(call.get("duration_ms").and_then(Value::as_u64)),
                text(call, &["route"]),
                text(call, &["manager"]),
                codec,
                leg("a").map_or_else(|| "-".to_owned(), leg_packets),
                leg("b").map_or_else(|| "-".to_owned(), leg_packets),
                leg("a").map_or_else(|| "-".to_owned(), kernel_share),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "STATE", "CALLER", "DIALLED", "DURATION", "ROUTE", "MANAGER", "CODEC",
            "A IN/OUT", "B IN/OUT", "KERNEL",
        ],
        &rows,
    );
    let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
    if total > rows.len() as u64 {
        out.push_str(&format!(
            "({} of {total} calls; --limit or --after {} for more)\n",
            rows.len(),
            text(page, &["next"])
        ));
    }
    out
}

/// `GET /api/v1/calls/{id}`: the call, its legs and its SIP messages.
pub fn call(call: &Value) -> String {
    let mut out = String::new();
    for (label, path) in [
        ("id", &["id"][..]),
        ("state", &["state"]),
        ("caller", &["caller", "uri"]),
        ("caller address", &["caller", "address"]),
        ("callee", &["callee", "uri"]),
        ("dialled", &["dialled"]),
        ("route", &["route"]),
        ("manager", &["manager"]),
        ("media call id", &["media_call_id"]),
        ("media error", &["media_error"]),
    ] {
        out.push_str(&format!("{label:<15} {}\n", text(call, path)));
    }
    out.push_str(&format!(
        "{:<15} {}\n\n",
        "duration",
        duration(call.get("duration_ms").and_then(Value::as_u64))
    ));
    let legs: Vec<Vec<String>> = call
        .get("legs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|leg| {
            vec![
                text(leg, &["leg"]),
                text(leg, &["codec"]),
                text(leg, &["latched_address"]),
                leg_packets(leg),
                text(leg, &["lost"]),
                text(leg, &["jitter_us"]),
                kernel_share(leg),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "LEG",
            "CODEC",
            "LATCHED",
            "RTP IN/OUT",
            "LOST",
            "JITTER µs",
            "KERNEL",
        ],
        &legs,
    ));
    let messages: Vec<Vec<String>> = call
        .get("sip")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let arrow = match (m["leg"].as_str(), m["direction"].as_str()) {
                (Some("a"), Some("in")) => "caller → sb",
                (Some("a"), _) => "caller ← sb",
                (_, Some("in")) => "sb ← callee",
                _ => "sb → callee",
            };
            vec![
                text(m, &["at_ms"]),
                arrow.to_owned(),
                text(m, &["first_line"]),
                text(m, &["cseq"]),
            ]
        })
        .collect();
    if !messages.is_empty() {
        out.push('\n');
        out.push_str(&table(&["AT (ms)", "", "MESSAGE", "CSEQ"], &messages));
    }
    out
}

/// `GET /api/v1/registrations` (a list) or `/{aor}` (`bindings`).
pub fn registrations(value: &Value) -> String {
    let list = value
        .as_array()
        .or_else(|| value.get("bindings").and_then(Value::as_array))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                text(b, &["aor"]),
                text(b, &["contact"]),
                format!("{}/{}", text(b, &["source"]), text(b, &["transport"])),
                text(b, &["user_agent"]),
                text(b, &["expires"]),
            ]
        })
        .collect();
    table(
        &["AOR", "CONTACT", "SOURCE", "USER AGENT", "EXPIRES (s)"],
        &rows,
    )
}

/// `GET /api/v1/rtpmanagers`.
pub fn managers(pool: &Value) -> String {
    let rows: Vec<Vec<String>> = pool
        .get("members")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let drained = match (
                m["drain"]["operator"].as_bool(),
                m["drain"]["manager"].as_bool(),
            ) {
                (Some(true), _) => "operator",
                (_, Some(true)) => "manager",
                _ => "-",
            };
            vec![
                text(m, &["id"]),
                text(m, &["endpoint"]),
                text(m, &["health"]),
                text(m, &["fast_path"]),
                text(m, &["active_calls"]),
                text(m, &["ports_free"]),
                drained.to_owned(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "ENDPOINT",
            "HEALTH",
            "FAST PATH",
            "CALLS",
            "PORTS FREE",
            "DRAINED BY",
        ],
        &rows,
    );
    out.push_str(&format!(
        "{} managers, {} healthy, {} calls\n",
        text(pool, &["total"]),
        text(pool, &["healthy"]),
        text(pool, &["active_calls"])
    ));
    out
}

/// Any other answer: its fields one per line, nested ones dotted.
pub fn fields(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, inner, out);
                }
            }
            other => out.push((
                prefix.to_owned(),
                text(&serde_json::json!({"v": other}), &["v"]),
            )),
        }
    }
    let mut rows = Vec::new();
    walk("", value, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_pads_columns_to_the_widest_cell() {
        let out = table(
            &["ID", "STATE"],
            &[
                vec!["c1".into(), "ringing".into()],
                vec!["call-22".into(), "up".into()],
            ],
        );
        assert_eq!(out, "ID       STATE\nc1       ringing\ncall-22  up\n");
    }

    #[test]
    fn a_call_row_shows_parties_duration_packets_and_kernel_share() {
        let page = json!({"total": 3, "next": "c1", "calls": [{
        "id": "c1", "state": "answered", "duration_ms": 125_000,
        "caller": {"uri": "sip:1001@sb"}, "dialled": "sip:1002@sb", "route": "local",
        "manager": "m1",
        "legs": [
            {"leg": "a", "codec": "PCMU/8000", "rtp_in": {"packets": 100}, "rtp_out": {"packets": 98}, "kernel_share": 0.995},
            {"leg": "b", "codec": "PCMU/8000", "rtp_in": {"packets": 97}, "rtp_out": {"packets": 99}, "kernel_share": null}
        ]}]});
        let out = calls(&page);
        let row = out.lines().nth(1).expect("a row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "c1",
                "answered",
                "sip:1001@sb",
                "sip:1002@sb",
                "2m05s",
                "local",
                "m1",
                "PCMU/8000",
                "100/98",
                "97/99",
                "99.5%"
            ]
        );
        assert!(
            out.ends_with("(1 of 3 calls; --limit or --after c1 for more)\n"),
            "{out}"
        );
    }

    #[test]
    fn the_sip_history_reads_as_a_ladder() {
        let detail = json!({"id": "c1", "legs": [], "sip": [
            {"at_ms": 1, "direction": "in", "leg": "a", "first_line": "INVITE sip:1002@sb SIP/2.0", "cseq": "1 INVITE"},
            {"at_ms": 2, "direction": "out", "leg": "b", "first_line": "INVITE sip:1002@10.0.0.2 SIP/2.0", "cseq": "1 INVITE"}
        ]});
        let out = call(&detail);
        assert!(
            out.contains("caller → sb  INVITE sip:1002@sb SIP/2.0"),
            "{out}"
        );
        assert!(
            out.contains("sb → callee  INVITE sip:1002@10.0.0.2 SIP/2.0"),
            "{out}"
        );
    }

    #[test]
    fn missing_fields_show_as_a_dash_and_nested_ones_dotted() {
        assert_eq!(text(&json!({"a": null}), &["a"]), "-");
        assert_eq!(text(&json!({}), &["a", "b"]), "-");
        assert_eq!(
            fields(&json!({"calls": {"active": 2}, "uptime_secs": 5})),
            "calls.active  2\nuptime_secs   5\n"
        );
    }
}
