//! RFC 3261 §10 registrar and location service.
