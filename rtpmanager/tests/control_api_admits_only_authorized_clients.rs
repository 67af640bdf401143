//! Who may use the control API: the real manager binary started with TLS
//! and a client CA admits only clients with a certificate of that CA; with
//! a token file it answers UNAUTHENTICATED to requests without one of its
//! tokens, takes a rewritten file on SIGHUP, and never logs a token; beyond loopback without either it warns.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use pki::Pki;
use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// A TLS channel to `grpc` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    grpc: SocketAddr,
    pki: &Pki,
    ca: &str,
    identity: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read(ca)));
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{name}.crt")),
            pki.read(&format!("{name}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://{grpc}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

/// Health over a TLS channel; the connection error or the status, as text.
async fn tls_health(
    grpc: SocketAddr,
    pki: &Pki,
    ca: &str,
    identity: Option<&str>,
) -> Result<v1::HealthResponse, String> {
    let channel = tls_channel(grpc, pki, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RtpManagerClient::new(channel)
        .health(v1::HealthRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_client_ca() {
    let pki = Pki::new();
    let manager = common::spawn(&pki.manager_tls(), 4);
    assert!(
        manager.daemon.log().contains("grpc_access=tls+client-cert"),
        "{}",
        manager.daemon.log()
    );

    let channel = tls_channel(manager.grpc, &pki, "ca.crt", Some("client"))
        .await
        .expect("a client with a certificate of the client CA connects");
    let mut client = RtpManagerClient::new(channel);
    let info = client
        .info(v1::InfoRequest {})
        .await
        .expect("Info over mutual TLS")
        .into_inner();
    assert!(!info.instance_id.is_empty(), "{info:?}");
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health over mutual TLS")
        .into_inner();
    assert_eq!(health.status(), v1::ServingStatus::Serving);
    assert_eq!(health.ports_free, 4);

    let refused = tls_health(manager.grpc, &pki, "ca.crt", None).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let refused = tls_health(manager.grpc, &pki, "ca.crt", Some("rogue-client")).await;
    assert!(refused.is_err(), "a certificate of another CA: {refused:?}");
    let refused = tls_health(manager.grpc, &pki, "rogue-ca.crt", Some("client")).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "a client that does not trust the manager's CA stops: {refused:?}"
    );
    let by_name = Endpoint::from_shared(format!("https://{}", manager.grpc))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.read("ca.crt")))
                .identity(Identity::from_pem(
                    pki.read("client.crt"),
                    pki.read("client.key"),
                ))
                .domain_name("rtpmanager-9.example"),
        )
        .expect("tls config")
        .connect()
        .await;
    assert!(
        by_name
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("NotValidForName")),
        "the manager's certificate must name what the client connects to: {by_name:?}"
    );
    let plaintext = async {
        RtpManagerClient::connect(format!("http://{}", manager.grpc))
            .await
            .map_err(|e| format!("connect: {e:?}"))?
            .health(v1::HealthRequest {})
            .await
            .map_err(|s| format!("{s:?}"))
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .expect("a plaintext client gets an answer, not a hang");
    assert!(refused.is_err(), "plaintext: {refused:?}");

    let again = client
        .health(v1::HealthRequest {})
        .await
        .expect("the admitted client is still served");
    assert_eq!(again.into_inner().status(), v1::ServingStatus::Serving);
}

/// A client sending `token` (if any) as a bearer token.
async fn with_token(
    grpc: SocketAddr,
    token: Option<&'static str>,
) -> RtpManagerClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone,
    >,
> {
    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    RtpManagerClient::with_interceptor(channel, move |mut request: Request<()>| {
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("ascii");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    })
}

const FIRST: &str = "e3b0c44298fc1c149afbf4c8996fb924";
const SECOND: &str = "27ae41e4649b934ca495991b7852b855";
const WRONG: &str = "d4735e3a265e16eee03f59718b9b5d03";

#[tokio::test]
async fn requests_need_a_token_of_the_token_file_which_is_never_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# rotation: new first\n{FIRST}\n\n{SECOND}\n"),
    )
    .expect("write tokens");
    let manager = common::spawn(&["--grpc-token-file", tokens.to_str().expect("utf-8")], 4);
    assert!(
        manager.daemon.log().contains("grpc_access=plaintext+token"),
        "{}",
        manager.daemon.log()
    );

    let missing = with_token(manager.grpc, None)
        .await
        .health(v1::HealthRequest {})
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("bearer token"), "{missing:?}");
    let wrong = with_token(manager.grpc, Some(WRONG))
        .await
        .health(v1::HealthRequest {})
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let mut watch = with_token(manager.grpc, Some(WRONG)).await;
    let refused = watch
        .watch(v1::WatchRequest::default())
        .await
        .expect_err("streams are checked too");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = with_token(manager.grpc, Some(WRONG))
        .await
        .delete(v1::DeleteRequest {
            call_id: "c1".into(),
            ..Default::default()
        })
        .await
        .expect_err("a stranger cannot delete a call");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let health = with_token(manager.grpc, Some(FIRST))
        .await
        .health(v1::HealthRequest {})
        .await
        .expect("the first token")
        .into_inner();
    assert_eq!(health.status(), v1::ServingStatus::Serving);
    let calls = with_token(manager.grpc, Some(SECOND))
        .await
        .list_calls(v1::ListCallsRequest::default())
        .await
        .expect("the second token (rotation)")
        .into_inner();
    assert!(calls.calls.is_empty(), "{calls:?}");

    // Rotation: the file loses FIRST, SIGHUP, and FIRST is refused.
    std::fs::write(&tokens, format!("{SECOND}\n")).expect("rewrite tokens");
    hangup(&manager);
    wait_for_log(&manager, "--grpc-token-file reloaded").await;
    let retired = with_token(manager.grpc, Some(FIRST))
        .await
        .health(v1::HealthRequest {})
        .await
        .expect_err("a retired token");
    assert_eq!(retired.code(), Code::Unauthenticated, "{retired:?}");
    std::fs::write(&tokens, "short\n").expect("break the file");
    hangup(&manager);
    wait_for_log(&manager, "--grpc-token-file refused").await;
    with_token(manager.grpc, Some(SECOND))
        .await
        .health(v1::HealthRequest {})
        .await
        .expect("an invalid new file keeps the tokens in force");

    wait_for_log(&manager, "gRPC request refused").await;
    let log = manager.daemon.log();
    assert!(log.contains("reason=missing"), "{log}");
    for token in [FIRST, SECOND, WRONG] {
        assert!(!log.contains(token), "a token reached the log:\n{log}");
    }
}

/// A Control stream opened by `client`: where requests go and where
/// replies come.
async fn control_stream<F: tonic::service::Interceptor>(
    client: &mut RtpManagerClient<tonic::service::interceptor::InterceptedService<Channel, F>>,
) -> Result<
    (
        tokio::sync::mpsc::UnboundedSender<v1::ControlRequest>,
        tonic::Streaming<v1::ControlReply>,
    ),
    Status,
> {
    let (requests, queued) = tokio::sync::mpsc::unbounded_channel();
    let replies = client
        .control(tokio_stream::wrappers::UnboundedReceiverStream::new(queued))
        .await?
        .into_inner();
    Ok((requests, replies))
}

/// A Delete of a call that does not exist: answered NOT_FOUND by a stream
/// that serves its client.
fn delete_nothing(id: u64) -> v1::ControlRequest {
    v1::ControlRequest {
        id,
        request: Some(v1::control_request::Request::Delete(v1::DeleteRequest {
            call_id: "no-such-call".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn a_control_stream_is_served_only_while_its_token_is_in_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{FIRST}\n{SECOND}\n")).expect("write tokens");
    let manager = common::spawn(&["--grpc-token-file", tokens.to_str().expect("utf-8")], 4);

    let refused = control_stream(&mut with_token(manager.grpc, Some(WRONG)).await)
        .await
        .expect_err("a stranger cannot open one");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let mut first = with_token(manager.grpc, Some(FIRST)).await;
    let (requests, mut replies) = control_stream(&mut first).await.expect("opened");
    requests.send(delete_nothing(1)).expect("open");
    let reply = replies.message().await.expect("served").expect("a reply");
    assert_eq!(reply.id, 1);
    let Some(v1::control_reply::Reply::Error(error)) = reply.reply else {
        panic!("NOT_FOUND expected: {reply:?}");
    };
    assert_eq!(Code::from_i32(error.code), Code::NotFound, "{error:?}");

    // FIRST is retired while its stream is open: the stream's next request
    // ends it, as a new unary request with FIRST would be refused.
    std::fs::write(&tokens, format!("{SECOND}\n")).expect("rewrite tokens");
    hangup(&manager);
    wait_for_log(&manager, "--grpc-token-file reloaded").await;
    requests.send(delete_nothing(2)).expect("still open");
    let ended = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("answered within 5 s")
        .expect_err("the stream ends");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let again = control_stream(&mut first)
        .await
        .expect_err("nor can it open another");
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");
    let mut second = with_token(manager.grpc, Some(SECOND)).await;
    let (requests, mut replies) = control_stream(&mut second).await.expect("opened");
    requests.send(delete_nothing(3)).expect("open");
    let reply = replies.message().await.expect("served").expect("a reply");
    assert_eq!(reply.id, 3);
}

fn hangup(manager: &common::Started) {
    manager.daemon.hang_up();
}

async fn wait_for_log(manager: &common::Started, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !manager.daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "`{text}` not logged:\n{}",
            manager.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the manager with `args` until it exits (at most 10 s): its exit
/// status and stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    switchboard_testkit::daemon::run_to_exit(
        "the manager given a bad access option",
        Command::new(common::BIN)
            .args(["--fast-path", "off", "--grpc-port", "0"])
            .args(args),
        Duration::from_secs(10),
    )
}

#[test]
fn unusable_access_files_stop_the_start_naming_the_option() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.crt");
    let (status, log) = run_to_exit(&[
        "--grpc-tls-cert",
        missing.to_str().expect("utf-8"),
        "--grpc-tls-key",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!status.success());
    assert!(log.contains("--grpc-tls-cert: cannot read"), "{log}");

    let short = dir.path().join("tokens");
    std::fs::write(&short, "short-secret\n").expect("write");
    let (status, log) = run_to_exit(&["--grpc-token-file", short.to_str().expect("utf-8")]);
    assert!(!status.success());
    assert!(
        log.contains("--grpc-token-file") && log.contains("line 1"),
        "{log}"
    );
    assert!(!log.contains("short-secret"), "the token leaked: {log}");
}

#[tokio::test]
async fn an_open_listener_beyond_loopback_is_warned_about_but_serves() {
    let manager = common::spawn(&["--grpc-address", "0.0.0.0"], 2);
    assert!(
        manager
            .daemon
            .log()
            .contains("without authenticating clients: anyone who reaches it"),
        "{}",
        manager.daemon.log()
    );
    // `systemctl reload` sends SIGHUP; without a token file it must not
    // end the manager (the signal's default action).
    hangup(&manager);
    wait_for_log(&manager, "SIGHUP: nothing to reload").await;
    let loopback = SocketAddr::from(([127, 0, 0, 1], manager.grpc.port()));
    let health = RtpManagerClient::connect(format!("http://{loopback}"))
        .await
        .expect("connect")
        .health(v1::HealthRequest {})
        .await
        .expect("existing deployments keep running");
    assert_eq!(health.into_inner().status(), v1::ServingStatus::Serving);

    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{FIRST}\n")).expect("write tokens");
    let guarded = common::spawn(
        &[
            "--grpc-address",
            "0.0.0.0",
            "--grpc-token-file",
            tokens.to_str().expect("utf-8"),
        ],
        2,
    );
    assert!(
        !guarded
            .daemon
            .log()
            .contains("without authenticating clients"),
        "{}",
        guarded.daemon.log()
    );
}
