//! `cargo xtask setup`: installs what building, running and testing need.
//! Every step checks first, so running it again changes nothing.

use std::process::Command;

use anyhow::Context;

use crate::ebpf;
use crate::util::{self, is_root};

#[derive(clap::Args)]
pub struct SetupArgs {}

/// Debian packages the build, the tests and the demo use, and why.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    (
        "iproute2",
        "kernel-path tests build network namespaces and veths",
    ),
    ("ethtool", "kernel-path tests turn veth offloads off"),
    ("bpftool", "inspecting loaded programs and maps"),
    (
        "sip-tester",
        "SIPp, the real SIP peer in tests and benchmarks",
    ),
    ("sipsak", "a second real SIP peer in tests"),
    (
        "redis-server",
        "the shared location store of the several-signaling-server tests",
    ),
    (
        "tcpdump",
        "the SIP benchmarks' wire-level response times (SIPp's own are in 4 ms steps here)",
    ),
    (
        "linphone-cli",
        "linphonec, a second phone people use, in the interop tests",
    ),
    (
        "dnsmasq-base",
        "a local DNS server with NAPTR/SRV/A records for the RFC 3263 tests (the binary only, no system service)",
    ),
    (
        "openssl",
        "makes the throw-away CAs and certificates of the TLS tests",
    ),
    (
        "baresip-core",
        "baresip, a real phone registering, calling and hearing in tests",
    ),
    (
        "chromium",
        "the dashboard's browser test (headless, over WebDriver)",
    ),
    (
        "chromium-driver",
        "chromedriver, the WebDriver server of the browser test",
    ),
    ("espeak-ng", "synthesises the demo announcement"),
    ("sox", "converts the demo announcement to 8 kHz WAV"),
    ("systemd", "systemd-analyze verifies the units"),
    ("lintian", "checks the Debian packages of cargo xtask deb"),
    (
        "binutils",
        "objcopy strips the binaries cargo xtask deb packages",
    ),
];

pub fn run(_: &SetupArgs) -> anyhow::Result<()> {
    install_apt_packages()?;
    install_rust_components()?;
    install_bpf_linker()?;
    println!("setup: done");
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        println!(
            "setup: WARNING: not root, cannot install {}; run: sudo apt-get install -y --no-install-recommends {}",
            missing.join(" "),
            missing.join(" ")
        );
        return Ok(());
    }
    util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
    .context("installing Debian packages")
}

fn install_rust_components() -> anyhow::Result<()> {
    if !util::succeeds(util::rustup_cargo().args(["+nightly", "--version"])) {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !ebpf::nightly_has_rust_src() {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    for component in ["rustfmt", "clippy"] {
        let installed = Command::new("rustup")
            .args(["component", "list", "--installed"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with(component))
            })
            .unwrap_or(false);
        if !installed {
            util::run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    println!("setup: Rust toolchains and components present");
    Ok(())
}

fn install_bpf_linker() -> anyhow::Result<()> {
    if util::on_path("bpf-linker") {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    if !package_installed("llvm-22-dev") {
        println!(
            "setup: WARNING: bpf-linker needs llvm-22-dev; install it as root, then rerun setup"
        );
        return Ok(());
    }
    util::run(
        util::rustup_cargo()
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
    .context("installing bpf-linker")
}

/// cargo-fuzz drives the fuzz targets of `fuzz/`. Installed by `cargo
/// xtask fuzz` when it first runs, not by `setup`: the tests replay the
/// corpora on stable, so CI would build it (minutes) for nothing.
pub fn install_cargo_fuzz() -> anyhow::Result<()> {
    if util::on_path("cargo-fuzz") {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    util::run(util::rustup_cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        "0.13.2",
        "--locked",
    ]))
    .context("installing cargo-fuzz")
}
