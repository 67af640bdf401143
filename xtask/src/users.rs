//! `cargo xtask add-user`: appends a user to a signaling users file.
//!
//! The entry holds the MD5 and SHA-256 HA1 values for the realm, never the
//! password; the running server picks it up on SIGHUP.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use switchboard_signaling::auth::{UserEntry, Users};

#[derive(clap::Args)]
pub struct AddUserArgs {
    /// The users file (created when missing).
    #[arg(long)]
    users_file: PathBuf,
    /// The digest realm the server runs with (its --realm).
    #[arg(long)]
    realm: String,
    /// The user name (the digest username and the user part of the address).
    name: String,
    /// The password.
    password: String,
}

pub fn add_user(args: &AddUserArgs) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(&args.users_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.users_file.display())),
    };
    let users = Users::parse(&args.users_file, &existing, &args.realm)
        .context("the users file is invalid; fix it before adding users")?;
    let entry = UserEntry::hashed(&args.name, &args.realm, &args.password);
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
    println!(
        "add-user: {} added to {} for realm {:?}; send SIGHUP to a running server to load it",
        args.name,
        args.users_file.display(),
        args.realm
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_signaling::auth::Algorithm;

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
            password: "s3cret".to_owned(),
        };
        add_user(&args("1001")).expect("first add");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(!text.contains("s3cret"), "no plaintext: {text}");
        let users = Users::parse(&path, &text, "example").expect("valid file");
        assert_eq!(users.len(), 2);
        assert_eq!(
            users.ha1("1001", Algorithm::Md5),
            Some(
                switchboard_signaling::auth::ha1(Algorithm::Md5, "1001", "example", "s3cret")
                    .as_str()
            )
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
