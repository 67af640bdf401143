//! The Control stream of the real manager binary: call requests on one
//! long-lived stream, each answered by its id as its unary RPC would be,
//! and the stream (with Watch) ended at shutdown so the manager stops at
//! once instead of waiting out its grace period for its clients.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::control_reply::Reply;
use switchboard_proto::v1::control_request::Request as Op;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

/// An open Control stream: where requests go and where replies come.
struct Stream {
    requests: mpsc::UnboundedSender<v1::ControlRequest>,
    replies: tonic::Streaming<v1::ControlReply>,
}

async fn open(client: &mut RtpManagerClient<Channel>) -> Stream {
    let (requests, queued) = mpsc::unbounded_channel();
    let replies = client
        .control(tokio_stream::wrappers::UnboundedReceiverStream::new(queued))
        .await
        .expect("Control opens")
        .into_inner();
    Stream { requests, replies }
}

impl Stream {
    fn send(&self, id: u64, request: Option<Op>) {
        self.requests
            .send(v1::ControlRequest { id, request })
            .expect("stream open");
    }

    /// The next `n` replies, by id.
    async fn replies(&mut self, n: usize) -> HashMap<u64, Reply> {
        let mut replies = HashMap::new();
        while replies.len() < n {
            let reply = tokio::time::timeout(Duration::from_secs(5), self.replies.message())
                .await
                .expect("a reply within 5 s")
                .expect("the stream is healthy")
                .expect("the stream goes on");
            let previous = replies.insert(reply.id, reply.reply.expect("a reply carries one"));
            assert!(previous.is_none(), "one reply per id");
        }
        replies
    }
}

fn error_code(reply: &Reply) -> Option<Code> {
    match reply {
        Reply::Error(error) => Some(Code::from_i32(error.code)),
        _ => None,
    }
}

fn offer(call: &str, sdp: String) -> Op {
    Op::Offer(v1::OfferRequest {
        call_id: call.into(),
        leg_id: "a".into(),
        peer_leg_id: "b".into(),
        sdp,
        ..Default::default()
    })
}

#[tokio::test]
async fn the_control_stream_answers_each_request_by_its_id_as_its_unary_rpc_would() {
    let (_manager, mut client) = common::start(&[], 8).await;
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert!(health.control_stream, "Health says it serves the stream");

    let (phone_a, phone_b) = (common::endpoint(), common::endpoint());
    let a = phone_a.local_addr().expect("a");
    let b = phone_b.local_addr().expect("b");
    let mut stream = open(&mut client).await;
    stream.send(7, Some(offer("c1", common::sdp(a, "0 101"))));
    stream.send(
        8,
        Some(Op::Answer(v1::AnswerRequest {
            call_id: "no-such-call".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: common::sdp(b, "0 101"),
            bridge: false,
        })),
    );
    stream.send(9, None);
    stream.send(10, Some(offer("c2", "v=0\r\nthis is no SDP\r\n".into())));
    let replies = stream.replies(4).await;

    let Reply::Sdp(offered) = &replies[&7] else {
        panic!("the offer is answered with an SDP: {:?}", replies[&7]);
    };
    let toward_b = common::media_addr(&offered.sdp);
    assert_eq!(toward_b.ip(), a.ip(), "the manager's own address");
    assert_ne!(toward_b.port(), a.port(), "rewritten to the manager's port");
    assert_eq!(
        offered.leg.as_ref().map(|leg| leg.leg_id.as_str()),
        Some("b"),
        "the leg the rewritten offer is sent on"
    );
    assert_eq!(error_code(&replies[&8]), Some(Code::NotFound));
    assert_eq!(error_code(&replies[&9]), Some(Code::InvalidArgument));
    let Reply::Error(unparsable) = &replies[&10] else {
        panic!("bad SDP fails: {:?}", replies[&10]);
    };
    assert_eq!(Code::from_i32(unparsable.code), Code::InvalidArgument);
    assert!(!unparsable.message.is_empty(), "the reason is told");

    // The answer bridges, as the unary Answer does; the call has two legs.
    stream.send(
        11,
        Some(Op::Answer(v1::AnswerRequest {
            call_id: "c1".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: common::sdp(b, "0 101"),
            bridge: true,
        })),
    );
    let replies = stream.replies(1).await;
    let Reply::Sdp(answered) = &replies[&11] else {
        panic!("the answer is answered with an SDP: {:?}", replies[&11]);
    };
    let toward_a = common::media_addr(&answered.sdp);
    let rtp = b"\x80\x00\x00\x01\x00\x00\x00\xa0\x12\x34\x56\x78voice";
    phone_a.send_to(rtp, toward_a).expect("send");
    let (_, from) = common::recv(&phone_b).expect("the bridge relays a to b");
    assert_eq!(from, toward_b, "from b's side of the manager");
    let calls = common::calls(&mut client).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].legs.len(), 2, "{calls:?}");

    stream.send(
        12,
        Some(Op::Delete(v1::DeleteRequest {
            call_id: "c1".into(),
            ..Default::default()
        })),
    );
    let replies = stream.replies(1).await;
    let Reply::Deleted(deleted) = &replies[&12] else {
        panic!("the delete is answered with figures: {:?}", replies[&12]);
    };
    assert_eq!(deleted.legs.len(), 2, "{deleted:?}");
    let a_leg = deleted
        .legs
        .iter()
        .find(|l| l.leg_id == "a")
        .expect("leg a");
    assert_eq!(a_leg.rtp_in.as_ref().map(|c| c.packets), Some(1));
    let calls = common::calls(&mut client).await;
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn the_control_and_watch_streams_end_at_shutdown_so_the_manager_stops_at_once() {
    let (mut manager, mut client) = common::start(&[], 4).await;
    let mut watch = client
        .watch(v1::WatchRequest::default())
        .await
        .expect("Watch")
        .into_inner();
    let mut stream = open(&mut client).await;
    let a = common::endpoint().local_addr().expect("a");
    stream.send(1, Some(offer("c1", common::sdp(a, "0"))));
    let replies = stream.replies(1).await;
    assert!(matches!(replies[&1], Reply::Sdp(_)), "{replies:?}");

    let stopping = Instant::now();
    manager.send_signal(libc::SIGTERM);
    let ended = tokio::time::timeout(Duration::from_secs(2), stream.replies.message())
        .await
        .expect("the Control stream ends within 2 s");
    assert!(
        matches!(ended, Ok(None)),
        "ended cleanly, not broken: {ended:?}"
    );
    // The client closes its half, as signaling's channel does when its
    // stream ends.
    drop(stream);
    let watch_ended = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the Watch stream ends within 2 s");
    assert!(matches!(watch_ended, Ok(None)), "{watch_ended:?}");
    // Waited for without blocking this runtime: the connection's task must
    // go on answering the server's graceful-shutdown PING, as a client's
    // does, or the server waits out its grace period for the answer.
    let status = loop {
        if let Some(status) = manager.exited() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "still running:\n{}",
            manager.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", manager.log());
    // The grace period for streams still open is 3 s.
    assert!(took < Duration::from_millis(2500), "stopped in {took:?}");
    assert!(
        !manager.log().contains("still open after the grace period"),
        "{}",
        manager.log()
    );
}
