//! Digest authentication (RFC 3261 §22, RFC 8760).
