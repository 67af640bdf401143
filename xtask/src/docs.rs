//! `cargo xtask docs`: regenerates docs/CONFIGURATION.md from the daemons'
//! clap definitions.
//!
//! The generator lives in the `configuration_reference` test of this crate,
//! the only place that links the three daemons (as dev-dependencies, so that
//! plain `cargo xtask` stays quick to build). Run normally, the test fails
//! when the committed file differs; with `SWITCHBOARD_UPDATE_DOCS=1` it
//! rewrites the file instead.

use crate::util;

#[derive(clap::Args)]
pub struct DocsArgs {}

/// The variable that makes the reference test write the file.
const UPDATE_VAR: &str = "SWITCHBOARD_UPDATE_DOCS";

pub fn run(_: &DocsArgs) -> anyhow::Result<()> {
    util::run(util::cargo().env(UPDATE_VAR, "1").args([
        "test",
        "-p",
        "xtask",
        "--test",
        "configuration_reference",
        "--quiet",
    ]))?;
    println!("docs: docs/CONFIGURATION.md regenerated");
    Ok(())
}
