//! Layered configuration: command-line flag > environment variable > TOML
//! config file > built-in default.
//!
//! clap already ranks flags above environment variables above defaults. The
//! config file slots in between: after a first parse, every option that was
//! left at its default is filled from the file by appending it as a flag and
//! parsing again, so a value from the file goes through the same validation
//! (and the same error messages) as one typed on the command line.
//!
//! File keys are the long flag names, with `-` or `_` (`rtp-port-min` or
//! `rtp_port_min`). Lists are TOML arrays. An unknown key is an error, so a
//! typo cannot silently fall back to a default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};

/// Id of the argument that names the config file in every daemon.
pub const CONFIG_ARG: &str = "config";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap rejected a flag, an environment variable or a file value.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// The config file names an option that does not exist.
    #[error("config file {path}: unknown option `{key}`")]
    UnknownKey { path: PathBuf, key: String },
    /// The config file gives an option a value of the wrong shape.
    #[error("config file {path}: option `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The values parsed but do not make sense together.
    #[error("invalid configuration: --{option}: {reason}")]
    Invalid { option: String, reason: String },
}

impl ConfigError {
    /// An option that parsed but cannot be used, named by its long flag.
    pub fn invalid(option: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            option: option.to_owned(),
            reason: reason.into(),
        }
    }

    /// Prints the error the way clap prints its own and exits: 0 for
    /// `--help`/`--version`, 2 for anything wrong.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `T` from `args` with the config-file layer applied.
pub fn parse_layered<T, I, A>(args: I) -> Result<T, ConfigError>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = T::command();
    let matches = command.clone().try_get_matches_from(&argv)?;

    if let Some(path) = matches.get_one::<PathBuf>(CONFIG_ARG).cloned() {
        let table = read_table(&path)?;
        for (key, value) in &table {
            let long = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != CONFIG_ARG)
                .ok_or_else(|| ConfigError::UnknownKey {
                    path: path.clone(),
                    key: key.clone(),
                })?;
            let explicit = matches!(
                matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if explicit {
                continue;
            }
            let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
            argv.extend(file_value_as_flags(&path, key, &long, value, is_switch)?);
        }
    }

    let matches = command.try_get_matches_from(&argv)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// Every daemon's environment variables begin with this, so that a `PORT`
/// or `DOMAIN` meant for another program never reconfigures one.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// An environment variable that is set but not read: a name this daemon
/// read before its variables took [`ENV_PREFIX`], or one the system it
/// replaces read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadVariable {
    /// The variable that is set.
    pub name: String,
    /// The option to use instead (`--dialplan`).
    pub option: String,
    /// Its environment variable, when it has one.
    pub instead: Option<String>,
}

impl std::fmt::Display for UnreadVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "environment variable {} is set but not read", self.name)?;
        match &self.instead {
            Some(env) => write!(
                f,
                "; if it was meant for this daemon, set {env} (--{})",
                self.option
            ),
            None => write!(
                f,
                "; if it was meant for this daemon, use --{}",
                self.option
            ),
        }
    }
}

/// The environment variables of `T`'s options that lack [`ENV_PREFIX`]
/// (each daemon's tests check there is none).
pub fn unprefixed_variables<T: CommandFactory>() -> Vec<String> {
    T::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .filter(|env| !env.starts_with(ENV_PREFIX))
        .collect()
}

/// The variables of `T`'s options without their [`ENV_PREFIX`], and the
/// `legacy` names (name, long option), that are set in the environment.
/// The daemon logs them as warnings once its logging is up.
pub fn unread_variables<T: CommandFactory>(legacy: &[(&str, &str)]) -> Vec<UnreadVariable> {
    unread_variables_in::<T>(legacy, |name| std::env::var_os(name).is_some())
}

fn unread_variables_in<T: CommandFactory>(
    legacy: &[(&str, &str)],
    is_set: impl Fn(&str) -> bool,
) -> Vec<UnreadVariable> {
    let command = T::command();
    let env_of = |option: &str| {
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(option))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    let bare = command.get_arguments().filter_map(|arg| {
        let env = arg.get_env()?.to_str()?;
        Some((
            env.strip_prefix(ENV_PREFIX)?.to_owned(),
            arg.get_long()?.to_owned(),
        ))
    });
    let mut unread: Vec<UnreadVariable> = bare
        .chain(
            legacy
                .iter()
                .map(|(n, o)| ((*n).to_owned(), (*o).to_owned())),
        )
        .filter(|(name, _)| is_set(name))
        .map(|(name, option)| UnreadVariable {
            instead: env_of(&option),
            name,
            option,
        })
        .collect();
    unread.sort_by(|a, b| a.name.cmp(&b.name));
    unread.dedup_by(|a, b| a.name == b.name);
    unread
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

fn file_value_as_flags(
    path: &Path,
    key: &str,
    long: &str,
    value: &toml::Value,
    is_switch: bool,
) -> Result<Vec<OsString>, ConfigError> {
    let bad = |reason: &str| ConfigError::BadValue {
        path: path.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(bad("expected a string, a number or a boolean")),
        }
    };
    if is_switch {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(bad("expected true or false")),
        };
    }
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|item| Ok(format!("--{long}={}", scalar(item)?).into()))
            .collect(),
        other => Ok(vec![format!("--{long}={}", scalar(other)?).into()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Debug, Parser)]
    struct Opts {
        #[arg(long, env = "SBTEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "SBTEST_PORT", default_value_t = 5060)]
        port: u16,
        #[arg(long, env = "SBTEST_NAME", default_value = "dflt")]
        name: String,
        #[arg(long, env = "SBTEST_LIST", value_delimiter = ',')]
        list: Vec<String>,
        #[arg(long, env = "SBTEST_VERBOSE")]
        verbose: bool,
    }

    #[derive(Debug, Parser)]
    struct Prefixed {
        #[arg(long, env = "SWITCHBOARD_SIP_PORT", default_value_t = 5060)]
        port: u16,
        #[arg(long, env = "SWITCHBOARD_DIALPLAN")]
        dialplan: Option<String>,
    }

    #[test]
    fn bare_and_legacy_variables_that_are_set_are_named_with_their_replacement() {
        let set = ["SIP_PORT", "DIALPLAN_PATH", "HOME"];
        let unread = unread_variables_in::<Prefixed>(&[("DIALPLAN_PATH", "dialplan")], |name| {
            set.contains(&name)
        });
        let shown: Vec<String> = unread.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "environment variable DIALPLAN_PATH is set but not read; if it was meant for this daemon, set SWITCHBOARD_DIALPLAN (--dialplan)",
                "environment variable SIP_PORT is set but not read; if it was meant for this daemon, set SWITCHBOARD_SIP_PORT (--port)",
            ]
        );
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write config");
        f
    }

    fn parse(args: &[&str]) -> Result<Opts, ConfigError> {
        parse_layered::<Opts, _, _>(std::iter::once("prog").chain(args.iter().copied()))
    }

    // Environment variables are process-wide: these tests use names no other
    // test touches, and each env-dependent assertion lives in one test.
    #[test]
    fn precedence_flag_over_env_over_file_over_default() {
        let file = config_file(
            "port = 6000\nname = \"from-file\"\nlist = [\"a\", \"b\"]\nverbose = true\n",
        );
        let path = file.path().to_str().expect("utf-8 path");

        let defaults = parse(&[]).expect("defaults parse");
        assert_eq!(defaults.port, 5060);
        assert_eq!(defaults.name, "dflt");
        assert!(defaults.list.is_empty());
        assert!(!defaults.verbose);

        let from_file = parse(&["--config", path]).expect("file parse");
        assert_eq!(from_file.port, 6000);
        assert_eq!(from_file.name, "from-file");
        assert_eq!(from_file.list, vec!["a", "b"]);
        assert!(from_file.verbose);

        std::env::set_var("SBTEST_PORT", "7000");
        let env_over_file = parse(&["--config", path]).expect("env parse");
        assert_eq!(env_over_file.port, 7000, "env beats file");
        assert_eq!(env_over_file.name, "from-file", "file still fills the rest");

        let flag_over_env = parse(&["--config", path, "--port", "8000"]).expect("flag parse");
        assert_eq!(flag_over_env.port, 8000, "flag beats env and file");
        std::env::remove_var("SBTEST_PORT");
    }

    #[test]
    fn unknown_key_is_named() {
        let file = config_file("prot = 1\n");
        let err =
            parse(&["--config", file.path().to_str().expect("utf-8")]).expect_err("typo must fail");
        assert!(err.to_string().contains("unknown option `prot`"), "{err}");
    }

    #[test]
    fn bad_file_value_fails_with_option_name() {
        let file = config_file("port = 70000\n");
        let err =
            parse(&["--config", file.path().to_str().expect("utf-8")]).expect_err("out of range");
        let text = err.to_string();
        assert!(text.contains("--port"), "{text}");
    }

    #[test]
    fn underscore_keys_and_bad_syntax() {
        let file = config_file("port = [1, \n");
        let err = parse(&["--config", file.path().to_str().expect("utf-8")]).expect_err("bad toml");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");

        let missing = parse(&["--config", "/nonexistent/switchboard.toml"]).expect_err("missing");
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    }
}
