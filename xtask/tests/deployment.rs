//! The deployment files against the daemons and against systemd:
//! - every argument a unit's `ExecStart=` passes, and every key of the shipped
//!   config files, is accepted by the daemon's own parser (a unit that passes
//!   a flag the binary lacks never starts);
//! - the units carry the measured capability sets, limits and ordering;
//! - `cargo xtask install --destdir` lays out the expected tree, keeps an
//!   edited config and puts the new default beside it as `.dist`;
//! - `systemd-analyze verify` accepts the installed units.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchboard_rtpmanager::config::FastPathRequest;

const SERVICES: [&str; 3] = [
    "switchboard-signaling",
    "switchboard-rtpmanager",
    "switchboard-ui",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn unit_text(name: &str) -> String {
    let path = workspace().join("deploy/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in a unit, in order, comments skipped.
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

fn single(unit: &str, key: &str) -> String {
    let values = directive(unit, key);
    assert_eq!(
        values.len(),
        1,
        "exactly one {key}= expected, got {values:?}"
    );
    values[0].clone()
}

/// The argv a service's unit starts, with the program name as argv[0] and
/// files under /etc/switchboard/ mapped to the templates in deploy/etc/.
fn unit_argv(service: &str) -> Vec<String> {
    let exec = single(&unit_text(&format!("{service}.service")), "ExecStart");
    let mut words = exec.split_whitespace();
    let program = words.next().expect("ExecStart names a program");
    assert_eq!(
        program,
        format!("/usr/local/bin/{service}"),
        "the committed unit runs the binary from /usr/local/bin"
    );
    std::iter::once(service.to_owned())
        .chain(words.map(|w| {
            match w.strip_prefix("/etc/switchboard/") {
                Some(file) if file.ends_with(".toml") => workspace()
                    .join("deploy/etc")
                    .join(file)
                    .to_str()
                    .expect("utf-8 workspace path")
                    .to_owned(),
                _ => w.to_owned(),
            }
        }))
        .collect()
}

#[test]
fn rtpmanager_unit_and_shipped_config_load() {
    let argv = unit_argv("switchboard-rtpmanager");
    assert_eq!(
        argv[1..2],
        ["--config".to_owned()],
        "the unit passes only --config"
    );
    let config = switchboard_rtpmanager::config::Config::load_from(&argv)
        .unwrap_or_else(|e| panic!("switchboard-rtpmanager rejects {argv:?}: {e}"));
    assert_eq!(config.grpc_address.to_string(), "127.0.0.1");
    assert_eq!(config.grpc_port, 9090);
    assert_eq!((config.rtp_port_min, config.rtp_port_max), (10000, 20000));
    assert_eq!(config.fast_path, FastPathRequest::Auto);
    assert_eq!(config.bpf_pin_path, Path::new("/sys/fs/bpf/switchboard"));
    assert_eq!(
        config.state_dir.as_deref(),
        Some(Path::new("/var/lib/switchboard/rtpmanager"))
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/systemd/switchboard-rtpmanager.service"),
    )
    .expect("read the rtpmanager unit");
    let state_directory = unit
        .lines()
        .find_map(|l| l.strip_prefix("StateDirectory="))
        .expect("the unit creates the state directory");
    assert_eq!(
        Path::new("/var/lib").join(state_directory),
        Path::new("/var/lib/switchboard/rtpmanager"),
        "systemd creates exactly the --state-dir of the shipped config"
    );
    assert_eq!(config.audio_path, Path::new("/var/lib/switchboard/audio"));
    assert_eq!(config.log_level, "info");
}

#[test]
fn signaling_unit_and_shipped_config_load() {
    let argv = unit_argv("switchboard-signaling");
    let config = switchboard_signaling::config::Config::load_from(&argv)
        .unwrap_or_else(|e| panic!("switchboard-signaling rejects {argv:?}: {e}"));
    assert_eq!(config.bind_address.to_string(), "0.0.0.0");
    assert_eq!(config.port, 5060);
    assert_eq!(config.rtpmanagers, vec!["127.0.0.1:9090"]);
    assert_eq!(config.rest_address.to_string(), "127.0.0.1");
    assert_eq!(config.rest_port, 8080);
    assert_eq!(config.dialplan, Path::new("/etc/switchboard/dialplan.json"));
    assert_eq!(config.data_dir, Path::new("/var/lib/switchboard"));
}

#[test]
fn ui_unit_and_shipped_config_load() {
    let argv = unit_argv("switchboard-ui");
    let config = switchboard_ui::config::Config::load_from(&argv)
        .unwrap_or_else(|e| panic!("switchboard-ui rejects {argv:?}: {e}"));
    assert_eq!(config.address.to_string(), "127.0.0.1");
    assert_eq!(config.port, 3000);
    assert_eq!(config.backends, vec!["http://127.0.0.1:8080"]);
}

/// The checks above would catch a unit passing a flag the binary lacks, or
/// a config key it does not know: the parsers refuse both, naming them.
#[test]
fn a_nonexistent_flag_or_key_is_refused() {
    let mut argv = unit_argv("switchboard-rtpmanager");
    argv.extend(["--ebpf-object".to_owned(), "/nonexistent".to_owned()]);
    let err = switchboard_rtpmanager::config::Config::load_from(&argv)
        .expect_err("--ebpf-object is not an rtpmanager flag");
    assert!(err.to_string().contains("--ebpf-object"), "{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ui.toml");
    std::fs::write(&file, "listen_port = 3000\n").expect("write config");
    let err = switchboard_ui::config::Config::load_from([
        "switchboard-ui",
        "--config",
        file.to_str().expect("utf-8"),
    ])
    .expect_err("listen_port is not a ui key");
    assert!(
        err.to_string().contains("unknown option `listen_port`"),
        "{err}"
    );
}

#[test]
fn rtpmanager_unit_prepares_the_pin_directory_of_its_config() {
    let argv = unit_argv("switchboard-rtpmanager");
    let config =
        switchboard_rtpmanager::config::Config::load_from(&argv).expect("shipped config loads");
    let pin = config.bpf_pin_path.to_str().expect("utf-8 pin path");
    let unit = unit_text("switchboard-rtpmanager.service");
    assert_eq!(
        directive(&unit, "ExecStartPre"),
        vec![
            "-+/usr/bin/chmod go+x /sys/fs/bpf".to_owned(),
            format!("-+/usr/bin/install -d -o switchboard -g switchboard -m 0700 {pin}"),
        ]
    );
    assert_eq!(single(&unit, "ReadWritePaths"), format!("-{pin}"));
}

#[test]
fn rtpmanager_file_limit_covers_its_port_range() {
    let argv = unit_argv("switchboard-rtpmanager");
    let config =
        switchboard_rtpmanager::config::Config::load_from(&argv).expect("shipped config loads");
    let unit = unit_text("switchboard-rtpmanager.service");
    let limit: u32 = single(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    // Two sockets per RTP/RTCP pair, plus gRPC connections, the journal and
    // the runtime's own descriptors.
    let needed = 2 * config.port_pairs() + 1024;
    assert_eq!(config.port_pairs(), 5000);
    assert!(
        limit >= needed,
        "LimitNOFILE={limit} is below {needed} for ports {}-{}",
        config.rtp_port_min,
        config.rtp_port_max
    );
    assert_eq!(single(&unit, "LimitMEMLOCK"), "infinity");
}

#[test]
fn signaling_ends_its_calls_before_systemd_kills_it() {
    let argv = unit_argv("switchboard-signaling");
    let config =
        switchboard_signaling::config::Config::load_from(&argv).expect("shipped config loads");
    let unit = unit_text("switchboard-signaling.service");
    let stop = single(&unit, "TimeoutStopSec");
    let stop: u64 = stop
        .strip_suffix('s')
        .unwrap_or(&stop)
        .parse()
        .expect("TimeoutStopSec in seconds");
    let (drain, timeout) = config.shutdown();
    // A second for the process itself (REST API, SIP core) after its calls.
    let needed = drain.as_secs() + timeout.as_secs() + 1;
    assert!(
        stop >= needed,
        "TimeoutStopSec={stop}s leaves SIGKILL to end calls: shutdown_drain + shutdown_timeout need {needed}s"
    );
}

#[test]
fn signaling_file_limit_covers_its_connection_limits() {
    let argv = unit_argv("switchboard-signaling");
    let config =
        switchboard_signaling::config::Config::load_from(&argv).expect("shipped config loads");
    let unit = unit_text("switchboard-signaling.service");
    let limit: usize = single(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    // SIP TCP and REST connections plus the reserve the server keeps.
    assert_eq!(config.files_needed(), 2048 + 256 + 256);
    assert!(
        limit >= config.files_needed(),
        "LimitNOFILE={limit} is below {} for --tcp-max-connections {} and --rest-max-connections {}",
        config.files_needed(),
        config.tcp_max_connections,
        config.rest_max_connections
    );
}

#[test]
fn every_unit_sets_its_file_limit() {
    for service in SERVICES {
        let unit = unit_text(&format!("{service}.service"));
        let limit: u32 = single(&unit, "LimitNOFILE")
            .parse()
            .unwrap_or_else(|e| panic!("{service}: LimitNOFILE is not a number: {e}"));
        // systemd's soft default is 1024: each unit states more explicitly.
        assert!(limit > 1024, "{service}: LimitNOFILE={limit}");
    }
}

#[test]
fn units_grant_the_measured_capabilities_and_no_more() {
    for (service, caps) in [
        (
            "switchboard-rtpmanager",
            "CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        ),
        ("switchboard-signaling", "CAP_NET_BIND_SERVICE"),
        ("switchboard-ui", ""),
    ] {
        let unit = unit_text(&format!("{service}.service"));
        assert_eq!(single(&unit, "AmbientCapabilities"), caps, "{service}");
        assert_eq!(single(&unit, "CapabilityBoundingSet"), caps, "{service}");
        assert_eq!(single(&unit, "User"), "switchboard", "{service}");
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
            ("SyslogIdentifier", service),
            ("PartOf", "switchboard.target"),
            ("WantedBy", "switchboard.target"),
        ] {
            assert_eq!(single(&unit, key), value, "{service}: {key}");
        }
    }
}

#[test]
fn signaling_follows_the_rtpmanager_but_survives_its_restart() {
    let unit = unit_text("switchboard-signaling.service");
    assert!(
        single(&unit, "Wants")
            .split_whitespace()
            .any(|u| u == "switchboard-rtpmanager.service"),
        "signaling wants the rtpmanager"
    );
    assert!(
        single(&unit, "After")
            .split_whitespace()
            .any(|u| u == "switchboard-rtpmanager.service"),
        "signaling starts after the rtpmanager"
    );
    for key in ["Requires", "BindsTo", "Requisite"] {
        assert!(
            directive(&unit, key).is_empty(),
            "{key}= would stop signaling when the rtpmanager restarts"
        );
    }
    let target = unit_text("switchboard.target");
    assert_eq!(single(&target, "WantedBy"), "multi-user.target");
}

/// Fake daemon binaries: the install test must not depend on a release build.
fn fake_binaries(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for service in SERVICES {
        let path = dir.join(service);
        std::fs::write(&path, format!("#!/bin/sh\necho {service}\n")).expect("write fake binary");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make fake binary executable");
    }
}

fn xtask(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask");
    assert!(
        output.status.success(),
        "xtask {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn install_into(stage: &Path, bins: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "install",
        "--no-build",
        "--destdir",
        stage.to_str().expect("utf-8"),
        "--bin-dir",
        bins.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&xtask(&args).stdout).into_owned()
}

fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("list staged dir") {
            let path = entry.expect("dir entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .to_str()
                .expect("utf-8")
                .to_owned();
            if path.is_dir() {
                out.insert(format!("{relative}/"));
                walk(root, &path, out);
            } else {
                out.insert(relative);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn can_synthesise_audio() -> bool {
    ["espeak-ng", "sox"].iter().all(|tool| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
    })
}

#[test]
fn install_lays_out_the_tree_and_keeps_edited_configs() {
    let bins = tempfile::tempdir().expect("temp dir");
    fake_binaries(bins.path());
    let stage = tempfile::tempdir().expect("temp dir");
    let root = stage.path();

    let first = install_into(root, bins.path(), &[]);
    let mut expected: BTreeSet<String> = [
        "etc/",
        "etc/switchboard/",
        "etc/switchboard/dialplan.json",
        "etc/switchboard/rtpmanager.toml",
        "etc/switchboard/signaling.toml",
        "etc/switchboard/ui.toml",
        "etc/switchboard/users.toml",
        "etc/systemd/",
        "etc/systemd/system/",
        "etc/systemd/system/switchboard-rtpmanager.service",
        "etc/systemd/system/switchboard-signaling.service",
        "etc/systemd/system/switchboard-ui.service",
        "etc/systemd/system/switchboard.target",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "usr/local/bin/switchboard-rtpmanager",
        "usr/local/bin/switchboard-signaling",
        "usr/local/bin/switchboard-ui",
        "var/",
        "var/lib/",
        "var/lib/switchboard/",
        "var/lib/switchboard/audio/",
    ]
    .map(str::to_owned)
    .into();
    if can_synthesise_audio() {
        expected.insert("var/lib/switchboard/audio/welcome.wav".to_owned());
    } else {
        eprintln!("NOTE: espeak-ng/sox absent: the demo announcement is not expected");
    }
    assert_eq!(tree(root), expected);
    assert!(
        first.contains("the `switchboard` system user was not created and systemctl was not run"),
        "install says what it skipped under --destdir:\n{first}"
    );

    let read = |relative: &str| {
        std::fs::read_to_string(root.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
    };
    let shipped = |relative: &str| {
        std::fs::read_to_string(workspace().join(relative))
            .unwrap_or_else(|e| panic!("{relative}: {e}"))
    };
    assert_eq!(
        read("usr/local/bin/switchboard-ui"),
        "#!/bin/sh\necho switchboard-ui\n"
    );
    assert_eq!(
        read("etc/systemd/system/switchboard-signaling.service"),
        shipped("deploy/systemd/switchboard-signaling.service"),
        "with the default prefix the units are installed as committed"
    );
    assert_eq!(
        read("etc/switchboard/dialplan.json"),
        shipped("deploy/demo/dialplan.json")
    );

    // The administrator edits one config; a reinstall keeps it.
    let edited = "port = 5080\n";
    std::fs::write(root.join("etc/switchboard/signaling.toml"), edited).expect("edit config");
    let second = install_into(root, bins.path(), &[]);
    assert_eq!(read("etc/switchboard/signaling.toml"), edited);
    assert_eq!(
        read("etc/switchboard/signaling.toml.dist"),
        shipped("deploy/etc/signaling.toml")
    );
    let dist_line = format!(
        "install: kept     {} (edited); the new default is {}",
        root.join("etc/switchboard/signaling.toml").display(),
        root.join("etc/switchboard/signaling.toml.dist").display()
    );
    assert!(
        second.contains(&dist_line),
        "install says it kept the file:\n{second}"
    );
    expected.insert("etc/switchboard/signaling.toml.dist".to_owned());
    assert_eq!(tree(root), expected, "only the .dist file is new");

    let out = xtask(&["uninstall", "--destdir", root.to_str().expect("utf-8")]);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("--purge removes them"), "{out}");
    let kept: BTreeSet<String> = expected
        .iter()
        .filter(|p| !p.starts_with("usr/local/bin/s") && !p.starts_with("etc/systemd/system/s"))
        .cloned()
        .collect();
    assert_eq!(
        tree(root),
        kept,
        "uninstall removes binaries and units only"
    );

    xtask(&[
        "uninstall",
        "--purge",
        "--destdir",
        root.to_str().expect("utf-8"),
    ]);
    let left: BTreeSet<String> = [
        "etc/",
        "etc/systemd/",
        "etc/systemd/system/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "var/",
        "var/lib/",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(tree(root), left, "--purge removes configuration and state");
}

#[test]
fn install_rewrites_the_units_for_another_prefix() {
    let bins = tempfile::tempdir().expect("temp dir");
    fake_binaries(bins.path());
    let stage = tempfile::tempdir().expect("temp dir");
    install_into(
        stage.path(),
        bins.path(),
        &[
            "--prefix",
            "/opt/switchboard",
            "--unit-dir",
            "/lib/systemd/system",
        ],
    );
    for service in SERVICES {
        let unit = std::fs::read_to_string(
            stage
                .path()
                .join("lib/systemd/system")
                .join(format!("{service}.service")),
        )
        .expect("unit installed under --unit-dir");
        let exec = single(&unit, "ExecStart");
        assert_eq!(
            exec.split_whitespace().next(),
            Some(format!("/opt/switchboard/bin/{service}").as_str())
        );
        assert!(stage
            .path()
            .join("opt/switchboard/bin")
            .join(service)
            .is_file());
    }
}

#[test]
fn install_without_built_binaries_names_the_missing_one() {
    let bins = tempfile::tempdir().expect("temp dir");
    let stage = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["install", "--no-build", "--destdir"])
        .arg(stage.path())
        .arg("--bin-dir")
        .arg(bins.path())
        .output()
        .expect("run xtask");
    assert!(
        !output.status.success(),
        "install must fail without binaries"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{} is missing",
            bins.path().join("switchboard-signaling").display()
        )),
        "{stderr}"
    );
    assert!(
        tree(stage.path()).is_empty(),
        "nothing is installed when a binary is missing"
    );
}

#[test]
fn systemd_analyze_verifies_the_installed_units() {
    let host_units = Path::new("/usr/lib/systemd/system");
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package `systemd`; `cargo xtask setup` installs it)");
        return;
    };
    if !host_units.join("multi-user.target").is_file() {
        eprintln!("SKIPPED: no systemd units under {}", host_units.display());
        return;
    }
    let bins = tempfile::tempdir().expect("temp dir");
    fake_binaries(bins.path());
    let stage = tempfile::tempdir().expect("temp dir");
    let root = stage.path();
    install_into(root, bins.path(), &[]);

    // verify --root resolves every unit and ExecStart= path inside the
    // staged tree, so it needs the distribution's units there too.
    let staged_units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&staged_units).expect("create staged unit dir");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host_units.display()))
        .arg(&staged_units)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copying the host's units failed");
    // ExecReload= of the signaling unit runs the distribution's kill.
    let staged_bin = root.join("usr/bin");
    std::fs::create_dir_all(&staged_bin).expect("create staged /usr/bin");
    std::fs::copy("/usr/bin/kill", staged_bin.join("kill")).expect("stage /usr/bin/kill");

    let units = [
        "switchboard-rtpmanager.service",
        "switchboard-signaling.service",
        "switchboard-ui.service",
        "switchboard.target",
    ];
    let output = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units.map(|u| format!("/etc/systemd/system/{u}")))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify complains:\n{stderr}"
    );

    // The check has teeth: a missing binary is reported.
    std::fs::remove_file(root.join("usr/local/bin/switchboard-ui")).expect("remove fake ui");
    let output = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/switchboard-ui.service")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("/usr/local/bin/switchboard-ui"),
        "systemd-analyze verify must report the missing binary:\n{stderr}"
    );
}
