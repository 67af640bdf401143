//! Process plumbing shared by the three Switchboard daemons
//! (`switchboard-signaling`, `switchboard-rtpmanager`, `switchboard-ui`):
//!
//! - [`config`]: flag > environment > TOML file > default, with clap doing
//!   all validation;
//! - [`init_logging`]: `--log-level` applied to `tracing`;
//! - [`ShutdownSignals`] (installed before a daemon listens) and
//!   [`shutdown_signal`]: resolve on SIGINT or SIGTERM for graceful stop;
//! - [`wait_while_stopping`]: a bounded wait for work to finish after that,
//!   which a second signal cuts short;
//! - [`secrets`]: bearer-token files (constant-time compare) and PEM files;
//! - [`failure`]: a failed start as one line and an exit status.

pub mod config;
pub mod failure;
pub mod secrets;

pub use config::{parse_layered, unread_variables, ConfigError, UnreadVariable, ENV_PREFIX};

use tracing_subscriber::EnvFilter;

/// Checks a `--log-level` value: a level (`error` … `trace`) or a full
/// `tracing` filter such as `info,switchboard_signaling=debug`.
pub fn parse_log_level(value: &str) -> Result<String, String> {
    EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

/// Installs the global `tracing` subscriber writing to stderr (which
/// systemd's journal collects). Colours only on a terminal.
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true)
        .init();
}

/// [`init_logging`] at `level`, then a warning for each `SWITCHBOARD_*`
/// variable the daemon's configuration `C` does not read (`legacy`: the
/// renamed ones and their new names), as every daemon starts.
pub fn start_logging<C: clap::CommandFactory>(level: &str, legacy: &[(&str, &str)]) {
    init_logging(level);
    for unread in unread_variables::<C>(legacy) {
        tracing::warn!("{unread}");
    }
}

/// SIGINT and SIGTERM, watched from the moment this is made (inside the
/// tokio runtime). Make it before the daemon listens: a stop signal that
/// comes as soon as it accepts connections (from a supervisor, a test, an
/// operator's quick Ctrl-C) is then a graceful stop. Watched only once the
/// first `recv` ran, as before, such a signal took the default action and
/// killed the process (seen in CI: a SIGTERM right after the manager's
/// gRPC port accepted, exit by signal, nothing logged).
pub struct ShutdownSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Starts watching SIGINT and SIGTERM.
    pub fn install() -> ShutdownSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(watched) => Some(watched),
            Err(error) => {
                tracing::warn!(%error, signal = name, "cannot watch a stop signal");
                None
            }
        };
        ShutdownSignals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM, and says which.
    pub async fn recv(&mut self) -> &'static str {
        async fn next(watched: &mut Option<tokio::signal::unix::Signal>) {
            match watched {
                Some(watched) => {
                    watched.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.interrupt) => "SIGINT",
            () = next(&mut self.terminate) => "SIGTERM",
        }
    }
}

/// Resolves when the process receives SIGINT or SIGTERM, and says which
/// (watched from the first poll: see [`ShutdownSignals`] for a daemon's
/// start).
pub async fn shutdown_signal() -> &'static str {
    ShutdownSignals::install().recv().await
}

/// How a [`wait_while_stopping`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The work finished.
    Done,
    /// The limit passed first.
    TimedOut,
    /// Another SIGINT or SIGTERM came: stop without waiting any longer.
    Insisted,
}

/// Waits until `done` holds, checking every `poll`, for at most `limit`: the
/// bounded wait of a graceful stop (calls hanging up, requests finishing).
/// A second SIGINT or SIGTERM ends the wait at once, so an operator who
/// insists is not kept waiting.
pub async fn wait_while_stopping(
    limit: std::time::Duration,
    poll: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> Waited {
    let deadline = tokio::time::Instant::now() + limit;
    let insisted = shutdown_signal();
    tokio::pin!(insisted);
    loop {
        if done() {
            return Waited::Done;
        }
        if tokio::time::Instant::now() >= deadline {
            return Waited::TimedOut;
        }
        tokio::select! {
            signal = &mut insisted => {
                tracing::warn!(signal, "second signal: stopping without waiting");
                return Waited::Insisted;
            }
            () = tokio::time::sleep(poll.min(deadline - tokio::time::Instant::now())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiting_while_stopping_ends_when_done_or_at_the_limit() {
        let mut polls = 0;
        let outcome = wait_while_stopping(Duration::from_secs(5), Duration::from_millis(1), || {
            polls += 1;
            polls == 3
        })
        .await;
        assert_eq!(outcome, Waited::Done, "done on the third check");
        assert_eq!(polls, 3);
        let started = std::time::Instant::now();
        let outcome =
            wait_while_stopping(Duration::from_millis(50), Duration::from_millis(5), || {
                false
            })
            .await;
        assert_eq!(
            outcome,
            Waited::TimedOut,
            "never done: the limit ends the wait"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
