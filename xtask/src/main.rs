//! `cargo xtask …`: the developer and operator entry points of Switchboard.
//!
//! - `setup`: installs what building and testing need (idempotent).
//! - `build-ebpf`: builds the XDP/TC programs for `bpfel-unknown-none`.
//! - `run`: builds everything and runs rtpmanager + signaling + ui on one box.
//! - `test`: set-up, then the whole test suite (what CI runs).
//! - `install` / `uninstall`: the daemons, units and configs on a systemd host.
//! - `fuzz`: runs the cargo-fuzz targets of `fuzz/` for a bounded time.
//! - `docs`: regenerates docs/CONFIGURATION.md from the daemons' options.
//! - `bench sip-register`: REGISTER throughput and latency through SIPp.
//! - `bench sip-core`: the SIP core's CPU per REGISTER, in process.
//! - `soak`: a bounded endurance run under mixed legitimate and hostile load.
//! - `add-user`: `switchboard-signaling add-user` (appends a user to a users file).
#![allow(clippy::print_stdout)]

mod bench;
mod bench_failover;
mod deb;
mod docs;
mod ebpf;
mod fuzz;
mod install;
mod run;
mod setup;
mod soak;
mod test;
mod users;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Switchboard build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install build and test prerequisites: Debian packages, the nightly
    /// rust-src component, bpf-linker. Safe to run again.
    Setup(setup::SetupArgs),
    /// Build the eBPF programs (nightly, -Z build-std=core, bpf-linker).
    BuildEbpf(ebpf::BuildArgs),
    /// Build and run rtpmanager, signaling and ui on this machine with a demo
    /// configuration; Ctrl-C stops them all.
    Run(run::RunArgs),
    /// Set up, check formatting and lints, and run every test.
    Test(test::TestArgs),
    /// Build and install the daemons, systemd units, default configuration
    /// and demo files (see docs/DEPLOYMENT.md).
    Install(install::InstallArgs),
    /// Remove the installed daemons and units (--purge: also configuration and state).
    Uninstall(install::UninstallArgs),
    /// Build Debian packages of the three daemons (release builds, the eBPF
    /// object embedded) into target/debian.
    Deb(deb::DebArgs),
    /// Regenerate docs/CONFIGURATION.md from the daemons' option definitions.
    Docs(docs::DocsArgs),
    /// Benchmarks against release builds (sip-register: SIPp REGISTER with digest auth).
    Bench(bench::BenchArgs),
    /// Run cargo-fuzz targets (fuzz/) for --seconds each: one target, or
    /// --all; prints executions/s and corpus size per target.
    Fuzz(fuzz::FuzzArgs),
    /// Append a user (HA1 values, no plaintext) to a signaling users file.
    AddUser(users::AddUserArgs),
    /// Endurance run outside CI (release builds, root): mixed calls with
    /// media, registrations, garbage, an OPTIONS flood and idle TCP for
    /// --minutes; prints RSS and descriptors, failed calls and orphans.
    Soak(soak::SoakArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::BuildEbpf(args) => ebpf::build(&args).map(|_| ()),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::Deb(args) => deb::run(&args),
        Command::Docs(args) => docs::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::AddUser(args) => users::add_user(&args),
        Command::Soak(args) => soak::run(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
