//! `switchboard-signaling add-user`: appends a user to a users file.
//!
//! The entry holds the MD5 and SHA-256 HA1 values for the realm, never the
//! password; the running server picks it up on SIGHUP. A subcommand of the
//! daemon's binary so that a host with the package, and no source tree, can
//! add users with the same hashing and file format the server reads.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::auth::{UserEntry, Users};

/// Appends a SIP user (HA1 values for the realm, never the password) to a
/// users file; a running server loads it on SIGHUP
/// (`systemctl reload switchboard-signaling`).
#[derive(Debug, clap::Parser)]
#[command(name = "switchboard-signaling add-user")]
pub struct AddUserArgs {
    /// The users file (created when missing).
    #[arg(long)]
    users_file: PathBuf,
    /// The digest realm the server runs with (its --realm).
    #[arg(long)]
    realm: String,
    /// The user name (the digest username and the user part of the address).
    name: String,
    /// The password; read from the first line of standard input when
    /// absent (so it does not show in the process list or shell history).
    password: Option<String>,
}

/// Runs `switchboard-signaling add-user ARGS` (`argv` from `add-user` on).
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    let args = AddUserArgs::parse_from(argv);
    let result = add_user(&args).map(|done| {
        let _ = writeln!(std::io::stdout(), "{done}");
    });
    switchboard_service::failure::exit_status("switchboard-signaling add-user", result)
}

/// Adds the user and says what was done.
pub fn add_user(args: &AddUserArgs) -> anyhow::Result<String> {
    let password = match &args.password {
        Some(password) => password.clone(),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let existing = match std::fs::read_to_string(&args.users_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.users_file.display())),
    };
    let users = Users::parse(&args.users_file, &existing, &args.realm)
        .context("the users file is invalid; fix it before adding users")?;
    let entry = UserEntry::hashed(&args.name, &args.realm, &password);
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
    }
    text.push_str(&entry.to_toml());
    // Parse the result before writing: a duplicate or a name the server
    // refuses must not leave a file the server cannot load.
    let updated = Users::parse(&args.users_file, &text, &args.realm)
        .with_context(|| format!("cannot add user {:?}", args.name))?;
    if updated.len() != users.len() + 1 {
        bail!("user {:?} was not added", args.name);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.users_file)
        .with_context(|| format!("opening {}", args.users_file.display()))?;
    file.write_all(&text.as_bytes()[existing.len()..])
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", args.users_file.display()))?;
    Ok(format!(
        "{} added to {} for realm {:?}; send SIGHUP to a running server to load it",
        args.name,
        args.users_file.display(),
        args.realm
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Algorithm;

    #[test]
    fn appends_hashed_entries_and_refuses_duplicates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[user]]\nname = \"demo\"\npassword = \"demo\"\n")
            .expect("seed file");
        let args = |name: &str| AddUserArgs {
            users_file: path.clone(),
            realm: "example".to_owned(),
            name: name.to_owned(),
            password: Some("s3cret".to_owned()),
        };
        add_user(&args("1001")).expect("first add");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(!text.contains("s3cret"), "no plaintext: {text}");
        let users = Users::parse(&path, &text, "example").expect("valid file");
        assert_eq!(users.len(), 2);
        assert_eq!(
            users.ha1("1001", Algorithm::Md5),
            Some(crate::auth::ha1(Algorithm::Md5, "1001", "example", "s3cret").as_str())
        );
        let err = add_user(&args("1001")).expect_err("duplicate");
        assert!(format!("{err:#}").contains("duplicate name"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            text,
            "file unchanged"
        );
    }
}
