//! `cargo xtask deb`: the three packages are built from the workspace's
//! binaries, carry the expected files and conffiles, pass lintian without
//! errors, and (as root) install, create the user, enable the units without
//! starting them, start from their shipped configuration, and purge clean.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: [&str; 3] = [
    "switchboard-signaling",
    "switchboard-rtpmanager",
    "switchboard-ui",
];

/// The directory of the workspace's debug binaries, each up to date.
fn built_binaries() -> PathBuf {
    let mut dir = None;
    for binary in [
        "switchboard-signaling",
        "switchboard-ctl",
        "switchboard-rtpmanager",
        "switchboard-ui",
    ] {
        let path = switchboard_testkit::workspace_binary(binary);
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.expect("four binaries, one directory")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run a tool");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}

/// The packages, built once for both tests under target/debian-test.
fn packages() -> &'static [PathBuf] {
    static BUILT: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = built_binaries().join("../debian-test");
        let _ = std::fs::remove_dir_all(&out);
        build_packages(&out)
    })
}

fn build_packages(out: &Path) -> Vec<PathBuf> {
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["deb", "--no-build", "--bin-dir"])
        .arg(built_binaries())
        .arg("--out")
        .arg(out));
    PACKAGES
        .iter()
        .map(|name| {
            let deb = std::fs::read_dir(out)
                .expect("list the output")
                .map(|e| e.expect("entry").path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
                });
            deb.unwrap_or_else(|| panic!("no {name} package in {}", out.display()))
        })
        .collect()
}

fn tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

#[test]
fn the_packages_carry_the_daemons_units_and_conffiles_and_pass_lintian() {
    if !tool("dpkg-deb") {
        eprintln!("SKIPPED: dpkg-deb is not installed (not a Debian host)");
        return;
    }
    let debs = packages();

    let contents = stdout(Command::new("dpkg-deb").arg("-c").arg(&debs[0]));
    for path in [
        "./usr/bin/switchboard-signaling",
        "./usr/bin/switchboard-ctl",
        "./lib/systemd/system/switchboard-signaling.service",
        "./lib/systemd/system/switchboard.target",
        "./etc/switchboard/signaling.toml",
        "./etc/switchboard/users.toml",
        "./etc/switchboard/dialplan.json",
        "./usr/share/doc/switchboard-signaling/copyright",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    let conffiles = stdout(
        Command::new("dpkg-deb")
            .args(["-I"])
            .arg(&debs[0])
            .arg("conffiles"),
    );
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        [
            "/etc/switchboard/signaling.toml",
            "/etc/switchboard/users.toml",
            "/etc/switchboard/dialplan.json"
        ]
    );
    for (deb, name) in debs.iter().zip(PACKAGES) {
        assert_eq!(
            stdout(
                Command::new("dpkg-deb")
                    .args(["-f"])
                    .arg(deb)
                    .arg("Package")
            )
            .trim(),
            name
        );
    }
    let manager = stdout(Command::new("dpkg-deb").arg("-c").arg(&debs[1]));
    assert!(
        manager.contains("./usr/bin/switchboard-rtpmanager"),
        "{manager}"
    );
    assert!(
        manager.contains("./etc/switchboard/rtpmanager.toml"),
        "{manager}"
    );

    if tool("lintian") {
        let output = Command::new("lintian")
            .args(["--tag-display-limit", "0"])
            .args(debs)
            .output()
            .expect("run lintian");
        let report = String::from_utf8_lossy(&output.stdout);
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
        assert!(errors.is_empty(), "lintian errors:\n{report}");
        eprintln!(
            "lintian: no errors; {} warnings",
            report.lines().filter(|l| l.starts_with("W:")).count()
        );
    } else {
        eprintln!("SKIPPED lintian: not installed (`cargo xtask setup` installs it)");
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a daemon from its shipped configuration, with ports and state
/// moved aside, and waits for its ready line.
fn starts(binary: &str, args: &[&str], ready: &str) {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while Instant::now() < deadline && !log.contains(ready) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            log.push_str(&line);
            log.push('\n');
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{binary} exited ({status}):\n{log}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains(ready), "{binary} not ready:\n{log}");
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a port")
        .local_addr()
        .expect("address")
        .port()
        .to_string()
}

#[test]
fn the_packages_install_enable_without_starting_and_purge_clean() {
    if !is_root() || !tool("dpkg") || !tool("deb-systemd-helper") {
        eprintln!("SKIPPED: installing packages needs root and dpkg with init-system-helpers");
        return;
    }
    let debs = packages();
    let _ = Command::new("dpkg")
        .args(["--purge"])
        .args(PACKAGES)
        .output();
    run(Command::new("dpkg")
        .arg("-i")
        .args(debs)
        .env("DEBIAN_FRONTEND", "noninteractive"));

    let purge = || {
        run(Command::new("dpkg").arg("--purge").args(PACKAGES));
    };
    let checks = std::panic::catch_unwind(|| {
        let user = nix::unistd::User::from_name("switchboard")
            .expect("look up the user")
            .expect("the switchboard user exists");
        let state = std::fs::metadata("/var/lib/switchboard").expect("state dir");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            state.uid(),
            user.uid.as_raw(),
            "the state directory is the user's"
        );
        let users = std::fs::metadata("/etc/switchboard/users.toml").expect("users file");
        assert_eq!(
            users.mode() & 0o777,
            0o640,
            "users.toml is not world-readable"
        );
        assert_eq!(users.gid(), user.gid.as_raw());
        for unit in [
            "switchboard-signaling.service",
            "switchboard-rtpmanager.service",
            "switchboard-ui.service",
        ] {
            assert!(
                Path::new("/etc/systemd/system/switchboard.target.wants")
                    .join(unit)
                    .exists(),
                "{unit} is enabled"
            );
        }
        if tool("systemd-analyze") {
            let output = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .args([
                    "/lib/systemd/system/switchboard-signaling.service",
                    "/lib/systemd/system/switchboard-rtpmanager.service",
                    "/lib/systemd/system/switchboard-ui.service",
                ])
                .output()
                .expect("run systemd-analyze");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && !stderr.contains("switchboard-"),
                "systemd-analyze verify:\n{stderr}"
            );
        }
        let scratch = tempfile::tempdir().expect("temp dir");
        let data = scratch.path().to_str().expect("utf-8");
        starts(
            "/usr/bin/switchboard-rtpmanager",
            &[
                "--config",
                "/etc/switchboard/rtpmanager.toml",
                "--grpc-port",
                &free_port(),
                "--fast-path",
                "off",
                "--state-dir",
                data,
            ],
            "rtpmanager ready",
        );
        starts(
            "/usr/bin/switchboard-signaling",
            &[
                "--config",
                "/etc/switchboard/signaling.toml",
                "--bind-address",
                "127.0.0.1",
                "--port",
                &free_port(),
                "--rest-port",
                &free_port(),
                "--data-dir",
                data,
            ],
            "signaling ready",
        );
        starts(
            "/usr/bin/switchboard-ui",
            &[
                "--config",
                "/etc/switchboard/ui.toml",
                "--port",
                &free_port(),
            ],
            "dashboard ready",
        );
        let help = stdout(Command::new("/usr/bin/switchboard-ctl").arg("--help"));
        assert!(help.contains("calls"), "{help}");
    });
    purge();
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    for gone in [
        "/usr/bin/switchboard-signaling",
        "/usr/bin/switchboard-ctl",
        "/lib/systemd/system/switchboard-ui.service",
        "/etc/switchboard",
        "/etc/systemd/system/switchboard.target.wants/switchboard-ui.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} remains after purge");
    }
}
