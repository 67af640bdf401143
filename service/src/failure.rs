//! How a daemon that cannot start says so: one line on stderr naming what
//! failed, with the option and value in the error's context and the
//! operating system's reason at the end, and an exit status that tells a
//! supervisor what kind of failure it was. No backtrace unless
//! `SWITCHBOARD_BACKTRACE=1`: `RUST_BACKTRACE` is often set machine-wide
//! for developers and would bury the one line that matters.

use std::io::ErrorKind;
use std::process::ExitCode;

/// Exit statuses of a failed start, after sysexits.h so that they mean
/// something to supervisors and shell scripts; the units'
/// `RestartPreventExitStatus=` lists the ones a restart cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An option is wrong (clap's own status for a bad command line).
    Config = 2,
    /// A file named by an option does not exist or cannot be read.
    NoInput = 66,
    /// An address is in use or not on this host.
    Unavailable = 69,
    /// Anything else.
    Software = 70,
    /// Not allowed: a privileged port, a missing capability, a file's mode.
    NoPermission = 77,
}

impl Failure {
    /// The kind of `error`, from the first operating-system error in its
    /// chain (its kind, not its text).
    pub fn of(error: &anyhow::Error) -> Failure {
        for cause in error.chain() {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable => Failure::Unavailable,
                    ErrorKind::PermissionDenied => Failure::NoPermission,
                    ErrorKind::NotFound | ErrorKind::IsADirectory => Failure::NoInput,
                    ErrorKind::InvalidInput | ErrorKind::InvalidData => Failure::Config,
                    _ => Failure::Software,
                };
            }
            if cause.downcast_ref::<crate::ConfigError>().is_some() {
                return Failure::Config;
            }
        }
        Failure::Software
    }
}

/// The one line a failed start prints: `program: what: why: OS reason`.
pub fn describe(program: &str, error: &anyhow::Error) -> String {
    let mut line = format!("{program}: ");
    let mut first = true;
    for cause in error.chain() {
        let text = cause.to_string();
        // Context that repeats its cause's text adds nothing.
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !first {
            line.push_str(": ");
        }
        line.push_str(&text);
        first = false;
    }
    line
}

/// Ends `main`: exit status 0, or the failure printed as one line (and the
/// backtrace when `SWITCHBOARD_BACKTRACE=1`) with its [`Failure`] status.
pub fn exit_status(program: &str, result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("{}", describe(program, &error));
    if std::env::var_os("SWITCHBOARD_BACKTRACE").is_some_and(|v| v == "1") {
        eprintln!("{}", error.backtrace());
    }
    ExitCode::from(Failure::of(&error) as u8)
}

/// Runs a daemon on a multi-thread tokio runtime of `workers` threads (0:
/// one per CPU) and reports its outcome as [`exit_status`] does; a runtime
/// that cannot be built is a failed start like any other.
pub fn run_daemon(
    program: &str,
    workers: usize,
    daemon: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    let result = match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(daemon),
        Err(error) => Err(anyhow::Error::new(error).context("starting the tokio runtime")),
    };
    exit_status(program, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn bind_error() -> anyhow::Error {
        Err::<(), _>(std::io::Error::from(ErrorKind::AddrInUse))
            .context("cannot bind SIP UDP on 127.0.0.1:5060")
            .context("SIP transports (--bind-address/--port)")
            .expect_err("an error")
    }

    #[test]
    fn a_failure_is_one_line_with_the_option_and_the_os_reason_last() {
        assert_eq!(
            describe("switchboard-signaling", &bind_error()),
            "switchboard-signaling: SIP transports (--bind-address/--port): \
             cannot bind SIP UDP on 127.0.0.1:5060: address in use"
        );
    }

    #[test]
    fn the_exit_status_follows_the_os_error_in_the_chain() {
        assert_eq!(Failure::of(&bind_error()), Failure::Unavailable);
        let missing = anyhow::Error::from(std::io::Error::from(ErrorKind::NotFound))
            .context("--users-file /etc/switchboard/users.toml");
        assert_eq!(Failure::of(&missing), Failure::NoInput);
        let denied = anyhow::Error::from(std::io::Error::from(ErrorKind::PermissionDenied));
        assert_eq!(Failure::of(&denied), Failure::NoPermission);
        let config = anyhow::Error::from(crate::ConfigError::invalid("port", "zero"));
        assert_eq!(Failure::of(&config), Failure::Config);
        assert_eq!(Failure::of(&anyhow::anyhow!("other")), Failure::Software);
    }
}
