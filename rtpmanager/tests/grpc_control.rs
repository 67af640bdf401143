//! The manager binary serves the control protocol: Health and Info are real,
//! methods of later versions answer UNIMPLEMENTED, bad configuration fails at
//! start naming the option.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");

/// Kills the child by pid when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on loopback")
}

async fn connect(port: u16) -> RtpManagerClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match RtpManagerClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("manager never listened on {port}: {e}"),
        }
    }
}

#[tokio::test]
async fn health_and_info_are_real() {
    let port = free_port();
    let _manager = Daemon(
        Command::new(BIN)
            .args(["--grpc-port", &port.to_string(), "--fast-path", "off"])
            .args([
                "--rtp-port-min",
                "30000",
                "--rtp-port-max",
                "30100",
                "--advertise",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the manager"),
    );
    let mut client = connect(port).await;

    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.status(), v1::ServingStatus::Serving);
    assert_eq!(health.fast_path(), v1::FastPathMode::Off);
    assert_eq!(health.ports_free, 50, "30000-30100 holds 50 RTP/RTCP pairs");

    let info = client
        .info(v1::InfoRequest {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.fast_path(), v1::FastPathMode::Off);
    assert_eq!(info.fast_path_reason, "disabled by --fast-path off");
    assert_eq!(info.advertised_addresses, vec!["127.0.0.1"]);
    assert_eq!(
        (info.rtp_port_min, info.rtp_port_max, info.ports_total),
        (30000, 30100, 50)
    );
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(
        info.codecs.iter().any(|c| c == "PCMU/8000"),
        "{:?}",
        info.codecs
    );
    assert!(!info.instance_id.is_empty());

    client
        .set_drain(v1::SetDrainRequest { drain: true })
        .await
        .expect("SetDrain");
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.status(), v1::ServingStatus::Draining);
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_option() {
    let output = Command::new(BIN)
        .args(["--rtp-port-min", "20001"])
        .output()
        .expect("run the manager");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rtp-port-min") && stderr.contains("even"),
        "{stderr}"
    );

    let output = Command::new(BIN)
        .env("SWITCHBOARD_GRPC_PORT", "nope")
        .output()
        .expect("run the manager");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--grpc-port"), "{stderr}");
}

#[test]
fn sigterm_stops_the_manager_cleanly() {
    let port = free_port();
    let manager = Command::new(BIN)
        .args(["--grpc-port", &port.to_string(), "--fast-path", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the manager");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "manager never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(manager.id()).expect("pid fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let output = manager.wait_with_output().expect("manager exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("shutting down") && stderr.contains("SIGTERM"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kernel fast path off"),
        "the reason is logged once: {stderr}"
    );
    assert_eq!(
        stderr.matches("kernel fast path off").count(),
        1,
        "{stderr}"
    );
}
