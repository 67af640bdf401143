//! What a UAS does with one datagram: framing, parsing and request checks
//! combined into a single verdict.

use super::message::SipMessage;
use super::parse::parse;
use super::response::{build_error_response, build_rejection};
use super::validate::check_request;
use super::Method;

/// The verdict on one received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A well-formed message to hand to the transaction layer. Requests
    /// with extension methods are accepted here; the core answers 501.
    Accept(Box<SipMessage>),
    /// A request refused before any processing, with the response to send.
    Reject {
        /// Status code of the response.
        status: u16,
        /// The response, ready to send.
        response: Vec<u8>,
    },
    /// Nothing to process and nothing to answer.
    Discard,
}

/// Classifies one datagram as a UAS would.
///
/// Malformed requests that carry a Via are rejected with 400/505/413/513;
/// anything else unparseable is discarded. Responses are never answered: a
/// malformed one, or one with more than one Via (RFC 3261 §8.1.3.3: a UAC
/// receiving it must discard it; RFC 4475 §3.3.10 shows the broadcast risk)
/// is discarded. No source address is known here, so rejections carry no
/// `received` stamp; a transport that has one parses, stamps and checks
/// itself with the same building blocks.
pub fn classify(bytes: &[u8]) -> Outcome {
    let message = match parse(bytes) {
        Ok(message) => message,
        Err(error) => {
            return match (error.status(), build_error_response(&error)) {
                (Some(status), Some(response)) => Outcome::Reject { status, response },
                _ => Outcome::Discard,
            }
        }
    };
    if !message.is_request() {
        return if message.vias().len() == 1 {
            Outcome::Accept(Box::new(message))
        } else {
            Outcome::Discard
        };
    }
    match check_request(&message) {
        Ok(()) => Outcome::Accept(Box::new(message)),
        Err(_) if *message.method() == Method::Ack => Outcome::Discard,
        Err(rejection) => Outcome::Reject {
            status: rejection.status,
            response: build_rejection(&message, &rejection),
        },
    }
}
