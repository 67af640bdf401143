//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! Set-up (idempotent), the eBPF object, formatting, lints, then every test
//! of the workspace. Kernel-path tests need root; without it they skip with a
//! message, and this task says so up front.

use crate::util::{self, is_root};
use crate::{ebpf, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (the prerequisites are known to be present).
    #[arg(long)]
    no_setup: bool,
    /// Skip the rustfmt and clippy checks.
    #[arg(long)]
    no_lints: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if !args.no_setup {
        setup::run(&setup::SetupArgs {})?;
    }

    let missing = ebpf::missing_prerequisites();
    if missing.is_empty() {
        ebpf::build(&ebpf::BuildArgs {})?;
    } else {
        println!("==============================================================");
        println!("WARNING: the eBPF object cannot be built here; the manager is");
        println!("tested without it and the kernel-path tests will skip. Missing:");
        for m in &missing {
            println!("  - {}: {}", m.what, m.install);
        }
        println!("==============================================================");
    }
    if !is_root() {
        println!("==============================================================");
        println!("WARNING: not root: kernel-path tests (network namespaces, eBPF");
        println!("loading) will be SKIPPED. Run as root to include them.");
        println!("==============================================================");
    }

    if !args.no_lints {
        util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Every binary first, in one build with the tests' feature set (so the
    // test run's own build is a no-op): tests start other packages'
    // daemons, and switchboard-ctl has no integration test that would make
    // `cargo test` build it. The tests then trust the files
    // (switchboard-testkit::workspace_binary) instead of running cargo
    // themselves, which rebuilt dependencies mid-test (a nested cargo sees
    // another environment).
    util::run(util::cargo().args(["build", "--workspace", "--bins", "--tests"]))?;
    util::run(
        util::cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            // Every binary is built and up to date: the tests trust them.
            .env(switchboard_testkit::BINARIES_BUILT, "1")
            .arg("--")
            .args(&args.cargo_test_args),
    )?;
    println!(
        "xtask test: all tests passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
