//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (their own
//! workspace, built with nightly) for a bounded time each.
//!
//! Each run starts from the committed seeds in `fuzz/corpus/<target>/` and
//! a working corpus in `fuzz/target/corpus/<target>/`, where libFuzzer
//! writes what it finds (the first corpus directory is the one written), so
//! the committed seeds stay small. A crash leaves its input in
//! `fuzz/artifacts/<target>/`; copy it into the seeds once fixed, and the
//! corpus replay tests (`cargo test`) keep it fixed.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::util;

/// The fuzz targets, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "sip_parse",
    "sip_framer",
    "sdp_parse",
    "rtp_rtcp",
    "dialplan",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// The target to run: sip_parse, sip_framer, sdp_parse, rtp_rtcp or dialplan.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    target: Option<String>,
    /// Run every target, one after the other.
    #[arg(long)]
    all: bool,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// What one run reported.
struct Figures {
    target: String,
    executions: u64,
    per_second: u64,
    corpus: u64,
    crashed: bool,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(target) if TARGETS.contains(&target.as_str()) => vec![target.as_str()],
        Some(target) => bail!(
            "unknown fuzz target {target}; one of {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    crate::setup::install_cargo_fuzz()?;
    let fuzz_dir = util::workspace_root().join("fuzz");
    // Safe Rust: the sanitizer would only slow builds and runs; debug
    // assertions and overflow checks stay on (cargo-fuzz's default).
    util::run(
        util::rustup_cargo()
            .args(["+nightly", "fuzz", "build", "--sanitizer", "none"])
            .current_dir(&fuzz_dir),
    )
    .context("building the fuzz targets")?;
    let mut figures = Vec::new();
    for target in targets {
        figures.push(run_target(&fuzz_dir, target, args.seconds)?);
    }
    println!(
        "fuzz: {:<12} {:>12} {:>10} {:>8}",
        "target", "executions", "exec/s", "corpus"
    );
    for f in &figures {
        println!(
            "fuzz: {:<12} {:>12} {:>10} {:>8}{}",
            f.target,
            f.executions,
            f.per_second,
            f.corpus,
            if f.crashed { "  CRASHED" } else { "" }
        );
    }
    let crashed: Vec<&str> = figures
        .iter()
        .filter(|f| f.crashed)
        .map(|f| f.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "crashes in {}; inputs are in fuzz/artifacts/<target>/",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Figures> {
    let binary = fuzz_dir
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let work = fuzz_dir.join("target/corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(&binary);
    cmd.arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    println!("+ {}", util::describe(&cmd));
    let output = cmd
        .output()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let log_path = fuzz_dir.join("target").join(format!("{target}.log"));
    std::fs::write(&log_path, log.as_bytes())?;
    let crashed = !output.status.success();
    if crashed {
        // The crash report (panic message, backtrace, artifact path).
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    let figures = Figures {
        target: target.to_owned(),
        executions: stat(&log, "stat::number_of_executed_units:").unwrap_or(0),
        per_second: stat(&log, "stat::average_exec_per_sec:").unwrap_or(0),
        corpus: corpus_size(&log).unwrap_or_else(|| count_files(&work)),
        crashed,
    };
    println!(
        "fuzz: {target}: {} executions in {seconds} s, {} exec/s, corpus {} inputs (log: {})",
        figures.executions,
        figures.per_second,
        figures.corpus,
        log_path.display()
    );
    Ok(figures)
}

/// A `stat::name: value` line of libFuzzer's final statistics.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// The corpus size of libFuzzer's last status line (`corp: 123/45Kb`).
fn corpus_size(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let after = l.split("corp: ").nth(1)?;
        after.split('/').next()?.trim().parse().ok()
    })
}

fn count_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "#2\tINITED cov: 10 ft: 11 corp: 5/120b exec/s: 0 rss: 30Mb\n\
        #4096\tpulse  cov: 80 ft: 200 corp: 41/2031b lim: 43 exec/s: 2048 rss: 40Mb\n\
        Done 4096 runs in 2 second(s)\n\
        stat::number_of_executed_units: 4096\n\
        stat::average_exec_per_sec:     2048\n\
        stat::new_units_added:          36\n";

    #[test]
    fn final_statistics_and_last_corpus_size_are_read_from_the_log() {
        assert_eq!(stat(LOG, "stat::number_of_executed_units:"), Some(4096));
        assert_eq!(stat(LOG, "stat::average_exec_per_sec:"), Some(2048));
        assert_eq!(corpus_size(LOG), Some(41));
        assert_eq!(stat("", "stat::average_exec_per_sec:"), None);
    }
}
