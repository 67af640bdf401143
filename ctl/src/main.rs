//! `switchboard-ctl`: the operator's command line over a signaling server's
//! REST API. Tables for people, `--json` (the API's own JSON) for scripts.
//!
//! Exit status: 0 done, 1 the API refused (its error is printed), 2 a bad
//! command line, 69 the API could not be reached.

mod http;
mod render;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use http::{segment, BaseUrl, HttpError};

/// Operate a Switchboard signaling server: calls, registrations, RTP
/// managers and statistics through its REST API.
#[derive(Debug, Parser)]
#[command(name = "switchboard-ctl", version, about, long_about = None)]
struct Cli {
    /// The signaling server's REST API.
    #[arg(
        long,
        env = "SWITCHBOARD_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,

    /// File whose first token line is sent as the bearer token (the
    /// server's --api-token-file has the same form).
    #[arg(long, env = "SWITCHBOARD_API_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the API.
    #[arg(long, default_value_t = 10)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Whether the server is up, and its version.
    Health,
    /// Calls, registrations, transactions, auth failures, uptime.
    Stats,
    /// Calls in progress (`calls`, `calls show ID`, `calls hangup ID`).
    Calls {
        #[command(subcommand)]
        action: Option<CallsAction>,
        /// Calls per page (the server allows up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The page after this call id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Registered contacts (`registrations`, `... show AOR`, `... remove AOR`).
    Registrations {
        #[command(subcommand)]
        action: Option<RegistrationsAction>,
    },
    /// RTP managers (`managers`, `managers drain ID`, `managers undrain ID`).
    Managers {
        #[command(subcommand)]
        action: Option<ManagersAction>,
    },
    /// Reloads the dialplan or the users file (as SIGHUP does); a file that
    /// does not load is refused with its error and the previous one stays.
    Reload { what: Reloadable },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Reloadable {
    Dialplan,
    Users,
}

#[derive(Debug, Subcommand)]
enum CallsAction {
    /// One call with its legs' media figures and its SIP messages.
    Show { id: String },
    /// Hangs a call up: BYE or CANCEL to each side, media released.
    Hangup { id: String },
}

#[derive(Debug, Subcommand)]
enum RegistrationsAction {
    /// The bindings of one address-of-record.
    Show { aor: String },
    /// Removes every binding of an address-of-record (stored).
    Remove { aor: String },
}

#[derive(Debug, Subcommand)]
enum ManagersAction {
    /// Sends a manager no new calls.
    Drain { id: String },
    /// Takes a drain back.
    Undrain { id: String },
    /// Whether a manager is drained, by whom, and its calls left.
    DrainState { id: String },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{status} {error}: {detail}")]
    Refused {
        status: u16,
        error: String,
        detail: String,
    },
    #[error("token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("the answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Http(HttpError::Connect { .. } | HttpError::Io { .. }) => 69,
            Failure::Token { .. } => 66,
            _ => 1,
        }
    }
}

/// A request and how its answer is shown.
struct Call<'a> {
    method: &'a str,
    path: String,
    show: fn(&Value) -> String,
}

fn plan(command: &Command) -> Call<'_> {
    let call = |method, path: String, show: fn(&Value) -> String| Call { method, path, show };
    match command {
        Command::Health => call("GET", "/api/v1/health".into(), render::fields),
        Command::Stats => call("GET", "/api/v1/stats".into(), render::fields),
        Command::Calls {
            action: None,
            limit,
            after,
        } => {
            let mut path = format!("/api/v1/calls?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={}", segment(after)));
            }
            call("GET", path, render::calls)
        }
        Command::Calls {
            action: Some(CallsAction::Show { id }),
            ..
        } => call(
            "GET",
            format!("/api/v1/calls/{}", segment(id)),
            render::call,
        ),
        Command::Calls {
            action: Some(CallsAction::Hangup { id }),
            ..
        } => call(
            "DELETE",
            format!("/api/v1/calls/{}", segment(id)),
            render::fields,
        ),
        Command::Registrations { action: None } => {
            call("GET", "/api/v1/registrations".into(), render::registrations)
        }
        Command::Registrations {
            action: Some(RegistrationsAction::Show { aor }),
        } => call(
            "GET",
            format!("/api/v1/registrations/{}", segment(aor)),
            render::registrations,
        ),
        Command::Registrations {
            action: Some(RegistrationsAction::Remove { aor }),
        } => call(
            "DELETE",
            format!("/api/v1/registrations/{}", segment(aor)),
            render::fields,
        ),
        Command::Managers { action: None } => {
            call("GET", "/api/v1/rtpmanagers".into(), render::managers)
        }
        Command::Managers {
            action: Some(action),
        } => {
            let (method, id) = match action {
                ManagersAction::Drain { id } => ("POST", id),
                ManagersAction::Undrain { id } => ("DELETE", id),
                ManagersAction::DrainState { id } => ("GET", id),
            };
            call(
                method,
                format!("/api/v1/rtpmanagers/{}/drain", segment(id)),
                render::fields,
            )
        }
        Command::Reload { what } => {
            let what = match what {
                Reloadable::Dialplan => "dialplan",
                Reloadable::Users => "users",
            };
            call("POST", format!("/api/v1/reload/{what}"), render::fields)
        }
        Command::Completions { .. } => unreachable!("handled before any request"),
    }
}

fn token(path: Option<&PathBuf>) -> Result<Option<String>, Failure> {
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| Failure::Token {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        return switchboard_service::secrets::token_lines(&text)
            .next()
            .map(|(_, token)| Some(token.to_owned()))
            .ok_or_else(|| Failure::Token {
                path: path.clone(),
                reason: "no token in it".to_owned(),
            });
    }
    Ok(std::env::var("SWITCHBOARD_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty()))
}

fn run(cli: &Cli) -> Result<String, Failure> {
    let base = BaseUrl::parse(&cli.url)?;
    let token = token(cli.token_file.as_ref())?;
    let call = plan(&cli.command);
    let answer = http::request(
        &base,
        call.method,
        &call.path,
        token.as_deref(),
        Duration::from_secs(cli.timeout),
    )?;
    let value: Value = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer.body)?
    };
    if answer.status >= 400 {
        return Err(Failure::Refused {
            status: answer.status,
            error: render::text(&value, &["error"]),
            detail: render::text(&value, &["detail"]),
        });
    }
    Ok(if cli.json {
        format!("{}\n", serde_json::to_string_pretty(&value)?)
    } else {
        (call.show)(&value)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "switchboard-ctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("switchboard-ctl: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_and_names_its_request() {
        let path = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("switchboard-ctl").chain(args.iter().copied()))
                    .expect("parses");
            let call = plan(&cli.command);
            format!("{} {}", call.method, call.path)
        };
        assert_eq!(path(&["calls"]), "GET /api/v1/calls?limit=100");
        assert_eq!(
            path(&["calls", "--limit", "5", "--after", "a/b"]),
            "GET /api/v1/calls?limit=5&after=a%2Fb"
        );
        assert_eq!(path(&["calls", "hangup", "c1"]), "DELETE /api/v1/calls/c1");
        assert_eq!(
            path(&["registrations", "remove", "1001@sb"]),
            "DELETE /api/v1/registrations/1001%40sb"
        );
        assert_eq!(
            path(&["managers", "drain", "m1"]),
            "POST /api/v1/rtpmanagers/m1/drain"
        );
        assert_eq!(
            path(&["managers", "undrain", "m1"]),
            "DELETE /api/v1/rtpmanagers/m1/drain"
        );
        assert_eq!(path(&["--json", "stats"]), "GET /api/v1/stats");
        assert_eq!(
            path(&["reload", "dialplan"]),
            "POST /api/v1/reload/dialplan"
        );
        assert_eq!(path(&["reload", "users"]), "POST /api/v1/reload/users");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
