//! `cargo xtask build-ebpf`: builds rtpmanager-ebpf for `bpfel-unknown-none`.
//!
//! The eBPF crate has its own workspace and lockfile and needs nightly (for
//! `-Z build-std=core`) and bpf-linker linked against LLVM 22 (the LLVM of
//! nightly 1.97). Each missing prerequisite is named with the command that
//! installs it; `cargo xtask setup` installs them all.

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;

use crate::util::{self, workspace_root};

#[derive(clap::Args)]
pub struct BuildArgs {}

/// Where the built object lands; rtpmanager's build script embeds it from here.
pub fn object_path() -> PathBuf {
    workspace_root().join("rtpmanager-ebpf/target/bpfel-unknown-none/release/rtpmanager-ebpf")
}

/// A prerequisite of the eBPF build that is not satisfied.
pub struct Missing {
    pub what: &'static str,
    pub install: &'static str,
}

pub const BPF_LINKER_INSTALL: &str = "apt-get install -y --no-install-recommends llvm-22-dev && \
LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22";

/// Lists what the eBPF build still needs on this machine.
pub fn missing_prerequisites() -> Vec<Missing> {
    let mut missing = Vec::new();
    if !util::succeeds(util::rustup_cargo().args(["+nightly", "--version"])) {
        missing.push(Missing {
            what: "the nightly Rust toolchain",
            install: "rustup toolchain install nightly --profile minimal",
        });
    } else if !nightly_has_rust_src() {
        missing.push(Missing {
            what: "the rust-src component of the nightly toolchain",
            install: "rustup component add rust-src --toolchain nightly",
        });
    }
    if !util::on_path("bpf-linker") {
        missing.push(Missing {
            what: "bpf-linker (built against LLVM 22)",
            install: BPF_LINKER_INSTALL,
        });
    }
    missing
}

pub fn nightly_has_rust_src() -> bool {
    let output = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    match output {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with("rust-src")),
        Err(_) => false,
    }
}

/// Builds the object and returns its path.
pub fn build(_: &BuildArgs) -> anyhow::Result<PathBuf> {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let mut text = String::from("cannot build the eBPF programs; missing:");
        for m in &missing {
            text.push_str(&format!("\n  - {}: install with `{}`", m.what, m.install));
        }
        text.push_str("\n  (or run `cargo xtask setup`, which installs all of them)");
        bail!(text);
    }
    let mut cmd = util::rustup_cargo();
    cmd.current_dir(workspace_root().join("rtpmanager-ebpf"))
        .args(["+nightly", "build", "--release", "--locked"]);
    if let Some(linker) = util::find_on_path("bpf-linker") {
        if let Some(dir) = linker.parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
            dirs.insert(0, dir.to_path_buf());
            cmd.env("PATH", std::env::join_paths(dirs)?);
        }
    }
    util::run(&mut cmd)?;
    let object = object_path();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("eBPF object: {}", object.display());
    Ok(object)
}
