//! Checks of the RTP manager's SDP parser and RTP/RTCP parsers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switchboard_rtpmanager::media::rtp::{
    self, rtcp_packets, MuxedKind, RtcpPacket, RtpHeader, RtpPacket, RtpPacketMut,
};
use switchboard_rtpmanager::sdp::{
    self, answer_locally, negotiate, rewrite_answer, rewrite_offer, CodecPolicy, LocalEndpoint,
    MediaDescription, MediaPort, OriginState, SessionDescription,
};

/// `sdp_parse`: whatever parses serializes into text that parses back to
/// the same description and serializes to the same text; the manager's
/// rewrites of it (relayed offer, local answer, relayed answer) produce
/// SDP that parses too.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = sdp::parse(text) else {
        return;
    };
    let first = offer.to_string();
    let again = reparse(&first, "serialized SDP");
    assert_eq!(again.origin, offer.origin, "o= round trip");
    assert_eq!(again.session_name, offer.session_name, "s= round trip");
    assert_eq!(again.connection, offer.connection, "c= round trip");
    assert_eq!(again.attributes, offer.attributes, "a= round trip");
    // The serializer writes a section's fields in RFC 8866 order (i= b= k=).
    assert_eq!(
        again.media,
        in_rfc_order(&offer.media),
        "m= sections round trip"
    );
    assert_eq!(again.to_string(), first, "serializing is stable");

    let v4 = endpoint(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), 30000, false);
    let v6 = endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 30002, true);
    for (policy, local) in [
        (CodecPolicy::Passthrough, &v4),
        (CodecPolicy::g711_with_telephone_event(), &v6),
    ] {
        let mut origin = OriginState::new(7);
        if let Ok(relayed) = rewrite_offer(&offer, local, &policy, &mut origin) {
            let relayed = reparse(&relayed.to_string(), "relayed offer");
            // The peer's answer to what we relayed, answered by ourselves.
            if let Ok(answer) = answer_locally(&relayed, &v4, &mut OriginState::new(8)) {
                let answer = reparse(&answer.to_string(), "local answer");
                let _ = negotiate(&relayed, &answer);
                if let Ok(back) = rewrite_answer(&offer, &answer, local, &mut origin) {
                    let back = reparse(&back.to_string(), "relayed answer");
                    let _ = negotiate(&offer, &back);
                }
            }
        }
    }
    let _ = negotiate(&offer, &offer);
    for index in 0..offer.media.len() {
        let _ = sdp::peer_media(&offer, index, index % 2 == 0);
    }
}

fn in_rfc_order(media: &[MediaDescription]) -> Vec<MediaDescription> {
    let mut media = media.to_vec();
    for m in &mut media {
        m.fields
            .sort_by_key(|field| "ibk".find(field.kind).unwrap_or(usize::MAX));
    }
    media
}

fn reparse(text: &str, what: &str) -> SessionDescription {
    sdp::parse(text).unwrap_or_else(|e| panic!("{what} does not parse: {e}\n{text}"))
}

fn endpoint(address: IpAddr, port: u16, rtcp_mux: bool) -> LocalEndpoint {
    LocalEndpoint {
        address,
        rtp_port: MediaPort::new(port),
        rtcp_port: MediaPort::new(port + 1),
        rtcp_mux,
    }
}

/// `rtp_rtcp`: one datagram read as RTP and as compound RTCP. A parsed RTP
/// packet's parts tile the datagram; rewriting its header in place and
/// writing a fresh header with its fields both read back the same fields.
/// Every RTCP report yields exactly `count` blocks.
pub fn rtp_rtcp(data: &[u8]) {
    let kind = rtp::classify(data);
    match RtpPacket::parse(data) {
        Ok(packet) => {
            assert_ne!(kind, MuxedKind::Other, "a parsed RTP packet is RTP or RTCP");
            assert_eq!(packet.version(), 2);
            let header_len = packet.header_len();
            let payload = packet.payload();
            assert!(header_len >= 12 + 4 * usize::from(packet.csrc_count()));
            assert_eq!(
                header_len + payload.len() + packet.padding_len(),
                data.len(),
                "header, payload and padding tile the datagram"
            );
            if !packet.padding() {
                assert_eq!(packet.padding_len(), 0, "no padding without the P bit");
            }
            if let Some((_, extension)) = packet.extension_data() {
                assert_eq!(extension.len() % 4, 0, "extension length in words");
            }
            for index in 0..=packet.csrc_count() {
                assert_eq!(packet.csrc(index).is_some(), index < packet.csrc_count());
            }

            let header = RtpHeader {
                marker: !packet.marker(),
                payload_type: packet.payload_type(),
                sequence: packet.sequence().wrapping_add(1),
                timestamp: packet.timestamp().wrapping_add(160),
                ssrc: rtp::Ssrc(!packet.ssrc().0),
            };
            let mut copy = data.to_vec();
            let mut writable = RtpPacketMut::parse(&mut copy).expect("parses like RtpPacket");
            writable.set_marker(header.marker);
            writable.set_payload_type(header.payload_type);
            writable.set_sequence(header.sequence);
            writable.set_timestamp(header.timestamp);
            writable.set_ssrc(header.ssrc);
            let rewritten = writable.as_packet();
            assert_eq!(fields(&rewritten), header, "in-place rewrite reads back");
            assert_eq!(rewritten.payload(), payload, "rewrite keeps the payload");

            let mut fresh = vec![0; 12 + payload.len()];
            let len = header
                .write_packet(payload, &mut fresh)
                .expect("buffer sized for it");
            let written = RtpPacket::parse(&fresh[..len]).expect("a written packet parses");
            assert_eq!(fields(&written), header, "written header reads back");
            assert_eq!(written.payload(), payload);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }

    for (index, packet) in rtcp_packets(data).enumerate() {
        assert!(
            4 * index < data.len(),
            "each RTCP packet takes 4 octets or more"
        );
        if let Ok(
            RtcpPacket::SenderReport { blocks, .. } | RtcpPacket::ReceiverReport { blocks, .. },
        ) = packet
        {
            for block in blocks {
                assert!((-(1 << 23)..(1 << 23)).contains(&block.cumulative_lost));
                let arrival = rtp::NtpTime(0x1234_5678_9abc_def0);
                let _ = rtp::round_trip_time(arrival, block.lsr, block.dlsr);
            }
        }
    }
    check_report_counts(data);
}

fn fields(packet: &RtpPacket<'_>) -> RtpHeader {
    RtpHeader {
        marker: packet.marker(),
        payload_type: packet.payload_type(),
        sequence: packet.sequence(),
        timestamp: packet.timestamp(),
        ssrc: packet.ssrc(),
    }
}

/// Each SR/RR the iterator yields has as many blocks as its header's
/// count field says, read from the packet's own octets.
fn check_report_counts(data: &[u8]) {
    let mut offset = 0;
    for packet in rtcp_packets(data) {
        let Ok(packet) = packet else { break };
        let count = usize::from(data[offset] & 0x1f);
        let length =
            4 * (usize::from(u16::from_be_bytes([data[offset + 2], data[offset + 3]])) + 1);
        match packet {
            RtcpPacket::SenderReport { blocks, .. } | RtcpPacket::ReceiverReport { blocks, .. } => {
                assert_eq!(blocks.count(), count, "report blocks as counted");
            }
            RtcpPacket::Other { count: c, body, .. } => {
                assert_eq!(usize::from(c), count);
                assert_eq!(
                    body.len() + 4,
                    length,
                    "body is the packet after its header"
                );
            }
        }
        offset += length;
    }
}
