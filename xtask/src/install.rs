//! `cargo xtask install` and `cargo xtask uninstall`: put Switchboard on a
//! systemd host, or into a staging tree for a package (`--destdir`).
//!
//! What goes where (every path below sits under `--destdir` when one is given):
//! - `<prefix>/bin/switchboard-{signaling,rtpmanager,ui}`;
//! - `<unit-dir>/switchboard-{signaling,rtpmanager,ui}.service` and
//!   `switchboard.target`, from `deploy/systemd/` with the binary paths
//!   rewritten to `<prefix>/bin`;
//! - `/etc/switchboard/{signaling,rtpmanager,ui}.toml` from `deploy/etc/`,
//!   and the demo dialplan as `/etc/switchboard/dialplan.json`;
//! - `/var/lib/switchboard/audio/` with the synthesised demo announcement.
//!
//! Installed config files belong to the administrator: a file that differs
//! from the shipped default is never overwritten; the new default is written
//! beside it as `<name>.dist` instead. With `--destdir` the live system is
//! never touched: no user is created and systemctl is not run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::util::{self, is_root, workspace_root};
use crate::{ebpf, run};

/// The daemons' binaries, as cargo names them.
pub(crate) const DAEMONS: [&str; 3] = [
    "switchboard-signaling",
    "switchboard-rtpmanager",
    "switchboard-ui",
];

/// The units in `deploy/systemd/`, in the order `systemctl` should see them.
pub(crate) const UNITS: [&str; 4] = [
    "switchboard-rtpmanager.service",
    "switchboard-signaling.service",
    "switchboard-ui.service",
    "switchboard.target",
];

/// The config templates in `deploy/etc/`.
pub(crate) const CONFIGS: [&str; 3] = ["signaling.toml", "rtpmanager.toml", "ui.toml"];

/// Where the committed units expect the binaries; rewritten to `<prefix>/bin`.
const UNIT_BIN_DIR: &str = "/usr/local/bin";

pub(crate) const CONFIG_DIR: &str = "/etc/switchboard";
pub(crate) const STATE_DIR: &str = "/var/lib/switchboard";
/// The pin directory the rtpmanager unit prepares; removed by `--purge`.
const BPF_PIN_DIR: &str = "/sys/fs/bpf/switchboard";
pub(crate) const SERVICE_USER: &str = "switchboard";
const ANNOUNCEMENT: &str = "welcome.wav";

#[derive(clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Install binaries built earlier (see --bin-dir) instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Directory holding the built binaries [default: the workspace's target/release].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Also remove /etc/switchboard, /var/lib/switchboard and the bpffs pin
    /// directory (configuration, registrations, audio, pinned maps).
    #[arg(long)]
    purge: bool,
}

#[derive(clap::Args)]
struct LayoutArgs {
    /// Installation prefix: binaries go to <PREFIX>/bin and the units run them from there.
    #[arg(long, default_value = "/usr/local", value_name = "PREFIX")]
    prefix: PathBuf,
    /// Staging root for packaging: every file is written under it and the
    /// live system is left alone (no user is created, systemctl is not run).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    /// Directory of the systemd units: /etc/systemd/system suits a local
    /// install, /lib/systemd/system a distribution package.
    #[arg(long, default_value = "/etc/systemd/system", value_name = "DIR")]
    unit_dir: PathBuf,
}

/// The resolved destination paths.
struct Layout {
    destdir: Option<PathBuf>,
    bin_dir: PathBuf,
    unit_dir: PathBuf,
}

impl Layout {
    fn new(args: &LayoutArgs) -> anyhow::Result<Layout> {
        for (name, path) in [("--prefix", &args.prefix), ("--unit-dir", &args.unit_dir)] {
            if !path.is_absolute() {
                bail!("{name} must be an absolute path, not {}", path.display());
            }
        }
        Ok(Layout {
            destdir: args.destdir.clone(),
            bin_dir: args.prefix.join("bin"),
            unit_dir: args.unit_dir.clone(),
        })
    }

    /// Where an absolute path of the installed system is written.
    fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    fn live(&self) -> bool {
        self.destdir.is_none()
    }
}

pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.layout)?;
    if layout.live() && !is_root() {
        bail!("installing on this system needs root (or pass --destdir DIR to stage the files)");
    }
    let source_dir = args.bin_dir.clone().unwrap_or_else(release_dir);
    if !args.no_build {
        build()?;
    }
    for daemon in DAEMONS {
        let built = source_dir.join(daemon);
        if !built.is_file() {
            bail!(
                "{} is missing; build it (drop --no-build) or point --bin-dir at the built binaries",
                built.display()
            );
        }
    }

    for daemon in DAEMONS {
        let bytes = fs::read(source_dir.join(daemon))
            .with_context(|| format!("reading the built {daemon}"))?;
        let target = layout.staged(&layout.bin_dir.join(daemon));
        write_replacing(&target, &bytes, 0o755)?;
        println!("install: binary   {}", target.display());
    }

    let units_src = workspace_root().join("deploy/systemd");
    for unit in UNITS {
        let text = fs::read_to_string(units_src.join(unit))
            .with_context(|| format!("reading deploy/systemd/{unit}"))?;
        let target = layout.staged(&layout.unit_dir.join(unit));
        write_replacing(
            &target,
            render_unit(&text, &layout.bin_dir).as_bytes(),
            0o644,
        )?;
        println!("install: unit     {}", target.display());
    }

    let config_dir = layout.staged(Path::new(CONFIG_DIR));
    create_dir(&config_dir, 0o750)?;
    let configs_src = workspace_root().join("deploy/etc");
    for name in CONFIGS {
        let default = fs::read(configs_src.join(name))
            .with_context(|| format!("reading deploy/etc/{name}"))?;
        install_config(&config_dir.join(name), &default)?;
    }
    // The users file holds secrets and is the operator's from the first
    // edit on: installed once, empty, never replaced.
    let users = config_dir.join("users.toml");
    if users.exists() {
        println!("install: kept     {} (yours)", users.display());
    } else {
        let template =
            fs::read(configs_src.join("users.toml")).context("reading deploy/etc/users.toml")?;
        write_replacing(&users, &template, 0o640)?;
        println!(
            "install: config   {} (no users yet: switchboard-signaling add-user)",
            users.display()
        );
    }
    let dialplan = config_dir.join("dialplan.json");
    if dialplan.exists() {
        println!("install: kept     {} (yours)", dialplan.display());
    } else {
        let demo = fs::read(workspace_root().join("deploy/demo/dialplan.json"))
            .context("reading deploy/demo/dialplan.json")?;
        write_replacing(&dialplan, &demo, 0o640)?;
        println!(
            "install: config   {} (the demo dialplan)",
            dialplan.display()
        );
    }

    let state_dir = layout.staged(Path::new(STATE_DIR));
    create_dir(&state_dir, 0o750)?;
    let audio_dir = state_dir.join("audio");
    create_dir(&audio_dir, 0o750)?;
    println!("install: dir      {}", audio_dir.display());
    let announcement = audio_dir.join(ANNOUNCEMENT);
    if announcement.exists() {
        println!("install: kept     {}", announcement.display());
    } else {
        match run::synthesise_announcement(&announcement) {
            Ok(()) => println!("install: audio    {}", announcement.display()),
            Err(e) => println!(
                "install: note: no demo announcement ({e:#}); the demo dialplan's 9000 route will report the missing file"
            ),
        }
    }

    if layout.live() {
        ensure_user()?;
        hand_over(&config_dir, &state_dir)?;
        daemon_reload("install");
        println!("install: done. Review /etc/switchboard/*.toml, then start with:");
        println!("  systemctl enable --now {}", UNITS.join(" "));
    } else {
        println!(
            "install: note: staged under --destdir; the `{SERVICE_USER}` system user was not created and systemctl was not run"
        );
        println!("install: done");
    }
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.layout)?;
    if layout.live() && !is_root() {
        bail!("uninstalling from this system needs root (or pass --destdir DIR)");
    }
    if layout.live() && systemd_running() {
        let mut disable = Command::new("systemctl");
        disable.args(["disable", "--now"]).args(UNITS);
        if !util::succeeds(&mut disable) {
            println!(
                "uninstall: note: `{}` failed (units not loaded?)",
                util::describe(&disable)
            );
        }
    }
    for path in DAEMONS
        .iter()
        .map(|d| layout.bin_dir.join(d))
        .chain(UNITS.iter().map(|u| layout.unit_dir.join(u)))
    {
        remove_file(&layout.staged(&path))?;
    }
    if layout.live() {
        daemon_reload("uninstall");
    }

    let kept = [CONFIG_DIR, STATE_DIR].map(|d| layout.staged(Path::new(d)));
    if args.purge {
        for dir in &kept {
            remove_tree(dir)?;
        }
        if layout.live() {
            remove_tree(Path::new(BPF_PIN_DIR))?;
        }
    } else {
        println!(
            "uninstall: kept {} and {} (configuration, registrations, audio); --purge removes them",
            kept[0].display(),
            kept[1].display()
        );
    }
    if layout.live() {
        println!("uninstall: kept the `{SERVICE_USER}` system user (remove it with `userdel {SERVICE_USER}`)");
    }
    println!("uninstall: done");
    Ok(())
}

/// The release directory cargo builds into.
pub(crate) fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

/// Builds the eBPF object when this machine can (the manager embeds it), then
/// the release binaries. A manager built without the object runs userspace-only.
fn build() -> anyhow::Result<()> {
    build_release(&DAEMONS)
}

/// Builds the eBPF object when this machine can, then `binaries` in release.
pub(crate) fn build_release(binaries: &[&str]) -> anyhow::Result<()> {
    let missing = ebpf::missing_prerequisites();
    if missing.is_empty() {
        if let Err(e) = ebpf::build(&ebpf::BuildArgs {}) {
            println!("install: WARNING: the eBPF build failed ({e:#}); the RTP manager will run userspace-only");
        }
    } else {
        let what: Vec<&str> = missing.iter().map(|m| m.what).collect();
        println!(
            "install: WARNING: cannot build the eBPF object (missing: {}; `cargo xtask setup` installs them); the RTP manager will run userspace-only",
            what.join(", ")
        );
    }
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--bins"]);
    for binary in binaries {
        cmd.args(["-p", binary]);
    }
    util::run(&mut cmd)
}

/// Points a committed unit's `ExecStart=` at the binaries under the prefix.
pub(crate) fn render_unit(text: &str, bin_dir: &Path) -> String {
    text.replace(
        &format!("{UNIT_BIN_DIR}/switchboard-"),
        &format!("{}/switchboard-", bin_dir.display()),
    )
}

/// Installs a default config file unless the administrator's copy differs,
/// in which case the default goes beside it as `<name>.dist`.
fn install_config(target: &Path, default: &[u8]) -> anyhow::Result<()> {
    match fs::read(target) {
        Ok(current) if current == default => {
            println!("install: config   {} (unchanged)", target.display());
        }
        Ok(_) => {
            let mut dist = target.as_os_str().to_owned();
            dist.push(".dist");
            let dist = PathBuf::from(dist);
            write_replacing(&dist, default, 0o640)?;
            println!(
                "install: kept     {} (edited); the new default is {}",
                target.display(),
                dist.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_replacing(target, default, 0o640)?;
            println!("install: config   {}", target.display());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    }
    Ok(())
}

/// Writes `bytes` to a temporary sibling and renames it over `target`, so a
/// running binary is replaced rather than rewritten in place (ETXTBSY).
fn write_replacing(target: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let parent = target
        .parent()
        .with_context(|| format!("{} has no parent directory", target.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut temporary = target.as_os_str().to_owned();
    temporary.push(".xtask-new");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temporary.display()))?;
    fs::rename(&temporary, target).with_context(|| format!("replacing {}", target.display()))
}

fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => println!("uninstall: removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("uninstall: absent  {}", path.display());
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => println!("uninstall: removed {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("uninstall: absent  {}", dir.display());
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    Ok(())
}

/// Creates the unprivileged system user the daemons run as, unless present.
fn ensure_user() -> anyhow::Result<()> {
    if nix::unistd::User::from_name(SERVICE_USER)
        .context("looking up the service user")?
        .is_some()
    {
        println!("install: user     {SERVICE_USER} (exists)");
        return Ok(());
    }
    util::run(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--home-dir",
        STATE_DIR,
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "Switchboard VoIP daemons",
        SERVICE_USER,
    ]))?;
    println!("install: user     {SERVICE_USER} (created)");
    Ok(())
}

/// Lets the daemons read their configuration (group `switchboard`, not
/// writable by them) and own their state directory.
fn hand_over(config_dir: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let user = nix::unistd::User::from_name(SERVICE_USER)
        .context("looking up the service user")?
        .with_context(|| format!("user {SERVICE_USER} missing after useradd"))?;
    let chown = |path: &Path, uid: Option<nix::unistd::Uid>| {
        nix::unistd::chown(path, uid, Some(user.gid))
            .with_context(|| format!("changing the owner of {}", path.display()))
    };
    chown(config_dir, None)?;
    for entry in
        fs::read_dir(config_dir).with_context(|| format!("listing {}", config_dir.display()))?
    {
        chown(&entry.context("listing the config directory")?.path(), None)?;
    }
    chown(state_dir, Some(user.uid))?;
    let audio = state_dir.join("audio");
    chown(&audio, Some(user.uid))?;
    for entry in fs::read_dir(&audio).with_context(|| format!("listing {}", audio.display()))? {
        chown(
            &entry.context("listing the audio directory")?.path(),
            Some(user.uid),
        )?;
    }
    println!(
        "install: owner    {} root:{SERVICE_USER}, {} {SERVICE_USER}:{SERVICE_USER}",
        config_dir.display(),
        state_dir.display()
    );
    Ok(())
}

/// Whether systemd is the running init (it creates /run/systemd/system).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir() && util::on_path("systemctl")
}

/// Makes systemd reread the units; `task` prefixes what it prints.
fn daemon_reload(task: &str) {
    if !systemd_running() {
        println!("{task}: note: systemd is not running here; run `systemctl daemon-reload` on the target host");
        return;
    }
    if let Err(e) = util::run(Command::new("systemctl").arg("daemon-reload")) {
        println!("{task}: WARNING: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_run_the_binaries_under_the_prefix() {
        let unit = "ExecStartPre=-+/usr/bin/chmod go+x /sys/fs/bpf\n\
                    ExecStart=/usr/local/bin/switchboard-ui --config /etc/switchboard/ui.toml\n";
        assert_eq!(
            render_unit(unit, Path::new("/opt/switchboard/bin")),
            "ExecStartPre=-+/usr/bin/chmod go+x /sys/fs/bpf\n\
             ExecStart=/opt/switchboard/bin/switchboard-ui --config /etc/switchboard/ui.toml\n"
        );
        assert_eq!(render_unit(unit, Path::new("/usr/local/bin")), unit);
    }

    #[test]
    fn every_committed_unit_names_its_binary_under_usr_local_bin() {
        for unit in UNITS.iter().filter(|u| u.ends_with(".service")) {
            let text = fs::read_to_string(workspace_root().join("deploy/systemd").join(unit))
                .expect("committed unit readable");
            let binary = unit.trim_end_matches(".service");
            let exec_start = format!("\nExecStart={UNIT_BIN_DIR}/{binary} ");
            assert!(
                text.contains(&exec_start),
                "{unit} must start {UNIT_BIN_DIR}/{binary}, which install rewrites to <prefix>/bin"
            );
        }
    }

    #[test]
    fn staged_paths_sit_under_destdir() {
        let layout = Layout {
            destdir: Some(PathBuf::from("/tmp/stage")),
            bin_dir: PathBuf::from("/usr/local/bin"),
            unit_dir: PathBuf::from("/etc/systemd/system"),
        };
        assert_eq!(
            layout.staged(Path::new("/etc/switchboard")),
            PathBuf::from("/tmp/stage/etc/switchboard")
        );
        let live = Layout {
            destdir: None,
            ..layout
        };
        assert_eq!(
            live.staged(Path::new("/etc/switchboard")),
            PathBuf::from("/etc/switchboard")
        );
    }
}
