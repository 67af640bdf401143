//! The JSON dialplan: which actions a new call runs, chosen by the called
//! number.
//!
//! The format is the seed's:
//!
//! ```json
//! {"version": "1.0", "routes": [
//!   {"id": "ext", "name": "Extensions", "pattern": "1XXX", "priority": 20,
//!    "enabled": true, "actions": [{"type": "dial", "params": {"targets": ["user/${destination}"]}}]}
//! ]}
//! ```
//!
//! Routes are tried by ascending `priority`; among routes of equal priority
//! the most specific matching pattern wins (see [`pattern`]), then file
//! order. `enabled` defaults to true. The plan is validated completely at
//! load (unknown action, bad pattern, missing or mistyped parameter are
//! errors naming the route and the field), so a call never meets a broken
//! route; a reload that fails keeps the old plan.
//!
//! Variables `${destination}`, `${caller_id}`, `${caller_name}` and
//! `${call_id}` are substituted into string parameters after parsing, never
//! into JSON text, so a caller-controlled value cannot change the plan's
//! structure.

pub mod pattern;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use pattern::{Pattern, PatternError, Specificity};

/// Why a dialplan was refused.
#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    /// The file could not be read.
    #[error("dialplan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The text is not JSON of the dialplan's shape.
    #[error("dialplan: {0}")]
    Syntax(String),
    /// The version is not one this server understands.
    #[error("dialplan: unsupported version `{0}` (expected 1.0)")]
    Version(String),
    /// A route is invalid; names the route and the field.
    #[error("dialplan route `{route}`: {field}: {problem}")]
    Route {
        route: String,
        field: String,
        problem: String,
    },
}

/// Redirects a dial follows unless its `max_redirects` says otherwise.
pub const DEFAULT_MAX_REDIRECTS: u8 = 3;
/// The most a dialplan may ask for: each redirect may add contacts to
/// ring, so the bound keeps one call from ringing without end.
pub const MAX_REDIRECTS: u8 = 10;

/// Where `dial` sends the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every registered contact of a local user (`user/1001`).
    User(String),
    /// A SIP URI (`sip:bob@example.com`).
    Uri(String),
}

/// How `dial` uses the registered contacts of a user target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// All contacts at once; the first to answer wins.
    Parallel,
    /// One contact after the other, by descending q-value.
    Sequential,
}

/// One step of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer the call (200 OK with the manager's SDP).
    Answer,
    /// Dial targets, in order: the next target is tried when one fails.
    Dial {
        targets: Vec<Target>,
        timeout: Duration,
        ring: Ring,
        /// The RTP manager's media interface for the callee's leg
        /// (`"media_interface": "private"`), for a relay whose callees are
        /// on another network than its callers; `None` lets the manager
        /// choose.
        media_interface: Option<String>,
        /// Redirects (3xx) followed in this dial (`"max_redirects"`, 3 by
        /// default): a 3xx's Contacts are rung in q order, one after the
        /// other, before the dial's next target; 0 counts a 3xx as a
        /// failure (480).
        max_redirects: u8,
        /// Whether a callee reached by this dial at a SIP URI (a trunk, a
        /// peer) may transfer the call (`"allow_transfer"`, false by
        /// default): a transfer makes this server place a call, which a
        /// far end should not do through our trunks unless trusted.
        /// Registered users may always transfer.
        allow_transfer: bool,
    },
    /// Play audio files to the caller (answering first if needed).
    PlayAudio { files: Vec<String> },
    /// End the call with a SIP status (a final response before answer, BYE after).
    Hangup { code: u16, reason: String },
    /// Change the caller id presented to the called party.
    SetCallerId {
        number: Option<String>,
        name: Option<String>,
    },
}

/// A validated route.
#[derive(Clone, Debug)]
pub struct Route {
    pub id: String,
    pub name: String,
    pub pattern: Pattern,
    pub priority: i64,
    pub actions: Vec<Action>,
    index: usize,
}

/// A validated dialplan.
#[derive(Clone, Debug)]
pub struct Dialplan {
    routes: Vec<Route>,
}

/// The values substituted into string parameters for one call.
#[derive(Clone, Debug, Default)]
pub struct CallVars<'a> {
    pub destination: &'a str,
    pub caller_id: &'a str,
    pub caller_name: &'a str,
    pub call_id: &'a str,
}

#[derive(Deserialize)]
struct RawPlan {
    version: Option<String>,
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawRoute {
    id: Option<String>,
    name: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default = "enabled_default")]
    enabled: bool,
    #[serde(default)]
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
struct RawAction {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    params: Value,
}

fn enabled_default() -> bool {
    true
}

impl Dialplan {
    /// Reads and validates a dialplan file.
    pub fn load(path: &Path) -> Result<Dialplan, DialplanError> {
        let text = std::fs::read_to_string(path).map_err(|source| DialplanError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Dialplan::parse(&text)
    }

    /// Parses and validates dialplan JSON.
    pub fn parse(text: &str) -> Result<Dialplan, DialplanError> {
        let raw: RawPlan =
            serde_json::from_str(text).map_err(|e| DialplanError::Syntax(e.to_string()))?;
        if let Some(v) = &raw.version {
            if v != "1.0" {
                return Err(DialplanError::Version(v.clone()));
            }
        }
        let mut routes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, r) in raw.routes.into_iter().enumerate() {
            let id = r.id.clone().unwrap_or_else(|| format!("#{}", index + 1));
            let err = |field: &str, problem: String| DialplanError::Route {
                route: id.clone(),
                field: field.to_owned(),
                problem,
            };
            if r.id.as_deref().is_none_or(str::is_empty) {
                return Err(err("id", "missing".into()));
            }
            if !seen.insert(id.clone()) {
                return Err(err("id", "used by an earlier route".into()));
            }
            let pattern_text = r.pattern.ok_or_else(|| err("pattern", "missing".into()))?;
            let pattern =
                Pattern::parse(&pattern_text).map_err(|e| err("pattern", e.to_string()))?;
            if r.actions.is_empty() {
                return Err(err("actions", "a route needs at least one action".into()));
            }
            let actions = r
                .actions
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    parse_action(a)
                        .map_err(|(field, problem)| err(&format!("actions[{i}].{field}"), problem))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !r.enabled {
                continue;
            }
            routes.push(Route {
                name: r.name.unwrap_or_else(|| id.clone()),
                id,
                pattern,
                priority: r.priority,
                actions,
                index,
            });
        }
        Ok(Dialplan { routes })
    }

    /// The enabled routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a called number: lowest priority value first, then the
    /// most specific pattern, then file order.
    pub fn route(&self, destination: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.pattern.matches(destination))
            .min_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| b.pattern.specificity().cmp(&a.pattern.specificity()))
                    .then_with(|| a.index.cmp(&b.index))
            })
    }
}

impl Action {
    /// The action with `${…}` variables substituted in its string values.
    pub fn with_vars(&self, vars: &CallVars<'_>) -> Action {
        let s = |text: &str| substitute(text, vars);
        match self {
            Action::Dial {
                targets,
                timeout,
                ring,
                media_interface,
                max_redirects,
                allow_transfer,
            } => Action::Dial {
                targets: targets
                    .iter()
                    .map(|t| match t {
                        Target::User(u) => Target::User(s(u)),
                        Target::Uri(u) => Target::Uri(s(u)),
                    })
                    .collect(),
                timeout: *timeout,
                ring: *ring,
                media_interface: media_interface.clone(),
                max_redirects: *max_redirects,
                allow_transfer: *allow_transfer,
            },
            Action::PlayAudio { files } => Action::PlayAudio {
                files: files.iter().map(|f| s(f)).collect(),
            },
            Action::Hangup { code, reason } => Action::Hangup {
                code: *code,
                reason: s(reason),
            },
            Action::SetCallerId { number, name } => Action::SetCallerId {
                number: number.as_deref().map(s),
                name: name.as_deref().map(s),
            },
            Action::Answer => Action::Answer,
        }
    }
}

/// Replaces the known `${name}` variables; unknown ones stay as written
/// (they were rejected at load where they matter).
pub fn substitute(text: &str, vars: &CallVars<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match name {
                    "destination" => out.push_str(vars.destination),
                    "caller_id" => out.push_str(vars.caller_id),
                    "caller_name" => out.push_str(vars.caller_name),
                    "call_id" => out.push_str(vars.call_id),
                    _ => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

const KNOWN_VARS: [&str; 4] = ["destination", "caller_id", "caller_name", "call_id"];

/// Checks that every `${…}` in `text` names a known variable.
fn check_vars(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let name = &after[..end];
        if !KNOWN_VARS.contains(&name) {
            return Err(format!(
                "unknown variable `${{{name}}}` (known: {})",
                KNOWN_VARS.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

type FieldError = (String, String);

fn field(name: &str, problem: impl Into<String>) -> FieldError {
    (name.to_owned(), problem.into())
}

fn string_list(params: &Value, key: &str) -> Result<Vec<String>, FieldError> {
    let value = params
        .get(key)
        .ok_or_else(|| field(&format!("params.{key}"), "missing"))?;
    let list: Vec<String> = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field(&format!("params.{key}"), "must be a list of strings"))?,
        _ => {
            return Err(field(
                &format!("params.{key}"),
                "must be a string or a list of strings",
            ))
        }
    };
    if list.is_empty() {
        return Err(field(&format!("params.{key}"), "must not be empty"));
    }
    for item in &list {
        check_vars(item).map_err(|p| field(&format!("params.{key}"), p))?;
    }
    Ok(list)
}

fn optional_string(params: &Value, key: &str) -> Result<Option<String>, FieldError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_vars(s).map_err(|p| field(&format!("params.{key}"), p))?;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(field(&format!("params.{key}"), "must be a string")),
    }
}

fn parse_action(raw: &RawAction) -> Result<Action, FieldError> {
    let kind = raw
        .kind
        .as_deref()
        .ok_or_else(|| field("type", "missing"))?;
    let params = &raw.params;
    if !(params.is_object() || params.is_null()) {
        return Err(field("params", "must be an object"));
    }
    match kind {
        "answer" => Ok(Action::Answer),
        "dial" => {
            if params.get("targets").is_none() && params.get("target").is_none() {
                return Err(field(
                    "params.targets",
                    "missing: a list such as [\"user/${destination}\"]",
                ));
            }
            let targets = string_list(params, alias(params, "targets", "target"))?
                .into_iter()
                .map(|t| parse_target(&t))
                .collect::<Result<Vec<_>, _>>()?;
            let timeout = match params.get("timeout") {
                None | Some(Value::Null) => 30,
                Some(v) => v
                    .as_u64()
                    .filter(|&t| (1..=600).contains(&t))
                    .ok_or_else(|| field("params.timeout", "must be seconds between 1 and 600"))?,
            };
            let ring = match params.get("strategy").and_then(Value::as_str) {
                None | Some("parallel") => Ring::Parallel,
                Some("sequential") => Ring::Sequential,
                Some(other) => {
                    return Err(field(
                        "params.strategy",
                        format!("`{other}` is not parallel or sequential"),
                    ))
                }
            };
            let media_interface = match params.get("media_interface") {
                None | Some(Value::Null) => None,
                Some(Value::String(name))
                    if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
                {
                    Some(name.clone())
                }
                Some(_) => {
                    return Err(field(
                        "params.media_interface",
                        "must be the name of one of the RTP manager's --interface (letters, digits, - and _)",
                    ))
                }
            };
            let max_redirects = match params.get("max_redirects") {
                None | Some(Value::Null) => DEFAULT_MAX_REDIRECTS,
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n <= u64::from(MAX_REDIRECTS))
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| {
                        field(
                            "params.max_redirects",
                            format!("must be a number of redirects between 0 and {MAX_REDIRECTS}"),
                        )
                    })?,
            };
            let allow_transfer = match params.get("allow_transfer") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(allow)) => *allow,
                Some(_) => return Err(field("params.allow_transfer", "must be true or false")),
            };
            Ok(Action::Dial {
                targets,
                timeout: Duration::from_secs(timeout),
                ring,
                media_interface,
                max_redirects,
                allow_transfer,
            })
        }
        "play_audio" | "playback" => {
            let files = string_list(params, alias(params, "files", "file"))?;
            Ok(Action::PlayAudio { files })
        }
        "hangup" => {
            let code = match params.get("code") {
                None | Some(Value::Null) => 486,
                Some(v) => v
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|c| (200..=699).contains(c))
                    .ok_or_else(|| {
                        field("params.code", "must be a SIP status between 200 and 699")
                    })?,
            };
            let reason = optional_string(params, "reason")?
                .unwrap_or_else(|| default_reason(code).to_owned());
            Ok(Action::Hangup { code, reason })
        }
        "set_caller_id" => {
            let number = optional_string(params, "number")?;
            let name = optional_string(params, "name")?;
            if number.is_none() && name.is_none() {
                return Err(field("params", "set_caller_id needs `number` or `name`"));
            }
            Ok(Action::SetCallerId { number, name })
        }
        other => Err(field(
            "type",
            format!(
                "unknown action `{other}` (known: answer, dial, play_audio, hangup, set_caller_id)"
            ),
        )),
    }
}

/// The seed also spelt some list parameters in the singular.
fn alias<'k>(params: &Value, plural: &'k str, singular: &'k str) -> &'k str {
    if params.get(plural).is_none() && params.get(singular).is_some() {
        singular
    } else {
        plural
    }
}

fn parse_target(text: &str) -> Result<Target, FieldError> {
    if let Some(user) = text.strip_prefix("user/") {
        if user.is_empty() {
            return Err(field("params.targets", "`user/` needs a user name"));
        }
        return Ok(Target::User(user.to_owned()));
    }
    if text.starts_with("sip:") || text.starts_with("sips:") {
        return Ok(Target::Uri(text.to_owned()));
    }
    Err(field(
        "params.targets",
        format!("`{text}` is neither user/<name> nor a sip: URI"),
    ))
}

fn default_reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Call Ended",
    }
}

#[cfg(test)]
mod tests;
