//! The checks behind the fuzz targets, one function per target taking the
//! fuzzer's bytes. Each asserts more than "no panic" where that is cheap:
//! round trips through the serializers, and the stream framer's
//! independence from how the octets were split.
//!
//! The modules use only std and the two daemon crates, so the main
//! workspace's tests include them by path and replay the committed corpora
//! on stable (`fuzz/corpus/<target>/`).

pub mod media;
pub mod sip;
