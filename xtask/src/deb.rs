//! `cargo xtask deb`: Debian packages of the three daemons, built with
//! `dpkg-deb` from the same files `cargo xtask install` lays out.
//!
//! - `switchboard-signaling`: the daemon, `switchboard-ctl`, its unit and
//!   `switchboard.target`, `/etc/switchboard/{signaling.toml,users.toml,
//!   dialplan.json}`;
//! - `switchboard-rtpmanager`: the daemon (with the eBPF object embedded
//!   when this machine built it) and its unit, `rtpmanager.toml`;
//! - `switchboard-ui`: the dashboard and its unit, `ui.toml`.
//!
//! Files under /etc are conffiles: dpkg asks before replacing an edited one.
//! The maintainer scripts create the `switchboard` system user, give it
//! its state directory, and enable the units without starting them (the
//! operator reviews the configuration first); purge removes the package's
//! configuration and state, never the user (Debian policy: its files may
//! outlive the package).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::install::{self, CONFIG_DIR, SERVICE_USER, STATE_DIR};
use crate::util::{self, workspace_root};

#[derive(clap::Args)]
pub struct DebArgs {
    /// Package binaries built earlier (see --bin-dir) instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Directory holding the built binaries [default: the workspace's target/release].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the .deb files go [default: target/debian].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The Debian revision appended to the crate version.
    #[arg(long, default_value = "1")]
    revision: String,
}

/// One binary package.
struct Package {
    name: &'static str,
    binaries: &'static [&'static str],
    units: &'static [&'static str],
    /// Files from deploy/ installed under /etc/switchboard: (source, name,
    /// mode in the package; postinst makes them 0640 root:switchboard, as
    /// users.toml holds password hashes).
    configs: &'static [(&'static str, &'static str, u32)],
    summary: &'static str,
    description: &'static str,
}

const PACKAGES: [Package; 3] = [
    Package {
        name: "switchboard-signaling",
        binaries: &["switchboard-signaling", "switchboard-ctl"],
        units: &["switchboard-signaling.service", "switchboard.target"],
        configs: &[
            ("etc/signaling.toml", "signaling.toml", 0o644),
            ("etc/users.toml", "users.toml", 0o644),
            ("demo/dialplan.json", "dialplan.json", 0o644),
        ],
        summary: "Switchboard SIP B2BUA: registrar, dialplan, REST API",
        description: "The signaling server of Switchboard: SIP over UDP and TCP, a\n registrar with digest authentication, a back-to-back user agent driven by\n a JSON dialplan, a pool of RTP managers, and the operator's REST API with\n events, metrics and call records. switchboard-ctl operates it from a shell.",
    },
    Package {
        name: "switchboard-rtpmanager",
        binaries: &["switchboard-rtpmanager"],
        units: &["switchboard-rtpmanager.service"],
        configs: &[("etc/rtpmanager.toml", "rtpmanager.toml", 0o644)],
        summary: "Switchboard RTP manager with an XDP/TC kernel fast path",
        description: "The media plane of Switchboard: allocates RTP ports, rewrites SDP,\n latches and relays RTP/RTCP in userspace, plays announcements, and\n offloads bridged streams to eBPF programs (XDP or TC) that forward them in\n the kernel. Controlled over gRPC by switchboard-signaling.",
    },
    Package {
        name: "switchboard-ui",
        binaries: &["switchboard-ui"],
        units: &["switchboard-ui.service"],
        configs: &[("etc/ui.toml", "ui.toml", 0o644)],
        summary: "Switchboard operator dashboard",
        description: "A web dashboard over one or more Switchboard signaling servers:\n calls, registrations and RTP managers, live.",
    },
];

const MAINTAINER: &str = "Switchboard developers <switchboard@example.invalid>";

pub fn run(args: &DebArgs) -> anyhow::Result<()> {
    for tool in ["dpkg-deb", "dpkg", "objcopy"] {
        if !util::on_path(tool) {
            bail!("{tool} is missing (Debian: apt-get install dpkg-dev binutils)");
        }
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(install::release_dir);
    if !args.no_build {
        let all: Vec<&str> = PACKAGES.iter().flat_map(|p| p.binaries).copied().collect();
        install::build_release(&all)?;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| bin_dir.join("../debian"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let version = format!("{}-{}", env!("CARGO_PKG_VERSION"), args.revision);
    let arch = architecture()?;
    for package in &PACKAGES {
        let deb = build_package(package, &bin_dir, &out, &version, &arch)?;
        println!("deb: {}", deb.display());
    }
    Ok(())
}

fn architecture() -> anyhow::Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn build_package(
    package: &Package,
    bin_dir: &Path,
    out: &Path,
    version: &str,
    arch: &str,
) -> anyhow::Result<PathBuf> {
    let root = out.join("stage").join(package.name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let stage = |path: &str| root.join(path.trim_start_matches('/'));

    for binary in package.binaries {
        let built = bin_dir.join(binary);
        if !built.is_file() {
            bail!(
                "{} is missing; build it (drop --no-build) or point --bin-dir at the built binaries",
                built.display()
            );
        }
        let target = stage(&format!("/usr/bin/{binary}"));
        create_dirs(target.parent().expect("a parent"))?;
        // Debug information is for developers, not for every host.
        util::run(
            Command::new("objcopy")
                .arg("--strip-unneeded")
                .arg("--remove-section=.comment")
                .arg("--remove-section=.note")
                .arg(&built)
                .arg(&target),
        )?;
        set_mode(&target, 0o755)?;
    }

    let units_src = workspace_root().join("deploy/systemd");
    for unit in package.units {
        let text = fs::read_to_string(units_src.join(unit))
            .with_context(|| format!("reading deploy/systemd/{unit}"))?;
        write(
            &stage(&format!("/lib/systemd/system/{unit}")),
            install::render_unit(&text, Path::new("/usr/bin")).as_bytes(),
            0o644,
        )?;
    }

    let mut conffiles = String::new();
    for (source, name, mode) in package.configs {
        let bytes = fs::read(workspace_root().join("deploy").join(source))
            .with_context(|| format!("reading deploy/{source}"))?;
        let path = format!("{CONFIG_DIR}/{name}");
        write(&stage(&path), &bytes, *mode)?;
        writeln!(conffiles, "{path}")?;
    }

    let doc = stage(&format!("/usr/share/doc/{}", package.name));
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    write(
        &doc.join("changelog.Debian.gz"),
        &gzip(changelog(package.name, version).as_bytes())?,
        0o644,
    )?;

    let installed_kib = disk_usage_kib(&root)?;
    let control = stage("/DEBIAN");
    create_dirs(&control)?;
    set_mode(&control, 0o755)?;
    write(
        &control.join("control"),
        control_file(package, version, arch, installed_kib).as_bytes(),
        0o644,
    )?;
    write(&control.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write(
        &control.join("postinst"),
        postinst(package).as_bytes(),
        0o755,
    )?;
    write(&control.join("prerm"), prerm(package).as_bytes(), 0o755)?;
    write(&control.join("postrm"), postrm(package).as_bytes(), 0o755)?;
    write(&control.join("md5sums"), md5sums(&root)?.as_bytes(), 0o644)?;

    let deb = out.join(format!("{}_{version}_{arch}.deb", package.name));
    util::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn control_file(package: &Package, version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: {name}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2), adduser, init-system-helpers (>= 1.54~)\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/switchboard\n\
         Description: {summary}\n {description}\n",
        name = package.name,
        summary = package.summary,
        description = package.description,
    )
}

fn units_list(package: &Package) -> String {
    package
        .units
        .iter()
        .filter(|u| u.ends_with(".service"))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates the user, hands it the state directory and the configuration
/// (readable by its group, not writable), and enables the units without
/// starting them.
fn postinst(package: &Package) -> String {
    let configs: Vec<String> = package
        .configs
        .iter()
        .map(|(_, name, _)| format!("{CONFIG_DIR}/{name}"))
        .collect();
    let units = units_list(package);
    format!(
        r#"#!/bin/sh
set -e

if [ "$1" = "configure" ]; then
    if ! getent passwd {SERVICE_USER} >/dev/null; then
        adduser --system --group --home {STATE_DIR} --no-create-home \
            --shell /usr/sbin/nologin --gecos "Switchboard VoIP daemons" {SERVICE_USER}
    fi
    install -d -m 0750 -o root -g {SERVICE_USER} {CONFIG_DIR}
    install -d -m 0750 -o {SERVICE_USER} -g {SERVICE_USER} {STATE_DIR}
    for file in {configs}; do
        chown root:{SERVICE_USER} "$file"
        chmod 0640 "$file"
    done
fi

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
    # Enabled, not started: the operator reviews {CONFIG_DIR} first.
    for unit in {units}; do
        deb-systemd-helper unmask "$unit" >/dev/null || true
        if deb-systemd-helper --quiet was-enabled "$unit"; then
            deb-systemd-helper enable "$unit" >/dev/null || true
        else
            deb-systemd-helper update-state "$unit" >/dev/null || true
            deb-systemd-helper enable "$unit" >/dev/null || true
        fi
    done
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
"#,
        configs = configs.join(" "),
    )
}

fn prerm(package: &Package) -> String {
    let units = units_list(package);
    format!(
        r#"#!/bin/sh
set -e

if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
    deb-systemd-invoke stop {units} >/dev/null || true
fi
"#
    )
}

/// Purge removes what the package wrote at run time: its state, and the
/// directories once the last package is gone.
fn postrm(package: &Package) -> String {
    let units = units_list(package);
    let state = match package.name {
        "switchboard-signaling" => format!("{STATE_DIR}/registrations"),
        "switchboard-rtpmanager" => format!("{STATE_DIR}/audio"),
        _ => String::new(),
    };
    format!(
        r#"#!/bin/sh
set -e

if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi

if [ "$1" = "remove" ]; then
    deb-systemd-helper mask {units} >/dev/null || true
fi

if [ "$1" = "purge" ]; then
    deb-systemd-helper purge {units} >/dev/null || true
    deb-systemd-helper unmask {units} >/dev/null || true
    rm -rf {state}
    rmdir --ignore-fail-on-non-empty {STATE_DIR} {CONFIG_DIR} 2>/dev/null || true
fi
"#
    )
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: switchboard\n\
     Source: https://example.invalid/switchboard\n\
     \n\
     Files: *\n\
     Copyright: 2026 Switchboard developers\n\
     License: Apache-2.0\n\
     \n\
     License: Apache-2.0\n\
     \x20On Debian systems, the full text of the Apache License, Version 2.0 can be\n\
     \x20found in /usr/share/common-licenses/Apache-2.0.\n"
        .to_owned()
}

fn changelog(name: &str, version: &str) -> String {
    let date = Command::new("date")
        .args(["-R", "-u", "-d", "@0"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_owned());
    format!(
        "{name} ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb.\n\n -- {MAINTAINER}  {date}\n"
    )
}

/// `gzip -9n`: no name or time in the header, so the package is the same
/// from one build to the next.
fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .context("feeding gzip")?;
    let output = child.wait_with_output().context("running gzip")?;
    if !output.status.success() {
        bail!("gzip failed: {}", output.status);
    }
    Ok(output.stdout)
}

fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "DEBIAN") {
                    continue;
                }
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn disk_usage_kib(root: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for file in files_under(root)? {
        bytes += fs::metadata(&file)?.len().div_ceil(1024);
    }
    Ok(bytes.max(1))
}

/// DEBIAN/md5sums for everything but the conffiles (dpkg tracks those).
fn md5sums(root: &Path) -> anyhow::Result<String> {
    let files: Vec<PathBuf> = files_under(root)?
        .into_iter()
        .filter(|f| !f.starts_with(root.join("etc")))
        .collect();
    let output = Command::new("md5sum")
        .current_dir(root)
        .args(
            files
                .iter()
                .map(|f| f.strip_prefix(root).expect("under root")),
        )
        .output()
        .context("running md5sum")?;
    if !output.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn create_dirs(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    create_dirs(path.parent().expect("a parent"))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}
