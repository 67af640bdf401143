//! `cargo xtask add-user`: `switchboard-signaling add-user` from the source
//! tree (the signaling crate owns the users file format and its hashing;
//! xtask forwards, so that it does not compile the signaling crate itself).

use std::ffi::OsString;

use crate::util;

#[derive(clap::Args)]
pub struct AddUserArgs {
    /// The arguments of `switchboard-signaling add-user` (see its --help):
    /// --users-file FILE --realm REALM NAME [PASSWORD].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<OsString>,
}

pub fn add_user(args: &AddUserArgs) -> anyhow::Result<()> {
    util::run(
        util::cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "switchboard-signaling",
                "--",
                "add-user",
            ])
            .args(&args.args),
    )
}
