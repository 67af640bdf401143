//! SIP messages as the tests' and benches' peers write them.

/// A request (or response) as a peer writes it: `start` (its first line),
/// the headers in order, then the body ([`end_with_body`]).
pub fn request(start: &str, headers: &[(&str, &str)], sdp: Option<&str>) -> String {
    let mut text = format!("{start}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    end_with_body(&mut text, sdp);
    text
}

/// Ends a message's header section: the SDP body with its Content-Type and
/// Content-Length, or Content-Length 0.
pub fn end_with_body(text: &mut String, sdp: Option<&str>) {
    match sdp {
        Some(sdp) => text.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )),
        None => text.push_str("Content-Length: 0\r\n\r\n"),
    }
}
