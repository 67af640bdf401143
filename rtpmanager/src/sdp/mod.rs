//! SDP offer/answer rewriting (RFC 3264) around sdp-rs.
